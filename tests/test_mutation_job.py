"""Mutation-audit gaps in the job's orchestration (pipeline/job.py), each checked without Ray: the run status, which
task errors Ray retries, the progress total, the pipeline's close, the run's tally, the Ray Data settings it sets and
puts back, the reject rows a run's reading makes untrue, the summary and its history, a stopped run's words, and a
run with nothing to read."""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.job as job
from pipeline.changes import INPUTS_DIR, InputRecord, read_record
from pipeline.errors import JobError, JobFailed, JobInterrupted, NotOnThisNodeError
from pipeline.job import (
    BLOCK_BYTES,
    EXECUTOR_THREAD_PREFIX,
    JOB_DATA_CONTEXT,
    NOTHING_TO_READ,
    RetriedByRay,
    RunTally,
    StaleRejects,
    checkpoint_option,
    pipeline_closed_on_exit,
    progress_total,
    ray_data_configured,
    run_job,
    run_status,
    stale_rejects,
    task_retry_options,
)
from pipeline.lease import OutputLease
from pipeline.ledger import LEDGER_DIR, ContainerRead, read_ledger
from pipeline.output import RUNS_DIR, SUMMARY_FILE, OutputRows
from pipeline.plan import plan_job
from pipeline.refresh import REFRESH_DIR, Journal, read_journal, write_journal
from pipeline.sources import LOOKALIKE, HiddenSkipped, ReadUnit
from pipeline.stages import ALL_CORES, DATA_DIR, REJECTS_DIR
from pipeline.stopped_run import StoppedCount, resume_advice
from pipeline.storage import RetriesExhausted
from tests.jobutil import image_bytes, no_ray_from_here_on, small_job_config, tar_bytes, zip_bytes
from tests.test_mutation_ledger import _hand_made_output


def test_a_run_whose_output_gained_more_rows_than_it_read_is_inconsistent() -> None:
    assert run_status(read=10, purified=7, rejected=3, rows_before=5, rows_after=15) == "complete"
    assert run_status(read=10, purified=7, rejected=3, rows_before=5, rows_after=16) == "inconsistent"  # one doubled
    assert run_status(read=0, purified=0, rejected=0, rows_before=4, rows_after=5) == "inconsistent"
    assert run_status(read=10, purified=7, rejected=4, rows_before=0, rows_after=11) == "inconsistent"  # overcounted


def test_ray_retries_a_tasks_errors_but_not_a_storage_give_up_nor_a_path_missing_on_its_node() -> None:
    assert isinstance(OSError("connection reset by peer"), RetriedByRay)
    assert isinstance(ValueError("a worker's bug"), RetriedByRay)
    assert not isinstance(RetriesExhausted("read s3://b/x.tar: gave up after 6 tries"), RetriedByRay)
    assert not isinstance(NotOnThisNodeError("--input /mnt/x on node gpu-1 lacks it"), RetriedByRay)
    assert not isinstance(KeyboardInterrupt(), RetriedByRay)
    options = task_retry_options()
    assert options["max_retries"] == 3 and options["retry_exceptions"] == [RetriedByRay]
    options["retry_exceptions"].append(RuntimeError)  # as Ray Data does to the list it is given
    assert task_retry_options()["retry_exceptions"] == [RetriedByRay]


def test_the_progress_total_is_the_files_footer_rows_and_shard_keys_left_and_none_with_a_zip_or_a_bad_footer(
        tmp_path, model) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for name, rows in (("a.parquet", 3), ("b.parquet", 2)):
        pq.write_table(pa.table({"image": [image_bytes(16, 16, i) for i in range(rows)]}), root / name)
    for name in ("x.png", "y.png", "z.png"):
        (root / name).write_bytes(image_bytes(16, 16, 9))
    config = small_job_config(tmp_path, model)
    plan = plan_job(config, dry_run=True)
    assert progress_total(plan, {}) == 3 + 2 + 3
    first = next(u for u in plan.units if u.kind == "parquet").paths[0]
    plan.container_done[first] = ["a.parquet#0", "a.parquet#2", "a.parquet#unreadable"]  # the last is no row of it
    assert progress_total(plan, {}) == 3 + 2 + 3 - 2
    (root / "c.parquet").write_bytes(b"not parquet")
    assert progress_total(plan_job(config, dry_run=True), {}) is None
    (root / "c.parquet").unlink()
    (root / "s.tar").write_bytes(tar_bytes({"0.png": image_bytes(16, 16, 0)}))
    assert progress_total(plan_job(config, dry_run=True), {}) == 3 + 2 + 3 + 1  # a shard's keys, from its headers
    (root / "a.zip").write_bytes(zip_bytes({"0.png": image_bytes(16, 16, 0)}))
    assert progress_total(plan_job(config, dry_run=True), {}) is None  # a zip archive's count is known once read


