"""Sidecar files beside image files in a folder (img2dataset's `--output_format files`: `00000/000000.jpg` with
`000000.json` and `000000.txt`; hand-made `x.png` with `x.txt` or `x.cls`): each is its image's columns, as the same
member of a WebDataset tar key gives them, not an input of its own (`sources.sidecar_files`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from pipeline.sources.folder_metadata import FolderMetadata, unit_metadata
from pipeline.sources.sidecar_files import Sidecars, pair_sidecars, unit_sidecars
from tests.jobutil import (
    image_bytes,
    rewritten_in_place,
    small_job_argv,
    small_job_config,
    tar_bytes,
    write_tree,
    zip_bytes,
)


def _shard_files(n: int = 3) -> dict[str, bytes]:
    """img2dataset's files of one shard folder, `00000/000000.jpg` ..., by path."""
    files = {}
    for i in range(n):
        key = f"00000/{i:06d}"
        files[f"{key}.jpg"] = image_bytes(8, 8, i, "JPEG")
        files[f"{key}.json"] = json.dumps({"url": f"http://x/{i}.jpg", "caption": f"cap {i}", "key": f"0000{i:04d}",
                                           "status": "success", "width": 8, "height": 8, "id": i}).encode()
        files[f"{key}.txt"] = f"cap {i}\n".encode()
    return files


def _read(uri: str, join: bool = True, **read: object) -> dict[str, dict]:
    """Each record of the input by id, as the job's read tasks make them."""
    found, sidecars = (FolderMetadata(), Sidecars()) if join else (None, None)
    units = discover(uri, {}, 256, metadata=found, sidecars=sidecars)
    return {r["id"]: r for unit in units
            for r in read_unit(unit, metadata=unit_metadata(unit.paths, found),
                               sidecars=unit_sidecars(unit.paths, sidecars), **read)
            if r["kind"] in ("image", "reject")}


def test_a_folders_sidecars_give_the_columns_the_same_members_of_a_tar_key_give(tmp_path) -> None:
    files = {**_shard_files(), "00000/000001.cls": b"7\n", "00000/000002.cls": "caf\xe9".encode("latin-1")}
    folder = _read(str(write_tree(tmp_path / "in", files)))
    (tmp_path / "tar").mkdir()
    (tmp_path / "tar" / "s.tar").write_bytes(tar_bytes(files))
    shard = _read(str(tmp_path / "tar"))
    assert sorted(folder) == ["00000/000000.jpg", "00000/000001.jpg", "00000/000002.jpg"]  # no sidecar is a record
    assert all(r["kind"] == "image" for r in folder.values())
    for i in range(3):
        assert folder[f"00000/{i:06d}.jpg"]["meta"] == shard[f"s.tar/00000/{i:06d}"]["meta"]
        # the image's bytes and id are its own
        assert folder[f"00000/{i:06d}.jpg"]["data"] == files[f"00000/{i:06d}.jpg"]
    assert folder["00000/000001.jpg"]["meta"] == {
        "txt": "cap 1", "label": 7, "url": "http://x/1.jpg", "caption": "cap 1", "key": "00000001",
        "status": "success", "input_width": 8, "input_height": 8, "input_id": 1}
    assert folder["00000/000002.jpg"]["meta"]["label"] == "caf\\xe9"


