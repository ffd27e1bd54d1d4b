"""fsspec keeps no FTP file system for the next use: each one made connects to the server and logs in, and holds its
connection until it is collected. The planning made some only to ask what kind of store the input is on (how many of
its files to read at once, whether the input and output are on one store): a login and an idle connection each, for
nothing, on servers that often allow a user a few connections at a time. The stand-in below is ftplib's client
over a local folder, answering the calls fsspec's FTP file system makes (pyftpdlib, a real server, is no dependency)."""

from __future__ import annotations

import ftplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.plan import plan_job
from pipeline.storage import concurrent_reads
from tests.jobutil import image_bytes, small_job_config, tar_bytes


class FolderFTP:
    """ftplib.FTP over the folder `root`: records each connection's login and the requests made on it."""

    root = Path("/nonexistent")
    connections: list[list[str]] = []  # a connection's requests, in order, "login" first

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.requests: list[str] = []

    def connect(self, host: str, port: int) -> str:
        FolderFTP.connections.append(self.requests)
        return "220 ready"

    def login(self, *credentials: str) -> str:
        self.requests.append("login")
        return "230 logged in"

    def _local(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def mlsd(self, path: str = "", facts: Any = ()) -> Iterator[tuple[str, dict[str, str]]]:
        self.requests.append(f"MLSD {path}")
        folder = self._local(path)
        if not folder.is_dir():
            raise ftplib.error_perm(f"550 {path}: not a folder")
        for entry in sorted(folder.iterdir()):
            yield entry.name, ({"type": "dir"} if entry.is_dir() else {"type": "file", "size": str(entry.stat().st_size)})

    def retrbinary(self, cmd: str, callback: Callable[[bytes], Any], blocksize: int = 8192,
                   rest: int | None = None) -> str:
        self.requests.append(cmd)
        path = cmd.removeprefix("RETR ")
        if not self._local(path).is_file():
            raise ftplib.error_perm(f"550 {path}: no such file")
        data = self._local(path).read_bytes()[rest or 0:]
        for start in range(0, len(data), blocksize):
            callback(data[start:start + blocksize])  # fsspec stops a ranged read by raising here
        return "226 done"

    def abort(self) -> str:
        return "226 aborted"

    def getmultiline(self) -> str:
        return "226 done"

    def close(self) -> None:
        pass


@pytest.fixture
def ftp_server(tmp_path: Path, monkeypatch) -> Path:
    """The folder an FTP server at 127.0.0.1:2121 serves, as fsspec's FTP file system reaches it (`FolderFTP`)."""
    import fsspec.implementations.ftp as fsspec_ftp

    root = tmp_path / "srv"
    root.mkdir()
    monkeypatch.setattr(FolderFTP, "root", root)
    monkeypatch.setattr(FolderFTP, "connections", [])
    monkeypatch.setattr(fsspec_ftp, "FTP", FolderFTP)
    return root


def test_an_ftp_store_is_read_one_file_at_a_time_told_without_logging_in(ftp_server: Path) -> None:
    assert concurrent_reads("ftp://127.0.0.1:2121/in/a.parquet", 8) == 1  # ftplib's one connection
    assert concurrent_reads("/data/in/a.parquet", 8) == 8
    assert FolderFTP.connections == []


def test_each_login_of_a_dry_run_over_an_ftp_input_is_used(ftp_server: Path, tmp_path: Path, model: str) -> None:
    """A dry run over Parquet files and a tar shard on an FTP server: every connection the planning opens reads
    something (here 6; it made 11, five of which read nothing: one to learn how many files to read at once for the
    Parquet footers, one for the tar shard's count, three to compare the input's and the output's stores)."""
    (ftp_server / "in").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"image": [image_bytes(16, 16, i)], "label": [i]}), ftp_server / "in" / f"p{i}.parquet")
    (ftp_server / "in" / "s.tar").write_bytes(tar_bytes({"0.png": image_bytes(16, 16, 3), "0.cls": b"1"}))
    config = small_job_config(tmp_path, model, input="ftp://127.0.0.1:2121/in")
    described = plan_job(config, dry_run=True).describe()
    assert described["input"]["parquet_files"] == 3, described["input"]
    idle = [requests for requests in FolderFTP.connections if requests == ["login"]]
    assert FolderFTP.connections and not idle, f"{len(idle)} of {len(FolderFTP.connections)} logins read nothing"
