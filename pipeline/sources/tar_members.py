"""A tar shard's members, one sequential pass at a time (`member_pass`: restarted on a transient storage error,
damage noted where tarfile would end quietly), hard and symbolic links resolved to the member whose bytes they stand
for, and pass 1's index of keys, links and macOS metadata (`index_tar`)."""

from __future__ import annotations

import posixpath
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pipeline.sources.file_bytes import too_large
from pipeline.sources.folder_metadata import is_folder_metadata
from pipeline.sources.records import LastingProblem
from pipeline.sources.webdataset_keys import split_key, tar_key
from pipeline.storage import backoff, is_transient


class NotATar(tarfile.ReadError, LastingProblem):
    """A shard whose first block is no tar header and in which no member was found: not a tar, as it stays while it is
    unchanged (its reject is lasting: `records.LastingProblem`). One cut short is not this: it is read again."""


class CheckedTarInfo(tarfile.TarInfo):
    """Headers read as GNU tar --ignore-zeros does, with what went wrong noted on the archive for `member_pass`.

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
            zeros = tar.zip_purify_zero_blocks = getattr(tar, "zip_purify_zero_blocks", 0) + 1  # type: ignore[attr-defined]
            if zeros > MAX_ZERO_BLOCKS:
                _skip_zeros(tar)
                raise tarfile.EmptyHeaderError("end of data") from None
            raise
        except tarfile.EmptyHeaderError:  # no data left
            if not getattr(tar, "zip_purify_ended", False):
                _note_damage(tar, "it ends without tar's end-of-archive blocks (cut short?)")
            raise
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as err:
            _note_damage(tar, f"a member's header cannot be read ({err})")
            if tar.offset == 0 and isinstance(err, tarfile.InvalidHeaderError):  # its first block: no tar's
                tar.zip_purify_not_tar = True  # type: ignore[attr-defined]
            raise
        tar.zip_purify_ended = False  # type: ignore[attr-defined]
        tar.zip_purify_zero_blocks = 0  # type: ignore[attr-defined]
        return info


# Zero blocks in a row past which the rest of a shard is read as bytes, not as tar blocks (1 MiB: GNU tar, bsdtar
# and Python pad an archive to a 10 KiB record, a tape's records are at most about 1 MiB). tarfile reads zero blocks one
# 512-byte block at a time in Python, slowly (about 0.1 ms each from a compressed stream), so a .tar.gz of 200 KB
# that inflates to 200 MB of zeros kept a read task busy for 93 s, and one of 10 MB for over an hour.
MAX_ZERO_BLOCKS = 2_048
_SKIP_BYTES = 2**20


def _skip_zeros(tar: tarfile.TarFile) -> None:
    """Read the rest of a shard that has gone `MAX_ZERO_BLOCKS` zero blocks past an archive's end, a MiB at a time;
    any byte that is not zero is damage (a member after the gap is not read), which `member_pass` then reports."""
    while chunk := tar.fileobj.read(_SKIP_BYTES):  # type: ignore[union-attr]
        if chunk.strip(b"\0"):
            _note_damage(tar, f"data follows more than {MAX_ZERO_BLOCKS * tarfile.BLOCKSIZE // 2**20} MiB of zero "
                              "blocks after an archive's end, and is not read as members")
            return


def _note_damage(tar: tarfile.TarFile, what: str) -> None:
    if not getattr(tar, "zip_purify_damage", None):  # the first one says where the trouble began
        tar.zip_purify_damage = what  # type: ignore[attr-defined]


def member_pass(open_stream: Callable[[], BinaryIO], wanted: Callable[[int, tarfile.TarInfo], bool],
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
            with open_stream() as raw, tarfile.open(fileobj=raw, mode="r|*", tarinfo=CheckedTarInfo,
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
                if damage and position == 0 and getattr(tar, "zip_purify_not_tar", False):
                    raise NotATar("not a tar file: its first block is no tar header, and no member was found after it")
                if damage:  # every member that could be read was; the caller adds the shard's reject with this reason
                    raise tarfile.ReadError(f"{damage}; the members read around it are kept, any others are lost")
            return
        except Exception as err:  # noqa: BLE001 - classified here
            if attempt == attempts - 1 or not is_transient(err):
                raise
            backoff(attempt)


@dataclass(frozen=True)
class TarLink:
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


def _resolve_link(position: int, pointers: dict[int, tuple[tarfile.TarInfo, int | None]]) -> TarLink:
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
        return TarLink(first.name, first.linkname, f"tar link {first.name} -> {first.linkname} cannot be read: {reason}")
    return TarLink(first.name, first.linkname, at)


def is_macos_metadata(name: str) -> bool:
    """Whether a tar member is the metadata macOS adds beside a user's files: an AppleDouble '._x' (a file's extended
    attributes, which bsdtar stores for each file that has any, e.g. every downloaded one), '.DS_Store' (Finder's
    folder settings) or anything under '__MACOSX/' (an archive unpacked and re-packed). Skipped as hidden, as in a
    folder or zip; other names starting with '.' or '_' stay members (a WebDataset key may start with '_')."""
    parts = posixpath.normpath(name).split("/")
    return parts[-1].startswith("._") or parts[-1] == ".DS_Store" or "__MACOSX" in parts


def index_tar(
    open_stream: Callable[[], BinaryIO], metadata_bytes: dict[str, bytes | Exception | str] | None = None,
    max_member_bytes: int | None = None,
) -> tuple[dict[str, Counter[str]], set[str], dict[int, TarLink], BaseException | None, list[str]]:
    """Pass 1, headers only: key -> member name -> occurrences (links included, keys in order of appearance), the
    WebDataset keys that had numbered names keyed apart (`tar_key`: 'cat' for 'cat.0.jpg'), the links by position
    with what each resolves to, the error that cut the pass short (None if it did not), and the macOS metadata
    members (`is_macos_metadata`), which are in no key. With `metadata_bytes` (--join-metadata), the regular members
    named as an image folder's metadata file (`folder_metadata.is_folder_metadata`) are read too, into it (name -> the
    latest such member's bytes, the error reading them, or why a member over `max_member_bytes` was not read): this
    pass goes over every byte of the shard anyway (a stream skips a member by reading it; a compressed one by
    decompressing it), so a metadata member after the images it names costs no third pass."""
    names: Counter[str] = Counter()  # in order of appearance
    latest: dict[str, int] = {}  # shard path -> position of its latest regular member or link

    def wanted(position: int, member: tarfile.TarInfo) -> bool:
        return metadata_bytes is not None and is_folder_metadata(member.name) and not is_macos_metadata(member.name)

    pointers: dict[int, tuple[tarfile.TarInfo, int | None]] = {}
    error: BaseException | None = None
    try:
        for item in member_pass(open_stream, wanted=wanted, max_member_bytes=max_member_bytes):
            if item is None:
                names.clear()
                latest.clear()
                pointers.clear()
                if metadata_bytes is not None:
                    metadata_bytes.clear()
                continue
            position, member, data = item
            names[member.name] += 1
            if member.isfile() and wanted(position, member):
                metadata_bytes[member.name] = data  # type: ignore[index]  # a later one of a name wins, as on extraction
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
        if is_macos_metadata(name):
            metadata.extend([name] * n)
            continue
        key, webdataset_key = tar_key(name)[0], split_key(name)[0]
        if key != webdataset_key:
            split.add(webdataset_key)
        members_of.setdefault(key, Counter())[name] = n
    return members_of, split, {position: _resolve_link(position, pointers) for position in pointers}, error, metadata
