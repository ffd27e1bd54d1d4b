"""--partitioning hive: inputs laid out in Hive-style partition folders (`date=2026-11-01/split=train/part-0.parquet`, as
data lakes write them) give each row a string column per `key=value` folder, as Ray Data, pyarrow.dataset and Spark
read such a layout; without it (`none`, the default) the output is as before. A user filtering the purified output by
`date` or `split` could not: the value was only in the id's path."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import build_parser, main
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from pipeline.sources import discover, partition_folders, read_unit
from tests.jobutil import image_bytes, png_inputs, read_output, small_job_config, tar_bytes


def _images(tmp_path: Path, partitioning: str = "hive", **kw) -> list[dict]:
    """The image and reject records of every unit under tmp_path/in."""
    return [r for unit in discover(str(tmp_path / "in"))
            for r in read_unit(unit, partitioning=partitioning, **kw) if r["kind"] in ("image", "reject")]


def _parquet(path: Path, columns: dict[str, list] | None = None, n: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {"image": [{"bytes": image_bytes(8, 8, i), "path": f"{i}.png"} for i in range(n)], **(columns or {})}
    pq.write_table(pa.table(table), path)


# --- which folders are partitions ---

def test_partition_folders_split_at_the_first_equals_sign_unquote_and_skip_folders_without_a_key() -> None:
    assert partition_folders("date=2026-11-01/split=train/part-0.parquet") == [("date", "2026-11-01"),
                                                                               ("split", "train")]
    assert partition_folders("a=b=c/x.png") == [("a", "b=c")]
    assert partition_folders("q=x%3Dy%2Fz/c%3Dd=5/x.png") == [("q", "x=y/z"), ("c=d", "5")]  # as pyarrow reads them
    assert partition_folders("=x/plain/a=/x.png") == [("a", "")]  # no key: not a partition; an empty value is ''
    assert partition_folders("a=__HIVE_DEFAULT_PARTITION__/x.png") == [("a", None)]  # Hive's and Spark's null
    assert partition_folders("a=1.png") == [] and partition_folders("x.png") == []  # the file itself never is one


# --- the columns, per kind of input ---

def test_image_files_get_their_folders_values_and_none_gives_no_column(tmp_path: Path) -> None:
    png_inputs(tmp_path / "in" / "date=2026-11-01" / "split=train", 2)
    png_inputs(tmp_path / "in" / "date=2026-11-02" / "split=val%2Fhard", 1)
    png_inputs(tmp_path / "in" / "loose", 1)  # in no key=value folder: no columns
    metas = {r["id"]: r["meta"] for r in _images(tmp_path)}
    assert metas == {"date=2026-11-01/split=train/000.png": {"date": "2026-11-01", "split": "train"},
                     "date=2026-11-01/split=train/001.png": {"date": "2026-11-01", "split": "train"},
                     "date=2026-11-02/split=val%2Fhard/000.png": {"date": "2026-11-02", "split": "val/hard"},
                     "loose/000.png": {}}
    assert all(r["meta_types"] == {"date": pa.string(), "split": pa.string()}
               for r in _images(tmp_path) if r["meta"])
    assert all(r["meta"] == {} for r in _images(tmp_path, "none"))  # the default: as before


def test_a_parquet_files_own_column_keeps_its_name_and_the_folders_value_goes_to_partition_key(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "date=2026-11-01" / "split=train" / "id=7"
    _parquet(folder / "part-0.parquet", {"split": ["a", "b"], "score": pa.array([1.5, 2.5], pa.float32())})
    records = _images(tmp_path)
    assert [r["meta"] for r in records] == [
        {"split": "a", "score": 1.5, "original_path": "0.png", "date": "2026-11-01", "partition_split": "train",
         "input_id": "7"},
        {"split": "b", "score": 2.5, "original_path": "1.png", "date": "2026-11-01", "partition_split": "train",
         "input_id": "7"}]
    # the file's own columns keep their Arrow types; the partition columns are strings
    assert records[0]["meta_types"] == {"split": pa.string(), "score": pa.float32(), "date": pa.string(),
                                        "partition_split": pa.string(), "input_id": pa.string()}


def test_a_job_column_named_key_is_input_key_and_its_clash_with_the_files_own_goes_to_partition(tmp_path: Path) -> None:
    _parquet(tmp_path / "in" / "id=7" / "source=cam%201" / "t.parquet", {"id": [10, 11]}, n=2)
    meta = _images(tmp_path)[0]["meta"]
    assert (meta["input_id"], meta["partition_input_id"], meta["input_source"]) == (10, "7", "cam 1")


def test_containers_take_their_own_folders_never_those_inside_them(tmp_path: Path) -> None:
    shard = tmp_path / "in" / "split=train" / "label=cat" / "s.tar"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(tar_bytes({"x=1/0001.png": image_bytes(8, 8, 1), "x=1/0001.cls": b"3",
                                 "0002.png": image_bytes(8, 8, 2)}))
    archive = tmp_path / "in" / "split=val" / "a.zip"
    archive.parent.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("y=2/b.png", image_bytes(8, 8, 3))
    archive.write_bytes(buf.getvalue())
    metas = {r["id"]: r["meta"] for r in _images(tmp_path)}
    # x=1 inside the shard is no partition, nor is y=2 inside the archive; a key with a label sidecar (.cls) keeps
    # its own label, and the folder's label=cat goes to partition_label; a key without one gets the folder's
    assert metas == {"split=train/label=cat/s.tar/x=1/0001": {"label": 3, "split": "train", "partition_label": "cat"},
                     "split=train/label=cat/s.tar/0002": {"split": "train", "label": "cat"},
                     "split=val/a.zip/y=2/b.png": {"split": "val"}}


def test_labels_from_folders_label_is_the_rows_own_and_the_partition_goes_to_partition_label(tmp_path: Path) -> None:
    png_inputs(tmp_path / "in" / "label=cat", 1)
    (meta,) = [r["meta"] for r in _images(tmp_path, labels_from_folders=True)]
    assert meta == {"label": "label=cat", "partition_label": "cat"}


def test_a_path_giving_one_key_twice_is_refused_before_any_work_and_its_rows_are_rejects_if_read(
        tmp_path: Path, model: str) -> None:
    png_inputs(tmp_path / "in" / "a=1" / "b=2" / "a=2", 1)
    with pytest.raises(JobError, match=r"a=1/b=2/a=2/000\.png lies in 2 folders of partition key 'a' \(a=1, a=2\)"):
        plan_job(small_job_config(tmp_path, model, partitioning="hive"), dry_run=True)
    assert plan_job(small_job_config(tmp_path, model), dry_run=True).partitions is None  # none: nothing to refuse
    (record,) = _images(tmp_path)  # read all the same (the API's read_unit): a reject, nothing lost
    assert record["kind"] == "reject" and "partition key 'a'" in record["error"]


# --- an output's partitioning ---

def test_an_output_refuses_a_run_with_another_partitioning_but_not_an_older_record_without_it(
        tmp_path: Path, model: str) -> None:
    png_inputs(tmp_path / "in" / "date=1", 2)
    out = tmp_path / "out"
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record
    assert record["reading"]["partitioning"] == "none"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["date=1/000.png"]}), out / "data" / "part-0.parquet")
    (out / JOB_FILE).write_text(json.dumps(record))
    with pytest.raises(JobError, match=r"partitioning 'none' \(now 'hive'\).*give --partitioning \"none\""):
        plan_job(small_job_config(tmp_path, model, partitioning="hive"), dry_run=True)
    # an output an older version wrote records no partitioning: it made no partition columns, so it was 'none'
    del record["reading"]["partitioning"]
    (out / JOB_FILE).write_text(json.dumps(record))
    assert plan_job(small_job_config(tmp_path, model), dry_run=True).output_state == "resume"
    with pytest.raises(JobError, match=r"partitioning 'none' \(now 'hive'\)"):
        plan_job(small_job_config(tmp_path, model, partitioning="hive"), dry_run=True)
    # and an output written with hive refuses a run without it
    record["reading"]["partitioning"] = "hive"
    (out / JOB_FILE).write_text(json.dumps(record))
    with pytest.raises(JobError, match=r"partitioning 'hive' \(now 'none'\).*give --partitioning \"hive\""):
        plan_job(small_job_config(tmp_path, model), dry_run=True)


# --- the command line ---

def test_help_explains_the_option_and_a_bad_value_is_refused(tmp_path: Path, capsys) -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--partitioning {none,hive}" in text and "KEY=VALUE folder" in text and "partition_KEY" in text
    assert "input_KEY" in text and "(default none)" in text and "string column" in text
    with pytest.raises(JobError, match="--partitioning must be one of none, hive, got 'spark'"):
        JobConfig(partitioning="spark").check()
    (tmp_path / "job.yaml").write_text("partitioning: spark\n")
    assert main(["--config", str(tmp_path / "job.yaml"), "--dry-run", "--output", str(tmp_path / "out")]) == 2
    assert "partitioning must be one of none, hive, got 'spark'" in capsys.readouterr().err


def test_the_dry_run_names_the_partition_keys_it_found_in_the_listing(tmp_path: Path, model: str, capsys) -> None:
    png_inputs(tmp_path / "in" / "date=2026-11-01" / "split=train", 2)
    png_inputs(tmp_path / "in" / "date=2026-11-02" / "split=train", 1)
    _parquet(tmp_path / "in" / "date=2026-11-02" / "split=val" / "p.parquet")
    png_inputs(tmp_path / "in" / "loose", 1)
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model, "--dry-run"]
    assert main([*args, "--partitioning", "hive"]) == 0
    out = capsys.readouterr().out
    assert ("partitions (--partitioning hive): date (2 values), split (2 values), each a string column of its files' "
            "rows; 1 of the 5 input files lies in no key=value folder") in out
    assert main(args) == 0
    assert "partitions" not in capsys.readouterr().out  # none: not looked for


# --- a whole run ---

@pytest.mark.usefixtures("ray_local")
def test_a_run_gives_parquet_and_image_rows_their_partition_columns_as_strings(tmp_path: Path, model: str) -> None:
    png_inputs(tmp_path / "in" / "date=2026-11-01" / "split=train", 2)
    _parquet(tmp_path / "in" / "date=2026-11-02" / "split=val" / "part-0.parquet", {"split": ["x", "y"]})
    png_inputs(tmp_path / "in" / "loose", 1)
    assert run_job(small_job_config(tmp_path, model, partitioning="hive"))["status"] == "complete"
    data, rejects = read_output(str(tmp_path / "out"))
    assert rejects.empty
    got = {row["id"]: tuple(None if pd.isna(row[c]) else row[c] for c in ("date", "split", "partition_split"))
           for _, row in data.iterrows()}  # (a part file without the column reads as NaN)
    assert got == {"date=2026-11-01/split=train/000.png": ("2026-11-01", "train", None),
                   "date=2026-11-01/split=train/001.png": ("2026-11-01", "train", None),
                   "date=2026-11-02/split=val/part-0.parquet#0": ("2026-11-02", "x", "val"),
                   "date=2026-11-02/split=val/part-0.parquet#1": ("2026-11-02", "y", "val"),
                   "loose/000.png": (None, None, None)}
    for part in (tmp_path / "out" / "data").glob("part-*.parquet"):  # every part file: string columns
        schema = pq.read_schema(part)
        assert all(schema.field(name).type == pa.string() for name in ("date", "split", "partition_split"))
    # the default run over the same input: no partition columns, as before
    assert run_job(small_job_config(tmp_path, model, output=str(tmp_path / "plain")))["status"] == "complete"
    plain, _ = read_output(str(tmp_path / "plain"))
    assert "date" not in plain.columns and "partition_split" not in plain.columns
    assert sorted(plain["split"].dropna()) == ["x", "y"]  # the Parquet file's own column only
