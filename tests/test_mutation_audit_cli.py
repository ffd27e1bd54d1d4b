"""Mutation audit of pipeline/cli.py: --config files as YAML reads them, errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import config_from_args, main
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

def test_a_bad_port_in_the_input_is_not_blamed_on_the_config_files_recipe(tmp_path: Path, capsys) -> None:
    # a ValueError made while the options became a JobConfig was said as the file's recipe's, of a file with none
    path = tmp_path / "job.yaml"
    path.write_text("steps: 10\n")
    argv = ["--input", "hdfs://namenode:80a0/in", "--output", str(tmp_path / "out"), "--dry-run"]
    assert main(argv) == 2
    alone = capsys.readouterr().err
    assert main(["--config", str(path), *argv]) == 2
    with_file = capsys.readouterr().err
    assert "80a0" in with_file and "recipe" not in with_file, with_file
    assert with_file == alone

