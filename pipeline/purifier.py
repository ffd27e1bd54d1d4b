"""The user-facing purifier: uint8 images in, purified uint8 images of the same sizes out.

    from pipeline import Purifier
    purifier = Purifier.from_checkpoint("256x256_diffusion_uncond.pt", steps=20, pool=4)
    clean = purifier(images)          # list of H x W x 3 uint8 arrays, any sizes

It tiles the images onto model-size canvases, runs the ZIP sampler on batches of canvases
and untiles the result.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import LoadedCheckpoint, load_checkpoint
from pipeline.model import UNetModel
from pipeline.operators import make_operators
from pipeline.progress import progress_bar
from pipeline.sampler import SAMPLERS, Guidance, Noise, run_timesteps
from pipeline.schedule import SCHEDULES, NoiseSchedule
from pipeline.tiling import LARGE_IMAGE_POLICIES, MosaicLayout, pack, plan_layout, unpack

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Recipe:
    """A named set of sampler settings and what it is for (figures: docs/results.md, CIFAR-10, 500 images, k = 4)."""

    what: str
    values: dict[str, Any]


RECIPES: dict[str, Recipe] = {
    "paper": Recipe("the paper's Algorithm 2: guided DDIM, 20 steps from pure noise, 20 model calls (the default)", {}),
    "fast": Recipe(
        "Algorithm 2 started late (t <= 0.3T): 7 of the 20 steps, 7 model calls; on CIFAR-10 the same CA, ASR and "
        "PA as 'paper' within the sampler's seed-to-seed spread", {"start": 0.3}),
    "low-asr": Recipe(
        "the paper's Algorithm 1 (guided DDPM, 50 steps) started late (t <= 0.3T): 16 model calls; the lowest residual "
        "ASR measured on CIFAR-10 (3.5-3.9 % on three seeds, against 5.4-5.6 % for 'paper')",
        {"sampler": "ddpm", "steps": 50, "start": 0.3}),
    "authors-code": Recipe(
        "the authors' released code: gray + pool guidance averaged, soft blend k = 10, eta = 1; keeps more detail but "
        "leaves patch triggers working (BadNet ASR 83 % on CIFAR-10)", {"operators": "gray,pool", "blend_k": 10.0, "eta": 1.0}),
}


def recipe_values(name: str) -> dict[str, Any]:
    """The settings a named recipe sets (a copy); a clear error naming the recipes for an unknown name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name].values)


def is_whole_number(value: Any) -> bool:
    """An int that is not a bool: True and False are ints to Python, not counts to a user."""
    return isinstance(value, int) and not isinstance(value, bool)


# The seeds a call or the settings take. A CPU generator (mt19937) reads only a seed's low 32 bits, and the job
# seeds each canvas from seed & 0xFFFFFFFF: a larger seed (or a negative one) would silently repeat a smaller one's
# noise, and one of 2**64 or more stopped torch with "Overflow when unpacking long long", naming no seed.
SEED_RANGE = (0, 2**32 - 1)


def seed_problem(name: str, seed: int) -> str | None:
    """What is wrong with an integer seed's value, or None."""
    low, high = SEED_RANGE
    if low <= seed <= high:
        return None
    return (f"{name} must be an integer in [{low}, {high}] (0 to 2**32 - 1: the noise generators read a seed's low "
            f"32 bits, so a larger or negative seed would repeat another seed's noise), got {seed!r}")


# Other names for the same operator: make_operators builds one object for both, so the results are the same.
_OPERATOR_ALIASES = {"pool+gray": "gray+pool"}


def canonical_operators(names: Any) -> str:
    """One spelling per operator setting: "gray, pool", " gray,pool," and ["gray", "pool"] are all "gray,pool", so
    that an output's recorded settings compare equal for the same operators. The order is kept: the sampler sums
    the operators' guidance in that order, and with three or more a sum's rounding depends on it (and a name given
    twice weighs twice), so those are different settings."""
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        names = ",".join(names)
    if not isinstance(names, str):
        raise ValueError(f"operators must be text such as 'pool' or 'gray,pool' (or a list of operator names), "
                         f"got {names!r}")
    parts = ("+".join(p.strip() for p in n.split("+")) for n in names.split(","))
    return ",".join(_OPERATOR_ALIASES.get(p, p) for p in parts if p)