def test_which_files_are_sidecars_of_which_image() -> None:
    names = ["d/x.jpg", "d/x.json", "d/x.TXT", "d/x.jpg.json", "d/x.seg.png", "d/x.seg.json", "d/x.pose.json",
             "d/a.jpg", "d/a.b.jpg", "d/a.b.txt", "d/a.c.txt", "d/p.jpg", "d/p.png", "d/p.cls", "d/orphan.txt",
             "d/00000_stats.json", "d/metadata.csv", "e/x.txt", "d/cat.0.jpg", "d/cat.0.cls", "d/cat.cls", "d/noext"]
    assert pair_sidecars(names) == {
        "d/x.json": [("d/x.jpg", "json")], "d/x.TXT": [("d/x.jpg", "txt")],
        "d/x.jpg.json": [("d/x.jpg", "json")],  # the image's whole name, an extension added
        "d/x.seg.json": [("d/x.seg.png", "json")],  # the mask is an image of its own: this is its .json
        "d/x.pose.json": [("d/x.jpg", "pose.json")],  # a compound extension, its column pose_json as in a tar
        "d/a.b.txt": [("d/a.b.jpg", "txt")],  # the nearest name
        "d/a.c.txt": [("d/a.jpg", "c.txt")],
        "d/p.cls": [("d/p.jpg", "cls"), ("d/p.png", "cls")],  # two images of one stem: each keeps it
        "d/cat.0.cls": [("d/cat.0.jpg", "cls")]}
    # an image file (x.seg.png) is never a sidecar; a file naming no image of its folder (e/x.txt, cat.cls, the stats)
    # stays an input; so does a metadata file


def test_an_image_video_or_archive_named_as_an_images_sidecar_stays_an_input_of_its_own(tmp_path) -> None:
    # a phone's or camera's dump: a Live Photo's video beside its still, a second JPEG under another of JPEG's names, a
    # raw file beside its JPEG, an archive
    files = {"d/x.jpg": image_bytes(8, 8, 0, "JPEG"), "d/x.txt": b"a caption", "d/x.jfif": image_bytes(8, 8, 1, "JPEG"),
             "d/x.MOV": b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 64, "d/x.7z": b"7z\xbc\xaf\x27\x1c" + b"\x00" * 32,
             "d/x.tar": tar_bytes({"a.png": image_bytes(8, 8, 2)}), "d/x.CR2": b"II*\x00\x10\x00\x00\x00CR" + b"\x00" * 32}
    folder = _read(str(write_tree(tmp_path / "in", files)))
    assert sorted(folder) == ["d/x.7z", "d/x.CR2", "d/x.MOV", "d/x.jfif", "d/x.jpg", "d/x.tar/a"]
    # the caption is both images' (one stem), no bytes of the others are a column of either
    assert folder["d/x.jpg"]["meta"] == folder["d/x.jfif"]["meta"] == folder["d/x.CR2"]["meta"] == {"txt": "a caption"}
    assert folder["d/x.jfif"]["data"] == files["d/x.jfif"]
    assert folder["d/x.MOV"]["data"] == files["d/x.MOV"]  # read as an input, its reject made when it is decoded
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "a.zip").write_bytes(zip_bytes(files))
    zipped = _read(str(tmp_path / "z"), join_metadata=True)
    assert sorted(zipped) == ["a.zip/d/x.7z", "a.zip/d/x.CR2", "a.zip/d/x.MOV", "a.zip/d/x.jfif", "a.zip/d/x.jpg",
                              "a.zip/d/x.tar"]
    assert zipped["a.zip/d/x.jpg"]["meta"] == zipped["a.zip/d/x.jfif"]["meta"] == {"txt": "a caption"}


def test_a_sidecar_label_wins_over_the_folders_and_a_metadata_rows_clashing_column_is_kept_beside(tmp_path) -> None:
    root = write_tree(tmp_path / "in", {"cats/0.png": image_bytes(8, 8, 0), "cats/0.cls": b"3",
                                    "cats/0.txt": b"a cat", "cats/1.png": image_bytes(8, 8, 1),
                                    "cats/metadata.csv": b"file_name,txt,note\n0.png,from csv,n0\n1.png,x,n1\n"})
    records = _read(str(root), labels_from_folders=True)
    assert records["cats/0.png"]["meta"] == {"label": 3, "txt": "a cat", "file_name": "0.png",
                                             "metadata_txt": "from csv", "note": "n0"}
    assert records["cats/1.png"]["meta"] == {"label": "cats", "file_name": "1.png", "txt": "x", "note": "n1"}


