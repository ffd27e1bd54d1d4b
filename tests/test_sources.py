"""Readers: every input becomes exactly one record, large units come out a batch at a time."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sources import discover, read_unit
from pipeline.stages import read_stage, records_of
from tests.jobutil import image_bytes, tar_bytes


def _records(path: Path, **kw) -> list[dict]:
    (unit,) = discover(str(path.parent))
    return list(read_unit(unit, **kw))


def test_read_stage_yields_a_large_shard_in_bounded_batches(tmp_path) -> None:
    (tmp_path / "big.tar").write_bytes(tar_bytes({f"{i:03d}.png": image_bytes(8, 8, i) for i in range(10)}))
    (unit,) = discover(str(tmp_path))
    row = {k: [v] for k, v in unit.to_row().items()}
    batches = [records_of(b) for b in read_stage(row, {}, False, None, frozenset(), max_records=4)]
    assert [len(b) for b in batches] == [4, 4, 3]  # 10 images, then the unit's count record
    records = [r for b in batches for r in b]
    assert [r["id"] for r in records[:-1]] == [f"big.tar/{i:03d}" for i in range(10)]
    assert records[-1] == {"kind": "count", "n": 10, "skipped": 0}


def test_tar_sidecars_join_their_image_even_when_not_adjacent(tmp_path) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({"a.png": image_bytes(8, 8, 0), "b.png": image_bytes(8, 8, 1), "a.cls": b"3",
                                 "b.json": b'{"caption": "x"}', "c.cls": b"5"}))
    records = _records(shard)
    by_id = {r["id"]: r for r in records if r["kind"] != "count"}
    assert by_id["s.tar/a"]["meta"] == {"label": 3} and by_id["s.tar/b"]["meta"] == {"caption": "x"}
    assert by_id["s.tar/c"]["kind"] == "reject" and "found cls" in by_id["s.tar/c"]["error"]
    assert by_id["s.tar/a"]["data"] == image_bytes(8, 8, 0)


def test_truncated_shard_keeps_the_keys_before_the_damage_and_rejects_the_rest(tmp_path) -> None:
    data = gzip.compress(tar_bytes({f"{i}.png": image_bytes(16, 16, i) for i in range(6)}))
    shard = tmp_path / "s.tar.gz"
    shard.write_bytes(data[: len(data) * 2 // 3])
    records = _records(shard)
    images = [r for r in records if r["kind"] == "image"]
    *damaged, unreadable = [r for r in records if r["kind"] == "reject"]
    assert 1 <= len(images) < 6 and [r["id"] for r in images] == [f"s.tar.gz/{i}" for i in range(len(images))]
    # a key whose header was read but whose data was cut off is its own reject
    assert all("corrupt tar member" in r["error"] for r in damaged) and len(damaged) <= 1
    keys = len(images) + len(damaged)
    assert unreadable["id"] == "s.tar.gz#unreadable" and f"after {keys} keys" in unreadable["error"]
    assert records[-1] == {"kind": "count", "n": keys + 1, "skipped": 0}


def test_parquet_rows_are_read_in_chunks_with_their_columns(tmp_path) -> None:
    n = 600  # more than one chunk of rows, in several row groups
    table = pa.table({"image": [{"bytes": image_bytes(4, 4, i % 7), "path": f"{i}.png"} for i in range(n)],
                      "label": list(range(n))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=250)
    records = _records(tmp_path / "t.parquet")
    assert [r["id"] for r in records[:-1]] == [f"t.parquet#{i}" for i in range(n)]
    assert all(r["meta"] == {"label": i, "original_path": f"{i}.png"} for i, r in enumerate(records[:-1]))
    assert records[-1]["n"] == n