def device_problem(device: Any, expected: str = "cpu, cuda or cuda:N", on_this_machine: bool = True,
                   name: str = "--device") -> str | None:
    """What is wrong with a --device value, or None. `on_this_machine`: also that torch sees that CUDA device here
    (not for the job, whose purifier actors run on the cluster's GPU nodes). `name`: how the message names the
    setting ("--device" for a command line; the Python API's "device" says device='cpu')."""
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        return f"{name} must be {expected}, got {device!r}"
    cli = name.startswith("--")
    shown, use_cpu = (device, "--device cpu") if cli else (repr(device), f"{name}='cpu'")
    if on_this_machine and device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{name} {shown}: no CUDA device is available here (use {use_cpu})"
        if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
            return f"{name} {shown}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def checked_device(device: Any) -> torch.device:
    """The Python API's device argument as a torch.device, or a clear error naming the argument and the fix."""
    if not isinstance(device, str | torch.device):
        # An int would be read by torch as a CUDA ordinal (device=0 is cuda:0), not as "the first device".
        raise TypeError(f"device must be text such as 'cpu', 'cuda' or 'cuda:1' (or a torch.device), got {device!r}")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (a torch device), got {device!r}") from None
    if parsed.type == "cuda" and (problem := device_problem(str(parsed), name="device")):
        raise ValueError(problem)
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps': no Apple GPU (MPS) is available here (use device='cpu')")
    return parsed


