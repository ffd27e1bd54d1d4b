"""The reader of zip archives: one record per file in the archive, as if its files lay in a folder named after it,
read a member at a time through the central directory at the archive's end; links followed inside the archive,
names flagged UTF-8 that are not still read, members that would give one path refused together; with --join-metadata,
its image-folder metadata members joined to its other members (`folder_metadata`)."""

from __future__ import annotations

import contextlib
import functools
import posixpath
import stat
import struct
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from pipeline.sources.file_bytes import file_opener, too_large
from pipeline.sources.folder_metadata import (
    ArchiveMetadata,
    FolderMetadata,
    MetadataProblem,
    is_folder_metadata,
    join_folder_metadata,
    table_note,
    with_row,
)
from pipeline.sources.hidden import is_hidden
from pipeline.sources.ids import relative_id, text_name
from pipeline.sources.listing import is_container_name
from pipeline.sources.records import (
    LastingProblem,
    container_reject,
    image_record,
    is_lasting,
    refusal_said,
    reject_record,
)
from pipeline.sources.sidecar_files import orphan_note, pair_sidecars, sidecar_meta
from pipeline.sources.units import ReadUnit
from pipeline.sources.webdataset_keys import JsonColumns, with_own_columns
from pipeline.storage import concurrent_reads, describe, with_retries


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


def _zip_link_target(archive: zipfile.ZipFile, directory: _ZipDirectory, name: str) -> zipfile.ZipInfo | str:
    """The member a symbolic link member `name` stands for (through links to links), as a tar shard's links are read,
    or why it cannot be read: a link's bytes are a path, which read as an image gave 'not a recognised image format'."""
    chain, first = [name], None
    while _zip_is_link(info := directory.info(chain[-1])):
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
        elif target in directory.look_alikes:
            reason = f"its target {target} is stored under more than one name"
        elif target not in directory.files:
            reason = f"its target {target} is not a file in the archive"
        elif target in chain:
            reason = "the links loop: " + " -> ".join([*chain, target])
        else:
            chain.append(target)
            continue
        return f"zip link {name} -> {first} cannot be read: {reason}"
    return info


class _UTF8FlagCleared:
    """A zip file as read, less the UTF-8 name flag (bit 11 of a local header's flags) at the offsets in `at` (each the
    flags' high byte): zipfile then reads those names as cp437, one character per byte, instead of failing on them."""

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


# The most a zip archive's central directory may hold, in bytes and in entries. zipfile made a ZipInfo of every entry
# and kept them all while the archive was read: about 1 KB a member (200,000 members: 195 MB; ImageNet's 1.28 M: about
# 1.3 GB), and ten times a hostile directory's own size (2 M entries of 47 bytes, a 90 MB file: 880 MB), with no bound.
# Now the directory's bytes are kept, with each file's path and where its entry lies (1.28 M members: 600 MB against
# 1,184 MB, the 185 MB archive itself included; the hostile 2 M entries: 180 MB against 990 MB; bench/
# zip_directory_bench.py), and a directory over either limit makes the archive one reject naming the limit, unread, its
# entries only counted: what one archive's directory costs is bounded (about 1 GB at the limits).
# ImageNet's training set in one archive (1.28 M members, a directory of about 110 MB) fits.
MAX_ZIP_DIRECTORY_BYTES = 256 * 2**20
MAX_ZIP_MEMBERS = 3_000_000


class ZipDirectoryTooLarge(ValueError):
    """A zip archive whose central directory is over MAX_ZIP_DIRECTORY_BYTES or holds over MAX_ZIP_MEMBERS entries."""


class _Unindexed(zipfile.ZipFile):
    """A zip file opened for reading without zipfile's index of its members (a ZipInfo each, all kept): members are read
    by the ZipInfo `_ZipDirectory.info` makes of one entry at a time."""

    def _RealGetContents(self) -> None:  # noqa: N802 - zipfile's name
        pass


