"""ZIP samplers: guided reverse diffusion, each a short function over an ε-model.

Notation follows the ZIP paper (Shi et al., NeurIPS 2023). With y_i = A_i x the observations
of the poisoned input and x̂₀|t = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t the prior's estimate, guidance
replaces the estimate's range space by the observation's:

    x̂₀ = mean_i [ A_i⁺ y_i + (I − A_i⁺ A_i) x̂₀|t ]

which is exactly the paper's x̂_t = √ᾱ_t A⁺y + (I − A⁺A) x_t + A⁺A √(1−ᾱ_t) ε_t followed by
x̂₀ = (x̂_t − √(1−ᾱ_t) ε_t)/√ᾱ_t, written in x₀-space. The update steps hold no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.operators import LinearOperator
from pipeline.schedule import NoiseSchedule, ddim_timesteps

# (x_t, t) -> ε prediction with the same shape as x_t; t holds the training-schedule step per image.
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Where a sampler draws its noise: one generator for the whole batch, or one per sample so that each sample's
# noise (and so its result) does not depend on which other samples share its batch.
Noise = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class Guidance:
    """What to keep from the input, and when.

    lam: hard switch, guide while t >= lam * T (lam = 0 guides every step, the last included).
    blend_k: if set, the authors'-code soft blend x̂_t ← (1 − ᾱ_t^k) x̂_t + ᾱ_t^k x_t on guided steps.
    """

    operators: Sequence[LinearOperator]
    observations: Sequence[torch.Tensor]
    lam: float = 0.0
    blend_k: float | None = None

    @classmethod
    def from_input(
        cls, x: torch.Tensor, operators: Sequence[LinearOperator], lam: float = 0.0, blend_k: float | None = None
    ) -> Guidance:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam (λ) must be in [0, 1], got {lam}")
        if blend_k is not None and not blend_k > 0:  # NaN too
            raise ValueError(f"blend_k must be positive, got {blend_k}")
        return cls(tuple(operators), tuple(op.forward(x) for op in operators), lam, blend_k)

    def is_active(self, t: int, num_train_steps: int) -> bool:
        return t >= self.lam * num_train_steps


def guided_x0(x0_pred: torch.Tensor, guidance: Guidance, alpha_bar_t: float) -> torch.Tensor:
    """Range-null decomposition of the estimate, averaged over operators, optionally blended."""
    guided = torch.zeros_like(x0_pred)
    for op, y in zip(guidance.operators, guidance.observations, strict=True):
        guided += op.pinv(y) + x0_pred - op.pinv(op.forward(x0_pred))
    guided /= len(guidance.operators)
    if guidance.blend_k is not None:
        w = alpha_bar_t**guidance.blend_k
        guided = (1 - w) * guided + w * x0_pred
    return guided


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)


def predict_eps(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(alpha_bar_t) * x0) / math.sqrt(1 - alpha_bar_t)


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: float, sigma: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ²) ε + σ z."""
    out = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
    if sigma > 0 and noise is not None:
        out = out + sigma * noise
    return out


