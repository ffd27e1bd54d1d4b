"""The reliability tests' gate (ZIP_PURIFY_INJECT_FAULT=gate:FOLDER): a test lets a run's batches through one by one, so
that it can stop the run once its first files land with the rest certainly still to come. A fixed slowdown of each
batch (slow:0.5) only made that likely: the test process held up a second or two on a loaded machine, and the run had
finished before it was stopped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.stages import FAULT_ENV, _maybe_inject_fault


def test_each_batch_waits_for_its_own_pass_in_the_order_the_batches_come(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, f"gate:{tmp_path}")
    (tmp_path / "pass-0").touch()
    _maybe_inject_fault()  # the first batch: let through
    assert (tmp_path / "batch-0").exists()
    second = threading.Thread(target=_maybe_inject_fault, daemon=True)
    second.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "batch-1").exists() and time.monotonic() < deadline:  # numbered, now waiting for its pass
        second.join(0.01)
    assert (tmp_path / "batch-1").exists() and second.is_alive()  # no pass-1: it cannot have gone on
    (tmp_path / "pass-1").touch()
    second.join(60)
    assert not second.is_alive()


def test_an_open_gate_lets_every_batch_through(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, f"gate:{tmp_path}")
    (tmp_path / "open").touch()
    for _ in range(3):
        _maybe_inject_fault()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-0", "batch-1", "batch-2", "open"]


def test_a_gate_left_shut_lets_a_batch_go_on_after_its_longest_wait(tmp_path: Path, monkeypatch) -> None:
    import pipeline.purify_stage as stage

    monkeypatch.setenv(FAULT_ENV, f"gate:{tmp_path}")
    monkeypatch.setattr(stage, "GATE_WAIT_S", 0.0)  # a test that forgot its passes holds its run 10 minutes, not for ever
    _maybe_inject_fault()
    assert (tmp_path / "batch-0").exists() and not (tmp_path / "pass-0").exists()


@pytest.mark.parametrize("spec", ["", "slow:0"])
def test_other_specs_leave_no_gate_files(tmp_path: Path, monkeypatch, spec: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(FAULT_ENV, spec)
    _maybe_inject_fault()
    assert list(tmp_path.iterdir()) == []


def test_several_faults_apply_in_their_order_each_once(tmp_path: Path, monkeypatch) -> None:
    """With "raise-once:M1;raise-once:M2" the first batch meets the first fault, the next batch the second, then none
    (so one run of the job meets a raise and an actor's death: tests/reliability/test_faults.py)."""
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv(FAULT_ENV, f"raise-once:{first};raise-once:{second}")
    with pytest.raises(RuntimeError, match="injected fault"):
        _maybe_inject_fault()
    assert first.exists() and not second.exists()
    with pytest.raises(RuntimeError, match="injected fault"):
        _maybe_inject_fault()
    assert second.exists()
    _maybe_inject_fault()  # both spent: the batch goes on
