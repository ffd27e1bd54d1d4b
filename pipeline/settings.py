"""What a purification runs with: the ZIP sampler's settings (`ZipSettings`, checked when made), the named recipes,
and the checks of a device, a precision and a seed that the API, the job and the training script share."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from pipeline.operators import make_operators
from pipeline.sampler import SAMPLERS, run_timesteps
from pipeline.schedule import SCHEDULES, NoiseSchedule
from pipeline.tiling import LARGE_IMAGE_POLICIES

# The noise schedule of a prior that records none: guided-diffusion's checkpoints were trained with it.
UNRECORDED_SCHEDULE = "linear"

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
    """One spelling per operator setting: "gray, pool", " gray,pool,", "pool,gray" and ["gray", "pool"] are all
    "gray,pool", so that an output's recorded settings compare equal for the same operators' same pixels. The sampler
    sums the operators' guidance in the order given, from zero: 0 + a + b is b + a to the bit (one IEEE addition
    commutes), so the first two are put in name order; from the third on the order is kept, as a longer sum's rounding
    depends on it (and a name given twice weighs twice), so those are different settings."""
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        names = ",".join(names)
    if not isinstance(names, str):
        raise ValueError(f"operators must be text such as 'pool' or 'gray,pool' (or a list of operator names), "
                         f"got {names!r}")
    parts = ("+".join(p.strip() for p in n.split("+")) for n in names.split(","))
    named = [_OPERATOR_ALIASES.get(p, p) for p in parts if p]
    return ",".join(sorted(named[:2]) + named[2:])


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


def prior_start(trained_up_to: Any, steps: int, num_steps: int = 1000) -> float:
    """The start for a prior trained on timesteps 0..trained_up_to (None: all of them), at `steps` steps: 1 where the
    first of the steps (the same grid for ddim and ddpm, `run_timesteps`) is within its range, else the largest of the
    steps within it, as a fraction of T (0..299 at 20 steps: t = 250, start 0.25), which check_trained_timesteps
    takes. Where that is t = 0 (a range below the second step), trained_up_to / T runs that one step (start must be
    above 0: half a step for a range of t = 0 alone)."""
    if not is_whole_number(trained_up_to) or trained_up_to < 0:
        # none recorded, or not a timestep (load_checkpoint refuses those; check_trained_timesteps a meta of one's own)
        return 1.0
    grid = run_timesteps(num_steps, steps, 1.0)
    within = [t for t in grid if t <= trained_up_to]
    if grid[0] in within:
        return 1.0
    first = within[0]  # the grid ends at t = 0, and trained_up_to >= 0
    return first / num_steps if first else max(trained_up_to, 0.5) / num_steps


def guides_no_step(steps: int, lam: float, start: float, schedule: str = "linear") -> bool:
    """Whether λ leaves every step these settings run unguided (guided: t >= λT; the first step is the largest t)."""
    num_steps = NoiseSchedule.named(schedule).num_steps
    return run_timesteps(num_steps, steps, start)[0] < lam * num_steps


@dataclass(frozen=True)
class ZipSettings:
    """Sampler settings. Defaults follow the paper's Algorithm 2 (guided DDIM, 20 steps).

    steps: sampler steps at t_i = ⌊i·T/steps⌋ (20 → t = 950, 900, …, 0, as in the paper and the authors' code;
        evenly every T/steps whenever steps divides T = 1000). 1 or 2 steps start far below T (t = 0, 500).
    pool: average-pooling factor of A (the authors' README uses 4 for user data; 4 removes a 3x3 patch trigger
        that survives 2x2 pooling, see ../shared/README.md).
    lam: λ of the hard switch; guide while t ≥ λT. 0 guides every step (output consistent with A x exactly).
    eta: DDIM η (the ddim sampler's alone: with "ddpm" it must stay 1). 1 by default, as in the authors' code: fresh
        noise each step re-draws the part A discards, where η = 0 compounds a small prior's errors into speckle
        (CIFAR-10, 128 images, clean ResNet-20: CA 51.6 % and PSNR 20.2 dB at η = 1 against 31.3 % and 16.7 dB at η = 0).
    sampler: "ddim" (Algorithm 2) or "ddpm" (Algorithm 1).
    operators: "pool" (paper) or "gray,pool" (authors' code: both guided, results averaged); a list of names is
        joined, and spaces are dropped ("gray, pool" is "gray,pool").
    blend_k: None for the paper's hard switch, or k of the authors' soft blend x̂_t ← (1 − ᾱ_t^k) x̂_t + ᾱ_t^k x_t.
    clip_denoised: clamp the prior's x̂₀ estimate to [-1, 1] every step (needed with weak priors).
    resample: 1 (the paper) or r > 1 to redo every guided step r times, re-noising in between (DDNM+ / RePaint
        "time travel"); r times the model calls. Refused above 1 when lam and start leave no step guided.
    start: 1 (the paper: every step, from pure noise) or s < 1 to run only the steps t ≤ s·T, starting from
        the input's A⁺y noised to that level (SDEdit-style late start; 0.3 runs 7 of 20 steps). None (the default):
        the prior's range, 1 unless it was trained only up to some timestep (train_prior.py --max-timestep), then
        the largest start at or below it on these steps' timesteps (`prior_start`); checked as 1 until resolved.
    schedule: the noise schedule the prior was trained with, "linear" or "cosine". None (the default): the one the
        prior records (train_prior.py --schedule), else linear (guided-diffusion's checkpoints record none).
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
    start: float | None = None
    schedule: str | None = None
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
            if name == "start" and value is None:  # the prior's range (`for_prior`)
                continue
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
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; choose one of {sorted(SCHEDULES)}")
        if self.large_images not in LARGE_IMAGE_POLICIES:
            raise ValueError(f"large_images must be one of {', '.join(LARGE_IMAGE_POLICIES)}, got {self.large_images!r}")
        if self.blend_k is not None and not (isinstance(self.blend_k, int | float) and not isinstance(self.blend_k, bool)
                                             and math.isfinite(self.blend_k) and self.blend_k > 0):
            raise ValueError(f"blend_k must be a number above 0 (or None for the hard switch), got {self.blend_k!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta (η) must be in [0, 1], got {self.eta}")
        if self.sampler == "ddpm" and self.eta != 1.0:
            # zip_ddpm takes no η: another one was accepted, recorded and silently changed nothing
            raise ValueError(f"eta (η) = {self.eta:g} is the ddim sampler's setting: sampler 'ddpm' (Algorithm 1) "
                             "draws its steps' noise from the DDPM posterior and takes no η; leave eta at its default, "
                             "1, or use sampler 'ddim'")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam (λ) must be in [0, 1], got {self.lam}")
        if not is_whole_number(self.resample) or not 1 <= self.resample <= 20:
            raise ValueError(f"resample must be an integer in [1, 20], got {self.resample!r}")
        if self.start is not None and not 0.0 < self.start <= 1.0:
            raise ValueError(f"start must be in (0, 1] (a fraction of the T diffusion steps), got {self.start}")
        object.__setattr__(self, "operators", canonical_operators(self.operators))
        # checked whatever the operators: with "gray" alone (which builds no pooling operator) pool 0 stopped the job's
        # planning with a ZeroDivisionError traceback, and a negative one was taken and recorded
        if not is_whole_number(self.pool) or self.pool < 1:
            raise ValueError(f"pool factor must be a positive integer, got {self.pool!r}")
        make_operators(self.operators, self.pool)  # validates names
        # Guided steps are those with t >= λT. From pure noise (start = 1) with none of them, nothing of the input
        # reaches the sampler: lam=1 (or 0.96 at 20 steps, whose first t is 950) gave the same image for an input
        # and its negative. A late start still begins from the input, so it may run unguided.
        # An unset start or schedule is checked as a prior that records no range or schedule samples (from pure noise,
        # linear); `for_prior` checks the resolved settings again.
        start, schedule = self.start_or_default, self.schedule_or_default
        num_steps = NoiseSchedule.named(schedule).num_steps
        first = run_timesteps(num_steps, self.steps, start)[0]
        if start >= 1.0 and first < self.lam * num_steps:
            raise ValueError(f"lam (λ) = {self.lam:g} guides none of the {self.steps} steps (guided: t >= λT = "
                             f"{self.lam * num_steps:g}; the first step is t = {first}): the result would be a sample of "
                             f"the prior that does not depend on the input image; use lam <= {first / num_steps:g}")
        if self.resample > 1 and guides_no_step(self.steps, self.lam, start, schedule):
            # a late start that guides no step: resample redoes guided steps only, so it changed nothing, yet it was
            # taken, recorded (a resume leaving it out was refused) and printed as R times the model calls
            raise ValueError(f"resample = {self.resample} redoes only the guided steps, and lam (λ) = {self.lam:g} "
                             f"guides none of the {len(run_timesteps(num_steps, self.steps, start))} steps this "
                             f"start ({start:g}) runs (guided: t >= λT = {self.lam * num_steps:g}; the first step "
                             f"is t = {first}): it would change nothing; leave resample at 1, or use lam <= "
                             f"{first / num_steps:g}")

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> ZipSettings:
        """A named recipe (`RECIPES`: paper, fast, low-asr, authors-code); `overrides` win over its values."""
        return cls(**{**recipe_values(name), **overrides})

    @classmethod
    def authors_code(cls, pool: int = 4, **overrides: Any) -> ZipSettings:
        """The authors' released variant: gray + pool averaged, soft blend k = 10, η = 1."""
        return cls.recipe("authors-code", pool=pool, **overrides)

    @property
    def start_or_default(self) -> float:
        """The start, 1 (from pure noise) where it is unset: what any prior that records no range runs."""
        return 1.0 if self.start is None else self.start

    @property
    def schedule_or_default(self) -> str:
        """The noise schedule, linear where it is unset: what a prior that records none was trained with."""
        return UNRECORDED_SCHEDULE if self.schedule is None else self.schedule

    def for_prior(self, meta: dict[str, Any] | None) -> ZipSettings:
        """These settings for the prior whose meta (a bundle's, train_prior.py's) is `meta`: an unset schedule is the
        one it records (else linear), an unset start the largest its trained timesteps allow (`prior_start`). What is
        set is kept, so check_trained_timesteps still refuses one the prior was not trained for."""
        meta = meta or {}
        recorded = meta.get("schedule")
        schedule = self.schedule or (recorded if isinstance(recorded, str) else None) or UNRECORDED_SCHEDULE
        start = self.start
        if start is None:
            start = prior_start(meta.get("max_timestep"), self.steps, NoiseSchedule.named(schedule).num_steps)
        return replace(self, schedule=schedule, start=start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_trained_timesteps(meta: dict[str, Any], settings: ZipSettings) -> None:
    """Refuse settings that would run a prior at noise levels it was never trained on: with another noise schedule
    than its own (train_prior.py records it in its meta; guided-diffusion's own checkpoints record nothing), or
    beyond the largest timestep it saw (train_prior.py --max-timestep). An unset schedule or start is read as
    `for_prior` resolves it."""
    settings = settings.for_prior(meta)
    trained_schedule = meta.get("schedule")
    if trained_schedule is not None and trained_schedule != settings.schedule:
        raise ValueError(f"this prior was trained with the {trained_schedule} noise schedule, but these settings "
                         f"sample with {settings.schedule}: its noise levels would not match (set "
                         f"schedule={trained_schedule!r}, or leave it unset for the prior's own; the job's --schedule "
                         f"{trained_schedule})")
    trained_up_to = meta.get("max_timestep")
    if trained_up_to is None:
        return
    num_steps = NoiseSchedule.named(settings.schedule_or_default).num_steps
    first = run_timesteps(num_steps, settings.steps, settings.start_or_default)[0]
    if first > trained_up_to:
        raise ValueError(f"this prior was trained only on timesteps 0..{trained_up_to} (train_prior.py --max-timestep), "
                         f"but these settings start at t = {first}: use start ≤ {trained_up_to / num_steps:g} "
                         "(--start, which also replaces a recipe's start), leave start out to start at the largest its "
                         f"range allows (and the recipes that set one: {', '.join(_RECIPES_WITH_START)}), or use a "
                         "prior trained on every timestep")


# The recipes that set a start: a range-limited prior's refusal names them (a start left out is not left out with them)
_RECIPES_WITH_START = tuple(name for name, recipe in RECIPES.items() if "start" in recipe.values)


class PriorRangeNote(UserWarning):
    """A purifier built without a start, for a prior trained on part of the timesteps, samples from a lower one than
    the paper's (`prior_range_note` says which). A warning, so that a Python caller sees it once; the job and the
    evaluation print it themselves, once a run, and silence it in their workers."""


def prior_range_note(meta: dict[str, Any], settings: ZipSettings) -> str | None:
    """What a start left out resolved to (`settings`, from `for_prior`) for a prior trained on part of the timesteps
    (train_prior.py --max-timestep), for the user to read once; None where it is 1 (the paper's: nothing to say)."""
    if settings.start_or_default >= 1.0 or meta.get("max_timestep") is None:
        return None
    num_steps = NoiseSchedule.named(settings.schedule_or_default).num_steps
    timesteps = run_timesteps(num_steps, settings.steps, settings.start_or_default)
    return (f"this prior was trained only on timesteps 0..{meta['max_timestep']} (train_prior.py --max-timestep), so "
            f"the sampler starts at t = {timesteps[0]}, the largest of its {settings.steps} steps in that range (start "
            f"{settings.start_or_default:g}: {len(timesteps)} of the {settings.steps} steps, from the noised input); give "
            "a start to choose a lower one")
