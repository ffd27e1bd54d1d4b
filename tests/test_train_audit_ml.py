"""jobs/train_prior.py as a diffusion training loop: seeding, resume = uninterrupted, epochs, flips, logging, export."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation.datasets import LabelledImages

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--channels", "32", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "", "--head-channels", "32",
        "--threads", "1", "--log-every", "1"]
N_IMAGES = 16


def identifiable_images(mirror_pattern: bool = False) -> np.ndarray:
    """Image i is all 16·i (so a batch's means say which images it holds); with mirror_pattern, image i's left half
    is 16·i and its right half 255 (so a horizontal flip shows as a bright left half)."""
    images = np.repeat(np.arange(N_IMAGES, dtype=np.uint8)[:, None, None, None] * 16, 32 * 32 * 3, axis=1)
    images = images.reshape(N_IMAGES, 32, 32, 3)
    if mirror_pattern:
        images[:, :, 16:] = 255
    return images


@pytest.fixture()
def job(monkeypatch: pytest.MonkeyPatch):
    """The training module on a fake data set, and the model inputs x_t it saw (one tensor per step)."""
    spec = importlib.util.spec_from_file_location("train_prior_audit", ROOT / "jobs" / "train_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = {"pixels": np.random.default_rng(0).integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)}
    monkeypatch.setattr(module, "load_dataset",
                        lambda name, split: LabelledImages(images["pixels"], np.zeros(N_IMAGES, np.int64), 1))
    seen: list[torch.Tensor] = []
    build = module.build_unet

    def recording_build(config):
        model = build(config)
        model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().clone()))
        return model

    monkeypatch.setattr(module, "build_unet", recording_build)
    return module, images, seen


def states_equal(a: Path, b: Path) -> None:
    sa, sb = torch.load(a / "last.pt", weights_only=True), torch.load(b / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for name, value in sa[part].items():
            torch.testing.assert_close(sb[part][name], value, rtol=0, atol=0, msg=f"{part}.{name}")
    for index, moments in sa["opt"]["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(sb["opt"]["state"][index][key], value, rtol=0, atol=0)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_the_seed_fixes_the_initial_weights(job, tmp_path: Path) -> None:
    # torch seeds a fresh process at random: the model's initial weights must come from --seed, not from that
    module, _, _ = job
    for run, process_seed in (("a", 123), ("b", 456)):
        torch.manual_seed(process_seed)  # what another process (or earlier work in this one) left in torch's RNG
        assert module.main(["--max-steps", "1", "--batch", "4", "--out", str(tmp_path / run), *TINY]) == 0
    states_equal(tmp_path / "a", tmp_path / "b")
    assert module.main(["--seed", "1", "--max-steps", "1", "--batch", "4", "--out", str(tmp_path / "c"), *TINY]) == 0
    with pytest.raises(AssertionError):
        states_equal(tmp_path / "a", tmp_path / "c")


def test_a_resumed_run_trains_exactly_as_the_uninterrupted_one(job, tmp_path: Path) -> None:
    # dropout draws from torch's RNG too; batch 5 of 16 images crosses epoch boundaries
    module, _, _ = job
    common = ["--batch", "5", "--dropout", "0.1", *TINY]
    torch.manual_seed(1)
    assert module.main(["--max-steps", "6", "--out", str(tmp_path / "straight"), *common]) == 0
    torch.manual_seed(2)
    assert module.main(["--max-steps", "2", "--out", str(tmp_path / "resumed"), *common]) == 0
    torch.manual_seed(3)
    assert module.main(["--max-steps", "4", "--out", str(tmp_path / "resumed"), *common]) == 0
    torch.manual_seed(4)
    assert module.main(["--max-steps", "6", "--out", str(tmp_path / "resumed"), *common]) == 0
    states_equal(tmp_path / "straight", tmp_path / "resumed")
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def images_drawn(seen: list[torch.Tensor]) -> list[int]:
    """Which image each sample was, from x_t at t = 0 (√ᾱ₀ ≈ 1, noise 0.01): its mean is 16·i/127.5 − 1."""
    means = torch.cat(seen).mean(dim=(1, 2, 3))
    return [round(v) for v in ((means + 1) * 127.5 / 16).tolist()]


def test_each_epoch_shows_every_training_image_once_also_across_a_resume(job, tmp_path: Path) -> None:
    module, images, seen = job
    images["pixels"] = identifiable_images()
    common = ["--batch", "5", "--max-timestep", "0", *TINY]
    assert module.main(["--max-steps", "8", "--out", str(tmp_path / "straight"), *common]) == 0  # 40 draws: 2.5 epochs
    straight = images_drawn(seen)
    assert len(straight) == 40
    assert sorted(straight[:16]) == list(range(16)) and sorted(straight[16:32]) == list(range(16))
    assert len(set(straight[32:])) == 8 and straight[:16] != straight[16:32]  # a fresh order each epoch
    seen.clear()
    assert module.main(["--max-steps", "3", "--out", str(tmp_path / "resumed"), *common]) == 0
    assert module.main(["--max-steps", "8", "--out", str(tmp_path / "resumed"), *common]) == 0
    assert images_drawn(seen) == straight


@pytest.mark.parametrize(("data", "flips"), [("cifar10", True), ("gtsrb", False)])
def test_only_cifar10_is_flipped(job, tmp_path: Path, data: str, flips: bool) -> None:
    module, images, seen = job
    images["pixels"] = identifiable_images(mirror_pattern=True)
    assert module.main(["--data", data, "--max-steps", "4", "--batch", "16", "--max-timestep", "0",
                        "--out", str(tmp_path), *TINY]) == 0
    x = torch.cat(seen)
    flipped = x[..., :16].mean(dim=(1, 2, 3)) > x[..., 16:].mean(dim=(1, 2, 3))  # the bright half is on the left
    assert (0 < int(flipped.sum()) < len(x)) if flips else not flipped.any()
    # data scaling: x_0 in [-1, 1] (255 -> 1), seen here through √ᾱ₀ x_0 + √(1 − ᾱ₀) ε with √(1 − ᾱ₀) = 0.01
    assert abs(float(x[~flipped][..., 16:].mean()) - 1.0) < 1e-3


def test_the_steps_after_the_last_log_line_are_logged_at_the_end(job, tmp_path: Path) -> None:
    module, _, _ = job
    assert module.main(["--max-steps", "6", "--batch", "2", "--out", str(tmp_path), *TINY, "--log-every", "4"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [4, 6]


def test_the_export_is_the_ema_in_fp16_with_what_the_purifier_checks(job, tmp_path: Path) -> None:
    module, _, _ = job
    assert module.main(["--max-steps", "3", "--batch", "4", "--schedule", "cosine", "--max-timestep", "500",
                        "--out", str(tmp_path), *TINY]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    loaded = load_checkpoint(str(tmp_path / "prior.pt"))
    assert loaded.meta["schedule"] == "cosine" and loaded.meta["max_timestep"] == 500
    assert loaded.meta["objective"] == "epsilon MSE, T=1000" and not loaded.config.learn_sigma
    exported = loaded.model.state_dict()
    for name, value in state["ema"].items():
        torch.testing.assert_close(exported[name], value.half().float(), rtol=0, atol=0)
    assert any(not torch.equal(state["ema"][n], state["model"][n]) for n in state["ema"])  # the EMA, not the weights


def test_a_state_saved_before_the_random_streams_were_resumes_reseeded(job, tmp_path: Path) -> None:
    module, _, _ = job
    assert module.main(["--max-steps", "2", "--batch", "4", "--out", str(tmp_path), *TINY]) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"rng", "order", "cursor"} <= set(state)
    torch.save({k: v for k, v in state.items() if k not in ("rng", "order", "cursor")}, tmp_path / "last.pt")
    assert module.main(["--max-steps", "4", "--batch", "4", "--out", str(tmp_path), *TINY]) == 0
    assert [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
