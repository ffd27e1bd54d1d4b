"""Mutation-audit gap in tiling: an unpacked image is its own array even when the canvases are writeable and its cell
spans the canvas's full width (a contiguous crop), so writing to one result never changes the canvases."""

from __future__ import annotations

import numpy as np

from pipeline.tiling import pack, plan_layout, unpack


def test_full_width_cells_unpack_to_their_own_arrays_from_writeable_canvases() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 32, 3), dtype=np.uint8) for _ in range(2)]  # two full-width cells
    layout = plan_layout([im.shape[:2] for im in images], 32, 4)
    canvases = pack(images, layout)
    assert canvases.flags.writeable and layout.num_canvases == 1
    kept = canvases.copy()
    out = unpack(canvases, layout)
    for original, image in zip(images, out, strict=True):
        assert np.array_equal(image, original)
        assert not np.shares_memory(image, canvases) and image.flags.writeable
        image[:] = 0
    assert np.array_equal(canvases, kept)
