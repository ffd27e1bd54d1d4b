"""Mutation-audit gaps in pipeline/storage.py: error classification edges, the conditional create of the output's
lease, retry counts, and the clean-up of temporary files."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error

from pipeline import storage


@pytest.fixture
def no_waiting(monkeypatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(storage, "backoff", lambda attempt, *a, **k: waits.append(attempt) or 0.0)
    return waits


def _s3_error(code: str, status: int | None, message: str = "refused", op: str = "PutObject") -> OSError:
    """An S3 error answer as s3fs raises it: translated from botocore's ClientError, which is kept as its cause."""
    answer: dict = {"Error": {"Code": code, "Message": message}}
    if status is not None:
        answer["ResponseMetadata"] = {"HTTPStatusCode": status}
    return translate_boto_error(ClientError(answer, op))


class _Store:
    """An object store (no rename) whose conditional PUTs get `answers` in turn (an error to raise, or None to land)
    while `existing` decides whether a later one is refused with 412."""

    protocol = ("s3", "s3a")

    def __init__(self, *answers: BaseException | None) -> None:
        self.answers, self.files, self.puts = list(answers), {}, []

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
        self.puts.append(mode)
        if mode == "create" and self.answers:
            answer = self.answers.pop(0)
            if answer is not None:
                raise answer
        self.files[path] = data


def test_a_conditional_put_that_conflicts_with_another_write_is_retried_and_names_the_holder(no_waiting) -> None:
    # AWS S3: two conditional PUTs of one key at once, the slower may get 409 ConditionalRequestConflict ("retry");
    # its retry finds the other run's lease there (412)
    store = _Store(_s3_error("ConditionalRequestConflict", 409),
                   _s3_error("PreconditionFailed", 412))
    assert storage.create_if_absent(store, "out/_lease.json", b"mine", "write") is False
    assert store.puts == ["create", "create"] and store.files == {}


def test_a_conditional_put_that_conflicts_with_a_delete_is_retried_and_creates(no_waiting) -> None:
    # the 409 also answers a conditional PUT racing a delete of the key (a run releasing its lease): the retry lands
    store = _Store(_s3_error("ConditionalRequestConflict", 409), None)
    assert storage.create_if_absent(store, "out/_lease.json", b"mine", "write") is None
    assert store.files == {"out/_lease.json": b"mine"}


def test_a_store_that_does_not_implement_conditional_puts_is_asked_once_not_six_times(no_waiting) -> None:
    # 501 will not change on retry: one conditional PUT, then the plain one (six were 9 s of waiting per run)
    store = _Store(_s3_error("NotImplemented", 501))
    assert storage.create_if_absent(store, "out/_lease.json", b"mine", "write") is None
    assert store.puts == ["create", "overwrite"] and no_waiting == []
    assert not storage.is_transient(_s3_error("NotImplemented", 501))


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("", 412, False),  # a 412 whose body names no code: the lease is there
    ("412", None, False),  # a HEAD-like answer: botocore gives the status as the code
    ("NotSupported", 501, None),  # a 501 under another code: no conditional writes here
    ("501", None, None),
])
def test_a_conditional_put_is_judged_by_its_status_as_well_as_its_code(code: str, status: int | None,
                                                                       expected: bool | None, no_waiting) -> None:
    store = _Store(_s3_error(code, status))
    assert storage.create_if_absent(store, "out/_lease.json", b"mine", "write") is expected
    assert store.files == ({} if expected is False else {"out/_lease.json": b"mine"})


def test_a_local_disk_without_hard_links_gets_the_file_written_another_way(tmp_path, monkeypatch) -> None:
    import fsspec

    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")  # some FUSE and SMB mounts

    monkeypatch.setattr(storage.os, "link", no_links)
    fs, path = fsspec.filesystem("file"), str(tmp_path / "_lease.json")
    assert storage.create_if_absent(fs, path, b"first", "write") in (None, True)
    assert (tmp_path / "_lease.json").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["_lease.json"]


@pytest.mark.parametrize("message", ["bad image s3://b/service unavailable/x.png", "s3://b/connection reset/y.png"])
def test_an_error_of_the_data_is_never_retried_whatever_path_it_names(message: str) -> None:
    assert not storage.is_transient(ValueError(message))
    assert not storage.is_transient(TypeError(message))


def test_an_error_raised_from_none_is_judged_without_the_error_it_replaced() -> None:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            raise RuntimeError("the tar header is corrupt") from None
    except RuntimeError as err:
        assert not storage.is_transient(err)
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            raise RuntimeError("reading the shard failed")  # noqa: B904 - the implicit context is the reason
    except RuntimeError as err:
        assert storage.is_transient(err)


