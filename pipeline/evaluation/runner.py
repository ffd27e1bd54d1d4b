"""The defense evaluation matrix (the ZIP paper's Table 1): its configuration, `EvalConfig`, and `evaluate_dataset`,
which runs it step by step.

For one data set: a backdoored classifier per attack (cached), the class-stratified test subset, every defense
applied to the clean subset (once, shared by all attacks) and to each attack's triggered subset, then CA / ASR /
PA per attack x defense and PSNR / SSIM of the purified clean images. Results go to `<out>/<dataset>.json`,
`<out>/<dataset>.md` and `<out>/<dataset>-examples.png`. The steps have their own modules:

    preflight     the checks of a configuration (subset, pool, the ZIP prior, an earlier report in the output
                  folder) before any work
    datasets      the data set's train and test splits
    victims       the backdoored classifier of each attack, trained once and cached
    defenses      the defenses and their cached, resumable purified sets
    predictions   the per-image predictions the report keeps, and the target check on them
    report        the Markdown table and the PNG grid of examples
    cache         the cache files under all of it: content hashes, atomic writes, damaged files

Everything expensive is cached under `cache_dir` and reused on the next run, so a killed run resumes:

    classifiers/<dataset>-<attack|clean>-e<epochs>[-<options>].pt   (+ .json with how it was trained)
    purified/<dataset>-n<images>-seed<seed>/<defense>-<key>/<part>-<input sha256[:16]>.npz   (+ settings.json)

(<images>: the subset's size, --subset rounded down to a multiple of the class count, so --subset 15 and 10 on ten
classes, which choose the same images, share their purified sets.)

A ZIP set in progress keeps each finished purifier batch in <part>-<input sha256[:16]>.partial/, so a killed run
purifies only the batches it had not finished. A damaged cache file is named in a warning and rebuilt as if it were
missing.

Data comes from a `loader(name, split) -> LabelledImages` (default `datasets.load_dataset`), so tests can inject
a synthetic set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.evaluation import metrics
from pipeline.evaluation.attacks import Attack, make_attack, poison_test_set
from pipeline.evaluation.cache import sha256_of_arrays, write_text_atomic
from pipeline.evaluation.classifier import predict
from pipeline.evaluation.datasets import DataError, LabelledImages, Loader, load_dataset, load_splits, stratified_subset
from pipeline.evaluation.defenses import DEFENSES, ZIP_DEFENSES, Defense, make_defense, purified, zip_overrides, zip_settings
from pipeline.evaluation.log import log
from pipeline.evaluation.predictions import check_target, decode_predictions, encode_predictions
from pipeline.evaluation.preflight import (
    EvaluationError,
    Preflight,
    check_pool,
    check_subset,
    check_subset_fits,
    preflight,
    report_settings,
)
from pipeline.evaluation.report import CLEAN, average_scores, markdown_table, stored_score, write_examples
from pipeline.evaluation.target import RESAMPLES
from pipeline.evaluation.victims import (
    classifier_path,
    full_test_scores,
    get_classifier,
    training_checkpoint_path,
    without_flips,
)
from pipeline.presets import shipped_prior_path
from pipeline.redaction import redact_uri

# The names importable from here before the evaluation's steps got modules of their own: they still are, but their
# homes are the modules above.
__all__ = [
    "DEFAULT_PRIOR", "EvalConfig", "evaluate_dataset",
    "DEFENSES", "ZIP_DEFENSES", "Defense", "make_defense", "purified", "zip_settings",
    "EvaluationError", "Preflight", "preflight", "report_settings",
    "check_target", "decode_predictions", "encode_predictions",
    "classifier_path", "full_test_scores", "get_classifier", "training_checkpoint_path", "without_flips",
    "load_splits", "log",
]


# The shipped CIFAR-10 prior, by absolute path: a default that works from any working directory.
DEFAULT_PRIOR = str(shipped_prior_path("cifar10"))


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
    # ZIP's late start; None: 1 (the paper), or for a prior trained only up to some timestep (train_prior.py
    # --max-timestep) the largest start in its range, resolved by preflight.
    start: float | None = None
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


def evaluate_dataset(config: EvalConfig, loader: Loader = load_dataset, *, checked: Preflight | None = None) -> dict[str, Any]:
    """Run the whole matrix for one data set, write JSON / Markdown / PNG to config.out_dir, return the JSON dict.

    checked: `preflight(config)`'s result when the caller already ran it (the prior is then not read again)."""
    started = time.perf_counter()
    cache_dir = Path(config.cache_dir).expanduser()
    checked = checked or preflight(config, loader)
    if checked.start_note:  # a --start left out, resolved to the prior's trained timesteps: said once, as the job does
        log(f"note: {checked.start_note}")
    if config.threads:
        torch.set_num_threads(config.threads)
    train, test, subset = _load_test_subset(config, loader)
    defenses = _build_defenses(config, checked, subset.image_size)
    matrix = _Matrix(
        config.dataset, subset, defenses,
        purified_dir=purified_folder(cache_dir, config, len(subset.indices)),
        # Where a run is in its matrix: every defense on the clean subset and on each attack's triggered subset.
        image_sets=_ImageSetCount(len(defenses) * (1 + sum(a != CLEAN for a in checked.attacks))),
    )
    matrix.purify_clean_subset()
    for name in checked.attacks:
        model, info = get_classifier(
            config.dataset, name, cache_dir, config.epochs, config.threads, loader=loader, train=train,
            device=config.device, train_options=config.train_options or None,
        )
        matrix.add_attack(name, model, info, test, config.epochs)
    average = average_scores(matrix.results, checked.attacks, checked.defenses)
    target = check_target(subset.labels, matrix.predictions, checked.defenses, config.bootstrap, config.seed, average)
    report = _report(config, checked, test, matrix, average, target, started)
    _write_report(config, report, matrix)
    return report


