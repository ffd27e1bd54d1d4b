"""An input file's bytes from storage, transient errors retried: read whole (`read_bytes`), or opened as often as a
container reader needs (`file_opener`: fetched once and served from memory up to `IN_MEMORY_BYTES`, streamed from storage
when larger, or, for a reader that seeks or reads twice, copied to a local temporary file when storage gives no size).

An input over `max_image_bytes` (a loose file, a tar member, a Parquet cell) is a reject that names its size and
the limit (`too_large`), decided from the size storage, the tar header or Arrow reports before its bytes are copied:
one huge or garbage file must not take a read task's memory (and, after Ray's retries, the whole job) with it. A
local FIFO, socket or device is not opened (`NotAFile`)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from fsspec.implementations.local import LocalFileSystem

from pipeline.sources.ids import text_name
from pipeline.sources.units import listing_stamp
from pipeline.storage import storage_path, with_retries

# Tar and Parquet files up to this size are fetched in one request and read from memory; larger ones are read
# from storage piece by piece, so a worker's memory does not grow with the size of the files it is given.
IN_MEMORY_BYTES = 256 * 2**20
# The most bytes one image (a file, a tar member, a Parquet cell) may have; a larger one is rejected unread. Any image
# the decoder accepts at its default 64 M pixels fits, even stored uncompressed at 16 bits per channel with alpha
# (8 bytes a pixel: 488 MiB, a 16-bit RGBA TIFF scan); a real photo is far smaller (a 64 MP JPEG: tens of MB). Reading
# and decoding one image at the limit takes about 1-2 GiB, what decoding a 64 M pixel image takes anyway.
MAX_IMAGE_BYTES = 512 * 2**20


class ImageTooLarge(ValueError):
    """An input over the per-image byte limit, found before its bytes were read (a permanent error: not retried)."""


class NotAFile(ValueError):
    """A local input entry that is not a regular file (a FIFO, socket or device): reading one would wait for a writer
    forever (a FIFO) or never end (/dev/zero), so it is not opened (a permanent error: not retried)."""


_NOT_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                   (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _refuse_special_file(fs_path: str) -> None:
    """Raise NotAFile for a local path (or link to) a FIFO, socket or device; a folder is left to open's own error."""
    mode = os.stat(fs_path).st_mode
    for test, kind in _NOT_FILE_KINDS:
        if test(mode):
            raise NotAFile(f"{text_name(os.path.basename(fs_path))} is {kind}, not a regular file, so it was not read "
                           "(reading it could wait or run forever)")


def too_large(what: str, size: int | None, max_image_bytes: int) -> str:
    """The reject reason of an input over `max_image_bytes` (size None: storage gave none, and more was there)."""
    limit = f"--max-image-mb {max_image_bytes / 2**20:g}"
    found = f"is {size / 2**20:.1f} MiB ({size:,} bytes)" if size is not None else f"holds more than {max_image_bytes:,} bytes"
    return (f"{what} {found}, over {limit}, so it was not read; to purify it, run again with a larger --max-image-mb "
            "and --retry-rejects")


