"""Images as the Python API takes them: uint8 RGB or grayscale numpy arrays (one, a list, or an N x H x W x C array)
or PIL images, read into H x W x 3 arrays. Anything ambiguous (float pixels, channels first, RGBA, 16-bit PIL modes,
tensors) is refused with an error that says how to convert it, rather than guessed at."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

ACCEPTED_IMAGES = ("uint8 numpy arrays H x W x 3 (RGB), H x W or H x W x 1 (grayscale), or PIL images in mode RGB "
                   "or L")


def _dtype_hint(dtype: np.dtype) -> str:
    """How to make a uint8 image of another dtype: the scale of floats, bools and wider ints is the caller's to say."""
    if np.issubdtype(dtype, np.floating):
        return ("float pixels could be in [0, 1] or [0, 255]; convert them first, e.g. "
                "(image * 255).round().astype(np.uint8) for [0, 1] or image.round().astype(np.uint8) for [0, 255]")
    if dtype == np.bool_:
        return "convert a mask first, e.g. image.astype(np.uint8) * 255"
    if dtype == np.uint16:
        return "scale it to 0-255 and convert it first, e.g. (image >> 8).astype(np.uint8)"
    return "scale it to 0-255 and convert it to uint8 first"


def _shape_hint(shape: tuple[int, ...]) -> str:
    """How to make an H x W x 3 image of another shape; guessing instead would purify the wrong pixels."""
    if len(shape) == 3 and shape[2] == 4:
        return ": 4 channels (RGBA?); the alpha channel is not a colour: drop or composite it first, e.g. image[..., :3]"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return ": it looks channels-first (C x H x W); pass image.transpose(1, 2, 0)"
    if len(shape) == 4:
        return ": a batch as one item? pass the N x H x W x 3 array itself, or list(batch)"
    return ""


# PIL modes whose pixels are wider than 8 bits: PIL's own convert("RGB") / convert("L") clips them at 255 (a 16-bit
# 30000 becomes 255), so "convert('RGB')" would be the wrong advice for them.
_WIDE_PIL_MODES = {"I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit", "I": "32-bit integer",
                   "F": "float"}


# PIL modes with an alpha channel (RGBa and La: premultiplied). Not every mode naming an "A": LAB's is a colour axis.
_ALPHA_PIL_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _pil_problem(i: int, image: Any) -> str:
    """Why a PIL image in another mode than RGB or L is refused, and how to convert it without losing it."""
    mode = image.mode
    if mode in _WIDE_PIL_MODES:
        how = ("Image.fromarray((np.asarray(image) / 257).round().astype(np.uint8)) for 16-bit (0-65535)"
               if mode.startswith("I;16") else "scale np.asarray(image) to 0-255 and pass it as uint8")
        return (f"image {i}: a {_WIDE_PIL_MODES[mode]} PIL image (mode {mode}); image.convert('RGB') would clip it at "
                f"255, so scale it to 8 bits first, e.g. {how}")
    alpha = " (its alpha channel is not a colour: composite it onto a background)" if mode in _ALPHA_PIL_MODES else ""
    return (f"image {i}: a PIL image in mode {mode}{alpha}; accepted: modes RGB and L; "
            "convert it first, e.g. image.convert('RGB')")


def read_image(i: int, image: Any) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """One input image as uint8 H x W x 3 (the caller's array, not a copy, when it is one) and, for a grayscale
    image, the shape its result goes back in; a clear error saying how to convert any other form rather than a
    guess at its meaning (the scale of floats, channels-first, alpha).

    Grayscale (H x W, H x W x 1, PIL mode L) is purified as the job purifies a grayscale file: the grey value in all
    three channels (pipeline.decode)."""
    if isinstance(image, torch.Tensor):
        raise TypeError(f"image {i}: a torch tensor; pass {ACCEPTED_IMAGES}, e.g. "
                        "tensor.permute(1, 2, 0).cpu().numpy() for a C x H x W uint8 tensor")
    if type(image).__module__.startswith("PIL.") and hasattr(image, "mode"):
        if image.mode not in ("RGB", "L"):
            raise ValueError(_pil_problem(i, image))
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {i}: expected {ACCEPTED_IMAGES}, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image {i}: expected dtype uint8 (0-255), got {image.dtype}: {_dtype_hint(image.dtype)}")
    gray = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if not gray and (image.ndim != 3 or image.shape[2] != 3):
        raise ValueError(f"image {i}: expected shape H x W x 3 (RGB) or H x W (grayscale), got "
                         f"{image.shape}{_shape_hint(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {i}: empty image of shape {image.shape}")
    if gray:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2), image.shape
    return image, None


def image_items(images: Any) -> Iterable[Any]:
    """The images of a call: a list (or any iterable) of images, or an N x H x W x 3 (N x H x W x 1) array. Any other
    container is refused: iterating a single H x W x 3 image gives its H rows, each a W x 3 "grey image"."""
    if isinstance(images, np.ndarray) and images.dtype == object and images.ndim == 1:
        return list(images)  # a column of images (pandas' .values, np.array(images, dtype=object)): a list
    if isinstance(images, np.ndarray) and images.ndim != 4:
        # A 3-D array is one colour image or N grey ones (and H x W x 3 is both): which one is the caller's to say,
        # and a list of results comes back either way.
        hint = ("for one image, pass [image]; for N grayscale images, pass list(images)" if images.ndim == 3
                else "for one image, pass [image]" if images.ndim == 2 else "")
        raise ValueError(f"expected a list of images or an N x H x W x 3 (or N x H x W x 1) array, got an array of "
                         f"shape {images.shape}" + (f"; {hint}" if hint else ""))
    if isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a list of images or an N x H x W x 3 uint8 numpy array, got a torch tensor "
                        f"of shape {tuple(images.shape)} and dtype {images.dtype}; for N x 3 x H x W floats in [0, 1]: "
                        "(images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()")
    if isinstance(images, str | bytes | dict) or not isinstance(images, Iterable):
        one = " (for one image, pass [image])" if hasattr(images, "mode") else ""
        raise TypeError(f"images must be a list of images or an N x H x W x 3 uint8 array, got "
                        f"{type(images).__name__}{one}; accepted images: {ACCEPTED_IMAGES}")
    return images


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 to H x W grey with ITU-R 601 luma in PIL's own fixed point, so that a grey image's result is
    the job's RGB output for it converted as Image.convert("L") converts it. The weights sum to 1 (65536), so the
    pool operator's block means of a grey input are kept as the RGB result keeps them."""
    r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
