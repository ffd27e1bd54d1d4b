"""Decoding of untrusted image bytes into H x W x 3 uint8 RGB, one image at a time.

Inputs come from object storage we do not control, so nothing here trusts a file name, a header or
PIL's defaults. `decode_image` never raises for bad data: it returns a short, single-line reason
instead, which the pipeline stores as a reject record. Policies (see `DecodePolicy`):

* Format: detected from the content, never from the file name, and limited to `SUPPORTED_FORMATS`.
  PIL can open many exotic formats (some, like EPS, shell out to external programs, and some, like
  TGA, have no magic number so random bytes may "decode"); the data set only needs common raster
  formats, so everything else is "not a recognised image format".
* Size (`max_pixels`): width * height from the header is checked right after `Image.open`, which has
  parsed only the header, so a decompression bomb is refused before any pixel memory is allocated (and
  before animation frames are counted). PIL's own guard (`Image.MAX_IMAGE_PIXELS`, about 89 M pixels by
  default) gives way to `max_pixels` up to its hard limit, twice that (about 179 M), which PIL enforces
  in `Image.open` itself; a policy asking for more is refused when it is made, not image by image.
* Truncation: `ImageFile.LOAD_TRUNCATED_IMAGES` is left alone (False), and `load()` runs inside the
  try, so a cut-off PNG/JPEG is a reject, not a half-grey image.
* Transparency (`alpha`): RGBA/LA/PA, and P/L/RGB with a tRNS key, are composited on white (the
  default, what most viewers show), on black, or the alpha is dropped (colour of transparent pixels
  kept as stored).
* Orientation (`exif_transpose`): the EXIF (or XMP) orientation tag is applied so the purified image
  is the one viewers show; an unreadable EXIF block means "no orientation", not a reject.
* Animation: the first frame of animated GIF/WebP/APNG (or the first page of a TIFF) is used;
  `Decoded.frames` says how many there were.
* Bit depth: 16-bit grey (I;16*, and mode I holding 0..65535) is scaled, not clipped, to 8 bits
  (65535 -> 255); mode I values outside 0..65535 and float (F) images are stretched from their own
  range. Colour profiles (ICC) are not applied: pixel values are taken as sRGB.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import ExifTags, Image

ALPHA_MODES: Final = ("white", "black", "drop")

# PIL plugin IDs tried on untrusted input. Camera JPEGs with extra (preview/stereo) frames come out of the
# JPEG plugin with format "MPO"; 16-bit PGM/PBM are PPM-plugin formats.
SUPPORTED_FORMATS: Final = ("PNG", "JPEG", "BMP", "TIFF", "PPM", "WEBP", "GIF")

IMAGE_EXTENSIONS: Final = frozenset({"png", "jpg", "jpeg", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "webp", "gif"})

# EXIF orientation value -> the transpose that shows the image upright (EXIF 2.3, tag 0x0112).
_ORIENTATION_FIX: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES_PIL: Final = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_WIDE_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_MAX_REASON_CHARS: Final = 300

# `warnings.catch_warnings` swaps the process-wide filter list (before Python 3.14); two threads doing it
# at once can restore each other's state and leave a filter installed for good. The lock keeps our own
# concurrent decodes from interleaving; it is held only while PIL parses headers, which is cheap.
_WARNINGS_LOCK = threading.Lock()


def pil_pixel_limit() -> int | None:
    """The most pixels Pillow opens at all (it raises DecompressionBombError above twice MAX_IMAGE_PIXELS)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


