"""The scheduled use: the same --incremental command every hour over an input whose files are added, rewritten and
deleted between runs."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.ledger import ContainerRead, read_ledger, unchanged_and_done
from pipeline.sources import ReadUnit, ids_digest
from tests.jobutil import image_bytes, small_job_config, tar_bytes


def _shard(n: int) -> bytes:
    return tar_bytes({f"{k}.png": image_bytes(16, 16, 10 + k) for k in range(n)})


def _table(n: int) -> pa.Table:
    return pa.table({"image": [{"bytes": image_bytes(16, 16, 20 + k), "path": None} for k in range(n)]})


def test_ids_an_earlier_version_of_a_container_left_do_not_make_it_read_again() -> None:
    unit = ReadUnit("tar", ("/in/s.tar",), "/in", (100,), ("v2",))
    entry = ContainerRead("/in/s.tar", 100, "v2", 2, ids_digest(["s.tar/0", "s.tar/1"]), leftover=("s.tar/2",))
    assert unchanged_and_done(unit, "v2", entry, ["s.tar/0", "s.tar/1", "s.tar/2"])
    assert unchanged_and_done(unit, "v2", entry, ["s.tar/0", "s.tar/1"])  # the leftover row deleted since: still done
    assert not unchanged_and_done(unit, "v2", entry, ["s.tar/0", "s.tar/2"])  # one of its own rows went: read it again
    assert not unchanged_and_done(unit, "v3", entry, ["s.tar/0", "s.tar/1", "s.tar/2"])  # replaced again


@pytest.mark.usefixtures("ray_local")
def test_a_shard_and_a_parquet_file_rewritten_smaller_are_read_once_then_skipped_unread(tmp_path, model) -> None:
    """A tar shard or Parquet file rewritten with fewer records leaves the output holding ids it no longer gives (runs
    never take rows out). The record of its next read compared those with the output's ids and never matched again:
    every later --incremental run downloaded it whole to find nothing to do (read by run 3 and 4 before the fix)."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(_shard(3))
    pq.write_table(_table(3), root / "t.parquet")
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    (root / "s.tar").write_bytes(_shard(2))
    pq.write_table(_table(2), root / "t.parquet")
    scheduled = small_job_config(tmp_path, model, incremental=True)
    second = run_job(scheduled)["this_run"]
    assert (second["read"], second["containers_skipped_unread"], second["containers_recorded"]) == (0, 0, 2)
    third = run_job(scheduled)
    assert third["status"] == "complete"
    assert (third["this_run"]["containers_skipped_unread"], third["this_run"]["skipped_already_done"]) == (2, 4)
    assert third["output_totals"]["purified"] == 6  # the rows of the records they no longer give are kept
    (root / "s.tar").write_bytes(_shard(4))  # grown again, with the key it had lost: read, and only that key is done
    fourth = run_job(scheduled)["this_run"]
    assert (fourth["read"], fourth["skipped_already_done"], fourth["containers_skipped_unread"]) == (1, 5, 1)
    assert run_job(scheduled)["this_run"]["containers_skipped_unread"] == 2


@pytest.mark.usefixtures("ray_local")
def test_the_record_of_containers_read_whole_forgets_those_that_went(tmp_path, model) -> None:
    """An incoming/ prefix whose shards are deleted once purified: the record kept an entry for every shard ever read
    (one a shard, read and rewritten whole by every run), growing without end (a.tar kept before the fix). A run whose
    listing gives no container at all does not read the record, and leaves it as it is."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.tar").write_bytes(_shard(1))
    assert run_job(small_job_config(tmp_path, model))["this_run"]["containers_recorded"] == 1
    (root / "a.tar").unlink()
    (root / "b.tar").write_bytes(_shard(2))
    assert run_job(small_job_config(tmp_path, model, incremental=True))["this_run"]["containers_recorded"] == 1
    assert sorted(os.path.basename(p) for p in read_ledger(str(tmp_path / "out"), {})) == ["b.tar"]
