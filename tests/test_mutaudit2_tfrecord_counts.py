"""TFRecord records counted before a run (`pipeline.sources.tfrecord_count`, `read_budget`): the cases the counting's
tests let a mutant through (a mutation audit). A count is exact or there is none: a total too large leaves the
progress short of 100 % at the end, one too small shows a run more done than it is."""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
from collections.abc import Iterator

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.config import JobConfig
from pipeline.job import progress_total
from pipeline.plan import plan_job
from pipeline.sources import read_budget, tfrecord_count
from pipeline.sources.crc32c import masked_crc32c
from pipeline.sources.read_budget import MAX_READS, ReadBudget
from pipeline.sources.tfds_metadata import DEFAULT_TEMPLATE, shard_name
from pipeline.sources.tfrecord_count import BLOCK, CountProblem, count_file, count_framed
from pipeline.sources.units import ReadUnit
from tests.test_tfrecord_inputs import framed, labelled, shard

TFDS = pathlib.Path(__file__).parent / "data" / "tfds" / "tiny" / "1.0.0"
TRAIN = [f"tiny-train.tfrecord-0000{i}-of-00002" for i in range(2)]


@pytest.fixture(autouse=True)
def _memory_store_emptied() -> Iterator[None]:
    yield
    if MemoryFileSystem().exists("/mutaudit2-tfc"):
        MemoryFileSystem().rm("/mutaudit2-tfc", recursive=True)


def _config(tmp_path: pathlib.Path, model: str) -> JobConfig:
    return JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                     canvas_size=32)


def _total(tmp_path: pathlib.Path, model: str) -> int | None:
    return progress_total(plan_job(_config(tmp_path, model), dry_run=True), {})


def _records(data: bytes) -> list[bytes]:
    """The records' data of a plain TFRecord file."""
    out, at = [], 0
    while at < len(data):
        length = struct.unpack("<Q", data[at : at + 8])[0]
        out.append(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
    return out


@pytest.mark.parametrize("damaged", [0, 1])
def test_a_header_whose_crc_is_damaged_leaves_no_total_though_its_lengths_add_up(tmp_path, model, damaged) -> None:
    # The reading ends a file at a header whose CRC does not match (its length cannot be trusted): counting its
    # records all the same gave a total the run never reaches
    (tmp_path / "in").mkdir()
    data = bytearray(shard(labelled(3)))
    at = sum(12 + len(r) + 4 for r in _records(bytes(data))[:damaged])
    data[at + 8] ^= 0xFF  # the header's CRC, its length untouched
    (tmp_path / "in" / "a.tfrecord").write_bytes(bytes(data))
    assert _total(tmp_path, model) is None
    (tmp_path / "in" / "a.tfrecord").write_bytes(shard(labelled(3)))
    assert _total(tmp_path, model) == 3


def test_a_tfds_shard_with_a_record_taken_out_is_counted_from_its_headers(tmp_path, model) -> None:
    # dataset_info.json says 4; the shard now holds 3: taken on trust, the total was one too many and the progress
    # ended short of 100 %
    shutil.copytree(TFDS, tmp_path / "in")
    path = tmp_path / "in" / TRAIN[1]
    path.write_bytes(shard(_records(path.read_bytes())[1:]))
    assert _total(tmp_path, model) == 4 + 3 + 2 + 1


def test_a_dataset_info_json_denied_leaves_the_shards_counted_from_their_headers(tmp_path, model, monkeypatch) -> None:
    # access denied to the metadata beside the shards: no reason to give no total, their headers give one
    shutil.copytree(TFDS, tmp_path / "in")

    def denied(folder, name, fs_opts):
        raise PermissionError(f"access denied: {folder}/{name}")

    monkeypatch.setattr(tfrecord_count, "read_json", denied)
    assert _total(tmp_path, model) == 4 + 4 + 2 + 1


def test_a_local_file_is_counted_whatever_is_left_of_the_budget(tmp_path, model, monkeypatch) -> None:
    # a local file's small reads are cheap: none of them is taken from the budget of ranged requests
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tfrecord").write_bytes(shard(labelled(4)))
    monkeypatch.setattr(read_budget, "MAX_READS", 0)
    assert _total(tmp_path, model) == 4


def test_headers_up_to_a_blocks_last_byte_take_one_request(monkeypatch) -> None:
    # the second header ends exactly where the first 64 KiB request does: it is read from that request, not again
    first = b"x" * (BLOCK - 12 - 4 - 12)
    data = framed(first) + framed(b"y" * 10)
    assert len(framed(first)) + 12 == BLOCK
    MemoryFileSystem().pipe_file("/mutaudit2-tfc/a.tfrecord", data)
    reads = []
    original = MemoryFileSystem.cat_file

    def counted(self, path, start=None, end=None, **kw):
        reads.append((start, end))
        return original(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counted)
    budget = ReadBudget()
    assert count_file("memory://mutaudit2-tfc/a.tfrecord", {}, len(data), budget) == 2
    assert reads == [(0, BLOCK)] and budget.left == MAX_READS - 1


def _large_records(n: int) -> tuple[int, object]:
    """A file of `n` records of 100 KB (a request each on an object store), read without being held: its size and a
    read_at that gives each record's header where it lies."""
    length = 100_000
    head = struct.pack("<Q", length)
    head += struct.pack("<I", masked_crc32c(head))
    step = 12 + length + 4

    def read_at(offset: int, size: int) -> bytes:
        assert offset % step == 0, offset
        return head + b"\0" * (min(size, step) - 12)

    return n * step, read_at


def test_the_budget_allows_exactly_ten_thousand_requests_a_run() -> None:
    # as documented: at most 10,000 ranged requests for all of a run's files, past which they are not counted
    assert MAX_READS == 10_000
    size, read_at = _large_records(10_000)
    budget = ReadBudget()
    assert count_framed(read_at, size, BLOCK, budget) == 10_000
    assert budget.left == 0 and not budget.spent
    size, read_at = _large_records(10_001)
    budget = ReadBudget()
    with pytest.raises(CountProblem, match="more than the 10,000 requests allowed"):
        count_framed(read_at, size, BLOCK, budget)
    assert budget.spent


def test_a_split_of_many_shards_is_checked_against_the_listing_once_not_once_a_shard(tmp_path, monkeypatch) -> None:
    # each shard checked its whole split again: 10,000 shards took 13 s to plan, twice (the dry run or the start, then
    # the progress total), 100,000 some 20 minutes; the check is the split's, made once for all its shards
    n = 2000
    (tmp_path / "dataset_info.json").write_text(json.dumps({"name": "d", "fileFormat": "tfrecord", "splits": [
        {"name": "train", "numBytes": str(100 * n), "shardLengths": ["1"] * n}]}))
    paths = [str(tmp_path / shard_name(DEFAULT_TEMPLATE, "d", "train", "tfrecord", i, n)) for i in range(n)]
    units = [ReadUnit("parquet", (path,), str(tmp_path), (100 + 16,)) for path in paths]  # one record of 100 bytes each
    checked = []
    original = tfrecord_count._split_as_listed

    def split_as_listed(shard, sizes):
        checked.append(shard.split)
        return original(shard, sizes)

    monkeypatch.setattr(tfrecord_count, "_split_as_listed", split_as_listed)
    assert tfrecord_count.count_records(units, {}) == dict.fromkeys(paths, 1)
    assert checked == ["train"]
