"""Checkpoints load safely from any fsspec URI and fail loudly when they are wrong."""

from __future__ import annotations

import hashlib
import io
import os

import fsspec
import pytest
import torch

from pipeline.checkpoint import CheckpointError, infer_preset, load_checkpoint, save_bundle
from pipeline.model import UNetConfig, build_unet

FLAGS = dict(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="16", num_res_blocks=1)


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    model = build_unet(UNetConfig.from_flags(FLAGS))
    path = tmp_path / "prior.pt"
    sha = save_bundle(path, model, meta={"note": "test"}, dtype=torch.float32)
    return path, sha, model


def test_bundle_roundtrip_reports_sha256(bundle) -> None:
    path, sha, model = bundle
    loaded = load_checkpoint(str(path))
    assert loaded.sha256 == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.meta == {"note": "test"} and loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_loads_from_fsspec_uri(bundle) -> None:
    path, sha, _ = bundle
    with fsspec.open("memory://ckpt/prior.pt", "wb") as f:
        f.write(path.read_bytes())
    assert load_checkpoint("memory://ckpt/prior.pt").sha256 == sha


def test_plain_state_dict_and_safetensors(tmp_path, bundle) -> None:
    _, _, model = bundle
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    assert load_checkpoint(str(plain), flags=FLAGS).config == model.config
    with pytest.raises(CheckpointError, match="matches none of the presets"):
        load_checkpoint(str(plain))
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    assert load_checkpoint(str(st), flags=FLAGS).config == model.config


def test_pinned_sha256_mismatch_refuses(bundle) -> None:
    path, sha, _ = bundle
    assert load_checkpoint(str(path), expected_sha256=sha.upper()).sha256 == sha
    with pytest.raises(CheckpointError, match="pinned; refusing"):
        load_checkpoint(str(path), expected_sha256="0" * 64)


@pytest.mark.parametrize("arguments, said", [
    (dict(expected_sha256=""), "expected_sha256 must be 64 hexadecimal digits .*got ''"),
    (dict(expected_sha256="ab12"), "expected_sha256 must be 64 hexadecimal digits"),
    (dict(expected_sha256=0), "expected_sha256 must be 64 hexadecimal digits"),
    (dict(storage_options="anon=true"), "storage_options must be a mapping .*got str"),
    (dict(uri=None), "the checkpoint must be a path or URI .*got None"),
    (dict(uri=""), "the checkpoint must be a path or URI .*got ''"),
])
def test_an_argument_that_cannot_name_or_pin_a_checkpoint_is_refused_by_name_before_it_is_read(
        bundle, monkeypatch, arguments: dict, said: str) -> None:
    """An empty pin (read from an unset variable) loaded the file unchecked; a pin of another length was found wrong
    only after the whole file was read, a uri of None was "TypeError: argument of type 'NoneType' is not iterable",
    and storage_options given as text an AttributeError about 'items'."""
    import pipeline.checkpoint as checkpoint_module

    read = []
    monkeypatch.setattr(checkpoint_module, "read_bytes", lambda *a, **k: read.append(a) or bundle[0].read_bytes())
    arguments = {"uri": str(bundle[0]), **arguments}
    with pytest.raises(CheckpointError, match=f"^{said}"):
        load_checkpoint(arguments.pop("uri"), **arguments)
    assert read == []


def test_wrong_architecture_names_preset_and_keys(tmp_path, bundle) -> None:
    path, _, _ = bundle
    with pytest.raises(CheckpointError, match=r"preset 'cifar10_prior_small'.*mismatch.*(missing|unexpected|checkpoint)"):
        load_checkpoint(str(path), preset="cifar10_prior_small")
    with pytest.raises(CheckpointError, match="unknown preset 'nope'"):
        load_checkpoint(str(path), preset="nope")


def test_truncated_missing_and_hostile_files(tmp_path, bundle) -> None:
    path, _, _ = bundle
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(truncated))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "absent.pt"))

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    hostile = tmp_path / "hostile.pt"
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(1), "payload": RunsCode()}, buf)
    hostile.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(str(hostile))


def test_preset_inference_on_meta_models() -> None:
    from pipeline.presets import preset_config

    model = build_unet(preset_config("cifar10_prior_small"))
    assert infer_preset(model.state_dict()) == "cifar10_prior_small"


def test_shipped_priors_load_by_name_and_unknown_names_are_refused() -> None:
    from pipeline import SHIPPED_PRIORS, load_checkpoint, shipped_prior

    for name in SHIPPED_PRIORS:
        loaded = load_checkpoint(shipped_prior(name))
        assert loaded.config.image_size == 32 and not loaded.config.learn_sigma
    with pytest.raises(ValueError, match="shipped priors: cifar10, gtsrb"):
        shipped_prior("imagenet")