@dataclass(frozen=True)
class _EvalSubset:
    """The class-stratified test images every classifier and defense is scored on: their indices in the test split."""

    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def purified_folder(cache_dir: Path, config: EvalConfig, chosen: int) -> Path:
    """The purified sets' folder of this subset, named by the `chosen` images' count: a --subset that is no multiple
    of the class count chooses the same images as the multiple below it (stratified_subset rounds down), so both
    share one folder. A folder an earlier version named by the --subset given is renamed to it, once, rather than
    purified again."""
    root = cache_dir / "purified"
    folder = root / f"{config.dataset}-n{chosen}-seed{config.seed}"
    as_given = root / f"{config.dataset}-n{config.subset}-seed{config.seed}"
    if as_given != folder and as_given.is_dir() and not folder.exists():
        as_given.rename(folder)
        log(f"{config.dataset}: purified sets of --subset {config.subset} ({chosen} images) moved to {folder}")
    return folder


def _load_test_subset(config: EvalConfig, loader: Loader) -> tuple[LabelledImages, LabelledImages, _EvalSubset]:
    """The data set's train and test splits and the test subset, with the checks only the loaded data can answer."""
    log(f"{config.dataset}: loading data")
    try:
        train, test = load_splits(config.dataset, loader)
    except DataError as err:
        raise EvaluationError(f"data: {err}") from None
    classes = np.unique(test.labels)
    check_subset(config.dataset, config.subset, len(classes))  # a data set preflight does not know
    check_subset_fits(config.dataset, config.subset, test.labels)
    idx = stratified_subset(test.labels, config.subset, config.seed)
    subset = _EvalSubset(idx, test.images[idx], test.labels[idx])
    check_pool(config.dataset, config.pool, subset.image_size)
    log(f"{config.dataset}: test subset of {len(idx)} images ({test.num_classes} classes, {subset.image_size}px), "
        f"seed {config.seed}")
    return train, test, subset


