"""Mends to pipeline/checkpoint.py from review 2 (Dec 3): what the loader says about files it cannot use (a pickled
module, a damaged bundle, flags or noise settings it cannot build or check), and train_prior.py's last.pt as a
--checkpoint. Each test failed on the code before the mend; all run in seconds on a 32 px stand-in model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.model import UNetConfig, build_unet
from pipeline.settings import ZipSettings, check_trained_timesteps
from tests.jobutil import TINY_FLAGS, tiny_model_file


def saved(tmp_path: Path, obj: Any, name: str = "file.pt") -> str:
    torch.save(obj, tmp_path / name)
    return str(tmp_path / name)


def tiny_bundle(tmp_path: Path) -> dict[str, Any]:
    return torch.load(tiny_model_file(tmp_path), weights_only=True)


def test_a_pickled_module_is_refused_naming_its_class_and_the_state_dict_fix(tmp_path: Path) -> None:
    model = build_unet(UNetConfig.from_flags(TINY_FLAGS))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(saved(tmp_path, model))
    message = str(err.value)
    assert "pipeline.model.UNetModel" in message  # what the file holds
    assert "torch.save(model.state_dict()" in message  # and how to save what loads
    assert "\x1b" not in message and "two options" not in message


@pytest.mark.parametrize("part, value, named", [
    ("state_dict", {"w": [1.0, 2.0]}, "'state_dict' is a dict, not a dict of tensors"),
    ("flags", "image_size=32", "'flags' is a str"),
    ("meta", [], "'meta' is a list"),
])
def test_a_bundle_part_of_the_wrong_type_is_named(tmp_path: Path, part: str, value: Any, named: str) -> None:
    bundle = tiny_bundle(tmp_path)
    bundle[part] = value
    with pytest.raises(CheckpointError, match=named):
        load_checkpoint(saved(tmp_path, bundle))


def test_a_bundle_with_an_unknown_or_mistyped_flag_is_a_checkpoint_error(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path)
    bundle["flags"]["num_chanels"] = 32  # a typo
    with pytest.raises(CheckpointError, match="num_chanels"):
        load_checkpoint(saved(tmp_path, bundle, "typo.pt"))
    with pytest.raises(CheckpointError, match="given flags"):  # --flags from the command line: the same
        load_checkpoint(tiny_model_file(tmp_path), flags={**TINY_FLAGS, "channel_mult": 2.5})


@pytest.mark.parametrize("key, value", [("max_timestep", "500"), ("max_timestep", -1), ("max_timestep", True),
                                        ("schedule", "cosin")])
def test_noise_settings_the_purifier_cannot_check_are_refused_at_load(tmp_path: Path, key: str, value: Any) -> None:
    bundle = tiny_bundle(tmp_path)
    bundle["meta"][key] = value
    with pytest.raises(CheckpointError, match=key):
        load_checkpoint(saved(tmp_path, bundle))


def test_a_numeric_max_timestep_still_loads_and_is_checked(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path)
    bundle["meta"].update(max_timestep=500, schedule="linear")
    loaded = load_checkpoint(saved(tmp_path, bundle))
    with pytest.raises(ValueError, match="0..500"):
        check_trained_timesteps(loaded.meta, ZipSettings(start=0.9))


def resume_state(tmp_path: Path, **learned: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """A last.pt as jobs/train_prior.py writes it (its keys; the optimiser state left empty)."""
    torch.manual_seed(1)
    config = UNetConfig.from_flags(TINY_FLAGS)
    model, ema = build_unet(config), build_unet(config)
    state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": {"state": {}, "param_groups": []}, "step": 7,
             "images_seen": 28, "elapsed_s": 1.0, "flags": config.to_flags(), "data": "cifar10", "objective": "epsilon",
             "timesteps": 1000, **learned}
    return saved(tmp_path, state, "last.pt"), ema.state_dict()


def test_a_train_prior_resume_state_loads_its_ema_weights_and_noise_settings(tmp_path: Path) -> None:
    path, ema = resume_state(tmp_path, schedule="cosine", max_timestep=400)
    loaded = load_checkpoint(path)
    assert loaded.config.num_channels == 32
    assert all(torch.equal(v, ema[k]) for k, v in loaded.model.state_dict().items())  # the EMA, not "model"
    assert loaded.meta["schedule"] == "cosine" and loaded.meta["max_timestep"] == 400
    with pytest.raises(ValueError, match="cosine"):  # so a purifier with another schedule refuses it, as for prior.pt
        check_trained_timesteps(loaded.meta, ZipSettings(schedule="linear"))
    assert ZipSettings().for_prior(loaded.meta).schedule == "cosine"  # and one left unset takes it


def test_a_model_and_ema_save_without_flags_is_still_refused_by_name(tmp_path: Path) -> None:
    model = build_unet(UNetConfig.from_flags(TINY_FLAGS))
    path = saved(tmp_path, {"model": model.state_dict(), "ema": model.state_dict(), "opt": {}, "step": 1})
    with pytest.raises(CheckpointError, match=r"2 state dicts \('model', 'ema'\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("verify_only", [False, True])
def test_a_checkpoint_with_weights_that_are_no_numbers_is_refused(tmp_path: Path, value: float,
                                                                  verify_only: bool) -> None:
    # BUG (fixed here): a diverged or damaged save (a NaN weight, or one past fp16's range saved as fp16: inf) loaded,
    # and every image it purified came back black (NaN pixels cast to uint8), counted as purified
    bundle = tiny_bundle(tmp_path)
    key = next(k for k, v in bundle["state_dict"].items() if v.ndim == 4)
    bundle["state_dict"][key].view(-1)[3] = value
    with pytest.raises(CheckpointError, match=f"holds NaN or infinite weights \\({key}"):
        load_checkpoint(saved(tmp_path, bundle), verify_only=verify_only)
