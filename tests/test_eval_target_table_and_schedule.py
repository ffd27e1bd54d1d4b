"""Mends of review 2 (Dec 3) in the evaluation jobs: jobs/target_table.py left a malformed stored target check to a
traceback that lost every file's row, and jobs/evaluate.py refused a prior of train_prior.py --schedule cosine with
advice naming a flag it did not have. Now the file is named and skipped, and the prior's recorded schedule is used
(--schedule, which now exists, may only agree with it), cached apart from linear sets."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.checkpoint import save_bundle
from pipeline.evaluation import runner
from pipeline.evaluation.defenses import make_defense, zip_overrides
from pipeline.evaluation.preflight import EvaluationError, Preflight, preflight
from pipeline.model import UNetConfig, build_unet
from tests.jobutil import TINY_FLAGS, load_job_script, run_main

ROOT = Path(__file__).resolve().parents[1]
SHA = "0" * 64


def _table(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any) -> tuple[int, str, str]:
    good = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    bad = copy.deepcopy(good)
    damage(bad["target"]["checks"]["zip"])
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    job = load_job_script("target_table.py", "target_table_mends")
    rc = run_main(job, [str(tmp_path / "good.json"), str(tmp_path / "bad.json")])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("damage", [
    lambda rows: rows[0].pop("interval"),  # a check row without its interval: KeyError before
    lambda rows: rows[0].update(difference="n/a"),  # a figure that is no number: TypeError before
    lambda rows: rows.__setitem__(0, "ca above shrinkpad"),  # a row that is no object
])
def test_target_table_names_and_skips_a_report_whose_check_rows_are_malformed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any) -> None:
    rc, out, err = _table(tmp_path, capsys, damage)
    assert rc == 0 and "| good |" in out and "| bad |" not in out
    assert "bad.json: its stored target check of zip is malformed: row 0" in err and "(skipped)" in err
    assert "Traceback" not in err


def test_target_table_with_only_malformed_reports_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    bad["target"]["checks"]["zip"] = "not a list of rows"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    job = load_job_script("target_table.py", "target_table_mends_only_bad")
    assert run_main(job, [str(tmp_path / "bad.json")]) == 2
    assert "bad.json: its stored target check of zip is malformed: holds a string" in capsys.readouterr().err


def _prior(tmp_path: Path, schedule: str | None) -> str:
    path = tmp_path / f"{schedule}.pt"
    save_bundle(path, build_unet(UNetConfig.from_flags(TINY_FLAGS)), meta={"schedule": schedule} if schedule else {})
    return str(path)


def _config(tmp_path: Path, checkpoint: str, **kw: Any) -> runner.EvalConfig:
    return runner.EvalConfig("cifar10", attacks=["badnet"], defenses=["none", "zip"], checkpoint=checkpoint,
                             subset=10, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **kw)


def _preflight(config: runner.EvalConfig) -> Preflight:
    return preflight(config, loader=lambda name, split: None)  # not the shared loader: no data checks


def test_the_schedule_a_prior_records_is_the_one_zip_samples_with(tmp_path: Path) -> None:
    cosine = _preflight(_config(tmp_path, _prior(tmp_path, "cosine")))
    assert cosine.schedule == "cosine" and cosine.settings["schedule"] == "cosine"
    # A prior that records none (guided-diffusion's) samples with linear, and its report is as before: no key.
    linear = _preflight(_config(tmp_path, _prior(tmp_path, None)))
    assert linear.schedule == "linear" and "schedule" not in linear.settings


def test_a_schedule_flag_against_the_prior_names_flags_that_exist(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError) as err:
        _preflight(_config(tmp_path, _prior(tmp_path, "cosine"), schedule="linear"))
    assert "--schedule linear was given" in str(err.value) and "give --schedule cosine" in str(err.value)
    assert "the job's" not in str(err.value)
    assert _preflight(_config(tmp_path, _prior(tmp_path, "cosine"), schedule="cosine")).schedule == "cosine"


def test_a_cosine_run_does_not_reuse_linear_purified_sets(tmp_path: Path) -> None:
    config = _config(tmp_path, "prior.pt")

    def key(schedule: str | None) -> str:
        return make_defense("zip", checkpoint="p", checkpoint_sha256=SHA,
                            zip_overrides=zip_overrides(config, schedule)).key

    assert key("cosine") != key("linear")
    assert key("linear") == key(None) == "zip-4a315837d8c0"  # linear sets cached before keep their key


def test_a_linear_run_does_not_replace_a_cosine_report_unasked(tmp_path: Path) -> None:
    """A prior that records no schedule (guided-diffusion's) run with --schedule cosine, then without it (linear): the
    linear report records no schedule, which is not "a setting an older report did not record"."""
    prior = _prior(tmp_path, None)
    (tmp_path / "out").mkdir()
    report = tmp_path / "out" / "cifar10.json"
    report.write_text(json.dumps({"config": _preflight(_config(tmp_path, prior, schedule="cosine")).settings}))
    with pytest.raises(EvaluationError, match='schedule "cosine" there, "linear" now'):
        _preflight(_config(tmp_path, prior))
    assert _preflight(_config(tmp_path, prior, schedule="cosine")).schedule == "cosine"  # the same: regenerated
    report.write_text(json.dumps({"config": _preflight(_config(tmp_path, prior, overwrite=True)).settings}))
    with pytest.raises(EvaluationError, match='schedule "linear" there, "cosine" now'):
        _preflight(_config(tmp_path, prior, schedule="cosine"))


def test_the_evaluate_job_has_the_schedule_flag_its_advice_names(tmp_path: Path) -> None:
    job = load_job_script("evaluate.py", "evaluate_mends")
    assert job.make_config(job.parse_args(["--schedule", "cosine"]), "cifar10").schedule == "cosine"
    assert job.make_config(job.parse_args([]), "cifar10").schedule is None  # the prior's own