class NotAZip(zipfile.BadZipFile, LastingProblem):
    """A file named as a zip archive with no end of a zip's central directory: not a zip, as it stays while it is
    unchanged. A damaged directory is not this: it is read again."""


class EncryptedZipDirectory(zipfile.BadZipFile, LastingProblem):
    """A zip archive whose central directory is encrypted: no member can be named without its password, as it stays
    while it is unchanged. (An encrypted member under a plain directory is that member's reject, the others read.)"""


class _ZipDirectory:
    """A zip archive's central directory, walked as zipfile walks it (with its own constants and ZipInfo, so names,
    sizes and errors are zipfile's), keeping only its bytes and, for each file, where its entry lies: `files` (path ->
    entry offset, a later entry of a path in place of an earlier one, in zipfile's order) and `look_alikes` (the paths
    that different stored names give, with those names). A name flagged UTF-8 that is not (an old tool's latin-1
    name; zipfile failed on the whole archive) is read as UTF-8 with its bad bytes kept (surrogateescape, as Python
    reads a tar's or a disk's names), which `text_name` writes as \\xNN in its id: an id with a '\\', which no other
    member's can hold ('\\' is read as '/'); its local header is read with the flag cleared (`_UTF8FlagCleared`)."""

    def __init__(self, raw: BinaryIO, view: _UTF8FlagCleared) -> None:
        self.view = view
        end = zipfile._EndRecData(raw)  # type: ignore[attr-defined]
        if not end:
            raise NotAZip("not a zip file: no end of a zip's central directory in its last 64 KiB")
        size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
        self.concat = end[zipfile._ECD_LOCATION] - size - offset  # type: ignore[attr-defined]
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            self.concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        if offset + self.concat < 0:
            raise zipfile.BadZipFile("Bad offset for central directory")
        if size > MAX_ZIP_DIRECTORY_BYTES:
            raise ZipDirectoryTooLarge(
                f"its central directory (the list of its members) is {size:,} bytes, over the "
                f"{MAX_ZIP_DIRECTORY_BYTES:,} bytes ({MAX_ZIP_DIRECTORY_BYTES / 2**20:g} MiB) the job reads of one, so "
                "none of it was read: split it into smaller archives")
        raw.seek(offset + self.concat)
        self.data = raw.read(size)
        self.files: dict[str, int] = {}
        self.look_alikes: dict[str, list[str]] = {}
        self.not_utf8: set[int] = set()  # entries whose name is flagged UTF-8 but is not
        if size and not self.data.startswith(zipfile.stringCentralDir):  # type: ignore[attr-defined]
            self._refuse_encrypted_directory(raw)
        self._refuse_too_many_entries()
        at, fixed = 0, zipfile.sizeCentralDir  # type: ignore[attr-defined]
        while at < size:
            info = self._info(at)  # zipfile's checks and errors, entry by entry; the ZipInfo is not kept
            fields = struct.unpack_from(zipfile.structCentralDir, self.data, at)  # type: ignore[attr-defined]
            entry = at
            at += fixed + sum(fields[i] for i in (zipfile._CD_FILENAME_LENGTH, zipfile._CD_EXTRA_FIELD_LENGTH,  # type: ignore[attr-defined]
                                                  zipfile._CD_COMMENT_LENGTH))  # type: ignore[attr-defined]
            name = _zip_member_path(info.filename)
            if name is None or _zip_is_folder(info):
                continue
            earlier = self.files.pop(name, None)  # a later entry of the same name takes the place of the earlier one
            # not the same stored name: another file. The stored name, since zipfile cuts a name at a NUL byte: a later
            # 'a.png\0x' replaced an earlier 'a.png' unread
            if earlier is not None and (was := self.stored_name(earlier)) != (now := self.stored_name(entry)):
                stored = self.look_alikes.setdefault(name, [was])
                stored.extend([now] if now not in stored else [])
            self.files[name] = entry

    def _refuse_encrypted_directory(self, raw: BinaryIO) -> None:
        """Raise EncryptedZipDirectory where the directory, no entry at its start, is encrypted: PKWARE's central
        directory encryption (SecureZIP) flags each local header so (bit 13, its values masked), the first at the
        archive's start. Without that flag the directory is damaged, which zipfile's own error says (read again)."""
        raw.seek(max(self.concat, 0))
        head = raw.read(8)
        if head[:4] == zipfile.stringFileHeader and int.from_bytes(head[6:8], "little") & 0x2000:  # type: ignore[attr-defined]
            raise EncryptedZipDirectory(
                "a zip archive whose central directory (the list of its members) is encrypted (PKWARE's central "
                "directory encryption), which the job is given no password to read: zip it again unencrypted")

    def _refuse_too_many_entries(self) -> None:
        """Count the directory's entries by their lengths alone (no name read, nothing kept) and raise
        ZipDirectoryTooLarge past MAX_ZIP_MEMBERS, before any is indexed: the count its end record gives may lie."""
        at, count, fixed = 0, 0, zipfile.sizeCentralDir  # type: ignore[attr-defined]
        lengths = struct.Struct("<HHH")  # the name's, the extra field's and the comment's, at 28 in an entry
        while at + fixed <= len(self.data):
            count += 1
            if count > MAX_ZIP_MEMBERS:
                raise ZipDirectoryTooLarge(
                    f"its central directory holds more than {MAX_ZIP_MEMBERS:,} entries, the most the job reads of one "
                    "archive, so none of it was read: split it into smaller archives")
            at += fixed + sum(lengths.unpack_from(self.data, at + 28))

    def _info(self, at: int) -> zipfile.ZipInfo:
        """The ZipInfo of the entry at `at` in the directory, made as zipfile's _RealGetContents makes it."""
        fixed = zipfile.sizeCentralDir  # type: ignore[attr-defined]
        if at + fixed > len(self.data):
            raise zipfile.BadZipFile("Truncated central directory")
        centdir = struct.unpack_from(zipfile.structCentralDir, self.data, at)  # type: ignore[attr-defined]
        if centdir[zipfile._CD_SIGNATURE] != zipfile.stringCentralDir:  # type: ignore[attr-defined]
            raise zipfile.BadZipFile("Bad magic number for central directory")
        name_at = at + fixed
        extra_at = name_at + centdir[zipfile._CD_FILENAME_LENGTH]  # type: ignore[attr-defined]
        comment_at = extra_at + centdir[zipfile._CD_EXTRA_FIELD_LENGTH]  # type: ignore[attr-defined]
        raw_name = self.data[name_at:extra_at]
        stored = None
        if centdir[zipfile._CD_FLAG_BITS] & 0x800:  # type: ignore[attr-defined]  # the name is flagged UTF-8
            try:
                filename = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                filename, stored = raw_name.decode("cp437"), raw_name.decode("utf-8", "surrogateescape")
        else:
            filename = raw_name.decode("cp437")
        x = zipfile.ZipInfo(filename)
        x.extra = self.data[extra_at:comment_at]
        x.comment = self.data[comment_at : comment_at + centdir[zipfile._CD_COMMENT_LENGTH]]  # type: ignore[attr-defined]
        x.header_offset = centdir[zipfile._CD_LOCAL_HEADER_OFFSET]  # type: ignore[attr-defined]
        (x.create_version, x.create_system, x.extract_version, x.reserved, x.flag_bits, x.compress_type, t, d,
         x.CRC, x.compress_size, x.file_size) = centdir[1:12]
        if x.extract_version > zipfile.MAX_EXTRACT_VERSION:  # type: ignore[attr-defined]
            raise NotImplementedError(f"zip file version {x.extract_version / 10:.1f}")
        x.volume, x.internal_attr, x.external_attr = centdir[15:18]
        x._raw_time = t  # type: ignore[attr-defined]
        x.date_time = ((d >> 9) + 1980, (d >> 5) & 0xF, d & 0x1F, t >> 11, (t >> 5) & 0x3F, (t & 0x1F) * 2)
        x._decodeExtra()  # type: ignore[attr-defined]
        x.header_offset = x.header_offset + self.concat
        if stored is not None:  # orig_filename stays cp437: zipfile checks it against the local header read so
            self.not_utf8.add(at)
            x.filename = stored.split("\0", 1)[0]  # zipfile cuts a name at a NUL byte
        return x

    def info(self, name: str) -> zipfile.ZipInfo:
        """The ZipInfo of the file at path `name`, made again from its entry (none is kept), its local header's UTF-8
        flag cleared for reading where its name is not UTF-8."""
        at = self.files[name]
        info = self._info(at)
        if at in self.not_utf8:
            self.view.at.add(info.header_offset + 7)  # the local header's flags' high byte
        return info

    def stored_name(self, at: int) -> str:
        """The name of the entry at `at` as stored (zipfile's orig_filename; a name flagged UTF-8 that is not, as UTF-8
        with its bad bytes kept), from its bytes: no ZipInfo made."""
        fixed = zipfile.sizeCentralDir  # type: ignore[attr-defined]
        centdir = struct.unpack_from(zipfile.structCentralDir, self.data, at)  # type: ignore[attr-defined]
        raw_name = self.data[at + fixed : at + fixed + centdir[zipfile._CD_FILENAME_LENGTH]]  # type: ignore[attr-defined]
        if at in self.not_utf8:
            return raw_name.decode("utf-8", "surrogateescape")
        return raw_name.decode("utf-8" if centdir[zipfile._CD_FLAG_BITS] & 0x800 else "cp437")  # type: ignore[attr-defined]


