"""The job's local Ray is its own, even when a Ray head started with `ray start` runs on the same machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.jobutil import RAY_LOG_LINE, image_folder, small_job_config, tiny_model_file

ROOT = Path(__file__).resolve().parents[1]


def test_the_local_ray_is_its_own_its_workers_import_this_checkout_and_the_callers_pythonpath_is_kept(tmp_path) -> None:
    # 1. `ray start --head` leaves its address in <tmp>/ray/ray_current_cluster, where a plain ray.init() finds it and
    # joins that cluster. Point such a file at an address nobody serves: the job's local Ray must start its own.
    # 2. A program run from elsewhere, the checkout on its sys.path only: the workers find `pipeline` (the job's code)
    # there and the caller's own PYTHONPATH entries too; the program's PYTHONPATH is as it was once Ray has started.
    # One program, one Ray, for both: a process and a Ray each cost ~10 s of CPU and checked nothing more.
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    (Path(tmp) / "ray").mkdir()
    (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "their_module.py").write_text("NAME = 'theirs'\n")
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); import ray; "
            "from pipeline.placement import init_local_ray; init_local_ray(num_cpus=1); "
            "print('gcs', ray.get_runtime_context().gcs_address); "
            "print('caller', os.environ.get('PYTHONPATH')); "
            "f = ray.remote(lambda: (__import__('pipeline').__file__, __import__('their_module').NAME)); "
            "print('worker', *ray.get(f.remote())); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=tmp, PYTHONPATH=str(theirs))
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("gcs ", "caller ", "worker ")))
    assert "gcs" in lines and not lines["gcs"].endswith(":9"), done.stdout
    assert lines["caller"] == str(theirs)
    assert lines["worker"] == f"{ROOT / 'pipeline' / '__init__.py'} theirs"


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


def test_a_program_that_called_run_job_has_a_quiet_local_ray_and_keeps_rays_and_ray_datas_own_output_afterwards(
        tmp_path) -> None:
    # 1. The default run's stderr held 7 lines, 1 of them the job's: Ray's "Token authentication is enabled for this Ray
    # cluster. Set RAY_AUTH_MODE=disabled to opt out", "Started a local Ray instance.", and Ray Data's "Starting
    # execution of Dataset dataset_0359...", "Execution plan of Dataset ..." and "Dataset ... execution finished in
    # 129.15 seconds" (a time the job's own lines contradict). Ray's warnings stay, and token authentication stays on.
    # (Ray Data's lines are quieted while a run of the job uses its own Ray: `ray_data_console_quieted`, as the job runs
    # its pipeline.)
    # 2. The job's quieting of the local Ray it starts outlived the run: in a program that called the Python API's
    # run_job (which leaves the Ray it started running), the "ray" logger stayed at WARNING and Ray Data's console
    # handler too, so that program's own Ray Data pipelines lost their "Starting execution of Dataset ..." lines for
    # good. The run itself still keeps them off stderr.
    # One program, one local Ray (the one run_job starts with init_local_ray), for both: a process and a Ray each cost
    # ~10 s of CPU and checked nothing more.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_LOGGER_LEVEL", "RAY_DATA_LOGGING_CONFIG", "RAY_DATA_LOG_LEVEL")}
    code = ("import logging, sys; from pathlib import Path; import ray, ray.data\n"
            "from pipeline.job import run_job\n"
            "from pipeline.placement import ray_data_console_quieted\n"
            "from tests.jobutil import image_folder, small_job_config, tiny_model_file\n"
            "tmp = Path(sys.argv[1]); image_folder(tmp / 'in', 2)\n"
            "level = logging.getLogger('ray').level\n"
            "summary = run_job(small_job_config(tmp, tiny_model_file(tmp)))\n"
            "print('run', summary['status'], summary['this_run']['purified'])\n"
            "print('ray level kept', logging.getLogger('ray').level == level)\n"
            "import json; print('summary as written', summary == json.loads((tmp / 'out' / '_summary.json').read_text()))\n"
            "print('local ray still up', ray.is_initialized())\n"
            "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
            "print('token', get_authentication_mode() == AuthenticationMode.TOKEN)\n"
            "with ray_data_console_quieted():\n"
            "    print('quieted rows', ray.data.range(4).map_batches(lambda b: b).count())\n"
            "    logging.getLogger('ray.data').warning('a Ray Data warning')\n"
            "logging.getLogger('ray').warning('a Ray warning')\n"
            "print('-- the program\\'s own pipeline --', file=sys.stderr, flush=True)\n"
            "print('rows', ray.data.range(4).map_batches(lambda b: b).count())\n"
            "ray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run complete 2" in done.stdout and "ray level kept True" in done.stdout and "rows 4" in done.stdout, \
        done.stdout
    assert "token True" in done.stdout and "quieted rows 4" in done.stdout, done.stdout
    # docs/api.md: run_job returns the summary it writes, and the local Ray it started stays up for later runs
    assert "summary as written True" in done.stdout and "local ray still up True" in done.stdout, done.stdout
    during, _, after = done.stderr.partition("-- the program's own pipeline --")
    assert after, done.stderr[-3000:]
    for noise in ("Token authentication is enabled", "Started a local Ray instance", "Starting execution of Dataset",
                  "Execution plan of Dataset", "execution finished in"):
        assert noise not in during, during[-3000:]
    assert not [line for line in during.splitlines() if RAY_LOG_LINE.match(line) and "INFO" in line], during[-3000:]
    assert "a Ray Data warning" in during and "a Ray warning" in during, during[-3000:]
    assert "Starting execution of Dataset" in after, after[-3000:]  # as Ray Data prints it without the job


def test_a_program_that_ran_the_job_keeps_its_own_ray_data_settings(tmp_path, ray_local) -> None:
    """run_job left the job's Ray Data settings in the process: a notebook's own actor pool whose UDF raised then
    retried it forever (actor_task_retry_on_errors with Ray Data's max_task_retries=-1), hanging where it had raised."""
    import ray.data

    from pipeline.job import run_job

    names = ("enable_progress_bars", "target_max_block_size", "actor_task_retry_on_errors")  # those the job sets
    ctx = ray.data.DataContext.get_current()
    before = {name: getattr(ctx, name) for name in names}
    image_folder(tmp_path / "in", 2)
    assert run_job(small_job_config(tmp_path, tiny_model_file(tmp_path)))["status"] == "complete"
    assert {name: getattr(ctx, name) for name in names} == before
    assert ctx.actor_task_retry_on_errors is False


def test_the_jobs_ray_remote_args_filter_leaves_the_callers_own_warning_alone() -> None:
    # The job silences Ray Data's "`ray_remote_args` is deprecated" for its own map_batches calls (Ray 2.60 has no
    # named parameter for their retries). The filter matched the message in every module: once a program had called
    # run_job, its own map_batches(..., max_retries=3) was never warned of again. Ray Data attributes the warning to
    # the module that called map_batches, which warn_explicit names here (no Ray is started).
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    from pipeline.job import ray_data_configured

    said = "`ray_remote_args` is deprecated and will be removed in Ray 2.64. Use the named remote parameters instead."
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with ray_data_configured():  # as the job's pipeline is built and run
            warnings.warn_explicit(said, RayDeprecationWarning, "pipeline/job.py", 1, module="pipeline.job")
        warnings.warn_explicit(said, RayDeprecationWarning, "mine.py", 1, module="mine")
        warnings.warn_explicit(said, RayDeprecationWarning, "pipeline/jobs.py", 1, module="pipeline.jobs")
    # (Ray's own warnings as ray.data loads, "`use_push_based_shuffle` is deprecated", are not this test's)
    assert [w.filename for w in seen if str(w.message) == said] == ["mine.py", "pipeline/jobs.py"]


class Placed(Exception):
    """The stand-in placement's stop: the run got past settling its Ray."""


def _ray_up_as(monkeypatch, own: bool) -> list[str]:
    """Ray reported up in this process: the job's own local Ray (an earlier run_job's) or one the caller started. The
    run's placement stops the run (Placed) right after Ray is settled; its calls are kept."""
    import ray

    import pipeline.job as job_module
    from pipeline import placement

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: own)
    placed: list[str] = []

    def stop_here(config):
        placed.append("placed")
        raise Placed

    monkeypatch.setattr(job_module, "with_fitted_actor_cpus", stop_here)
    return placed


