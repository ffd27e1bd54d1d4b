"""Mutation-audit gaps in tiling and the purifier: every image comes back where it went and at its own size (extreme
aspect ratios, odd sizes, counts that are not a canvas's multiple, grey inputs), the canvas's padding and empty space
are what the module promises, the packer fills canvases tallest first, and the purifier's layout, batches and seeds
follow its settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import Purifier, ZipSettings
from pipeline.tiling import pack, plan_layout, unpack
from tests.test_tiling import _images


def _roundtrip(images: list[np.ndarray], canvas: int, align: int, large: str = "fit") -> list[np.ndarray]:
    layout = plan_layout([im.shape[:2] for im in images], canvas, align, large)
    return unpack(pack(images, layout), layout)


# ---- tiling.py


@pytest.mark.parametrize("large", ["fit", "stretch"])
def test_a_one_pixel_strip_longer_than_the_canvas_comes_back_at_its_size(large: str) -> None:
    # a 1 x 1000 strip on a 64 px canvas is 1 x 0.064 px scaled: it keeps one pixel, not zero (which crashed the resize)
    sizes = [(1, 1000), (1000, 1), (3, 2000), (9, 9)]
    images = _images(sizes, 2)
    layout = plan_layout(sizes, 64, 4, large)
    assert all(p.height >= 1 and p.width >= 1 for p in layout.placements)
    out = unpack(pack(images, layout), layout)
    assert [o.shape for o in out] == [im.shape for im in images]
    assert np.array_equal(out[3], images[3])
    if large == "fit":
        assert [(p.height, p.width) for p in layout.placements[:3]] == [(1, 64), (64, 1), (1, 64)]


@pytest.mark.parametrize(("canvas", "align"), [(32, 0), (32, -4), (0, 4), (-8, 4)])
def test_an_alignment_or_canvas_below_one_is_a_value_error_naming_both(canvas: int, align: int) -> None:
    with pytest.raises(ValueError, match=rf"canvas size {canvas} must be a positive multiple of the alignment {align}"):
        plan_layout([(4, 4)], canvas, align)


@pytest.mark.parametrize("size", [(4, 0), (0, 4), (-1, 3)])
def test_an_image_with_no_pixels_on_either_side_is_refused_naming_its_size(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=rf"image size {size[0]}x{size[1]} is empty"):
        plan_layout([(8, 8), size], 32, 4)


def test_tallest_cells_are_shelved_first_so_fewer_canvases_are_needed() -> None:
    # in input order the 16 px cell ends the first shelf and the second 48 px cell no longer fits below it
    sizes = [(48, 32), (16, 32), (48, 32)]
    layout = plan_layout(sizes, 64, 4)
    assert layout.num_canvases == 1
    assert [(p.top, p.left) for p in layout.placements] == [(0, 0), (48, 0), (0, 32)]
    images = _images(sizes, 4)
    assert all(np.array_equal(a, b) for a, b in zip(images, _roundtrip(images, 64, 4), strict=True))


def test_resized_says_which_images_were_scaled_onto_the_canvas() -> None:
    layout = plan_layout([(32, 32), (65, 10), (10, 64)], 64, 4)
    assert [p.resized for p in layout.placements] == [False, True, False]


def test_plan_layout_keeps_the_aspect_ratio_unless_told_to_stretch() -> None:
    p = plan_layout([(300, 200)], 256).placements[0]
    assert (p.height, p.width, p.downscale) == (256, 171, 1.172)


def test_a_large_image_is_shrunk_with_lanczos_and_grown_back_with_bicubic() -> None:
    """The module's promise (Lanczos to shrink, bicubic to grow back): the canvas holds PIL's Lanczos reduction, and
    the result is PIL's bicubic enlargement of the cell."""
    image = _images([(120, 90)], 7)[0]
    layout = plan_layout([image.shape[:2]], 64, 4)
    p = layout.placements[0]
    canvases = pack([image], layout)
    shrunk = np.asarray(Image.fromarray(image).resize((p.width, p.height), Image.Resampling.LANCZOS))
    assert np.array_equal(canvases[0, : p.height, : p.width], shrunk)
    grown = np.asarray(Image.fromarray(shrunk).resize((90, 120), Image.Resampling.BICUBIC))
    assert np.array_equal(unpack(canvases, layout)[0], grown)


