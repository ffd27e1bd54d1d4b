"""Follow-ups of the evaluation's command lines: jobs/target_table.py computes the intervals of a report run with
--bootstrap 0 from its stored per-image predictions, exactly as the runner would have; jobs/evaluate.py checks the ZIP
sampler's settings only when a ZIP defense is selected."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from pipeline.evaluation.predictions import check_target, encode_predictions
from pipeline.evaluation.target import DECIMALS, AttackPredictions, bootstrap_averages
from tests.jobutil import evaluate_job_without_evaluation, load_job_script, run_main

ROOT = Path(__file__).parents[1]
DEFENSES = ["none", "shrinkpad", "naive", "zip"]


@pytest.fixture
def target_table() -> ModuleType:
    return load_job_script("target_table.py", "target_table_followups")


def _predictions(n: int = 60) -> tuple[np.ndarray, dict]:
    """A run's labels and predictions: 3 classes, a clean classifier row and two attacks, each defense right on the
    clean images and fooled on the triggered ones at its own rate."""
    rng = np.random.default_rng(11)
    labels = np.arange(n) % 3
    right = {"none": 0.9, "shrinkpad": 0.7, "naive": 0.6, "zip": 0.75}
    fooled = {"none": 0.95, "shrinkpad": 0.3, "naive": 0.1, "zip": 0.05}

    def guess(truth: np.ndarray, rate: float, other: np.ndarray) -> np.ndarray:
        return np.where(rng.random(len(truth)) < rate, truth, other)

    predictions = {"none": {"target": None, "clean": {d: guess(labels, right[d], (labels + 1) % 3) for d in DEFENSES},
                            "triggered": {}}}
    for name, target in (("badnet", 0), ("wanet", 1)):
        keep = labels != target
        predictions[name] = {
            "target": target,
            "clean": {d: guess(labels, right[d], (labels + 1) % 3) for d in DEFENSES},
            "triggered": {d: guess(np.full(int(keep.sum()), target), fooled[d], labels[keep]) for d in DEFENSES},
        }
    return labels, predictions


def _reports(tmp_path: Path, seed: int, resamples: int) -> tuple[Path, Path, dict]:
    """The same run written twice as cifar10.json: with --bootstrap 0 (predictions, no check) and with --bootstrap
    `resamples` (the check the runner stores). Returns both paths and the stored check."""
    labels, predictions = _predictions()
    attacks = [AttackPredictions(p["target"], p["clean"], p["triggered"])
               for p in predictions.values() if p["target"] is not None]
    point = bootstrap_averages(labels, attacks, DEFENSES, resamples=0)
    average = {d: {m: round(float(v[0]), DECIMALS) for m, v in point[d].items()} for d in DEFENSES}
    stored = json.loads(json.dumps(check_target(labels, predictions, DEFENSES, resamples, seed, average)))
    base = {"dataset": "cifar10", "config": {"pool": 4, "seed": seed, "defenses": DEFENSES, "bootstrap": 0},
            "average": average, "predictions": encode_predictions(labels, predictions)}
    paths = []
    for folder, target, bootstrap in (("boot0", None, 0), ("stored", stored, resamples)):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "cifar10.json"
        path.write_text(json.dumps({**base, "config": {**base["config"], "bootstrap": bootstrap}, "target": target}))
        paths.append(path)
    return paths[0], paths[1], stored


def test_bootstrap_n_gives_a_bootstrap_0_report_the_intervals_the_runner_would_have_stored(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a --bootstrap 0 report got point estimates only, and the advice to rerun the evaluation (hours) with
    --bootstrap 2000 --overwrite. Now --bootstrap N prints the row that report's run with --bootstrap N stores: the
    same resamples, seeded with the report's --seed (7 here; seed 0 would give other intervals)."""
    boot0, stored_path, stored = _reports(tmp_path, seed=7, resamples=300)
    assert run_main(target_table, [str(stored_path)]) == 0
    expected = capsys.readouterr().out
    assert run_main(target_table, ["--bootstrap", "300", str(boot0)]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected
    assert "no interval" not in captured.out and captured.out.count("[") == 5
    assert f"{boot0}: run with --bootstrap 0; intervals computed here" in captured.err and "seed 7" in captured.err
    # The seed is the report's, not 0: at seed 0 the same resamples give other intervals.
    report = json.loads(boot0.read_text())
    assert target_table.computed_check(report, 300) == stored
    report["config"]["seed"] = 0
    assert target_table.computed_check(report, 300) != stored


def test_without_bootstrap_a_bootstrap_0_report_keeps_point_estimates_and_is_told_the_option(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot0, _, _ = _reports(tmp_path, seed=7, resamples=300)
    assert run_main(target_table, [str(boot0)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("no interval") == 5 and "[" not in captured.out
    assert "give this command --bootstrap 2000" in captured.err


def test_a_stored_check_is_shown_as_stored_whatever_bootstrap_says(target_table: ModuleType, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, stored_path, _ = _reports(tmp_path, seed=7, resamples=300)
    assert run_main(target_table, [str(stored_path)]) == 0
    expected = capsys.readouterr().out
    assert run_main(target_table, ["--bootstrap", "50", str(stored_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected and "computed here" not in captured.err


def test_unusable_predictions_fall_back_to_point_estimates_and_a_negative_count_is_refused(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot0, _, _ = _reports(tmp_path, seed=7, resamples=300)
    report = json.loads(boot0.read_text())
    report["predictions"]["labels"] = report["predictions"]["labels"].replace("0", "x", 1)
    boot0.write_text(json.dumps(report))
    assert run_main(target_table, ["--bootstrap", "100", str(boot0)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("no interval") == 5 and "per-image predictions are malformed" in captured.err
    del report["config"]["seed"]
    report["predictions"]["labels"] = report["predictions"]["labels"].replace("x", "0", 1)
    boot0.write_text(json.dumps(report))
    assert run_main(target_table, ["--bootstrap", "100", str(boot0)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("no interval") == 5 and "no 'seed' to compute the intervals from" in captured.err
    assert run_main(target_table, ["--bootstrap", "-1", str(boot0)]) == 2
    assert "--bootstrap must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("value, said", [
    # BUG (fixed here): with --bootstrap N the averages went to the check unjudged: NaN gave a row "+NaN ... no, within
    # noise" on no figure, an integer too large for a float an OverflowError traceback that lost every file's row.
    # Now such a report is named and skipped, as without --bootstrap.
    pytest.param(float("nan"), "the report's average CA for zip is NaN (not a finite number)", id="nan"),
    pytest.param(float("inf"), "the report's average CA for zip is Infinity (not a finite number)", id="infinity"),
    pytest.param(10**400, "the report's average CA for zip is a number too large for a float", id="int-too-large"),
    pytest.param(True, "the report's average CA for zip is a boolean (true)", id="true"),
])
def test_bootstrap_n_skips_a_bootstrap_0_report_whose_averages_are_no_figures(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: object, said: str) -> None:
    boot0, stored_path, _ = _reports(tmp_path, seed=7, resamples=300)
    report = json.loads(boot0.read_text())
    report["average"]["zip"]["ca"] = value
    boot0.write_text(json.dumps(report))
    assert run_main(target_table, ["--bootstrap", "100", str(stored_path), str(boot0)]) == 0
    captured = capsys.readouterr()
    assert "| stored/cifar10 |" in captured.out and "boot0" not in captured.out and "NaN" not in captured.out
    assert f"{boot0}: no target check for zip: {said}" in captured.err and "(skipped)" in captured.err


def test_bootstrap_n_falls_back_to_point_estimates_on_a_predicted_label_too_large_for_an_integer(
        target_table: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # BUG (fixed here): an OverflowError traceback ("Python int too large to convert to C long") that lost every row
    boot0, stored_path, _ = _reports(tmp_path, seed=7, resamples=300)
    report = json.loads(boot0.read_text())
    report["predictions"]["labels"] = "9" * 30 + report["predictions"]["labels"][1:]
    boot0.write_text(json.dumps(report))
    assert run_main(target_table, ["--bootstrap", "100", str(stored_path), str(boot0)]) == 0
    captured = capsys.readouterr()
    assert "| stored/cifar10 |" in captured.out and captured.out.count("no interval") == 5
    assert "per-image predictions are malformed" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("name", ["cifar10-start03", "gtsrb-gtsrb-prior-start03", "cifar10-flip-only-victims-k2"])
def test_the_published_checks_are_what_their_predictions_give(target_table: ModuleType, name: str) -> None:
    """The computation is the runner's: a docs/*.json report gets, from its predictions and its own resamples and
    seed, exactly the check its run stored (all 25 such reports do; three here, to stay fast)."""
    report = json.loads((ROOT / "docs" / f"{name}.json").read_text(encoding="utf-8"))
    target = report["target"]
    assert json.loads(json.dumps(target_table.computed_check(report, target["resamples"]))) == target


# --- jobs/evaluate.py: the ZIP settings only when ZIP runs ------------------------------------------------------------


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return evaluate_job_without_evaluation(monkeypatch, "evaluate_job_followups")


@pytest.mark.parametrize("defenses", ["none,shrinkpad", "None, ShrinkPad,NAIVE", "naive"])
@pytest.mark.parametrize("options", [["--steps", "5000"], ["--start", "0"], ["--start", "nan"],
                                     ["--steps", "5000", "--sampler", "ddpm", "--start", "1.5"]])
def test_zip_settings_do_not_stop_a_run_without_zip(job: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    defenses: str, options: list[str]) -> None:
    """Before: `--steps 5000 --defenses none,shrinkpad` was refused ("ZIP settings (--steps 5000, --pool 4): steps
    must be an integer in [1, 1000]"), and --start 0 likewise, though neither defense reads them."""
    argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", defenses, "--out", str(tmp_path), *options]
    assert run_main(job, argv) == 0, capsys.readouterr().err
    assert len(job.started) == 1 and "zip" not in job.started[0].defenses


@pytest.mark.parametrize("defenses", ["none,zip", "ZIP-Authors", "naive, zip-authors, zip"])
@pytest.mark.parametrize("options, message", [
    (["--steps", "5000"], "steps must be an integer in [1, 1000]"),
    (["--start", "0"], "--start must be in (0, 1]"),
    (["--start", "nan"], "--start must be in (0, 1]"),
])
def test_zip_settings_are_still_checked_when_a_zip_defense_runs(job: ModuleType, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str], defenses: str,
                                                                options: list[str], message: str) -> None:
    argv = ["--datasets", "cifar10", "--defenses", defenses, "--out", str(tmp_path), *options]
    assert run_main(job, argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and job.started == []


@pytest.mark.parametrize("pool, message", [("0", "--pool must be positive"),
                                           ("3", "--pool 3 does not divide cifar10's 32 px images")])
def test_the_pool_is_still_checked_for_the_naive_defense(job: ModuleType, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], pool: str,
                                                         message: str) -> None:
    """A⁺A x pools by --pool too: its checks stay when no ZIP defense runs (and the ZIP settings are out of range)."""
    argv = ["--datasets", "cifar10", "--defenses", "none,naive", "--steps", "5000", "--out", str(tmp_path),
            "--pool", pool]
    assert run_main(job, argv) == 2
    assert message in capsys.readouterr().err and job.started == []
