"""Temporary files of the output's own records (_summary.json, _job.json, _lease.json) that a killed write left in the
output's folder are removed by the next run, and nothing else there is: the folder may also hold the user's files."""

import os
import time
import uuid

import fsspec
import pytest

from pipeline import output, storage
from pipeline.job import run_job
from pipeline.output import JOB_FILE, SUMMARY_FILE
from tests.jobutil import png_inputs, read_output, small_job_config, tiny_model_file

RECORDS = (SUMMARY_FILE, JOB_FILE, "_lease.json")


def _age(path, seconds: float = 7200) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_only_old_temporaries_of_the_named_records_are_removed(tmp_path) -> None:
    ours_new_style = f".tmp-{uuid.uuid4().hex}-_summary.json"
    ours_old_style = "._job.json.tmp"  # the name versions before this one wrote
    theirs = [".tmp-notes.txt", f".tmp-{uuid.uuid4().hex}-report.json", "._other.json.tmp", "_summary.json.bak"]
    young = f".tmp-{uuid.uuid4().hex}-_lease.json"
    for name in (ours_new_style, ours_old_style, *theirs, young):
        (tmp_path / name).write_bytes(b"{}")
        if name != young:
            _age(tmp_path / name)
    fs = fsspec.filesystem("file")
    assert storage.remove_stale_temporaries(fs, str(tmp_path), of_names=RECORDS) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([*theirs, young])


def test_a_record_write_killed_before_its_move_leaves_a_temporary_the_cleanup_knows(tmp_path, monkeypatch) -> None:
    def killed(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "move_into_place", killed)
    with pytest.raises(KeyboardInterrupt):
        output.write_json(f"{tmp_path}/{SUMMARY_FILE}", {"status": "running"}, {})
    [left] = os.listdir(tmp_path)
    assert left.startswith(storage.TEMP_PREFIX) and left.endswith(SUMMARY_FILE)  # hidden from readers
    assert storage.remove_stale_temporaries(fsspec.filesystem("file"), str(tmp_path), 0, of_names=RECORDS) == 1
    assert os.listdir(tmp_path) == []


def test_a_run_removes_the_old_temporaries_of_its_records_and_keeps_the_user_s_files(tmp_path) -> None:
    png_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    left = [f".tmp-{uuid.uuid4().hex}-{SUMMARY_FILE}", "._summary.json.tmp", f".tmp-{uuid.uuid4().hex}-_lease.json"]
    users = ".tmp-draft.md"
    for name in (*left, users):
        (out / name).write_bytes(b"x")
        _age(out / name)
    summary = run_job(small_job_config(tmp_path, tiny_model_file(tmp_path)))
    assert summary["status"] == "complete"
    hidden = sorted(name for name in os.listdir(out) if name.startswith("."))
    assert hidden == [users]
    data, _ = read_output(str(out))
    assert len(data) == 3
