"""The purified images of an output as image files: OUTPUT/data/'s rows written to a folder, one file per row, for tools
that read files (torchvision's ImageFolder, a training script's glob).

Where a row goes (`export_path`): DIR/<id>, the id's folders kept, its image extension replaced by the format's:
`cats/a.jpg` -> `cats/a.png`. A container's members lie in a folder named after it: a tar shard's key
`shard-0001.tar/000123` -> `shard-0001.tar/000123.png`, a zip member `a.zip/x/y.jpg` -> `a.zip/x/y.png`, a Parquet row
`t.parquet#3` -> `t.parquet/3.png`. Names that would leave DIR or cannot be file names are escaped, never followed: a
`..` part is written `%2E%2E`, `.` `%2E`, NUL `%00`, a backslash `%5C` (Windows' folder separator), and empty parts (a
leading '/', '//') are dropped; so are names Windows refuses or takes for another (`_escaped_part`), so that DIR can be
copied to Windows whole: <>:"|?* and control characters as %XX, a device name's first letter (`CON.png` -> `%43ON.png`),
a last dot or space, the `~` of a short-name shape (`ABCDEF~1.PNG`); a name over 255 bytes (more than a disk takes)
keeps its start and extension around a digest of it (`_fit`). Two ids that would get one name (`a.jpg` and `a.png`;
names that differ only in case, which are one file on macOS and Windows disks, or only in Unicode normalization, one
file on macOS) are told apart (`resolve_collisions`): an id whose name is already the export name keeps it, the others
get their whole name before the extension (`a.jpg.png`), or failing that a digest of their id (`a.1a2b3c4d.png`); so
does an id whose name is another's folder (`a.jpg`'s `a.png` beside `a.png/b.jpg`). The manifest says where each id
went.

Format: the stored PNG bytes as they are (lossless, nothing re-encoded), or with `image_format="input"` re-encoded to
the id's own extension (`cats/a.jpg` stays `cats/a.jpg`; ids without one, tar keys and Parquet rows, take the input's
format, the row's `original_format`): JPEG is lossy (`jpeg_quality`), GIF keeps 256 colours, PGM / PBM grey / 1-bit; PNG
bytes are never re-encoded.

Sidecar files (`sidecars=True`): beside each image, named after it (`a.png`: `a.txt`, `a.cls`, `a.json`), the files an
img2dataset folder or a WebDataset key holds, written from its row (`sidecar_bytes`: `txt` (or `caption_column`) the
.txt, `label` (or `label_column`) the .cls, the input's other columns one .json object; never the job's own columns,
nor a null but of a column null in every row: `null_columns`), so that the folder reads back into the job with the
same columns; where the job's reader would pair such a name with two images (`a.jpg` and `a.png` with
`image_format="input"`), each image's whole name's (`a.png.txt`: `sidecar_stem`). They are written before their
image, each whole as an image is: an image in DIR has its sidecars. Into a DIR that held files (--overwrite,
--resume), a sidecar-named file an image's row has no value for is removed only where the manifest in DIR (an earlier
export's) lists it as a sidecar file it wrote beside that image (its `sidecar_files` column: `earlier_sidecars`); any
other is a user's own, and kept.

Memory: the ids are read first, part file by part file, keeping an 8-byte digest of each row's name and of each distinct
folder (to find names two ids would share) and nothing else; the images are then read one part file at a time, a batch
of rows at once. A file lands whole (a hidden temporary name, then renamed; one PUT on an object store), so an export
stopped at any point leaves only whole files, and `existing="resume"` finishes it, skipping the files already there with
their bytes (told off the local disk by one listing of DIR, its sizes and checksums: `DirListing`; and removing the
temporary files of the writes an export killed outright was making: `partial_writes`).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import datetime
import errno
import hashlib
import io
import json
import math
import os
import posixpath
import re
import unicodedata
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.arrow_values import NanoTime, plain, python_rows
from pipeline.errors import JobError
from pipeline.lease import lease_holder, lease_is_live, read_lease
from pipeline.output import (
    DRIVER_READS,
    INDEX_READERS,
    JOB_FILE,
    SUMMARY_FILE,
    DamagedPart,
    is_damage,
    list_parts,
    read_ahead,
    read_json,
    same_storage_paths,
)
from pipeline.sources.ids import terminal_text, unescaped
from pipeline.sources.listing import is_table_name
from pipeline.sources.partitions import PARTITION_PREFIX, partition_folders
from pipeline.sources.records import JOB_COLUMNS, RENAMED_PREFIX, passthrough_name
from pipeline.sources.webdataset_keys import sidecar_columns as read_sidecars
from pipeline.stages import DATA_DIR, PAGE_ROWS, REJECTS_DIR, wait_at_gate
from pipeline.storage import (
    OBJECT_STORE_PROTOCOLS,
    TEMP_PREFIX,
    WEB_PROTOCOLS,
    RetriesExhausted,
    access_denied,
    concurrent_calls,
    describe,
    discard,
    has_rename,
    list_permission,
    make_parent_dirs,
    move_into_place,
    protocols,
    storage_path,
    with_protocol,
    with_retries,
    with_url_options,
)

IMAGE_FORMATS = ("png", "input")
MANIFESTS = ("csv", "jsonl", "none")
EXISTING = ("refuse", "overwrite", "resume")
MANIFEST_NAME = "manifest"  # DIR/manifest.csv or DIR/manifest.jsonl: no id's export name ends in .csv or .jsonl
# The manifest's last column with sidecars: the names of the sidecar files the export has beside each image (a list; the
# CSV's a JSON array, as it writes every list). Reserved, so that no column of data/ reads as it (`manifest_columns`).
SIDECARS_COLUMN = "sidecar_files"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# image extension (lower case) -> (PIL format, the mode it is saved from, save options); PNG (.png, and .apng: a PNG
# of one frame is one) is written as stored. `--format input` keeps an id's extension when it is one of these
# (`AS_STORED` or `_ENCODINGS`): every name the decoder's formats go by that the export writes (JPEG's .jpe and .jfif,
# the PPM plugin's .pnm); others (.mpo, .dib, .heic, .dat) stay part of the name, the input's format's added.
AS_STORED = (".png", ".apng")
_ENCODINGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    ".jpg": ("JPEG", "RGB", {}), ".jpeg": ("JPEG", "RGB", {}), ".jpe": ("JPEG", "RGB", {}), ".jfif": ("JPEG", "RGB", {}),
    ".bmp": ("BMP", "RGB", {}), ".tif": ("TIFF", "RGB", {}), ".tiff": ("TIFF", "RGB", {}),
    ".webp": ("WEBP", "RGB", {"lossless": True}), ".gif": ("GIF", "P", {}),
    ".ppm": ("PPM", "RGB", {}), ".pnm": ("PPM", "RGB", {}), ".pgm": ("PPM", "L", {}), ".pbm": ("PPM", "1", {}),
}
WRITTEN_EXTENSIONS = frozenset({*AS_STORED, *_ENCODINGS})  # the extensions `--format input` keeps
# The extensions `--format png` replaces with .png (cats/a.jpg -> cats/a.png); another stays part of the name
# (a.jpe -> a.jpe.png), as it did before .jpe, .jfif, .pnm and .apng were kept by `--format input`: an export resumed
# by this version finds the files an earlier one wrote under the names it gave them.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm"})
# the input's format (the row's original_format, PIL's name) -> the extension an id without one is given
_FORMAT_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
                      "GIF": ".gif", "PPM": ".ppm"}
BATCH_ROWS = 8 * PAGE_ROWS  # rows read from a part file at once (the job writes pages of PAGE_ROWS rows)
FAILURES_KEPT = 20  # failed rows named in the report (all are counted)
NAME_MAX = 255  # bytes in a file or folder name on the usual disks (ext4, XFS, btrfs; APFS and NTFS count characters)


class ExportError(JobError):
    """An export that cannot start: a missing or unfinished output, a DIR that is not empty, a bad option. Nothing
    was written."""


# --- where each row goes ----------------------------------------------------------------------------------------


# Characters no Windows file name may hold (NTFS, and a Windows share a Linux or macOS machine writes to): besides
# NUL and '\\' (escaped for every disk), the ASCII control characters and <>:"|?*; each is written %XX.
_WINDOWS_CHARACTERS = re.compile('[\x01-\x1f<>:"|?*]')
# Device names Windows gives a file of that name, with any extension ("nul.tar.gz"), any case and spaces before the
# first dot ("CON .png"): the file's bytes go to the device, or the copy fails. COM0 and LPT0, the superscript digits
# and CONIN$ / CONOUT$ are reserved by some Windows versions: escaped too (one more name escaped costs nothing).
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                              *(f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3")})
# A '~' and a digit in a name's first 8 characters before its first dot: the shape of a Windows short (8.3) name,
# 'ABCDEF~1.PNG', which on a Windows disk that makes short names opens the file whose short name it is (another image,
# 'abcdefgh.png'), rather than making a file of its own.
_SHORT_NAME = re.compile(r"[^.]{0,6}~[0-9][^.]{0,6}")


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _escaped_part(part: str) -> str:
    """One folder or file name of an id as a name that stays inside DIR and that every disk takes as it is, Windows'
    too (`export_path`)."""
    if part in (".", ".."):
        return part.replace(".", "%2E")
    part = part.replace("\0", "%00").replace("\\", "%5C")  # a backslash separates folders on Windows
    part = _WINDOWS_CHARACTERS.sub(lambda m: _percent(m.group()), part)
    if part.partition(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        part = _percent(part[0]) + part[1:]  # CON.png -> %43ON.png
    stem = part.partition(".")[0]
    if len(stem) <= 8 and _SHORT_NAME.fullmatch(stem):
        part = part.replace("~", "%7E")
    if part.endswith((".", " ")):  # Windows drops them: 'a.' is 'a' there, and 'a ' too
        part = part[:-1] + _percent(part[-1])
    return part


def id_parts(id_: str) -> tuple[list[str], bool]:
    """An id's folders and name as they lie under DIR, and whether any was escaped. A Parquet row's id
    `t.parquet#3` is the folder `t.parquet` and the name `3` (an Arrow IPC file's `d.arrow#3`, a TFRecord file's
    `s.tfrecord#3` likewise); a tar or zip member's is already such a path."""
    head, sep, row = id_.rpartition("#")
    if sep and row.isascii() and row.isdigit() and is_table_name(head):
        id_ = f"{head}/{row}"
    raw = id_.split("/")
    parts = [_escaped_part(p) for p in raw if p]
    escaped = parts != raw
    return parts or ["%2F"], escaped


