"""Mutation audit of pipeline/cli.py: --config files as YAML reads them, errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import config_from_args
from pipeline.cli_common import ConfigError


def test_a_config_files_yaml_merge_key_is_read_as_yaml_reads_it(tmp_path: Path) -> None:
    # `<<: *defaults` is YAML's merge key, which PyYAML's safe loader reads; the job's loader (refusing a key given
    # twice) refused the file as "not valid YAML: could not determine a constructor for the tag ...merge"
    path = tmp_path / "job.yaml"
    path.write_text("flags: &small {num_channels: 32, num_res_blocks: 1}\n"
                    "<<: {steps: 7, pool: 2}\n"
                    "steps: 9\n")
    config = config_from_args(["--config", str(path)])
    assert (config.steps, config.pool) == (9, 2)  # the mapping's own key wins over a merged one, as YAML says
    assert config.flags == {"num_channels": 32, "num_res_blocks": 1}


def test_a_key_given_twice_beside_a_merge_key_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("<<: {pool: 2}\nsteps: 7\nsteps: 9\n")
    with pytest.raises(ConfigError, match="key 'steps' is given twice"):
        config_from_args(["--config", str(path)])

