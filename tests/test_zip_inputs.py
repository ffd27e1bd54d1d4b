"""Zip archives as input: each file in one is an input, as if the archive were a folder (id `x.zip/a/b.jpg`)."""

from __future__ import annotations

import io
import zipfile

import pytest

from pipeline.config import JobConfig
from pipeline.job import run_job
from pipeline.ledger import container_ids
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover, read_unit
from pipeline.sources.listing import _refuse_colliding_ids
from tests.jobutil import image_bytes, read_output, zip_bytes

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the archive fetched whole, or read through ranges of it


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_each_file_in_a_zip_is_an_input_with_its_folder_as_label(tmp_path, in_memory_bytes) -> None:
    (tmp_path / "d.zip").write_bytes(zip_bytes({
        "cat/": b"", "cat/1.jpg": image_bytes(8, 8, 1, "JPEG"), "dog/2.png": image_bytes(8, 8, 2),
        "top.png": image_bytes(8, 8, 3), "notes.txt": b"not an image",  # read: the decoder makes it a reject
        "__MACOSX/cat/._1.jpg": b"resource fork", ".DS_Store": b"finder",  # hidden, as in a folder: skipped
    }))
    (unit,) = discover(str(tmp_path))
    assert unit.kind == "zip" and unit.stamps[0] is not None
    records = list(read_unit(unit, labels_from_folders=True, in_memory_bytes=in_memory_bytes))
    images = {r["id"]: r for r in records if r["kind"] == "image"}
    assert sorted(images) == ["d.zip/cat/1.jpg", "d.zip/dog/2.png", "d.zip/notes.txt", "d.zip/top.png"]
    assert images["d.zip/cat/1.jpg"]["data"] == image_bytes(8, 8, 1, "JPEG")
    assert images["d.zip/cat/1.jpg"]["source"] == f"{tmp_path}/d.zip:cat/1.jpg"
    assert [images[i]["meta"]["label"] for i in sorted(images)] == ["cat", "dog", None, None]
    count = records[-1]
    assert count["n"] == 4 and count["container"]["records"] == 4  # read whole


def test_damaged_big_and_repeated_zip_members(tmp_path) -> None:
    data = bytearray(zip_bytes({"a.png": image_bytes(8, 8, 1), "b.png": image_bytes(8, 8, 2), "big.png": b"x" * 5000,
                                "c.png": image_bytes(8, 8, 3)}, compression=zipfile.ZIP_STORED))
    at = data.find(image_bytes(8, 8, 2)) + 40
    data[at] ^= 0xFF  # b.png's stored bytes: its CRC no longer matches
    buf = io.BytesIO(bytes(data))
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buf, "a") as archive:
        archive.writestr("c.png", image_bytes(8, 8, 4))  # c.png stored again: the later entry counts
    (tmp_path / "d.zip").write_bytes(buf.getvalue())
    (unit,) = discover(str(tmp_path))
    records = {r["id"]: r for r in read_unit(unit, max_image_bytes=4000) if r["kind"] != "count"}
    assert records["d.zip/a.png"]["kind"] == "image"
    assert records["d.zip/b.png"]["kind"] == "reject" and "corrupt zip member b.png" in records["d.zip/b.png"]["error"]
    big = records["d.zip/big.png"]
    assert big["kind"] == "reject" and "zip member big.png is 0.0 MiB (5,000 bytes), over --max-image-mb" in big["error"]
    assert records["d.zip/c.png"]["data"] == image_bytes(8, 8, 4) and len(records) == 4


def test_a_file_named_zip_that_is_not_one_is_one_reject(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(b"PK not really")
    (unit,) = discover(str(tmp_path))
    (reject, count) = list(read_unit(unit))
    assert reject["id"] == "d.zip#unreadable" and "unreadable zip file: not a zip file" in reject["error"]
    # read whole: reading it unchanged can only say so again, so --incremental skips it (tests/test_lasting_rejects.py)
    assert count["container"]["lasting_reject"] is True


def test_done_zip_members_are_not_read(tmp_path, monkeypatch) -> None:
    (tmp_path / "d.zip").write_bytes(zip_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(3)}))
    (unit,) = discover(str(tmp_path))
    read = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, info, pwd=None: read.append(info.filename) or original(
        self, info, pwd))
    records = list(read_unit(unit, skip_ids={"d.zip/0.png", "d.zip/2.png"}))
    assert read == ["1.png"] and [r["id"] for r in records if r["kind"] == "image"] == ["d.zip/1.png"]
    assert (records[-1]["skipped"], records[-1]["container"]["records"]) == (2, 3)


def test_zip_member_ids_belong_to_their_archive_and_loose_files_under_it_are_refused() -> None:
    units = [ReadUnit("zip", ("s3://b/in/a/d.zip",), "s3://b/in"), ReadUnit("tar", ("s3://b/in/s.tar",), "s3://b/in")]
    found = container_ids({"a/d.zip/cat/1.jpg", "a/d.zip/x", "a/d.zip#unreadable", "s.tar/k", "s.tar/k.png"}, units)
    assert sorted(found["s3://b/in/a/d.zip"]) == ["a/d.zip/cat/1.jpg", "a/d.zip/x"] and sorted(found["s3://b/in/s.tar"]) == [
        "s.tar/k", "s.tar/k.png"]
    # an object store can hold an object 'a/d.zip' and an object 'a/d.zip/cat/1.jpg': the same id twice
    with pytest.raises(ValueError, match="zip member"):
        _refuse_colliding_ids(units, ["s3://b/in/a/d.zip/cat/1.jpg"], "s3://b/in")


@pytest.mark.usefixtures("ray_local")
def test_a_job_over_a_zip_and_an_incremental_run_that_skips_it_unread(tmp_path, model) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "d.zip").write_bytes(zip_bytes({"cat/1.png": image_bytes(16, 16, 1), "dog/2.png": image_bytes(16, 16, 2),
                                            "bad.png": b"not a png"}))
    config = dict(input=str(root), output=str(tmp_path / "out"), checkpoint=model, steps=1, progress=False,
                  canvas_size=32, labels_from_folders=True)
    first = run_job(JobConfig(**config))["this_run"]
    assert (first["purified"], first["rejected"], first["containers_recorded"]) == (2, 1, 1)
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(zip(data["id"], data["label"], strict=True)) == [("d.zip/cat/1.png", "cat"), ("d.zip/dog/2.png", "dog")]
    assert list(rejects["id"]) == ["d.zip/bad.png"]
    plan = plan_job(JobConfig(**config, incremental=True), dry_run=True).describe()["input"]
    assert (plan["zip_files"], plan["containers_already_done"]) == (0, 1)