def export_path(id_: str, image_format: str = "png", original_format: str | None = None) -> tuple[str, bool]:
    """(the path under DIR a row's image is first given, whether a part of its id was escaped). `image_format`
    "png": the id's image extension (`IMAGE_EXTENSIONS`) replaced by .png (or .png added); "input": the id's own
    extension kept where the export writes its format (`WRITTEN_EXTENSIONS`: .jpe, .jfif, .pnm too), or, for an id
    without one, the extension of `original_format` added (the input's format; .png when unknown)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    parts, escaped = id_parts(id_)
    stem, ext = posixpath.splitext(parts[-1])
    own = ext.lower() in (IMAGE_EXTENSIONS if image_format == "png" else WRITTEN_EXTENSIONS) and stem not in ("", ".")
    if image_format == "png":
        parts[-1] = (stem if own else parts[-1]) + ".png"
    elif not own:
        parts[-1] += _FORMAT_EXTENSIONS.get(str(original_format).upper(), ".png")
    fitted = [_fit(part) for part in parts]
    return "/".join(name for name, _ in fitted), escaped or any(cut for _, cut in fitted)


def _fit(name: str) -> tuple[str, bool]:
    """(`name` as a disk takes it, whether it was shortened): itself when it is at most NAME_MAX bytes, else its start,
    a dot, the first 16 hex digits of its sha256 and its extension, NAME_MAX bytes in all."""
    data = name.encode("utf-8", "surrogatepass")
    if len(data) <= NAME_MAX:
        return name, False
    stem, ext = posixpath.splitext(name)
    if len(ext.encode("utf-8", "surrogatepass")) > 16:  # no extension, a dot in a long name
        stem, ext = name, ""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{_cut(stem, NAME_MAX - 17 - len(ext.encode('utf-8', 'surrogatepass')))}.{digest}{ext}", True


def _fallback_paths(id_: str, path: str) -> Iterator[str]:
    """Other names for the image of `id_` when `path` is another id's too: its whole name before the extension
    (a.jpg -> a.jpg.png) where that adds to it, then its stem with a short digest of the id, then with the whole
    digest."""
    folder, name = posixpath.split(path)
    stem, ext = posixpath.splitext(name)
    whole = id_parts(id_)[0][-1]
    # a.jpg as a.jpg.png; not a.PNG as a.PNG.png, a.jpg as a.jpg.jpg, nor a tar key k as k.png, its first name
    if not whole.lower().endswith(ext.lower()) and _fit(whole + ext)[0] != name:
        yield posixpath.join(folder, _fit(whole + ext)[0])
    digest = hashlib.sha256(id_.encode("utf-8", "surrogatepass")).hexdigest()
    yield posixpath.join(folder, _fit(f"{stem}.{digest[:8]}{ext}")[0])
    yield posixpath.join(folder, _fit(f"{stem}.{digest}{ext}")[0])


def resolve_collisions(entries: Iterable[tuple[str, str]], taken: Callable[[str], bool] = lambda key: False,
                       folders: Callable[[str], bool] = lambda key: False) -> dict[str, str]:
    """New paths for ids whose export paths another id's equal, or are a folder of another id's path, ignoring case
    and Unicode normalization (`_fold`): id -> path, for those that move.

    `entries`: (id, path) of the ids that may share a path (an id given more than once, a repeated row, is one id).
    Of ids sharing one, the id whose path is its own name (`a.png` exported as `a.png`, or `a.jpg` as `a.jpg` when
    re-encoded to the input's format) keeps it when it is the only such id and the path is no folder (`folders`:
    whether a path is, folded, a folder of a row's path: `a.png` when another id is `a.png/b.jpg`); every other one,
    and an id alone on a path that is a folder, is given its first `_fallback_paths` name that no path in `entries`,
    no other new path, no folder and no path `taken` (whether a path is, folded, the path of a row not in `entries`)
    holds. The result depends on the set of ids, not on their order."""
    groups: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for id_, path in entries:
        groups[_fold(path)].add((id_, path))
    moved: dict[str, str] = {}
    given: set[str] = set()
    for key in sorted(groups):
        members = sorted(groups[key])
        folder = folders(members[0][1])
        if len({id_ for id_, _ in members}) < 2 and not folder:
            continue
        own = [id_ for id_, path in members if path == id_]
        keeper = own[0] if len(own) == 1 and not folder else None
        for id_, path in members:
            if id_ == keeper or id_ in moved:
                continue
            candidates = list(_fallback_paths(id_, path))
            chosen = next((c for c in candidates if _fold(c) not in groups and _fold(c) not in given
                           and not taken(c) and not folders(c)), candidates[-1])
            moved[id_] = chosen
            given.add(_fold(chosen))
    return moved


def _fold(path: str) -> str:
    """The form of a path two names share when they are one file on some disk: case folded (macOS and Windows
    disks ignore case) and Unicode-normalized (macOS's compare 'é' and 'e' with a combining accent as one)."""
    if path.isascii():
        return path.lower()  # the same, sooner
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


def _key_hash(path: str) -> int:
    """A 64-bit digest of a path's `_fold`ed form: what the first pass keeps of each row."""
    data = _fold(path).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# --- re-encoding -----------------------------------------------------------------------------------------------


def encoded(png: bytes, path: str, jpeg_quality: int = 95) -> bytes:
    """The file's bytes for an image stored as `png`, in the format `path`'s extension names: the PNG itself for
    .png; else decoded and saved in that format (JPEG at `jpeg_quality`: lossy)."""
    ext = posixpath.splitext(path)[1].lower()
    if ext in AS_STORED:
        return png
    from PIL import Image

    fmt, mode, options = _ENCODINGS[ext]
    if fmt == "JPEG":
        options = {**options, "quality": jpeg_quality}
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        converted = image.convert(mode) if mode != "P" else image.convert("RGB").quantize(256)
    buf = io.BytesIO()
    converted.save(buf, format=fmt, **options)
    return buf.getvalue()


# --- the output and the folder ------------------------------------------------------------------------------------


@dataclass
class OutputState:
    """What an output's records say when the export starts (or ends: `changed_since`)."""

    status: str | None  # _summary.json's status: complete, running, interrupted, failed, inconsistent; None: none
    started: Any
    lease: str | None  # who holds a live lease, if anyone

    def changed_since(self, before: OutputState) -> str | None:
        """Why the output may have changed between `before` and now, or None."""
        if self.lease and not before.lease:
            return f"a run took the output's lease ({self.lease})"
        if (self.status, self.started) != (before.status, before.started):
            return f"its summary changed (status {before.status} -> {self.status})"
        return None


@dataclass(frozen=True)
class ArgNames:
    """How the export's errors and warnings name what its caller gave: an API caller passed export_images's keyword
    arguments (`API_NAMES`: to='images', force=True), the command line its flags (`CLI_NAMES`: --to images, --force).
    An API caller was told to "pass --force", which it has no way to do."""

    flags: dict[str, str] | None  # argument -> flag; None: the API's own argument names

    def given(self, name: str, value: str) -> str:
        """An argument as the caller gave it, for an error about its value: `--to images`, `to='images'`."""
        return f"{self.flags[name]} {value}" if self.flags else f"{name}={value!r}"

    def named(self, name: str) -> str:
        """An argument's name: `--format`, `image_format`."""
        return self.flags[name] if self.flags else name

    def passing(self, name: str, value: str | None = None) -> str:
        """How to pass an argument the advice names: `--force`, `force=True`; `--manifest jsonl`, `manifest="jsonl"`;
        `existing`'s values are the command line's flags --overwrite and --resume."""
        if self.flags:
            return self.flags[value] if name == "existing" else self.flags[name] + (f" {value}" if value else "")
        return f'{name}="{value}"' if value else f"{name}=True"


def output_state(output: str, storage_options: dict[str, Any]) -> OutputState:
    summary = read_json(f"{output}/{SUMMARY_FILE}", storage_options) or {}
    lease = read_lease(output, storage_options)
    live = lease is not None and not lease.get("unreadable") and lease_is_live(lease)
    return OutputState(summary.get("status"), summary.get("started"), lease_holder(lease) if live else None)


def _not_there(fs: Any, root: str, output: str) -> ExportError:
    """The error for an output `fs.exists` says is not there: fsspec's exists answers False for a path it may not look
    at too (a local folder under one without search permission, a refusing store), which was told "does not exist"."""
    try:
        fs.info(root)
    except FileNotFoundError:
        pass
    except Exception as err:  # noqa: BLE001 - any other answer is the reason the output could not be seen
        return ExportError(f"output {output} cannot be looked at: {describe(err)}; the export needs to read it (the "
                           "user it runs as, or its credentials, may not)")
    return ExportError(f"output {output} does not exist")


def check_output(output: str, storage_options: dict[str, Any], force: bool = False,
                 names: ArgNames | None = None) -> tuple[OutputState, str | None]:
    """The output's state, and a warning when `force` lets an unfinished output through. Raises ExportError for a
    missing output, one that is not zip-purify's, and (without `force`) one a run is writing or did not finish; its
    advice names `force` as `names` says (API_NAMES, the default, or CLI_NAMES)."""
    names = names or API_NAMES
    fs, root = storage_path(output, storage_options)
    if not with_retries(lambda: fs.exists(root), f"stat {output}"):
        raise _not_there(fs, root, output)
    if not with_retries(lambda: fs.isdir(root), f"stat {output}"):
        raise ExportError(f"output {output} is a file; give the folder a zip-purify run wrote (it holds {JOB_FILE} "
                          f"and {DATA_DIR}/)")
    if not with_retries(lambda: fs.exists(f"{root}/{JOB_FILE}"), f"stat {output}/{JOB_FILE}"):
        parent = posixpath.dirname(root.rstrip("/"))
        if posixpath.basename(root.rstrip("/")) in (DATA_DIR, REJECTS_DIR) and fs.exists(f"{parent}/{JOB_FILE}"):
            raise ExportError(f"{output} is the {posixpath.basename(root.rstrip('/'))}/ folder of an output: give the "
                              f"output itself, {with_protocol(fs, parent)}")
        raise ExportError(f"{output} is not a zip-purify output (it has no {JOB_FILE}); give the "
                          "output folder of a zip-purify run")
    state = output_state(output, storage_options)
    problem = None
    if state.lease:
        problem = f"a run is writing it now ({state.lease})"
    elif state.status != "complete":
        said = {None: f"it has no {SUMMARY_FILE}: its run stopped before it began",
                "running": "its run stopped without saying so (status running, no live lease)",
                "interrupted": "its run was interrupted", "failed": "its run failed",
                "inconsistent": "its run's counts do not add up (status inconsistent)"}
        problem = said.get(state.status, f"status {state.status}")
    if problem is None:
        return state, None
    if not force:
        # a run that holds the lease is under way: running its command again would be refused by that same lease
        remedy = ("wait for that run to finish, then export" if state.lease else
                  "finish it first (run the same zip-purify command again)")
        raise ExportError(f"output {output} is not complete: {problem}; {remedy}, or pass {names.passing('force')} to "
                          "export the rows it holds now")
    return state, (f"warning: output {output} is not complete: {problem}; exporting the rows it holds now "
                   f"({names.passing('force')}): rows may be missing, or an id in data/ and rejects/ both")


def _refused(err: BaseException, uri: str, so: dict[str, Any], named: str, needs: str) -> ExportError:
    """The error for a store's refusal (`access_denied`) of a look at `uri` (given as `named`): on an object store,
    with the permission whose lack also refuses a look at what is not there (S3's s3:ListBucket), which the export
    cannot take for "not there"."""
    fs, _ = storage_path(uri, so)
    grant = (f" (the export {needs}, so its credentials need {list_permission(fs)} on it: without it the store refuses "
             "a look at anything not there too)" if not OBJECT_STORE_PROTOCOLS.isdisjoint(protocols(fs)) else "")
    return ExportError(f"{named} {uri} cannot be read: {describe(err)}{grant}")


API_NAMES = ArgNames(None)
CLI_NAMES = ArgNames({"output": "--output", "to": "--to", "image_format": "--format", "jpeg_quality": "--jpeg-quality",
                      "manifest": "--manifest", "force": "--force", "workers": "--workers", "resume": "--resume",
                      "overwrite": "--overwrite", "sidecars": "--sidecars",
                      "caption_column": "--caption-column", "label_column": "--label-column"})


def check_destination(to: str, output: str, storage_options: dict[str, Any], existing: str,
                      names: ArgNames) -> None:
    """Refuse a DIR that is a file, the output or one of its data/ and rejects/ folders, or (with `existing`
    "refuse") one that holds anything, naming DIR and the ways into it as `names` says (API_NAMES, CLI_NAMES).
    Raises ExportError."""
    given = names.given("to", to)
    if existing not in EXISTING:
        raise ValueError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    same = same_storage_paths(to, output, storage_options)
    if same is not None:
        _, to_path, out_path = same
        for folder in ("", DATA_DIR, REJECTS_DIR):
            inside = posixpath.join(out_path, folder) if folder else out_path
            if to_path == inside or (folder and to_path.startswith(inside.rstrip("/") + "/")):
                raise ExportError(f"{given} is {'the output itself' if not folder else f'inside its {folder}/ folder'}"
                                  f": readers of the output would take the image files for its rows; choose a "
                                  "folder outside it")
    fs, root = storage_path(to, storage_options)
    if set(protocols(fs)) & WEB_PROTOCOLS:
        raise ExportError(f"{given} is a web address; give a folder or URI of storage the export can write")
    if not with_retries(lambda: fs.exists(root), f"stat {to}"):
        bucket = root.strip("/").split("/", 1)[0]
        if not has_rename(fs) and not root.startswith("/") and bucket and \
                not with_retries(lambda: fs.exists(bucket), f"stat {bucket}"):
            # an object store makes the prefix, not the bucket: every file's write would fail on its own
            raise ExportError(f"the bucket of {given} ({bucket}) does not exist or cannot be seen with these "
                              f"credentials; create it or fix {names.named('to')}")
        return
    if not with_retries(lambda: fs.isdir(root), f"stat {to}"):
        raise ExportError(f"{given} is a file; give a folder (it is made when missing)")
    if existing == "refuse" and with_retries(lambda: fs.ls(root, detail=False), f"list {to}"):
        raise ExportError(f"{given} is not empty; give an empty or new folder, {names.passing('existing', 'resume')} "
                          "to finish an export into it (files already there with their bytes are kept), or "
                          f"{names.passing('existing', 'overwrite')} to write over the files of the same names (nothing "
                          "else in it is touched)")


# --- the first pass: names ----------------------------------------------------------------------------------------


@dataclass
class _Part:
    path: str
    rows: int
    schema: pa.Schema
    hashes: np.ndarray  # _key_hash of each row's first path
    stems: np.ndarray  # with sidecars, _key_hash of each first path's stem (`_stem_path`); else empty


@dataclass
class NamePlan:
    """Where each row goes: its first path (`export_path`) unless `moved` gives another; `repeated`: ids held by
    more than one row (an unfinished output's), of which the first row is exported."""

    image_format: str
    moved: dict[str, str] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)
    escaped: int = 0
    folders: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # _key_hash of each folder, sorted
    # with sidecars: _key_hash of each stem or name (`sidecar_stem`) two exported images claim, sorted
    shared_stems: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def path(self, id_: str, original_format: str | None) -> str:
        return self.moved.get(id_) or export_path(id_, self.image_format, original_format)[0]

    def is_folder(self, path: str) -> bool:
        """Whether `path` (under DIR) is, ignoring case, a folder a row's file lies in (by its digest)."""
        return _holds(self.folders, path)

    def sidecar_stem(self, path: str) -> str:
        """The stem of the sidecar files of the image exported to `path` (`sidecar_stem`)."""
        return sidecar_stem(path, self.shared_stems, self.folders)


def _found(hashes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which of `wanted` the sorted `hashes` hold (a mask of `wanted`), in memory of `wanted`'s size."""
    at = np.searchsorted(hashes, wanted)
    return (at < len(hashes)) & (hashes[np.minimum(at, len(hashes) - 1)] == wanted) if len(hashes) else at < 0


def _holds(hashes: np.ndarray, key: str) -> bool:
    """Whether the sorted `hashes` hold `key`'s _key_hash."""
    h = np.uint64(_key_hash(key))
    at = np.searchsorted(hashes, h)
    return bool(at < len(hashes) and hashes[at] == h)


def _read_columns(fs: Any, path: str, columns: list[str]) -> tuple[pa.Table, pa.Schema]:
    """Some columns of one part file (those it has), and its schema; `DamagedPart` when its bytes cannot be read."""
    def once() -> tuple[pa.Table, pa.Schema]:
        with fs.open(path, "rb") as f:
            try:
                part = pq.ParquetFile(f, pre_buffer=DRIVER_READS["pre_buffer"])
                have = [c for c in columns if c in part.schema_arrow.names]
                return part.read(columns=have, use_threads=DRIVER_READS["use_threads"]), part.schema_arrow
            except Exception as err:  # noqa: BLE001 - classified: the file's bytes, or the storage
                if is_damage(err):
                    raise DamagedPart(path, err) from err
                raise

    return with_retries(once, f"read the ids of {path}")


def _first_paths(table: pa.Table, image_format: str) -> Iterator[tuple[str, str, bool]]:
    """(id, first path, escaped) of each row of a table of ids (and original_format)."""
    ids = table.column("id").to_pylist()
    formats = (table.column("original_format").to_pylist() if "original_format" in table.column_names
               else [None] * len(ids))
    for id_, fmt in zip(ids, formats, strict=True):
        yield (id_, *export_path(id_, image_format, fmt))


class _HashSet:
    """The distinct 64-bit digests of many small arrays, merged as they come (so that the arrays not yet merged are
    never more than those merged): 8 bytes per distinct digest, twice that at most while merging."""

    def __init__(self) -> None:
        self.merged = np.zeros(0, np.uint64)
        self.pending: list[np.ndarray] = []
        self.pending_size = 0

    def add(self, hashes: np.ndarray) -> None:
        self.pending.append(hashes)
        self.pending_size += len(hashes)
        if self.pending_size > max(len(self.merged), 1 << 16):
            self.sorted()

    def sorted(self) -> np.ndarray:
        if self.pending:
            self.merged = np.unique(np.concatenate([self.merged, *self.pending]))
            self.pending, self.pending_size = [], 0
        return self.merged


def _add_folders(path: str, folders: set[str]) -> None:
    """Add the folders `path` lies in (`a/b/c.png`: `a/b` and `a`) to `folders`."""
    folder = path.rpartition("/")[0]
    while folder and folder not in folders:
        folders.add(folder)
        folder = folder.rpartition("/")[0]


def plan_names(fs: Any, paths: list[str], image_format: str, damaged: list[DamagedPart],
               sidecars: bool = False) -> tuple[NamePlan, list[_Part]]:
    """The first pass: every part file's ids (and original_format), read INDEX_READERS files at a time; returns
    where each row goes and the readable part files (rows, schema). Unreadable part files are added to `damaged`.
    `sidecars`: find the stems two images' sidecar files would share too (`NamePlan.shared_stems`)."""
    wanted = ["id", "original_format"] if image_format == "input" else ["id"]
    plan = NamePlan(image_format)
    parts: list[_Part] = []

    def index(path: str) -> tuple[pa.Table, pa.Schema] | DamagedPart:
        try:
            return _read_columns(fs, path, wanted)
        except DamagedPart as err:
            return err

    folder_hashes = _HashSet()
    for path, found in read_ahead(index, paths, concurrent_calls(fs, INDEX_READERS)):
        if isinstance(found, DamagedPart):
            damaged.append(found)
            continue
        table, schema = found
        if "id" not in table.column_names:
            damaged.append(DamagedPart(path, KeyError("no id column")))
            continue
        hashes, stems, escaped = [], [], 0
        folders: set[str] = set()
        for _, first, was_escaped in _first_paths(table, image_format):
            hashes.append(_key_hash(first))
            if sidecars:
                stems.append(_key_hash(_stem_path(first)))
            escaped += was_escaped
            _add_folders(first, folders)
        plan.escaped += escaped
        parts.append(_Part(path, table.num_rows, schema, np.array(hashes, dtype=np.uint64),
                           np.array(stems, dtype=np.uint64)))
        folder_hashes.add(np.array([_key_hash(f) for f in folders], dtype=np.uint64))
    every = np.concatenate([p.hashes for p in parts]) if parts else np.zeros(0, np.uint64)
    every.sort()  # in place: the rows' digests are held twice (in their parts and here), never three times
    every_folder = plan.folders = folder_hashes.sorted()
    # a path two rows share, or one that is a folder of another row's path (a.png and a.png/b.png: a file and a
    # folder of one name, which a disk cannot hold, and a sync of an object store's keys to a disk fails on)
    shared = np.union1d(every[1:][every[1:] == every[:-1]], every_folder[_found(every, every_folder)])
    if not len(shared):
        if sidecars:
            plan.shared_stems = _shared_stems(every, parts, [], [])
        return plan, parts
    # the second pass, over the part files holding such a path: those rows' ids, named
    entries: list[tuple[str, str]] = []
    counts: dict[str, int] = defaultdict(int)
    shared_set = set(shared.tolist())
    for part in parts:
        if not np.isin(part.hashes, shared).any():
            continue
        table, _ = _read_columns(fs, part.path, wanted)
        for (id_, first, _), h in zip(_first_paths(table, image_format), part.hashes.tolist(), strict=True):
            if h in shared_set:
                entries.append((id_, first))
                counts[id_] += 1

    # a folder is known by its digest alone (its name is not kept): a chance match of 64 bits (about 1 in 10^7 for
    # 10^6 files and 10^6 folders) gives a file another name it did not need, the same one each time
    plan.moved = resolve_collisions(entries, lambda key: _holds(every, key), plan.is_folder)
    plan.repeated = {id_ for id_, n in counts.items() if n > 1}
    if sidecars:
        # the rows counted under their first path that are not there: a moved id's (now at its new path), and the
        # repeated rows of an id (one image)
        firsts = dict(entries)
        gone = [firsts[id_] for id_, n in counts.items() for _ in range(n - (id_ not in plan.moved))]
        plan.shared_stems = _shared_stems(every, parts, gone, list(plan.moved.values()))
    return plan, parts


def stem_taken(fs: Any, plan: NamePlan, parts: list[_Part], stem: str) -> bool:
    """Whether an exported image's path but for its extension is `stem` exactly, as the job's reader pairs a file with
    an image (`manifest` for `manifest.png`: DIR/manifest.csv is read back as its sidecar). Known from the first
    pass's stems (`plan_names` with sidecars) and, on a digest that matches, the ids of the part files that hold it."""
    h = np.uint64(_key_hash(stem))
    if any(_stem_path(path) == stem for path in plan.moved.values()):
        return True
    wanted = ["id", "original_format"] if plan.image_format == "input" else ["id"]
    for part in parts:
        if not len(part.stems) or not (part.stems == h).any():
            continue
        table, _ = _read_columns(fs, part.path, wanted)
        if any(id_ not in plan.moved and _stem_path(first) == stem
               for id_, first, _ in _first_paths(table, plan.image_format)):
            return True
    return False


def _shared_stems(every: np.ndarray, parts: list[_Part], gone: list[str], added: list[str]) -> np.ndarray:
    """The sorted `_key_hash`es claimed twice among the exported images' stems and names (`sidecar_stem`): `every`,
    the rows' first paths' digests, and the parts' `stems`, less `gone`'s and with `added`'s (paths: the few rows of a
    shared name, `plan_names`). 16 bytes a row while sorted, besides `every` and the stems."""
    claims = np.concatenate([every, *(p.stems for p in parts)])
    claims.sort()
    shared = np.unique(claims[1:][claims[1:] == claims[:-1]])
    if not gone and not added:
        return shared
    plus = np.array([_key_hash(p) for q in added for p in (q, _stem_path(q))], dtype=np.uint64)
    minus = np.array([_key_hash(p) for q in gone for p in (q, _stem_path(q))], dtype=np.uint64)
    candidates = np.unique(np.concatenate([shared, plus, minus]))
    counts = np.searchsorted(claims, candidates, "right") - np.searchsorted(claims, candidates, "left")
    for changed, sign in ((plus, 1), (minus, -1)):
        np.add.at(counts, np.searchsorted(candidates, changed), sign)
    return candidates[counts > 1]


# --- the manifest -------------------------------------------------------------------------------------------------


def _holds_bytes(t: pa.DataType) -> bool:
    """Whether a column of type `t` holds bytes (a pass-through image, a mask), in it or in a field of it."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or \
            pa.types.is_binary_view(t):
        return True
    if pa.types.is_struct(t):
        return any(_holds_bytes(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _holds_bytes(t.value_type)
    return False


def manifest_columns(schemas: Iterable[pa.Schema]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(the manifest's columns, each (its name, the data/ column it holds; None for the exported file's path): id,
    path, then every column of data/ but the image, in the order the part files give them; the columns left out:
    those holding bytes, which a CSV or JSON line cannot). A column of data/ named `path` (an input's own) is
    written `input_path` (`input_input_path` if that is taken too), as the job names an input's `id`; so is one named
    so in another case (`Path`: `input_Path`), which readers whose names have no case (DuckDB) take for `path`. So is
    one named `sidecar_files` (`SIDECARS_COLUMN`), which a later export would read as the sidecar files this one wrote."""
    found: dict[str, None] = {}
    left_out: dict[str, None] = {}
    for schema in schemas:
        for f in schema:
            if f.name not in ("id", "image"):
                (left_out if _holds_bytes(f.type) else found)[f.name] = None
    columns: list[tuple[str, str | None]] = [("id", "id"), ("path", None)]
    names = {name.lower() for name in ("id", "path", SIDECARS_COLUMN, *found)}
    for name in found:
        shown = name
        if name.lower() in ("path", SIDECARS_COLUMN):
            while shown.lower() in names:
                shown = "input_" + shown
            names.add(shown.lower())
        columns.append((shown, name))
    return columns, [n for n in left_out if n not in found]


def _json_value(value: Any, non_finite: bool = False) -> Any:
    """`value` as JSON holds it; what JSON has no type for and is no time (a Parquet input's decimal or duration
    column: Decimal, timedelta) is left for `_json_text`'s `str`, the text the CSV writes of it. `non_finite`: a float
    that is not finite stays that float (json.dumps writes NaN, Infinity), rather than its text."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time | NanoTime):
        return value.isoformat()
    if isinstance(value, np.ndarray | np.generic):  # a Ray tensor column's value: its printed form is cut short
        return _json_value(plain(value), non_finite)
    if isinstance(value, dict):
        return {str(k): _json_value(v, non_finite) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v, non_finite) for v in value]
    if isinstance(value, float) and not math.isfinite(value) and not non_finite:
        return str(value)  # 'inf' (an image purification left unchanged), 'nan': JSON has no such numbers
    return value


def _json_text(value: Any) -> str:
    return json.dumps(_json_value(value), ensure_ascii=False, default=str)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple | np.ndarray):
        return _json_text(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time | NanoTime):
        return value.isoformat()
    return value


class Manifest:
    """DIR/manifest.csv or .jsonl, one line per exported image, written under a hidden temporary name and moved into
    place once whole (so a manifest in DIR is always a finished export's). `sidecars`: a last column,
    `SIDECARS_COLUMN`, lists the names of each image's sidecar files. `carried` (an export without sidecars into a
    DIR whose earlier manifest lists some: `earlier_sidecars`): that column lists, beside each image, those the
    earlier manifest lists beside it (this export writes and removes none), so that a later --sidecars export's
    cleanup knows them for an export's (replaced by a manifest without them, they read as a user's own files, kept
    as stale for good). `replaces` (DIR held files: --overwrite, --resume): the line the manifest this one replaces
    has for the path of a row that failed is kept (`failed`), as that export's files are still there."""

    def __init__(self, fs: Any, root: str, kind: str, columns: list[tuple[str, str | None]],
                 sidecars: bool = False, carried: np.ndarray | None = None, replaces: bool = False) -> None:
        self.fs, self.kind, self.columns, self.carried = fs, kind, columns, carried
        self.sidecars = sidecars or carried is not None
        self.path = posixpath.join(root, f"{MANIFEST_NAME}.{kind}")
        self.tmp = posixpath.join(root, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{MANIFEST_NAME}.{kind}.tmp")
        make_parent_dirs(fs, root)
        self.raw = fs.open(self.tmp, "wb")
        self.text = io.TextIOWrapper(self.raw, encoding="utf-8", newline="")
        self.csv = csv.writer(self.text) if kind == "csv" else None
        self.error: Exception | None = None
        # with `replaces`: the path of each row that failed -> (the names of the sidecar files it has beside it now,
        # those of the stale ones it removed)
        if replaces:
            try:  # only a manifest there has lines to keep: the failed rows are not kept in mind for none
                replaces = with_retries(lambda: fs.isfile(self.path), f"stat {self.path}")
            except Exception:  # noqa: BLE001 - not known: looked for at the end
                pass
        self.failed_rows: dict[str, tuple[list[str], list[str]]] | None = {} if replaces else None
        self.kept = 0  # lines of the manifest replaced kept for rows that failed (`finish`)
        if self.csv is not None:
            self.csv.writerow([name for name, _ in columns] + ([SIDECARS_COLUMN] if self.sidecars else []))

    def add(self, row: dict[str, Any], path: str, sidecars: Iterable[str] = ()) -> None:
        """The line of one exported image: `row` (a row of data/), exported to `path` (relative to DIR), with the
        names of its sidecar files beside it (`sidecars`). A write that fails (a full disk) is kept for `finish` to
        raise: the images go on being exported."""
        values = [(name, path if column is None else row.get(column)) for name, column in self.columns]
        if self.carried is not None:
            sidecars = [posixpath.basename(stem + ext) for stem in dict.fromkeys((_stem_path(path), path))
                        for ext in SIDECAR_EXTENSIONS if _holds_exact(self.carried, stem + ext)]
        self._write(values, sidecars)

    def _write(self, values: list[tuple[str, Any]], sidecars: Iterable[str]) -> None:
        if self.error is not None:
            return
        if self.sidecars:
            values.append((SIDECARS_COLUMN, sorted(sidecars)))
        try:
            if self.csv is not None:
                self.csv.writerow([_csv_value(value) for _, value in values])
            else:
                self.text.write(_json_text(dict(values)) + "\n")
        except Exception as err:  # noqa: BLE001 - said once the export ends
            self.error = err

    def failed(self, path: str, placed: Iterable[str] = (), gone: Iterable[str] = ()) -> None:
        """The row exported to `path` failed: where the manifest this one replaces has a line for `path`, that line is
        kept (`finish`), since the files that export wrote are still there (the row wrote none, or some of its
        sidecar files: `placed`, the names of those now beside it; `gone`, those of the stale ones it removed).
        Without it, the files would be no export's to the next: its cleanup would keep a stale sidecar for good."""
        if self.failed_rows is not None:
            self.failed_rows[path] = (list(placed), list(gone))

    def _keep_earlier_lines(self) -> None:
        """Add the lines of the manifest this one replaces (at `path`, still there) for the paths of the rows that
        failed: in this manifest's columns (one it lacks is empty), its sidecar files those the line lists that the row
        did not remove, and those the row has beside its path now. A manifest that is not there, or cannot be read,
        has none (`earlier_sidecars` reads it so)."""
        failed, as_text = self.failed_rows or {}, self.kind == "csv"
        if not failed:
            return
        try:
            with self.fs.open(self.path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                rows = csv.DictReader(text) if as_text else (json.loads(line) for line in text if line.strip())
                for row in rows:
                    path = row.get("path") if isinstance(row, dict) else None
                    if not isinstance(path, str) or path not in failed:
                        continue
                    placed, gone = failed.pop(path)
                    listed = [name for name in _listed_names(row.get(SIDECARS_COLUMN), as_text) if name not in gone]
                    self._write([(name, row.get(name)) for name, _ in self.columns], {*listed, *placed})
                    self.kept += 1
        except (OSError, ValueError, csv.Error):  # none there, or not a manifest (`earlier_sidecars`): none kept
            pass

    def finish(self) -> str | None:
        """Put the manifest in place, with the earlier lines of rows that failed (`failed`); the reason its temporary
        copy could not be removed after (an object store's copy landed, its DELETE refused), or None. The manifest is
        in place either way."""
        self._keep_earlier_lines()
        if self.error is not None:
            raise self.error
        self.text.close()  # closes the file too: an object store's upload completes here
        left: list[str] = []
        _put_in_place(self.fs, self.tmp, self.path, self.fs.size(self.tmp), lambda err: left.append(describe(err)))
        return left[0] if left else None

    def abandon(self) -> None:
        try:
            self.text.close()
        except Exception:  # noqa: BLE001 - cleaning up after another error
            pass
        discard(self.fs, self.tmp)


# --- sidecar files ------------------------------------------------------------------------------------------------


# The sidecar files `sidecars=True` writes beside an image, by extension, in the order they are written
SIDECAR_EXTENSIONS = (".txt", ".cls", ".json")


def sidecar_columns(schemas: Iterable[pa.Schema]) -> tuple[list[str], list[str]]:
    """(the columns of data/ an image's sidecar files are written from, in the order the part files give them; those
    left out as they hold bytes, which no text file holds). The job's own columns (`JOB_COLUMNS`: id, width, source,
    original_format, ...) are never a sidecar's: the reader gives them again."""
    found: dict[str, None] = {}
    left_out: dict[str, None] = {}
    for schema in schemas:
        for f in schema:
            if f.name not in JOB_COLUMNS:
                (left_out if _holds_bytes(f.type) else found)[f.name] = None
    return list(found), [n for n in left_out if n not in found]


# Columns that are a sidecar file of their own: a null of theirs is no file, whatever the rest of the column holds
_FILE_COLUMNS = ("txt", "label", "json")
CAPTION_COLUMN = "txt"  # the column the job reads a .txt sidecar as, and the .txt is written from by default
# Where data sets keep captions when not in `txt` (img2dataset's Parquet: `caption`): named in a note to --sidecars
_CAPTION_NAMES = ("caption", "text", "prompt")
LABEL_COLUMN = "label"  # the column the job reads a .cls sidecar as, and the .cls is written from by default
# Where data sets keep class labels when not in `label` (a CSV's `class`, torchvision-style `target`): named in a note
_LABEL_NAMES = ("class", "class_id", "category", "target")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t)


def _is_label(t: pa.DataType) -> bool:
    """Whether a column of type `t` can be a .cls: whole numbers (WebDataset's class) or text (a folder's name)."""
    return (pa.types.is_integer(t) or _is_text(t)) and not pa.types.is_boolean(t)


@dataclass(frozen=True)
class _SidecarColumn:
    """What tells a column that may be one sidecar file's (the .txt's, the .cls's) apart, for `_check_sidecar_column`."""

    default: str  # the column the job reads the file back as: `txt`, `label`
    arg: str  # the argument naming another column: caption_column, label_column
    ext: str  # .txt, .cls
    what: str  # what the file holds, in an error: a caption, a class label
    fits: Callable[[pa.DataType], bool]
    wrong_type: str  # what an error says after a column of another type
    suggested: tuple[str, ...]  # columns named in a note where the default is missing
    read_back: str  # how the job reads the file back, in the error for a column beside the default one


_CAPTION = _SidecarColumn(CAPTION_COLUMN, "caption_column", ".txt", "a caption", _is_text,
                          ", not text: a .txt caption holds text", _CAPTION_NAMES, "a folder input's .txt captions")
_LABEL = _SidecarColumn(LABEL_COLUMN, "label_column", ".cls", "a class label", _is_label,
                        ": a .cls label holds a whole number or text", _LABEL_NAMES,
                        "a folder input's .cls labels, --labels-from-folders'")


def _check_sidecar_column(schemas: list[pa.Schema], column: str, kind: _SidecarColumn, names: ArgNames,
                          other: tuple[str, str] | None = None) -> str | None:
    """Refuse (ExportError) a column for `kind`'s file that the output's part files do not have (naming the columns
    they have), of a type the file cannot hold, one of the job's own columns, the column `other` (its argument, its
    column) names, or, not the default, beside the default column (both would be the file). With the default and no
    such column: a note naming a column the file's values may be in (`kind.suggested`), or None."""
    types = _column_types(schemas)
    given = names.given(kind.arg, column)
    if column == kind.default:
        if column in types:
            return None
        found = [n for n in kind.suggested if n in types and all(kind.fits(t) for t in types[n])]
        return (f"note: the output has no {kind.default} column, so no {kind.ext} was written; its {found[0]} column "
                f"is in each .json: {names.passing(kind.arg, found[0])} writes it as the {kind.ext} too") if found else None
    if column in JOB_COLUMNS:
        raise ExportError(f"{given} is one of the job's own columns, which no sidecar file holds; give a column of "
                          f"the input's ({kind.what})")
    if column not in types:
        raise _no_such_column(given, types)
    bad = next((t for t in types[column] if not kind.fits(t)), None)
    if bad is not None:
        raise ExportError(f"{given} is a column of {bad}{kind.wrong_type}")
    if other is not None and column == other[1]:
        raise ExportError(f"{given} is the caption column too ({names.named(other[0])}): a column is the .txt "
                          "or the .cls, not both")
    if any(not pa.types.is_null(t) for t in types.get(kind.default, [])):
        raise ExportError(f"{given}: the output has a {kind.default} column too, which the {kind.ext} is read back as "
                          f"({kind.read_back}); both cannot be the {kind.ext}: give "
                          f"{names.passing(kind.arg, kind.default)} (the {column} column is then a key of each .json)")
    return None


def check_caption_column(schemas: list[pa.Schema], caption: str, names: ArgNames) -> str | None:
    """Check a caption column (`--caption-column`): `_check_sidecar_column` for the .txt."""
    return _check_sidecar_column(schemas, caption, _CAPTION, names)


def check_label_column(schemas: list[pa.Schema], label: str, caption: str, names: ArgNames) -> str | None:
    """Check a label column (`--label-column`): `_check_sidecar_column` for the .cls, which is not the caption's."""
    return _check_sidecar_column(schemas, label, _LABEL, names, other=("caption_column", caption))


def _column_types(schemas: Iterable[pa.Schema]) -> dict[str, list[pa.DataType]]:
    """Each column of the part files, with the types they give it."""
    types: dict[str, list[pa.DataType]] = defaultdict(list)
    for schema in schemas:
        for f in schema:
            types[f.name].append(f.type)
    return types


def _no_such_column(given: str, types: Mapping[str, Any]) -> ExportError:
    have = [n for n in types if n not in JOB_COLUMNS]
    shown = ", ".join(have[:40]) + (f", ... ({len(have) - 40:,} more)" if len(have) > 40 else "")
    return ExportError(f"{given}: the output has no column of that name; its columns besides the job's own are: "
                       f"{shown or 'none'}")


def null_columns(schemas: Iterable[pa.Schema]) -> frozenset[str]:
    """The columns of data/ (not the job's own) that hold nothing but nulls: typed null in every part file that has
    them (img2dataset's `error_message` of images that downloaded). Each is a null key of every .json written
    (`sidecar_bytes`): a .json key null in every row is what gave the output the column, and no key would give it
    again. A caption, label or kept `json` column is left out (a file of its own, or the .json itself)."""
    typed: dict[str, bool] = {}
    for schema in schemas:
        for f in schema:
            if f.name not in JOB_COLUMNS and f.name not in _FILE_COLUMNS:
                typed[f.name] = typed.get(f.name, True) and pa.types.is_null(f.type)
    return frozenset(name for name, null in typed.items() if null)


def json_key(column: str) -> str:
    """The .json key of a column: the reader's `input_` escape of a job column's name undone (`input_id` -> `id`,
    `input_input_id` -> `input_id`), so that the key is read back as the same column; any other name as it is."""
    bare = column[len(RENAMED_PREFIX):]
    return bare if column[: len(RENAMED_PREFIX)].lower() == RENAMED_PREFIX and passthrough_name(bare) == column \
        else column


def _sidecar_text(text: str) -> bytes:
    """A caption's or label's bytes from its column: the reader wrote a sidecar's bytes that are not UTF-8 as `\\xNN`
    (and then a backslash as `\\\\`, `text_value`), which are undone so that the file reads back as the same text."""
    try:
        return unescaped(text).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate (`\\ud800`, from JSON): no bytes are it; the text as written
        return text.encode("utf-8")


def _cls_reads_back(label: str) -> bool:
    """Whether a .cls of the text `label` reads back as it (`webdataset_keys.sidecar_columns`, the reader's own rule),
    or as the number it is the digits of ('3' as 3, WebDataset's class). Not '007' (read as 7, one class with '7'),
    '+3', nor a label with whitespace around it (stripped, as an editor's newline): such a label is a .json key."""
    back = read_sidecars({"cls": ("x.cls", _sidecar_text(label))})
    value = back.get("label") if isinstance(back, dict) else None
    return value == label or _is_whole(value) and str(value) == label


def _partition_columns(id_: str, row: Mapping[str, Any]) -> set[str]:
    """The columns of `row` that its id's `key=value` folders gave (`--partitioning hive`): the folder stays in the
    exported path, which gives the column again; each is, in any case, the key's pass-through name with the most
    `partition_` before it (`partitions.partition_column`) that holds the folder's value."""
    lower = {name.lower(): name for name in row}
    given = set()
    for key, value in partition_folders(id_):
        name, found = passthrough_name(key), None
        while name.lower() in lower:
            if row[lower[name.lower()]] == value:
                found = lower[name.lower()]
            name = PARTITION_PREFIX + name
        if found is not None:
            given.add(found)
    return given


def sidecar_bytes(row: Mapping[str, Any], columns: Iterable[str], partitioned: bool = False,
                  nulls: Container[str] = (), caption: str = CAPTION_COLUMN,
                  label: str = LABEL_COLUMN) -> dict[str, bytes]:
    """The sidecar files of an exported image, by extension (`.txt`, `.cls`, `.json`), from its row's `columns`
    (`sidecar_columns`); one whose values are all null is not written. `txt` (text) is the .txt, `label` (a whole
    number, or text a .cls gives back: `_cls_reads_back`) the .cls, as the job reads them (a caption's and label's
    `\\xNN` escapes undone: `_sidecar_text`); every other column that is not null is a key of one .json object
    (`json_key`), its value as JSON holds it (numbers stay numbers, NaN and Infinity too, lists and structs arrays and
    objects, times ISO 8601 text, a text value's escapes undone as a caption's), in the order of `columns`. The `json`
    column of a .json the reader kept as text (not an object, not valid JSON) is the whole .json, as it is, where no
    other column is; one holding an object (the fields past the reader's column limit) gives its keys back to the .json.
    `partitioned`: the output's run read `key=value` folders as columns (`--partitioning hive`): those are left out
    (`_partition_columns`). `nulls`: the columns null in every row (`null_columns`), each a null key of the .json all
    the same. `caption`: the column whose text is the .txt (`txt`, or the one `--caption-column` names: `caption`,
    which stays a key of the .json too, so that the folder reads back with that column, a `txt` beside it). `label`:
    the column the .cls is written from (`label`, or the one `--label-column` names, which stays a .json key too)."""
    skip = _partition_columns(row["id"], row) if partitioned else set()
    files: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    nulled: list[str] = []  # the keys of `nulls`, added to an object once it is made
    for column in columns:
        value = row.get(column)
        if column in skip:
            continue
        if value is None:
            if column in nulls and column not in _FILE_COLUMNS:
                nulled.append(json_key(column))
            continue
        if column == caption and isinstance(value, str):
            files[".txt"] = _sidecar_text(value)
            if caption != CAPTION_COLUMN:  # read back as `txt`: its own name is kept by the .json
                fields[json_key(column)] = unescaped(value)
        elif column == label and (_is_whole(value) or isinstance(value, str) and _cls_reads_back(value)):
            files[".cls"] = str(value).encode() if _is_whole(value) else _sidecar_text(value)
            if label != LABEL_COLUMN:  # read back as `label`: its own name is kept by the .json
                fields[json_key(column)] = unescaped(value) if isinstance(value, str) else int(value)
        else:
            key = json_key(column)
            # a float that is not finite as Python's json writes it (NaN), which the reader reads back as that float:
            # as the text "nan", one NaN made the column text, every row's
            fields[key] = unescaped(value) if isinstance(value, str) and key != "json" else _json_value(value, True)
    kept = fields.get("json")
    if isinstance(kept, str):
        if len(fields) == 1:  # the input's .json as it was (a list, ...), with no null key that would make it an object
            files[".json"] = kept.encode("utf-8")
            return {ext: files[ext] for ext in SIDECAR_EXTENSIONS if ext in files}
        try:
            over = json.loads(kept)
        except ValueError:
            over = None
        if isinstance(over, dict) and not set(over) & set(fields):
            del fields["json"]
            fields.update(over)
    fields.update((key, None) for key in nulled if key not in fields)
    if fields:
        text = json.dumps(fields, ensure_ascii=False, default=str)
        try:
            files[".json"] = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a byte of a caption that is not UTF-8): JSON's \\udcNN escape
            files[".json"] = json.dumps(fields, default=str).encode("ascii")
    return {ext: files[ext] for ext in SIDECAR_EXTENSIONS if ext in files}


def _stem_path(path: str) -> str:
    """`path` without its extension (`a/b.png` -> `a/b`): what a sidecar's name is its stem and extension of."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, posixpath.splitext(name)[0])


def sidecar_stem(path: str, shared: np.ndarray, folders: np.ndarray) -> str:
    """The path, but for its extension, of the sidecar files of the image exported to `path`: the image's stem
    (`a/b.png` -> `a/b`: `a/b.txt`), as img2dataset and caption loaders pair them; or, where that stem is (but for case
    and Unicode normalization) also another exported image's stem or whole name (`b.jpg` and `b.png` with `--format
    input`; `b.png` and `b.png.png`), which the job's reader would give such a file too, the image's whole name
    (`a/b.png.json`, as Google Takeout names them, which the reader pairs with that image alone). `shared`: the sorted
    `_key_hash`es of stems and names that two exported images claim; `folders`: those of the folders images lie in (a
    sidecar may not be one). ValueError when neither name is the image's alone."""
    for stem in (_stem_path(path), path):
        if not _holds(shared, stem) and not any(_holds(folders, stem + ext) for ext in SIDECAR_EXTENSIONS):
            return stem
    raise ValueError(f"no name for its sidecar files is its image's alone ({_stem_path(path)}.txt and {path}.txt "
                     "name another image, or a folder, too)")


@dataclass(frozen=True)
class SidecarWriting:
    """How an export writes sidecar files: from which columns (`sidecar_columns`), leaving out those of `key=value`
    folders (`partitioned`), and removing the sidecar files an image's row has no value for (`clean`: DIR held
    files when the export began, --overwrite or --resume), which would read back as its columns, where an earlier
    export's manifest lists them (`earlier`); writing a null key of each column null in every row into each .json
    (`nulls`: `null_columns`)."""

    columns: list[str]
    partitioned: bool
    clean: bool
    nulls: frozenset[str] = frozenset()
    # with `clean`: the `_exact_hash`es of the sidecar files an earlier export's manifest in DIR lists as its own
    # (`earlier_sidecars`). Any other sidecar-named file is no earlier export's (a user's own notes `x.txt` beside an
    # image a plain export wrote, a `z.json` added after): it is kept.
    earlier: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    # with `clean`, on storage other than the local disk: the `_exact_hash`es of the sidecar-named files DIR held when
    # the export began (`listed_sidecars`), so that only those are removed (a request each); None: each name is looked at
    listed: np.ndarray | None = None
    caption: str = CAPTION_COLUMN  # the column the .txt is written from (`sidecar_bytes`)
    label: str = LABEL_COLUMN  # the column the .cls is written from


def sidecar_writes(row: Mapping[str, Any], rel: str, plan: NamePlan,
                   writing: SidecarWriting) -> tuple[dict[str, bytes], list[str]]:
    """(the sidecar files of the image of `row` exported to `rel`, each path under DIR -> its bytes; with
    `writing.clean`, the other paths under DIR its sidecar files could have, by either name `sidecar_stem` gives, to
    remove: none is another image's, as a stem two images claim is neither's)."""
    stem = plan.sidecar_stem(rel)
    files = {stem + ext: data for ext, data in sidecar_bytes(row, writing.columns, writing.partitioned,
                                                                  writing.nulls, writing.caption,
                                                                  writing.label).items()}
    for name in files:
        # an image name shortened to NAME_MAX bytes (`_fit`) with a 3-letter extension leaves no room for `.json`
        if len(posixpath.basename(name).encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise ValueError(f"the name of its sidecar file would be over {NAME_MAX} bytes, more than a disk takes: "
                             f"{posixpath.basename(name)}")
    stale = [name + ext for name in dict.fromkeys((_stem_path(rel), rel)) for ext in SIDECAR_EXTENSIONS
             if name + ext not in files and _holds_exact(writing.earlier, name + ext)] if writing.clean else []
    if writing.listed is not None:
        stale = [name for name in stale if _holds_exact(writing.listed, name)]
    return files, stale


def _exact_hash(rel: str) -> int:
    """A 64-bit digest of a path under DIR as it is (not folded: a sidecar named in another case is another file
    on an object store)."""
    return int.from_bytes(hashlib.blake2b(rel.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _holds_exact(hashes: np.ndarray, rel: str) -> bool:
    h = np.uint64(_exact_hash(rel))
    at = np.searchsorted(hashes, h)
    return bool(at < len(hashes) and hashes[at] == h)


def listed_sidecars(paths: Iterable[str], root: str) -> np.ndarray:
    """The sorted `_exact_hash`es of those of `paths` (a listing of the folder `root`: `fs.find`) that lie under it named
    as a sidecar file (.txt, .cls, .json), by their path under it: 8 bytes each. A chance match of 64 bits costs one
    DELETE of a file that is not there."""
    prefix = root.rstrip("/") + "/"
    return np.unique(np.array([_exact_hash(p[len(prefix):]) for p in paths
                               if p.startswith(prefix) and p.endswith(SIDECAR_EXTENSIONS)], dtype=np.uint64))


def listed_md5(info: Mapping[str, Any]) -> bytes | None:
    """The MD5 of a file's bytes as a store's listing entry gives it, or None where it gives none: S3's ETag of a
    single-part upload (32 hex digits; a multipart upload's has a '-' and is no MD5 of the bytes), GCS's md5Hash
    (base64; a composite object has none), Azure's content_md5. An ETag that is no MD5 of the bytes (S3's with SSE-KMS
    or SSE-C) only fails to match: the file is then read back (`write_file`), never taken as the same."""
    try:
        etag = str(info.get("ETag") or "").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{32}", etag):
            return bytes.fromhex(etag)
        gcs = info.get("md5Hash")
        if isinstance(gcs, str) and len(digest := base64.b64decode(gcs, validate=True)) == 16:
            return digest
        azure = (info.get("content_settings") or {}).get("content_md5")
        if isinstance(azure, bytes | bytearray) and len(azure) == 16:
            return bytes(azure)
    except (ValueError, TypeError, AttributeError):  # an entry of another shape: no checksum from it
        pass
    return None


@dataclass(frozen=True)
class DirListing:
    """The files DIR held when an export resumed off the local disk began, from its one listing (`fs.find` with
    details): each one's size and, where the listing gives it, the MD5 of its bytes (`listed_md5`), by the
    `_exact_hash` of its path under DIR, 32 bytes a file. `write_file` tells from it a file already there with the bytes
    it would write, with no request of its own, where it sent a HEAD for every file and read back each of its size."""

    prefix: str  # DIR's path as the listing names it, with a '/'
    hashes: np.ndarray  # sorted
    sizes: np.ndarray  # -1: not listed
    md5s: np.ndarray  # (files, 16) uint8; all zero: none listed

    @classmethod
    def of(cls, entries: Mapping[str, Mapping[str, Any]], root: str) -> DirListing:
        prefix = root.rstrip("/") + "/"
        files = sorted(((_exact_hash(name[len(prefix):]), info) for name, info in entries.items()
                        if name.startswith(prefix) and info.get("type") != "directory"), key=lambda f: f[0])
        hashes = np.array([h for h, _ in files], dtype=np.uint64)
        sizes = np.array([info.get("size") if isinstance(info.get("size"), int) else -1 for _, info in files],
                         dtype=np.int64)
        md5s = np.zeros((len(files), 16), dtype=np.uint8)
        for i, (_, info) in enumerate(files):
            digest = listed_md5(info)
            if digest is not None:
                md5s[i] = np.frombuffer(digest, dtype=np.uint8)
        return cls(prefix, hashes, sizes, md5s)

    def entry(self, path: str) -> tuple[int, bytes | None] | None:
        """(size, MD5 or None) of the file the listing found at `path` (DIR's path and one under it), or None where it
        found none. A chance match of 64 bits with a file not there costs a read that finds nothing, and a write."""
        if not path.startswith(self.prefix):
            return None
        h = np.uint64(_exact_hash(path[len(self.prefix):]))
        at = int(np.searchsorted(self.hashes, h))
        if at >= len(self.hashes) or self.hashes[at] != h:
            return None
        md5 = self.md5s[at].tobytes()
        return int(self.sizes[at]), (md5 if any(md5) else None)


def earlier_sidecars(fs: Any, root: str) -> np.ndarray:
    """The sorted `_exact_hash`es of the paths (relative to `root`, DIR) of the sidecar files the manifests in DIR
    (`manifest.csv`, `manifest.jsonl`: an earlier export's, finished) list in their `SIDECARS_COLUMN` beside each
    image, 8 bytes each: the only sidecar-named files a later export may remove. A manifest without that column (an
    export without sidecars, or by an older version), or that cannot be read, lists none: nothing is removed."""
    found: list[int] = []
    for kind in ("csv", "jsonl"):
        path = posixpath.join(root, f"{MANIFEST_NAME}.{kind}")
        try:
            with fs.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                rows = csv.DictReader(text) if kind == "csv" else (json.loads(line) for line in text if line.strip())
                for row in rows:
                    if isinstance(row, dict) and isinstance(row.get("path"), str):
                        folder = posixpath.dirname(row["path"])
                        found += [_exact_hash(posixpath.join(folder, name))
                                  for name in _listed_names(row.get(SIDECARS_COLUMN), kind == "csv")]
        except (OSError, ValueError, csv.Error):  # none there, a folder of that name, or not a manifest: lists none
            continue
    return np.unique(np.array(found, dtype=np.uint64))


def _listed_names(value: Any, as_text: bool) -> list[str]:
    """The sidecar file names a manifest's `SIDECARS_COLUMN` value lists (the CSV's: a JSON array); none from a value
    of another shape, nor a name that is no sidecar's beside its image (a folder in it, another extension)."""
    if as_text and isinstance(value, str):
        try:
            value = json.loads(value) if value else []
        except ValueError:
            return []
    if not isinstance(value, list):
        return []
    return [n for n in value if isinstance(n, str) and "/" not in n and n.endswith(SIDECAR_EXTENSIONS)
            and n not in SIDECAR_EXTENSIONS]


# --- writing one file ---------------------------------------------------------------------------------------------


def _cut(name: str, size: int) -> str:
    """`name` cut to at most `size` bytes of UTF-8, at a character's end."""
    return name.encode("utf-8", "surrogatepass")[:size].decode("utf-8", "ignore")


def _put_in_place(fs: Any, tmp: str, path: str, size: int,
                  on_leftover: Callable[[BaseException], None] | None = None) -> None:
    """Move the whole file `tmp` to `path`, never into a folder at `path` (fsspec's mv on a disk moves a file into
    the folder it is given): IsADirectoryError there. On a disk os.replace, which is atomic and refuses a folder.
    `on_leftover`: `move_into_place`'s, told the error of an object store's temporary copy that could not be removed."""
    if _local_disk(fs):
        os.replace(tmp, path)
        return
    if has_rename(fs) and with_retries(lambda: fs.isdir(path), f"stat {path}"):
        raise IsADirectoryError(f"{path} is a folder")
    move_into_place(fs, tmp, path, size, f"write {path}", on_leftover=on_leftover)


def _local_disk(fs: Any) -> bool:
    """Whether `fs` is the local disk, written with open() and os.replace: told by its protocol, as a file system
    built on LocalFileSystem for another store (a folder served as sftp://) writes and renames through its own calls."""
    return isinstance(fs, LocalFileSystem) and "file" in protocols(fs)


# Test hook: ZIP_PURIFY_EXPORT_GATE=FOLDER holds each file's write, its temporary file written and not yet renamed, at
# the gate of the job's ZIP_PURIFY_INJECT_FAULT=gate:FOLDER (`stages.wait_at_gate`: FOLDER/batch-N made, then wait
# for FOLDER/pass-N or FOLDER/open), so that a test kills an export with partial files certainly on disk. Unset in
# normal use.
EXPORT_GATE_ENV = "ZIP_PURIFY_EXPORT_GATE"


def _hold_at_gate() -> None:
    folder = os.environ.get(EXPORT_GATE_ENV)
    if folder:
        wait_at_gate(folder)


# The temporary name `write_file` and `Manifest` give a file while it is written: TEMP_PREFIX, a uuid4's 32 hex digits,
# '-', the file's name (cut to fit), '.tmp'. The job writes its part files under names of this shape too
# (`part-00000.parquet`): a leftover is the export's only where the name is one the export writes (`_own_partial`).
# The hex is a uuid4's (its version digit 4, its variant digit 8, 9, a or b): another tool's `.tmp-<a digest>-x.png.tmp`
# is not taken for the export's (one of 64 such names would be, by chance, with any 32 hex digits).
_PARTIAL_WRITE = re.compile(rf"{re.escape(TEMP_PREFIX)}[0-9a-f]{{12}}4[0-9a-f]{{3}}[89ab][0-9a-f]{{15}}-(?P<name>.+)\.tmp",
                            re.S)
_OWN_EXTENSIONS = WRITTEN_EXTENSIONS | set(SIDECAR_EXTENSIONS)
_MANIFEST_NAMES = frozenset(f"{MANIFEST_NAME}.{kind}" for kind in MANIFESTS if kind != "none")


def _own_partial(rel: str) -> bool:
    """Whether the file at `rel` (under DIR) is named as the partial write of a file an export writes: an image or a
    sidecar anywhere (its extension, in any case, or a name cut to fit, which may have lost it), the manifest at the
    top. Another tool's file matches only if it too is named `.tmp-<a uuid4's 32 hex digits>-<such a name>.tmp`."""
    folder, base = posixpath.split(rel)
    match = _PARTIAL_WRITE.fullmatch(base)
    if match is None:
        return False
    name = match["name"]
    if not folder and name in _MANIFEST_NAMES:
        return True
    cut = len(base.encode("utf-8", "surrogatepass")) > NAME_MAX - 4  # `_cut`: at a character's end, up to 3 bytes short
    return cut or posixpath.splitext(name)[1].lower() in _OWN_EXTENSIONS


def partial_writes(fs: Any, root: str, listing: Iterable[str] | None) -> list[str]:
    """The files under `root` (DIR) that an export killed while writing them left (`_own_partial`), by their paths
    under it: on the local disk by a walk of DIR; else among `listing` (`fs.find(root)`), or without one at DIR's top
    alone (an object store writes each image and sidecar in one PUT: only the manifest, streamed, has a temporary
    name there)."""
    prefix = root.rstrip("/") + "/"
    if _local_disk(fs):
        found = []
        for folder, _, files in os.walk(root):
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            found += [name if rel == "." else f"{rel}/{name}" for name in files if name.startswith(TEMP_PREFIX)]
    else:
        if listing is None:
            try:
                listing = with_retries(lambda: fs.ls(root, detail=False), f"list {root}")
            except FileNotFoundError:
                listing = []
            finally:
                fs.invalidate_cache()  # a flat DIR's top is every file: not kept in the listing cache (`_clean_up`)
        found = [p[len(prefix):] for p in listing if p.startswith(prefix)]
    return sorted(rel for rel in found if _own_partial(rel))


def write_file(fs: Any, path: str, data: bytes, resume: bool, listed: DirListing | None = None) -> bool:
    """Write `data` to `path` whole; False (nothing written) when `resume` and a file of those bytes is there (one of
    that size is read back and compared: another export's image, or this output's before a run re-purified it, may
    have the size, as BMP, PPM and TIFF images of one size always do). With `listed` (DIR's listing when the export
    began, off the local disk) the file's size and checksum are the listing's: one it does not hold, or holds at
    another size, is written with no request before; one whose listed MD5 is the bytes' is kept with none; only one
    of that size without such a checksum (a multipart upload's ETag, a store whose listing has none) is read back. On
    a file system with a rename: a hidden temporary name ending in .tmp (no image reader takes a leftover one for an
    image), renamed into place; on an object store one PUT."""
    if resume:
        there = listed.entry(path) if listed is not None else None
        try:
            if listed is None or there is not None and there[0] < 0:  # no listing, or no size in it: asked
                same_size = with_retries(lambda: fs.size(path), f"stat {path}") == len(data)
            else:
                same_size = there is not None and there[0] == len(data)
            if same_size and there is not None and there[1] == hashlib.md5(data, usedforsecurity=False).digest():
                return False
            if same_size and with_retries(lambda: fs.cat_file(path), f"read {path}") == data:
                return False
        except (FileNotFoundError, IsADirectoryError):
            pass
    folder, name = posixpath.split(path)
    make_parent_dirs(fs, folder)
    if not has_rename(fs):
        with_retries(lambda: fs.pipe_file(path, data), f"write {path}")
        return True
    # the file's name in the temporary one (what a leftover is of), cut so that it is no longer than a name can be
    prefix = f"{TEMP_PREFIX}{uuid.uuid4().hex}-"
    tmp = posixpath.join(folder, f"{prefix}{_cut(name, NAME_MAX - len(prefix) - len('.tmp'))}.tmp")
    local = _local_disk(fs)
    try:
        if local:
            with open(tmp, "wb") as f:
                f.write(data)
        else:
            with_retries(lambda: fs.pipe_file(tmp, data), f"write {path}")
        _hold_at_gate()
        _put_in_place(fs, tmp, path, len(data))
    except BaseException:
        if local:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        else:
            discard(fs, tmp)
        raise
    return True


# --- the export ---------------------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What `export_images` did. `ok`: every row of data/ is in DIR (written now or already there)."""

    output: str
    to: str
    rows: int = 0  # rows in the readable part files of data/
    written: int = 0
    present: int = 0  # already in DIR with their bytes (existing="resume")
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), the first FAILURES_KEPT
    # failed rows whose path the manifest this export replaced listed: that line is kept (its files are still there)
    failed_listed: int = 0
    # (part file, reason, its rows not exported): damaged, or not given by the storage (the reason starts UNFETCHED)
    damaged: list[tuple[str, str, int]] = field(default_factory=list)
    repeated: int = 0  # rows whose id an earlier row had (an unfinished output's): not exported twice
    renamed: int = 0  # ids given another name than export_path's, as another id had theirs
    escaped: int = 0  # ids with a part that could not be a name in DIR ('..', NUL, CON on Windows), written escaped
    rejects: int = 0  # rows in rejects/: inputs that were not purified, which are not exported
    rejects_unreadable: int = 0  # rejects/ part files whose row count could not be read
    manifest: str | None = None  # its path: `to` as given (relative, a URI), and the manifest's name
    manifest_left_out: list[str] = field(default_factory=list)
    sidecars: bool = False  # sidecar files were asked for
    sidecars_written: int = 0  # sidecar files written now (those already there with their bytes are not counted)
    sidecars_present: int = 0  # sidecar files already there with their bytes (existing="resume")
    sidecars_left_out: list[str] = field(default_factory=list)  # columns of bytes, in no sidecar file
    stale_sidecars_removed: int = 0  # an earlier export's sidecar files of an image that its row has no value for
    partial_writes_removed: int = 0  # temporary files a killed export left (existing="resume" or "overwrite")
    # stale sidecar files the storage would not remove (left, and listed in the manifest beside their image); the
    # first FAILURES_KEPT named: (path under DIR, why)
    stale_sidecars_unremoved: int = 0
    unremoved: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None  # why the export stopped before its last row (the storage kept failing), or None
    manifest_error: str | None = None  # why the manifest could not be written
    # what became of an earlier export's manifest of the name this one failed to write: "removed", or why it was not
    earlier_manifest: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def exported(self) -> int:
        return self.written + self.present

    @property
    def ok(self) -> bool:
        return not (self.failed or self.damaged or self.stale_sidecars_unremoved) and self.manifest_error is None \
            and self.stopped is None


