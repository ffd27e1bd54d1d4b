"""A tar shard flows through the job a batch at a time. Its canvases reach the purifier one batch at a time, each
written as soon as it is purified: Ray Data had gathered the tile stage's output into blocks of up to 16 MB, a whole
shard of thousands of small canvases, purified as one task before its first row was written (a stop lost all of it;
other actors had nothing to do). And a read worker decodes one read batch at a time: Ray Data had handed the decode
stage six of them at once."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline import stages
from pipeline.decode import DecodePolicy
from pipeline.sources import discover
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
    assert "MapBatches(read_decode_tile_stage)->StreamingRepartition[num_rows_per_block=" in physical, physical
    assert "TaskPoolMapOperator[StreamingRepartition" not in physical, physical


def test_a_read_worker_decodes_and_tiles_one_read_batch_at_a_time(tmp_path, monkeypatch) -> None:
    _shard_of(tmp_path, 5)
    (unit,) = discover(str(tmp_path / "in"))
    decoded: list[int] = []
    real = stages.decode_stage
    monkeypatch.setattr(stages, "decode_stage", lambda batch, **kw: decoded.append(len(batch["record"])) or real(
        batch, **kw))
    out = list(stages.read_decode_tile_stage(
        {k: [v] for k, v in unit.to_row().items()},
        read=dict(storage_options={}, labels_from_folders=False, image_column=None, skip_ids=frozenset(), max_records=2),
        decode=dict(policy=DecodePolicy()),
        tile=dict(canvas_size=32, align=4, large_images="fit", seed=0, max_images=2)))
    assert decoded == [2, 2, 2]  # 5 images, then the shard's count record: a read batch each time
    records = [r for batch in out for r in stages.records_of(batch)]
    assert sorted(m["id"] for r in records if r["kind"] == "canvas" for m in r["members"]) == [
        f"shard.tar/{i}" for i in range(5)]
    assert [r["kind"] for r in records].count("count") == 1
