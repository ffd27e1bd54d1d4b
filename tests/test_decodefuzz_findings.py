"""Findings of fuzzing pipeline/decode.py (seeded driver kept outside the repo), each reproduced with a small file
generated here: hostile JPEGs that cost minutes of CPU or turn a few bytes into a huge grey image, TIFF page
counting that was quadratic and rejected a good first page over a broken later one, and Pillow's metadata
warnings printed once per image into the worker's log."""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from pipeline.decode import Decoded, decode_image


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _markers(data: bytes, code: int) -> list[int]:
    """Offsets of a JPEG marker (0xFF, code) outside entropy-coded data (no byte-stuffed 0xFF 0x00 matches it)."""
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == code]


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its SOF header claiming width x height."""
    sof = (_markers(data, 0xC0) + _markers(data, 0xC2))[0]
    patched = bytearray(data)
    struct.pack_into(">HH", patched, sof + 5, height, width)
    return bytes(patched)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- JPEG: scan bombs and a few bytes claiming a huge image -------------------------------------------------------


def test_progressive_jpeg_with_thousands_of_repeated_scans_is_a_reject() -> None:
    """A 16 M-pixel progressive JPEG with one AC scan repeated 5,000 times (328 KB) kept a worker busy past 10 s (and
    the cost grows with both: each scan is a pass over every block). Real encoders write about 10 scans."""
    base = _save(Image.new("L", (256, 256), 128), "JPEG", progressive=True)
    sos = _markers(base, 0xDA)
    eoi = base.rfind(b"\xff\xd9")
    scan = base[sos[1]:sos[2]]
    data = base[:eoi] + scan * 200 + b"\xff\xd9"
    reason = decode_image(data)
    assert isinstance(reason, str), "a JPEG with 200 extra scans was decoded"
    assert "scans" in reason and "more than 100" in reason
    # The unrepeated file (Pillow's usual progression) is a good image.
    assert isinstance(decode_image(base), Decoded)


def test_jpeg_claiming_a_huge_size_with_a_few_bytes_is_a_reject_not_a_grey_image() -> None:
    """A 16x16 JPEG (631 bytes) whose SOF claims 7999x7999 decoded, in 4 s, to a 64 M-pixel image that was grey but
    for its first block: libjpeg fills the missing blocks and only warns, which Pillow does not report."""
    small = _save(Image.fromarray(_noise(16, 16)), "JPEG")
    for progressive in (False, True):
        data = _with_jpeg_size(_save(Image.fromarray(_noise(16, 16)), "JPEG", progressive=progressive), 3000, 2000)
        reason = decode_image(data)
        assert isinstance(reason, str), f"a {len(data)}-byte JPEG decoded as 3000x2000 (progressive={progressive})"
        assert "3000x2000" in reason and "truncated" in reason
    assert isinstance(decode_image(small), Decoded)


def test_jpeg_with_a_million_empty_segments_is_a_reject() -> None:
    """2.5 M empty comment segments (10 MB) took 5 s to decode, each walked by Pillow in Python: a 512 MB file (the
    default --max-image-mb) would take minutes. The segments are counted before Pillow sees the file."""
    good = _save(Image.fromarray(_noise(8, 8)), "JPEG")
    data = good[:2] + b"\xff\xfe\x00\x02" * 10_001 + good[2:]
    reason = decode_image(data)
    assert isinstance(reason, str) and "more than 10,000 marker segments" in reason
    assert isinstance(decode_image(good[:2] + b"\xff\xfe\x00\x02" * 100 + good[2:]), Decoded)


@pytest.mark.parametrize("params", [
    {}, {"progressive": True}, {"subsampling": 0}, {"restart_marker_blocks": 1}, {"quality": 1},
])
def test_the_most_compressible_real_jpegs_still_decode(params) -> None:
    """The least data a real encoder writes per block (a flat image, every block the same) is above the bound the
    truncation check uses, with and without progression, chroma subsampling and restart markers."""
    for mode, colour in (("L", 77), ("RGB", (12, 200, 90)), ("CMYK", (0, 0, 0, 0))):
        data = _save(Image.new(mode, (1024, 640), colour), "JPEG", **params)
        out = decode_image(data)
        assert isinstance(out, Decoded), f"{mode} {params}: {out}"
        assert out.pixels.shape == (640, 1024, 3)


# --- TIFF pages ---------------------------------------------------------------------------------------------------


def _tiff_pages(pages: list[Image.Image]) -> tuple[bytearray, int]:
    """A multi-page little-endian TIFF and the offset of IFD0's next-IFD pointer."""
    data = bytearray(_save(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    ifd0 = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[ifd0:ifd0 + 2])[0]
    return data, ifd0 + 2 + 12 * entries


def test_tiff_with_a_broken_next_page_pointer_decodes_its_first_page() -> None:
    """A TIFF whose first page is intact but whose pointer to page 2 points past the end was a reject ('TypeError:
    Missing dimensions'), raised while counting pages, though only the first page is used."""
    pages = [Image.new("RGB", (8, 8), (200, 10, 10)), Image.new("RGB", (8, 8), (10, 10, 200))]
    data, next_at = _tiff_pages(pages)
    struct.pack_into("<I", data, next_at, 0x7FFFFFF0)
    out = decode_image(bytes(data))
    assert isinstance(out, Decoded), out
    assert out.frames == 1 and out.pixels[0, 0].tolist() == [200, 10, 10]


def test_tiff_pages_are_counted_without_parsing_each_page(monkeypatch) -> None:
    """Pillow's n_frames parses every page's tags and checks each against a list of the pages seen so far: 20,000
    pages (2.5 MB) took 5 s, 4 times as long for twice the pages. Counting now follows the chain of page offsets."""
    first = Image.new("L", (4, 4), 9)
    data, next_at = _tiff_pages([first])
    ifd0 = struct.unpack("<I", data[4:8])[0]
    ifd = bytes(data[ifd0:next_at])
    struct.pack_into("<I", data, next_at, len(data))
    pages = 3000
    for k in range(1, pages):
        here = len(data)
        data += ifd + struct.pack("<I", here + len(ifd) + 4 if k < pages - 1 else 0)
    loads = []
    original = TiffImagePlugin.ImageFileDirectory_v2.load
    monkeypatch.setattr(TiffImagePlugin.ImageFileDirectory_v2, "load",
                        lambda self, fp: loads.append(1) or original(self, fp))
    out = decode_image(bytes(data))
    assert isinstance(out, Decoded), out
    assert out.frames == pages
    assert len(loads) < 10, f"{len(loads)} TIFF directories parsed to count {pages} pages"
    # A page chain that loops back is counted once per page.
    looped, next_at = _tiff_pages([first, first])
    struct.pack_into("<I", looped, next_at, struct.unpack("<I", looped[4:8])[0])
    assert decode_image(bytes(looped)).frames == 1


# --- warnings -----------------------------------------------------------------------------------------------------


def test_corrupt_metadata_is_not_a_warning_per_image() -> None:
    """A TIFF with a tag claiming more data than the file holds printed Pillow's 'UserWarning: Tag data larger than
    file' for every such image (decode_image's own warnings.catch_warnings resets Python's once-per-place
    registry), flooding worker logs; a float TIFF with values near the float32 limits printed numpy's 'overflow
    encountered in subtract' (and, with a signalling NaN, 'invalid value encountered in cast'). The pixels are
    usable, so neither is worth a line per image."""
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
    data = bytearray(_save(Image.fromarray(arr), "TIFF"))
    ifd0 = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd0:ifd0 + 2])[0]):
        entry = ifd0 + 2 + 12 * k
        if struct.unpack("<H", data[entry:entry + 2])[0] == 273:  # StripOffsets: claim 70,000 strips
            struct.pack_into("<I", data, entry + 4, 70_000)
    signalling_nan = np.array([0x7F800001], dtype=np.uint32).view(np.float32)[0]  # what garbage read as floats holds
    floats = np.array([[-3e38, 0.0, 3e38, signalling_nan]], dtype=np.float32)
    extreme = _save(Image.fromarray(floats, "F"), "TIFF")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corrupt = decode_image(bytes(data))
        decoded_floats = decode_image(extreme)
    assert [str(w.message) for w in caught] == []
    assert isinstance(corrupt, str | Decoded)  # a reject or the pixels, but no warning either way
    assert isinstance(decoded_floats, Decoded) and decoded_floats.pixels[0, :, 0].tolist() == [0, 128, 255, 128]


# --- memory -------------------------------------------------------------------------------------------------------


def test_flattening_transparency_keeps_memory_near_the_image_size() -> None:
    """An 8000x8000 RGBA PNG (the default --max-pixels) took 1.8 GB over the worker's baseline to decode: compositing
    on white made a fresh uint16 array at each step (26 bytes of numpy memory per pixel). In place it is 1.2 GB
    (15 bytes per pixel: the RGBA array, the uint16 RGB and alpha, the uint8 result)."""
    side = 500
    rgba = np.random.default_rng(4).integers(0, 256, (side, side, 4), dtype=np.uint8)
    data = _save(Image.fromarray(rgba), "PNG", compress_level=1)
    tracemalloc.start()
    try:
        out = decode_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(out, Decoded)
    rgb, alpha = rgba[:, :, :3].astype(np.int64), rgba[:, :, 3:].astype(np.int64)
    np.testing.assert_array_equal(out.pixels, (rgb * alpha + 255 * (255 - alpha) + 127) // 255)
    assert peak / (side * side) < 20, f"{peak / (side * side):.1f} bytes of numpy memory per pixel"
