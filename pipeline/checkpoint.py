"""Load diffusion checkpoints safely from a path or any fsspec URI.

Accepted files:
- a guided-diffusion state dict saved with `torch.save` (the published `.pt` files),
- a `.safetensors` file,
- this project's bundle: a dict {"format": BUNDLE_FORMAT, "flags": {...}, "state_dict": {...}, "meta": {...}},
- a training save that wraps one state dict: {"state_dict": ...}, {"model": ...}, {"ema": ...} and the like
  (other entries, such as an optimizer's state or a step count, are ignored; two or more candidate state dicts,
  e.g. both "model" and "ema", or "state_dict" beside weights under any other name such as timm's
  "state_dict_ema", are refused with their names, since which one to sample with is the user's call),
  with the key prefixes of DataParallel/DistributedDataParallel ("module.") and torch.compile ("_orig_mod.")
  removed,
- jobs/train_prior.py's resume state (OUT/last.pt): its EMA weights (what that run exports as its prior.pt) under
  the model flags and noise settings it records.

ZIP needs an unconditional prior: a class-conditional checkpoint (class_cond, `label_emb.weight`) is refused
before any data is read unless `allow_class_cond=True` (for inspecting one; it cannot purify without labels).

Loading never unpickles arbitrary objects (`weights_only=True`), and the file's sha256 is
computed from the exact bytes that were loaded.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch

from pipeline.errors import JobError
from pipeline.model import UNetConfig, UNetModel, build_unet
from pipeline.presets import PRESETS, preset_config
from pipeline.schedule import SCHEDULES
from pipeline.storage import (
    access_denied,
    describe,
    is_url_chain,
    local_file_path,
    refusal_hint,
    storage_path,
    with_own_url_options,
    with_retries,
)

BUNDLE_FORMAT = "zip-purify/unet-bundle-v1"


class CheckpointError(JobError, ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, or for another architecture. A JobError, as plan_job and
    run_job promise for every error found before the first image (a caller catching JobError let a missing or
    mismatched checkpoint through), and a ValueError, as it always was."""


class UnmatchedArchitectureError(CheckpointError):
    """A checkpoint with no flags whose keys and shapes match no preset: its architecture must be named. The message
    tells the job's user to pass --preset or --flags; `finding` is the same without that advice, for the tools that
    have neither option (`advice_without_model_options`)."""

    def __init__(self, finding: str) -> None:
        # Said for the Python API too (Purifier.from_checkpoint, load_checkpoint), which has no options of these names
        super().__init__(f"{finding}; pass --preset or --flags (guided-diffusion's create_model flags as JSON; "
                         "preset= or flags= in Python)")
        self.finding = finding


def advice_without_model_options(err: BaseException) -> str:
    """`err`'s message as a tool without --preset and --flags (jobs/evaluate.py, jobs/train_prior.py) says it: they sent
    the user to options the tool refuses as unknown. Such a tool reads a bundle, which records its architecture."""
    if not isinstance(err, UnmatchedArchitectureError):
        return str(err)
    return (f"{err.finding}; this tool takes no --preset or --flags: save the weights with their architecture first "
            "(in Python: from pipeline.checkpoint import load_checkpoint, save_bundle; save_bundle('prior.pt', "
            "load_checkpoint(PATH, flags={...}).model), with guided-diffusion's create_model flags) and give that file")


@dataclass
class LoadedCheckpoint:
    model: UNetModel
    config: UNetConfig
    sha256: str
    uri: str
    preset: str | None
    meta: dict[str, Any] = field(default_factory=dict)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    options = storage_options or {}

    def once() -> bytes:
        # an fsspec URL chain ('simplecache::s3://...'): only fsspec.open resolves it. Not any '::': a file in a local
        # folder 'runs::v2' (as train_prior.py --out writes one) was "not found"
        if is_url_chain(uri):
            with fsspec.open(uri, "rb", **options) as f:
                return f.read()
        # Through storage_path, as the images are read, so that on S3 with_retries alone owns the retry budget
        # (fsspec.open let s3fs and botocore retry inside each attempt: up to 156 requests for one SlowDown'd read).
        # With the server its URL names (ftp://host/prior.pt): the caller's options alone may not name it.
        fs, path = storage_path(uri, with_own_url_options(uri, options))
        with fs.open(path, "rb") as f:
            return f.read()

    try:
        return with_retries(once, f"read {uri}")
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint not found: {uri}") from err
    except IsADirectoryError as err:
        raise CheckpointError(f"checkpoint {uri} is a folder; give the checkpoint file in it") from err
    # access denied, wrong credentials, an unreachable endpoint (after the retries); a storage error that is no
    # OSError: botocore's NoCredentialsError, a web server's refusal (aiohttp's ClientResponseError)
    except Exception as err:  # noqa: BLE001
        hint = refusal_hint(storage_path(uri, options)[0], uri) if access_denied(err) and not is_url_chain(uri) else ""
        raise CheckpointError(f"cannot read checkpoint {uri}: {describe(err)}{hint}") from err


