"""Crashed workers and a killed driver: the run completes / resumes with every input exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.jobutil import image_bytes
from tests.reliability.scenario import check

ROOT = Path(__file__).resolve().parents[2]


def _images(folder: Path, n: int) -> set[str]:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:04d}.png").write_bytes(image_bytes(32, 32, i))
    return {f"{i:04d}.png" for i in range(n)}


def _job(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "jobs/purify.py"), "--no-progress", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def test_actor_failures_are_retried(tmp_path, tiny_model) -> None:
    for mode in ("raise-once", "exit-once"):
        ids = _images(tmp_path / mode / "in", 24)
        out = tmp_path / mode / "out"
        proc = _job(["--input", str(tmp_path / mode / "in"), "--output", str(out), "--checkpoint", tiny_model,
                     "--steps", "2", "--tile-batch", "8", "--batch-size", "8"],
                    env={"ZIP_PURIFY_INJECT_FAULT": f"{mode}:{tmp_path / mode / 'marker'}"})
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-3000:]
        assert (tmp_path / mode / "marker").exists(), "the fault was never injected"
        check(f"worker {mode}", str(out), ids)


def test_driver_killed_then_rerun(tmp_path, tiny_model) -> None:
    ids = _images(tmp_path / "in", 240)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--checkpoint", tiny_model, "--steps", "3",
            "--files-per-unit", "8", "--tile-batch", "8", "--batch-size", "8", "--write-batch", "8"]
    proc = _job(args, env={"ZIP_PURIFY_INJECT_FAULT": "slow:0.5"})  # ~15 s of purifying: time to kill it
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "data").glob("part-*.parquet"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    parts = list((out / "data").glob("part-*.parquet"))
    assert parts, "the run was killed before writing anything; the test needs some output first"
    done_before = sum(pq.read_metadata(p).num_rows for p in parts)  # every visible file is whole Parquet
    assert done_before < 240, "the run finished before it could be killed"
    rerun = _job(args)
    log, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, log[-3000:]
    check("driver SIGKILL + rerun", str(out), ids)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["this_run"]["skipped_already_done"] >= done_before
    assert summary["this_run"]["purified"] <= 240 - done_before