@dataclass(frozen=True)
class ZipSettings:
    """Sampler settings. Defaults follow the paper's Algorithm 2 (guided DDIM, 20 steps).

    steps: sampler steps at t_i = ⌊i·T/steps⌋ (20 → t = 950, 900, …, 0, as in the paper and the authors' code;
        evenly every T/steps whenever steps divides T = 1000). 1 or 2 steps start far below T (t = 0, 500).
    pool: average-pooling factor of A (the authors' README uses 4 for user data; 4 removes a 3x3 patch trigger
        that survives 2x2 pooling, see ../shared/README.md).
    lam: λ of the hard switch; guide while t ≥ λT. 0 guides every step (output consistent with A x exactly).
    eta: DDIM η. 1 by default, as in the authors' code: fresh noise each step re-draws the part A discards,
        where η = 0 compounds a small prior's errors into speckle (CIFAR-10, 128 images, clean ResNet-20:
        CA 51.6 % and PSNR 20.2 dB at η = 1 against 31.3 % and 16.7 dB at η = 0).
    sampler: "ddim" (Algorithm 2) or "ddpm" (Algorithm 1).
    operators: "pool" (paper) or "gray,pool" (authors' code: both guided, results averaged); a list of names is
        joined, and spaces are dropped ("gray, pool" is "gray,pool").
    blend_k: None for the paper's hard switch, or k of the authors' soft blend x̂_t ← (1 − ᾱ_t^k) x̂_t + ᾱ_t^k x_t.
    clip_denoised: clamp the prior's x̂₀ estimate to [-1, 1] every step (needed with weak priors).
    resample: 1 (the paper) or r > 1 to redo every guided step r times, re-noising in between (DDNM+ / RePaint
        "time travel"); r times the model calls.
    start: 1 (the paper: every step, from pure noise) or s < 1 to run only the steps t ≤ s·T, starting from
        the input's A⁺y noised to that level (SDEdit-style late start; 0.3 runs 7 of 20 steps).
    large_images: "fit" (keep aspect, shrink to the canvas) or "stretch" for images larger than the model.
    seed: the noise seed, an integer in [0, 2**32 - 1].
    """

    steps: int = 20
    pool: int = 4
    lam: float = 0.0
    eta: float = 1.0
    sampler: str = "ddim"
    operators: str = "pool"
    blend_k: float | None = None
    clip_denoised: bool = True
    resample: int = 1
    start: float = 1.0
    schedule: str = "linear"
    large_images: str = "fit"
    seed: int = 0

    def __post_init__(self) -> None:
        # numpy's integers (from a grid, an array of seeds) are integers to a user, and plain ints keep to_dict JSON.
        for name in ("steps", "pool", "resample", "seed"):
            if isinstance(getattr(self, name), np.integer):
                object.__setattr__(self, name, int(getattr(self, name)))
        # numpy's scalars likewise (np.float32(0.5) made to_dict unwritable as JSON; np.float32 and np.int64 blend_k
        # were refused as "not a number").
        for name in ("eta", "lam", "start", "blend_k"):
            value = getattr(self, name)
            if isinstance(value, np.integer | np.floating):
                object.__setattr__(self, name, value.item())
        for name in ("eta", "lam", "start"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {sorted(SAMPLERS)}")
        if not is_whole_number(self.steps) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be an integer in [1, 1000], got {self.steps!r}")
        if not is_whole_number(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if problem := seed_problem("seed", self.seed):
            raise ValueError(problem)
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(f"clip_denoised must be true or false, got {self.clip_denoised!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; choose one of {sorted(SCHEDULES)}")
        if self.large_images not in LARGE_IMAGE_POLICIES:
            raise ValueError(f"large_images must be one of {', '.join(LARGE_IMAGE_POLICIES)}, got {self.large_images!r}")
        if self.blend_k is not None and not (isinstance(self.blend_k, int | float) and not isinstance(self.blend_k, bool)
                                             and math.isfinite(self.blend_k) and self.blend_k > 0):
            raise ValueError(f"blend_k must be a number above 0 (or None for the hard switch), got {self.blend_k!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta (η) must be in [0, 1], got {self.eta}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam (λ) must be in [0, 1], got {self.lam}")
        if not is_whole_number(self.resample) or not 1 <= self.resample <= 20:
            raise ValueError(f"resample must be an integer in [1, 20], got {self.resample!r}")
        if not 0.0 < self.start <= 1.0:
            raise ValueError(f"start must be in (0, 1] (a fraction of the T diffusion steps), got {self.start}")
        object.__setattr__(self, "operators", canonical_operators(self.operators))
        make_operators(self.operators, self.pool)  # validates names and pool factor
        # Guided steps are those with t >= λT. From pure noise (start = 1) with none of them, nothing of the input
        # reaches the sampler: lam=1 (or 0.96 at 20 steps, whose first t is 950) gave the same image for an input
        # and its negative. A late start still begins from the input, so it may run unguided.
        num_steps = NoiseSchedule.named(self.schedule).num_steps
        first = run_timesteps(num_steps, self.steps, self.start)[0]
        if self.start >= 1.0 and first < self.lam * num_steps:
            raise ValueError(f"lam (λ) = {self.lam:g} guides none of the {self.steps} steps (guided: t >= λT = "
                             f"{self.lam * num_steps:g}; the first step is t = {first}): the result would be a sample of "
                             f"the prior that does not depend on the input image; use lam <= {first / num_steps:g}")

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> ZipSettings:
        """A named recipe (`RECIPES`: paper, fast, low-asr, authors-code); `overrides` win over its values."""
        return cls(**{**recipe_values(name), **overrides})

    @classmethod
    def authors_code(cls, pool: int = 4, **overrides: Any) -> ZipSettings:
        """The authors' released variant: gray + pool averaged, soft blend k = 10, η = 1."""
        return cls.recipe("authors-code", pool=pool, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ACCEPTED_IMAGES = ("uint8 numpy arrays H x W x 3 (RGB), H x W or H x W x 1 (grayscale), or PIL images in mode RGB "
                   "or L")


def _dtype_hint(dtype: np.dtype) -> str:
    """How to make a uint8 image of another dtype: the scale of floats, bools and wider ints is the caller's to say."""
    if np.issubdtype(dtype, np.floating):
        return ("float pixels could be in [0, 1] or [0, 255]; convert them first, e.g. "
                "(image * 255).round().astype(np.uint8) for [0, 1] or image.round().astype(np.uint8) for [0, 255]")
    if dtype == np.bool_:
        return "convert a mask first, e.g. image.astype(np.uint8) * 255"
    if dtype == np.uint16:
        return "scale it to 0-255 and convert it first, e.g. (image >> 8).astype(np.uint8)"
    return "scale it to 0-255 and convert it to uint8 first"


def _shape_hint(shape: tuple[int, ...]) -> str:
    """How to make an H x W x 3 image of another shape; guessing instead would purify the wrong pixels."""
    if len(shape) == 3 and shape[2] == 4:
        return ": 4 channels (RGBA?); the alpha channel is not a colour: drop or composite it first, e.g. image[..., :3]"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return ": it looks channels-first (C x H x W); pass image.transpose(1, 2, 0)"
    if len(shape) == 4:
        return ": a batch as one item? pass the N x H x W x 3 array itself, or list(batch)"
    return ""


# PIL modes whose pixels are wider than 8 bits: PIL's own convert("RGB") / convert("L") clips them at 255 (a 16-bit
# 30000 becomes 255), so "convert('RGB')" would be the wrong advice for them.
_WIDE_PIL_MODES = {"I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit", "I": "32-bit integer",
                   "F": "float"}


def _pil_problem(i: int, image: Any) -> str:
    """Why a PIL image in another mode than RGB or L is refused, and how to convert it without losing it."""
    mode = image.mode
    if mode in _WIDE_PIL_MODES:
        how = ("Image.fromarray((np.asarray(image) / 257).round().astype(np.uint8)) for 16-bit (0-65535)"
               if mode.startswith("I;16") else "scale np.asarray(image) to 0-255 and pass it as uint8")
        return (f"image {i}: a {_WIDE_PIL_MODES[mode]} PIL image (mode {mode}); image.convert('RGB') would clip it at "
                f"255, so scale it to 8 bits first, e.g. {how}")
    alpha = " (its alpha channel is not a colour: composite it onto a background)" if "A" in mode else ""
    return (f"image {i}: a PIL image in mode {mode}{alpha}; accepted: modes RGB and L; "
            "convert it first, e.g. image.convert('RGB')")


def _read_image(i: int, image: Any) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """One input image as uint8 H x W x 3 (the caller's array, not a copy, when it is one) and, for a grayscale
    image, the shape its result goes back in; a clear error saying how to convert any other form rather than a
    guess at its meaning (the scale of floats, channels-first, alpha).

    Grayscale (H x W, H x W x 1, PIL mode L) is purified as the job purifies a grayscale file: the grey value in all
    three channels (pipeline.decode)."""
    if isinstance(image, torch.Tensor):
        raise TypeError(f"image {i}: a torch tensor; pass {ACCEPTED_IMAGES}, e.g. "
                        "tensor.permute(1, 2, 0).cpu().numpy() for a C x H x W uint8 tensor")
    if type(image).__module__.startswith("PIL.") and hasattr(image, "mode"):
        if image.mode not in ("RGB", "L"):
            raise ValueError(_pil_problem(i, image))
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {i}: expected {ACCEPTED_IMAGES}, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image {i}: expected dtype uint8 (0-255), got {image.dtype}: {_dtype_hint(image.dtype)}")
    gray = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if not gray and (image.ndim != 3 or image.shape[2] != 3):
        raise ValueError(f"image {i}: expected shape H x W x 3 (RGB) or H x W (grayscale), got "
                         f"{image.shape}{_shape_hint(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {i}: empty image of shape {image.shape}")
    if gray:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2), image.shape
    return image, None


def _image_items(images: Any) -> Iterable[Any]:
    """The images of a call: a list (or any iterable) of images, or an N x H x W x 3 (N x H x W x 1) array. Any other
    container is refused: iterating a single H x W x 3 image gives its H rows, each a W x 3 "grey image"."""
    if isinstance(images, np.ndarray) and images.dtype == object and images.ndim == 1:
        return list(images)  # a column of images (pandas' .values, np.array(images, dtype=object)): a list
    if isinstance(images, np.ndarray) and images.ndim != 4:
        # A 3-D array is one colour image or N grey ones (and H x W x 3 is both): which one is the caller's to say,
        # and a list of results comes back either way.
        hint = ("for one image, pass [image]; for N grayscale images, pass list(images)" if images.ndim == 3
                else "for one image, pass [image]" if images.ndim == 2 else "")
        raise ValueError(f"expected a list of images or an N x H x W x 3 (or N x H x W x 1) array, got an array of "
                         f"shape {images.shape}" + (f"; {hint}" if hint else ""))
    if isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a list of images or an N x H x W x 3 uint8 numpy array, got a torch tensor "
                        f"of shape {tuple(images.shape)} and dtype {images.dtype}; for N x 3 x H x W floats in [0, 1]: "
                        "(images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()")
    if isinstance(images, str | bytes | dict) or not isinstance(images, Iterable):
        one = " (for one image, pass [image])" if hasattr(images, "mode") else ""
        raise TypeError(f"images must be a list of images or an N x H x W x 3 uint8 array, got "
                        f"{type(images).__name__}{one}; accepted images: {ACCEPTED_IMAGES}")
    return images


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 to H x W grey with ITU-R 601 luma in PIL's own fixed point, so that a grey image's result is
    the job's RGB output for it converted as Image.convert("L") converts it. The weights sum to 1 (65536), so the
    pool operator's block means of a grey input are kept as the RGB result keeps them."""
    r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _validate_seed(seed: Any) -> int | None:
    """A call's seed: None (the settings' seed) or an integer, numpy's included; torch's own errors name neither."""
    if seed is None:
        return None
    if isinstance(seed, np.integer):
        seed = int(seed)  # and checked for its range below, as an int is
    if not is_whole_number(seed):
        raise TypeError(f"seed must be an integer (or None for the settings' seed), got {seed!r}")
    if problem := seed_problem("seed", seed):
        raise ValueError(problem)
    return seed


def check_trained_timesteps(meta: dict[str, Any], settings: ZipSettings) -> None:
    """Refuse settings that would run a prior at noise levels it was never trained on: with another noise schedule
    than its own (train_prior.py records it in its meta; guided-diffusion's own checkpoints record nothing), or
    beyond the largest timestep it saw (train_prior.py --max-timestep)."""
    trained_schedule = meta.get("schedule")
    if trained_schedule is not None and trained_schedule != settings.schedule:
        raise ValueError(f"this prior was trained with the {trained_schedule} noise schedule, but these settings "
                         f"sample with {settings.schedule}: its noise levels would not match (set "
                         f"schedule={trained_schedule!r}; the job's --schedule {trained_schedule})")
    trained_up_to = meta.get("max_timestep")
    if trained_up_to is None:
        return
    num_steps = NoiseSchedule.named(settings.schedule).num_steps
    first = run_timesteps(num_steps, settings.steps, settings.start)[0]
    if first > trained_up_to:
        raise ValueError(f"this prior was trained only on timesteps 0..{trained_up_to} (train_prior.py --max-timestep), "
                         f"but these settings start at t = {first}: use start ≤ {trained_up_to / num_steps:g} "
                         "(--start), or a prior trained on every timestep")


@dataclass(frozen=True)
class CanvasBatch:
    """One sampling batch of `Purifier.purify_canvases`: canvases start..stop-1 of the call, their noise seeded by
    `seed` (unless the call gives one seed per canvas)."""

    start: int
    stop: int
    seed: int


class Purifier:
    """ZIP purification with one diffusion model, reusable across calls (load the model once)."""

    def __init__(
        self,
        model: UNetModel,
        settings: ZipSettings | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        canvas_size: int | None = None,
        batch_size: int | None = None,
        checkpoint: LoadedCheckpoint | None = None,
    ):
        if settings is not None and not isinstance(settings, ZipSettings):
            raise TypeError(f"settings must be a ZipSettings, e.g. ZipSettings(steps=20, pool=4) or "
                            f"ZipSettings.recipe('fast'), got {type(settings).__name__}")
        self.settings = settings or ZipSettings()
        # Checked before the model moves: torch's own errors ("Found no NVIDIA driver", a list of 20 device types)
        # name neither the argument nor the fix.
        self.device = checked_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"{precision} inference needs a CUDA device; use fp32 on {self.device.type}")
        self.precision = precision
        # Moved, but not switched to eval or frozen here: a notebook that purifies with the model it is training would
        # find requires_grad off (its optimizer then silently updates nothing) and dropout off. eps() samples in eval
        # mode under inference_mode and puts the model's own mode back.
        self.model = model.to(self.device)
        self.config = model.config
        for name, value in (("canvas_size", canvas_size), ("batch_size", batch_size)):
            if value is not None and (not is_whole_number(value) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or None for the default), got {value!r}")
        self.canvas_size = self.config.image_size if canvas_size is None else canvas_size
        multiple = self.config.min_input_multiple
        if self.canvas_size % multiple:
            raise ValueError(f"canvas size {self.canvas_size} must be a multiple of {multiple} for this model")
        if self.canvas_size % self.settings.pool:
            raise ValueError(
                f"pool factor {self.settings.pool} does not divide the model's canvas size {self.canvas_size}"
            )
        self.batch_size = default_batch_size(self.canvas_size) if batch_size is None else batch_size
        self.model_batch = model_batch_size(self.canvas_size, self.device, self.batch_size)
        self.schedule = NoiseSchedule.named(self.settings.schedule)
        self.operators = make_operators(self.settings.operators, self.settings.pool)
        self.checkpoint = checkpoint
        check_trained_timesteps(checkpoint.meta if checkpoint else {}, self.settings)

    @classmethod
    def from_checkpoint(
        cls,
        uri: str,
        preset: str | None = None,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        canvas_size: int | None = None,
        batch_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
        expected_sha256: str | None = None,
        flags: dict[str, Any] | None = None,
        settings: ZipSettings | None = None,
        **setting_overrides: Any,
    ) -> Purifier:
        """Load a checkpoint (path or fsspec URI) and build a purifier; keyword settings override `settings`."""
        if settings is not None and not isinstance(settings, ZipSettings):
            raise TypeError(f"settings must be a ZipSettings, e.g. ZipSettings(steps=20, pool=4) or "
                            f"ZipSettings.recipe('fast'), got {type(settings).__name__}")
        unknown = sorted(set(setting_overrides) - {f.name for f in fields(ZipSettings)})
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(map(repr, unknown))}; ZipSettings has "
                            f"{', '.join(f.name for f in fields(ZipSettings))}")
        settings = replace(settings or ZipSettings(), **setting_overrides)
        device = checked_device(("cuda" if torch.cuda.is_available() else "cpu") if device is None else device)
        loaded = load_checkpoint(uri, preset, flags, storage_options, expected_sha256)
        return cls(loaded.model, settings, device, precision, canvas_size, batch_size, loaded)

    @property
    def description(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "settings": self.settings.to_dict(), "canvas_size": self.canvas_size, "device": str(self.device),
            "precision": self.precision, "model_flags": self.config.to_flags(),
        }
        if self.checkpoint:
            info.update(checkpoint=self.checkpoint.uri, checkpoint_sha256=self.checkpoint.sha256,
                        preset=self.checkpoint.preset, checkpoint_meta=self.checkpoint.meta)
        return info

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's ε prediction (first 3 channels when it also learns the variance), `model_batch` canvases
        per forward pass; every sample's prediction is its own (the UNet has no batch statistics)."""
        autocast = (
            torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])
            if self.precision != "fp32" else contextlib.nullcontext()
        )
        step = self.model_batch
        # Every module's own flag, not the model's alone: a model in eval with one block left training sampled with
        # that block's dropout on (results random), and model.train() put back a part the caller keeps in eval.
        modes = [(module, module.training) for module in self.model.modules()]
        training = any(flag for _, flag in modes)
        if training:
            self.model.eval()  # dropout off while sampling; the caller's modes come back below
        try:
            with torch.inference_mode(), autocast:
                out = [self.model(x[i : i + step], t[i : i + step])[:, :3].float() for i in range(0, len(x), step)]
        finally:
            if training:
                for module, flag in modes:
                    module.training = flag
        return out[0] if len(out) == 1 else torch.cat(out)

    def purify_tensor(
        self,
        x: torch.Tensor,
        seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Purify N x 3 x H x W canvases in model units [-1, 1]; returns the same shape, unclamped.

        `seeds` (one per canvas) draws each canvas's noise from its own streams, so that its result does not
        depend on which canvases share its batch.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W, got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"expected a float tensor in [-1, 1], got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values")
        for op in self.operators:
            op.check_shape(*x.shape[-2:])
        # detached: only the model's calls ran without autograd, so an input that requires grad (a model's output)
        # made every step's guidance record a graph, kept until the result was freed
        x = x.detach().to(self.device, torch.float32)
        s = self.settings
        generator: Noise = torch.Generator(self.device).manual_seed(s.seed if seed is None else seed)
        guidance = Guidance.from_input(x, self.operators, s.lam, s.blend_k)
        x_T = None
        if seeds is not None:
            if len(seeds) != len(x):
                raise ValueError(f"got {len(seeds)} seeds for {len(x)} canvases")
            x_T = torch.cat([
                torch.randn((1, *x.shape[1:]), generator=torch.Generator().manual_seed(int(sd))) for sd in seeds
            ]).to(self.device)
            # Each canvas's step noise from its own stream too, so its result does not depend on which canvases
            # share its batch (Ray Data's batching varies between runs). Its seed is the canvas seed with bit 31
            # flipped, so it never equals the starting noise's: a CPU generator (mt19937) reads only a seed's low
            # 32 bits, so sd + 2**32 (an earlier choice) replayed the starting noise as step noise.
            generator = [torch.Generator(self.device).manual_seed((int(sd) & 0xFFFFFFFF) ^ 0x80000000) for sd in seeds]
        common = dict(steps=s.steps, clip=s.clip_denoised, shape=tuple(x.shape), generator=generator,
                      device=self.device, progress=progress, x_T=x_T, resample=s.resample, start=s.start)
        if s.sampler == "ddim":
            return SAMPLERS["ddim"](self.eps, guidance, self.schedule, eta=s.eta, **common)
        return SAMPLERS["ddpm"](self.eps, guidance, self.schedule, **common)

    def plan(self, sizes: Sequence[tuple[int, int]]) -> MosaicLayout:
        return plan_layout(sizes, self.canvas_size, self.settings.pool, self.settings.large_images)

    def batches(self, count: int, seed: int | None = None) -> list[CanvasBatch]:
        """How `purify_canvases` splits `count` canvases into sampling batches of `batch_size`, and each batch's seed.

        A batch is seeded by the call's seed (default: the settings' seed) plus the index of its first canvas, so its
        result does not depend on how many canvases came before it in this process: a set purified batch by batch
        across interrupted runs (the evaluation's cache) comes out as one call over the whole set does.
        """
        base_seed = self.settings.seed if seed is None else seed
        return [CanvasBatch(start, min(start + self.batch_size, count), base_seed + start)
                for start in range(0, count, self.batch_size)]

    def purify_canvases(
        self,
        canvases: np.ndarray,
        seed: int | None = None,
        progress: Any = None,
        seeds: Sequence[int] | None = None,
        *,
        kept: Callable[[CanvasBatch], np.ndarray | None] | None = None,
        on_batch: Callable[[CanvasBatch, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Purify uint8 canvases (N x S x S x 3) in the batches of `batches` (optionally one seed per canvas).

        kept: a batch's canvases purified earlier (e.g. by an interrupted run), or None to purify it now.
        on_batch: called with each batch purified now and its uint8 canvases, as soon as it is done.
        """
        out = np.empty_like(canvases)
        for batch in self.batches(len(canvases), seed):
            done = kept(batch) if kept is not None else None
            if done is not None:
                out[batch.start : batch.stop] = done
                continue
            chunk = torch.from_numpy(np.ascontiguousarray(canvases[batch.start : batch.stop])).permute(0, 3, 1, 2)
            x = chunk.float() / 127.5 - 1
            chunk_seeds = None if seeds is None else seeds[batch.start : batch.stop]
            y = self.purify_tensor(x, seed=batch.seed, progress=progress, seeds=chunk_seeds)
            out[batch.start : batch.stop] = to_uint8(y)
            if on_batch is not None:
                on_batch(batch, out[batch.start : batch.stop])
        return out

    def __call__(
        self, images: Iterable[Any] | np.ndarray, seed: int | None = None, progress: bool = False
    ) -> list[np.ndarray]:
        """Purify images of any sizes; returns a list of uint8 arrays of the same length, shapes and order.

        `images`: a list (or any iterable) of uint8 H x W x 3 arrays or PIL images in mode RGB, or an
        N x H x W x 3 uint8 array. Grayscale images (H x W or H x W x 1 arrays, N x H x W x 1, PIL mode L) are
        purified as the job purifies a grayscale file, the grey value in all three channels, and come back grey in
        the shape they came in (the RGB result converted as PIL's convert("L") does). Any other form (floats, other
        dtypes, channels-first, alpha, tensors) is refused with an error saying how to convert it: its meaning would
        be a guess.

        `seed` (default: the settings' seed; an integer in [0, 2**32 - 1]) makes the call reproducible: the same
        images in the same order with the same seed and settings give bit-identical results on the same device. An
        image's result also depends on the other images of the call (small images share canvases and noise draws),
        not only on its own pixels.
        """
        images = _image_items(images)
        seed = _validate_seed(seed)
        read = [_read_image(i, im) for i, im in enumerate(images)]
        if not read:
            return []
        checked = [rgb for rgb, _ in read]
        layout = self.plan([im.shape[:2] for im in checked])
        shrunk = [p.downscale for p in layout.placements if p.downscale > 1]
        if shrunk:
            warnings.warn(f"{len(shrunk)} image(s) larger than the model's {self.canvas_size} px canvas were shrunk to "
                          f"fit it (up to {max(shrunk):g}x): they come back at their own size but with only the canvas's "
                          "detail; a prior made for their size keeps it", stacklevel=2)
        canvases = pack(checked, layout)
        bar = None
        if progress:
            n_batches = -(-len(canvases) // self.batch_size)
            steps = len(run_timesteps(self.schedule.num_steps, self.settings.steps, self.settings.start))
            bar = progress_bar(n_batches * steps, "purifying", "step")
        purified = self.purify_canvases(canvases, seed, (lambda i, n: bar.update(1)) if bar is not None else None)
        if bar is not None:
            bar.close()
        out = unpack(purified, layout)
        return [o if shape is None else to_gray(o).reshape(shape) for o, (_, shape) in zip(out, read, strict=True)]


# Pixels per UNet forward pass on a CPU. Larger passes fall out of cache and run slower per image: with 2 cores,
# `python bench/purifier_bench.py --devices cpu --sizes 32 --checkpoint pipeline/assets/cifar10_prior.pt` gave
# 4.6 images/s with 256 canvases of 32 px per pass and 5.9 with 64; the tiny 256 px reference model 8.8 images/s
# with 4 canvases of 256 px and 15.6 with 1.
CPU_PIXELS_PER_FORWARD = 256 * 256


def default_batch_size(canvas_size: int) -> int:
    """Canvases sampled together when not set: four canvases' worth of 256x256 pixels (256 of 32 px)."""
    return max(1, (256 * 256 * 4) // canvas_size**2)


def model_batch_size(canvas_size: int, device: torch.device, batch_size: int) -> int:
    """Canvases per UNet forward pass: the whole sampling batch on a GPU, cache-sized slices of it on a CPU.

    Only the forward pass is sliced; noise is still drawn per sampling batch, so the samples do not depend on it.
    """
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_PIXELS_PER_FORWARD // canvas_size**2))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model units [-1, 1] (N x 3 x H x W) to uint8 N x H x W x 3, rounding to nearest."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def naive_purify(images: Iterable[Any] | np.ndarray, pool: int) -> list[np.ndarray]:
    """The naive baseline A⁺A x through the same pooling (no diffusion prior): each pool x pool block replaced by its
    mean. Takes the images `Purifier` takes, any sizes (a side `pool` does not divide is edge-padded and cropped back,
    as the purifier's tiling does), grayscale ones coming back grey in their own shape."""
    from pipeline.evaluation.baselines import naive_transform

    if isinstance(pool, bool) or not isinstance(pool, numbers.Integral) or pool < 1:
        raise ValueError(f"naive_purify: pool must be a positive integer, got {pool!r}")
    pool = int(pool)
    # the containers `Purifier` takes, and no other: a bare H x W x 3 image came back as H grey rows of W x 3
    read = [_read_image(i, im) for i, im in enumerate(_image_items(images))]
    out = [naive_transform(rgb[None], pool)[0] for rgb, _ in read]
    return [o if shape is None else to_gray(o).reshape(shape) for o, (_, shape) in zip(out, read, strict=True)]
