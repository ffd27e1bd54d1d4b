"""A tar shard made on a Mac carries metadata beside the user's files: an AppleDouble '._x' for each file with extended
attributes (bsdtar stores them; every downloaded file has one), '.DS_Store', or a '__MACOSX/' folder. They are no
images: skipped and counted as hidden, as in a folder or zip, not one puzzling reject per folder of the shard."""

from __future__ import annotations

import struct
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.job import run_job
from pipeline.ledger import read_ledger, write_ledger
from pipeline.sources import discover, ids_digest, read_unit, reject_record
from pipeline.stages import _rejects_table
from tests.jobutil import image_bytes, read_output, tar_bytes

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the shard fetched whole, or streamed from storage
# An AppleDouble file: magic 0x00051607, version 2, filler, no entries
APPLEDOUBLE = struct.pack(">II", 0x00051607, 0x00020000) + b"Mac OS X        " + b"\0" * 2
DS_STORE = b"\0\0\0\1Bud1" + b"\0" * 24


def _mac_shard() -> bytes:
    return tar_bytes({
        "photos/._a.png": APPLEDOUBLE, "photos/a.png": image_bytes(8, 8, 1),
        "photos/._b.png": APPLEDOUBLE, "photos/b.png": image_bytes(8, 8, 2),
        "photos/.DS_Store": DS_STORE, "__MACOSX/photos/._a.png": APPLEDOUBLE,
    })


def _records(folder, in_memory_bytes: int = FETCHED) -> list[dict]:
    return [r for unit in discover(str(folder)) for r in read_unit(unit, in_memory_bytes=in_memory_bytes)]


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_a_mac_made_shard_reads_its_images_and_counts_the_metadata_as_hidden(tmp_path, in_memory_bytes) -> None:
    # before: 's.tar/photos/' a reject ("expected exactly one image member for key photos/, found _a.png, _b.png,
    # ds_store") and '__MACOSX/photos/' another, beside the two images
    (tmp_path / "s.tar").write_bytes(_mac_shard())
    records = _records(tmp_path, in_memory_bytes)
    assert sorted(r["id"] for r in records if r["kind"] == "image") == ["s.tar/photos/a", "s.tar/photos/b"]
    assert [r for r in records if r["kind"] == "reject"] == []
    (count,) = [r for r in records if r["kind"] == "count"]
    assert count["n"] == 2
    assert count["hidden"] == 4
    assert sorted(count["hidden_examples"]) == sorted(["s.tar/__MACOSX/photos/._a.png", "s.tar/photos/.DS_Store",
                                                       "s.tar/photos/._a.png", "s.tar/photos/._b.png"])


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_metadata_sharing_a_key_with_an_image_leaves_the_image_alone(tmp_path, in_memory_bytes) -> None:
    # 'd/.png' is key 'd/' (WebDataset: the path up to the first dot of the name), as is 'd/._x.png': before, one
    # reject for both ("expected exactly one image member for key d/"), the image lost to the run
    (tmp_path / "s.tar").write_bytes(tar_bytes({"d/._x.png": APPLEDOUBLE, "d/.png": image_bytes(8, 8, 3),
                                                "d/.cls": b"7"}))
    records = _records(tmp_path, in_memory_bytes)
    (image,) = [r for r in records if r["kind"] == "image"]
    assert (image["id"], image["data"], image["meta"]) == ("s.tar/d/", image_bytes(8, 8, 3), {"label": 7})
    assert [r for r in records if r["kind"] == "reject"] == []


def test_other_names_starting_with_a_dot_or_underscore_stay_members(tmp_path) -> None:
    # WebDataset keys may start with '_'; only macOS's own names are metadata
    (tmp_path / "s.tar").write_bytes(tar_bytes({"_0001.png": image_bytes(8, 8, 4), "x/.y.png": image_bytes(8, 8, 5),
                                                "__macosx_like/a.png": image_bytes(8, 8, 6)}))
    records = _records(tmp_path)
    assert sorted(r["id"] for r in records if r["kind"] == "image") == sorted(["s.tar/__macosx_like/a", "s.tar/_0001",
                                                                               "s.tar/x/"])
    assert "hidden" not in [r for r in records if r["kind"] == "count"][0]


def test_a_link_to_a_metadata_member_still_reads_its_bytes(tmp_path) -> None:
    # the link is the user's member; what it points to is read whatever its name
    (tmp_path / "s.tar").write_bytes(tar_bytes({"._a.png": image_bytes(8, 8, 7)}, hard_links={"a.png": "._a.png"}))
    records = _records(tmp_path)
    (image,) = [r for r in records if r["kind"] == "image"]
    assert (image["id"], image["data"]) == ("s.tar/a", image_bytes(8, 8, 7))


def _config(tmp_path, model: str, **kw) -> JobConfig:
    return JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                     progress=False, canvas_size=32, **kw)



def test_an_output_an_older_version_gave_the_metadata_rejects_loses_them_on_retry(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(_mac_shard())
    first = run_job(_config(tmp_path, model))["this_run"]
    assert (first["purified"], first["rejected"], first["hidden_skipped"]) == (2, 0, 4)
    # the rejects the version before gave the metadata's keys, beside the same purified rows
    older = [reject_record(id_, "s.tar", "expected exactly one image member for key ...", "read")
             for id_ in ("s.tar/photos/", "s.tar/__MACOSX/photos/")]
    (tmp_path / "out" / "rejects").mkdir(exist_ok=True)
    pq.write_table(_rejects_table(older), tmp_path / "out" / "rejects" / "part-older.parquet")
    # and its record of the shard as read whole: four ids
    (entry,) = read_ledger(str(tmp_path / "out"), {}).values()
    ids = sorted(["s.tar/photos/a", "s.tar/photos/b", *(r["id"] for r in older)])
    write_ledger(str(tmp_path / "out"), {}, {entry.path: replace(entry, records=4, ids_sha256=ids_digest(ids))})
    incremental = run_job(_config(tmp_path, model, incremental=True))["this_run"]
    assert (incremental["read"], incremental["containers_skipped_unread"]) == (0, 1)  # the record is trusted

    # an incremental run does not read the unchanged shard; the retry reads it and the old rejects go
    again = run_job(_config(tmp_path, model, retry_rejects=True))
    run = again["this_run"]
    assert (run["purified"], run["rejected"], run["hidden_skipped"]) == (0, 0, 4)
    assert run["rejects_retried"]["earlier_rejects"] == 2
    assert run["rejects_retried"]["superseded"] == 2
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(data["id"]) == ["s.tar/photos/a", "s.tar/photos/b"]
    assert list(rejects["id"]) == []
    assert (again["output_totals"]["purified"], again["output_totals"]["rejected"]) == (2, 0)
