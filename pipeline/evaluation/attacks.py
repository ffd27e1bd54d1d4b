"""Backdoor attacks used to build the evaluation's poisoned classifiers and triggered test sets.

Every attack is a small frozen dataclass working on uint8 images (H x W x 3, or batches N x H x W x 3):
`apply` stamps the trigger on every given image and returns a new uint8 array, `target` is the class the
backdoor maps triggered inputs to, and `poison_rate` is the share of the training set it poisons by default.
`poison_training_set` and `poison_test_set` turn a clean labelled set into the attacker's training set and
the triggered test set used for ASR / PA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class Attack(Protocol):
    target: int
    poison_rate: float

    def apply(self, images: np.ndarray) -> np.ndarray: ...


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """View a single image as a batch of one, so every attack handles both layouts the same way."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"attacks work on uint8 images, got dtype {images.dtype}")
    if images.ndim == 3:
        return images[None], True
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected H x W x 3 or N x H x W x 3 images, got shape {images.shape}")
    return images, False


def _unbatch(images: np.ndarray, single: bool) -> np.ndarray:
    return images[0] if single else images


def _check_size(images: np.ndarray, image_size: int, name: str) -> None:
    if images.shape[1:3] != (image_size, image_size):
        raise ValueError(
            f"{name} was built for {image_size}x{image_size} images, got {images.shape[1]}x{images.shape[2]}"
        )


def _check_patch(patch_size: int, value: int) -> None:
    """A patch of at least one pixel and a pixel value: out[:, -0:, -0:] is every pixel, so patch_size 0 whitened the
    whole image (and -2 every pixel but the last two rows and columns)."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive whole number of pixels, got {patch_size!r}")
    if not 0 <= value <= 255:
        raise ValueError(f"value must be a pixel value in 0..255, got {value!r}")


def _stamp(images: np.ndarray, patch_size: int, value: int) -> np.ndarray:
    """Copy of the images with a patch_size x patch_size square of `value` in their bottom-right corner."""
    batch, single = _as_batch(images)
    if patch_size > min(batch.shape[1:3]):
        raise ValueError(f"a {patch_size} px patch does not fit {batch.shape[1]}x{batch.shape[2]} images")
    out = batch.copy()
    out[:, -patch_size:, -patch_size:, :] = value
    return _unbatch(out, single)


@dataclass(frozen=True)
class BadNet:
    """BadNets (Gu et al. 2017): a solid square patch in the bottom-right corner.

    patch_size: side of the square in pixels; value: the patch's pixel value in every channel;
    target: the backdoor's target class; poison_rate: default share of the training set to poison.
    """

    patch_size: int = 3
    value: int = 255
    target: int = 1
    poison_rate: float = 0.05

    def __post_init__(self) -> None:
        _check_patch(self.patch_size, self.value)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Copy of the images with the patch stamped on."""
        return _stamp(images, self.patch_size, self.value)


@functools.lru_cache(maxsize=8)
def _blend_pattern(seed: int, height: int, width: int) -> np.ndarray:
    pattern = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    pattern.setflags(write=False)
    return pattern


