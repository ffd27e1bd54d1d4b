"""Ctrl-C or SIGTERM just after a run first wrote its summary (`running`), before it recorded stops: the summary said
`running` forever, and the run's line was the one for a run stopped before it started ("every file in the output is
whole"), where a signal a moment later says `interrupted` in the summary, with this run's counts. The signal is
delivered where the run is (`signal.raise_signal`), as a terminal's Ctrl-C is. No Ray: the cluster's start is
replaced by what it would leave, and the pipeline is never reached."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import pipeline.job as job
from pipeline.cli import main
from pipeline.lease import LEASE_FILE
from pipeline.output import RUNS_DIR, SUMMARY_FILE
from pipeline.plan import plan_job
from tests.jobutil import image_folder, last_job_line, small_job_argv, small_job_config


def _signal_after(monkeypatch, name: str, signum: int, when=lambda *args: True) -> None:
    """pipeline.job's `name` does its work, then the process gets `signum` (where `when(*its args)`)."""
    real = getattr(job, name)

    def then_signal(*args, **kwargs):
        done = real(*args, **kwargs)
        if when(*args):
            signal.raise_signal(signum)
        return done

    monkeypatch.setattr(job, name, then_signal)


def _running_summary(uri: str, payload: dict, *args) -> bool:
    return uri.endswith(f"/{SUMMARY_FILE}") and payload.get("status") == "running"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("where", ["the running summary written", "the input record written"])
def test_a_signal_once_the_running_summary_is_written_is_recorded_as_interrupted(tmp_path: Path, model, monkeypatch,
                                                                                 capsys, where, signum) -> None:
    image_folder(tmp_path / "in", 3)
    monkeypatch.setattr(job, "_start_cluster", lambda config: (config, (1, 0.0, "cpu")))

    def not_reached(*args, **kwargs):
        raise AssertionError("the pipeline started after the signal")

    monkeypatch.setattr(job, "_purify", not_reached)
    if where == "the running summary written":
        _signal_after(monkeypatch, "write_json", signum, _running_summary)
    else:
        _signal_after(monkeypatch, "write_record", signum)

    assert main(small_job_argv(tmp_path, model)) == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    name = signal.Signals(signum).name
    last = last_job_line(capsys.readouterr().err)
    assert last.startswith(f"interrupted: stopped by {name}; this run wrote 0 purified and 0 rejected (0 part files)"), \
        last
    assert last.endswith("run the same command again to resume (what is written is skipped, not purified again)"), last
    out = tmp_path / "out"
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == name, summary
    assert summary["this_run"]["purified"] == 0 and summary["this_run"]["files_written"] == 0
    assert last.endswith(summary["resume"]), (last, summary["resume"])
    # the run's own summary in the output's history says so too, and the lease is released
    (history,) = (out / RUNS_DIR).glob("*.json")
    assert json.loads(history.read_text())["status"] == "interrupted"
    assert not (out / LEASE_FILE).exists()
    # and the same command resumes it
    assert plan_job(small_job_config(tmp_path, model), dry_run=True).output_state == "resume"
