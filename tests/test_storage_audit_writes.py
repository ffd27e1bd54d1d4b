"""Storage audit: the atomic Parquet write under faults, on an S3-like file system (no rename: fsspec's generic move
is copy + delete, as on s3fs) and on local disks, plus one check against s3fs and a moto server."""

from __future__ import annotations

import errno
import os
import posixpath
import time

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import storage
from pipeline.stages import write_parquet_atomic

TABLE = pa.table({"id": ["a", "b"], "image": [b"x", b"y"]})


class FaultyObjectStore(MemoryFileSystem):
    """Memory storage without a rename (moves are fsspec's copy + delete, like s3fs) whose calls can fail before or
    after taking effect: `faults[method]` is a list of (when, error) used up one call at a time."""

    protocol = ("faultystore",)
    store: dict = {}
    pseudo_dirs = [""]
    faults: dict[str, list[tuple[str, BaseException]]] = {}
    calls: list[str] = []

    def _step(name: str):  # noqa: N805 - builds the methods below
        def method(self, *args, **kwargs):
            FaultyObjectStore.calls.append(name)
            queue = FaultyObjectStore.faults.get(name) or []
            if queue and queue[0][0] == "before":
                raise queue.pop(0)[1]
            out = getattr(MemoryFileSystem, name)(self, *args, **kwargs)
            if queue and queue[0][0] == "after":
                raise queue.pop(0)[1]
            return out

        return method

    pipe_file = _step("pipe_file")
    cp_file = _step("cp_file")
    rm_file = _step("rm_file")


@pytest.fixture
def store(monkeypatch):
    fsspec.register_implementation("faultystore", FaultyObjectStore, clobber=True)
    FaultyObjectStore.store.clear()
    FaultyObjectStore.faults, FaultyObjectStore.calls = {}, []
    monkeypatch.setattr(storage, "backoff", lambda *a, **k: None)
    monkeypatch.setattr(storage.time, "sleep", lambda s: pytest.fail(f"a test slept {s} s"))
    return FaultyObjectStore


def _names(store) -> list[str]:
    return sorted(posixpath.basename(p) for p in store.store)


def _rows(store, name: str = "part-1.parquet") -> int:
    (path,) = [p for p in store.store if p.endswith("/" + name)]
    return pq.read_table(pa.BufferReader(store.store[path].getvalue())).num_rows


def test_an_output_prefix_with_brackets_is_written(store) -> None:
    """fsspec's generic move expands glob characters: 'run[1]/data/.tmp-…' matched nothing, the write failed with a
    permanent FileNotFoundError and left its temporary file (the same on s3fs, see the moto test below)."""
    write_parquet_atomic(TABLE, "faultystore://bkt/run[1]/data/part-1.parquet", {})
    assert _names(store) == ["part-1.parquet"] and _rows(store) == 2


def test_a_delete_of_the_temporary_copy_that_fails_once_does_not_upload_again(store) -> None:
    store.faults = {"rm_file": [("before", ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))]}
    write_parquet_atomic(TABLE, "faultystore://bkt/out/data/part-1.parquet", {})
    assert _names(store) == ["part-1.parquet"]
    assert store.calls.count("pipe_file") == 1 and store.calls.count("cp_file") == 1  # it uploaded twice before


def test_a_denied_delete_after_the_file_is_in_place_is_a_warning_not_a_failed_write(store) -> None:
    """Copy done, delete of the temporary copy refused: the part file is whole and in place. The write failed before
    (and its Ray task, retried, failed again the same way, though the data had landed)."""
    store.faults = {"rm_file": [("before", PermissionError(errno.EACCES, "Access Denied"))] * 10}
    with pytest.warns(RuntimeWarning, match="could not be removed"):
        write_parquet_atomic(TABLE, "faultystore://bkt/out/data/part-1.parquet", {})
    names = _names(store)
    assert "part-1.parquet" in names and _rows(store) == 2
    (leftover,) = [n for n in names if n != "part-1.parquet"]
    assert leftover.startswith(".tmp-")


def test_a_denied_delete_raises_where_leftovers_are_not_tolerated(store) -> None:
    """For a check before any work (the job's first file): a policy that refuses deletes must stop the job there."""
    fs = fsspec.filesystem("faultystore")
    fs.pipe_file("faultystore://bkt/out/._job.json.tmp", b"{}")
    store.faults = {"rm_file": [("before", PermissionError(errno.EACCES, "Access Denied"))]}
    with pytest.raises(PermissionError):
        storage.move_into_place(fs, "faultystore://bkt/out/._job.json.tmp", "faultystore://bkt/out/_job.json", 2,
                                "write _job.json", tolerate_leftover=False)
    assert store.calls.count("rm_file") == 1  # permanent: not retried


@pytest.mark.parametrize("step", ["pipe_file", "cp_file", "rm_file"])
def test_a_step_that_landed_but_timed_out_is_repeated_harmlessly(store, step: str) -> None:
    """A retried write after a timeout whose first attempt landed: one part file with the rows once, no leftover."""
    store.faults = {step: [("after", TimeoutError("Read timeout on endpoint URL"))]}
    write_parquet_atomic(TABLE, "faultystore://bkt/out/data/part-1.parquet", {})
    assert _names(store) == ["part-1.parquet"] and _rows(store) == 2


