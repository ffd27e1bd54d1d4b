"""Incremental runs over tar shards and Parquet files: done keys are not extracted, and a container that an earlier
complete run read whole, unchanged since, with all its ids still in the output, is not read at all."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.ledger import LEDGER_DIR, ContainerRead, container_ids, unchanged_and_done
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover, ids_digest, listing_stamp, read_unit
from tests.jobutil import image_bytes, read_output, small_job_config, spy_on_extraction, tar_bytes


def _shard(keys: range, prefix: str = "") -> bytes:
    return tar_bytes({f"{prefix}{k:04d}.png": image_bytes(8, 8, k) for k in keys})


def test_container_ids_takes_each_containers_own_records() -> None:
    units = [ReadUnit("tar", ("/in/a/s.tar",), "/in"), ReadUnit("parquet", ("/in/t.parquet",), "/in"),
             ReadUnit("files", ("/in/x.png",), "/in")]
    done = {"a/s.tar/0001", "a/s.tar/deep/0002",  # members, one in a folder of the shard
            "a/s.tar#unreadable",  # a reject of the shard, not one of its records
            "a/s.tar/cat.0",  # a key of Kaggle-style names ('cat.0.jpg'); no loose file can be there (discover)
            "t.parquet#0", "t.parquet#12", "t.parquet#x", "x.png", "a/other.tar/0001"}
    found = container_ids(done, units)
    assert sorted(found["/in/a/s.tar"]) == ["a/s.tar/0001", "a/s.tar/cat.0", "a/s.tar/deep/0002"]
    assert sorted(found["/in/t.parquet"]) == ["t.parquet#0", "t.parquet#12"]
    assert set(found) == {"/in/a/s.tar", "/in/t.parquet"}


def test_listing_stamp_needs_a_version_field() -> None:
    assert listing_stamp({"size": 3, "created": 1.0}) is None  # nothing that changes when the file is replaced
    assert listing_stamp({"size": 3, "ino": 7}) is None  # an inode survives rewriting in place
    local = {"size": 3, "mtime": 1.5, "ino": 7}
    assert listing_stamp(local) == listing_stamp(dict(local)) != listing_stamp({**local, "mtime": 1.6})
    assert listing_stamp({"ETag": '"abc"'}) != listing_stamp({"ETag": '"abd"'})


def test_a_container_is_skipped_only_when_unchanged_and_all_its_ids_are_done() -> None:
    unit = ReadUnit("tar", ("/in/s.tar",), "/in", (100,), ("v1",))
    ids = ["s.tar/0", "s.tar/1", "s.tar/2"]
    entry = ContainerRead("/in/s.tar", 100, "v1", 3, ids_digest(ids))
    assert unchanged_and_done(unit, "v1", entry, list(reversed(ids)))
    assert not unchanged_and_done(unit, "v2", entry, ids)  # replaced since
    assert not unchanged_and_done(ReadUnit("tar", unit.paths, "/in", (101,), ("v1",)), "v1", entry, ids)  # resized
    assert not unchanged_and_done(unit, None, entry, ids)  # the listing says nothing of its version
    assert not unchanged_and_done(unit, "v1", None, ids)  # never read whole
    assert not unchanged_and_done(unit, "v1", entry, ids[:2])  # an id deleted from the output: read it again
    # as many ids as it gave, but one is left from an older version of the shard and one of its own is missing
    assert not unchanged_and_done(unit, "v1", entry, ["s.tar/0", "s.tar/1", "s.tar/old"])


def test_done_tar_keys_are_neither_extracted_nor_hashed(tmp_path, monkeypatch) -> None:
    members = {f"{k}.png": image_bytes(8, 8, k) for k in range(4)}
    members["3.cls"] = b"1"
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    (unit,) = discover(str(tmp_path))
    extracted = spy_on_extraction(monkeypatch)
    records = list(read_unit(unit, skip_ids={"s.tar/0", "s.tar/1"}))
    assert sorted(extracted) == ["2.png", "3.cls", "3.png"]
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/2", "s.tar/3"]
    count = records[-1]
    assert (count["n"], count["skipped"]) == (2, 2)
    # the digest covers every key of the shard, done or not: what a later run compares with the output
    assert count["container"]["records"] == 4
    assert count["container"]["ids_sha256"] == ids_digest([f"s.tar/{k}" for k in range(4)])


def test_a_link_to_a_done_keys_member_is_still_read(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"a.png": image_bytes(8, 8, 1)}, hard_links={"b.png": "a.png"}))
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit, skip_ids={"s.tar/a"}))
    (image,) = [r for r in records if r["kind"] == "image"]
    assert image["id"] == "s.tar/b" and image["data"] == image_bytes(8, 8, 1)


def test_parquet_row_groups_whose_rows_are_all_done_are_not_read(tmp_path, monkeypatch) -> None:
    table = pa.table({"image": [image_bytes(8, 8, i) for i in range(6)], "label": list(range(6))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)  # groups: rows 0-1, 2-3, 4-5
    (unit,) = discover(str(tmp_path))
    asked = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("row_groups"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    records = list(read_unit(unit, skip_ids={"t.parquet#0", "t.parquet#1", "t.parquet#2"}))
    assert asked == [[1], [2]]  # the first group is all done: never fetched
    assert [(r["id"], r["meta"]["label"]) for r in records if r["kind"] == "image"] == [
        ("t.parquet#3", 3), ("t.parquet#4", 4), ("t.parquet#5", 5)]
    assert (records[-1]["n"], records[-1]["skipped"], records[-1]["container"]["records"]) == (3, 3, 6)


def test_a_shard_that_breaks_off_is_not_named_as_read_whole(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(_shard(range(3))[:1700])  # inside the second member's bytes
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert any(r.get("id") == "s.tar#unreadable" for r in records)
    assert "container" not in records[-1]


# --- whole runs ---


def _records(out) -> dict:
    return json.loads((out / LEDGER_DIR / "containers.json").read_text())["containers"]


@pytest.mark.usefixtures("ray_local")
def test_incremental_runs_skip_unchanged_containers_unread_and_redo_what_changed(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "a.tar").write_bytes(_shard(range(3)))
    (root / "b.tar").write_bytes(_shard(range(3)))
    pq.write_table(pa.table({"image": [image_bytes(8, 8, i) for i in range(2)]}), root / "t.parquet")
    (root / "x.png").write_bytes(image_bytes(8, 8, 9))
    first = run_job(small_job_config(tmp_path, model))
    assert first["this_run"]["purified"] == 9 and first["this_run"]["containers_recorded"] == 3
    assert sorted(entry["path"].rsplit("/", 1)[-1] for entry in _records(out)) == ["a.tar", "b.tar", "t.parquet"]

    # Garbage written over a.tar in place, its size and mtime put back: the listing cannot tell, so it is not read
    # (read, it would be a reject). b.tar gains a key. A part file holding a t.parquet row is deleted.
    a = root / "a.tar"
    stat = a.stat()
    with open(a, "r+b") as f:
        f.write(b"\0" * stat.st_size)
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (root / "b.tar").write_bytes(_shard(range(4)))
    part = next(p for p in (out / "data").glob("part-*.parquet")
                if "t.parquet#1" in pq.read_table(p, columns=["id"]).column("id").to_pylist())
    kept = pq.read_table(part)
    pq.write_table(kept.filter(pa.compute.not_equal(kept.column("id"), "t.parquet#1")), part)
    (root / "c.tar").write_bytes(_shard(range(2)))  # new
    cfg = small_job_config(tmp_path, model, incremental=True)
    plan = plan_job(cfg, dry_run=True).describe()["input"]
    assert plan["containers_already_done"] == 1  # a.tar; b.tar changed, t.parquet lost a row, c.tar is new
    assert (plan["tar_shards"], plan["parquet_files"]) == (2, 1)
    second = run_job(cfg)["this_run"]
    assert second["containers_skipped_unread"] == 1
    data, rejects = read_output(str(out))
    assert len(rejects) == 0 and data["id"].is_unique
    expected = {f"a.tar/{k:04d}" for k in range(3)} | {f"b.tar/{k:04d}" for k in range(4)} | {
        f"c.tar/{k:04d}" for k in range(2)} | {"t.parquet#0", "t.parquet#1", "x.png"}
    assert set(data["id"]) == expected
    # only b.tar's new key, the new shard and the row taken out of the output were purified
    assert (second["purified"], second["read"]) == (1 + 2 + 1, 1 + 2 + 1)
    assert len(_records(out)) == 4

    # --overwrite starts over: the record of containers read goes with the rest of the output.
    run_job(small_job_config(tmp_path, model, overwrite=True, input=str(root / "c.tar")))
    assert [entry["path"].rsplit("/", 1)[-1] for entry in _records(out)] == ["c.tar"]
