"""A store's refusal of the input or the output stops the run with its whole reason. The command line said it as
`cannot list input IN: <error>` (or `cannot use output OUT: ...`) cut to a reject reason's 300 characters and to the
error's first line: S3's AccessDenied, which names the role, the action and the bucket, lost its end; gcsfs's
Forbidden, which gives its reason on a second line, lost the reason; a listing that outlasted its retries on a long
path lost the storage's last answer. A traceback a library put in its message is still not the user's to read."""

from __future__ import annotations

from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import storage
from pipeline.cli import main

ROLE_DENIED = ('User: arn:aws:sts::123456789012:assumed-role/DataScienceTeam-EKS-NodeInstanceRole-1A2B3C4D5E6F/'
               'i-0123456789abcdef0 is not authorized to perform: s3:ListBucket on resource: "arn:aws:s3:::acme-ml-'
               'datasets-production-us-east-1" because no identity-based policy allows the s3:ListBucket action')
BUCKET = "acme-ml-datasets-production-us-east-1/teams/vision/incoming/2026-12-07/camera-traps/batch-0042"


class _Refusing(MemoryFileSystem):
    """A store that refuses every look at a path under `refused` with `error()`, as a store answers these
    credentials (s3fs raises S3's message as a PermissionError, gcsfs an OSError of two lines)."""

    protocol = ("refusing", "s3")  # an S3 store, whose list permission the advice names
    refused = ""
    error: Any = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("refusing://"))

    def _refuse(self, path: str) -> None:
        if self._strip_protocol(path).startswith(self.refused):
            raise type(self).error()

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        self._refuse(path)
        return super().info(path, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        self._refuse(path)
        return super().ls(path, detail, **kwargs)


@pytest.fixture
def refusing():
    fsspec.register_implementation("refusing", _Refusing, clobber=True)
    yield _Refusing
    _Refusing.refused, _Refusing.error = "", None


def _said(args: list[str], capsys) -> str:
    assert main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "…" not in err, err
    return err


def test_an_s3_access_denied_naming_the_role_is_said_whole(refusing, tmp_path, capsys) -> None:
    refusing.refused, refusing.error = f"/{BUCKET}", lambda: PermissionError(ROLE_DENIED)
    err = _said(["--input", f"refusing://{BUCKET}/", "--output", str(tmp_path / "out")], capsys)
    assert err.startswith(f"error: cannot list input refusing://{BUCKET}/: PermissionError: {ROLE_DENIED} (without "
                          "s3:ListBucket the store refuses a folder given as the input"), err


def test_a_refusal_whose_reason_is_on_a_second_line_keeps_it(refusing, tmp_path, capsys) -> None:
    # gcsfs: OSError(f"Forbidden: {url}\n{the service's message}"); the message was all that said who lacked what
    refusing.refused = "/bucket/in"
    refusing.error = lambda: OSError("Forbidden: https://storage.googleapis.com/storage/v1/b/bucket/o?prefix=in/\n"
                                     "reader@project.iam.gserviceaccount.com does not have storage.objects.list access")
    err = _said(["--input", "refusing://bucket/in/", "--output", str(tmp_path / "out")], capsys)
    # (a web address's query values are not said: a signed one's are credentials, whatever their names)
    assert ("OSError: Forbidden: https://storage.googleapis.com/storage/v1/b/bucket/o?prefix=***; reader@project.iam."
            "gserviceaccount.com does not have storage.objects.list access (without s3:ListBucket") in err, err


def test_a_traceback_in_a_library_s_message_is_not_said(refusing, tmp_path, capsys) -> None:
    refusing.refused = "/bucket/in"
    refusing.error = lambda: OSError('the server answered 400:\nbad request\nTraceback (most recent call last):\n  File '
                                     '"/srv/app.py", line 12, in handler\n    raise ValueError(key)\nValueError: in/')
    err = _said(["--input", "refusing://bucket/in/", "--output", str(tmp_path / "out")], capsys)
    assert err == "error: cannot list input refusing://bucket/in/: OSError: the server answered 400: bad request\n", err


def test_a_listing_that_outlasted_its_retries_on_a_long_path_keeps_the_last_answer(refusing, tmp_path, capsys,
                                                                                     monkeypatch) -> None:
    monkeypatch.setattr(storage, "backoff", lambda *a, **k: None)  # no waits between the attempts
    folder = f"{BUCKET}/site-nairobi-north"  # the path said twice, and the advice, left no room for the answer
    refusing.refused, refusing.error = f"/{folder}", lambda: ConnectionResetError(104, "Connection reset by peer")
    err = _said(["--input", f"refusing://{folder}/", "--output", str(tmp_path / "out")], capsys)
    assert f"refusing://{folder}/: gave up after 6 attempts" in err, err
    assert err.rstrip().endswith("last error: ConnectionResetError: [Errno 104] Connection reset by peer"), err


def test_an_output_refused_with_a_long_reason_is_said_whole() -> None:
    from pipeline.plan import _cannot_use_output

    said = str(_cannot_use_output(f"s3://{BUCKET}/clean", {}, PermissionError(ROLE_DENIED)))
    assert said.startswith(f"cannot use output s3://{BUCKET}/clean: PermissionError: {ROLE_DENIED} (the job lists its "
                           "output and reads its own records there"), said


# A web store's refusal names the URL it was sent to: a redirect's presigned target (S3's, a CDN's) holds a signature
# and a key id at its end, which the old cut at 300 characters left out, and which no URI of the command line holds
SIGNATURE = "9f1c" * 16
PRESIGNED = ("https://acme-ml-datasets-production-us-east-1.s3.us-east-1.amazonaws.com/teams/vision/incoming/batch-0042"
             "/?list-type=2&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261207%2Fus-east"
             "-1%2Fs3%2Faws4_request&X-Amz-Date=20261207T054500Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
             f"&X-Amz-Signature={SIGNATURE}")


def test_a_signed_url_in_a_whole_refusal_is_said_without_its_credentials(refusing, tmp_path, capsys) -> None:
    refusing.refused = "/bucket/in"
    refusing.error = lambda: PermissionError(f"403, message='Forbidden', url='{PRESIGNED}'\nthe request was "
                                             "redirected to a signed address")
    err = _said(["--input", "refusing://bucket/in/", "--output", str(tmp_path / "out")], capsys)
    assert SIGNATURE not in err and "AKIAIOSFODNN7EXAMPLE" not in err, err
    assert "X-Amz-Signature=***'; the request was redirected to a signed address" in err, err


def test_a_retried_read_s_last_error_is_said_without_a_signed_url_s_credentials(monkeypatch) -> None:
    monkeypatch.setattr(storage, "backoff", lambda *a, **k: None)

    def failing() -> None:
        raise ConnectionResetError(104, f"Connection reset by peer\nwhile reading {PRESIGNED}")

    with pytest.raises(storage.RetriesExhausted) as caught:
        storage.with_retries(failing, "list refusing://bucket/in")
    assert SIGNATURE not in str(caught.value) and "X-Amz-Signature=***" in str(caught.value), caught.value
