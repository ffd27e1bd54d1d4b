"""Image-folder metadata (metadata.csv / metadata.jsonl) inside a tar shard, as a tarred image folder holds it, joined
to the images it names as a zip archive's is, wherever it lies in the shard (read in the shard's first pass, over the
headers); and the rows of a zip archive's or tar shard's metadata that name no member, counted and named as a folder's
are: by the dry run (zip archives), the run's summary and its warning on stderr."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, read_unit
from tests.jobutil import image_bytes, read_output, small_job_argv, small_job_config, tar_bytes, zip_bytes

CSV = b"file_name,label,caption\n0.png,3,a cat\n./1.png,5,a dog\n0.cls,8,a sidecar\nmissing.png,9,gone\n"


def _shard(members: dict[str, bytes], suffix: str) -> bytes:
    """A tar of `members` in that order, gzip-compressed for '.tar.gz'."""
    raw = tar_bytes(members)
    if suffix == ".tar":
        return raw
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar, tarfile.open(fileobj=io.BytesIO(raw)) as source:
        for member in source:
            tar.addfile(member, source.extractfile(member))
    return buf.getvalue()


def _read(path: Path, **options: object) -> tuple[dict[str, dict], dict]:
    """A container's image and reject records by id, as a read task makes them, and its count record."""
    records = list(read_unit(ReadUnit("tar" if ".tar" in path.name else "zip", (str(path),), str(path.parent)),
                             **options))
    return {r["id"]: r for r in records if r["kind"] in ("image", "reject")}, records[-1]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("metadata_last", [True, False])
def test_a_tar_shards_metadata_member_is_joined_to_the_images_it_names_wherever_it_lies(
        tmp_path, suffix: str, metadata_last: bool) -> None:
    images = {"train/0.png": image_bytes(8, 8, 0), "train/0.cls": b"7", "train/0.json": b'{"caption": "own"}',
              "train/1.png": image_bytes(8, 8, 1), "train/2.png": image_bytes(8, 8, 2)}
    metadata = {"train/metadata.csv": CSV}
    path = tmp_path / f"d{suffix}"
    path.write_bytes(_shard({**images, **metadata} if metadata_last else {**metadata, **images}, suffix))
    records, count = _read(path, join_metadata=True)
    # the key's own sidecars keep their columns; the row's columns of the same names are kept beside them
    assert records["d" + suffix + "/train/0"]["meta"] == {"label": 7, "caption": "own", "file_name": "0.png",
                                                          "metadata_label": 3, "metadata_caption": "a cat"}
    assert records["d" + suffix + "/train/1"]["meta"] == {"file_name": "./1.png", "label": 5, "caption": "a dog"}
    assert records["d" + suffix + "/train/2"]["meta"] == {}  # no row: nulls, as in a folder
    assert all(r["kind"] == "image" for r in records.values()) and len(records) == 3  # the member is no key now
    assert (count["hidden"], count["hidden_examples"]) == (1, [f"d{suffix}/train/metadata.csv"])
    assert count["container"]["metadata"] == [f"d{suffix}/train/metadata.csv"]
    # a row names an image file: a sidecar's name is no image, and a name that is not there is reported
    assert (count["metadata_unmatched"], count["metadata_unmatched_examples"]) == (
        2, [f"d{suffix}/train/metadata.csv: 0.cls", f"d{suffix}/train/metadata.csv: missing.png"])
    # the key the member gave before (a reject: no image) is out of date
    assert count["container"]["superseded"] == [f"d{suffix}/train/metadata"]


def test_a_tar_metadata_member_that_cannot_be_joined_is_its_own_reject_and_join_false_reads_the_shard_as_before(
        tmp_path) -> None:
    path = tmp_path / "d.tar"
    path.write_bytes(tar_bytes({"a/0.png": image_bytes(8, 8, 0), "a/metadata.jsonl": b'{"file_name": "0.png"\n',
                                "metadata.jsonl": b'{"file_name": "a/0.png", "label": 4}\n'}))
    records, count = _read(path, join_metadata=True)
    bad = records["d.tar/a/metadata.jsonl"]
    assert bad["kind"] == "reject" and "not joined to its images: line 1: not valid JSON" in bad["error"]
    # the nearer file cannot be joined: the image takes the row of the one above it, as in a folder
    assert records["d.tar/a/0"]["meta"] == {"file_name": "a/0.png", "label": 4}
    assert count["container"]["metadata"] == ["d.tar/metadata.jsonl"]
    # done in an earlier run: skipped, as any done id of the shard
    records, count = _read(path, join_metadata=True, skip_ids=frozenset({"d.tar/a/metadata.jsonl"}))
    assert "d.tar/a/metadata.jsonl" not in records and count["skipped"] == 1

    records, count = _read(path)  # --join-metadata false: a key with no image, as before
    assert records["d.tar/a/0"]["meta"] == {}
    assert records["d.tar/a/metadata"]["kind"] == "reject" and "metadata" not in count["container"]


def test_a_metadata_member_over_max_image_mb_is_not_read_and_says_so(tmp_path) -> None:
    path = tmp_path / "d.tar"
    path.write_bytes(tar_bytes({"0.png": image_bytes(8, 8, 0), "metadata.csv": b"file_name,x\n0.png," + b"1" * 2000}))
    records, _ = _read(path, join_metadata=True, max_image_bytes=1000)
    assert records["d.tar/0"]["meta"] == {}
    assert "not joined to its images" in records["d.tar/metadata.csv"]["error"]
    assert "(2,018 bytes), over --max-image-mb" in records["d.tar/metadata.csv"]["error"]


