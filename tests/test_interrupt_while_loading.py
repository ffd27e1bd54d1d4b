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