def test_with_join_metadata_false_sidecars_are_inputs_as_before(tmp_path) -> None:
    records = _read(str(write_tree(tmp_path / "in", _shard_files(1))), join=False)
    assert sorted(records) == ["00000/000000.jpg", "00000/000000.json", "00000/000000.txt"]
    assert records["00000/000000.jpg"]["meta"] == {}


def test_a_sidecar_that_cannot_be_read_or_that_clashes_makes_its_image_a_reject_naming_it(tmp_path) -> None:
    root = write_tree(tmp_path / "in", {"a.png": image_bytes(8, 8, 0), "a.txt": b"x" * 2000,
                                    "b.png": image_bytes(8, 8, 1), "b.cls": b"1", "b.label": b"2",
                                    "c.png": image_bytes(8, 8, 2), "c.json": b"{}", "c.png.json": b"{}",
                                    "d.png": image_bytes(8, 8, 3)})
    os.mkfifo(root / "d.txt")  # no file: reading it would wait for a writer for ever
    records = _read(str(root), max_image_bytes=1500)
    assert {id_: r["kind"] for id_, r in records.items()} == {"a.png": "reject", "b.png": "reject", "c.png": "reject",
                                                              "d.png": "reject"}
    # named as the sidecar file it is, with the limit: not "image file ... over", which sent a user to the image
    assert records["a.png"]["error"] == ("its sidecar file a.txt is 0.0 MiB (2,000 bytes), over --max-image-mb "
                                         f"{1500 / 2**20:g}, so it was not read; to purify it, run again with a larger "
                                         "--max-image-mb and --retry-rejects")
    assert records["b.png"]["error"] == ("sidecar files b.cls and b.label both give column 'label', so one value would "
                                         "be lost: rename one of them")
    assert records["c.png"]["error"].startswith("sidecar files c.json and c.png.json both give this image's 'json' values")
    assert records["d.png"]["error"].startswith("its sidecar file d.txt was not read: ") and "FIFO" in records["d.png"]["error"]


