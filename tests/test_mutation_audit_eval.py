"""What the evaluation's attacks, metrics and defenses promise that earlier tests left open (mutation audit).

Attacks: every attack refuses images that are not uint8 RGB; PhysicalBA's test trigger is its own patch; its colour
jitter clamps after the brightness factor and scales contrast around the image's luminance (torchvision's ColorJitter);
its shift moves by whole pixels (torchvision's RandomAffine); WaNet's noise mode checks the image size; the poisoned
sets check their labels and say why too many samples cannot be poisoned. Metrics: SSIM on images larger than one chunk's
pixel budget, and a clear error for images that are not H x W x C. Defenses: ShrinkPad's shrink scales with the image,
the baselines purify with the settings their cache key records, a ZIP defense needs its prior, no defense and empty sets
are never cached, a set is shared between attacks with the same triggered images, and a shape change is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation import metrics
from pipeline.evaluation.attacks import (
    BadNet,
    Blended,
    PhysicalBA,
    WaNet,
    make_attack,
    poison_test_set,
    poison_training_set,
)
from pipeline.evaluation.baselines import naive_transform, shrink_pad
from pipeline.evaluation.defenses import Defense, make_defense, purified
from tests.test_attacks import _images, _smooth_images
from tests.test_mutation_eval_attacks import NO_AUGMENTATION

ATTACK_NAMES = ("badnet", "blended", "physicalba", "wanet")


class _Extremes:
    """A stand-in for the generator PhysicalBA draws from: every factor at the top of its range, no flip."""

    def random(self, n: int) -> np.ndarray:
        return np.ones(n)

    def uniform(self, low: float, high: float, n: int) -> np.ndarray:
        return np.full(n, high, dtype=np.float64)


def _low_extremes() -> _Extremes:
    extremes = _Extremes()
    extremes.uniform = lambda low, high, n: np.full(n, low, dtype=np.float64)  # type: ignore[method-assign]
    return extremes


# ---- attacks


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_refuses_float_or_non_rgb_images(name: str) -> None:
    """A float image in [0, 1] given a 255 patch, or a one-channel batch stamped as if it were RGB, gave a trigger that
    is no trigger without a word."""
    attack = make_attack(name, 32)
    floats = _images(2).astype(np.float32) / 255.0
    with pytest.raises(ValueError, match="uint8"):
        attack.apply(floats)
    grey = _images(2)[..., :1]
    with pytest.raises(ValueError, match="H x W x 3"):
        attack.apply(grey)


def test_the_blended_trigger_cannot_be_edited_by_a_caller() -> None:
    """The noise image is cached for every Blended of that seed: writing to it would move every later trigger."""
    pattern = Blended().pattern
    with pytest.raises(ValueError, match="read-only"):
        pattern[0, 0, 0] = 0


def test_physicalba_stamps_its_own_patch_at_test_time() -> None:
    """PhysicalBA(patch_size=5, value=200) is tested with a 5x5 patch of 200 (the one it trained on), not BadNet's."""
    x = _images(3)
    attack = PhysicalBA(patch_size=5, value=200)
    np.testing.assert_array_equal(attack.apply(x), BadNet(patch_size=5, value=200).apply(x))


def test_physicalba_brightness_is_clamped_before_the_contrast_is_scaled() -> None:
    """ColorJitter's order: brightness x1.2 saturates 240 at 255 before contrast x1.2 scales around the mean grey of
    (255 + 48) / 2 = 151.5, so 48 becomes 27.3 (an unclamped 288 would put the mean at 168 and 48 at 24)."""
    x = np.full((2, 32, 32, 3), 40, dtype=np.uint8)
    x[:, :16] = 240
    jitter = PhysicalBA(**{**NO_AUGMENTATION, "brightness": 0.2, "contrast": 0.2})
    out = jitter.train_transform(x, _Extremes())  # type: ignore[arg-type]
    assert np.all(out[:, :16] == 255)
    assert np.all(out[:, 16:] == 27)


def test_physicalba_contrast_scales_around_the_images_luminance() -> None:
    """torchvision's adjust_contrast blends with the mean of the grey (0.299 R + 0.587 G + 0.114 B) image: for a half
    green, half black image that mean is 0.2935, so contrast 0.8 lifts black to 0.2 x 0.2935 x 255 = 15.0 (the mean
    of the three channels, 1/6, would give 8.5) and green to 219."""
    x = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    x[:, :, :16, 1] = 255
    jitter = PhysicalBA(**{**NO_AUGMENTATION, "contrast": 0.2})
    out = jitter.train_transform(x, _low_extremes())  # type: ignore[arg-type]
    assert np.all(out[:, :, 16:] == 15)
    assert np.all(out[:, :, :16] == (15, 219, 15))


