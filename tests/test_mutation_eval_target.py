"""The target check's intervals as docs/results.md describes them (mutation audit): a 95 % interval from 2,000
paired bootstrap resamples, each rescoring every attack and defense on the same drawn images, with the report's
Average row as the point estimate when it is given."""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.target import AttackPredictions, bootstrap_averages, target_check

DEFENSES = ("zip", "shrinkpad", "naive")


def _attacks(labels: np.ndarray, correct: np.ndarray, targets: tuple[int, ...]) -> list[AttackPredictions]:
    """Every attack: ZIP right exactly on the images in `correct` (clean and triggered alike, else the target),
    ShrinkPad always wrong, A⁺A x always right. So each image is as easy or as hard under every attack."""
    attacks = []
    for target in targets:
        keep = labels != target
        zip_clean = np.where(correct, labels, (labels + 1) % 10)
        zip_triggered = np.where(correct[keep], labels[keep], target)
        attacks.append(AttackPredictions(
            target,
            {"zip": zip_clean, "shrinkpad": (labels + 1) % 10, "naive": labels},
            {"zip": zip_triggered, "shrinkpad": np.full(int(keep.sum()), target), "naive": labels[keep]}))
    return attacks


def _width(rows: list[dict], criterion: str) -> float:
    lo, hi = next(r for r in rows if r["criterion"] == criterion)["interval"]
    return hi - lo


def test_every_attack_is_rescored_on_the_same_resampled_images() -> None:
    """The attacks share the test images, so an image ZIP gets right under every attack moves every attack's score
    in the same resample: averaging attacks whose outcomes agree image by image must not narrow the interval, as
    drawing each attack's images separately (or weighing a triggered image by another image's draw) would."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 300)
    correct = rng.random(300) < 0.5
    one = target_check(labels, _attacks(labels, correct, (0,)), "zip", resamples=1000)
    three = target_check(labels, _attacks(labels, correct, (0, 1, 2)), "zip", resamples=1000)
    for criterion in ("ca above shrinkpad", "pa above shrinkpad", "asr at most 5"):
        assert _width(three, criterion) > 0.85 * _width(one, criterion), criterion


def test_the_interval_holds_the_central_95_percent_of_the_resamples() -> None:
    """At most 2.5 % of the resampled differences lie below the interval and at most 2.5 % above it; no more than
    95 % lie strictly inside (a 90 % interval would leave 5 % on each side)."""
    rng = np.random.default_rng(1)
    n, resamples = 300, 2000
    labels = rng.integers(0, 10, n)
    attacks = [AttackPredictions(t, {d: np.where(rng.random(n) < 0.6, labels, t) for d in DEFENSES},
                                 {d: np.where(rng.random(int((labels != t).sum())) < 0.5, labels[labels != t], t)
                                  for d in DEFENSES}) for t in (0, 1)]
    boot = bootstrap_averages(labels, attacks, DEFENSES, resamples=resamples, seed=0)
    rows = {r["criterion"]: r for r in target_check(labels, attacks, "zip", resamples=resamples, seed=0)}
    samples = {"ca above shrinkpad": boot["zip"]["ca"][1:] - boot["shrinkpad"]["ca"][1:],
               "pa above naive": boot["zip"]["pa"][1:] - boot["naive"]["pa"][1:],
               "asr at most 5": boot["zip"]["asr"][1:]}
    for criterion, values in samples.items():
        lo, hi = rows[criterion]["interval"]
        tol = 1e-6  # the interval is stored at six decimals
        assert np.mean(values < lo - tol) <= 0.025 and np.mean(values > hi + tol) <= 0.025, criterion
        assert np.mean((values > lo + tol) & (values < hi - tol)) <= 0.95, criterion


def test_the_reports_average_row_is_the_point_estimate_when_given() -> None:
    """`averages` (the Average row the table shows) decide `zip`, `other`, the difference and `met`, so the check
    cannot contradict the table; the intervals still come from the resamples."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 100)
    attacks = _attacks(labels, rng.random(100) < 0.5, (0, 1))
    averages = {"zip": {"ca": 61.25, "asr": 5.0, "pa": 40.5}, "shrinkpad": {"ca": 61.5, "asr": 50.0, "pa": 10.0},
                "naive": {"ca": 30.0, "asr": 2.0, "pa": 40.5}}
    rows = {r["criterion"]: r for r in target_check(labels, attacks, "zip", resamples=50, averages=averages)}
    assert (rows["ca above shrinkpad"]["zip"], rows["ca above shrinkpad"]["other"]) == (61.25, 61.5)
    assert rows["ca above shrinkpad"]["difference"] == -0.25 and rows["ca above shrinkpad"]["met"] is False
    assert rows["pa above naive"]["difference"] == 0.0 and rows["pa above naive"]["met"] is False  # a tie
    assert rows["asr at most 5"]["zip"] == 5.0 and rows["asr at most 5"]["met"] is True
    without = {r["criterion"]: r for r in target_check(labels, attacks, "zip", resamples=50)}
    assert rows["ca above shrinkpad"]["interval"] == without["ca above shrinkpad"]["interval"]


def test_two_thousand_resamples_by_default_and_the_seed_fixes_them() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 60)
    attacks = _attacks(labels, rng.random(60) < 0.5, (0,))
    boot = bootstrap_averages(labels, attacks, DEFENSES)
    assert boot["zip"]["ca"].shape == (2001,)  # the point estimate, then docs/results.md's 2,000 resamples
    first = target_check(labels, attacks, "zip", resamples=300, seed=0)
    assert first == target_check(labels, attacks, "zip", resamples=300, seed=0)
    assert first != target_check(labels, attacks, "zip", resamples=300, seed=1)