@pytest.mark.usefixtures("ray_local")
def test_an_img2dataset_shard_folder_counts_and_purifies_its_images_alone(tmp_path, model, capsys) -> None:
    files = {**_shard_files(), "00000_stats.json": b'{"count": 3}', "00000/lost.txt": b"cap"}
    root = write_tree(tmp_path / "in", files)
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--dry-run")) == 0
    said = " ".join(capsys.readouterr().out.split())
    # the three images, the stats file and a caption without its image (inputs: their rejects say why), not the six
    # sidecars
    assert "5 image files to read" in said
    assert ("6 sidecar files beside image files, named as theirs (x.txt, x.json, x.cls beside x.jpg): read with them "
            "as their columns, not as images") in said
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]
    assert (described["image_files_to_read"], described["sidecar_files"]) == (5, 6)
    assert described["bytes"] == sum(len(data) for data in files.values())  # the sidecars' bytes too

    summary = run_job(small_job_config(tmp_path, model))
    assert (summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (3, 2)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    assert sorted(rows) == ["00000/000000.jpg", "00000/000001.jpg", "00000/000002.jpg"]
    assert {k: rows["00000/000002.jpg"][k] for k in ("txt", "url", "caption", "key", "status", "input_width",
                                                     "input_id")} == {
        "txt": "cap 2", "url": "http://x/2.jpg", "caption": "cap 2", "key": "00000002", "status": "success",
        "input_width": 8, "input_id": 2}
    rejects = {r["id"]: r["error"] for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist()}
    assert rejects["00000/lost.txt"] == (
        "not a recognised image format (if it is an image's sidecar, no image named lost.<image extension> lies beside "
        "it in its folder, or --join-metadata is false: a sidecar gives its image's row its columns (docs/job.md, "
        "Inputs))")
    assert rejects["00000_stats.json"].startswith("not a recognised image format (a .json table, not an image")
    assert "no image named 00000_stats.<image extension> lies beside it" in rejects["00000_stats.json"]
    assert sorted(rejects) == ["00000/lost.txt", "00000_stats.json"]
    assert root.exists()


def _column(out: Path, name: str) -> dict[str, object]:
    return {r["id"]: r.get(name) for r in pq.read_table(out / "data").to_pylist()}


@pytest.mark.usefixtures("ray_local")
def test_a_sidecar_edited_or_added_is_a_change_of_its_image_and_refresh_changed_writes_it(tmp_path, model,
                                                                                         capsys) -> None:
    root = write_tree(tmp_path / "in", _shard_files())
    out = tmp_path / "out"
    assert run_job(small_job_config(tmp_path, model))["this_run"]["purified"] == 3
    unchanged = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()
    assert (unchanged["changed_inputs"]["image_files_purified"], unchanged["input"]["image_files_to_read"],
            unchanged["input"]["sidecar_files"]) == (0, 0, 0)  # the done images' sidecars are not read either

    rewritten_in_place(root / "00000" / "000001.txt", b"a better caption\n")  # the image's bytes are as they were
    (root / "00000" / "000002.cls").write_bytes(b"4")  # a label added
    changed = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (changed["image_files_purified"], changed["examples"], changed["image_files_metadata_changed"]) == (
        2, ["00000/000001.jpg", "00000/000002.jpg"], 2)
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental", "--dry-run")) == 0
    said = " ".join(capsys.readouterr().err.split())  # the change named as what it is: no metadata file here
    assert ("2 image file(s) purified earlier (data/ holds their earlier version, purified; 2 of them for their row of "
            "an image-folder metadata file or their sidecar files (x.txt, x.json beside x.jpg), edited, added or "
            "removed since") in said
    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert summary["this_run"]["refreshed"]["rows_replaced"] == 2
    assert _column(out, "txt") == {"00000/000000.jpg": "cap 0", "00000/000001.jpg": "a better caption",
                                   "00000/000002.jpg": "cap 2"}
    assert _column(out, "label") == {"00000/000000.jpg": None, "00000/000001.jpg": None, "00000/000002.jpg": 4}
    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (later["changed_inputs"]["image_files_purified"], later["this_run"]["read"]) == (0, 0)

    (root / "00000" / "000000.json").unlink()  # its columns are no longer the input's
    gone = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (gone["examples"], gone["gone_image_files"]) == (["00000/000000.jpg"], 0)


@pytest.mark.usefixtures("ray_local")
def test_an_output_made_when_sidecars_were_rejects_loses_those_rejects_and_refreshes_its_images(
        tmp_path, model, monkeypatch, capsys) -> None:
    import pipeline.sources.listing as listing

    write_tree(tmp_path / "in", _shard_files(2))
    out = tmp_path / "out"
    with monkeypatch.context() as earlier:  # as versions before sidecars were read: each one a reject
        earlier.setattr(listing, "pair_sidecars", lambda paths: {})
        assert run_job(small_job_config(tmp_path, model))["this_run"]["rejected"] == 4
    plan = plan_job(small_job_config(tmp_path, model, incremental=True, retry_rejects=True), dry_run=True)
    assert plan.retry == frozenset() and len(plan.sidecar_rejects) == 4
    assert (plan.describe()["changed_inputs"]["gone_image_files"],
            plan.describe()["changed_inputs"]["image_files_metadata_changed"]) == (0, 2)
    assert plan.describe()["input"]["sidecar_rejects_removed"] == 4
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental", "--dry-run")) == 0
    said = " ".join(capsys.readouterr().out.split())  # the dry run says the rejects will go, not only the run
    assert "4 earlier rejects of files paired as sidecars now (an older version read them as images) would go" in said

    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental", "--refresh-changed")) == 0
    said = " ".join(capsys.readouterr().out.split())  # the rejects' fall is said, not left to be found
    assert ("removed 4 earlier rejects that this run's reading made untrue (sidecar or metadata files read with their "
            "images now") in said
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["this_run"]["stale_rejects_removed"], summary["output_totals"]["rejected"]) == (4, 0)
    assert summary["changed_inputs"]["gone_image_files"] == 0
    assert not (out / "rejects").exists()
    assert _column(out, "txt") == {"00000/000000.jpg": "cap 0", "00000/000001.jpg": "cap 1"}
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental")) == 0
    err = capsys.readouterr().err
    assert "no longer in the input" not in err and "changed under the same name" not in err


