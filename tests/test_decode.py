"""Tests of pipeline.decode on a corpus generated here with PIL/numpy (no fixtures on disk).

Each case is a kind of input the job meets in untrusted object storage: broken files, every PIL mode
we convert, transparency, 16-bit, CMYK, tiny and huge (header-only) images, animation and EXIF rotation.
"""

from __future__ import annotations

import io
import random
import struct
import sys
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from pipeline.decode import Decoded, DecodePolicy, decode_image, encode_png, sniff_is_image_name

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ok(data: bytes, policy: DecodePolicy = DecodePolicy()) -> Decoded:  # noqa: B008 - frozen dataclass
    out = decode_image(data, policy)
    assert isinstance(out, Decoded), out
    px = out.pixels
    assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    assert px.flags.c_contiguous and px.flags.writeable
    return out


def _err(data: bytes, policy: DecodePolicy = DecodePolicy()) -> str:  # noqa: B008 - frozen dataclass
    out = decode_image(data, policy)
    assert isinstance(out, str), f"expected a reject, got {out!r}"
    assert "\n" not in out and "Traceback" not in out and len(out) <= 300
    return out


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR is patched (with a valid CRC) to claim width x height."""
    raw = bytearray(_save(Image.new("L", (8, 8)), "PNG"))
    assert raw[12:16] == b"IHDR"
    struct.pack_into(">II", raw, 16, width, height)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


# --- broken or non-image input -----------------------------------------------------------------


def test_zero_byte_file() -> None:
    assert _err(b"") == "empty file"


def test_truncated_png() -> None:
    data = _save(Image.fromarray(_noise(64, 64)), "PNG")
    reason = _err(data[: len(data) // 2])
    assert "truncated" in reason and "OSError" in reason


def test_truncated_jpeg() -> None:
    data = _save(Image.fromarray(_noise(64, 64)), "JPEG", quality=95)
    reason = _err(data[: len(data) * 2 // 3])
    assert "truncated" in reason and "OSError" in reason


def test_truncation_is_not_hidden_by_global_state() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the module must not have switched it on


def test_random_bytes_and_text() -> None:
    rng = random.Random(0)
    assert _err(bytes(rng.getrandbits(8) for _ in range(4096))) == "not a recognised image format"
    assert _err(b"name,label\ncat.png,3\n" * 20) == "not a recognised image format"
    # Formats PIL knows but the job does not accept (no magic number / external decoders) are refused too.
    tga = _save(Image.new("RGB", (4, 4), RED), "TGA")
    assert _err(tga) == "not a recognised image format"


def test_non_bytes_input_is_a_reject() -> None:
    assert "expected bytes" in decode_image("not bytes")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt TIFF tags we made
def test_fuzzed_images_never_raise() -> None:
    rng = random.Random(1)
    seeds = [
        _save(Image.fromarray(_noise(16, 16)), "PNG"),
        _save(Image.fromarray(_noise(16, 16)), "JPEG"),
        _save(Image.fromarray(_noise(16, 16)).convert("P"), "GIF"),
        _save(Image.fromarray(_noise(16, 16)), "TIFF"),
    ]
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            cut = rng.choice([len(data), rng.randrange(1, len(data))])
            out = decode_image(bytes(data[:cut]))
            assert isinstance(out, Decoded | str)
            if isinstance(out, str):
                assert "\n" not in out and "Traceback" not in out


@pytest.mark.skipif(not features.check("libtiff"), reason="Pillow built without libtiff")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libtiff is quieted where /proc/self/maps finds it")
def test_damaged_compressed_tiffs_are_rejects_that_libtiff_prints_nothing_about(capfd) -> None:
    # libtiff wrote "ZIPDecode: Decoding error at scanline 0, ..." to the worker's stderr from C, past logging
    arr = _noise(16, 16)
    for compression in ("tiff_lzw", "tiff_adobe_deflate", "jpeg"):
        data = bytearray(_save(Image.fromarray(arr), "TIFF", compression=compression))
        data[8:40] = b"\xff" * 32  # the strip's first bytes (Pillow writes the strip right after the header)
        reason = decode_image(bytes(data))
        assert isinstance(reason, str) and reason.startswith("cannot decode image"), (compression, reason)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    for compression in ("tiff_lzw", "tiff_adobe_deflate", "packbits", "raw"):  # sound ones decode as before
        np.testing.assert_array_equal(_ok(_save(Image.fromarray(arr), "TIFF", compression=compression)).pixels, arr)
    jpeg = _ok(_save(Image.fromarray(arr), "TIFF", compression="jpeg", quality=95))
    assert jpeg.format == "TIFF" and jpeg.pixels.shape == (16, 16, 3)


# --- content, not name -------------------------------------------------------------------------


def test_png_named_jpg_decodes_from_content() -> None:
    arr = _noise(5, 6)
    data = _save(Image.fromarray(arr), "PNG")
    name = "photos/IMG_0001.jpg"
    assert sniff_is_image_name(name)
    out = _ok(data)
    assert out.format == "PNG" and out.mode == "RGB" and out.frames == 1
    np.testing.assert_array_equal(out.pixels, arr)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", True), ("A.JPG", True), ("x.Jpeg", True), ("s3://b/k/y.bmp", True), ("t.tif", True),
        ("t.TIFF", True), ("p.ppm", True), ("p.pgm", True), ("p.pbm", True), ("w.webp", True), ("g.GIF", True),
        ("notes.txt", False), ("archive.tar", False), ("png", False), ("dir.png/file", False), ("", False),
        ("image.png.json", False), ("C:\\data\\x.png", True),
    ],
)
def test_sniff_is_image_name(name: str, expected: bool) -> None:
    assert sniff_is_image_name(name) is expected


# --- modes -------------------------------------------------------------------------------------


def test_rgb_lossless_formats_are_exact() -> None:
    arr = _noise(9, 13, seed=2)
    im = Image.fromarray(arr)
    cases = {"PNG": {}, "BMP": {}, "TIFF": {}, "PPM": {}}
    if features.check("webp"):
        cases["WEBP"] = {"lossless": True}
    for fmt, params in cases.items():
        out = _ok(_save(im, fmt, **params))
        assert out.format == fmt and out.mode == "RGB"
        np.testing.assert_array_equal(out.pixels, arr, err_msg=fmt)


def test_grayscale_l() -> None:
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    out = _ok(_save(Image.fromarray(gray), "PNG"))
    assert out.mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(out.pixels[:, :, c], gray)


def test_bilevel_1() -> None:
    im = Image.new("1", (3, 2), 0)
    im.putpixel((1, 0), 1)
    out = _ok(_save(im, "PNG"))
    assert out.mode == "1"
    assert tuple(out.pixels[0, 1]) == WHITE and tuple(out.pixels[0, 0]) == BLACK


def test_la_flattened_on_white() -> None:
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (100, 0))  # fully transparent
    im.putpixel((1, 0), (100, 255))  # opaque grey
    out = _ok(_save(im, "PNG"))
    assert out.mode == "LA"
    assert tuple(out.pixels[0, 0]) == WHITE and tuple(out.pixels[0, 1]) == (100, 100, 100)


@pytest.mark.parametrize(
    ("alpha", "transparent", "half"),
    [("white", WHITE, (255, 127, 127)), ("black", BLACK, (128, 0, 0)), ("drop", RED, RED)],
)
def test_rgba_alpha_policy(alpha: str, transparent: tuple, half: tuple) -> None:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((1, 0), (255, 0, 0, 128))  # half transparent red
    im.putpixel((2, 0), (0, 0, 255, 255))  # opaque blue
    out = _ok(_save(im, "PNG"), DecodePolicy(alpha=alpha))
    assert out.mode == "RGBA"
    assert tuple(out.pixels[0, 0]) == transparent
    assert tuple(out.pixels[0, 1]) == half
    assert tuple(out.pixels[0, 2]) == BLUE


def _palette_image() -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([*RED, *GREEN] + [0] * (3 * 254))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    return im


def test_palette_without_transparency() -> None:
    out = _ok(_save(_palette_image(), "PNG"))
    assert out.mode == "P"
    assert tuple(out.pixels[0, 0]) == RED and tuple(out.pixels[0, 1]) == GREEN


def test_palette_with_transparency() -> None:
    data = _save(_palette_image(), "PNG", transparency=0)  # index 0 (red) transparent
    out = _ok(data)
    assert out.mode == "P"
    assert tuple(out.pixels[0, 0]) == WHITE and tuple(out.pixels[0, 1]) == GREEN
    assert tuple(_ok(data, DecodePolicy(alpha="black")).pixels[0, 0]) == BLACK
    assert tuple(_ok(data, DecodePolicy(alpha="drop")).pixels[0, 0]) == RED


def test_rgb_with_trns_colour_key() -> None:
    im = Image.new("RGB", (2, 1), RED)
    im.putpixel((1, 0), BLUE)
    out = _ok(_save(im, "PNG", transparency=RED))
    assert tuple(out.pixels[0, 0]) == WHITE and tuple(out.pixels[0, 1]) == BLUE


def test_16_bit_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    out = _ok(_save(Image.fromarray(values), "PNG"))
    assert out.mode == "I;16"
    np.testing.assert_array_equal(out.pixels[0, :, 0], [0, 100, 128, 255])
    np.testing.assert_array_equal(out.pixels[:, :, 0], out.pixels[:, :, 2])
    # 16-bit PGM opens in mode I with the same 0..65535 range.
    pgm = _ok(_save(Image.fromarray(values).convert("I"), "PPM"))
    assert pgm.mode == "I"
    np.testing.assert_array_equal(pgm.pixels[0, :, 0], [0, 100, 128, 255])


def test_32_bit_and_float_are_stretched() -> None:
    wide = _ok(_save(Image.fromarray(np.array([[-5, 0, 70000]], dtype=np.int32)), "TIFF"))
    assert wide.mode == "I"
    assert list(wide.pixels[0, :, 0]) == [0, 0, 255]
    flt = _ok(_save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), "TIFF"))
    assert flt.mode == "F"
    assert list(flt.pixels[0, :, 0]) == [0, 128, 255]


def test_cmyk_jpeg() -> None:
    out = _ok(_save(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=95))  # pure cyan
    assert out.mode == "CMYK" and out.format == "JPEG"
    np.testing.assert_allclose(out.pixels[4, 4].astype(int), [0, 255, 255], atol=3)


@pytest.mark.parametrize(("w", "h"), [(1, 1), (1, 7), (7, 1)])
def test_tiny_images(w: int, h: int) -> None:
    arr = _noise(h, w, seed=3)
    out = _ok(_save(Image.fromarray(arr), "PNG"))
    assert out.pixels.shape == (h, w, 3)
    np.testing.assert_array_equal(out.pixels, arr)
    assert _ok(_save(Image.fromarray(arr), "JPEG")).pixels.shape == (h, w, 3)


# --- size limits -------------------------------------------------------------------------------


def test_header_claiming_huge_size_is_refused_before_decoding(monkeypatch) -> None:
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    pngs = {size: _png_claiming(size, size) for size in (9000, 10_000, 20_000)}
    # every decode of an opened image's pixels goes through ImageFile.load: none may (a refusal from the header
    # alone), which a bound on the time taken said only by chance on a loaded machine
    loaded, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self, *args: loaded.append(self.size) or load(self, *args))
    # 9000 x 9000 = 81 M: over our 64 M default, under PIL's own ~89 M guard -> our check.
    reason = _err(pngs[9000])
    assert reason.startswith("image too large") and "max_pixels=64,000,000" in reason and "9000x9000" in reason
    # 10000 x 10000 = 100 M: over PIL's warning limit; with the default policy the warning is a refusal.
    reason = _err(pngs[10_000])
    assert reason.startswith("image too large") and "DecompressionBomb" in reason
    # 20000 x 20000 = 400 M: PIL's hard error.
    reason = _err(pngs[20_000])
    assert reason.startswith("image too large")
    assert loaded == []  # nothing was decompressed or allocated
    assert warnings.filters == filters_before and Image.MAX_IMAGE_PIXELS == limit_before


def test_max_pixels_policy_on_real_image() -> None:
    data = _save(Image.fromarray(_noise(20, 20)), "PNG")
    assert _err(data, DecodePolicy(max_pixels=399)).startswith("image too large: 20x20 = 400 pixels")
    assert _ok(data, DecodePolicy(max_pixels=400)).pixels.shape == (20, 20, 3)


def test_concurrent_decodes_keep_warning_filters() -> None:
    filters_before = list(warnings.filters)
    good = _save(Image.fromarray(_noise(8, 8)), "PNG")
    bomb = _png_claiming(10_000, 10_000)
    inputs = [good, bomb] * 20
    with ThreadPoolExecutor(max_workers=4) as pool:
        policy = DecodePolicy(max_pixels=Image.MAX_IMAGE_PIXELS)  # the bomb trips PIL's warning, made an error
        results = list(pool.map(lambda d: decode_image(d, policy), inputs))
    assert all(isinstance(r, Decoded) for r in results[::2])
    assert all(isinstance(r, str) and r.startswith("image too large") for r in results[1::2])
    assert warnings.filters == filters_before
    assert threading.active_count() >= 1


def test_max_pixels_above_pils_warning_threshold_is_honoured() -> None:
    """--max-pixels 150000000 was accepted, yet a 100 M-pixel image was still refused by PIL's 89 M warning
    ('DecompressionBombWarning ... exceeds limit of 89478485 pixels'): the option was silently capped. Now the
    policy's own limit applies up to the most PIL opens at all, and a policy beyond that is refused when made."""
    filters_before = list(warnings.filters)
    data = _save(Image.new("L", (10_000, 10_000), 77), "PNG")
    decoded = _ok(data, DecodePolicy(max_pixels=150_000_000))
    assert decoded.pixels.shape == (10_000, 10_000, 3) and decoded.pixels[0, 0].tolist() == [77, 77, 77]
    del decoded
    assert _err(data, DecodePolicy(max_pixels=99_999_999)) == (
        "image too large: 10000x10000 = 100,000,000 pixels exceeds max_pixels=99,999,999")
    hard = 2 * Image.MAX_IMAGE_PIXELS
    assert DecodePolicy(max_pixels=hard).max_pixels == hard
    with pytest.raises(ValueError, match=r"max_pixels must be at most 178,956,970 .*got 178,956,971"):
        DecodePolicy(max_pixels=hard + 1)
    assert warnings.filters == filters_before


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="alpha"):
        DecodePolicy(alpha="grey")
    with pytest.raises(ValueError, match="max_pixels"):
        DecodePolicy(max_pixels=0)


