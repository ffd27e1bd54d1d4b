"""jobs/evaluate.py's checks before any work: bad options, data sets, priors and output folders are an `error:` with
exit status 2, never a traceback after hours of training."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.evaluation import runner
from pipeline.evaluation.preflight import report_settings
from tests.jobutil import evaluate_job_without_evaluation, run_main


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The job module, with the evaluation itself replaced: these tests only reach it when all checks pass."""
    return evaluate_job_without_evaluation(monkeypatch, "evaluate_job_checks")


_run = run_main


CHEAP = ["--datasets", "cifar10", "--attacks", "none", "--defenses", "naive"]


@pytest.mark.parametrize("options, message", [
    # The ZIP sampler's settings are checked when a ZIP defense runs (CHEAP's naive alone does not read them).
    (["--defenses", "naive,zip", "--start", "0"], "--start must be in (0, 1]"),
    (["--defenses", "naive,zip", "--start", "1.5"], "--start must be in (0, 1]"),
    (["--defenses", "naive,zip", "--start", "nan"], "--start must be in (0, 1]"),
    (["--defenses", "naive,zip", "--steps", "5000"], "steps must be an integer in [1, 1000]"),
    (["--threads", "-3"], "--threads must be 0 or more"),
    (["--device", "foo"], "--device must be cpu, cuda, cuda:N or auto"),
    (["--device", "cuda:x"], "--device must be cpu, cuda, cuda:N or auto"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--pool", "3"], "--pool 3 does not divide cifar10's 32 px images"),
    (["--datasets", "gtsrb", "--subset", "40"], "--subset 40 is too small for gtsrb"),
    (["--defenses", "zip", "--checkpoint", "missing.pt"], "checkpoint not found: missing.pt"),
])
def test_bad_options_are_an_error_before_any_work(job: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  options: list[str], message: str) -> None:
    code = _run(job, [*CHEAP, "--out", str(tmp_path), *options])
    err = capsys.readouterr().err
    assert code == 2 and "error: " in err and message in err and "Traceback" not in err
    assert job.started == []


def test_a_small_data_set_later_in_the_list_stops_the_run_before_the_first(job: ModuleType, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """gtsrb's 43 classes need --subset 43 or more: found before cifar10's evaluation starts."""
    assert _run(job, ["--datasets", "cifar10,gtsrb", "--defenses", "naive", "--subset", "40", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--subset 40 is too small for gtsrb" in err and "at least 43" in err
    assert job.started == []
    assert _run(job, ["--datasets", "gtsrb", "--defenses", "naive", "--subset", "43", "--out", str(tmp_path)]) == 0
    assert [c.subset for c in job.started] == [43]


def test_the_default_prior_is_found_from_any_working_directory(job: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = job.parse_args([]).checkpoint
    assert Path(default).is_absolute() and Path(default).is_file() and runner.EvalConfig("x").checkpoint == default
    assert _run(job, ["--datasets", "cifar10", "--defenses", "naive,zip", "--out", str(tmp_path / "out")]) == 0
    assert [c.checkpoint for c in job.started] == [default]


def test_another_configuration_in_out_needs_overwrite(job: ModuleType, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A report of --steps 2 in --out: rerunning with --steps 2 is fine, --steps 3 is refused unless --overwrite."""
    argv = [*CHEAP, "--out", str(tmp_path), "--epochs", "1"]
    config = job.make_config(job.parse_args([*argv, "--steps", "2"]), "cifar10")
    settings = report_settings(config, ["clean"], ["naive"], None)
    (tmp_path / "cifar10.json").write_text(json.dumps({"config": {**settings, "device": "cuda"}}))

    assert _run(job, [*argv, "--steps", "2"]) == 0  # the same configuration (elsewhere run on a GPU): regenerated
    assert _run(job, [*argv, "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "cifar10.json holds a report of another configuration (steps 2 there, 3 now)" in err
    assert "another --out, or --overwrite" in err
    assert _run(job, [*argv, "--steps", "3", "--overwrite"]) == 0
    assert [(c.steps, c.overwrite) for c in job.started] == [(2, False), (3, True)]