def test_a_zip_archives_sidecar_members_give_their_images_columns_as_in_a_folder(tmp_path) -> None:
    files = {**_shard_files(2), "00000/000001.cls": b"7", "00000/lost.txt": b"x", "00000/metadata.csv":
             b"file_name,txt,note\n000000.jpg,from csv,n0\n000000.txt,names a sidecar,n1\n"}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.zip").write_bytes(zip_bytes(files))
    (unit,) = discover(str(tmp_path / "in"))
    records = list(read_unit(unit, join_metadata=True, labels_from_folders=True))
    by_id = {r["id"]: r for r in records if r["kind"] in ("image", "reject")}
    assert {id_: r["kind"] for id_, r in by_id.items()} == {"d.zip/00000/000000.jpg": "image",
                                                            "d.zip/00000/000001.jpg": "image",
                                                            "d.zip/00000/lost.txt": "image"}  # no image: decoded, rejected
    assert by_id["d.zip/00000/000001.jpg"]["meta"] == {
        "txt": "cap 1", "label": 7, "url": "http://x/1.jpg", "caption": "cap 1", "key": "00000001",
        "status": "success", "input_width": 8, "input_height": 8, "input_id": 1}
    # a sidecar's column keeps its name beside a metadata row's; a row naming a sidecar names no image file
    first = by_id["d.zip/00000/000000.jpg"]["meta"]
    assert (first["txt"], first["metadata_txt"], first["note"], first["label"]) == ("cap 0", "from csv", "n0", "00000")
    (count,) = [r for r in records if r["kind"] == "count"]
    assert sorted(count["container"]["sidecars"]) == ["d.zip/00000/000000.json", "d.zip/00000/000000.txt",
                                              "d.zip/00000/000001.cls", "d.zip/00000/000001.json",
                                              "d.zip/00000/000001.txt"]
    assert count["metadata_unmatched"] == 1
    # --join-metadata false: each member an input, as before
    assert len([r for r in read_unit(unit) if r["kind"] in ("image", "reject")]) == len(files)


@pytest.mark.usefixtures("ray_local")
def test_a_zip_members_reject_that_is_a_sidecar_now_goes_once_the_archive_is_read_again(tmp_path, model) -> None:
    files = _shard_files(2)
    (tmp_path / "in").mkdir()
    archive = tmp_path / "in" / "d.zip"
    archive.write_bytes(zip_bytes({name: data for name, data in files.items() if name != "00000/000001.jpg"}))
    first = run_job(small_job_config(tmp_path, model))["this_run"]
    assert (first["purified"], first["rejected"]) == (1, 2)  # 000001's .json and .txt, without their image

    rewritten_in_place(archive, zip_bytes(files))  # its image added: they are its sidecars now
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (summary["this_run"]["purified"], summary["this_run"]["stale_rejects_removed"]) == (1, 2)
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (2, 0)
    assert _column(tmp_path / "out", "txt") == {"d.zip/00000/000000.jpg": "cap 0", "d.zip/00000/000001.jpg": "cap 1"}