def test_physicalba_shifts_by_whole_pixels() -> None:
    """RandomAffine rounds its translation to whole pixels: 0.1 of 32 px is a shift of 3 px (not 3.2), so every pixel
    is copied exactly, three to the right and three down, with black fill behind."""
    x = _images(2)
    shift = PhysicalBA(**{**NO_AUGMENTATION, "translate": 0.1})
    out = shift.train_transform(x, _Extremes())  # type: ignore[arg-type]
    np.testing.assert_array_equal(out[:, 3:, 3:], x[:, :-3, :-3])
    assert not out[:, :3].any() and not out[:, :, :3].any()


def test_physicalba_transforms_an_empty_batch() -> None:
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    out = PhysicalBA().train_transform(empty, np.random.default_rng(0))
    assert out.shape == empty.shape and out.dtype == np.uint8


def test_wanet_noise_mode_checks_the_image_size() -> None:
    with pytest.raises(ValueError, match="WaNet was built for 32x32 images, got 16x16"):
        WaNet(image_size=32).apply_noise(_images(2, size=16), np.random.default_rng(0))


def test_wanet_noise_mode_count_is_rounded_from_the_rate_not_from_the_rounded_poison_count() -> None:
    """round(cross_ratio · rate · N): 10 % of 125 is 12.5 poisoned samples, rounded to 12, and 25 noise-mode samples
    (not 2 x 12 = 24)."""
    n = 125
    x = _smooth_images(n)
    labels = np.arange(n, dtype=np.int64) % 10
    px, _, idx = poison_training_set(x, labels, make_attack("wanet", 32), seed=0)
    assert len(idx) == 12
    others = np.setdiff1d(np.arange(n), idx)
    assert int(np.any(px[others] != x[others], axis=(1, 2, 3)).sum()) == 25


def test_poisoned_sets_refuse_labels_that_do_not_match_the_images() -> None:
    x = _images(10)
    labels = np.arange(9, dtype=np.int64)
    with pytest.raises(ValueError, match="N labels"):
        poison_training_set(x, labels, BadNet(), rate=0.2)
    with pytest.raises(ValueError, match="N labels"):
        poison_test_set(x, labels, BadNet())


def test_too_high_a_rate_says_how_many_samples_it_can_poison() -> None:
    labels = np.arange(10, dtype=np.int64)  # one sample of the target class 1
    with pytest.raises(ValueError, match="cannot poison 10 samples: only 9 are outside target 1"):
        poison_training_set(_images(10), labels, BadNet(), rate=1.0)


# ---- metrics


def test_ssim_scores_images_larger_than_one_chunks_pixel_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image with more values than SSIM_CHUNK_ELEMENTS (a 1,200 px photo holds 4.3 M) is scored one at a time."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 24, 24, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, size=a.shape), 0, 255).astype(np.uint8)
    whole = metrics.ssim(a, b)
    monkeypatch.setattr(metrics, "SSIM_CHUNK_ELEMENTS", 1000)  # less than one 24 x 24 x 3 image
    assert metrics.ssim(a, b) == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("score", [metrics.psnr, metrics.ssim])
