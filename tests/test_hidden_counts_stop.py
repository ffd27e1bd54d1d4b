"""Hidden inputs (names starting with '.' or '_') are counted the same whichever way a run ends, and only the user's.

1. A stopped run (Ctrl-C, SIGTERM, a failure) wrote a summary without `hidden_skipped`: a run over a mislabelled
   `_train/` stopped early said nothing of it, where a finished one names it.
2. An output inside its input (`--input X --output X/out`): a second run counted the output's own `_summary.json` and
   `_job.json` as hidden inputs skipped ("2 hidden entries ... skipped, not read: out/_job.json, out/_summary.json").

No Ray here: the stopped run stops as it starts, or on a stand-in pipeline's first row; the plan is the dry run's.
"""

from __future__ import annotations

import json
import signal
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

import pipeline.job as job
from pipeline.cli import main
from pipeline.config import JobConfig
from pipeline.errors import JobInterrupted
from pipeline.output import JOB_FILE, SUMMARY_FILE, write_json
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from pipeline.stages import _data_table, batch_of, write_parquet_atomic, write_stage
from tests.jobutil import image_bytes


def _inputs(root: Path) -> None:
    (root / "_train").mkdir(parents=True)
    for i in range(2):
        (root / f"{i}.png").write_bytes(image_bytes(16, 16, i))
        (root / "_train" / f"{i}.png").write_bytes(image_bytes(16, 16, 10 + i))


def _args(root: Path, out: Path, model: str, *more: str) -> list[str]:
    return ["--input", str(root), "--output", str(out), "--checkpoint", model, "--steps", "1", "--canvas-size", "32",
            "--no-progress", *more]


@pytest.fixture
def no_cluster(monkeypatch) -> None:
    """run_job without starting Ray: the run is stopped before its pipeline would need it."""
    monkeypatch.setattr(job, "init_ray", lambda config: None)
    monkeypatch.setattr(job, "default_actors_and_gpus", lambda config: (1, 0.0, "cpu"))


@pytest.mark.usefixtures("no_cluster")
def test_a_stopped_run_counts_the_hidden_files_its_listing_skipped(tmp_path, model, monkeypatch, capsys) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _inputs(root)

    def ctrl_c(*args, **kwargs) -> None:  # Ctrl-C as the run starts, inside the part that records a stop
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "remove_stale_temporaries", ctrl_c)
    assert main(_args(root, out, model)) == 128 + signal.SIGINT
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["status"] == "interrupted"
    run = summary["this_run"]
    assert (run["hidden_skipped"], run["hidden_skipped_examples"]) == (2, ["_train/0.png", "_train/1.png"])
    # and the one line a stopped run prints says it, as a finished run's own line does
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("interrupted:")]
    assert "2 hidden entries (names starting with . or _) skipped, not read: _train/0.png, _train/1.png" in line
    assert "run the same command again to resume" in line


@pytest.mark.usefixtures("no_cluster")
def test_a_stopped_run_counts_the_hidden_zip_members_of_the_tasks_that_reported(tmp_path, model, monkeypatch) -> None:
    import ray.data

    root, out = tmp_path / "in", tmp_path / "out"
    _inputs(root)
    with zipfile.ZipFile(root / "d.zip", "w") as archive:
        archive.writestr("__MACOSX/._a.png", b"x")
        archive.writestr("a.png", image_bytes(16, 16, 7))
    # the zip's read task's count record, as the write stage hands it on to the driver: 1 read, 1 hidden member
    [unit] = [u for u in discover(str(root)) if u.kind == "zip"]
    count = [r for r in read_unit(unit) if r["kind"] == "count"]
    manifest = write_stage(batch_of(count), str(tmp_path / "elsewhere"), {})

    class Pipeline:  # Ray Data's dataset, standing in: its first manifest row, then Ctrl-C
        _logical_plan = SimpleNamespace(dag=SimpleNamespace(ray_remote_args={}))  # as job.canvases_a_batch_a_block sets

        def map_batches(self, *args, **kwargs) -> Pipeline:
            return self

        def repartition(self, *args, **kwargs) -> Pipeline:
            return self

        def iter_batches(self, **kwargs):  # as the driver asks for the written batches' rows (job.written_batches)
            yield pa.table(manifest)
            raise KeyboardInterrupt

    monkeypatch.setattr(ray.data, "from_items", lambda *args, **kwargs: Pipeline())
    with pytest.raises(JobInterrupted) as stopped:
        job.run_job(JobConfig(input=str(root), output=str(out), checkpoint=model, steps=1, canvas_size=32,
                              progress=False))
    run = json.loads((out / SUMMARY_FILE).read_text())["this_run"]
    assert run["hidden_skipped"] == 3  # the listing's two, then the zip member counted before the stop
    assert run["hidden_skipped_examples"] == ["_train/0.png", "_train/1.png", "d.zip/__MACOSX/._a.png"]
    assert "3 hidden entries" in str(stopped.value)


