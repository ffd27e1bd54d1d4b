"""The checks a configuration passes before any training or purification (`preflight`), and the error they raise.

A bad setting stops a run in its first seconds, not after hours of training: an unknown attack or defense, a subset or
pool the data set cannot take, an output or cache folder that cannot be written, a missing data archive, a ZIP prior
that cannot run the settings, or an earlier report of another configuration in the output folder. `preflight` also
resolves what a run records: its attacks and defenses, its prior's sha256, its report's settings and its noise
schedule. `evaluate_dataset` checks the subset and pool again once the data is loaded, for data sets these checks do
not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.checkpoint import CheckpointError, advice_without_model_options, load_checkpoint
from pipeline.evaluation import datasets
from pipeline.evaluation.attacks import ATTACKS
from pipeline.evaluation.datasets import (
    IMAGE_SIZES,
    NUM_CLASSES,
    SINGLE_SPLIT,
    Loader,
    cached_labels,
    load_dataset,
    missing_data,
)
from pipeline.evaluation.defenses import DEFENSES, ZIP_DEFENSES, zip_overrides, zip_settings
from pipeline.evaluation.victims import normalise_attack
from pipeline.local_folders import LocalPathError, nearest_existing, not_writable
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.settings import UNRECORDED_SCHEDULE, check_trained_timesteps, prior_range_note

if TYPE_CHECKING:
    from pipeline.evaluation.runner import EvalConfig


class EvaluationError(ValueError):
    """A run that cannot start as configured (a test subset smaller than the class count, an unusable prior, an
    output folder holding another configuration's report), found before any training or purification."""


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
    results are written (a file named like the folder used to end a finished run in a traceback, and so did a link
    that leads nowhere)."""
    try:
        path = Path(path).expanduser()
        probe = nearest_existing(path)
    except (LocalPathError, RuntimeError) as err:  # RuntimeError: a '~user' of no known user
        raise EvaluationError(f"{flag} {path}: {err}") from None
    if not probe.is_dir():
        what = "is a file" if probe == path.absolute() else f"is inside {probe}, which is a file"
        raise EvaluationError(f"{flag} {path} {what}: give a folder")
    problem = not_writable(probe)
    if problem:
        raise EvaluationError(f"{flag} {path}: {problem}")


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
    return checked_prior(config, defenses).sha256


class PriorCheck(NamedTuple):
    """What `checked_prior` found: the prior's sha256 (None without a ZIP defense), and the noise schedule and start ZIP
    samples with, resolved for the prior; `note`: what a start left out resolved to, for the user, where not 1."""

    sha256: str | None
    schedule: str
    start: float
    note: str | None = None


def checked_prior(config: EvalConfig, defenses: Sequence[str]) -> PriorCheck:
    """`verify_prior`'s sha256 and the noise schedule and start ZIP samples with (`ZipSettings.for_prior`):
    config.schedule, else the one the prior records (a prior of train_prior.py --schedule cosine needs no flag to be
    evaluated), else linear; config.start, else the largest the prior's trained timesteps allow (1 for one trained on
    all: a prior of train_prior.py --max-timestep needs no --start either)."""
    zips = [d for d in defenses if d in ZIP_DEFENSES]
    if not zips:
        return PriorCheck(None, config.schedule or UNRECORDED_SCHEDULE, 1.0 if config.start is None else config.start)
    try:
        for d in zips:  # the settings' own limits, before the prior is read
            zip_settings(d, config.steps, config.pool, **zip_overrides(config))
    except ValueError as err:
        raise EvaluationError(f"ZIP settings: {err}") from None
    # The prior as errors name it: a server's password in its URI (ftp://user:password@host/prior.pt) as '***', as the
    # purify job's messages and files do (stderr ends up in CI logs).
    prior = redact_uri(config.checkpoint)
    try:
        loaded = load_checkpoint(config.checkpoint, verify_only=True)
    except (CheckpointError, OSError) as err:  # the reader's message quotes the URI too
        # (a file that matches no preset: how to record its architecture, this command having no --preset or --flags)
        problem = advice_without_model_options(err)
        # "pass --checkpoint" read as if the user had not, when the refused file was theirs
        raise EvaluationError(redact_uri_secrets(f"diffusion prior: {problem} (train one with jobs/train_prior.py and "
                                                 "give it as --checkpoint, or leave out the zip defenses)",
                                                 config.checkpoint)) from None
    meta = loaded.meta if isinstance(loaded.meta, dict) else {}
    recorded = meta.get("schedule")
    try:
        settings = {d: zip_settings(d, config.steps, config.pool, **zip_overrides(config)).for_prior(meta) for d in zips}
    except ValueError as err:  # e.g. a schedule recorded by a newer version that this one does not know
        raise EvaluationError(f"ZIP settings with the prior {prior}: {err}") from None
    canvas = config.canvas_size or loaded.config.image_size
    if canvas % loaded.config.min_input_multiple:
        raise EvaluationError(f"canvas size {canvas} must be a multiple of {loaded.config.min_input_multiple} for the "
                              f"prior {prior}")
    if canvas % config.pool:
        raise EvaluationError(f"--pool {config.pool} does not divide the ZIP canvas size {canvas} (the prior's image "
                              "size, or --canvas-size)")
    for d, zs in settings.items():
        try:
            check_trained_timesteps(meta, zs)
        except ValueError as err:
            if recorded is not None and recorded != zs.schedule:  # the one way here: --schedule against the prior's own
                raise EvaluationError(f"{d} with the prior {prior}: it was trained with the {recorded} noise "
                                      f"schedule, but --schedule {zs.schedule} was given: leave --schedule out (the "
                                      f"prior's own is used) or give --schedule {recorded}") from None
            raise EvaluationError(f"{d} with the prior {prior}: {err}") from None
    # both ZIP variants take the same schedule and steps, so the same start
    resolved = settings[zips[0]]
    note = prior_range_note(meta, resolved) if config.start is None else None
    if note:
        note = f"{prior}: {note.replace('give a start', 'give --start')}"
    return PriorCheck(loaded.sha256, resolved.schedule_or_default, resolved.start_or_default, note)


def report_settings(config: EvalConfig, attacks: Sequence[str], defenses: Sequence[str],
                    checkpoint_sha256: str | None, schedule: str | None = None, start: float | None = None
                    ) -> dict[str, Any]:
    """The settings a report's numbers and pictures follow from, as its JSON records them. The prior counts by its
    sha256, not its path; execution settings (device, threads) are not among them. `schedule` and `start`: the noise
    schedule and start `preflight` resolved (the schedule recorded only when it is not the linear default, so reports
    of linear runs stay as they were, and a report that lacks it was sampled with linear)."""
    schedule = schedule or config.schedule or UNRECORDED_SCHEDULE
    start = start if start is not None else 1.0 if config.start is None else config.start
    settings = {
        "attacks": attacks, "defenses": defenses, "subset": config.subset, "seed": config.seed,
        "sampler_seed": config.sampler_seed, "sampler": config.sampler, "start": start, "steps": config.steps,
        "pool": config.pool, "checkpoint_sha256": checkpoint_sha256, "classifier_epochs": config.epochs,
        "classifier_options": config.train_options, "canvas_size": config.canvas_size,
        "batch_size": config.batch_size, "examples": config.examples, "bootstrap": config.bootstrap,
    }
    if schedule != UNRECORDED_SCHEDULE:
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
    default_schedule = UNRECORDED_SCHEDULE
    settings = {**settings, "schedule": settings.get("schedule", default_schedule)}
    recorded = {**recorded, "schedule": recorded.get("schedule", default_schedule)}
    differ = [f"{k} {json.dumps(recorded[k])} there, {json.dumps(v)} now"
              for k, v in settings.items() if k in recorded and recorded[k] != v]
    if differ:
        raise EvaluationError(f"{path} holds a report of another configuration ({'; '.join(differ)}): {hint}")


@dataclass(frozen=True)
class Preflight:
    """What `preflight` checked: the run's attacks and defenses, its prior's sha256 (None without a ZIP defense), the
    settings its report records and the noise schedule and start ZIP samples with (see `checked_prior`), and what a
    start left out resolved to, where that is to be said (`start_note`)."""

    attacks: list[str]
    defenses: list[str]
    checkpoint_sha256: str | None
    settings: dict[str, Any]
    schedule: str = UNRECORDED_SCHEDULE
    start: float = 1.0
    start_note: str | None = None


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
    # As the command line's --defenses and --attacks: an empty list ran on and wrote tables without a column or a row.
    if not defenses:
        raise EvaluationError(f"no defense to evaluate: give at least one of {', '.join(DEFENSES)}")
    if not attacks:
        raise EvaluationError(f"no attack to evaluate: give at least one of {', '.join(ATTACKS)} or 'none'")
    if loader is load_dataset and config.dataset in NUM_CLASSES:
        check_subset(config.dataset, config.subset, NUM_CLASSES[config.dataset])
        check_pool(config.dataset, config.pool, IMAGE_SIZES[config.dataset])
    check_folder(Path(config.out_dir), "--out")
    check_folder(Path(config.cache_dir), "--cache-dir")
    if loader is load_dataset and config.dataset in NUM_CLASSES:
        check_data(config.dataset, config.subset)
    prior = checked_prior(config, defenses)
    settings = report_settings(config, attacks, defenses, prior.sha256, prior.schedule, prior.start)
    check_output(config, settings)
    return Preflight(attacks, defenses, prior.sha256, settings, prior.schedule, prior.start, prior.note)
