"""Mutation-audit gap in the linear schedule: any T is scaled to match the 1000-step original (guided-diffusion's
get_named_beta_schedule), not only T = 1000."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.schedule import linear_betas


@pytest.mark.parametrize("T", [100, 250, 4000])
def test_linear_schedule_scales_to_any_number_of_steps(T) -> None:
    betas = linear_betas(T)
    assert betas.shape == (T,)
    assert betas[0] == pytest.approx(1000 / T * 0.0001) and betas[-1] == pytest.approx(1000 / T * 0.02)
    assert np.all(np.diff(betas) > 0)
