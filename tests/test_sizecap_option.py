"""--max-image-mb as a user meets it: checked like the other options, in --help and --config files, in the dry run's
report, and in a run, where each oversized input (a file, a tar member, a Parquet cell) is one reject and the rest
of its folder, shard or file is purified."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import ConfigError, build_parser, config_from_args, main
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.plan import plan_job
from tests.jobutil import image_bytes, read_output, tar_bytes, tiny_model_file

MiB = 2**20


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8", None])
def test_a_max_image_mb_that_is_not_a_positive_whole_number_is_refused(value) -> None:
    with pytest.raises(JobError, match=rf"--max-image-mb must be a whole number of at least 1, got {value!r}"):
        JobConfig(max_image_mb=value).check()


def test_max_image_mb_on_the_command_line_in_a_config_file_and_in_help(tmp_path, capsys) -> None:
    assert JobConfig().max_image_mb == 512
    assert config_from_args(["--max-image-mb", "64"]).max_image_mb == 64
    (tmp_path / "job.yaml").write_text("max-image-mb: 8\n")
    assert config_from_args(["--config", str(tmp_path / "job.yaml")]).max_image_mb == 8
    assert config_from_args(["--config", str(tmp_path / "job.yaml"), "--max-image-mb", "16"]).max_image_mb == 16
    (tmp_path / "bad.yaml").write_text('max_image_mb: "8"\n')
    with pytest.raises(ConfigError, match=r"--max-image-mb must be a whole number .*set in --config .*bad.yaml: "
                                          r"max_image_mb; read as text: write the number without quotes"):
        config_from_args(["--config", str(tmp_path / "bad.yaml")])
    assert main(["--max-image-mb", "0", "--dry-run", "--output", str(tmp_path / "out")]) == 2
    assert "error: --max-image-mb must be a whole number of at least 1, got 0" in capsys.readouterr().err
    help_text = " ".join(build_parser().format_help().split())
    assert ("--max-image-mb MB an image file, tar or zip member or Parquet image cell over this many MiB is a reject"
            in help_text)
    assert "(default 512: room for any image within the default --max-pixels" in help_text


def test_the_dry_run_counts_the_image_files_over_the_limit(tmp_path, capsys) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for name, size in (("a.png", MiB), ("b.png", MiB + 1), ("c.png", 5 * MiB)):
        with open(root / name, "wb") as f:
            f.truncate(size)
    assert main(["--input", str(root), "--output", str(tmp_path / "out"), "--max-image-mb", "1", "--dry-run"]) == 0
    assert ("  2 image files are over --max-image-mb 1 and will be rejected without being read (tar members and "
            "Parquet cells are checked when read)\n") in capsys.readouterr().out
    plan = plan_job(JobConfig(input=str(root), output=str(tmp_path / "out"), max_image_mb=5), dry_run=True).describe()
    assert (plan["input"]["image_files_over_max_image_mb"], plan["input"]["max_image_mb"]) == (0, 5)


@pytest.mark.usefixtures("ray_local")
def test_a_run_rejects_each_oversized_input_and_purifies_the_rest(tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "ok.png").write_bytes(image_bytes(16, 16, 0))
    (root / "huge.jpg").write_bytes(os.urandom(2 * MiB))  # garbage: read, it would be a decode reject instead
    (root / "s.tar").write_bytes(tar_bytes({"a.png": image_bytes(16, 16, 1), "a.cls": b"1", "big.png": b"\0" * 2 * MiB,
                                            "b.png": image_bytes(16, 16, 2)}))
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 3), b"\0" * 2 * MiB]}), root / "t.parquet")
    config = JobConfig(input=str(root), output=str(tmp_path / "out"), checkpoint=tiny_model_file(tmp_path), steps=2,
                       progress=False, max_image_mb=1, in_memory_mb=0)
    summary = run_job(config)
    data, rejects = read_output(str(tmp_path / "out"))
    assert summary["status"] == "complete" and summary["config"]["max_image_mb"] == 1
    assert (summary["this_run"]["read"], summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (7, 4, 3)
    assert sorted(data["id"]) == ["ok.png", "s.tar/a", "s.tar/b", "t.parquet#0"]
    reasons = dict(zip(rejects["id"], rejects["error"], strict=True))
    assert sorted(reasons) == ["huge.jpg", "s.tar/big", "t.parquet#1"]
    assert reasons["huge.jpg"].startswith("image file is 2.0 MiB (2,097,152 bytes), over --max-image-mb 1, so it was "
                                          "not read")
    assert reasons["s.tar/big"].startswith("tar member big.png is 2.0 MiB")
    assert reasons["t.parquet#1"].startswith("row 1: image column 'image' is 2.0 MiB")
    assert set(rejects["stage"]) == {"read"} and rejects["source_sha256"].isna().all()

