"""A stopped run counts a part file it wrote over an earlier one of the same name. Part names are a hash of the ids a
file holds, so a --retry-rejects batch rejected again in the same grouping is written over its old file; when its
manifest had not reached the driver, the stopped run counted only files with new names and said "this run wrote 0
purified and 0 rejected (0 part files)" for 3 rejects it had written. The files the end-of-run check rewrites under
their own names are an earlier run's rows: a stop there still does not count them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.job as job
import pipeline.stopped_run as stopped_run
from pipeline.errors import JobInterrupted
from pipeline.job import run_job
from pipeline.stages import write_parquet_atomic
from pipeline.stopped_run import count_stopped_run, part_names, stopped_totals
from tests.jobutil import image_bytes, small_job_config, tiny_model_file
from tests.s3util import moto_s3


def _write(path: Path, ids: list[str], reason: str) -> None:
    """As write_parquet_atomic does on a local disk: a temporary file moved into place (a new inode and mtime)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    pq.write_table(pa.table({"id": ids, "error": [reason] * len(ids)}), tmp)
    os.replace(tmp, path)


def test_a_file_written_over_an_earlier_one_of_the_same_name_is_counted_once(tmp_path) -> None:
    out = tmp_path / "out"
    _write(out / "data" / "part-d.parquet", ["ok"], "")
    _write(out / "rejects" / "part-h.parquet", ["r1", "r2"], "old reason")  # an earlier run's
    before = part_names(str(out), {})
    assert set(before) == {"data/part-d.parquet", "rejects/part-h.parquet"}
    # the retry rejects r1 and r2 again in one batch: the same name; its manifest never reached the driver
    _write(out / "rejects" / "part-h.parquet", ["r1", "r2"], "new reason")
    retry = frozenset({"r1", "r2"})
    count = count_stopped_run(str(out), {}, before, {}, retry)
    assert (count.purified, count.rejected, count.files, count.retried, count.short) == (0, 2, 1, 2, None)
    # the output holds each input once: r1 and r2 were counted before this run, and are in this run's file now
    assert stopped_totals((1, 2), count, retry) == {"purified": 1, "rejected": 2}
    # reported, it is counted once, not once as reported and again as landed
    reported = count_stopped_run(str(out), {}, before, {"rejects/part-h.parquet": 2}, retry)
    assert (reported.rejected, reported.files, reported.retried) == (2, 1, 2)


def test_files_left_as_they_were_or_compared_by_name_only_are_not_counted(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    _write(out / "rejects" / "part-h.parquet", ["r1", "r2"], "old reason")
    before = part_names(str(out), {})
    assert count_stopped_run(str(out), {}, before, {}) == stopped_run.StoppedCount(0, 0, 0)  # untouched: an earlier run's
    _write(out / "rejects" / "part-h.parquet", ["r1", "r2"], "rewritten")
    # names only (the caller's once the pipeline has reported all it wrote: the end-of-run check's rewrites)
    assert count_stopped_run(str(out), {}, set(before), {}) == stopped_run.StoppedCount(0, 0, 0)
    # a listing that gives no version of its files (no stamps): none is taken for this run's
    monkeypatch.setattr(stopped_run, "listing_stamp", lambda info: None)
    assert count_stopped_run(str(out), {}, part_names(str(out), {}), {}) == stopped_run.StoppedCount(0, 0, 0)


def test_on_s3_a_file_written_over_under_its_name_is_counted() -> None:
    """s3fs's listing: the ETag (and LastModified) of the object moved into place differ from the old one's."""
    with moto_s3("stopcount") as (_, options):
        out = "s3://stopcount/out"
        write_parquet_atomic(pa.table({"id": ["r1", "r2"], "error": ["old"] * 2}), f"{out}/rejects/part-h.parquet",
                             options)
        write_parquet_atomic(pa.table({"id": ["ok"]}), f"{out}/data/part-d.parquet", options)
        before = part_names(out, options)
        assert set(before) == {"data/part-d.parquet", "rejects/part-h.parquet"} and None not in before.values()
        assert count_stopped_run(out, options, before, {}) == stopped_run.StoppedCount(0, 0, 0)
        write_parquet_atomic(pa.table({"id": ["r1", "r2"], "error": ["new reason"] * 2}),
                             f"{out}/rejects/part-h.parquet", options)
        count = count_stopped_run(out, options, before, {}, frozenset({"r1", "r2"}))
        assert (count.purified, count.rejected, count.files, count.retried) == (0, 2, 1, 2)


@pytest.mark.slow  # three small runs of the job (~30 s of Ray)
@pytest.mark.usefixtures("ray_local")
def test_a_stopped_retry_run_counts_the_rejects_it_wrote_over_their_old_file(tmp_path, monkeypatch) -> None:
    import ray.data

    model = tiny_model_file(tmp_path)
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "good.png").write_bytes(image_bytes(8, 8, 1))
    for k in "abc":
        (root / f"{k}.png").write_bytes(b"junk " + k.encode())
    first = run_job(small_job_config(tmp_path, model))
    assert (first["output_totals"]["purified"], first["output_totals"]["rejected"]) == (1, 3)
    rejects_file = next((out / "rejects").glob("part-*.parquet"))
    data_file = next((out / "data").glob("part-*.parquet"))
    old = rejects_file.stat().st_mtime_ns

    # 1. Ctrl-C just as the retry's first manifest is ready: its file is in place, the driver never takes the row
    iter_batches = ray.data.Dataset.iter_batches  # how the driver takes the written batches' rows (job.written_batches)

    def stopped_at_first_manifest(self, *args, **kwargs):
        for _ in iter_batches(self, *args, **kwargs):
            raise KeyboardInterrupt
        yield from ()

    monkeypatch.setattr(ray.data.Dataset, "iter_batches", stopped_at_first_manifest)
    with pytest.raises(JobInterrupted) as stopped:
        run_job(small_job_config(tmp_path, model, retry_rejects=True))
    assert [p.name for p in (out / "rejects").glob("part-*.parquet")] == [rejects_file.name]
    assert rejects_file.stat().st_mtime_ns != old  # the 3 inputs rejected again, in one batch: the same name
    assert "this run wrote 0 purified and 3 rejected (1 part file), so the output now holds 1 purified and 3 " \
           "rejected" in str(stopped.value)  # it said 0 rejected (0 part files)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "interrupted"
    this_run = {k: summary["this_run"][k] for k in ("purified", "rejected", "files_written", "rejects_retried")}
    assert this_run == {"purified": 0, "rejected": 3, "files_written": 1, "rejects_retried": 3}
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (1, 3)

    # 2. Stopped in the end-of-run check, after it rewrote an earlier run's file under its own name: not this run's
    monkeypatch.undo()

    def rewrite_then_stop(*args, **kwargs):
        _write(data_file, ["good.png"], "")  # as a column upgrade or a retyping rewrites it
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "deduplicate_output", rewrite_then_stop)
    with pytest.raises(JobInterrupted) as stopped:
        run_job(small_job_config(tmp_path, model, retry_rejects=True))
    assert "this run wrote 0 purified and 3 rejected (1 part file), so the output now holds 1 purified and 3 " \
           "rejected" in str(stopped.value)
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (1, 3)
