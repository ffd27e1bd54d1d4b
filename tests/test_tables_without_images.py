"""A Parquet or Arrow IPC file among the inputs with no image column (img2dataset's `00000.parquet` beside its shard
folder, any sample index or labels table): one reject that says it is a table without images and how to add its
columns to the images' rows, a warning of the dry run naming it, and one record in the run's progress total, not its
rows. Read again unchanged it can only be that reject again: a scheduled --incremental run skips it unread (and, with
nothing else new, starts no Ray), where a table whose read broke off on a storage error is read again."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.job import progress_total, run_job
from pipeline.ledger import LEDGER_DIR
from pipeline.plan import plan_job
from pipeline.sources import discover, ids_digest, read_unit
from tests.jobutil import image_bytes, read_output, small_job_argv, small_job_config

INDEX = pa.table({"url": ["http://x/0.jpg", "http://x/1.jpg", "http://x/2.jpg"], "key": ["000000", "000001", "000002"],
                  "caption": ["a", "b", "c"], "status": ["success"] * 3})


def _inputs(root) -> None:
    (root / "00000").mkdir(parents=True)
    (root / "00000" / "000000.jpg").write_bytes(image_bytes(8, 8, 0, "JPEG"))
    pq.write_table(INDEX, root / "00000.parquet")
    feather.write_feather(INDEX, str(root / "index.arrow"))


def test_a_table_without_images_is_one_reject_saying_what_it_is_and_how_to_use_it(tmp_path) -> None:
    _inputs(tmp_path)
    records = {r["id"]: r for unit in discover(str(tmp_path)) for r in read_unit(unit) if r["kind"] == "reject"}
    assert sorted(records) == ["00000.parquet#unreadable", "index.arrow#unreadable"]
    said = records["00000.parquet#unreadable"]["error"]
    assert said.startswith("Parquet file with no image column (struct<bytes, path> or binary, or pixel arrays named "
                           "image, img, image_bytes, bytes, jpg, png) among Parquet columns ['url', 'key', 'caption', "
                           "'status']: a table without images, not read (a sample index or labels, such as "
                           "img2dataset's 00000.parquet beside its 00000/ folder")
    assert "write them as a metadata.csv or metadata.jsonl beside the images, with a file_name column" in said
    assert "unreadable" not in said  # it was read: it holds no images
    assert records["index.arrow#unreadable"]["error"].startswith("Arrow IPC file with no image column")


def test_the_dry_run_warns_of_tables_without_images_and_the_progress_total_counts_each_once(tmp_path, model,
                                                                                             capsys) -> None:
    _inputs(tmp_path / "in")
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--dry-run")) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("warning: 2 Parquet / Arrow IPC files without an image column (00000.parquet, index.arrow): tables, not "
            "images (a sample index, labels?), each one reject of the run") in said
    plan = plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model), dry_run=True)
    assert plan.describe()["input"]["tables_without_images"] == {"files": 2, "examples": ["00000.parquet", "index.arrow"]}
    assert progress_total(plan, {}) == 1 + 1 + 1  # the image, and each table's one reject: not its 3 rows


def test_a_table_without_images_is_read_to_its_end_with_a_lasting_reject_and_a_broken_read_is_not(tmp_path,
                                                                                                    monkeypatch) -> None:
    pq.write_table(INDEX, tmp_path / "00000.parquet")
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert [r["id"] for r in records if r["kind"] == "reject"] == ["00000.parquet#unreadable"]
    assert records[-1]["container"] == {"path": unit.paths[0], "records": 0, "ids_sha256": ids_digest([]),
                                        "lasting_reject": True}
    # done: skipped, and still named as read to its end (an output of an earlier version holds the reject already)
    records = list(read_unit(unit, skip_ids={"00000.parquet#unreadable"}))
    assert [r["kind"] for r in records] == ["count"] and records[-1]["container"]["lasting_reject"] is True

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr("pipeline.sources.parquet_files.file_opener", refused)
    records = list(read_unit(unit))
    assert [r["id"] for r in records if r["kind"] == "reject"] == ["00000.parquet#unreadable"]
    assert "container" not in records[-1]  # a storage error: read again by the next run


def _img2dataset_files(root) -> None:
    """img2dataset's `--output_format files`: a shard folder of images with their sidecars, its sample index beside it
    (a table without images) and its stats (a .json that names no image)."""
    (root / "00000").mkdir(parents=True)
    for i in range(2):
        (root / "00000" / f"00000{i}.jpg").write_bytes(image_bytes(8, 8, i, "JPEG"))
        (root / "00000" / f"00000{i}.txt").write_text(f"caption {i}")
        (root / "00000" / f"00000{i}.json").write_text(json.dumps({"key": f"00000{i}", "status": "success"}))
    pq.write_table(INDEX, root / "00000.parquet")
    (root / "00000_stats.json").write_text(json.dumps({"count": 2, "successes": 2}))


@pytest.mark.usefixtures("ray_local")
def test_incremental_runs_skip_an_unchanged_table_without_images_unread_and_start_no_ray(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _img2dataset_files(root)
    first = run_job(small_job_config(tmp_path, model))["this_run"]
    assert (first["purified"], first["rejected"], first["containers_recorded"]) == (2, 2, 1)
    rejects = ["00000.parquet#unreadable", "00000_stats.json"]
    incremental = small_job_config(tmp_path, model, incremental=True)
    report = plan_job(incremental, dry_run=True).describe()["input"]
    assert (report["parquet_files"], report["containers_already_done"], report["read_tasks"]) == (0, 1, 0)
    assert report["tables_without_images"]["files"] == 0  # not read: no warning of it again

    summary = run_job(incremental)
    assert (summary["this_run"]["read"], summary["this_run"]["containers_skipped_unread"]) == (0, 1)
    assert summary["ray"]["actors"] == 0 and "no Ray" in summary["ray"]["note"]
    data, rejected = read_output(str(out))
    assert sorted(rejected["id"]) == rejects and len(data) == 2

    # --retry-rejects reads it again, as it reads every reject again; so does a change of the file
    assert plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True).describe()["input"][
        "parquet_files"] == 1
    stat = (root / "00000.parquet").stat()
    os.utime(root / "00000.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert plan_job(incremental, dry_run=True).describe()["input"]["parquet_files"] == 1
    os.utime(root / "00000.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # An output of an earlier version: its record of containers names no lasting reject. The table is read once more,
    # its reject kept once (not written again, not removed as out of date), then skipped as above.
    ledger = out / LEDGER_DIR / "containers.json"
    ledger.write_text(json.dumps({k: v for k, v in json.loads(ledger.read_text()).items() if k != "lasting_reject"}))
    assert plan_job(incremental, dry_run=True).describe()["input"]["parquet_files"] == 1
    again = run_job(incremental)["this_run"]
    assert (again["read"], again["rejected"], again["containers_recorded"]) == (0, 0, 1)
    data, rejected = read_output(str(out))
    assert sorted(rejected["id"]) == rejects and len(data) == 2
    report = plan_job(incremental, dry_run=True).describe()["input"]
    assert (report["parquet_files"], report["containers_already_done"]) == (0, 1)
