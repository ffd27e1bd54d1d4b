"""The reader of tar shards: one record per WebDataset key, in two sequential passes (headers, then data), so that
memory does not grow with the shard; keys done in an earlier run skipped unread, keys that give one id refused
together."""

from __future__ import annotations

import contextlib
import posixpath
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from pipeline.sources.file_bytes import (
    InputChangedWhileRead,
    SpoolFailed,
    changed_while_read,
    file_opener,
    replaced_while_read,
    too_large,
)
from pipeline.sources.folder_metadata import FolderMetadata, MetadataProblem, join_folder_metadata
from pipeline.sources.ids import LOOKALIKE, relative_id, text_name
from pipeline.sources.records import container_reject, is_lasting, reject_record
from pipeline.sources.tar_members import TarLink, index_tar, member_pass
from pipeline.sources.units import ReadUnit
from pipeline.sources.webdataset_keys import (
    JsonColumns,
    earlier_ids,
    image_extensions,
    member_path,
    split_key,
    tar_key,
    tar_key_record,
)
from pipeline.storage import describe


def read_tar(unit: ReadUnit, fs_opts: dict[str, Any], in_memory_bytes: int, max_image_bytes: int,
              skip_ids: frozenset[str] | set[str] = frozenset(),
              purified_ids: frozenset[str] | set[str] = frozenset(),
              join_metadata: bool = False, labels_from_folders: bool = False,
              named_ids: frozenset[str] | set[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """One record per key, in two sequential passes, so that memory does not grow with the shard.

    Pass 1 reads only the headers: which members each key has (`tar_key`: WebDataset's keys, a numbered name such as
    Kaggle's 'cat.0.jpg' keyed with its number), and what each link points to. Pass 2 reads the
    members and emits a key's record as soon as its last member has gone by, so only keys still waiting for a member
    are held: one at a time in a WebDataset shard, whose keys are contiguous, though a key's members may be anywhere.
    A link is read as its target's bytes: those of a link's target are kept from when it goes by until its links'
    keys are emitted, and a symlink to a later member waits, like its key, for that member. A shard of at most
    `in_memory_bytes` is fetched once and both passes run over that copy; a larger one is streamed from storage
    twice, trading a second read for bounded memory, unless storage gives no size (a web server that sends no
    Content-Length): such a shard is copied once to a local temporary file (`_spooled`), both passes read the copy,
    which is deleted when the reading ends (done, failed or stopped); where the copy cannot be made (a full disk, no
    temporary folder it can write), it is streamed twice. A member over `max_image_bytes` is not read, and a key whose
    members hold more than that together is not kept: either key is a reject.
    A key whose id is in `skip_ids` (done in an earlier run) is not read either: one "skipped" record stands for it.
    Two keys of one id (`_escaped_twin_keys`) are one reject naming both; when that id was purified in an earlier run
    (`purified_ids`: the done ids in data/), one of them was added since, and its reject has an id of its own
    (`LOOKALIKE`), given once: the purified row keeps the id.
    A key's id is the shard's id, '/' and the key, of the member's path (`member_path`: 's.tar/b' for './b.jpg'); one
    an earlier version named from the member's name ('s.tar/./b') keeps that id where the output holds it and not the
    new one (`earlier_ids`): in `skip_ids`, `purified_ids` or `named_ids` (the output's ids of this shard so named,
    its rejects' too, which --retry-rejects does not skip, and the rows --refresh-changed replaces).
    `join_metadata`: the shard's image-folder metadata members (a tarred image folder's metadata.csv or
    metadata.jsonl) are read in pass 1 and joined to its keys' images before pass 2, wherever they lie in the shard
    (`_shard_metadata`): one joined is a "joined" record (counted as metadata, as in a zip archive), one that cannot be
    joined its reject, by its member path, saying why; the rows naming no image member are an "unmatched" record.
    """
    (path,) = unit.paths
    shard = relative_id(path, unit.root)
    listed_size = unit.sizes[0] if unit.sizes else None
    with contextlib.ExitStack() as spool:
        try:
            try:
                # no size on storage: a stream of unknown length, over in_memory_bytes copied once for both passes
                open_stream = file_opener(path, fs_opts, in_memory_bytes, listed_size, spool=spool)
            except SpoolFailed:
                # no room for the copy (a full disk, no temporary folder to write): streamed twice, as a tar needs no
                # seeking
                open_stream = file_opener(path, fs_opts, in_memory_bytes, listed_size)
        except Exception as err:  # noqa: BLE001 - unreadable shard: one reject for the whole unit
            yield _unreadable(shard, path, 0, err)
            return
        yield from _two_passes(path, shard, open_stream, max_image_bytes, skip_ids, purified_ids, join_metadata,
                               labels_from_folders, named_ids)


def _two_passes(path: str, shard: str, open_stream: Callable[[], BinaryIO], max_image_bytes: int,
                skip_ids: frozenset[str] | set[str], purified_ids: frozenset[str] | set[str],
                join_metadata: bool = False, labels_from_folders: bool = False,
                named_ids: frozenset[str] | set[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """`read_tar`'s records of a shard opened by `open_stream`: pass 1 (the index, and the metadata members' bytes
    with `join_metadata`), then pass 2 (the members)."""
    texts: dict[str, bytes | Exception | str] | None = {} if join_metadata else None
    members_of, split, links, index_error, metadata = index_tar(open_stream, metadata_bytes=texts,
                                                                 max_member_bytes=max_image_bytes)  # pass 1
    failure = _unreadable(shard, path, len(members_of), index_error) if index_error else None

    def known(id_: str) -> bool:  # an id the output holds (no union: skip_ids may hold a large shard's every id)
        return id_ in skip_ids or id_ in named_ids or id_ in purified_ids

    earlier = earlier_ids(shard, members_of, known)

    def key_id(key: str) -> str:  # a member name that is not UTF-8 gives a key that is not: its id is text
        return earlier.get(key) or f"{shard}/{text_name(key)}"

    def name_id(name: str) -> str:  # a metadata member's own id, as `earlier_ids` keeps a key's
        own, before = f"{shard}/{text_name(member_path(name))}", f"{shard}/{text_name(name)}"
        return before if before != own and known(before) and not known(own) else own

    yield from ({"kind": "hidden", "name": name_id(name)} for name in metadata)  # counted, not inputs
    joined = _shard_metadata(members_of, links, texts) if texts else FolderMetadata()
    taken = [*joined.joined, *joined.rejects]  # out of their keys: no inputs, or rejects of their own
    for name in taken:
        key = tar_key(name)[0]
        del members_of[key][name]
        if not members_of[key]:
            del members_of[key]
    for name in taken:
        id_ = name_id(name)
        if name in joined.rejects:
            yield {"kind": "skipped", "id": id_} if id_ in skip_ids else reject_record(
                id_, f"{path}:{name}", joined.rejects[name], "read")
        else:
            yield {"kind": "joined", "name": id_}
    if joined.unmatched:
        yield {"kind": "unmatched", "count": joined.unmatched,
               "examples": [f"{shard}/{text_name(_member_said(example))}" for example in joined.unmatched_examples]}
    metadata = [*metadata, *taken]  # pass 2 skips them, and the keys they alone gave (an older version's) are gone
    superseded = _superseded_ids(members_of, split, metadata, key_id)
    if superseded:
        yield {"kind": "superseded", "ids": superseded}
    # keys done in an earlier run: their members are neither extracted nor hashed, and their links keep nothing
    done: set[str] = {key for key in members_of if key_id(key) in skip_ids}
    yield from ({"kind": "skipped", "id": id_} for id_ in dict.fromkeys(key_id(key) for key in members_of if key in done))
    yield from _twin_key_records(path, shard, members_of, key_id, done, skip_ids, purified_ids)
    members = _MembersPass(path, members_of, split, links, metadata, done, key_id, max_image_bytes,
                           rows=joined.rows, labels_from_folders=labels_from_folders)  # pass 2
    changed = None
    try:
        for item in member_pass(open_stream, members.wanted, max_member_bytes=max_image_bytes):
            yield from members.went_by(item)
    except Exception as err:  # noqa: BLE001 - damage pass 1 did not reach (it reads less): reject what is left
        if changed_while_read(err):  # pass 1's index is of another version: nothing more is read against it
            changed = str(err) if isinstance(err, InputChangedWhileRead) else replaced_while_read(path)
            failure = reject_record(f"{shard}#unreadable", path, changed, "read")
        failure = failure or _unreadable(shard, path, len(members_of), err)
    yield from members.broken_off(changed)
    if failure:
        yield failure


def _member_said(example: str) -> str:
    """An unmatched row's example ('./train/metadata.csv: 7.png') with its member's path as ids give it."""
    member, sep, row = example.partition(": ")
    return f"{member_path(member)}{sep}{row}"


def _shard_metadata(members_of: dict[str, Counter[str]], links: dict[int, TarLink],
                    texts: dict[str, bytes | Exception | str]) -> FolderMetadata:
    """A shard's image-folder metadata members (`texts`: name -> what pass 1 read of each) joined to its keys as a
    folder's metadata files are to its image files (`folder_metadata`: file_name relative to the member's folder, the
    nearest member's row winning), keyed by key: a row names a key's image member ('train/0.jpg', not its sidecar
    'train/0.cls'), as the key's image would lie once extracted. Not joined, so still members of their keys as before:
    links, names with a '..' folder, and a second name for one path ('./train/metadata.csv' beside
    'train/metadata.csv'; the first is joined)."""
    linked = {link.name for link in links.values()}
    names: dict[str, str] = {}  # the member's path, as a row's file_name resolves against it -> its name
    for name in texts:
        path = posixpath.normpath(name)
        if name not in linked and ".." not in path.split("/") and path not in names:
            names[path] = name
    taken = set(names.values())
    images: dict[str, str] = {}  # an image member's path -> its key
    for key, counted in members_of.items():
        exts = {tar_key(name)[1]: name for name in counted if name not in taken}
        image = image_extensions(exts)
        if len(image) == 1:
            images[posixpath.normpath(exts[image[0]])] = key

    def read(name: str) -> bytes:
        data = texts[name]
        if isinstance(data, str):  # over --max-image-mb: not read
            raise MetadataProblem(data)
        if isinstance(data, Exception):
            raise MetadataProblem(f"corrupt tar member {name}: {describe(data)}")
        return data

    found = FolderMetadata()
    join_folder_metadata(images, names, read, found)
    return found


def _unreadable(shard: str, path: str, keys: int, err: BaseException) -> dict[str, Any]:
    """The shard's own reject ('#unreadable'): it could not be opened, or a pass broke off (`keys`: how many keys pass
    1 found)."""
    if keys == 0 and is_lasting(err):  # not a tar (`tar_members.NotATar`), its reason said in words: a lasting reject
        return container_reject(f"{shard}#unreadable", path, f"tar shard unreadable: {err}", lasting=True)
    return reject_record(f"{shard}#unreadable", path, f"tar shard unreadable after {keys} keys: {describe(err)}", "read")


def _superseded_ids(members_of: dict[str, Counter[str]], split: set[str], metadata: list[str],
                    key_id: Callable[[str], str]) -> list[str]:
    """Ids an older version gave this shard that this one gives no key, sorted: those of its rejects are out of date.

    'cat' when this shard's 'cat.0.jpg', 'cat.1.jpg' are keys of their own: a version before numbered names were
    keyed apart gave one reject for them all, 's.tar/cat', which the run that reads the shard whole removes; and the
    keys macOS metadata alone gave ('s.tar/d/' for 'd/._a.png', '.DS_Store'): a version that read it as members gave
    each such key one reject. By id, not by key: a latin-1 'caf\\xe9.0.jpg' (split from 'caf\\xe9') beside a member
    literally named 'caf\\\\xe9.jpg' gave that member's own id as superseded, and its reject was then removed as out
    of date."""
    older = {*split, *(key for name in metadata for key in (tar_key(name)[0], split_key(name)[0]))}
    return sorted({key_id(key) for key in older} - {key_id(key) for key in members_of})


def _twin_key_records(path: str, shard: str, members_of: dict[str, Counter[str]], key_id: Callable[[str], str],
                      done: set[str], skip_ids: frozenset[str] | set[str],
                      purified_ids: frozenset[str] | set[str]) -> Iterator[dict[str, Any]]:
    """The records of keys that give one id: a key that is not UTF-8 and one named with its escapes ('caf\\xe9'
    literally), which the output could keep only once. Neither is read: one reject names them all, so that no image
    goes unnoticed, and their keys are added to `done`. When their id is done and in data/ (`purified_ids`), one was
    purified under it before the other was added, which, skipped as done, would vanish: it gets a reject with an id
    of its own (`LOOKALIKE`), or a "skipped" record when an earlier run gave that reject."""
    for id_, twins in _escaped_twin_keys(members_of, key_id).items():
        if twins[0] not in done:
            done.update(twins)
            yield reject_record(id_, f"{path}:{twins[0]}", _twin_members_error(members_of, twins, id_), "read")
        elif id_ in purified_ids:
            lookalike = f"{shard}{LOOKALIKE}{text_name(twins[0])}"
            yield {"kind": "skipped", "id": lookalike} if lookalike in skip_ids else reject_record(
                lookalike, path, _twin_members_error(members_of, twins, id_, purified_before=True), "read")


class _MembersPass:
    """Pass 2 over a tar shard: its members' bytes gathered by key, and each key's record as soon as its last member
    has gone by. Held meanwhile: the members of keys still waiting, and the bytes of link targets whose links' keys
    are still to be emitted (`readers`); keys in `done` (done before, or rejected unread) are not read. A key's members
    are held up to `max_key_bytes` together: each member was checked against the limit alone, and a key of many large
    sidecars (0001.a, 0001.b, ... each under it, or links to one large member) held them all in one read task's
    memory, and then in one record; a key over it is a reject naming the limit, its members read no further."""

    def __init__(self, path: str, members_of: dict[str, Counter[str]], split: set[str], links: dict[int, TarLink],
                 metadata: list[str], done: set[str], key_id: Callable[[str], str],
                 max_key_bytes: int | None = None, rows: dict[str, dict[str, Any]] | None = None,
                 labels_from_folders: bool = False) -> None:
        self.path, self.members_of, self.split, self.links, self.done, self.key_id = (
            path, members_of, split, links, done, key_id)
        self.max_key_bytes = max_key_bytes
        self.rows = rows or {}  # key -> the columns of its image-folder metadata row (`_shard_metadata`)
        self.labels_from_folders = labels_from_folders
        self.held: Counter[str] = Counter()  # key -> bytes of its members held
        self.skipped_names = frozenset(metadata)  # a metadata member may share a key with real ones ('d/' for 'd/.1.jpg')
        # target position -> links still to be emitted that read it; its bytes are kept while any are
        self.readers: Counter[int] = Counter()
        self.targets_of: dict[str, list[int]] = {}  # key -> positions of its links' targets
        for link in links.values():
            key = tar_key(link.name)[0]
            if isinstance(link.target, int) and key not in done and link.name not in self.skipped_names:
                self.readers[link.target] += 1
                self.targets_of.setdefault(key, []).append(link.target)
        self.seen: dict[str, Counter[str]] = {}
        # members still to go by, per key, and keys that had one more than pass 1 counted (never whole): a running
        # count, as comparing `seen` with `members_of` at every member took time quadratic in a key's members
        self.left: dict[str, int] = {}
        self.extra: set[str] = set()
        self.parts: dict[str, dict[str, tuple[str, bytes]]] = {}  # key -> extension -> (member name, its bytes)
        self.errors: dict[str, str] = {}
        self.kept: dict[int, bytes | Exception | str] = {}  # link targets' bytes (or why they were not read), by position
        self.waiting: dict[int, list[TarLink]] = {}  # target position -> symlinks before it
        # the columns the .json sidecars of the keys emitted so far gave (kept when a pass restarts: those keys stay)
        self.json_columns = JsonColumns()

    def wanted(self, position: int, member: tarfile.TarInfo) -> bool:
        """Whether pass 2 reads a member's bytes: it is a pending key's, or a link still to be emitted reads it."""
        key = tar_key(member.name)[0]
        ours = member.name not in self.skipped_names and self._pending(key) and key not in self.errors
        return ours or self.readers[position] > 0

    def went_by(self, item: tuple[int, tarfile.TarInfo, bytes | Exception | str] | None) -> list[dict[str, Any]]:
        """The records completed by one item of `member_pass`. None: the pass (re)started (after a transient storage
        error), and keys already emitted stay emitted, the rest are collected afresh."""
        if item is None:
            for held in (self.seen, self.left, self.extra, self.parts, self.errors, self.kept, self.waiting, self.held):
                held.clear()
            return []
        position, member, data = item
        key = tar_key(member.name)[0]
        ours = member.name not in self.skipped_names and self._pending(key)
        out: list[dict[str, Any] | None] = []
        if position in self.links and ours:
            link = self.links[position]
            if isinstance(link.target, str):  # it cannot be read: that reason is its key's reject
                out.append(self._took(member.name, link.target))
            elif link.target < position:
                out.append(self._read_link(link, self.kept[link.target]))
            else:  # a symlink to a later member: it goes by, with its key, when that member does
                self.waiting.setdefault(link.target, []).append(link)
        elif position not in self.links:
            if ours:
                out.append(self._took(member.name, data))
            if self.readers[position] > 0:
                self.kept[position] = data
                out.extend(self._read_link(link, data) for link in self.waiting.pop(position, []))
        return [r for r in out if r is not None]

    def broken_off(self, reason: str | None = None) -> Iterator[dict[str, Any]]:
        """The rejects of the keys not emitted: the shard broke off before all of their members went by (or `reason`:
        it changed, so that their members were never read)."""
        for key in self.members_of:
            if key not in self.done:
                if reason is not None:
                    self.errors[key] = reason
                if key in self.extra:  # only a shard rewritten between the passes holds more than pass 1 counted
                    more = sorted(n for n, seen in self.seen[key].items() if seen > self.members_of[key][n])
                    self.errors.setdefault(key, f"tar key {key} has more members ({more[0]}) than the first pass over "
                                                f"the shard found: {replaced_while_read(self.path, 'members')}")
                missing = sorted(set(self.members_of[key]) - set(self.seen.get(key, {})))
                self.errors.setdefault(key, f"corrupt tar member {missing[0] if missing else key}: "
                                            "the shard broke off before it could be read")
                yield self._record(key)

    def _pending(self, key: str) -> bool:
        return key in self.members_of and key not in self.done

    def _record(self, key: str) -> dict[str, Any]:
        for target in self.targets_of.pop(key, []):
            self.readers[target] -= 1
            if self.readers[target] <= 0:
                self.kept.pop(target, None)
        parts, error = self.parts.pop(key, {}), self.errors.pop(key, None)
        self.held.pop(key, None)
        try:
            return tar_key_record(self.path, self.key_id(key), key, parts, error, key in self.split,
                                  self.json_columns, self.rows.get(key), self.labels_from_folders)
        except Exception as err:  # noqa: BLE001 - the key is counted as emitted by now: it must leave a record
            return reject_record(self.key_id(key), f"{self.path}:{key}",
                                 f"cannot read tar key {key}: {type(err).__name__}: {err}", "read")

    def _took(self, name: str, data: bytes | Exception | str, damaged: str = "") -> dict[str, Any] | None:
        """Note member `name` as gone by with its bytes (or the error reading them, or why it cannot be read); its
        key's record once it was the key's last."""
        key, ext = tar_key(name)
        went = self.seen.setdefault(key, Counter())
        went[name] += 1
        if key not in self.left:
            self.left[key] = sum(self.members_of[key].values())
        if went[name] <= self.members_of[key][name]:
            self.left[key] -= 1
        else:
            self.extra.add(key)
        if isinstance(data, Exception):
            self.errors.setdefault(key, f"corrupt tar member {damaged or name}: {type(data).__name__}: {data}")
        elif isinstance(data, str):
            self.errors.setdefault(key, data)
        elif key in self.errors:  # a reject already: its members' bytes are not kept
            self.parts.pop(key, None)
        else:
            other = self.parts.setdefault(key, {}).get(ext, (name, b""))[0]
            # './0001.jpg' beside '0001.jpg' is one file, as extracted: the later wins, as a name's later duplicate does
            if member_path(other) != member_path(name):  # '0001.JPG' and '0001.jpg': two files; neither may be dropped
                self.errors.setdefault(key, f"tar members {other} and {name} differ only in the case of the extension")
            self.parts[key][ext] = name, data  # a later duplicate of a name wins, as on extraction
            self.held[key] += len(data)
            if self.max_key_bytes is not None and self.held[key] > self.max_key_bytes:
                self.errors.setdefault(key, too_large(f"tar key {key} (its members together)", self.held[key],
                                                      self.max_key_bytes))
                self.parts.pop(key, None)
        if self.left[key] or key in self.extra:
            return None
        self.done.add(key)
        return self._record(key)

    def _read_link(self, link: TarLink, data: bytes | Exception | str) -> dict[str, Any] | None:
        return self._took(link.name, data, damaged=f"{link.linkname} (the target of link {link.name})")


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
