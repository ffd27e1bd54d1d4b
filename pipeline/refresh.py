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

The refresh run applies this rule in its end-of-run check (`output.deduplicate_output`), then removes the journal.
A run that finds a journal when it starts (one left by a run killed or stopped before that) applies the same rule
first (`output.drop_superseded_rows`), then removes it, before it plans anything of its own into a new one: so a kill
at any point leaves at worst the old and the new row of an id together with the journal that says which is kept. A
part file written again under its own name (a batch of the same ids: `stages.part_name`) replaced the old row in
place; the rule then finds nothing to remove. Changed containers (tar shards, Parquet and zip files) are read whole
again: every done row of one is refreshed (which member changed cannot be told); a member it no longer holds gives
no new row, and its old row stays (ledger's `leftover`), as it would without --refresh-changed.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from pipeline.errors import JobError
from pipeline.storage import describe, make_parent_dirs, replace_file, storage_path, with_retries

REFRESH_DIR = "_refresh"
JOURNAL_FILE = "journal.json"
JOURNAL_FORMAT = 1


def journal_path(output: str) -> str:
    return f"{output.rstrip('/')}/{REFRESH_DIR}/{JOURNAL_FILE}"


def read_journal(output: str, storage_options: dict[str, Any]) -> dict[str, list[str]] | None:
    """The journal a refresh run left (id -> the part files, relative to the output, that held its old rows); None
    when there is none. One that cannot be read stops the run (a JobError): without it, two rows of an id could not be
    told apart."""
    uri = journal_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        payload = json.loads(with_retries(lambda: fs.cat_file(path), f"read {uri}"))
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - named with what to do
        raise JobError(f"cannot read {uri} ({describe(err)}): it says which rows a --refresh-changed run replaced; "
                       "restore it, or remove it to keep, of each id held twice, the row the end-of-run check keeps "
                       "by its own rule (data/ first), which may be the earlier version's") from err
    if not isinstance(payload, dict) or payload.get("format") != JOURNAL_FORMAT or not isinstance(payload.get("rows"),
                                                                                                   dict):
        raise JobError(f"{uri} is not a journal this version reads (format {JOURNAL_FORMAT}); a newer version wrote "
                       "it, or something else damaged it: run the version that wrote it, or restore it")
    return {str(id_): [str(name) for name in names] for id_, names in payload["rows"].items()}


def write_journal(output: str, storage_options: dict[str, Any], rows: dict[str, list[str]]) -> None:
    """Write the journal whole (`rows`: id -> the part files that hold its old rows)."""
    uri = journal_path(output)
    fs, path = storage_path(uri, storage_options)
    data = json.dumps({"format": JOURNAL_FORMAT, "rows": {id_: sorted(rows[id_]) for id_ in sorted(rows)}},
                      indent=1).encode()
    with_retries(lambda: make_parent_dirs(fs, posixpath.dirname(path)), f"write {uri}")
    replace_file(fs, path, data, f"write {uri}")


def remove_journal(output: str, storage_options: dict[str, Any]) -> None:
    """Remove the journal once its rule is applied (a journal already gone is no error)."""
    uri = journal_path(output)
    fs, path = storage_path(uri, storage_options)
    try:
        with_retries(lambda: fs.rm_file(path), f"remove {uri}")
    except FileNotFoundError:
        pass
