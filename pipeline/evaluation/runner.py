"""The defense evaluation matrix (the ZIP paper's Table 1) as plain functions.

For one data set: a backdoored classifier per attack (cached), the class-stratified test subset, every defense
applied to the clean subset (once, shared by all attacks) and to each attack's triggered subset, then CA / ASR /
PA per attack x defense and PSNR / SSIM of the purified clean images. Results go to `<out>/<dataset>.json`,
`<out>/<dataset>.md` and `<out>/<dataset>-examples.png`.

Everything expensive is cached under `cache_dir` and reused on the next run, so a killed run resumes:

    classifiers/<dataset>-<attack|clean>-e<epochs>[-<options>].pt   (+ .json with how it was trained)
    purified/<dataset>-n<subset>-seed<seed>/<defense>-<key>/<part>-<input sha256[:16]>.npz   (+ settings.json)

A ZIP set in progress keeps each finished purifier batch in <part>-<input sha256[:16]>.partial/, so a killed run
purifies only the batches it had not finished. A damaged cache file is named in a warning and rebuilt as if it were
missing. `preflight` checks a configuration (subset, pool, the ZIP prior, an earlier report in the output folder)
before any of that work.

Data comes from a `loader(name, split) -> LabelledImages` (default `datasets.load_dataset`), so tests can inject
a synthetic set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import shutil
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.evaluation import datasets, metrics
from pipeline.evaluation.attacks import ATTACKS, Attack, PhysicalBA, make_attack, poison_test_set, poison_training_set
from pipeline.evaluation.baselines import naive_transform, no_defense, shrink_pad
from pipeline.evaluation.classifier import ExtraTransform, ResNet, load_classifier, predict, save_classifier, train_classifier
from pipeline.evaluation.datasets import (
    IMAGE_SIZES,
    NUM_CLASSES,
    DataError,
    LabelledImages,
    cached_labels,
    load_dataset,
    missing_data,
    stratified_subset,
)
from pipeline.evaluation.report import CLEAN, markdown_table, write_examples
from pipeline.evaluation.target import ASR_LIMIT, BASELINES, DECIMALS, RESAMPLES, AttackPredictions, target_check
from pipeline.presets import shipped_prior_path
from pipeline.progress import progress_bar
from pipeline.purifier import CanvasBatch, Purifier, ZipSettings, check_trained_timesteps
from pipeline.sampler import run_timesteps
from pipeline.tiling import pack, unpack

Loader = Callable[[str, str], LabelledImages]

DEFENSES = ("none", "shrinkpad", "naive", "zip", "zip-authors")
ZIP_DEFENSES = ("zip", "zip-authors")
# The shipped CIFAR-10 prior, by absolute path: a default that works from any working directory.
DEFAULT_PRIOR = str(shipped_prior_path("cifar10"))

NO_HFLIP = {"gtsrb"}  # traffic signs are not flip-invariant
# Corner-patch attacks whose classifiers get the trigger stamped again after crop/flip augmentation (see
# `train_classifier(restamp=...)`): without it a 4 px crop shift cuts or moves the 3x3 patch in 2/9 of the
# poisoned samples per axis and the backdoor stays below the 95 % ASR target (92.7 % on CIFAR-10).
RESTAMP_AFTER_AUGMENT = {"badnet"}
# Attacks whose classifiers train without the 4 px random crop: PhysicalBA's own transforms already shift (10 %),
# zoom (0.8-0.9) and rotate every training image, as in BackdoorBox's recipe (flips only on top); a crop on top
# scatters the trigger so far from the corner that the test-time patch is missed more often.
NO_CROP_ATTACKS = {"physicalba"}
# Data sets whose shared copy has a single split: the evaluation holds out a stratified test share of it.
SINGLE_SPLIT = {"imagenette": ("val", 0.25)}


class EvaluationError(ValueError):
    """A run that cannot start as configured (a test subset smaller than the class count, an unusable prior, an
    output folder holding another configuration's report), found before any training or purification."""


def log(message: str) -> None:
    """Progress line on stderr (stdout stays free for callers)."""
    print(f"[evaluate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def normalise_attack(name: str | None) -> str:
    """'badnet' etc., or CLEAN for None / 'none' / 'clean' (the clean classifier's row)."""
    if name is None or name.lower() in ("none", CLEAN):
        return CLEAN
    if name.lower() not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)} or 'none'")
    return name.lower()


# ---------------------------------------------------------------------------------------------------------- data


def load_splits(dataset: str, loader: Loader = load_dataset) -> tuple[LabelledImages, LabelledImages]:
    """(train, test) of a data set. Single-split sets are split once, stratified, with a fixed seed."""
    if dataset not in SINGLE_SPLIT:
        return loader(dataset, "train"), loader(dataset, "test")
    split, test_share = SINGLE_SPLIT[dataset]
    full = loader(dataset, split)
    counts = np.bincount(full.labels, minlength=full.num_classes)
    test_idx = stratified_subset(full.labels, int(round(test_share * counts.min())) * full.num_classes, seed=12345)
    train_mask = np.ones(len(full.labels), dtype=bool)
    train_mask[test_idx] = False
    return (
        LabelledImages(full.images[train_mask], full.labels[train_mask], full.num_classes),
        LabelledImages(full.images[test_idx], full.labels[test_idx], full.num_classes),
    )