# How torch.save files begin: a zip archive (the format since torch 1.6) or a pickle (protocol 2 and up).
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")


def _is_safetensors(data: bytes) -> bool:
    """Whether `data` is laid out as a safetensors file: an 8-byte little-endian header length, then that many bytes
    of JSON. Judged by content, not by the name: a presigned URL ends in its query, a renamed file in anything. A
    header longer than the data is a safetensors file cut short (a partial download), so said, not "not a torch file"
    (torch's files never hold '{' at byte 8: a zip's compression method, a pickle's magic number)."""
    return len(data) >= 10 and int.from_bytes(data[:8], "little") >= 2 and data[8:9] == b"{"


def _parse(data: bytes, uri: str) -> dict[str, Any]:
    if _is_safetensors(data):
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise CheckpointError("reading .safetensors needs the 'safetensors' package") from err
        try:
            return {"state_dict": load_safetensors(data)}
        except Exception as err:
            raise CheckpointError(f"checkpoint {uri} ({len(data)} bytes) is not a valid safetensors file (truncated "
                                  f"or corrupt?): {err}") from err
    if not data.startswith(TORCH_FILE_MAGIC):
        raise CheckpointError(
            f"checkpoint {uri} ({len(data)} bytes, starting {data[:8]!r}) is not a torch file: expected a "
            "guided-diffusion .pt (torch.save), a .safetensors file or a zip-purify bundle"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _REFUSED_GLOBAL.search(str(err))
        if found and not _could_name_an_object(found.group(1)):
            raise CheckpointError(
                f"checkpoint {uri} ({len(data)} bytes) is not a readable torch file (truncated or corrupt?): its "
                f"pickle stops inside the name {found.group(1)!r}"
            ) from err
        raise CheckpointError(_pickled_object_message(uri, err)) from err
    except Exception as err:  # noqa: BLE001 - torch's unpickler fails in many ways on damaged files
        raise CheckpointError(
            f"checkpoint {uri} ({len(data)} bytes) is not a readable torch file (truncated or corrupt?): "
            f"{describe(err)}"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {uri} holds a {type(obj).__name__}, expected a state dict")
    if not obj:
        raise CheckpointError(f"checkpoint {uri} holds an empty dict, expected a state dict")
    if obj.get("format") == BUNDLE_FORMAT:
        return _checked_bundle(obj, uri)
    if _is_state_dict(obj):
        return {"state_dict": obj}
    if _is_train_prior_state(obj):
        return _train_prior_prior(obj)
    candidates = [k for k in WRAPPER_KEYS if _is_state_dict(obj.get(k))]
    if candidates:
        # Weights under a name not in WRAPPER_KEYS count as a candidate too: timm's 'state_dict_ema' or an
        # 'ema_state_dict' beside 'state_dict' loaded the raw weights, silently, where 'model' with 'ema' is refused.
        candidates += [k for k in obj if k not in WRAPPER_KEYS and _is_state_dict(obj[k])]
    if len(candidates) == 1:
        return {"state_dict": obj[candidates[0]]}
    if len(candidates) > 1:
        example = next((k for k in candidates if isinstance(k, str) and "ema" in k), candidates[0])
        raise CheckpointError(
            f"checkpoint {uri} holds {len(candidates)} state dicts ({', '.join(map(repr, candidates))}); save the one "
            f"to sample with on its own, e.g. torch.save(ckpt[{example!r}], 'weights.pt') (EMA weights are "
            "usually the better prior), and give --flags (or --preset) with it: a bare state dict records no "
            "architecture, only a preset's is found from its shapes"
        )
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"checkpoint {uri} is a dict but neither a state dict, a {BUNDLE_FORMAT} bundle, nor a training save "
        f"holding one under {', '.join(WRAPPER_KEYS)} (its keys: {keys})"
    )


# torch names the global its weights-only unpickler refused: "Unsupported global: GLOBAL torch.nn...Linear was not ...".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _could_name_an_object(name: str) -> bool:
    """Whether a global torch's weights-only unpickler refused may be a real object (a class or function: the file
    then holds a pickled object), not a name cut short. A file in torch's legacy (non-zip) format cut short inside its
    pickle names one ('collections.OrderedDi', 'torch.'), and was refused as "a pickled Python object" with advice to
    save the model's weights, where the file was only cut short. A module this process has imported must hold the
    name; one it has not (a user's own model class) or __main__ (a script's) may."""
    parts = name.split(".")
    if len(parts) < 2 or not all(parts):
        return False
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if module in sys.modules and module != "__main__":
            obj: Any = sys.modules[module]
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return True


def _pickled_object_message(uri: str, err: pickle.UnpicklingError) -> str:
    """Our own words for torch's weights-only refusal: its text is cut off ("you have two options," and neither is
    usable here) and carries terminal escapes that end up in logs and summaries."""
    found = _REFUSED_GLOBAL.search(str(err))
    what = f"a pickled Python object ({found.group(1)})" if found else "a pickled Python object"
    return (
        f"refused to load {uri}: it holds {what}, which is not loaded because unpickling runs code from the file "
        "(a checkpoint must hold tensors and plain containers only). If it is a whole model saved with "
        "torch.save(model), save its weights instead: torch.save(model.state_dict(), 'weights.pt')"
    )


def _checked_bundle(obj: dict[str, Any], uri: str) -> dict[str, Any]:
    """A zip-purify bundle whose parts have the types load_checkpoint relies on; a damaged or hand-made one is a
    CheckpointError naming the part, not a KeyError/TypeError traceback."""
    where = f"checkpoint {uri} is a {BUNDLE_FORMAT} bundle, but"
    for part in ("state_dict", "flags"):
        if part not in obj:
            raise CheckpointError(f"{where} it has no {part!r} (its keys: {', '.join(map(repr, obj))})")
    if not _is_state_dict(obj["state_dict"]):
        raise CheckpointError(f"{where} its 'state_dict' is {_describe_value(obj['state_dict'])}, not a dict of tensors")
    if not isinstance(obj["flags"], dict):
        raise CheckpointError(f"{where} its 'flags' is {_describe_value(obj['flags'])}, not a dict of model flags")
    if not isinstance(obj.get("meta", {}), dict):
        raise CheckpointError(f"{where} its 'meta' is {_describe_value(obj['meta'])}, not a dict")
    return obj


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict) and not value:
        return "an empty dict"
    return f"a {type(value).__name__}"


