"""A stopped pipeline's tasks awaited: once Ray Data has cancelled its tasks, none of them is still writing.

A run that stops (Ctrl-C, SIGTERM, a failed batch) counts the part files in its output to say what it wrote
(`pipeline.stopped_run.count_stopped_run`), so no write task may land a file after that count. Ray Data does not wait
for the tasks it cancels when it shuts an executor down: on an error it cancels them without force, which only raises
KeyboardInterrupt in a task once the call it is in returns (a write under way goes on to its end), and does not wait;
with force (the end of an iteration: Ctrl-C), it means to wait, but `ray.get` of a task's ObjectRefGenerator returns
at once, so a worker that the kill reached late (a loaded machine) could still move its file into place. A failed run
said it wrote 8 rows when its output held 16.

`cancelled_tasks_awaited` makes the operators of task stages wait, while it is entered, for the end of every task they
cancel: up to CANCELLED_TASKS_WAIT_S, then the ones left are killed (a killed worker writes nothing more) and waited
for again. Actor stages are left as they are: their actors are shut down with them, and write nothing.

The executor's shutdown waits only 2 s for its scheduling thread before it shuts the stages down. A thread still in
its step then (a loaded machine) went on to start a task of a stage already shut down, and the pipeline returned with
that task running: its file could land after the count. So the shutdown, while entered, also waits for that thread to
end (EXECUTOR_THREAD_WAIT_S) and then cancels and waits for whatever tasks its task stages still hold: once per
executor, as a second cancel of a task Ray is still starting can abort the process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

CANCELLED_TASKS_WAIT_S = 60.0  # a write of one part file under way (an upload of a few MB)
KILLED_TASKS_WAIT_S = 10.0  # the workers of tasks killed after that: Ray reports a killed worker within seconds
EXECUTOR_THREAD_WAIT_S = 60.0  # an executor's scheduling thread still in its step once the executor is shut down

_AWAITED = "_zip_purify_tasks_awaited"  # set on an executor whose tasks `shutdown_and_wait` has cancelled and awaited
_entered = 0  # how many `cancelled_tasks_awaited` are entered (a job run inside a job's thread would nest them)
_lock = threading.Lock()


def task_end_refs(tasks: list[Any]) -> list[Any]:
    """The ObjectRefs that are ready once these Ray Data tasks have ended: a streaming task's generator ref (its
    ObjectRefGenerator is ready as soon as one output is), any other task's own ref."""
    refs = []
    for task in tasks:
        waitable = task.get_waitable()
        refs.append(getattr(waitable, "_generator_ref", waitable))
    return refs


def wait_for_ended(refs: list[Any], wait_s: float = CANCELLED_TASKS_WAIT_S,
                   killed_wait_s: float = KILLED_TASKS_WAIT_S) -> list[Any]:
    """Wait for these tasks to end (each ref ready, with a result or an error): `wait_s` at most, then kill the ones
    still running and wait `killed_wait_s` more. Returns the refs of tasks that still had not ended."""
    import ray

    refs = list(dict.fromkeys(refs))  # ray.wait refuses a ref given twice
    if not refs:
        return []
    _, running = ray.wait(refs, num_returns=len(refs), timeout=wait_s, fetch_local=False)
    if not running:
        return []
    for ref in running:
        with contextlib.suppress(Exception):  # ended meanwhile
            ray.cancel(ref, force=True)
    _, running = ray.wait(running, num_returns=len(running), timeout=killed_wait_s, fetch_local=False)
    return running


def install() -> bool:
    """Wrap Ray Data's cancelling of an operator's tasks, once for the process: waiting only while a
    `cancelled_tasks_awaited` is entered, so that another pipeline of the same process is shut down as Ray Data does.
    Returns whether it is wrapped: a Ray Data whose internals moved is left as it is (the job runs; a stopped run's
    count may then miss a file that lands late), and tests/test_cancelled_tasks.py fails on it."""
    try:
        from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator
        from ray.data._internal.execution.operators.task_pool_map_operator import TaskPoolMapOperator
        from ray.data._internal.execution.streaming_executor import StreamingExecutor

        cancel = PhysicalOperator._cancel_active_tasks
        shutdown = StreamingExecutor.shutdown
    except (ImportError, AttributeError):
        return False
    if getattr(cancel, "waits_for_cancelled_tasks", False):
        return True

    def cancel_and_wait(self: Any, force: bool) -> None:
        tasks = self.get_active_tasks() if _entered and isinstance(self, TaskPoolMapOperator) else []
        cancel(self, force)
        wait_for_ended(task_end_refs(tasks))

    def shutdown_and_wait(self: Any, force: bool, *args: Any, **kwargs: Any) -> None:
        shutdown(self, force, *args, **kwargs)
        if not _entered or self.ident is None or self is threading.current_thread() or getattr(self, _AWAITED, False):
            return
        self.join(EXECUTOR_THREAD_WAIT_S)  # no task is started once the scheduling thread has ended
        # Once: a later shutdown of the same executor (its iterator's, or the garbage collector's, force=False) would
        # cancel again the tasks cancelled and waited for here, which Ray Data still lists as active. A second cancel of
        # a task Ray was still starting aborted the whole process ("Check failed: ... Tried to complete task that was
        # not pending", Ray's race of a cancel with the task's start). A thread still running may start more: not yet.
        if not self.is_alive():
            setattr(self, _AWAITED, True)
        for op in getattr(self, "_topology", None) or {}:
            if isinstance(op, TaskPoolMapOperator) and op.get_active_tasks():
                op._cancel_active_tasks(force)  # cancel_and_wait: started after the stage was shut down

    cancel_and_wait.waits_for_cancelled_tasks = True  # type: ignore[attr-defined]
    PhysicalOperator._cancel_active_tasks = cancel_and_wait
    StreamingExecutor.shutdown = shutdown_and_wait
    return True


@contextlib.contextmanager
def cancelled_tasks_awaited() -> Iterator[None]:
    """While entered, a Ray Data executor shut down (by its iterator's end, an error, Ctrl-C) returns only once the
    tasks of its task stages have ended (see the module docstring)."""
    global _entered
    install()
    with _lock:
        _entered += 1
    try:
        yield
    finally:
        with _lock:
            _entered -= 1
