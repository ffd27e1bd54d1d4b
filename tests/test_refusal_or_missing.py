"""A store's refusal told from a missing file and from any other error (`storage.access_denied`): a refusal gets advice
that sends the user after a permission (or, on an object store without its list permission, a mistyped key as well),
so an error taken for one that is not sends them after the wrong fix."""

from __future__ import annotations

import errno
import io
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.sources.tfrecord_files import features_json_notes
from pipeline.storage import access_denied
from tests.test_denied_optional_files import _records
from tests.test_mutaudit3_optional_files import _HttpResponseError, _read, _ReadWithoutListAzure, azure_without_list  # noqa: F401 - a fixture


def _missing_archive_member(name: str) -> FileNotFoundError:
    """What fsspec's zip file system raises for a member that is not in the archive."""
    import fsspec

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.png", b"png")
    archive.seek(0)
    try:
        fsspec.filesystem("zip", fo=archive).info(name)
    except FileNotFoundError as err:
        return err
    raise AssertionError(f"{name} was found")


def test_gcsfs_refusal_is_told_by_its_class_and_opening_words_not_by_the_word_forbidden_anywhere() -> None:
    """gcsfs says HTTP 403 as a plain OSError('Forbidden: <url>\\n<reason>'). A missing archive member named
    'Forbidden.png' (fsspec names it by its path in the archive, so the message begins with the word), or an OSError
    carrying an errno, is no refusal: taken for one, a missing file would be said to be 'refused' and the advice ask
    for a permission."""
    assert access_denied(OSError("Forbidden: https://storage.googleapis.com/storage/v1/b/bucket/o/in%2Fa.png\n"
                                 "reader@project.iam.gserviceaccount.com does not have storage.objects.get access"))
    missing = _missing_archive_member("Forbidden.png")
    assert str(missing) == "Forbidden.png" and not access_denied(missing)
    assert not access_denied(_missing_archive_member("Forbidden: the member/a.png"))
    assert not access_denied(OSError(errno.EIO, "Forbidden: the proxy's answer"))  # s3fs's error for an unknown code
    assert not access_denied(OSError("Not found: Forbidden.png"))
    assert not access_denied(OSError("Forbidden.png: the file is cut short"))  # an error naming its file first
    assert access_denied(PermissionError(13, "Permission denied", "/data/in/a.png"))


def _s3_answer(operation: str, code: str, status: int, message: str) -> BaseException:
    """The error s3fs raises for S3's answer `code` (HTTP `status`) to `operation`."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    return translate_boto_error(ClientError({"Error": {"Code": code, "Message": message},
                                             "ResponseMetadata": {"HTTPStatusCode": status}}, operation))


def test_a_missing_object_as_each_store_says_it_is_missing_not_refused() -> None:
    """A 404 is 'not there': taken for a refusal, a mistyped key was said to be 'refused' and the advice asked for a
    permission the credentials may already have. S3's NoSuchKey (a GET) and bare 404 (a HEAD, which has no body),
    fsspec's web file system's 404 and an error carrying HTTP 404 in its status_code (azure.core's) are none; their
    401 and 403 are."""
    assert not access_denied(_s3_answer("GetObject", "NoSuchKey", 404, "The specified key does not exist."))
    assert not access_denied(_s3_answer("HeadObject", "404", 404, "Not Found"))
    assert access_denied(_s3_answer("GetObject", "AccessDenied", 403, "Access Denied"))
    assert not access_denied(FileNotFoundError("https://data.example.org/in/a.png"))  # fsspec's HTTP 404
    assert not access_denied(_HttpResponseError("The specified blob does not exist.", 404))
    assert [access_denied(_HttpResponseError("This request is not authorized.", s)) for s in (401, 403)] == [True, True]


def test_a_refused_look_whose_folder_listing_says_not_there_is_absent_and_unsaid(azure_without_list) -> None:  # noqa: F811
    """The look at features.json was refused (no List permission: 403 whether it is there or not) and the listing that
    answers it says the folder is not there (a 404: its files moved away meanwhile): the file is not there, as a 404
    says, so the TFRecord files are typed by their values and nothing is said. Taken for a refused listing, a warning
    said it was unknown for want of the container's List permission."""
    fs, root = azure_without_list
    fs.pipe(f"/{root}/tf/s.tfrecord", _records(2))
    _ReadWithoutListAzure.list_error = FileNotFoundError(f"{root}/tf")
    path = f"azdenied://{root}/tf/s.tfrecord"
    assert [r["meta"]["tokens"] for r in _read(path, {})] == [0, 1]  # not lists: no features.json declares them
    assert features_json_notes([path], {}) == []


def _refusing_local_looks(monkeypatch, under: Path) -> None:
    """The local file system's looks at anything under `under` refused, as for a folder its user may not search (the
    tests run as root, whom no permission bit stops)."""
    from fsspec.implementations.local import LocalFileSystem

    def refusing(real: Any) -> Any:
        def look(self, path, *args, **kwargs):  # noqa: ANN001 - fsspec's signature
            if str(path).rstrip("/").startswith(str(under)):
                raise PermissionError(13, "Permission denied", str(path))
            return real(self, path, *args, **kwargs)
        return look

    for name in ("info", "ls", "exists", "isdir", "_open", "makedirs"):
        monkeypatch.setattr(LocalFileSystem, name, refusing(getattr(LocalFileSystem, name)))


def test_the_output_advice_asks_for_the_stores_list_permission_for_its_refusal_alone(tmp_path, model, monkeypatch,
                                                                                     capsys) -> None:
    """'the job lists its output ..., so its credentials need s3:ListBucket' sends the user after a permission of an
    object store's credentials. An S3 output whose look fails otherwise (a 400: no permission would help) gets the
    store's error alone; a local output the job's user may not look at gets the system's reason alone (no store's
    credentials there, and no listing permission of theirs); so does the export's, --output and --to."""
    import pipeline.plan as plan
    from pipeline import export_cli
    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from tests.jobutil import image_bytes
    from tests.test_export import image, make_output

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 1))
    config = JobConfig(input=str(tmp_path / "in"), output="s3://bucket/out", checkpoint=model, steps=1, progress=False,
                       canvas_size=32, storage_options={"key": "k", "secret": "s"})
    bad_request = _s3_answer("ListObjectsV2", "InvalidArgument", 400, "Invalid argument: continuation-token")

    def failing(*args: Any, **kwargs: Any) -> None:
        raise bad_request

    monkeypatch.setattr(plan, "output_inside_written_folder", failing)
    with pytest.raises(JobError) as caught:
        plan.plan_job(config, dry_run=True)
    assert str(caught.value) == "cannot use output s3://bucket/out: OSError: [Errno 22] Invalid argument: continuation-token"
    monkeypatch.undo()

    locked = tmp_path / "locked"
    make_output(str(locked / "out"), [image("a.jpg", 1)])
    _refusing_local_looks(monkeypatch, locked)
    with pytest.raises(JobError) as caught:
        plan.plan_job(replace(config, output=str(locked / "out2"), storage_options={}), dry_run=True)
    assert str(caught.value) == f"cannot use output {locked}/out2: PermissionError: [Errno 13] Permission denied: " \
                                f"'{locked}/out2'"
    make_output(str(tmp_path / "out"), [image("a.jpg", 1)])
    for given in (["--output", str(locked / "out"), "--to", str(tmp_path / "to")],
                  ["--output", str(tmp_path / "out"), "--to", str(locked / "to")]):
        assert export_cli.main([*given, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "Permission denied" in err and "credentials" not in err and "list" not in err, err