def test_a_run_given_an_address_does_not_go_on_the_local_ray_an_earlier_run_left(tmp_path, monkeypatch) -> None:
    """A program's first run_job started a local Ray, which stays up; its next run, with ray_address (or RAY_ADDRESS)
    naming a cluster, ran on that local Ray, silently, and reported a complete run."""
    from pipeline.errors import JobError
    from pipeline.job import run_job

    model = tiny_model_file(tmp_path)
    image_folder(tmp_path / "in", 2)
    placed = _ray_up_as(monkeypatch, own=True)
    with pytest.raises(JobError, match="^--ray-address 10.0.0.1:6379: this process already runs the local Ray .*"
                                       "ray.shutdown()"):
        run_job(small_job_config(tmp_path, model, ray_address="10.0.0.1:6379"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(JobError, match="^RAY_ADDRESS 10.0.0.1:6379: this process already runs the local Ray"):
        run_job(small_job_config(tmp_path, model))
    assert placed == [] and not (tmp_path / "out").exists()


def test_a_ray_the_caller_started_or_joined_is_used_as_it_is_whatever_the_address(tmp_path, monkeypatch) -> None:
    from pipeline.job import run_job

    model = tiny_model_file(tmp_path)
    image_folder(tmp_path / "in", 2)
    placed = _ray_up_as(monkeypatch, own=False)
    with pytest.raises(Placed):  # the stand-in's stop, once Ray was settled: the run goes on on the caller's Ray
        run_job(small_job_config(tmp_path, model, ray_address="10.0.0.1:6379"))
    assert placed == ["placed"]
