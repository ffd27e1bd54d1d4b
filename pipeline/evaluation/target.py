"""The evaluation's target, judged with its uncertainty.

The target (issue 4, after the ZIP paper's Table 1): a ZIP setting beats ShrinkPad and the naive transform on the
average CA and the average PA over the attacks, with an average ASR of at most 5 %. On a few hundred test images
one image moves a score by about 0.2 points and a difference of a point or two can be chance, so every criterion
comes with a 95 % interval from a paired bootstrap over the test images: each resample draws the test images
with replacement and rescores every attack and defense on the same draw. Each image was purified once with its
own noise, so the interval covers the choice of test images and the sampler's randomness per image; it does not
cover retraining the classifiers or the prior.

Pure functions of per-image predictions; `runner.evaluate_dataset` stores those predictions in its JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ASR_LIMIT = 5.0  # percent
BASELINES = ("shrinkpad", "naive")
RESAMPLES = 2000
# Decimals the stored figures keep (percent). Reports show one decimal: a figure stored at two would be rounded twice
# (5.444 -> 5.45 -> "5.5"); at six, the shown decimal is the figure's own rounding, and an exact tie (26.15) stays one.
DECIMALS = 6
# Two exact averages over the attacks either tie or differ by at least 100 / (attacks x test images) points (the
# subset is stratified, so every attack has as many triggered images): 1e-3 for 4 attacks on 25,000 images. Float
# sums of a tie differ by about 1e-13. Below this they are the same figure.
TIE = 1e-7


@dataclass(frozen=True)
class AttackPredictions:
    """One attack's classifier on the shared test subset.

    clean: defense -> predicted labels of the purified clean images (one per test image, subset order);
    triggered: defense -> predicted labels of the purified triggered images, which are the test images whose
    true label is not `target`, in subset order (`attacks.poison_test_set`).
    """

    target: int
    clean: Mapping[str, np.ndarray]
    triggered: Mapping[str, np.ndarray]


def bootstrap_averages(
    labels: np.ndarray, attacks: Sequence[AttackPredictions], defenses: Sequence[str],
    resamples: int = RESAMPLES, seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Average CA / ASR / PA over the attacks, per defense: index 0 on the test subset itself, then one value per
    bootstrap resample (percent). Every defense and attack is scored on the same resampled images."""
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0 or not attacks:
        raise ValueError("the bootstrap needs at least one test image and one attack")
    rng = np.random.default_rng(seed)
    # Row 0 weighs every image once (the point estimate); each other row is how often a resample drew each image.
    weights = np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)]).astype(np.float64)
    totals: dict[str, dict[str, np.ndarray]] = {d: {m: np.zeros(len(weights)) for m in ("ca", "asr", "pa")}
                                                for d in defenses}
    for attack in attacks:
        keep = labels != attack.target
        kept = weights[:, keep]  # the triggered images' weights: one copy per attack, not per defense and metric
        kept_weight = kept.sum(axis=1)
        for d in defenses:
            clean, triggered = np.asarray(attack.clean[d]), np.asarray(attack.triggered[d])
            if clean.shape != labels.shape or triggered.shape != (int(keep.sum()),):
                raise ValueError(f"defense {d!r}: got {clean.shape} clean and {triggered.shape} triggered predictions "
                                 f"for {n} test images, {int(keep.sum())} of them not of the target class")
            totals[d]["ca"] += weights @ (clean == labels) / n
            with np.errstate(invalid="ignore", divide="ignore"):  # a resample without any non-target image: NaN
                totals[d]["asr"] += kept @ (triggered == attack.target) / kept_weight
                totals[d]["pa"] += kept @ (triggered == labels[keep]) / kept_weight
    return {d: {m: 100.0 * v / len(attacks) for m, v in per.items()} for d, per in totals.items()}


def _interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [round(float(lo), DECIMALS), round(float(hi), DECIMALS)]


def _verdict(met: bool, interval: list[float], baseline: str | None, asr_limit: float) -> str:
    """'yes' / 'no', and ', within noise' when the 95 % interval holds values on both sides of the bound: some that
    meet the criterion and some that miss it. A difference meets it above 0 (a tie is no win); an ASR meets it at or
    under the limit. So [-3, 0] is a clear miss and an ASR interval [3, 5] a clear pass."""
    lo, hi = interval
    straddles = (lo <= 0.0 < hi) if baseline is not None else (lo <= asr_limit < hi)
    return ("yes" if met else "no") + (", within noise" if straddles else "")


