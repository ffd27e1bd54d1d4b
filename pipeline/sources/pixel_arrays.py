"""Parquet image columns of pixel arrays, not encoded files: what `ray.data.read_images(...).write_parquet(...)` writes
(Ray's tensor extension types, fixed-shape or variable-shaped), pyarrow's `fixed_shape_tensor`, and nested lists
(`list<list<list<uint8>>>`). A cell of shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) (grey, grey with
alpha, RGB, RGBA) is encoded as a lossless PNG and handed to the decoding every other image takes, when its values
are uint8, of another integer type all within 0..255 (nested Python lists arrive as int64), or uint16 (16-bit
cameras): made 8-bit as the decoder makes the 16-bit PNG of the same pixels (`png_pixels`). A cell of another dtype or
shape is its row's reject, saying what it holds and what is read. Such a file was one '#unreadable' reject ('no image
column'), none of its images purified.

The types are told by their Arrow extension names, whether the process has Ray's types registered (a Ray worker: the
column's type is the extension type) or not (the column is the storage type, its field's metadata naming the
extension), so no Ray class is needed here."""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

# The `original_format` of a row whose image was a pixel array (an image file's is its format's name: PNG, JPEG, ...)
ARRAY_FORMAT = "tensor"
RAY_FIXED = frozenset({"ray.data.arrow_tensor", "ray.data.arrow_tensor_v2"})
RAY_VARIABLE = "ray.data.arrow_variable_shaped_tensor"
ARROW_FIXED = "arrow.fixed_shape_tensor"
TENSOR_EXTENSIONS = RAY_FIXED | {RAY_VARIABLE, ARROW_FIXED}
ACCEPTED = ("pixel arrays of shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4), of uint8 or uint16 values "
            "(or other integers within 0..255), are read")
_CHANNELS = (1, 2, 3, 4)
# `original_mode` of a 16-bit cell with more than one channel, which the decoder is handed as 8-bit (`png_pixels`); a grey
# one's is the decoder's own, "I;16", as for a 16-bit grey PNG
WIDE_MODES = {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}


class ArrayProblem(ValueError):
    """Why a cell of a pixel-array column is no image the job reads, said as its row's reject."""


def _extension(field: pa.Field) -> tuple[str, Any] | None:
    """(extension name, the type when it is registered here, else its serialized metadata) of a column of an Arrow
    extension type, or None."""
    t = field.type
    if isinstance(t, pa.BaseExtensionType):
        return t.extension_name, t
    meta = field.metadata or {}
    name = meta.get(b"ARROW:extension:name")
    if name is None:
        return None
    return name.decode("utf-8", "replace"), meta.get(b"ARROW:extension:metadata", b"")


def _list_depth(t: pa.DataType) -> tuple[int, pa.DataType]:
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        depth, t = depth + 1, t.value_type
    return depth, t


def is_tensor_extension(field: pa.Field) -> bool:
    """Whether `field` is of a tensor extension type (registered here or named in its metadata): never image bytes,
    even where its storage is a list<uint8>."""
    ext = _extension(field)
    return ext is not None and ext[0] in TENSOR_EXTENSIONS


def is_pixel_array_column(field: pa.Field) -> bool:
    """Whether `field` can hold pixel arrays: a tensor extension type, or lists of lists (of lists) of integers. Any
    dtype: a cell that is no image read (floats, values past 0..255) is its row's reject, saying so, rather than the
    file's 'no image column'."""
    if _extension(field) is not None:
        return is_tensor_extension(field)
    depth, leaf = _list_depth(field.type)
    return depth in (2, 3) and pa.types.is_integer(leaf)


