"""The scheduled use: the same --incremental command every hour over an input whose files are added, rewritten and
deleted between runs."""

from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.ledger import ContainerRead, read_ledger, unchanged_and_done
from pipeline.output import RUNS_DIR
from pipeline.sources import ReadUnit, ids_digest
from tests.jobutil import image_bytes, png_inputs, small_job_config, tar_bytes


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


# --- each run's summary kept in OUTPUT/_runs/ (_summary.json is the last run's) ---

def _history(out) -> list[str]:
    """The names in out/_runs/ that readers see (not the hidden temporaries of writes)."""
    folder = out / RUNS_DIR
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.mark.usefixtures("ray_local")
def test_each_run_keeps_its_summary_in_the_history_and_overwrite_clears_it(tmp_path, model) -> None:
    png_inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    first = run_job(small_job_config(tmp_path, model))
    png_inputs(tmp_path / "in", 3)  # one more image for the scheduled run
    second = run_job(small_job_config(tmp_path, model, incremental=True))
    names = _history(out)
    assert len(names) == 2 and all(re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.json", n) for n in names)
    kept = [json.loads((out / RUNS_DIR / n).read_text()) for n in names]  # in the order the runs started
    assert [k["this_run"]["read"] for k in kept] == [first["this_run"]["read"], second["this_run"]["read"]] == [2, 1]
    assert json.loads((out / "_summary.json").read_text()) == kept[1]
    over = run_job(small_job_config(tmp_path, model, overwrite=True))  # the earlier runs' history goes with their rows
    (name,) = _history(out)
    assert json.loads((out / RUNS_DIR / name).read_text())["started"] == over["started"] and name not in names


@pytest.mark.usefixtures("ray_local")
def test_a_run_killed_while_its_summary_is_written_leaves_the_history_whole(tmp_path, model, monkeypatch) -> None:
    import pipeline.output as output

    class Killed(BaseException):  # SIGKILL: nothing of the run's own handling runs after it
        pass

    real, moved = output.move_into_place, []

    def killed_at_the_last_summary(fs, tmp, path, *args, **kwargs) -> None:
        if f"/{RUNS_DIR}/" in path:
            moved.append(path)
            if len(moved) == 2:  # the end's summary, its bytes written under the temporary name
                raise Killed
        real(fs, tmp, path, *args, **kwargs)

    png_inputs(tmp_path / "in", 2)
    monkeypatch.setattr(output, "move_into_place", killed_at_the_last_summary)
    with pytest.raises(Killed):
        run_job(small_job_config(tmp_path, model))
    out = tmp_path / "out"
    (name,) = _history(out)  # the run's start, whole; the end's bytes only under a hidden temporary name
    assert json.loads((out / RUNS_DIR / name).read_text())["status"] == "running"
    assert [p.name for p in (out / RUNS_DIR).iterdir() if p.name.startswith(".")] != []
    monkeypatch.setattr(output, "move_into_place", real)
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"  # resumed
    assert [json.loads((out / RUNS_DIR / n).read_text())["status"] for n in _history(out)] == ["running", "complete"]
