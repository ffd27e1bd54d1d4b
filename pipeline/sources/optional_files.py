"""Optional files the job looks for beside the inputs (a TFDS `features.json` beside TFRecord files), on stores whose
credentials may read objects but not list them.

S3 answers a HEAD or GET of a key that is not there with 403, not 404, to credentials without s3:ListBucket (Google
Cloud Storage likewise without storage.objects.list): the look for a file that most data sets do not hold is then
refused, as is the read of one that is there but not granted. A refusal is therefore asked of a listing
(`listed_there`): where the listing says the file is not there it is absent, as a 404 would have said; where it is
there the refusal stands (the file is needed); where the listing is refused too, the two cannot be told apart, and an
optional file is taken as absent, with a note (`unknown_note`) that names it and the permission that would make it
certain, so that a run over one granted key is not made of rejects for a file it may never have had. Only object
stores answer so, and web servers, which may serve one (S3's website endpoints, a CDN in front of a bucket) or
refuse every address alike: elsewhere (a local disk, SFTP) a missing file is "not there" whoever asks, and a refused
one is there."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.redaction import redact_uri
from pipeline.storage import (
    OBJECT_STORE_PROTOCOLS,
    S3_PROTOCOLS,
    WEB_PROTOCOLS,
    access_denied,
    describe,
    list_permission,
    protocols,
    with_protocol,
    with_retries,
)

T = TypeVar("T")


class RefusedFile(PermissionError):
    """An optional file that is there but that these credentials may not read."""


def read_optional(read: Callable[[], T | None], fs: Any, path: str, taken_as: str) -> tuple[T | None, str | None]:
    """`read()` of optional file `path` on `fs` (None where it is not there), and None; or, where the store refused it
    and may not be asked whether it is there, (None, `unknown_note`). RefusedFile where it is there but refused."""
    try:
        return read(), None
    except Exception as err:
        if not access_denied(err):
            raise
        if OBJECT_STORE_PROTOCOLS.isdisjoint(protocols(fs)) and WEB_PROTOCOLS.isdisjoint(protocols(fs)):
            # a disk, SFTP or HDFS says "not there" of a missing file whoever asks: a refused one is there
            raise refused_there(fs, path, err) from err
        there = listed_there(fs, path)
        if there:
            raise refused_there(fs, path, err) from err
        return None, None if there is False else unknown_note(fs, path, err, taken_as)


def listed_there(fs: Any, path: str) -> bool | None:
    """After a look at `path` was refused: whether it is there, by a listing. None where the listing is refused too.
    On S3 one request of at most one key (the key itself as the prefix: a folder of thousands is not listed); on
    other stores the listing of its folder."""
    try:
        if not S3_PROTOCOLS.isdisjoint(protocols(fs)):
            bucket, key, _ = fs.split_path(path)
            answer = with_retries(lambda: fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1),
                                  f"list {with_protocol(fs, path)}")
            return any(item.get("Key") == key for item in answer.get("Contents", []))
        folder = posixpath.dirname(path.rstrip("/"))
        fs.invalidate_cache(folder)  # a listing cached before the file was written would say it is not there
        names = with_retries(lambda: fs.ls(folder, detail=False), f"list {with_protocol(fs, folder)}")
        wanted = fs._strip_protocol(path)
        return any(fs._strip_protocol(str(name)) == wanted for name in names)
    except FileNotFoundError:  # its folder is not there either
        return False
    except Exception as err:
        if access_denied(err):
            return None
        raise


def refused_there(fs: Any, path: str, err: BaseException) -> RefusedFile:
    """The error for an optional file that is there but refused (`err`), naming it and what to grant: on a disk it is
    the user the job runs as, not a store's credentials, that may not read it; on a server (SFTP, HDFS) the user it
    logs in as, not this machine's."""
    names = set(protocols(fs))
    reader = ("these credentials" if names & (OBJECT_STORE_PROTOCOLS | WEB_PROTOCOLS) else "the user the job runs as"
              if names & {"file", "local"} else "the user the job logs in to the server as")
    # the OS's error names the file again (open()'s "[Errno 13] Permission denied: '/path'"): said once, so that a
    # reject's reason, cut at a reason's length, keeps what to do
    why = describe(err)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        why = f"{type(err).__name__}: {'' if err.errno is None else f'[Errno {err.errno}] '}{err.strerror}"
    return RefusedFile(f"{_shown(fs, path)} is there but {reader} may not read it ({why}): "
                       "grant read access to it, or move it away")


def unknown_note(fs: Any, path: str, err: BaseException, taken_as: str) -> str:
    """The note for an optional file whose look was refused and whose folder may not be listed (`listed_there` None):
    taken as absent, `taken_as` saying what that means for the inputs beside it."""
    return (f"{_shown(fs, path)} was taken as absent ({taken_as}): the store refused to look it up "
            f"({describe(err)}) and these credentials may not list its folder, so it cannot tell a file that is not "
            f"there from one that may not be read; grant {list_permission(fs)} (or read access to it) to make it certain")


def _shown(fs: Any, path: str) -> str:
    """`path` as its messages name it: a web input's files are listed under its address as given, a password in it too
    ('http://user:password@host/tf/'), and these messages are printed as they are."""
    return redact_uri(with_protocol(fs, path))
