"""An image folder's metadata.csv / metadata.jsonl (Hugging Face's imagefolder layout: file_name relative to the
metadata file's folder, then labels, captions, ...) joined to its images' rows (--join-metadata, default true): read
once at the listing, each read task sent its own files' rows; a file that cannot be joined is a reject saying what and
where, its images purified without its columns; rows naming no image file are counted and named."""

from __future__ import annotations

import glob
import json
import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import HiddenSkipped, discover, read_unit
from pipeline.sources.folder_metadata import FolderMetadata, parse_metadata, unit_metadata
from tests.jobutil import image_bytes, image_folder, read_output, small_job_argv, small_job_config


def _read(uri: str, join: bool = True, **read: object) -> tuple[dict[str, dict], FolderMetadata, HiddenSkipped]:
    """Each record of the input by id, as the job's read tasks make them, with what the listing joined and skipped."""
    found, hidden = FolderMetadata(), HiddenSkipped()
    units = discover(uri, {}, 256, hidden, metadata=found if join else None)
    records = {r["id"]: r for unit in units
               for r in read_unit(unit, metadata=unit_metadata(unit.paths, found if join else None), **read)
               if r["kind"] in ("image", "reject")}
    return records, found, hidden


def test_csv_and_jsonl_rows_become_the_images_columns_and_the_files_are_counted_as_metadata(tmp_path) -> None:
    train = image_folder(tmp_path / "train", 3)
    (train / "metadata.csv").write_text("file_name,label,caption\n0.png,3,a cat\n1.png,5,\"a dog, wet\"\n")
    test = image_folder(tmp_path / "test", 2)
    (test / "metadata.jsonl").write_text('{"file_name": "0.png", "label": 7, "box": [1, 2, 3, 4]}\n\n'
                                         '{"file_name": "./1.png", "label": 8, "box": null, "note": "a\u2028b"}\n')
    records, found, hidden = _read(str(tmp_path))
    meta = {id_: r["meta"] for id_, r in records.items()}
    assert meta == {"train/0.png": {"file_name": "0.png", "label": 3, "caption": "a cat"},
                    "train/1.png": {"file_name": "1.png", "label": 5, "caption": "a dog, wet"},
                    "train/2.png": {},  # no row: nulls in the output
                    "test/0.png": {"file_name": "0.png", "label": 7, "box": [1, 2, 3, 4]},
                    "test/1.png": {"file_name": "./1.png", "label": 8, "box": None, "note": "a\u2028b"}}
    assert all(r["kind"] == "image" for r in records.values())  # the metadata files are no inputs now
    assert (hidden.count, hidden.examples) == (2, ["test/metadata.jsonl", "train/metadata.csv"])
    assert (found.unmatched, len(found.rows)) == (0, 4)


def test_a_csv_column_is_typed_as_pandas_reads_it_dates_staying_text() -> None:
    # a byte-order mark (Excel), a trailing comma's empty column
    rows = parse_metadata("metadata.csv", "\ufefffile_name,n,x,ok,when,note,\n001.png,1,1.5,true,2026-01-01T10:00:00,,\n"
                                          "2.png,,nan,False,2026-01-02,\"a, b\",\n".encode())
    assert rows == [{"file_name": "001.png", "n": 1, "x": 1.5, "ok": True, "when": "2026-01-01T10:00:00", "note": None},
                    {"file_name": "2.png", "n": None, "x": None, "ok": False, "when": "2026-01-02", "note": "a, b"}]


def test_a_root_metadata_file_names_nested_images_and_the_nearest_file_wins(tmp_path) -> None:
    image_folder(tmp_path / "a" / "b", 2)
    (tmp_path / "metadata.csv").write_text("file_name,caption\na/b/0.png,from the root\na\\b\\1.png,windows path\n")
    (tmp_path / "a" / "metadata.csv").write_text("file_name,caption\nb/1.png,nearer\n")
    records, _, _ = _read(str(tmp_path))
    assert {id_: r["meta"]["caption"] for id_, r in records.items()} == {"a/b/0.png": "from the root",
                                                                         "a/b/1.png": "nearer"}


def test_a_column_named_like_a_job_column_is_renamed_and_a_metadata_label_wins_over_the_folders(tmp_path) -> None:
    cats = image_folder(tmp_path / "cats", 2)
    (cats / "metadata.jsonl").write_text('{"file_name": "0.png", "id": 42, "source": "web", "label": "tabby"}\n')
    records, _, _ = _read(str(tmp_path), labels_from_folders=True)
    assert records["cats/0.png"]["meta"] == {"label": "tabby", "file_name": "0.png", "input_id": 42,
                                             "input_source": "web"}
    assert records["cats/1.png"]["meta"] == {"label": "cats"}  # no row: the folder's label


