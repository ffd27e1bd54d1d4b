"""The Python API as users call it: every input form either purifies correctly or is refused with an error that
names the problem and the fix; never a silent wrong result (floats read as near-black, CHW as a 3-px-wide image,
alpha as a colour)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import Purifier, ZipSettings


def _rgb(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("image", "words"), [
    (_rgb() / 255.0, ["float64", "[0, 1]", "astype(np.uint8)"]),
    (_rgb().astype(np.float32), ["float32", "[0, 255]"]),
    (np.full((8, 8, 3), np.nan), ["float64", "convert"]),
    (_rgb().astype(np.uint16) * 257, ["uint16", ">> 8"]),
    (_rgb() > 127, ["bool", "* 255"]),
    (np.dstack([_rgb(), np.full((8, 8), 255, np.uint8)]), ["(8, 8, 4)", "4 channels", "alpha", "image[..., :3]"]),
    (np.ascontiguousarray(_rgb().transpose(2, 0, 1)), ["channels-first", "transpose(1, 2, 0)"]),
    (torch.from_numpy(_rgb()), ["torch tensor", "numpy"]),
    (np.zeros((8, 8, 2), np.uint8), ["H x W x 3", "(8, 8, 2)"]),
])
def test_ambiguous_or_wrong_images_are_refused_with_the_fix(purifier: Purifier, image, words: list[str]) -> None:
    with pytest.raises((TypeError, ValueError)) as err:
        purifier([_rgb(), image])
    message = str(err.value)
    assert message.startswith("image 1:"), message
    for word in words:
        assert word in message, (word, message)


def test_channels_first_batch_array_is_refused(purifier: Purifier) -> None:
    with pytest.raises(ValueError, match="channels-first"):
        purifier(np.stack([_rgb(), _rgb()]).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("images", [None, "img.png", b"\x89PNG", torch.zeros(2, 8, 8, 3, dtype=torch.uint8), 3])
def test_a_non_list_is_refused_naming_what_is_accepted(purifier: Purifier, images) -> None:
    with pytest.raises(TypeError, match="images must be a list of images"):
        purifier(images)


def test_pil_rgb_accepted_other_modes_refused(purifier: Purifier) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rgb = _rgb()
    assert np.array_equal(purifier([image_module.fromarray(rgb)])[0], purifier([rgb])[0])
    rgba = image_module.fromarray(np.dstack([rgb, np.full((8, 8), 9, np.uint8)]))
    with pytest.raises(ValueError, match=r"mode RGBA.*alpha.*convert\('RGB'\)"):
        purifier([rgba])
    assert purifier([image_module.fromarray(rgb[..., 0])])[0].shape == (8, 8)  # grey: see test_api_notebook_use.py
    with pytest.raises(ValueError, match=r"mode CMYK; accepted: modes RGB and L"):
        purifier([image_module.fromarray(rgb).convert("CMYK")])


def test_uint8_forms_give_the_same_result(purifier: Purifier) -> None:
    """Non-contiguous views, a generator, a tuple and an N x H x W x 3 array all purify as the plain list does."""
    a, b = _rgb(seed=1), _rgb(seed=2)
    expected = purifier([a, b])
    big = np.zeros((16, 16, 3), np.uint8)
    big[::2, ::2] = a
    flipped = np.ascontiguousarray(a[::-1, ::-1])
    for images in ((im for im in (a, b)), (a, b), np.stack([a, b]), [big[::2, ::2], b]):
        out = purifier(images)
        assert len(out) == 2 and all(np.array_equal(o, e) for o, e in zip(out, expected, strict=True))
    assert np.array_equal(purifier([flipped[::-1, ::-1], b])[0], expected[0])
    assert purifier([]) == [] and purifier(np.zeros((0, 8, 8, 3), np.uint8)) == []
    tiny = purifier([a[:1, :1], b])
    assert tiny[0].shape == (1, 1, 3) and tiny[1].shape == (8, 8, 3)


def test_seed_reproducible_and_validated(purifier: Purifier) -> None:
    images = [_rgb(seed=3), _rgb(5, 11, seed=4)]
    first = purifier(images, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(first, purifier(images, seed=np.int64(5)), strict=True))
    assert not np.array_equal(first[0], purifier(images, seed=6)[0])
    assert np.array_equal(purifier(images)[0], purifier(images, seed=purifier.settings.seed)[0])
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="seed must be an integer"):
            purifier(images, seed=bad)


def test_settings_accept_numpy_integers_and_name_non_numbers() -> None:
    settings = ZipSettings(steps=np.int64(3), pool=np.int32(2), seed=np.int64(7))
    assert (settings.steps, settings.pool, settings.seed) == (3, 2, 7)
    assert all(type(v) is int for v in (settings.steps, settings.pool, settings.seed))
    for name in ("eta", "lam", "start"):
        with pytest.raises(ValueError, match=f"{name} must be a number, got '1'"):
            ZipSettings(**{name: "1"})
