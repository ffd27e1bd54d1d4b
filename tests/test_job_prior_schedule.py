"""The purify job samples with the noise schedule its prior records (jobs/train_prior.py --schedule), as evaluate.py
does. Before, a prior trained with --schedule cosine was refused unless --schedule cosine was given by hand, though the
prior said which schedule it needed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import save_bundle
from pipeline.errors import JobError
from pipeline.model import UNetConfig, build_unet
from pipeline.output import JOB_FILE, SUMMARY_FILE
from pipeline.plan import plan_job
from tests.jobutil import TINY_FLAGS, image_folder, small_job_argv, small_job_config


def _prior(folder: Path, **meta: object) -> str:
    """A tiny prior whose meta records `meta`, as train_prior.py's prior.pt records its schedule."""
    torch.manual_seed(0)
    path = folder / "prior.pt"
    save_bundle(path, build_unet(UNetConfig.from_flags(TINY_FLAGS)), meta=dict(meta))
    return str(path)


def test_the_job_samples_with_the_schedule_the_prior_records(tmp_path: Path) -> None:
    image_folder(tmp_path / "in", 2)
    plan = plan_job(small_job_config(tmp_path, _prior(tmp_path, schedule="cosine")), dry_run=True)
    assert plan.job_record["settings"]["schedule"] == "cosine"


def test_a_prior_that_records_no_schedule_samples_with_linear(tmp_path: Path, model: str) -> None:
    image_folder(tmp_path / "in", 2)
    assert plan_job(small_job_config(tmp_path, model), dry_run=True).job_record["settings"]["schedule"] == "linear"


def test_a_schedule_given_against_the_prior_is_refused_saying_how(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli

    image_folder(tmp_path / "in", 2)
    prior = _prior(tmp_path, schedule="cosine")
    with pytest.raises(JobError, match=r"trained with the cosine noise schedule, but --schedule linear was given: .*"
                                       r"leave --schedule out \(the prior's own is used\) or give --schedule cosine"):
        plan_job(small_job_config(tmp_path, prior, schedule="linear"), dry_run=True)
    # the same on the command line, and the flag that agrees is taken
    assert cli.main(small_job_argv(tmp_path, prior, "--schedule", "linear", "--dry-run")) == 2
    assert "leave --schedule out" in capsys.readouterr().err
    assert cli.main(small_job_argv(tmp_path, prior, "--schedule", "cosine", "--dry-run")) == 0


@pytest.mark.parametrize("given", [{"schedule": "cosine"}, {}])
def test_an_output_written_with_the_schedule_given_by_hand_goes_on_without_it(tmp_path: Path,
                                                                               given: dict[str, str]) -> None:
    """An output made before this change by `--schedule cosine` (the only way a cosine prior ran) records cosine,
    the schedule a run without the flag now resolves: its --incremental run is not refused as other settings."""
    image_folder(tmp_path / "in", 2)
    prior = _prior(tmp_path, schedule="cosine")
    record = plan_job(small_job_config(tmp_path, prior, schedule="cosine"), dry_run=True).job_record
    out = tmp_path / "out"
    out.mkdir()
    (out / JOB_FILE).write_text(json.dumps(record))
    (out / SUMMARY_FILE).write_text(json.dumps({"status": "complete"}))
    plan = plan_job(small_job_config(tmp_path, prior, incremental=True, **given), dry_run=True)
    assert plan.output_state == "incremental"


def test_an_output_whose_record_predates_the_schedule_field_still_compares_equal(tmp_path: Path, model: str) -> None:
    """A linear prior's output from a version that recorded no schedule: the field's default, linear, is what it did."""
    image_folder(tmp_path / "in", 2)
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record
    del record["settings"]["schedule"]
    out = tmp_path / "out"
    out.mkdir()
    (out / JOB_FILE).write_text(json.dumps(record))
    (out / SUMMARY_FILE).write_text(json.dumps({"status": "complete"}))
    assert plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).output_state == "incremental"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_run_with_a_cosine_prior_and_no_flag_purifies_with_it(tmp_path: Path) -> None:
    """The actors sample with the resolved schedule too: given linear, the purifier refuses the cosine prior."""
    from pipeline.job import run_job

    image_folder(tmp_path / "in", 2)
    summary = run_job(small_job_config(tmp_path, _prior(tmp_path, schedule="cosine")))
    assert (summary["status"], summary["this_run"]["purified"]) == ("complete", 2), summary
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text())["settings"]["schedule"] == "cosine"
