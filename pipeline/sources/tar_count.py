"""How many keys tar shards hold, known before they are read (the dry run, the progress total), exactly or not at all:
a total too small would show a run more done than it is. A key (`webdataset_keys.tar_key`) is one image's row or one
reject, so a shard's keys are the images its read counts.

A tar has no index: its members' headers (512 bytes each) lie between their data. A plain (uncompressed) shard is
walked by tarfile from header to header, the data between stepped over by seeking, not read: one read of BLOCK bytes
holds the headers of the small members within it (a .cls, a .json beside a CIFAR-size image), and a member larger than
that costs a read of its own. Measured on shards of 30,000 members of 3 KB (54 MiB) and 3,000 of up to 110 KB
(107 MiB): 834 and 1,001 reads, under a second each on a local disk, where tarfile's own parsing of each header is
most of the time. Every read, on a local disk too, is taken from the run's budget of ranged requests (`read_budget`,
shared with the TFRecord and Arrow IPC counts), past which the shards not yet counted leave the count unknown rather
than the run slow to start: about ten shards of large images, or 120,000 keys of a 3 KB image and two small sidecars
each (190,000 of such an image alone: 200 shards of 1,000 took 10,600 reads; 150 of them, 7,950 reads in 3.5 s on a
local disk, shared with other work). Shards that at the pace of their first reads would take more than the budget has
left are given up then (`Pace`), not once it is spent.

A compressed shard (gzip, bzip2, xz, by its first bytes, as the reader's tarfile "r|*" takes it) has its headers
only in the decompressed stream: it is walked as its read walks it (`stream_keys`), every byte decompressed, the data
between headers too, and takes from the budget only its first block's read. Measured on this project's data sets as users get
them (a loaded 2-core machine): CIFAR-10's test .tar.gz, 3.1 MiB of 10,000 JPEGs, 0.4-0.6 s; Imagenette's val .tar.gz,
37 MiB of 3,925, 0.2-0.4 s (JPEGs barely compress: gzip inflates fast); GTSRB's test .tar.xz, 25 MiB of 12,632 PPMs,
1.9-3.0 s; CIFAR-10's train .tar.gz, 15 MiB of 50,000, 1.5-3.4 s; GTSRB's train .tar.xz, 76 MiB, 16 s. The slowest
pace, about 4.5 MiB of compressed shard a second (many small members, or xz), puts the bound of the compressed
bytes decompressed in all at 64 MiB on a local disk (`COMPRESSED_BYTES_LOCAL`): about 14 s at worst, as the ranged
requests' budget. On other storage a compressed shard is fetched whole in one request (a web server that ignores
Range answers it too), and its read downloads it again: 16 MiB in all there (`COMPRESSED_BYTES_REMOTE`). Measured
at that bound on a local S3 (moto) and a local web server, beside the local disk (`bench/tar_count_remote_bench.py`,
the 2-core machine loaded, load average 11 to 19): 16 MiB of 3 KB JPEG-like members counted in 0.8-3.6 s, of
90,658 keys of 300-byte members (many small members: the slowest) in 4.8-16.6 s, of .tar.xz in 1.2-7.4 s; the walk,
a header at a time, is the cost wherever the bytes come from, within the 30 s the walks may take (`COMPRESSED_SECONDS`).
Past the bound the count is unknown, and says the size and the bound; shards named compressed (.gz, .xz, .bz2, ...)
whose sizes alone are past it are given up before any is read (a dry run counts the others all the same, and names
those left with their sizes: `count_keys(partial=True)`).

Not counted, the count then unknown with the reason: compressed shards past that bound, a damaged shard, one whose
storage gives no size, a plain one whose storage serves no byte ranges, and with --join-metadata a shard holding an
image folder's metadata member (joined, or a reject of its own, as only its reading tells). One such shard leaves the
whole count unknown, so the walk of the others stops there (`Pace.give_up`), a compressed one's too, at its next read.

A web server (http://, https://) that ignores Range answers each request with the whole file: read as other stores'
ranges are, every shard was downloaded whole before the count gave up (160 MiB for 8 shards of 20 MiB). Its ranges are
read through fsspec's HTTP file, which takes at most about a MiB of the start of such an answer and refuses one past
the start without reading it."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pipeline.sources.folder_metadata import is_folder_metadata
from pipeline.sources.ids import relative_id, text_name
from pipeline.sources.read_budget import MAX_READS, BudgetSpent, ReadBudget
from pipeline.sources.tar_members import CheckedTarInfo, is_macos_metadata
from pipeline.sources.tfrecord_count import BLOCK, READERS, CountProblem
from pipeline.sources.units import ReadUnit
from pipeline.sources.webdataset_keys import earlier_ids, member_path, tar_key
from pipeline.storage import concurrent_reads, describe, local_file_path, protocols, storage_path, with_retries

# The first bytes of the compressed shards the reader takes (tarfile's "r|*"): gzip, bzip2, xz
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
WEB_PROTOCOLS = frozenset({"http", "https"})
# The compressed shards' bytes in all that a run's count decompresses, past which it is unknown (see the module's
# docstring for the measurements): on a local disk about 13 s at the slowest pace measured, as the ranged requests'
# budget; elsewhere each is downloaded whole for the count and again by its read, so less: 16 MiB took at most 17 s
# to count on a loaded machine (the walk, not the download, is its cost), within COMPRESSED_SECONDS.
COMPRESSED_BYTES_LOCAL = 64 * 2**20
COMPRESSED_BYTES_REMOTE = 16 * 2**20
# The seconds the compressed shards' walks may take in all, counted from the first: the bytes' bound gives about 14 s at
# the slowest pace measured, but a shard that inflates a thousandfold takes minutes within it (a .tar.gz of 1 MiB
# holding 1 GiB of zeros after its archive: 6.7 s), as does a slower machine.
COMPRESSED_SECONDS = 30.0
# the names of shards that are compressed, to give up before any is decompressed where those alone are past the bound
COMPRESSED_NAMES = (".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz")


class _GivenUp(Exception):
    """Another shard of the walk could not be counted: the total is unknown whatever this one holds."""


class Pace:
    """The reads a walk of shards has taken against the bytes it has gone over, shared by the threads walking them, to
    give up early where at that pace the rest would take more reads than the budget has left: over a bucket of
    thousands of shards of large images, every run spent the whole budget (about 13 s of requests) for no count."""

    SAMPLE = 64  # reads taken before the pace is judged

    def __init__(self, total_bytes: int | None, budget: ReadBudget) -> None:
        self.total, self.budget = total_bytes, budget  # total None (a size not listed): the budget alone bounds it
        self.reads, self.walked, self._lock = 0, {}, threading.Lock()
        self.verdict: str | None = None  # once given up, every shard's walk stops with the same reason
        self.given_up = False  # a shard could not be counted: the others' walks stop (`_GivenUp`)
        self.compressed = 0  # the bytes of the compressed shards decompressed to count them (`decompressing`)
        self.decompressing_since: float | None = None

    def give_up(self) -> None:
        self.given_up = True

    def decompressing(self, size: int, local: bool) -> None:
        """A compressed shard of `size` bytes about to be decompressed to count it: CountProblem where that takes the
        compressed bytes of the walk past their bound (`COMPRESSED_BYTES_LOCAL`, `_REMOTE`), before any is read."""
        bound = COMPRESSED_BYTES_LOCAL if local else COMPRESSED_BYTES_REMOTE
        with self._lock:
            self.compressed += size
            if self.compressed > bound:
                raise CountProblem(past_bound(size, self.compressed, local))
            if self.decompressing_since is None:
                self.decompressing_since = time.monotonic()

    def still_decompressing(self) -> None:
        """A compressed shard's walk reads on: _GivenUp where another shard could not be counted, CountProblem where
        the compressed shards' walks have taken COMPRESSED_SECONDS."""
        if self.given_up:
            raise _GivenUp
        if self.decompressing_since is not None and time.monotonic() - self.decompressing_since > COMPRESSED_SECONDS:
            raise CountProblem(f"it is compressed, and its headers are found only by decompressing it whole: the "
                               f"compressed shards' walks took over {COMPRESSED_SECONDS:.0f} s, the time allowed to "
                               "count a run's images before it starts")

    def going(self, shard: str, pos: int) -> None:
        """A read about to be taken at `pos` of `shard`; CountProblem where the pace says the budget will not do,
        _GivenUp where another shard could not be counted."""
        if self.given_up:
            raise _GivenUp
        with self._lock:
            if self.verdict is None:
                self.reads += 1
                self.walked[shard] = pos
                walked = sum(self.walked.values())
                if self.total is None or self.reads < self.SAMPLE or not walked:
                    return
                more = self.reads * max(0, self.total - walked) // walked
                if more <= self.budget.left:
                    return
                self.verdict = (f"at the pace of the first {self.reads:,} reads, the shards' headers would take about "
                                f"{more:,} more, past the {self.budget.left:,} left of the {MAX_READS:,} requests "
                                "allowed to count a run's files before it starts")
            raise CountProblem(self.verdict)

    def done(self, shard: str, size: int) -> None:
        with self._lock:
            self.walked[shard] = size


