"""How the job's options combine: a resumed, --incremental or --retry-rejects run against the output's record (an
option that changes purified pixels must match, one that does not must not be refused), recipes with flags, and
--config files with flags. Each test fails on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import config_from_args, main
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from tests.jobutil import image_bytes


@pytest.fixture
def folders(tmp_path) -> list[str]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]


def _output_written_with(argv: list[str]) -> None:
    """An output whose record is the one `argv`'s run writes, holding one row (so its settings hold)."""
    config = config_from_args(argv)
    record = plan_job(config, dry_run=True).job_record
    Path(config.output, "data").mkdir(parents=True)
    Path(config.output, JOB_FILE).write_text(json.dumps(record))
    pq.write_table(pa.table({"id": ["earlier.png"]}), Path(config.output, "data", "part-00000.parquet"))


def test_a_larger_max_pixels_retries_the_images_it_rejected(folders, model, capsys) -> None:
    # --max-pixels decides only which images are rejects ("image too large ... exceeds max_pixels"), never a purified
    # image's pixels; yet an output recorded it with the decoding options, so the command that reads those rejects
    # again with a larger limit (--retry-rejects --max-pixels ...) was refused as "written with other decoding".
    base = [*folders, "--checkpoint", model, "--steps", "1", "--no-progress"]
    _output_written_with([*base, "--max-pixels", "50"])
    assert main([*base, "--max-pixels", "100", "--retry-rejects", "--dry-run"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out
    assert main([*base, "--dry-run"]) == 0, capsys.readouterr().err  # the default limit, as a scheduled run gives it
    capsys.readouterr()
    # the decoding options that do change pixels are still compared
    assert main([*base, "--max-pixels", "50", "--alpha", "black", "--dry-run"]) == 2
    assert "other decoding: alpha 'white' (now 'black')" in capsys.readouterr().err


@pytest.mark.parametrize("file_key, flags, named", [
    ("input", ["--refresh-changed", "--input-moved"], "--input-moved"),
    ("checkpoint", ["--checkpoint-sha256", "abc"], "--checkpoint-sha256"),
])
def test_a_flags_error_is_not_put_on_a_config_key_whose_flag_it_only_begins_with(tmp_path, folders, model, capsys,
                                                                                 file_key, flags, named) -> None:
    # An error about --input-moved (or --checkpoint-sha256), both given on the command line, ended "(set in --config
    # job.yaml: input)": the file's key was matched as text inside the longer flag's name, sending the user to a
    # file that holds nothing wrong.
    value = folders[1] if file_key == "input" else model
    path = tmp_path / "job.yaml"
    path.write_text(f"{file_key}: {value}\n")
    assert main(["--config", str(path), "--output", folders[3], *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert named in err and "set in --config" not in err, err
    # a key the error is about is still named
    path.write_text("eta: 2.0\n")
    assert main(["--config", str(path), *folders, "--dry-run"]) == 2
    assert "(set in --config" in capsys.readouterr().err
