"""The output's records of its inputs across runs that stop without a word (SIGKILL): the record of the inputs'
stamps (`_inputs/stamps.parquet`, pipeline.changes) always reads, and a --refresh-changed run killed in its pipeline
leaves the refreshed containers its read tasks had read to their end noted in its journal (pipeline.refresh), so
that the next run does not read them again only to skip each of their ids."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest

import pipeline.job as job_module
import pipeline.storage as storage_module
from pipeline.changes import InputRecord, read_record, record_path, write_record
from pipeline.job import run_job
from pipeline.lease import LEASE_FILE
from pipeline.ledger import read_ledger
from pipeline.refresh import read_journal
from tests.jobutil import (
    no_ray_from_here_on,
    shard_refresh_stopped_after_its_last_batch,
    small_job_config,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data_once(out) -> dict[str, str]:
    """The output's data/ rows as id -> source_sha256, checked to hold each id once in data/ and rejects/ together."""
    ids, shas = [], {}
    for folder in ("data", "rejects"):
        for part in sorted((out / folder).glob("part-*.parquet")):
            table = pq.read_table(part, columns=["id", "source_sha256"])
            for id_, sha in zip(table.column("id").to_pylist(), table.column("source_sha256").to_pylist(), strict=True):
                ids.append(id_)
                if folder == "data":
                    shas[id_] = sha
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    return shas


def test_a_record_whose_write_fails_half_way_leaves_the_earlier_one_whole(tmp_path, monkeypatch) -> None:
    """A run killed or failing while it writes the record (its temporary written, not yet in place) must leave the
    earlier record to the next run, never a part of the new one or none."""
    out = str(tmp_path / "out")
    earlier = InputRecord("/in", {f"{i}.png": ("files", f"{i:016x}") for i in range(1000)})
    write_record(out, {}, earlier)

    def cut(*args, **kwargs):
        raise OSError("killed half-way")

    monkeypatch.setattr(storage_module, "move_into_place", cut)
    with pytest.raises(OSError, match="killed half-way"):
        write_record(out, {}, InputRecord("/in", {"0.png": ("files", "new")}))
    assert read_record(out, {}, "/in") == earlier
    assert [p.name for p in (tmp_path / "out" / "_inputs").iterdir()] == [record_path(out).rsplit("/", 1)[1]]


def _refresh_killed_after_its_last_batch(tmp_path, model, monkeypatch) -> dict[str, bytes]:
    """A shard of three members purified; then rewritten in place (0 changed, 1 and 2 the same, 3 added) and a
    --refresh-changed run killed (SIGKILL) once its pipeline had reported its last batch: the output is left as it was
    at that moment (every file the job writes is whole, so a copy taken then is what a kill leaves), with no stop
    recorded and no lease of a live run."""
    out, killed = tmp_path / "out", tmp_path / "killed"
    changed = shard_refresh_stopped_after_its_last_batch(
        tmp_path, model, monkeypatch, lambda: shutil.copytree(out, killed, ignore=shutil.ignore_patterns(LEASE_FILE)))
    shutil.rmtree(out)
    killed.rename(out)
    assert read_journal(str(out), {}) is not None
    return changed


@pytest.mark.usefixtures("ray_local")
def test_a_shard_a_killed_refresh_read_to_its_end_is_not_read_again_by_the_next_run(tmp_path, model,
                                                                                    monkeypatch) -> None:
    """Killed in its pipeline, a refresh noted nothing of the shards it had read: the next run took the shard's new
    stamp from the journal (each of its ids had its new row) but not what its read gave, so it started Ray and read
    the shard whole again only to skip every id of it. The journal now notes each refreshed shard's read as the
    pipeline reports it."""
    changed = _refresh_killed_after_its_last_batch(tmp_path, model, monkeypatch)
    no_ray_from_here_on(monkeypatch)
    resumed = run_job(small_job_config(tmp_path, model, incremental=True))
    run = resumed["this_run"]
    assert (resumed["status"], resumed["changed_inputs"]["containers"]) == ("complete", 0)
    assert (run["read"], run["containers_skipped_unread"], run["containers_recorded"]) == (0, 1, 1)
    assert _data_once(tmp_path / "out") == {f"s.tar/{k}": _sha(changed[f"{k}.png"]) for k in range(4)}
    (entry,) = read_ledger(str(tmp_path / "out"), {}).values()
    assert (entry.records, entry.leftover) == (4, ())
    assert not (tmp_path / "out" / "_refresh").exists()
    later = run_job(small_job_config(tmp_path, model, refresh_changed=True))["this_run"]
    assert (later["read"], later["containers_skipped_unread"], later["refreshed"]["inputs"]) == (0, 1, 0)


