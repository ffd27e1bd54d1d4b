"""Mutation-audit gaps in decoding: every EXIF orientation (not only 6) shows the image as viewers do, float images
holding 0..1 keep their brightness instead of being stretched, and transparency is composited with rounding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.decode import DecodePolicy, decode_image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_viewers_show_it(orientation) -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13  # no symmetry: each transpose differs
    im = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    data = buf.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    decoded = decode_image(data)
    assert not isinstance(decoded, str), decoded
    assert np.array_equal(decoded.pixels, expected)
    assert decoded.pixels.shape == ((2, 3, 3) if orientation <= 4 else (3, 2, 3))
    unrotated = decode_image(data, DecodePolicy(exif_transpose=False))
    assert np.array_equal(unrotated.pixels, pixels)


def test_a_float_image_holding_0_to_1_keeps_its_brightness() -> None:
    values = np.array([[0.0, 0.25], [0.5, 0.1]], dtype=np.float32)  # a dark image: its maximum is 0.5, not 1
    buf = io.BytesIO()
    Image.fromarray(values, mode="F").save(buf, format="TIFF")
    decoded = decode_image(buf.getvalue())
    assert not isinstance(decoded, str), decoded
    assert decoded.mode == "F"
    assert np.array_equal(decoded.pixels[:, :, 0], np.rint(values * 255).astype(np.uint8))


@pytest.mark.parametrize("alpha,expected", [("black", 157), ("white", 212)])
def test_transparency_is_composited_with_rounding_to_nearest(alpha, expected) -> None:
    # 200 at alpha 200: 200 * 200 / 255 = 156.86 on black, (200 * 200 + 255 * 55) / 255 = 211.86 on white
    rgba = np.full((2, 2, 4), 200, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    decoded = decode_image(buf.getvalue(), DecodePolicy(alpha=alpha))
    assert not isinstance(decoded, str), decoded
    assert (decoded.pixels == expected).all()
