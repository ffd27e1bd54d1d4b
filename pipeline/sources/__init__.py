"""Input discovery and raw reading: folders of image files, tar shards, Parquet files, zip archives.

The reader yields raw bytes plus metadata, one record per input image; decoding happens in a
later stage so that a bad file becomes one reject row, never a failed block. Every record has
a stable `id` (what resume and incremental runs key on) and a `source` saying where it came from.

Record kinds flowing through the job:
- "image": id, source, source_sha256, data (bytes), meta (pass-through columns, e.g. label, named apart from the job's
  own: `passthrough_name`), and for a Parquet row meta_types (each meta column's Arrow type in the input)
- "reject": id, source, source_sha256 (may be None), error, stage, rejected_at (when it was made, UTC)

An input over `max_image_bytes` (a loose file, a tar member, a Parquet cell) is a reject that names its size and
the limit, decided from the size storage, the tar header or Arrow reports before its bytes are copied: one huge
or garbage file must not take a read task's memory (and, after Ray's retries, the whole job) with it.
- "count": n — how many image+reject records one read unit produced (checks read = purified + rejected); with
  "hidden" and "hidden_examples" when the unit skipped hidden entries (a zip archive's `__MACOSX/`, `_x`; a tar
  shard's macOS metadata)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import stat
import struct
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.storage import backoff, describe, is_transient, is_url_chain, storage_path, with_protocol, with_retries

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".webp", ".gif"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")
PARQUET_SUFFIXES = (".parquet", ".pq")
ZIP_SUFFIXES = (".zip",)
IMAGE_COLUMN_CANDIDATES = ("image", "img", "image_bytes", "bytes", "jpg", "png")
# Tar and Parquet files up to this size are fetched in one request and read from memory; larger ones are read
# from storage piece by piece, so a worker's memory does not grow with the size of the files it is given.
IN_MEMORY_BYTES = 256 * 2**20
# The most bytes one image (a file, a tar member, a Parquet cell) may have; a larger one is rejected unread. Any image
# the decoder accepts at its default 64 M pixels fits, even stored uncompressed at 16 bits per channel with alpha
# (8 bytes a pixel: 488 MiB, a 16-bit RGBA TIFF scan); a real photo is far smaller (a 64 MP JPEG: tens of MB). Reading
# and decoding one image at the limit takes about 1-2 GiB, what decoding a 64 M pixel image takes anyway.
MAX_IMAGE_BYTES = 512 * 2**20
# The id of the reject of a tar member that gives the id of one purified in an earlier run (`_read_tar`): the shard's
# id, this, and that id's key ('s.tar#lookalike/caf\\xe9'). A member's id is the shard's id and '/', so it is never one.
LOOKALIKE = "#lookalike/"


@dataclass(frozen=True)
class ReadUnit:
    """One task's worth of input: a tar shard, a Parquet file, a zip archive, or a group of image files."""

    kind: str  # "files" | "tar" | "parquet" | "zip"
    paths: tuple[str, ...]  # full fsspec paths (protocol included)
    root: str  # the input root, to make ids relative
    sizes: tuple[int | None, ...] = ()  # bytes per path as listed (None where storage gave none); () if not listed
    stamps: tuple[str | None, ...] = ()  # a container's version as listed (listing_stamp); () for image files

    def to_row(self) -> dict[str, Any]:
        # The listed sizes go to the read task (-1: none listed; Arrow turns a list with nulls into floats): with
        # them, an object store's file is fetched in one request, without the HEAD its open would send first.
        sizes = self.sizes or (None,) * len(self.paths)
        return {"kind": self.kind, "paths": list(self.paths), "root": self.root,
                "sizes": [-1 if size is None else int(size) for size in sizes]}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReadUnit:
        sizes = row.get("sizes")
        listed = tuple(None if size is None or size < 0 else int(size) for size in sizes) if sizes is not None else ()
        return cls(row["kind"], tuple(row["paths"]), row["root"], listed if len(listed) == len(row["paths"]) else ())


# Listing fields that change when an object or file is replaced: S3's ETag (and VersionId when versioned), GCS's
# generation, a local file's mtime and inode. A listing with none of them cannot tell a replaced shard from the one
# read before (pipeline.ledger), so such a container is always read.
VERSION_FIELDS = ("ETag", "etag", "VersionId", "generation", "mtime", "LastModified", "last_modified", "ino")


