"""SSIM against an outside reference, and its memory use on large images."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from pipeline.evaluation import metrics


def test_ssim_matches_scikit_image() -> None:
    """Reference value from scikit-image 0.26 (structural_similarity with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=-1; mean over the two images), computed outside
    the project: scikit-image is not a dependency."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-50, 51, size=a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(a, b) == pytest.approx(0.9324849760357532, abs=1e-12)


def test_ssim_memory_does_not_grow_with_the_number_of_large_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image of a call went through the filters in one float64 batch of up to 1,024: about 24 GB for a
    thousand 224 px Imagenette images (5 GB measured for 200). Chunks are now bounded in pixels, same score."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(90, 128, 128, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, size=a.shape), 0, 255).astype(np.uint8)
    largest = []
    conv2d = F.conv2d

    def spy(x, *args, **kwargs):  # type: ignore[no-untyped-def]
        largest.append(x.numel())
        return conv2d(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    score = metrics.ssim(a, b)
    assert max(largest) <= 2**22  # 90 x 3 x 128 x 128 = 4.4M values in one batch before
    monkeypatch.setattr(F, "conv2d", conv2d)
    assert score == pytest.approx(np.mean([metrics.ssim(a[i : i + 10], b[i : i + 10]) for i in range(0, 90, 10)]),
                                  rel=1e-12)
