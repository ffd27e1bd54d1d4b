"""Inputs that changed, or went, since the output's rows of them were written.

A plain run adds to an output and takes no row out for a change: an id already in data/ or rejects/ is done, so an
image file re-uploaded under its name with new bytes, or a tar shard, Parquet file or zip archive rewritten in place,
keeps the rows made from its earlier version, and the run says so. --refresh-changed purifies those inputs again and
replaces their rows (`pipeline.refresh`): that run's record takes their new stamps once it ends complete, as for
`pending` below, and no later run reports them. To tell them, the output records, for each input it holds rows of,
what the listing said of the input's content (`sources.content_stamp`: size and ETag on an object store, size, mtime
and inode on a disk; for an image file joined to an image-folder metadata row, with that row's digest:
`sources.units.with_metadata_row`, so that a row edited, added or removed is a change of the image's input, that of a
file with no version too) when a run
set out to read it, and each later run compares that with its own listing:

- an image file whose id is done and whose stamp now differs changed since its row was written (purified: data/ holds
  the earlier bytes purified; rejected: the reject is about the earlier bytes), unless its bytes are still those its
  rows were made from: the planning reads it, and one whose sha256 is its rows' `source_sha256` (touched, copied over
  or restored with the same bytes, uploaded again in parts: another ETag) is no change, and the record takes its new
  stamp, so that it is read once (`same_bytes`). One whose bytes differ keeps its earlier stamp with the one it was
  read at noted after it (`DIFFERS`): it is read once too. One whose metadata row differs is changed unread; a
  reject's row is no part of it (a reject holds no metadata columns);
- a container (tar shard, Parquet file, zip archive) whose stamp differs, with done ids, is read again by the run
  (`pipeline.ledger`), its done ids skipped and the members added to it purified. Its rows hold no digest of the
  container, but each holds its member's: the planning reads it, and one that still gives each id with a row as that
  row was made (the same member bytes, `source_sha256`, and the same pass-through columns: grown by appended members,
  copied or uploaded again, rewritten with its members in another order) is no change, and the record takes its new
  stamp (`same_members`), as does its ledger entry, so that the run skips it unread when nothing was added. One with
  such a member gone or other changed since: its rows came from the earlier version (a member changed in place is
  not purified again by a plain run), and its record keeps the earlier stamp, noted with the one it was read at
  (`DIFFERS`), so that every later run says so too, without reading it again;
- an input whose rows are in the output and that the listing no longer shows went (deleted or renamed).

The record is `OUTPUT/_inputs/stamps.parquet` (id, kind, stamp; the input's location in its metadata), written whole
at the start of each run, before any image is read, so that the rows a run killed half-way wrote are covered too:
for an input read by this run, its stamp as this run's listing gave it (the bytes read are that version or a newer
one, so a change is never missed; an input replaced between the listing and its read has rows of the new bytes under
the earlier stamp: the next run's planning reads it, finds its rows' bytes or members, and takes the new stamp); a
done input keeps the stamp it had, and a changed one read again (--retry-rejects, --refresh-changed) keeps its earlier
stamp until the run ends complete (`starting_record`). An output written by a version before this record starts one
with the stamps of its first run (changes made before that are not seen), except for containers an earlier complete
run read whole, whose stamps `pipeline.ledger` kept; a record written before image files' stamps held their metadata
rows takes them as the listing gives them (`with_metadata_rows`). --overwrite deletes it with the rest; --input-moved
starts it again.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import hashlib
import io
import itertools
import json
import os
import posixpath
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.arrow_values import NanoTime, extension_python, python_rows
from pipeline.ledger import ContainerRead, container_ids
from pipeline.redaction import redact_uri_secrets
from pipeline.sources import LOOKALIKE, ReadUnit, path_of_id, read_unit, relative_id
from pipeline.sources.parquet_files import batch_rows
from pipeline.sources.units import METADATA_ROW, ROW_UNKNOWN
from pipeline.storage import (
    concurrent_calls,
    concurrent_reads,
    describe,
    make_parent_dirs,
    replace_file,
    storage_path,
    with_retries,
)

if TYPE_CHECKING:
    from pipeline.output import OutputIndex  # pipeline.output imports this module

INPUTS_DIR = "_inputs"
RECORD_FILE = "stamps.parquet"
# what a container's record holds where its earlier version's stamp is known only from pipeline.ledger's record
EARLIER = "earlier"
EXAMPLES = 5
# in the record's schema metadata: its image files' stamps hold their metadata rows' digests (`InputRecord.metadata_rows`)
METADATA_ROWS_KEY = "metadata_rows"


def read_parquet_bytes(data: bytes) -> pa.Table:
    """A whole Parquet file held in memory, read on this thread alone (the driver's small reads of the output).

    Not `pq.read_table`: its pyarrow.dataset path hands parts of the read to Arrow's thread pools, even with
    use_threads=False (and with pre_buffer=False too). Reading the record of the inputs that way, an Arrow pool
    thread dropped the reader's last reference, and with it the Python bytes, only once the interpreter had begun to
    exit; its wait for the GIL of a finishing interpreter ends the thread inside a destructor that may not throw:
    "terminate called without an active exception", SIGABRT, after a dry run with --incremental had printed its
    whole report (1 in 60 on 2 loaded cores). `ParquetFile` without pre_buffer reads synchronously: no thread."""
    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(use_threads=False)


def record_path(output: str) -> str:
    return f"{output.rstrip('/')}/{INPUTS_DIR}/{RECORD_FILE}"


@dataclass(frozen=True)
class InputRecord:
    """What the output's rows were made from: input id -> (kind, content stamp), and the input's location.
    `metadata_rows`: whether an image file's stamp holds its image-folder metadata row's digest when one was joined
    (`sources.with_metadata_row`); False in a record written before it did (`with_metadata_rows` takes it up)."""

    location: str | None
    stamps: dict[str, tuple[str, str]] = field(default_factory=dict)
    metadata_rows: bool = True


def read_record(output: str, storage_options: dict[str, Any], location: str | None) -> InputRecord | None:
    """The output's record of its inputs' stamps; None when it has none, when it was made from another location (an
    input that moved: every stamp differs) or when it cannot be read (said on stderr: changes go unseen this run)."""
    uri = record_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        data = with_retries(lambda: fs.cat_file(path), f"read {uri}")
        table = read_parquet_bytes(data)
        meta = table.schema.metadata or {}
        recorded = meta.get(b"location", b"").decode() or None
        rows_stamped = meta.get(METADATA_ROWS_KEY.encode()) == b"1"
        ids, kinds, stamps = (table.column(name).to_pylist() for name in ("id", "kind", "stamp"))
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - never fatal: this run then starts the record again
        print(redact_uri_secrets(f"zip-purify: ignoring {uri} ({describe(err)}); inputs changed since their rows were "
                                 "written are not looked for in this run", output), file=sys.stderr)
        return None
    if recorded != location:
        return None
    return InputRecord(location, {i: (k, s) for i, k, s in zip(ids, kinds, stamps, strict=True)}, rows_stamped)


def write_record(output: str, storage_options: dict[str, Any], record: InputRecord) -> None:
    """Replace the record with `record` (one PUT on an object store; a rename on a file system)."""
    uri = record_path(output)
    fs, path = storage_path(uri, storage_options)
    ids = sorted(record.stamps)
    table = pa.table({"id": pa.array(ids, pa.string()),
                      "kind": pa.array([record.stamps[i][0] for i in ids], pa.string()),
                      "stamp": pa.array([record.stamps[i][1] for i in ids], pa.string())})
    table = table.replace_schema_metadata({"location": record.location or "", METADATA_ROWS_KEY: "1"})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with_retries(lambda: make_parent_dirs(fs, posixpath.dirname(path)), f"write {uri}")
    replace_file(fs, path, buf.getvalue(), f"write {uri}")


@dataclass(frozen=True)
class ChangedInputs:
    """Inputs whose rows the output keeps though the input changed or went since (ids, sorted)."""

    purified: list[str] = field(default_factory=list)  # image files with a row in data/, changed since
    rejected: list[str] = field(default_factory=list)  # image files with a row in rejects/ (not retried), changed since
    containers: dict[str, int] = field(default_factory=dict)  # container id -> its rows, some from an earlier version
    gone_files: list[str] = field(default_factory=list)  # image files with a row, no longer in the input
    gone_containers: dict[str, int] = field(default_factory=dict)  # container id -> its rows, no longer in the input
    # changed inputs whose only rows this run reads again (--retry-rejects, --refresh-changed) -> their recorded
    # (earlier) stamp
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)
    # --refresh-changed: changed inputs this run purifies again -> the ids of their rows it replaces
    refreshed: dict[str, list[str]] = field(default_factory=dict)
    # of the changed image files with a row in data/ (kept or refreshed), those whose image-folder metadata row was
    # edited, added or removed since (their bytes changed or not)
    metadata_rows: list[str] = field(default_factory=list)
    # done image files whose stamp changed but whose bytes are those their rows were made from (`same_bytes`): not
    # changed, and the record takes their new stamp
    same_bytes: int = 0
    # done containers whose stamp changed but that still give every member their rows were made from as it was
    # (`same_members`): not changed, and the record takes their new stamp
    same_members: int = 0
    # how many image files and containers whose stamp changed the planning read to compare with their rows (those the
    # same and those found other; not those it could not read)
    compared_files: int = 0
    compared_containers: int = 0

    def summary(self) -> dict[str, Any]:
        """The summary's and the dry run's `changed_inputs`."""
        return {"image_files_purified": len(self.purified), "image_files_rejected": len(self.rejected),
                "containers": len(self.containers), "container_rows": sum(self.containers.values()),
                "examples": sorted([*self.purified, *self.rejected, *self.containers])[:EXAMPLES],
                # of the image files above and refreshed below: their row of an image-folder metadata file changed
                "image_files_metadata_changed": len(self.metadata_rows),
                "gone_image_files": len(self.gone_files), "gone_containers": len(self.gone_containers),
                "gone_container_rows": sum(self.gone_containers.values()),
                "gone_examples": sorted([*self.gone_files, *self.gone_containers])[:EXAMPLES],
                # --refresh-changed: the changed inputs this run purifies again, their rows replaced (not counted above)
                "refreshed_inputs": len(self.refreshed), "refreshed_rows": sum(map(len, self.refreshed.values())),
                "refreshed_examples": sorted(self.refreshed)[:EXAMPLES],
                # image files touched, copied over or uploaded again with the same bytes: read to tell, not changed
                "image_files_same_bytes": self.same_bytes,
                # tar/Parquet/zip files grown, copied or rewritten with each member of a row as it was: read to tell
                "containers_same_members": self.same_members,
                # read by the planning (a dry run's too) to compare with their rows, the same or not
                "image_files_compared": self.compared_files, "containers_compared": self.compared_containers}

    def refreshed_rows(self) -> set[str]:
        """The ids of the rows this run replaces (--refresh-changed)."""
        return {id_ for ids in self.refreshed.values() for id_ in ids}


def _rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


def changed_warning(changed: dict[str, Any], dry_run: bool = False) -> str | None:
    """The command line's warning on inputs changed since their rows were written (`ChangedInputs.summary`), with
    what to do; None when there are none."""
    files, rejected, containers = (changed.get(k, 0) for k in ("image_files_purified", "image_files_rejected",
                                                               "containers"))
    if not files + rejected + containers:
        return None
    what = []
    if files:
        rows = changed.get("image_files_metadata_changed", 0)
        # one stamp digests both: a sidecar's change said as a metadata row's alone sent a user with none looking for one
        metadata = (f"; {rows:,} of them for their row of an image-folder metadata file or their sidecar files (x.txt, "
                    "x.json beside x.jpg), edited, added or removed since, which data/ holds as they were") if rows else ""
        what.append(f"{files:,} image file(s) purified earlier (data/ holds their earlier version, purified{metadata})")
    if rejected:
        what.append(f"{rejected:,} image file(s) rejected earlier (the reject is about their earlier version)")
    if containers:
        what.append(f"{containers:,} tar/Parquet/zip file(s) replaced since, a member or row that rows were made from "
                    f"changed or gone (of their {_rows(changed.get('container_rows', 0))}, those written before were made "
                    "from the earlier version: a member or row changed in place is not read again, one added is)")
    keeps = "would keep" if dry_run else "kept"
    remedy = ("--retry-rejects reads the rejected ones again; " if rejected else "")
    return (f"warning: {'; '.join(what)}: these inputs changed under the same name since their rows were written, "
            f"and the output {keeps} those rows (e.g. {', '.join(changed.get('examples', []))}). A run adds to an "
            "output and keeps such rows: --refresh-changed purifies these inputs again and replaces their rows; "
            f"{remedy}--overwrite purifies the input as it is now. Counts: _summary.json changed_inputs")


def refreshed_note(changed: dict[str, Any]) -> str | None:
    """The dry run's note on the changed inputs a --refresh-changed run would purify again; None when none."""
    inputs, rows = changed.get("refreshed_inputs", 0), changed.get("refreshed_rows", 0)
    if not inputs:
        return None
    return (f"note: --refresh-changed: would purify {inputs:,} changed input(s) again, replacing their {rows:,} row(s) "
            f"(e.g. {', '.join(changed.get('refreshed_examples', []))})")


def compared_note(changed: dict[str, Any]) -> str | None:
    """The dry run's note on the inputs whose listing changed that its planning read to compare with their rows
    (`same_bytes`, `same_members`), and how many of them are no change; None when it read none."""
    files, containers = changed.get("image_files_compared", 0), changed.get("containers_compared", 0)
    if not files + containers:
        return None
    what = [f"{files:,} image file(s) ({changed.get('image_files_same_bytes', 0):,} with the bytes their rows were made "
            "from)"] * bool(files) + [
        f"{containers:,} tar/Parquet/zip file(s) ({changed.get('containers_same_members', 0):,} giving every member of "
        "their rows as it was)"] * bool(containers)
    return (f"note: the planning read {' and '.join(what)} whose listing changed since their rows were written, to "
            "compare with their rows: those as they were are no change; a run's planning reads them again (a dry run "
            "records nothing)")


def gone_note(changed: dict[str, Any]) -> str | None:
    """The command line's note on inputs with rows in the output that the input no longer holds; None when none."""
    files, containers = changed.get("gone_image_files", 0), changed.get("gone_containers", 0)
    if not files + containers:
        return None
    what = [f"{files:,} image file(s)"] * bool(files) + [
        f"{containers:,} tar/Parquet/zip file(s) ({_rows(changed.get('gone_container_rows', 0))})"] * bool(containers)
    return (f"note: {' and '.join(what)} with rows in the output are no longer in the input (deleted or renamed; e.g. "
            f"{', '.join(changed.get('gone_examples', []))}): their rows are kept; --overwrite drops them")


def find_changes(listed: list[ReadUnit], purified: set[str], rejected: set[str], retry: frozenset[str],
                 record: InputRecord | None, ledger: dict[str, ContainerRead], root: str | None,
                 refresh: bool = False) -> ChangedInputs:
    """The inputs of `listed` (the listing, less the output's own files) whose rows the output keeps though they
    changed since, the recorded inputs with rows that the listing no longer shows, and the changed inputs whose rows
    this run reads again (`retry`: --retry-rejects; with `refresh`, --refresh-changed, every changed one:
    `ChangedInputs.refreshed`) and whose record must keep the earlier stamp until it ends (`ChangedInputs.pending`).
    `root`: the input root the ids are relative to (None when nothing is listed: the record's location, where its ids
    are relative to, stands for it, so that inputs all gone are said gone and stay recorded). A container's
    '#unreadable' and look-alike rejects are not rows it refreshes: its reading to its end settles them
    (`job.stale_rejects`)."""
    recorded = record.stamps if record is not None else {}
    if root is None and record is not None:
        root = record.location
    changes = ChangedInputs()
    seen: set[str] = set()
    for unit in listed:
        if unit.kind != "files":
            continue
        for path, content in zip(unit.paths, unit.contents or (None,) * len(unit.paths), strict=True):
            id_ = relative_id(path, unit.root)
            seen.add(id_)
            before = recorded.get(id_)
            if content is None and before is not None and before[1].startswith(METADATA_ROW):
                content = METADATA_ROW  # no version, stamped for its metadata row before: now no metadata file names it
            if before is None or content is None or before[1] == content:
                continue
            if id_ not in purified and id_ not in rejected:
                continue
            if id_ not in purified and _without_rows(before[1]) == _without_rows(content):
                continue  # a reject holds no metadata columns: its image-folder metadata row is no part of it
            if id_ in purified and _metadata_row(before[1]) != _metadata_row(content):
                changes.metadata_rows.append(id_)
            if id_ not in purified and id_ in retry:
                changes.pending[id_] = before
            elif refresh:
                changes.pending[id_] = before
                changes.refreshed[id_] = [id_]
            elif id_ in purified:
                changes.purified.append(id_)
            else:
                changes.rejected.append(id_)
    containers = [u for u in listed if u.kind != "files"]
    held = container_ids(purified | rejected, containers) if containers else {}
    for unit in containers:
        path = unit.paths[0]
        id_ = relative_id(path, unit.root)
        seen.add(id_)
        rows = [i for i in held.get(path, []) if not i.endswith("#unreadable")]
        if not rows or not _container_changed(unit, recorded.get(id_), ledger.get(path)):
            continue
        kept = [i for i in rows if i not in retry]
        if kept and refresh:
            changes.refreshed[id_] = sorted(i for i in kept if LOOKALIKE not in i)
        if kept and not refresh:
            changes.containers[id_] = len(kept)
        else:  # its rows are all read again now: rejects retried, or refreshed
            changes.pending[id_] = recorded.get(id_, (unit.kind, EARLIER))
    if root is not None:
        gone = {id_: kind for id_, (kind, _) in recorded.items() if id_ not in seen}
        changes.gone_files.extend(i for i, kind in gone.items() if kind == "files" and (i in purified or i in rejected))
        units = [ReadUnit(kind, (path_of_id(id_, root),), root) for id_, kind in gone.items() if kind != "files"]
        for path, ids in (container_ids(purified | rejected, units) if units else {}).items():
            if ids:
                changes.gone_containers[relative_id(path, root)] = len(ids)
    changes.purified.sort()
    changes.rejected.sort()
    changes.gone_files.sort()
    changes.metadata_rows.sort()
    return changes


def _metadata_row(stamp: str) -> str:
    """The digest of the image-folder metadata row in an image file's stamp ('' for none), as its rows were made: of a
    stamp noted `DIFFERS`, the earlier one's."""
    return stamp.split(DIFFERS)[0].partition(METADATA_ROW)[2]


def _without_rows(stamp: str) -> str:
    """An image file's stamp, less the digests of its metadata rows: what it says of the file's bytes alone."""
    return DIFFERS.join(part.partition(METADATA_ROW)[0] for part in stamp.split(DIFFERS))


def with_metadata_rows(record: InputRecord | None, listed: Iterable[ReadUnit]) -> InputRecord | None:
    """`record` as this version writes it: one written before an image file's stamp held its metadata row's digest
    (`InputRecord.metadata_rows` False) takes, for each image file the listing gives a row's digest to, that digest
    into its recorded stamp, so that an output of such a version finds none of them changed for it (its rows were made
    with, or by an older version without, the metadata as it is now: a row edited before this run is not seen)."""
    if record is None or record.metadata_rows:
        return record
    stamps = dict(record.stamps)
    for unit in listed:
        if unit.kind != "files":
            continue
        for path, content in zip(unit.paths, unit.contents or (None,) * len(unit.paths), strict=True):
            before = stamps.get(relative_id(path, unit.root))
            if content is None or METADATA_ROW not in content or before is None or before[0] != "files" \
                    or METADATA_ROW in before[1]:
                continue
            row = content.partition(METADATA_ROW)[2]
            if row == ROW_UNKNOWN:  # nothing known to take (`rows_as_recorded`)
                continue
            stamps[relative_id(path, unit.root)] = ("files", DIFFERS.join(f"{part}{METADATA_ROW}{row}"
                                                                         for part in before[1].split(DIFFERS)))
    return InputRecord(record.location, stamps)


def rows_as_recorded(listed: list[ReadUnit], record: InputRecord | None) -> list[ReadUnit]:
    """`listed`, an image file whose metadata row is not known (ROW_UNKNOWN: a metadata file that cannot be joined may
    name it) stamped with the row its record holds: a file broken by an edit is no change of the images it may name,
    which keep their rows and columns (said on its reject) until it is fixed; then their rows as they are now tell."""
    recorded = record.stamps if record is not None else {}
    unknown = f"{METADATA_ROW}{ROW_UNKNOWN}"
    out = []
    for unit in listed:
        if unit.kind == "files" and any(c is not None and c.endswith(unknown) for c in unit.contents):
            contents = []
            for path, content in zip(unit.paths, unit.contents, strict=True):
                if content is not None and content.endswith(unknown):
                    before = recorded.get(relative_id(path, unit.root))
                    row = _metadata_row(before[1]) if before is not None and before[0] == "files" else ""
                    # '' for a file with no version and no row recorded: no stamp, as without a row
                    content = content[: -len(unknown)] + (f"{METADATA_ROW}{row}" if row else "") or None
                contents.append(content)
            unit = replace(unit, contents=tuple(contents))
        out.append(unit)
    return out


# Image files whose stamp changed that are read at once to hash them (`same_bytes`): each read waits on storage's
# latency, as the listing's requests do; the bytes are hashed as they come, HASH_CHUNK at a time.
HASH_READERS = 16
HASH_CHUNK = 4 * 2**20
# from this many files to hash on, the planning says so on stderr, and how far it got every PROGRESS_EVERY_S seconds
MANY_TO_HASH = 1000
PROGRESS_EVERY_S = 30.0
# in a file's recorded stamp, before the stamp at which its bytes were read and found to differ from its rows'
DIFFERS = ">"


class _Progress:
    """How far `same_bytes` or `same_members` got reading `total` inputs (`what`: "image file(s)") whose listing
    changed, said on stderr every PROGRESS_EVERY_S seconds when `said` (there are many of them)."""

    def __init__(self, said: bool, total: int, what: str) -> None:
        self.said, self.total, self.what = said, total, what
        self.last = time.monotonic()

    def read(self, done: int) -> None:
        if self.said and time.monotonic() - self.last >= PROGRESS_EVERY_S:
            self.last = time.monotonic()
            print(f"zip-purify: read {done} of {self.total} {self.what} whose listing changed", file=sys.stderr)


def same_bytes(listed: list[ReadUnit], purified: set[str], rejected: set[str], retry: frozenset[str],
               record: InputRecord | None, output: str, storage_options: dict[str, Any],
               index: OutputIndex | None = None,
               superseded: dict[str, set[str]] | None = None) -> tuple[dict[str, tuple[str, str]], int]:
    """The done image files whose listing's stamp differs from the recorded one, read to tell whether their bytes are
    still those their rows were made from (their sha256 against the `source_sha256` of their rows: data/'s for a
    purified id, rejects/' for a rejected one), with the stamp the record takes for each, and how many are the same.
    The same bytes (touched, copied over or restored, uploaded again in parts with another ETag): the stamp the
    listing gives now, so they are no change, and no later run reads them for this. Other bytes: the recorded stamp
    with the listing's noted after DIFFERS, still no match for the listing, so said changed, but not read again by a
    later run while the listing gives that stamp. Only image files: a tar, Parquet or zip file is compared member by
    member (`same_members`). The output's part files are read only when there is such a file, only those holding its
    rows (as `index`, the planning's reading of every part file's ids, names them; without it, every part file is
    listed and its id column read), and only their id and source_sha256 columns. A file that cannot be read now, whose
    rows hold no digest (rejected unread: over --max-image-mb) or no single one, or whose bytes are not as many as the
    listing said, is left out: said changed, as without this check, and read again by the next run. `superseded`: part
    file ('data/part-....parquet') -> the ids whose rows in it a stopped --refresh-changed run replaced, which this
    run's start removes (`_row_values`)."""
    recorded = record.stamps if record is not None else {}
    candidates: dict[str, tuple[str, int | None, str]] = {}  # id -> path, listed size, stamp now
    for unit in listed:
        if unit.kind != "files" or not unit.contents:
            continue
        for path, size, content in zip(unit.paths, unit.sizes or (None,) * len(unit.paths), unit.contents,
                                       strict=True):
            id_ = relative_id(path, unit.root)
            before = recorded.get(id_)
            if (content is None or before is None or before[0] != "files" or before[1] == content
                    or before[1].endswith(f"{DIFFERS}{content}")  # read at this stamp before: other bytes
                    or not (id_ in purified or (id_ in rejected and id_ not in retry))):
                continue
            if id_ in purified and _metadata_row(before[1]) != _metadata_row(content):
                continue  # its metadata row changed: a change of its input whatever its bytes
            if id_ not in purified and _without_rows(before[1]) == _without_rows(content):
                continue  # a reject whose bytes' stamp is the same: no change (`find_changes`)
            candidates[id_] = (path, size, content)
    if not candidates:
        return {}, 0
    digests = _row_digests(output, storage_options, set(candidates), purified, index, superseded)
    checked = {id_: digests[id_] for id_ in sorted(candidates) if digests and digests.get(id_)}
    if not checked:
        return {}, 0
    many = len(checked) >= MANY_TO_HASH
    if many:
        print(f"zip-purify: reading {len(checked)} image file(s) whose listing changed since their rows were written, "
              "to tell those rewritten with the same bytes (each is read once: the record then takes its new stamp)",
              file=sys.stderr)
    stamps: dict[str, tuple[str, str]] = {}
    same = 0
    ids = list(checked)
    progress = _Progress(many, len(ids), "image file(s)")
    # one at a time on FTP/SFTP (`concurrent_calls`)
    readers = concurrent_reads(candidates[ids[0]][0], HASH_READERS)
    with ThreadPoolExecutor(min(readers, len(ids)), thread_name_prefix="same-bytes") as pool:
        step = HASH_READERS * 64  # a batch at a time: no million futures held at once
        for start in range(0, len(ids), step):
            batch = ids[start:start + step]
            found = pool.map(lambda i: file_sha256(candidates[i][0], storage_options, candidates[i][1]), batch)
            for id_, digest in zip(batch, found, strict=True):
                now = candidates[id_][2]
                if digest == checked[id_]:
                    stamps[id_] = ("files", now)
                    same += 1
                elif digest is not None:
                    stamps[id_] = ("files", f"{recorded[id_][1].split(DIFFERS)[0]}{DIFFERS}{now}")
            progress.read(start + len(batch))
    if many:
        print(f"zip-purify: {same} of {len(ids)} image file(s) whose listing changed hold the same bytes as when "
              "their rows were written: not changed", file=sys.stderr)
    return stamps, same


def _row_digests(output: str, storage_options: dict[str, Any], ids: set[str], purified: set[str],
                 index: OutputIndex | None = None,
                 superseded: dict[str, set[str]] | None = None) -> dict[str, str | None] | None:
    """id -> the source_sha256 of its rows (data/'s for an id in `purified`, else rejects/'), for each of `ids` with
    rows, None where they hold none or more than one; None in all where a part file cannot be read (said on stderr).
    `index`, `superseded`: as `_row_values`."""
    return _row_values(output, storage_options, ids, purified, lambda folder: ("id", "source_sha256"),
                       lambda folder, row: row.get("source_sha256"),
                       "image files whose listing changed are said changed without reading them", index, superseded)


def _row_values(output: str, storage_options: dict[str, Any], ids: set[str], purified: set[str],
                columns: Callable[[str], tuple[str, ...] | None], value: Callable[[str, dict[str, Any]], Any],
                unread: str, index: OutputIndex | None = None,
                superseded: dict[str, set[str]] | None = None) -> dict[str, Any] | None:
    """id -> `value` of its rows (data/'s for an id in `purified`, else rejects/'; `value(folder, row)` of each row as
    a dict of `columns(folder)`, or of every column `ROW_COLUMNS_LEFT_OUT` leaves when that gives None), for each of
    `ids` with rows, None where its rows give more than one; None in all where a part file cannot be read (said on
    stderr, with `unread`: what that leaves). Only the part files that `index` (the planning's `output.OutputIndex`)
    says hold a row of one of `ids` in its folder are read; without it, every part file of the folders is listed and
    read (its id column, and the rest only where it holds some of `ids`). `superseded`: part file
    ('data/part-....parquet') -> the ids whose rows in it are left out: the old rows a stopped --refresh-changed run
    replaced, which this run's start removes (`refresh.Journal`); compared with, the new row and its old one differed,
    and the input was said changed."""
    from pipeline.output import list_parts  # pipeline.output imports this module
    from pipeline.stages import DATA_DIR, REJECTS_DIR

    wanted = {DATA_DIR: pa.array(sorted(ids & purified), pa.string()),
              REJECTS_DIR: pa.array(sorted(ids - purified), pa.string())}
    try:
        paths = _part_paths(output, storage_options, ids, purified, index) if index is not None else [
            (folder, path) for folder in (DATA_DIR, REJECTS_DIR) if len(wanted[folder])
            for path in with_retries(lambda f=folder: list_parts(output, f, storage_options),
                                     f"list {output}/{folder}")]
        fs, _ = storage_path(output, storage_options)
        with ThreadPoolExecutor(max(1, min(concurrent_calls(fs, HASH_READERS), len(paths))),
                                thread_name_prefix="row-digests") as pool:
            parts = list(pool.map(lambda item: [(id_, value(item[0], row)) for id_, row in _part_rows(
                fs, item[1], wanted[item[0]], columns(item[0]))
                if id_ not in (superseded or {}).get(f"{item[0]}/{posixpath.basename(item[1])}", ())], paths))
    except Exception as err:  # noqa: BLE001 - never fatal: the inputs stay said changed
        print(redact_uri_secrets(f"zip-purify: could not read the source_sha256 of {output}'s rows ({describe(err)}); "
                                 f"{unread}", output), file=sys.stderr)
        return None
    found: dict[str, set[Any]] = {}
    for part in parts:
        for id_, got in part:
            found.setdefault(id_, set()).add(got)
    return {id_: next(iter(v)) if len(v) == 1 else None for id_, v in found.items()}


def _part_paths(output: str, storage_options: dict[str, Any], ids: set[str], purified: set[str],
                index: OutputIndex) -> list[tuple[str, str]]:
    """(folder, path) of each part file that `index` says holds a row of one of `ids` in the folder of its rows:
    data/ for an id in `purified`, else rejects/."""
    from pipeline.stages import DATA_DIR, REJECTS_DIR

    names: set[str] = set()
    for id_, held in index.holding(ids).items():
        folder = DATA_DIR if id_ in purified else REJECTS_DIR
        names.update(name for name in held if name.startswith(f"{folder}/"))
    _, root = storage_path(output.rstrip("/"), storage_options)
    return [(name.split("/", 1)[0], posixpath.join(root, name)) for name in sorted(names)]


# The columns of a data/ row that its image's bytes give (the purified image, its size, what the decoder found):
# not read to compare a container's rows with its members (`same_members`)
ROW_COLUMNS_LEFT_OUT = frozenset({"image", "width", "height", "original_mode", "original_format", "original_frames",
                                  "psnr_vs_input_db", "downscale_factor"})


# A part file's rows are read for `_part_rows` at most this many at a time, fewer when they are large (about
# `sources.parquet_files.BATCH_BYTES` a batch), through a buffer of PART_READ_BUFFER bytes: the job writes pages of a
# few rows (stages.PAGE_ROWS), so a file of large pass-through cells is never held whole
PART_BATCH_ROWS = 64
PART_READ_BUFFER = 2**20


def _part_rows(fs: Any, path: str, wanted: pa.Array,
               columns: tuple[str, ...] | None) -> list[tuple[str, dict[str, Any]]]:
    """(id, row) of the rows of `wanted` ids in one part file, each row a dict of `columns` (None: all those
    `ROW_COLUMNS_LEFT_OUT` leaves), a column the file lacks left out. Its id column is read first: a file holding none
    of `wanted` gives nothing more, and of one that does, only the row groups holding them are read, PART_BATCH_ROWS
    rows at most at a time (`batch_rows`), and only the rows wanted kept (pass-through columns may hold a shard's masks,
    a Parquet data set's second image)."""
    def once() -> list[tuple[str, dict[str, Any]]]:
        with fs.open(path, "rb") as f:
            part = pq.ParquetFile(f, buffer_size=PART_READ_BUFFER, pre_buffer=False)
            ids = part.read(columns=["id"], use_threads=False).column("id")
            keep = pc.fill_null(pc.is_in(ids, value_set=wanted.cast(ids.type)), False)
            if not pc.any(keep).as_py():
                return []
            names = part.schema_arrow.names
            read = [n for n in names if (n in columns if columns is not None else n not in ROW_COLUMNS_LEFT_OUT)]
            found: list[tuple[str, dict[str, Any]]] = []
            first = 0
            for group in range(part.num_row_groups):
                rows = part.metadata.row_group(group).num_rows
                if pc.any(keep.slice(first, rows)).as_py():
                    at = first
                    size = batch_rows(part.metadata.row_group(group), PART_BATCH_ROWS)
                    for batch in part.iter_batches(batch_size=size, row_groups=[group], use_threads=False,
                                                   columns=["id", *(n for n in read if n != "id")]):
                        mine = keep.slice(at, batch.num_rows)
                        at += batch.num_rows
                        if pc.any(mine).as_py():
                            found.extend((row["id"], row) for row in python_rows(batch.filter(mine)))
                first += rows
            return found

    return with_retries(once, f"read the source_sha256 of {path}")


def file_sha256(path: str, storage_options: dict[str, Any], listed_size: int | None = None) -> str | None:
    """The sha256 of a file's bytes, streamed (HASH_CHUNK at a time), transient storage errors retried; None when it
    cannot be read, is not a regular file (a local FIFO is not opened: it could wait forever), or holds another
    number of bytes than `listed_size` (the listing saw another version)."""
    def once() -> str | None:
        fs, fs_path = storage_path(path, storage_options)
        local = isinstance(fs, LocalFileSystem)
        if local and not stat.S_ISREG(os.stat(fs_path).st_mode):
            return None
        digest, total = hashlib.sha256(), 0
        if listed_size and not local:
            # Ranged GETs, as `sources.read_bytes` fetches an image (s3fs's open checks the ETag its cache holds, which
            # may be an earlier listing's); the last one asks one byte more, so an object grown since is caught.
            for start in range(0, listed_size, HASH_CHUNK):
                end = min(start + HASH_CHUNK, listed_size)
                chunk = fs.cat_file(fs_path, start=start, end=end + (end == listed_size))
                digest.update(chunk)
                total += len(chunk)
        else:
            with fs.open(fs_path, "rb", block_size=HASH_CHUNK) as f:  # s3fs would buffer 50 MiB a file
                while chunk := f.read(HASH_CHUNK):
                    digest.update(chunk)
                    total += len(chunk)
                    if listed_size is not None and total > listed_size:
                        return None
        return digest.hexdigest() if listed_size is None or total == listed_size else None

    try:
        return with_retries(once, f"read {path}")
    except Exception:  # noqa: BLE001 - unreadable now: said changed, as without this check
        return None


# Containers (tar shards, Parquet files, zip archives) whose stamp changed that are read at once to compare their
# members with their rows (`same_members`): each can be large, so fewer than image files, and each held in memory only
# up to CHECK_IN_MEMORY_BYTES (a larger one is streamed: a tar shard twice, headers then members, as a run reads one
# over --in-memory-mb). From MANY_CONTAINERS on, or MANY_CONTAINER_BYTES in all (a few large Parquet files read in
# silence kept the planning busy for minutes), the planning says so on stderr, and how far it got.
CONTAINER_READERS = 4
CHECK_IN_MEMORY_BYTES = 16 * 2**20
MANY_CONTAINERS = 20
MANY_CONTAINER_BYTES = 2**30


def same_members(listed: list[ReadUnit], purified: set[str], rejected: set[str], retry: frozenset[str],
                 record: InputRecord | None, ledger: dict[str, ContainerRead], output: str,
                 storage_options: dict[str, Any], reading: dict[str, Any] | None = None,
                 whole: dict[str, ContainerRead] | None = None,
                 index: OutputIndex | None = None,
                 superseded: dict[str, set[str]] | None = None) -> tuple[dict[str, tuple[str, str]], int]:
    """The tar shards, Parquet files and zip archives with done ids whose listing's stamp differs from the recorded
    one (or, without one, from the ledger's: `_container_changed`), read to tell whether the members their rows were
    made from are still there as they were, with the stamp the record takes for each, and how many are so. A
    container's rows hold no digest of the container, but each holds its member's: the planning reads the container
    as a run does (`sources.read_unit` with `reading`, its options: --image-column, --labels-from-folders,
    --partitioning, --max-image-mb; nothing skipped), and each of its ids with a row (but those --retry-rejects reads
    again, and its '#unreadable' reject) must give the record that row was made from: the same `source`, for a row in
    data/ an image of the same sha256 (`source_sha256`) with the same pass-through columns (a tar key's sidecars, a
    Parquet row's other cells, its partition columns: nulls and a struct's null fields aside), for one in rejects/ the
    same sha256, or, where the reject holds none (rejected unread), a reject with the same stage and error.

    All there as they were (members appended, as a WebDataset shard grows; copied or uploaded again; rewritten with
    its members in another order, compressed otherwise): the stamp the listing gives now, so it is no change, and no
    later run reads it for this (the members added are read by the run, as in any container read again). One of them
    gone or other: the recorded stamp with the listing's noted after DIFFERS, said changed as before, not read again
    by a later run while the listing gives that stamp. Left out (said changed, and read again by the next run): a
    container that cannot be read to its end now (an error, its '#unreadable' reject), and one with an id whose rows
    cannot be compared (none found, several that differ, or a part file that cannot be read: said on stderr). The
    output's part files are read only when there is such a container, only those holding its rows (as `index`, the
    planning's reading of every part file's ids, names them; without it, every part file is listed and its id column
    read), and only their columns that the input gives (not the purified images), of the rows of its ids
    (`_part_rows`: each file's id column tells which).

    `whole`, when given, gets the `_containers/` entry (`pipeline.ledger`) of each container found as it was whose
    reading went to its end, as a complete run's reading of it would give (its listing's size and version, the ids it
    gave and their digest): with that, the run skips it unread when the output holds all its ids (one copied over or
    packed again; one grown is read for its members added), where the ledger's entry of its earlier version made the
    run read it again only to skip each of its ids. None for one holding ids --retry-rejects reads again, or that gave
    a look-alike or superseded id (its reading settles those rejects). `superseded`: the old rows a stopped
    --refresh-changed run replaced, left out of the comparison (`_row_values`)."""
    recorded = record.stamps if record is not None else {}
    changed: list[ReadUnit] = []
    for unit in listed:
        now = unit.contents[0] if unit.kind != "files" and unit.contents else None
        if now is None:
            continue
        before = recorded.get(relative_id(unit.paths[0], unit.root))
        if before is not None and before[1].endswith(f"{DIFFERS}{now}"):  # read at this stamp before: other members
            continue
        if _container_changed(unit, before, ledger.get(unit.paths[0])):
            changed.append(unit)
    if not changed:
        return {}, 0
    held = container_ids(purified | rejected, changed)
    candidates: dict[str, tuple[ReadUnit, list[str]]] = {}  # id -> unit, its ids with rows compared
    for unit in changed:
        rows = [i for i in held.get(unit.paths[0], []) if not i.endswith("#unreadable") and i not in retry]
        if rows:
            candidates[relative_id(unit.paths[0], unit.root)] = (unit, rows)
    if not candidates:
        return {}, 0
    wanted = {i for _, rows in candidates.values() for i in rows}
    fingerprints = _row_values(output, storage_options, wanted, purified, _fingerprint_columns, _row_fingerprint,
                               "tar, Parquet and zip files whose listing changed are said changed without reading them",
                               index, superseded)
    if fingerprints is None:
        return {}, 0
    ids = [i for i in sorted(candidates) if all(fingerprints.get(row) for row in candidates[i][1])]
    if not ids:
        return {}, 0
    options = dict(reading or {})
    options["in_memory_bytes"] = min(options.get("in_memory_bytes", CHECK_IN_MEMORY_BYTES), CHECK_IN_MEMORY_BYTES)
    size = sum(s or 0 for i in ids for s in candidates[i][0].sizes)
    many = len(ids) >= MANY_CONTAINERS or size >= MANY_CONTAINER_BYTES
    if many:
        print(f"zip-purify: reading {len(ids)} tar/Parquet/zip file(s) ({size / 2**30:.1f} GiB) whose listing changed "
              "since their rows were written, to tell those whose members are still as they were (each is read once: "
              "the record then takes its new stamp)", file=sys.stderr)
    stamps: dict[str, tuple[str, str]] = {}
    same = done = 0
    progress = _Progress(many, len(ids), "tar/Parquet/zip file(s)")
    stop = threading.Event()  # the planning stopped (Ctrl-C): each container being read is left at its next member

    def compare(id_: str) -> tuple[bool | None, dict[str, Any] | None]:
        unit, rows = candidates[id_]
        return _members_same(unit, {row: fingerprints[row] for row in rows}, purified, storage_options, options, stop)

    # one at a time on FTP/SFTP (`concurrent_calls`)
    readers = concurrent_reads(candidates[ids[0]][0].paths[0], CONTAINER_READERS)
    with ThreadPoolExecutor(min(readers, len(ids)), thread_name_prefix="same-members") as pool, \
            _set_on_exit(stop):
        for id_, (found, read) in zip(ids, pool.map(compare, ids), strict=True):
            unit, now = candidates[id_][0], candidates[id_][0].contents[0]
            if found:
                stamps[id_] = (unit.kind, now)
                same += 1
                entry = _read_whole_entry(unit, read, held.get(unit.paths[0], []), retry)
                if whole is not None and entry is not None:
                    whole[unit.paths[0]] = entry
            elif found is not None:
                earlier = recorded[id_][1].split(DIFFERS)[0] if id_ in recorded else EARLIER
                stamps[id_] = (unit.kind, f"{earlier}{DIFFERS}{now}")
            done += 1
            progress.read(done)
    if many:
        print(f"zip-purify: {same} of {len(ids)} tar/Parquet/zip file(s) whose listing changed hold every member their "
              "rows were made from as it was: not changed", file=sys.stderr)
    return stamps, same


def _fingerprint_columns(folder: str) -> tuple[str, ...] | None:
    """The columns of a row `_row_fingerprint` needs: a reject's own; a data/ row's all but its image's."""
    from pipeline.stages import REJECTS_DIR

    return ("id", "source", "source_sha256", "stage", "error") if folder == REJECTS_DIR else None


def _row_fingerprint(folder: str, row: dict[str, Any]) -> bytes:
    """A short digest of what a row says of the member it was made from (`_record_fingerprints` gives a record's)."""
    from pipeline.stages import DATA_DIR

    if folder == DATA_DIR:
        others = {k: v for k, v in row.items() if k not in ("id", "source", "source_sha256")}
        return _digest(("data", row.get("source"), row.get("source_sha256"), _canonical(others)))
    if row.get("source_sha256") is not None:
        return _digest(("reject", row.get("source"), row["source_sha256"]))
    return _digest(("unread", row.get("source"), row.get("stage"), row.get("error")))


def _record_fingerprints(record: dict[str, Any]) -> tuple[bytes, ...]:
    """The digests (`_row_fingerprint`) a row made from `record` (an image or reject of `sources.read_unit`) can have:
    a data/ row's of an image record, a reject's of its sha256, and, for a reject record, one rejected unread's."""
    source, digest = record.get("source"), record.get("source_sha256")
    found = [_digest(("reject", source, digest))] if digest is not None else []
    if record["kind"] == "image":
        meta = record.get("meta") or {}
        found.append(_digest(("data", source, digest, _canonical(meta))))
        # A column of an extension type (a Ray tensor) that the writer or the end of a run made text holds the type's
        # own value (`arrow_values.extension_python`), one still of its type the storage the record holds: each
        # choice of such columns made text (all or none past 4 of them) is a digest the row can have.
        types = record.get("meta_types") or {}
        own = {k: extension_python(v, types[k]) for k, v in meta.items() if isinstance(types.get(k), pa.BaseExtensionType)}
        names = sorted(own)
        texts = ([c for n in range(1, len(names) + 1) for c in itertools.combinations(names, n)] if len(names) <= 4
                 else [tuple(names)])
        found.extend(_digest(("data", source, digest, _canonical({**meta, **{k: own[k] for k in text}}))) for text in texts)
    else:
        found.append(_digest(("unread", source, record.get("stage"), record.get("error"))))
    return tuple(found)


def _canonical(value: Any) -> Any:
    """`value` as comparable whatever the order of its keys and wherever it was read from: a dict as its items sorted,
    a null in it (a column or struct field a part file holds and this row has no value of) left out, a whole float as
    its int (a column of ints that the end of a run made double beside another part file's floats), and a value as
    the text the end of a run makes it where its column became text (`stages.text_column`: 3 beside "cat" is "3", an
    object its JSON text, a time its str): text that is JSON is taken as the value it spells, and a time, a date, a
    duration or a decimal as its str. Rows of a column made text no longer differed from the members they came from."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _canonical(v)) for k, v in value.items() if v is not None)))
    if isinstance(value, list | tuple):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            spelt = json.loads(value)
        except (ValueError, RecursionError):
            return value
        return spelt if isinstance(spelt, str) else _canonical(spelt)
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta | decimal.Decimal | NanoTime):
        return str(value)
    return value


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(repr(value).encode("utf-8", "surrogatepass"), digest_size=16).digest()


@contextlib.contextmanager
def _set_on_exit(event: threading.Event) -> Iterator[None]:
    """Set `event` however the block is left (its end, an error, Ctrl-C), before the block's outer context exits."""
    try:
        yield
    finally:
        event.set()


def _members_same(unit: ReadUnit, rows: dict[str, bytes], purified: set[str], storage_options: dict[str, Any],
                  reading: dict[str, Any],
                  stop: threading.Event | None = None) -> tuple[bool | None, dict[str, Any] | None]:
    """Whether the container `unit`, read now, gives each id of `rows` (id -> its row's `_row_fingerprint`) as that
    row was made, None when it cannot be read to its end (or `stop` was set: the planning stopped); and, read to its
    end, what its count record says of it (the ids it gave: `sources.read_unit`). Reading stops at the first id that
    differs."""
    left = dict(rows)
    broken = f"{relative_id(unit.paths[0], unit.root)}#unreadable"
    read = None
    if stop is not None and stop.is_set():
        return None, None
    try:
        # every id with a row named: a tar key keeps the id an earlier version named it by (`read_tar`)
        records = read_unit(unit, storage_options, purified_ids=frozenset(i for i in rows if i in purified),
                            named_ids=frozenset(rows), **reading)
        with contextlib.closing(records):
            for record in records:
                if stop is not None and stop.is_set():
                    return None, None
                if record["kind"] == "count":
                    read = record.get("container")
                if record["kind"] not in ("image", "reject"):
                    continue
                if record["id"] == broken:
                    return None, None
                row = left.pop(record["id"], None)
                if row is not None and row not in _record_fingerprints(record):
                    return False, None
    except Exception:  # noqa: BLE001 - unreadable now: said changed, as without this check
        return None, None
    return not left, read  # an id with a row that the container no longer gives: gone from it


def _read_whole_entry(unit: ReadUnit, read: dict[str, Any] | None, held: list[str],
                      retry: frozenset[str]) -> ContainerRead | None:
    """The `_containers/` entry of a container `same_members` read to its end and found as it was (`read`: its count
    record's "container"), as a complete run that read it would record; None when the listing gives no version of it,
    when its reading gave a look-alike or superseded id, or when it holds ids (`held`) --retry-rejects reads again."""
    stamp = unit.stamps[0] if unit.stamps else None
    if (read is None or stamp is None or read.get("path") != unit.paths[0] or read.get("superseded")
            or read.get("lookalike") or read.get("leftover") or any(i in retry for i in held)):
        return None
    return ContainerRead(unit.paths[0], unit.sizes[0] if unit.sizes else None, stamp, read["records"],
                         read["ids_sha256"], lookalikes_checked=True)


def _container_changed(unit: ReadUnit, before: tuple[str, str] | None, read: ContainerRead | None) -> bool:
    """Whether a container's rows came from an earlier version than the listing shows: by this record, or, where it
    holds none (an output of an older version), by the ledger of containers read whole."""
    now = unit.contents[0] if unit.contents else None
    if before is not None:
        return now is not None and before[1] != now
    if read is None or not unit.stamps or unit.stamps[0] is None:
        return False
    return read.stamp != unit.stamps[0] or read.size != (unit.sizes[0] if unit.sizes else None)


def updated_record(record: InputRecord | None, location: str | None, listed: Iterable[ReadUnit],
                   changes: ChangedInputs) -> InputRecord:
    """The record a complete run leaves: the stamp this run's listing gives each input of `listed` (those it read,
    the done ones unchanged since, or unrecorded: an older version's output), the recorded one of each changed input
    whose rows it kept (`changes`; a container's earlier version known only from the ledger: EARLIER), and the
    recorded one of each input that went while the output holds its rows. An input whose listing gives no stamp is
    left out (its changes cannot be seen). The record written before the run reads anything is this one with the
    earlier stamps of `changes.pending` (`starting_record`)."""
    recorded = record.stamps if record is not None else {}
    stamps: dict[str, tuple[str, str]] = {}
    changed = {*changes.purified, *changes.rejected}
    for unit in listed:
        if unit.kind == "files":
            for path, content in zip(unit.paths, unit.contents or (None,) * len(unit.paths), strict=True):
                id_ = relative_id(path, unit.root)
                if id_ in changed:
                    stamps[id_] = recorded[id_]
                elif content is not None:
                    stamps[id_] = ("files", content)
            continue
        id_ = relative_id(unit.paths[0], unit.root)
        if id_ in changes.containers:
            stamps[id_] = recorded.get(id_, (unit.kind, EARLIER))
        elif unit.contents and unit.contents[0] is not None:
            stamps[id_] = (unit.kind, unit.contents[0])
    for id_ in [*changes.gone_files, *changes.gone_containers]:
        stamps[id_] = recorded[id_]
    return InputRecord(location, stamps)


def starting_record(final: InputRecord, changes: ChangedInputs) -> InputRecord:
    """The record a run writes before it reads anything: `final` (`updated_record`), but the changed inputs whose
    rows it reads again keep their earlier stamp until it ends complete. Killed before it read one again, the next run
    still tells that input's old row from the stamps."""
    return InputRecord(final.location, {**final.stamps, **changes.pending}) if changes.pending else final
