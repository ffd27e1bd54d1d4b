"""The note a purifier gives for a prior trained on part of the timesteps (`settings.PriorRangeNote`), as the mutation
audit found untested: docs/api.md calls it a UserWarning (a caller's filters for UserWarning apply to it), and a
warning names the caller's line, not the purifier's own."""

from __future__ import annotations

import warnings
from pathlib import Path

from pipeline.checkpoint import load_checkpoint
from pipeline.purifier import Purifier
from pipeline.settings import PriorRangeNote, ZipSettings
from tests.test_prior_defaults import _prior


def test_the_prior_range_note_is_a_user_warning_naming_the_line_that_made_the_purifier(tmp_path: Path) -> None:
    loaded = load_checkpoint(_prior(tmp_path, max_timestep=299))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Purifier(loaded.model, ZipSettings(steps=20), checkpoint=loaded)
    (note,) = seen
    assert note.category is PriorRangeNote and issubclass(note.category, UserWarning)
    assert "starts at t = 250" in str(note.message)
    assert note.filename == __file__  # this line, as a warning says where the caller made it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", UserWarning)  # a caller's filter for UserWarning silences it
        Purifier(loaded.model, ZipSettings(steps=20), checkpoint=loaded)
    assert seen == []
