"""The run's per-image predictions: how its report stores them (labels as space-separated text), the target check
(`target.target_check`) that each ZIP defense of the run gets from them, and a report's Average row and check over
some of its attacks only (`over_attacks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.evaluation.defenses import ZIP_DEFENSES
from pipeline.evaluation.report import CLEAN, average_scores
from pipeline.evaluation.target import ASR_LIMIT, BASELINES, RESAMPLES, AttackPredictions, target_check


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


class AttackNotRun(ValueError):
    """An attack named for `over_attacks` that the report did not run; the message names it and those it ran."""


def over_attacks(report: Mapping[str, Any], attacks: Sequence[str], resamples: int = RESAMPLES
                 ) -> tuple[dict[str, dict[str, float | None]], dict[str, Any] | None]:
    """A report's Average row and target check over `attacks` only (backdoor attacks it ran), as its run would have
    stored them had it run no others: the runner's `average_scores` over those attacks' rows of its per-attack
    results, and `check_target` over their per-image predictions, with `resamples` resamples seeded with the report's
    --seed and the new Average row as point estimates. The attacks keep the report's order, so naming every attack it
    ran gives its own Average row and, with its own resamples, its own check, to the last bit. The check is None as
    `check_target`'s is (no ZIP defense, baseline or attack, or resamples 0).

    Raises AttackNotRun for a named attack the report lacks; KeyError, TypeError or ValueError for a report without
    the predictions, results or settings this needs, or with malformed ones."""
    labels, predictions = decode_predictions(report["predictions"])
    results, config = report["results"], report["config"]
    missing = [a for a in attacks if a not in predictions or a not in results]
    if missing:
        ran = [a for a in predictions if a != CLEAN and a in results]
        raise AttackNotRun(f"it ran no {', '.join(missing)} (its attacks: {', '.join(ran) or 'none'})")
    named = [a for a in predictions if a in attacks]  # the report's order: the same float sums as its run's
    average = average_scores(results, named, config["defenses"])
    check = check_target(labels, {a: predictions[a] for a in named}, config["defenses"], resamples, config["seed"],
                         average)
    return average, check
