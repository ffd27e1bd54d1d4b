"""--refresh-changed: purify again the inputs changed in place since their rows were written, and replace those rows,
with no point at which a kill loses a row or leaves two rows of an id that no later run can tell apart.

A row carries no time or version, so two rows of one id (the earlier version's and the new one's) cannot be told
apart by themselves. Before a refresh run writes any row, it writes a journal, OUTPUT/_refresh/journal.json (whole:
one PUT on an object store, a rename on a file system), naming each id it purifies again with the part files
('data/part-....parquet', 'rejects/part-....parquet') that held its rows when the run was planned: its old rows. The
new rows go to part files as every run writes them. Then, for each id of the journal:

- a row of it in a part file the journal does not name for it is the new one: its rows in the named files are the
  old ones and go (each such file written again without them, atomically, or removed when it keeps no row);
- no row outside the named files (the run was killed before it wrote one): the old row stays, the only row of its id,
  and the input is still said changed (its stamp in `_inputs/stamps.parquet` is the earlier one until a refresh run
  ends complete: `changes.starting_record`).

The journal also names each input refreshed with the stamp its listing gave (the version the new rows are made from,
or a newer one) and its ids: a later run that finds every id of an input with a new row takes that stamp as the
input's recorded one (`Journal.new_stamps`), so that an input whose rows a stopped run did replace is not said
changed, nor purified a third time, while one it did not get to still is.

The refresh run applies this rule in its end-of-run check (`output.deduplicate_output`), and removes the journal
only once it ends complete and the record of the inputs holds their new stamps: until then the journal is what tells a
later run those stamps. A run that finds a journal when it starts (one left by a run killed or stopped before that, or
by one not complete) applies the same rule first (`output.drop_superseded_rows`; its plan took the output as that
leaves it: `plan._after_earlier_refresh`), then removes it, before it writes a journal of its own: so a kill
at any point leaves at worst the old and the new row of an id together with the journal that says which is kept. A
part file written again under its own name (a batch of the same ids: `stages.part_name`) would replace the old row
in place, and a new row there could not be told from an old one: so a refresh run salts its part files' names
(`Journal.salt`), and its new rows never land in a file named like an old one. Changed containers (tar shards,
Parquet and zip files with a member or row of their rows changed or gone: `changes.same_members`; one only grown,
copied or repacked is not changed, and none of its rows is refreshed) are read whole again: every done row of one is
refreshed (the planning stops reading it at the first member that differs, so which others did is not known); a
member it no longer holds gives no new row, and its old row stays (ledger's `leftover`), as it would without
--refresh-changed; a container that cannot be read to its end now keeps its old rows and its earlier stamp (still said
changed: `job._record_inputs_read_again`). Once the run's pipeline has ended, the journal is written again naming the
containers it read to their end (`Journal.whole`): a run stopped after that (in its end-of-run check, say) leaves a
container that no longer gives a member of its rows done as a complete run would, not said changed by every later run
for the member it no longer holds. With each, it notes what a complete run would record of that read in the output's
`_containers/` ledger (`Journal.read`: the listing's size and version, the ids the read gave and their digest): the next
run takes that entry (`plan._after_earlier_refresh`), so that it skips the container unread when the output holds
exactly those ids, as after a complete run, rather than read it whole again only to record it. A run stopped in its
pipeline (Ctrl-C, SIGTERM, a failure) notes, as it stops, the same entries of the refreshed containers its read tasks
read to their end, without `whole` (their rows may not all be written: one not written leaves its id out of the
output, which then does not match, and the container is read again). One killed (SIGKILL) in its pipeline notes
nothing as it dies, so the run notes those entries as its pipeline goes (`job.RefreshReadNotes`: the first refreshed
container read to its end at once, then at most every `job.REFRESH_NOTE_S`): the next run reads again, its done ids
skipped, only the refreshed containers the killed run had not read to their end or read since its last note (which
ids a container's new version holds is known only from a read of it to its end: a member added to it may have no row
yet). Such a read again is work done twice, never a row lost or doubled.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import JobError
from pipeline.ledger import ContainerRead, recordable
from pipeline.storage import describe, make_parent_dirs, replace_file, storage_path, with_retries

REFRESH_DIR = "_refresh"
JOURNAL_FILE = "journal.json"
# 2: the ids grouped by the part file holding their old rows, each file named once (1, which this version still reads:
# each id with its files, indented; a journal of 10^6 ids was 96 MB and took seconds to write and to read)
JOURNAL_FORMAT = 2
READ_FORMATS = (1, 2)


def journal_path(output: str) -> str:
    return f"{output.rstrip('/')}/{REFRESH_DIR}/{JOURNAL_FILE}"


@dataclass(frozen=True)
class Journal:
    """What a --refresh-changed run replaces: id -> the part files ('data/part-....parquet', relative to the output)
    that held its old rows; and input id -> (kind, the stamp its listing gave, its ids among `rows`)."""

    rows: dict[str, list[str]]
    inputs: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)
    # the run's part file names are salted with it (`stages.part_name`): a new row never lands in an old row's file
    salt: str = ""
    # the inputs (tar shards, Parquet and zip files) the run read to their end, all their rows written: noted once its
    # pipeline has ended (`job._note_refreshed_reads`). A member such a file no longer gives has no new row, and its old row
    # stays, as in a run that ends complete: the file is done all the same (`new_stamps`)
    whole: frozenset[str] = frozenset()
    # input id (one of `inputs`) -> the `_containers/` entry of a read of it to its end, as a complete run records it
    # (`pipeline.ledger`): of those in `whole`, noted with them; of others, by a run stopped in its pipeline (their rows
    # may not all be written). Its `leftover` is the read's own: for one in `whole`, the ids of `inputs` left without a
    # new row are added by the run that applies the journal (`plan._after_earlier_refresh`)
    read: dict[str, ContainerRead] = field(default_factory=dict)

    def settled(self, holders: dict[str, list[str]]) -> set[str]:
        """The ids with a new row: one in a part file the journal does not name for them (`holders`: id -> the part
        files holding a row of it now)."""
        return {id_ for id_, names in self.rows.items() if set(holders.get(id_, ())) - set(names)}

    def new_stamps(self, settled: set[str]) -> dict[str, tuple[str, str]]:
        """The inputs every id of which has its new row (`settled`), or that the run read to their end (`whole`), with
        the stamp those rows were made from."""
        return {input_id: (kind, stamp) for input_id, (kind, stamp, ids) in self.inputs.items()
                if ids and (input_id in self.whole or settled.issuperset(ids))}


def read_journal(output: str, storage_options: dict[str, Any]) -> Journal | None:
    """The journal a refresh run left; None when there is none. One that cannot be read stops the run (a JobError):
    without it, two rows of an id could not be told apart. Both formats are read: an output left mid-refresh by an
    earlier version is completed by its rule as by this one's."""
    uri = journal_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        data = with_retries(lambda: fs.cat_file(path), f"read {uri}")
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - the storage's answer (throttled, no permission): the journal may be whole
        raise JobError(f"cannot read {uri} ({describe(err)}): it says which rows a --refresh-changed run replaced; "
                       "this run stops before it writes a row: run again once the storage lets it be read") from err
    try:
        payload = json.loads(data)
    except Exception as err:  # noqa: BLE001 - named with what to do
        raise _unreadable(uri, describe(err)) from err
    form = payload.get("format") if isinstance(payload, dict) else None
    if form not in READ_FORMATS:
        raise JobError(f"{uri} is not a journal this version reads (formats {', '.join(map(str, READ_FORMATS))}); a "
                       "newer version wrote it, or something else damaged it: run the version that wrote it, or "
                       "restore it")
    try:
        journal = _from_format_1(payload) if form == 1 else _from_format_2(payload)
    except (TypeError, ValueError, LookupError, AttributeError) as err:  # the right format number, not its shape
        raise _unreadable(uri, f"not a journal of format {form}: {describe(err)}") from err
    return journal