class _Rows:
    """A pipeline's row iterator: closing it is what stops Ray Data's tasks."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self):
        return iter(())

    def close(self) -> None:
        self.closed = True


class _Executor(threading.Thread):
    """Ray Data's executor thread: runs until shut down, then takes a moment to end."""

    def __init__(self) -> None:
        super().__init__(name=f"{EXECUTOR_THREAD_PREFIX}{uuid.uuid4().hex[:6]}", daemon=True)
        self.stop = threading.Event()
        self.forced: bool | None = None

    def run(self) -> None:
        self.stop.wait(30)
        time.sleep(0.3)

    def shutdown(self, force: bool = False) -> None:
        self.forced = force
        self.stop.set()


@pytest.mark.parametrize("stop", [None, KeyboardInterrupt])
def test_leaving_the_pipeline_closes_its_rows_shuts_its_executor_down_and_waits_for_its_thread(stop) -> None:
    rows = _Rows()
    executor = _Executor()
    try:
        with pipeline_closed_on_exit(rows):
            executor.start()
            if stop is not None:
                raise stop
    except KeyboardInterrupt:
        assert stop is KeyboardInterrupt
    assert rows.closed
    assert executor.forced is True
    assert not executor.is_alive()  # ended before the run goes on to count what it wrote


def _batch(**counts) -> dict:
    """One row of the pipeline's output (`write_stage`): a written batch's counts."""
    row = dict(psnr_sum=0.0, psnr_count=0, psnr_min=math.inf, unchanged=0, downscaled=0, downscale_max=1.0, purified=0,
               rejected=0, read=0, skipped=0, hidden=0, hidden_examples="[]", unpurified_images="{}", files="[]",
               file_rows="{}", containers="[]", units_read=1)
    return {**row, **counts}


def test_the_tally_keeps_the_lowest_psnr_the_largest_shrink_and_at_most_ten_hidden_names() -> None:
    tally = RunTally(HiddenSkipped())
    tally.add(_batch(psnr_sum=60.0, psnr_count=2, psnr_min=25.0, downscaled=1, downscale_max=3.0, purified=2, read=2,
                     hidden=8, hidden_examples=json.dumps([f"a/.{i}" for i in range(8)])))
    tally.add(_batch(psnr_sum=40.0, psnr_count=1, psnr_min=40.0, downscale_max=1.5, purified=1, rejected=1, read=2,
                     hidden=8, hidden_examples=json.dumps([f"b/.{i}" for i in range(8)])))
    assert (tally.psnr_min, tally.downscale_max, tally.downscaled) == (25.0, 3.0, 1)
    assert (tally.read, tally.purified, tally.rejected, tally.units_read) == (4, 3, 1, 2)
    assert tally.hidden.count == 16
    assert tally.hidden.examples == [*(f"a/.{i}" for i in range(8)), "b/.0", "b/.1"]
    plan = SimpleNamespace(skipped_files=5, skipped_container_records=7)
    tally.add(_batch(skipped=2))
    assert tally.skipped_already_done(plan) == 5 + 7 + 2


def test_the_jobs_ray_data_settings_hold_inside_and_the_callers_are_put_back() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in JOB_DATA_CONTEXT}
    try:
        ctx.enable_progress_bars, ctx.target_max_block_size, ctx.actor_task_retry_on_errors = True, 128 * 2**20, True
        with ray_data_configured():
            # an actor's exception is retried by the purify stage itself, a bounded number of times: Ray retrying it too
            # (its actors take max_task_retries=-1) would hang the run
            assert ctx.actor_task_retry_on_errors is False
            assert ctx.target_max_block_size == BLOCK_BYTES and ctx.enable_progress_bars is False
        assert (ctx.enable_progress_bars, ctx.target_max_block_size, ctx.actor_task_retry_on_errors) == (
            True, 128 * 2**20, True)
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


def test_the_ray_remote_args_warning_is_silenced_for_the_jobs_own_calls_only() -> None:
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        job.configure_ray_data()
        for module in ("pipeline.job", "my_program"):
            warnings.warn_explicit("Passing ray_remote_args is deprecated", DeprecationWarning, "x.py", 1, module=module)
    assert [str(w.message) for w in heard] == ["Passing ray_remote_args is deprecated"]  # my_program's


def test_an_actors_error_names_the_default_prior_when_no_model_was_given(tmp_path) -> None:
    base = small_job_config(tmp_path, "unused")
    assert checkpoint_option(base) == "--checkpoint"
    assert checkpoint_option(replace(base, checkpoint=None, prior="gtsrb")) == "--prior"
    assert checkpoint_option(replace(base, checkpoint=None)) == "the default prior"


def _unit(path: str, kind: str = "tar") -> SimpleNamespace:
    return SimpleNamespace(paths=[f"/in/{path}"], root="/in", kind=kind)