@pytest.mark.usefixtures("ray_local")
def test_a_run_over_a_tarred_image_folder_writes_its_metadata_and_an_edit_in_the_shard_is_a_change(
        tmp_path, model, capsys) -> None:
    (tmp_path / "in").mkdir()
    shard = tmp_path / "in" / "d.tar.gz"
    images = {f"train/{i}.png": image_bytes(16, 16, i) for i in range(3)}
    shard.write_bytes(_shard({**images, "train/metadata.jsonl": b'{"file_name": "0.png", "label": 3}\n'
                                                                b'{"file_name": "1.png", "label": 5}\n'
                                                                b'{"file_name": "7.png", "label": 1}\n'}, ".tar.gz"))
    summary = run_job(small_job_config(tmp_path, model))
    run = summary["this_run"]
    assert (run["purified"], run["rejected"], run["hidden_skipped_examples"]) == (3, 0, ["d.tar.gz/train/metadata.jsonl"])
    assert run["folder_metadata"] == {"files_joined": 0, "files_rejected": 0, "image_files_joined": 0,
                                      "earlier_rejects_removed": 0, "archive_files_joined": 1,
                                      "rows_without_image_file": 1,
                                      "rows_without_image_file_examples": ["d.tar.gz/train/metadata.jsonl: 7.png"]}
    capsys.readouterr()
    cli._print_run_summary(small_job_config(tmp_path, model), summary)
    assert "d.tar.gz/train/metadata.jsonl: 7.png" in " ".join(capsys.readouterr().err.split())
    data, _ = read_output(str(tmp_path / "out"))
    assert sorted((i, None if v != v else int(v)) for i, v in zip(data["id"], data["label"], strict=True)) == [
        ("d.tar.gz/train/0", 3), ("d.tar.gz/train/1", 5), ("d.tar.gz/train/2", None)]

    # a label fixed inside the shard: the shard is another version, its rows differ from what it gives now
    shard.write_bytes(_shard({**images, "train/metadata.jsonl": b'{"file_name": "0.png", "label": 4}\n'
                                                                b'{"file_name": "1.png", "label": 5}\n'}, ".tar.gz"))
    changed = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (changed["containers"], changed["containers_same_members"]) == (1, 0)
    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert summary["this_run"]["refreshed"]["rows_replaced"] == 3
    data, _ = read_output(str(tmp_path / "out"))
    assert dict(zip(data["id"], data["label"], strict=True))["d.tar.gz/train/0"] == 4
    assert "folder_metadata" not in summary["changed_inputs"]


@pytest.mark.usefixtures("ray_local")
def test_a_zip_archives_rows_naming_no_member_are_counted_and_named_by_the_dry_run_and_the_run(
        tmp_path, model, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.zip").write_bytes(zip_bytes({
        "train/0.png": image_bytes(16, 16, 0), "train/metadata.csv": b"file_name,label\n0.png,3\n7.png,4\n"}))
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()
    assert described["input"]["folder_metadata"] == {
        "files_joined": 0, "files_rejected": 0, "image_files_joined": 0, "earlier_rejects_removed": 0,
        "archive_files_joined": 1, "rows_without_image_file": 1,
        "rows_without_image_file_examples": ["d.zip/train/metadata.csv: 7.png"]}
    cli.print_plan(described)
    said = " ".join(capsys.readouterr().out.split())
    assert "1 inside zip archives, joined to their members as they are read" in said
    assert ("warning: 1 row of image-folder metadata files names no image file of the input (its file_name, relative "
            "to the metadata file's folder), joined to nothing: d.zip/train/metadata.csv: 7.png") in said

    assert cli.main(small_job_argv(tmp_path, model)) == 0
    assert "joined to nothing: d.zip/train/metadata.csv: 7.png" in " ".join(capsys.readouterr().err.split())
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["this_run"]["folder_metadata"]["rows_without_image_file"] == 1
    assert summary["this_run"]["folder_metadata"]["archive_files_joined"] == 1


@pytest.mark.usefixtures("ray_local")
def test_an_older_outputs_reject_of_a_shards_metadata_member_goes_once_retry_rejects_reads_the_shard(
        tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.tar").write_bytes(tar_bytes({
        "train/0.png": image_bytes(16, 16, 0), "train/metadata.jsonl": b'{"file_name": "0.png", "label": 3}\n'}))
    # an output an older version made: the member a key with no image, a reject; no join_metadata recorded
    assert run_job(small_job_config(tmp_path, model, join_metadata=False))["this_run"]["rejected"] == 1
    _, rejects = read_output(str(tmp_path / "out"))
    assert list(rejects["id"]) == ["d.tar/train/metadata"]
    record = json.loads((tmp_path / "out" / "_job.json").read_text())
    del record["reading"]["join_metadata"]
    (tmp_path / "out" / "_job.json").write_text(json.dumps(record))

    summary = run_job(small_job_config(tmp_path, model, incremental=True, retry_rejects=True))
    run = summary["this_run"]
    assert (run["stale_rejects_removed"], run["rejects_retried"]["superseded"]) == (1, 1)
    assert summary["output_totals"]["rejected"] == 0 and run["folder_metadata"]["archive_files_joined"] == 1
