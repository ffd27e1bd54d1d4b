"""Mutation audit of the dry run's sidecar counts (`plan.JobPlan.describe`): a sidecar two images share is one file
to read, its bytes counted once, and with --join-metadata false no file is a sidecar: each is an input to read."""

from __future__ import annotations

from pathlib import Path

from pipeline.plan import plan_job
from tests.jobutil import image_bytes, small_job_config, zip_bytes


def _input(tmp_path: Path) -> dict[str, bytes]:
    files = {"p.jpg": image_bytes(8, 8, 0, "JPEG"), "p.png": image_bytes(8, 8, 1), "p.cls": b"3",
             "q.png": image_bytes(8, 8, 2), "q.txt": b"a caption", "q.json": b'{"n": 1}'}
    (tmp_path / "in").mkdir()
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    return files


def test_a_sidecar_two_images_share_is_counted_once_with_its_bytes(tmp_path, model) -> None:
    files = _input(tmp_path)
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]
    assert (described["image_files_to_read"], described["sidecar_files"]) == (3, 3)
    assert described["bytes"] == sum(len(data) for data in files.values())  # p.cls once, not once an image


def test_with_join_metadata_false_no_file_is_a_sidecar(tmp_path, model) -> None:
    files = _input(tmp_path)
    described = plan_job(small_job_config(tmp_path, model, join_metadata=False), dry_run=True).describe()["input"]
    assert (described["image_files_to_read"], described["sidecar_files"]) == (6, 0)
    assert described["bytes"] == sum(len(data) for data in files.values())


def test_the_dry_runs_zip_metadata_rows_naming_a_sidecar_name_no_image_as_in_the_run(tmp_path, model) -> None:
    # the run's read task pairs 0.txt with 0.png, so the row naming it names no image file: the dry run said it joined
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.zip").write_bytes(zip_bytes({
        "a/0.png": image_bytes(8, 8, 0), "a/0.txt": b"a cat",
        "a/metadata.csv": b"file_name,note\n0.png,n0\n0.txt,names a sidecar\n"}))
    found = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]["folder_metadata"]
    assert (found["archive_files_joined"], found["rows_without_image_file"]) == (1, 1)
    assert found["rows_without_image_file_examples"] == ["d.zip/a/metadata.csv: 0.txt"]