def _build_defenses(config: EvalConfig, checked: Preflight, image_size: int) -> dict[str, Defense]:
    """Each defense the configuration names, by name, in its order."""
    return {
        d: make_defense(d, pool=config.pool, steps=config.steps, checkpoint=config.checkpoint,
                        checkpoint_sha256=checked.checkpoint_sha256, device=config.device, canvas_size=config.canvas_size,
                        batch_size=config.batch_size, image_size=image_size, seed=config.seed,
                        zip_overrides=zip_overrides(config, checked.schedule, checked.start))
        for d in checked.defenses
    }


@dataclass
class _ImageSetCount:
    """How many of the matrix's image sets (a defense applied to a clean or triggered subset) a run has started."""

    total: int
    done: int = 0

    def next(self) -> str:
        self.done += 1
        return f"image set {self.done} of {self.total}"


@dataclass
class _Matrix:
    """One data set's matrix as it fills in: the clean subset purified by each defense, then, attack by attack, each
    defense's scores, the per-image predictions the target check rescores, and the triggered sets for the examples."""

    dataset: str
    subset: _EvalSubset
    defenses: dict[str, Defense]
    purified_dir: Path
    image_sets: _ImageSetCount
    clean_out: dict[str, np.ndarray] = field(default_factory=dict)
    fidelity: dict[str, dict[str, float | None]] = field(default_factory=dict)
    results: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)  # per attack and defense, per image
    classifiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    poisoned_sets: dict[str, np.ndarray] = field(default_factory=dict)
    poisoned_out: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def purify_clean_subset(self) -> None:
        """Every defense on the clean subset (once, shared by all attacks), and the PSNR / SSIM of what it made."""
        clean_images = self.subset.images
        for d, defense in self.defenses.items():
            log(f"{self.dataset}: defense {d} on the clean subset ({self.image_sets.next()})")
            self.clean_out[d] = purified(defense, clean_images, self.purified_dir, CLEAN)
            self.fidelity[d] = {
                "psnr": stored_score(metrics.psnr(self.clean_out[d], clean_images)) if d != "none" else None,
                "ssim": stored_score(metrics.ssim(self.clean_out[d], clean_images)) if d != "none" else None,
            }

    def add_attack(self, name: str, model: torch.nn.Module, info: dict[str, Any], test: LabelledImages,
                   epochs: int) -> None:
        """The attack's row: its classifier without defense, then each defense on the clean and triggered subsets."""
        attack = make_attack(name, self.subset.image_size) if name != CLEAN else None
        clean_images, clean_labels = self.subset.images, self.subset.labels
        triggered, true_labels = (poison_test_set(clean_images, clean_labels, attack) if attack
                                  else (clean_images[:0], clean_labels[:0]))
        self.poisoned_sets[name] = triggered
        self.classifiers[name] = self._no_defense_scores(name, model, info, attack, triggered, true_labels, test, epochs)
        self.results[name] = {}
        self.poisoned_out[name] = {}
        self.predictions[name] = {"target": attack.target if attack else None, "clean": {}, "triggered": {}}
        for d, defense in self.defenses.items():
            clean_preds = predict(model, self.clean_out[d])
            self.predictions[name]["clean"][d] = clean_preds
            cell = _clean_cell(clean_preds, clean_labels, attack)
            if attack is not None:
                log(f"{self.dataset}/{name}: defense {d} on {len(triggered)} triggered images ({self.image_sets.next()})")
                out = purified(defense, triggered, self.purified_dir, name)
                self.poisoned_out[name][d] = out
                preds = predict(model, out)
                self.predictions[name]["triggered"][d] = preds
                cell["asr"] = stored_score(metrics.attack_success_rate(preds, true_labels, attack.target))
                cell["pa"] = stored_score(metrics.poisoned_accuracy(preds, true_labels))
            self.results[name][d] = cell
            log(f"{self.dataset}/{name}/{d}: " + ", ".join(f"{k.upper()} {v:.1f}" for k, v in cell.items() if v is not None))

    def _no_defense_scores(self, name: str, model: torch.nn.Module, info: dict[str, Any], attack: Attack | None,
                           triggered: np.ndarray, true_labels: np.ndarray, test: LabelledImages,
                           epochs: int) -> dict[str, Any]:
        """The report's record of an attack's classifier: how it was trained, its CA (and ASR) without defense on the
        subset and on the whole test split."""
        base_ca = metrics.clean_accuracy(predict(model, self.subset.images), self.subset.labels)
        base_asr = (metrics.attack_success_rate(predict(model, triggered), true_labels, attack.target)
                    if attack else None)
        full = full_test_scores(model, attack, test, Path(info["path"]).with_suffix(".json"))
        log(f"{self.dataset}/{name}: no defense CA {base_ca:.1f}%"
            + (f", ASR {base_asr:.1f}%" if base_asr is not None else "")
            + f" (whole test split of {full['images']}: CA {full['ca']:.1f}%"
            + (f", ASR {full['asr']:.1f}%)" if full["asr"] is not None else ")"))
        return {
            "path": info["path"], "epochs": epochs, "trained_now": info["trained_now"],
            "poisoned_training_images": info.get("poisoned"), "train_seconds": info.get("train_seconds"),
            "no_defense_ca": stored_score(base_ca), "no_defense_asr": stored_score(base_asr),
            "full_test_images": full["images"], "full_test_ca": full["ca"], "full_test_asr": full["asr"],
        }


