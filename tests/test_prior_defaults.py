"""A prior's recorded noise schedule and trained timesteps are the defaults everywhere: the job, the Python API and
jobs/evaluate.py. Before, the API sampled a prior of train_prior.py --schedule cosine with the linear schedule (and
refused it) unless schedule="cosine" was passed, and a prior of train_prior.py --max-timestep was refused everywhere
unless the user worked out a --start within its range by hand."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline.checkpoint import load_checkpoint, save_bundle
from pipeline.errors import JobError
from pipeline.model import UNetConfig, build_unet
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from pipeline.sampler import run_timesteps
from pipeline.settings import PriorRangeNote, check_trained_timesteps
from tests.jobutil import TINY_FLAGS, image_folder, load_job_script, small_job_argv, small_job_config


def _prior(folder: Path, name: str = "prior.pt", **meta: Any) -> str:
    """A tiny prior whose meta records `meta`, as train_prior.py's prior.pt records its schedule and max_timestep."""
    torch.manual_seed(0)
    path = folder / name
    save_bundle(path, build_unet(UNetConfig.from_flags(TINY_FLAGS)), meta=dict(meta))
    return str(path)


# --- the Python API: the prior's schedule ---------------------------------------------------------------------------

def test_the_api_samples_a_cosine_prior_with_its_own_schedule(tmp_path: Path) -> None:
    prior = _prior(tmp_path, schedule="cosine")
    purifier = Purifier.from_checkpoint(prior, device="cpu", steps=2)  # before: refused, "set schedule='cosine'"
    assert purifier.settings.schedule == "cosine"
    assert purifier.schedule.name == "cosine"  # the one it samples with
    assert purifier.description["settings"]["schedule"] == "cosine"  # recorded resolved, not None
    loaded = load_checkpoint(prior)
    assert Purifier(loaded.model, ZipSettings(steps=2), checkpoint=loaded).settings.schedule == "cosine"
    out = purifier([np.zeros((8, 8, 3), np.uint8)])
    assert out[0].shape == (8, 8, 3)


def test_a_schedule_given_against_the_prior_is_still_refused_and_one_that_agrees_taken(tmp_path: Path) -> None:
    prior = _prior(tmp_path, schedule="cosine")
    with pytest.raises(ValueError, match=r"trained with the cosine noise schedule, but these settings sample with "
                                         r"linear.*leave it unset for the prior's own"):
        Purifier.from_checkpoint(prior, device="cpu", schedule="linear")
    assert Purifier.from_checkpoint(prior, device="cpu", schedule="cosine").settings.schedule == "cosine"


def test_a_prior_that_records_nothing_samples_linear_from_pure_noise(tmp_path: Path) -> None:
    """guided-diffusion's checkpoints record no schedule: they were trained with the linear one on every timestep."""
    purifier = Purifier.from_checkpoint(_prior(tmp_path), device="cpu")
    assert (purifier.settings.schedule, purifier.settings.start) == ("linear", 1.0)
    loaded = load_checkpoint(_prior(tmp_path))
    assert (Purifier(loaded.model).settings.schedule, Purifier(loaded.model).settings.start) == ("linear", 1.0)


def test_zip_settings_on_their_own_leave_the_schedule_and_start_to_the_prior() -> None:
    settings = ZipSettings()
    assert settings.schedule is None and settings.start is None
    assert json.loads(json.dumps(settings.to_dict()))["schedule"] is None  # still written as JSON
    resolved = settings.for_prior({})
    assert (resolved.schedule, resolved.start) == ("linear", 1.0)
    assert settings.for_prior({"schedule": "cosine", "max_timestep": 299}).to_dict() == {
        **settings.to_dict(), "schedule": "cosine", "start": 0.25}
    # what is given is kept, a recipe's included
    assert ZipSettings(schedule="linear").for_prior({"schedule": "cosine"}).schedule == "linear"
    assert ZipSettings.recipe("fast").for_prior({"max_timestep": 299}).start == 0.3
    # its own checks still run on an unset start, as from pure noise (lam 1 guides no step from there)
    with pytest.raises(ValueError, match="guides none"):
        ZipSettings(lam=1.0)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        ZipSettings(schedule="cosin")


