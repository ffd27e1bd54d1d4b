"""An output on a server's file system (FTP, HDFS, WebHDFS): folders made, part files listed by their full names.

Two differences from local disks and S3 stopped an output on FTP (checked by hand against pyftpdlib, not a
dependency): the server refuses a file in a folder that is missing ("550 No such file or directory"), which the job
only made on local disks; and fsspec's FTP listing without detail gives bare names, so the end-of-run check looked
for "/part-....parquet" at the server's root. With both fixed, --output ftp://127.0.0.1:2121/out ran complete, and
--incremental, --retry-rejects and --overwrite runs over it too.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.output import check_output_location, list_parts
from pipeline.storage import make_parent_dirs

ROOT = "/server-output-test"  # fsspec's memory store is shared by the whole process: a folder of our own


class ServerStandIn(MemoryFileSystem):
    """An in-memory stand-in for a server's file system, known by its own protocol (paths start at a root)."""

    protocol = "server-stand-in"
    cachable = False

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path.removeprefix(f"{cls.protocol}://")


class BareNameListingFS(ServerStandIn):
    """Lists as fsspec's FTP file system does: full names with detail, bare names without."""

    protocol = "barenames"

    def ls(self, path: str, detail: bool = True, **kwargs: Any):
        listing = super().ls(path, detail=True, **kwargs)
        return listing if detail else [info["name"].rsplit("/", 1)[-1] for info in listing]


@pytest.fixture
def bare_fs():
    fsspec.register_implementation("barenames", BareNameListingFS, clobber=True)
    fs = BareNameListingFS()
    if fs.exists(ROOT):
        fs.rm(ROOT, recursive=True)
    yield fs
    fs.rm(ROOT, recursive=True)


def test_part_files_are_listed_by_their_full_names(bare_fs) -> None:
    for name in ("part-b.parquet", "part-a.parquet", ".tmp-part-c.parquet", "notes.txt"):
        bare_fs.pipe(f"{ROOT}/out/data/{name}", b"x")
    assert bare_fs.ls(f"{ROOT}/out/data", detail=False)[0] in {"part-a.parquet", "part-b.parquet",
                                                                ".tmp-part-c.parquet", "notes.txt"}
    assert list_parts(f"barenames://{ROOT}/out", "data", {}) == [f"{ROOT}/out/data/part-a.parquet",
                                                                  f"{ROOT}/out/data/part-b.parquet"]


class Recorder:
    def __init__(self, protocol: str | tuple[str, ...]) -> None:
        self.protocol, self.made = protocol, []

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.made.append((path, exist_ok))


@pytest.mark.parametrize(("protocol", "folder", "made"), [
    ("file", "/tmp/out/data", True),
    (("ftp",), "/out/data", True),          # a server's file system: paths from its root
    ("webhdfs", "/user/etl/out/data", True),
    (("s3", "s3a"), "bucket/out/data", False),  # s3fs would create a missing bucket
    ("s3", "/bucket/out/data", False),
    ("gcs", "bucket/out/data", False),        # an object store's paths start with the bucket
])
def test_folders_are_made_where_the_file_system_has_them(protocol, folder: str, made: bool) -> None:
    fs = Recorder(protocol)
    make_parent_dirs(fs, folder)
    assert fs.made == ([(folder, True)] if made else [])


class LockedRootFS(ServerStandIn):
    """Refuses to list its root, as a locked-down HDFS cluster may."""

    protocol = "lockedroot"

    def ls(self, path: str, detail: bool = True, **kwargs: Any):
        if path.rstrip("/") == "":
            raise PermissionError("listing / is not allowed")
        return super().ls(path, detail=detail, **kwargs)


def test_a_new_output_on_a_server_needs_no_right_to_list_its_root() -> None:
    fsspec.register_implementation("lockedroot", LockedRootFS, clobber=True)
    fs, root = check_output_location(f"lockedroot://{ROOT}/new/out", {})
    assert root == f"{ROOT}/new/out" and not fs.exists(root)  # made by the run, not here
