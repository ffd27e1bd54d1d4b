"""ShrinkPad as issue 4 defines it (shrink 32 -> 28, zero-pad back at a random offset), measured on its output
(mutation audit): the whole image is resized, not cropped, and the offset is drawn per image and per axis over
every position the padding allows."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.attacks import BadNet
from pipeline.evaluation.baselines import shrink_pad


def _offsets(out: np.ndarray) -> np.ndarray:
    """(row, column) of the top-left corner of each image's non-zero block."""
    nonzero = np.any(out != 0, axis=-1)
    return np.array([(np.flatnonzero(m.any(1))[0], np.flatnonzero(m.any(0))[0]) for m in nonzero])


def test_shrink_pad_resizes_the_whole_image_so_a_corner_trigger_is_shrunk_not_cut_off() -> None:
    ramp = np.broadcast_to((np.arange(32) * 8)[None, None, :, None], (4, 32, 32, 3)).astype(np.uint8)
    out = shrink_pad(ramp, shrink=4, seed=0)
    for img, (dy, dx) in zip(out, _offsets(out), strict=True):
        block = img[dy : dy + 28, dx : dx + 28, 0].astype(int)
        assert block[:, 0].max() <= 8 and block[:, -1].min() >= 232  # both ends of the ramp are still there
    grey = BadNet().apply(np.full((4, 32, 32, 3), 100, dtype=np.uint8))
    out = shrink_pad(grey, shrink=4, seed=0)
    for img, (dy, dx) in zip(out, _offsets(out), strict=True):
        block = img[dy : dy + 28, dx : dx + 28]
        assert block[-2:, -2:].min() >= 200  # the white 3x3 patch, now about 2.6 px, in the block's corner
        assert block[:-3, :-3].max() <= 101  # and nowhere else


def test_shrink_pad_offsets_cover_every_position_per_image_and_axis() -> None:
    flat = np.full((300, 32, 32, 3), 77, dtype=np.uint8)
    offsets = _offsets(shrink_pad(flat, shrink=4, seed=0))
    assert set(offsets[:, 0]) == set(range(5)) and set(offsets[:, 1]) == set(range(5))
    assert np.mean(offsets[:, 0] == offsets[:, 1]) < 0.4  # drawn independently per axis (1/5 agree by chance)
    assert len({tuple(o) for o in offsets}) >= 20  # 25 positions, drawn per image
    # the seed fixes them
    assert np.array_equal(offsets, _offsets(shrink_pad(flat, shrink=4, seed=0)))
