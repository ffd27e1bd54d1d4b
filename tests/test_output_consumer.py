"""The output as a downstream user reads it: pass-through columns keep the types their inputs gave them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages import batch_of, write_stage


def _row(i: int, meta: dict, types: dict[str, pa.DataType]) -> dict:
    return {"kind": "image", "id": f"shard-{i % 2}.parquet#{i}", "source": f"in/shard-{i % 2}.parquet#{i}",
            "source_sha256": "0" * 64, "png": b"png", "width": 4, "height": 4, "meta": meta, "meta_types": types}


def _written(tmp_path: Path, rows: list[dict]) -> pa.Table:
    manifest = write_stage(batch_of(rows), str(tmp_path), {})
    (name,) = json.loads(manifest["files"][0])
    return pq.read_table(tmp_path / name)


def test_a_batch_mixing_parquet_files_keeps_their_column_types(tmp_path) -> None:
    # Two shards of one data set in one write batch: in the second, every score, label and class is null, which
    # pandas writes as Arrow type null. The first shard's float32, int16 and dictionary columns stay what they were
    # (they were written as double, int64 and string), and an int16 in one file with an int32 in the other is int32.
    dictionary = pa.dictionary(pa.int8(), pa.string())
    labelled = {"score": pa.float32(), "label": pa.int16(), "cls": dictionary, "n": pa.int16()}
    unlabelled = {"score": pa.null(), "label": pa.null(), "cls": pa.null(), "n": pa.int32()}
    rows = [_row(0, {"score": 0.5, "label": 3, "cls": "cat", "n": 1}, labelled),
            _row(1, {"score": None, "label": None, "cls": None, "n": 70000}, unlabelled),
            _row(2, {"score": 0.25, "label": 4, "cls": "dog", "n": 2}, labelled)]
    table = _written(tmp_path, rows)
    schema = table.schema
    assert schema.field("score").type == pa.float32() and table.column("score").to_pylist() == [0.5, None, 0.25]
    assert schema.field("label").type == pa.int16() and table.column("label").to_pylist() == [3, None, 4]
    assert schema.field("cls").type == dictionary and table.column("cls").to_pylist() == ["cat", None, "dog"]
    assert schema.field("n").type == pa.int32() and table.column("n").to_pylist() == [1, 70000, 2]


def test_parquet_columns_that_share_no_type_are_still_written(tmp_path) -> None:
    # an int64 id in one file and a string id in another: no common Arrow type, so text, every value kept
    rows = [_row(0, {"key": 7}, {"key": pa.int64()}), _row(1, {"key": "x7"}, {"key": pa.string()})]
    table = _written(tmp_path, rows)
    assert table.schema.field("key").type == pa.string() and table.column("key").to_pylist() == ["7", "x7"]


def test_a_batch_mixing_parquet_files_whose_times_share_no_type_keeps_every_time_whole(tmp_path) -> None:
    # Two Parquet files of one data set: a date32 'taken' in one and a timestamp in the other, a naive timestamp in
    # one and a UTC one in the other. Such types share no Arrow type, and a write batch holding rows of both had its
    # column's type guessed from the Python values: the timestamp's time of day was cut off (2024-01-02 03:04:05 was
    # written 2024-01-02) and the zone of the UTC one dropped, in that batch's rows only. Such a column is text, as the
    # end of the run makes it, every value written whole.
    import datetime

    utc = datetime.UTC
    first = {"taken": pa.date32(), "at": pa.timestamp("ms")}
    second = {"taken": pa.timestamp("s"), "at": pa.timestamp("us", tz="UTC")}
    rows = [_row(0, {"taken": datetime.date(2020, 1, 1), "at": datetime.datetime(2024, 1, 2, 3, 4, 5)}, first),
            _row(1, {"taken": datetime.datetime(2024, 1, 2, 3, 4, 5),
                     "at": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=utc)}, second)]
    table = _written(tmp_path, rows)
    assert table.schema.field("taken").type == pa.string() and table.schema.field("at").type == pa.string()
    assert table.column("taken").to_pylist() == ['"2020-01-01"', '"2024-01-02 03:04:05"']
    assert table.column("at").to_pylist() == ['"2024-01-02 03:04:05"', '"2024-01-02 03:04:05+00:00"']


def test_part_files_whose_common_type_would_lose_values_are_given_text(tmp_path) -> None:
    # Two Parquet inputs, one with a uint64 hash above int64's range and one with int64 hashes, written to two part
    # files; and ids beyond 2**53 as int64 beside a double. Arrow's promotion (int64, double) cannot hold those
    # values, and every run failed at its end with "ArrowInvalid: Integer value ... not in range", the same command
    # again included. Such a column is text, every value kept; the others are promoted as before.
    from pipeline.output import unify_output_types

    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    big = 2**63 + 5
    pq.write_table(pa.table({"id": ["a"], "hash": pa.array([big], pa.uint64()), "uid": [2**62 + 1], "score": [1]}),
                   data / "part-0.parquet")
    pq.write_table(pa.table({"id": ["b"], "hash": pa.array([7], pa.int64()), "uid": [0.5], "score": [2.5]}),
                   data / "part-1.parquet")
    pq.write_table(pa.table({"id": ["c"], "hash": pa.array([8], pa.uint64()), "uid": [3], "score": [3]}),
                   data / "part-2.parquet")
    assert unify_output_types(str(tmp_path / "out"), {}) == {"hash": "string", "uid": "string", "score": "double"}
    table = pq.read_table(data).sort_by("id")
    assert table.schema.field("hash").type == pa.string() and table.schema.field("uid").type == pa.string()
    assert table.column("hash").to_pylist() == [str(big), "7", "8"]
    assert table.column("uid").to_pylist() == [str(2**62 + 1), "0.5", "3"]
    assert table.column("score").to_pylist() == [1.0, 2.5, 3.0]
    assert unify_output_types(str(tmp_path / "out"), {}) == {}  # one type each now: nothing left to do


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _decoded(path: Path, image_column: str | None = None) -> list[dict]:
    from pipeline.decode import DecodePolicy
    from pipeline.sources import discover, read_unit
    from pipeline.stages import decode_stage, records_of

    records = [r for unit in discover(str(path)) for r in read_unit(unit, image_column=image_column)]
    return records_of(decode_stage(batch_of([r for r in records if r["kind"] in ("image", "reject")]), DecodePolicy()))


def test_a_parquet_reject_names_the_image_column_found_and_the_others(tmp_path) -> None:
    # The first binary column held each image's sha256 digest; the images were in 'photo'. Every row was rejected as
    # "not a recognised image format", which named no column: the reject now says which column was taken for the
    # images and which others could hold them, for --image-column.
    import hashlib

    folder = tmp_path / "in"
    folder.mkdir()
    image = _png()
    pq.write_table(pa.table({"sha": [hashlib.sha256(image).digest()], "photo": [image], "n": [1]}),
                   folder / "t.parquet")
    (reject,) = _decoded(folder)
    assert reject["kind"] == "reject" and reject["id"] == "t.parquet#0" and reject["stage"] == "decode"
    assert reject["error"] == ("not a recognised image format (Parquet column 'sha', found as the image column; "
                               "--image-column picks another: 'photo')")
    (purified,) = _decoded(folder, image_column="photo")
    assert purified["kind"] == "image" and purified["meta"]["sha"] == hashlib.sha256(image).digest()


def test_a_parquet_reject_of_a_named_or_only_image_column_is_unchanged(tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"image": [b"not an image"], "label": [3]}), folder / "t.parquet")
    (reject,) = _decoded(folder)
    assert reject["error"] == "not a recognised image format"
    pq.write_table(pa.table({"sha": [b"x"], "photo": [_png()]}), folder / "t.parquet")
    (reject,) = _decoded(folder, image_column="sha")
    assert reject["error"] == "not a recognised image format"


@pytest.mark.parametrize(("column", "words"), [("photos", "image column 'photos' not in Parquet columns"),
                                               ("n", "column 'n' has type int64, not image bytes")])
def test_an_image_column_the_first_parquet_file_lacks_stops_the_run_before_any_work(tmp_path, column, words) -> None:
    # A misspelt --image-column made every file one '#unreadable' reject in a run that ended complete (exit 0), and
    # the output then refused the corrected name ("give --image-column 'photos' as its runs did"): one bad command
    # locked the output. It is now refused before any work, in a dry run too.
    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from pipeline.plan import plan_job

    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"photo": [_png()], "n": [1]}), folder / "t.parquet")
    config = JobConfig(input=str(folder), output=str(tmp_path / "out"), image_column=column)
    with pytest.raises(JobError, match=f"--image-column {column}: {words}"):
        plan_job(config, dry_run=True)
    assert not (tmp_path / "out").exists()
    assert plan_job(JobConfig(input=str(folder), output=str(tmp_path / "out"), image_column="photo"),
                    dry_run=True).units


def test_a_parquet_value_python_cannot_hold_rejects_its_own_row_only(tmp_path) -> None:
    # A "valid until" column holding a far-future sentinel (2**62 ms, past the year 9999 where Python's datetime ends)
    # in one row made every row of its row group a reject, "row group 0 of the Parquet file cannot be read:
    # OverflowError: ...", as if the file were damaged: the images were whole, and none reached data/. Only the row
    # holding such a value is a reject now, naming its column; the others are purified with their values.
    import datetime

    folder = tmp_path / "in"
    folder.mkdir()
    valid_to = pa.array([1_700_000_000_000, 2**62, None], pa.timestamp("ms"))
    pq.write_table(pa.table({"image": [_png()] * 3, "valid_to": valid_to, "n": [1, 2, 3]}), folder / "t.parquet")
    records = {r["id"]: r for r in _decoded(folder)}
    assert sorted(records) == ["t.parquet#0", "t.parquet#1", "t.parquet#2"]
    reject = records["t.parquet#1"]
    assert reject["kind"] == "reject" and reject["stage"] == "read"
    assert reject["error"] == ("row 1: column 'valid_to' (timestamp[ms]) holds a value that has no Python form to pass "
                               "through (OverflowError: Python int too large to convert to C int; a time before the year "
                               "1 or after 9999 is one): write the column as int64 or text, or leave it out, to purify "
                               "this row")
    assert [records[f"t.parquet#{i}"]["kind"] for i in (0, 2)] == ["image", "image"]
    assert records["t.parquet#0"]["meta"] == {"valid_to": datetime.datetime(2023, 11, 14, 22, 13, 20), "n": 1}
    assert records["t.parquet#2"]["meta"] == {"valid_to": None, "n": 3}


def test_part_files_given_a_column_at_the_end_of_a_run_have_one_schema_in_one_order(tmp_path) -> None:
    # A tar shard whose .cls labels were in some write batches only: the end of the run gave the files without them
    # a label column as nulls, after their last column, where the writer puts it between height and source. The
    # files then held the same columns in two orders: their Parquet schemas differed, and a `_metadata` summary of the
    # output's footers (pq.write_metadata, as Dask writes one) failed with "AppendRowGroups requires equal schemas";
    # Polars before 1.8 refused such a folder on S3. Every part file now holds its columns in the writer's order.
    from pipeline.output import unify_output_types

    out = tmp_path / "out"
    labelled = [_row(0, {"label": 3, "caption": "a"}, {}), _row(2, {"label": 4, "caption": "b"}, {})]
    write_stage(batch_of(labelled), str(out), {})
    write_stage(batch_of([_row(1, {"caption": "c"}, {})]), str(out), {})
    write_stage(batch_of([_row(3, {}, {})]), str(out), {})
    assert unify_output_types(str(out), {}) == {"caption": "string", "label": "int64"}
    files = sorted((out / "data").glob("part-*.parquet"))
    assert len(files) == 3
    schemas = [pq.read_schema(f) for f in files]
    assert all(schema.equals(schemas[0]) for schema in schemas)
    assert schemas[0].names == ["id", "image", "width", "height", "caption", "label", "source", "source_sha256",
                                "original_mode", "original_format", "original_frames", "psnr_vs_input_db",
                                "downscale_factor"]
    footers = [pq.read_metadata(f) for f in files]
    for footer in footers[1:]:
        footers[0].append_row_groups(footer)
    pq.write_metadata(schemas[0], out / "data" / "_metadata", metadata_collector=[footers[0]])
    assert pq.ParquetDataset(str(out / "data")).read().num_rows == 4
    assert unify_output_types(str(out), {}) == {}  # one order now: nothing left to do


def test_part_files_that_agree_on_another_order_are_left_as_they_are(tmp_path) -> None:
    # Files in one order, whatever it is (an earlier version's, another tool's), read as one data set: none is
    # rewritten to put its columns in the writer's order.
    from pipeline.output import unify_output_types

    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.table({"source": ["s"], "id": [f"x{i}"], "label": [i]}), data / f"part-{i}.parquet")
    stamps = [f.stat().st_mtime_ns for f in sorted(data.iterdir())]
    assert unify_output_types(str(tmp_path / "out"), {}) == {}
    assert [f.stat().st_mtime_ns for f in sorted(data.iterdir())] == stamps


def test_rows_of_a_column_the_end_of_a_run_made_text_still_match_their_members(tmp_path) -> None:
    # Labels 0 and 1 from one tar shard, then "cat" from a shard a later --incremental run added: that run's end made
    # the label column text ("0", "1"), a .json key's object its JSON text and its numbers theirs. A later run that
    # found the first shard touched (same bytes, new mtime) compared its members with their rows, found 0 against
    # "0", and warned that it was "replaced since, a member or row that rows were made from changed", which
    # --refresh-changed then purified again. A value and its text as the end of a run writes it now match.
    import fsspec

    from pipeline.changes import _part_rows, _record_fingerprints, _row_fingerprint
    from pipeline.output import unify_output_types

    out = tmp_path / "out"
    first = _row(0, {"label": 0, "meta": {"w": 1}, "score": 0.5, "when": None}, {})
    write_stage(batch_of([first]), str(out), {})
    write_stage(batch_of([_row(1, {"label": "cat", "meta": {"w": "x", "z": [1]}, "score": "high"}, {})]), str(out), {})
    assert unify_output_types(str(out), {}) == {"label": "string", "meta": "string", "score": "string", "when": "null"}
    rows = [row for f in sorted((out / "data").glob("part-*.parquet"))
            for _, row in _part_rows(fsspec.filesystem("file"), str(f), pa.array([first["id"]]), None)]
    assert len(rows) == 1 and rows[0]["label"] == "0" and rows[0]["meta"] == '{"w": 1}'
    assert _row_fingerprint("data", rows[0]) in _record_fingerprints(first)
    changed = {**first, "meta": {**first["meta"], "label": 1}}
    assert _row_fingerprint("data", rows[0]) not in _record_fingerprints(changed)


def test_an_image_folders_metadata_file_is_a_reject_that_says_what_it_is(tmp_path) -> None:
    # Hugging Face's imagefolder layout: train/metadata.csv beside the images, with file_name and label. It was a
    # reject that read like a damaged image ("not a recognised image format"); it now says what the file is, and that
    # its columns are not joined to the images. A CSV under another name says it is a table, and how one is joined.
    from tests.jobutil import image_folder

    folder = image_folder(tmp_path / "in" / "train", 2)
    (folder / "metadata.csv").write_text("file_name,label\n0.png,3\n1.png,5\n")
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    rejects = {r["id"]: r["error"] for r in _decoded(tmp_path / "in") if r["kind"] == "reject"}
    assert set(rejects) == {"train/metadata.csv", "train/notes.csv"}
    assert rejects["train/notes.csv"].startswith("not a recognised image format (a .csv table, not an image")
    said = rejects["train/metadata.csv"]
    assert said.startswith("not a recognised image format (an image folder's metadata file") and "not join" in said
