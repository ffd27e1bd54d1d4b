"""What the reports show: each figure rounded once from its exact value, verdicts right at their bounds, and a header
that says what a late start runs. The published reports' per-image predictions serve as the data."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.predictions import check_target, decode_predictions
from pipeline.evaluation.report import markdown_table, stored_score, target_summary
from pipeline.evaluation.target import _row

DOCS = Path(__file__).parents[1] / "docs"


def _half_up(value: Fraction, places: int = 1) -> str:
    scaled = value * 10**places
    whole = int(scaled)  # the figures are not negative
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    return f"{whole // 10**places}.{whole % 10**places:0{places}d}"


def _exact_and_stored(name: str) -> tuple[dict, dict, dict]:
    """A published report rescored from its predictions as `runner.evaluate_dataset` scores a run: per attack and
    defense the metric functions' percentages through `report.stored_score`, the Average row over the attacks (not the
    clean classifier's row); beside them the exact fractions."""
    report = json.loads((DOCS / f"{name}.json").read_text())
    labels, predictions = decode_predictions(report["predictions"])
    attacks, defenses = report["config"]["attacks"], report["config"]["defenses"]
    exact: dict = {}
    results: dict = {}
    for a in attacks:
        p = predictions[a]
        results[a] = {}
        for d in defenses:
            clean = p["clean"][d]
            counts = {"ca": (int((clean == labels).sum()), len(labels))}
            if p["target"] is not None:
                keep = labels != p["target"]
                triggered = p["triggered"][d]
                m = int(keep.sum())
                counts |= {"asr": (int((triggered == p["target"]).sum()), m),
                           "pa": (int((triggered == labels[keep]).sum()), m),
                           "asr_no_trigger": (int((clean[keep] == p["target"]).sum()), m)}
            exact[a, d] = {k: Fraction(100 * hit, n) for k, (hit, n) in counts.items()}
            results[a][d] = {k: stored_score(100.0 * hit / n) for k, (hit, n) in counts.items()}
            results[a][d] = {k: results[a][d].get(k) for k in ("ca", "asr", "pa", "asr_no_trigger")}
    average = {}
    for d in defenses:
        average[d] = {}
        for k in ("ca", "asr", "pa", "asr_no_trigger"):
            scored = [results[a][d][k] for a in attacks if a != "clean"]
            average[d][k] = stored_score(float(np.mean(scored)))
            exact["Average", d] = {**exact.get(("Average", d), {}),
                                   k: sum(exact[a, d][k] for a in attacks if a != "clean") / len(scored)}
    rescored = {**report, "results": results, "average": average,
                "target": check_target(labels, predictions, defenses, 200, 0, average)}
    return report, rescored, exact


@pytest.mark.parametrize("name", ["cifar10", "gtsrb"])
def test_every_table_figure_is_its_exact_value_rounded_once(name: str) -> None:
    """Stored at two decimals, 49/900 = 5.444 % became 5.45 and showed as 5.5 (cifar10's ZIP average ASR), 3/462 =
    0.649 % became 0.65 and showed as 0.7 (gtsrb's ShrinkPad BadNet ASR), and an exact 26.15 showed as 26.1."""
    report, rescored, exact = _exact_and_stored(name)
    table = markdown_table(rescored).splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| Attack | No defense CA"))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in table[header + 2:header + 3 + len(report["config"]["attacks"])]}
    titles = {"badnet": "BadNet", "blended": "Blended", "physicalba": "PhysicalBA", "wanet": "WaNet", "clean": "None"}
    shown = 0
    for (a, d), values in exact.items():
        row = rows[titles.get(a, a)]
        for k in ("ca", "asr", "pa"):
            cell = row[3 * report["config"]["defenses"].index(d) + ("ca", "asr", "pa").index(k)]
            assert cell == (_half_up(values[k]) if k in values else "–"), (a, d, k, float(values.get(k, -1)))
            shown += 1
    assert shown == 3 * len(exact)
    if name == "cifar10":
        zip_asr = [line for line in table if line.startswith("| ZIP (k=4) | average ASR")][0]
        assert "| 5.4 |" in zip_asr  # 49/900 = 5.444 %; the published page shows 5.5
        summary = target_summary({"cifar10": rescored})
        assert "| 5.4 [" in summary


def test_ssim_is_shown_to_the_digits_it_was_stored_with() -> None:
    """Stored at two decimals, an SSIM of 0.5364 read "0.540" in a three-decimal column."""
    report = json.loads((DOCS / "cifar10.json").read_text())
    report["fidelity"]["zip"]["ssim"] = stored_score(0.5364)
    assert "| ZIP (k=4) | 20.0 | 0.536 |" in markdown_table(report)


def test_verdicts_at_the_bound() -> None:
    """'within noise' only when the interval holds values on both sides: a difference meets its criterion above 0
    (a tie is no win) and an ASR at or under the limit."""
    assert _row("asr", None, 4.0, 5.0, [3.0, 5.0], 5.0)["verdict"] == "yes"  # every resample at most 5
    assert _row("asr", None, 5.0, 5.0, [4.0, 5.5], 5.0)["verdict"] == "yes, within noise"
    assert _row("asr", None, 5.5, 5.0, [5.0, 6.0], 5.0)["verdict"] == "no, within noise"  # 5.0 itself meets it
    assert _row("asr", None, 5.5, 5.0, [5.004, 6.0], 5.0)["verdict"] == "no"
    assert _row("ca", "naive", 40.0, 42.0, [-3.0, 0.0], 5.0)["verdict"] == "no"  # no resample above 0
    assert _row("ca", "naive", 42.0, 40.0, [0.0, 3.0], 5.0)["verdict"] == "yes, within noise"
    assert _row("ca", "naive", 42.0, 40.0, [0.004, 3.0], 5.0)["verdict"] == "yes"


def test_late_start_header_says_which_steps_run() -> None:
    """'ZIP 20 DDIM steps from t = 0.3·T' read as 20 steps below 0.3·T; the sampler runs the 7 of the 20 there."""
    report = json.loads((DOCS / "cifar10-start03.json").read_text())
    head = markdown_table(report).splitlines()[2]
    assert "ZIP 20 DDIM steps (late start: only those at t ≤ 0.3·T run), sampler seed 0" in head
    assert "from t = 0.3" not in head
