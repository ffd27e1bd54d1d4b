"""Arrow IPC record batch headers on an object store, read before a run (the progress total, the dry run's null image
counts): a ranged request of 64 KiB takes the headers of all the small batches in it, and the requests of all a
run's files come from one budget (`read_budget`), past which the total is unknown rather than the start slow; the
counts stay exact, as pyarrow reads the files (`pipeline.sources.ipc_headers`)."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.job import progress_total
from pipeline.plan import plan_job
from pipeline.sources import read_budget
from pipeline.sources.arrow_ipc import BLOCK, ipc_headers
from pipeline.sources.ipc_headers import HeaderProblem, read_headers
from pipeline.sources.read_budget import MAX_READS, ReadBudget
from tests.jobutil import image_bytes


def _ipc(table: pa.Table, form: str, rows_per_batch: int, **options) -> bytes:
    """`table` as an IPC stream or file, `rows_per_batch` rows a record batch."""
    sink = io.BytesIO()
    with (ipc.new_stream if form == "stream" else ipc.new_file)(
            sink, table.schema, options=ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table, max_chunksize=rows_per_batch)
    return sink.getvalue()


def _small(n: int) -> pa.Table:
    """`n` rows of a few bytes each, some null: a batch of one row is a header of a few hundred bytes and a small body."""
    return pa.table({"image": pa.array([None if i % 7 == 0 else bytes([i % 256]) * 8 for i in range(n)], pa.binary()),
                     "label": pa.array(range(n), pa.int64())})


@pytest.fixture(autouse=True)
def _memory_store_emptied() -> Iterator[None]:
    """memory:// is one store for the whole test process: its files go with the test that made them."""
    yield
    for folder in ("/ipcb", "/ipcb-in", "/ipcb-dry"):
        if MemoryFileSystem().exists(folder):
            MemoryFileSystem().rm(folder, recursive=True)


@pytest.fixture
def requests(monkeypatch) -> list[tuple[str, int, int]]:
    """The ranged requests read through a memory:// file system, as an object store's (path, start, end)."""
    made: list[tuple[str, int, int]] = []
    original = MemoryFileSystem.cat_file

    def counted(self, path, start=None, end=None, **kw):
        made.append((path, start, end))
        return original(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counted)
    return made


def _put(name: str, data: bytes) -> str:
    MemoryFileSystem().pipe_file(f"/ipcb/{name}", data)
    return f"memory://ipcb/{name}"


def _as_pyarrow_reads(data: bytes) -> tuple[list[int], list[int]]:
    """Each batch's rows and each column's null count, as pyarrow reads the whole file."""
    reader = (ipc.open_file if data.startswith(b"ARROW1") else ipc.open_stream)(io.BytesIO(data))
    batches = ([reader.get_batch(i) for i in range(reader.num_record_batches)] if data.startswith(b"ARROW1")
               else list(reader))
    table = pa.Table.from_batches(batches, reader.schema)
    return [b.num_rows for b in batches], [table[c].null_count for c in table.column_names]


@pytest.mark.parametrize("form", ["stream", "file"])
def test_the_headers_of_many_small_batches_take_a_request_a_block_not_one_each(form: str, requests) -> None:
    # 400 batches of one row: a request a header made 400 ranged requests (~20-50 ms each) for 100 KB of file.
    data = _ipc(_small(400), form, 1)
    assert len(data) < 3 * BLOCK
    headers = ipc_headers(_put(f"many.{form}", data), {}, len(data))
    assert [b.rows for b in headers.batches] == [1] * 400
    assert sum(b.nulls[0] for b in headers.batches) == _small(400)["image"].null_count
    assert len(requests) <= 5  # the file's blocks, its footer with its last
    assert all(end - start <= BLOCK for _, start, end in requests)


def test_a_batch_of_large_images_costs_a_request_of_its_own_its_body_not_read(requests) -> None:
    table = pa.table({"image": pa.array([image_bytes(160, 160, i) for i in range(4)], pa.binary())})  # 77 KB each
    data = _ipc(table, "file", 1)
    assert ipc_headers(_put("large.arrow", data), {}, len(data)).rows == 4
    # the first block (schema, first header), the footer's, and one for each header after the first block
    assert len(requests) <= 2 + 3 and sum(end - start for _, start, end in requests) < len(data) * 2 // 3


def test_headers_past_the_runs_budget_are_not_counted(requests) -> None:
    data = _ipc(_small(1000), "stream", 1)  # about 4 blocks
    path = _put("budget.arrow", data)
    budget = ReadBudget(2)
    with pytest.raises(HeaderProblem, match="requests allowed"):
        ipc_headers(path, {}, len(data), budget)
    assert budget.spent and len(requests) == 2
    again = ReadBudget()
    assert ipc_headers(path, {}, len(data), again).rows == 1000 and not again.spent
    assert MAX_READS - again.left == len(requests) - 2


