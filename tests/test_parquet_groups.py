"""Parquet inputs are read a row group at a time: damage in one group costs that group's rows (each a reject, by
its id), not the rest of the file; a storage error is retried from where the read stopped, without a row twice. A
large row group is read page by page, and the part files the job writes have pages small enough to be read so."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import discover, parquet_files, read_unit
from pipeline.stages import write_parquet_atomic
from tests.jobutil import image_bytes


def _file(tmp_path, damage_group: int | None = None) -> None:
    """t.parquet: 6 rows in 3 row groups of 2, stored uncompressed; one group's first page header overwritten."""
    table = pa.table({"image": [image_bytes(8, 8, i) for i in range(6)], "label": list(range(6))})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=2, compression="none")
    data = bytearray(buf.getvalue())
    if damage_group is not None:
        at = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(damage_group).column(0).data_page_offset
        data[at:at + 8] = b"\xff" * 8
    (tmp_path / "t.parquet").write_bytes(bytes(data))


def test_a_damaged_row_group_costs_its_own_rows_only(tmp_path) -> None:
    _file(tmp_path, damage_group=1)
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert [(r["id"], r["meta"]["label"]) for r in records if r["kind"] == "image"] == [
        ("t.parquet#0", 0), ("t.parquet#1", 1), ("t.parquet#4", 4), ("t.parquet#5", 5)]
    rejects = [r for r in records if r["kind"] == "reject"]
    assert [r["id"] for r in rejects] == ["t.parquet#2", "t.parquet#3"]
    assert all("row group 1 of the Parquet file cannot be read" in r["error"] for r in rejects)
    # every row is accounted for by its own id: the file counts as read whole
    assert records[-1]["n"] == 6 and records[-1]["container"]["records"] == 6


def _flaky_iter_batches(monkeypatch, failures: int, after_rows: int):
    """iter_batches that drops the connection `failures` times, each after `after_rows` rows of row group 1."""
    original = pq.ParquetFile.iter_batches
    left = {"n": failures}

    def flaky(self, *args, **kwargs):
        given = 0
        for batch in original(self, *args, **kwargs):
            if kwargs.get("row_groups") == [1] and left["n"] and given >= after_rows:
                left["n"] -= 1
                raise ConnectionResetError(104, "Connection reset by peer")
            yield batch
            given += batch.num_rows

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", flaky)
    monkeypatch.setattr(parquet_files, "backoff", lambda attempt: 0.0)


def test_a_storage_error_mid_group_is_retried_from_where_it_stopped(tmp_path, monkeypatch) -> None:
    _file(tmp_path)
    (unit,) = discover(str(tmp_path))
    _flaky_iter_batches(monkeypatch, failures=2, after_rows=1)
    records = list(parquet_files.read_parquet(unit, {}, None, 2**30, 2**20, rows_per_batch=1))
    assert [r["id"] for r in records] == [f"t.parquet#{i}" for i in range(6)]  # each once, in order
    assert all(r["kind"] == "image" for r in records)


def test_a_storage_error_that_persists_leaves_the_rest_for_the_next_run(tmp_path, monkeypatch) -> None:
    _file(tmp_path)
    (unit,) = discover(str(tmp_path))
    _flaky_iter_batches(monkeypatch, failures=99, after_rows=0)
    records = list(read_unit(unit, in_memory_bytes=2**30))
    assert [r["id"] for r in records[:-1]] == ["t.parquet#0", "t.parquet#1", "t.parquet#unreadable"]
    assert "after 2 rows" in records[-2]["error"] and "Connection reset" in records[-2]["error"]
    assert "container" not in records[-1]  # not read whole: read again by the next --incremental run


@pytest.mark.parametrize("done", [{"t.parquet#2"}, {"t.parquet#2", "t.parquet#3"}])
def test_done_rows_of_a_damaged_group_stay_done(tmp_path, done) -> None:
    _file(tmp_path, damage_group=1)
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit, skip_ids=frozenset(done)))
    assert {r["id"] for r in records if r["kind"] == "reject"} == {"t.parquet#2", "t.parquet#3"} - done
    assert records[-1]["skipped"] == len(done)


def test_a_row_with_only_a_path_to_its_image_says_so(tmp_path) -> None:
    # Hugging Face's Image feature can store {"bytes": None, "path": ...}: the image is not in the file
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "/data/x.jpg"}, {"bytes": image_bytes(8, 8, 1),
                                                                              "path": "y.png"}]}), tmp_path / "t.parquet")
    (unit,) = discover(str(tmp_path))
    reject, image, _count = list(read_unit(unit))
    assert reject["id"] == "t.parquet#0" and "only a path (/data/x.jpg)" in reject["error"]
    assert image["kind"] == "image" and image["meta"] == {"original_path": "y.png"}


class _ReadSizes(io.BytesIO):
    """A file in memory that records the largest single read asked of it."""

    largest = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        _ReadSizes.largest = max(_ReadSizes.largest, len(data))
        return data


