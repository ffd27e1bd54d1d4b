"""Mutation audit of pipeline/checkpoint.py and pipeline/model.py (Dec 6): what loading a user's checkpoint, saving a
bundle and the UNet promise that no test held them to. Each test kills a mutant the suite left alive (a dropped
branch, a weakened check, a lost part of a message, a model that silently computes something else); all run in seconds
on 16-32 px stand-in models, the reference ones skip without the project's shared folder."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

import pipeline.checkpoint as checkpoint_module
from pipeline.checkpoint import CheckpointError, load_checkpoint, save_bundle
from pipeline.model import UNetConfig, build_unet
from tests.jobutil import TINY_FLAGS, tiny_model_file


def saved(tmp_path: Path, obj: Any, name: str = "file.pt", **save_options: Any) -> str:
    torch.save(obj, tmp_path / name, **save_options)
    return str(tmp_path / name)


def tiny_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_unet(UNetConfig.from_flags(TINY_FLAGS)).state_dict()


# ---- reading the file


def test_a_torch_file_in_the_legacy_pickle_format_loads(tmp_path: Path) -> None:
    # torch.save(..., _use_new_zipfile_serialization=False): how files from before torch 1.6, and some tools, are written
    weights = tiny_weights()
    path = saved(tmp_path, weights, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path, flags=TINY_FLAGS)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("obj, named", [(torch.zeros(3), "Tensor"), ([torch.zeros(3)], "list")])
def test_a_file_holding_no_dict_is_refused_naming_what_it_holds(tmp_path: Path, obj: Any, named: str) -> None:
    with pytest.raises(CheckpointError, match=f"holds a {named}, expected a state dict"):
        load_checkpoint(saved(tmp_path, obj), flags=TINY_FLAGS)


# ---- which architecture, and whether the weights fit it


def test_flags_that_are_no_dict_are_a_checkpoint_error_saying_so(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="from the given flags: UNet flags must be a dict .*got list"):
        load_checkpoint(tiny_model_file(tmp_path), flags=[("image_size", 32)])  # type: ignore[arg-type]


def test_given_flags_win_over_a_preset_and_over_the_bundles_own(tmp_path: Path) -> None:
    # load_checkpoint's order: flags, preset, the bundle's own flags, the preset the shapes match
    weights = tiny_weights()
    loaded = load_checkpoint(saved(tmp_path, weights), flags=TINY_FLAGS, preset="cifar10_prior_small")
    assert loaded.config == UNetConfig.from_flags(TINY_FLAGS)
    other = {**TINY_FLAGS, "num_channels": 64}
    with pytest.raises(CheckpointError, match="does not fit the given flags"):
        load_checkpoint(tiny_model_file(tmp_path), flags=other)


@pytest.mark.parametrize("verify_only", [False, True])
@pytest.mark.parametrize("damage, said", [
    ("extra", r"1 key/shape mismatch\(es\), first: unexpected extra\.weight \(3,\)"),
    ("missing", r"1 key/shape mismatch\(es\), first: missing out\.2\.bias \(3,\)"),
    ("shape", r"1 key/shape mismatch\(es\), first: out\.2\.bias: checkpoint \(6,\) vs model \(3,\)"),
])
def test_weights_that_do_not_fit_are_refused_naming_the_key_also_when_only_verified(
        tmp_path: Path, damage: str, said: str, verify_only: bool) -> None:
    # an extra key or a wrong shape passed the job driver's check (verify_only) and failed in every purifier actor
    weights = tiny_weights()
    if damage == "extra":
        weights["extra.weight"] = torch.zeros(3)
    elif damage == "missing":
        del weights["out.2.bias"]
    else:
        weights["out.2.bias"] = torch.zeros(6)
    with pytest.raises(CheckpointError, match=said):
        load_checkpoint(saved(tmp_path, weights), flags=TINY_FLAGS, verify_only=verify_only)


def test_a_key_that_alone_carries_a_wrapper_prefix_is_named_as_it_is(tmp_path: Path) -> None:
    # only a prefix every key carries is a wrapper's; one stray "module." key must not shorten all the others
    weights = {**tiny_weights(), "module.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 key/shape mismatch\(es\), first: unexpected module\.extra"):
        load_checkpoint(saved(tmp_path, weights), flags=TINY_FLAGS)


def test_weights_under_a_prefix_that_do_not_fit_get_no_advice_to_strip_it(tmp_path: Path) -> None:
    weights = {f"model.{k}": v for k, v in tiny_weights().items()}
    weights["model.out.2.bias"] = torch.zeros(6)  # a model of another kind under the prefix
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(saved(tmp_path, weights), flags=TINY_FLAGS)
    assert "key prefix" not in str(err.value)


def test_a_pin_of_64_characters_that_are_not_hexadecimal_is_refused_before_the_file_is_read(tmp_path: Path,
                                                                                               monkeypatch) -> None:
    read: list[str] = []
    monkeypatch.setattr(checkpoint_module, "read_bytes", lambda uri, *a: read.append(uri) or b"")
    with pytest.raises(CheckpointError, match="expected_sha256 must be 64 hexadecimal digits"):
        load_checkpoint(str(tmp_path / "prior.pt"), expected_sha256="g" * 64)
    assert read == []


# ---- the model load_checkpoint returns


def test_a_verified_checkpoint_holds_no_weights_in_memory(tmp_path: Path) -> None:
    loaded = load_checkpoint(tiny_model_file(tmp_path), verify_only=True)
    assert all(p.is_meta for p in loaded.model.parameters())


def test_build_unet_on_the_meta_device_allocates_no_weights() -> None:
    model = build_unet(UNetConfig.from_flags(TINY_FLAGS), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_an_fp16_bundle_loads_as_a_frozen_fp32_model_in_eval_mode_with_the_same_values(tmp_path: Path) -> None:
    path = tiny_model_file(tmp_path)
    stored = torch.load(path, weights_only=True)["state_dict"]
    loaded = load_checkpoint(path)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training
    assert all(torch.equal(loaded.model.state_dict()[k], v.float()) for k, v in stored.items())


# ---- save_bundle


def test_a_bundle_is_stored_in_fp16_by_default_in_a_folder_it_makes_and_leaves_no_temporary(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig.from_flags(TINY_FLAGS))
    path = tmp_path / "runs" / "new" / "prior.pt"
    sha = save_bundle(path, model, meta={"schedule": "linear"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["prior.pt"]
    bundle = torch.load(path, weights_only=True)
    assert {v.dtype for v in bundle["state_dict"].values()} == {torch.float16}
    assert bundle["meta"] == {"schedule": "linear"} and bundle["flags"] == model.config.to_flags()
    assert load_checkpoint(str(path), expected_sha256=sha).config == model.config


# ---- the UNet


def test_flags_left_out_take_guided_diffusions_defaults() -> None:
    # A guided-diffusion flags dict need not repeat create_model's defaults (model_and_diffusion_defaults in its
    # script_util.py): a different default here builds another model from the same flags, whose weights do not fit.
    assert UNetConfig().to_flags() == {
        "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "channel_mult": "", "attention_resolutions": "16,8",
        "num_heads": 4, "num_head_channels": -1, "num_heads_upsample": -1, "use_scale_shift_norm": True,
        "resblock_updown": False, "use_new_attention_order": False, "learn_sigma": False, "class_cond": False,
        "dropout": 0.0,
    }


def test_a_fresh_unet_starts_as_guided_diffusions_does_predicting_zero() -> None:
    # guided-diffusion zero-initialises each residual branch's last convolution and the output layer (zero_module):
    # a model trained from scratch (jobs/train_prior.py) starts from an identity UNet that predicts 0 (here 8 residual
    # blocks, 4 attention blocks and the output layer)
    torch.manual_seed(0)
    model = build_unet(UNetConfig.from_flags({**TINY_FLAGS, "attention_resolutions": "16"}))
    zeroed = [m for name, m in model.named_modules() if name.endswith(("out_layers.3", "proj_out")) or name == "out.2"]
    assert len(zeroed) == 13 and all(not p.any() for m in zeroed for p in m.parameters())
    with torch.no_grad():
        assert not model(torch.randn(2, 3, 32, 32), torch.tensor([10, 900])).any()


# ---- bugs found by the audit


def test_a_legacy_format_file_cut_inside_its_pickle_is_said_to_be_cut_not_to_hold_a_pickled_object(tmp_path: Path) -> None:
    # BUG (fixed here): a torch file in the legacy (non-zip) format cut short in its first few hundred bytes (a partial
    # download) was "refused to load ...: it holds a pickled Python object (collections.OrderedDi) ... save its weights
    # instead: torch.save(model.state_dict(), ...)", advice for another problem; torch's unpickler had refused the name
    # cut short as a global it does not allow
    buf = io.BytesIO()
    torch.save(tiny_weights(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    cut = data.find(b"collections\nOrderedDict") + len(b"collections\nOrderedDi")
    (tmp_path / "cut.pt").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"is not a readable torch file \(truncated or corrupt\?\)") as err:
        load_checkpoint(str(tmp_path / "cut.pt"), flags=TINY_FLAGS)
    assert "pickled Python object" not in str(err.value)


def test_a_pickled_object_of_a_class_this_process_never_imported_is_still_refused_as_one(tmp_path: Path) -> None:
    # what the fix above must not take for a cut file: a whole model of the user's own class (torch.save(model) in the
    # legacy format, by hand: the module is not there to pickle from), whose module this process never imported
    pickled = (b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00."
               b"\x80\x02cmy_training_code.models\nNet\nq\x00)\x81q\x01.")
    (tmp_path / "model.pt").write_bytes(pickled)
    with pytest.raises(CheckpointError, match=r"holds a pickled Python object \(my_training_code\.models\.Net\)"):
        load_checkpoint(str(tmp_path / "model.pt"), flags=TINY_FLAGS)


@pytest.mark.parametrize("schedule", [["linear"], {"name": "linear"}])
def test_a_noise_schedule_recorded_as_no_name_is_refused_naming_it(tmp_path: Path, schedule: Any) -> None:
    # BUG (fixed here): a bundle (or a train_prior.py resume state) whose meta records the schedule as a list or a dict
    # stopped the load with "TypeError: unhashable type: 'list'", no CheckpointError, and so no clean error line
    bundle = torch.load(tiny_model_file(tmp_path), weights_only=True)
    bundle["meta"]["schedule"] = schedule
    with pytest.raises(CheckpointError, match=r"records the noise schedule .*; known: linear, cosine"):
        load_checkpoint(saved(tmp_path, bundle), verify_only=True)