def test_sidecars_on_an_fsspec_store_are_paired_and_read_too() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/sidecars/a/0.png", image_bytes(8, 8, 0))
    fs.pipe("/sidecars/a/0.txt", b"a caption\n")
    fs.pipe("/sidecars/a/1.png", image_bytes(8, 8, 1))
    try:
        records = _read("memory://sidecars")
    finally:
        fs.rm("/sidecars", recursive=True)
    assert {id_: r["meta"] for id_, r in records.items()} == {"a/0.png": {"txt": "a caption"}, "a/1.png": {}}


def test_a_zip_archives_sidecar_member_over_the_limit_is_named_as_one_in_its_images_reject(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.zip").write_bytes(zip_bytes({"a.png": image_bytes(8, 8, 0), "a.txt": b"x" * 2000}))
    (unit,) = discover(str(tmp_path / "in"))
    (reject,) = [r for r in read_unit(unit, join_metadata=True, max_image_bytes=1500) if r["kind"] == "reject"]
    assert reject["id"] == "d.zip/a.png"
    assert reject["error"].startswith("its sidecar member a.txt is 0.0 MiB (2,000 bytes), over --max-image-mb ")


def test_the_dry_run_counts_a_zip_archives_sidecar_members_in_the_line_of_a_folders(tmp_path, model, capsys) -> None:
    root = write_tree(tmp_path / "in", _shard_files(2))
    (root / "d.zip").write_bytes(zip_bytes({**_shard_files(3), "00000/lost.txt": b"cap"}))  # lost.txt: an input
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--dry-run")) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("4 sidecar files beside image files and 6 sidecar members beside image members of zip archives, named as "
            "theirs (x.txt, x.json, x.cls beside x.jpg): read with them as their columns, not as images") in said
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]
    assert (described["sidecar_files"], described["zip_sidecar_members"]) == (4, 6)
    # the archive alone: its members said as such; --join-metadata false reads them as inputs, and says none
    assert cli.main(small_job_argv(tmp_path, model, "--dry-run") + ["--input", str(root / "d.zip")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "6 sidecar members beside image members of zip archives, named as theirs" in said
    assert "sidecar file" not in said
    described = plan_job(small_job_config(tmp_path, model, join_metadata=False), dry_run=True).describe()["input"]
    assert (described["sidecar_files"], described["zip_sidecar_members"]) == (0, 0)


@pytest.mark.usefixtures("ray_local")
def test_a_name_with_an_empty_extension_beside_an_image_is_an_input_of_its_own_not_its_sidecar(tmp_path, model,
                                                                                                capsys) -> None:
    # 'x.jpg.' (a trailing dot a script or a Windows copy left), 'x.jpg..', 'x..txt', 'x.jpg.json.': their extensions
    # ('jpg.', '.', '.txt', 'json.') name no column; as sidecars each became a bytes column of x.jpg's row, copied
    # unpurified. A case-changed extension is one: x.jpg.JSON is x.jpg's .json
    odd = {"d/x.jpg.": image_bytes(8, 8, 1, "JPEG"), "d/x.jpg..": b"not an image", "d/x..txt": b"a caption?",
           "d/x.jpg.json.": b'{"k": 1}'}
    files = {"d/x.jpg": image_bytes(8, 8, 0, "JPEG"), "d/x.jpg.JSON": b'{"caption": "c"}', **odd}
    assert pair_sidecars(files) == {"d/x.jpg.JSON": [("d/x.jpg", "json")]}
    write_tree(tmp_path / "in", files)
    folder = _read(str(tmp_path / "in"))
    assert sorted(folder) == sorted(["d/x.jpg", *odd])
    assert folder["d/x.jpg"]["meta"] == {"caption": "c"}
    assert all(folder[name]["data"] == data for name, data in odd.items())  # each read as a file of its own
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "a.zip").write_bytes(zip_bytes(files))
    zipped = _read(str(tmp_path / "z"), join_metadata=True)
    assert sorted(zipped) == sorted(f"a.zip/{name}" for name in ["d/x.jpg", *odd])
    assert zipped["a.zip/d/x.jpg"]["meta"] == {"caption": "c"}

    # the dry run counts them as files to read, not as sidecars
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]
    assert (described["image_files_to_read"], described["sidecar_files"]) == (5, 1)
    summary = run_job(small_job_config(tmp_path, model))
    assert (summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (2, 3)  # x.jpg. is a JPEG: purified
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    assert sorted(rows) == ["d/x.jpg", "d/x.jpg."]
    assert not any(name in rows["d/x.jpg"] for name in ("jpg.", ".", ".txt", "json."))
    rejects = {r["id"]: r["error"] for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist()}
    assert sorted(rejects) == ["d/x..txt", "d/x.jpg..", "d/x.jpg.json."]
    assert rejects["d/x..txt"] == (
        "not a recognised image format (its name has an empty extension (a '.' at its end, or two together), which "
        "names no column: it is no image's sidecar (docs/job.md, Inputs))")


def test_a_zip_members_reject_says_its_name_has_an_empty_extension_or_no_image_beside_it_as_a_folders_file(tmp_path):
    # a zip member 'x.jpg..' or a caption without its image was only 'not a recognised image format', where the same
    # file in a folder says why it is no sidecar: the user is left to guess that the image is missing or the name odd
    files = {"d/x.jpg": image_bytes(8, 8, 0, "JPEG"), "d/x.jpg..": b"not an image", "d/x..txt": b"a caption?",
             "d/lost.txt": b"a caption", "d/x.jpg.": image_bytes(8, 8, 1, "JPEG")}
    folder = _read(str(write_tree(tmp_path / "in", files)))
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "a.zip").write_bytes(zip_bytes(files))
    zipped = _read(str(tmp_path / "z"))
    notes = {name: zipped[f"a.zip/{name}"].get("decode_note") for name in files}
    assert notes == {name: folder[name].get("decode_note") for name in files}
    assert notes["d/x.jpg.."].startswith("its name has an empty extension (a '.' at its end, or two together)")
    assert notes["d/lost.txt"].startswith("if it is an image's sidecar, no image named lost.<image extension> lies")
    assert notes["d/x.jpg"] is None


