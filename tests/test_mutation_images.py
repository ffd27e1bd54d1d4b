"""Mutation-audit gaps in the Python API's image reading (pipeline.images), the presets and shipped priors, the sample
generator, DecodePolicy's checks and the storage options named after a store: inputs users pass (a PIL image opened
from a file, an empty crop, a 1 x H x W array, a dict, a file name), the conversions the errors advise run as
written, and the checks that stop a bad option before any work."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.presets as presets
import pipeline.sample_data as sample_data
from pipeline import Purifier, load_checkpoint, preset_config, shipped_prior
from pipeline.config import JobConfig
from pipeline.decode import DecodePolicy, decode_image, pil_pixel_limit
from pipeline.errors import JobError
from pipeline.purifier import naive_purify
from pipeline.storage import store_entry_problems
from tests.jobutil import run_main


def _rgb(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# --- pipeline.images: what the Purifier and naive_purify take -----------------------------------------------------


def test_a_pil_image_opened_from_a_file_is_purified_as_its_pixels(purifier: Purifier) -> None:
    # Image.open gives a PngImageFile (module PIL.PngImagePlugin), not a PIL.Image.Image made by fromarray
    rgb = _rgb(seed=1)
    opened = Image.open(io.BytesIO(_png(rgb)))
    assert np.array_equal(purifier([opened], seed=3)[0], purifier([rgb], seed=3)[0])
    grey = Image.open(io.BytesIO(_png(rgb[..., 0])))
    assert np.array_equal(naive_purify([grey], 2)[0], naive_purify([rgb[..., 0]], 2)[0])


@pytest.mark.parametrize("shape", [(0, 8, 3), (8, 0, 3), (8, 0), (0, 8, 1)])
def test_an_empty_image_is_refused_naming_it(purifier: Purifier, shape: tuple[int, ...]) -> None:
    empty = np.zeros(shape, np.uint8)
    for purify in (purifier, lambda images: naive_purify(images, 2)):
        with pytest.raises(ValueError, match=re.escape(f"image 1: empty image of shape {shape}")):
            purify([_rgb(), empty])


def test_a_one_channel_first_array_is_told_to_transpose_and_the_advice_runs(purifier: Purifier) -> None:
    image = _rgb(seed=2)[None, ..., 0]  # 1 x 8 x 8: a grey image channels-first
    with pytest.raises(ValueError, match=r"image 0: .*\(1, 8, 8\): it looks channels-first \(C x H x W\); pass "
                                         r"image.transpose\(1, 2, 0\)"):
        purifier([image])
    assert purifier([image.transpose(1, 2, 0)])[0].shape == (8, 8, 1)


@pytest.mark.parametrize(("image", "said"), [
    (Image.fromarray(np.full((4, 4), 70000, np.int32)), "a 32-bit integer PIL image (mode I)"),
    (Image.fromarray(np.full((4, 4), 30000, ">u2")), "a 16-bit PIL image (mode I;16B)"),
])
def test_wide_pil_modes_are_told_that_convert_rgb_clips(purifier: Purifier, image: Image.Image, said: str) -> None:
    with pytest.raises(ValueError) as err:
        purifier([_rgb(), image])
    message = str(err.value)
    assert message.startswith(f"image 1: {said}; image.convert('RGB') would clip it at 255, so scale it to 8 bits "
                              "first"), message
    if image.mode.startswith("I;16"):  # the hint for 16-bit runs as written
        hint = message.partition("e.g. ")[2].partition(" for 16-bit")[0]
        assert np.asarray(eval(hint, {"Image": Image, "np": np, "image": image})).tolist()[0] == [117] * 4


@pytest.mark.parametrize(("mode", "alpha"), [("LA", True), ("PA", True), ("RGBa", True), ("LAB", False),
                                             ("CMYK", False), ("P", False)])
def test_a_pil_mode_is_said_to_have_alpha_only_when_it_has(purifier: Purifier, mode: str, alpha: bool) -> None:
    # LAB's "A" is a colour axis: its image was told "its alpha channel is not a colour: composite it"
    with pytest.raises(ValueError) as err:
        purifier([_rgb(), Image.new(mode, (4, 4))])
    message = str(err.value)
    assert message.startswith(f"image 1: a PIL image in mode {mode}") and "accepted: modes RGB and L" in message
    assert ("alpha channel is not a colour" in message) is alpha, message


def test_containers_that_are_not_lists_of_images_are_named(purifier: Purifier) -> None:
    with pytest.raises(ValueError, match=r"got an array of shape \(8, 8\); for one image, pass \[image\]$"):
        purifier(np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="images must be a list of images .*, got dict;"):
        purifier({"cat.png": _rgb()})  # iterating it gave the file names, not the images
    with pytest.raises(TypeError, match=r"got Image \(for one image, pass \[image\]\)"):
        purifier(Image.fromarray(_rgb()))
    with pytest.raises(TypeError, match=r"^image 0: expected uint8 numpy arrays .*, got str$"):
        purifier(["cat.png"])  # a path, not an image


def test_the_conversions_the_errors_advise_run_as_written(purifier: Purifier) -> None:
    rgb = _rgb(seed=4)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # C x H x W uint8
    with pytest.raises(TypeError) as err:
        purifier([tensor])
    hint = str(err.value).partition("e.g. ")[2].removesuffix(" for a C x H x W uint8 tensor")
    assert np.array_equal(eval(hint, {"tensor": tensor}), rgb), str(err.value)
    for scaled, scale in ((rgb / 255.0, "[0, 1]"), (rgb.astype(np.float32), "[0, 255]")):
        with pytest.raises(TypeError) as err:
            purifier([scaled])
        # "... e.g. EXPR for [0, 1] or EXPR for [0, 255]"
        hints = dict(reversed(h.split(" for ")) for h in str(err.value).partition("e.g. ")[2].split(" or "))
        assert np.array_equal(eval(hints[scale], {"image": scaled, "np": np}), rgb), str(err.value)


# --- pipeline.presets ----------------------------------------------------------------------------------------------


def test_the_shipped_priors_are_the_small_prior_presets_architecture() -> None:
    # the preset is what a run without weights builds (pipeline.plan) and what a prior's flags are checked against
    for name in presets.SHIPPED_PRIORS:
        loaded = load_checkpoint(shipped_prior(name), preset="cifar10_prior_small")
        assert loaded.config == preset_config("cifar10_prior_small")


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        preset_config("256x256_uncond")
    assert all(name in str(err.value) for name in presets.PRESETS), str(err.value)


def test_a_shipped_prior_missing_from_the_installation_is_named_with_its_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(presets, "ASSETS", tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"shipped prior 'gtsrb' is missing from this installation "
                                                          f"({tmp_path / 'gtsrb_prior.pt'})")):
        shipped_prior("gtsrb")


# --- pipeline.sample_data ------------------------------------------------------------------------------------------


def test_the_sample_is_written_into_missing_folders_and_over_its_old_copy(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"  # "made when missing", its parents too
    assert run_main(sample_data, [str(folder)]) == 0
    first = (folder / "sample-01.tar").read_bytes()
    assert run_main(sample_data, [str(folder)]) == 0  # regenerating in place, as the default folder always is
    assert (folder / "sample-01.tar").read_bytes() == first


def test_a_folder_that_cannot_be_made_is_one_error_line_not_a_traceback(tmp_path: Path, capsys) -> None:
    # a path under a file (or the package's own folder in a read-only installation) raised NotADirectoryError
    (tmp_path / "a-file").write_text("x")
    assert run_main(sample_data, [str(tmp_path / "a-file" / "sample")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write the sample to {tmp_path / 'a-file' / 'sample'}: Not a directory\n"


# --- DecodePolicy, as the job's options reach it -----------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 2.5, 1e6])
def test_a_max_pixels_that_is_not_a_whole_number_is_refused_naming_it(value: object) -> None:
    # True was 1: every image a reject as "too large"
    with pytest.raises(JobError, match=re.escape(f"--max-pixels: max_pixels must be a positive int, got {value!r}")):
        JobConfig(max_pixels=value).check()


def test_alpha_is_one_of_its_words_in_their_case() -> None:
    with pytest.raises(JobError, match=re.escape("--alpha: alpha must be one of ('white', 'black', 'drop'), got 'White'")):
        JobConfig(alpha="White").check()


def test_without_pils_pixel_limit_any_max_pixels_is_taken(monkeypatch) -> None:
    # Image.MAX_IMAGE_PIXELS = None is how a program turns Pillow's bomb check off
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert pil_pixel_limit() is None
    policy = DecodePolicy(max_pixels=10**12)
    assert decode_image(_png(_rgb()), policy).pixels.shape == (8, 8, 3)


def test_the_default_policy_cannot_be_changed_for_every_later_decode() -> None:
    # decode_image's default argument is one DecodePolicy shared by every call
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecodePolicy().max_pixels = 1  # type: ignore[misc]


# --- storage options named after a store ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "example"), [
    ("s3", True, '{"anon": true}'),  # --storage-option s3=true: a boolean, not text
    ("s3a", "x", '{"anon": true}'), ("gs", "x", '{"anon": true}'), ("gcs", "x", '{"anon": true}'),
    ("ftp", "x", '{"OPTION": "VALUE"}'), ("hdfs", 1, '{"OPTION": "VALUE"}'), ("file", "x", '{"OPTION": "VALUE"}'),
    ("local", None, '{"OPTION": "VALUE"}'),
])
def test_a_store_named_option_of_any_store_is_refused_with_an_entry_it_takes(name: str, value: object,
                                                                             example: str) -> None:
    said = f"storage option {name} names a store: give its own options as a mapping, e.g. --storage-option " \
           f"{name}='{example}' (in a --config file: storage_options: {{{name}: {example}}})"
    assert store_entry_problems({name: value, "anon": True}) == [said]
    with pytest.raises(JobError, match=re.escape(said)):
        JobConfig(storage_options={name: value}).check()