def test_reject_rows_a_runs_reading_made_untrue_are_those_of_the_containers_it_read() -> None:
    plan = SimpleNamespace(
        units=[_unit("s.tar"), _unit("t.tar"), _unit("f.png", "files")],
        container_done={"/in/s.tar": ["s.tar/a.png", f"s.tar{LOOKALIKE}b.png", f"s.tar{LOOKALIKE}c.png"],
                        "/in/t.tar": [f"t.tar{LOOKALIKE}d.png"]},
        retry=frozenset({f"s.tar{LOOKALIKE}e.png", f"u.tar{LOOKALIKE}f.png"}),
        metadata_rejects=frozenset({"train/metadata.csv"}),  # a metadata file's reject, the file joined now
        sidecar_rejects=frozenset({"00000/000000.txt"}))  # a sidecar's reject (an older version's), paired now
    read_whole = [{"path": "/in/s.tar", "superseded": ["s.tar/cat"], "lookalike": [f"s.tar{LOOKALIKE}c.png"]},
                  {"path": "/in/gone.tar"},  # not one of this run's units
                  {"path": "/in/d.zip", "metadata": ["d.zip/metadata.csv"]}]  # a zip archive's, joined now
    stale = stale_rejects(plan, read_whole)
    assert stale.unreadable == {"s.tar#unreadable"}  # t.tar was not read to its end
    assert stale.superseded == {"s.tar/cat"}
    # s.tar's look-alikes its read did not give again: one it gave again stays, as do t.tar's and u.tar's (not read)
    assert stale.lookalikes == {f"s.tar{LOOKALIKE}b.png", f"s.tar{LOOKALIKE}e.png"}
    assert stale.metadata_files == {"train/metadata.csv", "d.zip/metadata.csv", "00000/000000.txt"}
    assert stale.all == {"s.tar#unreadable", "s.tar/cat", f"s.tar{LOOKALIKE}b.png", f"s.tar{LOOKALIKE}e.png",
                         "train/metadata.csv", "d.zip/metadata.csv", "00000/000000.txt"}


def test_the_history_is_written_before_the_summary_so_the_summary_is_never_ahead(tmp_path, monkeypatch) -> None:
    out = str(tmp_path / "out")
    history = f"{out}/{RUNS_DIR}/run.json"
    job._write_summary(out, {"status": "running"}, {}, history)
    real = job.write_json

    def history_refused(path, value, so):
        if path == history:
            raise OSError("No space left on device")
        real(path, value, so)

    monkeypatch.setattr(job, "write_json", history_refused)
    with pytest.raises(OSError):
        job._write_summary(out, {"status": "complete"}, {}, history)
    assert json.loads(Path(out, SUMMARY_FILE).read_text()) == {"status": "running"}


def test_an_output_the_run_cannot_start_in_is_named(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 0))
    config = small_job_config(tmp_path, model)
    plan = plan_job(config, dry_run=True)
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = str(tmp_path / "blocker" / "out")
    stop = SimpleNamespace(summary_begun=False, output_started=False)
    with pytest.raises(JobError, match=f"cannot write to output {out}: "):
        job._start_output(config, plan, out, time.time(), f"{out}/{RUNS_DIR}/run.json", stop)
    assert not stop.output_started


def test_the_progress_line_of_shards_says_how_many_read_tasks_are_done_never_more_than_there_are() -> None:
    plan = SimpleNamespace(units=[_unit("s.tar"), _unit("t.tar")])
    tally = RunTally(HiddenSkipped())
    tally.rejected, tally.units_read = 1, 3  # a read task retried after it had reported
    assert job._progress_postfix(SimpleNamespace(total=None), plan, tally) == {"rejected": 1, "read_tasks": "2/2"}
    assert job._progress_postfix(SimpleNamespace(total=9), plan, tally) == {"rejected": 1}


def test_a_stopped_runs_words_say_at_least_when_its_count_was_cut_short_and_name_its_hidden_files() -> None:
    hidden = HiddenSkipped()
    totals = {"purified": 12, "rejected": 3}
    assert job._stopped_phrase(StoppedCount(2, 1, 1), totals, hidden) == (
        "this run wrote 2 purified and 1 rejected (1 part file), so the output now holds 12 purified and 3 rejected")
    hidden.count, hidden.examples = 1, ["_train/a.png"]
    phrase = job._stopped_phrase(StoppedCount(2, 1, 3, short="a second Ctrl-C"), totals, hidden)
    assert phrase.startswith("this run wrote at least 2 purified and 1 rejected (3 part files), so the output now holds "
                             "at least 12 purified and 3 rejected (a second Ctrl-C); 1 hidden entry"), phrase
    assert "_train/a.png" in phrase


def test_a_stopped_run_counts_as_read_at_least_the_rows_it_wrote_and_the_rejects_it_retried() -> None:
    plan = SimpleNamespace(skipped_files=1, skipped_container_records=0, retry=frozenset({"x.png"}),
                           folder_metadata=None)
    tally = RunTally(HiddenSkipped())
    tally.read = 2  # the pipeline's count lags the files that landed
    done = job._stopped_this_run(plan, tally, StoppedCount(3, 1, 2, retried=1), time.time())
    assert (done["read"], done["purified"], done["rejected"], done["files_written"]) == (4, 3, 1, 2)
    assert done["rejects_retried"] == 1 and done["skipped_already_done"] == 1


