"""The prior trainer (pipeline/training_loop.py, training_run.py, training_run_folder.py, training_options.py) where a
mutation audit found its behaviour under-tested: what a resume with its budget spent says and does, the minutes the
console says are left, images_seen when a resume changes --batch, a changed --device noted, a kill mid-save, every
earlier log kept, --lr inf and --ema 1 refused, --init-from's prior trained with the --dropout given and refused when it
records a timestep past its schedule, and a last.pt with no dict or a broken optimiser state refused in one line.

Runs jobs/train_prior.py's __main__ block in this process (tests.test_train_ux_cli.run_script) on a 16-image stand-in
data set with a tiny UNet, a few steps each.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import load_checkpoint, save_bundle
from tests.test_mutation_train_prior import logged
from tests.test_train_ux_cli import TINY, run_script
from tests.test_train_ux_resume import logged_steps, stand_in_data  # noqa: F401 - stand_in_data: autouse fixture


def steps_in(log: Path) -> list[int]:
    return [json.loads(line)["step"] for line in log.read_text().splitlines()]


def test_a_resume_with_its_step_budget_spent_says_so_and_only_exports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    command = ["--max-steps", "2", "--out", str(tmp_path), *TINY]
    assert run_script(monkeypatch, *command) == 0
    (tmp_path / "prior.pt").unlink()
    capsys.readouterr()
    assert run_script(monkeypatch, *command) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the budget (90.0 min, --max-steps 2) is spent" in out, out
    assert "larger --minutes or --max-steps" in out
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2 and logged_steps(tmp_path) == [1, 2]
    assert (tmp_path / "prior.pt").exists()  # exported again


def test_the_minutes_left_follow_max_steps_when_it_ends_the_run_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    assert run_script(monkeypatch, "--max-steps", "2", "--minutes", "90", "--out", str(tmp_path), *TINY) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    left = [float(re.search(r"\(([\d.]+) min left\)", line).group(1)) for line in lines]
    assert len(left) == 2 and left[-1] == 0.0  # the last step of --max-steps: nothing left, not most of 90 minutes
    assert left[0] < 5  # one tiny step left, not the 90 minutes of --minutes


def test_images_seen_adds_each_steps_batch_also_when_a_resume_changes_it(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    command = ["--out", str(tmp_path), *TINY]
    assert run_script(monkeypatch, "--max-steps", "1", *command, "--batch", "4") == 0
    assert run_script(monkeypatch, "--max-steps", "3", *command, "--batch", "8") == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["images_seen"] == 4 + 8 + 8
    assert load_checkpoint(str(tmp_path / "prior.pt")).meta["images_seen"] == 20
    assert [rec["images"] for rec in logged(tmp_path)] == [4, 12, 20]


def test_resuming_on_another_device_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    command = ["--out", str(tmp_path), *TINY]
    assert run_script(monkeypatch, "--max-steps", "1", *command) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["optimiser"]["device"] == "cpu"
    torch.save({**state, "optimiser": {**state["optimiser"], "device": "cuda"}}, tmp_path / "last.pt")  # a GPU run's
    capsys.readouterr()
    assert run_script(monkeypatch, "--max-steps", "2", *command) == 0
    assert "with --device cpu; it was trained so far with cuda" in capsys.readouterr().err


def test_a_kill_while_last_pt_is_written_leaves_the_previous_state_to_resume(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    command = ["--out", str(tmp_path), "--save-every-min", "60", *TINY]
    assert run_script(monkeypatch, "--max-steps", "2", *command) == 0

    class HardKill(BaseException):
        """The process killed (or the disk full) halfway through writing the state."""

    real_save = torch.save

    def half_then_killed(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if not isinstance(f, (str, Path)):  # the prior's bundle, built in memory
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise HardKill

    with monkeypatch.context() as kill:
        kill.setattr(torch, "save", half_then_killed)
        with pytest.raises(HardKill):
            run_script(monkeypatch, "--max-steps", "3", *command)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2  # the previous save, whole
    assert run_script(monkeypatch, "--max-steps", "3", *command) == 0
    assert logged_steps(tmp_path) == [1, 2, 3]


def test_starting_over_keeps_every_earlier_log_however_many_there_are(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    names = ["train_log.jsonl", "train_log.jsonl.old", "train_log.jsonl.old.1", "train_log.jsonl.old.2"]
    for step, name in zip((9, 8, 7, 6), names, strict=True):  # three runs started over before this one
        (tmp_path / name).write_text(f'{{"step": {step}}}\n')
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path), *TINY) == 0
    assert "(the one before it is train_log.jsonl.old.3)" in capsys.readouterr().out
    assert [steps_in(tmp_path / name) for name in [*names, "train_log.jsonl.old.3"]] == [[1], [9], [7], [6], [8]]


@pytest.mark.parametrize("bad", [["--lr", "inf"], ["--ema", "1"]], ids=" ".join)
def test_an_option_no_run_can_use_is_refused_before_anything_is_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture,
                                                                        bad: list[str]) -> None:
    # --lr inf turns the first step's weights into NaN; --ema 1 keeps the exported EMA at the initial random weights
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "run"), *TINY, *bad) == 2
    err = capsys.readouterr().err
    assert f"error: {bad[0]}" in err, err
    assert not (tmp_path / "run").exists()


def test_init_from_trains_with_the_dropout_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "first"), *TINY) == 0
    prior = str(tmp_path / "first" / "prior.pt")
    argv = ["--max-steps", "1", "--out", str(tmp_path / "ft"), "--init-from", prior, "--dropout", "0.25", *TINY]
    assert run_script(monkeypatch, *argv) == 0
    assert torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["flags"]["dropout"] == 0.25
    assert load_checkpoint(str(tmp_path / "ft" / "prior.pt")).config.dropout == 0.25


def test_an_init_from_prior_recording_a_timestep_past_its_schedule_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "first"), *TINY) == 0
    odd = tmp_path / "odd.pt"
    save_bundle(odd, load_checkpoint(str(tmp_path / "first" / "prior.pt")).model, meta={"max_timestep": 1000})
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "ft"), "--init-from", str(odd), *TINY) == 2
    err = capsys.readouterr().err
    assert "records max_timestep 1000, beyond the linear schedule's timesteps 0..999" in err, err
    assert not (tmp_path / "ft" / "last.pt").exists()


def test_a_last_pt_whose_optimiser_state_lacks_a_part_is_refused_as_damaged(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    command = ["--out", str(tmp_path), *TINY]
    assert run_script(monkeypatch, "--max-steps", "1", *command) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.save({**state, "opt": {"state": state["opt"]["state"]}}, tmp_path / "last.pt")  # its param_groups lost
    capsys.readouterr()
    assert run_script(monkeypatch, "--max-steps", "2", *command) == 2  # one line, not a KeyError's traceback
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'last.pt'} is damaged and cannot be resumed" in err and "--fresh" in err, err


@pytest.mark.parametrize("held", [[1, 2], torch.zeros(3)], ids=["list", "tensor"])
def test_a_last_pt_that_holds_no_dict_is_named_as_no_training_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture, held: object) -> None:
    torch.save(held, tmp_path / "last.pt")  # e.g. another tool's file saved under that name
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path), *TINY) == 2
    err = capsys.readouterr().err
    assert "is damaged or not a training state (it lacks" in err and "pass --fresh" in err, err
    assert torch.equal(torch.as_tensor(torch.load(tmp_path / "last.pt", weights_only=True)), torch.as_tensor(held))


def test_a_resume_refused_for_max_timestep_says_every_timestep_not_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    # BUG (fixed here): the refusal quoted Python's None as a flag value ("trained with --max-timestep None, not 500",
    # "--max-timestep 500, not None"): there is no --max-timestep None to give; it means the flag left out.
    for first, then in ((["--max-timestep", "500"], []), ([], ["--max-timestep", "500"])):
        out = tmp_path / ("given-first" if first else "given-then")
        assert run_script(monkeypatch, "--max-steps", "1", "--out", str(out), *first, *TINY) == 0
        capsys.readouterr()
        assert run_script(monkeypatch, "--max-steps", "2", "--out", str(out), *then, *TINY) == 2
        err = capsys.readouterr().err
        said = ("with --max-timestep 500, not without --max-timestep (every timestep)" if first else
                "without --max-timestep (every timestep), not with --max-timestep 500")
        assert f"error: {out / 'last.pt'} was trained {said}; use --fresh or another --out" in err, err
        assert "None" not in err
