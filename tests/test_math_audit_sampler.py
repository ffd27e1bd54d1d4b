"""An independent re-derivation of the ZIP samplers, written from the formulas (not from pipeline/sampler.py).

The reference works in the paper's x̂_t form (Algorithm 2):
    ε_t = ε_θ(x_t, t)
    x̂_t = √ᾱ_t A⁺y + (I − A⁺A) x_t + A⁺A √(1−ᾱ_t) ε_t      (averaged over operators; optional blend with x_t)
    x̂₀ = (x̂_t − √(1−ᾱ_t) ε_t) / √ᾱ_t
    x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ²) ε_t + σ z,  σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})
and for Algorithm 1 samples the respaced posterior q(x_{t'} | x_t, x̂₀) with variance β̃. The sampler under test
works in x₀-space; both must agree to float64 precision on a small random ε-model, noise drawn in the same order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.operators import make_operators
from pipeline.sampler import Guidance, zip_ddim, zip_ddpm
from pipeline.schedule import NoiseSchedule, ddim_timesteps

T = 1000


class TinyEps:
    """A deterministic, pixel-mixing ε-model in float64 (3x3 conv, tanh, t-dependent bias)."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64) * 0.4
        self.b = torch.randn(3, generator=g, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.conv2d(x.double(), self.w, padding=1)
        phase = torch.sin(t.double() / 137.0).view(-1, 1, 1, 1)
        return torch.tanh(h + self.b.view(1, 3, 1, 1) * phase) * 1.5


def _x(seed: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _ref_eps(model: TinyEps, x: torch.Tensor, t: int, at: float, clip: bool) -> torch.Tensor:
    e = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
    if clip:
        x0 = ((x - math.sqrt(1 - at) * e) / math.sqrt(at)).clamp(-1, 1)
        e = (x - math.sqrt(at) * x0) / math.sqrt(1 - at)
    return e


def _ref_x0_hat(x, e, at, ops, ys, guided: bool, blend_k):
    if guided:
        hats = [math.sqrt(at) * op.pinv(y) + x - op.pinv(op.forward(x)) + math.sqrt(1 - at) * op.pinv(op.forward(e))
                for op, y in zip(ops, ys, strict=True)]
        xh = sum(hats) / len(hats)
        if blend_k is not None:
            w = at**blend_k
            xh = (1 - w) * xh + w * x
    else:
        xh = x
    return (xh - math.sqrt(1 - at) * e) / math.sqrt(at)


def _ref_start(ab, ts, ops, ys, x_T, start):
    if start >= 1:
        return x_T
    a = ab[ts[0]]
    ay = sum(op.pinv(y) for op, y in zip(ops, ys, strict=True)) / len(ops)
    return math.sqrt(a) * ay + math.sqrt(1 - a) * x_T


def _reference_run(x_in, ops, schedule, steps, lam, x_T, gen, resample, start, update):
    """The loop both references share: timesteps t <= start*T, guidance while t >= lam*T, `resample` rounds with
    the forward re-noising in between; `update(xt, t, at, an, ys, guided)` is one reverse step."""
    ab = schedule.alphas_cumprod
    ys = [op.forward(x_in) for op in ops]
    ts = [t for t in ddim_timesteps(T, steps) if t <= start * T]
    x = _ref_start(ab, ts, ops, ys, x_T, start)
    for i, t in enumerate(ts):
        at = float(ab[t])
        an = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        guided = t >= lam * T
        x = update(x, t, at, an, ys, guided)
        for _ in range((resample if guided else 1) - 1):
            z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            x = update(math.sqrt(at / an) * x + math.sqrt(1 - at / an) * z, t, at, an, ys, guided)
    return x


def reference_ddim(model, x_in, ops, schedule, steps, eta, lam, blend_k, clip, x_T, gen, resample=1, start=1.0):
    def update(xt, t, at, an, ys, guided):
        sigma = eta * math.sqrt((1 - an) / (1 - at)) * math.sqrt(1 - at / an)
        e = _ref_eps(model, xt, t, at, clip)
        x0 = _ref_x0_hat(xt, e, at, ops, ys, guided, blend_k)
        out = math.sqrt(an) * x0 + math.sqrt(max(1 - an - sigma**2, 0.0)) * e
        if sigma > 0:
            out = out + sigma * torch.randn(xt.shape, generator=gen, dtype=xt.dtype)
        return out

    return _reference_run(x_in, ops, schedule, steps, lam, x_T, gen, resample, start, update)


def reference_ddpm(model, x_in, ops, schedule, steps, lam, clip, x_T, gen, resample=1, start=1.0):
    def update(xt, t, at, an, ys, guided):
        alpha, beta = at / an, 1 - at / an
        c0 = math.sqrt(an) * beta / (1 - at)  # posterior mean coefficient of x̂₀
        ct = math.sqrt(alpha) * (1 - an) / (1 - at)  # ... and of x_t
        var = (1 - an) / (1 - at) * beta  # β̃
        e = _ref_eps(model, xt, t, at, clip)
        x0 = _ref_x0_hat(xt, e, at, ops, ys, guided, None)
        out = c0 * x0 + ct * xt
        if an < 1:
            out = out + math.sqrt(var) * torch.randn(xt.shape, generator=gen, dtype=xt.dtype)
        return out

    return _reference_run(x_in, ops, schedule, steps, lam, x_T, gen, resample, start, update)


CASES = [
    # operators, eta, lam, blend_k, clip, resample, start
    ("pool", 0.0, 0.0, None, False, 1, 1.0),
    ("pool", 1.0, 0.0, None, False, 1, 1.0),
    ("pool", 1.0, 0.0, None, True, 1, 1.0),
    ("pool", 0.5, 0.5, None, True, 1, 1.0),
    ("gray,pool", 1.0, 0.0, 10.0, False, 1, 1.0),
    ("gray,pool", 0.0, 0.0, 10.0, True, 1, 1.0),
    ("gray+pool", 1.0, 0.3, None, True, 1, 1.0),
    ("pool", 1.0, 0.5, None, True, 3, 1.0),
    ("pool", 1.0, 0.0, None, True, 1, 0.3),
    ("gray,pool", 0.0, 0.0, None, False, 2, 0.5),
]


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_ddim_matches_the_formulas(case, schedule_name: str) -> None:
    names, eta, lam, blend_k, clip, resample, start = case
    schedule = NoiseSchedule.named(schedule_name)
    model, x_in = TinyEps(1), _x(2)
    ops = make_operators(names, 4)
    x_T = torch.randn(x_in.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = reference_ddim(model, x_in, ops, schedule, 20, eta, lam, blend_k, clip, x_T,
                         torch.Generator().manual_seed(4), resample, start)
    out = zip_ddim(model, Guidance.from_input(x_in, ops, lam, blend_k), schedule, steps=20, eta=eta, clip=clip,
                   x_T=x_T, generator=torch.Generator().manual_seed(4), resample=resample, start=start)
    assert out.dtype == torch.float64
    err = (out - ref).abs().max().item()
    assert err < 1e-9, err
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", [c for c in CASES if c[3] is None], ids=str)
def test_ddpm_matches_the_formulas(case) -> None:
    names, _, lam, _, clip, resample, start = case
    schedule = NoiseSchedule.named("linear")
    model, x_in = TinyEps(5), _x(6)
    ops = make_operators(names, 2)
    x_T = torch.randn(x_in.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = reference_ddpm(model, x_in, ops, schedule, 25, lam, clip, x_T, torch.Generator().manual_seed(8),
                         resample, start)
    out = zip_ddpm(model, Guidance.from_input(x_in, ops, lam), schedule, steps=25, clip=clip, x_T=x_T,
                   generator=torch.Generator().manual_seed(8), resample=resample, start=start)
    err = (out - ref).abs().max().item()
    assert err < 1e-9, err


def test_one_step_respaced_posterior_is_the_ddpm_update() -> None:
    """μ̃(x_t, x₀) with the respaced coefficients equals (x_t − β/√(1−ᾱ_t) ε)/√α when x₀ is the model's own estimate."""
    from pipeline.sampler import ddpm_step, predict_x0

    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    ab = NoiseSchedule.named("linear").alphas_cumprod
    for t, tp in [(950, 900), (300, 250), (50, 0), (999, 998)]:
        at, an = float(ab[t]), float(ab[tp])
        alpha = at / an
        expected = (x_t - (1 - alpha) / math.sqrt(1 - at) * eps) / math.sqrt(alpha)
        got = ddpm_step(x_t, predict_x0(x_t, eps, at), at, an, None)
        assert (got - expected).abs().max().item() < 1e-9


def test_ddim_eta_one_is_the_ddpm_posterior_in_distribution() -> None:
    """With η = 1 the DDIM update has the mean and variance of the respaced DDPM posterior (same x̂₀, same ε)."""
    from pipeline.sampler import ddim_sigma, ddim_step, ddpm_step, predict_eps

    ab = NoiseSchedule.named("linear").alphas_cumprod
    g = torch.Generator().manual_seed(1)
    x_t, x0 = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    for t, tp in [(950, 900), (500, 450), (50, 0)]:
        at, an = float(ab[t]), float(ab[tp])
        eps = predict_eps(x_t, x0, at)
        s = ddim_sigma(at, an, 1.0)
        assert s**2 == pytest.approx((1 - an) / (1 - at) * (1 - at / an), rel=1e-12)
        assert (ddim_step(x0, eps, an, s, None) - ddpm_step(x_t, x0, at, an, None)).abs().max().item() < 1e-9


def test_last_step_lands_on_the_guided_estimate() -> None:
    """ᾱ_prev = 1 at the last step: the output is x̂₀ itself, with no noise, whatever η."""
    schedule = NoiseSchedule.named("linear")
    model, x_in = TinyEps(9), _x(9)
    ops = make_operators("pool", 4)
    seen = []

    def recording(x, t):
        seen.append((int(t[0]), x.clone()))
        return model(x, t)

    out = zip_ddim(recording, Guidance.from_input(x_in, ops), schedule, steps=20, eta=1.0, clip=False,
                   x_T=torch.randn(x_in.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   generator=torch.Generator().manual_seed(1))
    t0, x_last = seen[-1]
    assert t0 == 0 and [t for t, _ in seen] == list(range(950, -1, -50))
    at = float(schedule.alphas_cumprod[0])
    e = model(x_last, torch.zeros(2, dtype=torch.long))
    x0 = (x_last - math.sqrt(1 - at) * e) / math.sqrt(at)
    op = ops[0]
    expected = op.pinv(op.forward(x_in)) + x0 - op.pinv(op.forward(x0))
    assert (out - expected).abs().max().item() < 1e-9


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("start", [1.0, 0.3])
def test_per_sample_generators_make_each_result_independent_of_its_batch(sampler: str, start: float) -> None:
    schedule = NoiseSchedule.named("linear")
    model, x_in = TinyEps(11), _x(12, n=3)
    ops = make_operators("pool", 2)
    run = zip_ddim if sampler == "ddim" else zip_ddpm
    extra = {"eta": 1.0} if sampler == "ddim" else {}

    def go(idx: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(100 + i) for i in idx]
        x = x_in[idx]
        return run(model, Guidance.from_input(x, ops, 0.3), schedule, steps=10, shape=tuple(x.shape), generator=gens,
                   resample=2, start=start, **extra)

    both = go([0, 1, 2])
    for i in range(3):
        assert torch.equal(go([i])[0].float(), both[i].float())
    assert torch.equal(go([2, 0])[1].float(), both[0].float())
    with pytest.raises(ValueError, match="noise generators"):
        run(model, Guidance.from_input(x_in, ops), schedule, steps=3, shape=tuple(x_in.shape),
            generator=[torch.Generator()], **extra)


def test_schedule_has_no_step_with_alpha_bar_one() -> None:
    """Every division in the samplers is by √ᾱ_t or √(1 − ᾱ_t) at a visited t: both stay away from 0."""
    for name in ("linear", "cosine"):
        ab = NoiseSchedule.named(name).alphas_cumprod
        assert ab.max() < 1 - 1e-5 and ab.min() > 0
        assert np.all(np.diff(ab) < 0)
