"""Which tar shards, Parquet files and zip archives earlier complete runs read whole, so that an --incremental run
skips them unread.

Without it, a scheduled run over a growing bucket of shards downloads every shard on every run only to find that its
keys are already done. At the end of a run whose status is complete, the driver records each container (tar shard,
Parquet file or zip archive) that this run read to its end, with what the listing said of it (size, ETag or mtime)
and a digest of the ids it gave; and each one whose listing changed that its planning read to its end and found still
giving each member its rows were made from (`pipeline.changes.same_members`), which the run itself then need not
read; and each one a --refresh-changed run stopped after its pipeline had read to its end, as that run's journal notes
it (`pipeline.refresh.Journal.read`). A later run skips a container unread only when

- the listing shows it at the same path with the same size and the same version fields, and
- the output's data/ and rejects/ still hold exactly those ids (part files deleted to redo them, or ids left from
  an older version of the shard, make it read again).

A container whose read gave only its own '#unreadable' reject is recorded too when that reject lasts while the
container is unchanged (a table without an image column, img2dataset's `00000.parquet`, or a file that is not one
of its kind: `sources.records.LastingProblem`; `lasting_reject`), and is skipped while the output holds that reject
and --retry-rejects is not given; one whose read broke off (a storage error, a file cut short or damaged after records
it gave) is not, and the next run reads it again.

Anything else reads the container again, skipping its done ids as before: nothing is skipped on a guess. The records
live in OUTPUT/_containers/, one JSON file, rewritten (merged) by each complete run; --overwrite deletes them.
"""

from __future__ import annotations

import json
import posixpath
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.sources import LOOKALIKE, ReadUnit, ids_digest, relative_id
from pipeline.sources.ids import without_signed_query
from pipeline.storage import describe, storage_path, with_retries

LEDGER_DIR = "_containers"
LEDGER_FORMAT = 1


@dataclass(frozen=True)
class ContainerRead:
    """One container a complete run read whole."""

    path: str  # full fsspec path, as listed
    size: int | None
    stamp: str  # sources.listing_stamp at planning time
    records: int  # how many ids it gave (one per tar key, one per Parquet row)
    ids_sha256: str  # ids_digest of those ids
    # the read it records was told the shard's purified ids that a name not UTF-8 gives, so a member added beside one
    # of them was a reject of its own (sources.LOOKALIKE); an older version's read of such a shard skipped that member
    # without a word, and the shard is read again once (`plan.plan_job`)
    lookalikes_checked: bool = False
    # done ids under the container's id that the read no longer gave (a shard or Parquet file rewritten smaller):
    # their rows stay in the output and are not the container's records, so the comparison leaves them out
    leftover: tuple[str, ...] = ()
    # its read gave only its own '#unreadable' reject, one that reading it again unchanged gives again (a table without
    # an image column: `sources.records.LASTING`): skipped unread while that reject is in the output, as a container
    # whose ids are all done is; a read that broke off (a storage error) is never recorded, and is read again
    lasting_reject: bool = False


def container_ids(done: Iterable[str], units: Iterable[ReadUnit]) -> dict[str, list[str]]:
    """The done ids that are records of each tar, Parquet or zip unit, by the unit's path. A tar record's id is the
    shard's id, '/', and its key (which may hold dots: 'train/cat.0' in a shard of Kaggle-style names); a zip member's
    is the archive's id, '/' and its path; a Parquet row's is the file's id, '#', and its row number. Every id under a
    tar or zip container's id and '/' is its own: `sources.discover` refuses a loose file there. So is a shard's
    look-alike reject ('s.tar#lookalike/k', `sources.LOOKALIKE`): it stands for a member the shard's reads gave. A
    container's '#unreadable' reject is left out: it is not one of its records."""
    by_kind: dict[str, dict[str, str]] = {"tar": {}, "parquet": {}, "zip": {}}
    for unit in units:
        if unit.kind in by_kind:
            by_kind[unit.kind][relative_id(unit.paths[0], unit.root)] = unit.paths[0]
    tar, parquet, zips = by_kind["tar"], by_kind["parquet"], by_kind["zip"]
    found: dict[str, list[str]] = {path: [] for kind in by_kind.values() for path in kind.values()}
    if not found:
        return found
    for id_ in done:
        head, sep, row = id_.rpartition("#")
        if sep and head in parquet and row.isdigit():
            found[parquet[head]].append(id_)
            continue
        head, sep, _ = id_.partition(LOOKALIKE)
        if sep and head in tar:
            found[tar[head]].append(id_)
            continue
        at = id_.find("/")
        while at > 0:  # a container in a folder: its id has slashes too
            path = zips.get(id_[:at]) or tar.get(id_[:at])
            if path is not None:
                found[path].append(id_)
                break
            at = id_.find("/", at + 1)
    return found