# --- the start a prior's trained timesteps allow --------------------------------------------------------------------

@pytest.mark.parametrize(("trained_up_to", "steps", "start"), [
    (None, 20, 1.0), (999, 20, 1.0), (950, 20, 1.0),  # the first step, t = 950, is within the range: from pure noise
    (949, 20, 0.9), (299, 20, 0.25), (300, 20, 0.3), (299, 50, 0.28),  # ddpm's 50 steps: t = 980, 960, ..., 280
    (299, 1000, 0.299), (299, 2, 0.299), (0, 20, 0.0005),  # below the second step: that of t = 0 alone
])
def test_the_start_of_a_prior_is_the_largest_step_within_its_range(trained_up_to: int | None, steps: int,
                                                                  start: float) -> None:
    from pipeline.settings import prior_start

    assert prior_start(trained_up_to, steps) == start


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 50, 333, 1000])
@pytest.mark.parametrize("trained_up_to", [0, 1, 49, 50, 51, 299, 300, 500, 949, 998, 999])
def test_the_start_a_prior_allows_is_one_its_check_accepts_and_loses_no_step(steps: int, trained_up_to: int) -> None:
    meta = {"max_timestep": trained_up_to}
    settings = ZipSettings(steps=steps).for_prior(meta)
    check_trained_timesteps(meta, settings)  # accepted
    grid = run_timesteps(1000, steps, 1.0)
    ran = run_timesteps(1000, steps, settings.start)
    assert ran == [t for t in grid if t <= trained_up_to]  # every step within the range, none beyond it


def test_the_api_starts_a_prior_of_max_timestep_within_its_range(tmp_path: Path) -> None:
    prior = _prior(tmp_path, max_timestep=299)
    with pytest.warns(PriorRangeNote, match=r"trained only on timesteps 0\.\.299.*starts at t = 250"):
        purifier = Purifier.from_checkpoint(prior, device="cpu")  # before: refused, "use start ≤ 0.299"
    assert purifier.settings.start == 0.25 and purifier.description["settings"]["start"] == 0.25
    with pytest.warns(PriorRangeNote):
        assert Purifier.from_checkpoint(prior, device="cpu", sampler="ddpm", steps=50).settings.start == 0.28
    assert Purifier.from_checkpoint(prior, device="cpu", start=0.1).settings.start == 0.1  # given: kept
    with pytest.raises(ValueError, match=r"trained only on timesteps 0\.\.299.*start at t = 950.*start ≤ 0\.299"):
        Purifier.from_checkpoint(prior, device="cpu", start=1.0)  # given beyond it: refused as before
    with pytest.raises(ValueError, match=r"start at t = 300"):
        Purifier.from_checkpoint(prior, device="cpu", settings=ZipSettings.recipe("fast"))  # a recipe's start is given
    steps: list[int] = []
    purifier([np.zeros((8, 8, 3), np.uint8)])
    purifier.purify_tensor(torch.zeros(1, 3, 32, 32), progress=lambda i, n: steps.append(n))
    assert steps == [6] * 6  # t = 250, 200, ..., 0


def test_the_api_says_once_which_start_it_chose_for_a_range_limited_prior_and_nothing_otherwise(tmp_path: Path) -> None:
    limited, full = _prior(tmp_path, "limited.pt", max_timestep=299), _prior(tmp_path, "full.pt")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Purifier.from_checkpoint(limited, device="cpu", start=0.1)  # chosen by the caller: nothing to say
        Purifier.from_checkpoint(limited, device="cpu", settings=ZipSettings(start=0.2))
        Purifier.from_checkpoint(full, device="cpu")  # from pure noise, the paper's: nothing to say
        loaded = load_checkpoint(limited)
        Purifier(loaded.model, ZipSettings(steps=20), checkpoint=loaded)
    assert [(w.category, "starts at t = 250" in str(w.message), "give a start" in str(w.message)) for w in seen] == [
        (PriorRangeNote, True, True)]