@dataclass(frozen=True)
class Blended:
    """Blended attack (Chen et al. 2017): a fixed uniform-noise image blended over the whole image.

    x' = round((1 - alpha) x + alpha * noise). image_size: side of the (square) images the noise is drawn for;
    alpha: blend weight of the noise; seed: seed of the noise image (the trigger, fixed for an attack);
    target: the backdoor's target class; poison_rate: default share of the training set to poison.
    """

    image_size: int = 32
    alpha: float = 0.2
    seed: int = 0
    target: int = 1
    poison_rate: float = 0.05

    @property
    def pattern(self) -> np.ndarray:
        """The noise trigger, image_size x image_size x 3 uint8 (read-only)."""
        return _blend_pattern(self.seed, self.image_size, self.image_size)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Copy of the images with the noise blended in."""
        batch, single = _as_batch(images)
        _check_size(batch, self.image_size, "Blended")
        mixed = (1.0 - self.alpha) * batch.astype(np.float32) + self.alpha * self.pattern.astype(np.float32)
        return _unbatch(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), single)


@dataclass(frozen=True)
class PhysicalBA:
    """Physical backdoor (Li et al. 2021, "Backdoor attack in the physical world"): BadNet's patch at test time,
    with the attacker training on physically transformed images so the backdoor survives such changes.

    patch_size / value: the BadNet patch; target: target class; poison_rate: default share to poison;
    brightness / contrast: colour-jitter strengths (factor drawn from [1 - b, 1 + b]); degrees: max rotation;
    translate: max shift as a share of the image size; scale: range of the zoom factor; interpolation: how the
    affine warp resamples: "bilinear" (the default, behind every published table) or "nearest" (torchvision's
    RandomAffine default, which keeps the patch's pixels pure white; it did not raise ASR, docs/results.md).
    """

    patch_size: int = 3
    value: int = 255
    target: int = 1
    poison_rate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.8, 0.9)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        _check_patch(self.patch_size, self.value)
        if self.interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {self.interpolation!r}")

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Copy of the images with the BadNet patch stamped on (the test-time trigger)."""
        return BadNet(self.patch_size, self.value, self.target, self.poison_rate).apply(images)

    def train_transform(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random flip, brightness/contrast jitter and affine warp of every training image (new uint8 array).

        Meant as the classifier's `extra_transform`: applied to all training images, poisoned or not, fresh
        random parameters per image and call.
        """
        batch, single = _as_batch(images)
        n, height, width, _ = batch.shape
        if n == 0:
            return _unbatch(batch.copy(), single)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32) / 255.0

        flip = torch.from_numpy(rng.random(n) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)

        bright = torch.from_numpy(rng.uniform(1 - self.brightness, 1 + self.brightness, n)).float()
        x = (x * bright[:, None, None, None]).clamp(0, 1)
        contrast = torch.from_numpy(rng.uniform(1 - self.contrast, 1 + self.contrast, n)).float()
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2))[:, None, None, None]
        x = ((x - gray) * contrast[:, None, None, None] + gray).clamp(0, 1)

        angle = np.deg2rad(rng.uniform(-self.degrees, self.degrees, n))
        zoom = rng.uniform(self.scale[0], self.scale[1], n)
        # shifts in pixels, rounded like torchvision's RandomAffine, then in normalised [-1, 1] coordinates
        shift_x = np.round(rng.uniform(-self.translate, self.translate, n) * width) * 2.0 / width
        shift_y = np.round(rng.uniform(-self.translate, self.translate, n) * height) * 2.0 / height
        # grid_sample maps output coordinates to input ones, so build the inverse of rotate-scale-shift
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        theta = np.zeros((n, 2, 3))
        theta[:, 0, 0], theta[:, 0, 1] = cos, sin
        theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
        theta[:, 0, 2] = -(cos * shift_x + sin * shift_y)
        theta[:, 1, 2] = -(-sin * shift_x + cos * shift_y)
        grid = F.affine_grid(torch.from_numpy(theta).float(), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)

        out = (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return _unbatch(out, single)


@functools.lru_cache(maxsize=8)
def _wanet_grid(image_size: int, grid_k: int, strength: float, seed: int) -> torch.Tensor:
    """WaNet's fixed warping field as a grid_sample grid (1 x H x W x 2, (x, y) order, in [-1, 1])."""
    flow = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(1, 2, grid_k, grid_k))
    flow = torch.from_numpy(flow / np.mean(np.abs(flow))).float()
    flow = F.interpolate(flow, size=image_size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    axis = torch.linspace(-1.0, 1.0, image_size)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    identity = torch.stack((cols, rows), dim=-1)[None]
    return (identity + strength * flow / image_size).clamp(-1.0, 1.0)


def _warp(batch: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32)
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], -1, -1, -1)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@dataclass(frozen=True)
class WaNet:
    """WaNet (Nguyen & Tran, ICLR 2021): an imperceptible smooth warp of the whole image.

    A seeded random grid_k x grid_k flow field in [-1, 1] is normalised by its mean absolute value, upsampled
    bicubically to the image size, scaled by strength / H, added to the identity sampling grid and clamped to
    [-1, 1]. image_size: side of the (square) images; grid_k: control-grid size k; strength: warp strength s;
    seed: seed of the flow field (the trigger); target: target class; poison_rate: default share to poison;
    cross_ratio: "noise mode" — this many noise-warped samples per poisoned sample (label kept), which
    teaches the classifier that only the exact warp matters.
    """

    image_size: int = 32
    grid_k: int = 4
    strength: float = 0.5
    seed: int = 0
    target: int = 0
    poison_rate: float = 0.10
    cross_ratio: float = 2.0

    def grid(self) -> torch.Tensor:
        """The fixed warping grid, 1 x H x W x 2 (a copy: the cached one defines the trigger for every later caller)."""
        return _wanet_grid(self.image_size, self.grid_k, self.strength, self.seed).clone()

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Copy of the images warped by the backdoor field."""
        batch, single = _as_batch(images)
        _check_size(batch, self.image_size, "WaNet")
        if len(batch) == 0:
            return _unbatch(batch.copy(), single)
        return _unbatch(_warp(batch, self.grid()), single)

    def apply_noise(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The backdoor warp plus per-image random jitter of up to one pixel (noise-mode samples, label kept)."""
        batch, single = _as_batch(images)
        _check_size(batch, self.image_size, "WaNet")
        if len(batch) == 0:
            return _unbatch(batch.copy(), single)
        size = self.image_size
        jitter = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(len(batch), size, size, 2))).float()
        grid = (self.grid() + jitter / size).clamp(-1.0, 1.0)
        return _unbatch(_warp(batch, grid), single)


