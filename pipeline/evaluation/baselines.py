"""Input-transformation defenses other than ZIP, to compare it against on the same uint8 N x H x W x 3 images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _check_batch(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{what}: expected uint8 N x H x W x C images, got {images.dtype} {images.shape}")
    return images


def no_defense(images: np.ndarray) -> np.ndarray:
    """The identity (a copy), so "no defense" runs through the same code path as the real ones."""
    return _check_batch(images, "no_defense").copy()


def shrink_pad(images: np.ndarray, shrink: int = 4, seed: int = 0) -> np.ndarray:
    """ShrinkPad (Li et al. 2021): shrink each image by `shrink` pixels, zero-pad back at a random offset.

    Shrinking uses antialiased bilinear resizing; the offset (0..shrink in each direction) is drawn per image
    from a generator seeded with `seed`, so a run is reproducible. It breaks triggers that rely on exact
    pixel positions.
    """
    images = _check_batch(images, "shrink_pad")
    n, height, width, channels = images.shape
    if not 0 <= shrink < min(height, width):
        raise ValueError(f"shrink_pad: shrink must be in [0, {min(height, width)}), got {shrink}")
    if shrink == 0 or n == 0:
        return images.copy()
    small_h, small_w = height - shrink, width - shrink
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)
    small = F.interpolate(x, size=(small_h, small_w), mode="bilinear", align_corners=False, antialias=True)
    small_u8 = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, shrink + 1, size=(n, 2))
    out = np.zeros_like(images)
    for i, (dy, dx) in enumerate(offsets):
        out[i, dy : dy + small_h, dx : dx + small_w] = small_u8[i]
    return out


def naive_transform(images: np.ndarray, pool: int) -> np.ndarray:
    """A⁺A x for average pooling by `pool`: each pool x pool block replaced by its mean (rounded to uint8).

    The "naive" purification ZIP improves on: it removes fine triggers but also the image's detail.
    Applying it twice gives the same result as once.

    A side that `pool` does not divide is handled as the purifier handles it (pipeline/tiling.py): the image is padded
    to the next multiple by repeating its edge pixels, pooled, and cropped back, so the last blocks average the edge
    with its copies, as the block means ZIP keeps do. Sizes that `pool` divides are unchanged by this.
    """
    images = _check_batch(images, "naive_transform")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"naive_transform: pool must be a positive integer, got {pool!r}")
    n, height, width, channels = images.shape
    if pool == 1:
        return images.copy()
    pad_h, pad_w = -height % pool, -width % pool
    padded = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else images
    big_h, big_w = height + pad_h, width + pad_w
    blocks = padded.reshape(n, big_h // pool, pool, big_w // pool, pool, channels).astype(np.float64)
    means = np.clip(np.rint(blocks.mean(axis=(2, 4))), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(means.repeat(pool, axis=1).repeat(pool, axis=2)[:, :height, :width])
