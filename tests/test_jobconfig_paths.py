"""JobConfig takes pathlib.Path for its locations, as the API docs say. Before, JobConfig(input=Path(...)) was refused
with the self-contradicting "--input must be a path or URI, got PosixPath(...)"."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
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
