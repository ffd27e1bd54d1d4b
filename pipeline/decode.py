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
  try, so a cut-off PNG/JPEG is a reject, not a half-grey image. libjpeg, though, fills the missing blocks
  of a JPEG whose data stops early but ends with an end marker, warning only; a JPEG with less data than any
  complete image of its declared size needs (one bit per 8x8 block) is a reject before decoding. A JPEG with
  more than 100 scans (each a pass over the whole image) or 10,000 marker segments (each walked in Python) is a
  reject too: CPU bombs.
* Transparency (`alpha`): RGBA/LA/PA, and P/L/RGB with a tRNS key, are composited on white (the
  default, what most viewers show), on black, or the alpha is dropped (colour of transparent pixels
  kept as stored).
* Orientation (`exif_transpose`): the EXIF (or XMP) orientation tag is applied so the purified image
  is the one viewers show; an unreadable EXIF block means "no orientation", not a reject.
* Animation: the first frame of animated GIF/WebP/APNG (or the first page of a TIFF) is used;
  `Decoded.frames` says how many there were (for APNG and MPO, how many the header declares). TIFF pages
  are counted by following the chain of page offsets, up to a loop or an offset past the end of the file.
* Warnings: PIL's UserWarnings about corrupt metadata are silenced during a decode (they would be printed
  once per image), and so are libtiff's own error lines, which it writes to stderr from C (`_quiet_libtiff`:
  its handlers are taken away, on Linux, where the libtiff Pillow loaded can be found).
* Bit depth: 16-bit grey (I;16*, and mode I holding 0..65535) is scaled, not clipped, to 8 bits
  (65535 -> 255); mode I values outside 0..65535 and float (F) images are stretched from their own
  range. Colour profiles (ICC) are not applied: pixel values are taken as sRGB.
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import re
import struct
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
# JPEG start-of-frame markers (SOF0..SOF15 less DHT 0xC4, JPG 0xC8 and DAC 0xCC).
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# More scans or marker segments than these make a JPEG a reject: see `_jpeg_problem`.
_MAX_JPEG_SCANS: Final = 100
_MAX_JPEG_SEGMENTS: Final = 10_000
# The marker ending a scan's entropy-coded data: 0xFF followed by anything but a stuffed 0x00, a restart marker
# (0xD0..0xD7) or another 0xFF (fill).
_JPEG_SCAN_END: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

# `warnings.catch_warnings` swaps the process-wide filter list (before Python 3.14); two threads doing it
# at once can restore each other's state and leave a filter installed for good. The lock keeps our own
# concurrent decodes from interleaving. It is held for a whole decode (PIL warns about corrupt metadata while
# loading pixels too), so threads of one process decode one image at a time; the job decodes in Ray tasks, one
# batch at a time per worker process, so it loses nothing.
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


