"""docs/api.md's claims, checked one by one against the calls (Dec 5 audit): those a script or a notebook relies on
that no other test held. No Ray is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.plan import plan_job
from tests.jobutil import png_inputs, tiny_model_file


@pytest.mark.parametrize("precision", [["fp16"], {"fp16": True}])
def test_a_precision_of_the_wrong_type_is_a_job_error_as_for_any_bad_option(tmp_path: Path, precision) -> None:
    """plan_job raises JobError for a bad option; a list or a dict as the precision raised TypeError ("unhashable type:
    'list'"), naming neither the option nor its values (a list from a grid of settings, say)."""
    png_inputs(tmp_path / "in", 1)
    config = JobConfig(input=tmp_path / "in", output=tmp_path / "out", checkpoint=tiny_model_file(tmp_path),
                       precision=precision)
    with pytest.raises(JobError, match=r"--precision must be one of fp32, fp16, bf16, got "):
        plan_job(config, dry_run=True)
