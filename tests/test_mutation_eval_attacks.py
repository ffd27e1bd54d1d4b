"""The attacks' parameters as issue 4 states them, measured on the images they produce (mutation audit).

The existing tests check where a trigger lands and how many samples are poisoned; these pin what they left open:
every attack's documented defaults, that Blended's trigger is full-range RGB noise, each PhysicalBA augmentation
on its own (flip, brightness, contrast, rotation, shift, zoom-out), WaNet's warp strength and its noise mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.attacks import PhysicalBA, WaNet, make_attack, poison_training_set

# Every PhysicalBA augmentation switched off but the random flip, which has no setting.
NO_AUGMENTATION = {"brightness": 0.0, "contrast": 0.0, "degrees": 0.0, "translate": 0.0, "scale": (1.0, 1.0)}


def test_every_attack_has_the_issues_parameters_by_default() -> None:
    """Issue 4: BadNet 3x3 white patch, target 1; Blended α = 0.2, target 1; PhysicalBA the BadNet trigger with
    flip, brightness/contrast 0.2, 10°, translate 0.1, scale 0.8–0.9; WaNet k = 4, s = 0.5, target 0, 10 %, noise
    mode (two noise-warped samples per poisoned one, as WaNet's paper); 5 % poisoning unless stated."""
    badnet, blended = make_attack("badnet", 32), make_attack("blended", 32)
    physical, wanet = make_attack("physicalba", 32), make_attack("wanet", 32)
    assert (badnet.patch_size, badnet.value, badnet.target, badnet.poison_rate) == (3, 255, 1, 0.05)
    assert (blended.alpha, blended.target, blended.poison_rate, blended.image_size) == (0.2, 1, 0.05, 32)
    assert (physical.patch_size, physical.value, physical.target, physical.poison_rate) == (3, 255, 1, 0.05)
    assert (physical.brightness, physical.contrast, physical.degrees, physical.translate) == (0.2, 0.2, 10.0, 0.1)
    assert tuple(physical.scale) == (0.8, 0.9)
    assert (wanet.grid_k, wanet.strength, wanet.target, wanet.poison_rate, wanet.cross_ratio) == (4, 0.5, 0, 0.10, 2.0)


def test_blended_trigger_is_full_range_rgb_uniform_noise() -> None:
    """The trigger is a uniform-noise colour image: every value 0..255 about equally often, channels drawn
    independently (not a grey pattern), the same for every instance of the attack."""
    pattern = make_attack("blended", 32).pattern.astype(np.float64)
    assert pattern.shape == (32, 32, 3)
    assert pattern.min() <= 2 and pattern.max() >= 253
    assert pattern.mean() == pytest.approx(127.5, abs=6.0)
    assert pattern.std() == pytest.approx(np.sqrt((256**2 - 1) / 12), rel=0.06)  # a discrete uniform's spread
    assert np.mean(pattern[..., 0] == pattern[..., 1]) < 0.05
    assert abs(np.corrcoef(pattern[..., 0].ravel(), pattern[..., 2].ravel())[0, 1]) < 0.15
    assert np.array_equal(make_attack("blended", 32).pattern, pattern)


def test_physicalba_flips_about_half_the_images_left_to_right() -> None:
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = PhysicalBA(**NO_AUGMENTATION).train_transform(x, np.random.default_rng(1))
    kept = np.array([np.array_equal(a, b) for a, b in zip(x, y, strict=True)])
    mirrored = np.array([np.array_equal(a[:, ::-1], b) for a, b in zip(x, y, strict=True)])
    assert np.all(kept | mirrored)  # nothing else changes with every other augmentation off
    assert 16 <= mirrored.sum() <= 48


def test_physicalba_colour_jitter_draws_factors_on_both_sides_of_one() -> None:
    """Brightness and contrast 0.2: factors drawn from [0.8, 1.2], each on its own."""
    grey = np.full((200, 32, 32, 3), 100, dtype=np.uint8)
    bright = PhysicalBA(**{**NO_AUGMENTATION, "brightness": 0.2}).train_transform(grey, np.random.default_rng(2))
    factor = bright[:, 0, 0, 0] / 100.0
    assert np.all(bright == bright[:, :1, :1, :1])  # one factor for the whole image
    assert factor.min() >= 0.8 - 0.006 and factor.max() <= 1.2 + 0.006
    assert factor.min() < 0.85 and factor.max() > 1.15

    halves = np.full((200, 32, 32, 3), 50, dtype=np.uint8)
    halves[:, 16:] = 150  # mean (grey level) 100, flips leave it alone
    out = PhysicalBA(**{**NO_AUGMENTATION, "contrast": 0.2}).train_transform(halves, np.random.default_rng(3))
    low, high = out[:, 0, 0, 0].astype(float), out[:, 31, 0, 0].astype(float)
    spread = (high - low) / 100.0
    assert np.allclose((high + low) / 2, 100.0, atol=1.0)  # contrast scales around the image's mean grey
    assert spread.min() >= 0.8 - 0.02 and spread.max() <= 1.2 + 0.02
    assert spread.min() < 0.85 and spread.max() > 1.15


def _centroids(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness centroid of every image, relative to the image centre (x to the right, y downwards)."""
    weight = images.astype(np.float64).sum(-1)
    size = images.shape[1]
    yy, xx = np.mgrid[0:size, 0:size]
    total = weight.sum((1, 2))
    centre = (size - 1) / 2
    return (weight * xx).sum((1, 2)) / total - centre, (weight * yy).sum((1, 2)) / total - centre


def test_physicalba_rotates_by_at_most_ten_degrees() -> None:
    size = 64
    blob = np.zeros((100, size, size, 3), dtype=np.uint8)
    blob[:, 8:12, 30:34] = 255  # above the centre, on the vertical axis: a flip leaves it in place
    out = PhysicalBA(**{**NO_AUGMENTATION, "degrees": 10.0}).train_transform(blob, np.random.default_rng(4))
    cx, cy = _centroids(out)
    angle = np.degrees(np.arctan2(cx, -cy))
    assert np.abs(angle).max() <= 10.5
    assert angle.min() < -7 and angle.max() > 7
    assert np.allclose(np.hypot(cx, cy), 22.0, atol=0.5)  # a rotation keeps the distance to the centre


def test_physicalba_shifts_by_at_most_a_tenth_of_the_image() -> None:
    size = 64
    blob = np.zeros((100, size, size, 3), dtype=np.uint8)
    blob[:, 30:34, 30:34] = 255
    out = PhysicalBA(**{**NO_AUGMENTATION, "translate": 0.1}).train_transform(blob, np.random.default_rng(5))
    cx, cy = _centroids(out)
    for shift in (cx, cy):
        assert np.abs(shift).max() <= 0.1 * size + 0.5
        assert shift.min() < -5 and shift.max() > 5


def test_physicalba_zooms_out_to_between_80_and_90_percent_with_a_black_border() -> None:
    white = np.full((100, 32, 32, 3), 255, dtype=np.uint8)
    out = PhysicalBA(**{**NO_AUGMENTATION, "scale": (0.8, 0.9)}).train_transform(white, np.random.default_rng(6))
    share = out[..., 0].astype(np.float64) / 255.0
    side = np.sqrt(share.sum((1, 2))) / 32  # the white square's side, as a share of the image's
    assert side.min() >= 0.8 - 0.02 and side.max() <= 0.9 + 0.02
    assert side.min() < 0.82 and side.max() > 0.88
    assert share[:, 0].max() == 0 and share[:, :, 0].max() == 0  # the uncovered border is zero fill
    assert np.all(share[:, 16, 16] == 1.0)


def _identity_grid(size: int) -> torch.Tensor:
    axis = torch.linspace(-1.0, 1.0, size)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack((cols, rows), dim=-1)[None]


def test_wanet_without_strength_is_the_identity() -> None:
    """s = 0 leaves the identity sampling grid, which must sample every pixel exactly where it is."""
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(WaNet(image_size=32, strength=0.0).apply(x), x)


def test_wanet_warp_strength_is_s_over_h_of_a_unit_mean_field() -> None:
    """WaNet's field: k x k uniform values normalised to mean |value| 1, upsampled, times s / H (normalised grid
    units). Away from the clamped border the bicubic field averages about 0.7 of its control points' magnitude."""
    size, strength = 32, 0.5
    identity = _identity_grid(size)
    magnitudes = []
    for seed in range(10):
        grid = WaNet(image_size=size, strength=strength, seed=seed).grid()
        magnitudes.append(float((grid - identity)[0, 2:-2, 2:-2].abs().mean()) * size / strength)
    assert 0.55 < np.mean(magnitudes) < 0.95
    doubled = WaNet(image_size=size, strength=2 * strength).grid()
    base = WaNet(image_size=size, strength=strength).grid()
    assert torch.allclose((doubled - identity)[0, 2:-2, 2:-2], 2 * (base - identity)[0, 2:-2, 2:-2], atol=1e-5)


def _ramp(n: int, size: int = 32) -> np.ndarray:
    """Horizontal ramp, 8 grey levels per pixel: a shift of d pixels changes a value by 8 d."""
    row = np.arange(size) * 8
    return np.broadcast_to(row[None, None, :, None], (n, size, size, 3)).astype(np.uint8).copy()


def test_wanet_noise_mode_is_the_backdoor_warp_plus_fresh_subpixel_jitter() -> None:
    """Noise mode (WaNet, Nguyen & Tran 2021): the backdoor grid plus uniform noise in [-1, 1] / H per sample."""
    x = _ramp(6)
    # with no backdoor warp only the jitter moves pixels: at most 1/H normalised = (H - 1) / 2H, about half a pixel
    jittered = WaNet(image_size=32, strength=0.0).apply_noise(x, np.random.default_rng(0))
    change = np.abs(jittered.astype(int) - x.astype(int))[:, 1:-1, 1:-1]
    assert change.max() <= 8 * 0.5 + 1
    assert change.mean() > 0.5
    assert not np.array_equal(jittered[0], jittered[1])  # every sample its own noise
    # with a strong backdoor warp, the noise-mode samples stay near the backdoor image, far from the original
    strong = WaNet(image_size=32, strength=8.0)
    smooth = np.stack([np.roll(_ramp(1)[0], 3 * i, axis=0) for i in range(4)])
    smooth[..., 1] = smooth[..., 1].transpose(0, 2, 1)  # gradients in both directions
    warped, noisy = strong.apply(smooth).astype(int), strong.apply_noise(smooth, np.random.default_rng(1)).astype(int)
    inner = (slice(None), slice(3, -3), slice(3, -3))
    to_warp = np.abs(noisy - warped)[inner].mean()
    to_original = np.abs(noisy - smooth.astype(int))[inner].mean()
    assert to_warp < 0.5 * to_original


def test_wanet_noise_mode_adds_cross_ratio_times_the_poisoned_count() -> None:
    """round(cross_ratio · rate · N) = 2 · 0.1 · 200 = 40 other samples get a noise warp and keep their label."""
    n = 200
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1)
    x = np.stack([np.roll(base, i, axis=1) for i in range(n)]).astype(np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    attack = make_attack("wanet", 32)
    px, pl, idx = poison_training_set(x, labels, attack, seed=0)
    assert len(idx) == 20
    others = np.setdiff1d(np.arange(n), idx)
    changed = others[np.any(px[others] != x[others], axis=(1, 2, 3))]
    assert len(changed) == 40
    assert np.array_equal(pl[others], labels[others])


def test_poisoning_count_seed_and_target_exclusion() -> None:
    """round(rate · N) samples (5 % of 119 is 5.95: 6, not 5), none of the target class even when most are, and
    another seed poisons other samples."""
    x = np.zeros((119, 32, 32, 3), dtype=np.uint8)
    labels = np.where(np.arange(119) % 4 == 0, 3, 1).astype(np.int64)  # three in four samples are the target 1
    _, _, idx = poison_training_set(x, labels, make_attack("badnet", 32), seed=0)
    assert len(idx) == 6 and np.all(labels[idx] == 3)
    x = np.zeros((200, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(200, dtype=np.int64) % 10
    first = poison_training_set(x, labels, make_attack("badnet", 32), seed=0)[2]
    second = poison_training_set(x, labels, make_attack("badnet", 32), seed=1)[2]
    assert not np.array_equal(first, second)


def test_editing_a_wanet_grid_does_not_change_the_trigger_of_later_wanets() -> None:
    """grid() handed out the process-wide cached tensor, so a caller's in-place edit moved every later trigger."""
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    before = WaNet().apply(images)
    WaNet().grid().add_(0.05)
    np.testing.assert_array_equal(WaNet().apply(images), before)
