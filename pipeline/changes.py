"""Inputs that changed, or went, since the output's rows of them were written.

A plain run adds to an output and takes no row out for a change: an id already in data/ or rejects/ is done, so an
image file re-uploaded under its name with new bytes, or a tar shard, Parquet file or zip archive rewritten in place,
keeps the rows made from its earlier version, and the run says so. --refresh-changed purifies those inputs again and
replaces their rows (`pipeline.refresh`): that run's record takes their new stamps once it ends complete, as for
`pending` below, and no later run reports them. To tell them, the output records, for each input it holds rows of,
what the listing said of the input's content (`sources.content_stamp`: size and ETag on an object store, size, mtime
and inode on a disk) when a run set out to read it, and each later run compares that with its own listing:

- an image file whose id is done and whose stamp now differs changed since its row was written (purified: data/ holds
  the earlier bytes purified; rejected: the reject is about the earlier bytes);
- a container whose stamp differs, with done ids, is read again (`pipeline.ledger`), but its done ids are skipped: their
  rows came from the earlier version (a member changed in place is not purified again; one appended is). Its record keeps
  the earlier stamp, so that every later run says so too, not only the one that read it again;
- an input whose rows are in the output and that the listing no longer shows went (deleted or renamed).

The record is `OUTPUT/_inputs/stamps.parquet` (id, kind, stamp; the input's location in its metadata), written whole
at the start of each run, before any image is read, so that the rows a run killed half-way wrote are covered too:
for an input read by this run, its stamp as this run's listing gave it (the bytes read are that version or a newer
one, so a change is never missed; an input replaced between the listing and its read is said changed though its row
is of the new bytes, a false alarm); a done input keeps the stamp it had, and a changed one read again
(--retry-rejects, --refresh-changed) keeps its earlier stamp until the run ends complete (`starting_record`). An
output written by a version before this record starts one with the stamps of its first run (changes made before that
are not seen), except for containers an earlier complete run read whole, whose stamps `pipeline.ledger` kept.
--overwrite deletes it with the rest; --input-moved starts it again.
"""

from __future__ import annotations

import io
import posixpath
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ledger import ContainerRead, container_ids
from pipeline.sources import LOOKALIKE, ReadUnit, relative_id
from pipeline.storage import describe, make_parent_dirs, replace_file, storage_path, with_retries

INPUTS_DIR = "_inputs"
RECORD_FILE = "stamps.parquet"
# what a container's record holds where its earlier version's stamp is known only from pipeline.ledger's record
EARLIER = "earlier"
EXAMPLES = 5


def record_path(output: str) -> str:
    return f"{output.rstrip('/')}/{INPUTS_DIR}/{RECORD_FILE}"


@dataclass(frozen=True)
class InputRecord:
    """What the output's rows were made from: input id -> (kind, content stamp), and the input's location."""

    location: str | None
    stamps: dict[str, tuple[str, str]] = field(default_factory=dict)


def read_record(output: str, storage_options: dict[str, Any], location: str | None) -> InputRecord | None:
    """The output's record of its inputs' stamps; None when it has none, when it was made from another location (an
    input that moved: every stamp differs) or when it cannot be read (said on stderr: changes go unseen this run)."""
    uri = record_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        data = with_retries(lambda: fs.cat_file(path), f"read {uri}")
        table = pq.read_table(io.BytesIO(data), use_threads=False)
        meta = table.schema.metadata or {}
        recorded = meta.get(b"location", b"").decode() or None
        ids, kinds, stamps = (table.column(name).to_pylist() for name in ("id", "kind", "stamp"))
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - never fatal: this run then starts the record again
        print(f"zip-purify: ignoring {uri} ({describe(err)}); inputs changed since their rows were written are not "
              "looked for in this run", file=sys.stderr)
        return None
    if recorded != location:
        return None
    return InputRecord(location, {i: (k, s) for i, k, s in zip(ids, kinds, stamps, strict=True)})


