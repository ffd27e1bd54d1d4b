"""jobs/train_prior.py with the options bench/device_session.sh trains the GPU prior with (--precision bf16,
--warmup-steps, --save-every-min 1, --minutes as the deadline), as a mutation audit of pipeline/training_*.py found them
under-tested: mutants that ignored --precision bf16, held the learning rate at its first warm-up step, saved hourly
instead of every --save-every-min minutes, or saved after every step once the first save was due all passed the
existing tests, and each would have wasted the few minutes a lent GPU gives.

The training clock is faked (each optimiser step takes 25 s of it), so the saves' timing is exact and no test waits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pipeline.training_loop as training_loop
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation.defenses import zip_settings
from pipeline.purifier import Purifier
from tests.jobutil import TRAIN_TINY_ARGS, run_main, train_prior_on_noise

STEP_S = 25.0  # seconds of the fake training clock per optimiser step


class HardKill(BaseException):
    """Stands in for SIGKILL (the device call's timeout): nothing in the script catches it or saves on it."""


@pytest.fixture()
def job(monkeypatch: pytest.MonkeyPatch):
    return train_prior_on_noise(monkeypatch, "train_prior_gpu_flags")


def spy_on_steps(monkeypatch: pytest.MonkeyPatch, clock: list[float] | None = None, kill_at: int | None = None) -> list[float]:
    """The learning rate of each optimiser step from here on; with `clock`, each step advances it by STEP_S; with
    `kill_at`, step `kill_at` (1-based, counted from here) is a hard kill."""
    lrs: list[float] = []
    original = torch.optim.Adam.step

    def step(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        if kill_at is not None and len(lrs) + 1 == kill_at:
            raise HardKill
        lrs.append(self.param_groups[0]["lr"])
        if clock is not None:
            clock[0] += STEP_S
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return lrs


def fake_training_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The training loop's time.time() (its budget and its saves' timing), as a value the steps advance."""
    clock = [1_000_000.0]

    class FakeTime:
        @staticmethod
        def time() -> float:
            return clock[0]

    monkeypatch.setattr(training_loop, "time", FakeTime)
    return clock


def spy_on_saves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The step each save (last.pt and the exported prior) holds, in order."""
    saved: list[int] = []
    original = training_loop.Saves.save

    def save(self, run, window=None) -> None:
        saved.append(run.step)
        original(self, run, window)

    monkeypatch.setattr(training_loop.Saves, "save", save)
    return saved


def test_bf16_runs_the_unets_forward_pass_in_bfloat16_and_fp32_does_not(job, monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """--precision bf16 is the forward pass under bfloat16 autocast (on the CPU too): the UNet's output is bf16, while the
    weights, the EMA and the exported prior stay as they are in fp32. A mutant that dropped the flag anywhere between
    the option and torch.autocast trained in fp32 and passed every test (the meta still said "bf16")."""
    seen: dict[str, list[torch.dtype]] = {}
    build = job.build_unet

    for precision in ("fp32", "bf16"):
        dtypes = seen.setdefault(precision, [])

        def recording_build(config, dtypes=dtypes):
            model = build(config)
            model.register_forward_hook(lambda _m, _inputs, output: dtypes.append(output.dtype))
            return model

        monkeypatch.setattr(job, "build_unet", recording_build)
        out = tmp_path / precision
        assert run_main(job, ["--precision", precision, "--max-steps", "2", "--out", str(out), *TRAIN_TINY_ARGS]) == 0
        state = torch.load(out / "last.pt", weights_only=True)
        assert {v.dtype for part in ("model", "ema") for v in state[part].values() if v.is_floating_point()} == {
            torch.float32}
    assert seen == {"fp32": [torch.float32] * 2, "bf16": [torch.bfloat16] * 2}


def test_the_learning_rate_warms_up_step_by_step_and_a_resume_continues_the_warm_up(
        job, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--warmup-steps 4 --lr 1e-3: steps 1..4 train at 1/4, 2/4, 3/4, 4/4 of --lr, then at --lr, also across a resume.
    (The existing test read only the first step's rate, so a mutant that held every step at --lr / --warmup-steps, a
    500-fold smaller rate for the whole GPU session, passed.)"""
    command = ["--warmup-steps", "4", "--lr", "1e-3", "--out", str(tmp_path), *TRAIN_TINY_ARGS]
    lrs = spy_on_steps(monkeypatch)
    assert run_main(job, ["--max-steps", "2", *command]) == 0
    assert run_main(job, ["--max-steps", "6", *command]) == 0  # resumed at step 2
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert torch.load(tmp_path / "last.pt", weights_only=True)["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_save_every_min_saves_on_the_training_clock_until_the_minutes_are_spent(
        job, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--save-every-min 1 --minutes 3 (no --max-steps, as the device session runs it), 25 s a step: a save once more
    than a minute has passed since the last one (steps 3 and 6), and the last one at the end of the budget (step 8, the
    first to end past 180 s)."""
    clock = fake_training_clock(monkeypatch)
    spy_on_steps(monkeypatch, clock)
    saved = spy_on_saves(monkeypatch)
    assert run_main(job, ["--minutes", "3", "--save-every-min", "1", "--out", str(tmp_path), *TRAIN_TINY_ARGS]) == 0
    assert saved == [3, 6, 8]
    assert "done: 8 steps" in capsys.readouterr().out
    assert load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 8


def test_a_hard_kill_after_a_periodic_save_leaves_a_prior_the_evaluation_loads_and_a_state_that_resumes(
        job, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The device call's timeout kills the training unannounced between two saves: the periodic save before it left
    the EMA prior (loadable by the purifier as the evaluation loads it, at k = 4 and k = 2) and last.pt at the same step,
    and the same command resumes from that step and trains out the rest of --minutes."""
    command = ["--minutes", "3", "--save-every-min", "1", "--precision", "bf16", "--warmup-steps", "500", "--lr", "3e-4",
               "--out", str(tmp_path), *TRAIN_TINY_ARGS]
    saved = spy_on_saves(monkeypatch)
    with monkeypatch.context() as killed:
        spy_on_steps(killed, fake_training_clock(killed), kill_at=5)
        with pytest.raises(HardKill):
            run_main(job, command)
    assert saved == [3]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["elapsed_s"] == pytest.approx(3 * STEP_S)
    loaded = load_checkpoint(str(tmp_path / "prior.pt"))
    assert loaded.meta["steps"] == 3 and loaded.meta["precision"] == "bf16"
    exported = loaded.model.state_dict()
    for name, value in state["ema"].items():  # the EMA weights of that step, in fp16
        torch.testing.assert_close(exported[name], value.half().float(), rtol=0, atol=0)
    for pool in (4, 2):
        purifier = Purifier.from_checkpoint(str(tmp_path / "prior.pt"), settings=zip_settings("zip", 2, pool),
                                            device="cpu", expected_sha256=loaded.sha256)
        assert purifier is not None

    saved.clear()
    capsys.readouterr()
    clock = fake_training_clock(monkeypatch)
    lrs = spy_on_steps(monkeypatch, clock)
    assert run_main(job, command) == 0
    assert "resumed from" in capsys.readouterr().out
    assert saved == [6, 8]  # steps 4..8: 75 s saved before the kill, and 125 s more end past the 3 minutes
    assert lrs == pytest.approx([3e-4 * n / 500 for n in range(4, 9)])  # the warm-up goes on where it was
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_the_device_sessions_prior_trains_under_bf16_and_loads_for_the_evaluation(
        job, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bench/device_session.sh's prior options as it gives them (only --batch and the budget smaller): one bf16 step on
    the CPU, exported as an fp16 prior within the 20 MB the repository ships, whose architecture is the one asked for
    and which the purifier loads."""
    session = ["--channels", "64", "--channel-mult", "1,2,2", "--res-blocks", "2", "--attention", "16", "--lr", "3e-4",
               "--warmup-steps", "500", "--precision", "bf16", "--log-every", "200", "--save-every-min", "1"]
    prior = tmp_path / "export" / "prior.pt"
    assert run_main(job, ["--device", "cpu", "--minutes", "1", "--out", str(tmp_path / "prior"), "--export", str(prior),
                          *session, "--batch", "2", "--max-steps", "1", "--threads", "1"]) == 0
    loaded = load_checkpoint(str(prior))
    flags = loaded.config.to_flags()
    assert [flags[k] for k in ("num_channels", "channel_mult", "num_res_blocks", "attention_resolutions")] == [
        64, "1,2,2", 2, "16"]
    assert loaded.meta["precision"] == "bf16" and loaded.meta["steps"] == 1
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 6e6 < n_params < 8e6 and prior.stat().st_size < 20e6  # fp16: two bytes a parameter
    assert (tmp_path / "prior" / "train_log.jsonl").read_text().count("\n") == 1  # the end's line, not every 200 steps
    Purifier.from_checkpoint(str(prior), settings=zip_settings("zip", 2, 4), device="cpu", expected_sha256=loaded.sha256)
