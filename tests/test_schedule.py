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
