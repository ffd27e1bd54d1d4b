"""Ctrl-C in the second or so while a tool imports torch and Ray gave a page of import frames and a death by SIGINT;
now one line and status 130, as a Ctrl-C once the tool runs. The signal is sent once torch's library is mapped into
the process, that is, in the middle of the imports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.jobutil import load_evaluate_job

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).parent / "zip-purify"


def _interrupt_while_torch_loads(command: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see when torch loads")
@pytest.mark.parametrize("tool", ["jobs/purify.py", "jobs/evaluate.py", "jobs/train_prior.py", "zip-purify"])
def test_ctrl_c_while_a_tool_loads_is_one_line_and_130(tool: str) -> None:
    if tool == "zip-purify" and not CONSOLE_SCRIPT.exists():
        pytest.skip("the console script is not installed (pip install -e .)")
    command = [str(CONSOLE_SCRIPT)] if tool == "zip-purify" else [sys.executable, tool]
    done = _interrupt_while_torch_loads([*command, "--help"])
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and f"interrupted: {tool} stopped while loading" in done.stderr
    assert done.stdout == ""  # stopped before --help was printed: the signal came during the imports


def test_ctrl_c_while_evaluate_checks_its_inputs_is_one_line_and_130(monkeypatch, capsys) -> None:
    evaluate = load_evaluate_job("evaluate_job_interrupted_in_checks")

    def interrupted_check(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "preflight", interrupted_check)
    try:
        status = evaluate.main(["--datasets", "cifar10", "--attacks", "badnet"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C in evaluate's checks escaped main() as a traceback")
    assert status == 130
    err = capsys.readouterr().err
    assert "nothing was started" in err and "Traceback" not in err


@pytest.mark.parametrize(("where", "signum"), [("plan", signal.SIGINT), ("ray", signal.SIGINT), ("ray", signal.SIGTERM)])
def test_ctrl_c_while_the_run_loads_says_nothing_was_written_not_that_the_output_is_whole(
        tmp_path, monkeypatch, capsys, where: str, signum: int) -> None:
    """A Ctrl-C while the run checked its model and inputs, or while Ray started, said "every file in the output is
    whole; run the same command again to resume", of an output that did not exist."""
    from types import SimpleNamespace

    import pipeline.job as job
    from pipeline.cli import main

    def planning_stopped(config):
        raise KeyboardInterrupt

    def ray_start_stopped(config) -> None:
        os.kill(os.getpid(), signum)  # held while Ray starts, then raised as the interruption
        time.sleep(0.2)

    def not_reached(config):
        raise AssertionError("the run went on after the signal")

    if where == "plan":
        monkeypatch.setattr(job, "plan_job", planning_stopped)
    else:
        monkeypatch.setattr(job, "plan_job", lambda config: SimpleNamespace(units=["a unit"]))
        monkeypatch.setattr(job, "init_ray", ray_start_stopped)
        monkeypatch.setattr(job, "default_actors_and_gpus", not_reached)
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path), "--output", str(out)]) == 128 + signum
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("interrupted: the run stopped while loading"), err
    assert "before it wrote anything to the output" in err[0] and "is whole" not in err[0]
    assert not out.exists()  # what it says: nothing was written
