"""SFTP's file system (fsspec's, over paramiko) lists with `ls(path, detail=False)` and takes no other keyword. The job
passed refresh=True (which bypasses s3fs', gcsfs' and adlfs' listing caches) when it cleared stale temporary files
from the output, so every run with an sftp:// output failed at its first write with "TypeError: SFTPFileSystem.ls()
got an unexpected keyword argument 'refresh'" (seen against a local SFTP server; paramiko is not a dependency)."""

from __future__ import annotations

import os
import time

from fsspec.implementations.local import LocalFileSystem

from pipeline import storage


class StrictListing(LocalFileSystem):
    """A file system whose ls takes only what SFTP's does."""

    calls: list[str] = []

    def ls(self, path, detail=False):  # noqa: ANN001 - SFTPFileSystem.ls's signature
        type(self).calls.append(path)
        return super().ls(path, detail=detail)


def test_stale_temporaries_are_cleared_on_a_file_system_whose_ls_takes_no_refresh(tmp_path) -> None:
    stale, young, own = tmp_path / ".tmp-0123abcd-_summary.json", tmp_path / ".tmp-89ef-_job.json", tmp_path / "a.png"
    for path in (stale, young, own):
        path.write_bytes(b"x")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    StrictListing.calls = []
    assert storage.remove_stale_temporaries(StrictListing(skip_instance_cache=True), str(tmp_path)) == 1
    assert StrictListing.calls and not stale.exists() and young.exists() and own.exists()


def test_a_listing_cache_is_passed_by_where_there_is_one(tmp_path) -> None:
    seen: list[dict] = []

    class Cached(LocalFileSystem):
        def ls(self, path, detail=True, **kwargs):  # noqa: ANN001 - as s3fs, gcsfs and adlfs take it
            seen.append(kwargs)
            return super().ls(path, detail=detail)

    (tmp_path / "f").write_bytes(b"x")
    assert [e["name"] for e in storage.list_uncached(Cached(skip_instance_cache=True), str(tmp_path))] == [
        str(tmp_path / "f")]
    assert seen == [{"refresh": True}]


def test_a_listing_cache_that_ignores_refresh_is_invalidated_first(tmp_path) -> None:
    """adlfs's ls takes refresh=True into **kwargs and answers from its cache (keyed without the trailing '/') until
    invalidate_cache: a file written since the last listing must be in the next one."""

    class KeepsListings(LocalFileSystem):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.kept: dict[str, list] = {}

        def ls(self, path, detail=True, **kwargs):  # noqa: ANN001 - as adlfs's
            key = path.rstrip("/")
            if key not in self.kept:
                self.kept[key] = super().ls(path, detail=detail)
            return self.kept[key]

        def invalidate_cache(self, path=None) -> None:  # noqa: ANN001
            self.kept.pop(path, None) if path is not None else self.kept.clear()

    fs = KeepsListings(skip_instance_cache=True)
    (tmp_path / "a").write_bytes(b"x")
    assert [e["name"] for e in fs.ls(str(tmp_path) + "/")] == [str(tmp_path / "a")]
    (tmp_path / "b").write_bytes(b"x")
    assert sorted(e["name"] for e in storage.list_uncached(fs, str(tmp_path) + "/")) == [str(tmp_path / "a"),
                                                                                     str(tmp_path / "b")]
