"""Validation review (Dec 3): the model's config, the naive baseline, the point check of the target, a class-conditional
checkpoint without flags, and train_prior's stop hint, each as a user meets it.

- build_unet / UNetModel take a dict of guided-diffusion flags; None or a preset's name is a TypeError saying what to
  pass (both were an AttributeError from inside the model).
- UNetConfig refuses, when made, what no UNet fits (image_size 0 or 15, num_res_blocks 0, dropout 1, ...): these were
  taken and built a model that could not run, or failed deep inside torch. Every preset and the published 256x256
  uncond flags still build.
- naive_transform (A⁺A x) pads a side the pool factor does not divide by repeating the edge, as the purifier's tiling
  does, so it runs on any image ZIP runs on (it refused 31x17 and 1x2000 at pool 4).
- point_check refuses a NaN, infinite or boolean average (it judged "+NaN no" and True as a figure of 1), and
  jobs/target_table.py names and skips such a report.
- a class-conditional checkpoint without flags is said to be one (it was "matches none of the presets; pass --flags").
- train_prior on SIGTERM says a second SIGTERM quits unsaved (it said "Ctrl-C again"), and a second SIGTERM exits 143.
"""

from __future__ import annotations

import importlib.util
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline
import pipeline.evaluation.datasets as datasets
from pipeline import CheckpointError, UNetConfig, UNetModel, build_unet, load_checkpoint
from pipeline.evaluation.baselines import naive_transform
from pipeline.evaluation.target import point_check
from pipeline.presets import PRESETS, preset_config
from pipeline.tiling import pack, plan_layout, unpack
from tests.test_train_ux_cli import TINY, fake_cifar, run_script

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="",
             num_head_channels=32)
