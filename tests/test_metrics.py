"""Metrics on hand-made predictions and images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy, psnr, ssim


def test_accuracy_scores() -> None:
    labels = np.array([0, 1, 2, 3])
    assert clean_accuracy(np.array([0, 1, 2, 0]), labels) == pytest.approx(75.0)
    assert poisoned_accuracy(np.array([0, 0, 0, 0]), labels) == pytest.approx(25.0)
    # target 0: the sample whose true label is 0 does not count; 2 of the other 3 hit the target
    assert attack_success_rate(np.array([0, 0, 0, 3]), labels, target=0) == pytest.approx(200.0 / 3.0)
    assert attack_success_rate(np.array([1, 1, 1, 1]), labels, target=1) == pytest.approx(100.0)


def test_accuracy_errors() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        clean_accuracy(np.array([0, 1]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="empty"):
        poisoned_accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="target class"):
        attack_success_rate(np.array([1, 1]), np.array([1, 1]), target=1)


def test_psnr_known_values() -> None:
    a = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[...] = 10  # MSE = 100 -> 10 log10(255^2 / 100)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    # mean over images: one at MSE 100, one at MSE 400
    c = b.copy()
    c[1] = 20
    expected = (10 * math.log10(255**2 / 100) + 10 * math.log10(255**2 / 400)) / 2
    assert psnr(a, c) == pytest.approx(expected)
    assert psnr(a[0], b[0]) == pytest.approx(10 * math.log10(255**2 / 100))


def test_psnr_ssim_errors() -> None:
    a = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(a, a[:1])
    with pytest.raises(ValueError, match="empty"):
        ssim(a[:0], a[:0])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match="window"):
        ssim(a[:, :8, :8], a[:, :8, :8])


def test_ssim_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 41, size=a.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, size=a.shape, dtype=np.uint8)
    s_noisy, s_other = ssim(a, noisy), ssim(a, other)
    assert abs(s_other) < 0.05 < s_noisy < 1.0  # independent noise images are structurally unrelated
    # constant images: SSIM depends only on the luminance term
    flat_a = np.full((1, 16, 16, 1), 100, dtype=np.uint8)
    flat_b = np.full((1, 16, 16, 1), 120, dtype=np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_ssim_single_window_matches_direct_formula() -> None:
    """An 11x11 image has one window position: compare with Gaussian-weighted statistics computed directly."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(1, 11, 11, 1), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 61, size=a.shape), 0, 255).astype(np.uint8)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    x, y = a[0, :, :, 0].astype(float), b[0, :, :, 0].astype(float)
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cov = (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
