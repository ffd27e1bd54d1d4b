"""How many records TFRecord files hold, known before they are read (the progress total, the dry run), exactly or not
at all: a total too small would show a run more done than it is.

- A shard of a data set TFDS prepared takes its count from the `dataset_info.json` beside it (`tfds_metadata`), one
  small read a folder, when that file's split is the one the listing gives: every shard it names listed, and their
  sizes adding up to what a plain shard of its records takes (`numBytes`, the records' data, and 16 bytes a record of
  framing). A shard rewritten since (records added or taken out) changes that sum, so the listing no longer matches
  and the shards are counted from their headers instead; so does a split of which this run reads only some shards.
- Any other plain (uncompressed) file is counted from its records' 12-byte headers alone (a length and its CRC),
  each record's data stepped over, not read: on a local disk one small read a record (os.pread; 0.6 s for 100,000
  records of 1 KB, warm cache), on an object store one ranged request of 64 KiB, which holds the headers of the small records
  that fit in it; at most MAX_READS such requests for all the files of a run (16 files at a time), its Arrow IPC
  files' headers with them (`read_budget`), past which the files are left uncounted rather than slow to plan.
- A GZIP or ZLIB file cannot be counted without decompressing it whole: it is not counted (`CountProblem`), nor is a
  file whose headers do not add up to its size (damaged, cut short, or changed since it was listed)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.sources.crc32c import masked_crc32c
from pipeline.sources.read_budget import BudgetSpent, ReadBudget
from pipeline.sources.tfds_metadata import (
    DATASET_INFO,
    Shard,
    TfdsProblem,
    listed_shards,
    metadata_folder,
    read_json,
)
from pipeline.sources.units import ReadUnit
from pipeline.storage import access_denied, concurrent_reads, local_file_path, storage_path, with_retries

HEADER_BYTES = 12  # a record's length (8) and its masked CRC (4); its data's CRC (4) follows the data
FRAMING_BYTES = 16
BLOCK = 64 * 2**10  # what one ranged request takes on an object store
READERS = 16  # files counted at once, as the progress total reads Parquet footers (`job.progress_total`)

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> the bytes there, fewer at the file's end


class CountProblem(ValueError):
    """A TFRecord file whose records cannot be counted before it is read, and why."""


def count_framed(read_at: ReadAt, size: int, block: int, budget: ReadBudget | None = None) -> int:
    """The records of the plain TFRecord file of `size` bytes that `read_at` reads, from their headers alone:
    `block` bytes a read (the headers within them taken from the same read), each read taken from `budget` if one
    is given. CountProblem for a file that is not plain TFRecord (its first header's CRC does not match: GZIP, ZLIB or
    damage), a damaged length, or headers that do not end where the file does."""
    at = n = 0
    start, held = 0, b""
    while at < size:
        if not start <= at or at + HEADER_BYTES > start + len(held):
            if budget is not None:
                try:
                    budget.take()
                except BudgetSpent as err:
                    raise CountProblem(str(err)) from err
            start, held = at, read_at(at, max(block, HEADER_BYTES))
            if len(held) < min(HEADER_BYTES, size - at):
                raise CountProblem(f"it is shorter than listed ({at + len(held):,} of {size:,} bytes)")
        head = held[at - start : at - start + HEADER_BYTES]
        if len(head) < HEADER_BYTES:
            raise CountProblem(f"it ends inside record {n}'s header")
        if masked_crc32c(head[:8]) != int.from_bytes(head[8:], "little"):
            raise CountProblem("it is compressed (GZIP or ZLIB), which is counted only by reading it whole" if n == 0
                               else f"record {n}'s length does not match its CRC (damaged)")
        at += HEADER_BYTES + int.from_bytes(head[:8], "little") + 4
        n += 1
    if at != size:
        raise CountProblem(f"its last record runs past its end ({at:,} of {size:,} bytes)")
    return n


def count_file(path: str, fs_opts: dict[str, Any], size: int | None, budget: ReadBudget) -> int:
    """The records of the TFRecord file at `path` (`count_framed`): a local file a small read a header, none of them
    taken from `budget`; on any other storage a ranged request of BLOCK bytes at a time, each taken from it."""
    local = local_file_path(path)
    if local is not None:
        fd = os.open(local, os.O_RDONLY)
        try:
            return count_framed(lambda offset, length: os.pread(fd, length, offset), os.fstat(fd).st_size,
                                HEADER_BYTES)
        finally:
            os.close(fd)
    fs, fs_path = storage_path(path, fs_opts)
    if size is None:
        size = with_retries(lambda: fs.size(fs_path), f"stat {path}")
    if not isinstance(size, int):  # a web server that gives no length: where the headers end is unknown
        raise CountProblem("its storage gives no size")
    known: int = size

    def read_at(offset: int, length: int) -> bytes:
        end = min(offset + length, known)
        return b"" if end <= offset else with_retries(lambda: fs.cat_file(fs_path, start=offset, end=end),
                                                      f"read {path}")

    return count_framed(read_at, known, BLOCK, budget)


def count_records(units: Sequence[ReadUnit], fs_opts: dict[str, Any],
                  budget: ReadBudget | None = None) -> dict[str, int] | None:
    """The records of each of `units` (TFRecord files), by path, READERS files at a time, or None where any of them
    cannot be counted (a compressed file, damage, a storage error, the requests of `budget` spent: a new one if none
    is given): a total of some files alone would be too small. The file's reading says what is wrong with it."""
    if not units:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    budget = budget if budget is not None else ReadBudget()
    try:
        known = tfds_counts(units, fs_opts)

        def count(unit: ReadUnit) -> int:
            path = unit.paths[0]
            return known[path] if path in known else count_file(path, fs_opts, unit.sizes[0] if unit.sizes else None,
                                                                budget)

        # one at a time on FTP/SFTP (`concurrent_calls`)
        threads = concurrent_reads(units[0].paths[0], READERS)
        with ThreadPoolExecutor(min(threads, len(units)), thread_name_prefix="tfrecord-count") as pool:
            return dict(zip([u.paths[0] for u in units], pool.map(count, units), strict=True))
    except Exception:  # noqa: BLE001 - uncounted, whatever the reason: the read task says it
        return None