def test_a_checkpoint_storage_refuses_is_a_clear_error(monkeypatch) -> None:
    """Access denied or wrong credentials on a checkpoint URI: a message naming it, not an OSError traceback."""
    import pipeline.checkpoint as checkpoint

    class Forbidden:
        def open(self, path, mode):
            raise PermissionError("Forbidden")

    monkeypatch.setattr(checkpoint, "storage_path", lambda uri, options: (Forbidden(), uri))
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint s3://bucket/m/prior.pt: .*Forbidden"):
        load_checkpoint("s3://bucket/m/prior.pt")


@pytest.mark.parametrize("wrap", ["state_dict", "model", "ema", "module_prefix", "compiled_ddp", "lightning_like"])
def test_training_saves_that_wrap_a_state_dict_load(tmp_path, bundle, wrap) -> None:
    """{'state_dict': ...}, {'model': ...}, {'ema': ...} and DDP 'module.' keys were refused as 'neither a state
    dict nor a bundle' or as hundreds of missing keys; the weights in them are an ordinary guided-diffusion UNet."""
    _, _, model = bundle
    sd = model.state_dict()
    obj = {
        "state_dict": {"state_dict": sd},
        "model": {"model": sd, "step": 1200},
        "ema": {"ema": sd, "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "step": torch.tensor(5)},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "compiled_ddp": {"model": {f"_orig_mod.module.{k}": v for k, v in sd.items()}},
        "lightning_like": {"state_dict": sd, "epoch": 3, "optimizer_states": [{"state": {}}]},
    }[wrap]
    path = tmp_path / "wrapped.pt"
    torch.save(obj, path)
    loaded = load_checkpoint(str(path), flags=FLAGS)
    for k, v in sd.items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_two_candidate_state_dicts_are_refused_by_name(tmp_path, bundle) -> None:
    _, _, model = bundle
    torch.save({"model": model.state_dict(), "ema": model.state_dict()}, tmp_path / "both.pt")
    with pytest.raises(CheckpointError, match=r"2 state dicts \('model', 'ema'\)"):
        load_checkpoint(str(tmp_path / "both.pt"), flags=FLAGS)
    torch.save({"weights_here": {"a": torch.zeros(1)}, "step": 3}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"its keys: 'weights_here', 'step'"):
        load_checkpoint(str(tmp_path / "odd.pt"), flags=FLAGS)


def test_class_conditional_checkpoint_is_refused_before_any_data(tmp_path) -> None:
    """A class-conditional model loaded (and passed the job driver's verify_only check), then failed on the first
    batch inside the purifier actor with 'class labels y must be given...', after data had been read."""
    flags = {**FLAGS, "class_cond": True}
    torch.save(build_unet(UNetConfig.from_flags(flags)).state_dict(), tmp_path / "cond.pt")
    for kwargs in ({"flags": flags}, {"flags": flags, "verify_only": True}, {"flags": FLAGS}):
        with pytest.raises(CheckpointError, match="class-conditional model.*unconditional diffusion model"):
            load_checkpoint(str(tmp_path / "cond.pt"), **kwargs)
    assert load_checkpoint(str(tmp_path / "cond.pt"), flags=flags, allow_class_cond=True).config.class_cond


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("num_channels", "32", "num_channels must be an integer, got '32'"),
    ("learn_sigma", "false", "learn_sigma must be true or false, got 'false'"),
    ("attention_resolutions", "16;8", "attention_resolutions must be comma-separated pixel sizes"),
])
def test_flags_of_the_wrong_type_are_named(tmp_path, bundle, flag, value, message) -> None:
    """'32' as a JSON string crashed deep in torch (TypeError: empty(): argument 'size'...); 'false' built a
    learn_sigma model; both now name the flag."""
    path, _, _ = bundle
    with pytest.raises(ValueError, match=message):
        load_checkpoint(str(path), flags={**FLAGS, flag: value})


def test_list_valued_flags_are_accepted(bundle) -> None:
    path, _, model = bundle
    flags = {**FLAGS, "channel_mult": [1, 2], "attention_resolutions": [16]}
    assert load_checkpoint(str(path), flags=flags).config == model.config


def test_a_pathlib_path_loads_as_its_text_does() -> None:
    # BUG (fixed here): load_checkpoint(Path(...)) and Purifier.from_checkpoint(Path(...)), "any path" in docs/api.md,
    # stopped with "TypeError: argument of type 'PosixPath' is not iterable"
    from pathlib import Path

    from pipeline import Purifier, shipped_prior

    path = Path(shipped_prior("cifar10"))
    loaded = load_checkpoint(path)
    assert loaded.uri == str(path) and loaded.sha256 == load_checkpoint(str(path)).sha256
    assert Purifier.from_checkpoint(path, steps=1).checkpoint.uri == str(path)


@pytest.mark.parametrize("second", ["state_dict_ema", "ema_state_dict"])
def test_ema_weights_under_another_name_beside_a_known_one_are_refused_by_name(tmp_path, bundle, second) -> None:
    # BUG (fixed here): {"state_dict": ..., "state_dict_ema": ...} (timm's checkpoint saver) or an "ema_state_dict"
    # beside "state_dict" loaded the raw training weights, silently, while {"model": ..., "ema": ...} is refused as
    # the user's call: only names in WRAPPER_KEYS counted as candidates.
    _, _, model = bundle
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    torch.save({"state_dict": model.state_dict(), second: ema, "epoch": 3}, tmp_path / "timm.pt")
    with pytest.raises(CheckpointError, match=rf"2 state dicts \('state_dict', '{second}'\).*ckpt\['{second}'\]"):
        load_checkpoint(str(tmp_path / "timm.pt"), flags=FLAGS)


