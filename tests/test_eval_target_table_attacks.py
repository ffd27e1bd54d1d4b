"""jobs/target_table.py --attacks: a report's Average row and target check over some of its attacks only, e.g. the ZIP
paper's three (its Table 1 averages BadNet, Blended and PhysicalBA; the reports average WaNet too). The figures are
recomputed from the report's per-attack results and per-image predictions with the runner's own functions, so naming
every attack gives the stored check; a report that cannot give them is named on stderr and left out."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from pipeline.evaluation.attacks import ATTACKS
from pipeline.evaluation.predictions import check_target, decode_predictions, encode_predictions, over_attacks
from pipeline.evaluation.report import average_scores
from tests.jobutil import load_job_script, run_main

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = ["none", "shrinkpad", "naive", "zip"]
LABELS = np.array([0, 1, 2, 0, 1, 2])
TARGETS = {"badnet": 0, "blended": 1, "physicalba": 2, "wanet": 0}
# Per attack and defense: (clean images right of 6, triggered images sent to the target of 4, triggered images given
# their true label of 4). WaNet is ZIP's worst attack and ShrinkPad's best, so leaving it out changes the verdicts.
COUNTS = {
    "badnet": {"none": (6, 4, 0), "shrinkpad": (6, 2, 2), "naive": (3, 0, 1), "zip": (6, 0, 4)},
    "blended": {"none": (6, 4, 0), "shrinkpad": (3, 2, 2), "naive": (3, 0, 1), "zip": (3, 0, 2)},
    "physicalba": {"none": (6, 4, 0), "shrinkpad": (0, 2, 2), "naive": (3, 0, 1), "zip": (3, 0, 3)},
    "wanet": {"none": (6, 4, 0), "shrinkpad": (6, 0, 4), "naive": (3, 0, 1), "zip": (0, 4, 0)},
}


@pytest.fixture
def target_table() -> ModuleType:
    return load_job_script("target_table.py", "target_table_attacks")


def _report(seed: int = 3, resamples: int = 200) -> dict:
    """A run of the four attacks and a clean classifier on 6 images of 3 classes, as jobs/evaluate.py stores it: per
    attack and defense the predictions that `COUNTS` says and the scores they give, their Average row, the check."""
    predictions, results = {}, {}
    for attack, per_defense in COUNTS.items():
        target = TARGETS[attack]
        keep = LABELS != target
        truth = LABELS[keep]
        other = 3 - target - truth  # the class that is neither the target nor the true one
        predictions[attack] = {"target": target, "clean": {}, "triggered": {}}
        results[attack] = {}
        for d, (right, fooled, recovered) in per_defense.items():
            clean = np.where(np.arange(6) < right, LABELS, (LABELS + 1) % 3)
            triggered = np.select([np.arange(4) < fooled, np.arange(4) < fooled + recovered], [target, truth], other)
            predictions[attack]["clean"][d], predictions[attack]["triggered"][d] = clean, triggered
            results[attack][d] = {"ca": round(100 * right / 6, 6), "asr": 100 * fooled / 4, "pa": 100 * recovered / 4,
                                  "asr_no_trigger": round(100 * float(np.mean(clean[keep] == target)), 6)}
    predictions["clean"] = {"target": None, "clean": {d: LABELS for d in DEFENSES}, "triggered": {}}
    results["clean"] = {d: {"ca": 100.0, "asr": None, "pa": None, "asr_no_trigger": None} for d in DEFENSES}
    average = average_scores(results, list(results), DEFENSES)
    return json.loads(json.dumps({
        "dataset": "cifar10",
        "config": {"pool": 4, "seed": seed, "defenses": DEFENSES, "attacks": list(results), "bootstrap": resamples},
        "results": results, "average": average,
        "target": check_target(LABELS, predictions, DEFENSES, resamples, seed, average),
        "predictions": encode_predictions(LABELS, predictions),
    }))


def _row(out: str, label: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(f"| {label} |")).split(" | ")[2:]


def test_the_three_attack_averages_and_check_are_the_hand_computed_ones(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _report()
    assert report["average"]["zip"]["ca"] == 50.0 and report["average"]["zip"]["asr"] == 25.0  # WaNet counted
    path = tmp_path / "run.json"
    path.write_text(json.dumps(report))
    assert run_main(target_table, ["--attacks", "badnet,blended,physicalba", str(path)]) == 0
    captured = capsys.readouterr()
    # By hand, over BadNet, Blended, PhysicalBA: ZIP CA (100 + 50 + 50) / 3, ASR 0, PA (100 + 50 + 75) / 3;
    # ShrinkPad CA (100 + 50 + 0) / 3 = 50, PA 50; A⁺A x CA 50, PA 25.
    cells = _row(captured.out, "run")
    assert [c.split(" [")[0] for c in cells[:5]] == ["+16.7", "+16.7", "+25.0", "+50.0", "0.0"]
    assert all(c.endswith((" yes", " yes, within noise")) for c in cells[:5]) and cells[5] == "yes |"
    assert "averages and target check over badnet, blended, physicalba only" in captured.err
    assert "(200 resamples, seed 3)" in captured.err  # its own check's resamples and the report's --seed
    average, check = over_attacks(report, ["physicalba", "badnet", "blended"], 200)
    assert average["zip"] == {"ca": 66.666667, "asr": 0.0, "pa": 75.0, "asr_no_trigger": average["zip"]["asr_no_trigger"]}
    assert (average["shrinkpad"]["ca"], average["shrinkpad"]["pa"], average["naive"]["ca"], average["naive"]["pa"]) == (
        50.0, 50.0, 50.0, 25.0)
    rows = {(r["metric"], r["baseline"]): r for r in check["checks"]["zip"]}
    assert (rows["ca", "shrinkpad"]["difference"], rows["pa", "naive"]["difference"], rows["asr", None]["zip"]) == (
        16.666667, 50.0, 0.0)
    # The intervals are the bootstrap over those three attacks' images alone, with the report's seed.
    decoded = {a: p for a, p in decode_predictions(report["predictions"])[1].items() if a != "wanet"}
    assert check == json.loads(json.dumps(check_target(LABELS, decoded, DEFENSES, 200, 3, average)))
    # Over the four attacks the same report misses: WaNet's ASR of 100 % and ShrinkPad's WaNet CA of 100 %.
    assert run_main(target_table, [str(path)]) == 0
    stored = _row(capsys.readouterr().out, "run")
    assert stored[0].startswith("-12.5 ") and stored[4].startswith("25.0 ") and stored[5] == "no |"


def test_naming_every_attack_gives_the_stored_check(target_table: ModuleType, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_report()))
    assert run_main(target_table, [str(path)]) == 0
    expected = capsys.readouterr().out
    assert run_main(target_table, ["--attacks", "WaNet,physicalba,blended,badnet", str(path)]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("name", ["cifar10", "gtsrb-gtsrb-prior", "cifar10-flip-only-victims-k2"])
def test_naming_every_attack_gives_a_published_report_its_stored_average_and_check(target_table: ModuleType, name: str,
                                                                                   capsys: pytest.CaptureFixture[str]
                                                                                   ) -> None:
    """The runner's own computations: the published Average row and check, to the bit (GTSRB's reports ran WaNet
    before PhysicalBA: the attacks keep the report's order whatever order they are named in)."""
    path = ROOT / "docs" / f"{name}.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    average, check = over_attacks(report, ["badnet", "blended", "physicalba", "wanet"], report["target"]["resamples"])
    assert average == report["average"]
    assert json.loads(json.dumps(check)) == report["target"]
    assert run_main(target_table, [str(path)]) == 0
    expected = capsys.readouterr().out
    assert run_main(target_table, ["--attacks", "badnet,blended,physicalba,wanet", str(path)]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("value, said", [
    ("badnet,trojan", "unknown attack 'trojan'; choose from badnet, blended, physicalba, wanet"),
    ("badnet,none", "unknown attack 'none' (the clean classifier's row is in no average)"),
    (" , ", "no attack given; choose from badnet, blended, physicalba, wanet"),
])
def test_an_unknown_attack_name_is_a_usage_error(target_table: ModuleType, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], value: str, said: str) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_report()))
    assert run_main(target_table, ["--attacks", value, str(path)]) == 2
    captured = capsys.readouterr()
    assert said in captured.err and captured.out == ""
    # one error line and where to look, not the usage of every option above it
    assert "usage:" not in captured.err and captured.err.strip().endswith("--help for the options)")