def _row(metric: str, baseline: str | None, ours: float, other: float, interval: list[float] | None,
         asr_limit: float, tie: bool = False) -> dict[str, Any]:
    """One criterion: ZIP's average `metric` above `baseline`'s, or (baseline None) ZIP's ASR at most the limit.
    tie: the exact averages are equal, whatever `ours` and `other` (rounded figures) say: no win."""
    met = (ours > other and not tie) if baseline is not None else ours <= asr_limit
    verdict = (_verdict(met, interval, baseline, asr_limit) if interval is not None
               else ("yes" if met else "no") + ", no interval")
    return {"criterion": f"{metric} above {baseline}" if baseline is not None else f"asr at most {asr_limit:g}",
            "metric": metric, "baseline": baseline, "zip": ours, "other": other,
            "difference": round(ours - other, DECIMALS), "interval": interval, "met": met, "verdict": verdict}


def target_check(
    labels: np.ndarray, attacks: Sequence[AttackPredictions], zip_defense: str, baselines: Sequence[str] = BASELINES,
    asr_limit: float = ASR_LIMIT, resamples: int = RESAMPLES, seed: int = 0,
    averages: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """One row per criterion: ZIP's average CA and PA against each baseline (difference ZIP − baseline, in points,
    with its 95 % interval), and ZIP's average ASR against the limit. `met` uses the point estimate; `verdict`
    adds ', within noise' when the interval straddles the bound.

    `averages` (defense -> metric -> percent), when given, are the point estimates: the report's Average row, so
    that the check and the table agree to the last digit shown (the row averages per-attack scores rounded to
    `DECIMALS` decimals); the intervals always come from the resamples. That rounding can set the figures of an exact
    tie one unit of the last decimal apart (ZIP's PA 5/9 and 5/9, the baseline's 9/9 and 1/9: 55.555556 against
    55.555555), so whether ZIP wins is decided on the exact averages: a tie is no win."""
    defenses = [zip_defense, *baselines]
    boot = bootstrap_averages(labels, attacks, defenses, resamples, seed)

    def point(d: str, metric: str) -> float:
        if averages is None:
            return round(float(boot[d][metric][0]), DECIMALS)
        # A report's Average row (jobs/target_table.py --bootstrap N reads it from the file) is judged as point_check
        # judges it: NaN gave a verdict on no figure, true a figure of 1, a huge integer an OverflowError.
        value = averages[d][metric]
        if problem := _not_a_percentage(value):
            raise ValueError(f"the report's average {metric.upper()} for {d} is {problem}, not a percentage")
        return float(value)

    def tied(metric: str, base: str) -> bool:
        return abs(float(boot[zip_defense][metric][0]) - float(boot[base][metric][0])) < TIE

    rows = [_row(metric, base, point(zip_defense, metric), point(base, metric),
                 _interval(boot[zip_defense][metric][1:] - boot[base][metric][1:]), asr_limit, tied(metric, base))
            for metric in ("ca", "pa") for base in baselines]
    rows.append(_row("asr", None, point(zip_defense, "asr"), asr_limit, _interval(boot[zip_defense]["asr"][1:]),
                     asr_limit))
    return rows


def _not_a_percentage(value: Any) -> str | None:
    """What keeps an Average-row value from being a figure to judge (a finite number, not a boolean), or None."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return "a number too large for a float"
    return None if finite else f"{json.dumps(value)} (not a finite number)"  # as JSON spells it: NaN, Infinity


def point_check(
    averages: Mapping[str, Mapping[str, float]], zip_defense: str, baselines: Sequence[str] = BASELINES,
    asr_limit: float = ASR_LIMIT,
) -> list[dict[str, Any]]:
    """The rows of `target_check` from a report's Average row alone, with `interval` None: for reports written
    before per-image predictions were kept, which cannot be bootstrapped. Their verdicts say ', no interval',
    since a point estimate cannot tell a clear miss from one within noise."""
    missing = [d for d in (zip_defense, *baselines) if d not in averages]
    if missing:
        raise ValueError(f"the report has no average for {', '.join(missing)}")
    for d in (zip_defense, *baselines):
        values = averages[d]
        if not isinstance(values, Mapping) or not all(isinstance(values.get(m), int | float) for m in ("ca", "asr", "pa")):
            # A run without attacks (attacks none) averages nothing: every value is None.
            raise ValueError(f"the report's average for {d} has no CA / ASR / PA over attacks (a run without a "
                             "backdoor attack has nothing to judge)")
        for m in ("ca", "asr", "pa"):
            # A hand-edited or damaged report: true is a figure of 1 to float() and NaN compares false both ways, so
            # either gave a verdict ("+NaN no") on no figure (jobs/target_table.py refuses such stored rows the same).
            if problem := _not_a_percentage(values[m]):
                raise ValueError(f"the report's average {m.upper()} for {d} is {problem}, not a percentage")
    rows = [_row(metric, base, float(averages[zip_defense][metric]), float(averages[base][metric]), None, asr_limit)
            for metric in ("ca", "pa") for base in baselines]
    rows.append(_row("asr", None, float(averages[zip_defense]["asr"]), asr_limit, None, asr_limit))
    return rows