def _cells(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(n)]


def test_a_large_row_group_is_read_a_page_at_a_time_not_whole(tmp_path, monkeypatch) -> None:
    """24 cells of 256 kB in one row group (6 MB), a page each: no read asks for more than about one buffer."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": _cells(24, 2**18)}), buf, compression="none", write_batch_size=1)
    (tmp_path / "t.parquet").write_bytes(buf.getvalue())
    (unit,) = discover(str(tmp_path))
    monkeypatch.setattr(parquet_files, "file_opener", lambda *a, **k: (lambda: _ReadSizes(buf.getvalue())))
    _ReadSizes.largest = 0
    records = list(parquet_files.read_parquet(unit, {}, None, 2**30, 2**20, rows_per_batch=1))
    assert [r["id"] for r in records if r["kind"] == "image"] == [f"t.parquet#{i}" for i in range(24)]
    assert 0 < _ReadSizes.largest <= 2 * parquet_files.READ_BUFFER_BYTES


def test_the_part_files_the_job_writes_can_be_read_a_few_images_at_a_time(tmp_path) -> None:
    """64 images of 256 kB (16 MB) in one part file: Arrow's default would put them in one page, which a reader of one
    row must hold whole; the job's pages hold a few images each."""
    write_parquet_atomic(pa.table({"id": [str(i) for i in range(64)], "image": _cells(64, 2**18)}),
                         str(tmp_path / "part-0.parquet"), {})
    part = pq.ParquetFile(_ReadSizes((tmp_path / "part-0.parquet").read_bytes()), buffer_size=2**20, pre_buffer=False)
    _ReadSizes.largest = 0
    batches = part.iter_batches(batch_size=1, columns=["image"])
    assert len(next(batches).column(0)[0].as_py()) == 2**18
    assert _ReadSizes.largest <= 4 * 2**20


def test_rows_of_large_images_are_read_a_few_at_a_time(tmp_path, monkeypatch) -> None:
    """A batch holds about BATCH_BYTES of rows: 40 cells of 1 MiB go about 16 at a time, small ones 256 at a time."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": _cells(40, 2**20)}), buf, compression="none")
    (tmp_path / "big.parquet").write_bytes(buf.getvalue())
    _file(tmp_path)  # t.parquet: 6 small rows in groups of 2
    sizes: list[int] = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        sizes.append(kwargs["batch_size"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    big, small = discover(str(tmp_path))
    assert sum(r["kind"] == "image" for r in read_unit(big)) == 40
    (size,) = sizes  # one row group, read in batches of at most BATCH_BYTES (its footer's size counts page headers)
    assert parquet_files.BATCH_BYTES // 2 <= size * 2**20 <= parquet_files.BATCH_BYTES
    sizes.clear()
    assert sum(r["kind"] == "image" for r in read_unit(small)) == 6
    assert sizes == [256, 256, 256]


def _with_null_images(path, nulls: set[int], rows: int = 8, struct: bool = False, **write) -> None:
    """A Parquet file of `rows` rows in row groups of 3 whose image cell is null at `nulls` (a null struct, or one
    whose bytes are null, alternately, when `struct`)."""
    cells = [None if i in nulls else image_bytes(8, 8, i) for i in range(rows)]
    if struct:
        cells = [None if c is None and i % 2 else {"bytes": c, "path": None} for i, c in enumerate(cells)]
    pq.write_table(pa.table({"image": cells, "label": list(range(rows))}), path, row_group_size=3, **write)


def test_a_dry_run_warns_of_parquet_rows_whose_image_is_null_from_the_footers_alone(tmp_path, capsys,
                                                                                   monkeypatch) -> None:
    from pipeline.cli import main

    (tmp_path / "in").mkdir()
    _with_null_images(tmp_path / "in" / "a.parquet", {0, 3, 4, 6, 7})  # in each row group
    _with_null_images(tmp_path / "in" / "b.parquet", {1, 2}, struct=True)
    _with_null_images(tmp_path / "in" / "c.parquet", set())
    _with_null_images(tmp_path / "in" / "d.parquet", {1}, write_statistics=False)  # no count to give: not named
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", None)  # no data is read, only the footers
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert "7 rows of 2 Parquet files have no image" in line and line.endswith(": a.parquet (5), b.parquet (2)")
    assert not (tmp_path / "out").exists()


def test_a_dry_run_of_parquet_files_without_footer_statistics_gives_no_warning(tmp_path, capsys) -> None:
    from pipeline.cli import main
    from pipeline.config import JobConfig
    from pipeline.plan import plan_job

    (tmp_path / "in").mkdir()
    _with_null_images(tmp_path / "in" / "d.parquet", {1, 2}, write_statistics=False)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.out + captured.err and "1 Parquet file," in captured.out
    report = plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out")), dry_run=True).describe()
    assert report["input"]["parquet_rows_without_image"] == {"rows": 0, "files": 0, "arrow_files": 0, "examples": []}
