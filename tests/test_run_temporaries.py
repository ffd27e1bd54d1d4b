"""A write task killed mid-write (a worker lost, its batch retried) leaves a hidden temporary file in data/. The run
now removes those its own writes left once its pipeline has ended: a folder holding one is refused by Polars given
the folder ("directory contained paths with different file extensions"), and it stayed for an hour."""

from __future__ import annotations

import os
import time

import fsspec

import pipeline.job as job_module
from pipeline.job import run_job
from pipeline.storage import remove_stale_temporaries, temporary_name
from tests.jobutil import image_folder, small_job_config


def test_temporaries_made_since_a_time_are_removed_and_younger_ones_made_before_it_kept(tmp_path) -> None:
    now = time.time()
    made = {}
    for name, age in (("mine", 5), ("earlier", 600), ("old", 7200)):
        path = temporary_name(str(tmp_path / f"part-{name}.parquet"))
        with open(path, "wb") as f:
            f.write(b"half")
        os.utime(path, (now - age, now - age))
        made[name] = path
    (tmp_path / "part-done.parquet").write_bytes(b"whole")
    fs = fsspec.filesystem("file")
    assert remove_stale_temporaries(fs, str(tmp_path), made_since=now - 60) == 2  # "mine" and "old"
    assert sorted(os.listdir(tmp_path)) == sorted(["part-done.parquet", os.path.basename(made["earlier"])])
    assert remove_stale_temporaries(fs, str(tmp_path)) == 0  # without it, an hour


def test_a_run_leaves_no_temporary_its_killed_writes_left_in_data(tmp_path, model, monkeypatch) -> None:
    image_folder(tmp_path / "in", 3)
    data = tmp_path / "out" / "data"
    real = job_module._purify
    earlier: list[str] = []

    def purify_with_a_killed_write(*args, **kwargs):
        data.mkdir(parents=True, exist_ok=True)
        # a write killed before its move into place, while this run's pipeline runs
        with open(temporary_name(str(data / "part-killed.parquet")), "wb") as f:
            f.write(b"PAR1 half a file")
        # an earlier run's, 10 minutes old: left for the hour, as a write of a run that may still be going on
        old = temporary_name(str(data / "part-earlier.parquet"))
        with open(old, "wb") as f:
            f.write(b"PAR1")
        os.utime(old, (time.time() - 600, time.time() - 600))
        earlier.append(os.path.basename(old))
        return real(*args, **kwargs)

    monkeypatch.setattr(job_module, "_purify", purify_with_a_killed_write)
    summary = run_job(small_job_config(tmp_path, model))
    assert summary["status"] == "complete" and summary["this_run"]["purified"] == 3
    hidden = [n for n in os.listdir(data) if n.startswith(".")]
    assert hidden == earlier
