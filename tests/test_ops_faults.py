"""Faults an operator meets on a schedule, injected into whole runs: a full disk when the run's summary is written, and
a SIGTERM between the end-of-run check and the summary. Each ends with the exit status and the summary the docs
promise (1 and "failed", 143 and "interrupted"), not exit status 2 ("could not start") or a summary left "running".
And --overwrite of an output whose name holds glob characters deletes that output's files, not another's."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path

import pytest

import pipeline.job as job
from pipeline.errors import JobError, JobFailed, JobInterrupted
from pipeline.job import run_job
from pipeline.lease import LEASE_FILE
from pipeline.output import JOB_FILE, SUMMARY_FILE, clear_output
from tests.jobutil import png_inputs, small_job_config
from tests.s3util import moto_s3


def _summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_FILE).read_text())


def _run(config) -> dict:
    """run_job, with a signal's bare KeyboardInterrupt out of it a failure of the test rather than the end of pytest."""
    try:
        return run_job(config)
    except KeyboardInterrupt as err:
        raise AssertionError(f"a bare {type(err).__name__} left the run: the CLI says nothing of what was written") from None


@pytest.mark.usefixtures("ray_local")
def test_a_full_disk_when_the_summary_is_written_fails_the_run_naming_the_file(tmp_path, model, monkeypatch) -> None:
    # every image landed, then the disk filled: the summary's write failed with a bare OSError, which the CLI took
    # for "could not start" (exit status 2, "error: [Errno 28] No space left on device", no file named)
    png_inputs(tmp_path / "in", 3)
    real = job.write_json

    def full_disk(uri: str, payload: dict, storage_options: dict) -> None:
        if uri.endswith(SUMMARY_FILE) and payload.get("status") != "running":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(uri, payload, storage_options)

    monkeypatch.setattr(job, "write_json", full_disk)
    with pytest.raises(JobFailed) as failed:  # the CLI's exit status 1: started and failed, the same command resumes
        run_job(small_job_config(tmp_path, model))
    message = str(failed.value)
    assert "No space left on device" in message and f"{tmp_path / 'out' / SUMMARY_FILE} could not be written" in message
    assert "this run wrote 3 purified and 0 rejected" in message and "run the same command again" in message
    assert not (tmp_path / "out" / LEASE_FILE).exists()
    # The same command resumes and completes, even with a SIGTERM while its lease is released: that said exit status
    # 143 and "run the same command again to resume", which then stopped with exit status 2 as the output was complete.
    monkeypatch.setattr(job, "write_json", real)
    real_release = job.OutputLease.release

    def release_after_sigterm(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real_release(self)

    monkeypatch.setattr(job.OutputLease, "release", release_after_sigterm)
    summary = _run(small_job_config(tmp_path, model))
    assert summary["status"] == "complete" and _summary(tmp_path / "out")["status"] == "complete"
    assert summary["this_run"]["skipped_already_done"] == 3
    assert not (tmp_path / "out" / LEASE_FILE).exists()


@pytest.mark.usefixtures("ray_local")
def test_a_full_disk_when_the_run_starts_is_cannot_write_to_output(tmp_path, model, monkeypatch) -> None:
    # _job.json fitted, the "running" summary did not: a bare "error: [Errno 28] No space left on device", no file named
    png_inputs(tmp_path / "in", 1)
    real = job.write_json

    def full_disk(uri: str, payload: dict, storage_options: dict) -> None:
        if uri.endswith(SUMMARY_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(uri, payload, storage_options)

    monkeypatch.setattr(job, "write_json", full_disk)
    with pytest.raises(JobError, match=f"cannot write to output {tmp_path / 'out'}: OSError: .*No space left"):
        run_job(small_job_config(tmp_path, model))
    assert not (tmp_path / "out" / "data").exists() and not (tmp_path / "out" / LEASE_FILE).exists()


@pytest.mark.usefixtures("ray_local")
def test_sigterm_after_the_end_of_run_check_records_the_run_as_interrupted(tmp_path, model, monkeypatch, capsys) -> None:
    # a scheduler's SIGTERM while the summary was made (or the containers' record written): exit status 143 with the
    # summary left "running", where the docs promise "interrupted" with this run's counts
    png_inputs(tmp_path / "in", 3)
    real = job._summary

    def summary_then_sigterm(*args, **kwargs) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "_summary", summary_then_sigterm)
    with pytest.raises(JobInterrupted) as stopped:
        _run(small_job_config(tmp_path, model))
    assert stopped.value.signum == signal.SIGTERM
    summary = _summary(tmp_path / "out")
    assert summary["status"] == "interrupted" and summary["this_run"]["purified"] == 3, summary
    # The same command resumes, purifies nothing again and completes, its exit status 0 though its stdout's reader
    # went away: a complete run's summary lines met the closed pipe outside main's handlers (a traceback, exit status 1)
    from pipeline.cli import main
    from tests.jobutil import small_job_argv

    monkeypatch.setattr(job, "_summary", real)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(small_job_argv(tmp_path, model)) == 0
    assert "error" not in capsys.readouterr().err
    summary = _summary(tmp_path / "out")
    assert summary["status"] == "complete" and summary["this_run"]["skipped_already_done"] == 3


OUTPUT_FILES = ("data/part-1.parquet", "rejects/part-2.parquet", SUMMARY_FILE, JOB_FILE, "_containers/containers.json")


def test_overwrite_of_an_s3_output_named_with_brackets_deletes_its_own_files_and_no_others() -> None:
    # fs.rm expands glob characters on S3: --overwrite of s3://bkt/run[1] deleted s3://bkt/run1's data/ and summary,
    # kept its own files and stopped with "error: ['bkt/run[1]/_job.json']"
    with moto_s3("bkt") as (client, options):
        for run in ("run1", "run[1]"):
            for name in OUTPUT_FILES:
                client.put_object(Bucket="bkt", Key=f"{run}/{name}", Body=b"x")
        client.put_object(Bucket="bkt", Key="run[1]/_lease.json", Body=b"{}")
        clear_output("s3://bkt/run[1]", options)
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"])
    assert keys == sorted([*(f"run1/{name}" for name in OUTPUT_FILES), "run[1]/_lease.json"])


def test_overwrite_of_a_local_output_named_with_brackets_deletes_its_own_files_and_no_others(tmp_path) -> None:
    for run in ("run1", "run[1]"):
        for name in OUTPUT_FILES:
            (tmp_path / run / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / run / name).write_bytes(b"x")
    clear_output(str(tmp_path / "run[1]"), {})
    assert sorted(p.name for p in (tmp_path / "run[1]").iterdir()) == []
    assert all((tmp_path / "run1" / name).exists() for name in OUTPUT_FILES)


def test_a_local_ray_that_cannot_start_is_one_error_line_and_exit_status_2(tmp_path, model, monkeypatch, capsys) -> None:
    # a busy node, or a file-size limit (ulimit -f) on Ray's session files: ray.init's own Exception came out as a
    # page of traceback and exit status 1 ("started and failed"), though nothing had started
    import ray

    import pipeline.placement as placement
    from pipeline.cli import main

    def timed_out(num_cpus: int | None = None) -> None:
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(placement, "init_local_ray", timed_out)
    png_inputs(tmp_path / "in", 1)
    status = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model,
                   "--steps", "1", "--canvas-size", "32", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == ["error: could not start a local Ray: Exception: The current node timed out during "
                                   "startup. This could happen because some of the raylet failed to startup or the "
                                   "GCS has become overloaded."], err
    assert not (tmp_path / "out").exists()


def test_an_overwrite_stopped_while_it_deletes_leaves_no_complete_summary_over_the_rest(tmp_path, monkeypatch) -> None:
    # SIGTERM or SIGKILL while --overwrite deleted a large data/: the old summary still said "complete" over an output
    # missing rows, so the scheduled command stopped with "already holds a complete run" (exit status 2)
    import pipeline.output as output

    out = tmp_path / "out"
    for name in OUTPUT_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    real = output._remove

    def stopped_in_data(fs, path: str, recursive: bool) -> None:
        if path.endswith("/data"):
            raise KeyboardInterrupt  # the signal, as signals_interrupt raises it
        real(fs, path, recursive)

    monkeypatch.setattr(output, "_remove", stopped_in_data)
    with pytest.raises(KeyboardInterrupt):
        clear_output(str(out), {})
    assert not (out / SUMMARY_FILE).exists()  # an unfinished run: the scheduled command resumes it
    assert (out / JOB_FILE).exists()


@pytest.mark.parametrize("name", [SUMMARY_FILE, JOB_FILE])
@pytest.mark.parametrize(("content", "said"), [
    # emptied or cut short by something else: "cannot use output OUT: JSONDecodeError: Expecting value: line 1
    # column 1 (char 0)", which named neither the file nor the way on
    ('{"status": "compl', "is not valid JSON .*move it out of the output"),
    # valid JSON of another kind, written by something else: "TypeError: 'list' object is not a mapping"
    ("[1, 2]", "holds a JSON list, not the object .*move it out of the output"),
])
def test_a_damaged_record_in_the_output_is_named(tmp_path, model, name, content, said) -> None:
    from pipeline.plan import plan_job

    png_inputs(tmp_path / "in", 1)
    config = small_job_config(tmp_path, model)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / JOB_FILE).write_text(json.dumps({**plan_job(config, dry_run=True).job_record,
                                                          "config": config.public()}))
    (tmp_path / "out" / name).write_text(content)
    with pytest.raises(JobError, match=f"{re.escape(str(tmp_path / 'out' / name))} {said}"):
        plan_job(config, dry_run=True)


