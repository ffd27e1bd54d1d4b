"""The target check: averages over attacks from per-image predictions, paired bootstrap intervals, verdicts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
from pipeline.evaluation.predictions import check_target, decode_predictions, encode_predictions
from pipeline.evaluation.report import target_lines
from pipeline.evaluation.target import DECIMALS, AttackPredictions, bootstrap_averages, point_check, target_check

DEFENSES = ("zip", "shrinkpad", "naive")


def _random_attacks(labels: np.ndarray, rng: np.random.Generator, classes: int) -> list[AttackPredictions]:
    attacks = []
    for target in (0, 1, 2):
        m = int((labels != target).sum())
        attacks.append(AttackPredictions(
            target, {d: rng.integers(0, classes, len(labels)) for d in DEFENSES},
            {d: rng.integers(0, classes, m) for d in DEFENSES}))
    return attacks


def test_point_estimates_are_the_averages_of_the_metric_functions() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    attacks = _random_attacks(labels, rng, 4)
    boot = bootstrap_averages(labels, attacks, DEFENSES, resamples=50)
    for d in DEFENSES:
        ca = np.mean([clean_accuracy(a.clean[d], labels) for a in attacks])
        asr = np.mean([attack_success_rate(a.triggered[d], labels[labels != a.target], a.target) for a in attacks])
        pa = np.mean([poisoned_accuracy(a.triggered[d], labels[labels != a.target]) for a in attacks])
        assert boot[d]["ca"][0] == pytest.approx(ca)
        assert boot[d]["asr"][0] == pytest.approx(asr)
        assert boot[d]["pa"][0] == pytest.approx(pa)
        assert boot[d]["ca"].shape == (51,)


def test_clear_wins_losses_and_the_asr_bound() -> None:
    labels = np.arange(40) % 4
    keep = labels != 1
    right = {"clean": labels.copy(), "triggered": labels[keep].copy()}
    wrong = {"clean": (labels + 1) % 4, "triggered": np.full(int(keep.sum()), 1)}  # every triggered image -> target
    attack = AttackPredictions(1, {"zip": right["clean"], "shrinkpad": wrong["clean"], "naive": right["clean"]},
                               {"zip": right["triggered"], "shrinkpad": wrong["triggered"], "naive": right["triggered"]})
    rows = {r["criterion"]: r for r in target_check(labels, [attack], "zip", resamples=200)}
    ca_shrink = rows["ca above shrinkpad"]
    assert (ca_shrink["zip"], ca_shrink["other"], ca_shrink["difference"]) == (100.0, 0.0, 100.0)
    assert ca_shrink["interval"] == [100.0, 100.0] and ca_shrink["verdict"] == "yes"
    # identical outputs: no difference on any resample, so not above on any: a clear miss (a tie is no win)
    tie = rows["pa above naive"]
    assert tie["difference"] == 0.0 and tie["interval"] == [0.0, 0.0]
    assert tie["met"] is False and tie["verdict"] == "no"
    asr = rows["asr at most 5"]
    assert asr["zip"] == 0.0 and asr["interval"] == [0.0, 0.0] and asr["verdict"] == "yes"
    # the same check for ShrinkPad's outputs as "ZIP": ASR 100 %, clearly over the bound
    flipped = AttackPredictions(1, {"zip": wrong["clean"], "shrinkpad": right["clean"], "naive": right["clean"]},
                                {"zip": wrong["triggered"], "shrinkpad": right["triggered"], "naive": right["triggered"]})
    rows = {r["criterion"]: r for r in target_check(labels, [flipped], "zip", resamples=200)}
    assert rows["asr at most 5"]["zip"] == 100.0 and rows["asr at most 5"]["verdict"] == "no"
    assert rows["ca above naive"]["verdict"] == "no"


def test_intervals_have_the_binomial_width_and_pairing_narrows_them() -> None:
    rng = np.random.default_rng(1)
    n = 400
    labels = rng.integers(0, 10, n)
    target = 0
    m = int((labels != target).sum())
    zip_clean = np.where(rng.random(n) < 0.5, labels, (labels + 1) % 10)
    independent = np.where(rng.random(n) < 0.5, labels, (labels + 1) % 10)
    nearly_same = zip_clean.copy()
    nearly_same[:4] = (labels[:4] + 1) % 10  # differs from ZIP's on at most 4 images
    triggered = np.where(rng.random(m) < 0.5, labels[labels != target], target)
    attack = AttackPredictions(target, {"zip": zip_clean, "shrinkpad": independent, "naive": nearly_same},
                               {d: triggered for d in DEFENSES})
    rows = {r["criterion"]: r for r in target_check(labels, [attack], "zip", resamples=2000)}
    # two independent 50 % accuracies on 400 images: SE of the difference = sqrt(2 * 0.25 / 400) = 3.5 points
    lo, hi = rows["ca above shrinkpad"]["interval"]
    assert 5.5 < (hi - lo) / 2 < 8.5
    # the same images scored twice differ only where the outputs differ: a paired interval is a point or two wide
    lo, hi = rows["ca above naive"]["interval"]
    assert hi - lo <= 2.0 and lo >= 0.0
    # ASR of a 50 % hit rate on ~360 images: about +-5 points around 50
    lo, hi = rows["asr at most 5"]["interval"]
    assert lo > 40 and hi < 60 and rows["asr at most 5"]["verdict"] == "no"


def test_mismatched_predictions_are_refused() -> None:
    labels = np.arange(10) % 2
    bad = AttackPredictions(1, {d: labels for d in DEFENSES}, {d: labels for d in DEFENSES})  # 10 != 5 triggered
    with pytest.raises(ValueError, match="triggered predictions"):
        bootstrap_averages(labels, [bad], DEFENSES)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_averages(labels, [], DEFENSES)


def test_report_round_trip_and_markdown_rows() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 30)
    predictions = {
        "badnet": {"target": 1, "clean": {d: rng.integers(0, 3, 30) for d in DEFENSES},
                   "triggered": {d: rng.integers(0, 3, int((labels != 1).sum())) for d in DEFENSES}},
        "clean": {"target": None, "clean": {d: rng.integers(0, 3, 30) for d in DEFENSES}, "triggered": {}},
    }
    encoded = encode_predictions(labels, predictions)
    assert isinstance(encoded["labels"], str)
    back_labels, back = decode_predictions(encoded)
    assert np.array_equal(back_labels, labels)
    assert np.array_equal(back["badnet"]["triggered"]["naive"], predictions["badnet"]["triggered"]["naive"])

    target = check_target(back_labels, back, ["none", *DEFENSES], resamples=100)
    assert target is not None and list(target["checks"]) == ["zip"] and len(target["checks"]["zip"]) == 5
    assert check_target(labels, predictions, ["none", "zip"]) is None  # no baseline to beat
    assert check_target(labels, predictions, DEFENSES, resamples=0) is None
    lines = target_lines({"config": {"pool": 4}, "target": target})
    table = [line for line in lines if line.startswith("| ZIP (k=4) |")]
    assert len(table) == 5
    assert any("average CA above ShrinkPad" in line for line in table)
    assert any("average ASR ≤ 5 %" in line for line in table)
    assert target_lines({"config": {"pool": 4}}) == []  # reports written before the check existed


def test_summary_table_and_its_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("target_table_job", Path(__file__).parents[1] / "jobs" / "target_table.py")
    assert spec is not None and spec.loader is not None
    target_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(target_table)

    labels = np.arange(40) % 4
    keep = labels != 1
    attack = AttackPredictions(1, {"zip": labels, "shrinkpad": (labels + 1) % 4, "naive": labels},
                               {"zip": labels[keep], "shrinkpad": np.full(int(keep.sum()), 1), "naive": labels[keep]})
    predictions = {"badnet": {"target": 1, "clean": dict(attack.clean), "triggered": dict(attack.triggered)}}
    report = {"config": {"pool": 4}, "target": check_target(labels, predictions, DEFENSES, resamples=100)}
    good, old, bare = tmp_path / "cifar10-k4.json", tmp_path / "old.json", tmp_path / "bare.json"
    good.write_text(json.dumps(report))
    # a report written before predictions were kept: only the Average row
    averages = {"zip": {"ca": 41.0, "asr": 5.45, "pa": 38.8}, "shrinkpad": {"ca": 80.5, "asr": 48.1, "pa": 39.7},
                "naive": {"ca": 26.1, "asr": 0.3, "pa": 26.9}}
    old.write_text(json.dumps({"config": {"pool": 2}, "average": averages}))
    bare.write_text(json.dumps({"config": {"pool": 4}}))

    assert target_table.main([str(good), str(old), str(bare)]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("| cifar10-k4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # CA above ShrinkPad: +100 on every resample; PA above A⁺A x: identical outputs, a tie; ASR 0 %
    assert cells[1] == "4" and cells[2] == "+100.0 [+100.0, +100.0] yes"
    assert cells[5] == "+0.0 [+0.0, +0.0] no" and cells[6] == "0.0 [0.0, 0.0] yes"
    assert cells[7] == "no"  # a tie is not a win
    row = next(line for line in captured.out.splitlines() if line.startswith("| old |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["2", "-39.5 no, no interval", "+14.9 yes, no interval", "-0.9 no, no interval",
                         "+11.9 yes, no interval", "5.5 no, no interval", "no"]
    assert "old.json: no per-image predictions" in captured.err
    assert "bare.json: no target check for zip: the report has no average for zip, shrinkpad, naive" in captured.err
    assert target_table.main([str(bare)]) == 2


def test_point_check_agrees_with_the_bootstrap_check_on_its_verdicts() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 80)
    attacks = _random_attacks(labels, rng, 4)
    full = target_check(labels, attacks, "zip", resamples=50)
    boot = bootstrap_averages(labels, attacks, DEFENSES, resamples=0)
    averages = {d: {m: round(float(v[0]), DECIMALS) for m, v in per.items()} for d, per in boot.items()}
    points = point_check(averages, "zip")
    assert [r["criterion"] for r in points] == [r["criterion"] for r in full]
    for p, f in zip(points, full, strict=True):
        assert (p["zip"], p["other"], p["difference"], p["met"]) == (f["zip"], f["other"], f["difference"], f["met"])
        assert p["interval"] is None and p["verdict"] == ("yes" if f["met"] else "no") + ", no interval"
    averages["zip"]["asr"] = 5.0  # the ASR bound is inclusive
    assert point_check(averages, "zip")[-1]["met"] is True
    with pytest.raises(ValueError, match="no average for naive"):
        point_check({d: averages[d] for d in ("zip", "shrinkpad")}, "zip")


def _target_table_job():
    spec = importlib.util.spec_from_file_location("target_table_job", Path(__file__).parents[1] / "jobs" / "target_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point_report(pool: int, zip_ca: float) -> dict:
    averages = {"zip": {"ca": zip_ca, "asr": 1.0, "pa": 50.0}, "shrinkpad": {"ca": 60.0, "asr": 40.0, "pa": 30.0},
                "naive": {"ca": 50.0, "asr": 2.0, "pa": 45.0}}
    return {"config": {"pool": pool}, "average": averages}


def test_reports_of_the_same_name_get_a_row_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target_table = _target_table_job()
    paths = [tmp_path / "a" / "cifar10.json", tmp_path / "b" / "cifar10.json", tmp_path / "gtsrb.json"]
    for path, ca in zip(paths, (70.0, 40.0, 80.0), strict=True):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(_point_report(4, ca)))
    assert target_table.main([str(p) for p in paths]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["a/cifar10", "b/cifar10", "gtsrb"]
    assert "+10.0 yes" in rows[0] and "-20.0 no" in rows[1]
    assert target_table.row_labels([Path("x/a/c.json"), Path("y/a/c.json"), Path("c.json"), Path("c.json")]) == [
        "x/a/c", "y/a/c", "c", "c (2)"]


def test_unusable_reports_are_named_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run without attacks (every average None), a JSON array, a report without config, non-UTF-8 bytes, broken
    JSON, a missing file: one line each on stderr, never a traceback; the usable report still gets its row."""
    target_table = _target_table_job()
    no_attacks = {"config": {"pool": 4}, "target": None,
                  "average": {d: {m: None for m in ("ca", "asr", "pa", "asr_no_trigger")} for d in DEFENSES}}
    files = {"none.json": json.dumps(no_attacks), "list.json": "[1, 2]", "noconfig.json": json.dumps({"average": {}}),
             "latin1.json": b"\xff\xfe{\xe9}", "broken.json": "{", "good.json": json.dumps(_point_report(4, 70.0))}
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    paths = [str(tmp_path / name) for name in [*files, "missing.json"]]
    assert target_table.main(paths) == 0
    captured = capsys.readouterr()
    assert [line.split("|")[1].strip() for line in captured.out.splitlines()[2:]] == ["good"]
    err = captured.err
    assert f"{tmp_path / 'none.json'}: no target check for zip: " in err and "nothing to judge" in err
    assert f"{tmp_path / 'list.json'}: holds an array, not a report" in err
    assert f"{tmp_path / 'noconfig.json'}: no config" in err
    assert f"{tmp_path / 'latin1.json'}: not UTF-8 text" in err
    assert f"{tmp_path / 'broken.json'}: not valid JSON" in err
    assert f"{tmp_path / 'missing.json'}: cannot read it" in err
    assert err.count("(skipped)") == 6 and "Traceback" not in err
    assert target_table.main(paths[:-2]) == 2  # nothing usable
