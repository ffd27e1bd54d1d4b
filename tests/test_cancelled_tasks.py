"""A stopped or failed run counts the part files in its output to say what it wrote, so its pipeline's shutdown must
return only once no task of it can still land a file: Ray Data neither waits for the tasks it cancels on an error nor,
with force, for a streaming task (`pipeline.cancelled_tasks`). A failed run said it wrote 8 rows when its output held
16: a write task still under way landed its file after the count."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline import job
from pipeline.cancelled_tasks import install, task_end_refs, wait_for_ended

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
        # the shell says it has started (its process id) from inside the call a cancel without force cannot cut short
        os.system(f"echo $$ > {folder}/started.tmp && mv {folder}/started.tmp {folder}/started && sleep 20 && "
                  f"touch {folder}/part-late")

    ref = writes_late.remote(str(tmp_path))
    deadline = time.time() + 60
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.02)
    shell = int((tmp_path / "started").read_text())
    ray.cancel(ref, force=False)  # as Ray Data cancels on an error: the task's call goes on
    assert wait_for_ended([ref], wait_s=0.5, killed_wait_s=10) == []
    # the task's worker was killed, and the shell with it (Ray kills a killed worker's child processes): nothing of the
    # task is left to write
    deadline = time.time() + 30
    while _running(shell) and time.time() < deadline:
        time.sleep(0.05)
    assert not _running(shell), "the task's call still ran after the task was waited for"
    assert not (tmp_path / "part-late").exists()
    assert wait_for_ended([], wait_s=0.5) == []


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has ended: its parent has only not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _write(batch: dict, folder: str) -> dict:
    i = int(batch["id"][0])
    os.system(f"touch {folder}/started-{i} && sleep 2 && touch {folder}/part-{i}")
    return batch


def test_a_task_started_by_a_scheduling_thread_still_in_its_step_at_the_shutdown_is_awaited(tmp_path, monkeypatch) -> None:
    """Ray Data's shutdown waits 2 s for its scheduling thread, then shuts the stages down. A thread still in its step
    (a loaded machine; here held there until the stages are shut down) went on to start another write task, and the
    pipeline returned with that task running: its file could land after a stopped run's count."""
    import ray
    import ray.data
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    assert install(), "Ray Data's operators moved: pipeline.cancelled_tasks no longer waits for cancelled tasks"
    shutting, held, stages_shut, stepped = (threading.Event() for _ in range(4))
    executors: list[StreamingExecutor] = []
    shutdown, step = StreamingExecutor.shutdown, StreamingExecutor._scheduling_loop_step
    clear = StreamingExecutor._clear_topology_queues_post_shutdown

    def shutdown_with_a_step_held(self, *args, **kwargs):
        if executors or self._shutdown or not self._execution_started:  # not this test's executor (another test's,
            return shutdown(self, *args, **kwargs)  # freed now), or its second shutdown: as Ray Data does
        executors.append(self)
        shutting.set()
        assert held.wait(60), "the scheduling thread started no step"
        return shutdown(self, *args, **kwargs)

    def step_held_until_the_stages_are_shut_down(self, topology):
        if not shutting.is_set() or stepped.is_set():
            return step(self, topology)
        held.set()
        stages_shut.wait(60)
        try:
            return step(self, topology)
        finally:
            stepped.set()

    def clear_once_the_held_step_has_run(self, *args, **kwargs):  # called once the stages are shut down
        stages_shut.set()
        stepped.wait(60)
        return clear(self, *args, **kwargs)

    gc.collect()  # executors other tests left to the garbage collector are shut down before the patches
    cancels, cancel = [], ray.cancel
    monkeypatch.setattr(ray, "cancel", lambda ref, *args, **kwargs: cancels.append(
        getattr(ref, "_generator_ref", ref).hex()) or cancel(ref, *args, **kwargs))  # a streaming task: its generator
    monkeypatch.setattr(StreamingExecutor, "shutdown", shutdown_with_a_step_held)
    monkeypatch.setattr(StreamingExecutor, "_scheduling_loop_step", step_held_until_the_stages_are_shut_down)
    monkeypatch.setattr(StreamingExecutor, "_clear_topology_queues_post_shutdown", clear_once_the_held_step_has_run)
    ds = ray.data.from_items([{"id": i} for i in range(8)], override_num_blocks=8).map_batches(
        _write, batch_size=1, num_cpus=1, fn_kwargs=dict(folder=str(tmp_path)))
    rows = job.written_batches(ds)
    with job.pipeline_closed_on_exit(rows):
        next(rows)  # one batch written; the others under way or waiting for a CPU
    assert stepped.is_set()  # the held step ran after the stages were shut down
    tasks = [task for op in executors[0]._topology for task in op.get_active_tasks()]
    running = [ref for ref in task_end_refs(tasks) if not ray.wait([ref], timeout=0, fetch_local=False)[0]]
    assert running == [], "a task started after the stages were shut down still ran when the pipeline returned"
    # each once: the executor's second shutdown (its iterator's, force=False) cancelled again the task the first had
    # cancelled and waited for, and a second cancel of a task Ray was still starting aborted the driver in CI (Ray's
    # "Check failed: ... Tried to complete task that was not pending")
    assert cancels and len(cancels) == len(set(cancels)), cancels
