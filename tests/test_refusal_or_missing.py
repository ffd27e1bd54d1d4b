"""A store's refusal told from a missing file and from any other error (`storage.access_denied`): a refusal gets advice
that sends the user after a permission (or, on an object store without its list permission, a mistyped key as well),
so an error taken for one that is not sends them after the wrong fix."""

from __future__ import annotations

import errno
import io
import zipfile

from pipeline.storage import access_denied


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
    carrying an errno, is no refusal: taken for one, a missing file was said to be 'refused' and the advice asked for
    a permission."""
    assert access_denied(OSError("Forbidden: https://storage.googleapis.com/storage/v1/b/bucket/o/in%2Fa.png\n"
                                 "reader@project.iam.gserviceaccount.com does not have storage.objects.get access"))
    missing = _missing_archive_member("Forbidden.png")
    assert str(missing) == "Forbidden.png" and not access_denied(missing)
    assert not access_denied(_missing_archive_member("Forbidden: the member/a.png"))
    assert not access_denied(OSError(errno.EIO, "Forbidden: the proxy's answer"))  # s3fs's error for an unknown code
    assert not access_denied(OSError("Not found: Forbidden.png"))
    assert access_denied(PermissionError(13, "Permission denied", "/data/in/a.png"))
