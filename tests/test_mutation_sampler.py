"""Mutation-audit gaps in the diffusion math's wiring (pipeline/sampler.py, schedule.py, the purify path).

The update rules themselves are pinned by tests/test_math_audit_sampler.py (an independent re-derivation) and
tests/test_sampler.py. What no test pinned: that `Purifier.purify_tensor` hands each of its settings (λ, η, blend k,
clipping, steps, operators, sampler, resample, late start) to the sampler — a purifier that dropped any one of them
still passed every test, purifying with the default instead of what the user set; that a batch's per-canvas step noise
never replays another canvas's starting noise; that model units beyond [-1, 1] saturate in uint8 instead of wrapping;
that a noise-generator list longer than the batch is refused; and guided-diffusion's β cap of the cosine schedule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline.model import UNetConfig, build_unet
from pipeline.operators import make_operators
from pipeline.purifier import to_uint8
from pipeline.sampler import SAMPLERS, Guidance, zip_ddim
from pipeline.schedule import NoiseSchedule, cosine_betas

BASE = dict(steps=4, pool=2, lam=0.0, eta=1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="",
                              num_res_blocks=1))
    with torch.no_grad():  # zero-initialised output layers would make ε ≡ 0 and many settings indistinguishable
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _direct(p: Purifier, x: torch.Tensor, s: ZipSettings, seed: int) -> torch.Tensor:
    """The sampler called by hand with every setting spelled out (the purifier must do exactly this)."""
    guidance = Guidance.from_input(x, make_operators(s.operators, s.pool), s.lam, s.blend_k)
    common: dict[str, Any] = dict(steps=s.steps, clip=s.clip_denoised, shape=tuple(x.shape), resample=s.resample,
                                  start=s.start, generator=torch.Generator().manual_seed(seed))
    if s.sampler == "ddim":
        common["eta"] = s.eta
    return SAMPLERS[s.sampler](p.eps, guidance, NoiseSchedule.named(s.schedule), **common)


@pytest.mark.parametrize("setting", [
    dict(lam=0.5), dict(eta=0.0), dict(eta=0.5), dict(operators="gray,pool"), dict(operators="gray,pool", blend_k=10.0),
    dict(clip_denoised=False), dict(steps=3), dict(resample=2), dict(start=0.5), dict(sampler="ddpm"),
    dict(sampler="ddpm", steps=6, start=0.5), dict(schedule="cosine"),
], ids=str)
def test_the_purifier_samples_with_each_of_its_settings(model, one_torch_thread, setting: dict[str, Any]) -> None:
    x = _x()
    settings = ZipSettings(**{**BASE, **setting}).for_prior({})  # every setting spelled out: start and schedule too
    with torch.no_grad():
        got = Purifier(model, settings).purify_tensor(x, seed=3)
        expected = _direct(Purifier(model, settings), x, settings, 3)
        default = Purifier(model, ZipSettings(**BASE)).purify_tensor(x, seed=3)
    assert torch.equal(got, expected)
    # The setting changes the samples here, so the equality above could not hold with the setting dropped.
    assert (got - default).abs().max().item() > 1e-3


def test_no_canvas_step_noise_replays_a_starting_noise_of_its_batch(model, one_torch_thread, monkeypatch) -> None:
    """Seeds a user passes are often consecutive (0, 1, 2, ...): a canvas's step-noise stream must not be the
    starting-noise stream of the canvas seeded one higher (the stream of seed + 1), or two canvases of a batch would
    share their noise."""
    from pipeline import sampler

    drawn: list[torch.Tensor] = []
    original = sampler._noise_like
    monkeypatch.setattr(sampler, "_noise_like", lambda x, g: drawn.append(original(x, g)) or drawn[-1])
    seeds = [5, 6, 7]
    canvases = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    Purifier(model, ZipSettings(**BASE)).purify_canvases(canvases, seeds=seeds)
    starts = [torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(sd)) for sd in seeds]
    assert len(drawn) == 3  # η = 1: one draw for each of the steps before the last
    for noise in drawn:
        for i in range(3):
            for start in starts:
                assert not torch.allclose(noise[i], start), "a step noise replays a starting noise of the batch"


def test_model_units_beyond_the_data_range_saturate_in_uint8() -> None:
    """The sampler returns x₀ unclamped (guidance adds the input's block means to the prior's detail, which can pass
    ±1): a white pixel at 1.2 must stay 255, not wrap around to a dark 25 in the uint8 cast."""
    x = torch.tensor([-1.5, -1.0, 0.5, 1.0, 1.2]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0].tolist() == [[0] * 3, [0] * 3, [191] * 3, [255] * 3, [255] * 3]


def test_more_noise_generators_than_samples_are_refused() -> None:
    x = _x()
    with pytest.raises(ValueError, match="got 3 noise generators for a batch of 2"):
        zip_ddim(lambda x_t, t: torch.zeros_like(x_t), Guidance.from_input(x, make_operators("pool", 2)),
                 NoiseSchedule.named("linear"), steps=2, shape=tuple(x.shape), generator=[torch.Generator()] * 3)


def test_cosine_schedule_caps_beta_where_guided_diffusion_does() -> None:
    """guided-diffusion's betas_for_alpha_bar caps β at 0.999: only the last step's β reaches it for T = 1000, and
    a lower cap changes ᾱ_999 tenfold (2.4e-9 against 2.4e-8), the starting level of a 1000-step cosine sampler."""
    betas = cosine_betas(1000)

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    uncapped = np.array([1 - f((i + 1) / 1000) / f(i / 1000) for i in range(1000)])
    assert betas[-1] == 0.999 and uncapped[-1] > 0.999
    assert np.array_equal(betas[:-1], uncapped[:-1]) and uncapped[:-1].max() < 0.999
