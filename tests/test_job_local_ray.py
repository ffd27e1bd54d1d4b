"""The job's local Ray is its own, even when a Ray head started with `ray start` runs on the same machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_local_ray_does_not_join_a_head_found_on_this_machine() -> None:
    # `ray start --head` leaves its address in <tmp>/ray/ray_current_cluster, where a plain ray.init() finds it and
    # joins that cluster. Point such a file at an address nobody serves: the job's local Ray must start its own.
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    (Path(tmp) / "ray").mkdir()
    (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tmp
    code = ("import ray; from pipeline.placement import init_local_ray; init_local_ray(num_cpus=1); "
            "print('gcs', ray.get_runtime_context().gcs_address); ray.shutdown()")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    gcs = [line for line in done.stdout.splitlines() if line.startswith("gcs ")]
    assert gcs and not gcs[0].endswith(":9"), done.stdout


def test_ray_data_does_not_tell_the_user_to_turn_its_progress_bars_back_on() -> None:
    # The job turns Ray Data's bars off for its own; Ray then logged "Progress bars disabled. To enable, set
    # `ray.data.DataContext.get_current().enable_progress_bars = True`." on every run's stderr: advice to edit a
    # setting inside the job. In a fresh process, as the driver is: Ray says it once per process.
    code = ("import logging; logging.basicConfig(); import ray.data; from pipeline.job import configure_ray_data; "
            "from ray.data._internal.progress import get_progress_manager; configure_ray_data(); "
            "print(type(get_progress_manager(ray.data.DataContext.get_current(), 'd', {}, False)).__name__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "NoopExecutionProgressManager", done.stdout  # the bars are off: the case Ray warns of
    assert "enable_progress_bars" not in done.stderr and "Progress bars disabled" not in done.stderr, done.stderr


def test_a_local_ray_leaves_the_jobs_stderr_to_the_job_and_to_rays_warnings() -> None:
    # The default run's stderr held 7 lines, 1 of them the job's: Ray's "Token authentication is enabled for this Ray
    # cluster. Set RAY_AUTH_MODE=disabled to opt out", "Started a local Ray instance.", and Ray Data's "Starting
    # execution of Dataset dataset_0359...", "Execution plan of Dataset ..." and "Dataset ... execution finished in
    # 129.15 seconds" (a time the job's own lines contradict). Ray's warnings stay, and token authentication stays on.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_LOGGER_LEVEL", "RAY_DATA_LOGGING_CONFIG", "RAY_DATA_LOG_LEVEL")}
    code = ("import logging, ray, ray.data; from pipeline.placement import init_local_ray; init_local_ray(num_cpus=1); "
            "from ray._raylet import AuthenticationMode, get_authentication_mode; "
            "print('token', get_authentication_mode() == AuthenticationMode.TOKEN); "
            "print('rows', ray.data.range(4).map_batches(lambda b: b).count()); "
            "logging.getLogger('ray.data').warning('a Ray Data warning'); "
            "logging.getLogger('ray').warning('a Ray warning'); ray.shutdown()")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "token True" in done.stdout and "rows 4" in done.stdout, done.stdout
    for noise in ("Token authentication is enabled", "Started a local Ray instance", "Starting execution of Dataset",
                  "Execution plan of Dataset", "execution finished in"):
        assert noise not in done.stderr, done.stderr
    assert "a Ray Data warning" in done.stderr and "a Ray warning" in done.stderr, done.stderr
