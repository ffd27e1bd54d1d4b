"""The math of a training step of the prior (pipeline/training.py): what jobs/train_prior.py's every step relies on."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.schedule import NoiseSchedule
from pipeline.training import ema_decay, epsilon_loss, noised, update_ema, warmup_lr

ALPHA_BARS = torch.tensor(NoiseSchedule.named("linear").alphas_cumprod, dtype=torch.float32)


class Echo(torch.nn.Module):
    """A model that predicts a fixed tensor and remembers what it was given."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append((x, t))
        return self.prediction


def test_noised_mixes_each_image_at_its_own_timestep() -> None:
    x0, noise = torch.full((2, 3, 4, 4), 0.5), torch.full((2, 3, 4, 4), -1.0)
    t = torch.tensor([0, 999])
    x_t = noised(x0, t, noise, ALPHA_BARS)
    for i in range(2):
        ab = ALPHA_BARS[t[i]]
        assert torch.allclose(x_t[i], ab.sqrt() * 0.5 - (1 - ab).sqrt())
    assert torch.allclose(x_t[0], x0[0], atol=0.02)  # t = 0: nearly clean (√(1 − ᾱ₀) = 0.01)
    assert torch.allclose(x_t[1], noise[1], atol=0.01)  # t = T - 1: nearly all noise


def test_epsilon_loss_is_the_mse_of_the_predicted_noise_given_x_t_and_t() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 3, 8, 8, generator=generator), torch.randn(3, 3, 8, 8, generator=generator)
    t = torch.tensor([5, 500, 990])
    perfect = Echo(noise)
    assert epsilon_loss(perfect, x0, t, noise, ALPHA_BARS).item() == 0.0
    x_t, t_seen = perfect.seen[0]
    assert torch.equal(x_t, noised(x0, t, noise, ALPHA_BARS)) and torch.equal(t_seen, t)
    assert epsilon_loss(Echo(torch.zeros_like(noise)), x0, t, noise, ALPHA_BARS).item() == pytest.approx(
        noise.pow(2).mean().item())


def test_epsilon_loss_under_bf16_autocast_is_fp32() -> None:
    model = torch.nn.Conv2d(3, 3, 1)
    x0, noise = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    loss = epsilon_loss(lambda x, t: model(x), x0, torch.tensor([1, 2]), noise, ALPHA_BARS, torch.bfloat16)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_warmup_rises_linearly_then_holds() -> None:
    assert [warmup_lr(1e-3, step, 4) for step in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert warmup_lr(1e-3, 0, 0) == 1e-3  # no warm-up


def test_ema_decay_ramps_up_to_its_target() -> None:
    assert ema_decay(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay(90, 0.9999) == pytest.approx(0.91)
    assert ema_decay(10**7, 0.9999) == 0.9999


def test_update_ema_moves_each_weight_toward_the_model_by_one_minus_decay() -> None:
    model = torch.nn.Linear(2, 2)
    ema = copy.deepcopy(model).requires_grad_(False)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ema, model, 0.9)
    for old, new, current in zip(before, ema.parameters(), model.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * current)
    update_ema(ema, model, 0.0)
    assert all(torch.equal(e, m) for e, m in zip(ema.parameters(), model.parameters(), strict=True))