ATTACKS: dict[str, type] = {"badnet": BadNet, "blended": Blended, "physicalba": PhysicalBA, "wanet": WaNet}


def make_attack(name: str, image_size: int) -> Attack:
    """The named attack with its default settings, built for square images of side `image_size`."""
    try:
        cls = ATTACKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
    if "image_size" in {f.name for f in fields(cls)}:
        return cls(image_size=image_size)
    return cls()


def _check_labelled(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"expected N x H x W x 3 images with N labels, got {images.shape} and {labels.shape}")
    return labels


def poison_training_set(
    images: np.ndarray,
    labels: np.ndarray,
    attack: Attack,
    rate: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The attacker's training set: round(rate * N) random non-target samples triggered and relabelled to target.

    `rate` is a share of the whole training set (N = len(labels)), the usual meaning of a poisoning rate; the
    poisoned samples are drawn only among samples whose label is not the target, so every one of them teaches
    the backdoor. `rate=None` uses the attack's own default (5 %, 10 % for WaNet). For WaNet, another
    round(cross_ratio * rate * N) samples outside the poisoned ones get a noise warp and keep their label.
    Returns new (images, labels, sorted poisoned indices); the inputs are not modified.
    """
    labels = _check_labelled(images, labels)
    rate = attack.poison_rate if rate is None else rate
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poisoning rate must be in [0, 1], got {rate}")
    candidates = np.flatnonzero(labels != attack.target)
    count = int(round(rate * len(labels)))
    if count > len(candidates):
        raise ValueError(f"cannot poison {count} samples: only {len(candidates)} are outside target {attack.target}")
    rng = np.random.default_rng(seed)
    poisoned = np.sort(rng.choice(candidates, size=count, replace=False))
    out_images = images.copy()
    out_labels = labels.astype(np.int64, copy=True)
    if count:
        out_images[poisoned] = attack.apply(images[poisoned])
        out_labels[poisoned] = attack.target
    if isinstance(attack, WaNet) and attack.cross_ratio > 0:
        rest = np.setdiff1d(np.arange(len(labels)), poisoned)
        num_cross = min(int(round(attack.cross_ratio * rate * len(labels))), len(rest))
        cross = np.sort(rng.choice(rest, size=num_cross, replace=False))
        if num_cross:
            out_images[cross] = attack.apply_noise(images[cross], rng)
    return out_images, out_labels, poisoned


def poison_test_set(images: np.ndarray, labels: np.ndarray, attack: Attack) -> tuple[np.ndarray, np.ndarray]:
    """Triggered copies of the test samples whose true label is not the target, with their TRUE labels.

    Target-class samples are dropped because a "successful" attack on them is indistinguishable from a correct
    prediction. The true labels give PA directly; ASR compares the predictions with `attack.target`.
    """
    labels = _check_labelled(images, labels)
    keep = labels != attack.target
    return attack.apply(images[keep]), labels[keep].astype(np.int64)
