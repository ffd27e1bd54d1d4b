"""Mutation audit of pipeline/cancelled_tasks.py's once-per-executor wait: an executor's tasks are cancelled and awaited
once its scheduling thread has ended, never again; while that thread still runs (past the join's wait) it may start
more tasks, which a later shutdown still cancels. Checked on stand-ins of Ray Data's executor and task stage, with the
wrapping installed afresh on them (no Ray started)."""

from __future__ import annotations

import threading

import pytest

import pipeline.cancelled_tasks as cancelled_tasks


@pytest.fixture
def stand_ins(monkeypatch):
    """(an executor class whose shutdown `install` wraps, a task stage class): Ray Data's own classes, their methods
    replaced for this test by ones that do nothing, so that `install` wraps these."""
    from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator
    from ray.data._internal.execution.operators.task_pool_map_operator import TaskPoolMapOperator
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    monkeypatch.setattr(PhysicalOperator, "_cancel_active_tasks", lambda self, force: self.cancelled.append(force))
    monkeypatch.setattr(StreamingExecutor, "shutdown", lambda self, force, *args, **kwargs: None)
    monkeypatch.setattr(cancelled_tasks, "EXECUTOR_THREAD_WAIT_S", 0.05)
    monkeypatch.setattr(cancelled_tasks, "task_end_refs", lambda tasks: [])  # no Ray task to wait for
    assert cancelled_tasks.install()

    class Stage(TaskPoolMapOperator):
        def __init__(self) -> None:  # none of Ray Data's: only what the shutdown asks of a stage
            self.cancelled: list[bool] = []

        def get_active_tasks(self) -> list:
            return ["a task"]  # always one under way

    class ActorStage(PhysicalOperator):
        def __init__(self) -> None:  # an actor stage: its actors are shut down with it, its tasks never cancelled here
            self.cancelled: list[bool] = []

        def get_active_tasks(self) -> list:
            return ["an actor's task"]

    class Executor(threading.Thread):
        """A scheduling thread that runs until `stop` is set, over a task stage that always has a task under way and
        an actor stage."""

        def __init__(self) -> None:
            super().__init__(daemon=True)
            self.stop = threading.Event()
            self.stage, self.actors = Stage(), ActorStage()
            self._topology = {self.stage: None, self.actors: None}

        def run(self) -> None:
            self.stop.wait(60)

        shutdown = StreamingExecutor.shutdown

    return Executor


def test_an_executors_tasks_are_cancelled_again_while_its_thread_runs_and_once_after_it_ended(stand_ins) -> None:
    executor = stand_ins()
    executor.start()
    try:
        with cancelled_tasks.cancelled_tasks_awaited():
            executor.shutdown(True)
            # its thread still runs past the wait for it: it may start more tasks, which a later shutdown cancels
            executor.shutdown(False)
            assert executor.stage.cancelled == [True, False]
            executor.stop.set()
            executor.join(10)
            executor.shutdown(False)  # the thread ended: this is the last cancel and wait
            executor.shutdown(False)  # a later one (its iterator's, the garbage collector's) cancels nothing again
            assert executor.stage.cancelled == [True, False, False]
            assert executor.actors.cancelled == []
        # outside `cancelled_tasks_awaited`, a shutdown is Ray Data's own
        other = stand_ins()
        other.start()
        other.shutdown(True)
        assert other.stage.cancelled == []
        other.stop.set()
    finally:
        executor.stop.set()


def test_a_thread_that_ends_within_the_wait_for_it_has_its_tasks_cancelled_once(stand_ins, monkeypatch) -> None:
    monkeypatch.setattr(cancelled_tasks, "EXECUTOR_THREAD_WAIT_S", 60.0)
    executor = stand_ins()
    executor.start()
    ending = threading.Timer(0.2, executor.stop.set)  # its step ends while the shutdown waits for it
    ending.start()
    try:
        with cancelled_tasks.cancelled_tasks_awaited():
            executor.shutdown(True)
            executor.shutdown(False)
        assert executor.stage.cancelled == [True]
    finally:
        ending.cancel()
        executor.stop.set()


@pytest.mark.usefixtures("ray_local")
def test_the_wait_for_ended_tasks_takes_a_task_named_twice() -> None:
    # a streaming task and its generator give one ref: ray.wait refuses a ref given twice
    import ray

    ref = ray.put(1)
    assert cancelled_tasks.wait_for_ended([ref, ref], wait_s=10, killed_wait_s=1) == []