def _open_zip(raw: BinaryIO) -> tuple[zipfile.ZipFile, _ZipDirectory]:
    """The archive in `raw`, and its directory (`_ZipDirectory`)."""
    view = _UTF8FlagCleared(raw, set())
    directory = _ZipDirectory(raw, view)
    return _Unindexed(view), directory  # type: ignore[arg-type]


def read_zip(unit: ReadUnit, fs_opts: dict[str, Any], in_memory_bytes: int, max_image_bytes: int,
              labels_from_folders: bool, skip_ids: frozenset[str] | set[str] = frozenset(),
              join_metadata: bool = False) -> Iterator[dict[str, Any]]:
    """One record per file in a zip archive, as if its files lay in a folder named after it (id `x.zip/a/b.jpg`;
    hidden ones, `.x` and `_x` such as `__MACOSX/`, skipped as in a folder). A zip file is read through its central
    directory at its end, so a large one is read from storage a member at a time (ranges of an object), never whole.
    A name stored twice is one file, the later entry, as on extraction; different names that give one path (a '\\'
    where the other has '/', or a name zipfile cuts at a NUL byte) are one reject naming them. A symbolic link is read
    as the member it points to; one to nothing in the archive, or out of it, is its reject, as is a member with a '..'
    folder in its path. A member over `max_image_bytes` (by the size the directory gives), an encrypted one, one
    compressed in a way zipfile cannot read or a damaged one is that member's reject; done ids are not read.
    `join_metadata`: the archive's image-folder metadata members are joined to its members, as a folder's files are
    (`_zip_metadata`): one joined is a "joined" record (counted as metadata, as hidden files are), one that cannot be
    joined its reject saying why; the rows naming no member are an "unmatched" record (their count, the first few).
    Its sidecar members (`_zip_sidecars`) give their images' columns, as a folder's files do: each a "sidecar" record,
    no input."""
    (path,) = unit.paths
    rel = relative_id(path, unit.root)
    with contextlib.ExitStack() as stack:
        try:
            # a file of unknown size over in_memory_bytes is a stream that cannot seek: read from a local copy
            open_file = file_opener(path, fs_opts, in_memory_bytes, unit.sizes[0] if unit.sizes else None, spool=stack)
            archive, directory = _open_zip(stack.enter_context(open_file()))
            stack.enter_context(archive)
        except Exception as err:  # noqa: BLE001 - not a zip, or its directory is damaged: one reject for the file
            # lasting where its bytes say it is no zip (`NotAZip`); a damaged directory or a storage error is read again
            yield container_reject(f"{rel}#unreadable", path, f"unreadable zip file: {refusal_said(err)}",
                                   is_lasting(err))
            return
        # its sidecar members (`sidecar_files`: 'a/0.txt' beside 'a/0.jpg'), read with their images, no inputs
        sidecars = _zip_sidecars(directory) if join_metadata else {}
        joined = _zip_metadata(archive, directory, max_image_bytes, sidecars) if join_metadata else FolderMetadata()
        of_image: dict[str, list[tuple[str, str]]] = {}  # image member -> its sidecars' (extension, member)
        for sidecar, images in sidecars.items():
            for image, ext in images:
                of_image.setdefault(image, []).append((ext, sidecar))
        json_columns = JsonColumns()  # the archive's .json sidecars' columns, limited as a tar shard's are
        if joined.unmatched:
            yield {"kind": "unmatched", "count": joined.unmatched,
                   "examples": [f"{rel}/{text_name(example)}" for example in joined.unmatched_examples]}
        for name in directory.files:
            id_, source = f"{rel}/{text_name(name)}", f"{path}:{name}"
            if name in joined.joined:  # before the done ids: an earlier run's reject of it is untrue now
                yield {"kind": "joined", "name": id_}
                continue
            if name in sidecars:  # before the done ids too: an earlier version's reject of it is untrue now
                yield {"kind": "sidecar", "name": id_}
                continue
            if name in joined.rejects and id_ not in skip_ids:
                yield reject_record(id_, source, joined.rejects[name], "read")
                continue
            not_read = _member_not_read(name, id_, source, skip_ids, directory.look_alikes)
            if not_read is not None:
                yield not_read
                continue
            info = directory.info(name)
            target = _zip_link_target(archive, directory, name) if _zip_is_link(info) else info
            if isinstance(target, str):
                yield reject_record(id_, source, target, "read")
                continue
            what = name if target is info else f"{_zip_member_path(target.filename)} (the target of link {name})"
            if name in of_image:  # as in a folder: its sidecars' columns, then the folder's label and metadata row
                meta_or_why = _sidecar_meta(archive, directory, sorted(of_image[name]), max_image_bytes, json_columns)
                if isinstance(meta_or_why, str):
                    yield reject_record(id_, source, meta_or_why, "read")
                    continue
                meta = meta_or_why
                with_own_columns(meta, labels_from_folders, _folder_label(name), joined.rows.get(name))
            else:
                meta = {"label": _folder_label(name)} if labels_from_folders else {}
                with_row(meta, joined.rows.get(name, {}))  # a metadata row's label wins over the folder's, as in a folder
            record = _member_record(archive, target, what, id_, source, meta, max_image_bytes)
            orphan = orphan_note(name)
            if orphan and record["kind"] == "image":  # as a folder's file: if it is no image, its reject says why
                record["decode_note"] = "; ".join(note for note in (table_note(name), orphan) if note)
            yield record


