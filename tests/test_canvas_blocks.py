"""A tar shard's canvases reach the purifier one batch at a time, each written as soon as it is purified: Ray Data had
gathered the tile stage's output into blocks of up to 16 MB, a whole shard of thousands of small canvases, purified
as one task before its first row was written (a stop lost all of it; other actors had nothing to do)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.jobutil import image_bytes, small_job_config, tar_bytes


def _shard_of(tmp_path, n: int) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.tar").write_bytes(tar_bytes({f"{i}.png": image_bytes(32, 32, i) for i in range(n)}))


@pytest.mark.usefixtures("ray_local")
def test_each_purified_batch_of_a_shard_is_written_on_its_own(tmp_path, model) -> None:
    # 6 images of 32 px (a canvas each) in one shard, 2 canvases a batch: each batch written on its own, in a part
    # file of at most 2 rows (the old code: one task for the shard, one file of 6 rows)
    from pipeline.job import run_job

    _shard_of(tmp_path, 6)
    summary = run_job(small_job_config(tmp_path, model, batch_size=2, write_batch=8))
    assert (summary["status"], summary["this_run"]["purified"]) == ("complete", 6)
    parts = sorted((tmp_path / "out" / "data").glob("part-*.parquet"))
    rows = [pq.read_metadata(p).num_rows for p in parts]
    assert summary["this_run"]["files_written"] == len(parts) and sum(rows) == 6 and max(rows) <= 2, rows


@pytest.mark.usefixtures("ray_local")
def test_the_cut_runs_inside_the_tile_stages_tasks(tmp_path, model, capsys) -> None:
    """Ray Data's repartition, given no task options, is a stage of its own: 1 CPU a task, which cannot run where the
    actors hold every CPU, and one more copy of each canvas. It must be fused into the tile stage (a Ray upgrade that
    stops this fails here)."""
    from pipeline.job import build_pipeline
    from pipeline.plan import plan_job

    _shard_of(tmp_path, 2)
    config = small_job_config(tmp_path, model)
    build_pipeline(config, plan_job(config), (1, 0.0, "cpu"), 1).explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "MapBatches(tile_stage)->StreamingRepartition[num_rows_per_block=" in physical, physical
    assert "TaskPoolMapOperator[StreamingRepartition" not in physical, physical
