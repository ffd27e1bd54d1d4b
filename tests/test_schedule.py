from __future__ import annotations

import numpy as np
import pytest

from pipeline.schedule import NoiseSchedule, cosine_betas, ddim_timesteps, linear_betas
from tests.conftest import REFERENCE, requires_shared


@requires_shared
def test_linear_schedule_equals_guided_diffusion_exactly() -> None:
    ref = np.load(REFERENCE / "linear_betas_1000.npy")
    betas = linear_betas(1000)
    assert betas.dtype == np.float64
    assert np.array_equal(betas, ref)


def test_cosine_schedule_follows_alpha_bar_and_caps_beta() -> None:
    betas = cosine_betas(1000)
    assert betas.shape == (1000,) and np.all(betas > 0) and betas.max() <= 0.999
    ab = NoiseSchedule("cosine", betas).alphas_cumprod
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    assert ab[499] == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    assert np.all(np.diff(ab) < 0)


def test_ddim_spacing_matches_the_paper() -> None:
    assert ddim_timesteps(1000, 20) == list(range(950, -1, -50))
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.named("quadratic")


def test_ddim_spacing_starts_near_T_for_every_step_count() -> None:
    """The stride T // S started a step count that does not divide T far below T, from pure noise: S = 501 began at
    t = 500 (ᾱ = 0.078), S = 600 at t = 599. The spacing is now ⌊i·T/S⌋, the same as before whenever S divides T."""
    T = 1000
    for s in range(1, T + 1):
        ts = ddim_timesteps(T, s)
        assert len(ts) == len(set(ts)) == s and ts == sorted(ts, reverse=True) and ts[-1] == 0
        assert ts[0] >= T - -(-T // s)  # within ⌈T/S⌉ of T
        if T % s == 0:  # the authors' code and guided-diffusion's "ddimS": stride T/S
            assert ts == list(range(0, T, T // s))[::-1]
    assert ddim_timesteps(T, 501)[:3] == [998, 996, 994]
    assert ddim_timesteps(T, 30)[:3] == [966, 933, 900]
    assert ddim_timesteps(4000, 20) == list(range(3800, -1, -200))
