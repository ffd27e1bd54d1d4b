"""An interrupted run says what it wrote, counted in its output: the pipeline's own counts lag the files that have landed
(a run stopped by Ctrl-C with 4 part files, 128 rows, in data/ said "0 purified and 0 rejected in this run were
written"). A second Ctrl-C, while it counts or while Ray shuts down at exit, still ends with the one `interrupted:` line
and exit status 130. Ctrl-C on a running job (tests/test_cli_interrupt.py's run before, merged here): one line, exit status
130, a summary that says so, and an output the same command resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
import pipeline.stopped_run as stopped_run
from pipeline.config import JobConfig
from pipeline.errors import JobInterrupted
from pipeline.plan import plan_job
from pipeline.stopped_run import count_stopped_run, record_stopped_run
from tests.gateutil import gate_env, let_through_until, open_gate
from tests.jobutil import last_job_line, png_inputs, tiny_model_file

ROOT = Path(__file__).resolve().parents[1]
WROTE = re.compile(r"this run wrote (\d+) purified and (\d+) rejected \((\d+) part files?\), so the output now holds "
                   r"(\d+) purified and (\d+) rejected")


def _part(out: Path, name: str, rows: int) -> None:
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"{name}/{i}" for i in range(rows)]}), out / name)


def _rows(out: Path, folder: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / folder).glob("part-*.parquet"))


def test_the_files_that_landed_are_counted_not_only_those_the_pipeline_reported(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out, "data/part-earlier.parquet", 5)  # an earlier run's: not this run's
    _part(out, "data/part-reported.parquet", 3)
    _part(out, "data/part-landed.parquet", 4)  # written, its manifest still on its way to the driver
    _part(out, "rejects/part-landed.parquet", 2)
    count = count_stopped_run(str(out), {}, {"data/part-earlier.parquet"}, {"data/part-reported.parquet": 3})
    assert (count.purified, count.rejected, count.files, count.short) == (7, 2, 3, None)
    # stopped before the output was listed: the pipeline had not started, so what it reported is all
    assert count_stopped_run(str(out), {}, None, {}) == stopped_run.StoppedCount(0, 0, 0)


def test_a_stopped_retry_run_counts_the_earlier_rejects_its_files_hold_again(tmp_path) -> None:
    """--retry-rejects: an earlier reject purified now, or rejected again, is in this run's file and still in its old
    reject row until a later end-of-run check; the output's totals count it once (they counted it twice)."""
    out = tmp_path / "out"
    old = "rejects/part-earlier.parquet"
    (out / "rejects").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["r1", "r2", "r3"]}), out / old)
    (out / "data").mkdir()
    pq.write_table(pa.table({"id": ["r1", "new"]}), out / "data" / "part-landed.parquet")  # r1 purified now
    pq.write_table(pa.table({"id": ["r2"]}), out / "rejects" / "part-reported.parquet")  # r2 rejected again
    retry = frozenset({"r1", "r2", "r3"})
    count = count_stopped_run(str(out), {}, {old}, {"rejects/part-reported.parquet": 1}, retry)
    assert (count.purified, count.rejected, count.files, count.retried) == (2, 1, 2, 2)
    # without retried rejects, no ids are read and none are counted
    assert count_stopped_run(str(out), {}, {old}, {"rejects/part-reported.parquet": 1}).retried == 0


def test_a_count_that_fails_is_a_lower_bound_that_says_why(tmp_path, monkeypatch) -> None:
    def fail(out: str, storage_options: dict) -> set[str]:
        raise PermissionError("access denied")

    monkeypatch.setattr(stopped_run, "part_names", fail)
    count = count_stopped_run(str(tmp_path), {}, set(), {"data/part-a.parquet": 3, "rejects/part-b.parquet": 1})
    assert (count.purified, count.rejected, count.files) == (3, 1, 2)
    assert count.short is not None and "could not be counted" in count.short and "access denied" in count.short


