"""Ctrl-C on an --overwrite run: what it says to run next matches what the output holds. It said "run the same command
again to resume (what is written is skipped, not purified again)", but the same command, with --overwrite, deletes
what is written and purifies every input again; and stopped before its pipeline wrote anything, after --overwrite had
deleted the output's earlier files, there is nothing to resume. No Ray: the cluster's start and the pipeline are
replaced by what they would leave."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.job as job
from pipeline.cli import config_from_args, main
from pipeline.plan import plan_job
from pipeline.sources import reject_record
from pipeline.stages import batch_of, write_stage
from tests.jobutil import image_folder, small_job_argv, small_job_config


@pytest.fixture
def earlier_output(tmp_path: Path, monkeypatch) -> Path:
    """tmp_path/in (3 images) and tmp_path/out, a complete output of an earlier run (one part file); no Ray."""
    image_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["earlier.png"]}), out / "data" / "part-00000-earlier.parquet")
    (out / "_summary.json").write_text(json.dumps({"status": "complete"}))
    (out / "_job.json").write_text("{}")
    monkeypatch.setattr(job, "_start_cluster", lambda config: (config, (1, 0.0, "cpu")))
    return out


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def _last_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def test_ctrl_c_before_an_overwrite_runs_pipeline_says_start_over(tmp_path, model, monkeypatch, capsys,
                                                                    earlier_output) -> None:
    monkeypatch.setattr(job, "_purify", _interrupted)  # the pipeline is about to start
    assert main(small_job_argv(tmp_path, model, "--overwrite")) == 130
    last = _last_line(capsys)
    assert last.startswith("interrupted: stopped by SIGINT; this run wrote 0 purified"), last
    assert "--overwrite deleted the output's earlier files and this run purified nothing yet: run the same command " \
           "again to start over" in last and "resume" not in last, last
    # what it says: the earlier rows are gone, none is written
    assert not list(earlier_output.glob("*/part-*.parquet"))
    summary = json.loads((earlier_output / "_summary.json").read_text())
    assert summary["status"] == "interrupted" and last.endswith(summary["resume"]), (last, summary)  # the same word


def test_ctrl_c_while_overwrite_clears_the_output_says_start_over(tmp_path, model, monkeypatch, capsys,
                                                                  earlier_output) -> None:
    monkeypatch.setattr(job, "clear_output", _interrupted)
    assert main(small_job_argv(tmp_path, model, "--overwrite")) == 130
    last = _last_line(capsys)
    assert last == ("interrupted: the run stopped before it purified anything, and --overwrite may have deleted the "
                    "output's earlier files (those left are whole); run the same command again to start over"), last
    # a run without --overwrite, stopped at the same stage (the lease taken, before the pipeline), resumes as before
    shutil.rmtree(earlier_output)
    monkeypatch.setattr(job, "_start_tally", _interrupted)
    assert main(small_job_argv(tmp_path, model)) == 130
    assert _last_line(capsys) == "interrupted: every file in the output is whole; run the same command again to resume"


def _wrote_one_then_interrupted(tmp_path: Path):
    """A stand-in for the job's pipeline (`job._purify`) that writes one reject's part file, then is stopped by Ctrl-C."""
    def purify(config, plan, placement, stop, total=None):
        write_stage(batch_of([reject_record("0.png", str(tmp_path / "in" / "0.png"), "a test reject", "decode")]),
                    config.output, {})
        raise KeyboardInterrupt

    return purify


def test_ctrl_c_after_an_overwrite_run_wrote_rows_says_resume_without_overwrite(tmp_path, model, monkeypatch, capsys,
                                                                                earlier_output) -> None:
    monkeypatch.setattr(job, "_purify", _wrote_one_then_interrupted(tmp_path))
    assert main(small_job_argv(tmp_path, model, "--overwrite")) == 130
    last = _last_line(capsys)
    assert "this run wrote 0 purified and 1 rejected (1 part file)" in last, last
    assert last.endswith("run the command again without --overwrite to resume (what is written is skipped, not purified "
                         "again); with --overwrite it deletes them and starts over"), last
    summary = json.loads((earlier_output / "_summary.json").read_text())
    assert summary["resume"].startswith("run the command again without --overwrite to resume") and \
        last.endswith(f"Every file in {earlier_output} is whole: {summary['resume']}"), (last, summary)
    # the advice holds: without --overwrite the output resumes, its written input skipped
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    assert plan.output_state == "resume" and plan.skipped_files == 1


def test_an_overwrite_from_a_config_file_is_named_in_the_advice_to_run_without_it(tmp_path, model, monkeypatch, capsys,
                                                                                  earlier_output) -> None:
    """overwrite: true in the --config file, no --overwrite on the command line: "run the command again without
    --overwrite" named nothing the user could leave out of the command; it says which file to take it out of."""
    wrote_one_then_interrupted = _wrote_one_then_interrupted(tmp_path)
    config_file = tmp_path / "job.yaml"
    config_file.write_text("overwrite: true\n")
    monkeypatch.setattr(job, "_purify", wrote_one_then_interrupted)
    assert main(small_job_argv(tmp_path, model, "--config", str(config_file))) == 130
    last = _last_line(capsys)
    assert last.endswith(f"run the command again without --overwrite (remove overwrite: true from {config_file}) to "
                         "resume (what is written is skipped, not purified again); with --overwrite it deletes them "
                         "and starts over"), last
    # the summary's `resume` says the same, in the same words (it named no file: "run the command again without
    # --overwrite")
    resume = json.loads((earlier_output / "_summary.json").read_text())["resume"]
    assert last.endswith(f"Every file in {earlier_output} is whole: {resume}"), (last, resume)
    # the flag on the command line too: the command without it still overwrites, as the file says so; the file is
    # named all the same (it was not: "run the command again without --overwrite" alone)
    monkeypatch.setattr(job, "_purify", wrote_one_then_interrupted)
    assert main(small_job_argv(tmp_path, model, "--config", str(config_file), "--overwrite")) == 130
    last = _last_line(capsys)
    assert f"run the command again without --overwrite (remove overwrite: true from {config_file}) to resume" in last, \
        last
    without_flag = small_job_argv(tmp_path, model, "--config", str(config_file))
    assert config_from_args(without_flag).overwrite is True
    # the flag alone: the advice is the flag's
    monkeypatch.setattr(job, "_purify", wrote_one_then_interrupted)
    assert main(small_job_argv(tmp_path, model, "--overwrite")) == 130
    last = _last_line(capsys)
    assert "run the command again without --overwrite to resume" in last and str(config_file) not in last, last


def test_a_config_given_as_a_pipe_with_the_overwrite_flag_is_read_once(tmp_path, model, monkeypatch, capsys,
                                                                       earlier_output) -> None:
    """`--config <(envsubst < job.yaml) --overwrite`: the file was read a second time to find whether it says
    overwrite: true too (for the stopped run's advice), before the run began; a pipe has nothing left then, so the run
    never started ("--config /dev/fd/63 is empty", exit status 2), and a named FIFO blocked it for good."""
    import os

    read_end, write_end = os.pipe()
    os.write(write_end, b"overwrite: true\n")
    os.close(write_end)
    try:
        monkeypatch.setattr(job, "_purify", _wrote_one_then_interrupted(tmp_path))
        assert main(small_job_argv(tmp_path, model, "--config", f"/dev/fd/{read_end}", "--overwrite")) == 130
    finally:
        os.close(read_end)
    last = _last_line(capsys)
    assert last.endswith(f"run the command again without --overwrite (remove overwrite: true from /dev/fd/{read_end}) "
                         "to resume (what is written is skipped, not purified again); with --overwrite it deletes them "
                         "and starts over"), last
