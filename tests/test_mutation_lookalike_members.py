"""Review and mutation audit of 41e362d (a tar member added beside one purified earlier under the same escaped id is
a reject, 's.tar#lookalike/...') and 5a1bcec (a stopped run counts a part file it wrote over an earlier one of the
same name). The mutant ids in the comments are those of the audit table in this file's commit message."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.ledger import ContainerRead, container_ids, ledger_path, read_ledger, write_ledger
from pipeline.output import JOB_FILE, SUMMARY_FILE, write_json
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover, ids_digest, read_unit, reject_record
from pipeline.stages import _data_table, _rejects_table, part_name, write_parquet_atomic
from pipeline.stopped_run import count_stopped_run, part_names
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes

PURIFIED = "s.tar/caf\\xe9"  # the id a latin-1 'café.png' and a member literally named 'caf\\xe9.png' both give
LOOKALIKE = "s.tar#lookalike/caf\\xe9"
LATIN1, LITERAL = image_bytes(8, 8, 1), image_bytes(8, 8, 3)


def _shard(root, literal: bool = True) -> None:
    """s.tar: latin-1 'café.png', ok.png and (`literal`) the member literally named 'caf\\xe9.png'."""
    members = {"café.png": LATIN1, "ok.png": image_bytes(8, 8, 2)}
    if literal:
        members["caf\\xe9.png"] = LITERAL
    root.mkdir(exist_ok=True)
    (root / "s.tar").write_bytes(tar_bytes(members, encoding="latin-1"))


def _done_row(id_: str) -> dict:
    return {"id": id_, "png": b"png", "width": 8, "height": 8, "meta": {}, "source": id_, "source_sha256": "0" * 64,
            "psnr_vs_input_db": 30.0, "downscale_factor": 1.0, "original_mode": "RGB", "original_format": "PNG",
            "original_frames": 1}


def _hand_made_output(tmp_path, model, done: list[str]) -> str:
    """A complete output holding `done` in data/, as a run leaves it, without running one (plan_job only reads it)."""
    out = str(tmp_path / "out")
    write_json(f"{out}/{JOB_FILE}", plan_job(small_job_config(tmp_path, model), dry_run=True).job_record, {})
    write_parquet_atomic(_data_table([_done_row(i) for i in done]), f"{out}/data/{part_name(done)}", {})
    write_json(f"{out}/{SUMMARY_FILE}", {"status": "complete"}, {})
    return out


def _old_record(out: str, unit, ids: list[str]) -> None:
    """The record of containers as versions before 41e362d wrote it: no word on look-alike members."""
    entry = {"path": unit.paths[0], "size": unit.sizes[0], "stamp": unit.stamps[0], "records": len(ids),
             "ids_sha256": ids_digest(ids)}
    path = Path(ledger_path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "containers": [entry]}))


# --- bug: an output an older version left after the member vanished kept it lost --------------------------------------

def test_a_shard_an_older_version_recorded_after_a_member_vanished_is_read_again(tmp_path, model) -> None:
    """Before 41e362d, the run after the append skipped both members and recorded the shard as read whole (2 ids).
    This version then skipped the unchanged shard unread on every run: the image stayed neither purified nor
    rejected. Reproduced with a2ff714's runs 1-2 and this version's run 3: read 0, containers_skipped_unread 1,
    output 2 purified and 0 rejected for a shard of 3 images."""
    _shard(tmp_path / "in")
    (unit,) = discover(str(tmp_path / "in"))
    done = [PURIFIED, "s.tar/ok"]
    out = _hand_made_output(tmp_path, model, done)
    _old_record(out, unit, done)
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert plan.describe()["input"]["containers_already_done"] == 0  # was 1: skipped unread
    assert [u.paths[0] for u in plan.units] == [unit.paths[0]]
    # a shard this version recorded is trusted as before: it gave the look-alike reject, or had no such member
    write_ledger(out, {}, {unit.paths[0]: ContainerRead(unit.paths[0], unit.sizes[0], unit.stamps[0], 2,
                                                        ids_digest(done), lookalikes_checked=True)})
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert plan.describe()["input"]["containers_already_done"] == 1 and plan.units == []


def test_an_older_record_of_a_shard_without_such_an_id_is_still_skipped_unread(tmp_path, model) -> None:
    """Only a shard holding a purified id that a name not UTF-8 gives is read again: the others keep their saving."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(tar_bytes({"a.png": LATIN1, "b.png": LITERAL}))
    (unit,) = discover(str(root))
    done = ["s.tar/a", "s.tar/b"]
    out = _hand_made_output(tmp_path, model, done)
    _old_record(out, unit, done)
    assert plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).units == []