def tfds_counts(units: Sequence[ReadUnit], fs_opts: dict[str, Any]) -> dict[str, int]:
    """The counts of those of `units` (TFRecord files) that a dataset_info.json beside them gives (see the module's
    docstring), by path: one read of each of their folders' dataset_info.json. A folder without one, or with one
    that is not as TFDS writes it, gives none."""
    by_folder: dict[str, list[ReadUnit]] = {}
    for unit in units:
        folder = metadata_folder(unit.paths[0])
        if folder is not None:
            by_folder.setdefault(folder, []).append(unit)
    counts: dict[str, int] = {}
    for folder, found in by_folder.items():
        try:
            info = read_json(folder, DATASET_INFO, fs_opts)
            shards = listed_shards(info) if info is not None else {}
        except (TfdsProblem, FileNotFoundError):
            continue
        except Exception as err:  # noqa: BLE001 - refused (PermissionError, gcsfs's 'Forbidden', Azure's 403): its shards counted alone
            if not access_denied(err):
                raise
            continue
        sizes = {posixpath.basename(u.paths[0]): u.sizes[0] if u.sizes else None for u in found}
        # a split checked once for all its shards (checked for each, 10,000 shards took 13 s), by its shards' tuple,
        # one a split (`listed_shards`), not its name: a file TFDS did not write may give two splits one name
        as_listed: dict[int, bool] = {}
        for name, size in sizes.items():
            shard = shards.get(name)
            if shard is None or size is None:
                continue
            if id(shard.split_shards) not in as_listed:
                as_listed[id(shard.split_shards)] = _split_as_listed(shard, sizes)
            if as_listed[id(shard.split_shards)]:
                counts[posixpath.join(folder, name)] = shard.records
    return counts


def _split_as_listed(shard: Shard, sizes: dict[str, int | None]) -> bool:
    """Whether every shard of `shard`'s split is listed, plain, of the records dataset_info.json gives: their sizes
    add up to the split's records' data and their framing."""
    listed = [sizes.get(name) for name in shard.split_shards]
    return all(size is not None for size in listed) and \
        sum(listed) == shard.split_bytes + FRAMING_BYTES * shard.split_records  # type: ignore[arg-type]
