"""The output data set as it stands on storage: its part files and the ids in them, its records (_job.json,
_summary.json), and where it lies.

A run reads it before any work (the ids already done; an output that is a file, or whose data/ or rejects/ holds the
input, is refused) and makes it whole after its pipeline (each id once across data/ and rejects/, one type per column
of data/); --overwrite clears it. These are rules of the output, whichever run reads or writes it, not of one run's
pipeline (pipeline.job) or of where its actors go (pipeline.placement).
"""

from __future__ import annotations

import datetime
import json
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from glob import has_magic  # what fsspec's rm tests before it expands a path
from typing import Any

import fsspec
import fsspec.implementations.local
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.arrow_values import text_ready_values
from pipeline.changes import INPUTS_DIR, read_parquet_bytes
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE
from pipeline.ledger import LEDGER_DIR
from pipeline.refresh import REFRESH_DIR
from pipeline.stages import (
    DATA_DIR,
    REJECTED_AT,
    REJECTS_DIR,
    REJECTS_SCHEMA,
    data_column_order,
    promoted_type,
    text_column,
    write_parquet_atomic,
)
from pipeline.storage import (
    AZURE_BLOB_PROTOCOLS,
    TEMP_PREFIX,
    concurrent_calls,
    describe,
    filesystem_class,
    make_parent_dirs,
    move_into_place,
    protocols,
    storage_path,
    temporary_name,
    with_protocol,
    with_retries,
)

SUMMARY_FILE, JOB_FILE = "_summary.json", "_job.json"
# Each run's summary, kept: _summary.json is the last run's, so a scheduled job kept no account of the runs before it.
RUNS_DIR = "_runs"


def run_history_path(out: str, started: float, run_id: str) -> str:
    """Where a run's summary is kept in the output's history: RUNS_DIR/<UTC start>-<run id>.json, whose names sort
    by when the runs started, one a run (its lease's run id tells apart two that started together)."""
    when = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{out.rstrip('/')}/{RUNS_DIR}/{when}-{run_id[:8]}.json"


