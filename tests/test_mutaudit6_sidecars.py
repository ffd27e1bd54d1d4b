"""Mutation audit of `sources.sidecar_files` and its callers: which files beside an image are its sidecars (each kind of
file that stays an input of its own, by name), what the stamp of an image file takes of its sidecars (a caption's edit,
a caption renamed to a label, an image without sidecars keeping its stamp of before), a listing made again, a
sidecar whose size the storage does not list, and which names without their image say so in their reject."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.sources import discover, read_unit
from pipeline.sources.folder_metadata import FolderMetadata, unit_metadata
from pipeline.sources.sidecar_files import Sidecars, orphan_note, pair_sidecars, sent_sidecars, unit_sidecars
from tests.jobutil import image_bytes, rewritten_in_place

# Written out here, not imported: what a user's folder holds beside x.jpg that is no caption, label or .json of it
VIDEOS_AND_ARCHIVES = [".MOV", ".mp4", ".M4V", ".avi", ".mkv", ".webm", ".3gp", ".7z", ".rar", ".zst", ".zstd",
                       ".tzst", ".lz4", ".gz", ".bz2", ".xz"]
OTHER_IMAGES = [".jpe", ".JFIF", ".jif", ".mpo", ".apng", ".pnm", ".dib", ".HEIC", ".heif", ".hif", ".avif", ".DNG",
                ".CR2", ".cr3", ".crw", ".NEF", ".nrw", ".ARW", ".srf", ".sr2", ".RAF", ".ORF", ".RW2", ".pef", ".srw",
                ".raw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".psd", ".xcf", ".svg", ".eps", ".ai", ".ico",
                ".icns", ".tga", ".jp2", ".j2k", ".jxl", ".exr", ".hdr"]


@pytest.mark.parametrize("ext", VIDEOS_AND_ARCHIVES)
def test_a_video_or_archive_beside_an_image_stays_an_input_of_its_own(ext: str) -> None:
    # as a sidecar it became the image's bytes column, copied unpurified into the output
    assert pair_sidecars(["d/x.jpg", f"d/x{ext}", f"d/x.jpg{ext}"]) == {}


@pytest.mark.parametrize("ext", OTHER_IMAGES)
def test_an_image_of_another_format_beside_one_is_an_image_and_shares_its_caption(ext: str) -> None:
    assert pair_sidecars(["d/x.jpg", f"d/x{ext}", "d/x.txt"]) == {"d/x.txt": sorted([(f"d/x{ext}", "txt"),
                                                                                     ("d/x.jpg", "txt")])}


def test_a_name_ending_in_a_dot_is_no_sidecar() -> None:
    # 'x.' has no extension to name a column by
    assert pair_sidecars(["d/x.jpg", "d/x."]) == {}


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _stamps(root: Path, sidecars: bool = True) -> dict[str, str | None]:
    """Each image file's content stamp (what `changes` compares with its row's), by name."""
    units = discover(str(root), {}, 64, metadata=FolderMetadata() if sidecars else None,
                     sidecars=Sidecars() if sidecars else None)
    return {Path(path).name: content for u in units for path, content in zip(u.paths, u.contents, strict=True)}


def test_an_images_stamp_takes_its_sidecars_names_and_contents_and_no_more(tmp_path) -> None:
    root = _write(tmp_path / "in", {"x.png": image_bytes(8, 8, 0), "x.txt": b"a cat", "y.png": image_bytes(8, 8, 1)})
    before, without = _stamps(root), _stamps(root, sidecars=False)
    assert sorted(before) == ["x.png", "y.png"]
    # an image without sidecars keeps the stamp it had before sidecars were read: an older output sees it unchanged
    assert before["y.png"] == without["y.png"] is not None
    assert before["x.png"] != without["x.png"]

    rewritten_in_place(root / "x.txt", b"a dog")  # the caption edited: the image's bytes are as they were
    edited = _stamps(root)
    assert edited["x.png"] != before["x.png"] and edited["y.png"] == before["y.png"]

    # the caption renamed to a label, its bytes and times the same: the row's column is label now, a change
    stat = os.stat(root / "x.txt")
    os.rename(root / "x.txt", root / "x.cls")
    os.utime(root / "x.cls", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _stamps(root)["x.png"] != edited["x.png"]


def _records(root: Path, found: Sidecars) -> dict[str, dict]:
    metadata = FolderMetadata()
    units = discover(str(root), {}, 64, metadata=metadata, sidecars=found)
    return {r["id"]: r for u in units
            for r in read_unit(u, metadata=unit_metadata(u.paths, metadata), sidecars=unit_sidecars(u.paths, found))
            if r["kind"] in ("image", "reject")}


def test_a_listing_made_again_pairs_each_sidecar_once(tmp_path) -> None:
    # the planning lists the input again after a transient storage error, into the same Sidecars
    root = _write(tmp_path / "in", {"x.png": image_bytes(8, 8, 0), "x.txt": b"a cat", "x.json": b'{"n": 1}'})
    found = Sidecars()
    _records(root, found)
    records = _records(root, found)
    assert found.ids == ["x.json", "x.txt"]
    assert len(found.of[f"{root}/x.png"]) == 2
    # not a reject for 'x.txt and x.txt both give this image's values'
    assert records["x.png"]["kind"] == "image" and records["x.png"]["meta"] == {"txt": "a cat", "n": 1}


def test_a_sidecar_whose_size_the_storage_does_not_list_is_sent_to_its_read_task() -> None:
    # a web folder whose server sends no Content-Length lists sizes as None
    found = Sidecars(of={"https://h/d/x.png": [("txt", "https://h/d/x.txt", None, None),
                                               ("json", "https://h/d/x.json", 12, None)]}, ids=["d/x.json", "d/x.txt"])
    sent = unit_sidecars(["https://h/d/x.png", "https://h/d/y.png"], found)
    assert sent_sidecars(sent) == {"https://h/d/x.png": [("txt", "https://h/d/x.txt", None),
                                                         ("json", "https://h/d/x.json", 12)]}
    assert unit_sidecars(["https://h/d/y.png"], found) == "" and sent_sidecars("") == {}


@pytest.mark.parametrize("name", ["00000/lost.txt", "LOST.TXT", "a.cls", "a.Cls", "a.json", "a.text", "a.transcript"])
def test_a_caption_label_or_json_without_its_image_says_so(name: str) -> None:
    stem = Path(name).name.rpartition(".")[0]
    assert orphan_note(name).startswith(f"if it is an image's sidecar, no image named {stem}.<image extension> lies "
                                        "beside it in its folder, or --join-metadata is false")


@pytest.mark.parametrize("name", ["a.csv", "a.bin", "a.txt.bak", "txt", "d/json"])
def test_other_files_without_an_image_get_no_such_note(name: str) -> None:
    assert orphan_note(name) == ""


def test_an_image_with_sidecars_at_the_inputs_top_has_no_folder_label(tmp_path) -> None:
    # as an image without sidecars there, and a tar key at its shard's top: null, not an empty label
    root = _write(tmp_path / "in", {"x.png": image_bytes(8, 8, 0), "x.txt": b"a cat", "y.png": image_bytes(8, 8, 1),
                                    "cats/z.png": image_bytes(8, 8, 2), "cats/z.txt": b"a cat"})
    metadata, found = FolderMetadata(), Sidecars()
    units = discover(str(root), {}, 64, metadata=metadata, sidecars=found)
    records = {r["id"]: r["meta"] for u in units
               for r in read_unit(u, labels_from_folders=True, metadata=unit_metadata(u.paths, metadata),
                                  sidecars=unit_sidecars(u.paths, found)) if r["kind"] == "image"}
    assert records == {"x.png": {"txt": "a cat", "label": None}, "y.png": {"label": None},
                       "cats/z.png": {"txt": "a cat", "label": "cats"}}


def test_a_caption_without_its_image_is_read_with_the_note_its_reject_gives(tmp_path) -> None:
    records = _records(_write(tmp_path / "in", {"x.png": image_bytes(8, 8, 0), "lost.txt": b"a cat"}), Sidecars())
    assert records["lost.txt"]["decode_note"].startswith("if it is an image's sidecar, no image named lost.<image "
                                                         "extension> lies beside it")
    assert "decode_note" not in records["x.png"]


def test_a_metadata_rows_label_in_another_case_is_kept_apart_from_the_folders_with_sidecars_or_without(tmp_path) -> None:
    # 'Label' beside the folder's 'label' in one row: case-blind readers (DuckDB, Spark) take one for the other
    root = _write(tmp_path / "in", {"cats/0.png": image_bytes(8, 8, 0), "cats/0.txt": b"a cat",
                                    "cats/1.png": image_bytes(8, 8, 1),
                                    "cats/metadata.csv": b"file_name,Label\n0.png,tabby\n1.png,black\n"})
    metadata, found = FolderMetadata(), Sidecars()
    units = discover(str(root), {}, 64, metadata=metadata, sidecars=found)
    records = {r["id"]: r["meta"] for u in units
               for r in read_unit(u, labels_from_folders=True, metadata=unit_metadata(u.paths, metadata),
                                  sidecars=unit_sidecars(u.paths, found)) if r["kind"] == "image"}
    assert records == {"cats/0.png": {"txt": "a cat", "label": "cats", "file_name": "0.png", "metadata_Label": "tabby"},
                       "cats/1.png": {"label": "cats", "file_name": "1.png", "metadata_Label": "black"}}