def _zip_sidecars(directory: _ZipDirectory) -> dict[str, list[tuple[str, str]]]:
    """The archive's sidecar members, as a folder's files are paired (`sidecar_files.pair_sidecars`): each one -> its
    images' (member, extension). Hidden members, links, names with a '..' folder, names that give one path with
    another and containers (`a/x.tar` beside `a/x.jpg`: a reject that says to extract it, as without sidecars, not a
    bytes column) are left out: they are read, or refused, as they are without sidecars."""
    names = [name for name in directory.files
             if name not in directory.look_alikes and not is_hidden(name) and ".." not in name.split("/")
             and not is_container_name(name) and not _zip_is_link(directory.info(name))]
    return pair_sidecars(names)


def _sidecar_meta(archive: zipfile.ZipFile, directory: _ZipDirectory, sidecars: list[tuple[str, str]],
                  max_image_bytes: int, json_columns: JsonColumns) -> dict[str, Any] | str:
    """An image member's columns from its sidecar members, as a folder's image file's (`image_files._sidecar_meta`),
    or why the image is a reject: a sidecar over `max_image_bytes`, encrypted or damaged, or two that give one column."""
    def read(name: str) -> bytes | str:
        shown = text_name(name)
        info = directory.info(name)
        if info.file_size > max_image_bytes:
            return too_large(f"its sidecar member {shown}", info.file_size, max_image_bytes)
        if info.flag_bits & 0x1:
            return f"its sidecar member {shown} is encrypted, so the image is not purified without its columns"
        try:
            return with_retries(lambda: archive.read(info), f"read {name}")
        except Exception as err:  # noqa: BLE001 - a damaged sidecar: its image's reject, never the image without it
            return (f"could not read its sidecar member {shown} ({describe(err)}), so the image is not purified "
                    "without that member's columns")

    return sidecar_meta(((ext, text_name(name), functools.partial(read, name)) for ext, name in sidecars), "member",
                        json_columns)