def past_bound(size: int, total: int, local: bool) -> str:
    """Why a compressed shard of `size` bytes, the compressed shards counted with it `total` bytes, is not counted."""
    bound, where = (COMPRESSED_BYTES_LOCAL, "on a local disk") if local else (COMPRESSED_BYTES_REMOTE, "on remote storage")
    return (f"it is compressed ({_size(size)}), and its headers are found only by decompressing it whole"
            + (f": with the other compressed shards, {_size(total)}" if total > size else "")
            + f", past the {_size(bound)} of compressed shards decompressed {where} to count a run's images before it "
            "starts")


UNCOUNTED_NAMED = 5  # the shards `uncounted_note` names


def uncounted_note(uncounted: list[tuple[str, int]], local: bool) -> str:
    """For a dry run: the compressed shards (id, size) left uncounted, their sizes alone past the bound, said plainly."""
    bound, where = (COMPRESSED_BYTES_LOCAL, "on a local disk") if local else (COMPRESSED_BYTES_REMOTE, "on remote storage")
    named = ", ".join(f"{name} {_size(size)}" for name, size in uncounted[:UNCOUNTED_NAMED])
    more = f", and {len(uncounted) - UNCOUNTED_NAMED:,} more" if len(uncounted) > UNCOUNTED_NAMED else ""
    one = len(uncounted) == 1
    shards = "1 compressed shard" if one else f"{len(uncounted):,} compressed shards"
    its = "its" if one else "their"
    return (f"{shards} too large to count before the run, {its} images counted when read ({named}{more}; "
            f"{_size(sum(s for _, s in uncounted))} in all): past the {_size(bound)} of compressed shards decompressed "
            f"{where} to count a run's images, {its} headers found only by decompressing {'it' if one else 'them'} whole")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


