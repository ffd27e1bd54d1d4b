"""`ZipSettings.for_prior` and `check_trained_timesteps` (docs/api.md) with a meta of the caller's own whose
max_timestep is no timestep: a ValueError saying what the prior was trained on, as for any start it was not trained
for, not an IndexError from inside the start's resolution."""

from __future__ import annotations

import pytest

from pipeline import ZipSettings
from pipeline.settings import check_trained_timesteps


def test_a_negative_max_timestep_is_refused_with_a_value_error_not_an_index_error() -> None:
    with pytest.raises(ValueError, match=r"trained only on timesteps 0\.\.-1"):
        check_trained_timesteps({"max_timestep": -1}, ZipSettings(steps=20))
    assert ZipSettings(steps=20).for_prior({"max_timestep": -1}).start == 1.0  # unresolved: refused by the check