def _fixed_shape(field: pa.Field, ext: tuple[str, Any]) -> tuple[int, ...]:
    """The shape every cell of a fixed-shape tensor column has: the registered type's, else its metadata's (JSON, as
    Ray has written it since 2.55 and before 2.49; those versions between pickled it, which is not read here)."""
    name, found = ext
    if isinstance(found, pa.BaseExtensionType) and hasattr(found, "shape"):
        return tuple(int(n) for n in found.shape)
    try:
        shape = json.loads(found)
        if name == ARROW_FIXED:
            shape = shape["shape"]
        return tuple(int(n) for n in shape)
    except (ValueError, TypeError, KeyError) as err:
        raise ArrayProblem(f"its column's type ({name}) gives no shape that can be read ({err}): write the "
                           "column with Ray 2.55 or later, or as encoded images") from err


def _permutation(field: pa.Field) -> list[int] | None:
    """The permutation of an Arrow fixed_shape_tensor column (its `shape` is the values' physical, row-major one), or
    None. Applied here: pyarrow's own `FixedShapeTensorScalar.to_numpy` fails on one ('strides must not involve buffer
    over run', pyarrow 26), which made every row of such a file a reject."""
    ext = _extension(field)
    if ext is None or ext[0] != ARROW_FIXED:
        return None
    found = ext[1]
    if isinstance(found, pa.BaseExtensionType):
        permutation = getattr(found, "permutation", None)
    else:
        try:
            permutation = json.loads(found).get("permutation")
        except (ValueError, AttributeError):
            return None  # its shape could not be read either: `_fixed_shape` says so
    return [int(n) for n in permutation] if permutation else None


def _flat(cell: pa.Scalar, field: pa.Field) -> tuple[pa.Array, tuple[int, ...] | None]:
    """(the cell's values, flat, as Arrow holds them: nothing copied; its shape, None for nested lists whose rows
    differ in length)."""
    ext = _extension(field)
    storage = cell.value if isinstance(cell, pa.ExtensionScalar) else cell
    if ext is not None and ext[0] == RAY_VARIABLE:
        return storage["data"].values, tuple(storage["shape"].as_py())
    if ext is not None:
        return storage.values, _fixed_shape(field, ext)
    values: pa.Array = storage.values
    shape: list[int] | None = [len(values)]
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise ArrayProblem("a nested list with a null row")
        lengths = set(pc.list_value_length(values).to_pylist()) if len(values) else {0}
        if shape is not None:
            shape = [*shape, lengths.pop()] if len(lengths) == 1 else None
        values = values.flatten()
    return values, None if shape is None else tuple(shape)