def test_the_apis_range_note_points_at_the_callers_line_not_the_librarys(tmp_path: Path) -> None:
    """The note pointed at the purifier's own source ('pipeline/purifier.py:164: PriorRangeNote: ...' followed by
    'return cls(loaded.model, settings, ...)'), whichever call made the purifier: a notebook's user was shown the
    library's line instead of the cell's."""
    limited = _prior(tmp_path, max_timestep=299)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Purifier.from_checkpoint(limited, device="cpu")
        loaded = load_checkpoint(limited)
        Purifier(loaded.model, checkpoint=loaded)
    assert [(w.category, w.filename) for w in seen] == [(PriorRangeNote, __file__)] * 2


# --- the job ---------------------------------------------------------------------------------------------------------

def test_the_job_starts_a_prior_of_max_timestep_within_its_range_and_says_so(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli

    image_folder(tmp_path / "in", 2)
    prior = _prior(tmp_path, max_timestep=299, schedule="cosine")
    plan = plan_job(small_job_config(tmp_path, prior, steps=20), dry_run=True)  # before: a JobError
    assert plan.job_record["settings"]["start"] == 0.25 and plan.job_record["settings"]["schedule"] == "cosine"
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, prior, "--steps", "20", "--dry-run")) == 0
    out, err = capsys.readouterr()
    assert "start=0.25" in out
    assert err.count("starts at t = 250") == 1, err
    assert "zip-purify: note: this prior was trained only on timesteps 0..299" in err and "give --start" in err
    # the run records it resolved, and says it once
    assert cli.main(small_job_argv(tmp_path, prior, "--steps", "20")) == 0
    assert capsys.readouterr().err.count("starts at t = 250") == 1
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text())["settings"]["start"] == 0.25
    # the summary says what ran, beside the options as given (start left out: null)
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["settings"]["start"] == 0.25 and summary["settings"]["schedule"] == "cosine"
    assert summary["config"]["start"] is None


def test_a_start_given_to_the_job_is_kept_and_refused_beyond_the_range(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli

    image_folder(tmp_path / "in", 2)
    prior = _prior(tmp_path, max_timestep=299)
    with pytest.raises(JobError, match=r"trained only on timesteps 0\.\.299.*start at t = 950"):
        plan_job(small_job_config(tmp_path, prior, steps=20, start=1.0), dry_run=True)
    plan = plan_job(small_job_config(tmp_path, prior, steps=20, start=0.1), dry_run=True)
    assert plan.job_record["settings"]["start"] == 0.1
    assert "starts at t =" not in capsys.readouterr().err  # given: nothing to say
    # --recipe low-asr sets start 0.3 (t = 300 at its 50 steps): given, so refused, not moved into the range
    assert cli.main(small_job_argv(tmp_path, prior, "--recipe", "low-asr", "--steps", "50", "--dry-run")) == 2
    err = capsys.readouterr().err
    # the advice fits a recipe's start too: leaving --start out alone would not leave it out
    assert "start at t = 300" in err and "which also replaces a recipe's start" in err, err
    assert "and the recipes that set one: fast, low-asr" in err, err
    # a --config file without start is the prior's range; one with start gives it
    config = tmp_path / "job.yaml"
    config.write_text("steps: 20\n")
    assert cli.main([*small_job_argv(tmp_path, prior, "--dry-run"), "--config", str(config), "--steps", "20"]) == 0
    assert "start=0.25" in capsys.readouterr().out
    config.write_text("start: 0.2\n")
    assert cli.main([*small_job_argv(tmp_path, prior, "--dry-run"), "--config", str(config), "--steps", "20"]) == 0
    out, err = capsys.readouterr()
    assert "start=0.2," in out and "starts at t =" not in err
    # start: null beside a recipe leaves it to the prior, as the recipe note says
    config.write_text("recipe: fast\nstart: null\n")
    assert cli.main([*small_job_argv(tmp_path, prior, "--dry-run"), "--config", str(config), "--steps", "20"]) == 0
    out, err = capsys.readouterr()
    assert "start=0.25" in out and "start unset (the prior's range)" in err and "not the recipe's 0.3" in err


def test_an_output_of_the_start_given_by_hand_goes_on_without_it(tmp_path: Path) -> None:
    """An output made before this change with the start train_prior.py advised (--start 0.299 for --max-timestep 299)
    runs the same steps as the start a run without the flag now resolves (0.25): not refused as other settings."""
    from pipeline import cli

    image_folder(tmp_path / "in", 2)
    prior = _prior(tmp_path, max_timestep=299)
    assert cli.main(small_job_argv(tmp_path, prior, "--steps", "20", "--start", "0.299")) == 0
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text())["settings"]["start"] == 0.299
    assert plan_job(small_job_config(tmp_path, prior, steps=20, incremental=True), dry_run=True).output_state == "incremental"
    # a start that runs other steps is other settings
    with pytest.raises(JobError, match=r"start 0\.299 \(now 0\.1\)"):
        plan_job(small_job_config(tmp_path, prior, steps=20, start=0.1, incremental=True), dry_run=True)