def _sha256_array(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# What reading a damaged derived cache file raises (truncated zip archives, cut-off pickles, missing entries).
DAMAGED_CACHE = (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile, zlib.error,
                 pickle.UnpicklingError)


def _damaged(path: Path, err: BaseException, action: str) -> None:
    log(f"warning: cache file {path} is damaged ({type(err).__name__}: {err}); {action}")


def _read_json_cache(path: Path) -> dict[str, Any]:
    """A cached JSON record, or {} when it is missing or damaged (it is derived, so it is rebuilt)."""
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        _damaged(path, err, "ignoring it")
        return {}
    if not isinstance(info, dict):
        _damaged(path, TypeError(f"a JSON {type(info).__name__}, not an object"), "ignoring it")
        return {}
    return info


def _save_npz(path: Path, **arrays: Any) -> None:
    """Atomic .npz write: a killed run never leaves a half-written cache file; the temporary name is the process's
    own, so two evaluations sharing a cache cannot take each other's half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- classifiers


def _option_suffix(options: dict[str, Any] | None) -> str:
    return "-" + "-".join(f"{k}{v}" for k, v in sorted(options.items())) if options else ""


def classifier_path(cache_dir: str | Path, dataset: str, attack: str | None, epochs: int,
                    train_options: dict[str, Any] | None = None, attack_options: dict[str, Any] | None = None) -> Path:
    """cache_dir/classifiers/<dataset>-<attack or clean>-e<epochs>.pt; non-default attack parameters, then
    non-default training options, add a suffix each."""
    name = f"{dataset}-{normalise_attack(attack)}-e{epochs}"
    if normalise_attack(attack) in RESTAMP_AFTER_AUGMENT:
        name += "-restamp"
    if normalise_attack(attack) in NO_CROP_ATTACKS:
        name += "-nocrop"
    if attack_options:
        name += "-attack" + _option_suffix(attack_options)
    name += _option_suffix(train_options)
    return Path(cache_dir) / "classifiers" / f"{name}.pt"


def training_checkpoint_path(path: Path) -> Path:
    """The epoch checkpoint of the classifier being trained to `path` (<name>.partial.pt)."""
    return path.with_name(f"{path.stem}.partial.pt")


def without_flips(transform: ExtraTransform) -> ExtraTransform:
    """`PhysicalBA.train_transform` with its random horizontal flip cancelled (for data sets such as GTSRB).

    The transform draws its flips first, as rng.random(n) < 0.5; the same draw on a copy of the generator tells
    which images it will flip, and those are flipped beforehand, so they come out unflipped. The rest of its
    randomness and the caller's generator state are unchanged (tests check the flip really cancels).
    """

    def wrapped(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flips = copy.deepcopy(rng).random(len(images)) < 0.5
        pre = images.copy()
        pre[flips] = pre[flips, :, ::-1]
        return transform(pre, rng)

    return wrapped


def get_classifier(
    dataset: str,
    attack: str | None,
    cache_dir: str | Path,
    epochs: int,
    threads: int | None = None,
    *,
    loader: Loader = load_dataset,
    train: LabelledImages | None = None,
    device: str = "cpu",
    train_options: dict[str, Any] | None = None,
    attack_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[ResNet, dict[str, Any]]:
    """The backdoored (or, for attack None/'none', clean) ResNet of a data set, trained once and then cached.

    Poisons the training set at the attack's own rate (5 %, WaNet 10 %), seed 0; PhysicalBA's physical
    transforms run on every training image; GTSRB trains without horizontal flips. A cached classifier is
    loaded, never retrained. `train_options` go to `train_classifier` (depth, batch_size, lr, crop_pad, ...) and are
    part of the cache name; crop_pad is ignored for PhysicalBA, which always trains without crops. `attack_options`
    replace fields of the attack's defaults (e.g. PhysicalBA's interpolation) and are part of the cache name too.
    Returns (model in eval mode, info dict).
    """
    if attack_options and normalise_attack(attack) == CLEAN:
        raise ValueError("attack_options given for the clean classifier, which has no attack")
    name = normalise_attack(attack)
    if name in NO_CROP_ATTACKS and train_options and "crop_pad" in train_options:
        # The attack's recipe fixes its augmentation; one --crop-pad for a whole matrix must not change it.
        train_options = {k: v for k, v in train_options.items() if k != "crop_pad"}
    path = classifier_path(cache_dir, dataset, name, epochs, train_options, attack_options)
    meta_path = path.with_suffix(".json")
    if train is None:
        train, _ = load_splits(dataset, loader)
    attack_obj: Attack | None = None
    if name != CLEAN:
        attack_obj = make_attack(name, train.images.shape[1])
        if attack_options:
            attack_obj = replace(attack_obj, **attack_options)  # type: ignore[type-var]
    # What the weights were trained from, beyond the cache name: the attack's every parameter (a changed default
    # keeps the name) and the training split's content (another copy of the data set keeps it too).
    trained_from = {"attack_params": _attack_params(attack_obj),
                    "train_sha256": _sha256_array(train.images, train.labels)}
    cached = _cached_classifier(path)
    if cached is not None:
        info = _read_json_cache(meta_path)
        stale = [key for key, value in trained_from.items() if key in info and info[key] != value]
        if not stale:
            log(f"{dataset}/{name}: classifier from cache {path}")
            return cached.to(device), {**info, "path": str(path), "trained_now": False}
        log(f"{dataset}/{name}: cached classifier {path} was trained from another {' and '.join(stale)}; retraining it")

    images, labels, poisoned = train.images, train.labels, np.zeros(0, dtype=np.int64)
    extra_transform = None
    restamp = None
    if attack_obj is not None:
        images, labels, poisoned = poison_training_set(train.images, train.labels, attack_obj, seed=0)
        if isinstance(attack_obj, PhysicalBA):
            extra_transform = attack_obj.train_transform
            if dataset in NO_HFLIP:
                extra_transform = without_flips(extra_transform)
        if name in RESTAMP_AFTER_AUGMENT:
            mask = np.zeros(len(images), dtype=bool)
            mask[poisoned] = True
            restamp = (mask, attack_obj.apply)
    options = dict(train_options or {})
    options.setdefault("hflip", dataset not in NO_HFLIP)
    if name in NO_CROP_ATTACKS:
        options.setdefault("crop_pad", 0)
    log(f"{dataset}/{name}: training classifier on {len(images)} images ({len(poisoned)} poisoned), "
        f"{epochs} epochs -> {path}")
    start = time.perf_counter()
    # An epoch checkpoint beside the cache file: a killed run resumes after its last finished epoch (10 epochs are
    # 11-30 min on 2 cores), keyed by the data and attack the weights come from.
    partial = training_checkpoint_path(path)
    model = train_classifier(
        images, labels, train.num_classes, epochs, extra_transform=extra_transform, device=device,
        progress=progress, num_threads=threads, restamp=restamp, checkpoint=partial,
        checkpoint_key=json.dumps({**trained_from, "attack": name, "dataset": dataset}, sort_keys=True), **options,
    )
    seconds = time.perf_counter() - start
    save_classifier(model, path)
    partial.unlink(missing_ok=True)
    info = {
        "dataset": dataset, "attack": name, "epochs": epochs, "train_images": len(images),
        "poisoned": len(poisoned), "poison_rate": getattr(attack_obj, "poison_rate", 0.0),
        "attack_options": dict(attack_options or {}),
        "train_options": options, "train_seconds": round(seconds, 1), "restamp_after_augment": restamp is not None,
        **trained_from,
    }
    _write_text(meta_path, json.dumps(info, indent=2))
    log(f"{dataset}/{name}: classifier trained in {seconds / 60:.1f} min")
    return model, {**info, "path": str(path), "trained_now": True}


def _attack_params(attack: Attack | None) -> dict[str, Any] | None:
    """An attack's class and every field, JSON-ready (tuples as lists, as they read back from the meta file)."""
    if attack is None:
        return None
    return json.loads(json.dumps({"class": type(attack).__name__, **asdict(attack)}))  # type: ignore[call-overload]


