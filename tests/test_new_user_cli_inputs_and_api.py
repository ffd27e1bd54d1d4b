"""A new user's review (Dec 3) of the CLI, the inputs, the outputs and the Python API: one strict xfail per bug found,
each asserting what a user depends on. Each test fails on the code of its day; remove its mark with the fix."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, read_output, small_job_config


def _cli(argv: list[str]) -> int:
    from pipeline.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _non_utf8_name(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is not UTF-8 (latin-1 'café', as an old zip or a latin-1 disk leaves it); skip where the
    file system refuses such names (macOS, Windows)."""
    try:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(data)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")


# --- outputs: pass-through columns ---

@pytest.mark.usefixtures("ray_local")
def test_a_parquet_inputs_own_id_and_source_columns_reach_the_output(tmp_path, model) -> None:
    # README: "every other column is passed through". Hugging Face data sets often carry their own `id`, web-scraped
    # ones a `source`: the user joins the purified rows back to their metadata by them.
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image": pa.array([image_bytes(8, 8, k) for k in range(2)], pa.binary()),
                             "id": ["img-001", "img-002"], "source": ["laion", "cc3m"], "caption": ["a", "b"]}),
                   tmp_path / "in" / "t.parquet")
    try:
        summary = run_job(small_job_config(tmp_path, model))
    except JobError as err:  # refusing the clash, naming the columns, before any work would do too
        assert "id" in str(err) and "source" in str(err)
        return
    assert summary["status"] == "complete"
    data, _ = read_output(str(tmp_path / "out"))
    assert sorted(data["caption"]) == ["a", "b"]  # an ordinary column is passed through (it is)
    kept = {v for column in data.columns for v in data[column] if isinstance(v, str)}
    assert {"img-001", "img-002", "laion", "cc3m"} <= kept  # ... and so are the input's own id and source


# --- inputs: names that are not UTF-8 ---

@pytest.mark.usefixtures("ray_local")
def test_an_image_file_whose_name_is_not_utf8_does_not_stop_the_run(tmp_path, model) -> None:
    # README: bad inputs are rejects and the job goes on; names are only ever column values. Today the read task
    # fails past its retries, nothing is written, and "run the same command again to resume" fails the same way.
    root = tmp_path / "in"
    root.mkdir()
    (root / "ok.png").write_bytes(image_bytes(8, 8, 1))
    _non_utf8_name(root, b"caf\xe9.png", image_bytes(8, 8, 2))
    summary = run_job(small_job_config(tmp_path, model))
    assert summary["status"] == "complete"
    data, rejects = read_output(str(tmp_path / "out"))
    assert "ok.png" in set(data["id"])
    assert len(data) + len(rejects) == 2  # the odd name is purified or a reject, under some id, once


def test_a_tar_member_whose_name_is_not_utf8_is_read(tmp_path) -> None:
    # GNU tar of a latin-1 disk stores the name's bytes; tarfile reads them with surrogate escapes
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        for name, seed in (("café.png", 1), ("plain.png", 2)):
            data = image_bytes(8, 8, seed)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    (unit,) = discover(str(tmp_path))
    records = [r for r in read_unit(unit) if r["kind"] in ("image", "reject")]
    assert len(records) == 2 and "s.tar/plain" in {r["id"] for r in records}


# --- CLI: checks before any work ---

def test_a_canvas_size_the_model_cannot_take_stops_the_dry_run(tmp_path, capsys) -> None:
    # The shipped prior halves its input twice: canvases must be multiples of 4. --pool 2 --canvas-size 34 passed
    # the dry run (exit 0); the run then failed in the purifier actors (exit 1) after writing _job.json, whose
    # canvas_size 34 then refused the corrected command ("written with other canvas_size").
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    status = _cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--prior", "cifar10",
                   "--pool", "2", "--canvas-size", "34", "--steps", "1", "--no-progress", "--dry-run"])
    assert status == 2
    assert "canvas" in capsys.readouterr().err  # one error: line, before any work


def test_a_checkpoint_flag_wins_over_the_config_files_prior(tmp_path, model, capsys) -> None:
    # README: "flags win over the file". A shared job.yaml names `prior: gtsrb`; one run brings its own checkpoint.
    # Today: exit 2, "give a checkpoint or a shipped prior, not both", naming neither the file nor the key.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    config = tmp_path / "job.yaml"
    config.write_text("prior: gtsrb\nsteps: 1\n")
    status = _cli(["--config", str(config), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                   "--checkpoint", model, "--no-progress", "--dry-run"])
    assert status == 0
    assert f"checkpoint {model}" in capsys.readouterr().out


def test_python_m_pipeline_cli_runs_the_command_line() -> None:
    # The module holding main() is the natural thing to run where the console script is not on PATH (a cluster's
    # image, `ray job submit`). Today it imports, runs nothing, and exits 0: a "dry run" that passed, a run that
    # "completed", with nothing checked or purified.
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert "usage: python -m pipeline.cli" in done.stdout  # named as it was run (its --help hint must work)


# --- resuming: an output's labels ---

@pytest.mark.usefixtures("ray_local")
def test_an_incremental_run_keeps_the_outputs_folder_labels(tmp_path, model) -> None:
    # The first run labelled every row from its folder; the next run forgot the flag. Its rows came back with
    # label null, no warning: a training set with some labels missing. Refusing the mismatch (as for other
    # settings) or labelling as the output was labelled would both do.
    root = tmp_path / "in"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.png").write_bytes(image_bytes(8, 8, 1))
    assert run_job(small_job_config(tmp_path, model, labels_from_folders=True))["status"] == "complete"
    (root / "birds").mkdir()
    (root / "birds" / "b.png").write_bytes(image_bytes(8, 8, 2))
    try:
        run_job(small_job_config(tmp_path, model, incremental=True))
    except JobError as err:
        assert "labels" in str(err)
        return
    data, _ = read_output(str(tmp_path / "out"))
    assert dict(zip(data["id"], data["label"], strict=True)) == {"cats/a.png": "cats", "birds/b.png": "birds"}