def test_a_partition_folder_named_like_a_metadata_column_goes_to_partition_key(tmp_path) -> None:
    folder = image_folder(tmp_path / "split=train", 1)
    (folder / "metadata.csv").write_text("file_name,split\n0.png,holdout\n")
    records, _, _ = _read(str(tmp_path), partitioning="hive")
    assert records["split=train/0.png"]["meta"] == {"file_name": "0.png", "split": "holdout",
                                                    "partition_split": "train"}


@pytest.mark.parametrize(("name", "text", "said"), [
    ("metadata.csv", "file_name,label\n0.png,1\n1.png,2,3\n", "line 3: 3 fields, where the header has 2"),
    ("metadata.csv", "name,label\n0.png,1\n", "line 1: no file_name column (the header names name, label)"),
    ("metadata.csv", "file_name,label\n0.png,1\n\n./0.png,2\n", "lines 2 and 4 both name ./0.png"),
    ("metadata.csv", "file_name,label,label\n0.png,1,2\n", "line 1: column label named twice"),
    ("metadata.csv", "file_name,,label\n0.png,,1\n1.png,x,2\n", "line 1: column 2 has no name, and line 3 holds"),
    ("metadata.jsonl", '{"file_name": "0.png"}\n{"file_name": "1.png"\n', "line 2: not valid JSON"),
    ("metadata.jsonl", '{"file_name": "0.png"}\n[1, 2]\n', "line 2: a JSON array, not an object of columns"),
    ("metadata.jsonl", '{"file_name": "0.png"}\n{"label": 1}\n', "line 2: no file_name"),
    ("metadata.jsonl", '{"file_name": 3}\n', "line 1: file_name 3 is not a file's name"),
    ("metadata.jsonl", b'{"file_name": "caf\xe9.png"}\n', "not UTF-8 text (byte 18 is not UTF-8)"),
])
def test_metadata_that_cannot_be_joined_is_a_reject_saying_where_and_its_images_are_still_read(
        tmp_path, name: str, text: str | bytes, said: str) -> None:
    folder = image_folder(tmp_path / "train", 2)
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    records, found, hidden = _read(str(tmp_path))
    reject = records.pop(f"train/{name}")
    assert reject["kind"] == "reject" and reject["stage"] == "read"
    assert reject["error"].startswith("image-folder metadata file not joined to its images: ") and said in reject["error"]
    assert {id_: (r["kind"], r["meta"]) for id_, r in records.items()} == {"train/0.png": ("image", {}),
                                                                           "train/1.png": ("image", {})}
    assert (hidden.count, found.joined) == (0, [])


def test_an_image_folder_on_an_fsspec_store_is_joined_too() -> None:
    fs = fsspec.filesystem("memory")
    for i in range(2):
        fs.pipe(f"/hfmeta/train/{i}.png", image_bytes(16, 16, i))
    fs.pipe("/hfmeta/train/metadata.jsonl", b'{"file_name": "1.png", "label": 4}\n')
    try:
        records, _, hidden = _read("memory://hfmeta")
    finally:
        fs.rm("/hfmeta", recursive=True)
    assert {id_: r["meta"] for id_, r in records.items()} == {"train/0.png": {},
                                                              "train/1.png": {"file_name": "1.png", "label": 4}}
    assert hidden.examples == ["train/metadata.jsonl"]


def test_rows_naming_no_image_file_are_counted_and_named_by_the_dry_run(tmp_path, model, capsys) -> None:
    folder = image_folder(tmp_path / "in" / "train", 1)
    (folder / "metadata.csv").write_text("file_name,label\n0.png,1\n7.png,2\n../train2/8.png,3\n")
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()
    report = described["input"]
    assert report["folder_metadata"] == {"files_joined": 1, "files_rejected": 0, "image_files_joined": 1,
                                         "earlier_rejects_removed": 0, "archive_files_joined": 0,
                                         "rows_without_image_file": 2,
                                         "rows_without_image_file_examples": ["train/metadata.csv: 7.png",
                                                                              "train/metadata.csv: ../train2/8.png"]}
    assert report["image_files_to_read"] == 1 and report["hidden_files_skipped"] == 1
    cli.print_plan(described)
    said = " ".join(capsys.readouterr().out.split())
    assert "1 metadata file joined to 1 image file" in said
    assert ("warning: 2 rows of image-folder metadata files name no image file of the input (its file_name, relative "
            "to the metadata file's folder), joined to nothing: train/metadata.csv: 7.png; train/metadata.csv: "
            "../train2/8.png") in said


