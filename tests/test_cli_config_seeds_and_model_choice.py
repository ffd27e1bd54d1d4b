"""The Dec 3 review's CLI and API findings, beyond its strict xfails: a --config file's operators (a YAML list, and
"gray, pool" against "gray,pool" when an output's recorded settings are compared), seeds outside the range the noise
generators take, and the model chosen by both a file and a flag. Each test fails on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ZipSettings
from pipeline.cli import config_from_args, main
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from tests.jobutil import image_bytes


@pytest.fixture
def folders(tmp_path) -> list[str]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- operators ---

def test_a_config_files_operators_list_is_the_same_setting_as_the_flags_text(tmp_path, capsys) -> None:
    # `operators: [gray, pool]` went through as a Python list (README: wrong-typed values are refused), recorded as
    # a list, so an output it wrote refused the same operators given as --operators gray,pool.
    config = config_from_args(["--config", _yaml(tmp_path, "operators: [gray, pool]\n")])
    assert config.operators == "gray,pool"
    assert config.settings().to_dict() == config_from_args(["--operators", "gray,pool"]).settings().to_dict()
    # a list that is not of operator names is refused, naming the file and the key
    path = _yaml(tmp_path, "operators: [gray, 4]\n")
    assert main(["--config", path, "--dry-run", "--output", str(tmp_path / "out")]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and path in err[0] and "operators must be text or a list of operator names" in err[0], err


def test_operators_spelt_with_spaces_resume_an_output_written_without(folders, model, capsys) -> None:
    # Same operators, other spelling: a scheduled run's "gray, pool" and the first run's "gray,pool" were refused as
    # "written with other settings" (the record compares the text).
    first = config_from_args([*folders, "--checkpoint", model, "--steps", "1", "--operators", "gray,pool"])
    plan = plan_job(first, dry_run=True)
    Path(first.output, "data").mkdir(parents=True)
    Path(first.output, JOB_FILE).write_text(json.dumps(plan.job_record))
    # a row written under those settings: an output with none may take a new run's settings, this one may not
    pq.write_table(pa.table({"id": ["earlier.png"]}), Path(first.output, "data", "part-00000.parquet"))
    assert main([*folders, "--checkpoint", model, "--steps", "1", "--operators", " gray, pool ", "--dry-run",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out


def test_zip_settings_spell_operators_one_way_and_keep_the_order_that_matters() -> None:
    assert ZipSettings(operators="gray, pool") == ZipSettings(operators="gray,pool")
    assert ZipSettings(operators=["gray", "pool"]).to_dict()["operators"] == "gray,pool"
    assert ZipSettings(operators=" pool + gray ,pool,").operators == "gray+pool,pool"  # one operator, two names
    # the first two sum the same to the bit either way (0 + a + b), so they are one setting: "pool,gray" is "gray,pool"
    assert ZipSettings(operators="pool,gray").operators == "gray,pool"
    # from the third on the order is kept: a longer sum's rounding depends on it
    assert ZipSettings(operators="pool,gray,gray+pool").operators == "gray,pool,gray+pool"
    assert ZipSettings(operators="gray,gray+pool,pool").operators == "gray,gray+pool,pool"
    with pytest.raises(ValueError, match="operators must be text"):
        ZipSettings(operators=5)


# --- seeds ---



@pytest.mark.parametrize("seed", [2**64, 2**32, -1])
def test_a_seed_out_of_range_is_refused_naming_the_seed_and_the_range(purifier, seed) -> None:
    # 2**64 stopped torch with "Overflow when unpacking long long"; 2**32 and -1 drew the noise of 0 and 2**32 - 1
    # (a CPU generator reads a seed's low 32 bits; the job seeds canvases from seed & 0xFFFFFFFF)
    images = [np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]"):
        purifier(images, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]"):
        ZipSettings(seed=seed)
    if seed == -1:  # numpy's integers are ints to a user, and checked as such
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]"):
            purifier(images, seed=np.int64(seed))
    assert len(purifier(images, seed=2**32 - 1)) == 1  # the range's top is accepted


def test_a_seed_flag_out_of_range_stops_the_dry_run(folders, capsys) -> None:
    # --seed 18446744073709551616 passed the dry run (exit 0); the run then failed in the purifier actors (exit 1),
    # after writing _job.json, with torch's "Overflow when unpacking long long"
    assert main([*folders, "--prior", "cifar10", "--seed", "18446744073709551616", "--dry-run", "--no-progress"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: --seed: seed must be an integer in [0, 4294967295]"), err


# --- the model: a checkpoint or a shipped prior, from a file or a flag ---

def test_a_prior_flag_wins_over_the_config_files_checkpoint(tmp_path, folders, model, capsys) -> None:
    path = _yaml(tmp_path, f"checkpoint: {model}\nsteps: 1\n")
    assert main(["--config", path, *folders, "--prior", "gtsrb", "--dry-run", "--no-progress"]) == 0
    assert "gtsrb prior" in capsys.readouterr().out


def test_a_checkpoint_and_a_prior_both_in_the_file_or_both_as_flags_say_where(tmp_path, folders, model,
                                                                               capsys) -> None:
    path = _yaml(tmp_path, f"checkpoint: {model}\nprior: gtsrb\n")
    assert main(["--config", path, *folders, "--dry-run"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and f"--config {path} gives both checkpoint" in err[0] and "not both" in err[0], err
    assert main([*folders, "--checkpoint", model, "--prior", "gtsrb", "--dry-run"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "--checkpoint" in err[0] and "--prior" in err[0] and "command line" in err[0], err


@pytest.mark.parametrize("recorded", ["gray, pool", ["gray", "pool"]])
def test_an_output_recorded_by_an_older_version_with_other_operator_spelling_is_resumed(folders, model, capsys,
                                                                                         recorded) -> None:
    # Versions before one spelling per setting recorded the operators as given; the command that wrote such an output
    # must still resume it, not be refused as "written with other settings" ('gray, pool' (now 'gray,pool')).
    first = config_from_args([*folders, "--checkpoint", model, "--steps", "1", "--operators", "gray,pool"])
    record = plan_job(first, dry_run=True).job_record
    record["settings"]["operators"] = recorded
    Path(first.output, "data").mkdir(parents=True)
    Path(first.output, JOB_FILE).write_text(json.dumps(record))
    pq.write_table(pa.table({"id": ["earlier.png"]}), Path(first.output, "data", "part-00000.parquet"))
    assert main([*folders, "--checkpoint", model, "--steps", "1", "--operators", "gray, pool", "--dry-run",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out