def test_fidelity_scores_refuse_images_without_a_channel_axis(score) -> None:  # type: ignore[no-untyped-def]
    flat = np.zeros((16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match="H x W x C"):
        score(flat, flat)


# ---- defenses


@pytest.mark.parametrize(("size", "kept"), [(32, 28), (64, 56), (224, 196)])
def test_shrinkpad_shrinks_by_an_eighth_of_the_image_at_every_size(size: int, kept: int) -> None:
    """ShrinkPad's 4 px on 32 px images (32 -> 28) scales with the image: 64 -> 56, Imagenette's 224 -> 196."""
    white = np.full((2, size, size, 3), 255, dtype=np.uint8)
    out = make_defense("shrinkpad", image_size=size)(white)
    for image in out:
        lit = image.any(axis=-1)
        assert lit.any(axis=1).sum() == kept and lit.any(axis=0).sum() == kept


def test_the_baselines_purify_with_the_settings_their_cache_key_records() -> None:
    """A naive defense keyed pool 2 that pooled by 4, or a ShrinkPad keyed seed 3 that drew seed 0's offsets, would cache
    and report images of other settings than the report's defense_settings say."""
    x = _images(6)
    naive = make_defense("naive", pool=2)
    assert naive.settings == {"pool": 2}
    np.testing.assert_array_equal(naive(x), naive_transform(x, 2))
    shrink = make_defense("shrinkpad", seed=3)
    assert shrink.settings == {"shrink": 4, "seed": 3}
    np.testing.assert_array_equal(shrink(x), shrink_pad(x, shrink=4, seed=3))
    assert not np.array_equal(shrink(x), make_defense("shrinkpad", seed=0)(x))


@pytest.mark.parametrize("name", ["zip", "zip-authors"])
def test_a_zip_defense_without_its_prior_is_refused_when_built(name: str) -> None:
    """Not first when purifying (after the baselines' work), under a cache key of no prior (checkpoint_sha256 null)."""
    with pytest.raises(ValueError, match=f"defense '{name}' needs a checkpoint"):
        make_defense(name)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_defense(name, checkpoint="prior.pt")


def test_no_defense_is_never_written_to_the_purified_cache(tmp_path: Path) -> None:
    """The identity costs nothing to redo: caching it would store another copy of every test set for each run."""
    x = _images(4)
    out = purified(make_defense("none"), x, tmp_path, "clean")
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)
    assert list(tmp_path.iterdir()) == []


def test_a_set_cached_for_one_attack_serves_another_with_the_same_images(tmp_path: Path) -> None:
    """BadNet and PhysicalBA stamp the same test-time trigger, so their triggered subsets are purified once."""
    calls = []

    def halve(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images // 2

    defense = Defense("halve", {"k": 1}, halve)
    x = PhysicalBA().apply(_images(4))
    first = purified(defense, BadNet().apply(_images(4)), tmp_path, "badnet")
    np.testing.assert_array_equal(purified(defense, x, tmp_path, "physicalba"), first)
    assert calls == [4]


def test_a_defense_that_changes_the_images_shape_is_named_and_nothing_is_cached(tmp_path: Path) -> None:
    defense = Defense("crop", {}, lambda images: images[:, :16])
    with pytest.raises(RuntimeError, match=r"defense crop changed the images' shape: \(2, 32, 32, 3\) -> \(2, 16, 32, 3\)"):
        purified(defense, _images(2), tmp_path, "clean")
    assert not list(tmp_path.rglob("*.npz"))


def test_an_empty_set_is_returned_without_loading_the_prior_or_caching(tmp_path: Path) -> None:
    """A subset with no triggered image (every test image of the target class) has nothing to purify."""

    def no_prior() -> None:
        raise AssertionError("the prior was loaded for no images")

    defense = Defense("zip", {"k": 1}, purifier_factory=no_prior)  # type: ignore[arg-type]
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    out = purified(defense, empty, tmp_path, "badnet")
    assert out.shape == empty.shape and out.dtype == np.uint8
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cls", [BadNet, PhysicalBA])
@pytest.mark.parametrize("size", [0, -2, 2.5, True])
def test_a_patch_size_that_is_no_positive_pixel_count_is_refused(cls: type, size: object) -> None:
    """BUG (fixed): BadNet(patch_size=0) stamped the whole image white (out[:, -0:, -0:] is every pixel), -2 every pixel
    but the last two rows and columns; attack_options (victims.get_classifier) pass such values through unchecked."""
    with pytest.raises(ValueError, match="patch_size must be a positive whole number of pixels"):
        cls(patch_size=size)


@pytest.mark.parametrize("cls", [BadNet, PhysicalBA])
def test_a_patch_larger_than_the_images_is_refused(cls: type) -> None:
    """A 40 px patch on 32 px images whitened them whole: a trigger that is the entire image."""
    with pytest.raises(ValueError, match="a 40 px patch does not fit 32x32 images"):
        cls(patch_size=40).apply(_images(2))
    np.testing.assert_array_equal(cls(patch_size=32).apply(_images(2)), np.full((2, 32, 32, 3), 255, np.uint8))


@pytest.mark.parametrize("value", [-1, 256])
def test_a_patch_value_outside_the_pixel_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match=f"value must be a pixel value in 0..255, got {value}"):
        BadNet(value=value)