def test_the_ray_note_says_how_many_actors_started_beside_the_most_and_all_cores_in_words(tmp_path) -> None:
    config = small_job_config(tmp_path, "unused")
    ray = job._ray_summary(config, (8, 0.0, "cpu"), ALL_CORES, 1)
    assert (ray["actors"], ray["actors_max"], ray["device"]) == (1, 8, "cpu")
    assert ray["torch_threads"] == "all cores of the actor's node"
    assert job._ray_summary(config, (2, 1.0, "cuda"), 4, None)["torch_threads"] == 4
    assert job._ray_summary(config, None, None, None) == {
        "actors": 0, "actors_max": 0, "cpus_per_actor": None, "gpus_per_actor": None, "device": None,
        "torch_threads": None, "note": NOTHING_TO_READ}


def test_a_run_with_nothing_to_read_counts_the_hidden_files_and_an_overwrite_clears_the_earlier_runs(
        tmp_path, model, monkeypatch) -> None:
    root = tmp_path / "in"
    (root / "_train").mkdir(parents=True)
    (root / "_train" / "a.png").write_bytes(image_bytes(16, 16, 0))
    (root / ".b.png").write_bytes(image_bytes(16, 16, 1))
    no_ray_from_here_on(monkeypatch)
    first = run_job(small_job_config(tmp_path, model))
    assert first["status"] == "complete"
    assert first["this_run"]["hidden_skipped"] == 2
    assert sorted(first["this_run"]["hidden_skipped_examples"]) == [".b.png", "_train/a.png"]
    assert first["this_run"]["psnr_vs_input_db"] == {"mean": None, "min": None, "unchanged": 0}
    assert first["ray"]["actors_max"] == 0
    json.loads(Path(tmp_path, "out", SUMMARY_FILE).read_text(), parse_constant=pytest.fail)  # no Infinity, no NaN
    assert len(os.listdir(tmp_path / "out" / RUNS_DIR)) == 1
    again = run_job(small_job_config(tmp_path, model, overwrite=True))
    assert again["status"] == "complete"
    assert len(os.listdir(tmp_path / "out" / RUNS_DIR)) == 1  # the earlier run's history went with its output


def _shard(name: str) -> SimpleNamespace:
    """A tar shard's read unit, listed with a version (so that its read whole can be recorded)."""
    return SimpleNamespace(paths=[f"/in/{name}"], root="/in", kind="tar", sizes=[100], stamps=[f"etag-{name}"])


def _entry(name: str) -> ContainerRead:
    return ContainerRead(f"/in/{name}", 100, f"etag-{name}", 1, "0" * 64)


def _ledger_plan(**fields) -> SimpleNamespace:
    return SimpleNamespace(**{"units": [], "changes": SimpleNamespace(refreshed={}), "container_purified": {},
                              "listed_containers": None, "ledger": {}, "ledger_checked": frozenset(), **fields})


def test_the_record_of_containers_read_drops_those_gone_and_leftover_rejects_the_run_removed(tmp_path) -> None:
    out = str(tmp_path / "out")
    plan = _ledger_plan(units=[_shard("a.tar")], ledger={"/in/c.tar": _entry("c.tar"), "/in/gone.tar": _entry("gone.tar")},
                        ledger_checked=frozenset({"/in/c.tar"}),
                        listed_containers=frozenset({"/in/a.tar", "/in/c.tar"}))
    read_whole = [{"path": "/in/a.tar", "records": 2, "ids_sha256": "1" * 64,
                   "leftover": ["a.tar/9.png", f"a.tar{LOOKALIKE}x.png"]}]
    # a.tar read whole, c.tar found by the planning as its rows were made: both recorded; gone.tar is no longer listed
    assert job._record_containers_read(out, {}, plan, read_whole, removed={f"a.tar{LOOKALIKE}x.png"}) == 2
    recorded = read_ledger(out, {})
    assert sorted(recorded) == ["/in/a.tar", "/in/c.tar"]
    assert recorded["/in/a.tar"].leftover == ("a.tar/9.png",)  # the reject the end-of-run check removed is not left over
    assert recorded["/in/a.tar"].stamp == "etag-a.tar" and recorded["/in/a.tar"].records == 2


def test_a_container_the_planning_found_done_is_recorded_though_this_run_read_nothing(tmp_path) -> None:
    out = str(tmp_path / "out")
    plan = _ledger_plan(ledger={"/in/c.tar": _entry("c.tar")}, ledger_checked=frozenset({"/in/c.tar"}))
    assert job._record_containers_read(out, {}, plan, []) == 1
    assert read_ledger(out, {}) == {"/in/c.tar": _entry("c.tar")}  # the next --incremental run skips it unread