# The flags the ZIP paper's model is published with (guided-diffusion's README), as a user copies them.
UNCOND_256 = dict(attention_resolutions="32,16,8", class_cond=False, image_size=256, learn_sigma=True, num_channels=256,
                  num_head_channels=64, num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# 1. build_unet's argument


def test_build_unet_takes_a_dict_of_flags() -> None:
    assert shapes(build_unet(SMALL, "meta")) == shapes(build_unet(UNetConfig(**SMALL), "meta"))
    assert isinstance(UNetModel(SMALL).config, UNetConfig)
    assert sum(p.numel() for p in build_unet(UNCOND_256, "meta").parameters()) == 552_814_086


@pytest.mark.parametrize(("given", "advice"), [(None, "preset_config('256x256_diffusion_uncond')"),
                                               ("cifar10_prior_small", "preset_config('cifar10_prior_small')")])
def test_build_unet_of_no_config_says_what_to_pass(given: object, advice: str) -> None:
    with pytest.raises(TypeError, match="a UNetConfig or a dict of guided-diffusion create_model flags") as err:
        pipeline.build_unet(given)  # type: ignore[arg-type]
    assert advice in str(err.value) and type(given).__name__ in str(err.value)


@pytest.mark.parametrize("given", ["cifar10", "gtsrb", "runs/prior/prior.pt"])
def test_build_unet_of_a_name_that_is_no_preset_gives_advice_that_runs(given: str) -> None:
    # build_unet("cifar10") advised pipeline.preset_config('cifar10'), which refuses that name: "unknown preset 'cifar10'"
    with pytest.raises(TypeError) as err:
        pipeline.build_unet(given)  # type: ignore[arg-type]
    message = str(err.value)
    assert f"preset_config({given!r})" not in message
    if given in pipeline.SHIPPED_PRIORS:
        advice = f"pipeline.load_checkpoint(pipeline.shipped_prior({given!r})).config"
        assert advice in message
        assert eval(advice, {"pipeline": pipeline}) == pipeline.load_checkpoint(pipeline.shipped_prior(given)).config
    else:
        assert "pipeline.load_checkpoint(path).model" in message and "256x256_diffusion_uncond" in message


def test_a_bad_flag_in_a_dict_is_named() -> None:
    with pytest.raises(ValueError, match="num_chanels"):
        build_unet({**SMALL, "num_chanels": 32})


# 2. UNetConfig's values


@pytest.mark.parametrize(("changes", "said"), [
    (dict(image_size=15), "image_size 15 is not divisible by 2"),
    (dict(image_size=0), "image_size must be at least 1, got 0"),
    (dict(image_size=-16), "image_size must be at least 1, got -16"),
    (dict(image_size=36, channel_mult="1,2,2,2"), "image_size 36 is not divisible by 8"),
    (dict(channel_mult=","), "channel_mult must be comma-separated numbers"),
    (dict(channel_mult="1,0"), "channel_mult must be positive numbers"),
    (dict(channel_mult="1,nan"), "channel_mult must be positive numbers"),
    (dict(channel_mult="1,2.5"), "each must be a positive multiple of 32"),
    (dict(num_channels=0), "num_channels must be at least 1"),
    (dict(num_res_blocks=0), "num_res_blocks must be at least 1, got 0"),
    (dict(num_res_blocks=-1), "num_res_blocks must be at least 1, got -1"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
    (dict(dropout=float("nan")), r"dropout must be in \[0, 1\)"),
    (dict(attention_resolutions="5"), "attention resolution 5 does not divide image_size 16"),
    (dict(num_head_channels=0), "num_head_channels must be -1 \\(unset\\) or at least 1, got 0"),
    (dict(num_head_channels=-1, num_heads=0), "num_heads must be at least 1"),
    (dict(image_size="16"), "image_size must be an integer"),
])
def test_a_config_no_unet_fits_is_refused_when_made(changes: dict, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        UNetConfig(**{**SMALL, **changes})
    with pytest.raises(ValueError, match=said):  # the same through the flags of a checkpoint or a JSON file
        UNetConfig.from_flags({**SMALL, **changes})


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_still_builds(name: str) -> None:
    assert build_unet(preset_config(name), "meta") is not None


def test_real_configs_are_still_taken() -> None:
    UNetConfig()  # the defaults: 64 px, guided-diffusion's channel_mult for it
    assert UNetConfig(image_size=512, num_channels=256, attention_resolutions="32,16,8").channel_multipliers()[0] == 0.5
    assert UNetConfig(**{**SMALL, "channel_mult": [1, 2]}).channel_mult == "1,2"  # a list, as JSON flags give it
    assert UNetConfig(**{**SMALL, "num_head_channels": 64, "num_heads": 0}).num_heads == 0  # unread beside head channels


# 3. the naive baseline on any image size


@pytest.mark.parametrize(("height", "width"), [(31, 17), (1, 30), (5, 4)])
def test_naive_transform_pads_sizes_the_pool_does_not_divide_as_the_purifier_does(height: int, width: int) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    out = naive_transform(images, 4)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(naive_transform(out, 4), out)  # a projection
    # The block means ZIP keeps: the image's cell as the purifier's tiling pads it (edge pixels repeated), pooled.
    layout = plan_layout([(height, width)], canvas_size=32, align=4)
    canvas = pack([images[0]], layout).astype(np.float64)
    means = np.rint(canvas.reshape(1, 8, 4, 8, 4, 3).mean(axis=(2, 4))).astype(np.uint8)
    expected = unpack(means.repeat(4, axis=1).repeat(4, axis=2), layout)[0]
    assert np.array_equal(out[0], expected)


def test_naive_transform_takes_a_long_thin_image() -> None:
    images = np.random.default_rng(2).integers(0, 256, (1, 1, 2000, 3), dtype=np.uint8)
    out = naive_transform(images, 4)
    assert out.shape == (1, 1, 2000, 3)
    # One row padded to four copies of itself: each block's mean is that of its four pixels in the row.
    means = np.rint(images[0, 0].reshape(500, 4, 3).astype(np.float64).mean(axis=1)).astype(np.uint8)
    assert np.array_equal(out[0, 0], means.repeat(4, axis=0))


def test_naive_transform_of_a_divisible_size_is_the_block_mean() -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)
    means = np.rint(images.reshape(3, 2, 4, 3, 4, 3).astype(np.float64).mean(axis=(2, 4))).astype(np.uint8)
    assert np.array_equal(naive_transform(images, 4), means.repeat(4, axis=1).repeat(4, axis=2))


# 4. the point check of a report's averages

GOOD = {"ca": 90.0, "asr": 2.0, "pa": 80.0}


@pytest.mark.parametrize(("value", "said"), [(float("nan"), "NaN"), (True, "a boolean"), (float("inf"), "Infinity"),
                                             (10**400, "too large")], ids=["nan", "true", "inf", "1e400"])
@pytest.mark.parametrize("defense", ["zip", "naive"])
def test_point_check_refuses_an_average_that_is_no_figure(value: object, said: str, defense: str) -> None:
    averages = {"zip": dict(GOOD), "shrinkpad": dict(GOOD), "naive": dict(GOOD)}
    averages[defense]["pa"] = value
    with pytest.raises(ValueError, match=f"average PA for {defense} is .*{said}"):
        point_check(averages, "zip")
    assert len(point_check({"zip": GOOD, "shrinkpad": GOOD, "naive": {**GOOD, "ca": 91}}, "zip")) == 5


def test_target_table_names_and_skips_a_report_whose_average_is_nan_or_true(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("target_table_job", ROOT / "jobs" / "target_table.py")
    target_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(target_table)
    report = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    report.pop("target", None)
    report.pop("predictions", None)  # an older report: only its Average row to judge
    paths = []
    for name, value in (("nan", float("nan")), ("true", True)):
        report["average"]["zip"]["ca"] = value
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    target_table.main([*map(str, paths), str(ROOT / "docs" / "cifar10.json")])
    out, err = capsys.readouterr()
    assert "NaN" not in out and "| nan |" not in out and "| true |" not in out and "| cifar10 |" in out
    assert "nan.json: no target check for zip: the report's average CA for zip is NaN" in err, err
    assert "true.json: no target check for zip: the report's average CA for zip is a boolean (true)" in err, err


# 5. a class-conditional checkpoint without flags


def test_a_class_conditional_checkpoint_without_flags_is_said_to_be_one(tmp_path: Path) -> None:
    path = tmp_path / "cond.pt"
    torch.save(build_unet({**SMALL, "class_cond": True}).state_dict(), path)
    with pytest.raises(CheckpointError, match="is a class-conditional model") as err:
        load_checkpoint(str(path))
    assert "1000 classes" in str(err.value) and "needs an unconditional diffusion model" in str(err.value)
    assert "pass --preset or --flags" not in str(err.value)
    with pytest.raises(CheckpointError, match="matches none of the presets"):  # inspecting one: its flags are needed
        load_checkpoint(str(path), allow_class_cond=True)
    assert load_checkpoint(str(path), flags={**SMALL, "class_cond": True}, allow_class_cond=True).config.class_cond


# 6. train_prior stopped by a scheduler


@pytest.fixture
def stand_in_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)


def signals_at_step(monkeypatch: pytest.MonkeyPatch, signum: int, at: int, times: int) -> None:
    original = torch.optim.Adam.step
    calls = [0]

    def step(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == at:
            for _ in range(times):
                signal.raise_signal(signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize(("name", "times", "status", "hint"), [
    ("SIGTERM", 1, 143, "(another SIGTERM to quit without saving)"),
    ("SIGTERM", 2, 143, "(another SIGTERM to quit without saving)"),
    ("SIGINT", 1, 130, "(Ctrl-C again to quit without saving)"),
    ("SIGINT", 2, 130, "(Ctrl-C again to quit without saving)"),
])
def test_the_stop_hint_and_status_follow_the_signal(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture, stand_in_data: None,
        name: str, times: int, status: int, hint: str) -> None:
    signum = getattr(signal, name)
    previous = signal.signal(signum, signal.default_int_handler)  # replaced by the script's own while it trains
    try:
        signals_at_step(monkeypatch, signum, at=2, times=times)
        got = run_script(monkeypatch, "--max-steps", "4", "--save-every-min", "60", "--out", str(tmp_path), *TINY)
    finally:
        signal.signal(signum, previous)
    err = capsys.readouterr().err
    assert got == status, err
    assert f"{name}: saving the state after this step {hint}" in err, err
    if name == "SIGTERM":
        assert "Ctrl-C" not in err, err
    if times == 2:  # quit at once: the state of step 2 was never saved
        assert f"interrupted ({name})" in err and not (tmp_path / "last.pt").exists(), err
