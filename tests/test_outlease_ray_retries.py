"""Which failures of the job's tasks Ray retries (pipeline.job.task_retry_options), in a real local Ray.

A storage operation that used up its own bounded retries (RetriesExhausted) fails the task at once: Ray retrying
it as well made one write's 18 requests 72 and its wait 4 times as long. A crashed worker and any other exception
are still retried 3 times."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.job import task_retry_options
from pipeline.storage import RetriesExhausted

# the job passes retries the same (deprecated) remote-args way and silences the same warning
pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.filterwarnings("ignore:.*ray_remote_args.*")]


def _flaky(batch: dict[str, Any], log: str, mode: str) -> dict[str, Any]:
    """Count this attempt in `log`, then fail as `mode` says: always, or on the first attempt only (`-once`)."""
    with open(log, "a") as f:
        f.write("attempt\n")
    attempts = Path(log).read_text().count("attempt")
    kind, _, when = mode.partition("-")
    if when == "once" and attempts > 1:
        return batch
    if kind == "exhausted":
        raise RetriesExhausted("write s3://b/out/data/part-1.parquet: gave up after 6 attempts in 17 s; last error "
                               "SlowDown (HTTP 503)")
    if kind == "oserror":
        raise OSError(errno.EIO, "a storage error with_retries did not see (not a give-up)")
    if kind == "crash":
        os._exit(1)  # the worker dies, as under the OOM killer
    raise RuntimeError("a transient error of the task's own")


def _run(tmp_path: Path, mode: str) -> tuple[int, Exception | None]:
    import ray.data

    log = tmp_path / f"{mode}.log"
    ds = ray.data.from_items([{"x": 1}], override_num_blocks=1).map_batches(
        _flaky, batch_size=None, fn_kwargs=dict(log=str(log), mode=mode), **task_retry_options())
    try:
        ds.materialize()
        error = None
    except Exception as err:  # noqa: BLE001 - the test looks at which one
        error = err
    return log.read_text().count("attempt"), error


def test_a_storage_give_up_fails_the_task_without_ray_retrying_it(tmp_path) -> None:
    attempts, error = _run(tmp_path, "exhausted")
    assert error is not None and "gave up after 6 attempts" in str(error)
    assert attempts == 1, f"Ray retried a storage give-up: {attempts} attempts"


@pytest.mark.parametrize("mode", ["runtime", "oserror"])
def test_other_errors_are_still_retried_three_times(tmp_path, mode) -> None:
    attempts, error = _run(tmp_path, mode)
    assert error is not None
    assert attempts == 4, f"{mode}: {attempts} attempts, expected the first and 3 retries"


@pytest.mark.parametrize("mode", ["runtime-once", "crash-once"])
def test_a_transient_error_or_a_dead_worker_is_retried_and_the_task_succeeds(tmp_path, mode) -> None:
    attempts, error = _run(tmp_path, mode)
    assert error is None, error
    assert attempts == 2


def test_ray_data_is_given_a_fresh_list_each_time() -> None:
    # Ray Data appends RaySystemError to the list it is given; a shared module-level list would grow across stages
    first, second = task_retry_options(), task_retry_options()
    assert first["retry_exceptions"] is not second["retry_exceptions"] and first["max_retries"] == 3
