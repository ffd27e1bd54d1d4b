"""A Parquet or Arrow IPC file among the inputs with no image column (img2dataset's `00000.parquet` beside its shard
folder, any sample index or labels table): one reject that says it is a table without images and how to add its
columns to the images' rows, a warning of the dry run naming it, and one record in the run's progress total, not its
rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.job import progress_total
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, small_job_argv

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