def tar_ids_named_otherwise(ids: Iterable[str], units: Iterable[ReadUnit]) -> dict[str, list[str]]:
    """The ids of each tar shard of `units` (by path), of the output's `ids`, that an earlier version named from its
    members' names, with a '.' or empty folder in them ('s.tar/./b' for './b.jpg', 's.tar/cat//a'), where this one
    names a key by its member's path ('s.tar/b': `sources.webdataset_keys.member_path`). Its read task is told them,
    its rejects that --retry-rejects reads again and the rows --refresh-changed replaces too (which it does not skip),
    and a key keeps such an id (`webdataset_keys.earlier_ids`): its row or reject is skipped or replaced, never
    written again under the new id. Only such ids are looked for: an output holding none costs one pass over its ids."""
    odd = [i for i in ids if "/./" in i or "//" in i]
    tars = [u for u in units if u.kind == "tar"]
    if not odd or not tars:
        return {}
    return {path: found for path, found in container_ids(odd, tars).items() if found}


def ledger_path(output: str) -> str:
    return f"{output.rstrip('/')}/{LEDGER_DIR}/containers.json"


def read_ledger(output: str, storage_options: dict[str, Any]) -> dict[str, ContainerRead]:
    """The containers earlier complete runs read whole, by path. An unreadable or unknown record is ignored (said on
    stderr): the cost is reading those containers again."""
    uri = ledger_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        # one GET, not exists + GET: a missing record is the common case of a first --incremental run
        payload = json.loads(with_retries(lambda: fs.cat_file(path), f"read {uri}"))
        if payload.get("format") != LEDGER_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, this version reads {LEDGER_FORMAT}")
        # kept beside the entries, not in them: an older version refuses an entry with a key it does not know
        checked = set(payload.get("lookalikes_checked", []))
        leftover = payload.get("leftover", {})
        lasting = set(payload.get("lasting_reject", []))
        entries = [ContainerRead(**entry, lookalikes_checked=entry.get("path") in checked,
                                 leftover=tuple(leftover.get(entry.get("path"), ())),
                                 lasting_reject=entry.get("path") in lasting)
                   for entry in payload["containers"]]
    except FileNotFoundError:
        return {}
    except Exception as err:  # noqa: BLE001 - never fatal: every container is read again instead
        print(redact_uri_secrets(f"zip-purify: ignoring {uri} ({describe(err)}); every tar shard, Parquet file and zip "
                                 "archive will be read", output), file=sys.stderr)
        return {}
    return {entry.path: entry for entry in entries}


def write_ledger(output: str, storage_options: dict[str, Any], entries: dict[str, ContainerRead]) -> None:
    """Replace the record with `entries` (one PUT on an object store; a rename on a file system)."""
    from pipeline.storage import make_parent_dirs, replace_file

    uri = ledger_path(output)
    fs, path = storage_path(uri, storage_options)
    # a presigned web address ('s.tar?X-Amz-Signature=...') is not written down: its query is a credential (and
    # changes with each signing); nor one holding a password or token (a web folder read as
    # https://user:password@host/shards/ lists its files so); such a container is read again by a later run, its done
    # ids skipped
    entries = {p: entry for p, entry in entries.items() if recordable(p)}
    beside = ("lookalikes_checked", "leftover", "lasting_reject")
    rows = [{k: v for k, v in asdict(entries[p]).items() if k not in beside} for p in sorted(entries)]
    checked = [p for p in sorted(entries) if entries[p].lookalikes_checked]
    leftover = {p: list(entries[p].leftover) for p in sorted(entries) if entries[p].leftover}
    lasting = [p for p in sorted(entries) if entries[p].lasting_reject]
    data = json.dumps({"format": LEDGER_FORMAT, "containers": rows, **({"lookalikes_checked": checked} if checked else {}),
                       **({"leftover": leftover} if leftover else {}),
                       **({"lasting_reject": lasting} if lasting else {})}, indent=1).encode()
    with_retries(lambda: make_parent_dirs(fs, posixpath.dirname(path)), f"write {uri}")
    replace_file(fs, path, data, f"write {uri}")


def recordable(path: str) -> bool:
    """Whether a container's path may be written down in the output (this record, the refresh journal): not a
    presigned web address, whose query is a credential, nor one with a password or token in its user part."""
    base = path.partition("?")[0]
    return without_signed_query(path) == path and redact_uri(base) == base


def unchanged_and_done(unit: ReadUnit, stamp: str | None, entry: ContainerRead | None, ids: list[str]) -> bool:
    """Whether `unit` can be skipped unread: read whole before, unchanged since, and all its ids still in the output
    (the caller checks that a `lasting_reject` is still there too)."""
    if entry is None or stamp is None or entry.stamp != stamp:
        return False
    if entry.leftover:
        left = set(entry.leftover)
        ids = [i for i in ids if i not in left]
    size = unit.sizes[0] if unit.sizes else None
    return entry.size == size and entry.records == len(ids) and entry.ids_sha256 == ids_digest(ids)
