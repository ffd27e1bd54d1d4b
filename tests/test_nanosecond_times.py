"""A Parquet input's time64[ns] column (a camera's time of day, to the nanosecond) passes through whole: Arrow gives
such a value to Python as a datetime.time, which holds microseconds, and the job wrote 12:00:00.000000123 as
12:00:00 without a word (pipeline.arrow_values)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.arrow_values import NanoTime, python_rows, python_values
from pipeline.export import export_images
from pipeline.job import run_job
from pipeline.stages import batch_of, write_stage
from tests.jobutil import image_bytes, refresh_after_touching, small_job_config

NOON = 12 * 3600 * 10**9
TIMES = [NOON + 123, NOON + 5_000, None]  # nanoseconds past noon; 5 µs; no time
TIME_NS = pa.time64("ns")
SHOT = pa.struct([("at", TIME_NS), ("camera", pa.string())])


def test_time64_ns_values_come_to_python_whole_and_go_back_to_arrow_unchanged() -> None:
    times = pa.array(TIMES, TIME_NS)
    values = python_values(times)
    assert [str(v) for v in values[:2]] == ["12:00:00.000000123", "12:00:00.000005"]  # as datetime.time says 5 µs
    assert pa.array(values, TIME_NS).equals(times)
    nested = pa.array([{"at": NOON + 1, "camera": "a"}, None], SHOT)
    assert pa.array(python_values(nested), SHOT).equals(nested)
    listed = pa.array([[NOON + 7, None], None], pa.list_(TIME_NS))
    assert pa.array(python_values(listed), pa.list_(TIME_NS)).equals(listed)
    rows = python_rows(pa.table({"t": times, "n": [1, 2, 3]}))
    assert rows[0] == {"t": NOON + 123, "n": 1} and isinstance(rows[0]["t"], NanoTime) and rows[2]["t"] is None
    assert python_values(pa.array([1, 2])) == [1, 2]  # other types as Arrow gives them


def _input(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    images = [image_bytes(32, 32, i) for i in range(3)]
    shots = [{"at": t, "camera": f"c{i}"} for i, t in enumerate(TIMES)]
    pq.write_table(pa.table({"image": images, "taken": pa.array(TIMES, TIME_NS), "shot": pa.array(shots, SHOT)}),
                   tmp_path / "in" / "frames.parquet")


def test_a_time64_ns_column_is_written_to_the_output_with_its_nanoseconds(tmp_path, model) -> None:
    _input(tmp_path)
    summary = run_job(small_job_config(tmp_path, model))
    assert summary["this_run"]["purified"] == 3
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out" / "data").glob("part-*.parquet")))
    table = table.sort_by("id")
    assert table.schema.field("taken").type == TIME_NS and table.schema.field("shot").type == SHOT
    assert table.column("taken").to_pylist() == pa.array(TIMES, TIME_NS).to_pylist()  # sorted ids keep the order
    assert table.column("taken").cast(pa.int64()).to_pylist() == TIMES
    assert [s["at"] for s in python_values(table.column("shot"))] == TIMES
    export_images(tmp_path / "out", tmp_path / "files", manifest="jsonl")
    lines = (tmp_path / "files" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    exported = sorted((row["id"], row["taken"], row["shot"]["at"]) for row in map(json.loads, lines))
    assert [e[1] for e in exported] == [e[2] for e in exported] == ["12:00:00.000000123", "12:00:00.000005", None]

    # The same bytes touched (a sync that does not keep times): its rows still match what the file holds, with
    # nanoseconds read on both sides, so a scheduled run says nothing changed and purifies nothing again.
    again = refresh_after_touching(tmp_path, model, [tmp_path / "in" / "frames.parquet"])
    assert again["this_run"]["purified"] == 0
    changed = again["changed_inputs"]
    assert (changed["containers"], changed["refreshed_inputs"], changed["containers_same_members"]) == (0, 0, 1)


def test_a_time64_ns_column_made_text_beside_another_type_keeps_its_nanoseconds(tmp_path) -> None:
    # One Parquet file's 'taken' is time64[ns], another's is text: a batch holding both writes the column as text.
    def row(i: int, value, t: pa.DataType) -> dict:
        return {"kind": "image", "id": f"f{i}.parquet#0", "source": f"in/f{i}.parquet#0", "source_sha256": "0" * 64,
                "png": b"png", "width": 4, "height": 4, "meta": {"taken": value}, "meta_types": {"taken": t}}

    (nano,) = python_values(pa.array([NOON + 123], TIME_NS))
    manifest = write_stage(batch_of([row(0, nano, TIME_NS), row(1, "noon", pa.string())]), str(tmp_path), {})
    (name,) = json.loads(manifest["files"][0])
    taken = pq.read_table(tmp_path / name).column("taken")
    assert taken.type == pa.string() and taken.to_pylist() == ['"12:00:00.000000123"', "noon"]