def test_a_refresh_notes_its_reads_at_once_then_at_most_every_interval_and_only_for_refreshed_containers(
        monkeypatch) -> None:
    """Each note is the whole journal written again (seconds at 10^6 ids): the first refreshed container read to its
    end is noted at once, later ones at most every REFRESH_NOTE_S, a container not refreshed never."""
    from types import SimpleNamespace

    from pipeline.refresh import Journal
    from pipeline.sources import ReadUnit

    noted: list[int] = []
    monkeypatch.setattr(job_module, "_note_refreshed_reads",
                        lambda out, so, plan, read_whole, **kw: noted.append(len(read_whole)) or True)
    clock = [1000.0]
    units = [ReadUnit("tar", (f"/in/{name}",), "/in") for name in ("a.tar", "b.tar", "c.tar")]
    journal = Journal({"a.tar/0": [], "b.tar/0": []}, {"a.tar": ("tar", "new", ["a.tar/0"]),
                                                       "b.tar": ("tar", "new", ["b.tar/0"])})
    notes = job_module.RefreshReadNotes("/out", {}, SimpleNamespace(refresh=journal, units=units), clock=lambda: clock[0])
    tally = SimpleNamespace(read_whole=[])

    def read(name: str, after_s: float) -> None:
        clock[0] += after_s
        tally.read_whole.append({"path": f"/in/{name}"})
        notes.after(tally)

    read("c.tar", 0)  # not refreshed: nothing to note
    read("a.tar", 1)  # the first: at once
    read("b.tar", 1)  # within the interval: later
    notes.after(tally)
    assert noted == [2]
    clock[0] += job_module.REFRESH_NOTE_S
    notes.after(tally)  # the next batch after the interval: b.tar noted with the rest
    assert noted == [2, 3]
    clock[0] += job_module.REFRESH_NOTE_S
    read("c.tar", 0)  # nothing refreshed read since
    assert noted == [2, 3]


def test_a_refresh_note_that_could_not_be_written_is_tried_again_at_the_next_interval(monkeypatch, capsys) -> None:
    """A note whose journal write failed (storage unavailable for a while) was marked done all the same: with no other
    refreshed container read after it, its reads went unnoted for the rest of the pipeline, and a SIGKILL there left the
    next run to read them again, though the warning had said they would be noted again later."""
    from types import SimpleNamespace

    from pipeline.refresh import Journal
    from pipeline.sources import ReadUnit

    written: list[set[str]] = []

    def write_journal(out: str, so: dict, journal: Journal) -> None:
        if not written:
            written.append(set())
            raise ConnectionError("503 Service Unavailable")
        written.append(set(journal.read))

    monkeypatch.setattr(job_module, "write_journal", write_journal)
    clock = [1000.0]
    unit = ReadUnit("tar", ("/in/a.tar",), "/in", sizes=(10,), stamps=("new",))
    journal = Journal({"a.tar/0": []}, {"a.tar": ("tar", "new", ["a.tar/0"])})
    plan = SimpleNamespace(refresh=journal, units=[unit], container_purified=set())
    notes = job_module.RefreshReadNotes("/out", {}, plan, clock=lambda: clock[0])
    tally = SimpleNamespace(read_whole=[{"path": "/in/a.tar", "records": 1, "ids_sha256": "x"}])
    notes.after(tally)  # a.tar read to its end: noted at once, and that write fails
    assert written == [set()] and "could not note the containers read so far" in capsys.readouterr().err
    clock[0] += job_module.REFRESH_NOTE_S
    notes.after(tally)  # the next batch after the interval, no other container read since: a.tar noted now
    assert written == [set(), {"a.tar"}]
    clock[0] += job_module.REFRESH_NOTE_S
    notes.after(tally)  # noted: not written again
    assert len(written) == 2