def _count_rows(fs: Any, paths: list[str]) -> tuple[int, int]:
    """(rows in the readable part files of `paths`, by their footers; how many could not be read)."""
    def rows(path: str) -> int | None:
        try:
            def once() -> int:
                with fs.open(path, "rb") as f:
                    return pq.ParquetFile(f).metadata.num_rows
            return with_retries(once, f"read the footer of {path}")
        except Exception as err:  # noqa: BLE001 - a reject file damaged or gone: counted apart
            if is_damage(err) or isinstance(err, FileNotFoundError):
                return None
            raise

    counts = [n for _, n in read_ahead(rows, paths, concurrent_calls(fs, INDEX_READERS))]
    return sum(n for n in counts if n is not None), sum(n is None for n in counts)


def _earlier_manifest_removed(fs: Any, path: str) -> str | None:
    """Remove an earlier export's manifest at `path`, which this export failed to replace: left there, it reads as the
    manifest of DIR as it is now, and lacks (or misnames) the images this export wrote. None where there was none;
    "removed", or why it could not be removed. It is rewritten from data/ with --resume."""
    try:
        if not with_retries(lambda: fs.isfile(path), f"stat {path}"):
            return None
        with_retries(lambda: fs.rm_file(path), f"remove {path}")
    except FileNotFoundError:  # a retried delete whose first attempt had landed
        pass
    except Exception as err:  # noqa: BLE001 - said beside the manifest's own error
        return describe(err)
    return "removed"