def _cached_classifier(path: Path) -> ResNet | None:
    """The cached classifier at `path`, or None when there is none or it is damaged (then it is retrained and
    replaced). Loaded on the CPU: a device problem must not pass for a damaged file."""
    if not path.exists():
        return None
    try:
        return load_classifier(path, "cpu")
    except DAMAGED_CACHE as err:
        _damaged(path, err, "retraining the classifier")
        return None


def full_test_scores(model: ResNet, attack: Attack | None, test: LabelledImages, meta_path: Path) -> dict[str, Any]:
    """The classifier's CA (and ASR) without defense on the WHOLE test split, cached in its meta JSON.

    Targets for a victim classifier (e.g. CA >= 95 % on GTSRB, ASR >= 95 %) are judged here: on a 500-image subset
    one image moves CA by 0.2 points and the standard error is about 1 point, too coarse to tell 94.7 from 95; and a
    class-stratified subset weights rare classes as much as common ones. Keyed by the test split's sha256, so another
    copy of the data set is scored afresh.
    """
    test_sha = _sha256_array(test.images)
    info = _read_json_cache(meta_path)
    cached = info.get("full_test")
    if isinstance(cached, dict) and cached.get("test_sha256") == test_sha:
        return cached
    ca = metrics.clean_accuracy(predict(model, test.images), test.labels)
    asr, triggered = None, 0
    if attack is not None:
        poisoned, true_labels = poison_test_set(test.images, test.labels, attack)
        asr, triggered = metrics.attack_success_rate(predict(model, poisoned), true_labels, attack.target), len(true_labels)
    scores = {"images": int(len(test.labels)), "test_sha256": test_sha, "ca": _score(ca), "asr": _score(asr),
              "triggered_images": triggered}
    _write_text(meta_path, json.dumps({**info, "full_test": scores}, indent=2))
    return scores