def test_a_write_that_fails_for_good_leaves_no_temporary_file(store) -> None:
    store.faults = {"cp_file": [("before", PermissionError(errno.EACCES, "Access Denied"))]}
    with pytest.raises(PermissionError):
        write_parquet_atomic(TABLE, "faultystore://bkt/out/data/part-1.parquet", {})
    assert _names(store) == []


def test_a_leftover_temporary_file_is_not_matched_by_a_parquet_glob(store) -> None:
    """fsspec's glob matches hidden names: a leftover '.tmp-…-part-1.parquet' (on an object store a whole copy of the
    part file) was read by 'data/*.parquet', its rows counted twice."""
    store.faults = {"rm_file": [("before", PermissionError(errno.EACCES, "Access Denied"))] * 10}
    with pytest.warns(RuntimeWarning):
        write_parquet_atomic(TABLE, "faultystore://bkt/out/data/part-1.parquet", {})
    fs = fsspec.filesystem("faultystore")
    assert len(store.store) == 2
    assert [posixpath.basename(p) for p in fs.glob("faultystore://bkt/out/data/*.parquet")] == ["part-1.parquet"]


class LostRenameReply(LocalFileSystem):
    """A local disk whose first rename lands but reports a timeout (an NFS server whose reply was lost)."""

    renamed = 0

    def mv(self, path1, path2, **kwargs):
        super().mv(path1, path2, **kwargs)
        type(self).renamed += 1
        if type(self).renamed == 1:
            raise TimeoutError("timed out")


def test_a_rename_retried_after_it_landed_is_success(tmp_path, monkeypatch) -> None:
    """The retry found the temporary file gone and failed with a permanent FileNotFoundError, though the part file was
    whole in place."""
    from pipeline import stages

    monkeypatch.setattr(storage, "backoff", lambda *a, **k: None)
    monkeypatch.setattr(stages, "storage_path", lambda uri, options: (LostRenameReply(), uri))
    LostRenameReply.renamed = 0
    write_parquet_atomic(TABLE, f"{tmp_path}/out/data/part-1.parquet", {})
    assert os.listdir(tmp_path / "out" / "data") == ["part-1.parquet"]
    assert pq.read_table(tmp_path / "out" / "data" / "part-1.parquet").num_rows == 2


def test_stale_temporary_files_are_removed_and_young_ones_kept(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("part-1.parquet", ".tmp-old-part-2.parquet.tmp", ".tmp-new-part-3.parquet.tmp", ".other"):
        (data / name).write_bytes(b"x")
    hour_ago = time.time() - 7200
    for name in (".tmp-old-part-2.parquet.tmp", ".other"):
        os.utime(data / name, (hour_ago, hour_ago))
    fs = fsspec.filesystem("file")
    assert storage.remove_stale_temporaries(fs, str(data)) == 1
    assert sorted(os.listdir(data)) == [".other", ".tmp-new-part-3.parquet.tmp", "part-1.parquet"]
    assert storage.remove_stale_temporaries(fs, str(tmp_path / "missing")) == 0


def test_s3_writes_under_odd_prefixes_and_readers_skip_a_leftover_temporary_file() -> None:
    """Against s3fs and a moto server: the write lands under 'run[1]' (FileNotFoundError before), in 4 requests (PUT,
    HEAD, COPY, DELETE; 8 before), and a leftover temporary copy is skipped by pandas and a '*.parquet' glob."""
    import boto3
    import s3fs
    import werkzeug.serving

    from tests.s3util import start_moto_server

    server, port = start_moto_server()
    requests: list[str] = []
    log_request = werkzeug.serving.WSGIRequestHandler.log_request
    werkzeug.serving.WSGIRequestHandler.log_request = lambda self, *a, **k: requests.append(self.command)
    try:
        options = {"key": "audit-key", "secret": "audit-secret",
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}}
        boto3.client("s3", aws_access_key_id="k", aws_secret_access_key="s",
                     **options["client_kwargs"]).create_bucket(Bucket="audit")
        fs = s3fs.S3FileSystem(**options)
        write_parquet_atomic(TABLE, "s3://audit/warm/data/part-0.parquet", options)
        requests.clear()
        write_parquet_atomic(TABLE, "s3://audit/run[1]/data/part-1.parquet", options)
        assert sorted(requests) == ["DELETE", "HEAD", "PUT", "PUT"]  # the copy is a PUT with x-amz-copy-source
        assert fs.ls("audit/run[1]/data", detail=False, refresh=True) == ["audit/run[1]/data/part-1.parquet"]
        # a temporary copy that a failed delete left (a whole Parquet file): no reader may count its rows
        fs.pipe_file("audit/warm/data/.tmp-0123-part-0.parquet.tmp", fs.cat_file("audit/warm/data/part-0.parquet"))
        assert len(pd.read_parquet("s3://audit/warm/data", storage_options=options)) == 2
        assert fs.glob("audit/warm/data/*.parquet") == ["audit/warm/data/part-0.parquet"]
    finally:
        werkzeug.serving.WSGIRequestHandler.log_request = log_request
        server.stop()