def _output_left_inside(config: JobConfig, out: Path) -> None:
    """The files a stopped run leaves in its output besides part files: its record, summary, the record of containers
    read, temporaries (a killed write's, under the hidden names readers skip)."""
    write_json(f"{out}/{JOB_FILE}", plan_job(config, dry_run=True).job_record, {})
    write_json(f"{out}/{SUMMARY_FILE}", {"status": "interrupted"}, {})
    (out / "_containers").mkdir()
    (out / "_containers" / "containers.json").write_text("{}")
    (out / ".tmp-0a1b-_summary.json").write_text("{")
    (out / "data").mkdir()
    (out / "data" / ".tmp-0a1b-part-x.parquet").write_bytes(b"PAR1")


def test_the_output_s_own_files_inside_the_input_are_not_hidden_inputs(tmp_path, model, capsys) -> None:
    root = tmp_path / "in"
    _inputs(root)
    out = root / "out"
    config = JobConfig(input=str(root), output=str(out), checkpoint=model, steps=1, canvas_size=32, progress=False)
    _output_left_inside(config, out)
    plan = plan_job(config, dry_run=True)
    assert plan.output_state == "resume"
    report = plan.describe()["input"]
    # the user's _train/ only; it counted 6, naming out/.tmp-0a1b-_summary.json, out/_containers/containers.json, ...
    assert (report["hidden_files_skipped"], report["hidden_files_examples"]) == (2, ["_train/0.png", "_train/1.png"])
    assert report["image_files_to_read"] == 2
    assert main(_args(root, out, model, "--dry-run")) == 0
    said = capsys.readouterr().out
    assert "2 hidden entries (names starting with . or _) skipped, not read: _train/0.png, _train/1.png" in said
    assert "out/" not in said.split("hidden entries")[1].splitlines()[0]


@pytest.mark.parametrize("folder", ["_out", "."])
def test_a_hidden_output_folder_or_the_input_folder_itself_counts_only_the_user_s_hidden_files(
        tmp_path, model, folder) -> None:
    # '_out': the whole output is hidden to the listing (its part files too); '.': the output is the input folder, so
    # only the job's own names are left out, never the user's _train/ beside them
    root = tmp_path / "in"
    _inputs(root)
    out = (root / folder).resolve()
    out.mkdir(exist_ok=True)
    config = JobConfig(input=str(root), output=str(out), checkpoint=model, steps=1, canvas_size=32, progress=False)
    _output_left_inside(config, out)
    rows = [{"id": "0.png", "png": b"\x89PNG", "width": 1, "height": 1, "meta": {}, "source": "0.png",
             "source_sha256": "0"}]
    write_parquet_atomic(_data_table(rows), f"{out}/data/part-0.parquet", {})  # as an earlier run wrote it
    plan = plan_job(config, dry_run=True)
    assert plan.output_state == "resume" and plan.skipped_files == 1
    report = plan.describe()["input"]
    assert (report["hidden_files_skipped"], report["hidden_files_examples"]) == (2, ["_train/0.png", "_train/1.png"])
