"""The defenses (none, ShrinkPad, the naive transform A⁺A x, ZIP and the ZIP authors' variant) and their purified sets.

`make_defense` builds one by name; `purified` applies it to a set of images, cached under the folder it is given
(the evaluation's <cache_dir>/purified/<dataset>-n<images>-seed<seed>/) as

    <defense>-<key>/<part>-<input sha256[:16]>.npz   (+ settings.json)

where the key is a hash of the defense's settings and `PURIFICATION_VERSION`. A ZIP set in progress keeps each finished
purifier batch in <part>-<input sha256[:16]>.partial/ (`_purify_resumably`), so a killed run purifies only the
batches it had not finished, and the set comes out bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.checkpoint import CheckpointError
from pipeline.evaluation.baselines import naive_transform, no_defense, shrink_pad
from pipeline.evaluation.cache import DAMAGED_CACHE, save_npz, sha256_of_arrays, warn_damaged, write_text_atomic
from pipeline.evaluation.log import log
from pipeline.progress import progress_bar
from pipeline.purifier import CanvasBatch, Purifier
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.sampler import run_timesteps
from pipeline.settings import ZipSettings
from pipeline.tiling import pack, unpack

if TYPE_CHECKING:
    from pipeline.evaluation.runner import EvalConfig


DEFENSES = ("none", "shrinkpad", "naive", "zip", "zip-authors")
ZIP_DEFENSES = ("zip", "zip-authors")

# The version of the code that makes purified pixels, part of every purified set's cache key. Bump it whenever a
# change makes any defense give other pixels for the same settings (the sampler's noise draws, tiling, rounding, a
# baseline's transform): sets cached by the older code are then purified afresh instead of silently reused.
PURIFICATION_VERSION = 1


@dataclass
class Defense:
    """One defense setting: a name, the function applied to uint8 N x H x W x 3 images, and its cache key."""

    name: str
    settings: dict[str, Any]
    apply: Callable[[np.ndarray], np.ndarray] | None = None
    purifier_factory: Callable[[], Purifier] | None = None
    cacheable: bool = True
    _purifier: Purifier | None = field(default=None, repr=False)

    @property
    def key_fields(self) -> dict[str, Any]:
        """What the cache key is the hash of (and settings.json records): the name, the settings and, from version 2
        on, the code's `PURIFICATION_VERSION` (left out at 1, so the keys of sets cached before it existed stay)."""
        fields = {"defense": self.name, **self.settings}
        if PURIFICATION_VERSION != 1:
            fields["purification_version"] = PURIFICATION_VERSION
        return fields

    @property
    def key(self) -> str:
        blob = json.dumps(self.key_fields, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    @property
    def purifier(self) -> Purifier:
        """The ZIP purifier, its prior loaded on first use."""
        if self._purifier is None:
            assert self.purifier_factory is not None, f"defense {self.name} has no purifier"
            self._purifier = self.purifier_factory()
        return self._purifier

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.apply is not None:
            return self.apply(images)
        return np.stack(self.purifier(list(images), progress=True))


def zip_settings(defense: str, steps: int, pool: int, **overrides: Any) -> ZipSettings:
    """Paper settings (Algorithm 2) for 'zip', the authors' released variant for 'zip-authors'.

    overrides: further `ZipSettings` fields for both, e.g. sampler="ddpm" (the paper's Algorithm 1) or seed (the
    sampler's noise: one evaluation draws one sample per image, so other seeds show how much of a difference is
    the sampler's chance, about 2 points of CA on 500 CIFAR-10 images).
    """
    if defense == "zip":
        return ZipSettings(steps=steps, pool=pool, **overrides)
    if defense == "zip-authors":
        return ZipSettings.authors_code(pool=pool, steps=steps, **overrides)
    raise ValueError(f"{defense!r} is not a ZIP defense")


def zip_overrides(config: EvalConfig, schedule: str | None = None, start: float | None = None) -> dict[str, Any]:
    """The `ZipSettings` fields both ZIP defenses take from the configuration (see `zip_settings`); `schedule` and
    `start`: the noise schedule and start `preflight` resolved for the prior (the configuration's, else the prior's),
    else the configuration's own. They are fields of the settings, so part of the purified sets' cache key: a cosine
    run never reuses a linear run's images (and "linear" and 1, the defaults `make_defense` keys unset ones by, keep
    the keys sets were cached under before they were chosen here)."""
    overrides: dict[str, Any] = {"seed": config.sampler_seed, "sampler": config.sampler,
                                 "start": config.start if start is None else start}
    if schedule or config.schedule:
        overrides["schedule"] = schedule or config.schedule
    return overrides


def make_defense(
    name: str,
    *,
    pool: int = 4,
    steps: int = 20,
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
    device: str = "cpu",
    canvas_size: int | None = None,
    batch_size: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    zip_overrides: Mapping[str, Any] | None = None,
) -> Defense:
    """Build a defense by name (see DEFENSES); ZIP ones load the checkpoint lazily, on first use.

    seed: ShrinkPad's offsets; zip_overrides: `ZipSettings` fields for the ZIP defenses (see `zip_settings`).
    """
    if name == "none":
        return Defense(name, {}, no_defense, cacheable=False)
    if name == "shrinkpad":
        shrink = max(1, round(4 * image_size / 32))  # 4 px on 32x32 images, as in the ShrinkPad paper
        return Defense(name, {"shrink": shrink, "seed": seed}, lambda x: shrink_pad(x, shrink=shrink, seed=seed))
    if name == "naive":
        return Defense(name, {"pool": pool}, lambda x: naive_transform(x, pool))
    if name in ZIP_DEFENSES:
        if checkpoint is None or checkpoint_sha256 is None:
            raise ValueError(f"defense {name!r} needs a checkpoint")
        # preflight resolves the schedule and start for the prior (`zip_overrides`); ones left unset here are those of
        # a prior that records neither (linear, from pure noise), for the purifier and the cache key alike
        settings = zip_settings(name, steps, pool, **(zip_overrides or {})).for_prior({})

        def factory() -> Purifier:
            # named without a server's password in its URI (ftp://user:***@host/prior.pt): the log ends up in CI logs
            log(f"loading diffusion prior {redact_uri(checkpoint)} for {name}")
            try:
                return Purifier.from_checkpoint(
                    checkpoint, settings=settings, device=device, canvas_size=canvas_size, batch_size=batch_size,
                    expected_sha256=checkpoint_sha256,
                )
            except CheckpointError as err:
                # The run checked this prior before any work and keys its purified sets by that sha256; by now it may
                # have been replaced (a train_prior.py run still saving it) or become unreadable.
                raise CheckpointError(redact_uri_secrets(
                    f"diffusion prior {checkpoint} changed after the run checked it, or can no longer be read ({err}); "
                    "rerun to evaluate it as it is now (finished work is cached)", checkpoint)) from err

        key_settings = {"zip": settings.to_dict(), "checkpoint_sha256": checkpoint_sha256, "canvas_size": canvas_size,
                        "batch_size": batch_size}
        # The noise comes from a generator on the device, and a CUDA one (Philox) draws other numbers than a CPU one
        # (mt19937) from the same seed: a GPU run's images are other images. Only other devices add it, so the keys
        # of CPU sets, cached before it was part of the key, stay the same.
        noise_device = torch.device(device).type
        if noise_device != "cpu":
            key_settings["noise_device"] = noise_device
        return Defense(name, key_settings, purifier_factory=factory)
    raise ValueError(f"unknown defense {name!r}; choose from {', '.join(DEFENSES)}")


def _cached_images(path: Path) -> np.ndarray | None:
    """The images of a purified-set cache file, or None when it is damaged (the set is then purified afresh; a file of
    the same name is replaced)."""
    try:
        with np.load(path) as data:
            return data["images"]
    except DAMAGED_CACHE as err:
        warn_damaged(path, err, "purifying afresh")
        return None


def purified(defense: Defense, images: np.ndarray, cache_dir: Path, part: str) -> np.ndarray:
    """The defense applied to `images`, cached as cache_dir/<defense key>/<part>-<input sha>.npz.

    Any cached file of the same defense with the same input hash is reused (BadNet and PhysicalBA share their
    test-time trigger, so their triggered subsets are purified once). A ZIP set keeps every finished purifier batch
    until the set is whole (see `_purify_resumably`), so an interrupted run resumes with the batches it had not done.
    """
    if len(images) == 0:
        return images.copy()
    if not defense.cacheable:
        return defense(images)
    folder = cache_dir / defense.key
    digest = sha256_of_arrays(images)[:16]
    for candidate in sorted(folder.glob(f"*-{digest}.npz")):
        cached = _cached_images(candidate)
        if cached is not None and cached.shape == images.shape:
            log(f"  {defense.name}/{part}: {len(images)} images from cache {candidate.name}")
            return cached
    log(f"  {defense.name}/{part}: purifying {len(images)} images")
    start = time.perf_counter()
    batches = folder / f"{part}-{digest}.partial"
    if defense.purifier_factory is not None:
        out, purified_now, seconds_before = _purify_resumably(defense, images, batches, f"{defense.name}/{part}")
    else:
        out, purified_now, seconds_before = np.asarray(defense(images), dtype=np.uint8), len(images), 0.0
    seconds = time.perf_counter() - start
    if out.shape != images.shape:
        raise RuntimeError(f"defense {defense.name} changed the images' shape: {images.shape} -> {out.shape}")
    write_text_atomic(folder / "settings.json", json.dumps(defense.key_fields, indent=2, default=str))
    save_npz(folder / f"{part}-{digest}.npz", images=out, seconds=np.float64(seconds_before + seconds))
    shutil.rmtree(batches, ignore_errors=True)  # the whole set is kept now: its batches are not needed any more
    log(f"  {defense.name}/{part}: done in {seconds:.1f}s ({purified_now / max(seconds, 1e-9):.1f} images/s"
        + (f", {purified_now} of the {len(images)} this run)" if purified_now < len(images) else ")"))
    return out


def _batch_file(folder: Path, start: int, stop: int) -> Path:
    """A finished purifier batch: canvases start..stop-1 of the set (the range names it, so another batch size can
    never take it for one of its own)."""
    return folder / f"canvases-{start:07d}-{stop:07d}.npz"


def _cached_batch(path: Path, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, float] | None:
    """(canvases, seconds) of a batch an interrupted run finished, or None when it has none there or the file is
    damaged or of other canvases or noise (then the batch is purified again and the file replaced)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            canvases, stored_seed, seconds = data["canvases"], int(data["seed"]), float(data["seconds"])
    except DAMAGED_CACHE as err:  # a cut-off file, or changed bytes (each array's CRC-32 is checked on reading)
        warn_damaged(path, err, "purifying its batch again")
        return None
    if canvases.dtype != np.uint8 or canvases.shape != shape or stored_seed != seed:
        warn_damaged(path, ValueError(f"{canvases.dtype} canvases {canvases.shape} of noise seed {stored_seed}, expected "
                                  f"uint8 {shape} of seed {seed}"), "purifying its batch again")
        return None
    return canvases, seconds


def _purify_resumably(defense: Defense, images: np.ndarray, folder: Path, label: str) -> tuple[np.ndarray, int, float]:
    """ZIP on `images` with each finished purifier batch of canvases written to `folder` at once (by temporary file
    and rename), and the batches found there from an interrupted run reused.

    Bit-identical to `defense(images)`: the images are laid out on canvases as the purifier lays them out, and the
    purifier's own batches (`Purifier.batches`, each seeded by its first canvas) are kept or purified through its
    per-batch hooks. Returns (images, how many were purified now, seconds the reused batches took before).
    """
    purifier = defense.purifier
    layout = purifier.plan([im.shape[:2] for im in images])
    shrunk = sum(p.downscale > 1 for p in layout.placements)
    if shrunk:
        log(f"  {label}: {shrunk} images larger than the prior's {purifier.canvas_size} px canvas are purified at its "
            "size and scaled back, with only its detail")
    canvases = pack(list(images), layout)
    batches = purifier.batches(len(canvases))
    kept: dict[CanvasBatch, np.ndarray] = {}
    seconds_before = 0.0
    for batch in batches:
        cached = _cached_batch(_batch_file(folder, batch.start, batch.stop),
                               (batch.stop - batch.start, *canvases.shape[1:]), batch.seed)
        if cached is not None:
            kept[batch], seconds = cached
            seconds_before += seconds
    redo = np.ones(len(canvases), dtype=bool)
    for batch in kept:
        redo[batch.start : batch.stop] = False
    purified_now = int(sum(redo[p.canvas] for p in layout.placements))
    if kept:
        log(f"  {label}: resuming: {len(kept)} of {len(batches)} purifier batches "
            f"({len(images) - purified_now} of {len(images)} images) kept from an interrupted run, "
            f"purifying the other {len(batches) - len(kept)}")
    steps = len(run_timesteps(purifier.schedule.num_steps, purifier.settings.steps, purifier.settings.start))
    bar = progress_bar(len(batches) * steps, "purifying", "step", initial=len(kept) * steps)
    began = time.perf_counter()

    def save(batch: CanvasBatch, done: np.ndarray) -> None:
        nonlocal began
        save_npz(_batch_file(folder, batch.start, batch.stop), canvases=done, seed=np.int64(batch.seed),
                  seconds=np.float64(time.perf_counter() - began))
        began = time.perf_counter()

    try:
        out = purifier.purify_canvases(canvases, progress=lambda i, n: bar.update(1), kept=kept.get, on_batch=save)
    finally:
        bar.close()
    return np.stack(unpack(out, layout)), purified_now, seconds_before
