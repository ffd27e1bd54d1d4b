"""Image-folder metadata inside tar shards and zip archives, and its rows that name no member (`tar_shards._shard_metadata`,
`tar_members.index_tar`, `folder_metadata.ArchiveMetadata` and `metadata_report`): the cases the metadata tests let a
mutant through (a mutation audit). Each label goes to the image its row names, as the shard would be extracted, and
no row is dropped unsaid."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import fsspec
import pytest

from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover, read_unit
from pipeline.sources.folder_metadata import FolderMetadata, join_folder_metadata
from pipeline.sources.units import METADATA_ROW
from tests.jobutil import image_bytes, small_job_config, zip_bytes


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of `members` in that order, a name given twice written twice (as `tar -r` appends)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read(path: Path) -> tuple[dict[str, dict], dict]:
    """A shard's image and reject records by id, as a read task with --join-metadata makes them, and its count record."""
    records = list(read_unit(ReadUnit("tar", (str(path),), str(path.parent)), join_metadata=True))
    return {r["id"]: r for r in records if r["kind"] in ("image", "reject")}, records[-1]


def _labels(records: dict[str, dict]) -> dict[str, object]:
    return {id_: r["meta"].get("label") for id_, r in records.items() if r["kind"] == "image"}


def test_a_shard_tarred_from_inside_its_folder_has_its_rows_joined(tmp_path) -> None:
    # `tar -cf d.tar -C folder .` names every member './...': a row's '0.png' is the member './train/0.png'
    path = tmp_path / "d.tar"
    path.write_bytes(_tar([("./train/0.png", image_bytes(8, 8, 0)), ("./train/1.png", image_bytes(8, 8, 1)),
                           ("./train/metadata.csv", b"file_name,label\n0.png,3\n1.png,5\n")]))
    records, count = _read(path)
    assert _labels(records) == {"d.tar/train/0": 3, "d.tar/train/1": 5}
    assert "metadata_unmatched" not in count


def test_a_metadata_member_appended_again_takes_the_place_of_the_first_as_on_extraction(tmp_path) -> None:
    # `tar -rf d.tar metadata.csv` after fixing a label: extracted, the later member is the file
    path = tmp_path / "d.tar"
    path.write_bytes(_tar([("0.png", image_bytes(8, 8, 0)), ("metadata.csv", b"file_name,label\n0.png,3\n"),
                           ("metadata.csv", b"file_name,label\n0.png,4\n")]))
    records, _ = _read(path)
    assert _labels(records) == {"d.tar/0": 4}


def test_a_second_name_for_a_metadata_members_path_is_its_own_reject_not_joined_too(tmp_path) -> None:
    # './train/metadata.csv' and 'train/metadata.csv' are one path: one is joined (the first), the other is left a
    # member, its own reject, so that it is seen, not a second set of rows for the same images
    path = tmp_path / "d.tar"
    path.write_bytes(_tar([("train/0.png", image_bytes(8, 8, 0)), ("train/metadata.csv", b"file_name,label\n0.png,3\n"),
                           ("./train/metadata.csv", b"file_name,label\n0.png,4\n")]))
    records, count = _read(path)
    assert _labels(records) == {"d.tar/train/0": 3}
    assert count["container"]["metadata"] == ["d.tar/train/metadata.csv"]
    assert [r["kind"] for id_, r in records.items() if "metadata" in id_] == ["reject"]


def test_a_metadata_member_cut_short_is_a_reject_that_says_so(tmp_path) -> None:
    path = tmp_path / "d.tar"
    whole = _tar([("0.png", image_bytes(8, 8, 0)), ("metadata.csv", b"file_name,label\n0.png,3\n" * 200)])
    path.write_bytes(whole[: 512 + 1024 + 512 + 100])  # the image's header and data, the metadata's header, and 100 B
    records, _ = _read(path)
    assert _labels(records) == {"d.tar/0": None}
    error = records["d.tar/metadata.csv"]["error"]
    assert "not joined to its images: corrupt tar member metadata.csv" in error, error


def test_a_metadata_file_among_macos_metadata_is_not_joined(tmp_path) -> None:
    # anything under __MACOSX/ is macOS's, skipped as hidden: it names no image of the user's
    path = tmp_path / "d.tar"
    path.write_bytes(_tar([("train/0.png", image_bytes(8, 8, 0)), ("__MACOSX/train/metadata.csv",
                                                                   b"file_name,label\n0.png,3\n")]))
    records, count = _read(path)
    assert _labels(records) == {"d.tar/train/0": None}
    assert count["hidden_examples"] == ["d.tar/__MACOSX/train/metadata.csv"] and "metadata_unmatched" not in count