def test_a_record_of_containers_that_cannot_be_written_is_said_on_stderr_and_in_the_summary(tmp_path, monkeypatch,
                                                                                           capsys) -> None:
    def refused(*args, **kwargs):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(job, "write_ledger", refused)
    plan = _ledger_plan(units=[_shard("a.tar")])
    said = job._record_containers_read(str(tmp_path / "out"), {}, plan, [{"path": "/in/a.tar", "records": 1,
                                                                          "ids_sha256": "1" * 64}])
    assert isinstance(said, str) and "could not record the containers read" in said and "Access Denied" in said
    assert f"zip-purify: warning: {said}" in capsys.readouterr().err


def test_a_refreshed_input_read_whole_gets_its_new_stamp_and_one_not_read_whole_keeps_its_old_one(tmp_path) -> None:
    out = str(tmp_path / "out")
    plan = SimpleNamespace(
        input_record=InputRecord("/in", {"s.tar": ("tar", "new-s"), "t.tar": ("tar", "new-t"), "u.png": ("file", "u")}),
        changes=SimpleNamespace(pending={"s.tar": ("tar", "old-s"), "t.tar": ("tar", "old-t")},
                                refreshed={"s.tar": ["s.tar/1.png"], "t.tar": ["t.tar/2.png"]}),
        units=[_shard("s.tar"), _shard("t.tar")])
    # both kept an old row their new read gave no new one for; s.tar was read to its end, t.tar could not be
    job._record_inputs_read_again(out, {}, plan, [{"path": "/in/s.tar"}], frozenset({"s.tar/1.png", "t.tar/2.png"}))
    assert read_record(out, {}, "/in").stamps == {"s.tar": ("tar", "new-s"), "t.tar": ("tar", "old-t"),
                                                  "u.png": ("file", "u")}


def test_an_earlier_refresh_journal_is_applied_and_removed_before_this_run_writes_its_own(tmp_path) -> None:
    out = str(tmp_path / "out")
    write_journal(out, {}, Journal(rows={}, salt="earlier"))
    job._start_refresh(out, {}, SimpleNamespace(refresh=None))
    assert read_journal(out, {}) is None  # applied: a later run would otherwise apply it again over newer rows
    write_journal(out, {}, Journal(rows={}, salt="earlier"))
    job._start_refresh(out, {}, SimpleNamespace(refresh=Journal(rows={"a.png": ["data/part-0.parquet"]}, salt="now")))
    assert read_journal(out, {}).salt == "now"


def _ids_file(out: Path, name: str, ids: list[str]) -> None:
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids}), out / name)


def test_a_stopped_refresh_counts_the_old_rows_its_new_ones_replace_in_data_and_in_rejects(tmp_path) -> None:
    out = tmp_path / "out"
    journal = Journal(rows={"x": ["data/part-old.parquet"], "z": ["data/part-old.parquet"],
                            "y": ["rejects/part-old.parquet"], "w": ["data/part-old.parquet"]})
    _ids_file(out, "data/part-old.parquet", ["x", "z", "w"])
    _ids_file(out, "rejects/part-old.parquet", ["y"])
    before = set(job.part_names(str(out), {}))
    _ids_file(out, "data/part-new1.parquet", ["x", "z"])  # reported
    _ids_file(out, "data/part-new2.parquet", ["y"])  # landed, not reported yet: y's reject purified now
    reported = {"data/part-new1.parquet": 2}
    assert job._replaced_by_stopped_refresh(str(out), {}, journal, before, reported) == (2, 1)
    # a count cut short: any id of the journal may have its new row
    assert job._replaced_by_stopped_refresh(str(out), {}, journal, before, reported, short=True) == (3, 1)
    assert job._replaced_by_stopped_refresh(str(out), {}, journal, None, reported) == (0, 0)  # stopped before listing


def test_the_summary_counts_a_runs_rows_on_top_of_the_earlier_ones_less_those_it_replaced(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 0))
    config = small_job_config(tmp_path, model)
    lookalike = f"s.tar{LOOKALIKE}b.png"
    plan = replace(plan_job(config, dry_run=True), output_state="incremental", done_purified=5, done_rejected=3,
                   retry=frozenset({"s.tar#unreadable", lookalike, "x.png"}),
                   checkpoint_uri="https://me:hunter2@models.example/tiny.pt")
    tally = RunTally(HiddenSkipped())
    tally.read, tally.purified, tally.rejected = 4, 3, 1
    # x.png's old reject replaced by its row now; s.tar's two rejects made untrue by its read; one row refreshed
    rows = OutputRows(duplicates_removed=0, purified=7, rejected=1, data_schemas={}, retried_purified=1,
                      stale_rejects_removed=2, refreshed=1)
    stale = StaleRejects(unreadable={"s.tar#unreadable"}, superseded=set(), lookalikes={lookalike})
    summary = job._summary(config, plan, None, None, None, tally, rows, stale, {}, 2.0, time.time())
    assert summary["status"] == "complete"  # 5 + 3 + 4 - 4 = 8 rows
    assert summary["this_run"]["rejects_retried"] == {
        "earlier_rejects": 3, "purified_now": 1, "rejected_again": 0, "containers_now_read_whole": 1, "superseded": 0,
        "lookalikes_renamed": 1, "metadata_joined": 0}
    assert summary["this_run"]["images_per_s"] == 2.0  # purified and rejected alike
    assert "hunter2" not in json.dumps(summary)
    assert summary["output_totals"]["before_this_run"] == {"purified": 5, "rejected": 3}


