"""Noise schedules (as guided-diffusion defines them) and DDIM timestep spacing.

Pure functions over numpy; the sampler turns what it needs into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def linear_betas(num_steps: int) -> np.ndarray:
    """guided-diffusion's linear schedule, scaled so any T matches the 1000-step original."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scale = 1000 / num_steps
    return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: betas from ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=np.float64,
    )


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0 … T-1 (t = 0 is the least noisy step)."""

    name: str
    betas: np.ndarray

    @classmethod
    def named(cls, name: str = "linear", num_steps: int = 1000) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
        return cls(name, SCHEDULES[name](num_steps))

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)


def ddim_timesteps(num_train_steps: int, num_sample_steps: int) -> list[int]:
    """S evenly spaced timesteps t_i = ⌊i·T/S⌋, i = S−1 … 0: largest first, ending at t = 0.

    When S divides T this is the stride T/S of the authors' code and of guided-diffusion's "ddimS" spacing:
    950, 900, …, 0 for T = 1000, S = 20. For other S the spacing is fractional, so the first step stays within
    ⌈T/S⌉ of T; an integer stride ⌊T/S⌋ would start sampling from pure noise far below T (S = 501: at t = 500,
    where ᾱ_t = 0.078).
    """
    if not 1 <= num_sample_steps <= num_train_steps:
        raise ValueError(f"steps must be in [1, {num_train_steps}], got {num_sample_steps}")
    return [i * num_train_steps // num_sample_steps for i in range(num_sample_steps - 1, -1, -1)]
