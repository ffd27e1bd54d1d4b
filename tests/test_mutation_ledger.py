"""Mutation-audit gaps in the record of containers read whole (pipeline.ledger) and what uses it: the plan of an
--incremental or resumed run on a hand-made output (no Ray), the record written at the end of a run, the stamp of a
listing, done tar keys and Parquet rows not read, and the skip list each read task gets in its own row. The mutant
ids in the comments (L: ledger.py, S: sources.py, T: stages.py, J: job.py) are those of the audit table in this
file's commit message."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.job as job_module
from pipeline.job import _record_containers_read, run_job
from pipeline.ledger import LEDGER_DIR, ContainerRead, ledger_path, read_ledger, unchanged_and_done, write_ledger
from pipeline.output import JOB_FILE, SUMMARY_FILE, clear_output, write_json
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover, ids_digest, listing_stamp, read_unit, tar_members
from pipeline.sources.parquet_files import read_parquet
from pipeline.stages import _data_table, batch_of, part_name, read_stage, records_of, write_parquet_atomic, write_stage
from tests.jobutil import image_bytes, read_output, small_job_config, spy_on_extraction, tar_bytes


def _shard(n: int) -> bytes:
    return tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(n)})


def _done_row(id_: str) -> dict:
    return {"id": id_, "png": b"png", "width": 8, "height": 8, "meta": {}, "source": id_, "source_sha256": "0" * 64,
            "psnr_vs_input_db": 30.0, "downscale_factor": 1.0, "original_mode": "RGB", "original_format": "PNG",
            "original_frames": 1}


def _hand_made_output(tmp_path, model, done: list[str], status: str) -> str:
    """An output as a run of this job leaves it (its record, `done` in one data/ part file, a summary with
    `status`), without running one: plan_job only reads these."""
    out = str(tmp_path / "out")
    write_json(f"{out}/{JOB_FILE}", plan_job(small_job_config(tmp_path, model), dry_run=True).job_record, {})
    write_parquet_atomic(_data_table([_done_row(i) for i in done]), f"{out}/data/{part_name(done)}", {})
    write_json(f"{out}/{SUMMARY_FILE}", {"status": status}, {})
    return out


def _units(root) -> dict[str, ReadUnit]:
    return {u.paths[0].rsplit("/", 1)[-1]: u for u in discover(str(root))}


def _entry(unit: ReadUnit, ids: list[str]) -> ContainerRead:
    return ContainerRead(unit.paths[0], unit.sizes[0], unit.stamps[0], len(ids), ids_digest(ids))


A_IDS = [f"a.tar/{k}" for k in range(3)]


@pytest.fixture
def recorded(tmp_path, model):
    """a.tar read whole by an earlier run and recorded; b.tar half done and not recorded; no image file done."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.tar").write_bytes(_shard(3))
    (root / "b.tar").write_bytes(_shard(2))
    units = _units(root)
    return root, units, A_IDS + ["b.tar/0"], {units["a.tar"].paths[0]: _entry(units["a.tar"], A_IDS)}


@pytest.mark.parametrize("status, flags, state", [("complete", {"incremental": True}, "incremental"),
                                                  ("interrupted", {}, "resume")])
def test_the_plan_skips_a_recorded_unchanged_container_unread_on_incremental_and_resumed_runs(
        tmp_path, model, recorded, status, flags, state) -> None:
    # kills: J2 (ledger not read on resume), J4 (unread still in units), J5/J1 (the read task's own done ids),
    # J6/J7 (counts of what is skipped), J8 (containers_already_done showing the image files' count instead)
    root, units, done, ledger = recorded
    out = _hand_made_output(tmp_path, model, done, status)
    write_ledger(out, {}, ledger)
    plan = plan_job(small_job_config(tmp_path, model, **flags), dry_run=True)
    assert plan.output_state == state
    assert [u.paths[0] for u in plan.units] == [units["b.tar"].paths[0]]  # a.tar is not read at all
    assert plan.container_done == {units["b.tar"].paths[0]: ["b.tar/0"]}  # b.tar's task skips only its own done key
    assert (plan.skipped_containers, plan.skipped_container_records, plan.skipped_files) == (1, 3, 0)
    described = plan.describe()["input"]
    assert (described["containers_already_done"], described["image_files_already_done"]) == (1, 0)
    assert described["tar_shards"] == 1


def test_the_plan_reads_a_recorded_container_again_when_an_id_of_it_left_the_output(tmp_path, model,
                                                                                   recorded) -> None:
    # kills L13 at the plan (as many ids as recorded, but a stale one stands in for a.tar/1), J1, L4, S32
    root, units, done, ledger = recorded
    out = _hand_made_output(tmp_path, model, [i for i in done if i != "a.tar/1"] + ["a.tar/9"], "complete")
    write_ledger(out, {}, ledger)
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert sorted(u.paths[0].rsplit("/", 1)[-1] for u in plan.units) == ["a.tar", "b.tar"]
    assert sorted(plan.container_done[units["a.tar"].paths[0]]) == ["a.tar/0", "a.tar/2", "a.tar/9"]
    assert plan.describe()["input"]["containers_already_done"] == 0


