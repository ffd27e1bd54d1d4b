"""Definitions the existing metric tests left open (mutation audit): PSNR is the mean of the per-image PSNRs (two
images cannot tell a mean from a median), and the naive defense A⁺A x replaces each block by its mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.baselines import naive_transform
from pipeline.evaluation.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy, psnr


def test_psnr_is_the_mean_over_images_of_each_pairs_psnr() -> None:
    a = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[0], b[1], b[2] = 1, 10, 20  # MSE 1, 100, 400: a mean of 32.8 dB, a median of 28.1
    per_image = [10 * math.log10(255**2 / mse) for mse in (1, 100, 400)]
    assert psnr(a, b) == pytest.approx(sum(per_image) / 3)


def test_naive_transform_is_the_block_mean_not_another_average() -> None:
    """A⁺A x for average pooling: block [0, 0, 0, 8] has mean 2 (its median is 0)."""
    block = np.array([[[[0], [0]], [[0], [8]]]], dtype=np.uint8)
    assert np.all(naive_transform(block, 2) == 2)
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    rgb[0, 1, 1] = (40, 80, 200)  # one bright pixel per 2x2 block corner: means 10, 20, 50 in that block only
    out = naive_transform(rgb, 2)
    assert out[0, :2, :2].reshape(-1, 3).tolist() == [[10, 20, 50]] * 4
    assert not out[0, 2:].any() and not out[0, :, 2:].any()


def test_asr_and_pa_read_the_same_triggered_predictions_against_target_and_truth() -> None:
    """On triggered images whose true label is not the target, ASR counts predictions of the target, PA predictions
    of the true label; a prediction that is neither counts for neither. CA is plain accuracy."""
    truth = np.array([0, 2, 3, 4, 5])
    preds = np.array([1, 1, 3, 9, 5])  # target 1: two hits, two restored, one neither
    assert attack_success_rate(preds, truth, target=1) == pytest.approx(40.0)
    assert poisoned_accuracy(preds, truth) == pytest.approx(40.0)
    assert clean_accuracy(preds, truth) == pytest.approx(40.0)