class _Bar:
    """The progress bar as a stopped run's recorder uses it."""

    def __init__(self) -> None:
        self.n, self.total, self.closed = 0, None, False

    def set_postfix(self, **fields) -> None:
        self.postfix = fields

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def _recorder(tmp_path: Path, model: str, monkeypatch, count: StoppedCount, **options) -> job.StopRecorder:
    """A stopped run's recorder over a planned output, whose count of the rows it wrote is `count`."""
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 0))
    config = small_job_config(tmp_path, model, **options)
    plan = plan_job(config, dry_run=True)
    monkeypatch.setattr(job, "count_stopped_run", lambda *args: count)
    lease = SimpleNamespace(taken_over=False, record={"run_id": "0123abcd"})
    return job.StopRecorder(config, plan, lease, time.time(), RunTally(HiddenSkipped()), before=set())


def _summary_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())


def test_a_stopped_runs_summary_counts_the_earlier_rows_of_an_incremental_output(tmp_path, model, monkeypatch) -> None:
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(2, 1, 1))
    stop.plan = replace(stop.plan, output_state="incremental", done_purified=5, done_rejected=2)
    phrase = stop.record("interrupted", {})
    totals = _summary_of(tmp_path)["output_totals"]
    assert totals == {"purified": 7, "rejected": 3, "before_this_run": {"purified": 5, "rejected": 2}}
    assert phrase.endswith("so the output now holds 7 purified and 3 rejected"), phrase


def test_a_stopped_runs_summary_names_no_password_of_the_checkpoint_an_actor_quoted(tmp_path, model,
                                                                                    monkeypatch) -> None:
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(0, 0, 0))
    stop.plan = replace(stop.plan, checkpoint_uri="https://me:hunter2@models.example/tiny.pt")
    stop.record("failed", {"error": "OSError: cannot read https://me:hunter2@models.example/tiny.pt"})
    summary = _summary_of(tmp_path)
    assert summary["status"] == "failed" and "models.example/tiny.pt" in summary["error"]
    assert "hunter2" not in json.dumps(summary)


def test_a_failed_runs_advice_puts_mending_a_path_a_node_lacks_first(tmp_path, model, monkeypatch) -> None:
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(1, 0, 1))
    reason = "NotOnThisNodeError: --output /mnt/out on node gpu-1, where a write task ran, lacks it"
    stop.record("failed", {"error": reason})
    assert _summary_of(tmp_path)["resume"] == resume_advice(False, True, None, reason)
    assert _summary_of(tmp_path)["resume"].startswith("once every node of the cluster sees that path")


def test_a_stopped_overwrite_run_whose_count_was_cut_short_is_told_to_resume_not_start_over(tmp_path, model,
                                                                                          monkeypatch) -> None:
    # the count may have missed files it wrote: deleting them all with --overwrite again would lose them
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(0, 0, 0, short="a second Ctrl-C"), overwrite=True)
    stop.record("interrupted", {})
    assert stop.files_written is None
    assert _summary_of(tmp_path)["resume"] == resume_advice(True, True)


def test_a_stopped_run_whose_summary_cannot_be_written_says_so(tmp_path, model, monkeypatch) -> None:
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(1, 0, 1))

    def full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(job, "_write_summary", full)
    phrase = stop.record("interrupted", {})
    assert f"{tmp_path / 'out'}/{SUMMARY_FILE} could not be written" in phrase and "No space left" in phrase
    assert "may still say 'running'" in phrase


def test_a_stopped_run_another_run_took_over_leaves_the_summary_to_it(tmp_path, model, monkeypatch) -> None:
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(1, 0, 1))
    stop.lease.taken_over = True
    stop.bar = _Bar()
    assert stop.record("interrupted", {}) == "the summary was left to that run"
    assert not (tmp_path / "out" / SUMMARY_FILE).exists() and stop.bar.closed


@pytest.mark.parametrize("short", [None, "a second Ctrl-C"])
def test_a_stopped_runs_last_progress_line_counts_the_rows_that_landed_unless_its_count_was_cut_short(
        tmp_path, model, monkeypatch, short) -> None:
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(2, 1, 1, short=short))
    stop.bar = _Bar()
    stop.record("interrupted", {})
    assert stop.bar.closed
    assert stop.bar.n == (3 if short is None else 0)  # a count cut short is a least, not what landed