@pytest.mark.parametrize("err", [OSError(errno.EBUSY, "busy"), TimeoutError("read"), OSError(errno.ETIMEDOUT, "x"),
                                 ConnectionResetError(104, "reset")])
def test_busy_and_timed_out_os_errors_are_transient(err: OSError) -> None:
    assert storage.is_transient(err)


def test_a_permanent_os_errno_is_not_transient() -> None:
    assert not storage.is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not storage.is_transient(OSError(errno.EROFS, "Read-only file system"))


def test_s3a_gets_the_same_retry_budget_as_s3() -> None:
    fs = storage.filesystem("s3a", {"anon": True, "config_kwargs": {"connect_timeout": 5}})
    assert fs.retries == 1
    assert fs.config_kwargs == {"connect_timeout": 5, "retries": storage.BOTOCORE_RETRIES}


def test_object_stores_get_no_folders_made() -> None:
    made: list[str] = []

    class Bucketless:
        protocol = ("s3", "s3a")

        def makedirs(self, path: str, exist_ok: bool = False) -> None:
            made.append(path)  # s3fs would create a missing bucket

    storage.make_parent_dirs(Bucketless(), "bucket/out")
    assert made == []


def test_a_failed_write_raises_its_own_error_even_when_the_clean_up_fails_too(tmp_path, monkeypatch) -> None:
    import fsspec

    fs = fsspec.filesystem("file")

    def full(path: str, data: bytes, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def denied(path: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fs, "pipe_file", full)
    monkeypatch.setattr(fs, "rm_file", denied)
    with pytest.raises(OSError, match="No space left"):
        storage.replace_file(fs, str(tmp_path / "x.json"), b"{}", "write x.json")


class _Listing:
    """An object store listing (S3's LastModified datetimes) whose deletes may find the file gone already."""

    def __init__(self, entries: list[dict], gone: set[str] = frozenset()) -> None:
        self.entries, self.gone, self.removed = entries, gone, []

    def ls(self, folder: str, detail: bool = True, refresh: bool = True) -> list[dict]:
        return self.entries

    def rm_file(self, path: str) -> None:
        if path in self.gone:
            raise FileNotFoundError(path)
        self.removed.append(path)


def test_stale_temporaries_on_s3_are_dated_by_last_modified_and_one_removed_meanwhile_is_fine() -> None:
    import datetime

    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    young = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    store = _Listing([
        {"name": "b/out/.tmp-aa-part-1.parquet", "type": "file", "LastModified": old},
        {"name": "b/out/.tmp-bb-part-2.parquet", "type": "file", "LastModified": old},  # another run removes it
        {"name": "b/out/.tmp-cc-part-3.parquet", "type": "file", "LastModified": young},
        {"name": "b/out/.tmp-dd-part-4.parquet", "type": "file"},  # no date: may be a write in flight
        {"name": "b/out/_lease.json", "type": "file", "LastModified": old},
        {"name": "b/out/.keep", "type": "file", "LastModified": old},
    ], gone={"b/out/.tmp-bb-part-2.parquet"})
    assert storage.remove_stale_temporaries(store, "b/out") == 1
    assert store.removed == ["b/out/.tmp-aa-part-1.parquet"]


def test_a_storage_error_that_lasts_is_given_up_as_retries_exhausted_naming_the_answer(no_waiting) -> None:
    def slow_down() -> bytes:
        raise _s3_error("SlowDown", 503, op="GetObject")

    with pytest.raises(storage.RetriesExhausted, match=r"read x: gave up after 6 attempts .* SlowDown \(HTTP 503\)"):
        storage.with_retries(slow_down, "read x")
    assert no_waiting == [0, 1, 2, 3, 4]
    with pytest.raises(storage.RetriesExhausted, match=r"gave up after 6 attempts .* HTTP 500"):
        storage.with_retries(lambda: (_ for _ in ()).throw(_s3_error("500", None, op="HeadObject")), "head x")


class ThrottlingError(Exception):
    """A backend's own error class: no status, no errno, only its name and message say what happened."""


@pytest.mark.parametrize(("err", "transient"), [
    (ThrottlingError(), True),
    (RuntimeError("503 Service Unavailable"), True),
    (RuntimeError("upstream answered: Bad Gateway"), True),
    (RuntimeError("Please Try Again"), True),
    (RuntimeError("the shard s3://b/500/timeout/x.tar is truncated"), False),  # a path never makes it transient
])
def test_an_untyped_backend_error_is_judged_by_its_words(err: Exception, transient: bool) -> None:
    assert storage.is_transient(err) is transient


def _moving_fs(tmp_path, monkeypatch, fail: BaseException):
    """The local file system with its rename failing with `fail` without moving anything."""
    import fsspec

    fs = fsspec.filesystem("file")

    def mv(src: str, dst: str, **kw: object) -> None:
        raise fail

    monkeypatch.setattr(fs, "mv", mv)
    return fs


def test_a_rename_that_found_nothing_is_not_taken_for_success_by_an_old_file_of_the_same_size(tmp_path, monkeypatch,
                                                                                                no_waiting) -> None:
    # success after a FileNotFoundError needs the temporary file gone AND the target whole: an old file of the same
    # size at the target, with the new data still in the temporary file, is a failed write
    fs = _moving_fs(tmp_path, monkeypatch, FileNotFoundError(2, "No such file or directory"))
    (tmp_path / "x.json").write_bytes(b"old!")
    (tmp_path / ".tmp-1-x.json").write_bytes(b"new!")
    with pytest.raises(FileNotFoundError):
        storage.move_into_place(fs, str(tmp_path / ".tmp-1-x.json"), str(tmp_path / "x.json"), 4, "write x.json")


def test_a_copy_that_found_nothing_is_not_taken_for_success_by_a_target_of_another_size(no_waiting) -> None:
    from fsspec.spec import AbstractFileSystem

    class Store:  # no rename: copy + delete; the copy's source is gone and the target is another file
        mv = AbstractFileSystem.mv  # fsspec's generic copy + delete

        def __init__(self) -> None:
            self.files = {"b/x.json": b"an older, longer file"}

        def cp_file(self, src: str, dst: str) -> None:
            raise FileNotFoundError(src)

        def exists(self, path: str) -> bool:
            return path in self.files

        def size(self, path: str) -> int:
            return len(self.files[path])

    with pytest.raises(FileNotFoundError):
        storage.move_into_place(Store(), "b/.tmp-1-x.json", "b/x.json", 4, "write x.json")


def test_a_replace_that_fails_for_good_leaves_no_temporary_file(tmp_path, monkeypatch, no_waiting) -> None:
    fs = _moving_fs(tmp_path, monkeypatch, PermissionError(13, "Permission denied"))
    with pytest.raises(PermissionError):
        storage.replace_file(fs, str(tmp_path / "x.json"), b"{}", "write x.json")
    assert list(tmp_path.iterdir()) == []


def test_a_replace_is_one_put_on_an_object_store_and_a_rename_of_a_whole_file_on_a_disk(tmp_path, monkeypatch) -> None:
    import fsspec
    from fsspec.spec import AbstractFileSystem

    class Store:
        mv = AbstractFileSystem.mv  # no rename

        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def pipe_file(self, path: str, data: bytes, **kw: object) -> None:
            self.calls.append(("put", path))

        def cp_file(self, src: str, dst: str) -> None:
            self.calls.append(("copy", dst))

        def rm_file(self, path: str) -> None:
            self.calls.append(("delete", path))

    store = Store()
    storage.replace_file(store, "b/out/_lease.json", b"{}", "write")
    assert store.calls == [("put", "b/out/_lease.json")]  # a PUT is atomic: no copy, no temporary object

    fs, written = fsspec.filesystem("file"), []
    real_pipe = fs.pipe_file
    monkeypatch.setattr(fs, "pipe_file", lambda path, data, **kw: written.append(path) or real_pipe(path, data, **kw))
    storage.replace_file(fs, str(tmp_path / "_lease.json"), b"{}", "write")
    assert len(written) == 1 and written[0].split("/")[-1].startswith(storage.TEMP_PREFIX)  # never written in place
    assert [p.name for p in tmp_path.iterdir()] == ["_lease.json"]


@pytest.mark.parametrize("code", ["SlowDown", "InternalError"])
def test_an_error_in_a_200_answer_is_judged_by_its_code(code: str) -> None:
    # S3's CopyObject (the object-store 'move') can answer 200 and put the error in the body: the code decides
    assert storage.is_transient(_s3_error(code, 200, op="CopyObject"))
    assert not storage.is_transient(_s3_error("AccessDenied", 200, op="CopyObject"))


def test_a_temporary_copy_already_deleted_is_no_leftover(no_waiting) -> None:
    # a retried DELETE whose first attempt had landed answers 'not found': the move is done, nothing was left behind
    import warnings

    from fsspec.spec import AbstractFileSystem

    class Store:
        mv = AbstractFileSystem.mv  # copy + delete

        def __init__(self) -> None:
            self.files = {"b/.tmp-1-x.json": b"{}"}

        def cp_file(self, src: str, dst: str) -> None:
            self.files[dst] = self.files[src]

        def rm_file(self, path: str) -> None:
            self.files.pop(path)
            raise FileNotFoundError(path)  # as the retry of a DELETE whose answer was lost sees it

    store = Store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage.move_into_place(store, "b/.tmp-1-x.json", "b/x.json", 2, "write x.json", tolerate_leftover=False)
    assert store.files == {"b/x.json": b"{}"}
