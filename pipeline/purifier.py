"""The user-facing purifier: uint8 images in, purified uint8 images of the same sizes out.

    from pipeline import Purifier
    purifier = Purifier.from_checkpoint("256x256_diffusion_uncond.pt", steps=20, pool=4)
    clean = purifier(images)          # list of H x W x 3 uint8 arrays, any sizes

It tiles the images onto model-size canvases, runs the ZIP sampler on batches of canvases
and untiles the result.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import CLASS_COND_ADVICE, LoadedCheckpoint, load_checkpoint
from pipeline.images import image_items, read_image, to_gray
from pipeline.model import UNetModel
from pipeline.operators import make_operators
from pipeline.progress import progress_bar
from pipeline.sampler import SAMPLERS, Guidance, Noise, run_timesteps
from pipeline.schedule import NoiseSchedule
from pipeline.settings import (
    PRECISIONS,
    PriorRangeNote,
    ZipSettings,
    check_trained_timesteps,
    checked_device,
    is_whole_number,
    prior_range_note,
    seed_problem,
)
from pipeline.tiling import MosaicLayout, pack, plan_layout, unpack


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


@dataclass(frozen=True)
class CanvasBatch:
    """One sampling batch of `Purifier.purify_canvases`: canvases start..stop-1 of the call, their noise seeded by
    `seed` (unless the call gives one seed per canvas)."""

    start: int
    stop: int
    seed: int


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's weights (its first parameter's, else its first buffer's; the CPU for a model of
    neither)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _callers_level() -> int:
    """The `stacklevel` of the first frame outside this package, for a warning given in a method of it: the caller's
    line (a notebook cell's), not `from_checkpoint`'s call of the constructor, which a note pointed at, nor the
    sampler's call of the model."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).partition(".")[0] == "pipeline":
        frame, level = frame.f_back, level + 1
    return level


class Purifier:
    """ZIP purification with one diffusion model, reusable across calls (load the model once)."""

    def __init__(
        self,
        model: UNetModel,
        settings: ZipSettings | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        canvas_size: int | None = None,
        batch_size: int | None = None,
        checkpoint: LoadedCheckpoint | None = None,
    ):
        if settings is not None and not isinstance(settings, ZipSettings):
            raise TypeError(f"settings must be a ZipSettings, e.g. ZipSettings(steps=20, pool=4) or "
                            f"ZipSettings.recipe('fast'), got {type(settings).__name__}")
        # an unset noise schedule and start are the prior's own (`ZipSettings.for_prior`): its recorded schedule and
        # trained timesteps, else linear from pure noise; the settings kept (and described) are the resolved ones
        meta = checkpoint.meta if checkpoint else {}
        self.settings = (settings or ZipSettings()).for_prior(meta)
        if (settings is None or settings.start is None) and (note := prior_range_note(meta, self.settings)):
            warnings.warn(note, PriorRangeNote, stacklevel=_callers_level())
        if device is None:
            # where the model is: a notebook that purifies with the model it trains on a GPU found that model moved to
            # the CPU (model.to, in place) by the former default, device="cpu", and its next training step failed
            _check_model(model)
            device = model_device(model)
        # Checked before the model moves: torch's own errors ("Found no NVIDIA driver", a list of 20 device types)
        # name neither the argument nor the fix.
        self.device = checked_device(device)
        if not isinstance(precision, str) or precision not in PRECISIONS:  # a list: not "unhashable type: 'list'"
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"{precision} inference needs a CUDA device; use fp32 on {self.device.type}")
        self.precision = precision
        _check_model(model)
        # Moved, but not switched to eval or frozen here: a notebook that purifies with the model it is training would
        # find requires_grad off (its optimizer then silently updates nothing) and dropout off. eps() samples in eval
        # mode under inference_mode and puts the model's own mode back.
        self.model = model.to(self.device)
        self.config = model.config
        # numpy's integers are integers, as ZipSettings and a call's seed take them
        canvas_size, batch_size = (int(v) if isinstance(v, np.integer) else v for v in (canvas_size, batch_size))
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
        self.precision_fallbacks = 0  # forward passes done again in fp32 because fp16/bf16 overflowed (eps)
        check_trained_timesteps(checkpoint.meta if checkpoint else {}, self.settings)

    @classmethod
    def from_checkpoint(
        cls,
        uri: str | os.PathLike[str],
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
            out = []
            for i in range(0, len(x), step):
                with torch.inference_mode(), autocast:
                    chunk = self.model(x[i : i + step], t[i : i + step])[:, :3].float()
                if self.precision != "fp32" and not torch.isfinite(chunk).all():
                    # fp16 tops out at 65504: a large activation overflows to inf, then NaN, and every canvas it
                    # touches would come out black. That forward pass is done again in full precision.
                    self.precision_fallbacks += 1
                    if self.precision_fallbacks == 1:
                        warnings.warn(f"{self.precision} overflowed in the diffusion model (NaN or inf); such forward "
                                      "passes are done again in fp32 (slower). Use --precision bf16 or fp32 to avoid "
                                      "it", RuntimeWarning, stacklevel=_callers_level())
                    with torch.inference_mode():
                        chunk = self.model(x[i : i + step], t[i : i + step])[:, :3].float()
                out.append(chunk)
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
        if seeds is not None and len(seeds) != len(x):
            raise ValueError(f"got {len(seeds)} seeds for {len(x)} canvases")
        if not len(x):  # no canvases: nothing to sample (the model's passes were none, and stopped in torch.cat)
            return x.clone()
        s = self.settings
        generator: Noise = torch.Generator(self.device).manual_seed(s.seed if seed is None else seed)
        guidance = Guidance.from_input(x, self.operators, s.lam, s.blend_k)
        x_T = None
        if seeds is not None:
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
            y = SAMPLERS["ddim"](self.eps, guidance, self.schedule, eta=s.eta, **common)
        else:
            y = SAMPLERS["ddpm"](self.eps, guidance, self.schedule, **common)
        if y.device.type != "meta" and not torch.isfinite(y).all():  # (a meta tensor has no values to check)
            # written out, NaN would read as black images counted as purified
            raise FloatingPointError("the diffusion model's output is NaN or infinite for finite input: the model is "
                                     "unusable with these settings (its weights, or --flags that do not match them)")
        return y

    def plan(self, sizes: Sequence[tuple[int, int]]) -> MosaicLayout:
        return plan_layout(sizes, self.canvas_size, self.settings.pool, self.settings.large_images)

    def batches(self, count: int, seed: int | None = None) -> list[CanvasBatch]:
        """How `purify_canvases` splits `count` canvases into sampling batches of `batch_size`, and each batch's seed.

        A batch is seeded by the call's seed (default: the settings' seed) plus the index of its first canvas, so its
        result does not depend on how many canvases came before it in this process: a set purified batch by batch
        across interrupted runs (the evaluation's cache) comes out as one call over the whole set does. The sum wraps
        at 2**32, as torch's CPU generator read it anyway, so a batch seed is always a valid seed and means the same
        noise on every device kind's generator: seed s's batch at canvas k draws seed (s + k) mod 2**32's noise.
        """
        base_seed = self.settings.seed if seed is None else seed
        return [CanvasBatch(start, min(start + self.batch_size, count), (base_seed + start) % 2**32)
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

        `progress`: True shows a bar on a terminal (in a log, a plain line a minute); True or False, anything else
        is a TypeError.

        `seed` (default: the settings' seed; an integer in [0, 2**32 - 1]) makes the call reproducible: the same
        images in the same order with the same seed, settings, canvas_size and batch_size give bit-identical results on
        the same device (the noise is drawn per sampling batch of batch_size canvases). An
        image's result also depends on the other images of the call (small images share canvases and noise draws),
        not only on its own pixels.
        """
        images = image_items(images)
        seed = _validate_seed(seed)
        if isinstance(progress, np.bool_):
            progress = bool(progress)
        if not isinstance(progress, bool):  # "no", "off", 0 read as true or false by Python's truth, not as meant
            raise TypeError(f"progress must be True or False, got {progress!r}")
        read = [read_image(i, im) for i, im in enumerate(images)]
        if not read:
            return []
        checked = [rgb for rgb, _ in read]
        layout = self.plan([im.shape[:2] for im in checked])
        shrunk = [p.downscale for p in layout.placements if p.downscale > 1]
        if shrunk:
            warnings.warn(f"{len(shrunk)} image(s) larger than the model's {self.canvas_size} px canvas were shrunk to "
                          f"fit it (up to {max(shrunk):g}x): they come back at their own size but with only the canvas's "
                          "detail; a prior made for their size keeps it", stacklevel=_callers_level())
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


def _check_model(model: UNetModel) -> None:
    """Refuse, when the purifier is made, a model that would fail on its first batch with an error naming neither it
    nor the fix: weights in another dtype than fp32 (a model.half() gave torch's "mat1 and mat2 must have the same
    dtype, but got Float and Half"), or a class-conditional model ("class labels y must be given"). Anything but a
    torch module (a checkpoint's path, what load_checkpoint returns) is a TypeError saying what to pass: "'str'
    object has no attribute 'to'" said neither."""
    if not isinstance(model, torch.nn.Module):  # a torch.compile'd UNet is a Module, not a UNetModel
        hint = ("Purifier.from_checkpoint(path) loads one from a checkpoint file" if isinstance(model, str | os.PathLike)
                else "pass its .model" if isinstance(model, LoadedCheckpoint)
                else "build one with build_unet(flags), or load one with Purifier.from_checkpoint(path)")
        raise TypeError(f"model must be a UNetModel, got {type(model).__name__}: {hint}")
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in [*model.parameters(), *model.buffers()]
                     if p.is_floating_point() and p.dtype != torch.float32})
    if dtypes:
        raise ValueError(f"the model's weights are {' and '.join(dtypes)}; the purifier samples an fp32 model: pass "
                         "model.float(), with precision='fp16' or 'bf16' for reduced-precision inference on CUDA")
    if model.config.class_cond:
        raise ValueError(f"the model is class-conditional (class_cond=True): {CLASS_COND_ADVICE}")


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
    read = [read_image(i, im) for i, im in enumerate(image_items(images))]
    out = [naive_transform(rgb[None], pool)[0] for rgb, _ in read]
    return [o if shape is None else to_gray(o).reshape(shape) for o, (_, shape) in zip(out, read, strict=True)]
