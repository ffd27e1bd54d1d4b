"""jobs/train_prior.py stopped and started again: Ctrl-C and SIGTERM save before exiting, a hard kill's lost steps
leave no stale lines in the log, a second run into the same folder is refused, and a changed optimiser setting is said.

Runs the script's __main__ block in this process (see test_train_ux_cli.run_script) on a 16-image stand-in data set.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

import pipeline.evaluation.datasets as datasets
from tests.test_train_ux_cli import TINY, fake_cifar, run_script


@pytest.fixture(autouse=True)
def stand_in_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)


def signal_at_step(monkeypatch: pytest.MonkeyPatch, signum: int, at: int) -> None:
    """Deliver `signum` to this process during optimiser step `at` (1-based), as a user's Ctrl-C or a scheduler's stop
    would arrive mid-training."""
    original = torch.optim.Adam.step
    calls = [0]

    def step(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == at:
            signal.raise_signal(signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_saves_the_state_and_the_same_command_resumes_from_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, status: int) -> None:
    signum = getattr(signal, name)

    def unhandled(*_: object) -> None:  # stands in for the default action (SIGTERM: the process dies unsaved)
        raise RuntimeError(f"{name} reached the default handler")

    previous = signal.signal(signum, unhandled)
    try:
        signal_at_step(monkeypatch, signum, at=3)
        command = ["--max-steps", "6", "--save-every-min", "60", "--out", str(tmp_path), *TINY]
        assert run_script(monkeypatch, *command) == status
        assert signal.getsignal(signum) is unhandled  # the script's handler is gone once it returns
    finally:
        signal.signal(signum, previous)
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and "rerun the same command to resume" in err, err
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3  # saved, though no save was due
    monkeypatch.undo()
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    assert run_script(monkeypatch, *command) == 0
    assert "resumed from" in capsys.readouterr().out
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_the_log_holds_no_lines_of_steps_a_hard_kill_lost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    command = ["--out", str(tmp_path / "run"), *TINY]
    assert run_script(monkeypatch, "--max-steps", "2", *command) == 0
    shutil.copy(tmp_path / "run" / "last.pt", tmp_path / "step2.pt")
    assert run_script(monkeypatch, "--max-steps", "4", *command) == 0
    # A kill after step 4 was logged but before it was saved: last.pt is still step 2's, and the kill cut a line short.
    shutil.copy(tmp_path / "step2.pt", tmp_path / "run" / "last.pt")
    with open(tmp_path / "run" / "train_log.jsonl", "a") as log:
        log.write('{"step": 5, "ima')
    assert run_script(monkeypatch, "--max-steps", "4", *command) == 0
    assert logged_steps(tmp_path / "run") == [1, 2, 3, 4]


def test_a_second_run_into_a_folder_in_use_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    tmp_path.joinpath("run").mkdir()
    with open(tmp_path / "run" / ".lock", "a+") as held:  # the first run, still training
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "run"), *TINY) == 2
    assert "another train_prior.py run is training into" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "train_log.jsonl").exists()
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "run"), *TINY) == 0  # once it is done


def test_resuming_with_another_learning_rate_or_batch_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    command = ["--out", str(tmp_path), *TINY]
    assert run_script(monkeypatch, "--max-steps", "1", *command) == 0
    capsys.readouterr()
    assert run_script(monkeypatch, "--max-steps", "2", *command, "--lr", "1e-4", "--batch", "8") == 0
    err = capsys.readouterr().err
    assert "with --lr 0.0001; it was trained so far with 0.0002" in err, err
    assert "with --batch 8; it was trained so far with 4" in err, err
    assert run_script(monkeypatch, "--max-steps", "3", *command, "--lr", "1e-4", "--batch", "8") == 0
    assert "note:" not in capsys.readouterr().err  # the same settings again: nothing to say


def test_a_diverged_run_stops_and_keeps_the_last_good_save(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from pipeline.checkpoint import load_checkpoint

    command = ["--out", str(tmp_path), *TINY, "--save-every-min", "0"]  # a save after every step
    assert run_script(monkeypatch, "--max-steps", "2", *command) == 0
    assert run_script(monkeypatch, "--max-steps", "40", *command, "--lr", "1e30") == 1  # NaN within a few steps
    assert "training diverged" in capsys.readouterr().err
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert 2 <= state["step"] < 40  # it stopped at the first non-finite loss instead of training NaNs to the end
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in load_checkpoint(str(tmp_path / "prior.pt")).model.state_dict().values())


def test_an_ignored_signal_stays_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A background job (`python jobs/train_prior.py ... &` from a script) starts with SIGINT ignored by the shell.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        signal_at_step(monkeypatch, signal.SIGINT, at=2)
        assert run_script(monkeypatch, "--max-steps", "3", "--out", str(tmp_path), *TINY) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert logged_steps(tmp_path) == [1, 2, 3]


def test_a_hard_kill_after_a_save_between_log_lines_loses_no_step_from_the_next_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # BUG (fixed here): a save between two log lines did not keep the steps since the last line, so after a hard kill
    # the resumed run's next line averaged only the steps after the save: the losses of the steps between the line and
    # the save were in no line of the log.
    import pipeline.training_loop as training_loop

    saved_in_loop: dict[int, bytes] = {}
    original = training_loop.save_state

    def keeping(path: Path, state: dict) -> None:
        original(path, state)
        saved_in_loop.setdefault(state["step"], path.read_bytes())  # a step's first save: the loop's, not the final one

    monkeypatch.setattr(training_loop, "save_state", keeping)
    command = ["--max-steps", "8", "--save-every-min", "0", *TINY, "--log-every", "4"]
    assert run_script(monkeypatch, *command, "--out", str(tmp_path / "whole")) == 0
    whole = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in whole] == [4, 8]
    # The same run killed during step 7: last.pt is the save after step 6, the log holds step 4's line.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "last.pt").write_bytes(saved_in_loop[6])
    (killed / "train_log.jsonl").write_text(json.dumps(whole[0]) + "\n")
    assert run_script(monkeypatch, *command, "--out", str(killed)) == 0
    resumed = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in resumed] == [4, 8]
    assert resumed[1]["loss"] == whole[1]["loss"]  # steps 5 to 8, as the uninterrupted run's line


def test_resuming_with_another_seed_says_the_run_keeps_its_own_streams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    # BUG (fixed here): another --seed on a resume was neither refused nor said: the run continues the random streams
    # it saved, so the option silently did nothing.
    command = ["--out", str(tmp_path), *TINY]
    assert run_script(monkeypatch, "--max-steps", "1", "--seed", "3", *command) == 0
    capsys.readouterr()
    assert run_script(monkeypatch, "--max-steps", "2", "--seed", "5", *command) == 0
    err = capsys.readouterr().err
    assert "with --seed 5; it continues the random streams it saved (it started with --seed 3)" in err, err
    assert torch.load(tmp_path / "last.pt", weights_only=True)["seed"] == 3  # the run's own, for the next resume
    assert run_script(monkeypatch, "--max-steps", "3", "--seed", "3", *command) == 0
    assert "note:" not in capsys.readouterr().err  # its own seed again: nothing to say