class _Watched:
    """A compressed shard's stream, read by tarfile, that stops once another shard could not be counted, or the
    compressed shards' walks have taken too long (`Pace.still_decompressing`)."""

    def __init__(self, raw: BinaryIO, pace: Pace) -> None:
        self.raw, self.pace = raw, pace

    def read(self, n: int = -1) -> bytes:
        self.pace.still_decompressing()
        return self.raw.read(n)

    def close(self) -> None:
        pass  # the caller's to close


class _HeaderReader:
    """A seekable file over `read_at`, for tarfile to walk a shard's headers: it holds one block of BLOCK bytes,
    each block fetched taken from `budget` (and told to `pace`, under the name `shard`)."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int, budget: ReadBudget, pace: Pace | None = None,
                 shard: str = "") -> None:
        self.read_at, self.size, self.budget, self.pace, self.shard = read_at, size, budget, pace, shard
        self.pos, self.start, self.held = 0, 0, b""

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else n
        parts = []
        while n > 0 and self.pos < self.size:
            if not self.start <= self.pos < self.start + len(self.held):
                if self.pace is not None:
                    self.pace.going(self.shard, self.pos)
                try:
                    self.budget.take()
                except BudgetSpent as err:
                    raise CountProblem(str(err)) from err
                length = min(BLOCK, self.size - self.pos)
                self.start, self.held = self.pos, self.read_at(self.pos, length)
                if len(self.held) > length:  # a web server that ignores Range sends the whole shard each time
                    raise CountProblem("its storage does not serve byte ranges")
                if not self.held:
                    raise CountProblem(f"it is shorter than listed ({self.pos:,} of {self.size:,} bytes)")
            part = self.held[self.pos - self.start : self.pos - self.start + n]
            parts.append(part)
            self.pos, n = self.pos + len(part), n - len(part)
        return b"".join(parts)


class Compressed(CountProblem):
    """A compressed shard, met by the walk of a plain one: counted by decompressing it (`stream_keys`), if at all."""

    def __init__(self) -> None:
        super().__init__("it is compressed, and its headers are found only by decompressing it whole")


def shard_keys(read_at: Callable[[int, int], bytes], size: int, budget: ReadBudget, join_metadata: bool,
               pace: Pace | None = None, shard: str = "", named: dict[str, list[str]] | None = None) -> Counter[str]:
    """The keys of the plain tar shard of `size` bytes that `read_at` reads, from its headers alone, as its read
    finds them: key -> its members (links too; directories, devices and macOS metadata members are in no key).
    `named`, when given, gets each key's members whose names are not their paths ('./b.jpg': `_walk`).
    CountProblem where the count cannot be known before the shard is read (see the module's docstring); Compressed
    where it is compressed."""
    reader = _HeaderReader(read_at, size, budget, pace, shard)
    if size == 0:
        raise CountProblem("it is empty")
    if reader.read(6).startswith(COMPRESSED):
        raise Compressed
    reader.seek(0)
    keys = _walk(lambda: tarfile.open(fileobj=reader, mode="r:", tarinfo=CheckedTarInfo,  # type: ignore[call-overload]
                                      ignore_zeros=True), join_metadata, named)
    if pace is not None:
        pace.done(shard, size)
    return keys


def stream_keys(stream: BinaryIO, join_metadata: bool, named: dict[str, list[str]] | None = None) -> Counter[str]:
    """The keys of the compressed (or plain) tar shard `stream` holds, walked as its read walks it (tarfile's "r|*":
    every byte decompressed, the data between headers too); as `shard_keys` says."""
    return _walk(lambda: tarfile.open(fileobj=stream, mode="r|*", tarinfo=CheckedTarInfo,  # type: ignore[call-overload]
                                      ignore_zeros=True), join_metadata, named)


def _walk(open_tar: Callable[[], tarfile.TarFile], join_metadata: bool,
          named: dict[str, list[str]] | None = None) -> Counter[str]:
    """`shard_keys`' walk. `named` gets, by key, the members whose names are not their paths (`member_path`): those
    of which an earlier version gave the key another id (`webdataset_keys.earlier_ids`)."""
    keys: Counter[str] = Counter()
    try:
        with open_tar() as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # kept by tarfile for extraction, which this walk does not do: memory stays flat
                if not (member.isfile() or member.islnk() or member.issym()) or is_macos_metadata(member.name):
                    continue
                if join_metadata and is_folder_metadata(member.name):
                    raise CountProblem(f"its image-folder metadata member {text_name(member.name)} is joined or "
                                       "rejected as it is read")
                key = tar_key(member.name)[0]
                keys[key] += 1
                if named is not None and member_path(member.name) != member.name:
                    named.setdefault(key, []).append(member.name)
            damage = getattr(tar, "zip_purify_damage", None)
    except tarfile.TarError as err:  # its read rejects it as unreadable: how many keys go with it is known then
        raise CountProblem(f"it is cut short or not a tar ({describe(err)})") from err
    if damage:
        raise CountProblem(f"it is damaged: {damage}")
    return keys


def count_shard(unit: ReadUnit, fs_opts: dict[str, Any], budget: ReadBudget, join_metadata: bool,
                pace: Pace | None = None, done: Collection[str] = ()) -> Counter[str]:
    """The ids of the keys of the tar shard `unit` -> how many keys give each (two keys that give one id, a name not
    UTF-8 and one named with its escapes, make one reject), as its read gives them: a key keeps the id an earlier
    version named it by where `done` (its done ids) holds that one and not its own (`earlier_ids`: 's.tar/./b' for
    './b.jpg'). Read a block at a time: on a local disk with a small
    read, else a ranged request; a compressed shard is decompressed whole (`stream_keys`, fetched in one request off a
    local disk), within the bounds `Pace.decompressing` and `Pace.still_decompressing` keep."""
    (path,) = unit.paths
    pace = pace if pace is not None else Pace(None, budget)
    local = local_file_path(path)
    named: dict[str, list[str]] = {}  # key -> its members whose names are not their paths
    if local is not None:
        fd = os.open(local, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            try:
                keys = shard_keys(lambda offset, length: os.pread(fd, length, offset), size, budget, join_metadata,
                                  pace, path, named)
            except Compressed:
                pace.done(path, size)  # its bytes take no ranged requests: the pace of the others' is judged without
                pace.decompressing(size, local=True)
                with os.fdopen(os.dup(fd), "rb") as raw:
                    keys = stream_keys(_Watched(raw, pace), join_metadata, named)  # type: ignore[arg-type]
        finally:
            os.close(fd)
    else:
        fs, fs_path = storage_path(path, fs_opts)
        size = unit.sizes[0] if unit.sizes else None
        if size is None:
            size = with_retries(lambda: fs.size(fs_path), f"stat {path}")
        if not isinstance(size, int):  # a web server that gives no length: where the last header lies is unknown
            raise CountProblem("its storage gives no size")
        with contextlib.ExitStack() as stack:
            if WEB_PROTOCOLS.isdisjoint(protocols(fs)):
                def read_at(offset: int, length: int) -> bytes:
                    return with_retries(lambda: fs.cat_file(fs_path, start=offset, end=offset + length),
                                        f"read {path}")
            else:
                read_at = _web_ranges(fs, fs_path, path, size, stack)
            try:
                keys = shard_keys(read_at, size, budget, join_metadata, pace, path, named)
            except Compressed:
                pace.done(path, size)
                pace.decompressing(size, local=False)
                # fetched whole, in one request, which a web server that ignores Range answers too: within the bound
                data = with_retries(lambda: fs.cat_file(fs_path), f"read {path}")
                keys = stream_keys(_Watched(io.BytesIO(data), pace), join_metadata, named)  # type: ignore[arg-type]
    shard = relative_id(path, unit.root)
    known = set(done)
    earlier = earlier_ids(shard, named, known.__contains__) if named and known else {}
    return Counter(earlier.get(key) or f"{shard}/{text_name(key)}" for key in keys)


def _web_ranges(fs: Any, fs_path: str, path: str, size: int,
                stack: contextlib.ExitStack) -> Callable[[int, int], bytes]:
    """Ranged reads of a web server's file (`stack` closes it), bounded where the server ignores Range: fsspec's HTTP
    file keeps at most about a MiB of the start of a whole-file answer, and refuses (ValueError) one for a range past
    the start before its body is read, as its streamed file (a server that says Accept-Ranges: none) refuses a seek
    back. `fs.cat_file` read every answer whole: the whole shard."""
    opened = with_retries(lambda: fs.open(fs_path, "rb", block_size=BLOCK, cache_type="none", size=size),
                          f"open {path}")
    file = stack.enter_context(opened)

    def read_at(offset: int, length: int) -> bytes:
        def once() -> bytes:
            file.seek(offset)
            return file.read(length)

        try:
            return with_retries(once, f"read {path}")
        except ValueError as err:
            raise CountProblem("its storage does not serve byte ranges") from err

    return read_at


@dataclass(frozen=True)
class ShardKeys:
    """What the headers of a run's tar shards say: the keys left to read in all (an image or a reject each) and those
    already done, or, where any shard cannot be counted, `left` None and why."""

    left: int | None
    done: int = 0
    why: str | None = None
    # a dry run's (`count_keys(partial=True)`), where compressed shards named so are past the bound by their sizes alone:
    # those not decompressed, (id, size) each, and what the other shards' headers say, (shards, keys left, done)
    uncounted: list[tuple[str, int]] = field(default_factory=list)
    counted: tuple[int, int, int] | None = None


def count_keys(units: Sequence[ReadUnit], fs_opts: dict[str, Any], done: Mapping[str, Sequence[str]],
               join_metadata: bool, budget: ReadBudget | None = None, partial: bool = False) -> ShardKeys:
    """The keys of the tar shards `units` (`count_shard`) less those `done` gives for each (path -> its done ids),
    READERS shards at a time (one at a time on a store of one connection, `concurrent_reads`), their reads taken from
    `budget` (a new one if none is given). Unknown where any shard cannot be counted: a total of some shards alone
    would be too small. `partial` (a dry run): where the shards named compressed are past the bound by their sizes
    alone, those that fit in it (in order) and the plain ones are counted all the same, and the rest named with their
    sizes (`ShardKeys.uncounted`, `.counted`), so that the dry run says what is known; the total stays unknown."""
    if not units:
        return ShardKeys(0)
    from concurrent.futures import ThreadPoolExecutor

    budget = budget if budget is not None else ReadBudget()
    # a size not listed (a web server that sends no Content-Length) is not added up: its shard's count says so
    named = [u for u in units if u.paths[0].lower().endswith(COMPRESSED_NAMES) and u.sizes and u.sizes[0] is not None]
    local = local_file_path(units[0].paths[0]) is not None
    bound = COMPRESSED_BYTES_LOCAL if local else COMPRESSED_BYTES_REMOTE
    uncounted: list[ReadUnit] = []
    if sum(u.sizes[0] for u in named) > bound:
        why = (f"{relative_id(named[-1].paths[0], named[-1].root)}: "
               + past_bound(named[-1].sizes[0], sum(u.sizes[0] for u in named), local))
        if not partial:  # decompressing those before the bound is reached would be time spent for no count
            return ShardKeys(None, why=why)
        fitting = 0
        for unit in named:
            if fitting + unit.sizes[0] <= bound:
                fitting += unit.sizes[0]
            else:
                uncounted.append(unit)
        left_out = [(relative_id(u.paths[0], u.root), u.sizes[0]) for u in uncounted]
        # by path, not by `in` on the list: comparing each unit with each left out took minutes for 20,000 shards
        not_counted = {u.paths[0] for u in uncounted}
        why, units = uncounted_note(left_out, local), [u for u in units if u.paths[0] not in not_counted]
        if not units:
            return ShardKeys(None, why=why, uncounted=left_out, counted=(0, 0, 0))
    sizes = [size for u in units for size in (u.sizes or [None])]
    # judged by the listed sizes: without all of them, the budget alone bounds the walk
    pace = Pace(sum(sizes) if all(isinstance(size, int) for size in sizes) else None, budget)  # type: ignore[arg-type]

    def counted(unit: ReadUnit) -> tuple[int, int] | str | None:
        """The unit's keys (left, done), why they cannot be counted, or None where another shard's could not be."""
        problem = None
        try:
            if pace.given_up:
                return None
            already = set(done.get(unit.paths[0], ()))
            ids = count_shard(unit, fs_opts, budget, join_metadata, pace, already)
        except _GivenUp:
            return None
        except CountProblem as err:
            problem = f"{relative_id(unit.paths[0], unit.root)}: {err}"
        except Exception as err:  # noqa: BLE001 - its read task says what is wrong with it; here only the count
            problem = f"{relative_id(unit.paths[0], unit.root)}: its headers could not be read ({describe(err)})"
        else:
            if not any(n > 1 and id_ in already for id_, n in ids.items()):
                return sum(id_ not in already for id_ in ids), sum(id_ in already for id_ in ids)
            # one of them may be new: a reject of its own
            problem = f"{relative_id(unit.paths[0], unit.root)}: two of its keys give an id done before, told " \
                      "apart as it is read"
        pace.give_up()
        return problem

    threads = concurrent_reads(units[0].paths[0], READERS)
    with ThreadPoolExecutor(min(threads, len(units)), thread_name_prefix="tar-count") as pool:
        results = list(pool.map(counted, units))
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        return ShardKeys(None, why=problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    left, already = sum(r[0] for r in results if isinstance(r, tuple)), sum(r[1] for r in results if isinstance(r, tuple))
    if uncounted:
        return ShardKeys(None, why=why, uncounted=left_out, counted=(len(units), left, already))
    return ShardKeys(left, already)