def test_canvas_space_no_image_covers_is_mid_grey() -> None:
    """Mid-grey is 0 in model units: the empty space the diffusion model sees beside an image is neutral, not black."""
    layout = plan_layout([(8, 8)], 32, 4)
    canvas = pack(_images([(8, 8)], 1), layout)[0]
    assert np.all(canvas[8:] == 128) and np.all(canvas[:8, 8:] == 128)


def test_cells_are_padded_to_the_pool_factor_by_repeating_the_edge_pixels() -> None:
    """A pooling block at an image's edge averages only that image's own edge pixels, never grey fill or zeros, so the
    block mean the guidance keeps is the image's."""
    image = _images([(5, 6)], 3)[0]
    layout = plan_layout([(5, 6), (8, 8)], 16, 4)
    assert (layout.placements[0].top, layout.placements[0].left) == (0, 0)
    cell = pack([image, _images([(8, 8)], 9)[0]], layout)[0, :8, :8]
    assert np.array_equal(cell[:5, :6], image)
    assert np.array_equal(cell, np.pad(image, ((0, 3), (0, 2), (0, 0)), mode="edge"))


def test_images_of_odd_sizes_come_back_in_place_when_the_count_is_not_a_canvas_multiple() -> None:
    """Many more images than one canvas holds, of odd and non-square sizes, with repeats of one size: each comes back
    exactly (none swapped, lost or duplicated), in input order."""
    rng = np.random.default_rng(11)
    sizes = [(7, 7)] * 9 + [(int(rng.integers(1, 17)), int(rng.integers(1, 17))) for _ in range(40)] + [(16, 16)]
    images = _images(sizes, 12)
    layout = plan_layout(sizes, 16, 2)
    assert layout.num_canvases > 1
    out = unpack(pack(images, layout), layout)
    assert len(out) == len(images)
    for a, b in zip(images, out, strict=True):
        assert np.array_equal(a, b)


# ---- purifier.py


@pytest.fixture(scope="module")
def identity(purifier: Purifier) -> Purifier:
    """The suite's tiny purifier's model with the identity operator and no prior weight: purification gives back its
    input exactly, so whatever changes an image is the tiling's (and a batch of two canvases makes several batches)."""
    return Purifier(purifier.model, ZipSettings(steps=1, pool=1, lam=0.0, eta=1.0), batch_size=2)


def test_every_image_comes_back_exactly_where_it_went_through_the_purifier(identity: Purifier) -> None:
    rng = np.random.default_rng(5)
    sizes = [(int(rng.integers(1, 17)), int(rng.integers(1, 17))) for _ in range(23)] + [(16, 16), (3, 16), (16, 1)]
    images = _images(sizes, 6)
    grey = images[4][..., 0]
    images[4] = grey  # H x W grey
    images[9] = images[9][..., :1]  # H x W x 1 grey
    pil_grey = Image.fromarray(images[12][..., 1])
    inputs = [*images[:12], pil_grey, *images[13:]]
    assert identity.plan(sizes).num_canvases > 2 * identity.batch_size  # several sampling batches
    out = identity(inputs)
    assert len(out) == len(inputs)
    for i, (a, b) in enumerate(zip([*images[:12], np.asarray(pil_grey), *images[13:]], out, strict=True)):
        assert b.shape == a.shape and b.dtype == np.uint8 and np.array_equal(a, b), i


def test_a_large_image_through_the_purifier_comes_back_at_its_size_and_in_its_order(identity: Purifier) -> None:
    images = _images([(5, 5), (40, 20), (16, 16), (1, 300)], 8)
    ramp = np.linspace(0, 255, 40, dtype=np.uint8)
    images[1] = np.dstack([np.repeat(ramp[:, None], 20, axis=1)] * 3)  # smooth: shrunk and grown back, it stays itself
    with pytest.warns(UserWarning, match=r"2 image\(s\) larger than the model's 16 px canvas.*\(up to 18.75x\)"):
        out = identity(images)
    assert [o.shape for o in out] == [im.shape for im in images]
    assert np.array_equal(out[0], images[0]) and np.array_equal(out[2], images[2])
    assert np.abs(out[1].astype(int) - images[1].astype(int)).max() <= 8  # the same ramp, at its size


