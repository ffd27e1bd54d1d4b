"""Mutation audit of the store's reasons as the job says them (`pipeline.storage.describe`, `described_whole`): a
reject's one-line reason is cut after its URLs are redacted, so what follows a signed address is kept; a whole
refusal keeps up to 2,000 characters, joins lines around a blank one, and leaves out a library's stack frames with or
without their "Traceback" line; a listing that fails after the input was found is said whole too."""

from __future__ import annotations

from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import storage
from pipeline.cli import main

SIGNED = ("https://b.s3.amazonaws.com/in/s.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE"
          "%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261207T054500Z&X-Amz-Expires=3600"
          f"&X-Amz-SignedHeaders=host&X-Amz-Signature={'9f1c' * 16}")


def test_a_reject_s_reason_keeps_what_follows_a_signed_address() -> None:
    # the address is shorter once its credentials are hidden: the reason after it fits in a reject's 300 characters
    err = OSError(f"403, message='Forbidden', url='{SIGNED}': the signed address expired; sign it again")
    assert len(f"OSError: {err}") > storage.REASON_CHARS
    said = storage.describe(err)
    assert said.endswith("X-Amz-Signature=***': the signed address expired; sign it again"), said
    assert "AKIA" not in said and "9f1c" not in said, said


def test_a_whole_reason_is_kept_up_to_2000_characters() -> None:
    # an S3 policy's reason, a list of denied actions: longer than a reject's reason, said whole on the command line
    reason = "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: " + ", ".join(
        f"s3:Action{i:03d}" for i in range(130))
    assert 1_500 < len(reason) < 1_950
    assert storage.described_whole(PermissionError(reason)) == f"PermissionError: {reason}"
    longer = storage.described_whole(PermissionError(reason + ", " + reason))
    assert len(longer) <= storage.WHOLE_REASON_CHARS and longer.endswith("…"), len(longer)


def test_a_whole_reason_s_lines_around_a_blank_one_are_joined() -> None:
    err = OSError("Forbidden\n\nreader@project.iam.gserviceaccount.com does not have storage.objects.list access\n")
    assert storage.described_whole(err) == ("OSError: Forbidden; reader@project.iam.gserviceaccount.com does not have "
                                            "storage.objects.list access")


@pytest.mark.parametrize("frames", [
    '  File "/srv/app.py", line 12, in handler\n    raise ValueError(key)\nValueError: in/',  # no Traceback line
    'File "/srv/app.py", line 12, in handler\n    raise ValueError(key)',  # not indented
])
def test_a_library_s_stack_frames_are_left_out_without_their_traceback_line(frames: str) -> None:
    err = OSError(f"the server answered 500:\ninternal error\n{frames}")
    assert storage.described_whole(err) == "OSError: the server answered 500: internal error"


class _ListRefused(MemoryFileSystem):
    """A store on which the input is found (its info answers) but its listing is refused, as gcsfs says it: an
    OSError whose second line is the reason."""

    protocol = ("mutaudit4listrefused",)
    error: Any = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("mutaudit4listrefused://"))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        if self._strip_protocol(path).startswith("/mutaudit4-listed/in"):
            raise OSError("Forbidden: https://storage.googleapis.com/storage/v1/b/bucket/o?prefix=in/\n"
                          "reader@project.iam.gserviceaccount.com does not have storage.objects.list access")
        return super().ls(path, detail, **kwargs)

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self.ls(path)
        return super().find(path, *args, **kwargs)


def test_a_listing_refused_after_the_input_was_found_is_said_whole(tmp_path, capsys) -> None:
    fsspec.register_implementation("mutaudit4listrefused", _ListRefused, clobber=True)
    _ListRefused().pipe("/mutaudit4-listed/in/a.png", b"x")
    status = main(["--input", "mutaudit4listrefused:///mutaudit4-listed/in/", "--output", str(tmp_path / "out"),
                   "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert ("OSError: Forbidden: https://storage.googleapis.com/storage/v1/b/bucket/o?prefix=***; reader@project.iam."
            "gserviceaccount.com does not have storage.objects.list access") in err, err