def test_the_record_written_at_the_end_keeps_earlier_entries_and_only_versioned_listings(tmp_path, model,
                                                                                       recorded) -> None:
    # kills: J10 (a listing without a version recorded), J11 (size and stamp swapped), J12 (earlier records
    # forgotten: a.tar, skipped unread by this run, would be read by the next), J17 (the plan drops the ledger),
    # J18 (the count says what was read whole, not what was recorded)
    root, units, done, ledger = recorded
    (root / "c.tar").write_bytes(_shard(1))
    units = _units(root)
    out = _hand_made_output(tmp_path, model, done, "complete")
    write_ledger(out, {}, ledger)
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    b, c = (units[name].paths[0] for name in ("b.tar", "c.tar"))
    c_unit = next(u for u in plan.units if u.paths[0] == c)
    plan = replace(plan, units=[u if u is not c_unit else replace(u, stamps=(None,)) for u in plan.units])
    b_ids = ["b.tar/0", "b.tar/1"]
    read_whole = [{"path": b, "records": 2, "ids_sha256": ids_digest(b_ids)},
                  {"path": c, "records": 1, "ids_sha256": ids_digest(["c.tar/0"])}]
    assert _record_containers_read(out, {}, plan, read_whole) == 1
    written = read_ledger(out, {})
    assert written == {**ledger, b: _entry(units["b.tar"], b_ids)}
    # nothing versioned read whole: the record is left as it was
    assert _record_containers_read(out, {}, plan, read_whole[1:]) == 0
    assert read_ledger(out, {}) == written


def test_clear_output_deletes_the_record_of_containers(tmp_path) -> None:
    # kills J9: after --overwrite, a container recorded by the old output would be skipped by the next run
    out = str(tmp_path / "out")
    write_ledger(out, {}, {"/in/a.tar": ContainerRead("/in/a.tar", 1, "v", 0, ids_digest([]))})
    clear_output(out, {})
    assert not (tmp_path / "out" / LEDGER_DIR).exists()


@pytest.mark.parametrize("payload", [b"{not json", json.dumps({"format": 99, "containers": []}).encode(),
                                     json.dumps({"format": 1, "containers": [{"path": "/in/a.tar"}]}).encode()])
def test_a_record_that_cannot_be_used_is_ignored_with_a_note(tmp_path, capsys, payload) -> None:
    # kills L7 (another format read as this one) and L8 (a bad record failing the run instead of costing a read)
    out = str(tmp_path / "out")
    write_ledger(out, {}, {})
    with open(ledger_path(out), "wb") as f:
        f.write(payload)
    assert read_ledger(out, {}) == {}
    assert "ignoring" in capsys.readouterr().err


def test_a_record_without_a_stamp_never_matches() -> None:
    # kills L9: a record whose stamp is null (hand-edited, or written by a bug) must not match a listing without one
    unit = ReadUnit("tar", ("/in/s.tar",), "/in", (100,), (None,))
    assert not unchanged_and_done(unit, None, ContainerRead("/in/s.tar", 100, None, 0, ids_digest([])), [])


@pytest.mark.parametrize("field", ["ETag", "etag", "VersionId", "generation", "mtime", "LastModified",
                                   "last_modified"])
def test_each_version_field_alone_makes_a_stamp_that_changes_with_it(field) -> None:
    # kills S3, S4, S5, S7 (a field dropped: an object store listing with only it would never be skipped)
    assert listing_stamp({"size": 3, field: "1"}) is not None
    assert listing_stamp({"size": 3, field: "1"}) != listing_stamp({"size": 3, field: "2"})


def test_a_version_field_without_a_value_is_no_version() -> None:
    # kills S6: {'mtime': None} says nothing of the file's version; with an inode only, it must not be recorded
    assert listing_stamp({"size": 3, "mtime": None, "ino": 7}) is None


def test_a_shard_that_ends_early_is_read_once_not_retried(tmp_path, monkeypatch) -> None:
    # kills S14: the early end raised as an error that looks transient would fetch the damaged shard 4 times, with
    # back-off sleeps, before giving the same reject
    retries = []
    monkeypatch.setattr(tar_members, "backoff", retries.append)
    (tmp_path / "s.tar").write_bytes(_shard(3)[:3 * 1024])  # no end-of-archive blocks
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert [r["id"] for r in records if r["kind"] == "reject"] == ["s.tar#unreadable"]
    assert retries == []