def _zip_metadata(archive: zipfile.ZipFile, directory: _ZipDirectory, max_image_bytes: int,
                  sidecars: dict[str, Any] | None = None) -> FolderMetadata:
    """The archive's image-folder metadata members (`folder_metadata`: not hidden, links or one of several names for
    a path) joined to its other members but its `sidecars` (`_zip_sidecars`: its images' columns, as in a folder),
    keyed by member path, with the rows naming no member counted; one over `max_image_bytes`, encrypted or damaged
    cannot be joined."""
    names = {name: name for name in directory.files
             if is_folder_metadata(name) and name not in directory.look_alikes and not is_hidden(name)
             and ".." not in name.split("/") and not _zip_is_link(directory.info(name))}
    found = FolderMetadata()
    if not names:
        return found

    def read(name: str) -> bytes:
        info = directory.info(name)
        if info.file_size > max_image_bytes:
            raise MetadataProblem(too_large(f"zip member {name}", info.file_size, max_image_bytes))
        if info.flag_bits & 0x1:
            raise MetadataProblem(f"zip member {name} is encrypted")
        return with_retries(lambda: archive.read(info), f"read {name}")

    members = {name: name for name in directory.files if name not in names and name not in (sidecars or {})}
    join_folder_metadata(members, names, read, found)
    return found


