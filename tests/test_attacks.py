"""Backdoor attacks: trigger placement, determinism and the poisoned training / test sets (synthetic images)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.attacks import (
    ATTACKS,
    BadNet,
    Blended,
    PhysicalBA,
    WaNet,
    make_attack,
    poison_test_set,
    poison_training_set,
)


def _images(n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    # values kept below 255 so a white patch is always a visible change
    return np.random.default_rng(seed).integers(0, 250, size=(n, size, size, 3), dtype=np.uint8)


def _smooth_images(n: int = 4, size: int = 32) -> np.ndarray:
    """Images with strong gradients, so a sub-pixel warp changes pixel values."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), (xx * yy) % 256], axis=-1)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)]).astype(np.uint8)


def test_badnet_patch_is_white_corner_and_rest_unchanged() -> None:
    x = _images()
    y = BadNet().apply(x)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert np.all(y[:, -3:, -3:, :] == 255)
    mask = np.ones(x.shape[1:3], dtype=bool)
    mask[-3:, -3:] = False
    assert np.array_equal(y[:, mask], x[:, mask])
    assert not np.shares_memory(x, y)
    # a single image works too
    assert np.array_equal(BadNet().apply(x[0]), y[0])


def test_blended_is_alpha_mix_of_noise() -> None:
    x = _images()
    attack = Blended(image_size=32)
    y = attack.apply(x)
    assert y.shape == x.shape and y.dtype == np.uint8
    expected = 0.8 * x.astype(np.float64) + 0.2 * attack.pattern.astype(np.float64)
    assert np.abs(y - expected).max() <= 0.5 + 1e-6
    # the pattern is fixed by the seed, and a different seed gives a different trigger
    assert np.array_equal(Blended(image_size=32).pattern, attack.pattern)
    assert not np.array_equal(Blended(image_size=32, seed=1).pattern, attack.pattern)
    with pytest.raises(ValueError, match="32x32"):
        attack.apply(_images(size=16))


def test_wanet_warps_deterministically() -> None:
    x = _smooth_images()
    y = WaNet(image_size=32).apply(x)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert not np.array_equal(x, y)
    assert np.array_equal(y, WaNet(image_size=32).apply(x))
    assert not np.array_equal(y, WaNet(image_size=32, seed=1).apply(x))
    # imperceptible: a small average change
    assert np.abs(y.astype(int) - x.astype(int)).mean() < 20
    grid = WaNet(image_size=32).grid()
    assert grid.shape == (1, 32, 32, 2) and float(grid.abs().max()) <= 1.0
    noisy = WaNet(image_size=32).apply_noise(x, np.random.default_rng(0))
    assert noisy.shape == x.shape and noisy.dtype == np.uint8 and not np.array_equal(noisy, y)


def test_physicalba_test_trigger_is_badnet_and_train_transform_keeps_layout() -> None:
    x = _images()
    attack = PhysicalBA()
    assert np.array_equal(attack.apply(x), BadNet().apply(x))
    rng = np.random.default_rng(0)
    t = attack.train_transform(x, rng)
    assert t.shape == x.shape and t.dtype == np.uint8
    assert not np.array_equal(t, x)
    assert np.array_equal(t, attack.train_transform(x, np.random.default_rng(0)))
    assert attack.train_transform(x[0], rng).shape == x[0].shape


def _colours(image: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(c) for c in px) for px in image.reshape(-1, 3)}


def test_physicalba_nearest_warp_moves_pixels_without_blending_them() -> None:
    """torchvision's RandomAffine resamples with nearest neighbours: a warped white patch stays pure white pixels."""
    x = _images(4)
    geometric = PhysicalBA(brightness=0.0, contrast=0.0, interpolation="nearest")
    warped = geometric.train_transform(x, np.random.default_rng(0))
    for before, after in zip(x, warped, strict=True):
        assert _colours(after) <= _colours(before) | {(0, 0, 0)}  # every output pixel is an input pixel or fill
        assert not np.array_equal(after, before)
    patched = geometric.train_transform(BadNet().apply(x), np.random.default_rng(1))
    assert all((img == 255).all(axis=-1).sum() >= 4 for img in patched)  # the 3x3 patch keeps white pixels
    blended = PhysicalBA(brightness=0.0, contrast=0.0, interpolation="bilinear").train_transform(x, np.random.default_rng(0))
    assert any(not _colours(after) <= _colours(before) | {(0, 0, 0)} for before, after in zip(x, blended, strict=True))
    with pytest.raises(ValueError, match="interpolation"):
        PhysicalBA(interpolation="bicubic")


def test_registry_and_defaults() -> None:
    assert set(ATTACKS) == {"badnet", "blended", "physicalba", "wanet"}
    assert make_attack("badnet", 32).target == 1
    assert make_attack("blended", 64).image_size == 64
    wanet = make_attack("wanet", 32)
    assert (wanet.target, wanet.poison_rate, wanet.grid_k, wanet.strength) == (0, 0.10, 4, 0.5)
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("nope", 32)


@pytest.mark.parametrize("name", ["badnet", "blended", "physicalba", "wanet"])
def test_poison_training_set_count_and_labels(name: str) -> None:
    n = 200
    x = _smooth_images(n)
    labels = np.arange(n, dtype=np.int64) % 10
    attack = make_attack(name, 32)
    rate = 0.05
    px, pl, idx = poison_training_set(x, labels, attack, rate=rate, seed=3)
    assert len(idx) == round(rate * n) == 10
    assert np.all(labels[idx] != attack.target)
    assert np.all(pl[idx] == attack.target)
    others = np.setdiff1d(np.arange(n), idx)
    assert np.array_equal(pl[others], labels[others])
    assert np.array_equal(px[idx], attack.apply(x[idx]))
    if name != "wanet":  # WaNet's noise-mode samples are changed too
        assert np.array_equal(px[others], x[others])
    else:
        changed = np.flatnonzero(np.any(px[others] != x[others], axis=(1, 2, 3)))
        assert 0 < len(changed) <= round(attack.cross_ratio * rate * n)
    # seeded, and the inputs are untouched
    _, _, idx2 = poison_training_set(x, labels, attack, rate=rate, seed=3)
    assert np.array_equal(idx, idx2)
    assert np.array_equal(labels, np.arange(n) % 10)


def test_poison_training_set_default_rate_is_the_attacks() -> None:
    labels = np.arange(100, dtype=np.int64) % 10
    _, _, idx = poison_training_set(_smooth_images(100), labels, make_attack("wanet", 32))
    assert len(idx) == 10
    _, _, idx = poison_training_set(_images(100), labels, BadNet())
    assert len(idx) == 5
    with pytest.raises(ValueError):
        poison_training_set(_images(10), labels[:10], BadNet(), rate=1.0)


def test_poison_test_set_drops_target_and_keeps_true_labels() -> None:
    x = _images(20)
    labels = np.arange(20, dtype=np.int64) % 4
    attack = BadNet(target=1)
    px, pl = poison_test_set(x, labels, attack)
    keep = labels != 1
    assert len(px) == len(pl) == keep.sum()
    assert np.array_equal(pl, labels[keep])
    assert np.array_equal(px, attack.apply(x[keep]))
