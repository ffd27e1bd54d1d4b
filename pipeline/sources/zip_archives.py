"""The reader of zip archives: one record per file in the archive, as if its files lay in a folder named after it,
read a member at a time through the central directory at the archive's end; links followed inside the archive,
names flagged UTF-8 that are not still read, members that would give one path refused together."""

from __future__ import annotations

import contextlib
import posixpath
import stat
import struct
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from pipeline.sources.file_bytes import _opener, too_large
from pipeline.sources.hidden import _hidden
from pipeline.sources.ids import relative_id, text_name
from pipeline.sources.records import _image_record, reject_record
from pipeline.sources.units import ReadUnit
from pipeline.storage import describe, with_retries


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
        files, look_alikes = _zip_files(archive)
        for name, info in files.items():
            id_, source = f"{rel}/{text_name(name)}", f"{path}:{name}"
            not_read = _member_not_read(name, id_, source, skip_ids, look_alikes)
            if not_read is not None:
                yield not_read
                continue
            target = _zip_link_target(archive, files, look_alikes, name) if _zip_is_link(info) else info
            if isinstance(target, str):
                yield reject_record(id_, source, target, "read")
                continue
            what = name if target is info else f"{_zip_member_path(target.filename)} (the target of link {name})"
            meta = {"label": _folder_label(name)} if labels_from_folders else {}
            yield _member_record(archive, target, what, id_, source, meta, max_image_bytes)


def _zip_files(archive: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], dict[str, list[str]]]:
    """The archive's files by path, hidden ones too (a link may point to one), and the paths that different stored
    names give ('a\\b.png' beside 'a/b.png', './a/b.png', 'a//b.png'), with those names."""
    files: dict[str, zipfile.ZipInfo] = {}
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
    return files, look_alikes


def _member_not_read(name: str, id_: str, source: str, skip_ids: frozenset[str] | set[str],
                     look_alikes: dict[str, list[str]]) -> dict[str, Any] | None:
    """The record of a member that is not read (hidden, done, one of several names for one path, or with a '..'
    folder), or None for one to read."""
    parts = name.split("/")
    # '..' is no hidden name: '../x.png' was skipped as one, unread and unreported
    if _hidden("/".join(part for part in parts if part != "..")):
        return {"kind": "hidden", "name": id_}  # counted by read_unit, not an input
    if id_ in skip_ids:
        return {"kind": "skipped", "id": id_}
    if name in look_alikes:  # one id for two files: neither is read, one reject names them all
        shown = " and ".join(repr(text_name(n)) for n in look_alikes[name])
        return reject_record(id_, source, f"zip members {shown} are one path, {name}, once '\\' is read as '/', "
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
    return _image_record(id_, source, data, meta)
