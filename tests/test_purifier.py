"""The Python API: uint8 images in, same count, sizes and order out; clear errors otherwise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline.model import UNetConfig, build_unet
from pipeline.purifier import naive_purify


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="16",
                              num_res_blocks=1))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_any_sizes_in_same_sizes_and_order_out(model) -> None:
    p = Purifier(model, ZipSettings(steps=2, pool=4), canvas_size=64)
    sizes = [(32, 32), (5, 9), (1, 1), (70, 40), (64, 64), (3, 100)]
    with pytest.warns(UserWarning, match=r"2 image\(s\) larger than the model's 64 px canvas were shrunk .*\(up to 1.562x\)"):
        out = p(_images(sizes))
    assert [o.shape for o in out] == [(h, w, 3) for h, w in sizes]
    assert all(o.dtype == np.uint8 for o in out)
    assert p([]) == []


def test_identity_operator_gives_back_the_input(model) -> None:
    p = Purifier(model, ZipSettings(steps=3, pool=1, lam=0.0, eta=1.0))
    images = _images([(32, 32), (17, 5)], seed=4)
    for a, b in zip(images, p(images), strict=True):
        assert np.array_equal(a, b)


def test_pooled_output_matches_pooled_input(model) -> None:
    p = Purifier(model, ZipSettings(steps=3, pool=4))
    image = _images([(32, 32)], seed=5)[0]
    out = p.purify_tensor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert (torch.nn.functional.avg_pool2d(out, 4) - torch.nn.functional.avg_pool2d(x, 4)).abs().max() < 1e-4


def test_reproducible_for_a_seed(model) -> None:
    p = Purifier(model, ZipSettings(steps=2, pool=2, eta=1.0, seed=7))
    images = _images([(32, 32)] * 3)
    assert all(np.array_equal(a, b) for a, b in zip(p(images), p(images), strict=True))


def test_a_seeded_canvas_comes_out_the_same_whatever_shares_its_batch(model) -> None:
    """The job seeds each canvas from its images' ids; Ray Data may batch canvases differently on a rerun, and a
    canvas's result must not depend on its batch mates (eta = 1 draws fresh noise at every step)."""
    p = Purifier(model, ZipSettings(steps=3, pool=4, eta=1.0), batch_size=4)
    c = np.stack(_images([(32, 32)] * 4, seed=6))
    alone = p.purify_canvases(c[[0]], seeds=[11])
    first = p.purify_canvases(c[[0, 1]], seeds=[11, 22])
    second = p.purify_canvases(c[[2, 0, 3]], seeds=[33, 11, 44])
    for out in (first[0], second[1]):
        assert np.abs(out.astype(int) - alone[0].astype(int)).max() <= 1  # up to float rounding of other batch sizes
    assert np.abs(first[1].astype(int) - alone[0].astype(int)).max() > 10  # another seed is another sample


def test_cpu_slices_the_forward_pass_without_changing_the_samples(model) -> None:
    images = _images([(32, 32)] * 6, seed=3)
    whole = Purifier(model, ZipSettings(steps=3, pool=4), batch_size=6)
    assert whole.batch_size == 6 and whole.model_batch == 6  # 6 canvases of 32 px fit one CPU pass
    sliced = Purifier(model, ZipSettings(steps=3, pool=4), batch_size=6)
    sliced.model_batch = 4  # 4 + 2 per pass, as a CPU does with larger batches
    a, b = np.stack(whole(images)), np.stack(sliced(images))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # the same samples, up to float rounding
    big = Purifier(model, ZipSettings(steps=1, pool=4), canvas_size=256)
    assert (big.batch_size, big.model_batch) == (4, 1)  # 256 px: 4 canvases sampled together, 1 per CPU pass


