"""Baseline defenses: shapes, dtypes, value ranges and the projection property of the naive transform."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.baselines import naive_transform, no_defense, shrink_pad


def _images(n: int = 6, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_no_defense_is_a_copy() -> None:
    x = _images()
    y = no_defense(x)
    assert np.array_equal(x, y) and not np.shares_memory(x, y)


def test_shrink_pad_shape_range_and_seed() -> None:
    x = _images()
    y = shrink_pad(x, shrink=4, seed=0)
    assert y.shape == x.shape and y.dtype == np.uint8
    # each image keeps a 28x28 content block (no zeros, as inputs are >= 1) inside a zero border of 4 rows / cols
    for img in y:
        nonzero = np.any(img != 0, axis=-1)
        rows, cols = np.flatnonzero(nonzero.any(1)), np.flatnonzero(nonzero.any(0))
        assert len(rows) == 28 and len(cols) == 28
        assert rows[-1] - rows[0] == 27 and cols[-1] - cols[0] == 27
        assert (32 - len(rows)) * 32 * 3 <= np.sum(img == 0)
    assert np.array_equal(y, shrink_pad(x, shrink=4, seed=0))
    assert not np.array_equal(y, shrink_pad(x, shrink=4, seed=1))
    # a constant image stays constant inside its block
    flat = np.full((2, 32, 32, 3), 77, dtype=np.uint8)
    out = shrink_pad(flat)
    assert set(np.unique(out)) <= {0, 77}
    assert np.sum(out[0] == 77) == 28 * 28 * 3


def test_naive_transform_shape_values_idempotent() -> None:
    x = _images()
    for pool in (1, 2, 4):
        y = naive_transform(x, pool)
        assert y.shape == x.shape and y.dtype == np.uint8
        assert np.array_equal(naive_transform(y, pool), y)
        # every pool x pool block is constant and equals the rounded block mean
        blocks = y.reshape(6, 32 // pool, pool, 32 // pool, pool, 3)
        assert np.all(blocks == blocks[:, :, :1, :, :1])
    assert np.array_equal(naive_transform(x, 1), x)
    tiny = np.array([[[[0], [1]], [[2], [4]]]], dtype=np.uint8)  # one 2x2 image, mean 1.75 -> 2
    assert np.all(naive_transform(tiny, 2) == 2)


def test_naive_transform_pads_an_indivisible_size_as_the_purifier_does() -> None:
    # It refused 30x30 at pool 4, an image ZIP purifies (its tiling pads the cell by repeating the edge); see
    # tests/test_validation_user_errors.py for the comparison with the tiling's block means.
    x = _images(size=30)
    y = naive_transform(x, 4)
    assert y.shape == x.shape and np.array_equal(naive_transform(y, 4), y)