def test_a_done_keys_link_to_another_done_keys_member_is_not_extracted(tmp_path, monkeypatch) -> None:
    # kills S17: links of done keys counted as readers make their targets be extracted (and kept) for nothing
    (tmp_path / "s.tar").write_bytes(tar_bytes({"a.png": image_bytes(8, 8, 5), "c.png": image_bytes(8, 8, 5)},
                                               hard_links={"b.png": "a.png"}))
    (unit,) = discover(str(tmp_path))
    extracted = spy_on_extraction(monkeypatch)
    records = list(read_unit(unit, skip_ids={"s.tar/a", "s.tar/b"}))
    assert extracted == ["c.png"]
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/c"]


def test_parquet_done_rows_are_skipped_records_and_the_digest_covers_skipped_groups(tmp_path) -> None:
    table = pa.table({"image": [image_bytes(8, 8, i) for i in range(6)], "label": list(range(6))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)  # groups: rows 0-2, 3-5
    (unit,) = discover(str(tmp_path))
    # kills S22: a done row in a group that is read gives a "skipped" record, its cell never copied
    kinds = [r["kind"] for r in read_parquet(unit, {}, None, 2**30, 2**30, skip_ids={"t.parquet#4"})]
    assert kinds == ["image"] * 4 + ["skipped", "image"]
    # kills S23: a group skipped unread still names each of its rows, so the recorded digest is of the file's ids
    records = list(read_unit(unit, skip_ids={"t.parquet#0", "t.parquet#1", "t.parquet#2"}))
    assert records[-1]["container"]["ids_sha256"] == ids_digest([f"t.parquet#{i}" for i in range(6)])


def test_read_stage_skips_the_done_ids_in_a_rows_own_skip_list(tmp_path) -> None:
    # kills T1: the job passes each container's done ids in its row, and no other skip ids
    (tmp_path / "s.tar").write_bytes(_shard(3))
    (unit,) = discover(str(tmp_path))
    batch = {k: [v] for k, v in {**unit.to_row(), "skip": ["s.tar/0", "s.tar/2"]}.items()}
    records = [r for b in read_stage(batch, {}, False, None, frozenset()) for r in records_of(b)]
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/1"]
    assert (records[-1]["n"], records[-1]["skipped"]) == (1, 2)


def test_write_stage_hands_on_every_container_read_whole_in_its_batch(tmp_path) -> None:
    # kills T3/T4: a container left out of the manifest is never recorded, and read again by every later run
    containers = [{"path": f"/in/{n}.tar", "records": 1, "ids_sha256": ids_digest([f"{n}.tar/0"])} for n in "ab"]
    records = [{"kind": "count", "n": 0, "skipped": 1, "container": c} for c in containers]
    records.append({"kind": "count", "n": 0, "skipped": 0})  # image files: no container
    manifest = write_stage(batch_of(records), str(tmp_path), {})
    assert json.loads(manifest["containers"][0]) == containers


# --- whole runs (Ray) ---

@pytest.mark.usefixtures("ray_local")
def test_only_a_complete_run_records_and_the_summary_counts_containers_skipped(tmp_path, model,
                                                                              monkeypatch) -> None:
    # kills J13 (a run that is not complete recorded what it read), J14 (skipped_already_done without the records
    # of the containers skipped unread) and J15 (containers_skipped_unread)
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.tar").write_bytes(_shard(3))
    (root / "x.png").write_bytes(image_bytes(8, 8, 9))
    with monkeypatch.context() as patched:
        patched.setattr(job_module, "run_status", lambda *args: "inconsistent")
        with pytest.raises(job_module.JobFailed):
            run_job(small_job_config(tmp_path, model))
    assert not (tmp_path / "out" / LEDGER_DIR).exists()
    assert run_job(small_job_config(tmp_path, model))["this_run"]["containers_recorded"] == 1  # resumed, all done: recorded
    second = run_job(small_job_config(tmp_path, model, incremental=True))["this_run"]
    assert (second["read"], second["containers_skipped_unread"], second["skipped_already_done"]) == (0, 1, 4)


@pytest.mark.usefixtures("ray_local")
def test_an_incremental_run_over_a_shard_that_breaks_off_or_an_unreadable_parquet_file_is_complete(tmp_path, model) -> None:
    # a shard cut short inside its second member's bytes (s.tar/1 and s.tar#unreadable), and a Parquet file that cannot
    # be opened at all, whose only record is its '#unreadable' reject: one run over both (two runs fewer than apart)
    root = tmp_path / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(_shard(3)[:1700])
    (root / "t.parquet").write_bytes(b"not parquet")
    first = run_job(small_job_config(tmp_path, model))
    assert first["status"] == "complete" and first["this_run"]["rejected"] == 3, first["this_run"]
    second = run_job(small_job_config(tmp_path, model, incremental=True))
    assert second["status"] == "complete" and second["this_run"]["rejected"] == 0
    # neither read again: the shard's 3 records and the Parquet file's one are already done
    assert (second["this_run"]["read"], second["this_run"]["skipped_already_done"]) == (0, 4)
    _, rejects = read_output(str(tmp_path / "out"))
    assert sorted(rejects["id"]) == ["s.tar#unreadable", "s.tar/1", "t.parquet#unreadable"]
