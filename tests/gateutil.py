"""Letting a job's batches through the gate of ZIP_PURIFY_INJECT_FAULT=gate:FOLDER (`pipeline.stages.wait_at_gate`), so
that a test stops or kills a run with some of its output written and the rest certainly still to come."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def gate_env(gate: Path) -> dict[str, str]:
    """The environment variable that makes a job's batches wait at `gate` (made here, shut)."""
    gate.mkdir()
    return {"ZIP_PURIFY_INJECT_FAULT": f"gate:{gate}"}


def let_through_until(gate: Path, done: Callable[[], bool], most: int, deadline_s: float = 240.0) -> None:
    """Let the batches that wait at `gate` through one at a time until `done()`, `most` of them at most: with `most`
    below the run's batch count, the run cannot end meanwhile, however fast it runs or slow the test is.

    Not a set number of batches let through at once: Ray Data may hand the purifier actor two batches in one task and
    hold the first one's rows until the second is done, so that one let through alone might never be written."""
    passed, deadline = 0, time.monotonic() + deadline_s
    while not done() and time.monotonic() < deadline:
        if passed < most and (gate / f"batch-{passed}").exists():  # a batch waits at the gate
            (gate / f"pass-{passed}").touch()
            passed += 1
        time.sleep(0.05)


def open_gate(gate: Path) -> None:
    """Let every batch through `gate`, now and later: after a test killed a driver that had joined the session's Ray,
    its purifier actor still waits at the gate (up to `GATE_WAIT_S`), holding its CPU, and Ray ends it only once that
    batch returns, so the next run on that Ray would wait for it."""
    (gate / "open").touch()
