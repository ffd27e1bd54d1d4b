"""TFRecord files counted before the run: from TFDS's dataset_info.json (tests/data/tfds, written by TFDS itself) or
from their records' headers; the progress total and the dry run that give the counts (`pipeline.sources.tfrecord_count`)."""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil

import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.job import progress_total, run_job
from pipeline.plan import plan_job
from pipeline.sources import tfrecord_count
from pipeline.sources.read_budget import MAX_READS, ReadBudget
from pipeline.sources.tfds_metadata import TfdsProblem, listed_shards, shard_name
from pipeline.sources.tfrecord_count import CountProblem, count_file
from tests.test_tfrecord_inputs import framed, labelled, shard

TFDS = pathlib.Path(__file__).parent / "data" / "tfds" / "tiny" / "1.0.0"
TRAIN = [f"tiny-train.tfrecord-0000{i}-of-00002" for i in range(2)]
TEST = [f"tiny-test.tfrecord-0000{i}-of-00002" for i in range(2)]


def _tfds_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "in"
    shutil.copytree(TFDS, root)
    return root


def _config(tmp_path: pathlib.Path, model: str | None = None, **kw) -> JobConfig:
    return JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                     canvas_size=32, **kw)


def test_dataset_info_json_as_tfds_writes_it_names_each_shard_with_its_records() -> None:
    shards = listed_shards(json.loads((TFDS / "dataset_info.json").read_text()))
    assert {name: s.records for name, s in shards.items()} == {TRAIN[0]: 4, TRAIN[1]: 4, TEST[0]: 2, TEST[1]: 1}
    # numBytes is the records' data: a plain shard is that and 16 bytes of framing a record
    train = shards[TRAIN[0]]
    assert (train.split, train.split_records, train.split_shards) == ("train", 8, tuple(TRAIN))
    assert train.split_bytes + 16 * 8 == sum((TFDS / name).stat().st_size for name in TRAIN)
    # shard numbers as TFDS writes them: at least 5 digits, more where the shards need them
    assert shard_name("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "d", "train", "tfrecord", 3, 123456) == \
        "d-train.tfrecord-000003-of-123456"
    with pytest.raises(TfdsProblem, match="template"):
        shard_name("{DATASET}-{SHARD}", "d", "train", "tfrecord", 0, 1)
    with pytest.raises(TfdsProblem, match="not a count"):
        listed_shards({"name": "d", "splits": [{"name": "train", "shardLengths": ["x"]}]})


def test_the_progress_total_takes_tfds_shards_counts_from_dataset_info_json_unread(tmp_path, model, monkeypatch) -> None:
    # A TFRecord file among the inputs left the run without a total: its records were known only once read
    root = _tfds_copy(tmp_path)
    plan = plan_job(_config(tmp_path, model), dry_run=True)
    assert sorted(u.paths[0].rsplit("/", 1)[1] for u in plan.units) == sorted(TRAIN + TEST)

    def unread(*args, **kw):
        raise AssertionError("a shard's headers were read")

    with monkeypatch.context() as m:
        m.setattr(tfrecord_count, "count_file", unread)
        assert progress_total(plan, {}) == 4 + 4 + 2 + 1
    # resumed: the records already done are not counted again, as for a Parquet file's rows
    plan.container_done[str(root / TRAIN[0])] = [f"{TRAIN[0]}#0", f"{TRAIN[0]}#3", f"{TRAIN[0]}#unreadable"]
    assert progress_total(plan, {}) == 11 - 2


def test_a_shard_rewritten_since_tfds_wrote_it_is_counted_from_its_headers(tmp_path, model) -> None:
    # dataset_info.json says 4 records; the shard now holds 5. Taken on trust, the total was one short, and the
    # progress said 100 % with a record left to purify
    root = _tfds_copy(tmp_path)
    with open(root / TRAIN[1], "ab") as f:
        f.write(framed((root / TEST[1]).read_bytes()[12:-4]))  # the test split's one record, appended
    assert progress_total(plan_job(_config(tmp_path, model), dry_run=True), {}) == 4 + 5 + 2 + 1
    # a split of which the run reads one shard: dataset_info.json cannot be checked against it, its headers can
    (root / TRAIN[1]).unlink()
    (root / TEST[0]).unlink()
    assert progress_total(plan_job(_config(tmp_path, model), dry_run=True), {}) == 4 + 1


def test_plain_files_are_counted_from_their_headers_and_compressed_ones_leave_no_total(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tfrecord").write_bytes(shard(labelled(5)))
    (tmp_path / "in" / "b.tfrecord").write_bytes(b"")  # no records
    (tmp_path / "in" / "c.png").write_bytes(shard(labelled(1))[16:-4])  # any file: an image file, a reject
    plan = plan_job(_config(tmp_path, model), dry_run=True)
    assert progress_total(plan, {}) == 5 + 0 + 1
    plan.container_done[str(tmp_path / "in" / "a.tfrecord")] = ["a.tfrecord#1"]
    assert progress_total(plan, {}) == 5 + 0 + 1 - 1
    # GZIP: counted only by decompressing it whole, so not counted, and no total rather than one too small
    (tmp_path / "in" / "d.tfrecord.gz").write_bytes(gzip.compress(shard(labelled(2))))
    assert progress_total(plan_job(_config(tmp_path, model), dry_run=True), {}) is None
    (tmp_path / "in" / "d.tfrecord.gz").unlink()
    # cut short inside its last record: its headers do not add up to its size
    (tmp_path / "in" / "a.tfrecord").write_bytes(shard(labelled(5))[:-10])
    assert progress_total(plan_job(_config(tmp_path, model), dry_run=True), {}) is None


def test_on_an_object_store_headers_are_read_a_block_at_a_time_within_the_runs_budget(monkeypatch) -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    small = shard(labelled(40))  # 40 records of about 200 bytes: all their headers in one 64 KiB read
    large = shard([framed(b"x" * 100_000)[12:-4]] * 3)  # 3 records of 100 KB: a read each
    MemoryFileSystem().pipe({"/tfc/small.tfrecord": small, "/tfc/large.tfrecord": large})
    reads = []
    original = MemoryFileSystem.cat_file

    def counted(self, path, start=None, end=None, **kw):
        reads.append((path, start, end))
        return original(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counted)
    budget = ReadBudget()
    assert count_file("memory://tfc/small.tfrecord", {}, len(small), budget) == 40
    assert len(reads) == 1
    assert count_file("memory://tfc/large.tfrecord", {}, None, budget) == 3
    assert len(reads) == 1 + 3 and budget.left == MAX_READS - 4
    with pytest.raises(CountProblem, match="requests allowed"):
        count_file("memory://tfc/large.tfrecord", {}, len(large), ReadBudget(2))
    MemoryFileSystem().pipe_file("/tfc/z.tfrecord", gzip.compress(small))
    with pytest.raises(CountProblem, match="compressed"):
        count_file("memory://tfc/z.tfrecord", {}, None, budget)


@pytest.mark.usefixtures("ray_local")
def test_a_run_over_tfds_shards_shows_its_total_and_the_dry_run_their_records(tmp_path, model, capsys) -> None:
    _tfds_copy(tmp_path)
    assert cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "4 TFRecord files (11 records)," in said
    run_job(_config(tmp_path, model, progress=True))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("images: 11/11 (100 %) in ") and "read_tasks" not in last, last