def _unreadable(uri: str, why: str) -> JobError:
    return JobError(f"cannot read {uri} ({why}): it says which rows a --refresh-changed run replaced; restore it, or "
                    "remove it to keep, of each id held twice, the row the end-of-run check keeps by its own rule "
                    "(data/ first), which may be the earlier version's")


def _texts(values: Any) -> list[str]:
    if not isinstance(values, list) or not set(map(type, values)) <= {str}:  # not a generator: 10^6 ids
        raise ValueError("a list of texts expected")
    return values


def _from_format_1(payload: dict[str, Any]) -> Journal:
    """{"rows": {id: [part file, ...]}, "inputs": {input id: [kind, stamp, [id, ...]]}, "salt": ...}"""
    if not isinstance(payload.get("rows"), dict):
        raise ValueError("no rows")
    rows = {str(id_): [str(name) for name in names] for id_, names in payload["rows"].items()}
    inputs = {str(i): (str(kind), str(stamp), [str(id_) for id_ in ids])
              for i, (kind, stamp, ids) in (payload.get("inputs") or {}).items()}
    return Journal(rows, inputs, str(payload.get("salt", "")))


def _from_format_2(payload: dict[str, Any]) -> Journal:
    """{"parts": [[part file or null, [id, ...]], ...], "inputs": {input id: [kind, stamp] or [kind, stamp, [id, ...]]},
    "salt": ..., "whole": [input id, ...] (optional), "read": {input id: ledger entry} (optional, `_read_entries`)}:
    each id with the files whose group lists it (null: an id listed with no file); an input without its ids has the
    one id it names (an image file)."""
    rows: dict[str, list[str]] = {}
    for name, ids in payload["parts"]:
        if name is not None and not isinstance(name, str):
            raise ValueError("a part file's name is not a text")
        one = [name] if name is not None else []  # shared by the ids held in this file alone (nearly all)
        again = rows.keys() & _texts(ids)  # ids of an earlier group: held in several files
        rows.update(dict.fromkeys(ids, one) if not again else ((i, one) for i in ids if i not in again))
        for id_ in again:
            if name is not None and name not in rows[id_]:
                rows[id_] = [*rows[id_], name]
    inputs: dict[str, tuple[str, str, list[str]]] = {}
    for input_id, entry in payload["inputs"].items():
        kind, stamp, *ids = _texts(entry[:2]) + entry[2:]
        if len(ids) > 1:
            raise ValueError(f"input {input_id}: more than kind, stamp and ids")
        inputs[input_id] = (kind, stamp, _texts(ids[0]) if ids else [input_id])
    salt = payload["salt"]
    if not isinstance(salt, str):
        raise ValueError("its salt is not a text")
    whole = frozenset(_texts(payload.get("whole", [])))
    return Journal(rows, inputs, salt, whole, _read_entries(payload.get("read"), set(inputs)))


