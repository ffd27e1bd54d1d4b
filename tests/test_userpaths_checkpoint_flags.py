"""A user's own guided-diffusion checkpoint given with flags that do not match it (user path, Dec 7): the refusal names
the one flag whose change makes the weights fit, where a list of mismatched keys (`out.2.weight: checkpoint (6, ...)`,
`missing output_blocks.3.1.in_layers...`) left the user to work it out. Stand-in models of 32 px, built in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.model import build_unet
from tests.jobutil import image_bytes

# A user's guided-diffusion model as create_model's flags describe it: learned sigmas, up/down-sampling res blocks,
# attention at 16 and 8 px, saved as guided-diffusion saves, a bare state dict.
USER_FLAGS: dict[str, Any] = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                                  attention_resolutions="16,8", num_head_channels=32, resblock_updown=True,
                                  use_scale_shift_norm=True, learn_sigma=True, class_cond=False)


@pytest.fixture(scope="module")
def user_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("user") / "model.pt"
    torch.save(build_unet(USER_FLAGS).state_dict(), path)
    return str(path)


def test_the_users_own_flags_load_it(user_checkpoint: str) -> None:
    assert load_checkpoint(user_checkpoint, flags=USER_FLAGS).config.learn_sigma


@pytest.mark.parametrize("wrong, advice", [
    ({"learn_sigma": False}, "learn_sigma=True (not False)"),
    ({"num_channels": 64}, "num_channels=32 (not 64)"),
    ({"resblock_updown": False}, "resblock_updown=True (not False)"),
    ({"num_res_blocks": 2}, "num_res_blocks=1 (not 2)"),
    ({"use_scale_shift_norm": False}, "use_scale_shift_norm=True (not False)"),
    # attention one level off: the weights' own attention levels, and the image size that would put it there
    ({"attention_resolutions": "8"}, "attention_resolutions='16,8' (not '8')"),
    ({"image_size": 64}, "image_size=32 (not 64)"),
])
@pytest.mark.parametrize("verify_only", [False, True])  # the job's driver checks with verify_only
def test_flags_one_off_are_refused_naming_the_flag_that_fits(
        user_checkpoint: str, wrong: dict[str, Any], advice: str, verify_only: bool) -> None:
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(user_checkpoint, flags={**USER_FLAGS, **wrong}, verify_only=verify_only)
    message = str(refused.value)
    assert f"checkpoint {user_checkpoint} does not fit the given flags" in message  # the file and what is wrong
    assert f"The weights fit these flags with one change: {advice}" in message


def test_a_wrong_image_size_also_names_the_attention_it_would_mean(user_checkpoint: str) -> None:
    # image_size and attention_resolutions move the attention blocks alike: both readings are offered
    with pytest.raises(CheckpointError, match=r"image_size=32 \(not 64\), or attention_resolutions='32,16' "):
        load_checkpoint(user_checkpoint, flags={**USER_FLAGS, "image_size": 64})


def test_weights_of_another_architecture_altogether_get_no_advice(user_checkpoint: str) -> None:
    # two flags off: no single change fits, and no guess is made
    with pytest.raises(CheckpointError, match="does not fit the given flags") as refused:
        load_checkpoint(user_checkpoint, flags={**USER_FLAGS, "learn_sigma": False, "num_channels": 64})
    assert "one change" not in str(refused.value)


def test_the_job_refuses_such_flags_before_any_work_with_the_advice(
        user_checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    try:
        status = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint",
                       user_checkpoint, "--flags", json.dumps({**USER_FLAGS, "learn_sigma": False}), "--dry-run"])
    except SystemExit as stop:
        status = int(stop.code)
    assert status == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint {user_checkpoint} does not fit the given flags" in err
    assert "learn_sigma=True (not False)" in err
    assert not (tmp_path / "out").exists()


def test_guided_diffusions_diffusion_settings_in_the_flags_are_named_for_what_they_are(user_checkpoint: str) -> None:
    # model_and_diffusion_defaults() (or the guided-diffusion README's MODEL_FLAGS with DIFFUSION_FLAGS) holds these
    # beside create_model's flags: refused, as the sampler does not read them, but no longer only as "unknown"
    flags = {**USER_FLAGS, "diffusion_steps": 1000, "noise_schedule": "linear", "use_fp16": False}
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(user_checkpoint, flags=flags)
    message = str(refused.value)
    assert "unknown UNet flag(s) ['diffusion_steps', 'noise_schedule']" in message
    assert ("diffusion_steps, noise_schedule are guided-diffusion's diffusion settings, not create_model's model flags: "
            "leave them out") in message
    assert "--schedule" in message
    with pytest.raises(CheckpointError) as other:  # a flag of no kind known: no such advice
        load_checkpoint(user_checkpoint, flags={**USER_FLAGS, "num_channel": 32})
    assert "diffusion settings" not in str(other.value)


def test_a_bare_state_dict_of_no_preset_says_how_to_name_its_architecture_in_python_too(user_checkpoint: str) -> None:
    # guided-diffusion saves bare state dicts; one of no published architecture needs its flags. The refusal named
    # only the job's --preset / --flags to a Purifier.from_checkpoint caller, whose arguments are preset= and flags=.
    from pipeline import Purifier

    with pytest.raises(CheckpointError) as refused:
        Purifier.from_checkpoint(user_checkpoint)
    message = str(refused.value)
    assert f"checkpoint {user_checkpoint} matches none of the presets" in message
    assert "pass --preset or --flags (guided-diffusion's create_model flags as JSON; preset= or flags= in Python)" in message
    assert Purifier.from_checkpoint(user_checkpoint, flags=USER_FLAGS, steps=1)  # as it says
