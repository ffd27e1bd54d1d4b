"""Packing never loses, reorders or mixes images, and never looks at labels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tiling import pack, plan_layout, unpack


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("align", [1, 2, 4])
def test_roundtrip_is_bit_exact_for_random_mixes(seed: int, align: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(1, 65)), int(rng.integers(1, 65))) for _ in range(int(rng.integers(1, 60)))]
    images = _images(sizes, seed)
    layout = plan_layout(sizes, 64, align)
    back = unpack(pack(images, layout), layout)
    assert len(back) == len(images)
    for a, b in zip(images, back, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_cells_are_aligned_inside_the_canvas_and_never_overlap() -> None:
    rng = np.random.default_rng(3)
    sizes = [(int(rng.integers(1, 40)), int(rng.integers(1, 40))) for _ in range(200)]
    layout = plan_layout(sizes, 64, 4)
    occupied = np.zeros((layout.num_canvases, 64, 64), dtype=int)
    for p in layout.placements:
        assert p.top % 4 == 0 and p.left % 4 == 0
        h, w = -(-p.height // 4) * 4, -(-p.width // 4) * 4
        assert p.top + h <= 64 and p.left + w <= 64
        occupied[p.canvas, p.top : p.top + h, p.left : p.left + w] += 1
    assert occupied.max() == 1


def test_64_cifar_images_fill_one_256_canvas() -> None:
    layout = plan_layout([(32, 32)] * 65, 256, 4)
    assert layout.num_canvases == 2
    assert sum(p.canvas == 0 for p in layout.placements) == 64


def test_large_images_are_resized_and_restored_to_their_size() -> None:
    sizes = [(300, 200), (224, 224), (32, 32), (100, 600)]
    images = _images(sizes)
    for policy in ["fit", "stretch"]:
        layout = plan_layout(sizes, 256, 4, large=policy)
        out = unpack(pack(images, layout), layout)
        assert [o.shape[:2] for o in out] == sizes
        assert np.array_equal(out[1], images[1]) and np.array_equal(out[2], images[2])
        p = layout.placements[0]
        if policy == "fit":
            assert (p.height, p.width) == (256, 171)  # aspect ratio kept
        else:
            assert (p.height, p.width) == (256, 256)
        # how much detail each image lost to the canvas: none for those that fit, the worse side otherwise
        assert [q.downscale for q in layout.placements[1:]] == [1.0, 1.0, 2.344]
        assert p.downscale == pytest.approx(300 / 256, abs=1e-3)


def test_layout_depends_only_on_sizes_and_order() -> None:
    sizes = [(32, 32), (16, 8), (32, 32)]
    assert plan_layout(sizes, 64, 2) == plan_layout(list(sizes), 64, 2)
    a, b = _images(sizes, 1), _images(sizes, 2)
    layout = plan_layout(sizes, 64, 2)
    assert [x.shape for x in unpack(pack(a, layout), layout)] == [x.shape for x in unpack(pack(b, layout), layout)]


def test_bad_layout_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of the alignment"):
        plan_layout([(4, 4)], 30, 4)
    with pytest.raises(ValueError, match="empty"):
        plan_layout([(0, 4)], 32, 4)
    with pytest.raises(ValueError, match="large-image policy"):
        plan_layout([(4, 4)], 32, 4, large="crop")
    assert plan_layout([], 32, 4).num_canvases == 0


def test_unpacked_images_are_their_own_writeable_arrays() -> None:
    """A cell as wide as the canvas crops to a contiguous slice, which came back as a view of the whole canvas batch
    (holding it in memory; read-only when the canvases were, as Ray's zero-copy blocks are)."""
    sizes = [(32, 32), (10, 64), (64, 64), (20, 40), (100, 70)]
    images = _images(sizes, 5)
    layout = plan_layout(sizes, 64, 4)
    canvases = pack(images, layout)
    canvases.setflags(write=False)
    out = unpack(canvases, layout)
    for image, back in zip(images, out, strict=True):
        assert back.shape == image.shape and (np.array_equal(image, back) or image.shape == (100, 70, 3))
        assert not np.shares_memory(back, canvases) and back.flags.writeable and back.flags.c_contiguous