@dataclass(frozen=True)
class DecodePolicy:
    """How untrusted images are decoded; the defaults are what the job uses unless told otherwise.

    max_pixels: refuse images whose header says width * height exceeds this, before decoding pixels
        (decompression bombs). 64 M pixels is an 8000 x 8000 photo, ~190 MB as RGB.
    alpha: flatten transparency on "white" (as viewers show it), "black", or "drop" the alpha channel.
    exif_transpose: apply the EXIF orientation so the purified image looks like what viewers show.
    """

    max_pixels: int = 64_000_000
    alpha: str = "white"
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        # A wrong policy is a programming/configuration error, so it raises (unlike bad image data).
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {self.max_pixels!r}")
        hard = pil_pixel_limit()
        if hard is not None and self.max_pixels > hard:
            raise ValueError(f"max_pixels must be at most {hard:,} (twice PIL.Image.MAX_IMAGE_PIXELS: Pillow refuses "
                             f"to open larger images), got {self.max_pixels:,}")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {self.alpha!r}")


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what it was before conversion (kept for the output's provenance columns)."""

    pixels: np.ndarray  # H x W x 3 uint8 RGB, C-contiguous
    mode: str  # original PIL mode, e.g. "RGB", "L", "RGBA", "P", "I;16", "CMYK"
    format: str  # PIL format name, e.g. "PNG", "JPEG"
    frames: int  # number of frames (animated GIF/WebP: first frame is used)


def sniff_is_image_name(name: str) -> bool:
    """Whether a file name has an image extension; used only to pick files, never to pick a decoder."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    _, dot, ext = base.rpartition(".")
    return bool(dot) and ext.lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, policy: DecodePolicy = DecodePolicy()) -> Decoded | str:  # noqa: B008 (frozen)
    """Decode untrusted bytes to RGB per `policy`; return a one-line reason instead of raising on bad data."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return f"expected bytes, got {type(data).__name__}"
    if len(data) == 0:
        return "empty file"
    try:
        with _bomb_warnings_as_errors(policy.max_pixels):
            im = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            width, height = im.size
            size_problem = (
                f"invalid image size {width}x{height}" if width < 1 or height < 1 else
                f"image too large: {width}x{height} = {width * height:,} pixels exceeds max_pixels={policy.max_pixels:,}"
                if width * height > policy.max_pixels else None
            )
            if size_problem:
                im.close()
                return size_problem
            # Counting frames walks the frame headers (and PIL checks each frame's size on the way).
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                im.seek(0)
        with im:
            mode, fmt = im.mode, im.format or "unknown"
            im.load()  # inside the try: truncated or corrupt data raises here
            orientation = _orientation(im) if policy.exif_transpose else 1
            rgb = _to_rgb(im, policy.alpha)
        if orientation in _ORIENTATION_FIX:
            rgb = np.asarray(Image.fromarray(rgb).transpose(_ORIENTATION_FIX[orientation]))
        pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
        if not pixels.flags.writeable:  # arrays over PIL's buffer are read-only; callers may work in place
            pixels = pixels.copy()
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            return f"internal: conversion gave shape {pixels.shape} for mode {mode}"
        return Decoded(pixels=pixels, mode=mode, format=fmt, frames=frames)
    except Image.UnidentifiedImageError:
        return "not a recognised image format"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return _reason("image too large (PIL decompression-bomb guard)", e)
    except Exception as e:  # noqa: BLE001 - any failure on untrusted data is a reject, never a crash
        return _reason("cannot decode image", e)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of an H x W x 3 uint8 array (what the job writes; decoding it gives the same array)."""
    if not isinstance(pixels, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {pixels.dtype}")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"expected shape (H, W, 3) with H, W >= 1, got {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def _bomb_warnings_as_errors(max_pixels: int) -> Iterator[None]:
    """Make PIL's DecompressionBombWarning an exception for this block only, leaving global state as found; when
    the policy allows more pixels than the warning's threshold, the warning is silenced instead (the policy's own
    check, right after the header is parsed, is the limit then)."""
    soft = Image.MAX_IMAGE_PIXELS
    action = "ignore" if soft is None or max_pixels > soft else "error"
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        yield


def _reason(prefix: str, e: BaseException) -> str:
    """One short line naming the exception type and message (no traceback, bounded length)."""
    message = " ".join(str(e).split()) or "(no message)"
    text = f"{prefix}: {type(e).__name__}: {message}"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def _orientation(im: Image.Image) -> int:
    """EXIF/XMP orientation 1..8; anything unreadable counts as 1 (as stored), as lenient viewers do."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if int(value) in _ORIENTATION_FIX else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block does not make the pixels unusable
        return 1


def _to_rgb(im: Image.Image, alpha: str) -> np.ndarray:
    """H x W x 3 uint8 from any PIL mode, flattening transparency per `alpha`."""
    if im.mode in _WIDE_MODES:
        # 16-bit/32-bit/float grey: PIL's own convert("L") clips I;16 at 255, so scale here. A tRNS key
        # on a 16-bit grey PNG is ignored (rare; the grey value is kept).
        gray = _wide_to_uint8(np.asarray(im), im.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in _ALPHA_MODES_PIL or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        return _flatten(rgba, alpha)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit (and wider) grey to 0..255 by scaling, rounding to nearest (0 -> 0, 65535 -> 255)."""
    if mode.startswith("I;16") or (
        mode == "I" and arr.size and int(arr.min()) >= 0 and int(arr.max()) <= 65535
    ):
        wide = arr.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        lo, hi = 0.0, 1.0  # float images conventionally hold 0..1
    else:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _flatten(rgba: np.ndarray, alpha: str) -> np.ndarray:
    """Composite straight (non-premultiplied) RGBA on white/black, or drop alpha; exact integer rounding."""
    if alpha == "drop":
        return rgba[:, :, :3]
    background = 255 if alpha == "white" else 0
    rgb = rgba[:, :, :3].astype(np.uint16)
    a = rgba[:, :, 3:4].astype(np.uint16)
    # max value 255 * 255 + 127 fits uint16
    return ((rgb * a + background * (255 - a) + 127) // 255).astype(np.uint8)