def read_bytes(path: str, storage_options: dict[str, Any], max_bytes: int | None = None,
               listed_size: int | None = None, what: str = "image file") -> bytes:
    """The whole object, retrying transient storage errors. With `max_bytes`, a larger object raises ImageTooLarge
    before its bytes are read (from the size the opened file reports); where storage reports no size, at most
    `max_bytes` + 1 bytes are read to find out. `listed_size`: its size from the input's listing; on an object store
    the object is then fetched with one ranged GET (opening it sends a HEAD first: one more request per image).
    `what`: the file as ImageTooLarge names it (an image's sidecar file is no image file)."""

    def once() -> bytes:
        fs, fs_path = storage_path(path, storage_options)
        if listed_size and not isinstance(fs, LocalFileSystem):  # 0 bytes: a range is refused (416), open it
            if max_bytes is not None and listed_size > max_bytes:
                raise ImageTooLarge(too_large(what, listed_size, max_bytes))
            # The range ends past the limit, so an object grown since it was listed is still caught, and not read whole.
            data = fs.cat_file(fs_path, start=0, end=max_bytes + 1 if max_bytes is not None else None)
            if max_bytes is not None and len(data) > max_bytes:
                raise ImageTooLarge(too_large(what, None, max_bytes))
            return data
        if isinstance(fs, LocalFileSystem):
            _refuse_special_file(fs_path)
        with fs.open(fs_path, "rb") as f:
            size = getattr(f, "size", None)
            if max_bytes is None or isinstance(size, int):
                if max_bytes is not None and size > max_bytes:
                    raise ImageTooLarge(too_large(what, size, max_bytes))
                return f.read()
            # No size: read in pieces (read(max_bytes + 1) would allocate the whole limit for every small file).
            chunks, total = [], 0
            while total <= max_bytes and (chunk := f.read(min(2**20, max_bytes + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
            if total > max_bytes:
                raise ImageTooLarge(too_large(what, None, max_bytes))
            return b"".join(chunks)

    return with_retries(once, f"read {path}")


def file_opener(path: str, fs_opts: dict[str, Any], in_memory_bytes: int, listed_size: int | None = None,
            spool: contextlib.ExitStack | None = None) -> Callable[[], BinaryIO]:
    """How to open `path` for reading, as often as needed: a file of at most `in_memory_bytes` is fetched once
    and served from memory; a larger one is opened on storage each time, and read piece by piece. `listed_size`: its
    size from the input's listing, which spares asking storage for it (a HEAD per shard on an object store).

    `spool`: for a reader that seeks (zip, Parquet) or reads a file twice (a tar's two passes), the stack that owns a
    local copy. A file whose size storage does not give (a web server that sends no Content-Length) is then a stream
    that cannot seek, and each open downloads it again: one larger than `in_memory_bytes` is copied, in chunks, to a
    local temporary file (`_spooled`) and read from there, the file deleted when `spool` closes (the read done, or
    failed). Without it such a file is streamed, at each open."""
    fs, fs_path = storage_path(path, fs_opts)
    size = listed_size if listed_size is not None else with_retries(lambda: fs.size(fs_path), f"stat {path}")
    if size is None and spool is not None:
        return _spooled(path, fs_opts, in_memory_bytes, spool)
    # None: storage gives no size (a web server that sends no Content-Length): fetched while it fits, else streamed
    if size is None or size <= in_memory_bytes:
        try:
            # Listed (or no size): at most in_memory_bytes + 1 bytes, so a file larger than that is streamed instead.
            bounded = listed_size is not None or size is None
            raw = read_bytes(path, fs_opts, in_memory_bytes if bounded else None, listed_size)
            return lambda: io.BytesIO(raw)
        except ImageTooLarge:
            pass
    return _SameVersionOpener(path, fs, fs_path)


# What a copy of a file of unknown size to a local temporary file reads from storage, and writes, at once.
SPOOL_CHUNK_BYTES = 8 * 2**20
SPOOL_PREFIX = "zip-purify-spool-"


def _spooled(path: str, fs_opts: dict[str, Any], in_memory_bytes: int,
             spool: contextlib.ExitStack) -> Callable[[], BinaryIO]:
    """`path`, a file storage gives no size for, read once from its start: kept in memory while it holds at most
    `in_memory_bytes`, else copied on to a temporary file in the local temporary folder (`tempfile.gettempdir()`:
    $TMPDIR, else /tmp) a chunk at a time, so memory stays within `in_memory_bytes` and a chunk. The copy is deleted
    when `spool` closes; one whose copying fails is deleted at once (a transient storage error starts it again). Its
    name holds this process's id and host; copies there of processes of this host that no longer exist (read tasks
    killed mid-read) are deleted before a new one is made (`_remove_dead_copies`)."""

    def once() -> Callable[[], BinaryIO]:
        fs, fs_path = storage_path(path, fs_opts)
        made: list[str] = []  # this attempt's copy, deleted at once if the attempt fails (closing the download too)
        try:
            with fs.open(fs_path, "rb") as f:
                chunks, total = [], 0
                while total <= in_memory_bytes and (
                        chunk := f.read(min(SPOOL_CHUNK_BYTES, in_memory_bytes + 1 - total))):
                    chunks.append(chunk)
                    total += len(chunk)
                if total <= in_memory_bytes:
                    raw = b"".join(chunks)
                    return lambda: io.BytesIO(raw)
                folder = tempfile.tempdir or os.environ.get("TMPDIR") or "/tmp"  # named if gettempdir finds none
                try:
                    folder = tempfile.gettempdir()
                    _remove_dead_copies(folder)
                    handle, local = tempfile.mkstemp(prefix=_spool_prefix(), dir=folder)  # readable by this user alone
                except OSError as err:  # no usable folder (read-only, or removed since it was found), no inode left
                    raise SpoolFailed(f"no size on storage and over --in-memory-mb, so copied to read it: making the "
                                      f"copy failed ({err.strerror or err}); set TMPDIR on the workers to a folder they "
                                      f"can write (runtime_env env_vars or the nodes' environment); it was {folder}"
                                      ) from err
                made.append(local)
                # owned by `spool` from now: an error closing the download, after the copy, left it on the disk
                spool.callback(_remove_local, local)
                try:
                    for chunk in chunks:
                        _write_local(handle, chunk, local)
                    chunks.clear()
                    while chunk := f.read(SPOOL_CHUNK_BYTES):
                        _write_local(handle, chunk, local)
                finally:
                    os.close(handle)
        except BaseException:
            for local in made:
                _remove_local(local)
            raise
        return lambda: open(made[0], "rb")  # the reader closes what it opens

    return with_retries(once, f"read {path}")


def _host() -> str:
    """This host's name as it is put in a copy's name: letters, digits, '.' and '-' only, at most 64 of them; on Linux
    '_' and the inode of this process's PID namespace after it, as containers that share a host name (host networking)
    and a temporary folder may each have their own process ids, and another's live process would look dead here."""
    name = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:64]
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # 'pid:[4026531836]'
    except OSError:
        return name
    return f"{name}_{''.join(c for c in namespace if c.isdigit())}"


def _spool_prefix(pid: int | None = None, host: str | None = None) -> str:
    """The start of the name of a local copy made by process `pid` (this one) on `host` (this one):
    'zip-purify-spool-<pid>@<host>.', a random part after it. The owner is in the name so that a copy left behind
    by a read task killed mid-read (SIGKILL, out of memory: its `spool` never closed) can be told from a live one."""
    return f"{SPOOL_PREFIX}{os.getpid() if pid is None else pid}@{_host() if host is None else host}."


_COPY_NAME = re.compile(re.escape(SPOOL_PREFIX) + r"(\d+)@([A-Za-z0-9._-]*)\.[^.]+")


def _remove_dead_copies(folder: str) -> None:
    """Delete the local copies in `folder` whose owner, a process on this host, no longer exists (a read task killed
    mid-read), so that such leftovers do not fill the disk and turn later copies into full-disk rejects. A copy of a
    live process (a reader may reopen its copy by name), of another host (a shared folder) or of another user (not
    ours to delete), or one named otherwise, is kept."""
    if os.name == "nt":  # os.kill(pid, 0) there ends the process rather than asking whether it exists
        return
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(SPOOL_PREFIX) or not (found := _COPY_NAME.fullmatch(entry.name)):
            continue
        pid, owner_host = int(found.group(1)), found.group(2)
        if owner_host != host or pid == os.getpid() or pid <= 0:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # no such process: the copy's owner died without deleting it
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.remove(entry.path)
        except (OSError, OverflowError):  # PermissionError: another user's live process; else not known dead: kept
            pass


class SpoolFailed(ValueError):
    """The local copy of a file of unknown size could not be made or written (a full disk, no temporary folder it can
    write): a permanent error, not retried."""


def _write_local(handle: int, chunk: bytes, local: str) -> None:
    """Write `chunk` to the local copy (unbuffered: nothing is left to fail when it is closed), an error saying where
    (a full disk is no storage error: not retried). TMPDIR is read where the copy is made, a Ray worker, so the
    advice comes before the folder: a reject's reason is cut at 300 characters, and a long folder is what is cut."""
    try:
        view = memoryview(chunk)
        while view:
            view = view[os.write(handle, view) :]
    except OSError as err:
        raise SpoolFailed(f"no size on storage and over --in-memory-mb, so copied to read it: writing the copy "
                          f"failed ({err.strerror or err}); set TMPDIR to a larger disk on the workers (runtime_env "
                          "env_vars or the nodes' environment), or free space in "
                          f"{os.path.dirname(local)}") from err


def _remove_local(local: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(local)


class InputChangedWhileRead(Exception):
    """An input read more than once (a large tar shard's two passes, a pass started again after a storage error) that
    was replaced between two of its reads: what the first read found no longer holds (a permanent error for this read;
    the input as it is now is read in a later run)."""


class _SameVersionOpener:
    """Opens a file on storage as often as asked, each time checking that it is the version the first open found (its
    ETag on an object store, its inode, size and modification time on a local disk): a reader that trusts an index
    made by an earlier pass must not read another file's members against it. A store that gives neither is not
    checked."""

    def __init__(self, path: str, fs: Any, fs_path: str) -> None:
        self.path, self.fs, self.fs_path = path, fs, fs_path
        self.first: tuple[Any, ...] | None = None
        self.opened = False

    def __call__(self) -> BinaryIO:
        def open_again() -> BinaryIO:
            # s3fs takes the ETag it reads against from its listing cache, which may predate a new upload. Only a
            # second open asks storage afresh: a first one reads against the listing (a HEAD per file saved), and an
            # upload since then makes its reads fail with FileExpired, which is said as a change too.
            if self.opened:
                self.fs.invalidate_cache(self.fs_path)
            return self.fs.open(self.fs_path, "rb")

        f = with_retries(open_again, f"open {self.path}")
        version = _version_of(f) or _listed_version(self.fs, self.fs_path)
        if not self.opened:
            self.first, self.opened = version, True
        elif version != self.first and None not in (version, self.first):
            f.close()
            raise InputChangedWhileRead(replaced_while_read(
                self.fs_path, {"etag": "ETag", "stat": "size or modification time"}.get(
                    version[0], "ETag, Last-Modified date or size, as its store gave them")))
        return f


def _listed_version(fs: Any, fs_path: str) -> tuple[Any, ...] | None:
    """A file's version as its store describes it (its ETag, Last-Modified date or mtime, with its size), for a file
    object that carries none: fsspec's web file holds only its size (a web shard rewritten between its two passes had
    the new version's members read against the old one's index), an SFTP file has no descriptor. None when the store
    says nothing, or cannot be asked: then the read itself says what is wrong."""
    try:
        info = fs.info(fs_path)
    except Exception:  # noqa: BLE001 - the check is a safeguard; the open that follows reports a real failure
        return None
    stamp, size = listing_stamp(info), info.get("size")
    return ("listed", stamp, size) if stamp is not None or isinstance(size, int) else None


def replaced_while_read(path: str, what: str = "ETag") -> str:
    """The reason given for an input replaced between two of its reads, or during one (`what` changed)."""
    return (f"{text_name(os.path.basename(path.rstrip('/')))} was replaced while this run read it (its {what} "
            "changed between two of its reads), so what was read of it does not hold; run again with --retry-rejects "
            "to read it as it is now")


def changed_while_read(err: BaseException) -> bool:
    """Whether `err` says an input changed under a read: ours, or s3fs's FileExpired (a new upload while an open file
    read the old one: its ranged GETs ask for the ETag the open saw)."""
    return isinstance(err, InputChangedWhileRead) or type(err).__name__ == "FileExpired"


def _version_of(f: Any) -> tuple[Any, ...] | None:
    """Which version of a file an open file object reads: ('etag', ETag) from an object store's details, ('stat', inode,
    size, mtime) for a local file, else None."""
    details = getattr(f, "details", None)
    if isinstance(details, dict) and (etag := details.get("ETag") or details.get("etag")):
        return ("etag", etag)
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return ("stat", st.st_ino, st.st_size, st.st_mtime_ns)
