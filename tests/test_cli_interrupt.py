"""Ctrl-C on a running job: one line, exit status 130, a summary that says so, and an output the same command resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.config import JobConfig
from pipeline.plan import plan_job
from tests.gateutil import gate_env, let_through_until
from tests.jobutil import last_job_line, png_inputs, tiny_model_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # one real run of the job, in a subprocess: ~15 s of Ray


def test_ctrl_c_stops_the_run_with_130_and_an_interrupted_summary(tmp_path) -> None:
    n = 32
    png_inputs(tmp_path / "in", n)
    model = tiny_model_file(tmp_path)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--checkpoint", model, "--steps", "2",
            "--files-per-unit", "8", "--tile-batch", "8", "--batch-size", "8", "--write-batch", "8"]
    # a terminal's Ctrl-C goes to the whole foreground process group, with SIGINT not ignored
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/purify.py"), *args], cwd=ROOT, text=True,
                            env={**os.environ, **gate_env(tmp_path / "gate")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # its batches let through one by one until a part file lands, the last of its 4 never: the run is stopped before it
    # ends however fast it runs or late the Ctrl-C comes (slowed down 0.5 s a batch, it could finish first)
    let_through_until(tmp_path / "gate", lambda: bool(list((out / "data").glob("part-*.parquet"))) or proc.poll() is not None,
                      most=n // 8 - 1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = last_job_line(stderr)
    assert last.startswith("interrupted: stopped by SIGINT") and "run the same command again to resume" in last, last
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT", summary  # not "running" forever
    assert summary["versions"]["zip_purify"] == pipeline.__version__
    assert summary["settings"]["steps"] == 2 and summary["settings"]["start"] == 1.0  # what ran, resolved
    # every visible file is whole, and the same command resumes: what is written is skipped, the rest is left to read
    written = sum(pq.read_metadata(p).num_rows for p in (out / "data").glob("part-*.parquet"))
    assert 0 < written < n, "the run finished before it could be interrupted"
    plan = plan_job(JobConfig(**{**JobConfig().__dict__, "input": str(tmp_path / "in"), "output": str(out),
                                 "checkpoint": model, "steps": 2}), dry_run=True)
    left = plan.describe()["input"]["image_files_to_read"]
    assert plan.output_state == "resume" and plan.skipped_files >= written and left + plan.skipped_files == n
