"""Mutants of pipeline/stopped_run.py and pipeline/progress.py that the other tests left alive: what a run stopped
by Ctrl-C, SIGTERM or a failure says and does (its signals, its `interrupted:` / `error:` line, its count), and the
progress lines of a log. Fast: no Ray, no subprocess."""

from __future__ import annotations

import io
import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.stopped_run as stopped_run
from pipeline import progress as progress_module
from pipeline.errors import JobFailed, JobInterrupted
from pipeline.progress import progress_bar
from pipeline.stopped_run import (
    ACTOR_DIED_NOTE,
    count_stopped_run,
    failure_reason,
    record_stopped_run,
    signals_deferred,
    signals_interrupt,
)
from pipeline.storage import REASON_CHARS
from tests.test_api_progress import Clock, Terminal

WHOLE = "Every file in /out is whole: run the same command again to resume (what is written is skipped, not purified again)"


@pytest.fixture
def handlers_kept():
    """The test's own changes to SIGINT's and SIGTERM's handlers are undone, whatever it asserts."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield before
    for s, old in before.items():
        signal.signal(s, old)


# --- failure_reason: the one line a failed run gives -------------------------------------------------------------

def test_a_long_actor_died_reason_keeps_its_note_within_the_reason_limit() -> None:
    said = "ActorDiedError: The actor died unexpectedly before finishing this task. " + " ".join(
        ["Its worker exited with an exit code that Ray reports here at length."] * 8)
    reason = failure_reason(RuntimeError(said))
    assert reason.endswith("…" + ACTOR_DIED_NOTE) and len(reason) <= REASON_CHARS, (len(reason), reason)


def test_only_an_actor_whose_process_died_gets_the_out_of_memory_note() -> None:
    created = "ActorDiedError: The actor died because of an error raised in its creation task, ray::A.__init__() (pid=1)"
    assert failure_reason(RuntimeError(created)) == created
    other = "OSError: the connection died unexpectedly"
    assert failure_reason(RuntimeError(f"ray::W.submit() (pid=2)\n{other}")) == other


def test_a_coloured_exception_line_is_the_reason_without_its_colours() -> None:
    remote = "\x1b[36mray::W.submit()\x1b[39m (pid=3)\n\x1b[31mValueError: bad \x1b[1mimage\x1b[0m\nmore"
    assert failure_reason(RuntimeError(remote)) == "ValueError: bad image"


def test_a_worker_that_exited_is_named_by_its_exit() -> None:
    assert failure_reason(RuntimeError("ray::W.submit() (pid=4)\nSystemExit: 3")) == "SystemExit: 3"


# --- signals_deferred: Ctrl-C or SIGTERM while Ray starts ---------------------------------------------------------

def test_a_signal_while_ray_starts_is_held_then_raised_as_the_first_one(handlers_kept) -> None:
    with pytest.raises(KeyboardInterrupt) as stopped:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            reached = True  # held: the block runs to its end
    assert reached and stopped.value.signum == signal.SIGTERM  # exit status 143, as the first signal says
    assert {s: signal.getsignal(s) for s in handlers_kept} == handlers_kept


def test_a_handler_set_while_ray_starts_is_left_and_an_ignored_signal_stays_ignored(handlers_kept) -> None:
    def rays(signum, frame) -> None:
        pass

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job (cmd &)
    with signals_deferred():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGTERM, rays)  # ray.init sets its own
    assert signal.getsignal(signal.SIGTERM) is rays and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


# --- record_stopped_run: the line that ends a stopped or failed run ------------------------------------------------

def test_the_stopped_and_failed_lines_promise_whole_files_and_say_how_to_resume() -> None:
    with pytest.raises(JobInterrupted) as stopped:
        with record_stopped_run(lambda status, details: "3 purified", "/out"):
            raise KeyboardInterrupt
    assert str(stopped.value) == f"stopped by SIGINT; 3 purified. {WHOLE}"
    with pytest.raises(JobFailed) as failed:
        with record_stopped_run(lambda status, details: "3 purified", "/out"):
            raise RuntimeError("boom")
    assert str(failed.value) == f"the run failed: RuntimeError: boom; 3 purified. {WHOLE}"


def test_a_failure_on_a_node_without_the_path_says_to_mend_it_before_resuming() -> None:
    err = RuntimeError("ray::W.submit() (pid=5)\nNotOnThisNodeError: --input folder /d is not on node n")
    with pytest.raises(JobFailed) as failed:
        with record_stopped_run(lambda status, details: "0 purified", "/out"):
            raise err
    assert str(failed.value).endswith("is whole: once every node of the cluster sees that path at the same place, "
                                      "run the same command again to resume (what is written is skipped, not purified "
                                      "again)"), str(failed.value)


@pytest.mark.parametrize("err", [KeyboardInterrupt(), RuntimeError("the disk is full")])
def test_a_stop_or_failure_before_the_runs_records_is_raised_as_it_is(err) -> None:
    recorded = []
    with pytest.raises(type(err)) as raised:
        with record_stopped_run(lambda status, details: recorded.append(status) or "", "/out",
                                recorded=lambda e: False):
            raise err
    assert raised.value is err and recorded == []


def test_a_signal_after_a_failure_is_recorded_does_not_replace_the_failure() -> None:
    outcome: list[BaseException] = []
    try:
        with signals_interrupt():  # run_job's, around the output's lease
            try:
                with record_stopped_run(lambda status, details: "0 purified", "/out"):
                    raise RuntimeError("boom")
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the lease is released
                outcome.append(RuntimeError("the lease's release ran to its end"))
    except BaseException as caught:  # noqa: BLE001 - a KeyboardInterrupt here is the failure looked for
        outcome.append(caught)
    assert len(outcome) == 2 and isinstance(outcome[1], JobFailed), outcome


# --- count_stopped_run ---------------------------------------------------------------------------------------------

def test_footers_that_cannot_be_read_leave_the_reported_count_and_its_files(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"]}), out / "data" / "part-landed.parquet")

    def denied(*args) -> dict[str, int]:
        raise PermissionError("denied")

    monkeypatch.setattr(stopped_run, "part_rows", denied)
    count = count_stopped_run(str(out), {}, set(), {"data/part-reported.parquet": 3})
    assert (count.purified, count.files) == (3, 1) and "denied" in count.short, count


# --- progress in a log ---------------------------------------------------------------------------------------------

@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    return clock


def test_log_lines_are_a_minute_after_the_last_line_not_after_the_start(clock) -> None:
    log = io.StringIO()
    bar = progress_bar(None, "images", "img", log)
    for seconds, n in ((60, 6), (1, 1), (1, 1), (58, 2)):
        clock.now += seconds
        bar.update(n)
    assert log.getvalue().splitlines() == ["images: 6 in 60 s, 0.1 img/s", "images: 10 in 120 s, 0.0833 img/s"]


def test_an_empty_total_and_no_time_passed_still_give_a_last_line(clock) -> None:
    log = io.StringIO()
    progress_bar(0, "images", "img", log).close()
    bar = progress_bar(5, "export", "img", log)
    bar.update(5)  # as fast as the clock's resolution
    bar.close()
    assert log.getvalue().splitlines() == ["images: 0/0 (0 %) in 0 s", "export: 5/5 (100 %) in 0 s"]


def test_a_rate_just_under_a_thousand_is_not_in_exponent_form(clock) -> None:
    log = io.StringIO()
    bar = progress_bar(9997, "export", "img", log)
    clock.now += 10
    bar.update(9997)
    bar.close()
    assert log.getvalue().splitlines() == ["export: 9,997/9,997 (100 %) in 10 s, 1,000 img/s"]


def test_a_message_to_another_file_goes_there(clock) -> None:
    log, other = io.StringIO(), io.StringIO()
    progress_bar(3, "training classifier", "batch", log).write("epoch 1/2: loss 0.5", file=other)
    assert (log.getvalue(), other.getvalue()) == ("", "epoch 1/2: loss 0.5\n")


def test_a_terminals_bar_starts_at_a_resumed_count_and_shows_each_batch() -> None:
    terminal = Terminal()
    bar = progress_bar(10, "images", "img", terminal, initial=4)
    assert "4/10" in terminal.getvalue()
    bar.close()
    terminal = Terminal()
    bar = progress_bar(10, "images", "img", terminal, each_update=True)  # the job's: a batch each update
    bar.update(1)
    bar.update(1)  # at once: drawn all the same
    assert terminal.getvalue().rstrip().rpartition("\r")[2].startswith("images:  20%|"), terminal.getvalue()
    bar.close()


# --- resume_advice: what to run after a stopped run ----------------------------------------------------------------

def test_the_advice_to_resume_an_overwrite_run_drops_the_flag_or_starts_over_when_nothing_was_written() -> None:
    skips = "to resume (what is written is skipped, not purified again)"
    assert stopped_run.resume_advice(False) == f"run the same command again {skips}"
    assert stopped_run.resume_advice(False, wrote=False) == f"run the same command again {skips}"
    assert stopped_run.resume_advice(True, True) == \
        f"run the command again without --overwrite {skips}; with --overwrite it deletes them and starts over"
    assert stopped_run.resume_advice(True, True, "job.yaml") == (
        f"run the command again without --overwrite (remove overwrite: true from job.yaml) {skips}; with --overwrite it "
        "deletes them and starts over")
    assert stopped_run.resume_advice(True, False, "job.yaml") == (
        "--overwrite deleted the output's earlier files and this run purified nothing yet: run the same command again "
        "to start over")


# BUG (fixed here): an exception whose name does not end in Error/Exception (zipfile.BadZipFile, pyarrow's
# ArrowInvalid) was passed over, and the run failed with Ray's own line as the reason: "UserCodeException: UDF failed
# to process a data block.", which names neither the worker's error nor the file.
@pytest.mark.parametrize("name", ["zipfile.BadZipFile", "pyarrow.lib.ArrowInvalid"])
def test_a_workers_exception_with_a_module_qualified_name_is_the_reason(name) -> None:
    remote = ("ray::MapWorker(MapBatches(PurifyStage)).submit() (pid=8131, ip=192.0.2.2)\n"
              '  File "/work/main/pipeline/stages.py", line 164, in read\n'
              "    raise\n"
              f"{name}: File is not a zip file\n\n"
              "The above exception was the direct cause of the following exception:\n\n"
              "ray::MapWorker(MapBatches(PurifyStage)).submit() (pid=8131, ip=192.0.2.2)\n"
              "ray.exceptions.UserCodeException: UDF failed to process a data block.\n")
    assert failure_reason(RuntimeError(remote)) == f"{name.rpartition('.')[2]}: File is not a zip file"
    # a line of a message that reads like one is not taken for an exception: no module before its name
    assert failure_reason(RuntimeError("ray::W.submit() (pid=1)\nNote: see above\nValueError: bad")) == "ValueError: bad"


# BUG (fixed here): SIGTERM while the run checked its model and inputs, or after Ray had started and before the run
# took the output's lease, met the process's own disposition (the default: the process ended, without a word), where
# docs/job.md promises the `interrupted: the run stopped while loading ...` line and 143, as Ctrl-C gets 130.
@pytest.mark.parametrize("where", ["plan", "placement"])
def test_sigterm_while_the_run_loads_says_so_and_exits_143(tmp_path, monkeypatch, capsys, handlers_kept, where) -> None:
    from types import SimpleNamespace

    import pipeline.job as job
    from pipeline.cli import main

    class Ended(Exception):
        pass

    def ends_the_process(signum, frame) -> None:  # stands in for SIGTERM's default, which would end pytest too
        raise Ended("SIGTERM went to the process's own handler")

    def sigterm(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the run went on after the signal")

    signal.signal(signal.SIGTERM, ends_the_process)
    if where == "plan":
        monkeypatch.setattr(job, "plan_job", sigterm)
    else:
        monkeypatch.setattr(job, "plan_job", lambda config: SimpleNamespace(units=["a unit"]))
        monkeypatch.setattr(job, "init_ray", lambda config: None)
        monkeypatch.setattr(job, "with_fitted_actor_cpus", lambda config: (config, None))
        monkeypatch.setattr(job, "default_actors_and_gpus", sigterm)
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path), "--output", str(out)]) == 143
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("interrupted: the run stopped while loading"), err
    assert not out.exists() and signal.getsignal(signal.SIGTERM) is ends_the_process


# BUG (fixed here): the percentage was rounded, so a log said "(100 %)" of a run with images still to go (199/200,
# with an ETA after it); it is floored now: 100 % only when all are done.
def test_a_log_says_100_percent_only_when_all_are_done(clock) -> None:
    log = io.StringIO()
    bar = progress_bar(200, "images", "img", log)
    clock.now += 199
    bar.update(199)
    clock.now += 1
    bar.update(1)
    bar.close()
    assert log.getvalue().splitlines() == ["images: 199/200 (99 %) in 199 s, 1 img/s, ETA 1 s",
                                           "images: 200/200 (100 %) in 200 s, 1 img/s"]


def test_a_run_off_the_main_thread_leaves_the_signals_alone(handlers_kept) -> None:
    """Signal handlers can be set in the main thread only (ValueError elsewhere): a run_job called from a thread (a
    notebook's, a web app's worker) runs without them."""
    import threading

    outcome: list[object] = []

    def run() -> None:
        try:
            with signals_deferred(), record_stopped_run(lambda status, details: "", "/out"):
                outcome.append("ran")
        except BaseException as err:  # noqa: BLE001 - any error here is the failure looked for
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert outcome == ["ran"]


def test_a_footer_read_the_storage_drops_once_is_read_again(tmp_path, monkeypatch) -> None:
    import pipeline.storage as storage

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"]}), out / "data" / "part-landed.parquet")
    fs, root = storage.storage_path(str(out), {})
    dropped: list[str] = []

    class Dropping:
        def __getattr__(self, name: str):
            return getattr(fs, name)

        def open(self, path: str, mode: str = "rb"):
            if not dropped:
                dropped.append(path)
                raise ConnectionResetError("connection reset by peer")
            return fs.open(path, mode)

    monkeypatch.setattr(stopped_run, "storage_path", lambda uri, options: (Dropping(), root))
    monkeypatch.setattr(storage, "backoff", lambda *args: None)
    count = count_stopped_run(str(out), {}, set(), {})
    assert dropped and (count.purified, count.files, count.short) == (2, 1, None), count