def test_the_record_keeps_the_mark_and_an_older_version_can_still_read_it(tmp_path) -> None:
    out = str(tmp_path / "out")
    entries = {p: ContainerRead(p, 1, "stamp", 2, "d", lookalikes_checked=checked)
               for p, checked in (("/in/a.tar", True), ("/in/b.tar", False))}
    write_ledger(out, {}, entries)
    assert read_ledger(out, {}) == entries
    # what versions before this one do with each entry (they refuse one with a key they do not know)
    payload = json.loads((tmp_path / "out" / "_containers" / "containers.json").read_text())
    fields = ("path", "size", "stamp", "records", "ids_sha256")
    assert [tuple(e) for e in payload["containers"]] == [fields, fields]


@pytest.mark.usefixtures("ray_local")
def test_an_older_versions_record_gives_the_lookalike_reject_then_skips_the_shard(tmp_path, model) -> None:
    """The whole repro: run 1 purifies the shard; the member is appended; the record is as an older version's run 2
    left it (it skipped the member); this version's next run gives the member's reject, and the run after skips the
    unchanged shard unread."""
    root, out = tmp_path / "in", tmp_path / "out"
    _shard(root, literal=False)
    assert run_job(small_job_config(tmp_path, model))["output_totals"]["purified"] == 2
    _shard(root)
    (unit,) = discover(str(root))
    _old_record(str(out), unit, [PURIFIED, "s.tar/ok"])
    second = run_job(small_job_config(tmp_path, model, incremental=True))
    assert second["status"] == "complete" and second["this_run"]["containers_skipped_unread"] == 0
    assert (second["this_run"]["read"], second["this_run"]["rejected"]) == (1, 1)  # was (0, 0)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == [PURIFIED, "s.tar/ok"] and list(rejects["id"]) == [LOOKALIKE]
    third = run_job(small_job_config(tmp_path, model, incremental=True))
    assert third["this_run"]["containers_skipped_unread"] == 1 and third["output_totals"]["rejected"] == 1


# --- mutants of 41e362d that the existing tests left alive ---------------------------------------------------------


def test_a_lookalike_reject_of_a_shard_not_in_the_input_is_no_record_of_another(tmp_path) -> None:
    # kills L2: a look-alike reject whose shard is gone (deleted, or another input) is no container's, and planning
    # does not stop on it
    root = tmp_path / "in"
    _shard(root)
    (unit,) = discover(str(root))
    assert container_ids({"gone.tar#lookalike/caf\\xe9", "x/s.tar#lookalike/k", PURIFIED}, [unit]) == {
        unit.paths[0]: [PURIFIED]}


def test_twins_rejected_in_an_earlier_run_give_no_lookalike_reject(tmp_path) -> None:
    # kills S1: only an id purified before makes the member beside it a look-alike reject; the one reject a run that
    # saw both members gave stays the only row for them
    _shard(tmp_path)
    (unit,) = discover(str(tmp_path))
    *records, count = read_unit(unit, skip_ids={PURIFIED, "s.tar/ok"}, purified_ids={"s.tar/ok"})
    assert records == [] and (count["n"], count["skipped"]) == (0, 2) and "lookalike" not in count["container"]


def test_a_read_task_with_nothing_to_read_gives_its_count(tmp_path) -> None:
    # kills S8: the one empty row of a run that has nothing left to read (every image file done) is read as nothing
    assert list(read_unit(ReadUnit("files", (), ""))) == [{"kind": "count", "n": 0, "skipped": 0}]


def test_a_loose_file_named_like_a_lookalike_of_a_zip_or_parquet_file_is_read(tmp_path) -> None:
    # kills S10: only a tar shard gives look-alike rejects; the same name beside a zip archive or Parquet file takes
    # no reject's id and is an input like any other
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("x.png", LATIN1)
    pq.write_table(pa.table({"image": [LATIN1]}), tmp_path / "t.parquet")
    for folder in ("a.zip#lookalike", "t.parquet#lookalike"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "k.png").write_bytes(LITERAL)
    units = discover(str(tmp_path))
    assert sorted(p.rsplit("/", 2)[-2] for u in units if u.kind == "files" for p in u.paths) == [
        "a.zip#lookalike", "t.parquet#lookalike"]


@pytest.mark.usefixtures("ray_local")
def test_twins_rejected_before_stay_one_reject_when_their_shard_grows(tmp_path, model) -> None:
    # kills J2: the plan hands a shard's read task only its purified ids; a twin reject taken for one gave both the
    # reject and a look-alike reject for the same two members
    root, out = tmp_path / "in", tmp_path / "out"
    _shard(root)
    first = run_job(small_job_config(tmp_path, model))
    assert (first["output_totals"]["purified"], first["output_totals"]["rejected"]) == (1, 1)
    (root / "s.tar").write_bytes(tar_bytes({"café.png": LATIN1, "ok.png": image_bytes(8, 8, 2),
                                            "caf\\xe9.png": LITERAL, "new.png": image_bytes(8, 8, 4)},
                                           encoding="latin-1"))  # grown: read again
    second = run_job(small_job_config(tmp_path, model, incremental=True))
    assert second["status"] == "complete"
    assert (second["this_run"]["purified"], second["this_run"]["rejected"]) == (1, 0)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["s.tar/new", "s.tar/ok"] and list(rejects["id"]) == [PURIFIED]