@pytest.mark.parametrize("form", ["stream", "file"])
@pytest.mark.parametrize("variant", ["plain", "dictionary", "lz4", "zstd", "empty batches", "no batches", "legacy"])
def test_counts_from_blocks_are_exactly_what_pyarrow_reads(form: str, variant: str, requests) -> None:
    table = _small(50)
    if variant == "dictionary":  # the dictionaries are messages of their own, before and between the batches
        table = table.append_column("kind", pa.array([None if i % 3 else f"k{i % 5}" for i in range(50)]).dictionary_encode())
    options = {"compression": variant} if variant in ("lz4", "zstd") else {"use_legacy_format": True} \
        if variant == "legacy" else {}
    if variant == "empty batches":
        batches = [b for batch in table.to_batches(max_chunksize=7) for b in (batch, batch.slice(0, 0))]
        table = pa.Table.from_batches(batches)
    if variant == "no batches":
        table = table.slice(0, 0)
    sink = io.BytesIO()
    with (ipc.new_stream if form == "stream" else ipc.new_file)(
            sink, table.schema, options=ipc.IpcWriteOptions(**options)) as writer:
        for batch in table.to_batches(max_chunksize=7) if variant != "empty batches" else table.to_batches():
            writer.write_batch(batch)
    data = sink.getvalue()
    rows, nulls = _as_pyarrow_reads(data)
    for block in (0, 64, 300, BLOCK):  # each read as asked (a local file), and blocks whose ends cut headers
        headers = read_headers(lambda offset, length: data[offset : offset + length], len(data), block)
        assert [b.rows for b in headers.batches] == rows, block
        assert headers.schema == table.schema
        assert [sum(b.nulls[i] for b in headers.batches) for i in (0, 1)] == nulls[:2]
    assert ipc_headers(_put(f"exact.{form}", data), {}, len(data), ReadBudget()).rows == sum(rows)


@pytest.mark.parametrize("block", [300, BLOCK])
def test_damage_read_in_blocks_is_a_header_problem_never_a_wrong_count(block: int) -> None:
    whole = [_ipc(_small(60), form, 9) for form in ("stream", "file")]
    rng = random.Random(block)
    agreed = 0
    for _ in range(300):
        data = bytearray(rng.choice(whole))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[: len(data) if rng.random() < 0.8 else rng.randrange(len(data))])
        try:
            rows = read_headers(lambda offset, length, data=data: data[offset : offset + length], len(data), block).rows
        except HeaderProblem:
            continue
        try:
            read = (ipc.open_file if data.startswith(b"ARROW1") else ipc.open_stream)(io.BytesIO(data)).read_all().num_rows
        except (pa.ArrowException, OSError, ValueError):
            continue  # damaged past the headers: the run's reading rejects it
        assert rows == read
        agreed += 1
    assert agreed > 20


def _store_plan(tmp_path, model: str, names: list[str]):
    for i, name in enumerate(names):
        MemoryFileSystem().pipe_file(f"/ipcb-in/{name}", _ipc(_small(200 + i), "stream", 1))
    return plan_job(JobConfig(input="memory://ipcb-in", output=str(tmp_path / "out"), checkpoint=model), dry_run=True)


def test_the_progress_total_is_none_past_the_budget_of_all_its_files(tmp_path, model, monkeypatch, requests) -> None:
    plan = _store_plan(tmp_path, model, ["a.arrow", "b.arrow", "c.arrow"])
    requests.clear()
    assert progress_total(plan, {}) == 200 + 201 + 202
    used = len(requests)
    assert used <= 3 * 2  # a block or two a file of 200 small batches
    monkeypatch.setattr(read_budget, "MAX_READS", used - 1)  # one budget for the three files, not one each
    assert progress_total(plan, {}) is None
    # a local file's headers are cheap reads, not counted
    monkeypatch.setattr(read_budget, "MAX_READS", 0)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "l.arrow").write_bytes(_ipc(_small(30), "file", 1))
    local = plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out2"), checkpoint=model), dry_run=True)
    assert progress_total(local, {}) == 30


def test_a_dry_run_says_null_counts_past_the_budget_are_unknown(tmp_path, monkeypatch, capsys) -> None:
    for name in ("a.arrow", "b.arrow"):
        MemoryFileSystem().pipe_file(f"/ipcb-dry/{name}", _ipc(_small(200), "file", 1))
    args = ["--input", "memory://ipcb-dry", "--output", str(tmp_path / "out"), "--dry-run"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "2 Arrow IPC files have no image" in out and "unknown" not in out
    monkeypatch.setattr(read_budget, "MAX_READS", 1)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "the rows without an image of some Arrow IPC files are unknown: their record batch headers would take " \
           "more than the 1 ranged requests allowed before a run" in out