def test_a_tar_members_empty_extension_keeps_webdatasets_key_a_column_of_its_key(tmp_path) -> None:
    # as docs/job.md says: a tar key is WebDataset's, whatever a folder makes of the same names. x.jpg. is x's column
    # 'jpg.' (written jpg_, counted as unpurified when it holds an image); z.png. alone is its key's reject
    jpeg, png = image_bytes(8, 8, 1, "JPEG"), image_bytes(8, 8, 2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(tar_bytes({"x.jpg": image_bytes(8, 8, 0, "JPEG"), "x.jpg.": jpeg,
                                                       "z.png.": png}))
    records = _read(str(tmp_path / "in"))
    assert records["s.tar/x"]["meta"] == {"jpg_": jpeg}
    assert records["s.tar/z"]["error"] == "expected exactly one image member for key z, found z.png."


def test_a_damaged_image_or_a_video_with_two_dots_in_its_name_is_not_said_to_be_a_sidecar(tmp_path) -> None:
    # 'IMG..1.jpg' cut short was the reject 'not a recognised image format (its name has an empty extension ...: it is
    # no image's sidecar ...)', which sent a user looking for a lost image; an image or a video is never a sidecar
    files = {"x.jpg": image_bytes(8, 8, 0, "JPEG"), "IMG..1.jpg": image_bytes(8, 8, 1, "JPEG")[:20],
             "clip..mp4": b"\x00\x00\x00\x18ftypmp42", "x..txt": b"a caption?"}
    records = _read(str(write_tree(tmp_path / "in", files)))
    assert {name: records[name].get("decode_note") for name in ("IMG..1.jpg", "clip..mp4")} == {"IMG..1.jpg": None,
                                                                                               "clip..mp4": None}
    assert records["x..txt"]["decode_note"].startswith("its name has an empty extension")