def test_bad_input_is_named(model) -> None:
    p = Purifier(model, ZipSettings(steps=1))
    with pytest.raises(TypeError, match="image 1: expected dtype uint8"):
        p([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match=r"image 0: expected shape H x W x 3.*\(8, 8, 4\)"):
        p([np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ValueError, match="H x W x 3"):
        p([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(TypeError, match="numpy array"):
        p([[1, 2, 3]])
    bad = torch.zeros(1, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        p.purify_tensor(bad)
    with pytest.raises(ValueError, match="pool factor 3 does not divide the model's canvas size 32"):
        Purifier(model, ZipSettings(pool=3))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Purifier(model, precision="fp16")
    with pytest.raises(ValueError, match="unknown sampler"):
        ZipSettings(sampler="euler")
    with pytest.raises(ValueError, match="eta"):
        ZipSettings(eta=2.0)
    for bad in (0, 2.5, 21):
        with pytest.raises(ValueError, match="resample"):
            ZipSettings(resample=bad)
    for bad in (0.0, -0.3, 1.2):
        with pytest.raises(ValueError, match="start must be in"):
            ZipSettings(start=bad)


def test_settings_that_would_give_garbage_are_refused(model) -> None:
    """Values that used to pass and then return uninitialised or black images, or fail only at call time."""
    for name in ("batch_size", "canvas_size"):
        for bad in (0, -1, 2.5):
            with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
                Purifier(model, ZipSettings(steps=1), **{name: bad})
    for bad in (["fp16"], {"fp16": True}):  # a grid's list: was "TypeError: unhashable type: 'list'"
        with pytest.raises(ValueError, match="precision must be one of"):
            Purifier(model, ZipSettings(steps=1), precision=bad)
    for bad in (float("nan"), 0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="blend_k must be a number above 0"):
            ZipSettings(blend_k=bad)
    with pytest.raises(ValueError, match="steps must be an integer"):
        ZipSettings(steps=True)
    with pytest.raises(ValueError, match="unknown noise schedule 'bogus'"):
        ZipSettings(schedule="bogus")
    with pytest.raises(ValueError, match="large_images must be one of fit, stretch"):
        ZipSettings(large_images="bogus")
    p = Purifier(model, ZipSettings(steps=1))
    with pytest.raises(ValueError, match=r"got an array of shape \(8, 8, 3\); for one image, pass \[image\]"):
        p(np.zeros((8, 8, 3), np.uint8))
    assert [im.shape for im in p(np.zeros((2, 8, 8, 3), np.uint8))] == [(8, 8, 3)] * 2  # a batch array is fine


def test_a_prior_runs_only_with_the_noise_schedule_it_was_trained_with(model) -> None:
    from pipeline.checkpoint import LoadedCheckpoint

    cosine = LoadedCheckpoint(model, model.config, "0" * 64, "cosine.pt", None, meta={"schedule": "cosine"})
    with pytest.raises(ValueError, match="trained with the cosine noise schedule, but these settings sample with linear"):
        Purifier(model, ZipSettings(steps=1, schedule="linear"), checkpoint=cosine)
    assert Purifier(model, ZipSettings(steps=1, schedule="cosine"), checkpoint=cosine).schedule.name == "cosine"
    assert Purifier(model, ZipSettings(steps=1), checkpoint=cosine).schedule.name == "cosine"  # unset: the prior's
    unrecorded = LoadedCheckpoint(model, model.config, "0" * 64, "gd.pt", None, meta={})  # guided-diffusion's own
    assert Purifier(model, ZipSettings(steps=1), checkpoint=unrecorded).schedule.name == "linear"


def test_authors_code_settings() -> None:
    s = ZipSettings.authors_code(pool=2)
    assert (s.operators, s.blend_k, s.eta, s.pool) == ("gray,pool", 10.0, 1.0, 2)


def test_naive_purify_is_block_mean() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = 255
    out = naive_purify([image], 2)[0]
    assert out.shape == (4, 4, 3)
    assert np.all(out[:2, :2] == 64) and np.all(out[2:, :] == 0)  # 255 / 4 = 63.75, rounded


def test_naive_purify_takes_any_size_and_grey_images_like_the_purifier() -> None:
    """Sizes the pool does not divide were refused, and grey images too, though `Purifier` takes both."""
    from pipeline.evaluation.baselines import naive_transform

    rng = np.random.default_rng(3)
    odd = rng.integers(0, 256, (30, 33, 3), dtype=np.uint8)
    out = naive_purify([odd], 4)[0]
    assert out.shape == odd.shape
    np.testing.assert_array_equal(out, naive_transform(odd[None], 4)[0])
    np.testing.assert_array_equal(naive_purify([out], 4)[0], out)  # a projection: twice is once
    grey = odd[..., 0]
    grey_out, grey_hw1 = naive_purify([grey, grey[..., None]], 4)
    assert grey_out.shape == (30, 33) and grey_hw1.shape == (30, 33, 1)
    np.testing.assert_array_equal(grey_out, naive_transform(np.dstack([grey] * 3)[None], 4)[0, ..., 0])
    np.testing.assert_array_equal(grey_hw1[..., 0], grey_out)
    with pytest.raises(ValueError, match="naive_purify: pool must be a positive integer"):
        naive_purify([odd], 0)


def test_job_and_python_api_share_the_sampler_defaults(model) -> None:
    """`python jobs/purify.py` with no ZIP flags must purify exactly as `Purifier(model)` does."""
    from pipeline.config import JobConfig

    assert JobConfig().settings() == ZipSettings().for_prior({}) == Purifier(model).settings
    assert (ZipSettings().eta, ZipSettings().lam, ZipSettings().pool, ZipSettings().steps) == (1.0, 0.0, 4, 20)


def test_step_noise_is_not_a_copy_of_the_starting_noise(model, monkeypatch) -> None:
    """Each seeded canvas's step noise comes from a stream of its own, not from the one its starting noise came
    from (which would re-add the same noise it started with), and unseeded batches differ from each other."""
    from pipeline import sampler

    drawn: list[torch.Tensor] = []
    original = sampler._noise_like
    monkeypatch.setattr(sampler, "_noise_like", lambda x, g: drawn.append(original(x, g)) or drawn[-1])
    starts: list[torch.Tensor] = []
    ddim = sampler.SAMPLERS["ddim"]
    monkeypatch.setitem(sampler.SAMPLERS, "ddim", lambda *a, **kw: starts.append(kw["x_T"]) or ddim(*a, **kw))
    p = Purifier(model, ZipSettings(steps=3, pool=4, eta=1.0))
    c = np.stack(_images([(32, 32)] * 2, seed=8))
    p.purify_canvases(c, seeds=[5, 6])
    assert drawn and starts[0] is not None
    for noise in drawn:
        for i in range(2):
            assert not torch.allclose(noise[i], starts[0][i]), "step noise repeats the starting noise"

    same = np.stack([c[0], c[0]])
    one_per_batch = Purifier(model, ZipSettings(steps=3, pool=4, eta=1.0), batch_size=1).purify_canvases(same)
    assert np.abs(one_per_batch[0].astype(int) - one_per_batch[1].astype(int)).max() > 10  # not the same draw twice


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_model_in_another_dtype_than_fp32_is_refused_when_the_purifier_is_made(dtype) -> None:
    # BUG (fixed here): Purifier(model.half()) was made, then its first call stopped inside torch with "mat1 and mat2
    # must have the same dtype, but got Float and Half", naming neither the model nor precision='fp16'
    m = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="16",
                              num_res_blocks=1)).to(dtype)
    with pytest.raises(ValueError, match=rf"weights are {str(dtype).removeprefix('torch.')}.*model\.float\(\)"):
        Purifier(m, ZipSettings(steps=1))
    assert next(m.parameters()).dtype == dtype  # the caller's model is left as it was


def test_a_class_conditional_model_is_refused_when_the_purifier_is_made() -> None:
    # BUG (fixed here): made, then the first call said "class labels y must be given ...", which ZIP cannot do
    m = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="16",
                              num_res_blocks=1, class_cond=True))
    with pytest.raises(ValueError, match="class-conditional.*unconditional diffusion model"):
        Purifier(m, ZipSettings(steps=1))


def test_a_checkpoint_path_or_loaded_checkpoint_given_as_the_model_says_what_to_pass() -> None:
    # BUG (fixed here): Purifier("prior.pt") and Purifier(load_checkpoint(...)) stopped with "'str' object has no
    # attribute 'to'", naming neither the argument nor from_checkpoint
    from pathlib import Path

    from pipeline import load_checkpoint, shipped_prior

    path = shipped_prior("cifar10")
    for model, hint in ((path, r"Purifier\.from_checkpoint\(path\)"), (Path(path), r"Purifier\.from_checkpoint"),
                        (load_checkpoint(path), r"pass its \.model")):
        with pytest.raises(TypeError, match=rf"model must be a UNetModel, got {type(model).__name__}: .*{hint}"):
            Purifier(model, ZipSettings(steps=1))  # type: ignore[arg-type]
    assert Purifier(load_checkpoint(path).model, ZipSettings(steps=1)).canvas_size == 32


def test_the_purifiers_warnings_point_at_the_callers_line_not_the_librarys(model) -> None:
    """The fp16 overflow warning named pipeline/sampler.py (the sampler's call of the model) whichever line of a
    notebook purified; the shrink warning names the caller's line too. The overflow is made on the CPU (fp16 needs
    CUDA to be chosen, so it is set on the purifier after it is made)."""
    overflowed = []

    def overflow_once(module, args, out):  # as fp16 activations past 65504 do, in the first reduced-precision pass
        if torch.is_autocast_enabled("cpu") and not overflowed:
            overflowed.append(True)
            return torch.full_like(out, float("inf"))
        return out

    p = Purifier(model, ZipSettings(steps=1, pool=4), canvas_size=32)
    p.precision = "bf16"
    hook = model.register_forward_hook(overflow_once)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            p(_images([(40, 40)]), progress=False)
    finally:
        hook.remove()
    assert sorted((w.category.__name__, w.filename) for w in seen) == [("RuntimeWarning", __file__),
                                                                     ("UserWarning", __file__)]
    assert p.precision_fallbacks == 1