def test_join_metadata_false_keeps_the_metadata_file_an_input_and_the_option_is_a_flag_and_a_config_key(
        tmp_path, model) -> None:
    folder = image_folder(tmp_path / "in" / "train", 1)
    (folder / "metadata.csv").write_text("file_name,label\n0.png,1\n")
    records, found, hidden = _read(str(tmp_path / "in"), join=False)
    assert records["train/metadata.csv"]["kind"] == "image" and records["train/0.png"]["meta"] == {}  # as before
    assert hidden.count == 0 and not found.found()
    assert plan_job(small_job_config(tmp_path, model, join_metadata=False), dry_run=True).describe()["input"][
        "image_files_to_read"] == 2
    assert cli.config_from_args(small_job_argv(tmp_path, model, "--join-metadata", "false")).join_metadata is False
    assert cli.config_from_args(small_job_argv(tmp_path, model)).join_metadata is True
    (tmp_path / "job.yaml").write_text("join_metadata: false\n")
    assert cli.config_from_args(small_job_argv(tmp_path, model, "--config", str(tmp_path / "job.yaml"))).join_metadata \
        is False
    assert "--join-metadata BOOL" in cli.build_parser().format_help()
    with pytest.raises(JobError, match="--join-metadata must be true or false"):
        JobConfig(input="in", output="out", join_metadata="yes").check()


@pytest.mark.usefixtures("ray_local")
def test_a_run_writes_the_joined_columns_with_their_types_and_refuses_the_other_join_setting(tmp_path, model,
                                                                                              capsys) -> None:
    train = image_folder(tmp_path / "in" / "train", 3)
    (train / "metadata.csv").write_text("file_name,label,score,caption\n0.png,3,0.5,a cat\n1.png,5,1.25,a dog\n"
                                        "gone.png,9,0,missing\n")
    test = image_folder(tmp_path / "in" / "test", 1)
    (test / "metadata.jsonl").write_text('{"file_name": "0.png", "label": 2}\n{"file_name": "0.png", "label": 4}\n')
    summary = run_job(small_job_config(tmp_path, model))
    run = summary["this_run"]
    assert (run["read"], run["purified"], run["rejected"], run["hidden_skipped"]) == (5, 4, 1, 1)
    assert run["folder_metadata"]["rows_without_image_file_examples"] == ["train/metadata.csv: gone.png"]
    cli._print_run_summary(small_job_config(tmp_path, model), summary)
    assert "warning: 1 row of image-folder metadata files names no image file" in capsys.readouterr().err
    table = pq.read_table(sorted(glob.glob(str(tmp_path / "out" / "data" / "*.parquet"))))
    assert (table.schema.field("label").type, table.schema.field("score").type) == (pa.int64(), pa.float64())
    assert table.schema.field("caption").type == pa.string()
    _, rejects = read_output(str(tmp_path / "out"))
    rows = {r["id"]: (r["label"], r["caption"], r["file_name"]) for r in
            pq.read_table(sorted(glob.glob(str(tmp_path / "out" / "data" / "*.parquet")))).to_pylist()}
    assert rows == {"train/0.png": (3, "a cat", "0.png"), "train/1.png": (5, "a dog", "1.png"),
                    "train/2.png": (None, None, None), "test/0.png": (None, None, None)}  # test's file is a reject
    assert list(rejects["id"]) == ["test/metadata.jsonl"] and "lines 1 and 2 both name 0.png" in rejects["error"][0]
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert record["reading"]["join_metadata"] is True
    with pytest.raises(JobError, match="join_metadata"):
        plan_job(small_job_config(tmp_path, model, incremental=True, join_metadata=False))
    # an output an older version made (no join_metadata recorded) is not refused by an upgraded scheduled run
    del record["reading"]["join_metadata"]
    (tmp_path / "out" / "_job.json").write_text(json.dumps(record))
    assert plan_job(small_job_config(tmp_path, model, incremental=True)).output_state == "incremental"
    assert plan_job(small_job_config(tmp_path, model, incremental=True, join_metadata=False)).output_state == \
        "incremental"


def test_a_stopped_run_says_what_the_planning_joined_as_a_finished_one_does(tmp_path, model, monkeypatch) -> None:
    import signal

    import pipeline.job as job

    train = image_folder(tmp_path / "in" / "train", 2)
    (train / "metadata.csv").write_text("file_name,label\n0.png,3\n7.png,4\n")
    # no Ray: Ctrl-C as the run starts, inside the part that records a stop
    monkeypatch.setattr(job, "init_ray", lambda config: None)
    monkeypatch.setattr(job, "default_actors_and_gpus", lambda config: (1, 0.0, "cpu"))

    def ctrl_c(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "remove_stale_temporaries", ctrl_c)
    assert cli.main(small_job_argv(tmp_path, model)) == 128 + signal.SIGINT
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["this_run"]["folder_metadata"] == {"files_joined": 1, "files_rejected": 0, "image_files_joined": 1,
                                                      "earlier_rejects_removed": 0, "archive_files_joined": 0,
                                                      "rows_without_image_file": 1,
                                                      "rows_without_image_file_examples": ["train/metadata.csv: 7.png"]}