def write_record(output: str, storage_options: dict[str, Any], record: InputRecord) -> None:
    """Replace the record with `record` (one PUT on an object store; a rename on a file system)."""
    uri = record_path(output)
    fs, path = storage_path(uri, storage_options)
    ids = sorted(record.stamps)
    table = pa.table({"id": pa.array(ids, pa.string()),
                      "kind": pa.array([record.stamps[i][0] for i in ids], pa.string()),
                      "stamp": pa.array([record.stamps[i][1] for i in ids], pa.string())})
    table = table.replace_schema_metadata({"location": record.location or ""})
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

    def changed(self) -> int:
        return len(self.purified) + len(self.rejected) + len(self.containers)

    def gone(self) -> int:
        return len(self.gone_files) + len(self.gone_containers)

    def summary(self) -> dict[str, Any]:
        """The summary's and the dry run's `changed_inputs`."""
        return {"image_files_purified": len(self.purified), "image_files_rejected": len(self.rejected),
                "containers": len(self.containers), "container_rows": sum(self.containers.values()),
                "examples": sorted([*self.purified, *self.rejected, *self.containers])[:EXAMPLES],
                "gone_image_files": len(self.gone_files), "gone_containers": len(self.gone_containers),
                "gone_container_rows": sum(self.gone_containers.values()),
                "gone_examples": sorted([*self.gone_files, *self.gone_containers])[:EXAMPLES],
                # --refresh-changed: the changed inputs this run purifies again, their rows replaced (not counted above)
                "refreshed_inputs": len(self.refreshed), "refreshed_rows": sum(map(len, self.refreshed.values())),
                "refreshed_examples": sorted(self.refreshed)[:EXAMPLES]}

    def refreshed_rows(self) -> set[str]:
        """The ids of the rows this run replaces (--refresh-changed)."""
        return {id_ for ids in self.refreshed.values() for id_ in ids}


def changed_warning(changed: dict[str, Any], dry_run: bool = False) -> str | None:
    """The command line's warning on inputs changed since their rows were written (`ChangedInputs.summary`), with
    what to do; None when there are none."""
    files, rejected, containers = (changed.get(k, 0) for k in ("image_files_purified", "image_files_rejected",
                                                               "containers"))
    if not files + rejected + containers:
        return None
    what = []
    if files:
        what.append(f"{files} image file(s) purified earlier (data/ holds their earlier version, purified)")
    if rejected:
        what.append(f"{rejected} image file(s) rejected earlier (the reject is about their earlier version)")
    if containers:
        what.append(f"{containers} tar/Parquet/zip file(s) replaced since (of their {changed.get('container_rows', 0)} "
                    "rows, those written before were made from the earlier version: a member or row changed in place is "
                    "not read again, one added is)")
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
    return (f"note: --refresh-changed: would purify {inputs} changed input(s) again, replacing their {rows} row(s) "
            f"(e.g. {', '.join(changed.get('refreshed_examples', []))})")


def gone_note(changed: dict[str, Any]) -> str | None:
    """The command line's note on inputs with rows in the output that the input no longer holds; None when none."""
    files, containers = changed.get("gone_image_files", 0), changed.get("gone_containers", 0)
    if not files + containers:
        return None
    what = [f"{files} image file(s)"] * bool(files) + [
        f"{containers} tar/Parquet/zip file(s) ({changed.get('gone_container_rows', 0)} rows)"] * bool(containers)
    return (f"note: {' and '.join(what)} with rows in the output are no longer in the input (deleted or renamed; e.g. "
            f"{', '.join(changed.get('gone_examples', []))}): their rows are kept; --overwrite drops them")


def find_changes(listed: list[ReadUnit], purified: set[str], rejected: set[str], retry: frozenset[str],
                 record: InputRecord | None, ledger: dict[str, ContainerRead], root: str | None,
                 refresh: bool = False) -> ChangedInputs:
    """The inputs of `listed` (the listing, less the output's own files) whose rows the output keeps though they
    changed since, the recorded inputs with rows that the listing no longer shows, and the changed inputs whose rows
    this run reads again (`retry`: --retry-rejects; with `refresh`, --refresh-changed, every changed one:
    `ChangedInputs.refreshed`) and whose record must keep the earlier stamp until it ends (`ChangedInputs.pending`).
    `root`: the input root the ids are relative to (None when nothing is listed). A container's '#unreadable' and
    look-alike rejects are not rows it refreshes: its reading to its end settles them (`job.stale_rejects`)."""
    recorded = record.stamps if record is not None else {}
    changes = ChangedInputs()
    seen: set[str] = set()
    for unit in listed:
        if unit.kind != "files":
            continue
        for path, content in zip(unit.paths, unit.contents or (None,) * len(unit.paths), strict=True):
            id_ = relative_id(path, unit.root)
            seen.add(id_)
            before = recorded.get(id_)
            if before is None or content is None or before[1] == content:
                continue
            if id_ not in purified and id_ not in rejected:
                continue
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
        units = [ReadUnit(kind, (posixpath.join(root, id_),), root) for id_, kind in gone.items() if kind != "files"]
        for path, ids in (container_ids(purified | rejected, units) if units else {}).items():
            if ids:
                changes.gone_containers[relative_id(path, root)] = len(ids)
    changes.purified.sort()
    changes.rejected.sort()
    changes.gone_files.sort()
    return changes


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
