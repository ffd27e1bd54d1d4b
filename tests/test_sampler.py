"""Guided sampling keeps exactly what A keeps of the input, whatever the model's weights."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import UNetConfig, build_unet
from pipeline.operators import AvgPool, make_operators
from pipeline.sampler import Guidance, guided_x0, zip_ddim, zip_ddpm
from pipeline.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.named("linear")


def _random_unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="16"))
    with torch.no_grad():  # zero-initialised output layers would make ε ≡ 0; give them weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _input(seed: int) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("pool", [2, 4])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", None)])
@pytest.mark.parametrize("clip", [True, False])
def test_range_space_consistency(pool: int, sampler: str, eta: float | None, clip: bool) -> None:
    model, x = _random_unet(pool), _input(pool)
    op = AvgPool(pool)
    guidance = Guidance.from_input(x, [op], lam=0.0)
    with torch.no_grad():
        if sampler == "ddim":
            out = zip_ddim(model, guidance, SCHEDULE, steps=5, eta=eta, clip=clip, shape=x.shape,
                           generator=torch.Generator().manual_seed(0))
        else:
            out = zip_ddpm(model, guidance, SCHEDULE, steps=5, clip=clip, shape=x.shape,
                           generator=torch.Generator().manual_seed(0))
    assert (op.forward(out) - op.forward(x)).abs().max().item() <= 1e-4
    assert (out - x).abs().max().item() > 1e-2  # the null space was regenerated, not copied


def test_identity_operator_returns_the_input() -> None:
    model, x = _random_unet(0), _input(1)
    guidance = Guidance.from_input(x, [AvgPool(1)], lam=0.0)
    with torch.no_grad():
        out = zip_ddim(model, guidance, SCHEDULE, steps=4, eta=1.0, shape=x.shape, generator=torch.Generator())
    assert torch.allclose(out, x, atol=1e-5)


def test_hard_switch_stops_guiding_below_lambda_T() -> None:
    x = _input(2)
    guidance = Guidance.from_input(x, [AvgPool(2)], lam=0.5)
    assert guidance.is_active(500, 1000) and guidance.is_active(950, 1000)
    assert not guidance.is_active(450, 1000) and not guidance.is_active(0, 1000)
    assert Guidance.from_input(x, [AvgPool(2)], lam=0.0).is_active(0, 1000)
    with pytest.raises(ValueError, match="lam"):
        Guidance.from_input(x, [AvgPool(2)], lam=1.5)


def test_soft_blend_and_operator_average() -> None:
    x, x0 = _input(3), _input(4)
    ops = make_operators("gray,pool", 2)
    g = Guidance.from_input(x, ops, blend_k=10.0)
    per_op = [op.pinv(y) + x0 - op.pinv(op.forward(x0)) for op, y in zip(ops, g.observations, strict=True)]
    mean = (per_op[0] + per_op[1]) / 2
    ab = 0.9
    expected = (1 - ab**10) * mean + ab**10 * x0
    assert torch.allclose(guided_x0(x0, g, ab), expected, atol=1e-6)
    # Nearly all noise (ᾱ ≈ 0): fully guided; ᾱ = 1: back to the prior's estimate.
    assert torch.allclose(guided_x0(x0, g, 1e-6), mean, atol=1e-6)
    assert torch.allclose(guided_x0(x0, g, 1.0), x0)


def test_same_seed_same_result_other_seed_differs() -> None:
    model, x = _random_unet(5), _input(5)
    g = Guidance.from_input(x, [AvgPool(4)])

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return zip_ddim(model, g, SCHEDULE, steps=3, eta=1.0, shape=x.shape,
                            generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_resampling_keeps_the_range_space_and_redoes_only_guided_steps(sampler: str) -> None:
    model, x = _random_unet(6), _input(6)
    op = AvgPool(4)
    calls: list[int] = []

    def counting_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return model(x_t, t)

    # λ = 0.5 with 4 steps (t = 750, 500, 250, 0): two guided steps redone 3 times, two unguided steps once.
    guidance = Guidance.from_input(x, [op], lam=0.5)
    run = zip_ddim if sampler == "ddim" else zip_ddpm
    extra = {"eta": 1.0} if sampler == "ddim" else {}
    with torch.no_grad():
        out = run(counting_model, guidance, SCHEDULE, steps=4, shape=x.shape, resample=3,
                  generator=torch.Generator().manual_seed(0), **extra)
    assert calls == [750, 750, 750, 500, 500, 500, 250, 0]
    assert torch.isfinite(out).all()

    calls.clear()
    guided_all = Guidance.from_input(x, [op], lam=0.0)
    with torch.no_grad():
        out = run(counting_model, guided_all, SCHEDULE, steps=3, shape=x.shape, resample=2,
                  generator=torch.Generator().manual_seed(0), **extra)
    assert len(calls) == 6
    assert (op.forward(out) - op.forward(x)).abs().max().item() <= 1e-4  # still exactly consistent with A x
    with pytest.raises(ValueError, match="resample"):
        run(model, guided_all, SCHEDULE, steps=3, shape=x.shape, resample=0)


def test_renoise_matches_the_forward_process_marginals() -> None:
    from pipeline.sampler import renoise

    x_prev = torch.full((200_000,), 0.5)
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    ab_prev, ab_t = 0.8, 0.5
    x_t = renoise(x_prev, ab_prev, ab_t, noise)
    a = ab_t / ab_prev
    assert abs(x_t.mean().item() - 0.5 * a**0.5) < 5e-3
    assert abs(x_t.var().item() - (1 - a)) < 5e-3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_late_start_runs_only_the_low_noise_steps_from_the_noised_input(sampler: str) -> None:
    model, x = _random_unet(7), _input(7)
    op = AvgPool(4)
    guidance = Guidance.from_input(x, [op])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    seen: list[tuple[int, torch.Tensor]] = []

    def recording_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((int(t[0]), x_t.clone()))
        return model(x_t, t)

    run = zip_ddim if sampler == "ddim" else zip_ddpm
    extra = {"eta": 1.0} if sampler == "ddim" else {}
    with torch.no_grad():
        out = run(recording_model, guidance, SCHEDULE, steps=20, x_T=noise, start=0.3,
                  generator=torch.Generator().manual_seed(0), **extra)
    assert [t for t, _ in seen] == [300, 250, 200, 150, 100, 50, 0]  # 7 of the 20 steps
    ab = float(SCHEDULE.alphas_cumprod[300])
    expected_first = ab**0.5 * op.pinv(op.forward(x)) + (1 - ab) ** 0.5 * noise
    assert torch.allclose(seen[0][1], expected_first, atol=1e-6)
    assert (op.forward(out) - op.forward(x)).abs().max().item() <= 1e-4  # still exactly consistent with A x

    with torch.no_grad():  # start = 1 is the paper: every step, from the noise itself
        full = run(model, guidance, SCHEDULE, steps=4, x_T=noise, generator=torch.Generator().manual_seed(0), **extra)
        same = run(model, guidance, SCHEDULE, steps=4, x_T=noise, start=1.0, generator=torch.Generator().manual_seed(0),
                   **extra)
    assert torch.equal(full, same)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="start"):
            run(model, guidance, SCHEDULE, steps=4, x_T=noise, start=bad)
    with pytest.raises(ValueError, match="needs guidance"):
        run(model, None, SCHEDULE, steps=4, x_T=noise, start=0.5)