def test_a_job_error_the_run_raises_names_no_password_of_its_output(tmp_path, model, monkeypatch) -> None:
    config = small_job_config(tmp_path, model, output="ftp://me:hunter2@files.example/out")

    def refused(*args, **kwargs):
        raise JobError("cannot write to output ftp://me:hunter2@files.example/out: 550 Permission denied")

    monkeypatch.setattr(job, "_run_job", refused)
    with pytest.raises(JobError) as raised:
        run_job(config)
    assert "files.example/out: 550 Permission denied" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_run_removes_the_old_temporaries_of_every_folder_it_keeps_records_in_and_leaves_the_users(tmp_path) -> None:
    out = tmp_path / "out"
    left = []
    for folder in (DATA_DIR, REJECTS_DIR, LEDGER_DIR, INPUTS_DIR, RUNS_DIR, REFRESH_DIR):
        (out / folder).mkdir(parents=True)
        left.append(out / folder / f".tmp-{uuid.uuid4().hex}-part-0.parquet")
    left.append(out / f".tmp-{uuid.uuid4().hex}-{SUMMARY_FILE}")
    users = out / ".tmp-draft.md"  # an output that is also the user's folder
    young = out / DATA_DIR / f".tmp-{uuid.uuid4().hex}-part-1.parquet"  # another write under way
    for path in (*left, users, young):
        path.write_bytes(b"x")
        if path is not young:
            then = time.time() - 7200
            os.utime(path, (then, then))
    job._remove_old_temporaries(str(out), {})
    assert [p.name for p in left if p.exists()] == []
    assert users.exists() and young.exists()


def test_a_run_whose_output_holds_rows_it_did_not_count_fails_naming_its_summary(tmp_path, model, monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    no_ray_from_here_on(monkeypatch)
    real = job.deduplicate_output

    def one_more(*args, **kwargs):  # a row that came from nowhere this run counted
        return replace(real(*args, **kwargs), purified=1)

    monkeypatch.setattr(job, "deduplicate_output", one_more)
    with pytest.raises(JobFailed) as failed:
        run_job(small_job_config(tmp_path, model))
    assert str(failed.value) == (f"read 0 inputs and counted 0 purified + 0 rejected; the output now holds 1 purified + "
                                 f"0 rejected rows in all; see {tmp_path / 'out'}/{SUMMARY_FILE}")
    assert _summary_of(tmp_path)["status"] == "inconsistent"


def _refresh_plan(stamp: str | None) -> SimpleNamespace:
    unit = ReadUnit("tar", ("/in/a.tar",), "/in", sizes=(10,), stamps=(stamp,))
    journal = Journal({"a.tar/0.png": ["data/part-old.parquet"]}, {"a.tar": ("tar", "new", ["a.tar/0.png"])})
    return SimpleNamespace(refresh=journal, units=[unit], container_purified={})


def test_a_refresh_notes_its_containers_read_while_it_runs_and_says_them_whole_only_once_its_pipeline_ended(
        tmp_path) -> None:
    out = str(tmp_path / "out")
    read_whole = [{"path": "/in/a.tar", "records": 2, "ids_sha256": "1" * 64, "leftover": ["a.tar/9.png"]}]
    plan = _refresh_plan("new")
    assert job._note_refreshed_reads(out, {}, plan, read_whole, pipeline_ended=False, running=True)
    noted = read_journal(out, {})
    assert noted.whole == frozenset()  # its rows may not all be written yet
    assert noted.read["a.tar"] == ContainerRead("/in/a.tar", 10, "new", 2, "1" * 64, leftover=("a.tar/9.png",))
    assert job._note_refreshed_reads(out, {}, plan, read_whole, pipeline_ended=True)
    assert read_journal(out, {}).whole == {"a.tar"}
    # a shard listed without a version has no entry to note, but is read whole all the same
    other = str(tmp_path / "other")
    assert job._note_refreshed_reads(other, {}, _refresh_plan(None), read_whole, pipeline_ended=True)
    assert read_journal(other, {}).whole == {"a.tar"} and read_journal(other, {}).read == {}


def test_a_scheduled_run_with_nothing_new_counts_the_earlier_rows_as_before_it_and_not_as_its_own_when_stopped(
        tmp_path, model, monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 0))
    _hand_made_output(tmp_path, model, ["a.png"], "complete")
    no_ray_from_here_on(monkeypatch)
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    assert summary["status"] == "complete"
    assert summary["output_totals"] == {"purified": 1, "rejected": 0, "before_this_run": {"purified": 1, "rejected": 0}}

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "stale_rejects", ctrl_c)  # a stop in the end-of-run check
    with pytest.raises(JobInterrupted, match="this run wrote 0 purified and 0 rejected .0 part files., so the output now "
                                             "holds 1 purified"):
        run_job(small_job_config(tmp_path, model, incremental=True))
    stopped = _summary_of(tmp_path)
    assert stopped["status"] == "interrupted"
    assert (stopped["this_run"]["purified"], stopped["this_run"]["files_written"]) == (0, 0)  # the earlier file is not its
    assert stopped["output_totals"]["purified"] == 1


