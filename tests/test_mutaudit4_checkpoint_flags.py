"""Mutation audit of a checkpoint's refusal for flags its weights do not fit (`pipeline.checkpoint._flag_advice`) and
of guided-diffusion's diffusion settings given as flags (`pipeline.model`): the one flag that fits is named where a
variant tried cannot be built (a default channel_mult of no such image size), for four residual blocks and for
guided-diffusion's 512 px size; each of model_and_diffusion_defaults()'s diffusion settings is named as one, and one
alone is said in the singular. Stand-in models of a few channels, saved in under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.model import build_unet


def _saved(tmp_path: Path, flags: dict[str, Any]) -> str:
    path = tmp_path / "model.pt"
    torch.save(build_unet(flags).state_dict(), path)
    return str(path)


def _advice(path: str, flags: dict[str, Any]) -> str:
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path, flags=flags)
    message = str(refused.value)
    assert "does not fit the given flags" in message, message
    return message


def test_the_flag_is_named_where_other_variants_cannot_be_built(tmp_path: Path) -> None:
    # channel_mult left to image_size's default: the variant of image_size 32 has none, and is passed over
    flags = dict(image_size=64, num_channels=32, num_res_blocks=1, attention_resolutions="16", num_head_channels=32,
                 learn_sigma=True)
    path = _saved(tmp_path, flags)
    assert "one change: learn_sigma=True (not False)" in _advice(path, {**flags, "learn_sigma": False})


def test_four_residual_blocks_are_named(tmp_path: Path) -> None:
    flags = dict(image_size=32, num_channels=32, num_res_blocks=4, channel_mult="1,2", attention_resolutions="16",
                 num_head_channels=32)
    path = _saved(tmp_path, flags)
    assert "one change: num_res_blocks=4 (not 2)" in _advice(path, {**flags, "num_res_blocks": 2})


def test_guided_diffusion_s_512_px_size_is_named(tmp_path: Path) -> None:
    # the 512 px model's flags given with image_size 256: its attention levels move, as with the wrong image size
    flags = dict(image_size=512, num_channels=32, num_res_blocks=1, channel_mult="1,2,2,2",
                 attention_resolutions="128,64", num_head_channels=32)
    path = _saved(tmp_path, flags)
    assert "image_size=512 (not 256)" in _advice(path, {**flags, "image_size": 256})


FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
             num_head_channels=32)
# guided-diffusion's model_and_diffusion_defaults() beside create_model's flags, and create_gaussian_diffusion's
# sigma_small: each is named as a diffusion setting, in this order
DIFFUSION = {"diffusion_steps": 1000, "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False,
             "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False, "sigma_small": False}


def test_every_diffusion_setting_is_named_as_one(tmp_path: Path) -> None:
    path = _saved(tmp_path, FLAGS)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path, flags={**FLAGS, **DIFFUSION})
    assert (f"; {', '.join(DIFFUSION)} are guided-diffusion's diffusion settings, not create_model's model flags: leave "
            "them out (") in str(refused.value), refused.value


@pytest.mark.parametrize("name", list(DIFFUSION))
def test_one_diffusion_setting_alone_is_said_as_one(tmp_path: Path, name: str) -> None:
    path = _saved(tmp_path, FLAGS)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path, flags={**FLAGS, name: DIFFUSION[name]})
    assert (f"; {name} is one of guided-diffusion's diffusion settings, not create_model's model flags: leave it out ("
            ) in str(refused.value), refused.value