def test_weights_under_a_key_prefix_are_named_with_how_to_save_them(tmp_path, bundle) -> None:
    # BUG (fixed here): a Lightning module's save ({"state_dict": {"model.time_embed.0.weight": ...}}) was refused
    # with the model's own keys listed as "missing", as if the flags were wrong, while they fit the weights
    _, _, model = bundle
    sd = model.state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "lightning.pt")
    with pytest.raises(CheckpointError, match=r"missing .*under the key prefix 'model\.' \(model\.time_embed\.0\.weight"):
        load_checkpoint(str(tmp_path / "lightning.pt"), flags=FLAGS)
    # an EMA wrapper's save: both copies are named, the choice left to the user
    both = {**{f"ema_model.{k}": v for k, v in sd.items()}, **{f"online_model.{k}": v for k, v in sd.items()},
            "step": torch.tensor(3)}
    torch.save(both, tmp_path / "ema_wrapper.pt")
    with pytest.raises(CheckpointError, match=r"under 2 key prefixes \('ema_model\.', 'online_model\.'\)"):
        load_checkpoint(str(tmp_path / "ema_wrapper.pt"), flags=FLAGS, verify_only=True)
    # weights that do not fit under any prefix get no such advice
    torch.save({f"model.{k}": v for k, v in list(sd.items())[:-1]}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path / "partial.pt"), flags=FLAGS)
    assert "prefix" not in str(err.value)


def test_a_check_leaves_the_callers_torch_thread_count_as_it_was(tmp_path, bundle) -> None:
    # A checkpoint's weights are checked on one thread (verify_only: pipeline.checkpoint.one_torch_thread); the
    # caller's own count comes back, after a refused file too.
    verify_only = True
    path, _, model = bundle
    torch.set_num_threads(2)  # the autouse fixture puts the test process's count back afterwards
    assert load_checkpoint(str(path), verify_only=verify_only).config == model.config
    assert torch.get_num_threads() == 2
    damaged = {k: v.clone() for k, v in model.state_dict().items()}
    next(v for v in damaged.values() if v.ndim == 4).view(-1)[0] = float("nan")
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(str(tmp_path / "damaged.pt"), flags=FLAGS, verify_only=verify_only)
    assert torch.get_num_threads() == 2


def _counting_reads(monkeypatch) -> list[str]:
    import pipeline.checkpoint as checkpoint_module

    read: list[str] = []
    real = checkpoint_module.read_bytes
    monkeypatch.setattr(checkpoint_module, "read_bytes", lambda uri, *a, **k: read.append(uri) or real(uri, *a, **k))
    return read


def test_a_local_checkpoint_verified_again_unchanged_is_not_read_again_and_its_pin_still_holds(bundle, monkeypatch) -> None:
    """A job's driver verifies the checkpoint before every run; a program running the job again and again read, hashed
    and checked the same unchanged file each time. The verification is kept for the file as it is, pin checks and all."""
    path, sha, model = bundle
    read = _counting_reads(monkeypatch)
    first = load_checkpoint(str(path), verify_only=True)
    first.meta["note"] = "changed by its caller"  # a caller's change to its answer is not the next caller's
    again = load_checkpoint(str(path), verify_only=True, expected_sha256=sha)
    assert read == [str(path)]
    assert (again.sha256, again.config, again.meta, again.uri) == (sha, model.config, {"note": "test"}, str(path))
    with pytest.raises(CheckpointError, match="was pinned; refusing to run"):
        load_checkpoint(str(path), verify_only=True, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="unexpected|missing|mismatch"):  # another architecture asked: checked
        load_checkpoint(str(path), verify_only=True, flags={**FLAGS, "num_channels": 64})
    assert load_checkpoint(str(path)).sha256 == sha  # a load to use reads the file, as always
    assert len(read) == 3


def test_a_checkpoint_rewritten_in_place_with_its_size_and_time_kept_is_verified_afresh(bundle, monkeypatch) -> None:
    """Other bytes under the same name, size and modification time (a copy that keeps times): its change time differs,
    so the driver reads it again and says what it now holds."""
    path, sha, _ = bundle
    read = _counting_reads(monkeypatch)
    assert load_checkpoint(str(path), verify_only=True).sha256 == sha
    before = os.stat(path)
    torch.manual_seed(1)
    other = path.with_name("other.pt")
    save_bundle(other, build_unet(UNetConfig.from_flags(FLAGS)), meta={"note": "test"}, dtype=torch.float32)
    path.write_bytes(other.read_bytes())  # in place: the same file (inode)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns  # (the verification in between took longer than a clock tick)
    assert load_checkpoint(str(path), verify_only=True).sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != sha
    assert len(read) == 2