# ------------------------------------------------------------------------------------------------------ defenses

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
        settings = zip_settings(name, steps, pool, **(zip_overrides or {}))

        def factory() -> Purifier:
            log(f"loading diffusion prior {checkpoint} for {name}")
            return Purifier.from_checkpoint(
                checkpoint, settings=settings, device=device, canvas_size=canvas_size, batch_size=batch_size,
                expected_sha256=checkpoint_sha256,
            )

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
        _damaged(path, err, "purifying afresh")
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
    digest = _sha256_array(images)[:16]
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
    _write_text(folder / "settings.json", json.dumps(defense.key_fields, indent=2, default=str))
    _save_npz(folder / f"{part}-{digest}.npz", images=out, seconds=np.float64(seconds_before + seconds))
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
        _damaged(path, err, "purifying its batch again")
        return None
    if canvases.dtype != np.uint8 or canvases.shape != shape or stored_seed != seed:
        _damaged(path, ValueError(f"{canvases.dtype} canvases {canvases.shape} of noise seed {stored_seed}, expected "
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
        _save_npz(_batch_file(folder, batch.start, batch.stop), canvases=done, seed=np.int64(batch.seed),
                  seconds=np.float64(time.perf_counter() - began))
        began = time.perf_counter()

    try:
        out = purifier.purify_canvases(canvases, progress=lambda i, n: bar.update(1), kept=kept.get, on_batch=save)
    finally:
        bar.close()
    return np.stack(unpack(out, layout)), purified_now, seconds_before


# ------------------------------------------------------------------------------------------------------ the matrix


@dataclass
class EvalConfig:
    """Everything one data set's evaluation depends on (see jobs/evaluate.py --help)."""

    dataset: str
    attacks: Sequence[str] = ("badnet", "blended", "physicalba", "wanet")
    defenses: Sequence[str] = DEFENSES
    checkpoint: str = DEFAULT_PRIOR
    steps: int = 20
    pool: int = 4
    subset: int = 1000
    seed: int = 0
    sampler_seed: int = 0
    sampler: str = "ddim"
    start: float = 1.0
    # The noise schedule ZIP samples with (both zip variants); None: the one the prior records (train_prior.py writes
    # it in its meta), else guided-diffusion's linear one. A prior sampled with another schedule than it learnt
    # denoises at the wrong noise levels, so preflight refuses a schedule that differs from the recorded one.
    schedule: str | None = None
    epochs: int = 10
    threads: int | None = None
    cache_dir: Path = Path.home() / ".cache" / "zip-purify"
    out_dir: Path = Path("results")
    device: str = "cpu"
    canvas_size: int | None = None
    batch_size: int | None = None
    examples: int = 6
    train_options: dict[str, Any] = field(default_factory=dict)
    bootstrap: int = RESAMPLES  # resamples for the target check's intervals (0: no target check)
    overwrite: bool = False  # replace a report of another configuration in out_dir


def _score(value: float | None) -> float | None:
    """A figure as the report stores it: `DECIMALS` decimals, so that the one the tables show is rounded once."""
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def _labels_text(labels: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in labels)


def _labels_array(text: str) -> np.ndarray:
    return np.array([int(v) for v in text.split()], dtype=np.int64)


def encode_predictions(labels: np.ndarray, predictions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-image predictions for the report: the subset's true labels and, per attack and defense, the predicted
    labels of the purified clean images and of the purified triggered ones, as space-separated text."""
    return {
        "labels": _labels_text(labels),
        "attacks": {
            a: {"target": p["target"], "clean": {d: _labels_text(v) for d, v in p["clean"].items()},
                "triggered": {d: _labels_text(v) for d, v in p["triggered"].items()}}
            for a, p in predictions.items()
        },
    }


def decode_predictions(encoded: dict[str, Any]) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """The inverse of `encode_predictions`: (labels, per-attack predictions as arrays)."""
    predictions = {
        a: {"target": p["target"], "clean": {d: _labels_array(v) for d, v in p["clean"].items()},
            "triggered": {d: _labels_array(v) for d, v in p["triggered"].items()}}
        for a, p in encoded["attacks"].items()
    }
    return _labels_array(encoded["labels"]), predictions


def check_target(labels: np.ndarray, predictions: dict[str, dict[str, Any]], defenses: Sequence[str],
                 resamples: int = RESAMPLES, seed: int = 0,
                 averages: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any] | None:
    """The target check (`target.target_check`) of every ZIP defense run against the baselines run, over the
    backdoor attacks (not the clean classifier's row); None when the run lacks a ZIP defense, a baseline or an
    attack, or resamples is 0."""
    attacks = [AttackPredictions(p["target"], p["clean"], p["triggered"])
               for a, p in predictions.items() if a != CLEAN and p["target"] is not None]
    baselines = [d for d in BASELINES if d in defenses]
    zips = [d for d in ZIP_DEFENSES if d in defenses]
    if not (attacks and baselines and zips and resamples > 0):
        return None
    return {
        "resamples": resamples, "seed": seed, "asr_limit": ASR_LIMIT, "images": int(len(labels)),
        "checks": {z: target_check(labels, attacks, z, baselines, resamples=resamples, seed=seed, averages=averages)
                   for z in zips},
    }


def _zip_overrides(config: EvalConfig, schedule: str | None = None) -> dict[str, Any]:
    """The `ZipSettings` fields both ZIP defenses take from the configuration (see `zip_settings`); `schedule`: the
    noise schedule `preflight` resolved (the configuration's, else the prior's), else the configuration's own. It is
    a field of the settings, so part of the purified sets' cache key: a cosine run never reuses a linear run's images
    (and "linear", the settings' default, keeps the keys sets were cached under before it was chosen here)."""
    overrides: dict[str, Any] = {"seed": config.sampler_seed, "sampler": config.sampler, "start": config.start}
    if schedule or config.schedule:
        overrides["schedule"] = schedule or config.schedule
    return overrides


def check_subset(dataset: str, subset: int, classes: int) -> None:
    """A class-stratified subset takes subset // classes images of every class: fewer than one each is none at all."""
    if subset < classes:
        raise EvaluationError(f"--subset {subset} is too small for {dataset}: the class-stratified test subset takes "
                              f"as many images from each of its {classes} classes, so it needs at least {classes}")


def largest_subset(labels: np.ndarray) -> int:
    """The largest class-stratified subset of a test split: as many images of every class as its rarest class has."""
    classes = np.unique(labels)
    return int(np.bincount(labels)[classes].min()) * len(classes)


def check_subset_fits(dataset: str, subset: int, labels: np.ndarray) -> None:
    """A subset the test split cannot fill is refused: it used to be cut to the split's size without a word, while its
    report and its purified-image cache folder named the size asked for."""
    most = largest_subset(labels)
    if subset > most:
        classes = len(np.unique(labels))
        raise EvaluationError(f"--subset {subset} is larger than {dataset}'s test split allows: {len(labels)} images, "
                              f"{most // classes} in its rarest class, so a class-stratified subset holds at most {most} "
                              f"({classes} classes x {most // classes}); give --subset {most} or less")


def check_folder(path: Path, flag: str) -> None:
    """--out and --cache-dir must be folders this run can create or write to: found before the work, not when its
    results are written (a file named like the folder used to end a finished run in a traceback)."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"is inside {probe}, which is a file"
        raise EvaluationError(f"{flag} {path} {what}: give a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EvaluationError(f"{flag} {path}: {probe} is not writable")


def check_data(dataset: str, subset: int) -> None:
    """The shared data set's archives (or decoded copies) are there, and the subset fits its test split when that
    is known without decoding (see `datasets.cached_labels`)."""
    splits = [SINGLE_SPLIT[dataset][0]] if dataset in SINGLE_SPLIT else ["train", "test"]
    # Without any shared folder the first data set's load fails in its first seconds, with the same one line; this
    # check is for the archive of a later data set that would be missed only after the earlier ones' hours.
    for split in splits if datasets.SHARED_DIR.is_dir() else []:
        problem = missing_data(dataset, split)
        if problem:
            raise EvaluationError(f"data: {problem}")
    if dataset not in SINGLE_SPLIT:
        labels = cached_labels(dataset, "test")
        if labels is not None:
            check_subset_fits(dataset, subset, labels)


def check_pool(dataset: str, pool: int, image_size: int) -> None:
    """A⁺A x (and the examples' naive row) pools whole k x k blocks of the images."""
    if image_size % pool:
        raise EvaluationError(f"--pool {pool} does not divide {dataset}'s {image_size} px images: choose a divisor of "
                              f"{image_size}, e.g. 2 or 4")


def verify_prior(config: EvalConfig, defenses: Sequence[str]) -> str | None:
    """The sha256 of the ZIP defenses' prior, once it is known to run them: readable, of a known architecture, with a
    canvas the pool factor divides, trained on the timesteps the settings start at. None when no ZIP defense runs."""
    return checked_prior(config, defenses)[0]


def checked_prior(config: EvalConfig, defenses: Sequence[str]) -> tuple[str | None, str]:
    """`verify_prior`'s sha256 and the noise schedule ZIP samples with: config.schedule, else the one the prior
    records (a prior of train_prior.py --schedule cosine needs no flag to be evaluated), else linear."""
    zips = [d for d in defenses if d in ZIP_DEFENSES]
    default = config.schedule or ZipSettings().schedule
    if not zips:
        return None, default
    try:
        for d in zips:  # the settings' own limits, before the prior is read
            zip_settings(d, config.steps, config.pool, **_zip_overrides(config))
    except ValueError as err:
        raise EvaluationError(f"ZIP settings: {err}") from None
    try:
        loaded = load_checkpoint(config.checkpoint, verify_only=True)
    except (CheckpointError, OSError) as err:
        raise EvaluationError(f"diffusion prior: {err} (train one with jobs/train_prior.py, pass --checkpoint, or "
                              "leave out the zip defenses)") from None
    recorded = loaded.meta.get("schedule") if isinstance(loaded.meta, dict) else None
    schedule = config.schedule or (recorded if isinstance(recorded, str) else None) or default
    try:
        settings = {d: zip_settings(d, config.steps, config.pool, **_zip_overrides(config, schedule)) for d in zips}
    except ValueError as err:  # e.g. a schedule recorded by a newer version that this one does not know
        raise EvaluationError(f"ZIP settings with the prior {config.checkpoint}: {err}") from None
    canvas = config.canvas_size or loaded.config.image_size
    if canvas % loaded.config.min_input_multiple:
        raise EvaluationError(f"canvas size {canvas} must be a multiple of {loaded.config.min_input_multiple} for the "
                              f"prior {config.checkpoint}")
    if canvas % config.pool:
        raise EvaluationError(f"--pool {config.pool} does not divide the ZIP canvas size {canvas} (the prior's image "
                              "size, or --canvas-size)")
    for d, zs in settings.items():
        try:
            check_trained_timesteps(loaded.meta, zs)
        except ValueError as err:
            if recorded is not None and recorded != schedule:  # the one way here: --schedule against the prior's own
                raise EvaluationError(f"{d} with the prior {config.checkpoint}: it was trained with the {recorded} noise "
                                      f"schedule, but --schedule {schedule} was given: leave --schedule out (the "
                                      f"prior's own is used) or give --schedule {recorded}") from None
            raise EvaluationError(f"{d} with the prior {config.checkpoint}: {err}") from None
    return loaded.sha256, schedule


def report_settings(config: EvalConfig, attacks: Sequence[str], defenses: Sequence[str],
                    checkpoint_sha256: str | None, schedule: str | None = None) -> dict[str, Any]:
    """The settings a report's numbers and pictures follow from, as its JSON records them. The prior counts by its
    sha256, not its path; execution settings (device, threads) are not among them. `schedule`: the noise schedule
    `preflight` resolved (recorded only when it is not the linear default, so reports of linear runs stay as they
    were, and a report that lacks it was sampled with linear)."""
    schedule = schedule or config.schedule or ZipSettings().schedule
    settings = {
        "attacks": attacks, "defenses": defenses, "subset": config.subset, "seed": config.seed,
        "sampler_seed": config.sampler_seed, "sampler": config.sampler, "start": config.start, "steps": config.steps,
        "pool": config.pool, "checkpoint_sha256": checkpoint_sha256, "classifier_epochs": config.epochs,
        "classifier_options": config.train_options, "canvas_size": config.canvas_size,
        "batch_size": config.batch_size, "examples": config.examples, "bootstrap": config.bootstrap,
    }
    if schedule != ZipSettings().schedule:
        settings["schedule"] = schedule
    return json.loads(json.dumps(settings, default=str))  # tuples as lists, as a report read back holds them


def check_output(config: EvalConfig, settings: Mapping[str, Any]) -> None:
    """Refuse to replace a report of another configuration in config.out_dir (unless config.overwrite). Rerunning
    the same configuration is fine: it regenerates the same report from the caches."""
    path = Path(config.out_dir) / f"{config.dataset}.json"
    if config.overwrite or not path.exists():
        return
    hint = "give another --out, or --overwrite to replace it"
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationError(f"{path} exists but is not a readable report ({err}): {hint}") from None
    recorded = old.get("config") if isinstance(old, dict) else None
    if not isinstance(recorded, dict):
        raise EvaluationError(f"{path} exists but is not a report of jobs/evaluate.py (no config): {hint}")
    # A setting an older report did not record yet is not held against it. The schedule is recorded only when it is
    # not linear, so its absence on either side means linear: a cosine report is not replaced by a linear run unasked.
    default_schedule = ZipSettings().schedule
    settings = {**settings, "schedule": settings.get("schedule", default_schedule)}
    recorded = {**recorded, "schedule": recorded.get("schedule", default_schedule)}
    differ = [f"{k} {json.dumps(recorded[k])} there, {json.dumps(v)} now"
              for k, v in settings.items() if k in recorded and recorded[k] != v]
    if differ:
        raise EvaluationError(f"{path} holds a report of another configuration ({'; '.join(differ)}): {hint}")


@dataclass(frozen=True)
class Preflight:
    """What `preflight` checked: the run's attacks and defenses, its prior's sha256 (None without a ZIP defense), the
    settings its report records and the noise schedule ZIP samples with (see `checked_prior`)."""

    attacks: list[str]
    defenses: list[str]
    checkpoint_sha256: str | None
    settings: dict[str, Any]
    schedule: str = "linear"


def preflight(config: EvalConfig, loader: Loader = load_dataset) -> Preflight:
    """Everything that can be checked before data is loaded, so a bad setting stops a run before hours of training:
    attacks and defenses, the subset and pool against the shared data set's class count and image size (when
    `loader` is the shared one), the ZIP prior, and the output folder. Raises EvaluationError."""
    try:
        # Each once, as the defenses: an attack named twice ('badnet' and 'BadNet') weighed twice in the Average row
        # but once in the target check's resamples, which are keyed by attack.
        attacks = list(dict.fromkeys(normalise_attack(a) for a in config.attacks))
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    defenses = list(dict.fromkeys(config.defenses))
    unknown = [d for d in defenses if d not in DEFENSES]
    if unknown:
        raise EvaluationError(f"unknown defense {', '.join(map(repr, unknown))}; choose from {', '.join(DEFENSES)}")
    if loader is load_dataset and config.dataset in NUM_CLASSES:
        check_subset(config.dataset, config.subset, NUM_CLASSES[config.dataset])
        check_pool(config.dataset, config.pool, IMAGE_SIZES[config.dataset])
    check_folder(Path(config.out_dir), "--out")
    check_folder(Path(config.cache_dir), "--cache-dir")
    if loader is load_dataset and config.dataset in NUM_CLASSES:
        check_data(config.dataset, config.subset)
    checkpoint_sha, schedule = checked_prior(config, defenses)
    settings = report_settings(config, attacks, defenses, checkpoint_sha, schedule)
    check_output(config, settings)
    return Preflight(attacks, defenses, checkpoint_sha, settings, schedule)


def evaluate_dataset(config: EvalConfig, loader: Loader = load_dataset, *, checked: Preflight | None = None) -> dict[str, Any]:
    """Run the whole matrix for one data set, write JSON / Markdown / PNG to config.out_dir, return the JSON dict.

    checked: `preflight(config)`'s result when the caller already ran it (the prior is then not read again)."""
    started = time.perf_counter()
    cache_dir = Path(config.cache_dir).expanduser()
    checked = checked or preflight(config, loader)
    attacks, defenses, checkpoint_sha = checked.attacks, checked.defenses, checked.checkpoint_sha256
    if config.threads:
        torch.set_num_threads(config.threads)

    log(f"{config.dataset}: loading data")
    try:
        train, test = load_splits(config.dataset, loader)
    except DataError as err:
        raise EvaluationError(f"data: {err}") from None
    classes = np.unique(test.labels)
    check_subset(config.dataset, config.subset, len(classes))  # a data set preflight does not know
    check_subset_fits(config.dataset, config.subset, test.labels)
    idx = stratified_subset(test.labels, config.subset, config.seed)
    clean_images, clean_labels = test.images[idx], test.labels[idx]
    image_size = int(clean_images.shape[1])
    check_pool(config.dataset, config.pool, image_size)
    log(f"{config.dataset}: test subset of {len(idx)} images ({test.num_classes} classes, {image_size}px), "
        f"seed {config.seed}")

    defense_objs = {
        d: make_defense(d, pool=config.pool, steps=config.steps, checkpoint=config.checkpoint,
                        checkpoint_sha256=checkpoint_sha, device=config.device, canvas_size=config.canvas_size,
                        batch_size=config.batch_size, image_size=image_size, seed=config.seed,
                        zip_overrides=_zip_overrides(config, checked.schedule))
        for d in defenses
    }
    purified_dir = cache_dir / "purified" / f"{config.dataset}-n{config.subset}-seed{config.seed}"

    clean_out = {}
    fidelity: dict[str, dict[str, float | None]] = {}
    # Where a run is in its matrix: every defense on the clean subset and on each attack's triggered subset.
    total_sets = len(defense_objs) * (1 + sum(a != CLEAN for a in attacks))
    done_sets = 0
    for d, defense in defense_objs.items():
        done_sets += 1
        log(f"{config.dataset}: defense {d} on the clean subset (image set {done_sets} of {total_sets})")
        clean_out[d] = purified(defense, clean_images, purified_dir, CLEAN)
        fidelity[d] = {
            "psnr": _score(metrics.psnr(clean_out[d], clean_images)) if d != "none" else None,
            "ssim": _score(metrics.ssim(clean_out[d], clean_images)) if d != "none" else None,
        }

    results: dict[str, dict[str, dict[str, float | None]]] = {}
    predictions: dict[str, dict[str, Any]] = {}  # per attack and defense, per image: what the target check rescores
    classifiers: dict[str, dict[str, Any]] = {}
    poisoned_sets: dict[str, np.ndarray] = {}
    poisoned_out: dict[str, dict[str, np.ndarray]] = {}
    for name in attacks:
        model, info = get_classifier(
            config.dataset, name, cache_dir, config.epochs, config.threads, loader=loader, train=train,
            device=config.device, train_options=config.train_options or None,
        )
        attack = make_attack(name, image_size) if name != CLEAN else None
        triggered, true_labels = (poison_test_set(clean_images, clean_labels, attack) if attack
                                  else (clean_images[:0], clean_labels[:0]))
        poisoned_sets[name] = triggered
        base_ca = metrics.clean_accuracy(predict(model, clean_images), clean_labels)
        base_asr = (metrics.attack_success_rate(predict(model, triggered), true_labels, attack.target)
                    if attack else None)
        full = full_test_scores(model, attack, test, Path(info["path"]).with_suffix(".json"))
        classifiers[name] = {
            "path": info["path"], "epochs": config.epochs, "trained_now": info["trained_now"],
            "poisoned_training_images": info.get("poisoned"), "train_seconds": info.get("train_seconds"),
            "no_defense_ca": _score(base_ca), "no_defense_asr": _score(base_asr),
            "full_test_images": full["images"], "full_test_ca": full["ca"], "full_test_asr": full["asr"],
        }
        log(f"{config.dataset}/{name}: no defense CA {base_ca:.1f}%"
            + (f", ASR {base_asr:.1f}%" if base_asr is not None else "")
            + f" (whole test split of {full['images']}: CA {full['ca']:.1f}%"
            + (f", ASR {full['asr']:.1f}%)" if full["asr"] is not None else ")"))
        results[name] = {}
        poisoned_out[name] = {}
        predictions[name] = {"target": attack.target if attack else None, "clean": {}, "triggered": {}}
        for d, defense in defense_objs.items():
            clean_preds = predict(model, clean_out[d])
            predictions[name]["clean"][d] = clean_preds
            cell: dict[str, float | None] = {
                "ca": _score(metrics.clean_accuracy(clean_preds, clean_labels)),
                "asr": None, "pa": None,
                # The ASR floor: how often this classifier picks the target on purified images that never carried
                # a trigger. An ASR near it is the defense's output drifting to the target class, not a surviving
                # trigger.
                "asr_no_trigger": (_score(metrics.attack_success_rate(clean_preds, clean_labels, attack.target))
                                   if attack else None),
            }
            if attack is not None:
                done_sets += 1
                log(f"{config.dataset}/{name}: defense {d} on {len(triggered)} triggered images "
                    f"(image set {done_sets} of {total_sets})")
                out = purified(defense, triggered, purified_dir, name)
                poisoned_out[name][d] = out
                preds = predict(model, out)
                predictions[name]["triggered"][d] = preds
                cell["asr"] = _score(metrics.attack_success_rate(preds, true_labels, attack.target))
                cell["pa"] = _score(metrics.poisoned_accuracy(preds, true_labels))
            results[name][d] = cell
            log(f"{config.dataset}/{name}/{d}: " + ", ".join(
                f"{k.upper()} {v:.1f}" for k, v in cell.items() if v is not None))

    average = {
        d: {
            m: _score(float(np.mean(vals))) if (vals := [results[a][d][m] for a in attacks
                                                         if a != CLEAN and results[a][d][m] is not None]) else None
            for m in ("ca", "asr", "pa", "asr_no_trigger")
        }
        for d in defenses
    }
    target = check_target(clean_labels, predictions, defenses, config.bootstrap, config.seed, average)
    report = {
        "dataset": config.dataset,
        "config": {
            **checked.settings, "subset_actual": int(len(idx)), "checkpoint": config.checkpoint,
            "device": config.device, "threads": config.threads, "num_classes": test.num_classes, "image_size": image_size,
            "defense_settings": {d: obj.settings for d, obj in defense_objs.items()},
            "subset_sha256": _sha256_array(idx),
        },
        "classifiers": classifiers,
        "results": results,
        "average": average,
        "fidelity": fidelity,
        "target": target,
        # Space-separated predicted labels, so the JSON stays small and any other statistic can be recomputed.
        "predictions": encode_predictions(clean_labels, predictions),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_dir = Path(config.out_dir)
    _write_text(out_dir / f"{config.dataset}.json", json.dumps(report, indent=2, allow_nan=False, default=str))
    _write_text(out_dir / f"{config.dataset}.md", markdown_table(report))
    examples = write_examples(out_dir / f"{config.dataset}-examples.png", poisoned_sets, poisoned_out,
                              config.examples, config.pool)
    log(f"{config.dataset}: wrote {out_dir}/{config.dataset}.json, .md{', -examples.png' if examples else ''} "
        f"({report['seconds'] / 60:.1f} min)")
    return report