def _read_entries(payload: Any, inputs: set[str]) -> dict[str, ContainerRead]:
    """The `read` of a format 2 journal ({input id: {path, size, stamp, records, ids_sha256[, leftover,
    lookalikes_checked]}}), of the journal's `inputs` only (a read that ended in its container's lasting reject is never
    noted: `job._refreshed_reads`). Not needed to apply the journal's rule: one
    that cannot be read is left out (the next run reads those containers again), not a reason to stop."""
    entries: dict[str, ContainerRead] = {}
    for input_id, entry in (payload.items() if isinstance(payload, dict) else ()):
        try:
            read = ContainerRead(str(entry["path"]), None if entry["size"] is None else int(entry["size"]),
                                 str(entry["stamp"]), int(entry["records"]), str(entry["ids_sha256"]),
                                 lookalikes_checked=entry.get("lookalikes_checked") is True,
                                 leftover=tuple(_texts(entry.get("leftover", []))))
        except (TypeError, ValueError, LookupError, AttributeError):
            continue
        if input_id in inputs:
            entries[input_id] = read
    return entries


def write_journal(output: str, storage_options: dict[str, Any], journal: Journal) -> None:
    """Write the journal whole (format 2: `_from_format_2`), with no spaces: the JSON encoder that indents is Python's
    own, 10 times slower than the one that does not."""
    uri = journal_path(output)
    fs, path = storage_path(uri, storage_options)
    by_file: dict[str | None, list[str]] = {}
    for id_, names in journal.rows.items():
        for name in names or (None,):
            by_file.setdefault(name, []).append(id_)
    inputs = journal.inputs
    # a container whose address holds a credential is not noted, as the record of containers leaves it out
    # (`ledger.recordable`): a later run reads it again, its done ids skipped
    read = {i: entry for i, entry in journal.read.items() if recordable(entry.path)}
    data = json.dumps({"format": JOURNAL_FORMAT, "salt": journal.salt,
                       "parts": [[name, sorted(by_file[name])]
                                 for name in sorted(by_file, key=lambda n: (n is None, n or ""))],
                       "inputs": {i: [kind, stamp, *([] if ids == [i] else [ids])]
                                  for i, (kind, stamp, ids) in sorted(inputs.items())},
                       **({"whole": sorted(journal.whole)} if journal.whole else {}),
                       **({"read": {i: _read_entry(read[i]) for i in sorted(read)}} if read else {})},
                      separators=(",", ":")).encode()
    with_retries(lambda: make_parent_dirs(fs, posixpath.dirname(path)), f"write {uri}")
    replace_file(fs, path, data, f"write {uri}")


def _read_entry(entry: ContainerRead) -> dict[str, Any]:
    """One entry of a journal's `read` (`_read_entries` reads it back)."""
    return {"path": entry.path, "size": entry.size, "stamp": entry.stamp, "records": entry.records,
            "ids_sha256": entry.ids_sha256, **({"leftover": list(entry.leftover)} if entry.leftover else {}),
            **({"lookalikes_checked": True} if entry.lookalikes_checked else {})}


def remove_journal(output: str, storage_options: dict[str, Any]) -> None:
    """Remove the journal once its rule is applied (a journal already gone is no error)."""
    uri = journal_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        with_retries(lambda: fs.rm_file(path), f"remove {uri}")
    except FileNotFoundError:
        pass
    if isinstance(fs, LocalFileSystem):  # a disk keeps the emptied folder; an object store has none to remove
        try:
            os.rmdir(posixpath.dirname(path))
        except OSError:  # not empty (a temporary of another write) or gone: left as it is
            pass