# How many zip archives a dry run looks into at once for their metadata members (`zip_metadata_found`), as it reads
# Parquet footers (`plan.FOOTER_READS`)
DIRECTORY_READS = 16


def zip_metadata_found(units: list[ReadUnit], fs_opts: dict[str, Any], max_image_bytes: int,
                       columns: dict[str, list[str]] | None = None) -> ArchiveMetadata:
    """For a dry run (--join-metadata): the image-folder metadata members of these zip archives joined as their read
    tasks will join them (`_zip_metadata`), and the rows naming no member, with the first few; and how many sidecar
    members they hold (`_zip_sidecars`: read with their images as their columns), which the same directories tell.
    Only each archive's central directory and its metadata members are read, by ranges (no image); an archive that
    cannot be read, and one storage gives no size for (it would have to be copied whole), are left to the run, which
    says what it finds. `columns` (path -> names), when given, gets each archive's joined rows' columns, from the same
    reads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(unit: ReadUnit) -> tuple[FolderMetadata, int] | None:
        size = unit.sizes[0] if unit.sizes else None
        if size is None:
            return None
        try:
            # in_memory_bytes 0: read by ranges, never fetched whole
            with file_opener(unit.paths[0], fs_opts, 0, size)() as raw:
                archive, directory = _open_zip(raw)
                with archive:
                    sidecars = _zip_sidecars(directory)
                    return _zip_metadata(archive, directory, max_image_bytes, sidecars), len(sidecars)
        except Exception:  # noqa: BLE001 - the run's read of it makes the reject that says why
            return None

    found = ArchiveMetadata()
    # one at a time on FTP/SFTP (`concurrent_calls`)
    threads = concurrent_reads(units[0].paths[0], DIRECTORY_READS) if units else 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for unit, read in zip(units, pool.map(one, units), strict=True):
            if read is not None:
                joined, sidecars = read
                if columns is not None and joined.rows:
                    columns[unit.paths[0]] = list(dict.fromkeys(name for row in joined.rows.values() for name in row))
                rel = relative_id(unit.paths[0], unit.root)
                found.add(len(joined.joined), joined.unmatched,
                          [f"{rel}/{text_name(example)}" for example in joined.unmatched_examples], sidecars)
    return found


def _member_not_read(name: str, id_: str, source: str, skip_ids: frozenset[str] | set[str],
                     look_alikes: dict[str, list[str]]) -> dict[str, Any] | None:
    """The record of a member that is not read (hidden, done, one of several names for one path, or with a '..'
    folder), or None for one to read."""
    parts = name.split("/")
    # '..' is no hidden name: '../x.png' was skipped as one, unread and unreported
    if is_hidden("/".join(part for part in parts if part != "..")):
        return {"kind": "hidden", "name": id_}  # counted by read_unit, not an input
    if id_ in skip_ids:
        return {"kind": "skipped", "id": id_}
    if name in look_alikes:  # one id for two files: neither is read, one reject names them all
        shown = " and ".join(repr(text_name(n)) for n in look_alikes[name])
        # the path as text: a byte that is not UTF-8 left in the reason had reject_record escape it all again, every
        # backslash doubled ("once '\\\\' is read")
        return reject_record(id_, source, f"zip members {shown} are one path, {text_name(name)}, once '\\' is read as '/', "
                             "empty or '.' folders are dropped and a name is cut at a NUL byte, so the output "
                             "could keep only one of them; none was read: rename one and run again with "
                             "--retry-rejects", "read")
    if ".." in parts:
        return reject_record(id_, source, f"zip member {name} has a '..' folder in its path, which leads out of "
                             "its folder (extracted, it is written elsewhere or outside the archive's folder), so "
                             "it was not read: rename it and run again with --retry-rejects", "read")
    return None


def _folder_label(name: str) -> str | None:
    """A member's label: the name of the folder it lies in (None at the archive's top)."""
    folder = posixpath.dirname(name)
    return posixpath.basename(folder) if folder else None


def _member_record(archive: zipfile.ZipFile, target: zipfile.ZipInfo, what: str, id_: str, source: str,
                   meta: dict[str, Any], max_image_bytes: int) -> dict[str, Any]:
    """The image record of the member `target` (`what` names it in a reject), or its reject when it is too large,
    encrypted, compressed in a way zipfile cannot read, or damaged."""
    if target.file_size > max_image_bytes:
        return reject_record(id_, source, too_large(f"zip member {what}", target.file_size, max_image_bytes), "read")
    if target.flag_bits & 0x1:
        return reject_record(id_, source, f"zip member {what} is encrypted", "read")
    try:
        data = with_retries(lambda target=target: archive.read(target), f"read {source}")
    except NotImplementedError as err:  # the data may be fine: zipfile cannot decompress it
        method = zipfile.compressor_names.get(target.compress_type, "unknown")
        return reject_record(id_, source, f"zip member {what} is compressed with method {target.compress_type} "
                             f"({method}), which cannot be read ({describe(err)}): store it with deflate", "read")
    except Exception as err:  # noqa: BLE001 - a damaged member (bad CRC, cut short) is its reject
        return reject_record(id_, source, f"corrupt zip member {what}: {describe(err)}", "read")
    return image_record(id_, source, data, meta)
