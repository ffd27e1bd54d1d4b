"""Mutation-audit gaps in the Python API's image reading (pipeline.images), the presets and shipped priors, the sample
generator, DecodePolicy's checks and the storage options named after a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.sample_data as sample_data
from pipeline import Purifier
from tests.jobutil import run_main


def _rgb(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("mode", "alpha"), [("LA", True), ("PA", True), ("RGBa", True), ("LAB", False),
                                             ("CMYK", False), ("P", False)])
def test_a_pil_mode_is_said_to_have_alpha_only_when_it_has(purifier: Purifier, mode: str, alpha: bool) -> None:
    # LAB's "A" is a colour axis: its image was told "its alpha channel is not a colour: composite it"
    with pytest.raises(ValueError) as err:
        purifier([_rgb(), Image.new(mode, (4, 4))])
    message = str(err.value)
    assert message.startswith(f"image 1: a PIL image in mode {mode}") and "accepted: modes RGB and L" in message
    assert ("alpha channel is not a colour" in message) is alpha, message


def test_a_folder_that_cannot_be_made_is_one_error_line_not_a_traceback(tmp_path: Path, capsys) -> None:
    # a path under a file (or the package's own folder in a read-only installation) raised NotADirectoryError
    (tmp_path / "a-file").write_text("x")
    assert run_main(sample_data, [str(tmp_path / "a-file" / "sample")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write the sample to {tmp_path / 'a-file' / 'sample'}: Not a directory\n"