def test_the_dry_run_counts_the_rows_naming_no_image_of_every_archive_and_folder(tmp_path, model) -> None:
    # two zip archives and a folder, three rows of each naming nothing: all nine counted, the first five named
    (tmp_path / "in" / "f").mkdir(parents=True)
    (tmp_path / "in" / "f" / "0.png").write_bytes(image_bytes(8, 8, 0))
    (tmp_path / "in" / "f" / "metadata.csv").write_text("file_name,label\n0.png,1\nf1.png,1\nf2.png,1\nf3.png,1\n")
    for z in ("a", "b"):
        (tmp_path / "in" / f"{z}.zip").write_bytes(zip_bytes({
            "0.png": image_bytes(8, 8, 0),
            "metadata.csv": f"file_name,label\n0.png,1\n{z}1.png,1\n{z}2.png,1\n{z}3.png,1\n".encode()}))
    report = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]["folder_metadata"]
    assert (report["files_joined"], report["archive_files_joined"], report["rows_without_image_file"]) == (1, 2, 9)
    assert report["rows_without_image_file_examples"] == [
        "f/metadata.csv: f1.png", "f/metadata.csv: f2.png", "f/metadata.csv: f3.png",
        "a.zip/metadata.csv: a1.png", "a.zip/metadata.csv: a2.png"]


def test_an_image_file_with_no_version_beside_a_root_metadata_file_has_its_row_told_when_it_has_none() -> None:
    # a web folder's image file gives no version: its stamp is its row's digest, or '+m' for none where a metadata
    # file may name it, so that a row added later is a change; the input's own root holds such a file too
    fs = fsspec.filesystem("memory")
    fs.pipe("/mutaudit2-root/0.png", image_bytes(8, 8, 0))
    fs.pipe("/mutaudit2-root/1.png", image_bytes(8, 8, 1))
    fs.pipe("/mutaudit2-root/metadata.csv", b"file_name,label\n0.png,3\n")
    try:
        units = discover("memory://mutaudit2-root", {}, 64, metadata=FolderMetadata())
        stamps = {p.rsplit("/", 1)[-1]: c for u in units for p, c in zip(u.paths, u.contents, strict=True)}
        assert stamps["0.png"].startswith(METADATA_ROW) and stamps["0.png"] != METADATA_ROW
        assert stamps["1.png"] == METADATA_ROW
    finally:
        fs.rm("/mutaudit2-root", recursive=True)


@pytest.mark.parametrize("twice", [False, True])
def test_a_row_naming_a_key_of_two_images_is_said_to_name_no_image(tmp_path, twice: bool) -> None:
    # 'train/0.png' beside 'train/0.jpg' is one key of two images, a reject: the row naming it joins nothing, and says so
    path = tmp_path / "d.tar"
    members = [("train/0.png", image_bytes(8, 8, 0)), ("train/1.png", image_bytes(8, 8, 1))]
    if twice:
        members.append(("train/0.jpg", image_bytes(8, 8, 2)))
    path.write_bytes(_tar([*members, ("train/metadata.csv", b"file_name,label\n0.png,3\n1.png,5\n")]))
    records, count = _read(path)
    assert _labels(records) == ({"d.tar/train/1": 5} if twice else {"d.tar/train/0": 3, "d.tar/train/1": 5})
    assert count.get("metadata_unmatched", 0) == (1 if twice else 0)


def test_a_row_whose_column_names_are_taken_twice_over_keeps_every_value(tmp_path) -> None:
    # the key's .cls gives 'label', its .json 'metadata_label': the row's 'label' is written metadata_metadata_label
    path = tmp_path / "d.tar"
    path.write_bytes(_tar([("0.png", image_bytes(8, 8, 0)), ("0.cls", b"7"), ("0.json", b'{"metadata_label": 1}'),
                           ("metadata.csv", b"file_name,label\n0.png,3\n")]))
    records, _ = _read(path)
    assert records["d.tar/0"]["meta"] == {"label": 7, "metadata_label": 1, "file_name": "0.png",
                                          "metadata_metadata_label": 3}


def test_a_listing_made_again_forgets_the_folders_of_metadata_files_no_longer_found() -> None:
    # a listing retried takes what it finds then: an image file with no version is told a metadata file may name it
    # only while one does
    found = FolderMetadata()
    images = {"a/0.png": "/in/a/0.png", "b/1.png": "/in/b/1.png"}
    join_folder_metadata(images, {"a/metadata.csv": "/in/a/metadata.csv"}, lambda path: b"file_name\n0.png\n", found)
    assert found.covers("a/0.png") and not found.covers("b/1.png")
    join_folder_metadata(images, {"b/metadata.csv": "/in/b/metadata.csv"}, lambda path: b"file_name\n1.png\n", found)
    assert found.covers("b/1.png") and not found.covers("a/0.png")