@pytest.mark.parametrize("existing", [False, True])
def test_a_dry_run_refuses_an_output_this_user_cannot_write_in(tmp_path, model, monkeypatch, capsys,
                                                               existing: bool) -> None:
    """An output on a read-only mount, or in a folder its user may not write in: the dry run said nothing stops the run
    (exit 0), and the run itself then stopped at once, exit 2 "cannot write to output". The dry run writes nothing, so
    it asks the system (os.access, which a read-only mount answers for root too); here a folder is made read-only by
    stubbing that answer, since this test may run as root."""
    from pipeline.cli import main
    from tests.jobutil import small_job_argv

    png_inputs(tmp_path / "in", 1)
    locked = tmp_path / "out" if existing else tmp_path
    (tmp_path / "out").mkdir(exist_ok=existing)
    if not existing:
        (tmp_path / "out").rmdir()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(path) == str(locked) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    assert main(small_job_argv(tmp_path, model, "--dry-run")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot write to output {tmp_path / 'out'}: {locked} is not writable by this user (no " \
                  "permission, or a read-only file system)", err


class _ClosedPipe:
    """stdout whose reader went away (`zip-purify ... | head -1` with PYTHONUNBUFFERED=1, as containers set it): every
    write raises BrokenPipeError."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no file descriptor")


def test_a_dry_run_whose_stdout_reader_went_away_is_not_called_an_error(tmp_path, model, monkeypatch, capsys) -> None:
    # it said "error: [Errno 32] Broken pipe", exit status 2 ("could not start"), for a dry run that found nothing wrong
    from pipeline.cli import main
    from tests.jobutil import small_job_argv

    png_inputs(tmp_path / "in", 1)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(small_job_argv(tmp_path, model, "--dry-run")) == 0
    assert "error" not in capsys.readouterr().err