def _output_with_a_lookalike_reject(tmp_path, model) -> str:
    """A complete output as two runs leave it: the shard's latin-1 member and ok.png purified, the member added beside
    the first a look-alike reject."""
    out = _hand_made_output(tmp_path, model, [PURIFIED, "s.tar/ok"])
    reject = reject_record(LOOKALIKE, str(tmp_path / "in" / "s.tar"), "tar members ... have one id", "read")
    write_parquet_atomic(_rejects_table([reject]), f"{out}/rejects/{part_name([LOOKALIKE])}", {})
    return out


@pytest.mark.usefixtures("ray_local")
def test_a_lookalike_reject_whose_shard_was_not_read_is_kept_by_retry_rejects(tmp_path, model, capsys) -> None:
    # kills J9, C3: --retry-rejects removes a look-alike reject only when its shard was read whole this run; one whose
    # shard is gone from the input keeps its row, as every reject whose input is gone does
    from pipeline.cli import main

    _shard(tmp_path / "in")
    _output_with_a_lookalike_reject(tmp_path, model)
    (tmp_path / "in" / "s.tar").unlink()
    (tmp_path / "in" / "new.png").write_bytes(image_bytes(8, 8, 5))
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model, "--steps",
                 "1", "--canvas-size", "32", "--no-progress", "--retry-rejects"]) == 0
    printed = capsys.readouterr().out
    assert "1 not found in the input (their reject rows are kept)" in printed and "look-alike" not in printed
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["this_run"]["rejects_retried"]["lookalikes_renamed"] == 0
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (3, 1)
    assert list(read_output(str(tmp_path / "out"))[1]["id"]) == [LOOKALIKE]


@pytest.mark.usefixtures("ray_local")
def test_a_renamed_member_without_retry_rejects_is_no_retried_reject(tmp_path, model) -> None:
    # kills J13: without --retry-rejects no earlier reject is read again: the look-alike reject made untrue by the
    # rename is counted with the stale rejects removed, not among the retried ones (earlier_rejects 0)
    root = tmp_path / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(tar_bytes({"café.png": LATIN1, "ok.png": image_bytes(8, 8, 2), "cafe2.png": LITERAL},
                                           encoding="latin-1"))  # the member beside it renamed, as its reject says
    _output_with_a_lookalike_reject(tmp_path, model)
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    assert summary["status"] == "complete" and summary["this_run"]["stale_rejects_removed"] == 1
    retried = summary["this_run"]["rejects_retried"]
    assert (retried["earlier_rejects"], retried["lookalikes_renamed"]) == (0, 0)
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (3, 0)


# --- mutants of 5a1bcec that the existing tests left alive ---------------------------------------------------------

def test_a_temporary_beside_the_part_files_is_not_counted_as_written(tmp_path) -> None:
    # kills P3, P4: a write under way (write_parquet_atomic's hidden temporary) or another tool's file in data/ is not
    # one of the run's part files, however its stamp changed
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), out / "data" / "part-a.parquet")
    for name in (".part-b.parquet.tmp", "notes.parquet", "part-c.parquet.bak"):
        pq.write_table(pa.table({"id": ["x", "y"]}), out / "data" / name)
    before = part_names(str(out), {})
    assert set(before) == {"data/part-a.parquet"}
    for name in (".part-b.parquet.tmp", "notes.parquet", "part-c.parquet.bak", ".part-d.parquet.tmp"):
        pq.write_table(pa.table({"id": ["x", "y", "z"]}), out / "data" / name)  # rewritten, or new
    count = count_stopped_run(str(out), {}, before, {})
    assert (count.purified, count.files, count.short) == (0, 0, None)


def test_on_s3_files_another_process_wrote_after_the_listing_are_counted() -> None:
    # kills P1: the driver's listing of the output is cached by s3fs; the part files are written by Ray's workers
    # (other processes), so a stop counted from that cache missed every file written since the run began
    import io

    from tests.s3util import moto_s3

    with moto_s3("stopcache") as (client, options):

        def put(key: str, ids: list[str], reason: str = "") -> None:  # as a worker does, through its own connection
            buf = io.BytesIO()
            pq.write_table(pa.table({"id": ids, "error": [reason] * len(ids)}), buf)
            client.put_object(Bucket="stopcache", Key=f"out/{key}", Body=buf.getvalue())

        put("rejects/part-h.parquet", ["r1", "r2"], "old reason")
        before = part_names("s3://stopcache/out", options)
        put("rejects/part-h.parquet", ["r1", "r2"], "new reason")  # rejected again, over its old file
        put("data/part-n.parquet", ["n1", "n2", "n3"])  # a new file
        count = count_stopped_run("s3://stopcache/out", options, before, {})
        assert (count.purified, count.rejected, count.files, count.short) == (3, 2, 2, None)
