"""A TFRecord folder's features.json looked up where a look may be refused (`sources.optional_files`), as the mutation
audit of it found untested: a refusal answered by a listing that must name the file itself (not the folder's first
key, nor a key the name begins), the one-key S3 listing a folder of thousands is not paged through for, Azure's
refusals (HTTP 401 and 403 in a status_code) and its own words for the permission, and a store error that is no
refusal, which must stay an error."""

from __future__ import annotations

import os
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.sources import discover, read_unit
from pipeline.sources.tfrecord_files import features_json_notes
from tests.s3util import moto_s3_without_list
from tests.test_denied_optional_files import TOKENS_AS_LIST, _records


@pytest.fixture
def s3_listed():
    """S3 whose bucket 'listed' the job may read, write and list; `gate.refused` keys are refused, there or not."""
    with moto_s3_without_list("listed", unlisted=()) as (client, options, gate):
        yield client, options, gate


def _read(path: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    (unit,) = discover(path, options)
    return [r for r in read_unit(unit, options) if r["kind"] != "count"]


def test_a_refused_features_json_is_found_by_the_listing_though_other_keys_of_its_folder_sort_before_it(
        s3_listed) -> None:
    """A TFDS folder holds dataset_info.json beside features.json: a listing of the folder's first key alone would
    say features.json is not there, and the files beside it be read typed otherwise than TFDS declares, unsaid."""
    client, options, gate = s3_listed
    for key, body in (("tfds/dataset_info.json", b"{}"), ("tfds/features.json", TOKENS_AS_LIST),
                      ("tfds/s.tfrecord", _records(2))):
        client.put_object(Bucket="listed", Key=key, Body=body)
    gate.refused.add(("listed", "tfds/features.json"))
    out = _read("s3://listed/tfds/s.tfrecord", options)
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"]
    assert "s3://listed/tfds/features.json is there but these credentials may not read it" in out[0]["error"]


def test_a_refused_look_for_a_features_json_that_is_not_there_is_absent_and_unsaid_where_the_folder_may_be_listed(
        s3_listed) -> None:
    """The listing says it is not there: as a 404 would, the files are read (typed by their values) and nothing is
    said; a key whose name begins with it (a copy kept aside) is not it."""
    client, options, gate = s3_listed
    client.put_object(Bucket="listed", Key="kept/features.json.orig", Body=TOKENS_AS_LIST)
    for folder in ("kept", "bare"):
        client.put_object(Bucket="listed", Key=f"{folder}/s.tfrecord", Body=_records(2))
        gate.refused.add(("listed", f"{folder}/features.json"))  # refused though not there
    for folder in ("kept", "bare"):
        metas = [r["meta"] for r in _read(f"s3://listed/{folder}/s.tfrecord", options)]
        assert [m["tokens"] for m in metas] == [0, 1]  # not lists: no features.json declares them
    assert features_json_notes(["s3://listed/kept/s.tfrecord", "s3://listed/bare/s.tfrecord"], options) == []


def test_on_s3_the_refused_features_json_is_looked_for_with_one_key_not_by_listing_its_folder(s3_listed,
                                                                                            monkeypatch) -> None:
    """A folder of thousands of shards would take a listing request per thousand keys, for each folder planned."""
    import s3fs

    client, options, gate = s3_listed
    client.put_object(Bucket="listed", Key="tfds/features.json", Body=TOKENS_AS_LIST)
    client.put_object(Bucket="listed", Key="tfds/s.tfrecord", Body=_records(1))
    gate.refused.add(("listed", "tfds/features.json"))

    async def no_folder_listing(self, path, *args, **kwargs):  # noqa: ANN001 - s3fs's signature
        raise AssertionError(f"listed the folder {path}")

    monkeypatch.setattr(s3fs.S3FileSystem, "_ls", no_folder_listing)
    (note,) = features_json_notes(["s3://listed/tfds/s.tfrecord"], options)
    assert note.startswith("s3://listed/tfds/features.json is there but these credentials may not read it")


class _HttpResponseError(Exception):
    """As azure.core's HttpResponseError: the HTTP status in `status_code`, no OSError."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class _ReadWithoutListAzure(MemoryFileSystem):
    """A container as adlfs meets it with a SAS granted Read but not List: a blob that is not there, and any listing,
    are refused with `status` (403 AuthorizationPermissionMismatch; 401 where the listing's authentication fails);
    `errors` maps a path to another error its look raises, `list_error` is another error a folder's listing raises."""

    protocol = ("azdenied", "az")  # one of Azure Blob Storage's names
    status = 403
    errors: dict[str, BaseException] = {}
    list_error: BaseException | None = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("azdenied://"))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path in self.errors:
            raise self.errors[path]
        if path in self.store:
            return {"name": path, "size": self.store[path].size, "type": "file"}
        raise _HttpResponseError("This request is not authorized to perform this operation using this permission.",
                                 self.status)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if path in self.errors:
            raise self.errors[path]
        if "r" in mode and path not in self.store:
            raise _HttpResponseError("This request is not authorized to perform this operation.", self.status)
        return super()._open(path, mode, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        if self.list_error is not None and self._strip_protocol(path) not in self.store:  # a folder's
            raise self.list_error
        raise _HttpResponseError("AuthorizationPermissionMismatch", self.status)


@pytest.fixture
def azure_without_list():
    fsspec.register_implementation("azdenied", _ReadWithoutListAzure, clobber=True)
    fs, root = _ReadWithoutListAzure(), f"az-{os.getpid()}"
    yield fs, root
    _ReadWithoutListAzure.status, _ReadWithoutListAzure.errors, _ReadWithoutListAzure.list_error = 403, {}, None
    for key in [k for k in fs.store if k.startswith(f"/{root}/")]:
        del fs.store[key]


@pytest.mark.parametrize("status", [401, 403])
def test_on_azure_a_refused_features_json_is_taken_as_absent_naming_the_containers_list_permission(
        azure_without_list, status: int) -> None:
    fs, root = azure_without_list
    _ReadWithoutListAzure.status = status
    fs.pipe(f"/{root}/tf/s.tfrecord", _records(2))
    path = f"azdenied://{root}/tf/s.tfrecord"
    assert [r["id"] for r in _read(path, {})] == ["s.tfrecord#0", "s.tfrecord#1"]
    (note,) = features_json_notes([path], {})
    assert note.startswith(f"azdenied:///{root}/tf/features.json was taken as absent") and \
        "these credentials may not list its folder" in note and "grant the container's List permission" in note


def test_a_store_error_that_is_no_refusal_is_not_taken_for_one(azure_without_list) -> None:
    """An error of the look at features.json that is not the store refusing (gcsfs's and adlfs's OSError without an
    errno, saying another thing) leaves the file a reject: taken as absent, its columns would be typed otherwise than
    TFDS declares, unsaid."""
    fs, root = azure_without_list
    fs.pipe(f"/{root}/tf/s.tfrecord", _records(2))
    _ReadWithoutListAzure.errors = {f"/{root}/tf/features.json": OSError("Bad Request: the path is not valid")}
    out = _read(f"azdenied://{root}/tf/s.tfrecord", {})
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"] and "Bad Request" in out[0]["error"]
    assert features_json_notes([f"azdenied://{root}/tf/s.tfrecord"], {}) == []  # its reject says it


def test_a_listing_that_fails_otherwise_than_refused_after_a_refused_look_is_not_taken_for_a_refusal(
        azure_without_list) -> None:
    """The look at features.json was refused and the listing that would tell whether it is there failed for another
    reason: whether it is there is not known, and not for the credentials (no permission would help), so it is not
    taken as absent with a note asking for one: the file is a reject saying the listing's error."""
    fs, root = azure_without_list
    fs.pipe(f"/{root}/tf/s.tfrecord", _records(2))
    _ReadWithoutListAzure.list_error = OSError("Bad Request: the listing's continuation token is not valid")
    out = _read(f"azdenied://{root}/tf/s.tfrecord", {})
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"] and "continuation token" in out[0]["error"]
    assert features_json_notes([f"azdenied://{root}/tf/s.tfrecord"], {}) == []


class _ListingCachedAzure(MemoryFileSystem):
    """Azure Blob Storage as adlfs meets it with the container's List permission but a blob of `refused` not granted
    (an ABAC condition on its name): its look is refused (HTTP 403) whether it is there or not. Listings are answered
    from the listing cache where it holds the folder, as adlfs's are; `invalidate_cache` drops that one path alone, as
    adlfs's does (not the folders above it)."""

    protocol = ("azcached", "az")
    refused: set[str] = set()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("azcached://"))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._strip_protocol(path) in self.refused:
            raise _HttpResponseError("This request is not authorized to perform this operation.", 403)
        return super().info(path, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path).rstrip("/")
        if path not in self.dircache:
            self.dircache[path] = super().ls(path, detail=True)
        return self.dircache[path] if detail else [entry["name"] for entry in self.dircache[path]]

    def invalidate_cache(self, path: str | None = None) -> None:
        if path is None:
            self.dircache.clear()
        else:
            self.dircache.pop(self._strip_protocol(path), None)


@pytest.fixture
def azure_listing_cached():
    fsspec.register_implementation("azcached", _ListingCachedAzure, clobber=True)
    fs, root = _ListingCachedAzure(), f"cached-{os.getpid()}"
    yield fs, root
    _ListingCachedAzure.refused = set()
    fs.dircache.clear()
    for key in [k for k in fs.store if k.startswith(f"/{root}/")]:
        del fs.store[key]


def test_a_refused_features_json_written_after_its_folder_was_listed_is_found_there(azure_listing_cached) -> None:
    """A scheduler's loop of runs in one process (one thread: fsspec keeps a file system, and its listing cache, per
    thread): the folder was listed, and cached, before features.json was written there. The listing that answers the
    refusal must be a fresh one, else the file is taken for not there and the files beside it typed otherwise than
    TFDS declares, unsaid; and once it is taken away, for there."""
    fs, root = azure_listing_cached
    fs.pipe(f"/{root}/tf/s.tfrecord", _records(2))
    fs.ls(f"/{root}/tf")  # cached: s.tfrecord alone
    fs.pipe(f"/{root}/tf/features.json", TOKENS_AS_LIST)
    _ListingCachedAzure.refused = {f"/{root}/tf/features.json"}
    path = f"azcached://{root}/tf/s.tfrecord"
    out = _read(path, {})
    assert [r["id"] for r in out] == ["s.tfrecord#unreadable"]
    assert f"azcached:///{root}/tf/features.json is there but these credentials may not read it" in out[0]["error"]
    fs.ls(f"/{root}/tf")  # cached again, with it
    del fs.store[f"/{root}/tf/features.json"]  # and taken away: refused, listed not there, so absent and unsaid
    assert [r["meta"]["tokens"] for r in _read(path, {})] == [0, 1]
    assert features_json_notes([path], {}) == []


def test_a_checkpoint_refused_on_a_local_disk_is_not_said_to_be_maybe_a_mistyped_key(tmp_path, model,
                                                                                   monkeypatch) -> None:
    """A disk says 'not there' of a missing file whoever asks: the advice for S3 without s3:ListBucket (a key that is
    not there is refused too) would send the user after a typo that cannot be."""
    from fsspec.implementations.local import LocalFileSystem

    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from pipeline.plan import plan_job
    from tests.jobutil import image_bytes

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 1))
    opened = LocalFileSystem._open

    def refuse(self, path, *args, **kwargs):  # noqa: ANN001 - fsspec's signature
        if str(path).endswith(os.path.basename(model)):
            raise PermissionError(13, "Permission denied", path)
        return opened(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", refuse)
    config = JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                       progress=False, canvas_size=32)
    with pytest.raises(JobError, match="cannot read checkpoint .*PermissionError") as caught:
        plan_job(config, dry_run=True)
    assert "not there too" not in str(caught.value) and "ListBucket" not in str(caught.value)