# --- animation and orientation -----------------------------------------------------------------


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in (RED, GREEN, BLUE)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    out = _ok(data)
    assert out.format == "GIF" and out.frames == 3 and out.pixels.shape == (6, 8, 3)
    assert tuple(out.pixels[3, 4]) == RED


@pytest.mark.skipif(not features.check("webp"), reason="PIL built without WebP")
def test_animated_webp_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in (RED, GREEN)]
    data = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=40)
    out = _ok(data)
    assert out.format == "WEBP" and out.frames == 2
    assert tuple(out.pixels[3, 4]) == RED


def _exif_rotated_jpeg(orientation: int) -> bytes:
    """40 wide x 20 high, left half red, right half blue, tagged with an EXIF orientation."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(arr), "JPEG", quality=95, exif=exif)


def test_exif_orientation_6_is_applied() -> None:
    data = _exif_rotated_jpeg(6)  # viewers rotate 90 degrees clockwise: the left half ends up on top
    out = _ok(data)
    assert out.pixels.shape == (40, 20, 3)
    np.testing.assert_allclose(out.pixels[5, 10].astype(int), RED, atol=8)
    np.testing.assert_allclose(out.pixels[35, 10].astype(int), BLUE, atol=8)
    kept = _ok(data, DecodePolicy(exif_transpose=False))
    assert kept.pixels.shape == (20, 40, 3)
    np.testing.assert_allclose(kept.pixels[10, 5].astype(int), RED, atol=8)


def test_exif_orientation_3_and_bad_values() -> None:
    out = _ok(_exif_rotated_jpeg(3))  # 180 degrees: red on the right
    assert out.pixels.shape == (20, 40, 3)
    np.testing.assert_allclose(out.pixels[10, 35].astype(int), RED, atol=8)
    odd = _ok(_exif_rotated_jpeg(9))  # not a valid orientation: kept as stored
    np.testing.assert_allclose(odd.pixels[10, 5].astype(int), RED, atol=8)


# --- encoding ----------------------------------------------------------------------------------


def test_encode_png_round_trip_is_bit_exact() -> None:
    for h, w in [(1, 1), (1, 7), (33, 17)]:
        arr = _noise(h, w, seed=h * w)
        data = encode_png(arr)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        out = _ok(data)
        assert out.format == "PNG" and out.mode == "RGB"
        np.testing.assert_array_equal(out.pixels, arr)
    # A non-contiguous view encodes the same pixels.
    arr = _noise(10, 12, seed=5)
    np.testing.assert_array_equal(_ok(encode_png(arr[:, ::2])).pixels, arr[:, ::2])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((4, 4, 3), dtype=np.uint16),
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((0, 4, 3), dtype=np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_encode_png_validates(bad) -> None:
    with pytest.raises(ValueError):
        encode_png(bad)