def test_the_attacks_it_knows_are_the_ones_the_evaluation_runs(target_table: ModuleType) -> None:
    assert target_table.BACKDOOR_ATTACKS == tuple(ATTACKS)


def test_a_report_without_predictions_or_a_named_attack_is_named_and_skipped(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, old, partial = tmp_path / "good.json", tmp_path / "old.json", tmp_path / "partial.json"
    report = _report()
    good.write_text(json.dumps(report))
    old.write_text(json.dumps({k: v for k, v in report.items() if k != "predictions"}))
    without = json.loads(json.dumps(report))
    for part in (without["results"], without["predictions"]["attacks"]):
        del part["physicalba"]
    partial.write_text(json.dumps(without))
    argv = ["--attacks", "badnet,blended,physicalba", str(good), str(old), str(partial)]
    assert run_main(target_table, argv) == 0
    captured = capsys.readouterr()
    assert "| good |" in captured.out and "| old |" not in captured.out and "| partial |" not in captured.out
    assert f"{old}: no per-image predictions, so no averages over the named attacks" in captured.err
    assert f"{partial}: it ran no physicalba (its attacks: badnet, blended, wanet) (skipped)" in captured.err
    assert "Traceback" not in captured.err
    # Without --attacks both still get their rows: the stored check is all they need.
    assert run_main(target_table, [str(old), str(partial)]) == 0
    assert "| old |" in capsys.readouterr().out
    # Only unusable files: exit status 2, as for the tool's other unusable files.
    assert run_main(target_table, ["--attacks", "physicalba", str(old), str(partial)]) == 2
    assert "(skipped)" in capsys.readouterr().err


def test_a_report_with_malformed_predictions_is_named_and_skipped(target_table: ModuleType, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    report = _report()
    report["predictions"]["labels"] = report["predictions"]["labels"].replace("0", "x", 1)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(report))
    assert run_main(target_table, ["--attacks", "badnet", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: its per-attack results or per-image predictions are malformed" in err and "Traceback" not in err


def test_a_report_run_with_bootstrap_0_gets_intervals_from_bootstrap_n_or_the_runners_default(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A report with its own check keeps its resamples (200 here, whatever --bootstrap says); one without (run with
    --bootstrap 0) gets --bootstrap N, else the runner's 2000, since --attacks has no stored check to show."""
    stored, boot0 = tmp_path / "stored.json", tmp_path / "boot0.json"
    report = _report(seed=5, resamples=200)
    stored.write_text(json.dumps(report))
    boot0.write_text(json.dumps({**report, "target": None, "config": {**report["config"], "bootstrap": 0}}))
    assert run_main(target_table, ["--attacks", "badnet,blended", "--bootstrap", "50", str(stored), str(boot0)]) == 0
    err = capsys.readouterr().err
    assert f"{stored}: averages and target check over badnet, blended only" in err
    assert "(200 resamples, seed 5)" in err and "(50 resamples, seed 5)" in err
    assert run_main(target_table, ["--attacks", "badnet,blended", str(boot0)]) == 0
    assert "(2000 resamples, seed 5)" in capsys.readouterr().err
