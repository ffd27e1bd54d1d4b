"""Listing and reading edge cases a data platform meets: names fsspec would misparse, URL chains and wildcards, WebDataset
keys with masks and binary sidecars, Parquet image columns in every binary layout Arrow writes."""

from __future__ import annotations

import bz2

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import ReadUnit, discover, read_unit
from pipeline.sources.listing import _refuse_colliding_ids
from tests.jobutil import image_bytes, tar_bytes, zip_bytes


def _read(folder, **kw) -> dict[str, dict]:
    records = [r for unit in discover(str(folder)) for r in read_unit(unit, **kw) if r["kind"] != "count"]
    return {r["id"]: r for r in records}


@pytest.mark.parametrize("in_memory_bytes", [2**30, 0])
def test_names_with_double_colons_are_files_not_url_chains(tmp_path, in_memory_bytes) -> None:
    # fsspec.open("x::y.png") opened the chain "x" :: "y.png": a readable file was a reject ('No such file ... /x')
    (tmp_path / "12::30.png").write_bytes(image_bytes(8, 8, 0))
    (tmp_path / "a::b.tar").write_bytes(tar_bytes({"0.png": image_bytes(8, 8, 1)}))
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 2)]}), tmp_path / "c::d.parquet")
    records = _read(tmp_path, in_memory_bytes=in_memory_bytes)
    assert {i: r["kind"] for i, r in records.items()} == {"12::30.png": "image", "a::b.tar/0": "image",
                                                          "c::d.parquet#0": "image"}
    assert records["12::30.png"]["data"] == image_bytes(8, 8, 0)


def test_url_chains_and_wildcards_are_refused_by_name(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(8, 8, 0))
    # a chain listed, then read every file as 'simplecache://...' (no target): each one a reject, the run 'complete'
    with pytest.raises(ValueError, match="URL chain, which is not supported"):
        discover(f"simplecache::file://{tmp_path}")
    # a member of an archive, chained to it: was "Is a directory" naming the working directory
    (tmp_path / "a.zip").write_bytes(zip_bytes({"x.png": image_bytes(8, 8, 0)}))
    for chain in (f"zip://x.png::file://{tmp_path}/a.zip", f"zip://x.png::{tmp_path}/a.zip", "tar://k::s3://b/a.tar"):
        with pytest.raises(ValueError, match="URL chain, which is not supported"):
            discover(chain)
    with pytest.raises(FileNotFoundError, match="wildcards are not expanded"):
        discover(f"{tmp_path}/*.png")


def test_a_webdataset_mask_is_a_sidecar_and_binary_sidecars_keep_their_bytes(tmp_path) -> None:
    mask, array = image_bytes(8, 8, 9), b"\x93NUMPY\x01\x00v\x00\xff\xfe"
    (tmp_path / "s.tar").write_bytes(tar_bytes({
        "0001.jpg": image_bytes(8, 8, 1, "JPEG"), "0001.seg.png": mask,  # was: 'expected exactly one image member'
        "0002.png": image_bytes(8, 8, 2), "0002.npy": array,  # was: the text '\ufffdNUMPY...', the bytes lost
        "0003.JPG": image_bytes(8, 8, 3, "JPEG"),  # was: source 's.tar:0003.jpg', a member the shard does not have
        "0004.png": image_bytes(8, 8, 4), "0004.PNG": image_bytes(8, 8, 5),  # was: one of the two silently dropped
        "frame.left.jpg": image_bytes(8, 8, 6, "JPEG"),  # a key whose only image has a compound extension
    }))
    records = _read(tmp_path)
    assert records["s.tar/0001"]["meta"] == {"seg_png": mask}
    assert records["s.tar/0001"]["data"] == image_bytes(8, 8, 1, "JPEG")
    assert records["s.tar/0002"]["meta"] == {"npy": array}
    assert records["s.tar/0003"]["source"] == f"{tmp_path}/s.tar:0003.JPG"
    assert records["s.tar/0004"]["kind"] == "reject" and "differ only in the case" in records["s.tar/0004"]["error"]
    assert records["s.tar/frame"]["kind"] == "image" and records["s.tar/frame"]["source"].endswith(":frame.left.jpg")