# --- jobs/evaluate.py ------------------------------------------------------------------------------------------------

def _eval_config(tmp_path: Path, checkpoint: str, **kw: Any) -> Any:
    from pipeline.evaluation import runner

    return runner.EvalConfig("cifar10", attacks=["badnet"], defenses=["none", "zip"], checkpoint=checkpoint,
                             subset=10, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **kw)


def test_the_evaluation_starts_a_prior_of_max_timestep_within_its_range(tmp_path: Path) -> None:
    from pipeline.evaluation.defenses import make_defense, zip_overrides
    from pipeline.evaluation.preflight import EvaluationError, preflight

    prior = _prior(tmp_path, max_timestep=299)
    config = _eval_config(tmp_path, prior)
    checked = preflight(config, loader=lambda name, split: None)  # before: refused, "use start ≤ 0.299"
    assert checked.start == 0.25 and checked.settings["start"] == 0.25
    assert "starts at t = 250" in (checked.start_note or "") and "give --start" in checked.start_note
    defense = make_defense("zip", checkpoint=prior, checkpoint_sha256=checked.checkpoint_sha256,
                           zip_overrides=zip_overrides(config, checked.schedule, checked.start))
    assert defense.settings["zip"]["start"] == 0.25  # the purified sets' cache key
    with pytest.raises(EvaluationError, match=r"trained only on timesteps 0\.\.299"):
        preflight(_eval_config(tmp_path, prior, start=1.0), loader=lambda name, split: None)
    given = preflight(_eval_config(tmp_path, prior, start=0.1), loader=lambda name, split: None)
    assert given.start == 0.1 and given.start_note is None


def test_an_evaluation_says_the_start_it_resolved_before_its_work(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.evaluation import runner

    class Loaded(Exception):
        """The data set's load: where this test stops the run, after the checks and the note."""

    def loader(name: str, split: str) -> None:
        raise Loaded

    with pytest.raises(Loaded):
        runner.evaluate_dataset(_eval_config(tmp_path, _prior(tmp_path, max_timestep=299)), loader=loader)
    err = capsys.readouterr().err
    assert err.count("starts at t = 250") == 1 and "] note: " in err, err


def test_evaluate_py_leaves_start_to_the_prior_unless_given() -> None:
    job = load_job_script("evaluate.py", "evaluate_prior_defaults")
    assert job.make_config(job.parse_args([]), "cifar10").start is None
    assert job.make_config(job.parse_args(["--start", "0.3"]), "cifar10").start == 0.3
