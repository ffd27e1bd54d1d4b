"""jobs/train_prior.py's diffusion objective and bookkeeping, as a mutation audit found them under-tested: x_t and the
ε target of each step against the schedule, the timesteps' range, the EMA update and its warm-up, the learning-rate
warm-up, gradient clipping, the time budget across resumes, images_seen, fp16's negative range."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation.datasets import LabelledImages
from pipeline.schedule import NoiseSchedule

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--channels", "32", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "", "--head-channels", "32",
        "--threads", "1", "--log-every", "1"]
N_IMAGES = 16
PIXEL = 191  # every training image is this grey: x0 = 191 / 127.5 - 1 everywhere, flipped or not


@pytest.fixture()
def job(monkeypatch: pytest.MonkeyPatch):
    """The training module on uniform grey images; what the model saw (x_t, t) and returned each step, and its weights
    as built (before any step)."""
    spec = importlib.util.spec_from_file_location("train_prior_mutation", ROOT / "jobs" / "train_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = np.full((N_IMAGES, 32, 32, 3), PIXEL, np.uint8)
    monkeypatch.setattr(module, "load_dataset", lambda name, split: LabelledImages(images, np.zeros(N_IMAGES, np.int64), 1))
    record: dict = {"calls": [], "initial": None}
    build = module.build_unet

    def recording_build(config):
        model = build(config)
        record["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.register_forward_hook(lambda _m, inputs, out: record["calls"].append(
            (inputs[0].detach().clone(), inputs[1].detach().clone(), out.detach().clone())))
        return model

    monkeypatch.setattr(module, "build_unet", recording_build)
    return module, record


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_each_step_noises_x0_by_the_schedule_and_regresses_the_noise(job, tmp_path: Path, schedule: str) -> None:
    """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε with ᾱ of --schedule at the model's own t, and the logged loss is the mean of
    (model output − ε)² over every value: ε recovered from x_t must be standard normal and give that loss."""
    module, record = job
    assert module.main(["--max-steps", "3", "--batch", "16", "--schedule", schedule, "--out", str(tmp_path), *TINY]) == 0
    alpha_bars = torch.tensor(NoiseSchedule.named(schedule).alphas_cumprod, dtype=torch.float32)
    x0 = PIXEL / 127.5 - 1
    all_eps = []
    for (x_t, t, out), rec in zip(record["calls"], logged(tmp_path), strict=True):
        assert t.shape == (16,) and len(set(t.tolist())) > 1  # a timestep per image
        ab = alpha_bars[t][:, None, None, None]
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        all_eps.append(eps)
        assert rec["loss"] == pytest.approx(float((out - eps).pow(2).mean()), rel=1e-4)
    eps = torch.cat(all_eps)
    assert abs(float(eps.mean())) < 0.02 and abs(float(eps.std()) - 1) < 0.02


def test_timesteps_are_drawn_from_all_of_0_to_999_or_to_max_timestep(job, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    module, record = job
    bounds: list[tuple] = []
    real = torch.randint

    def spy(*args, **kwargs):
        bounds.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "randint", spy)
    assert module.main(["--max-steps", "1", "--batch", "4", "--out", str(tmp_path / "all"), *TINY]) == 0
    assert bounds == [(0, 1000)]
    bounds.clear()
    monkeypatch.setattr(torch, "randint", real)
    record["calls"].clear()
    assert module.main(["--max-steps", "4", "--batch", "16", "--max-timestep", "1", "--out", str(tmp_path / "low"),
                        *TINY]) == 0
    assert set(torch.cat([t for _, t, _ in record["calls"]]).tolist()) == {0, 1}  # both ends of 0..T


def test_the_ema_after_a_step_follows_the_warmed_up_decay(job, tmp_path: Path) -> None:
    """Step 1 (n = 0): decay min(--ema, (1 + n) / (10 + n)) = 0.1, so EMA = 0.1·initial + 0.9·weights after the step;
    the learning rate of that step is --lr / --warmup-steps."""
    module, record = job
    assert module.main(["--max-steps", "1", "--batch", "4", "--warmup-steps", "10", "--lr", "1e-3",
                        "--out", str(tmp_path), *TINY]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    moved = 0
    for name, initial in record["initial"].items():
        if not initial.is_floating_point() or name not in dict(state["ema"]):
            continue
        trained = state["model"][name]
        moved += int(not torch.equal(trained, initial))
        torch.testing.assert_close(state["ema"][name], 0.1 * initial + 0.9 * trained, rtol=1e-5, atol=1e-7)
    assert moved  # the step changed some weights
    assert state["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_gradients_are_clipped_to_norm_1(job, tmp_path: Path) -> None:
    """After one step Adam's first moment is 0.1·g: its norm says whether g was clipped to norm 1 (the first
    step's gradient on these images is far larger than 1)."""
    module, _ = job
    assert module.main(["--max-steps", "1", "--batch", "16", "--out", str(tmp_path), *TINY]) == 0
    moments = torch.load(tmp_path / "last.pt", weights_only=True)["opt"]["state"]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m["exp_avg"]) for m in moments.values()])))
    assert norm == pytest.approx(0.1, rel=1e-3)


def test_images_seen_counts_every_step(job, tmp_path: Path) -> None:
    module, _ = job
    assert module.main(["--max-steps", "3", "--batch", "5", "--out", str(tmp_path), *TINY]) == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["images_seen"] == 15
    assert [rec["images"] for rec in logged(tmp_path)] == [5, 10, 15]


def test_minutes_is_the_budget_across_resumes(job, tmp_path: Path) -> None:
    """A run resumed with 1 s of a 60-minute budget left trains about a step, not to --max-steps."""
    module, _ = job
    assert module.main(["--max-steps", "1", "--batch", "4", "--out", str(tmp_path), *TINY]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["elapsed_s"] = 60 * 60 - 1e-3
    torch.save(state, tmp_path / "last.pt")
    assert module.main(["--minutes", "60", "--max-steps", "20", "--batch", "4", "--out", str(tmp_path), *TINY]) == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2


def test_weights_below_fp16s_range_count_as_diverged(job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """-1e6 is as far outside what the fp16 export holds (±65504) as +1e6: nothing is saved."""
    module, _ = job
    build = module.build_unet

    def broken(config):
        model = build(config)
        with torch.no_grad():
            model.input_blocks[0][0].weight[0, 0, 0, 0] = -1e6  # the first conv: the step leaves it far below -65504
        return model

    monkeypatch.setattr(module, "build_unet", broken)
    assert module.main(["--max-steps", "1", "--batch", "4", "--out", str(tmp_path), *TINY]) == 1
    assert "diverged" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "prior.pt").exists()


def test_a_non_finite_loss_stops_the_run_at_its_log_line(job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN loss ends the run (status 1) at the next log line instead of training on until the next save, and
    leaves the last good save in place."""
    module, _ = job
    assert module.main(["--max-steps", "2", "--batch", "4", "--out", str(tmp_path), *TINY]) == 0
    real_randn_like = torch.randn_like
    monkeypatch.setattr(torch, "randn_like", lambda x: real_randn_like(x) * float("nan"))
    assert module.main(["--max-steps", "30", "--batch", "4", "--out", str(tmp_path), *TINY]) == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    lines = logged(tmp_path)
    assert lines[-1]["step"] == 3 and lines[-1]["loss"] != lines[-1]["loss"]  # stopped at the NaN line
