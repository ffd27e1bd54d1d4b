"""Mutation-audit gaps in pipeline/sampler.py and pipeline/schedule.py (second audit; the first's are in
tests/test_mutation_sampler.py and tests/test_mutation_schedule.py, the formulas in tests/test_math_audit_sampler.py).

What no test pinned: the T' = λT boundary between a guided and an unguided step (guiding from t ≥ λ(T − 1) instead
passed), λ = 1 beside a late start (an unguided SDEdit-style run the settings accept), the refusal of blend k = 0 (whose
weight ᾱ⁰ = 1 drops the input entirely) and of λ < 0, an ε-model's half-precision output used in the sampler's
precision, a batch of one's per-sample generator drawing the same noise as that generator alone, the samplers' own
defaults (η = 0, 1000 DDPM steps), their progress counts, `sampler="ddpm"` reaching Algorithm 1 through the purifier,
the key facts of the samplers' and operators' error messages, a schedule of 0 steps refused with its own error,
`NoiseSchedule.named()` being guided-diffusion's linear schedule, and a float pool factor refused. Two bugs found on
the way have their tests here too: a NaN blend k was taken (an image of NaN came back), and a sampler given neither x_T
nor shape failed inside torch.randn.
The expected values are computed by hand here (a fake ε-model, a few small tensors), not with the module's helpers.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline.operators import AvgPool, Grayscale, make_operators
from pipeline.sampler import Guidance, zip_ddim, zip_ddpm
from pipeline.schedule import NoiseSchedule, cosine_betas, linear_betas
from tests.test_math_audit_sampler import TinyEps
from tests.test_mutation_sampler import model  # noqa: F401 (a pytest fixture: a small random UNet)

LINEAR = NoiseSchedule.named("linear")


def _x(seed: int, n: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _noise(seed: int, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed), dtype=like.dtype)


def _counting(eps_model):
    calls: list[int] = []

    def counted(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return eps_model(x_t, t)

    return counted, calls


# --- the hard switch T' = λT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam,guided", [(0.5, [950, 900, 850, 800, 750, 700, 650, 600, 550, 500]),
                                        (0.5005, [950, 900, 850, 800, 750, 700, 650, 600, 550]),
                                        (0.0, list(range(950, -1, -50)))])
@pytest.mark.parametrize("run", [zip_ddim, zip_ddpm])
def test_guided_steps_are_exactly_those_with_t_at_least_lambda_T(run, lam: float, guided: list[int]) -> None:
    """Guide while t ≥ λT (docs/job.md: T' = λT). With resample 2 a guided step calls the model twice, an unguided
    one once, so the calls show which steps were guided: λ = 0.5005 (λT = 500.5) must leave t = 500 unguided, λ = 0.5
    must guide it."""
    x = _x(1)
    eps, calls = _counting(TinyEps(1))
    run(eps, Guidance.from_input(x, [AvgPool(2)], lam), LINEAR, steps=20, x_T=_noise(2, x),
        generator=torch.Generator().manual_seed(3), resample=2)
    counts = Counter(calls)
    assert sorted((t for t, n in counts.items() if n == 2), reverse=True) == guided
    assert all(n == 1 for t, n in counts.items() if t not in guided) and len(counts) == 20


def test_lam_one_with_a_late_start_is_an_unguided_run_from_the_noised_observation() -> None:
    """λ = 1 guides no step (t ≥ T never holds); the settings accept it beside start < 1, which still begins from
    the input (x_t₀ = √ᾱ A⁺y + √(1 − ᾱ) z). Hand-computed: start 0.1 of 20 steps runs t = 100, 50, 0, η = 0, no clip."""
    x, op, eps_model = _x(4), AvgPool(2), TinyEps(4)
    z = _noise(5, x)
    out = zip_ddim(eps_model, Guidance.from_input(x, [op], lam=1.0), LINEAR, steps=20, eta=0.0, clip=False, x_T=z,
                   start=0.1, generator=torch.Generator().manual_seed(6))

    ab = LINEAR.alphas_cumprod
    # A⁺y by hand: each 2x2 block of the input replaced by its mean
    blocks = x.reshape(1, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    a_pinv_y = blocks[:, :, :, None, :, None].expand(1, 3, 4, 2, 4, 2).reshape(x.shape)
    xt = math.sqrt(ab[100]) * a_pinv_y + math.sqrt(1 - ab[100]) * z
    for t, t_next in [(100, 50), (50, 0), (0, None)]:
        at, an = float(ab[t]), (float(ab[t_next]) if t_next is not None else 1.0)
        e = eps_model(xt, torch.tensor([t]))
        x0 = (xt - math.sqrt(1 - at) * e) / math.sqrt(at)  # unguided: the prior's own estimate
        xt = math.sqrt(an) * x0 + math.sqrt(1 - an) * e
    assert (out - xt).abs().max().item() < 1e-9


def test_a_purifier_with_lam_one_and_a_late_start_purifies(model) -> None:  # noqa: F811
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = Purifier(model, ZipSettings(steps=4, pool=2, lam=1.0, start=0.5)).purify_tensor(x, seed=1)
    assert out.shape == x.shape and torch.isfinite(out).all()


# --- what Guidance refuses -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_guidance_refuses_a_lambda_outside_0_1_saying_the_range_and_the_value(lam: float) -> None:
    with pytest.raises(ValueError, match=rf"lam \(λ\) must be in \[0, 1\], got {lam}"):
        Guidance.from_input(_x(0), [AvgPool(2)], lam=lam)


@pytest.mark.parametrize("k", [0, 0.0, -10.0])
def test_guidance_refuses_a_blend_k_that_is_not_positive(k: float) -> None:
    """k = 0 gives every step the weight ᾱ⁰ = 1 on the prior's estimate: the output would not depend on the input."""
    with pytest.raises(ValueError, match=f"blend_k must be positive, got {k}"):
        Guidance.from_input(_x(0), [AvgPool(2)], blend_k=k)


def test_guidance_refuses_a_nan_blend_k_as_it_refuses_a_nan_lambda() -> None:
    """A NaN k passed `blend_k <= 0` (every comparison with NaN is false): each step's weight ᾱ^NaN is NaN, and the
    sampler returned an image of NaN without a word."""
    x = _x(0, size=4)
    for kwargs in ({"blend_k": math.nan}, {"lam": math.nan}):
        with pytest.raises(ValueError, match="got nan"):
            Guidance.from_input(x, [AvgPool(2)], **kwargs)


# --- precision and noise -------------------------------------------------------------------------------------------


def test_a_half_precision_model_output_is_used_in_the_samplers_precision() -> None:
    """Under autocast (--precision fp16/bf16) the ε-model returns float16: the sampler must do its arithmetic in the
    input's float32, exactly as if the model's output had been upcast, not multiply in float16; and a model returning
    float64 must not turn a float32 run into float64."""
    x = _x(7).float()
    inner = TinyEps(7)
    guidance = Guidance.from_input(x, [AvgPool(2)])
    kw = dict(steps=5, eta=1.0, x_T=_noise(8, x))
    half = zip_ddim(lambda a, t: inner(a, t).half(), guidance, LINEAR, generator=torch.Generator().manual_seed(9), **kw)
    upcast = zip_ddim(lambda a, t: inner(a, t).half().float(), guidance, LINEAR,
                      generator=torch.Generator().manual_seed(9), **kw)
    assert half.dtype == torch.float32 and torch.equal(half, upcast)
    wide = zip_ddpm(lambda a, t: inner(a, t), guidance, LINEAR, steps=5, x_T=_noise(8, x),
                    generator=torch.Generator().manual_seed(9))
    assert wide.dtype == torch.float32


@pytest.mark.parametrize("run,extra", [(zip_ddim, {"eta": 1.0}), (zip_ddpm, {})])
def test_a_per_sample_generator_draws_what_that_generator_draws_in_a_float64_run(run, extra) -> None:
    """A batch of one with generators [g] is the run with g alone: the same noise, in the run's own precision."""
    x = _x(10)
    guidance = Guidance.from_input(x, [AvgPool(2)], lam=0.3)
    kw = dict(steps=6, x_T=_noise(11, x), resample=2, **extra)
    alone = run(TinyEps(10), guidance, LINEAR, generator=torch.Generator().manual_seed(12), **kw)
    listed = run(TinyEps(10), guidance, LINEAR, generator=[torch.Generator().manual_seed(12)], **kw)
    assert alone.dtype == listed.dtype == torch.float64
    assert torch.equal(alone, listed)


# --- the samplers' own defaults and progress -----------------------------------------------------------------------


def test_zip_ddim_defaults_to_deterministic_ddim_and_zip_ddpm_to_every_timestep() -> None:
    """zip_ddim without η is DDIM's deterministic sampler (η = 0: the generator draws nothing after x_T), 20 steps;
    zip_ddpm without steps visits all T = 1000 timesteps, as Algorithm 1."""
    x = _x(13, size=4)
    guidance = Guidance.from_input(x, [AvgPool(2)])
    eps, calls = _counting(TinyEps(13))
    a = zip_ddim(eps, guidance, LINEAR, x_T=_noise(14, x), generator=torch.Generator().manual_seed(1))
    assert calls == list(range(950, -1, -50))
    b = zip_ddim(TinyEps(13), guidance, LINEAR, x_T=_noise(14, x), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    eps, calls = _counting(TinyEps(13))
    zip_ddpm(eps, guidance, LINEAR, x_T=_noise(14, x), generator=torch.Generator().manual_seed(1))
    assert calls == list(range(999, -1, -1))


@pytest.mark.parametrize("run,extra", [(zip_ddim, {"eta": 1.0}), (zip_ddpm, {})])
@pytest.mark.parametrize("start,n", [(1.0, 5), (0.5, 3)])
def test_progress_counts_each_step_run_up_to_their_number(run, extra, start: float, n: int) -> None:
    x = _x(15, size=4)
    seen: list[tuple[int, int]] = []
    run(TinyEps(15), Guidance.from_input(x, [AvgPool(2)]), LINEAR, steps=5, x_T=_noise(16, x), start=start,
        resample=2, generator=torch.Generator().manual_seed(0), progress=lambda i, total: seen.append((i, total)),
        **extra)
    assert seen == [(i, n) for i in range(1, n + 1)]


def test_the_purifier_runs_algorithm_1_for_sampler_ddpm(model) -> None:  # noqa: F811
    """`sampler: ddpm` must reach zip_ddpm (the DDPM posterior), not DDIM under another name."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    settings = ZipSettings(steps=4, pool=2, sampler="ddpm")
    purifier = Purifier(model, settings)
    with torch.no_grad():
        got = purifier.purify_tensor(x, seed=3)
        expected = zip_ddpm(purifier.eps, Guidance.from_input(x, make_operators("pool", 2)), LINEAR, steps=4,
                            shape=tuple(x.shape), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, expected)


# --- messages -------------------------------------------------------------------------------------------------------


def test_sampler_errors_say_the_allowed_range_and_the_value_given() -> None:
    x = _x(0, size=4)
    guidance = Guidance.from_input(x, [AvgPool(2)])
    with pytest.raises(ValueError, match=r"resample must be >= 1, got 0"):
        zip_ddim(TinyEps(0), guidance, LINEAR, steps=2, x_T=x, resample=0)
    with pytest.raises(ValueError, match=r"start must be in \(0, 1\], got 1.5"):
        zip_ddpm(TinyEps(0), guidance, LINEAR, steps=2, x_T=x, start=1.5)


# --- schedules -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("betas", [linear_betas, cosine_betas])
@pytest.mark.parametrize("num_steps", [0, -5])
def test_a_schedule_of_no_steps_is_refused_with_its_own_error(betas, num_steps: int) -> None:
    with pytest.raises(ValueError, match=f"num_steps must be >= 1, got {num_steps}"):
        betas(num_steps)


def test_the_default_named_schedule_is_guided_diffusions_linear_one_of_1000_steps() -> None:
    """The shipped prior and guided-diffusion's default: β from 1e-4 to 0.02 over T = 1000."""
    schedule = NoiseSchedule.named()
    assert schedule.name == "linear" and schedule.num_steps == 1000
    assert schedule.betas[0] == pytest.approx(1e-4) and schedule.betas[-1] == pytest.approx(0.02)


# --- operators -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2.0, 4.5, "2"])
def test_a_pool_factor_that_is_not_an_integer_is_refused(factor) -> None:
    with pytest.raises(ValueError, match=f"pool factor must be a positive integer, got {factor!r}"):
        AvgPool(factor)


def test_operator_errors_name_what_is_allowed_and_what_was_given() -> None:
    """`--operators blur` reaches the user as this message: it must list the names that work."""
    with pytest.raises(ValueError, match=r"unknown operator 'blur'; the operators are pool, gray and gray\+pool "
                                         r"\(gray, then pool, as one operator; pool\+gray is the same\)"):
        make_operators("pool,blur", 2)
    with pytest.raises(ValueError, match="grayscale operator expects 3 channels, got 1"):
        Grayscale().forward(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("run", [zip_ddim, zip_ddpm])
def test_a_sampler_given_neither_starting_noise_nor_shape_says_so(run) -> None:
    """Called as `zip_ddim(model, guidance, schedule)`, the samplers stopped in torch.randn with "randn() received an
    invalid combination of arguments - got (NoneType, ...)", which names neither argument to give."""
    x = _x(0, size=4)
    with pytest.raises(ValueError, match=r"give x_T \(the starting noise\) or shape"):
        run(TinyEps(0), Guidance.from_input(x, [AvgPool(2)]), LINEAR, steps=2)