def test_a_second_signal_while_counting_still_records_the_stop(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    _part(out, "data/part-landed.parquet", 4)

    def second_ctrl_c(out: str, storage_options: dict, names: list[str]) -> dict[str, int]:
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again while the footers are read
        time.sleep(5)  # not reached: the handler raises at once
        raise AssertionError("the second signal did not stop the count")

    monkeypatch.setattr(stopped_run, "part_rows", second_ctrl_c)
    recorded = []

    def record(status: str, details: dict) -> str:
        count = count_stopped_run(str(out), {}, set(), {"data/part-reported.parquet": 3})
        recorded.append((status, count))
        return f"this run wrote at least {count.purified} purified ({count.short})"

    with pytest.raises(JobInterrupted) as stopped:
        with record_stopped_run(record, str(out)):
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM  # the first signal's exit status, 143
    [(status, count)] = recorded
    assert status == "interrupted" and (count.purified, count.files) == (3, 1), count
    assert count.short == "a second signal stopped the count of its part files"
    assert "run the same command again to resume" in str(stopped.value)


def test_a_signal_after_the_stop_is_recorded_lets_the_run_end_as_interrupted() -> None:
    outcome: list[BaseException] = []
    try:
        with stopped_run.signals_interrupt():  # run_job's, around the output's lease
            try:
                with record_stopped_run(lambda status, details: "3 purified", "/out"):
                    os.kill(os.getpid(), signal.SIGINT)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again while the lease is released
                outcome.append(RuntimeError("the lease's release ran to its end"))
    except BaseException as err:  # noqa: BLE001 - a KeyboardInterrupt here is the failure looked for
        outcome.append(err)
    assert len(outcome) == 2 and isinstance(outcome[1], JobInterrupted), outcome
    assert outcome[1].signum == signal.SIGINT and "3 purified" in str(outcome[1])
    # the next run's signals interrupt it again
    with pytest.raises(JobInterrupted):
        with record_stopped_run(lambda status, details: "", "/out"):
            os.kill(os.getpid(), signal.SIGTERM)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # a terminal's Ctrl-C goes to the whole foreground process group, with SIGINT not ignored
    return subprocess.Popen([sys.executable, str(ROOT / "jobs/purify.py"), *args], cwd=ROOT, text=True,
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_parts(proc: subprocess.Popen, gate: Path, out: Path, more_than: int, batches: int) -> None:
    # its batches let through one by one until a part file lands, never the last of its `batches`: the run is stopped
    # with batches still to come however fast it runs or late the signal comes (slowed down 0.5 s a batch, it could
    # finish first on a loaded machine)
    let_through_until(gate, lambda: proc.poll() is not None or len(list((out / "data").glob("part-*.parquet"))) > more_than,
                      most=batches - 1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]


def _stderr_until_interrupted(proc: subprocess.Popen) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("interrupted:"):
            break
    return lines


@pytest.mark.slow  # two real runs of the job in subprocesses: the first with a Ray of its own (~20 s), the second joined
def test_an_interrupted_run_reports_the_rows_in_its_output_and_a_second_ctrl_c_exits_quietly(tmp_path,
                                                                                              joined_ray_env) -> None:
    n = 48
    png_inputs(tmp_path / "in", n)
    model = tiny_model_file(tmp_path)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--checkpoint", model, "--steps", "2",
            "--files-per-unit", "8", "--tile-batch", "8", "--batch-size", "8", "--write-batch", "8"]

    # 1. Ctrl-C from a terminal, on the job's own local Ray (what a user meets), as soon as the first file lands, then
    # Ctrl-C again while the driver exits (Ray shuts down)
    proc = _start(args, {**os.environ, **gate_env(tmp_path / "gate-1")})
    try:
        _wait_for_parts(proc, tmp_path / "gate-1", out, 0, n // 8)
        os.killpg(proc.pid, signal.SIGINT)
        head = _stderr_until_interrupted(proc)
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:  # it had exited already
            pass
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = "\n".join(head) + "\n" + rest
    data, rejects = _rows(out, "data"), _rows(out, "rejects")
    assert 0 < data < n
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert (summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (data, rejects), summary["this_run"]
    assert summary["output_totals"]["purified"] == data
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert head and head[-1].startswith("interrupted: stopped by SIGINT"), stderr[-3000:]
    assert [line for line in rest.splitlines() if line.strip()] == [], rest[-3000:]  # no traceback from Ray's exit
    said = WROTE.search(head[-1])
    assert said, head[-1]
    assert [int(v) for v in said.groups()] == [data, rejects, len(list((out / "data").glob("part-*.parquet"))),
                                               data, rejects], head[-1]
    assert "run the same command again to resume" in head[-1]
    assert summary["versions"]["zip_purify"] == pipeline.__version__
    assert summary["settings"]["steps"] == 2 and summary["settings"]["start"] == 1.0  # what ran, resolved
    # every visible file is whole, and the same command resumes: what is written is skipped, the rest is left to read
    plan = plan_job(JobConfig(**{**JobConfig().__dict__, "input": str(tmp_path / "in"), "output": str(out),
                                 "checkpoint": model, "steps": 2}), dry_run=True)
    left = plan.describe()["input"]["image_files_to_read"]
    assert plan.output_state == "resume" and plan.skipped_files >= data and left + plan.skipped_files == n

    # 2. The same command resumes; SIGTERM (as `ray job stop` or Kubernetes send, to the driver) once it has written.
    # Joined to a running Ray, as a driver that `ray job stop` stops is; the driver hands the gate to its purifier actors.
    before = data
    parts = len(list((out / "data").glob("part-*.parquet")))
    proc = _start(args, {**joined_ray_env, **gate_env(tmp_path / "gate-2")})
    try:
        _wait_for_parts(proc, tmp_path / "gate-2", out, parts, (n - before) // 8)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        open_gate(tmp_path / "gate-2")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]
    last = last_job_line(stderr)
    data = _rows(out, "data")
    said = WROTE.search(last)
    assert last.startswith("interrupted: stopped by SIGTERM") and said, last
    this_run, held = (int(said[1]), int(said[2])), (int(said[4]), int(said[5]))
    assert this_run == (data - before, _rows(out, "rejects") - rejects) and held == (data, _rows(out, "rejects")), last
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert summary["this_run"]["purified"] == data - before and summary["this_run"]["skipped_already_done"] == before
    assert summary["output_totals"] == {"purified": data, "rejected": 0,
                                        "before_this_run": {"purified": before, "rejected": 0}}, summary
    # and what it says holds: the same command skips exactly the rows written
    plan = plan_job(JobConfig(**{**JobConfig().__dict__, "input": str(tmp_path / "in"), "output": str(out),
                                 "checkpoint": model, "steps": 2}), dry_run=True)
    assert plan.output_state == "resume" and plan.skipped_files == data


def test_ctrl_c_while_ray_starts_lets_it_finish_starting_then_interrupts_the_run(tmp_path, monkeypatch) -> None:
    # A KeyboardInterrupt raised inside ray.init left Ray half started: the CLI printed its `interrupted:` line, then the
    # process crashed as it exited (exit -11, "Segmentation fault", instead of 130). Ray starts in the seconds after the
    # command, just when a user who spots a wrong flag presses Ctrl-C.
    import pipeline.job as job

    started: list[str] = []

    def slow_ray_start(config) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while Ray starts
        time.sleep(0.2)  # Python runs signal handlers here, in the middle of the start
        started.append("Ray started whole")

    def not_reached(config):
        raise AssertionError("the run went on after Ctrl-C")

    monkeypatch.setattr(job, "plan_job", lambda config: SimpleNamespace(units=["a unit"]))  # only work starts Ray
    monkeypatch.setattr(job, "init_ray", slow_ray_start)
    monkeypatch.setattr(job, "default_actors_and_gpus", not_reached)
    with pytest.raises(KeyboardInterrupt) as stopped:
        job.run_job(JobConfig(input=str(tmp_path), output=str(tmp_path / "out")))
    assert started == ["Ray started whole"]
    assert stopped.value.signum == signal.SIGINT  # the CLI's exit status, 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back for whatever runs next

def test_sigterm_while_ray_starts_is_held_as_ctrl_c_is_though_ray_init_sets_its_own_handler(tmp_path, monkeypatch) -> None:
    # ray.init sets sys.exit(15) as the SIGTERM handler as it starts: a SIGTERM then (a pod stopped, `timeout`) ended the
    # job with status 15 and not a word, Ray half started. The job's own handler now stays: the run stops once Ray has
    # started, with the `interrupted:` line and status 143.
    import ray
    import ray._private.utils as ray_utils

    import pipeline.job as job

    started: list[str] = []

    def ray_init_as_ray_does(*args, **kwargs) -> None:
        ray_utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # what ray.init does first
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # Python runs signal handlers here, in the middle of the start
        started.append("Ray started whole")

    def not_reached(config):
        raise AssertionError("the run went on after SIGTERM")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", ray_init_as_ray_does)
    monkeypatch.setattr(job, "plan_job", lambda config: SimpleNamespace(units=["a unit"]))  # only work starts Ray
    monkeypatch.setattr(job, "default_actors_and_gpus", not_reached)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as stopped:
        job.run_job(JobConfig(input=str(tmp_path), output=str(tmp_path / "out")))
    assert started == ["Ray started whole"]
    assert stopped.value.signum == signal.SIGTERM  # the CLI's exit status, 143
    assert signal.getsignal(signal.SIGTERM) is before  # put back for whatever runs next
    assert ray_utils.set_sigterm_handler.__name__ == "set_sigterm_handler"  # Ray's own setter is back too


def test_a_stopped_pipeline_has_ended_its_executor_thread_before_the_run_goes_on(monkeypatch) -> None:
    # Ray Data's executor waits 2 s for its scheduling thread when the pipeline is closed; one still starting the
    # purifier actors (Ctrl-C in the run's first seconds) ran on, and once the process shut Ray down at exit it used
    # Ray, which then ended the process with status 1 instead of 130 ("The core worker has already been shutdown").
    import threading

    import pipeline.job as job

    ended: list[str] = []

    def executor() -> None:
        time.sleep(0.5)
        ended.append("executor thread ended")

    def rows():
        try:
            yield {"row": 1}
            yield {"row": 2}
        finally:  # closing the iterator stops the executor, whose thread still runs a while
            threading.Thread(target=executor, name="StreamingExecutor-dataset_test", daemon=True).start()

    rows_iter = rows()
    with job.pipeline_closed_on_exit(rows_iter):
        next(rows_iter)
    assert ended == ["executor thread ended"]


@pytest.mark.slow  # one real run of the job in a subprocess (~20 s of Ray)
def test_ctrl_c_while_ray_data_sets_its_iteration_up_ends_stderr_with_the_jobs_own_line(tmp_path) -> None:
    # A Ctrl-C once Ray Data's executor had started, before its row iterator held it (here, where Ray Data asks the
    # executor for its stats after the first block: the interrupt put there, not timed), left the executor running:
    # closing the iterator did not shut it down, and the garbage collector did, after the job's `interrupted:` line,
    # once Ray Data's lines were no longer quieted: "... INFO streaming_executor.py:371 -- Dataset dataset_... execution
    # finished in 10.27 seconds" was the last line on stderr.
    code = ("import sys, threading; from pathlib import Path\n"
            "from ray.data._internal.execution.streaming_executor import StreamingExecutor\n"
            "from pipeline import cli\n"
            "from tests.jobutil import image_folder, small_job_argv, tiny_model_file\n"
            "tmp = Path(sys.argv[1]); image_folder(tmp / 'in', 8)\n"
            "stats, fired = StreamingExecutor.get_stats, []\n"
            "def get_stats(self):\n"
            "    if not fired and threading.current_thread() is threading.main_thread():\n"
            "        fired.append(1)\n"
            "        raise KeyboardInterrupt\n"
            "    return stats(self)\n"
            "StreamingExecutor.get_stats = get_stats\n"
            "status = cli.main(small_job_argv(tmp, tiny_model_file(tmp), '--write-batch', '2', '--files-per-unit', '2'))\n"
            "print('status', status, 'fired', len(fired))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DATA_LOGGING_CONFIG", "RAY_DATA_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "status 130 fired 1" in done.stdout, (done.stdout, done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("interrupted: stopped by SIGINT"), done.stderr[-3000:]
    assert not [line for line in lines if "execution finished" in line or "execution failed" in line], done.stderr[-3000:]


@pytest.mark.usefixtures("ray_local")
def test_a_stopped_runs_last_progress_line_counts_the_files_that_landed(tmp_path, monkeypatch, capsys) -> None:
    """A Ctrl-C just after a batch's files landed, before the pipeline reported them: the progress bar's last line said
    `images: 0/3 (0 %)` right above `interrupted: this run wrote 3 purified`. It now counts what the output holds."""
    import pipeline.job as job_module
    from pipeline.job import run_job
    from tests.jobutil import image_folder, small_job_config

    image_folder(tmp_path / "in", 3)

    def written_unreported(ds, *args, **kwargs) -> None:
        for _ in ds.iter_rows():  # every batch written; the driver's count left behind
            pass
        raise KeyboardInterrupt

    monkeypatch.setattr(job_module, "_tally_written_batches", written_unreported)
    with pytest.raises(JobInterrupted, match="this run wrote 3 purified"):
        run_job(small_job_config(tmp_path, tiny_model_file(tmp_path / "model"), progress=True))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("images: ")]
    assert lines and lines[-1].startswith("images: 3/3 (100 %)"), lines
