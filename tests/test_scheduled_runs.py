"""The scheduled use: the same --incremental command every hour over an input whose files are added, rewritten and
deleted between runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import NOTHING_TO_READ, run_job
from pipeline.lease import LEASE_FILE
from pipeline.ledger import ContainerRead, read_ledger, unchanged_and_done
from pipeline.output import RUNS_DIR, SUMMARY_FILE
from pipeline.sources import ReadUnit, ids_digest
from tests.jobutil import (
    image_bytes,
    no_ray_from_here_on,
    png_inputs,
    read_output,
    run_stopped_at,
    small_job_argv,
    small_job_config,
    tar_bytes,
)

ROOT = Path(__file__).resolve().parents[1]


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


# --- a run with nothing left to read: no Ray, no actors, no pipeline; the rest of a run all the same ---

def _rows(out) -> dict[str, list[str]]:
    """Each folder's ids with their source_sha256, sorted: what the output holds, to compare before and after a run."""
    data, rejects = read_output(str(out))
    return {name: sorted(zip(frame["id"], frame.get("source_sha256", frame["id"]), strict=True))
            for name, frame in (("data", data), ("rejects", rejects))}


@pytest.mark.usefixtures("ray_local")
def test_a_scheduled_run_with_nothing_new_starts_no_ray_and_records_what_a_complete_run_does(tmp_path, model,
                                                                                             monkeypatch,
                                                                                             capsys) -> None:
    """An hourly --incremental run over an output that holds every input started Ray, its purifier actor (a model
    load) and an empty pipeline, and showed 'purified: 0/0 (0 %)': about 15-40 s a run for nothing. The scheduled
    command itself (jobs/purify.py, which ends through `exit_without_teardown` when no Ray was started) then gives
    status 0, everything it printed, and no Ray session made. (Both over one output: a complete run of their own for
    each cost an actor's start and checked nothing more.)"""
    png_inputs(tmp_path / "in", 3)
    (tmp_path / "in" / "s.tar").write_bytes(_shard(2))
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image")
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    out = tmp_path / "out"
    before = _rows(out)
    no_ray_from_here_on(monkeypatch)
    capsys.readouterr()
    summary = run_job(small_job_config(tmp_path, model, incremental=True, progress=True))
    assert "images:" not in capsys.readouterr().err  # no progress bar ('images: 0/0 (0 %)'), not even '0/0'
    run = summary["this_run"]
    assert summary["status"] == "complete"
    assert (run["read"], run["skipped_already_done"], run["containers_skipped_unread"], run["files_written"]) == (
        0, 6, 1, 0)
    assert summary["output_totals"] == {"purified": 5, "rejected": 1, "before_this_run": {"purified": 5, "rejected": 1}}
    assert summary["ray"] == {"actors": 0, "actors_max": 0, "cpus_per_actor": None, "gpus_per_actor": None,
                              "device": None, "torch_threads": None, "note": NOTHING_TO_READ}
    assert _rows(out) == before
    history = _history(out)
    assert len(history) == 2
    assert json.loads((out / SUMMARY_FILE).read_text()) == json.loads((out / RUNS_DIR / history[-1]).read_text())
    assert json.loads((out / SUMMARY_FILE).read_text())["status"] == "complete"
    assert not (out / LEASE_FILE).exists()  # held for the run, and released
    assert [os.path.basename(p) for p in read_ledger(str(out), {})] == ["s.tar"]  # kept: the shard is still there
    _command_line_with_nothing_to_read(tmp_path, model)
    # --retry-rejects with nothing to retry (the reject's input is gone) is such a run too
    (tmp_path / "in" / "bad.png").unlink()
    retried = run_job(small_job_config(tmp_path, model, retry_rejects=True))
    assert (retried["status"], retried["this_run"]["read"], retried["this_run"]["rejects_retried"]["earlier_rejects"],
            retried["output_totals"]["rejected"]) == ("complete", 0, 1, 1)


def _command_line_with_nothing_to_read(tmp_path: Path, model: str) -> None:
    """The scheduled command over tmp_path/out, which holds every input of tmp_path/in (5 purified, 1 rejected): it
    ends with status 0, its counts and its output line, and makes no Ray session."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths would live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run([sys.executable, "jobs/purify.py", *small_job_argv(tmp_path, model, "--incremental")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        sessions = [p.name for p in Path(ray_tmp).rglob("session_*")]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sessions == []
    *_, counts, last = done.stdout.splitlines()
    assert re.fullmatch(r"read 0, purified 0, rejected 0, skipped \(already done\) 6 in [\d.]+ s \(nothing to purify: "
                        r"no Ray was started\); model: user checkpoint", counts), counts
    assert last == (f"output: {tmp_path / 'out'} holds 5 purified and 1 rejected in all (status complete; summary in "
                    "_summary.json; the purified images in data/, each reject with its reason in rejects/)")


@pytest.mark.usefixtures("ray_local")
def test_a_run_with_nothing_left_to_read_after_a_stopped_run_removes_its_duplicates_and_overwrite_clears_it(
        tmp_path, model, monkeypatch) -> None:
    """A run stopped before its end-of-run check can leave an id twice (a batch's write retried after its first
    attempt had landed); the next run's check removes it, also when that run has nothing left to read. Then, the
    input emptied, --overwrite clears that output without starting Ray (the output of a run of its own before)."""
    png_inputs(tmp_path / "in", 3)
    run_stopped_at("deduplicate_output", tmp_path, model, monkeypatch)
    data = tmp_path / "out" / "data"
    first = sorted(data.glob("part-*.parquet"))[0]
    doubled = pq.read_metadata(first).num_rows
    shutil.copy(first, data / "part-retried.parquet")  # the same batch, landed twice
    no_ray_from_here_on(monkeypatch)
    summary = run_job(small_job_config(tmp_path, model))  # the same command again: resumes
    assert summary["status"] == "complete"
    assert (summary["this_run"]["read"], summary["this_run"]["duplicates_removed"]) == (0, doubled)
    ids = [id_ for id_, _ in _rows(tmp_path / "out")["data"]]
    assert ids == ["000.png", "001.png", "002.png"]  # each once
    assert summary["output_totals"]["purified"] == 3

    # --overwrite over the input now empty clears the output, its history too, without starting Ray either
    for image in (tmp_path / "in").iterdir():
        image.unlink()
    summary = run_job(small_job_config(tmp_path, model, overwrite=True))
    assert (summary["status"], summary["this_run"]["read"], summary["output_totals"]["purified"]) == ("complete", 0, 0)
    out = tmp_path / "out"
    assert not (out / "data").exists() and len(_history(out)) == 1  # the earlier runs' rows and history went