def check_meta(meta: dict[str, Any], uri: str) -> None:
    """Refuse, at load, the noise settings in a checkpoint's meta that the purifier would trip over later
    (check_trained_timesteps compares `schedule` with a name and `max_timestep` with a timestep)."""
    schedule = meta.get("schedule")
    # a str first: a list or a dict there ({"name": "linear"}) stopped the load with "TypeError: unhashable type"
    if schedule is not None and (not isinstance(schedule, str) or schedule not in SCHEDULES):
        raise CheckpointError(f"checkpoint {uri} records the noise schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    max_timestep = meta.get("max_timestep")
    if max_timestep is not None and (type(max_timestep) is not int or max_timestep < 0):
        raise CheckpointError(
            f"checkpoint {uri} records max_timestep {max_timestep!r} ({type(max_timestep).__name__}); it must be a "
            "whole number ≥ 0 (the largest timestep the prior was trained on)"
        )


# What jobs/train_prior.py writes to OUT/last.pt (STATE_KEYS in pipeline/training_run_folder.py): both weights, the
# optimiser, the model flags.
TRAIN_PRIOR_STATE_KEYS = {"model", "ema", "opt", "step", "flags"}


def _is_train_prior_state(obj: dict[str, Any]) -> bool:
    return TRAIN_PRIOR_STATE_KEYS <= set(obj) and _is_state_dict(obj["ema"]) and isinstance(obj["flags"], dict)


def _train_prior_prior(state: dict[str, Any]) -> dict[str, Any]:
    """The prior a train_prior.py resume state holds: its EMA weights (what the run exports as prior.pt; unlike the
    "model"/"ema" pair of an unknown training save, which one is the prior is known here), its flags, and the noise
    settings the purifier checks against (a state from before they were recorded lacks them, as a published .pt)."""
    step = state["step"]
    meta: dict[str, Any] = {"weights": "ema of a train_prior.py resume state",
                            "steps": int(step) if isinstance(step, int | torch.Tensor) else step}
    for name in ("data", "schedule", "max_timestep"):
        if state.get(name) is not None:
            meta[name] = state[name]
    return {"state_dict": state["ema"], "flags": state["flags"], "meta": meta}


def _config_from_flags(flags: dict[str, Any], uri: str, label: str) -> UNetConfig:
    try:
        return UNetConfig.from_flags(flags)
    except (ValueError, TypeError) as err:  # an unknown flag, a mistyped value, a channel_mult that is no list
        raise CheckpointError(f"cannot build the model of checkpoint {uri} from {label}: {err}") from err


# Where training code commonly keeps the weights in a save that holds more than the weights.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "ema", "ema_model", "model_ema", "net", "network")
# Key prefixes added by wrappers, not by the architecture: DataParallel/DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without a "module." / "_orig_mod." prefix that every key carries (DDP, torch.compile saves)."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def shape_mismatches(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's keys/shapes and a state dict's."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected if k not in got]
    problems += [f"unexpected {k} {got[k]}" for k in got if k not in expected]
    problems += [f"{k}: checkpoint {got[k]} vs model {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    return problems


def infer_preset(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The first preset whose keys and shapes match exactly, or None."""
    for name in PRESETS:
        if not shape_mismatches(build_unet(preset_config(name), "meta"), state_dict):
            return name
    return None


# The first convolution, which every guided-diffusion UNet has (under a wrapper's prefix too): a file without it holds
# some other network.
UNET_INPUT_KEY = "input_blocks.0.0.weight"
CLASS_COND_ADVICE = ("ZIP purifies without labels and needs an unconditional diffusion model, such as guided-diffusion's "
                     "256x256_diffusion_uncond")


def _class_count(state_dict: dict[str, torch.Tensor]) -> str:
    weight = state_dict["label_emb.weight"]
    return f"{weight.shape[0]} classes" if weight.ndim == 2 else f"shape {tuple(weight.shape)}"


def load_checkpoint(
    uri: str | os.PathLike[str],
    preset: str | None = None,
    flags: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    expected_sha256: str | None = None,
    verify_only: bool = False,
    allow_class_cond: bool = False,
) -> LoadedCheckpoint:
    """Read, verify and load a checkpoint into a fresh fp32 model in eval mode.

    With verify_only the file is read, hashed and checked against the architecture, but the model
    stays on the meta device (no weights in memory): what a job's driver does before any data is read.

    The architecture comes from, in order: `flags`, `preset`, the bundle's own flags, or the
    preset whose keys and shapes match the file.

    A class-conditional checkpoint is refused (ZIP samples without labels) unless `allow_class_cond`.
    """
    # A pathlib.Path as its text ("any path", docs/api.md): read_bytes looks for "::" in it
    uri = os.fspath(uri) if isinstance(uri, os.PathLike) else uri
    _check_arguments(uri, storage_options, expected_sha256)
    if preset is not None and preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    # a local file the driver verified already, unchanged since: its verification again, unread (`_VERIFIED`)
    key = _verified_key(uri, preset, flags, allow_class_cond) if verify_only else None
    if key is not None and key in _VERIFIED:
        known = _VERIFIED[key]
        _check_pinned(known.sha256, uri, expected_sha256)
        return LoadedCheckpoint(known.model, known.config, known.sha256, uri, known.preset, copy.deepcopy(known.meta))
    data = read_bytes(uri, storage_options)
    digest = _checked_digest(data, uri, expected_sha256)
    parsed = _parse(data, uri)
    state_dict = strip_wrapper_prefixes(parsed["state_dict"])
    meta = dict(parsed.get("meta", {}))
    check_meta(meta, uri)
    config, label, preset = _architecture(parsed, state_dict, uri, preset, flags, allow_class_cond)
    if not allow_class_cond:
        _refuse_class_conditional(config, label, state_dict, uri)
    model = _built_model(config, label, uri, verify_only)
    if verify_only:  # the job's driver: a check and nothing else done with torch (see one_torch_thread)
        with one_torch_thread():
            _check_weights_fit(model, state_dict, uri, label)
        if key is not None:
            while len(_VERIFIED) >= VERIFIED_KEPT:
                _VERIFIED.pop(next(iter(_VERIFIED)))
            _VERIFIED[key] = LoadedCheckpoint(model, config, digest, uri, preset, copy.deepcopy(meta))
        return LoadedCheckpoint(model, config, digest, uri, preset, meta)
    _check_weights_fit(model, state_dict, uri, label)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    model.eval().requires_grad_(False)
    return LoadedCheckpoint(model, config, digest, uri, preset, meta)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads at 1 while the block runs, then as they were (however it leaves). Checking a checkpoint's
    weights (`verify_only`, the job's driver before any image is read) is one pass over memory per tensor, a few hundred
    small ops: split over threads, each op waited for its other threads, and on a busy machine a thread is not scheduled
    at once. The check of the tests' tiny model took 0.2-0.7 s with 2 threads on a busy 2-core machine, 0.06 s with one
    (bench/small_run_bench.py: plan). A model loaded to purify with (the purifier actor) is loaded with the caller's
    threads: loaded on one, the actor's batches after it were several times slower on that machine (unexplained)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_arguments(uri: Any, storage_options: Any, expected_sha256: Any) -> None:
    """Refuse, naming the argument, what cannot name or pin a checkpoint, before anything is read: a uri of None
    failed as "cannot read checkpoint None: TypeError: argument of type 'NoneType' is not iterable", storage_options
    given as text as an AttributeError about 'items', and an empty expected_sha256 (a pin read from an unset
    variable) turned the pin off without a word."""
    if not isinstance(uri, str) or not uri:
        raise CheckpointError(f"the checkpoint must be a path or URI (a str or pathlib.Path), got {uri!r}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise CheckpointError(f"storage_options must be a mapping of fsspec options (or None), got "
                              f"{type(storage_options).__name__}")
    if expected_sha256 is not None and not (isinstance(expected_sha256, str) and len(expected_sha256) == 64
                                            and all(c in "0123456789abcdefABCDEF" for c in expected_sha256)):
        raise CheckpointError(f"expected_sha256 must be 64 hexadecimal digits (or None for no pin), got "
                              f"{expected_sha256!r}")


def _checked_digest(data: bytes, uri: str, expected_sha256: str | None) -> str:
    """The file's sha256, refused when it is not the one pinned."""
    digest = hashlib.sha256(data).hexdigest()
    _check_pinned(digest, uri, expected_sha256)
    return digest


def _check_pinned(digest: str, uri: str, expected_sha256: str | None) -> None:
    if expected_sha256 and digest != expected_sha256.lower():
        raise CheckpointError(f"checkpoint {uri} has sha256 {digest}, but {expected_sha256} was pinned; refusing to run")


# The local checkpoints this process verified (`load_checkpoint(..., verify_only=True)`, a job's driver before each run),
# by file identity and the architecture asked for: a program that runs the job again and again (a scheduler's loop, the
# test suite's hundreds of runs) read, hashed, unpickled and checked the same file before every run. The identity is the
# file's device, inode, size, modification and change times: any write to the file, or a file put in its place, changes
# its change time (which no program can set back), and the purifier actor checks the bytes it loads against the sha256
# recorded here in any case. Only a few are kept (the verified model holds no weights: on the meta device).
VERIFIED_KEPT = 8
_VERIFIED: dict[tuple[Any, ...], LoadedCheckpoint] = {}


def _verified_key(uri: str, preset: str | None, flags: Mapping[str, Any] | None,
                  allow_class_cond: bool) -> tuple[Any, ...] | None:
    """What names a verification of `uri` in `_VERIFIED`: None for a file not on this machine's file system (an object
    store's would cost a request, and a URL may give other bytes each time) or that cannot be looked at (its read
    says why)."""
    path = local_file_path(uri) if isinstance(uri, str) and not is_url_chain(uri) else None
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    asked = None if flags is None else json.dumps(flags, sort_keys=True, default=repr)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, preset, asked, allow_class_cond)


def _architecture(parsed: dict[str, Any], state_dict: dict[str, torch.Tensor], uri: str, preset: str | None,
                  flags: dict[str, Any] | None, allow_class_cond: bool) -> tuple[UNetConfig, str, str | None]:
    """(the model's config, where it came from, the preset) from `flags`, `preset`, the bundle's own flags, or else
    the preset whose keys and shapes match the file (`load_checkpoint`)."""
    if flags is not None:
        label = "the given flags"
        return _config_from_flags(flags, uri, label), label, preset
    if preset is not None:
        return preset_config(preset), f"preset {preset!r}", preset
    if "flags" in parsed:
        label = "the checkpoint's own flags"
        return _config_from_flags(parsed["flags"], uri, label), label, preset
    preset = infer_preset(state_dict)
    if preset is None and not allow_class_cond and "label_emb.weight" in state_dict:
        # Said for what it is: "matches none of the presets; pass --flags" sent the user to find flags for a
        # model that is then refused anyway.
        raise CheckpointError(
            f"checkpoint {uri} is a class-conditional model (the file holds label_emb.weight, "
            f"{_class_count(state_dict)}; it matches none of the presets, and has no flags): " + CLASS_COND_ADVICE
        )
    if preset is None and not any(k.endswith(UNET_INPUT_KEY) for k in state_dict):
        # Not a UNet at all (a classifier of the evaluation's cache given as the prior, say): "matches none of the
        # presets; pass --flags" sent the user looking for flags that no architecture of ours has.
        first = ", ".join(map(str, list(state_dict)[:4]))
        raise CheckpointError(
            f"checkpoint {uri} holds no diffusion UNet: none of its {len(state_dict)} weights is guided-diffusion's "
            f"{UNET_INPUT_KEY} (its first: {first}); a diffusion prior is needed, e.g. guided-diffusion's "
            "256x256_diffusion_uncond or one jobs/train_prior.py wrote (a classifier is not one)"
        )
    if preset is None:
        raise UnmatchedArchitectureError(f"checkpoint {uri} matches none of the presets ({', '.join(PRESETS)})")
    return preset_config(preset), f"preset {preset!r} (inferred)", preset


def _refuse_class_conditional(config: UNetConfig, label: str, state_dict: dict[str, torch.Tensor], uri: str) -> None:
    """ZIP samples without labels: a class-conditional model (by its config or its weights) is refused."""
    if config.class_cond or "label_emb.weight" in state_dict:
        raise CheckpointError(
            f"checkpoint {uri} is a class-conditional model (class_cond={config.class_cond} from {label}; the file "
            f"{'holds' if 'label_emb.weight' in state_dict else 'lacks'} label_emb.weight): " + CLASS_COND_ADVICE
        )


def _built_model(config: UNetConfig, label: str, uri: str, verify_only: bool) -> UNetModel:
    """The model of `config`, on the meta device (no weights in memory) when `verify_only`."""
    try:
        return build_unet(config, "meta" if verify_only else None)
    except (ValueError, ArithmeticError) as err:  # flags from_flags takes that no model has: num_heads 0, channel_mult 1,2.5
        raise CheckpointError(f"cannot build the model of checkpoint {uri} from {label}: {describe(err)}") from err


def _prefix_advice(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    """What to do when the file holds all of the model's weights, each with its shape, under a key prefix other than
    the wrappers' that are removed (a Lightning module's 'model.', an EMA wrapper's 'ema_model.' and 'online_model.');
    '' otherwise. Without it, the mismatches shown were the model's own keys, all "missing", which sent the user to
    look for other flags when these fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    first = next(iter(expected), None)
    if first is None:
        return ""
    prefixes = [key[: -len(first)] for key in state_dict if key.endswith("." + first)]
    fitting = [p for p in prefixes if all(p + k in state_dict and tuple(state_dict[p + k].shape) == shape
                                          for k, shape in expected.items())]
    if len(fitting) == 1:
        p = fitting[0]
        return (f". The file holds this model's weights under the key prefix {p!r} ({p}{first}, ...): save them "
                f"without it, e.g. torch.save({{k[{len(p)}:]: v for k, v in sd.items() if k.startswith({p!r})}}, "
                "'weights.pt'), sd being the file's dict of weights")
    if fitting:
        return (f". The file holds this model's weights under {len(fitting)} key prefixes "
                f"({', '.join(map(repr, fitting))}): save the ones to sample with alone, without the prefix (EMA "
                "weights are usually the better prior)")
    return ""


def _fits(config: UNetConfig, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether `state_dict` loads strictly into the model of `config` (built on the meta device: no weights made)."""
    try:
        return not shape_mismatches(build_unet(config, "meta"), state_dict)
    except (ValueError, ArithmeticError):  # a variant no model has (an image_size the levels do not divide)
        return False


def _attention_of_weights(config: UNetConfig, state_dict: dict[str, torch.Tensor]) -> str | None:
    """The attention_resolutions, at `config`'s image_size, of the levels where `state_dict` holds attention blocks
    (found by building one model per level: a block's key names do not depend on the other levels' attention)."""
    try:
        levels = len(config.channel_multipliers())
    except ValueError:
        return None
    held = {k for k in state_dict if k.endswith(".qkv.weight")}
    found = []
    for level in range(levels):
        resolution = config.image_size // 2**level
        try:
            keys = {k for k in build_unet(config.with_(attention_resolutions=str(resolution)), "meta").state_dict()
                    if k.endswith(".qkv.weight")}
        except (ValueError, ArithmeticError):
            return None
        if keys and keys <= held:
            found.append(str(resolution))
    return ",".join(found)


# guided-diffusion's usual image sizes: the levels that attention_resolutions names are image_size / resolution, so a
# wrong image_size moves the attention blocks (and, without channel_mult, changes the widths).
_IMAGE_SIZES = (32, 64, 128, 256, 512)


def _flag_advice(config: UNetConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """Which one flag of `config`, changed, makes the weights fit: the shapes of the file show learn_sigma, the width,
    the residual blocks and where attention is, which a list of mismatched keys leaves the user to work out. '' when
    no single change fits (the file is of another architecture altogether)."""
    input_conv = state_dict.get(UNET_INPUT_KEY)
    candidates: list[tuple[str, Any]] = [
        ("learn_sigma", not config.learn_sigma),
        ("use_scale_shift_norm", not config.use_scale_shift_norm),
        ("resblock_updown", not config.resblock_updown),
        *(("num_res_blocks", n) for n in range(1, 5) if n != config.num_res_blocks),
        *(("image_size", size) for size in _IMAGE_SIZES if size != config.image_size),
    ]
    if input_conv is not None and input_conv.ndim == 4 and input_conv.shape[0] != config.num_channels:
        candidates.append(("num_channels", int(input_conv.shape[0])))
    attention = _attention_of_weights(config, state_dict)
    if attention is not None and attention != config.attention_resolutions:
        candidates.append(("attention_resolutions", attention))
    fitting = []
    for name, value in candidates:
        try:
            variant = config.with_(**{name: value})
        except (ValueError, TypeError):
            continue
        if _fits(variant, state_dict):
            fitting.append(f"{name}={value!r} (not {getattr(config, name)!r})")
    if not fitting:
        return ""
    return (". The weights fit these flags with one change: " + ", or ".join(fitting)
            + " (flags that leave the weights' shapes alone, such as num_heads, cannot be checked this way)")


def _check_weights_fit(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], uri: str, label: str) -> None:
    """Refuse weights whose keys or shapes do not fit the model, or that are not all finite."""
    problems = shape_mismatches(model, state_dict)
    if problems:
        shown = "; ".join(problems[:5])
        advice = _prefix_advice(model, state_dict)
        if not advice and isinstance(getattr(model, "config", None), UNetConfig):
            advice = _flag_advice(model.config, state_dict)
        raise CheckpointError(
            f"checkpoint {uri} does not fit {label}: {len(problems)} key/shape mismatch(es), first: {shown}" + advice
        )
    # A diverged or damaged save (or weights past fp16's range saved as fp16) samples NaN, which comes out of the
    # purifier as black images counted as purified: refused here, with verify_only too (the job's check before work).
    not_finite = next((k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if not_finite is not None:
        raise CheckpointError(f"checkpoint {uri} holds NaN or infinite weights ({not_finite}, maybe others): a diverged "
                              "or damaged save, whose samples would be NaN")


def save_bundle(
    path: str | Path, model: UNetModel, meta: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16
) -> str:
    """Write a self-describing checkpoint (flags + weights); returns its sha256."""
    bundle = {
        "format": BUNDLE_FORMAT,
        "flags": model.config.to_flags(),
        "state_dict": {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()},
        "meta": json.loads(json.dumps(meta or {})),  # plain types only, so weights-only loading accepts it
    }
    buf = io.BytesIO()
    torch.save(bundle, buf)
    data = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()