def listing_stamp(info: dict[str, Any]) -> str | None:
    """What a listing entry says of its file's version, as one comparable string; None when it says nothing."""
    fields = {name: str(info[name]) for name in VERSION_FIELDS if info.get(name) is not None}
    if not fields or set(fields) == {"ino"}:  # an inode alone survives rewriting the file in place
        return None
    return json.dumps(fields, sort_keys=True)


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
               listed_size: int | None = None) -> bytes:
    """The whole object, retrying transient storage errors. With `max_bytes`, a larger object raises ImageTooLarge
    before its bytes are read (from the size the opened file reports); where storage reports no size, at most
    `max_bytes` + 1 bytes are read to find out. `listed_size`: its size from the input's listing; on an object store
    the object is then fetched with one ranged GET (opening it sends a HEAD first: one more request per image)."""

    def once() -> bytes:
        fs, fs_path = storage_path(path, storage_options)
        if listed_size and not isinstance(fs, LocalFileSystem):  # 0 bytes: a range is refused (416), open it
            if max_bytes is not None and listed_size > max_bytes:
                raise ImageTooLarge(too_large("image file", listed_size, max_bytes))
            # The range ends past the limit, so an object grown since it was listed is still caught, and not read whole.
            data = fs.cat_file(fs_path, start=0, end=max_bytes + 1 if max_bytes is not None else None)
            if max_bytes is not None and len(data) > max_bytes:
                raise ImageTooLarge(too_large("image file", None, max_bytes))
            return data
        if isinstance(fs, LocalFileSystem):
            _refuse_special_file(fs_path)
        with fs.open(fs_path, "rb") as f:
            size = getattr(f, "size", None)
            if max_bytes is None or isinstance(size, int):
                if max_bytes is not None and size > max_bytes:
                    raise ImageTooLarge(too_large("image file", size, max_bytes))
                return f.read()
            # No size: read in pieces (read(max_bytes + 1) would allocate the whole limit for every small file).
            chunks, total = [], 0
            while total <= max_bytes and (chunk := f.read(min(2**20, max_bytes + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
            if total > max_bytes:
                raise ImageTooLarge(too_large("image file", None, max_bytes))
            return b"".join(chunks)

    return with_retries(once, f"read {path}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def _is_zip(path: str) -> bool:
    return path.lower().endswith(ZIP_SUFFIXES)


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


HIDDEN_EXAMPLES = 10  # names of hidden entries a run's summary shows (its count is of all of them)


class HiddenSkipped:
    """Hidden entries (`_hidden`: a name or folder starting with '.' or '_') left out of a run: how many, and the
    first few names. Counted so that an input whose images all lie under such a name (a mislabelled `_train/`)
    does not end as "0 read" with no hint."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.examples) < HIDDEN_EXAMPLES:
            self.examples.append(name)


def hidden_note(count: int, examples: list[str]) -> str:
    """What a run says of the hidden entries it skipped: a mislabelled folder (`_train/`) is otherwise invisible."""
    shown = ", ".join(examples[:3]) + (", ..." if count > 3 else "")
    return f"{count} hidden entr{'y' if count == 1 else 'ies'} (names starting with . or _) skipped, not read: {shown}"


def text_name(name: str) -> str:
    """`name` as valid UTF-8 text: ids, sources, errors and column names are Parquet strings, which must be. A local
    name that is not UTF-8 (a latin-1 'café' from an old disk or tar) reaches Python with each byte it cannot decode
    as a lone surrogate (surrogateescape); such a byte is written as `\\xe9` (Python's backslashreplace) and, in such
    a name only, a backslash as `\\\\`, so the name's bytes can be read back from it (any other lone surrogate, from a
    JSON escape, as `\\ud800`). A valid name is returned unchanged: the ids earlier runs wrote stay the same."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    out = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # one undecodable byte, 0x80-0xff
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def relative_id(path: str, root: str) -> str:
    """A path relative to the input root, '/'-separated (the record id for file inputs), as valid text (`text_name`)."""
    path, root = path.split("://", 1)[-1], root.split("://", 1)[-1].rstrip("/")
    if path == root:
        return text_name(posixpath.basename(path))
    # A listed path is its root, '/', then plain names: cut it there. posixpath.relpath makes both paths absolute
    # and splits them (10 us a path): called several times for each of a listing's files, it was seconds at 100k.
    if root and path.startswith(root + "/"):
        rest = path[len(root) + 1 :]
        if not any(part in ("", ".", "..") for part in rest.split("/")):
            return text_name(rest)
    return text_name(posixpath.relpath(path, root))


def input_location(uri: str, storage_options: dict[str, Any]) -> str | None:
    """The folder an input's ids are relative to (`discover`: the input folder, or a single input file's folder),
    normalised so that one location compares equal however it is written ('file://', './', a trailing '/'): a
    local one with links resolved (a 'latest' link moved to another day's folder is another input), a remote one
    with its protocol. None when the input is not there (`discover` says so, with its hints)."""
    fs, path = storage_path(uri, storage_options)
    try:
        info = with_retries(lambda: fs.info(path), f"look up {uri}")
    except FileNotFoundError:
        return None
    folder = posixpath.dirname(path) if info.get("type") == "file" else path
    if "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol):
        return os.path.realpath(folder)
    return with_protocol(fs, folder.rstrip("/"))


def discover(uri: str, storage_options: dict[str, Any] | None = None, files_per_unit: int = 64,
             hidden: HiddenSkipped | None = None, exclude: Callable[[str], bool] | None = None) -> list[ReadUnit]:
    """List the input units under `uri` (a file or a folder/prefix), sorted, hidden files skipped (counted in
    `hidden`, from the same listing: no more storage requests). A hidden file for which `exclude` (given the listed
    path with its protocol) is true is left out uncounted: the job's own output files, found inside its input.

    Every non-hidden file is an input: tar and Parquet files by suffix, everything else as an image
    file (its content decides; a non-image ends up in rejects with the reason, never silently dropped).
    """
    if is_url_chain(uri):
        raise ValueError(f"input {uri} is an fsspec URL chain, which is not supported: give the storage's own URI "
                         "(s3://..., a path) and its settings with --storage-option")
    fs, root = storage_path(uri, storage_options or {})
    try:
        # Not fs.exists: s3fs answers False for a bucket on any error, so a revoked key or a throttled request read
        # "does not exist"; info raises what went wrong (PermissionError, a transient OSError to retry).
        fs.info(root)
    except FileNotFoundError:
        glob = " (wildcards are not expanded: give a folder, a prefix or one file)" if any(c in uri for c in "*[") else ""
        raise FileNotFoundError(f"input {uri} does not exist{glob}") from None
    if fs.isfile(root):
        listed, root_dir = {root: fs.info(root)}, posixpath.dirname(root)
    else:
        # detail=True: the sizes come with the same listing requests, for the dry run's report. A zero-byte key
        # ending in '/' is an object store's folder marker (S3 console "Create folder", Hadoop tools): not a file.
        unlistable: list[tuple[str, OSError]] = []
        listed, skipped = {}, []
        for p, info in _find_following_links(fs, root, unlistable=unlistable).items():
            if p.endswith("/") and not info.get("size"):
                continue
            rel = relative_id(p, root)
            if _hidden(rel):
                # the output's _summary.json, lease, temporaries: not the user's input, so no hidden input skipped
                if exclude is None or not exclude(with_protocol(fs, p)):
                    skipped.append(rel)
            else:
                listed[p] = info
        if hidden is not None:  # set, not added to: a retried listing counts once
            hidden.count, hidden.examples = len(skipped), sorted(skipped)[:HIDDEN_EXAMPLES]
        unlistable = [(p, err) for p, err in unlistable if p == root or not _hidden(relative_id(p, root))]
        if unlistable:  # its files would be left out of the run unseen, and the run called complete
            folder, err = unlistable[0]
            more = f" (and {len(unlistable) - 1} more)" if len(unlistable) > 1 else ""
            raise OSError(err.errno, f"input folder {text_name(folder)}{more} cannot be listed ({describe(err)}), so "
                          "its files would be left out of the run unseen: make it readable, or move it out of the input "
                          "(a folder whose name starts with '_' or '.' is skipped)") from err
        root_dir = root
    root_uri = with_protocol(fs, root_dir)
    units: list[ReadUnit] = []
    images: list[tuple[str, int | None]] = []
    for p in sorted(listed):
        full, size = with_protocol(fs, p), listed[p].get("size")
        if _is_tar(p):
            units.append(ReadUnit("tar", (full,), root_uri, (size,), (listing_stamp(listed[p]),)))
        elif _is_parquet(p):
            units.append(ReadUnit("parquet", (full,), root_uri, (size,), (listing_stamp(listed[p]),)))
        elif _is_zip(p):
            units.append(ReadUnit("zip", (full,), root_uri, (size,), (listing_stamp(listed[p]),)))
        else:
            images.append((full, size))
    # containers too: on an object store a shard 'd.tar/x.parquet' can lie under a shard 'd.tar'
    _refuse_colliding_ids(units, [*(p for p, _ in images), *(u.paths[0] for u in units)], root_uri)
    _refuse_escaped_twins(sorted(listed), root_dir)
    for i in range(0, len(images), files_per_unit):
        group = images[i : i + files_per_unit]
        units.append(ReadUnit("files", tuple(p for p, _ in group), root_uri, tuple(size for _, size in group)))
    return units


def _odd_key(path: str) -> bool:
    """An object store key with an empty, '.' or '..' folder ('a//b.png', 'a/./b.png', 'x/../b.png'), or holding bytes
    under a name ending in '/': its id drops them (`relative_id`), so another key may give the same id."""
    return "//" in path or "/./" in path or "/../" in path or path.endswith(("/", "/.", "/.."))


def _refuse_escaped_twins(paths: list[str], root: str) -> None:
    """Stop when two listed files give one id, which the output keeps once, so one of the two would be lost: a name that
    is not UTF-8, written with escapes (`text_name`: b'caf\\xe9.png' as 'caf\\xe9.png'), and a file that is named so (a
    literal backslash, 'x', two hex digits); or, on an object store, keys that differ only in empty, '.' or '..'
    folders ('a//b.png' beside 'a/b.png'). Looked for only when some name is not UTF-8 or some key has such a folder
    (the only ways two files give one id); renaming one is the fix."""
    if all((p.isascii() or text_name(p) == p) and not _odd_key(p) for p in paths):
        return
    first: dict[str, str] = {}
    twins = []
    for p in paths:
        id_ = relative_id(p, root)
        if id_ in first:
            twins.append((first[id_], p))
        first.setdefault(id_, p)
    escaped = [(a, b) for a, b in twins if not (_odd_key(a) or _odd_key(b))]
    if escaped:
        def named(p: str) -> str:  # the two print alike as text; their bytes tell them apart (as for tar members)
            try:
                raw = p.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = p.encode("utf-8", "surrogatepass")
            return f"{text_name(p)} (as bytes: {raw!r})"

        shown = "; ".join(f"{named(a)} and {named(b)}" for a, b in escaped[:5])
        raise ValueError(f"{len(escaped)} pair(s) of input files have one id once the bytes of a name that are not "
                         f"UTF-8 are written as \\xNN, so one of each pair would be lost from the output: {shown}; "
                         "rename one")
    if twins:
        shown = "; ".join(f"{text_name(a)!r} and {text_name(b)!r} (id {relative_id(a, root)})" for a, b in twins[:5])
        raise ValueError(f"{len(twins)} pair(s) of input files have one id, since an id leaves out the empty, '.' and "
                         f"'..' folders of an object's key, so one of each pair would be lost from the output: {shown}; "
                         "rename (copy and delete) one")


# What discover reads of a listing entry: its size, its type and the fields of its version stamp (listing_stamp); and
# "islink", which the walk below reads. fsspec's local info holds ~12 fields (~830 bytes a file with its objects): at
# 10^6 files, held together until the listing ends, they were most of the driver's memory.
_KEPT_FIELDS = ("size", "type", "islink", *VERSION_FIELDS)
# The fields of fsspec's local info (LocalFileSystem.info); of VERSION_FIELDS, only mtime and ino are among them.
_LOCAL_INFO_FIELDS = frozenset(("name", "size", "type", "created", "islink", "mode", "uid", "gid", "mtime", "ino",
                                "nlink", "destination"))
# _local_ls does what these do; a subclass overriding either is listed through its own ls.
_FSSPEC_LOCAL_LS, _FSSPEC_LOCAL_INFO = LocalFileSystem.ls, LocalFileSystem.info


class _LocalEntry(Mapping[str, Any]):
    """A local file's listing entry, read as a dict of its kept fields: in slots, ~80 bytes against a dict's ~190."""

    __slots__ = ("size", "type", "islink", "mtime", "ino")

    def __init__(self, info: dict[str, Any]) -> None:
        self.size, self.type, self.islink = info["size"], info["type"], info["islink"]
        self.mtime, self.ino = info["mtime"], info["ino"]

    def __getitem__(self, name: str) -> Any:
        if name not in self.__slots__:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:  # Mapping's raises and catches KeyError: slower
        return getattr(self, name) if name in self.__slots__ else default

    def __contains__(self, name: object) -> bool:
        return name in self.__slots__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__slots__)

    def __len__(self) -> int:
        return len(self.__slots__)

    def __repr__(self) -> str:
        return repr(dict(self))


def _kept(info: dict[str, Any]) -> Mapping[str, Any]:
    if info.keys() <= _LOCAL_INFO_FIELDS:  # no version field but mtime and ino
        try:
            return _LocalEntry(info)
        except KeyError:
            pass
    return {name: info[name] for name in _KEPT_FIELDS if name in info}  # an fsspec whose info has other fields


def _local_ls(fs: LocalFileSystem, path: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    """fs.ls(path, detail=True) as (name, type, kept fields), each entry cut down as it is listed: fsspec's ls builds
    the whole folder's full infos first, ~830 MB for one folder of 10^6 files. Its steps: fs.info on the folder, then
    on each scandir entry, one gone meanwhile skipped; any other error raised, so that the folder is left out whole
    as fsspec's walk leaves it. A file system whose ls or info is not fsspec's own is listed through its ls."""
    if type(fs).ls is not _FSSPEC_LOCAL_LS or type(fs).info is not _FSSPEC_LOCAL_INFO:
        return [(info["name"], info["type"], _kept(info)) for info in fs.ls(path, detail=True)]
    path_info = fs.info(path)
    if path_info["type"] != "directory":
        return [(path_info["name"], path_info["type"], _kept(path_info))]
    entries = []
    with os.scandir(path) as it:
        for entry in it:
            try:
                info = fs.info(entry)
            except FileNotFoundError:
                continue
            entries.append((info["name"], info["type"], _kept(info)))
    return entries


def _local_find(fs: LocalFileSystem, root: str) -> dict[str, Mapping[str, Any]]:
    """fs.find(root, detail=True, withdirs=True) with each entry cut to `_kept` folder by folder as the walk goes: the
    same paths in the same (sorted) order, a folder that cannot be listed left out (its entry kept, nothing under it),
    links not followed (fsspec's walk sees a link as a file)."""
    path = fs._strip_protocol(root)
    out: dict[str, Mapping[str, Any]] = {}
    if path != "" and fs.isdir(path):
        out[path] = _kept(fs.info(path))
    folders = [path]
    while folders:  # fsspec's walk; the order it visits folders in does not matter, the result is sorted
        folder = fs._strip_protocol(folders.pop())
        try:
            entries = _local_ls(fs, folder)
        except OSError:  # FileNotFoundError included; walk(on_error="omit")
            continue
        for name, type_, info in entries:
            pathname = name.rstrip("/")
            if type_ == "directory" and pathname != folder:
                folders.append(pathname)
            out[name] = info
    if not out and fs.isfile(path):
        out[path] = {}
    return {name: out[name] for name in sorted(out)}


def _find_following_links(fs: fsspec.AbstractFileSystem, root: str, _inside: tuple[str, ...] = (),
                           unlistable: list[tuple[str, OSError]] | None = None) -> dict[str, Mapping[str, Any]]:
    """Every file under `root`, with sizes. A local folder reached through a symbolic link (fsspec lists the link
    as one entry, which would be read as one file and rejected) is listed too, under the link's path; a link to a
    folder that is being listed already (a loop) stays one entry, and so a reject naming it. Only local file
    systems report links. A local folder that cannot be listed (no permission, an I/O error) goes into `unlistable`
    with its error: fsspec's walk leaves such a folder out, and its files with it, without a word. A local file's
    entry holds only the fields in `_KEPT_FIELDS`; an object store's is its file system's own (s3fs builds and caches
    the whole listing itself, so cutting it down after would not lower the peak)."""
    local = isinstance(fs, LocalFileSystem)
    listed: dict[str, Mapping[str, Any]] = {}
    # folders too, to tell an unlistable one from an empty one
    found = _local_find(fs, root) if local else fs.find(root, detail=True)
    if local and unlistable is not None:
        holding = {posixpath.dirname(p) for p in found}
        for folder in (p for p, info in found.items() if info.get("type") == "directory" and p not in holding):
            try:
                fs.ls(folder)  # nothing was listed in it: empty, or its listing failed
            except OSError as err:
                unlistable.append((folder, err))
    for path, info in found.items():
        if local and info.get("type") == "directory":
            continue
        if info.get("islink") and fs.isdir(path):
            inside = _inside or (os.path.realpath(root),)
            target = os.path.realpath(path)
            if not any(target == folder or folder.startswith(target + os.sep) for folder in inside):
                listed.update(_find_following_links(fs, path, (*inside, target), unlistable))
                continue
        listed[path] = info
    return listed


def _refuse_colliding_ids(containers: list[ReadUnit], image_files: list[str], root: str) -> None:
    """Stop when an image file's id could equal a tar member's (`x.tar/k`, or `x.tar/cat.0` for a shard of Kaggle-style
    names), a zip member's (`x.zip/a/b.jpg`) or a reject's or Parquet row's (`x.tar#unreadable`, `t.parquet#0`): the
    output keeps one row per id, so one of the two would be lost. Any file under a tar shard or zip archive (its id, then
    '/') is refused, whatever its name: a tar key may hold dots, and `pipeline.ledger` counts every id under a
    container as the container's; so is one under a shard's look-alike rejects (`x.tar#lookalike/`). Only odd names
    collide (on an object store, an object `x.tar/k.png` beside a shard `x.tar`, or `x.zip/a.jpg` beside `x.zip`; a
    file named `t.parquet#0`); renaming one is the fix."""
    containers_by_id = {relative_id(unit.paths[0], root): unit for unit in containers}

    def clash(id_: str) -> str | None:
        head, sep, rest = id_.rpartition("#")  # the last '#': a folder's name may hold one (as container_ids)
        if sep and head in containers_by_id and (rest == "unreadable" or rest.isdigit()):
            return containers_by_id[head].paths[0]
        head, sep, _ = id_.partition(LOOKALIKE)
        if sep and head in containers_by_id and containers_by_id[head].kind == "tar":
            return containers_by_id[head].paths[0]
        # A shard whose id is one of this id's folders: looked up folder by folder, not shard by shard (files x
        # shards comparisons took 10 s for 100,000 files beside 200 shards, and grew with both).
        at = id_.find("/")
        while at > 0:
            unit = containers_by_id.get(id_[:at])
            if unit is not None and unit.kind in ("tar", "zip"):
                return unit.paths[0]
            at = id_.find("/", at + 1)
        return None

    if not containers_by_id:
        return
    clashes = [(path, found) for path in image_files if (found := clash(relative_id(path, root)))]
    if clashes:
        shown = "; ".join(f"{path} (beside {container})" for path, container in clashes[:5])
        raise ValueError(f"{len(clashes)} input file(s) have ids that a tar or zip member's or a Parquet row's id could "
                         f"equal, so one of the two would be lost from the output: {shown}; rename them")


# The data table's own columns (pipeline.stages._data_table writes them; original_path is the path field of a Parquet
# input's struct<bytes, path> image). An input's column of one of these names is renamed (`passthrough_name`).
JOB_COLUMNS = frozenset({"id", "image", "width", "height", "source", "source_sha256", "original_path", "original_mode",
                         "original_format", "original_frames", "psnr_vs_input_db", "downscale_factor"})
RENAMED_PREFIX = "input_"


def passthrough_name(name: str) -> str:
    """The output column of an input's own column (a Parquet column, a tar .json key or sidecar): its name, unless that
    is one of the job's columns (`JOB_COLUMNS`), or one with `input_` (once or more) before it; such a name gets one more
    `input_` (id -> input_id, and input_id, as in a re-purified output, -> input_input_id). The rule looks at the name
    alone, so a column has one name in every part file, and no two input names get the same one: none is lost."""
    bare = name
    while bare.startswith(RENAMED_PREFIX):
        bare = bare[len(RENAMED_PREFIX) :]
    return RENAMED_PREFIX + name if bare in JOB_COLUMNS else name


def _image_record(id_: str, source: str, data: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "image", "id": text_name(id_), "source": text_name(source), "source_sha256": sha256(data),
            "data": data, "meta": meta}


def reject_record(id_: str, source: str, error: str, stage: str, source_sha256: str | None = None) -> dict[str, Any]:
    # rejected_at: of two reject rows of one id (a --retry-rejects run killed before its end-of-run check), the end of
    # a later run keeps the newer, today's reason; the order of the file names says nothing about which is newer
    return {"kind": "reject", "id": text_name(id_), "source": text_name(source), "source_sha256": source_sha256,
            "error": text_name(error), "stage": stage, "meta": {}, "rejected_at": datetime.now(UTC)}


def _folder_link_reason(path: str) -> str:
    """The reject reason of an input entry that is a folder: a local link to a folder being listed already (a loop),
    which `discover` does not follow; 'Is a directory' alone did not say why it was not listed."""
    local = path.removeprefix("file://")
    if os.path.islink(local):
        return (f"not read: a link to a folder that is being listed already ({text_name(os.path.basename(local))} -> "
                f"{text_name(os.readlink(local))}: a loop), which is not followed; that folder's files are read under "
                "their own paths")
    return "not read: a folder, not a file (it was not one when the input was listed)"


def _read_files(unit: ReadUnit, fs_opts: dict[str, Any], labels_from_folders: bool,
                max_image_bytes: int) -> Iterator[dict[str, Any]]:
    for path, size in zip(unit.paths, unit.sizes or (None,) * len(unit.paths), strict=True):
        id_ = relative_id(path, unit.root)
        meta: dict[str, Any] = {}
        if labels_from_folders:
            parent = posixpath.dirname(id_)
            meta["label"] = posixpath.basename(parent) if parent else None
        if path.endswith("/"):  # `discover` keeps such a key when it holds bytes: no folder marker, but unreadable
            yield reject_record(id_, path, f"not read: an object whose key ends in '/' holding {size} bytes (a folder "
                                "marker holds none); s3fs drops the '/' and cannot read it: copy it to a key without "
                                "the '/'", "read")
            continue
        try:
            data = read_bytes(path, fs_opts, max_image_bytes, listed_size=size)
        except (ImageTooLarge, NotAFile) as err:
            yield reject_record(id_, path, str(err), "read")
            continue
        except IsADirectoryError:  # `discover` keeps a link back to a folder it lists (a loop) as one entry
            yield reject_record(id_, path, _folder_link_reason(path), "read")
            continue
        except Exception as err:  # noqa: BLE001 - a file that stays unreadable after retries is a per-file reject
            yield reject_record(id_, path, f"could not read file: {describe(err)}", "read")
            continue
        yield _image_record(id_, path, data, meta)


def _zip_member_path(name: str) -> str | None:
    """A zip member's path inside the archive, '/'-separated ('a/b.jpg'), or None for a folder entry."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]  # some tools write '\\'
    return None if name.endswith(("/", "\\")) or not parts else "/".join(parts)


# A symbolic link's member (Info-ZIP: Unix mode S_IFLNK in the high 16 bits of external_attr) holds its target's path;
# one holding more than this is not a link and is not read as one.
_ZIP_LINK_BYTES = 4096
_ZIP_DOS_FOLDER = 0x10  # the MS-DOS folder attribute, in the low bits of external_attr


def _zip_is_folder(info: zipfile.ZipInfo) -> bool:
    """A folder entry written without the trailing '/' (`_zip_member_path` knows those), marked a folder by its Unix
    mode or MS-DOS attribute and holding nothing: not a file, so not an input (it was an 'empty file' reject)."""
    return not info.file_size and (stat.S_ISDIR(info.external_attr >> 16) or bool(info.external_attr & _ZIP_DOS_FOLDER))


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _zip_link_target(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], look_alikes: dict[str, list[str]],
                     name: str) -> zipfile.ZipInfo | str:
    """The member a symbolic link member `name` stands for (through links to links), as a tar shard's links are read,
    or why it cannot be read: a link's bytes are a path, which read as an image gave 'not a recognised image format'."""
    chain, first = [name], None
    while _zip_is_link(info := files[chain[-1]]):
        if info.file_size > _ZIP_LINK_BYTES:
            return f"zip member {name} is marked a symbolic link but holds {info.file_size:,} bytes, not a path"
        try:
            linkname = with_retries(lambda info=info: archive.read(info), f"read {info.filename}").decode(
                "utf-8", "surrogateescape")
        except Exception as err:  # noqa: BLE001 - damaged or encrypted: the link's reject
            return f"zip link {name} cannot be read: {describe(err)}"
        first = linkname if first is None else first
        target = posixpath.normpath(posixpath.join(posixpath.dirname(chain[-1]), linkname.replace("\\", "/")))
        if linkname.startswith("/") or target == ".." or target.startswith("../"):
            reason = f"{chain[-1]} -> {linkname} points outside the archive"
        elif target in look_alikes:
            reason = f"its target {target} is stored under more than one name"
        elif target not in files:
            reason = f"its target {target} is not a file in the archive"
        elif target in chain:
            reason = "the links loop: " + " -> ".join([*chain, target])
        else:
            chain.append(target)
            continue
        return f"zip link {name} -> {first} cannot be read: {reason}"
    return info


class _UTF8FlagCleared:
    """A zip file as read, less the UTF-8 name flag (bit 11 of a header's flags) at the offsets in `at` (each the flags'
    high byte): zipfile then reads those names as cp437, one character per byte, instead of failing on them."""

    def __init__(self, raw: BinaryIO, at: set[int]):
        self.raw, self.at = raw, at

    def read(self, n: int = -1) -> bytes:
        start = self.raw.tell()
        data = self.raw.read(n)
        hits = [offset - start for offset in self.at if start <= offset < start + len(data)]
        if not hits:
            return data
        patched = bytearray(data)
        for i in hits:
            patched[i] &= 0xF7
        return bytes(patched)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True


def _flagged_names_not_utf8(raw: BinaryIO) -> list[tuple[int, int]]:
    """(index in the central directory, offset of its flags' high byte) of each entry whose name is flagged UTF-8 but is
    not, found by walking the central directory as zipfile does (with its own constants: the same layout)."""
    end = zipfile._EndRecData(raw)  # type: ignore[attr-defined]
    if not end:
        return []
    size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
    concat = end[zipfile._ECD_LOCATION] - size - offset  # type: ignore[attr-defined]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    raw.seek(offset + concat)
    directory = raw.read(size)
    found, at, index = [], 0, 0
    fixed = zipfile.sizeCentralDir  # type: ignore[attr-defined]
    while at + fixed <= len(directory):
        fields = struct.unpack(zipfile.structCentralDir, directory[at : at + fixed])  # type: ignore[attr-defined]
        name_len, extra_len, comment_len = (fields[zipfile._CD_FILENAME_LENGTH], fields[zipfile._CD_EXTRA_FIELD_LENGTH],  # type: ignore[attr-defined]
                                            fields[zipfile._CD_COMMENT_LENGTH])  # type: ignore[attr-defined]
        if fields[zipfile._CD_FLAG_BITS] & 0x800:  # type: ignore[attr-defined]  # the name is flagged UTF-8
            try:
                directory[at + fixed : at + fixed + name_len].decode("utf-8")
            except UnicodeDecodeError:
                found.append((index, offset + concat + at + 9))
        at += fixed + name_len + extra_len + comment_len
        index += 1
    return found


def _open_zip(raw: BinaryIO) -> zipfile.ZipFile:
    """The archive in `raw`. zipfile fails on the whole archive when one name flagged UTF-8 is not (UnicodeDecodeError
    while it reads the central directory), and every other member was lost with it. Such an archive is opened again
    with that flag cleared for those names only, in the directory and in each one's local header (zipfile compares the
    two when it reads a member), so the other names are decoded as before and their ids stay the same; each such name
    is then taken as UTF-8 with its bad bytes kept (surrogateescape, as Python reads a tar's or a disk's names), which
    `text_name` writes as \\xNN in its id: an id with a '\\', which no other member's can hold ('\\' is read as '/')."""
    try:
        return zipfile.ZipFile(raw)
    except UnicodeDecodeError:
        pass
    bad = _flagged_names_not_utf8(raw)
    view = _UTF8FlagCleared(raw, {offset for _, offset in bad})
    archive = zipfile.ZipFile(view)  # type: ignore[arg-type]
    archive.zip_purify_names = {}  # type: ignore[attr-defined]  # ZipInfo has __slots__: kept here, by entry
    for index, _ in bad:
        info = archive.filelist[index]
        view.at.add(info.header_offset + 7)  # the local header's flags' high byte
        stored = info.orig_filename.encode("cp437").decode("utf-8", "surrogateescape")  # cp437: byte for byte
        archive.zip_purify_names[info] = stored  # type: ignore[attr-defined]  # orig_filename stays: zipfile checks it
        info.filename = stored.split("\0", 1)[0]  # zipfile cuts a name at a NUL byte
    return archive


def _stored_name(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """A member's name as stored (zipfile's orig_filename, or the tolerant reading of `_open_zip`)."""
    return getattr(archive, "zip_purify_names", {}).get(info, info.orig_filename)


def _read_zip(unit: ReadUnit, fs_opts: dict[str, Any], in_memory_bytes: int, max_image_bytes: int,
              labels_from_folders: bool, skip_ids: frozenset[str] | set[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """One record per file in a zip archive, as if its files lay in a folder named after it (id `x.zip/a/b.jpg`;
    hidden ones, `.x` and `_x` such as `__MACOSX/`, skipped as in a folder). A zip file is read through its central
    directory at its end, so a large one is read from storage a member at a time (ranges of an object), never whole.
    A name stored twice is one file, the later entry, as on extraction; different names that give one path (a '\\'
    where the other has '/', or a name zipfile cuts at a NUL byte) are one reject naming them. A symbolic link is read
    as the member it points to; one to nothing in the archive, or out of it, is its reject, as is a member with a '..'
    folder in its path. A member over `max_image_bytes` (by the size the directory gives), an encrypted one, one
    compressed in a way zipfile cannot read or a damaged one is that member's reject; done ids are not read."""
    (path,) = unit.paths
    rel = relative_id(path, unit.root)
    with contextlib.ExitStack() as stack:
        try:
            open_file = _opener(path, fs_opts, in_memory_bytes, unit.sizes[0] if unit.sizes else None)
            archive = stack.enter_context(_open_zip(stack.enter_context(open_file())))
        except Exception as err:  # noqa: BLE001 - not a zip, or its directory is damaged: one reject for the file
            yield reject_record(f"{rel}#unreadable", path, f"unreadable zip file: {describe(err)}", "read")
            return
        files: dict[str, zipfile.ZipInfo] = {}  # path -> its entry, hidden ones too (a link may point to one)
        # path -> the different stored names that give it ('a\\b.png' beside 'a/b.png', './a/b.png', 'a//b.png')
        look_alikes: dict[str, list[str]] = {}
        for info in archive.infolist():
            name = _zip_member_path(info.filename)
            if name is None or _zip_is_folder(info):
                continue
            earlier = files.pop(name, None)  # a later entry of the same name takes the place of the earlier one
            # not the same stored name: another file. orig_filename, since zipfile cuts a name at a NUL byte: a later
            # 'a.png\0x' replaced an earlier 'a.png' unread
            if earlier is not None and _stored_name(archive, earlier) != _stored_name(archive, info):
                stored = look_alikes.setdefault(name, [_stored_name(archive, earlier)])
                stored.extend([_stored_name(archive, info)] if _stored_name(archive, info) not in stored else [])
            files[name] = info
        for name, info in files.items():
            parts = name.split("/")
            # '..' is no hidden name: '../x.png' was skipped as one, unread and unreported
            if _hidden("/".join(part for part in parts if part != "..")):
                yield {"kind": "hidden", "name": f"{rel}/{text_name(name)}"}  # counted by read_unit, not an input
                continue
            id_, source = f"{rel}/{text_name(name)}", f"{path}:{name}"
            if id_ in skip_ids:
                yield {"kind": "skipped", "id": id_}
                continue
            if name in look_alikes:  # one id for two files: neither is read, one reject names them all
                shown = " and ".join(repr(text_name(n)) for n in look_alikes[name])
                yield reject_record(id_, source, f"zip members {shown} are one path, {name}, once '\\' is read as '/', "
                                    "empty or '.' folders are dropped and a name is cut at a NUL byte, so the output "
                                    "could keep only one of them; none was read: rename one and run again with "
                                    "--retry-rejects", "read")
                continue
            if ".." in parts:
                yield reject_record(id_, source, f"zip member {name} has a '..' folder in its path, which leads out of "
                                    "its folder (extracted, it is written elsewhere or outside the archive's folder), so "
                                    "it was not read: rename it and run again with --retry-rejects", "read")
                continue
            meta: dict[str, Any] = {}
            if labels_from_folders:
                folder = posixpath.dirname(name)
                meta["label"] = posixpath.basename(folder) if folder else None
            target = _zip_link_target(archive, files, look_alikes, name) if _zip_is_link(info) else info
            if isinstance(target, str):
                yield reject_record(id_, source, target, "read")
                continue
            what = name if target is info else f"{_zip_member_path(target.filename)} (the target of link {name})"
            if target.file_size > max_image_bytes:
                yield reject_record(id_, source, too_large(f"zip member {what}", target.file_size, max_image_bytes),
                                    "read")
                continue
            if target.flag_bits & 0x1:
                yield reject_record(id_, source, f"zip member {what} is encrypted", "read")
                continue
            try:
                data = with_retries(lambda target=target: archive.read(target), f"read {source}")
            except NotImplementedError as err:  # the data may be fine: zipfile cannot decompress it
                method = zipfile.compressor_names.get(target.compress_type, "unknown")
                yield reject_record(id_, source, f"zip member {what} is compressed with method {target.compress_type} "
                                    f"({method}), which cannot be read ({describe(err)}): store it with deflate",
                                    "read")
                continue
            except Exception as err:  # noqa: BLE001 - a damaged member (bad CRC, cut short) is its reject
                yield reject_record(id_, source, f"corrupt zip member {what}: {describe(err)}", "read")
                continue
            yield _image_record(id_, source, data, meta)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename, ext = the rest."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _image_like(ext: str) -> bool:
    """Whether a member with extension `ext` ('jpg', 'seg.png') is an image: its last part is an image extension."""
    return "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def _numbered(ext: str) -> tuple[str, str] | None:
    """('0', 'jpg') for a compound extension that starts with a number ('0.jpg', '12.seg.png'), else None."""
    number, dot, rest = ext.partition(".")
    return (number, rest) if dot and rest and number.isascii() and number.isdigit() else None


def _tar_key(name: str) -> tuple[str, str]:
    """A shard member's (key, ext): WebDataset's (`_split_key`), except for a numbered name such as Kaggle's
    'cat.0.jpg', whose key takes the number ('cat.0', ext 'jpg'; 'cat.0.cls' and the mask 'cat.0.seg.png' are that
    key's sidecars). A plain tar of 'cat.0.jpg', 'cat.1.jpg', ... is many images, not one WebDataset sample with many;
    the rule looks at the name alone, so a key does not change with the shard's other members (one image of a name
    in one shard, several in the next, or one appended later)."""
    key, ext = _split_key(name)
    numbered = _numbered(ext)
    return (f"{key}.{numbered[0]}", numbered[1]) if numbered else (key, ext)


def _sidecar_value(ext: str, data: bytes) -> tuple[str, Any]:
    """A sidecar's column and value: its text, or its bytes when it is not UTF-8 text (a mask, an array)."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "label" if ext == "cls" else ext.replace(".", "_"), data
    if ext == "cls":
        try:
            return "label", int(text)
        except ValueError:
            return "label", text
    return ext.replace(".", "_"), text


def _json_sidecar(data: bytes) -> dict[str, Any]:
    """A .json sidecar's keys become columns when it holds an object; otherwise its text is kept."""
    try:
        value = json.loads(data)
    except ValueError:
        return {"json": data.decode("utf-8", errors="replace")}
    return value if isinstance(value, dict) else {"json": json.dumps(value)}


def _opener(path: str, fs_opts: dict[str, Any], in_memory_bytes: int,
            listed_size: int | None = None) -> Callable[[], BinaryIO]:
    """How to open `path` for reading, as often as needed: a file of at most `in_memory_bytes` is fetched once
    and served from memory; a larger one is opened on storage each time, and read piece by piece. `listed_size`: its
    size from the input's listing, which spares asking storage for it (a HEAD per shard on an object store)."""
    fs, fs_path = storage_path(path, fs_opts)
    size = listed_size if listed_size is not None else with_retries(lambda: fs.size(fs_path), f"stat {path}")
    if size <= in_memory_bytes:
        try:
            # Listed: at most in_memory_bytes + 1 bytes, so a file grown past the limit since is streamed instead.
            raw = read_bytes(path, fs_opts, in_memory_bytes if listed_size is not None else None, listed_size)
            return lambda: io.BytesIO(raw)
        except ImageTooLarge:
            pass
    return lambda: with_retries(lambda: fs.open(fs_path, "rb"), f"open {path}")


class _CheckedTarInfo(tarfile.TarInfo):
    """Headers read as GNU tar --ignore-zeros does, with what went wrong noted on the archive for `_tar_members`.

    tarfile ends an archive quietly at the first block of zeros, and at a header it cannot read after the first
    member (a bad checksum, a block cut short, the end of the data without tar's end-of-archive blocks), as if the
    archive ended there: every member after it vanished without a reject. Opened with ignore_zeros, it reads on past
    zero blocks, so archives concatenated into one shard (`cat a.tar b.tar`) are read whole, and past an unreadable
    header block to the next good header. An unreadable header, or data that ends without end-of-archive blocks
    (cut short), is noted here; the pass then raises at its end, so the shard gets its '#unreadable' reject."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            info = super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # a block of zeros: an archive's end, perhaps with another after it
            tar.zip_purify_ended = True  # type: ignore[attr-defined]
            raise
        except tarfile.EmptyHeaderError:  # no data left
            if not getattr(tar, "zip_purify_ended", False):
                _note_damage(tar, "it ends without tar's end-of-archive blocks (cut short?)")
            raise
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as err:
            _note_damage(tar, f"a member's header cannot be read ({err})")
            raise
        tar.zip_purify_ended = False  # type: ignore[attr-defined]
        return info


def _note_damage(tar: tarfile.TarFile, what: str) -> None:
    if not getattr(tar, "zip_purify_damage", None):  # the first one says where the trouble began
        tar.zip_purify_damage = what  # type: ignore[attr-defined]


def _tar_members(open_stream: Callable[[], BinaryIO], wanted: Callable[[int, tarfile.TarInfo], bool],
                 attempts: int = 4, max_member_bytes: int | None = None,
                 ) -> Iterator[tuple[int, tarfile.TarInfo, bytes | Exception | str] | None]:
    """One sequential pass over a tar: (position, member, its bytes, or the error reading them, or, for a member whose
    header says it is over `max_member_bytes`, the reason it is not read) for each regular file that `wanted` accepts,
    (position, member, b"") for the other regular files and for hard and symbolic links
    (whose bytes are their target's; a stream cannot go back for them). Directories, devices and FIFOs are not data
    and are skipped; `position` numbers the members yielded, the same in every pass. All storage reads happen here,
    so that a transient error can restart the pass from the beginning; None is yielded whenever a pass (re)starts,
    so that callers forget what they saw. Any other error (a corrupt or truncated shard) propagates."""
    for attempt in range(attempts):
        try:
            with open_stream() as raw, tarfile.open(fileobj=raw, mode="r|*", tarinfo=_CheckedTarInfo,
                                                    ignore_zeros=True) as tar:
                yield None
                position = 0
                for member in tar:
                    if not (member.isfile() or member.islnk() or member.issym()):
                        continue
                    data: bytes | Exception | str = b""
                    if member.isfile() and wanted(position, member):
                        if max_member_bytes is not None and member.size > max_member_bytes:
                            # not extracted: the stream skips its bytes a piece at a time, keeping none
                            data = too_large(f"tar member {member.name}", member.size, max_member_bytes)
                        else:
                            try:
                                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                            except Exception as err:  # noqa: BLE001 - a damaged member is that key's reject, unless transient
                                if is_transient(err):
                                    raise
                                data = err
                    yield position, member, data
                    position += 1
                damage = getattr(tar, "zip_purify_damage", None)
                if damage:  # every member that could be read was; the caller adds the shard's reject with this reason
                    raise tarfile.ReadError(f"{damage}; the members read around it are kept, any others are lost")
            return
        except Exception as err:  # noqa: BLE001 - classified here
            if attempt == attempts - 1 or not is_transient(err):
                raise
            backoff(attempt)


@dataclass(frozen=True)
class _TarLink:
    """A hard or symbolic link member, and the position of the regular member whose bytes it stands for, or why none."""

    name: str
    linkname: str
    target: int | str  # position of the regular member it resolves to, or the reason it cannot be read


def _link_path(member: tarfile.TarInfo) -> str | None:
    """The shard path a link points to, or None when it points outside the shard. A hard link names a member of the
    archive; a symlink is relative to its own folder, as it would be once extracted."""
    path = member.linkname if member.islnk() else posixpath.join(posixpath.dirname(member.name), member.linkname)
    path = posixpath.normpath(path)
    if member.linkname.startswith("/") or path == ".." or path.startswith("../"):
        return None
    return path


def _resolve_link(position: int, pointers: dict[int, tuple[tarfile.TarInfo, int | None]]) -> _TarLink:
    """Follow a link (through links to links) to a regular member; pointers: link position -> (member, position of
    what its path names, None if nothing)."""
    first = pointers[position][0]
    chain, at = [position], position
    while at in pointers:
        member, points_to = pointers[at]
        if _link_path(member) is None:
            reason = f"{member.name} -> {member.linkname} points outside the shard"
        elif points_to is None:  # a hard link's target comes before it in the archive
            reason = f"target {_link_path(member)} is not a file in the shard" + (" before it" if member.islnk() else "")
        elif points_to in chain:
            reason = "the links loop: " + " -> ".join(pointers[p][0].name for p in [*chain, points_to])
        else:
            at = points_to
            chain.append(at)
            continue
        return _TarLink(first.name, first.linkname, f"tar link {first.name} -> {first.linkname} cannot be read: {reason}")
    return _TarLink(first.name, first.linkname, at)


def _macos_metadata(name: str) -> bool:
    """Whether a tar member is the metadata macOS adds beside a user's files: an AppleDouble '._x' (a file's extended
    attributes, which bsdtar stores for each file that has any, e.g. every downloaded one), '.DS_Store' (Finder's
    folder settings) or anything under '__MACOSX/' (an archive unpacked and re-packed). Skipped as hidden, as in a
    folder or zip; other names starting with '.' or '_' stay members (a WebDataset key may start with '_')."""
    parts = posixpath.normpath(name).split("/")
    return parts[-1].startswith("._") or parts[-1] == ".DS_Store" or "__MACOSX" in parts


def _index_tar(
    open_stream: Callable[[], BinaryIO],
) -> tuple[dict[str, Counter[str]], set[str], dict[int, _TarLink], BaseException | None, list[str]]:
    """Pass 1, headers only: key -> member name -> occurrences (links included, keys in order of appearance), the
    WebDataset keys that had numbered names keyed apart (`_tar_key`: 'cat' for 'cat.0.jpg'), the links by position
    with what each resolves to, the error that cut the pass short (None if it did not), and the macOS metadata
    members (`_macos_metadata`), which are in no key."""
    names: Counter[str] = Counter()  # in order of appearance
    latest: dict[str, int] = {}  # shard path -> position of its latest regular member or link
    pointers: dict[int, tuple[tarfile.TarInfo, int | None]] = {}
    error: BaseException | None = None
    try:
        for item in _tar_members(open_stream, wanted=lambda position, member: False):
            if item is None:
                names.clear()
                latest.clear()
                pointers.clear()
                continue
            position, member, _ = item
            names[member.name] += 1
            if member.islnk():  # a hard link is to the member of that name before it, as tar extracts it
                path = _link_path(member)
                pointers[position] = member, (latest.get(path) if path is not None else None)
            elif member.issym():  # a symlink is to whatever that path holds once the whole shard is extracted
                pointers[position] = member, None
            latest[posixpath.normpath(member.name)] = position
    except Exception as err:  # noqa: BLE001 - a truncated/corrupt shard: keep what was indexed, the caller rejects the rest
        error = err
    for position, (member, _) in pointers.items():
        if member.issym() and (path := _link_path(member)) is not None:
            pointers[position] = member, latest.get(path)
    split: set[str] = set()
    members_of: dict[str, Counter[str]] = {}
    metadata: list[str] = []
    for name, n in names.items():
        if _macos_metadata(name):
            metadata.extend([name] * n)
            continue
        key, webdataset_key = _tar_key(name)[0], _split_key(name)[0]
        if key != webdataset_key:
            split.add(webdataset_key)
        members_of.setdefault(key, Counter())[name] = n
    return members_of, split, {position: _resolve_link(position, pointers) for position in pointers}, error, metadata


def _read_tar(unit: ReadUnit, fs_opts: dict[str, Any], in_memory_bytes: int, max_image_bytes: int,
              skip_ids: frozenset[str] | set[str] = frozenset(),
              purified_ids: frozenset[str] | set[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """One record per key, in two sequential passes, so that memory does not grow with the shard.

    Pass 1 reads only the headers: which members each key has (`_tar_key`: WebDataset's keys, a numbered name such as
    Kaggle's 'cat.0.jpg' keyed with its number), and what each link points to. Pass 2 reads the
    members and emits a key's record as soon as its last member has gone by, so only keys still waiting for a member
    are held: one at a time in a WebDataset shard, whose keys are contiguous, though a key's members may be anywhere.
    A link is read as its target's bytes: those of a link's target are kept from when it goes by until its links'
    keys are emitted, and a symlink to a later member waits, like its key, for that member. A shard of at most
    `in_memory_bytes` is fetched once and both passes run over that copy; a larger one is streamed from storage
    twice, trading a second read for bounded memory. A member over `max_image_bytes` is not read: its key is a reject.
    A key whose id is in `skip_ids` (done in an earlier run) is not read either: one "skipped" record stands for it.
    Two keys of one id (`_escaped_twin_keys`) are one reject naming both; when that id was purified in an earlier run
    (`purified_ids`: the done ids in data/), one of them was added since, and its reject has an id of its own
    (`LOOKALIKE`), given once: the purified row keeps the id.
    """
    (path,) = unit.paths
    shard = relative_id(path, unit.root)

    def unreadable(keys: int, err: BaseException) -> dict[str, Any]:
        return reject_record(f"{shard}#unreadable", path, f"tar shard unreadable after {keys} keys: {describe(err)}",
                             "read")

    try:
        open_stream = _opener(path, fs_opts, in_memory_bytes, unit.sizes[0] if unit.sizes else None)
    except Exception as err:  # noqa: BLE001 - unreadable shard: one reject for the whole unit
        yield unreadable(0, err)
        return

    members_of, split, links, index_error, metadata = _index_tar(open_stream)
    failure = unreadable(len(members_of), index_error) if index_error else None
    yield from ({"kind": "hidden", "name": f"{shard}/{text_name(name)}"} for name in metadata)  # counted, not inputs
    # 'cat' when this shard's 'cat.0.jpg', 'cat.1.jpg' are keys of their own: a version before numbered names were
    # keyed apart gave one reject for them all, 's.tar/cat', which the run that reads the shard whole removes
    def key_id(key: str) -> str:  # a member name that is not UTF-8 gives a key that is not: its id is text
        return f"{shard}/{text_name(key)}"

    # by id, not by key: a latin-1 'caf\xe9.0.jpg' (split from 'caf\xe9') beside a member literally named
    # 'caf\\xe9.jpg' gave that member's own id as superseded, and its reject was then removed as out of date
    # and the keys macOS metadata alone gave ('s.tar/d/' for 'd/._a.png', '.DS_Store'): a version that read it as
    # members gave each such key one reject
    older = {*split, *(key for name in metadata for key in (_tar_key(name)[0], _split_key(name)[0]))}
    superseded = sorted({key_id(key) for key in older} - {key_id(key) for key in members_of})
    if superseded:
        yield {"kind": "superseded", "ids": superseded}
    # keys done in an earlier run: their members are neither extracted nor hashed, and their links keep nothing
    done: set[str] = {key for key in members_of if key_id(key) in skip_ids}
    yield from ({"kind": "skipped", "id": id_} for id_ in dict.fromkeys(key_id(key) for key in members_of if key in done))
    # a key that is not UTF-8 and one named with its escapes ('caf\xe9' literally): one id, which the output keeps once
    for id_, twins in _escaped_twin_keys(members_of, key_id).items():
        if twins[0] not in done:
            done.update(twins)  # neither is read: one reject names them all, so that no image goes unnoticed
            yield reject_record(id_, f"{path}:{twins[0]}", _twin_members_error(members_of, twins, id_), "read")
        elif id_ in purified_ids:  # one was purified under the id before the other was added: skipped, it would vanish
            lookalike = f"{shard}{LOOKALIKE}{text_name(twins[0])}"
            yield {"kind": "skipped", "id": lookalike} if lookalike in skip_ids else reject_record(
                lookalike, path, _twin_members_error(members_of, twins, id_, purified_before=True), "read")
    # target position -> links still to be emitted that read it; its bytes are kept while any are
    readers: Counter[int] = Counter()
    targets_of: dict[str, list[int]] = {}  # key -> positions of its links' targets
    skipped_names = frozenset(metadata)  # a metadata member may share a key with real ones ('d/' for 'd/.1.jpg')
    for link in links.values():
        key = _tar_key(link.name)[0]
        if isinstance(link.target, int) and key not in done and link.name not in skipped_names:
            readers[link.target] += 1
            targets_of.setdefault(key, []).append(link.target)

    seen: dict[str, Counter[str]] = {}
    # members still to go by, per key, and keys that had one more than pass 1 counted (never whole): a running count,
    # as comparing `seen` with `members_of` at every member took time quadratic in a key's members
    left: dict[str, int] = {}
    extra: set[str] = set()
    parts: dict[str, dict[str, tuple[str, bytes]]] = {}  # key -> extension -> (member name, its bytes)
    errors: dict[str, str] = {}
    kept: dict[int, bytes | Exception | str] = {}  # link targets' bytes (or why they were not read), by position
    waiting: dict[int, list[_TarLink]] = {}  # target position -> symlinks before it

    def pending(key: str) -> bool:
        return key in members_of and key not in done

    def wanted(position: int, member: tarfile.TarInfo) -> bool:
        return (member.name not in skipped_names and pending(_tar_key(member.name)[0])) or readers[position] > 0

    def record(key: str) -> dict[str, Any]:
        for target in targets_of.pop(key, []):
            readers[target] -= 1
            if readers[target] <= 0:
                kept.pop(target, None)
        return _tar_key_record(path, key_id(key), key, parts.pop(key, {}), errors.pop(key, None), key in split)

    def took(name: str, data: bytes | Exception | str, damaged: str = "") -> dict[str, Any] | None:
        """Note member `name` as gone by with its bytes (or the error reading them, or why it cannot be read); its
        key's record once it was the key's last."""
        key, ext = _tar_key(name)
        went = seen.setdefault(key, Counter())
        went[name] += 1
        if key not in left:
            left[key] = sum(members_of[key].values())
        if went[name] <= members_of[key][name]:
            left[key] -= 1
        else:
            extra.add(key)
        if isinstance(data, Exception):
            errors.setdefault(key, f"corrupt tar member {damaged or name}: {type(data).__name__}: {data}")
        elif isinstance(data, str):
            errors.setdefault(key, data)
        else:
            other = parts.setdefault(key, {}).get(ext, (name, b""))[0]
            if other != name:  # '0001.JPG' and '0001.jpg': one extension, two files; neither may be dropped
                errors.setdefault(key, f"tar members {other} and {name} differ only in the case of the extension")
            parts[key][ext] = name, data  # a later duplicate of a name wins, as on extraction
        if left[key] or key in extra:
            return None
        done.add(key)
        return record(key)

    def read_link(link: _TarLink, data: bytes | Exception | str) -> dict[str, Any] | None:
        return took(link.name, data, damaged=f"{link.linkname} (the target of link {link.name})")

    try:
        for item in _tar_members(open_stream, wanted, max_member_bytes=max_image_bytes):
            if item is None:  # (re)started: keys already emitted stay emitted, the rest are collected afresh
                for held in (seen, left, extra, parts, errors, kept, waiting):
                    held.clear()
                continue
            position, member, data = item
            key = _tar_key(member.name)[0]
            ours = member.name not in skipped_names and pending(key)
            out: list[dict[str, Any] | None] = []
            if position in links and ours:
                link = links[position]
                if isinstance(link.target, str):  # it cannot be read: that reason is its key's reject
                    out.append(took(member.name, link.target))
                elif link.target < position:
                    out.append(read_link(link, kept[link.target]))
                else:  # a symlink to a later member: it goes by, with its key, when that member does
                    waiting.setdefault(link.target, []).append(link)
            elif position not in links:
                if ours:
                    out.append(took(member.name, data))
                if readers[position] > 0:
                    kept[position] = data
                    out.extend(read_link(link, data) for link in waiting.pop(position, []))
            yield from (r for r in out if r is not None)
    except Exception as err:  # noqa: BLE001 - damage pass 1 did not reach (it reads less): reject what is left
        failure = failure or unreadable(len(members_of), err)
    for key in members_of:
        if key not in done:  # the shard broke off before all of this key's members went by
            missing = sorted(set(members_of[key]) - set(seen.get(key, {})))
            errors.setdefault(key, f"corrupt tar member {missing[0] if missing else key}: "
                                   "the shard broke off before it could be read")
            yield record(key)
    if failure:
        yield failure


def _escaped_twin_keys(members_of: dict[str, Counter[str]], key_id: Callable[[str], str]) -> dict[str, list[str]]:
    """Id -> the keys of a tar shard that give it (two or more): a member name that is not UTF-8 is written with
    escapes (`text_name`), which another member's name may hold literally. Looked for only when some key is not
    UTF-8 (the only way two keys give one id)."""
    if all(key.isascii() or text_name(key) == key for key in members_of):
        return {}
    keys_of: dict[str, list[str]] = {}
    for key in members_of:
        keys_of.setdefault(key_id(key), []).append(key)
    return {id_: keys for id_, keys in keys_of.items() if len(keys) > 1}


def _twin_members_error(members_of: dict[str, Counter[str]], twins: list[str], id_: str,
                        purified_before: bool = False) -> str:
    """The reject of tar keys that give one id: each key's members, as text and as the bytes of their names.
    `purified_before`: an earlier run purified one of them under the id, and this run did not read the other."""
    def as_bytes(name: str) -> bytes:  # a name's bytes as the tar holds them; any other surrogate kept as such
        try:
            return name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return name.encode("utf-8", "surrogatepass")

    names = [name for key in twins for name in members_of[key]]
    shown = " and ".join(f"{text_name(n)} (as bytes: {as_bytes(n)!r})" for n in names)
    why = (f"tar members {shown} have one id, {id_}: a name that is not UTF-8 is written with each byte it cannot "
           "decode as \\xNN (and a backslash as \\\\), and the other name is that text itself, so the output could "
           "keep only one of them")
    # the new one is to be renamed: were the purified one renamed, the other would keep its id and be skipped as done
    if purified_before:
        return (f"{why}; an earlier run purified one of them under {id_} (its row in data/ stays: its source_sha256 "
                "tells which), and this run did not read the other: rename the one that is not in data/ and run "
                "again with --retry-rejects")
    return f"{why}; none was read: rename one and run again with --retry-rejects"


def _tar_key_record(path: str, id_: str, key: str, parts: dict[str, tuple[str, bytes]],
                    error: str | None, split: bool = False) -> dict[str, Any]:
    """The image record of one WebDataset key (sidecars become columns), or its reject. The image is the member whose
    extension is an image one ('jpg'); one with a compound image extension ('seg.png', a mask) is a sidecar when the
    key has such an image, and the image when it is the key's only image member. `split`: the key's numbered names
    were keyed apart (`_tar_key`), so what is left in it ('cat.cls' beside 'cat.0.jpg') has no image."""
    if error is not None:
        return reject_record(id_, f"{path}:{key}", error, "read")
    image_like = [e for e in parts if _image_like(e)]
    plain = [e for e in image_like if "." not in e]
    image_exts = plain or image_like
    if len(image_exts) != 1:
        names = sorted(parts)
        found = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") or "nothing"
        orphan = (f": it belongs to no image, as each {key}.<number>.<image ext> is a key of its own, with sidecars "
                  f"named {key}.<number>.<ext>") if split else ""
        # a plain tar of 'cat.a.jpg', 'cat.b.jpg' is one WebDataset key, 'cat', with many images: say how to fix it
        many = (f"; a key is a member's path up to the first dot of its name, so {key}.{image_exts[0]} and "
                f"{key}.{image_exts[1]} are one sample: give each image its own key (e.g. {key}_1.jpg, or a numbered "
                f"{key}.1.jpg), or give the images as files, not a tar") if len(image_exts) > 1 and not plain else ""
        return reject_record(id_, f"{path}:{key}", f"expected exactly one image member for key {key}, found {found}"
                             f"{orphan}{many}", "read")
    ext = image_exts[0]
    meta: dict[str, Any] = {}
    given_by: dict[str, str] = {}  # column -> the member that gave it
    for e, (member, v) in parts.items():
        if e in ("json", ext):
            continue
        column, value = _sidecar_value(e, v)
        column = passthrough_name(text_name(column))
        if column in meta:  # '0001.cls' and '0001.label' (or '.seg.png' and '.seg_png'): one column, two values
            return reject_record(id_, f"{path}:{key}", f"tar members {given_by[column]} and {member} both give column "
                                 f"{column!r}, so one value would be lost: rename one of them", "read")
        meta[column], given_by[column] = value, member
    if "json" in parts:
        _add_json_keys(meta, _json_sidecar(parts["json"][1]))
    name, data = parts[ext]
    return _image_record(id_, f"{path}:{name}", data, meta)


def _add_json_keys(meta: dict[str, Any], keys: dict[str, Any]) -> None:
    """A .json sidecar's keys into `meta`, which holds the key's other sidecars' columns. A key named like one of
    those (a "label" beside a .cls, a "seg_png" beside a .seg.png) is written as json_label, json_seg_png (json_
    again while the name is taken), and a key named like a job column as input_id (`passthrough_name`): each value
    is kept, the member's under the column name the README gives it."""
    clashing = []
    for key, value in keys.items():
        column = passthrough_name(text_name(key))
        if column in meta:
            clashing.append((column, value))
        else:
            meta[column] = value
    for column, value in clashing:  # after every key that is free: those keep their names
        while column in meta:
            column = "json_" + column
        meta[column] = value


def find_image_column(schema: pa.Schema, requested: str | None = None) -> str:
    """The Parquet column holding image bytes: a struct<bytes, path> (Hugging Face layout) or binary (also large,
    view or dictionary-encoded); a list<uint8> only when named (--image-column, or one of the usual image names),
    since such a list may as well hold numbers that are not a file."""
    def usable(field: pa.Field, named: bool = False) -> bool:
        t = field.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_struct(t):
            return t.get_field_index("bytes") >= 0
        if named and (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_uint8(t.value_type):
            return True
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)

    if requested:
        if requested not in schema.names:
            raise ValueError(f"image column {requested!r} not in Parquet columns {schema.names}")
        if not usable(schema.field(requested), named=True):
            raise ValueError(f"column {requested!r} has type {schema.field(requested).type}, not image bytes")
        return requested
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in schema.names and usable(schema.field(name), named=True):
            return name
    for field in schema:
        if usable(field):
            return field.name
    raise ValueError(f"no image column (struct<bytes, path> or binary) among Parquet columns {schema.names}")


def _read_parquet(unit: ReadUnit, fs_opts: dict[str, Any], image_column: str | None, in_memory_bytes: int,
                  max_image_bytes: int, rows_per_batch: int = 256,
                  skip_ids: frozenset[str] | set[str] = frozenset(), attempts: int = 4) -> Iterator[dict[str, Any]]:
    """One record per row, read a row group at a time, a few hundred rows at a time (a large file is never all in
    Python objects). A cell over `max_image_bytes` is a reject: it is in Arrow's memory with its row group, but never
    copied into Python. A row whose id is in `skip_ids` (done in an earlier run) gives a "skipped" record instead, its
    cell never copied; a row group whose rows are all done is not read at all (on a streamed file, not fetched).

    The footer says how many rows each group has, so every row's id is known before its group is read: a group whose
    data is damaged makes one reject per row it has left, and the next group is read. A storage error is retried with
    the file opened again, resuming after the rows already given; one that persists ends the file with its
    '#unreadable' reject, and the rows not read are left for the next run."""
    (path,) = unit.paths
    rel = relative_id(path, unit.root)
    with contextlib.ExitStack() as stack:
        try:
            # a large file's row groups are fetched as they are read (Parquet's footer says where each one lies)
            open_file = _opener(path, fs_opts, in_memory_bytes, unit.sizes[0] if unit.sizes else None)
            parquet = pq.ParquetFile(stack.enter_context(open_file()))
            column = find_image_column(parquet.schema_arrow, image_column)
            # Arrow cannot select a column by a name the file holds twice: every row was a reject saying its row group
            # "cannot be read" (KeyError), of a file whose data is whole
            twice = sorted(name for name, n in Counter(parquet.schema_arrow.names).items() if n > 1)
            if twice:
                raise ValueError(f"columns named more than once ({', '.join(map(repr, twice))}), whose values could not "
                                 "be told apart in the output: rename them")
        except Exception as err:  # noqa: BLE001
            yield reject_record(f"{rel}#unreadable", path, f"unreadable Parquet file: {describe(err)}", "read")
            return
        others = [n for n in parquet.schema_arrow.names if n != column]
        # the input's Arrow types, by output column, so the writer keeps them (Python values lose float32, int32, ...)
        types = {passthrough_name(f.name): f.type for f in parquet.schema_arrow if f.name != column}

        def row_record(i: int, row: dict[str, Any], cell: pa.Scalar) -> dict[str, Any]:
            if f"{rel}#{i}" in skip_ids:
                return {"kind": "skipped", "id": f"{rel}#{i}"}
            size = _cell_size(cell)
            if size is not None and size > max_image_bytes:
                return reject_record(f"{rel}#{i}", f"{path}#{i}", too_large(
                    f"row {i}: image column {column!r}", size, max_image_bytes), "read")
            record = _parquet_row_record(path, f"{rel}#{i}", i, {**row, column: cell.as_py()}, column, others)
            if record["kind"] == "image":
                record["meta_types"] = types
            return record

        first = 0  # the current group's first row
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if skip_ids and all(f"{rel}#{j}" in skip_ids for j in range(first, first + rows)):
                yield from ({"kind": "skipped", "id": f"{rel}#{j}"} for j in range(first, first + rows))
                first += rows
                continue
            given = 0  # rows of this group already yielded: a retried read resumes after them
            for attempt in range(attempts):
                try:
                    at_row = 0
                    for table in parquet.iter_batches(batch_size=rows_per_batch, row_groups=[group]):
                        cells = table.column(column)
                        for at, row in enumerate(table.select(others).to_pylist()):
                            if at_row >= given:
                                yield row_record(first + at_row, row, cells[at])
                                given += 1
                            at_row += 1
                    if at_row < rows:  # rows the footer gives the group that its data does not hold: damage, said
                        raise ValueError(f"its data ends after {at_row} of the {rows} rows the file's footer gives it")
                    break
                except Exception as err:  # noqa: BLE001 - classified here
                    if is_transient(err) and attempt < attempts - 1:
                        backoff(attempt)
                        # a fresh connection for the next attempt; if opening fails too, it tries the old one
                        with contextlib.suppress(Exception):
                            parquet = pq.ParquetFile(stack.enter_context(open_file()))
                        continue
                    if is_transient(err):
                        yield reject_record(f"{rel}#unreadable", path, f"Parquet file unreadable after "
                                            f"{first + given} rows: {describe(err)}", "read")
                        return
                    for j in range(first + given, first + rows):  # damaged data: these rows, and only these, are lost
                        yield {"kind": "skipped", "id": f"{rel}#{j}"} if f"{rel}#{j}" in skip_ids else reject_record(
                            f"{rel}#{j}", f"{path}#{j}", f"row {j}: row group {group} of the Parquet file cannot be "
                            f"read: {describe(err)}", "read")
                    break
            first += rows


def _cell_size(cell: pa.Scalar) -> int | None:
    """How many bytes an image cell holds, from Arrow's buffers (nothing is copied); None for no value."""
    if isinstance(cell, pa.DictionaryScalar):
        cell = cell.value
    if isinstance(cell, pa.StructScalar):
        if not cell.is_valid:
            return None
        cell = cell["bytes"]
    if not cell.is_valid:
        return None
    if isinstance(cell, pa.ListScalar | pa.LargeListScalar):  # list<uint8>: one byte per item
        return len(cell.values)
    return cell.as_buffer().size if isinstance(cell, pa.BinaryScalar | pa.LargeBinaryScalar | pa.BinaryViewScalar) else None


def _parquet_row_record(path: str, id_: str, i: int, row: dict[str, Any], column: str,
                        others: list[str]) -> dict[str, Any]:
    value = row[column]
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(data, list) and None not in data:  # list<uint8>
        data = bytes(data)
    # the input's own `id`, `source`, ... under input_id, input_source (`passthrough_name`): the job's columns keep theirs
    meta = {passthrough_name(n): row[n] for n in others}
    if isinstance(value, dict) and value.get("path") is not None:
        meta["original_path"] = value["path"]  # an input's own original_path column is input_original_path
    if not isinstance(data, bytes) or not data:
        elsewhere = value.get("path") if isinstance(value, dict) else None
        # Hugging Face's Image feature may keep only a path to a file outside the Parquet file
        hint = (f", only a path ({elsewhere}) to an image outside the Parquet file, which is not read: write the "
                "images into the file (datasets: embed_external_files) or give the image files as input"
                ) if elsewhere else ""
        # what the cell holds: "no bytes" was said of a list<uint8> with a null item and of a struct's text 'bytes' too
        what = ("no bytes" if data is None or data == b"" or data == [] else
                f"a list with {data.count(None)} null item(s), not bytes" if isinstance(data, list) else
                f"a {type(data).__name__} value, not bytes")
        return reject_record(id_, f"{path}#{i}", f"row {i}: image column {column!r} holds {what}{hint}", "read")
    return _image_record(id_, f"{path}#{i}", data, meta)


def read_unit(
    unit: ReadUnit,
    storage_options: dict[str, Any] | None = None,
    labels_from_folders: bool = False,
    image_column: str | None = None,
    skip_ids: frozenset[str] | set[str] = frozenset(),
    in_memory_bytes: int = IN_MEMORY_BYTES,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    purified_ids: frozenset[str] | set[str] = frozenset(),
) -> Iterator[dict[str, Any]]:
    """Records of one unit, skipping ids already done, followed by one "count" record.

    Tar and Parquet files larger than `in_memory_bytes` are read from storage piece by piece (a tar twice). An image
    file, tar member or Parquet cell over `max_image_bytes` is a reject, found from its size before it is read.
    A tar or Parquet file read to its end (no '#unreadable' reject) is named in its count record, with how many ids
    it gave and their digest: what `pipeline.ledger` keeps so that a later --incremental run can skip it unread, and
    the look-alike rejects (`LOOKALIKE`) it gave or skipped: any other the output holds for it is out of date.
    `purified_ids`: done ids that are in data/ (`_read_tar`; those with '\\x' are enough)."""
    opts = storage_options or {}
    if unit.kind == "files":
        records = _read_files(unit, opts, labels_from_folders, max_image_bytes)
    elif unit.kind == "tar":
        records = _read_tar(unit, opts, in_memory_bytes, max_image_bytes, skip_ids, purified_ids)
    elif unit.kind == "parquet":
        records = _read_parquet(unit, opts, image_column, in_memory_bytes, max_image_bytes, skip_ids=skip_ids)
    elif unit.kind == "zip":
        records = _read_zip(unit, opts, in_memory_bytes, max_image_bytes, labels_from_folders, skip_ids)
    else:
        raise ValueError(f"unknown read unit kind {unit.kind!r}")
    container = unit.kind != "files"
    broken = f"{relative_id(unit.paths[0], unit.root)}#unreadable" if container else None
    lookalike = f"{relative_id(unit.paths[0], unit.root)}{LOOKALIKE}" if container else ""
    ids: list[str] = []  # a container's record ids, to digest
    lookalikes: list[str] = []
    superseded: list[str] = []
    hidden = HiddenSkipped()
    whole = True
    n = skipped = 0
    for record in records:
        if record["kind"] == "superseded":
            superseded.extend(record["ids"])
            continue
        if record["kind"] == "hidden":  # a zip member skipped as hidden: no record, only counted
            hidden.add(record["name"])
            continue
        if record["id"] == broken:
            whole = False
        elif container:
            ids.append(record["id"])
            if record["id"].startswith(lookalike):
                lookalikes.append(record["id"])
        if record["kind"] == "skipped" or record["id"] in skip_ids:
            skipped += 1
            continue
        n += 1
        yield record
    count: dict[str, Any] = {"kind": "count", "n": n, "skipped": skipped}
    if hidden.count:
        count["hidden"], count["hidden_examples"] = hidden.count, hidden.examples
    if container and whole:
        count["container"] = {"path": unit.paths[0], "records": len(ids), "ids_sha256": ids_digest(ids)}
        if superseded:  # ids an older version gave this container's records, if the output holds them
            count["container"]["superseded"] = superseded
        if lookalikes:
            count["container"]["lookalike"] = lookalikes
    yield count


def ids_key(ids: Iterable[str]) -> bytes:
    """The bytes a set of ids is hashed by: one text per set, whatever the order, and never the same for two sets.

    Ids joined by newlines, as every earlier version did (so part file names and ledger digests stay as they were),
    unless an id holds a newline or NUL: a file may be named "a.png\nb.png", and the joined set {"a.png\nb.png"} would
    then equal {"a.png", "b.png"}: two write batches would share a part file name and the second would replace the
    first. Such sets are written as a JSON list behind a NUL, which no joined form starts with.
    """
    ordered = sorted(ids)
    if any("\n" in i or "\0" in i for i in ordered):
        text = "\0" + json.dumps(ordered, ensure_ascii=True)
    else:
        text = "\n".join(ordered)
    # surrogatepass: an id that is not valid text (undecodable bytes in a file name) cannot stop the hash
    return text.encode("utf-8", "surrogatepass")


def ids_digest(ids: Iterable[str]) -> str:
    """A digest of a set of ids, independent of their order (pipeline.ledger compares it with the output's ids)."""
    return hashlib.sha256(ids_key(ids)).hexdigest()