class _Written:
    """A pipeline whose batches are written already: its rows, one a batch, as Ray Data hands them to the driver."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def iter_batches(self, **kwargs):
        return iter([pa.Table.from_pylist([row]) for row in self.rows])


class _Lease:
    def __init__(self, taken_after: int) -> None:
        self.checks, self.taken_after = 0, taken_after

    def check(self) -> None:
        self.checks += 1
        if self.checks > self.taken_after:
            raise JobError("another run took the output over")


def test_the_progress_bar_counts_every_image_written_and_the_run_stops_once_its_output_is_taken_over() -> None:
    plan = SimpleNamespace(units=[_unit("s.tar")])
    rows = [_batch(purified=2, rejected=1, read=3), _batch(purified=1, read=1), _batch(purified=5, read=5)]
    tally, bar = RunTally(HiddenSkipped()), _Bar()
    with pytest.raises(JobError, match="took the output over"):
        job._tally_written_batches(_Written(rows), plan, _Lease(taken_after=2), tally, bar)
    assert (tally.purified, tally.rejected) == (8, 1)  # the third batch was counted, then the lease said so
    assert bar.n == 4 and bar.postfix == {"rejected": 1, "read_tasks": "1/1"}  # purified and rejected alike


def test_a_run_whose_output_was_taken_over_stops_before_its_end_of_run_check_rewrites_files(tmp_path, model,
                                                                                             monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    no_ray_from_here_on(monkeypatch)

    def taken(self) -> None:
        raise JobError(f"another run took over output {self.out} while this one ran")

    checked: list[str] = []
    monkeypatch.setattr(OutputLease, "check", taken)
    monkeypatch.setattr(job, "deduplicate_output", lambda *args, **kwargs: checked.append("rewrote") or pytest.fail())
    with pytest.raises(JobError, match="another run took over output"):
        run_job(small_job_config(tmp_path, model))
    assert checked == []


def test_a_stop_is_recorded_once_the_running_summary_may_be_written_and_a_failure_once_the_records_are() -> None:
    # a Ctrl-C from then would leave "running" forever; a failure while the first records are written (a full disk) is
    # "could not start" (exit status 2), raised as it is
    stop = job.StopRecorder(None, None, None, 0.0, None)
    assert not stop.recorded(KeyboardInterrupt()) and not stop.recorded(OSError("No space left on device"))
    stop.summary_begun = True
    assert stop.recorded(KeyboardInterrupt()) and not stop.recorded(OSError("No space left on device"))
    stop.output_started = True
    assert stop.recorded(KeyboardInterrupt()) and stop.recorded(OSError("No space left on device"))


def test_a_failed_runs_summary_names_no_password_of_the_input_or_output_its_error_quoted(tmp_path, model,
                                                                                         monkeypatch) -> None:
    # a write task's give-up names the part file's URI whole (`stages.write_parquet_atomic`): the summary kept the
    # server's password, in the output's _summary.json and its run history, though the error line hid it
    stop = _recorder(tmp_path, model, monkeypatch, StoppedCount(1, 0, 1))
    out, source = "ftp://me:hunter2@files.example/out", "sftp://me:s3cret@data.example/in"
    stop.config = replace(stop.config, output=out, input=source)
    written: list[dict] = []
    monkeypatch.setattr(job, "_write_summary", lambda out, summary, so, history: written.append(summary))
    for error in (f"RetriesExhausted: write {out}/data/part-1.parquet: gave up after 6 attempts in 40 s",
                  f"RetriesExhausted: read {source}/a.tar: gave up after 6 attempts in 40 s"):
        stop.record("failed", {"error": error})
        assert "example/" in written[-1]["error"] and "gave up after 6 attempts" in written[-1]["error"]
        assert "hunter2" not in json.dumps(written[-1]) and "s3cret" not in json.dumps(written[-1])


class _Passes(list):
    """A run's containers read to their end, counting the passes made over them."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_the_inputs_record_of_a_refresh_goes_over_its_containers_read_once_not_once_a_container(tmp_path) -> None:
    # it went over them once for each container of the input: at 8,000 shards 25 s, single-threaded, at the run's end
    n = 60
    plan = SimpleNamespace(
        input_record=InputRecord("/in", {f"s{i}.tar": ("tar", "new") for i in range(n)}),
        changes=SimpleNamespace(pending={"s0.tar": ("tar", "old"), "s1.tar": ("tar", "old")},
                                refreshed={"s0.tar": ["s0.tar/1.png"], "s1.tar": ["s1.tar/1.png"]}),
        units=[_shard(f"s{i}.tar") for i in range(n)])
    read_whole = _Passes({"path": f"/in/s{i}.tar"} for i in range(1, n))  # s0.tar could not be read to its end
    job._record_inputs_read_again(str(tmp_path / "out"), {}, plan, read_whole,
                                  frozenset({"s0.tar/1.png", "s1.tar/1.png"}))
    assert read_whole.passes <= 2
    stamps = read_record(str(tmp_path / "out"), {}, "/in").stamps
    assert (stamps["s0.tar"], stamps["s1.tar"], stamps["s2.tar"]) == (("tar", "old"), ("tar", "new"), ("tar", "new"))