# First bytes of the image formats a data set's other columns commonly hold (a thumbnail, a second view, a mask).
_IMAGE_MAGIC: Final = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
                       (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def image_format_of(data: object) -> str | None:
    """The image format `data` starts as ('PNG', 'JPEG', 'GIF', 'WebP', 'TIFF', 'BMP'), or None: a cheap look at the
    first bytes of a value the job does not purify, to tell the user that images pass through unpurified."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM":  # two letters any data may start with: a BMP's info header has one of these sizes
        return "BMP" if len(data) >= 18 and struct.unpack("<I", bytes(data[14:18]))[0] in (12, 40, 52, 56, 64, 108, 124) \
            else None
    return next((kind for magic, kind in _IMAGE_MAGIC if head.startswith(magic)), None)


def decode_image(data: bytes, policy: DecodePolicy = DecodePolicy()) -> Decoded | str:  # noqa: B008 (frozen)
    """Decode untrusted bytes to RGB per `policy`; return a one-line reason instead of raising on bad data."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return f"expected bytes, got {type(data).__name__}"
    if len(data) == 0:
        return "empty file"
    if not isinstance(data, bytes):
        data = bytes(data)  # the JPEG/TIFF structure checks below search and unpack the bytes themselves
    try:
        with _quiet_warnings(policy.max_pixels):
            return _decode(data, policy)
    except Image.UnidentifiedImageError:
        return "not a recognised image format" + _what_it_is(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return _reason("image too large (PIL decompression-bomb guard)", e)
    except Exception as e:  # noqa: BLE001 - any failure on untrusted data is a reject, never a crash
        return _reason("cannot decode image", e)


# Files that reach the decoder but are not images, told by their first bytes: an archive inside an archive (a zip in a
# zip, a tar in a zip) or named otherwise than the job's containers (.zip, .tar, .parquet) is not opened, and a phone's
# HEIF/AVIF photo is no supported format; "not a recognised image format" alone left the user to guess.
_NOT_IMAGES: Final = ((b"PK\x03\x04", 0, "a zip archive"), (b"PK\x05\x06", 0, "a zip archive"),
                      (b"ustar", 257, "a tar archive"), (b"PAR1", 0, "a Parquet file"),
                      (b"ARROW1", 0, "an Arrow IPC file"),
                      (b"\x1f\x8b", 0, "gzip-compressed data"), (b"BZh", 0, "bzip2-compressed data"),
                      (b"\xfd7zXZ\x00", 0, "xz-compressed data"))
# Archive and compression formats the job reads in no place (Python's tarfile and zipfile do not): a WebDataset shard
# compressed with zstd (`shard.tar.zst`) was "not a recognised image format", as if it were a damaged image.
_UNREAD_FORMATS: Final = ((b"\x28\xb5\x2f\xfd", "zstd-compressed data (a .tar.zst shard?)"),
                          (b"\x04\x22\x4d\x18", "lz4-compressed data"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
                          (b"Rar!\x1a\x07", "a RAR archive"))
_HEIF_BRANDS: Final = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _what_it_is(data: bytes) -> str:
    """' (it is a zip archive, ...)' for the file types `_UNREAD_FORMATS`, `_NOT_IMAGES` and HEIF/AVIF name; '' for
    anything else."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return f" (HEIF/AVIF, brand {data[8:12].decode()}, which is not read: convert it to PNG or JPEG)"
    for magic, kind in _UNREAD_FORMATS:
        if data.startswith(magic):
            return (f" (it is {kind}, a format the job does not read: decompress or extract it, or repack it as .tar, "
                    ".tar.gz, .tar.xz, .tar.bz2 or .zip)")
    for magic, at, kind in _NOT_IMAGES:
        if data[at : at + len(magic)] == magic:
            return (f" (it is {kind}: archives and data files are read only as inputs of their own, named .zip, .tar, "
                    ".tar.gz, ..., .parquet or .arrow, never inside another archive or file: extract it or give it as "
                    "input)")
    return ""


@functools.cache
def _quiet_libtiff() -> int:
    """Take libtiff's error (and warning) handlers away, as Pillow's TIFF decoder does itself for warnings, so that a
    damaged TIFF's "ZIPDecode: Decoding error at scanline 0, ..." or "JPEGLib: Not a JPEG file ..." lines stop going to
    the worker's stderr from C, past Python's logging and through Ray onto the progress display, once per image and
    naming none. The image is a reject all the same, with Pillow's reason ("decoder error -2"). Done once per
    process, before its first TIFF is decoded, for each libtiff already loaded in it (Pillow's, found in
    /proc/self/maps: Linux only; elsewhere nothing changes): setting a handler is a pointer write in libtiff, unlike
    redirecting file descriptor 2, which would hide the output of every other thread of the worker while it lasts.
    Returns how many libtiff copies were quieted."""
    quieted = 0
    for path in _loaded_libtiffs():
        try:  # RTLD_NOLOAD: the copy already in the process, or none; never a second one
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                setter = getattr(lib, name)
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)
            quieted += 1
        except (OSError, AttributeError):
            continue
    return quieted


def _loaded_libtiffs() -> list[str]:
    """Paths of the libtiff shared libraries this process has loaded (Pillow's wheels bundle their own, named like
    libtiff-20b7e810.so.6.3.0), from /proc/self/maps; [] where there is none."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and "libtiff" in line}
    except OSError:
        return []
    return sorted(p for p in paths if re.match(r"libtiff[-.]", os.path.basename(p)) and os.path.exists(p))


def _decode(data: bytes, policy: DecodePolicy) -> Decoded | str:
    """`decode_image` past the input checks; raises on bad data (the caller turns that into a reason)."""
    if data[:3] == b"\xff\xd8\xff":  # JPEG (and MPO): before Pillow, which walks the marker segments in Python
        problem = _jpeg_problem(data)
        if problem:
            return problem
    im = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            return f"invalid image size {width}x{height}"
        if width * height > policy.max_pixels:
            return f"image too large: {width}x{height} = {width * height:,} pixels exceeds max_pixels={policy.max_pixels:,}"
        # Counting frames walks the frame headers (and PIL checks each frame's size on the way). Pillow's TIFF
        # count parses every page's tags and is quadratic in the pages, so TIFF pages are counted here.
        frames = _tiff_pages(data) if im.format == "TIFF" else _frame_count(im)
        if isinstance(frames, str):
            return frames
        if frames > 1 and im.format != "TIFF":
            im.seek(0)
        mode, fmt = im.mode, im.format or "unknown"
        if fmt == "TIFF":  # a compressed TIFF is decoded by libtiff, in C
            _quiet_libtiff()
        im.load()  # truncated or corrupt data raises here
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


def _frame_count(im: Image.Image) -> int | str:
    """How many frames an opened image has (Pillow's count), or why they cannot be counted: a GIF cut short inside a
    later frame of its animation makes Pillow's count raise IndexError or struct.error, and its reject said only
    "cannot decode image: IndexError: index out of range" (or "error: unpack_from requires a buffer ...")."""
    try:
        return int(getattr(im, "n_frames", 1) or 1)
    except (IndexError, struct.error):
        if im.format != "GIF":
            raise
        # the count stops at the last frame it read whole (tell(), from 0): the file ends inside the next one
        return (f"truncated GIF: the file ends inside frame {im.tell() + 2} of its animation (cut short, as by an "
                "interrupted download or copy: copy it again)")


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
def _quiet_warnings(max_pixels: int) -> Iterator[None]:
    """For one decode, leaving global state as found: make PIL's DecompressionBombWarning an exception (when the
    policy allows more pixels than the warning's threshold it is silenced instead: the policy's own check, right
    after the header is parsed, is the limit then), and silence PIL's UserWarnings about corrupt metadata ("Tag
    data larger than file", "Corrupt EXIF data", ...). Those come from open, load and EXIF parsing alike, and
    would otherwise be printed once per image: `catch_warnings` resets Python's once-per-place registry."""
    soft = Image.MAX_IMAGE_PIXELS
    action = "ignore" if soft is None or max_pixels > soft else "error"
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        yield


def _jpeg_problem(data: bytes) -> str | None:
    """Why a JPEG's structure rules it out before it is decoded, or None (Pillow and libjpeg then judge the rest).

    Hostile shapes that cost far more than their bytes, which libjpeg accepts (only warning, which Pillow does not
    report): a progressive JPEG with thousands of scans (each scan is a pass over every block of the image, so a
    few hundred KB can keep a worker busy for minutes); millions of empty marker segments (Pillow walks them in
    Python, about 2 us each); and a header claiming a large image followed by a few bytes and an end marker
    (libjpeg fills the missing blocks with grey). A scan that codes DC coefficients for the first time (every
    sequential scan, and a progressive image's first DC scan) holds at least one Huffman code, so one bit, per
    block of each component in it; less data than that cannot be a complete image. Arithmetic-coded and lossless
    JPEGs, which can code a block in less than a bit, are not checked. Only the first image of the file (up to
    its end marker) is read; an MPO's further images and trailing bytes are not."""
    size, pos, scans, segments = len(data), 2, 0, 0
    blocks: dict[int, int] = {}  # component id -> blocks in a scan of that component alone (fewest per scan)
    huffman, width, height = False, 0, 0
    while pos + 4 <= size and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            return None
        segments += 1
        if segments > _MAX_JPEG_SEGMENTS:
            return (f"JPEG has more than {_MAX_JPEG_SEGMENTS:,} marker segments (real files have tens; this many "
                    f"at the 64 KB maximum each would be 655 MB): each costs Python time in the decoder")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        segment = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker in _JPEG_SOF and len(segment) >= 6:
            huffman = marker in (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman
            height, width = struct.unpack_from(">HH", segment, 1)
            sampling = [(segment[6 + 3 * k], segment[7 + 3 * k] >> 4, segment[7 + 3 * k] & 15)
                        for k in range(segment[5]) if 8 + 3 * k <= len(segment)]
            h_max = max((h for _, h, _ in sampling), default=0)
            v_max = max((v for _, _, v in sampling), default=0)
            if h_max and v_max:
                blocks = {c: _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
                          for c, h, v in sampling}
        elif marker == 0xDA and segment:  # start of scan: entropy-coded data follows up to the next marker
            scans += 1
            if scans > _MAX_JPEG_SCANS:
                return (f"JPEG has more than {_MAX_JPEG_SCANS} scans (real encoders write about 10; each scan is a pass "
                        f"over the whole image, so this many cost far more CPU than the file's size)")
            components = [segment[1 + 2 * k] for k in range(segment[0]) if 1 + 2 * k < len(segment)]
            first_dc = len(segment) >= 4 + 2 * segment[0] and segment[1 + 2 * segment[0]] == 0 and (
                segment[3 + 2 * segment[0]] >> 4 == 0)  # Ss == 0 and Ah == 0
            found = _JPEG_SCAN_END.search(data, pos)
            end = found.start() if found else size
            needed = sum(blocks.get(c, 0) for c in components) if huffman and first_dc else 0
            if 8 * (end - pos) < needed:
                return (f"JPEG data too short for its {width}x{height} size: a scan has {end - pos:,} bytes, at least "
                        f"{_ceil_div(needed, 8):,} needed (truncated or corrupt; libjpeg would fill the rest with grey)")
            pos = end
    return None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _tiff_pages(data: bytes) -> int:
    """Pages of a TIFF (classic or BigTIFF), counted by following the chain of page offsets (IFDs). A page is counted
    when its whole directory lies in the file; the chain ends at offset 0, at a page already seen (a loop), or at
    a directory past the end of the file (the pages before it are still usable). At least 1: Pillow has opened
    page 1."""
    order = "<" if data[:2] == b"II" else ">"
    big = len(data) >= 16 and struct.unpack_from(order + "H", data, 2)[0] == 43
    offset_format, count_format, entry_size = (order + "Q", order + "Q", 20) if big else (order + "I", order + "H", 12)
    offset_size, count_size = struct.calcsize(offset_format), struct.calcsize(count_format)
    offset = struct.unpack_from(offset_format, data, 8 if big else 4)[0] if len(data) >= 16 else 0
    seen: set[int] = set()
    while offset and offset not in seen and offset + count_size <= len(data):
        next_at = offset + count_size + entry_size * struct.unpack_from(count_format, data, offset)[0]
        if next_at + offset_size > len(data):
            break
        seen.add(offset)
        offset = struct.unpack_from(offset_format, data, next_at)[0]
    return max(len(seen), 1)


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
    # float64: the range of float32 values near its limits (e.g. -3e38..3e38) overflows float32. Casting a
    # signalling NaN (garbage data read as floats) raises numpy's "invalid value" warning; NaN becomes 0 anyway.
    # In place from here on: at 64 M pixels each float64 temporary is 512 MB.
    with np.errstate(invalid="ignore"):
        values = arr.astype(np.float64)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        lo, hi = 0.0, 1.0  # float images conventionally hold 0..1
    else:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    values -= lo
    values *= 255.0 / (hi - lo)
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def _flatten(rgba: np.ndarray, alpha: str) -> np.ndarray:
    """Composite straight (non-premultiplied) RGBA on white/black, or drop alpha; exact integer rounding."""
    if alpha == "drop":
        return rgba[:, :, :3]
    background = 255 if alpha == "white" else 0
    # In place (max value 255 * 255 + 127 fits uint16): at 64 M pixels each uint16 RGB temporary is 384 MB.
    rgb = rgba[:, :, :3].astype(np.uint16)
    a = rgba[:, :, 3:4].astype(np.uint16)
    rgb *= a
    if background:
        a ^= 255  # 255 - a for 0..255
        a *= background
        rgb += a
    rgb += 127
    rgb //= 255
    return rgb.astype(np.uint8)