def test_the_purifiers_layout_aligns_cells_to_its_pool_factor_and_follows_its_large_image_policy(purifier: Purifier) -> None:
    assert purifier.settings.pool == 2
    layout = purifier.plan([(3, 3)] * 9)
    assert all(p.top % 2 == 0 and p.left % 2 == 0 for p in layout.placements)
    assert [(p.top, p.left) for p in layout.placements] == [(4 * (i // 4), 4 * (i % 4)) for i in range(9)]  # 3 px: 4 px cells
    stretch = Purifier(purifier.model, ZipSettings(steps=1, pool=2, large_images="stretch"))
    fit = Purifier(purifier.model, ZipSettings(steps=1, pool=2, large_images="fit"))
    assert (stretch.plan([(40, 20)]).placements[0].width, fit.plan([(40, 20)]).placements[0].width) == (16, 8)


def test_the_last_sampling_batch_stops_at_the_last_canvas(purifier: Purifier) -> None:
    p = Purifier(purifier.model, ZipSettings(steps=1, pool=2, seed=3), batch_size=2)
    assert [(b.start, b.stop, b.seed) for b in p.batches(5)] == [(0, 2, 3), (2, 4, 5), (4, 5, 7)]
    assert [(b.start, b.stop) for b in p.batches(4)] == [(0, 2), (2, 4)]
    # seed s's batch at canvas k draws seed (s + k) mod 2**32: always a seed every generator takes, CUDA's included
    assert [b.seed for b in p.batches(5, seed=2**32 - 3)] == [2**32 - 3, 2**32 - 1, 1]


def test_seeds_per_canvas_over_several_batches_give_each_canvas_its_own_seeds_result(purifier: Purifier) -> None:
    p = Purifier(purifier.model, ZipSettings(steps=2, pool=2, eta=1.0), batch_size=2)
    canvases = np.stack(_images([(16, 16)] * 3, 13))
    together = p.purify_canvases(canvases, seeds=[21, 22, 23])
    alone = p.purify_canvases(canvases[2:], seeds=[23])
    assert np.abs(together[2].astype(int) - alone[0].astype(int)).max() <= 1
    with pytest.raises(ValueError, match="got 2 seeds for 3 canvases"):
        Purifier(purifier.model, ZipSettings(steps=1, pool=2)).purify_tensor(torch.zeros(3, 3, 16, 16), seeds=[1, 2])


@pytest.mark.parametrize("seed", [-1, 2**32, np.int64(-5)])
def test_a_call_seed_outside_the_generators_range_is_refused_naming_the_range(purifier: Purifier, seed: int) -> None:
    # -1 and 2**32 read as another seed's low 32 bits: the same noise under two seeds, a silent repeat
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\].*got -?\d+"):
        purifier(_images([(8, 8)]), seed=seed)


def test_purify_tensor_refuses_canvases_that_are_not_three_channel_floats(purifier: Purifier) -> None:
    # a grey N x 1 x H x W batch failed inside the model's first convolution; a uint8 batch in 0-255 was read as
    # model units far outside [-1, 1] and came back as noise
    with pytest.raises(ValueError, match=r"expected N x 3 x H x W, got \(2, 1, 16, 16\)"):
        purifier.purify_tensor(torch.zeros(2, 1, 16, 16))
    with pytest.raises(TypeError, match=r"expected a float tensor in \[-1, 1\], got torch.uint8"):
        purifier.purify_tensor(torch.full((1, 3, 16, 16), 200, dtype=torch.uint8))


def test_model_units_outside_minus_one_to_one_saturate_instead_of_wrapping_around() -> None:
    # the sampler's output is unclamped: 1.2 is brighter than white, not the near-black 280 - 256 = 24
    from pipeline.purifier import to_uint8

    x = torch.tensor([-3.0, -1.0001, -1.0, 0.0, 1.0, 1.2, 40.0]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    out = to_uint8(x)
    assert out.shape == (1, 1, 7, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 128, 255, 255, 255]


def test_an_empty_batch_of_canvases_comes_back_empty(purifier: Purifier) -> None:
    # BUG (fixed here): purify_tensor of N = 0 canvases stopped with torch's "torch.cat(): expected a non-empty list of
    # Tensors", naming neither the call nor the empty batch; purify_canvases and the call itself take an empty batch
    for seeds in (None, []):
        out = purifier.purify_tensor(torch.zeros(0, 3, 16, 16), seeds=seeds)
        assert out.shape == (0, 3, 16, 16) and out.dtype == torch.float32
    assert purifier.purify_canvases(np.zeros((0, 16, 16, 3), np.uint8)).shape == (0, 16, 16, 3)
    with pytest.raises(ValueError, match="got 1 seeds for 0 canvases"):
        purifier.purify_tensor(torch.zeros(0, 3, 16, 16), seeds=[1])