def _itemsize(t: pa.DataType) -> int:
    try:
        return max(1, t.bit_width // 8)
    except ValueError:  # not of a fixed width (text): its size is not what a limit on pixels is about
        return 1


def array_cell_size(cell: pa.Scalar, field: pa.Field) -> int | None:
    """How many bytes a pixel-array cell's values take (its raw size, what --max-image-mb limits), from Arrow's
    lengths (nothing copied); None for a null cell."""
    if not cell.is_valid:
        return None
    try:
        values, _ = _flat(cell, field)
    except ArrayProblem:
        return None  # the conversion says why, as its row's reject
    return len(values) * _itemsize(values.type)


def _what(dtype: Any, shape: tuple[int, ...]) -> str:
    article = "an" if str(dtype).startswith(("int", "object")) else "a"  # "a uint8", "an int64"
    return f"{article} {dtype} array of shape {tuple(shape)}"


def cell_pixels(cell: pa.Scalar, field: pa.Field) -> np.ndarray:
    """The cell's pixels as an H x W (grey) or H x W x C (C = 2 grey with alpha, 3 RGB, 4 RGBA) array of uint8, or
    of uint16 as given (`png_pixels` makes it 8-bit); integers of another type, all within 0..255, as uint8.
    ArrayProblem says why a cell is none (null, floats, another shape, values past 0..255)."""
    if not cell.is_valid:
        raise ArrayProblem("no pixel array (null)")
    values, shape = _flat(cell, field)
    if shape is None:
        raise ArrayProblem("nested lists whose rows differ in length, not an array")
    if values.null_count:
        raise ArrayProblem(f"an array of shape {shape} with {values.null_count} null value(s)")
    if len(values) != math.prod(shape):
        raise ArrayProblem(f"{len(values)} values, which do not make its shape {shape}")
    pixels = values.to_numpy(zero_copy_only=False).reshape(shape)
    permutation = _permutation(field)
    if permutation:  # logical dimension i is physical dimension permutation[i] (Arrow's fixed_shape_tensor)
        pixels = pixels.transpose(permutation)
    shape = pixels.shape
    fits = (len(shape) == 2 or (len(shape) == 3 and shape[2] in _CHANNELS)) and 0 not in shape
    integers = pixels.dtype.kind in "iu"
    if not fits or not integers:
        hint = ""
        if len(shape) == 3 and shape[0] in _CHANNELS and shape[2] > max(_CHANNELS):
            hint = " (channels first: transpose it to (H, W, C))"
        elif pixels.dtype.kind == "f":
            hint = " (scale it to 0..255 and cast it to uint8)"
        raise ArrayProblem(f"{_what(pixels.dtype, shape)}{hint}, where only {ACCEPTED}")
    if pixels.dtype not in (np.uint8, np.uint16):
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 255:  # 16-bit pixels kept as int32, or values that are no pixels at all
            raise ArrayProblem(f"{_what(pixels.dtype, shape)} with values {low}..{high}, outside 0..255 (write 8-bit "
                               f"pixels as 0..255, 16-bit ones as uint16), where only {ACCEPTED}")
        pixels = pixels.astype(np.uint8)  # the same 8-bit image as the uint8 cell of these values
    return pixels[:, :, 0] if pixels.ndim == 3 and shape[2] == 1 else pixels


def pixels_sha256(pixels: np.ndarray) -> str:
    """The `source_sha256` of a pixel-array row (`cell_pixels`): of its shape as text (`32x48x3`; a grey one's
    `32x48x1`) and a newline, then its pixels, row by row. A uint16 cell's shape is followed by ` uint16` and its
    values, 2 bytes each, little-endian: it is not the source the uint8 cell of its 8-bit values is. Of the pixels,
    not of the PNG made of them, which another zlib may make otherwise: a file touched or written again with the same
    pixels (as uint8, or as int64 within 0..255) is told as no change."""
    h, w = pixels.shape[:2]
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    if pixels.dtype == np.uint16:
        header, data = f"{h}x{w}x{channels} uint16\n", np.ascontiguousarray(pixels, dtype="<u2")
    else:
        header, data = f"{h}x{w}x{channels}\n", np.ascontiguousarray(pixels)
    return hashlib.sha256(header.encode() + data.tobytes()).hexdigest()


def pixels_mode(pixels: np.ndarray) -> str | None:
    """The `original_mode` of a cell (`cell_pixels`) where the decoder's would not say it: `LA;16`, `RGB;16` or
    `RGBA;16` for 16-bit pixels with more than one channel; None where the decoder tells it (L, LA, RGB, RGBA, and a
    16-bit grey cell's I;16)."""
    return WIDE_MODES.get(pixels.shape[2]) if pixels.dtype == np.uint16 and pixels.ndim == 3 else None


def png_pixels(pixels: np.ndarray) -> np.ndarray:
    """16-bit pixels made 8-bit as the decoder makes the 16-bit PNG of them, so that both purify alike: grey is left
    16-bit, for the decoder to scale as it scales a 16-bit grey PNG (to nearest, 65535 -> 255); grey with alpha, RGB
    and RGBA keep the high byte of each value, as Pillow reads a 16-bit colour PNG (it hands the decoder 8 bits a value).
    8-bit pixels as they are."""
    if pixels.dtype != np.uint16 or pixels.ndim == 2:
        return pixels
    return (pixels >> 8).astype(np.uint8)


def pixels_png(pixels: np.ndarray) -> bytes:
    """A lossless PNG of `pixels` (`cell_pixels`): grey, grey with alpha, RGB or RGBA as the array is, a uint16 grey
    one 16-bit (`png_pixels` says how 16 bits are made 8)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(png_pixels(pixels))).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