def test_bzip2_shards_are_tar_shards(tmp_path) -> None:
    # was: listed as one image file, one reject 'not an image' for the whole shard
    (tmp_path / "s.tar.bz2").write_bytes(bz2.compress(tar_bytes({"0.png": image_bytes(8, 8, 0), "0.cls": b"2"})))
    assert _read(tmp_path)["s.tar.bz2/0"]["meta"] == {"label": 2}


def test_parquet_image_columns_in_every_binary_layout(tmp_path) -> None:
    images = [image_bytes(8, 8, i) for i in range(3)]
    # each was: 'no image column (struct<bytes, path> or binary)', the whole file one reject
    pq.write_table(pa.table({"image": pa.array(images + images[:1]).dictionary_encode()}), tmp_path / "dict.parquet")
    pq.write_table(pa.table({"image": pa.array(images, pa.binary_view())}), tmp_path / "view.parquet")
    pq.write_table(pa.table({"image": pa.array([list(b) for b in images], pa.list_(pa.uint8()))}),
                   tmp_path / "list.parquet")
    records = _read(tmp_path)
    assert [records[f"dict.parquet#{i}"]["data"] for i in range(4)] == images + images[:1]
    assert [records[f"view.parquet#{i}"]["data"] for i in range(3)] == images
    assert [records[f"list.parquet#{i}"]["data"] for i in range(3)] == images
    # a list<uint8> column is an image only by name: under another name it may hold numbers, not a file
    pq.write_table(pa.table({"pixels": pa.array([list(b) for b in images], pa.list_(pa.uint8()))}),
                   tmp_path / "list.parquet")
    assert "no image column" in _read(tmp_path)["list.parquet#unreadable"]["error"]


def test_file_names_that_would_take_a_members_id_stop_the_listing(tmp_path) -> None:
    """The output holds one row per id, so an image file whose id equals a Parquet row's, a shard reject's or (on
    object stores, where `x.tar` and `x.tar/k` can both exist) a tar member's would lose one of the two."""
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)]}), tmp_path / "t.parquet")
    (tmp_path / "photo#1.png").write_bytes(image_bytes(8, 8, 1))  # a '#' alone collides with nothing
    assert len(discover(str(tmp_path))) == 2
    (tmp_path / "t.parquet#0").write_bytes(image_bytes(8, 8, 2))
    with pytest.raises(ValueError, match=r"1 input file\(s\) have ids .*/t.parquet#0 \(beside .*/t.parquet\)"):
        discover(str(tmp_path))

    # On an object store a shard x.tar and objects under the prefix x.tar/ can both exist (no local file system
    # allows it, so the check is called directly).
    shard = ReadUnit("tar", ("s3://b/in/x.tar",), "s3://b/in", (1,))
    with pytest.raises(ValueError, match=r"s3://b/in/x.tar/k \(beside s3://b/in/x.tar\)"):
        _refuse_colliding_ids([shard], ["s3://b/in/x.tar/k"], "s3://b/in")  # the shard's member k has this id
    with pytest.raises(ValueError, match=r"s3://b/in/x.tar/k.png \(beside s3://b/in/x.tar\)"):
        _refuse_colliding_ids([shard], ["s3://b/in/x.tar/k.png"], "s3://b/in")  # key of 'k.png.jpg' beside 'k.gif.jpg'


def test_folders_reached_through_symbolic_links_are_listed_and_loops_are_not_followed(tmp_path) -> None:
    """Data sets are often assembled from links to folders; fsspec lists such a link as one entry, which was read
    as one file and rejected (IsADirectoryError) while the images inside it were never read."""
    real, root = tmp_path / "real", tmp_path / "in"
    (real / "sub").mkdir(parents=True)
    root.mkdir()
    (real / "a.png").write_bytes(image_bytes(8, 8, 0))
    (real / "sub" / "b.png").write_bytes(image_bytes(8, 8, 1))
    (root / "c.png").write_bytes(image_bytes(8, 8, 2))
    (root / "linked").symlink_to(real, target_is_directory=True)
    (real / "sub" / "up").symlink_to(real, target_is_directory=True)  # a loop: not followed, one reject
    records = _read(root)
    assert {i: r["kind"] for i, r in records.items()} == {
        "c.png": "image", "linked/a.png": "image", "linked/sub/b.png": "image", "linked/sub/up": "reject"}
    assert records["linked/a.png"]["data"] == image_bytes(8, 8, 0)