def _export_one(fs: Any, root: str, rel: str, png: Any, resume: bool, jpeg_quality: int,
                listed: DirListing | None = None) -> bool:
    if not isinstance(png, bytes) or not png.startswith(PNG_SIGNATURE):
        raise ValueError("the row's image is not PNG bytes" if png else "the row has no image bytes")
    return write_file(fs, posixpath.join(root, rel), encoded(png, rel, jpeg_quality), resume, listed)


def _remove_file(fs: Any, path: str) -> bool:
    """Remove the file `path` where there is one (a folder of that name is left: it is no sidecar); whether one was
    removed. Off the local disk `path` is one a listing found (`listed_sidecars`, `partial_writes`): a folder is not
    listed as a file."""
    try:
        if not _local_disk(fs):
            with_retries(lambda: fs.rm_file(path), f"remove {path}")
        elif os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
        else:
            return False
    except FileNotFoundError:  # gone meanwhile (or a retried delete whose first attempt had landed)
        return False
    return True


class RowFiles(NamedTuple):
    """What `_export_with_sidecars` did for one row."""

    image: bool  # whether the image was written (False: there with its bytes)
    written: int  # sidecar files written
    removed: int  # stale sidecar files removed
    present: int  # sidecar files there with their bytes
    names: list[str]  # the names of the sidecar files beside the image, for the manifest to list
    unremoved: list[tuple[str, str]]  # (path under DIR, why) of the stale sidecar files that could not be removed