def _fs(uri: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    return storage_path(uri, storage_options)  # not url_to_fs, which reads 'out::x' as the chain 'out' :: 'x'


def read_json(uri: str, storage_options: dict[str, Any]) -> dict[str, Any] | None:
    """One of the output's JSON records (_job.json, _summary.json), or None when it is not there."""
    fs, path = _fs(uri, storage_options)
    if not with_retries(lambda: fs.exists(path), f"stat {uri}"):
        return None
    try:
        record = json.loads(with_retries(lambda: fs.cat_file(path), f"read {uri}"))
    except json.JSONDecodeError as err:  # said as bare "JSONDecodeError: Expecting value ...", naming no file
        raise ValueError(f"{uri} is not valid JSON ({describe(err)}); the job writes it whole, so something else "
                         "damaged it: restore it, or move it out of the output and run again") from err
    if not isinstance(record, dict):  # said as "TypeError: 'list' object is not a mapping", naming no file
        raise ValueError(f"{uri} holds a JSON {type(record).__name__}, not the object the job writes there, so something "
                         "else wrote it: restore it, or move it out of the output and run again")
    return record


def write_json(uri: str, payload: dict[str, Any], storage_options: dict[str, Any]) -> None:
    """Write a JSON record whole: under a hidden temporary name, then moved into place."""
    fs, path = _fs(uri, storage_options)
    tmp = temporary_name(path)  # one a later run knows to remove if this write is killed before the move
    data = json.dumps(payload, indent=2, default=str).encode()

    def put() -> None:
        make_parent_dirs(fs, posixpath.dirname(path))
        fs.pipe_file(tmp, data)

    with_retries(put, f"write {uri}")
    # Not fs.mv: fsspec's generic move (s3fs) expands glob characters, so under an output like 'run[1]' it failed.
    # A temporary copy that cannot be deleted stops the job here, before any work, rather than after it.
    move_into_place(fs, tmp, path, len(data), f"write {uri}", tolerate_leftover=False)


def list_parts(output: str, folder: str, storage_options: dict[str, Any]) -> list[str]:
    fs, root = _fs(output.rstrip("/") + "/" + folder, storage_options)
    # fsspec keeps one filesystem object per set of options and s3fs caches its listings in it: without this, the
    # end-of-run listing would show the output as planning saw it and miss every file this run wrote.
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    # names from the detailed listing: fsspec's FTP file system gives bare file names without detail
    names = (info["name"] for info in fs.ls(root, detail=True))
    return sorted(p for p in names if posixpath.basename(p).startswith("part-") and p.endswith(".parquet"))


class DamagedPart(ValueError):
    """A part-*.parquet file under data/ or rejects/ that is not a Parquet file with an id column: cut short, emptied,
    or put there by another tool. This job writes each part file whole or not at all (`write_parquet_atomic`)."""

    def __init__(self, path: str, err: BaseException) -> None:
        reason = describe(err).strip().rstrip(":.")
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def is_damage(err: BaseException) -> bool:
    """Whether reading a part file's footer and ids failed on the file's bytes, not on the storage: Arrow's
    ArrowInvalid (no footer, 0 bytes), a KeyError (no id column), or the bare OSError Arrow's Parquet reader gives
    for bytes it cannot decode ("Couldn't deserialize thrift"). Storage errors have their own types or an errno."""
    return isinstance(err, pa.ArrowInvalid | KeyError) or (type(err) is OSError and err.errno is None)


def _part_index(fs: fsspec.AbstractFileSystem, path: str) -> tuple[list[str], pa.Schema]:
    """The ids in one part file, and its schema. Read through a seekable file, so only the footer and the id column
    are fetched, not the images: every run lists the whole output's ids (resume, and the end-of-run check) and must
    not download it. A file that is not a readable part file raises `DamagedPart`."""
    def once() -> tuple[list[str], pa.Schema]:
        with fs.open(path, "rb") as f:
            try:
                part = pq.ParquetFile(f, pre_buffer=DRIVER_READS["pre_buffer"])
                ids = part.read(columns=["id"], use_threads=DRIVER_READS["use_threads"]).column("id").to_pylist()
            except Exception as err:  # noqa: BLE001 - classified: the file's bytes, or the storage
                if is_damage(err):
                    raise DamagedPart(path, err) from err
                raise
            return ids, part.schema_arrow

    return with_retries(once, f"read the ids of {path}")


def _part_ids(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    return _part_index(fs, path)[0]


# Part files whose ids are read at once. Each read is a few small requests (open, footer, id column) that wait on
# storage's latency, not on the driver: one at a time, an output of 400 part files on S3 took 400 x 4 round trips at
# the start of every run (output_ids) and again at its end (deduplicate_output).
INDEX_READERS = 16


def _part_indexes(fs: fsspec.AbstractFileSystem, paths: list[str],
                  damaged: list[DamagedPart] | None = None) -> Iterator[tuple[str, list[str], pa.Schema]]:
    """(path, ids, schema) of each part file, in the order given, read INDEX_READERS at a time; at most that many
    files' ids are held ahead of the caller. With `damaged`, an unreadable part file is added to it and skipped
    (so that one error can name them all); without, its `DamagedPart` is raised."""
    def index(path: str) -> tuple[list[str], pa.Schema] | None:
        try:
            return _part_index(fs, path)
        except DamagedPart as err:
            if damaged is None:
                raise
            damaged.append(err)
            return None

    for path, found in read_ahead(index, paths, concurrent_calls(fs, INDEX_READERS)):
        if found is not None:
            yield (path, *found)


def read_ahead(read: Callable[[str], Any], paths: list[str], readers: int = INDEX_READERS) -> Iterator[tuple[str, Any]]:
    """(path, read(path)) in the order given, `readers` reads at a time and at most that many results ahead (give
    `concurrent_calls(fs, INDEX_READERS)`: one at a time where the file system cannot take more)."""
    if len(paths) <= 1 or readers <= 1:
        yield from ((path, read(path)) for path in paths)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(readers, len(paths)), thread_name_prefix="part-index") as pool:
        pending: list[tuple[str, Any]] = []
        try:
            for path in paths:
                pending.append((path, pool.submit(read, path)))
                if len(pending) > readers:
                    path, future = pending.pop(0)
                    yield path, future.result()
            while pending:
                path, future = pending.pop(0)
                yield path, future.result()
        finally:
            for _, future in pending:  # an error or a caller that stopped early: no reads left running
                future.cancel()


def _rejected_at(fs: fsspec.AbstractFileSystem, path: str, wanted: set[str]) -> dict[str, int]:
    """When the rows of the `wanted` ids in one rejects part file were made (microseconds since the epoch, the newest
    where a file holds an id twice). Ids whose rows have no time are left out; the caller has checked that the file
    has the column. Only the id and rejected_at columns are fetched."""
    def once() -> pa.Table:
        with fs.open(path, "rb") as f:
            part = pq.ParquetFile(f, pre_buffer=DRIVER_READS["pre_buffer"])
            return part.read(columns=["id", REJECTED_AT], use_threads=DRIVER_READS["use_threads"])

    table = with_retries(once, f"read the reject times of {path}")
    column = table.column(REJECTED_AT)
    if not pa.types.is_timestamp(column.type):
        return {}  # not a column this program wrote: no time, as in an older version's file
    # any unit or zone (a file rewritten by another tool; a naive time is taken as UTC): the instant in microseconds
    micros = column.cast(pa.timestamp("us", column.type.tz), safe=False).cast(pa.int64()).to_pylist()
    times: dict[str, int] = {}
    for id_, t in zip(table.column("id").to_pylist(), micros, strict=True):
        if id_ in wanted and t is not None and t > times.get(id_, t - 1):
            times[id_] = t
    return times


def _newest_rejects(fs: fsspec.AbstractFileSystem, index: list[tuple[str, list[str], pa.Schema]], mine: set[str],
                    skip: Callable[[str], bool]) -> dict[str, int]:
    """For each id with reject rows in more than one of the rejects/ part files `index` (in the order the check takes
    them: this run's first, then by name), the position of the file whose row is kept: a file this run wrote, then
    the newest row (rejected_at; a row without it, written by an older version, is oldest), then the first file.
    `skip`: whether an id loses every reject row anyway (in data/, or resolved). Only the files holding such an id are
    read again, for their times: a run killed before its end-of-run check is rare, and every other run reads the
    id column alone."""
    first: dict[str, int] = {}
    holders: dict[str, list[int]] = {}
    for pos, (_, ids, _) in enumerate(index):
        for id_ in set(ids):
            if skip(id_):
                continue
            if id_ in first:
                holders.setdefault(id_, [first[id_]]).append(pos)
            else:
                first[id_] = pos
    if not holders:
        return {}
    wanted: dict[int, set[str]] = {}
    for id_, positions in holders.items():
        for pos in positions:
            wanted.setdefault(pos, set()).add(id_)
    readable = [pos for pos in wanted if REJECTED_AT in index[pos][2].names]
    times: dict[int, dict[str, int]] = {}
    if readable:
        from concurrent.futures import ThreadPoolExecutor

        # several at once, as the ids are (_part_indexes): each read waits on storage's latency
        with ThreadPoolExecutor(min(concurrent_calls(fs, INDEX_READERS), len(readable)),
                                thread_name_prefix="reject-times") as pool:
            times = dict(zip(readable, pool.map(lambda pos: _rejected_at(fs, index[pos][0], wanted[pos]), readable),
                             strict=True))

    def rank(pos: int, id_: str) -> tuple[bool, bool, int, int]:
        # this run's rows first: newer than any earlier run's by the order runs hold the lease, whatever the clocks
        # of the machines that stamped them say
        t = times.get(pos, {}).get(id_)
        return posixpath.basename(index[pos][0]) in mine, t is not None, t or 0, -pos

    return {id_: max(positions, key=lambda pos, i=id_: rank(pos, i)) for id_, positions in holders.items()}


def _read_part(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    return read_parquet_bytes(with_retries(lambda: fs.cat_file(path), f"read {path}"))


# The driver's Parquet reads are small (ids, one part file at a time): no Arrow thread pools for them. Arrow's pool
# threads reading from a Python file object can abort the interpreter as it exits ("terminate called without an
# active exception", apache/arrow#34314; see changes.read_parquet_bytes): a dry run that had printed its whole plan
# exited with SIGABRT. ParquetFile(..., pre_buffer=False).read(use_threads=False) starts none; pq.read_table does.
DRIVER_READS = {"use_threads": False, "pre_buffer": False}


@dataclass(frozen=True)
class OutputIndex:
    """The output's part files as one reading of their id columns found them: each file's name relative to the output
    ('data/part-....parquet', 'rejects/part-....parquet', by name in each folder) with its ids in row order. A run's
    planning reads every part file's ids once (`output_index`) and asks this for what it needs of them again (the done
    ids; with --refresh-changed, the files holding the rows of the ids it refreshes): at 10^6 rows each reading is
    seconds, and on an object store a few requests a part file."""

    parts: tuple[tuple[str, list[str]], ...] = ()

    def ids(self) -> tuple[set[str], set[str]]:
        """The ids in data/, and those in rejects/ and not in data/ (as `output_ids`)."""
        purified: set[str] = set()
        rejected: set[str] = set()
        for name, ids in self.parts:
            (purified if name.startswith(f"{DATA_DIR}/") else rejected).update(ids)
        return purified, rejected - purified

    def holding(self, ids: set[str] | frozenset[str]) -> dict[str, list[str]]:
        """The part files that hold a row of each of `ids` (as `part_files_holding`)."""
        return _holding(((name, column) for name, column in self.parts), ids)


def _holding(parts: Iterable[tuple[str, list[str]]], ids: set[str] | frozenset[str]) -> dict[str, list[str]]:
    """id -> the names of the `parts` ((name, ids) of each part file) holding a row of it, for each of `ids` held. An id
    held in one file (nearly all) gets that file's one list, shared: a list per id was 10^6 lists for a refresh of a
    Parquet file of 10^6 rows. The lists are not to be changed."""
    held: dict[str, list[str]] = {}
    for name, column in parts:
        one = [name]
        for id_ in ids.intersection(column):
            have = held.get(id_)
            if have is None:
                held[id_] = one
            elif name not in have:
                held[id_] = [*have, name]
    return held


def output_index(output: str, storage_options: dict[str, Any],
                 damaged: list[DamagedPart] | None = None) -> OutputIndex:
    """The ids of every part file of the output (`OutputIndex`); only their id columns are fetched. Part files that
    cannot be read are named all together in one JobError (see `damaged_parts_error`), or, with `damaged`, added to
    it and left out (as `output_ids`)."""
    fs, _ = _fs(output, storage_options)
    parts: list[tuple[str, list[str]]] = []
    unreadable: list[DamagedPart] = []
    for folder in (DATA_DIR, REJECTS_DIR):
        for path, column, _ in _part_indexes(fs, list_parts(output, folder, storage_options), unreadable):
            parts.append((f"{folder}/{posixpath.basename(path)}", column))
    if unreadable and damaged is None:
        raise damaged_parts_error(output, unreadable)
    if damaged is not None:
        damaged.extend(unreadable)
    return OutputIndex(tuple(parts))


def output_ids(output: str, storage_options: dict[str, Any],
               damaged: list[DamagedPart] | None = None) -> tuple[set[str], set[str]]:
    """The ids in the output's data/, and those in its rejects/ and not in data/ (the end-of-run check keeps an id
    found in both only in data/). Part files that cannot be read are named all together in one JobError (see
    `damaged_parts_error`): a run over them would purify again, or lose track of, the inputs whose rows they held.
    With `damaged`, they are added to it instead and the readable files' ids returned (a dry run of --overwrite,
    which deletes them all the same)."""
    return output_index(output, storage_options, damaged).ids()


class DamagedOutput(JobError):
    """Part files of the output that cannot be read (`damaged_parts_error`): its message names them and says what to
    do, which is not "run the same command again" (that stops on them too)."""


def damaged_parts_error(output: str, damaged: list[DamagedPart]) -> DamagedOutput:
    """One error naming every unreadable part file (the first 10), why, and what to do."""
    names = sorted(d.path for d in damaged)
    by_path = {d.path: d.reason for d in damaged}
    shown = "; ".join(f"{posixpath.basename(posixpath.dirname(p))}/{posixpath.basename(p)} ({by_path[p]})" for p in names[:10])
    more = f"; and {len(names) - 10} more" if len(names) > 10 else ""
    return DamagedOutput(
        f"output {output} holds {len(names)} part file(s) that cannot be read as Parquet with an id column: {shown}"
        f"{more}. This job writes a part file whole or not at all, so these were cut short or emptied by something "
        "else, or written by another tool. Move them out of the output (keep them if they may hold rows you need) and "
        "run again: the inputs whose rows they held are read and purified again (pass --incremental if the output "
        "holds a complete run)")


def part_file_ids(output: str, storage_options: dict[str, Any], names: Iterable[str]) -> set[str]:
    """The ids in the named part files ('data/part-....parquet', as write_stage names them); only their id columns
    are fetched."""
    fs, root = _fs(output, storage_options)
    found: set[str] = set()
    for _, ids, _ in _part_indexes(fs, [posixpath.join(root, name) for name in names]):
        found.update(ids)
    return found


def part_files_holding(output: str, storage_options: dict[str, Any], ids: set[str]) -> dict[str, list[str]]:
    """The part files ('data/part-....parquet', 'rejects/part-....parquet') that hold a row of each of `ids` (the
    old rows a --refresh-changed run replaces: `pipeline.refresh`); only their id columns are fetched. A run's planning
    asks its `OutputIndex` instead, which has them already."""
    fs, _ = _fs(output, storage_options)
    parts = ((f"{folder}/{posixpath.basename(path)}", column)
             for folder in (DATA_DIR, REJECTS_DIR)
             for path, column, _ in _part_indexes(fs, list_parts(output, folder, storage_options)))
    return _holding(parts, ids)


def _superseded_rows(indexes: dict[str, list[_PartIndex]], journal: dict[str, list[str]]) -> dict[str, set[str]]:
    """Part file -> the ids whose rows in it are old ones that a --refresh-changed run replaced (`pipeline.refresh`):
    the journal names the file for the id, and some file it does not name holds a row of the id (the new one)."""
    if not journal:
        return {}
    holders: dict[str, list[tuple[str, str]]] = {}  # id -> (path, name relative to the output) of each file holding it
    for folder in (DATA_DIR, REJECTS_DIR):
        for path, ids, _ in indexes[folder]:
            name = f"{folder}/{posixpath.basename(path)}"
            # not set(ids).intersection(journal): that walks the whole journal for each part file (a dict is not a
            # set), 8 CPU s for a journal of 10^5 ids over 4,000 part files, minutes for one of 10^6
            for id_ in {i for i in ids if i in journal}:
                holders.setdefault(id_, []).append((path, name))
    drop: dict[str, set[str]] = {}
    for id_, held in holders.items():
        old = set(journal[id_])
        if any(name not in old for _, name in held):
            for path, name in held:
                if name in old:
                    drop.setdefault(path, set()).add(id_)
    return drop


def drop_superseded_rows(output: str, storage_options: dict[str, Any], journal: dict[str, list[str]]) -> int:
    """Apply a --refresh-changed run's journal (`pipeline.refresh`): remove the old rows of each id it names that has
    a new row, each part file written again without them (or removed when it keeps none). Returns how many ids had
    their old rows removed. The caller holds the output's lease."""
    fs, _ = _fs(output, storage_options)
    indexes = _index_both_folders(output, storage_options, fs, set())
    drop = _superseded_rows(indexes, journal)
    for folder in (DATA_DIR, REJECTS_DIR):
        for path, ids, _ in indexes[folder]:
            if path in drop:
                _rewrite_part(fs, path, [i not in drop[path] for i in ids], [], {}, storage_options)
    return len({id_ for ids in drop.values() for id_ in ids})


@dataclass(frozen=True)
class OutputRows:
    """What the end-of-run check found: rows removed as duplicates, the rows each folder then holds, and the schema of
    every data/ part file (for `unify_output_types`, which then need not open them again)."""

    duplicates_removed: int
    purified: int
    rejected: int
    data_schemas: dict[str, pa.Schema]
    # earlier rejects that this run read again (--retry-rejects), whose old rows were removed: now purified, or
    # rejected again (the new reject, with today's reason, is kept)
    retried_purified: int = 0
    retried_rejected: int = 0
    stale_rejects_removed: int = 0  # reject rows made untrue by this run's reading (`resolved`), removed
    # rejects/ part files rewritten with the columns they lacked (an older version's, without rejected_at), as nulls
    rejects_files_upgraded: int = 0
    # ids whose old rows a --refresh-changed run's new ones replaced (`pipeline.refresh`), and those of its journal
    # left with their old row alone (no new one: a member the new read of its container no longer gave)
    refreshed: int = 0
    refresh_left: frozenset[str] = frozenset()


def deduplicate_output(output: str, storage_options: dict[str, Any], written: Iterable[str] = (),
                       retried: set[str] | frozenset[str] = frozenset(),
                       resolved: set[str] | frozenset[str] = frozenset(),
                       journal: dict[str, list[str]] | None = None) -> OutputRows:
    """Make every id appear once across data/ and rejects/ (data wins, then, in rejects/, the files this run wrote,
    then the newest row by its rejected_at, then the first file by name), drop the rejects in `resolved`, and count
    the rows that remain.

    Duplicates come from a write retried with a different batch after its first attempt had landed; rewriting the
    later file without them restores the exactly-once invariant. With --retry-rejects, an earlier reject that this
    run read again is in a file this run wrote (`written`, names as write_stage gives them: 'rejects/part-...') as
    well as in an older one: the older row goes, and is not counted as a duplicate. An id of `retried` (the rejects
    the run set out to read again) in a file this run wrote is counted as retried: purified now, or rejected again.
    `resolved`: rejects that this run's reading made untrue: the '#unreadable' of a container it read to its end, and
    the one reject an older version gave a tar shard's numbered names ('s.tar/cat' for cat.0.jpg, cat.1.jpg, ...).
    The newest reject row wins over the first by name for a --retry-rejects run killed after writing an input's new
    reject and before this check: a later run without the flag must keep that new reason, not the old one.
    Every rejects/ file is also given the columns it lacks (`rejects_columns`: rejected_at, as nulls, in a file an
    older version wrote), in the same whole-file write that replaces it atomically, so the folder reads as one table
    whichever file a reader takes its columns from. `journal`: a --refresh-changed run's (`pipeline.refresh`): the old
    rows of an id it names that has a new row go first, as replaced (not duplicates), before the rules above. The
    caller holds the output's lease: no other run writes it.
    """
    fs, root = _fs(output, storage_options)
    mine = {posixpath.basename(name) for name in written}
    indexes = _index_both_folders(output, storage_options, fs, mine)
    superseded = _superseded_rows(indexes, journal or {})
    progress = _DedupProgress()
    for folder in (DATA_DIR, REJECTS_DIR):
        _deduplicate_folder(fs, folder, indexes[folder], mine, retried, resolved, progress, storage_options, superseded)
    # Counted from this run's files, not from the old rows removed: a batch of retried inputs that is rejected again
    # in the same grouping is written under the same part name (a hash of its ids), over the old file, and leaves no
    # old row to remove.
    retried_out = set(retried) & progress.fresh
    now_purified = len(retried_out & progress.purified)
    for folder, rows in zip((DATA_DIR, REJECTS_DIR), progress.rows, strict=True):
        if not rows:  # data/ too: a refresh whose every purified input now gives a reject left its rows none
            _remove_empty_folder(fs, posixpath.join(root, folder))
    # a refreshed id's new row is in a file this run wrote, beside its old one (removed now), or written over it (a
    # part file of the same ids has the same name): either way its old row no longer counts
    refreshed = set(journal or {}) & (progress.fresh | {id_ for ids in superseded.values() for id_ in ids})
    # kept: those with no new row whose old row stays (not one this run's reading made out of date, removed above)
    return OutputRows(progress.removed, progress.rows[0], progress.rows[1], progress.schemas, now_purified,
                      len(retried_out) - now_purified, len(progress.resolved_out), progress.upgraded,
                      len(refreshed), frozenset(set(journal or {}) - refreshed - progress.resolved_out))


_PartIndex = tuple[str, list[str], pa.Schema]  # a part file's path, its ids in row order, its schema


@dataclass
class _DedupProgress:
    """What `deduplicate_output` has seen and done so far, folder by folder (data/ first)."""

    seen: set[str] = field(default_factory=set)  # ids kept, in either folder
    fresh: set[str] = field(default_factory=set)  # ids in files this run wrote
    purified: set[str] = field(default_factory=set)  # ids in data/
    resolved_out: set[str] = field(default_factory=set)  # rejects of `resolved` removed
    removed: int = 0  # duplicate rows removed
    upgraded: int = 0  # rejects/ files given the columns they lacked
    rows: list[int] = field(default_factory=list)  # rows each folder holds once checked: data/, then rejects/
    schemas: dict[str, pa.Schema] = field(default_factory=dict)  # data/ part files kept -> their schemas


def _index_both_folders(output: str, storage_options: dict[str, Any], fs: fsspec.AbstractFileSystem,
                        mine: set[str]) -> dict[str, list[_PartIndex]]:
    """Each folder's part files, in the order the check takes them, with their ids and schemas. Both folders are
    indexed before any file is rewritten, so that part files damaged during the run (emptied or cut short by something
    else) are all named at once, with what to do, and none is rewritten on a partial view: the first one found
    stopped the run naming it alone, and its end said every file was whole."""
    damaged: list[DamagedPart] = []
    indexes: dict[str, list[_PartIndex]] = {}
    for folder in (DATA_DIR, REJECTS_DIR):
        parts = list_parts(output, folder, storage_options)
        if folder == REJECTS_DIR:
            # this run's rejects first: a retried input rejected again keeps today's reason, not the old one
            parts = sorted(parts, key=lambda p: posixpath.basename(p) not in mine)
        indexes[folder] = list(_part_indexes(fs, parts, damaged))
    if damaged:
        raise damaged_parts_error(output, damaged)
    return indexes


def _deduplicate_folder(fs: fsspec.AbstractFileSystem, folder: str, indexed: list[_PartIndex], mine: set[str],
                        retried: set[str] | frozenset[str], resolved: set[str] | frozenset[str],
                        progress: _DedupProgress, storage_options: dict[str, Any],
                        superseded: dict[str, set[str]] | None = None) -> None:
    """Rewrite or remove the part files of one folder that hold rows to drop or lack columns, and count the rows the
    folder then holds. `superseded`: part file -> ids whose rows in it a --refresh-changed run replaced, dropped
    before the other rules look at the file (`_superseded_rows`)."""
    before = len(progress.seen)
    superseded = superseded or {}
    kept_at: dict[str, int] = {}  # rejects/: id in several files -> the position of the file that keeps it
    if folder == REJECTS_DIR:
        # all of rejects/ indexed before any file is rewritten: which row of an id stays depends on every file
        live = [(path, [i for i in ids if i not in superseded.get(path, ())], schema) for path, ids, schema in indexed]
        kept_at = _newest_rejects(fs, live, mine, lambda i: i in progress.purified or i in resolved)
    # rejects/: the columns each file is to have, so that the folder reads as one table (`rejects_columns`)
    columns = rejects_columns([schema for _, _, schema in indexed]) if folder == REJECTS_DIR else {}
    for pos, (path, all_ids, schema) in enumerate(indexed):
        old = superseded.get(path, set())
        ids = [i for i in all_ids if i not in old] if old else all_ids
        if posixpath.basename(path) in mine:
            progress.fresh.update(ids)
        dup, gone = _rows_to_drop(folder, pos, ids, progress, kept_at, resolved)
        progress.seen.update(i for i in ids if i not in gone)
        if folder == DATA_DIR:
            progress.purified.update(ids)
        lacking = _columns_to_mend(schema, columns)
        if dup or gone or old or lacking:
            # an old row of a reject this run read again: replaced, not a duplicate
            again = {i for i in dup if i in retried and i in progress.fresh} if folder == REJECTS_DIR else set()
            progress.resolved_out.update(gone)
            progress.removed += sum(i in dup and i not in again for i in ids)  # `ids`: less the superseded rows
            keep = [i not in dup and i not in gone and i not in old for i in all_ids]
            if not _rewrite_part(fs, path, keep if dup or gone or old else None, lacking, columns, storage_options):
                continue
            progress.upgraded += bool(lacking)
        if folder == DATA_DIR:
            progress.schemas[path] = schema
    progress.rows.append(len(progress.seen) - before)


def _rows_to_drop(folder: str, pos: int, ids: list[str], progress: _DedupProgress, kept_at: dict[str, int],
                  resolved: set[str] | frozenset[str]) -> tuple[set[str], set[str]]:
    """The ids whose rows a part file (the `pos`-th of `folder`) is to lose: duplicates (in data/, an id an earlier
    data/ file holds; in rejects/, an id in data/, or whose row another rejects/ file keeps), and the rejects this
    run's reading made untrue (`resolved`)."""
    if folder == DATA_DIR:
        return {i for i in ids if i in progress.seen}, set()
    gone = {i for i in ids if i in resolved}
    return {i for i in ids if i in progress.purified or kept_at.get(i, pos) != pos} - gone, gone


def _rewrite_part(fs: fsspec.AbstractFileSystem, path: str, keep: list[bool] | None, lacking: list[str],
                  columns: dict[str, pa.DataType], storage_options: dict[str, Any]) -> bool:
    """Write the part file at `path` again with only the rows `keep` marks (None: all) and the columns it lacks
    (`lacking`), or remove it when it keeps no row. Returns whether the file is still there."""
    if keep is not None and not any(keep):
        try:  # rm_file, not rm: rm expands glob characters in the output's path
            with_retries(lambda p=path: fs.rm_file(p), f"remove {path}")
        except FileNotFoundError:
            pass  # already gone (a retried delete that had landed)
        return False
    table = _read_part(fs, path)
    # the whole file read, changed and moved into place in one write: no row is ever missing from it
    table = _mend_columns(table.filter(keep) if keep is not None else table, lacking, columns)
    write_parquet_atomic(table, with_protocol(fs, path), storage_options)
    return True


def _remove_empty_folder(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove `path` when it is a folder holding nothing: rejects/ once every reject in it has been purified on a
    retry, or data/ once a --refresh-changed run replaced each of its rows by a reject, read as a table with no
    columns (`pd.read_parquet(OUTPUT/rejects)['id']`: KeyError). Without it, it reads as an output that never had
    such a row (no folder), as on an object store, which has no empty folders."""
    try:
        if fs.isdir(path) and not fs.ls(path, detail=False):
            fs.rmdir(path)
    except (OSError, NotImplementedError):
        pass  # left as it is: an empty folder loses nothing


def rejects_columns(schemas: list[pa.Schema]) -> dict[str, pa.DataType]:
    """The columns every rejects/ part file is to have, with their types: this version's (`REJECTS_SCHEMA`), and any
    other that some file holds, as `common_column_types` gives it. Readers of a folder take one file's columns:
    pandas, pyarrow.dataset and pq.read_table dropped rejected_at from every file when the first by name was an
    older version's, which lacks it, and kept it when that file came later."""
    columns = {name: t for name, t in common_column_types(schemas).items() if name not in REJECTS_SCHEMA.names}
    columns.update((f.name, f.type) for f in REJECTS_SCHEMA)
    return columns


def _columns_to_mend(schema: pa.Schema, columns: dict[str, pa.DataType]) -> list[str]:
    """The `columns` that a part file lacks or holds with another type. A timestamp column (rejected_at) held as
    something that is not a time, written by another tool, is left as it is: casting it could lose its values."""
    wrong = []
    held = dict(zip(schema.names, schema.types, strict=True))
    for name, t in columns.items():
        if name not in held:
            wrong.append(name)
            continue
        have = held[name]
        if have != t and not (pa.types.is_timestamp(t) and not (pa.types.is_timestamp(have) or pa.types.is_null(have))):
            wrong.append(name)
    return wrong


def _mend_columns(table: pa.Table, names: list[str], columns: dict[str, pa.DataType]) -> pa.Table:
    """`table` with columns `names` added as nulls or given their type in `columns`; every value is kept (a time of
    another unit or zone as the same instant, a naive one taken as UTC; others made strings as their JSON text)."""
    for name in names:
        t = columns[name]
        if name not in table.column_names:
            table = table.append_column(pa.field(name, t), pa.nulls(table.num_rows, t))
            continue
        column = table.column(name)
        if pa.types.is_null(column.type):
            cast = pa.nulls(len(column), t)
        elif pa.types.is_timestamp(t) and pa.types.is_timestamp(column.type):
            zoned = column if column.type.tz else column.cast(pa.timestamp(column.type.unit, "UTC"))
            cast = zoned.cast(t, safe=False)  # only a part of a microsecond can go
        elif pa.types.is_string(t):
            cast = text_column(text_ready_values(column))
        else:
            cast = column.cast(t)
        table = table.set_column(table.schema.get_field_index(name), pa.field(name, t), cast)
    return table


def common_column_types(schemas: list[pa.Schema]) -> dict[str, pa.DataType]:
    """The columns that some part file lacks or holds with another type, each with the one type every file can be
    given: the non-null type where the others are all-null columns, Arrow's permissive promotion where one exists
    (int64 and double -> double), else string; null for a column all null wherever it is held. Readers of a folder
    take the first file's columns and types: they drop a column that file lacks and fail to cast another file's values
    to its types."""
    seen: dict[str, set[pa.DataType]] = {}
    holding: Counter[str] = Counter()  # column -> how many files hold it (schema.names is a new list at each call:
    for schema in schemas:  # looking a name up in it for each column took time quadratic in the columns)
        for f in schema:
            seen.setdefault(f.name, set()).add(f.type)
        holding.update(set(schema.names))
    common = {}
    for name, types in seen.items():
        typed = {t for t in types if not pa.types.is_null(t)}
        everywhere = holding[name] == len(schemas)
        if len(types) == 1 and everywhere:
            continue
        # all null where held: the files that lack it get it as nulls (a reader of the folder dropped it otherwise)
        common[name] = (promoted_type(typed) or pa.string()) if typed else pa.null()
    return common


def unify_output_types(output: str, storage_options: dict[str, Any],
                       schemas: dict[str, pa.Schema] | None = None) -> dict[str, str]:
    """Give every data/ part file the same columns with the same types, in the same order, so the output reads as one
    data set.

    Each file's writer infers its pass-through columns from its own rows: a `.cls` label can be int64 in one file
    and string in another (3 here, "cat" there), and a .json sidecar key can be in some files only. Only files
    that lack a column or hold it with another type are rewritten: a missing column is added as nulls, and a
    column made string keeps every value (others as their JSON text). A promotion whose cast would lose a value (a
    uint64 above int64's range beside an int64, an int64 beyond 2**53 beside a double) makes the column string too:
    Arrow refuses such a cast, and every run, the same command again included, failed here on the same files.
    Where the files hold their columns in more than one order (a column added here, which went after a file's last),
    each is given the writer's (`data_column_order`): readers that take a folder's files as one Parquet schema refuse
    files whose columns differ in order (a `_metadata` summary of their footers, as Dask writes one: "AppendRowGroups
    requires equal schemas"; Polars before 1.8 on an object store). Files that agree on an order keep it.
    `schemas`: part file -> schema, when the caller has read them (`deduplicate_output`); else they are read here.
    Returns column -> the type given to it."""
    fs, _ = _fs(output, storage_options)
    if schemas is None:
        damaged: list[DamagedPart] = []
        parts = list_parts(output, DATA_DIR, storage_options)
        schemas = {path: schema for path, _, schema in _part_indexes(fs, parts, damaged)}
        if damaged:  # every one named, with what to do
            raise damaged_parts_error(output, damaged)
    schemas = dict(schemas)
    as_text: set[str] = set()
    while True:
        common = common_column_types(list(schemas.values()))
        common.update((name, pa.string()) for name in as_text)
        order = _column_order(list(schemas.values()))
        if not common and order is None:
            return {}
        try:
            _give_types(fs, schemas, common, order, storage_options)
        except _LossyCast as err:  # files rewritten so far are given text in the next pass, by their new schemas
            as_text.add(err.name)
            continue
        return {name: str(t) for name, t in common.items()}


def columns_differing_in_case(schemas: Iterable[pa.Schema]) -> list[list[str]]:
    """The data/ columns whose names differ only in case (each such set sorted, the sets by name): DuckDB, Spark, Hive,
    Athena and BigQuery take column names without case, and fail on such a file or read one column for the other.
    The readers name each row's columns apart where they meet in one row (a .json `Label` beside a .cls `label` is
    json_Label); these come from different inputs (a Parquet file's `Label`, another's `label`) or from one input's
    own columns (a Parquet file holding both), which the job keeps as they are."""
    spellings: dict[str, set[str]] = {}
    for schema in schemas:
        for name in schema.names:
            spellings.setdefault(name.lower(), set()).add(name)
    return sorted(sorted(names) for names in spellings.values() if len(names) > 1)


class _LossyCast(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _column_order(schemas: list[pa.Schema]) -> list[str] | None:
    """The order every data/ part file's columns are to be in (the writer's, `data_column_order`, of the columns any
    file holds) when the files hold them in more than one order; None when they hold them in one."""
    if len({tuple(schema.names) for schema in schemas}) <= 1:
        return None
    return data_column_order({name for schema in schemas for name in schema.names})


def _give_types(fs: fsspec.AbstractFileSystem, schemas: dict[str, pa.Schema], common: dict[str, pa.DataType],
                order: list[str] | None, storage_options: dict[str, Any]) -> None:
    """Rewrite each part file in `schemas` that lacks one of the `common` columns, holds it with another type or holds
    its columns in another `order` (None: any), and update `schemas` as each lands. Raises _LossyCast, before writing
    that file, for a column whose cast fails."""
    for path, schema in schemas.items():
        have = dict(zip(schema.names, schema.types, strict=True))
        wrong = [n for n, t in common.items() if n not in have or have[n] != t]
        if not wrong and (order is None or schema.names == order):
            continue
        table = _read_part(fs, path)
        # the columns gathered, and the table made once: appending or setting one column at a time copies the
        # table's column list each time, quadratic in the columns (a .json sidecar can give thousands)
        columns = dict(zip(table.column_names, table.columns, strict=True))
        fields = dict(zip(table.column_names, table.schema, strict=True))
        for name in wrong:
            fields[name] = pa.field(name, common[name])
            if name not in columns:
                columns[name] = pa.nulls(table.num_rows, common[name])
                continue
            column = columns[name]
            if pa.types.is_null(column.type):
                cast = pa.nulls(len(column), common[name])
            elif pa.types.is_string(common[name]):
                cast = text_column(text_ready_values(column))
            else:
                try:
                    cast = column.cast(common[name])
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise _LossyCast(name) from err
            columns[name] = cast
        names = order if order is not None else list(columns)
        table = pa.Table.from_arrays([columns[n] for n in names],
                                     schema=pa.schema([fields[n] for n in names], table.schema.metadata))
        write_parquet_atomic(table, with_protocol(fs, path), storage_options)
        schemas[path] = table.schema


def _local_output_problem(root: str) -> str | None:
    """Why a local output cannot be written, asked of the system without writing (a dry run writes nothing): the
    nearest of it and its parents that is there is a file, or a folder this user may not write in (no permission, a
    read-only mount). A dry run said nothing stops such a run, which then stopped at once ("cannot write to output")."""
    path = os.path.abspath(root)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if os.path.islink(path) and not os.path.exists(path):  # a link to something gone: os.path.isdir says False
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    # the effective ids, which the writes use (a setuid launcher's real ones may differ), where the system tells them
    if not os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"{path} is not writable by this user (no permission, or a read-only file system)"
    return None


def output_reached(out: str, storage_options: dict[str, Any]) -> None:
    """Make the output's file system, naming the output where that fails: an FTP file system connects to its server as
    it is made, and an output server that did not answer stopped the run with 'error: [Errno 111] Connection refused'
    alone. fsspec keeps the instance, which the output's later uses get."""
    try:
        _fs(out, storage_options)
    except OSError as err:
        raise JobError(f"cannot reach the server of output {out}: {describe(err)}; is it up, and are its host and port "
                       "right?") from err


def check_output_location(out: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The output's file system and path, refusing an output that is a file or in a bucket that does not exist."""
    fs, root = _fs(out, storage_options)
    if fs.exists(root) and not fs.isdir(root):
        raise JobError(f"output {out} is a file; give a folder or prefix (it is created when missing)")
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        problem = _local_output_problem(root)
        if problem is not None:
            raise JobError(f"cannot write to output {out}: {problem}")
    if not isinstance(fs, fsspec.implementations.local.LocalFileSystem) and not fs.exists(root):
        if root.startswith("/"):
            # A file system of folders from a root (HDFS, WebHDFS, FTP) creates the missing ones, but its server must
            # answer; exists() says False for a server that does not, which read as a missing bucket. Asked about the
            # output itself: "not found" is an answer, and no folder above it need be listable.
            try:
                fs.info(root)
            except FileNotFoundError:
                pass
            except Exception as err:  # noqa: BLE001 - any failure to reach it stops the run, named
                raise JobError(f"cannot reach the server of output {out}: {describe(err)}; is it up, and are its host "
                               "and port right?") from err
            return fs, root
        # An object store creates the prefix but not the bucket: a misspelt bucket must stop the dry run too.
        bucket = root.strip("/").split("/", 1)[0]
        if bucket and not fs.exists(bucket):
            what = "container" if AZURE_BLOB_PROTOCOLS & set(protocols(fs)) else "bucket"  # Azure's word
            raise JobError(f"the {what} of output {out} ({bucket}) does not exist or cannot be seen with these "
                           "credentials; create it or fix --output")
    return fs, root


def _remove(fs: fsspec.AbstractFileSystem, path: str, recursive: bool) -> None:
    """fs.rm(path), with a path holding glob characters ('run[1]/data') taken as it is written: s3fs's rm expands
    them, so that --overwrite of s3://bucket/run[1] deleted s3://bucket/run1's data/ and summary, not its own."""
    if not has_magic(path):
        fs.rm(path, recursive=recursive)
        return
    for name in fs.find(path) if recursive else [path]:
        fs.rm_file(name)
    if recursive and fs.exists(path):  # a local folder, now empty
        fs.rmdir(path)


def clear_output(out: str, storage_options: dict[str, Any]) -> None:
    """Delete what --overwrite replaces: the summary, data/, rejects/, the job record, the record of containers
    read whole, that of the inputs' stamps, the runs' summaries and a --refresh-changed run's journal (not the lease).
    The summary first: an overwrite stopped half-way (SIGTERM, SIGKILL while a large data/ is deleted) leaves an
    unfinished run, which any later run resumes, not a "complete" one missing rows."""
    fs, root = _fs(out, storage_options)
    if fs.exists(root):
        for name in (SUMMARY_FILE, DATA_DIR, REJECTS_DIR, JOB_FILE, LEDGER_DIR, INPUTS_DIR, RUNS_DIR, REFRESH_DIR):
            if fs.exists(posixpath.join(root, name)):
                _remove(fs, posixpath.join(root, name),
                        recursive=name in (DATA_DIR, REJECTS_DIR, LEDGER_DIR, INPUTS_DIR, RUNS_DIR, REFRESH_DIR))




def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def same_storage_paths(input_uri: str, output_uri: str,
                       storage_options: dict[str, Any]) -> tuple[Callable[[str], str], str, str] | None:
    """(normalise, input path, output path) when both are on the same kind of storage, else None (they cannot
    nest). normalise resolves local paths (symlinks, ..) and strips a remote one's protocol and trailing slash. Told by
    the file systems' classes (`filesystem_class`): made, an FTP file system logs in, for nothing here."""
    in_fs, out_fs = filesystem_class(input_uri), filesystem_class(output_uri)
    if in_fs is not out_fs:
        return None
    in_path, out_path = in_fs._strip_protocol(input_uri), out_fs._strip_protocol(output_uri)
    local = issubclass(in_fs, fsspec.implementations.local.LocalFileSystem)
    folders: dict[str, str] = {}  # a folder's real path, found once for all the files listed in it

    def real_path(path: str) -> str:
        # os.path.realpath(path) with each folder resolved once: realpath looks up every component of every path
        # (8 lstat calls for a file 7 folders deep), which made planning an output inside an input of 10^6 files
        # 100 s longer (bench/scale_bench.py plan-inside). The file's own name is still looked up: it may be a link.
        folder, name = os.path.split(path)
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = os.path.realpath(folder)
        full = os.path.join(real, name)
        return os.path.realpath(full) if name in ("", ".", "..") or os.path.islink(full) else full

    def normal(path: str) -> str:
        return real_path(in_fs._strip_protocol(path)) if local else in_fs._strip_protocol(path).rstrip("/")

    return normal, normal(in_path), normal(out_path)


def input_inside_written_folder(input_uri: str, output_uri: str, storage_options: dict[str, Any]) -> str | None:
    """Why the input cannot be read from where it is, or None: an input inside the output's data/ or rejects/ would
    read the job's own part files back as input."""
    same = same_storage_paths(input_uri, output_uri, storage_options)
    if same is None:
        return None
    _, in_path, out_path = same
    for folder in (DATA_DIR, REJECTS_DIR):
        if _is_under(in_path, posixpath.join(out_path, folder)):
            return (f"--input {input_uri} lies inside the {folder}/ folder the job writes under --output {output_uri}; "
                    "the job would read its own output back as input")
    return None


def output_inside_written_folder(output_uri: str, storage_options: dict[str, Any]) -> str | None:
    """Why the output cannot be written where it is, or None: inside another output's data/ or rejects/ folder (that
    folder has a _job.json beside it), its part files would read as rows of that data set (`pd.read_parquet` reads a
    folder's subfolders too) and its rejects as that run's. One lookup per 'data' or 'rejects' in the path."""
    fs, path = _fs(output_uri, storage_options)
    parts = path.rstrip("/").split("/")
    for j in range(1, len(parts)):
        if parts[j] in (DATA_DIR, REJECTS_DIR):
            owner = "/".join(parts[:j]) or "/"
            job_file = posixpath.join(owner, JOB_FILE)
            if with_retries(lambda job_file=job_file: fs.exists(job_file), f"stat {job_file}"):
                return (f"--output {output_uri} lies inside the {parts[j]}/ folder of another run's output "
                        f"({with_protocol(fs, owner)}), whose readers would take this run's files for rows of that "
                        "data set; choose an output outside it")
    return None


def is_written_file(path: str) -> bool:
    """A file the job writes in data/ or rejects/: a part file, or a hidden temporary one."""
    name = posixpath.basename(path)
    return name.startswith(".") or (name.startswith("part-") and name.endswith(".parquet"))


def _output_under_input(input_uri: str, output_uri: str,
                        storage_options: dict[str, Any]) -> tuple[Callable[[str], str], str] | None:
    """(a listed path's normal form, the output's) when the output lies inside (or is) the input folder, else None."""
    same = same_storage_paths(input_uri, output_uri, storage_options)
    if same is None:
        return None
    normal, in_path, out_path = same
    return (normal, out_path) if _is_under(out_path, in_path) else None


def output_inside_input(input_uri: str, output_uri: str,
                        storage_options: dict[str, Any]) -> Callable[[str], bool] | None:
    """When the output lies inside (or is) the input folder: a test of whether a listed input path is one of the
    output's own data/ or rejects/ files, which are not input."""
    if (under := _output_under_input(input_uri, output_uri, storage_options)) is None:
        return None
    normal, out_path = under
    written = [posixpath.join(out_path, DATA_DIR), posixpath.join(out_path, REJECTS_DIR)]

    def inside(path: str) -> bool:
        real = normal(path)  # once, not once a folder
        return any(_is_under(real, folder) for folder in written)

    return inside


def output_files_inside_input(input_uri: str, output_uri: str,
                              storage_options: dict[str, Any]) -> Callable[[str], bool] | None:
    """When the output lies inside (or is) the input folder: a test of whether a listed input path is a file the job
    keeps in its output (its summary, job record, lease and ledger, their temporaries, anything in data/ or rejects/,
    the record of inputs and the runs' summaries).
    Such files are hidden names or part files; the listing must not count them as the user's hidden inputs skipped."""
    if (under := _output_under_input(input_uri, output_uri, storage_options)) is None:
        return None
    normal, out_path = under
    folders = [posixpath.join(out_path, name)
               for name in (DATA_DIR, REJECTS_DIR, LEDGER_DIR, INPUTS_DIR, RUNS_DIR, REFRESH_DIR)]
    names = {SUMMARY_FILE, JOB_FILE, LEASE_FILE}

    def own(path: str) -> bool:
        real = normal(path)
        if posixpath.dirname(real) == out_path:  # only the job's own names: the output may be the input folder itself
            name = posixpath.basename(real)
            return name in names or name.startswith(TEMP_PREFIX)
        return any(_is_under(real, folder) for folder in folders)

    return own