def test_the_advice_for_a_store_refusing_a_look_is_given_for_a_refusal_alone_and_on_an_object_store_alone(
        azure_without_list, tmp_path, model, monkeypatch) -> None:
    """'without the container's List permission the store refuses ...' sends the user after a permission: said of an
    error that is no refusal (a listing's Bad Request, a checkpoint's), or of a local disk's refusal (where a file that
    is not there is said not there), it sends them after the wrong fix."""
    from fsspec.implementations.local import LocalFileSystem

    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from pipeline.plan import plan_job
    from tests.jobutil import image_bytes

    fs, root = azure_without_list
    fs.pipe(f"/{root}/in/a.png", image_bytes(16, 16, 1))
    with open(model, "rb") as f:
        fs.pipe(f"/{root}/models/prior.pt", f.read())
    _ReadWithoutListAzure.list_error = OSError("Bad Request: the listing's continuation token is not valid")
    _ReadWithoutListAzure.errors = {f"/{root}/models/prior.pt": OSError("Bad Request: the blob's name is not valid")}
    config = JobConfig(input=f"azdenied://{root}/in/a.png", output=str(tmp_path / "out"), steps=1, progress=False,
                       checkpoint=f"azdenied://{root}/models/prior.pt", canvas_size=32)
    with pytest.raises(JobError, match="cannot read checkpoint .*Bad Request") as caught:
        plan_job(config, dry_run=True)
    assert "refuses" not in str(caught.value) and "List permission" not in str(caught.value)
    _ReadWithoutListAzure.errors[f"/{root}/in"] = OSError("Bad Request: the listing's continuation token is not valid")
    config = JobConfig(input=f"azdenied://{root}/in/", output=str(tmp_path / "out"), checkpoint=model, steps=1,
                       progress=False, canvas_size=32)
    with pytest.raises(JobError, match="cannot list input .*Bad Request") as caught:
        plan_job(config, dry_run=True)
    assert "refuses" not in str(caught.value) and "List permission" not in str(caught.value)
    # a local input file refused (its folder may not be searched): no store's permission is missing, and a disk says a
    # file that is not there is not there
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 1))
    info = LocalFileSystem.info

    def denied(self, path, **kwargs):  # noqa: ANN001 - fsspec's signature
        if str(path).endswith("a.png"):
            raise PermissionError(13, "Permission denied", path)
        return info(self, path, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "info", denied)
    with pytest.raises(JobError, match="cannot list input .*PermissionError") as caught:
        plan_job(replace_input(config, str(tmp_path / "in" / "a.png")), dry_run=True)
    assert "refuses" not in str(caught.value) and "permission to list" not in str(caught.value)


def replace_input(config: Any, given: str) -> Any:
    from dataclasses import replace

    return replace(config, input=given)
