"""The math of one training step of a diffusion prior (ε-prediction DDPM, Ho et al. 2020), as small functions.

`pipeline/training_run.py` holds the run's state around them (its steps, saved and restored),
`pipeline/training_loop.py` the loop (budget, logging, saves, signals), `pipeline/training_run_folder.py` its files, and
`jobs/train_prior.py` the command line. A step draws a batch x₀, a timestep t and Gaussian noise ε, noises the batch
to x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, and regresses the model's output on ε; the learning rate warms up linearly, and an
exponential moving average (EMA) of the weights, whose decay ramps up over the first steps, is the prior that gets
exported.
"""

from __future__ import annotations

import torch


def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bars: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, for a batch x₀ (N x C x H x W) and its timesteps t (N)."""
    ab = alpha_bars[t][:, None, None, None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def epsilon_loss(model: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 alpha_bars: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The mean squared error between the noise and the model's prediction of it from x_t (the DDPM "simple" loss).
    With `autocast_dtype` the forward pass runs in that precision and the loss in fp32."""
    x_t = noised(x0, t, noise, alpha_bars)
    with torch.autocast(x0.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        predicted = model(x_t, t)
    return (predicted.float() - noise).pow(2).mean()


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """The learning rate of step `step` (0-based): rising linearly to `base_lr` over `warmup_steps` steps."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup_steps))


def ema_decay(step: int, target: float) -> float:
    """The EMA's decay at step `step`: (1 + step) / (10 + step), up to `target`, so that the average is not held
    near the random initial weights for the thousands of steps a 0.9999 decay would need to forget them."""
    return min(target, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, parameter by parameter, in place."""
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1 - decay)
