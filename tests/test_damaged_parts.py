"""A part file of the output that cannot be read (emptied, cut short, not Parquet, no id column).

Every later run stopped with "cannot use output OUT: ArrowInvalid: Parquet file size is 0 bytes", naming neither the
file nor what to do. The job writes part files whole, so such a file was damaged by something else: the run now
names every one of them and says how to go on, and going on that way purifies the inputs whose rows were lost.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.output import deduplicate_output, is_damage, output_ids
from pipeline.sources import reject_record
from pipeline.stages import _rejects_table
from tests.jobutil import image_bytes, small_job_config, tiny_model_file


def _part_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


GOOD = _part_bytes(pa.table({"id": ["a", "b"], "x": [1, 2]}))
DAMAGE = {
    "empty": b"",
    "cut_short": GOOD[:-10],
    "not_parquet": b"hello" * 20,
    "no_id_column": _part_bytes(pa.table({"x": [1]})),
    "bytes_overwritten": GOOD[:40] + b"\0" * 50 + GOOD[90:],
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_every_damaged_part_file_is_named_with_its_folder_and_the_way_on(tmp_path, kind: str) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()
    (out / "data" / "part-good.parquet").write_bytes(GOOD)
    (out / "data" / f"part-{kind}.parquet").write_bytes(DAMAGE[kind])
    (out / "rejects" / "part-bad.parquet").write_bytes(b"")
    with pytest.raises(JobError) as caught:
        output_ids(str(out), {})
    message = str(caught.value)
    assert "holds 2 part file(s) that cannot be read" in message
    assert f"data/part-{kind}.parquet (" in message
    assert "rejects/part-bad.parquet (ArrowInvalid: Parquet file size is 0 bytes)" in message
    assert "part-good" not in message
    assert "Move them out of the output" in message and "--incremental" in message


def test_only_ten_files_are_listed_and_the_rest_counted(tmp_path) -> None:
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    for i in range(13):
        (data / f"part-{i:02d}.parquet").write_bytes(b"")
    with pytest.raises(JobError, match=r"holds 13 part file\(s\).*part-09\.parquet.*; and 3 more\.") as caught:
        output_ids(str(tmp_path / "out"), {})
    assert "part-10" not in str(caught.value)


def test_errors_of_the_storage_are_not_taken_for_damage() -> None:
    # a denied or missing file, or a dropped connection, is the storage's: retried or reported as it is, never a
    # reason to tell the user to move the file away
    assert not is_damage(PermissionError(errno.EACCES, "denied"))
    assert not is_damage(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_damage(OSError(errno.EIO, "connection reset"))
    assert not is_damage(ConnectionResetError("reset"))
    assert is_damage(OSError("Couldn't deserialize thrift: TProtocolException: Invalid data"))
    assert is_damage(pa.ArrowInvalid("Parquet magic bytes not found in footer"))


def test_the_end_of_run_check_names_a_part_file_damaged_during_the_run(tmp_path) -> None:
    rejects = tmp_path / "out" / "rejects"
    rejects.mkdir(parents=True)
    pq.write_table(_rejects_table([reject_record("a", "a", "e", "decode")]), rejects / "part-a.parquet")
    (rejects / "part-b.parquet").write_bytes(GOOD[:-10])
    # named as the start of a run names it (one error for all, with what to do), before any file is rewritten
    with pytest.raises(JobError, match=r"holds 1 part file\(s\).*rejects/part-b\.parquet \(ArrowInvalid: Parquet magic "
                       r"bytes not found.*Move them out of the output"):
        deduplicate_output(str(tmp_path / "out"), {})


def test_a_run_over_a_damaged_part_stops_before_work_and_the_advice_given_loses_nothing(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(5):
        (tmp_path / "in" / f"{i}.png").write_bytes(image_bytes(16, 16, i))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    config = small_job_config(tmp_path, tiny_model_file(tmp_path))
    first = run_job(config)
    assert (first["output_totals"]["purified"], first["output_totals"]["rejected"]) == (5, 1)
    data = sorted((tmp_path / "out" / "data").glob("part-*.parquet"))
    lost = set(pq.read_table(data[0], columns=["id"]).column("id").to_pylist())
    data[0].write_bytes(b"")  # emptied by something else
    (tmp_path / "in" / "5.png").write_bytes(image_bytes(16, 16, 5))
    again = dataclasses.replace(config, incremental=True)
    with pytest.raises(JobError, match=rf"data/{data[0].name} \(ArrowInvalid: Parquet file size is 0 bytes\)"):
        run_job(again)
    assert data[0].exists() and data[0].stat().st_size == 0  # nothing moved or deleted for the user
    shutil.move(data[0], tmp_path / "kept.parquet")  # the advice: move it out, run again
    summary = run_job(again)
    assert summary["status"] == "complete"
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (6, 1)
    purified = set(pq.read_table(tmp_path / "out" / "data", columns=["id"]).column("id").to_pylist())
    assert lost and lost <= purified and purified == {f"{i}.png" for i in range(6)}
