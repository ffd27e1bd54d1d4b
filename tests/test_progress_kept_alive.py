"""Progress while no batch is written: a run's count moves a written batch at a time, which can be minutes apart (a
purifier batch of 256 canvases on CPUs; before the canvases were cut a batch a block, a whole tar shard). The bar must
still show the run goes on: a log gets its line a minute, a terminal's bar its running clock."""

from __future__ import annotations

import functools
import io
import threading
import time

import pytest

from pipeline import progress as progress_module
from pipeline.progress import LogProgress, kept_alive
from tests.test_api_progress import Clock


def test_a_log_gets_the_minutes_line_though_the_count_has_not_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    log = io.StringIO()
    bar = LogProgress(None, "images", "img", log)
    bar.set_postfix(rejected=0, read_tasks="0/1")
    clock.now += 59
    bar.refresh()
    assert log.getvalue() == ""  # not a minute yet
    clock.now += 1
    bar.refresh()
    bar.refresh()  # the same minute: one line
    assert log.getvalue().splitlines() == ["images: 0 in 60 s, rejected 0, read_tasks 0/1"]
    clock.now += 30
    bar.update(5)
    bar.close()
    clock.now += 120
    bar.refresh()  # closed: the end's line was the last
    assert log.getvalue().splitlines()[1:] == ["images: 5 in 90 s, 0.0556 img/s, rejected 0, read_tasks 0/1"]


class Recorded:
    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail
        self.seen = threading.Event()

    def refresh(self) -> None:
        self.calls += 1
        self.seen.set()
        if self.fail:
            raise OSError("the terminal went away")


def test_kept_alive_refreshes_the_bar_while_the_work_runs_and_not_after() -> None:
    bar = Recorded()
    with kept_alive(bar, every_s=0.01):
        assert bar.seen.wait(10)
    after = bar.calls
    time.sleep(0.05)
    assert bar.calls == after  # stopped with the work
    assert "progress-kept-alive" not in {t.name for t in threading.enumerate()}


def test_a_refresh_that_fails_does_not_stop_the_work_and_no_bar_needs_no_thread() -> None:
    bar = Recorded(fail=True)
    with kept_alive(bar, every_s=0.01):
        assert bar.seen.wait(10)
        time.sleep(0.05)
    assert bar.calls == 1  # the failing drawing is not tried again
    with kept_alive(None):
        assert "progress-kept-alive" not in {t.name for t in threading.enumerate()}


@pytest.mark.usefixtures("ray_local")
def test_a_run_logs_a_line_before_its_first_batch_is_written(tmp_path, model, monkeypatch, capsys) -> None:
    """The job's log said nothing until the first batch was written: for a large tar shard on CPUs, minutes of
    silence (3,925 Imagenette images in one tar: the first line after 216 s). The wait for the first batch here is the
    purifier actor's start; the refresh comes every 0.05 s instead of every second, and a line is due at once."""
    import pipeline.job as job_module
    from pipeline.job import run_job
    from tests.jobutil import image_folder, small_job_config

    image_folder(tmp_path / "in", 3)
    # raising=False: on the code before, without it, the test fails on what it checks
    monkeypatch.setattr(job_module, "kept_alive", functools.partial(kept_alive, every_s=0.05), raising=False)
    monkeypatch.setattr(job_module, "progress_bar", lambda total, desc, unit, stream, **kw: LogProgress(
        total, desc, unit, stream, every=0.0))
    assert run_job(small_job_config(tmp_path, model, progress=True))["status"] == "complete"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("images: ")]
    assert lines[0].startswith("images: 0/3 (0 %) in ") and lines[0].endswith(", rejected 0"), lines
    assert lines[-1].startswith("images: 3/3 (100 %) in "), lines