def renoise(x_prev: torch.Tensor, alpha_bar_prev: float, alpha_bar_t: float, noise: torch.Tensor) -> torch.Tensor:
    """Sample the forward process q(x_t | x_{t'}) from the less noisy level t' back up to t."""
    a = alpha_bar_t / alpha_bar_prev
    return math.sqrt(a) * x_prev + math.sqrt(1 - a) * noise


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * math.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def ddpm_step(
    x_t: torch.Tensor, x0: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Sample the posterior q(x_{t−1} | x_t, x̂₀) of the (respaced) forward process."""
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    mean = (math.sqrt(alpha_bar_prev) * beta_t * x0 + math.sqrt(alpha_t) * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar_t)
    var = beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    if var > 0 and noise is not None:
        mean = mean + math.sqrt(var) * noise
    return mean


def _denoise(
    eps_model: EpsModel, x_t: torch.Tensor, t: int, alpha_bar_t: float, guidance: Guidance | None, clip: bool, T: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One model call: (guided x̂₀, the ε consistent with x_t and the clipped estimate)."""
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    eps = eps_model(x_t, t_batch).to(x_t.dtype)  # x_t's precision: fp16/bf16 output upcast, float64 runs stay float64
    x0 = predict_x0(x_t, eps, alpha_bar_t)
    if clip:
        # A weak prior's estimate drifts out of the data range; clamping it each step keeps the sampler stable.
        x0 = x0.clamp(-1, 1)
        eps = predict_eps(x_t, x0, alpha_bar_t)
    if guidance is not None and guidance.is_active(t, T):
        x0 = guided_x0(x0, guidance, alpha_bar_t)
    return x0, eps


def _check_resample(resample: int) -> None:
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")


def _rounds(resample: int, guidance: Guidance | None, t: int, T: int) -> int:
    """How often step t runs: `resample` times when it is guided, once otherwise."""
    return resample if guidance is not None and guidance.is_active(t, T) else 1


def _step_with_time_travel(
    step: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float,
    rounds: int, generator: Noise,
) -> torch.Tensor:
    """Run one reverse step t → t' `rounds` times, pushing x_t' back to level t with fresh noise in between."""
    x_prev = step(x_t)
    for _ in range(rounds - 1):
        x_prev = step(renoise(x_prev, alpha_bar_prev, alpha_bar_t, _noise_like(x_prev, generator)))
    return x_prev


def _noise_like(x: torch.Tensor, generator: Noise) -> torch.Tensor:
    return _randn(tuple(x.shape), generator, x.device, x.dtype)


def _randn(shape: tuple[int, ...], generator: Noise, device: torch.device | str,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} noise generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def _start_noise(x_T: torch.Tensor | None, shape: tuple[int, ...] | None, generator: Noise,
                 device: torch.device | str) -> torch.Tensor:
    """The noise the sampler starts from: x_T as given, or drawn in `shape`."""
    if x_T is not None:
        return x_T
    if shape is None:
        raise ValueError("give x_T (the starting noise) or shape (the shape of the images to sample, (N, C, H, W))")
    return _randn(tuple(shape), generator, device)


def range_estimate(guidance: Guidance) -> torch.Tensor:
    """What the observations alone say of x₀: mean_i A_i⁺ y_i (zero in every operator's null space)."""
    return sum(op.pinv(y) for op, y in zip(guidance.operators, guidance.observations, strict=True)) / len(
        guidance.operators)


def run_timesteps(num_train_steps: int, steps: int, start: float = 1.0) -> list[int]:
    """The sampler's timesteps, largest first: `steps` evenly strided ones, keeping those ≤ start·T when start < 1."""
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    return [t for t in ddim_timesteps(num_train_steps, steps) if t <= start * num_train_steps]


def _start(
    schedule: NoiseSchedule, steps: int, start: float, guidance: Guidance | None, noise: torch.Tensor
) -> tuple[list[int], torch.Tensor]:
    """The timesteps to run and the state to run them from.

    start = 1: the paper, every timestep from pure noise. start < 1: only timesteps t ≤ start·T (same stride),
    from the input's range-space estimate noised to the first of them, x_t₀ = √ᾱ A⁺y + √(1 − ᾱ) z (an
    SDEdit-style late start: the prior only refines, with fewer model calls).
    """
    timesteps = run_timesteps(schedule.num_steps, steps, start)
    if start >= 1.0:
        return timesteps, noise
    if guidance is None:
        raise ValueError("a late start (start < 1) needs guidance: it starts from the input's observations")
    ab = float(schedule.alphas_cumprod[timesteps[0]])
    return timesteps, math.sqrt(ab) * range_estimate(guidance) + math.sqrt(1 - ab) * noise


def zip_ddim(
    eps_model: EpsModel,
    guidance: Guidance | None,
    schedule: NoiseSchedule,
    steps: int = 20,
    eta: float = 0.0,
    clip: bool = True,
    x_T: torch.Tensor | None = None,
    shape: tuple[int, ...] | None = None,
    generator: Noise = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    resample: int = 1,
    start: float = 1.0,
) -> torch.Tensor:
    """ZIP Algorithm 2: guided DDIM from pure noise; returns x₀ in model units ([-1, 1]).

    resample > 1 redoes each guided step that many times (the "time travel" of DDNM+ / RePaint with jump 1):
    after a step t → t', x_t' is pushed back to t with fresh forward noise and denoised again, which lets the
    regenerated part settle into agreement with the kept part at the cost of `resample` model calls per step.
    start < 1 runs only the timesteps t ≤ start·T, from the noised observations (see `_start`); x_T is then
    the noise added to them.
    """
    _check_resample(resample)
    T = schedule.num_steps
    alpha_bars = schedule.alphas_cumprod
    noise = _start_noise(x_T, shape, generator, device)
    timesteps, x = _start(schedule, steps, start, guidance, noise)
    for i, t in enumerate(timesteps):
        ab_t = float(alpha_bars[t])
        ab_prev = float(alpha_bars[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        sigma = ddim_sigma(ab_t, ab_prev, eta)

        def step(x_t: torch.Tensor) -> torch.Tensor:
            x0, eps = _denoise(eps_model, x_t, t, ab_t, guidance, clip, T)  # noqa: B023 (called in this iteration)
            return ddim_step(x0, eps, ab_prev, sigma, _noise_like(x_t, generator) if sigma > 0 else None)  # noqa: B023

        x = _step_with_time_travel(step, x, ab_t, ab_prev, _rounds(resample, guidance, t, T), generator)
        if progress:
            progress(i + 1, len(timesteps))
    return x


def zip_ddpm(
    eps_model: EpsModel,
    guidance: Guidance | None,
    schedule: NoiseSchedule,
    steps: int = 1000,
    clip: bool = True,
    x_T: torch.Tensor | None = None,
    shape: tuple[int, ...] | None = None,
    generator: Noise = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    resample: int = 1,
    start: float = 1.0,
) -> torch.Tensor:
    """ZIP Algorithm 1: guided ancestral (DDPM) sampling, on `steps` evenly spaced timesteps.

    resample, start: as in `zip_ddim`.
    """
    _check_resample(resample)
    T = schedule.num_steps
    alpha_bars = schedule.alphas_cumprod
    noise = _start_noise(x_T, shape, generator, device)
    timesteps, x = _start(schedule, steps, start, guidance, noise)
    for i, t in enumerate(timesteps):
        ab_t = float(alpha_bars[t])
        ab_prev = float(alpha_bars[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0

        def step(x_t: torch.Tensor) -> torch.Tensor:
            x0, _ = _denoise(eps_model, x_t, t, ab_t, guidance, clip, T)  # noqa: B023 (called in this iteration)
            return ddpm_step(x_t, x0, ab_t, ab_prev, _noise_like(x_t, generator) if ab_prev < 1.0 else None)  # noqa: B023

        x = _step_with_time_travel(step, x, ab_t, ab_prev, _rounds(resample, guidance, t, T), generator)
        if progress:
            progress(i + 1, len(timesteps))
    return x


SAMPLERS = {"ddim": zip_ddim, "ddpm": zip_ddpm}