class RowFailed(Exception):
    """A row that failed once its files' writing had begun (a sidecar file, or its image after its sidecar files):
    `done` is what was done before (`image` False), counted all the same and, where an earlier export's manifest
    lists the row's path, listed with that line (`Manifest.failed`); `gone`: the names of the stale sidecar files it
    removed. Its message is the row's reason."""

    def __init__(self, reason: str, done: RowFiles, gone: list[str]) -> None:
        super().__init__(reason)
        self.done, self.gone = done, gone


class SidecarFailed(RowFailed):
    """A sidecar file of a row that could not be written: the row fails, its image is not written. Said by the
    sidecar's path under DIR, not by the hidden temporary name the error of its write names."""

    def __init__(self, what: str, cause: BaseException, done: RowFiles, gone: list[str]) -> None:
        # a disk's error by its reason alone: its paths are the temporary file's, the sidecar's said already
        reason = f"{type(cause).__name__}: {cause.strerror}" if isinstance(cause, OSError) and cause.strerror and \
            cause.filename else describe(cause)
        super().__init__(f"{what}, so neither was its image: {reason}", done, gone)


def _export_with_sidecars(fs: Any, root: str, rel: str, png: Any, resume: bool, jpeg_quality: int,
                          row: Mapping[str, Any], plan: NamePlan,
                          writing: SidecarWriting,
                          listed: DirListing | None = None) -> RowFiles:
    """`_export_one` with the image's sidecar files (`sidecar_writes`), written, and the stale removed, before the
    image: an image in DIR has its sidecars beside it, whenever the export stops. SidecarFailed naming a sidecar that
    could not be written, RowFailed for an image that could not be written after them. A stale one the storage would
    not remove (a refused DELETE) is left and the row exported: it is among the names the manifest lists beside the
    image, so that the next export's cleanup knows it for an export's and tries again (not listed, it would read as a
    user's own file and be kept for good)."""
    if not isinstance(png, bytes) or not png.startswith(PNG_SIGNATURE):  # said before any sidecar is written
        raise ValueError("the row's image is not PNG bytes" if png else "the row has no image bytes")
    files, stale = sidecar_writes(row, rel, plan, writing)
    gone, unremoved = [], []
    for name in stale:
        try:
            if _remove_file(fs, posixpath.join(root, name)):
                gone.append(posixpath.basename(name))
        except Exception as err:  # noqa: BLE001 - left, listed, and said in the report
            unremoved.append((name, describe(err)))
    names, written = list(files), 0

    def done(placed: int, image: bool = False) -> RowFiles:
        """What was done when the first `placed` sidecar files are in place."""
        return RowFiles(image, written, len(gone), placed - written,
                        [posixpath.basename(name) for name in [*names[:placed], *(n for n, _ in unremoved)]], unremoved)

    for placed, name in enumerate(names):
        try:
            written += write_file(fs, posixpath.join(root, name), files[name], resume, listed)
        except Exception as err:  # noqa: BLE001 - named as the sidecar it is
            raise SidecarFailed(f"its sidecar file {name} could not be written", err, done(placed), gone) from err
    try:
        image = _export_one(fs, root, rel, png, resume, jpeg_quality, listed)
    except Exception as err:  # noqa: BLE001 - the sidecar files written before are counted, and kept listed
        raise RowFailed(describe(err), done(len(names)), gone) from err
    return done(len(names), image)