def _clean_cell(clean_preds: np.ndarray, clean_labels: np.ndarray, attack: Attack | None) -> dict[str, float | None]:
    """A defense's cell as its purified clean subset scores it: CA, and the ASR floor (ASR and PA come with the
    triggered subset)."""
    return {
        "ca": stored_score(metrics.clean_accuracy(clean_preds, clean_labels)),
        "asr": None, "pa": None,
        # The ASR floor: how often this classifier picks the target on purified images that never carried a trigger.
        # An ASR near it is the defense's output drifting to the target class, not a surviving trigger.
        "asr_no_trigger": (stored_score(metrics.attack_success_rate(clean_preds, clean_labels, attack.target))
                           if attack else None),
    }


def _report(config: EvalConfig, checked: Preflight, test: LabelledImages, matrix: _Matrix,
            average: dict[str, dict[str, float | None]], target: dict[str, Any], started: float) -> dict[str, Any]:
    """The report's JSON: the configuration, the classifiers, the matrix, its average and fidelity, the target check."""
    return {
        "dataset": config.dataset,
        "config": {
            # the prior as typed, but a server's password in its URI (a report is shared): its sha256 is what counts
            **checked.settings, "subset_actual": int(len(matrix.subset.indices)),
            "checkpoint": redact_uri(config.checkpoint),
            "device": config.device, "threads": config.threads, "num_classes": test.num_classes,
            "image_size": matrix.subset.image_size,
            "defense_settings": {d: obj.settings for d, obj in matrix.defenses.items()},
            "subset_sha256": sha256_of_arrays(matrix.subset.indices),
        },
        "classifiers": matrix.classifiers,
        "results": matrix.results,
        "average": average,
        "fidelity": matrix.fidelity,
        "target": target,
        # Space-separated predicted labels, so the JSON stays small and any other statistic can be recomputed.
        "predictions": encode_predictions(matrix.subset.labels, matrix.predictions),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _write_report(config: EvalConfig, report: dict[str, Any], matrix: _Matrix) -> None:
    """<out>/<dataset>.json, .md and -examples.png (none without triggered images)."""
    out_dir = Path(config.out_dir)
    write_text_atomic(out_dir / f"{config.dataset}.json", json.dumps(report, indent=2, allow_nan=False, default=str))
    write_text_atomic(out_dir / f"{config.dataset}.md", markdown_table(report))
    examples = write_examples(out_dir / f"{config.dataset}-examples.png", matrix.poisoned_sets, matrix.poisoned_out,
                              config.examples, config.pool)
    log(f"{config.dataset}: wrote {out_dir}/{config.dataset}.json, .md{', -examples.png' if examples else ''} "
        f"({report['seconds'] / 60:.1f} min)")