def test_a_zip_archives_metadata_member_is_joined_to_its_members(tmp_path) -> None:
    from pipeline.sources import ReadUnit
    from tests.jobutil import zip_bytes

    (tmp_path / "d.zip").write_bytes(zip_bytes({
        "train/0.png": image_bytes(16, 16, 0), "train/1.png": image_bytes(16, 16, 1),
        "train/metadata.csv": b"file_name,label\n0.png,3\nmissing.png,4\n",
        "test/2.png": image_bytes(16, 16, 2), "test/metadata.jsonl": b'{"file_name": "2.png"\n'}))
    unit = ReadUnit("zip", (str(tmp_path / "d.zip"),), str(tmp_path))

    def read(**options: object) -> tuple[dict[str, dict], dict]:
        records = list(read_unit(unit, **options))
        return {r["id"]: r for r in records if r["kind"] in ("image", "reject")}, records[-1]

    records, count = read(join_metadata=True)
    assert records["d.zip/train/0.png"]["meta"] == {"file_name": "0.png", "label": 3}
    assert records["d.zip/train/1.png"]["meta"] == {} and records["d.zip/test/2.png"]["meta"] == {}
    assert "d.zip/train/metadata.csv" not in records  # joined: counted as metadata, as a folder's
    bad = records["d.zip/test/metadata.jsonl"]
    assert bad["kind"] == "reject" and "not joined to its images: line 1: not valid JSON" in bad["error"]
    assert (count["hidden"], count["container"]["metadata"]) == (1, ["d.zip/train/metadata.csv"])
    # an earlier run's reject of it (a done id) is named all the same: the run removes it (`job.StaleRejects`)
    _, count = read(join_metadata=True, skip_ids=frozenset({"d.zip/train/metadata.csv"}))
    assert count["container"]["metadata"] == ["d.zip/train/metadata.csv"] and "leftover" not in count["container"]
    # --join-metadata false: an input like any member, as before (its decode reject says what it is)
    records, count = read()
    assert records["d.zip/train/metadata.csv"]["kind"] == "image" and "metadata" not in count["container"]


@pytest.mark.usefixtures("ray_local")
def test_a_run_over_a_zip_archive_writes_its_metadata_columns(tmp_path, model) -> None:
    from tests.jobutil import zip_bytes

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.zip").write_bytes(zip_bytes({
        "0.png": image_bytes(16, 16, 0), "1.png": image_bytes(16, 16, 1),
        "metadata.jsonl": b'{"file_name": "0.png", "label": 3}\n{"file_name": "1.png", "label": 5}\n'}))
    summary = run_job(small_job_config(tmp_path, model))
    run = summary["this_run"]
    assert (run["purified"], run["rejected"], run["hidden_skipped_examples"]) == (2, 0, ["d.zip/metadata.jsonl"])
    data, _ = read_output(str(tmp_path / "out"))
    assert sorted(zip(data["id"], data["label"], strict=True)) == [("d.zip/0.png", 3), ("d.zip/1.png", 5)]
    # the planning compares a touched archive's members with their rows, metadata columns included: no change
    path = tmp_path / "in" / "d.zip"
    os.utime(path, ns=(os.stat(path).st_mtime_ns + 2_000_000_000,) * 2)
    changed = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (changed["containers"], changed["containers_same_members"]) == (0, 1)


@pytest.mark.usefixtures("ray_local")
def test_a_zip_metadata_members_earlier_reject_goes_once_retry_rejects_reads_the_archive(tmp_path, model,
                                                                                         capsys) -> None:
    from tests.jobutil import zip_bytes

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.zip").write_bytes(zip_bytes({
        "0.png": image_bytes(16, 16, 0), "metadata.jsonl": b'{"file_name": "0.png", "label": 3}\n'}))
    # an output an older version made: the member a reject, no join_metadata recorded
    assert run_job(small_job_config(tmp_path, model, join_metadata=False))["this_run"]["rejected"] == 1
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    del record["reading"]["join_metadata"]
    (tmp_path / "out" / "_job.json").write_text(json.dumps(record))

    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental", "--retry-rejects")) == 0
    assert "1 image-folder metadata file in a zip archive joined now" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["this_run"]["rejects_retried"]["metadata_joined"] == 1
    assert (summary["this_run"]["stale_rejects_removed"], summary["output_totals"]["rejected"]) == (1, 0)