def export_images(output: str | os.PathLike[str], to: str | os.PathLike[str], *,
                  storage_options: dict[str, Any] | None = None, image_format: str = "png", jpeg_quality: int = 95,
                  manifest: str = "csv", existing: str = "refuse", force: bool = False, workers: int = 8,
                  progress: Any = None, on_damaged: Callable[[str], None] | None = None,
                  sidecars: bool = False, caption_column: str = CAPTION_COLUMN,
                  label_column: str = LABEL_COLUMN) -> ExportReport:
    """Write the purified images of `output` (a zip-purify output: a path or fsspec URI) as files under `to`.

    See the module's docstring for where each goes and in what format. `manifest`: "csv" (DIR/manifest.csv), "jsonl"
    or "none"; one line per exported image: id, path (relative to `to`), then every column of data/ but the image
    and columns of bytes (with `sidecars`, then `SIDECARS_COLUMN`: the names of its sidecar files). `existing`: what
    to do with a `to` that holds files: "refuse" (ExportError), "overwrite"
    (files of the same names replaced, nothing else touched), "resume" (a file already there with the bytes it would
    be written with is kept; one of that size is read back, unless, off the local disk, DIR's listing gives its MD5:
    `write_file`). `force`: export an output that is not complete (a run stopped, or one writing it now). `workers`:
    files written at once. `progress`: a callable(total) -> bar with update(n) and close() (see
    `pipeline.progress.progress_bar`), or None. `on_damaged(line)`: said of each part file that cannot be read, as it
    is found. `sidecars`: each image's sidecar files beside it (`sidecar_bytes`), the .txt from `caption_column`
    (default `txt`), the .cls from `label_column` (default `label`). Raises ExportError before writing anything when
    the export cannot start; a row that cannot be written, or a damaged part file, is counted in the report (`ok` is
    then False) and the rest are exported, but for a store that stays down or refuses every write: after `OUTAGE_ROWS`
    rows in a row failed through every retry or were refused (no permission, read-only, full) the export stops
    (`report.stopped`), and existing="resume" continues it. A failed row's path keeps the line an earlier export's
    manifest there has for it (`report.failed_listed`), as that export's files are still there."""
    return run_export(API_NAMES, output, to, storage_options=storage_options, image_format=image_format,
                      jpeg_quality=jpeg_quality, manifest=manifest, existing=existing, force=force, workers=workers,
                      progress=progress, on_damaged=on_damaged, sidecars=sidecars, caption_column=caption_column,
                      label_column=label_column)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_arguments(names: ArgNames, *, output: Any, to: Any, storage_options: Any, image_format: Any,
                     jpeg_quality: Any, manifest: Any, existing: Any, force: Any, workers: Any, progress: Any,
                     on_damaged: Any, sidecars: Any = False, caption_column: Any = CAPTION_COLUMN,
                     label_column: Any = LABEL_COLUMN) -> None:
    """Refuse, naming the argument, a value of the wrong type or out of range, before anything is read or written:
    a `force="no"` exported an unfinished output as if True, `workers="8"` raised a bare TypeError, and a
    `progress` or `on_damaged` that is no callable failed only once the export had begun writing."""
    for name, value in (("output", output), ("to", to)):
        if not isinstance(value, str | os.PathLike):
            raise ExportError(f"{names.named(name)} must be a path or URI (a str or pathlib.Path), got {value!r}")
        if not os.fspath(value):  # `--to "$DIR"` with the variable unset
            raise ExportError(f"{names.named(name)} is empty; give a path or URI")
    if image_format not in IMAGE_FORMATS:
        raise ExportError(f"{names.named('image_format')} must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if manifest not in MANIFESTS:
        raise ExportError(f"{names.named('manifest')} must be one of {', '.join(MANIFESTS)}, got {manifest!r}")
    if existing not in EXISTING:  # check_destination's ValueError was not the ExportError the API promises
        raise ExportError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    if not (_is_whole(jpeg_quality) and 1 <= jpeg_quality <= 100):
        raise ExportError(f"{names.named('jpeg_quality')} must be a whole number from 1 to 100, got {jpeg_quality!r}")
    if not (_is_whole(workers) and workers >= 1):
        raise ExportError(f"{names.named('workers')} must be a whole number of at least 1, got {workers!r}")
    for name, value in (("force", force), ("sidecars", sidecars)):
        if not isinstance(value, bool):
            raise ExportError(f"{names.named(name)} must be True or False, got {value!r}")
    if not isinstance(caption_column, str) or not caption_column:
        raise ExportError(f"{names.named('caption_column')} must be a column's name, got {caption_column!r}")
    if caption_column != CAPTION_COLUMN and not sidecars:
        raise ExportError(f"{names.named('caption_column')} names the column of each image's .txt sidecar file: it "
                          f"needs {names.passing('sidecars')}")
    if not isinstance(label_column, str) or not label_column:
        raise ExportError(f"{names.named('label_column')} must be a column's name, got {label_column!r}")
    if label_column != LABEL_COLUMN and not sidecars:
        raise ExportError(f"{names.named('label_column')} names the column of each image's .cls sidecar file: it "
                          f"needs {names.passing('sidecars')}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise ExportError(f"storage_options must be a mapping of fsspec options (or None), got "
                          f"{type(storage_options).__name__}")
    for name, value, what in (("progress", progress, "a callable(total) returning a bar with update(n) and close()"),
                              ("on_damaged", on_damaged, "a callable(line)")):
        if value is not None and not callable(value):
            raise ExportError(f"{name} must be {what}, or None, got {value!r}")


def run_export(names: ArgNames, output: str | os.PathLike[str], to: str | os.PathLike[str], *,
               storage_options: dict[str, Any] | None, image_format: str, jpeg_quality: int, manifest: str,
               existing: str, force: bool, workers: int, progress: Any,
               on_damaged: Callable[[str], None] | None, sidecars: bool = False,
               caption_column: str = CAPTION_COLUMN, label_column: str = LABEL_COLUMN) -> ExportReport:
    """`export_images`, its errors and warnings naming what the caller gave as `names` says: API_NAMES
    (export_images's keyword arguments) or CLI_NAMES (zip-purify-export's flags)."""
    _check_arguments(names, output=output, to=to, storage_options=storage_options, image_format=image_format,
                     jpeg_quality=jpeg_quality, manifest=manifest, existing=existing, force=force, workers=workers,
                     progress=progress, on_damaged=on_damaged, sidecars=sidecars, caption_column=caption_column,
                     label_column=label_column)
    # numpy's integers as Python's: Pillow refuses quality=np.int64(90) ("Invalid quality setting"), for every JPEG
    jpeg_quality, workers = int(jpeg_quality), int(workers)
    output, to = os.fspath(output).rstrip("/") or "/", os.fspath(to).rstrip("/") or "/"
    so, problems = with_url_options({names.named("output"): output, names.named("to"): to}, dict(storage_options or {}))
    if problems:
        raise ExportError(problems[0])
    # what the storage raises that is no OSError (botocore's NoCredentialsError) is an export that cannot start
    try:
        state, warning = check_output(output, so, force, names)
    except Exception as err:  # noqa: BLE001 - named, with its cause kept (the command line's credentials advice)
        if access_denied(err):
            raise _refused(err, output, so, names.named("output"), "lists its part files and reads its records") from err
        if isinstance(err, JobError | OSError):
            raise
        raise ExportError(f"{names.named('output')} {output} cannot be read: {describe(err)}") from err
    try:
        check_destination(to, output, so, existing, names)
    except Exception as err:  # noqa: BLE001
        if access_denied(err):
            raise _refused(err, to, so, names.named("to"), "looks at what it holds before it writes there") from err
        if isinstance(err, JobError | OSError):
            raise
        raise ExportError(f"{names.named('to')} {to} cannot be read: {describe(err)}") from err
    report = ExportReport(output, to, warnings=[warning] if warning else [])
    in_fs, _ = storage_path(output, so)
    out_fs, root = storage_path(to, so)

    damaged: list[DamagedPart] = []
    plan, parts = plan_names(in_fs, list_parts(output, DATA_DIR, so), image_format, damaged, sidecars)
    if manifest != "none" and plan.is_folder(f"{MANIFEST_NAME}.{manifest}"):
        other = "jsonl" if manifest == "csv" else "csv"
        raise ExportError(f"the images of some ids lie in a folder named {MANIFEST_NAME}.{manifest}/ (or that but for "
                          f"case), where DIR/{MANIFEST_NAME}.{manifest} would be written: give "
                          f"{names.passing('manifest', other)} or {names.passing('manifest', 'none')}")
    if sidecars and manifest != "none" and stem_taken(in_fs, plan, parts, MANIFEST_NAME):
        raise ExportError(f"with {names.named('sidecars')}, an image is exported as {MANIFEST_NAME}.<its extension> at "
                          f"the top of {names.named('to')}, and the job, reading it back, would take DIR/{MANIFEST_NAME}."
                          f"{manifest} for that image's sidecar (a column {manifest} holding the whole manifest): give "
                          f"{names.passing('manifest', 'none')}")
    report.damaged = [(d.path, d.reason, -1) for d in damaged]  # rows unknown: the footer could not be read
    for d in damaged:
        if on_damaged is not None:
            on_damaged(f"{d.path}: cannot be read ({d.reason}); its rows are not exported")
    report.rows, report.escaped, report.renamed = sum(p.rows for p in parts), plan.escaped, len(plan.moved)
    report.rejects, report.rejects_unreadable = _count_rows(in_fs, list_parts(output, REJECTS_DIR, so))
    columns, report.manifest_left_out = manifest_columns(p.schema for p in parts)
    if manifest == "none":
        report.manifest_left_out = []
    writing = None
    if sidecars:
        # not `names`: that is how errors name the caller's arguments, used below (a --to that cannot be made)
        sidecar_from, report.sidecars_left_out = sidecar_columns(p.schema for p in parts)
        reading = (read_json(f"{output}/{JOB_FILE}", so) or {}).get("reading")
        partitioned = isinstance(reading, dict) and reading.get("partitioning") == "hive"
        for hint in (check_caption_column([p.schema for p in parts], caption_column, names),
                     check_label_column([p.schema for p in parts], label_column, caption_column, names)):
            if hint:
                report.warnings.append(hint)
        clean = existing != "refuse"
        writing = SidecarWriting(sidecar_from, partitioned, clean, null_columns(p.schema for p in parts),
                                 caption=caption_column, label=label_column,
                                 earlier=earlier_sidecars(out_fs, root) if clean else np.empty(0, dtype=np.uint64))
        report.sidecars = True
    carried = None
    if not sidecars and existing != "refuse" and manifest != "none":
        # an earlier --sidecars export's files stay (this export writes none, removes none): still listed
        carried = earlier_sidecars(out_fs, root)
        carried = carried if len(carried) else None
    listed = None
    if existing != "refuse":  # DIR may hold an earlier export's files: before this export writes its own
        writing, listed = _clean_up(out_fs, root, to, names, writing, report, existing == "resume")
    try:  # before any image: a --to under a file, or one the export may not write in, stops it naming --to
        make_parent_dirs(out_fs, root)
        writer = None if manifest == "none" else Manifest(out_fs, root, manifest, columns, sidecars, carried,
                                                          replaces=existing != "refuse")
    except OSError as err:
        raise ExportError(f"{names.given('to', to)} cannot be made or written: {describe(err)}; give a folder the "
                          "export can write in (it is made when missing)") from err
    bar = progress(report.rows) if progress is not None else None
    seen_repeated: set[str] = set()
    # one file at a time, in this thread, where --to's file system holds one connection that threads may not share
    at_once = concurrent_calls(out_fs, workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="export") if at_once > 1 else _InThisThread()
    watch = _OutageWatch(max(OUTAGE_ROWS, 4 * at_once))
    try:
        try:
            for part in parts:
                problem = _export_part(in_fs, out_fs, root, part, plan, writer, pool, report, existing == "resume",
                                       jpeg_quality, seen_repeated, bar, writing, listed, watch)
                if problem is not None:
                    report.damaged.append(problem)
                    if on_damaged is not None:
                        on_damaged(f"{problem[0]}: {problem[1]}; {problem[2]:,} of its rows not exported")
        except _StorageDown as down:
            # as a Ctrl-C: the writes under way end (each whole), the others are dropped, and no manifest is written
            # (an earlier export's in DIR stays, with the stale sidecars it lists): a resume finishes the export
            pool.shutdown(cancel_futures=True)
            resume = names.passing('existing', 'resume')
            if down.refused:  # going on would fail every row alike, at once: one request and one error line each
                report.stopped = (f"the export stopped: the last {down.rows:,} rows in a row could not be written, as "
                                  f"{to} refused them ({down.reason}); nothing was lost (every file written is whole, "
                                  "any earlier export's manifest there is kept): export again "
                                  f"with {resume} once it accepts writes (credentials that may write there, a store or "
                                  "disk that is not read-only, room) to continue where it stopped")
            else:
                report.stopped = (f"the export stopped: the last {down.rows:,} rows in a row could not be written, as "
                                  f"the storage kept failing ({down.reason}); every file written is whole: export "
                                  f"again with {resume} to continue where it stopped (the files there are kept, the "
                                  "manifest is written at the end)")
            if writer is not None:
                writer.abandon()
                writer = None
        pool.shutdown()
        if writer is not None:
            try:
                left = writer.finish()
                report.failed_listed = writer.kept
                # named under DIR as given, as the last line names DIR: a relative --to gives a relative path
                report.manifest = _under(to, posixpath.basename(writer.path))
                if left is not None:  # said as the export's other warnings are, not as Python's RuntimeWarning
                    report.warnings.append(f"warning: the manifest is in place, but its temporary copy "
                                           f"{_under(to, posixpath.basename(writer.tmp))} could not be removed ({left}): "
                                           "readers skip its hidden name, and an export with "
                                           f"{names.passing('existing', 'resume')} or "
                                           f"{names.passing('existing', 'overwrite')} removes it")
            except Exception as err:  # noqa: BLE001 - the images are in place: the manifest's failure is said
                writer.abandon()
                report.manifest_error = describe(err)
                report.earlier_manifest = _earlier_manifest_removed(out_fs, writer.path)
                writer = None
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    finally:
        pool.shutdown(cancel_futures=True)  # a Ctrl-C: the writes under way end (each whole), the others are dropped
        if bar is not None:
            bar.close()
    try:
        changed = output_state(output, so).changed_since(state)
    except Exception as err:  # noqa: BLE001 - the export is done; whether a run began meanwhile is not known
        changed = f"its records could not be read again: {describe(err)}"
    if changed:
        report.warnings.append(f"warning: output {output} changed during the export ({changed}): export again with "
                               f"{names.passing('existing', 'resume')} once its run is complete")
    return report


def _clean_up(fs: Any, root: str, to: str, names: ArgNames, writing: SidecarWriting | None,
              report: ExportReport, resume: bool = False) -> tuple[SidecarWriting | None, DirListing | None]:
    """Remove the partial files an export killed outright (SIGKILL, a machine lost) left in DIR (`partial_writes`),
    counted in `report`; returns `writing` with, off the local disk, the sidecar-named files DIR holds
    (`listed_sidecars`): one listing of DIR (a request per 1,000 files on an object store) rather than a DELETE of each
    name an image's stale sidecar could have, up to 6 an image; and, with `resume` off the local disk, the files DIR
    holds with their sizes and checksums (`DirListing`, from the same listing), rather than a HEAD and a read back of
    each. ExportError when DIR cannot be listed."""
    listing = None
    detailed: dict[str, Any] = {}
    if not _local_disk(fs) and (writing is not None or has_rename(fs) or resume):
        try:
            if resume:
                detailed = with_retries(lambda: fs.find(root, detail=True), f"list {to}")
                listing = list(detailed)
            else:
                listing = with_retries(lambda: fs.find(root), f"list {to}")
        except FileNotFoundError:  # a DIR not made yet
            listing = []
        except Exception as err:  # noqa: BLE001 - nothing is written yet
            raise ExportError(f"{names.given('to', to)} cannot be listed: {describe(err)}; the export lists it once "
                              "to find the partial files and stale sidecar files of an earlier export") from err
        finally:
            # s3fs and gcsfs keep every file's listing entry (its details, near 1 KB each) in their listing cache for
            # the file system's life: a gigabyte held through an export into a DIR of a million files
            fs.invalidate_cache()
    if writing is not None and listing is not None:
        writing = dataclasses.replace(writing, listed=listed_sidecars(listing, root))
    listed = DirListing.of(detailed, root) if resume and listing is not None else None
    del detailed  # each entry's details, near 1 KB a file: 32 bytes of each are kept
    for rel in partial_writes(fs, root, listing):
        try:
            report.partial_writes_removed += _remove_file(fs, posixpath.join(root, rel))
        except Exception as err:  # noqa: BLE001 - it is hidden, and harms no reader: said, the export goes on
            report.warnings.append(f"warning: the partial file {_under(to, rel)} an earlier export left could not be "
                                   f"removed: {describe(err)}")
    return writing, listed


def _under(to: str, name: str) -> str:
    """The file `name` in the folder `to`, spelt as `to` was given (relative, a URI with its host and user)."""
    return f"{to}{'' if to.endswith('/') else '/'}{name}"


# The export stops when this many rows in a row failed as the storage kept failing or refused them (`_OutageWatch`),
# and at least four rounds of its writes at once (`--workers`): each such row's write was retried for 10 to 15 s
# (`with_retries`) before it failed, so going on row after row against a store that is down took days for 100,000 rows
# to fail each; a store that refuses every write (a read-only bucket) failed each at once, but still made 100,000
# requests and error lines. A brief outage fails a round or two of rows (one per worker), and a refusal of a few paths
# (a read-only folder of the user's in DIR) the rows there: those are counted and named as any failed row, and the
# export goes on; 32 rows in a row is a store down for a minute or more (8 workers: four rounds of 10 to 15 s), or one
# that refuses writes.
OUTAGE_ROWS = 32
# The errors of a disk that refuse every write alike for as long as it is so: no permission (EACCES, EPERM), a file
# system mounted read-only (EROFS), a full disk or a spent quota (ENOSPC, EDQUOT). A store's refusal (S3's 403
# AccessDenied, which s3fs raises as PermissionError; gcsfs's Forbidden; Azure's 403) is `access_denied`'s.
_REFUSAL_ERRNOS = frozenset(getattr(errno, name) for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT")
                            if hasattr(errno, name))


class _StorageDown(Exception):
    """The export stops: `rows` rows in a row failed as the storage did; `reason`: the last one's error; `refused`:
    whether the storage refused it (a permission, a read-only store, no room) rather than kept failing."""

    def __init__(self, rows: int, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.rows, self.reason, self.refused = rows, reason, refused


def _storage_failure(err: BaseException) -> str | None:
    """How a row's error says the storage failed it, whatever the row: "outage" (a transient error through every retry,
    `RetriesExhausted`: a store down, throttling without end), "refused" (a refusal, not retried: `access_denied`, or a
    disk's `_REFUSAL_ERRNOS`), or None (the row's own: bytes that are not PNG, a folder in its place). Looked for in
    `err` and what it was raised from (a failed row's `RowFailed`, raised from the storage's error)."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, RetriesExhausted):
            return "outage"
        if access_denied(cause) or isinstance(cause, OSError) and cause.errno in _REFUSAL_ERRNOS:
            return "refused"
        cause = cause.__cause__
    return None


@dataclass
class _OutageWatch:
    """Counts the rows in a row (in the rows' order) whose write failed as the storage did (`_storage_failure`): kept
    failing through every retry, or refused it. A row written, or already there, shows the storage answering and
    accepting writes and starts the count again (where it refuses some paths alone, a read-only folder in DIR, those
    rows fail and the others are written); a row failed for its own sake (bytes that are not PNG) says nothing of it."""

    limit: int
    failing: int = 0

    def row_done(self, err: BaseException | None, reason: str = "") -> None:
        """Note a row's end (`err`: why it failed, None if it did not); `_StorageDown` at the `limit`-th in a row."""
        if err is None:
            self.failing = 0
            return
        failure = _storage_failure(err)
        if failure is None:
            return
        self.failing += 1
        if self.failing >= self.limit:
            raise _StorageDown(self.failing, reason, refused=failure == "refused")


# The reason given for a part file the storage would not give (after retries): its bytes may be intact, so it is not
# called damaged, and a later --resume exports its rows once the storage answers.
UNFETCHED = "could not be fetched from the storage"


def _export_part(in_fs: Any, out_fs: Any, root: str, part: _Part, plan: NamePlan, writer: Manifest | None,
                 pool: Executor, report: ExportReport, resume: bool, jpeg_quality: int,
                 seen_repeated: set[str], bar: Any, writing: SidecarWriting | None = None,
                 listed: DirListing | None = None, watch: _OutageWatch | None = None) -> tuple[str, str, int] | None:
    """Export one part file's rows, a batch at a time; (part, reason, rows not exported) when it cannot be read
    to its end (the rows before are exported). `listed`: DIR's files when a resume began (`write_file`). `watch`:
    `_StorageDown` from it is raised, the export stops."""
    done = 0
    try:
        data = with_retries(lambda: in_fs.cat_file(part.path), f"read {part.path}")
    except Exception as err:  # noqa: BLE001 - the storage kept failing (retried): named, the others go on
        if bar is not None:
            bar.update(part.rows)
        return part.path, f"{UNFETCHED} ({describe(err)})", part.rows
    try:
        # from the bytes, without pre_buffer: read on this thread, not on an Arrow pool's (changes.read_parquet_bytes)
        part_file = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False)
        batches = part_file.iter_batches(batch_size=BATCH_ROWS, use_threads=False)
        while True:
            try:
                rows = python_rows(next(batches), extension_storage=False)  # a tensor as its arrays (`plain`)
            except StopIteration:
                return None
            _export_rows(rows, out_fs, root, plan, writer, pool, report, resume, jpeg_quality, seen_repeated, writing,
                         listed, watch)
            done += len(rows)
            if bar is not None:
                bar.update(len(rows))
    except _StorageDown:
        raise
    except Exception as err:  # noqa: BLE001 - its bytes (in memory) cannot be read to the end: named, the others go on
        if bar is not None:
            bar.update(part.rows - done)
        return part.path, f"cannot be read to its end ({describe(err)})", part.rows - done


class _InThisThread(Executor):
    """An executor that runs each call at once, in the caller's thread (its future is done when submit returns)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to whoever reads the future, as a pool's would be
            future.set_exception(err)
        return future


def _export_rows(rows: list[dict[str, Any]], out_fs: Any, root: str, plan: NamePlan, writer: Manifest | None,
                 pool: Executor, report: ExportReport, resume: bool, jpeg_quality: int,
                 seen_repeated: set[str], writing: SidecarWriting | None = None,
                 listed: DirListing | None = None, watch: _OutageWatch | None = None) -> None:
    """Write a batch of rows' files (with `writing`, their sidecar files too), `pool`'s workers at once; count each,
    and add those in place to the manifest, in the rows' order, each as soon as it and those before it are done (so
    that `watch` stops an export into a store that is down at once, not a batch later)."""
    jobs: deque[tuple[dict[str, Any], str, Future[Any]]] = deque()
    for row in rows:
        id_ = row["id"]
        if id_ in plan.repeated:
            if id_ in seen_repeated:
                report.repeated += 1
                continue
            seen_repeated.add(id_)
        rel = plan.path(id_, row.get("original_format"))
        image = row.get("image")
        png = image.get("bytes") if isinstance(image, dict) else image
        if writing is None:
            jobs.append((row, rel, pool.submit(_export_one, out_fs, root, rel, png, resume, jpeg_quality, listed)))
        else:
            jobs.append((row, rel, pool.submit(_export_with_sidecars, out_fs, root, rel, png, resume, jpeg_quality,
                                               row, plan, writing, listed)))
        while jobs and jobs[0][2].done():
            _count_row(*jobs.popleft(), report, writer, watch)
    while jobs:
        _count_row(*jobs.popleft(), report, writer, watch)


def _count_row(row: dict[str, Any], rel: str, future: Future[Any], report: ExportReport, writer: Manifest | None,
               watch: _OutageWatch | None) -> None:
    """Count the row whose files `future` wrote (`_export_one`'s, or `_export_with_sidecars`' RowFiles) in `report`,
    and add it to the manifest; a failed row is counted and named (with what it did before it failed: `RowFailed`),
    told to the manifest (`Manifest.failed`) and to `watch`."""
    try:
        outcome = future.result()
    except Exception as err:  # noqa: BLE001 - one row's failure: counted, named, the rest go on
        report.failed += 1
        if isinstance(err, RowFailed):
            _count_files(report, err.done)
        reason = str(err) if isinstance(err, RowFailed) else describe(err)
        if len(report.failures) < FAILURES_KEPT:
            report.failures.append((row["id"], reason))
        if writer is not None:
            writer.failed(rel, *((err.done.names, err.gone) if isinstance(err, RowFailed) else ((), ())))
        if watch is not None:
            watch.row_done(err, reason)
        return
    if watch is not None:
        watch.row_done(None)
    names: list[str] = []
    if isinstance(outcome, RowFiles):
        _count_files(report, outcome)
        names, outcome = outcome.names, outcome.image
    report.written += outcome
    report.present += not outcome
    if writer is not None:
        writer.add(row, rel, names)


def _count_files(report: ExportReport, files: RowFiles) -> None:
    """Count a row's sidecar files (written, there, removed, that could not be removed) in `report`."""
    report.sidecars_written += files.written
    report.sidecars_present += files.present
    report.stale_sidecars_removed += files.removed
    report.stale_sidecars_unremoved += len(files.unremoved)
    report.unremoved += files.unremoved[:FAILURES_KEPT - len(report.unremoved)]


def report_lines(report: ExportReport) -> list[str]:
    """What the command line says at the end: warnings, failed rows and damaged part files, then the counts."""
    lines = list(report.warnings)
    for id_, reason in report.failures:
        lines.append(f"failed: {terminal_text(id_)}: {terminal_text(reason)}")
    if report.failed > len(report.failures):
        more = report.failed - len(report.failures)
        lines.append(f"failed: ... and {more:,} more row{'' if more == 1 else 's'}")
    if report.failed_listed:
        n = report.failed_listed
        lines.append(f"note: {n:,} failed row{'' if n == 1 else 's'} left an earlier export's files at "
                     f"{'its path' if n == 1 else 'their paths'}: the manifest keeps that export's line for "
                     f"{'it' if n == 1 else 'them'} (with the sidecar files there now), so that a later --resume or "
                     "--overwrite knows them")
    for path, reason in report.unremoved:
        lines.append(f"warning: the stale sidecar file {terminal_text(_under(report.to, path))} (its row has no value for "
                     f"it) could not be removed: {terminal_text(reason)}; the manifest lists it beside its image, so "
                     "that a later --resume or --overwrite tries again")
    if report.stale_sidecars_unremoved > len(report.unremoved):
        more = report.stale_sidecars_unremoved - len(report.unremoved)
        lines.append(f"warning: ... and {more:,} more stale sidecar file{'' if more == 1 else 's'} not removed")
    for path, reason, lost in report.damaged:
        rows = "its rows" if lost < 0 else _rows(lost)
        what = "unfetched part file" if reason.startswith(UNFETCHED) else "damaged part file"
        lines.append(f"{what}: {terminal_text(path)}: {terminal_text(reason)} ({rows} not exported)")
    if report.stopped:
        lines.append(f"error: {terminal_text(report.stopped)}")
    if report.manifest_error:
        lines.append(f"error: the manifest could not be written ({terminal_text(report.manifest_error)}); the images "
                     "are in place: run again with --resume to write it")
        if report.earlier_manifest == "removed":
            lines.append("note: the earlier export's manifest of that name was removed: it did not list this export's "
                         "images")
        elif report.earlier_manifest:
            lines.append(f"warning: an earlier export's manifest of that name is still in {terminal_text(report.to)} and "
                         f"could not be removed ({terminal_text(report.earlier_manifest)}): it does not list this "
                         "export's images")
    if report.manifest_left_out:
        lines.append(f"note: column(s) {', '.join(map(terminal_text, report.manifest_left_out))} hold bytes (an image "
                     "or mask copied unpurified from the input) and are not in the manifest; read them from data/")
    if report.sidecars_left_out:
        lines.append(f"note: column(s) {', '.join(map(terminal_text, report.sidecars_left_out))} hold bytes and are in no "
                     "sidecar file; read them from data/")
    if report.renamed:
        lines.append(f"note: {report.renamed:,} image(s) were given another name, as another id's name was the same "
                     "(but for case or Unicode normalization) or a folder's; the manifest says where each id went")
    if report.escaped:
        lines.append(f"note: {report.escaped:,} id(s) held a part that cannot be a file name inside the folder, here or "
                     "on Windows, and were written escaped ('..' as %2E%2E, '.' as %2E, NUL as %00, '\\' as %5C, "
                     "':' and <>\"|?* as %XX, CON.png as %43ON.png, a last dot or space as %2E or %20, an empty part or "
                     "leading '/' left out, a name over 255 bytes shortened); the manifest says where each id went")
    if report.partial_writes_removed:
        n = report.partial_writes_removed
        lines.append(f"note: removed {n:,} partial file{'' if n == 1 else 's'} (.tmp-*.tmp) that an export stopped "
                     f"outright (killed, its machine lost) left in {terminal_text(report.to)}")
    if report.repeated:
        lines.append(f"note: {report.repeated:,} row(s) repeat an id of an earlier row (an unfinished output): "
                     "exported once")
    counts = f"{report.written:,} written" + (f", {report.present:,} already there" if report.present else "")
    if report.sidecars:
        counts += f", {report.sidecars_written:,} sidecar file{'' if report.sidecars_written == 1 else 's'} written"
        if report.sidecars_present:
            n = report.sidecars_present  # named as sidecars: "2 already there" alone reads as images
            counts += f", {n:,} sidecar file{'' if n == 1 else 's'} already there"
        if report.stale_sidecars_removed:
            n = report.stale_sidecars_removed
            counts += f", {n:,} stale sidecar file{'' if n == 1 else 's'} of an earlier export removed"
        if report.stale_sidecars_unremoved:
            n = report.stale_sidecars_unremoved
            counts += f", {n:,} stale sidecar file{'' if n == 1 else 's'} that could not be removed"
    if report.failed:
        counts += f", {report.failed:,} failed"
    damaged = [d for d in report.damaged if not d[1].startswith(UNFETCHED)]
    unfetched = [d for d in report.damaged if d[1].startswith(UNFETCHED)]
    lost = sum(n for _, _, n in damaged if n > 0)
    unknown = sum(n < 0 for _, _, n in damaged)
    if damaged:
        counts += f"; {len(damaged):,} damaged part file(s) ({_rows(lost)}" + \
                  (f" and the rows of {unknown:,} file(s) whose footer is unreadable" if unknown else "") + " not exported)"
    if unfetched:
        counts += (f"; {_rows(sum(n for _, _, n in unfetched))} not exported from {len(unfetched):,} part file(s) the "
                   "storage did not give: run again with --resume once it does")
    rejects = (f"{report.rejects:,} rejected input(s) are not exported: their ids and reasons are in "
               f"{report.output}/{REJECTS_DIR}/" if report.rejects else "the output holds no rejects")
    if report.rejects_unreadable:
        rejects += f" ({report.rejects_unreadable:,} rejects part file(s) could not be read)"
    where = f"; manifest {report.manifest}" if report.manifest else ""
    images = report.rows - report.repeated  # an id's repeated row is not another image
    lines.append(f"exported {report.exported:,} of {images:,} image{'' if images == 1 else 's'} to {report.to} ({counts})"
                 f"{where}; {rejects}")
    return lines


def _rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"
