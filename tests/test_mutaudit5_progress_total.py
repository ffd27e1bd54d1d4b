"""The run's progress total, counted in a thread of its own while Ray starts (`job._progress_total_meanwhile`): counted
once, not again once the pipeline starts; before the output's lease is taken (FTP and SFTP serve one read at a time);
not at all where the run shows no progress; and a count that fails costs the bar its total alone, not the run."""

from __future__ import annotations

import threading

import pytest

from pipeline import cli, job
from tests.jobutil import image_folder, small_job_argv

pytestmark = pytest.mark.usefixtures("ray_local")


def _watched_run(tmp_path, model, monkeypatch, capsys, progress: bool, count=None,
                 *more: str) -> tuple[list, list[str]]:
    """A run of 5 images, `more` on its command line: what each progress count saw (whether Ray had started, whether the
    output's lease was taken while it counted, the storage options it was given), and the progress lines. `count`: the
    count in place of `job.progress_total`."""
    image_folder(tmp_path / "in", 5)
    ray_started, lease_taken, counts = threading.Event(), threading.Event(), []
    total, init_ray, lease = job.progress_total, job.init_ray, job.OutputLease

    def counting(*args):
        # the lease is waited for a second: where the run waits for the count, it is not taken meanwhile
        counts.append((ray_started.wait(30), lease_taken.wait(1), args[1]))
        return (count or total)(*args)

    class WatchedLease(lease):
        def __enter__(self):
            lease_taken.set()
            return super().__enter__()

    monkeypatch.setattr(job, "progress_total", counting)
    monkeypatch.setattr(job, "init_ray", lambda *args: ray_started.set() or init_ray(*args))
    monkeypatch.setattr(job, "OutputLease", WatchedLease)
    argv = [a for a in small_job_argv(tmp_path, model, *more) if progress is False or a != "--no-progress"]
    assert cli.main(argv) == 0
    return counts, [line for line in capsys.readouterr().err.splitlines() if line.startswith("images: ")]


def test_the_total_is_counted_once_while_ray_starts_and_before_the_outputs_lease(tmp_path, model, monkeypatch,
                                                                                 capsys) -> None:
    # an entry for another store: the count is given the run's options, as its reads need them (a web server's headers)
    counts, progress = _watched_run(tmp_path, model, monkeypatch, capsys, True, None,
                                    "--storage-option", 's3={"anon": true}')
    assert counts == [(True, False, {"s3": {"anon": True}})], counts  # once; Ray started meanwhile; the lease taken after
    assert progress and progress[-1].startswith("images: 5/5 (100 %)"), progress


def test_a_run_without_progress_counts_no_total(tmp_path, model, monkeypatch, capsys) -> None:
    counts, progress = _watched_run(tmp_path, model, monkeypatch, capsys, progress=False)
    assert counts == [] and progress == [], (counts, progress)


def test_a_count_that_fails_leaves_the_bar_without_a_total_and_the_run_goes_on(tmp_path, model, monkeypatch,
                                                                               capsys) -> None:
    def failing(*args):
        raise OSError("the count's storage went away")

    counts, progress = _watched_run(tmp_path, model, monkeypatch, capsys, progress=True, count=failing)
    assert len(counts) == 1 and progress, (counts, progress)
    assert progress[-1].startswith("images: 5 in"), progress  # no total: not "images: 5/..."
