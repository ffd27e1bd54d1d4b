"""A stopped or failed run counts the part files in its output to say what it wrote, so its pipeline's shutdown must
return only once no task of it can still land a file: Ray Data neither waits for the tasks it cancels on an error nor,
with force, for a streaming task (`pipeline.cancelled_tasks`). A failed run said it wrote 8 rows when its output held
16: a write task still under way landed its file after the count."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipeline import job
from pipeline.cancelled_tasks import install, wait_for_ended

pytestmark = pytest.mark.usefixtures("ray_local")


def _fail_while_another_writes(batch: dict, folder: str) -> dict:
    out = Path(folder)
    i = int(batch["id"][0])
    if i == 0:  # a batch that fails once the other one's write is under way
        deadline = time.time() + 60
        while not (out / "started-1").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        raise RuntimeError("a write failed")
    # a write that a cancel without force cannot cut short: one call, which lands the file at its end. It says it has
    # started from inside that call: said before it, a cancel that came in between (a worker descheduled on a loaded
    # machine) stopped the task before its write began, and no file was to land
    os.system(f"touch {out}/started-1 && sleep 2 && touch {out}/part-landed")
    return batch


def test_a_failed_pipeline_returns_only_once_a_write_under_way_has_landed(tmp_path) -> None:
    import ray.data

    assert install(), "Ray Data's operators moved: pipeline.cancelled_tasks no longer waits for cancelled tasks"
    ds = ray.data.from_items([{"id": i} for i in range(2)], override_num_blocks=2).map_batches(
        _fail_while_another_writes, batch_size=1, num_cpus=0.25, fn_kwargs=dict(folder=str(tmp_path)))
    rows = job.written_batches(ds)
    with pytest.raises(Exception, match="a write failed"):
        with job.pipeline_closed_on_exit(rows):
            for _ in rows:
                pass
    assert (tmp_path / "started-1").exists()  # the other write was under way when the run failed
    # what the run's count sees now is all there will be: the write under way landed before the pipeline returned
    assert (tmp_path / "part-landed").exists()


def test_a_task_that_does_not_end_is_killed_and_writes_nothing_more(tmp_path) -> None:
    import ray

    @ray.remote(num_cpus=0.25, max_retries=0)
    def writes_late(folder: str) -> None:
        Path(folder, "started").write_text(str(os.getpid()))
        os.system(f"sleep 4 && touch {folder}/part-late")

    ref = writes_late.remote(str(tmp_path))
    deadline = time.time() + 60
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.02)
    ray.cancel(ref, force=False)  # as Ray Data cancels on an error: the task's call goes on
    start = time.time()
    assert wait_for_ended([ref], wait_s=0.5, killed_wait_s=10) == []
    waited = time.time() - start
    time.sleep(5)  # past the end of the task's call, had it gone on
    assert not (tmp_path / "part-late").exists(), f"the task wrote after it was waited for ({waited:.1f} s)"
    assert wait_for_ended([], wait_s=0.5) == []
