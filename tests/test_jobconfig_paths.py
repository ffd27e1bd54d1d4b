"""JobConfig takes pathlib.Path for its locations, as the API docs say. Before, JobConfig(input=Path(...)) was refused
with the self-contradicting "--input must be a path or URI, got PosixPath(...)"."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.presets import shipped_prior_path

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "sample"


def test_paths_are_taken_as_the_text_the_cli_gives(tmp_path: Path) -> None:
    config = JobConfig(input=SAMPLE, output=tmp_path / "out", checkpoint=shipped_prior_path("cifar10"))
    assert (config.input, config.output) == (str(SAMPLE), str(tmp_path / "out"))
    assert config.checkpoint == str(shipped_prior_path("cifar10"))
    plan = plan_job(config, dry_run=True)
    assert plan.output_state == "new" and plan.describe()["input"]["tar_shards"] == 2
    assert JobConfig(**config.__dict__) == config


def test_what_is_neither_text_nor_a_path_is_still_refused() -> None:
    with pytest.raises(JobError, match="--input must be a path or URI, got 7"):
        plan_job(JobConfig(input=7, output="out"), dry_run=True)


def test_run_job_refuses_an_output_of_the_wrong_type_as_plan_job_does(tmp_path: Path) -> None:
    # run_job read config.output before its checks: JobConfig(output=None) raised "'NoneType' object has no attribute
    # 'rstrip'" where plan_job names the option
    with pytest.raises(JobError, match="--output must be a path or URI, got None"):
        run_job(JobConfig(input=str(SAMPLE), output=None))


@pytest.mark.parametrize("call", [run_job, lambda config: plan_job(config, dry_run=True)])
@pytest.mark.parametrize("config, said", [({"input": str(SAMPLE), "output": "out"}, r"JobConfig\(\*\*fields\).*got dict"),
                                          (str(SAMPLE), "got str"), (None, "got NoneType")])
def test_a_config_that_is_no_jobconfig_is_a_type_error_saying_what_to_pass(tmp_path: Path, monkeypatch, call, config,
                                                                           said: str) -> None:
    # a dict of the job's fields raised "'dict' object has no attribute 'output'" (run_job) or "... 'check'" (plan_job)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=f"config must be a pipeline.config.JobConfig.*{said}"):
        call(config)
    assert list(tmp_path.iterdir()) == []


def test_storage_options_none_is_no_options_as_the_other_api_calls_take_it(tmp_path: Path) -> None:
    # export_images(storage_options=None) and Purifier.from_checkpoint(storage_options=None) are "no options"; the
    # same None in a JobConfig stopped plan_job with "storage_options must be a mapping of fsspec options, got NoneType"
    config = JobConfig(input=SAMPLE, output=tmp_path / "out", storage_options=None)
    assert config == JobConfig(input=SAMPLE, output=tmp_path / "out")
    assert plan_job(config, dry_run=True).output_state == "new"


def test_numpy_scalars_are_taken_as_the_numbers_they_are(tmp_path: Path) -> None:
    # ZipSettings takes numpy's scalars (a grid of settings); JobConfig refused tile_batch=np.int64(64) as "must be a
    # whole number of at least 1, got np.int64(64)", and a numpy value that passed would have reached the summary's JSON
    import json

    import numpy as np

    config = JobConfig(input=SAMPLE, output=tmp_path / "out", tile_batch=np.int64(64), write_batch=np.int32(8),
                       canvas_size=np.int64(32), actors=np.int64(1), cpus_per_task=np.float32(0.5),
                       max_pixels=np.int64(10**6), steps=np.int64(2), eta=np.float32(0.5), overwrite=np.bool_(False))
    assert config == JobConfig(input=SAMPLE, output=tmp_path / "out", tile_batch=64, write_batch=8, canvas_size=32,
                               actors=1, cpus_per_task=0.5, max_pixels=10**6, steps=2, eta=0.5, overwrite=False)
    assert type(config.tile_batch) is int and type(config.eta) is float and type(config.overwrite) is bool
    plan = plan_job(config, dry_run=True)
    json.dumps(plan.describe())
    json.dumps(config.public())


@pytest.mark.parametrize("checkpoint, said", [("missing.pt", "checkpoint not found"),
                                              (str(SAMPLE / "sample-00.tar"), "is not a torch file")])
def test_a_checkpoint_that_cannot_be_used_is_a_job_error_as_plan_job_promises(tmp_path: Path, checkpoint: str,
                                                                               said: str) -> None:
    # plan_job's "every error a run can find before its first image ... is raised here as a JobError": a missing or
    # unusable checkpoint raised CheckpointError, a ValueError only, which a caller catching JobError let through
    with pytest.raises(JobError, match=said) as err:
        plan_job(JobConfig(input=SAMPLE, output=tmp_path / "out", checkpoint=checkpoint), dry_run=True)
    assert isinstance(err.value, ValueError)  # as CheckpointError always was
