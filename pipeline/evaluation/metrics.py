"""Evaluation metrics: accuracy-type scores in percent, image fidelity in dB (PSNR) or as a ratio (SSIM).

CA is measured on purified clean test images, ASR and PA on purified triggered test images whose true label
is not the target (see `attacks.poison_test_set`). PSNR / SSIM compare purified images with the originals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported by SSIM alone: the job's CPU stages score PSNR through this module, and importing torch there cost
# each of their Ray workers about 3 s and 290 MB of its own memory.


def _check_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: shape mismatch {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: empty input")
    return a, b


def clean_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """CA: percent of (clean) samples predicted as their label."""
    preds, labels = _check_pair(preds, labels, "clean_accuracy")
    return float(np.mean(preds == labels) * 100.0)


def attack_success_rate(preds: np.ndarray, true_labels: np.ndarray, target: int) -> float:
    """ASR: percent of triggered samples whose true label is not the target that are predicted as the target.

    Target-class samples are ignored, so callers may pass a test set that still contains them.
    """
    preds, true_labels = _check_pair(preds, true_labels, "attack_success_rate")
    keep = true_labels != target
    if not keep.any():
        raise ValueError(f"attack_success_rate: every sample belongs to the target class {target}")
    return float(np.mean(preds[keep] == target) * 100.0)


def poisoned_accuracy(preds: np.ndarray, true_labels: np.ndarray) -> float:
    """PA: percent of triggered samples still predicted as their true label (what a defense should restore)."""
    preds, true_labels = _check_pair(preds, true_labels, "poisoned_accuracy")
    return float(np.mean(preds == true_labels) * 100.0)


def _check_images(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate two uint8 image arrays and view them as batches N x H x W x C."""
    a, b = _check_pair(a, b, what)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 images (data range 255), got {a.dtype} and {b.dtype}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"{what}: expected H x W x C or N x H x W x C images, got shape {a.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of each pair's PSNR in dB (data range 255); inf if any pair is identical."""
    a, b = _check_images(a, b, "psnr")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(255.0**2 / mse)
    return float(np.mean(per_image))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    import torch

    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


# Most float64 pixel values one SSIM chunk holds per intermediate tensor (32 MiB; about a dozen are alive at once):
# 1,365 CIFAR-size images, 27 Imagenette-size (224 px) ones, so memory no longer grows with the number of images.
SSIM_CHUNK_ELEMENTS = 2**22


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5, chunk: int = 1024) -> float:
    """Mean SSIM (Wang et al. 2004) over images, as a ratio in [-1, 1] (1 = identical).

    Computed per colour channel with a Gaussian window (size 11, sigma 1.5), K1 = 0.01, K2 = 0.03,
    data range 255, over "valid" window positions only (no padding, as the reference MATLAB code); the SSIM
    map is averaged over positions and channels per image, then over images. Images must be at least
    `window` pixels on each side. Images are scored `chunk` at a time, fewer when they are large
    (`SSIM_CHUNK_ELEMENTS`); the result does not depend on the chunking.
    """
    import torch
    import torch.nn.functional as F

    a, b = _check_images(a, b, "ssim")
    n, height, width, channels = a.shape
    if height < window or width < window:
        raise ValueError(f"ssim: images of {height}x{width} are smaller than the {window}x{window} window")
    g = _gaussian_window(window, sigma)
    kernel_h, kernel_w = g.view(1, 1, window, 1), g.view(1, 1, 1, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_h), kernel_w)

    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    chunk = max(1, min(chunk, SSIM_CHUNK_ELEMENTS // (height * width * channels)))
    scores = []
    for start in range(0, n, chunk):
        x = torch.from_numpy(a[start : start + chunk]).permute(0, 3, 1, 2).reshape(-1, 1, height, width).double()
        y = torch.from_numpy(b[start : start + chunk]).permute(0, 3, 1, 2).reshape(-1, 1, height, width).double()
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        smap = (num / den).reshape(-1, channels, *num.shape[-2:])
        scores.append(smap.mean(dim=(1, 2, 3)))
    return float(torch.cat(scores).mean())
