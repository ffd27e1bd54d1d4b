"""zip-purify-export --sidecars: each exported image's sidecar files (`a.txt`, `a.cls`, `a.json` beside `a.png`) written
from its row, so that an img2dataset folder or WebDataset shards, purified and exported, read back into the job (and
into caption loaders that pair `x.png` with `x.txt`) with the same columns.

Most outputs here are written by the job's own writer from the records the job's own reader makes of an input folder
(no model runs); one test runs the job."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.export import export_images, json_key, sidecar_bytes
from pipeline.export_cli import build_parser, main
from pipeline.job import run_job
from pipeline.output import JOB_FILE, write_json
from pipeline.sources import discover, read_unit
from pipeline.sources.export_manifests import is_export_manifest
from pipeline.sources.folder_metadata import FolderMetadata, unit_metadata
from pipeline.sources.sidecar_files import Sidecars, unit_sidecars
from tests.jobutil import image_bytes, small_job_config, tar_bytes, write_tree
from tests.s3util import moto_s3
from tests.test_export import files_under, image, make_output, manifest_rows, progress_of_a_run_that_starts


def read_folder(uri: str) -> dict[str, dict]:
    """Each image record of an input folder by id, as the job's read tasks make them (sidecars paired, metadata
    joined). Nothing else in it is a reject but an export's manifest.csv (a table, not an image)."""
    found, sidecars = FolderMetadata(), Sidecars()
    units = discover(uri, {}, 256, metadata=found, sidecars=sidecars)
    records = {r["id"]: r for unit in units
               for r in read_unit(unit, metadata=unit_metadata(unit.paths, found),
                                  sidecars=unit_sidecars(unit.paths, sidecars))
               if r["kind"] in ("image", "reject") and r["id"] != "manifest.csv"}  # a reject once decoded
    assert all(r["kind"] == "image" for r in records.values()), records
    return records


def purified(records: dict[str, dict]) -> list[dict]:
    """The records the job's writer is handed for the images a reader gave (the image as PNG, as purified)."""
    out = []
    for r in records.values():
        assert r["kind"] == "image", r
        with Image.open(io.BytesIO(r["data"])) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "PNG")
            width, height = im.size
        out.append({"kind": "image", "id": r["id"], "source": r["source"], "source_sha256": r["source_sha256"],
                    "png": buf.getvalue(), "width": width, "height": height, "meta": r["meta"],
                    "original_format": "JPEG", "original_mode": "RGB", "original_frames": 1, "psnr_vs_input_db": 30.0,
                    "downscale_factor": 1.0})
    return out


def shard_files() -> dict[str, bytes]:
    """An img2dataset shard folder's files (`--output_format files`), with what sidecars hold at their oddest: a
    .json's keys named like the job's columns (`id`, `width`), nested and listed, a float, a latin-1 label and
    caption, a .json key `label` beside a .cls (the job's `json_label`), another sidecar (`.caption`)."""
    files = {}
    for i in range(4):
        key = f"00000/{i:06d}"
        files[f"{key}.jpg"] = image_bytes(8, 8 + i, i, "JPEG")
        files[f"{key}.json"] = json.dumps({
            "url": f"http://x/{i}.jpg", "key": f"{i:09d}", "status": "success", "width": 8, "id": i,
            "input_id": f"theirs {i}", "similarity": 0.25 + i, "tags": ["a", f"t{i}"], "exif": {"iso": 100 * i},
        }).encode()
        files[f"{key}.txt"] = f"a caption, \"quoted\"\nover two lines {i}\n".encode()
    files["00000/000001.cls"] = b"7\n"
    files["00000/000002.cls"] = "caf\xe9".encode("latin-1")
    files["00000/000002.txt"] = "na\xefve caption".encode("latin-1")
    files["00000/000003.json"] = json.dumps({"label": "from json", "caption": "c\\xe9 typed so"}).encode()
    files["00000/000003.cls"] = b"cat"
    files["00000/000003.caption"] = b"another sidecar"
    return files


def test_an_img2dataset_folder_exported_with_sidecars_reads_back_with_the_same_columns(tmp_path: Path) -> None:
    first = read_folder(str(write_tree(tmp_path / "in", shard_files())))
    assert first["00000/000003.jpg"]["meta"]["json_label"] == "from json"  # the reader's own rename, kept
    make_output(str(tmp_path / "out"), purified(first))
    assert main(["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress"]) == 0
    assert files_under(tmp_path / "files") == {"manifest.csv"} | {
        f"00000/{i:06d}.{ext}" for i in range(4) for ext in ("png", "txt", "json")} | {
        "00000/000001.cls", "00000/000002.cls", "00000/000003.cls"}
    again = read_folder(str(tmp_path / "files"))
    assert sorted(again) == [f"00000/{i:06d}.png" for i in range(4)]
    for id_, record in first.items():
        assert again[id_[:-4] + ".png"]["meta"] == record["meta"], id_
    # what a caption loader reads: the caption's own bytes, the label's digits, the .json's keys as the input had them
    files = tmp_path / "files" / "00000"
    assert (files / "000000.txt").read_bytes() == b"a caption, \"quoted\"\nover two lines 0"
    assert (files / "000002.txt").read_bytes() == "na\xefve caption".encode("latin-1")
    assert (files / "000002.cls").read_bytes() == "caf\xe9".encode("latin-1")
    assert (files / "000001.cls").read_bytes() == b"7"
    assert json.loads((files / "000001.json").read_bytes()) == {
        "url": "http://x/1.jpg", "key": "000000001", "status": "success", "width": 8, "id": 1,
        "input_id": "theirs 1", "similarity": 1.25, "tags": ["a", "t1"], "exif": {"iso": 100}}


def test_a_webdataset_shards_keys_exported_with_sidecars_read_back_as_a_folder_with_the_same_columns(
        tmp_path: Path) -> None:
    files = shard_files()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s-0001.tar").write_bytes(tar_bytes(files))
    first = read_folder(str(tmp_path / "in"))
    assert sorted(first) == [f"s-0001.tar/00000/{i:06d}" for i in range(4)]
    make_output(str(tmp_path / "out"), purified(first))
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True)
    assert report.ok and report.sidecars_written == 4 * 2 + 3
    again = read_folder(str(tmp_path / "files"))
    for id_, record in first.items():
        assert again[id_ + ".png"]["meta"] == record["meta"], id_


def test_the_jobs_own_columns_are_never_a_sidecars_and_a_null_is_no_file_and_no_key(tmp_path: Path) -> None:
    records = [image("a.jpg", 1, txt="cap", label=3, url="u", score=None),
               image("b.jpg", 2, txt=None, label=None, url=None, score=0.5),
               image("c.jpg", 3)]
    make_output(str(tmp_path / "out"), records)
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True)
    assert report.ok and report.sidecars_written == 4
    assert files_under(tmp_path / "files") == {"a.png", "a.txt", "a.cls", "a.json", "b.png", "b.json", "c.png",
                                               "manifest.csv"}
    assert json.loads((tmp_path / "files" / "a.json").read_text()) == {"url": "u"}
    assert json.loads((tmp_path / "files" / "b.json").read_text()) == {"score": 0.5}
    # the job's own columns stay in the manifest
    row = next(r for r in manifest_rows(tmp_path / "files") if r["id"] == "a.jpg")
    assert row["source"] == "/in/a.jpg" and row["width"] and row["psnr_vs_input_db"] == "31.0"


def test_a_column_null_in_every_row_is_a_null_key_of_each_json_so_that_it_reads_back(tmp_path: Path) -> None:
    # img2dataset's error_message (and exif) is null for every image that downloaded: with no key, DIR read back into
    # the job lacked the column the output has
    files = {}
    for i in range(2):
        files[f"00000/{i:06d}.jpg"] = image_bytes(8, 8, i, "JPEG")
        files[f"00000/{i:06d}.json"] = json.dumps({"url": f"u{i}", "status": "success", "error_message": None,
                                                   "exif": None if i else '{"Image Make": "Canon"}'}).encode()
    files["00000/000001.txt"] = b"a caption"
    first = read_folder(str(write_tree(tmp_path / "in", files)))
    make_output(str(tmp_path / "out"), purified(first))
    assert str(pq.read_schema(next((tmp_path / "out" / "data").glob("*.parquet"))).field("error_message").type) == "null"
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert json.loads((tmp_path / "files" / "00000" / "000001.json").read_bytes()) == {
        "error_message": None, "status": "success", "url": "u1"}  # exif: null here, not in every row: no key
    again = read_folder(str(tmp_path / "files"))
    assert {k for r in again.values() for k in r["meta"]} == {k for r in first.values() for k in r["meta"]}
    for id_, record in first.items():  # a null where the row has no key is a null of the column all the same
        assert {k: v for k, v in again[id_[:-4] + ".png"]["meta"].items() if v is not None} == \
            {k: v for k, v in record["meta"].items() if v is not None}, id_
    # a row with no other value has a .json of those keys alone; a caption or label null in every row is no file
    row = {"id": "c.jpg", "txt": None, "label": None, "error_message": None}
    assert sidecar_bytes(row, ["txt", "label", "error_message"], nulls={"txt", "label", "error_message"}) == {
        ".json": b'{"error_message": null}'}
    # a .json the reader kept as text (a list) stays as it was: a null key would make it an object
    row = {"id": "d.jpg", "json": '[1, "two"]', "error_message": None}
    assert sidecar_bytes(row, ["json", "error_message"], nulls={"error_message"}) == {".json": b'[1, "two"]'}
    row = {"id": "e.jpg", "json": '{"b": 2}', "a": 1, "error_message": None}  # fields past the reader's limit
    assert json.loads(sidecar_bytes(row, ["a", "json", "error_message"], nulls={"error_message"})[".json"]) == {
        "a": 1, "b": 2, "error_message": None}


@pytest.mark.parametrize("label", ["007", "+3", "-0", " cat", "cat\n", "7 "])
def test_a_label_a_cls_would_read_back_as_another_is_a_json_key(tmp_path: Path, label: str) -> None:
    # the reader strips a .cls and reads its digits as a number: a .json's "label": "007" came back as 7, one class
    # with "7"; so is a label a .cls gives as it is, a number's digits as that number (WebDataset's class)
    files = {"a.jpg": image_bytes(8, 8, 1, "JPEG"), "a.json": json.dumps({"label": label}).encode(),
             "b.jpg": image_bytes(8, 8, 2, "JPEG"), "b.json": json.dumps({"label": "cat"}).encode(),
             "c.jpg": image_bytes(8, 8, 3, "JPEG"), "c.cls": b"3\n"}
    first = read_folder(str(write_tree(tmp_path / "in", files)))
    assert first["a.jpg"]["meta"] == {"label": label}
    make_output(str(tmp_path / "out"), purified(first))
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert json.loads((tmp_path / "files" / "a.json").read_bytes()) == {"label": label}
    assert not (tmp_path / "files" / "a.cls").exists()
    assert (tmp_path / "files" / "b.cls").read_bytes() == b"cat"
    assert (tmp_path / "files" / "c.cls").read_bytes() == b"3"  # the label column is text: "3"
    again = read_folder(str(tmp_path / "files"))
    assert again["a.png"]["meta"] == {"label": label} and again["b.png"]["meta"] == {"label": "cat"}


def test_a_number_that_is_not_finite_reads_back_as_that_number(tmp_path: Path) -> None:
    # written as the text "nan", one NaN among a Parquet input's scores made the column read back text, every row's
    rows = [{"id": "a.jpg", "score": 0.5, "scores": [1.0, float("inf")], "obj": {"x": float("-inf")}},
            {"id": "b.jpg", "score": float("nan"), "scores": [], "obj": {"x": 2.0}}]
    files = {"a.jpg": image_bytes(8, 8, 1, "JPEG"), "b.jpg": image_bytes(8, 8, 2, "JPEG")}
    for row in rows:
        files[row["id"][:-4] + ".json"] = json.dumps({k: v for k, v in row.items() if k != "id"}).encode()
    first = read_folder(str(write_tree(tmp_path / "in", files)))
    make_output(str(tmp_path / "out"), purified(first))
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert b'"score": NaN' in (tmp_path / "files" / "b.json").read_bytes()  # as Python's json writes and reads it
    again = read_folder(str(tmp_path / "files"))
    assert again["a.png"]["meta"] == first["a.jpg"]["meta"] == {"score": 0.5, "scores": [1.0, float("inf")],
                                                                "obj": {"x": float("-inf")}}
    back = again["b.png"]["meta"]["score"]
    assert isinstance(back, float) and back != back


def test_values_that_are_not_text_keep_their_json_types() -> None:
    import datetime

    row = {"id": "a.jpg", "txt": 5, "label": 2.5, "flag": True, "n": 3, "x": float("inf"), "items": [1, None, "b"],
           "when": datetime.date(2024, 5, 1), "obj": {"k": [1.5]}}
    files = sidecar_bytes(row, [c for c in row if c != "id"])
    assert set(files) == {".json"}  # a caption that is no text and a label that is no whole number or text: keys
    assert json.loads(files[".json"]) == {"txt": 5, "label": 2.5, "flag": True, "n": 3, "x": float("inf"),
                                          "items": [1, None, "b"], "when": "2024-05-01", "obj": {"k": [1.5]}}
    assert sidecar_bytes({"id": "a", "label": True}, ["label"]) == {".json": b'{"label": true}'}


@pytest.mark.parametrize(("column", "key"), [("input_id", "id"), ("input_input_id", "input_id"), ("input_Width", "Width"),
                                            ("input_Input_Source", "Input_Source"), ("input_foo", "input_foo"),
                                            ("json_label", "json_label"), ("metadata_x", "metadata_x"), ("id2", "id2")])
def test_the_readers_input_escape_is_undone_in_a_json_key(column: str, key: str) -> None:
    assert json_key(column) == key


def test_a_json_the_reader_kept_as_text_is_written_back_as_it_was(tmp_path: Path) -> None:
    files = {"a.jpg": image_bytes(8, 8, 1, "JPEG"), "a.json": b"[1, 2, 3]", "a.txt": b"cap",
             "b.jpg": image_bytes(8, 8, 2, "JPEG"), "b.json": b'{"not json'}
    first = read_folder(str(write_tree(tmp_path / "in", files)))
    assert first["a.jpg"]["meta"]["json"] == "[1, 2, 3]"
    make_output(str(tmp_path / "out"), purified(first))
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert (tmp_path / "files" / "b.json").read_bytes() == b'{"not json'
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {id_[:-4] + ".png": r["meta"] for id_, r in first.items()}


def test_the_fields_past_the_readers_column_limit_go_back_into_the_json(tmp_path: Path) -> None:
    row = {"id": "a.jpg", "a": 1, "json": '{"b": 2, "c": [3]}'}
    assert json.loads(sidecar_bytes(row, ["a", "json"])[".json"]) == {"a": 1, "b": 2, "c": [3]}
    # a field of that name already a column: the text stays the `json` key's, nothing is lost
    row = {"id": "a.jpg", "b": 1, "json": '{"b": 2}'}
    assert json.loads(sidecar_bytes(row, ["b", "json"])[".json"]) == {"b": 1, "json": '{"b": 2}'}


def test_columns_of_bytes_are_in_no_sidecar_and_the_last_lines_say_so(tmp_path: Path, capsys) -> None:
    make_output(str(tmp_path / "out"), [image("s.tar/k", 1, seg_png=b"\x89PNG mask", txt="cap")])
    assert main(["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "note: column(s) seg_png hold bytes and are in no sidecar file; read them from data/" in said.err
    assert "(1 written, 1 sidecar file written)" in said.out
    assert files_under(tmp_path / "files") == {"s.tar/k.png", "s.tar/k.txt", "manifest.csv"}


def test_the_sidecars_follow_the_images_escaped_shortened_and_told_apart_names(tmp_path: Path) -> None:
    long = "y" * 300
    records = [image(f"e/{long}.jpg", 10, txt="long", url="no room for its .json"),
               image("d/a.jpg", 1, txt="jpg"), image("d/a.png", 2, txt="png"), image("d/B.jpg", 3, txt="upper"),
               image("d/b.jpg", 4, txt="lower"), image("d/con.jpg", 5, txt="device"), image("d/q:r.jpg", 6, txt="colon"),
               image(f"d/{long}.jpg", 7, txt="long"), image("d/x.png", 8, txt="x"), image("d/x.png.jpg", 9, txt="xx")]
    make_output(str(tmp_path / "out"), records)
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True)
    # a name shortened to 255 bytes, with a 3-letter extension, leaves no room for its .json: a failed row, named
    assert report.failed == 1 and report.failures[0][0] == f"e/{long}.jpg"
    assert report.failures[0][1].startswith("ValueError: the name of its sidecar file would be over 255 bytes")
    records = records[1:]
    assert not (tmp_path / "files" / "e").exists()  # nothing of it written
    where = {r["id"]: r["path"] for r in manifest_rows(tmp_path / "files")}
    for r in records:  # each image's caption lies beside it, named after it
        path = where[r["id"]]
        stem = path[:-4]
        if r["id"] == "d/x.png.jpg":  # its stem, x.png, is x.png's whole name: its own whole name's, x.png.png.txt
            stem = path
        assert (tmp_path / "files" / f"{stem}.txt").read_text() == r["meta"]["txt"], r["id"]
    assert where["d/a.jpg"] == "d/a.jpg.png" and (tmp_path / "files" / "d" / "a.jpg.txt").exists()
    # the job reads each caption back as its own image's, none as two images'
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {where[r["id"]]: r["meta"] for r in records}


def test_an_image_whose_id_a_row_repeats_or_whose_name_another_gave_up_keeps_sidecars_of_its_stem(tmp_path: Path) -> None:
    from pipeline.stages import batch_of, write_stage

    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1, txt="a"), image("b.png", 2, txt="png"), image("b.jpg", 3, txt="jpg")],
                status="interrupted", per_file=1)
    write_stage(batch_of([image("a.jpg", 1, txt="a")]), str(out), {}, name_salt="again")  # a retried batch's copy
    report = export_images(out, tmp_path / "files", sidecars=True, force=True)
    assert report.ok and report.repeated == 1
    # a.jpg's two rows are one image, and b.jpg, moved to b.jpg.png, no longer claims the stem b
    assert files_under(tmp_path / "files") == {"a.png", "a.txt", "b.png", "b.txt", "b.jpg.png", "b.jpg.txt",
                                               "manifest.csv"}


def test_with_format_input_two_images_of_one_stem_each_get_sidecars_of_their_whole_name(tmp_path: Path) -> None:
    records = [image("x.jpg", 1, txt="from jpg", label=1), image("x.png", 2, txt="from png", label=2),
               image("y.jpg", 3, txt="alone")]
    make_output(str(tmp_path / "out"), records)
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True, image_format="input").ok
    assert files_under(tmp_path / "files") == {"x.jpg", "x.jpg.txt", "x.jpg.cls", "x.png", "x.png.txt", "x.png.cls",
                                               "y.jpg", "y.txt", "manifest.csv"}
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {r["id"]: r["meta"] for r in records}


def test_a_sidecar_named_as_a_folder_of_images_takes_its_images_whole_name(tmp_path: Path) -> None:
    records = [image("a.jpg", 1, txt="a"), image("a.txt/b.jpg", 2, txt="b")]
    make_output(str(tmp_path / "out"), records)
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert files_under(tmp_path / "files") == {"a.png", "a.png.txt", "a.txt/b.png", "a.txt/b.txt", "manifest.csv"}
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {"a.png": {"txt": "a"}, "a.txt/b.png": {"txt": "b"}}


def test_an_image_with_no_sidecar_name_of_its_own_is_a_failed_row_and_nothing_of_it_is_written(tmp_path: Path) -> None:
    # x.jpg's stem is x.png's too, and its whole name the stem of x.jpg.png: the job would give either to two images
    make_output(str(tmp_path / "out"), [image("x.jpg", 1, txt="1"), image("x.png", 2, txt="2"),
                                        image("x.jpg.png", 3, txt="3")])
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True, image_format="input")
    assert report.failed == 1 and report.failures[0][0] == "x.jpg"
    assert "no name for its sidecar files is its image's alone" in report.failures[0][1]
    assert files_under(tmp_path / "files") == {"x.png", "x.png.txt", "x.jpg.png", "x.jpg.png.txt", "manifest.csv"}


def test_partition_folders_columns_stay_in_the_path_not_in_the_json(tmp_path: Path) -> None:
    make_output(str(tmp_path / "out"), [image("year=2020/a.jpg", 1, year="2020", txt="cap", other="o"),
                                        image("year=2021/b.jpg", 2, partition_year="2021", year="1999")])
    write_json(f"{tmp_path / 'out'}/{JOB_FILE}", {"reading": {"partitioning": "hive"}}, {})
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).ok
    assert json.loads((tmp_path / "files" / "year=2020" / "a.json").read_text()) == {"other": "o"}
    # the row's own `year` is kept; the folder's, partition_year, is the folder
    assert json.loads((tmp_path / "files" / "year=2021" / "b.json").read_text()) == {"year": "1999"}


def test_an_export_stopped_leaves_each_image_with_its_sidecars_and_resume_finishes_them(tmp_path: Path, capsys,
                                                                                        monkeypatch) -> None:
    import pipeline.export as export

    records = [image(f"{i}.jpg", i, txt=f"cap {i}", label=i, url=f"u{i}") for i in range(6)]
    make_output(str(tmp_path / "out"), records, per_file=2)
    original, writes = export.write_file, []

    def stopped(fs, path, data, resume, *listed):  # noqa: ANN001
        writes.append(path)
        if len(writes) == 8:  # the second image's sidecars written, the image not
            raise KeyboardInterrupt
        return original(fs, path, data, resume, *listed)

    monkeypatch.setattr(export, "write_file", stopped)
    argv = ["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress",
            "--workers", "1"]
    assert main(argv) == 130
    written = files_under(tmp_path / "files")
    images = {name for name in written if name.endswith(".png")}
    assert len(images) == 1 and len(written) == 7  # one image and its 3 sidecars, the next one's 3: no temporary
    for name in images:  # an image in DIR has its sidecars beside it
        assert {f"{name[:-4]}.{ext}" for ext in ("txt", "cls", "json")} <= written
    monkeypatch.setattr(export, "write_file", original)
    (tmp_path / "files" / images.pop().replace(".png", ".txt")).write_bytes(b"ca")  # cut short (not by this export:
    # its files land whole)
    assert main([*argv, "--resume"]) == 0
    assert "(5 written, 1 already there, 13 sidecar files written, 5 sidecar files already there)" in capsys.readouterr().out
    again = read_folder(str(tmp_path / "files"))
    assert {id_: r["meta"] for id_, r in again.items()} == {r["id"][:-4] + ".png": r["meta"] for r in records}


def test_overwrite_and_resume_remove_a_sidecar_the_row_has_no_value_for(tmp_path: Path) -> None:
    """An earlier export's sidecar of an image whose row has no value for it now would read back as its column: it is
    removed. Only where the earlier export wrote it: its manifest names the image, and the file is not newer."""
    make_output(str(tmp_path / "old"), [image("a.jpg", 1, txt="cap", label=9), image("b.jpg", 2, txt="old", label=1)])
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap", label=None), image("b.jpg", 2, txt=None)])
    files = tmp_path / "files"
    for existing in ("overwrite", "resume"):
        assert export_images(tmp_path / "old", files, sidecars=True, existing="overwrite").ok
        write_tree(files, {"keep.txt": b"not a sidecar of an exported image", "a.cls.d/x": b"x"})
        assert export_images(tmp_path / "out", files, sidecars=True, existing=existing).stale_sidecars_removed == 3
        assert files_under(files) == {"a.png", "a.txt", "b.png", "keep.txt", "a.cls.d/x", "manifest.csv"}
        assert read_folder(str(files))["a.png"]["meta"] == {"txt": "cap"}


@pytest.mark.parametrize("existing", ["overwrite", "resume"])
@pytest.mark.parametrize("remote", [False, True])
def test_a_users_own_files_named_as_an_images_sidecar_no_export_wrote_are_kept(tmp_path: Path, existing: str,
                                                                                remote: bool) -> None:
    """--sidecars --resume/--overwrite deleted every .txt, .cls and .json named as an exported image's sidecar that its
    row had no value for, as an earlier export's: a user's own notes `a.txt` in a folder no export had written (or one
    whose manifest was not written, `--manifest none`), or beside an image no earlier export wrote. They are kept; a
    stale sidecar beside an image an earlier export's manifest names is still removed."""
    make_output(str(tmp_path / "one"), [image("b.jpg", 2, caption="a cat")])
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt=None), image("b.jpg", 2, caption="a cat")])
    to = f"memory://users-own-sidecars-{existing}/files" if remote else str(tmp_path / "files")
    fs, root = fsspec.core.url_to_fs(to)
    mine = {"a.txt": b"my notes", "a.cls": b"3", "a.png.json": b'{"mine": 1}'}

    def put_mine() -> None:
        fs.makedirs(root, exist_ok=True)
        for name, data in mine.items():
            fs.pipe_file(f"{root}/{name}", data)

    def held() -> dict[str, bytes]:
        return {name: fs.cat_file(f"{root}/{name}") for name in mine if fs.exists(f"{root}/{name}")}

    try:
        for earlier in ([], [tmp_path / "out", to, "--manifest", "none"], [tmp_path / "one", to]):
            if fs.exists(root):
                fs.rm(root, recursive=True)
            if earlier:  # an export of these images without a manifest; one of b.png alone: a.png exported first now
                assert export_images(earlier[0], earlier[1], sidecars=True, caption_column="caption",
                                     manifest="none" if "none" in earlier else "csv").ok
            put_mine()
            report = export_images(tmp_path / "out", to, sidecars=True, existing=existing)
            assert report.ok and held() == mine, earlier
            # that export's b.txt (--caption-column) is stale without it: removed where its manifest names b.png
            assert report.stale_sidecars_removed == (1 if earlier[-1:] == [to] else 0), earlier
            assert fs.exists(f"{root}/b.txt") == (earlier[-1:] == ["none"]), earlier
    finally:
        if remote:
            fs.rm(root.rsplit("/", 1)[0], recursive=True)


@pytest.mark.parametrize("existing", ["overwrite", "resume"])
def test_a_users_own_sidecar_named_file_beside_a_plain_exports_image_is_kept(tmp_path: Path, existing: str) -> None:
    """A plain export (no --sidecars) wrote no sidecar, but its manifest names its images: a user's own `a.txt` beside
    `a.png` was deleted by a later --sidecars --resume/--overwrite as an earlier export's stale sidecar. Only the
    sidecar files a manifest lists as its export's own are removed: that manifest lists none."""
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt=None, label=None), image("b.jpg", 2, txt="cap")])
    files = tmp_path / "files"
    assert export_images(tmp_path / "out", files).ok
    assert "sidecar_files" not in manifest_rows(files)[0]
    write_tree(files, {"a.txt": b"my notes", "a.cls": b"3", "b.json": b'{"mine": 1}'})
    report = export_images(tmp_path / "out", files, sidecars=True, existing=existing)
    assert report.ok and report.stale_sidecars_removed == 0
    assert (files / "a.txt").read_bytes() == b"my notes" and (files / "a.cls").read_bytes() == b"3"
    assert (files / "b.json").read_bytes() == b'{"mine": 1}'


@pytest.mark.parametrize("manifest", ["csv", "jsonl"])
def test_only_the_sidecars_an_earlier_export_listed_are_removed_and_one_added_after_is_kept(tmp_path: Path,
                                                                                            manifest: str) -> None:
    """The manifest of a --sidecars export lists each image's sidecar files (`sidecar_files`). A later --resume removes
    one of those its row has no value for now, counted, and keeps a `z.json` (or `a.json`) the user added after."""
    make_output(str(tmp_path / "old"), [image("a.jpg", 1, txt="cap", label=9), image("z.jpg", 2, txt="zz")])
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap", label=None), image("z.jpg", 2, txt=None)])
    files = tmp_path / "files"
    assert export_images(tmp_path / "old", files, sidecars=True, manifest=manifest).ok
    if manifest == "csv":
        listed = {row["path"]: json.loads(row["sidecar_files"]) for row in manifest_rows(files)}
    else:
        listed = {row["path"]: row["sidecar_files"]
                  for row in map(json.loads, (files / "manifest.jsonl").read_text().splitlines())}
    assert listed == {"a.png": ["a.cls", "a.txt"], "z.png": ["z.txt"]}
    # still an export's manifest to the job reading DIR back: skipped, not an input
    first = (files / f"manifest.{manifest}").read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
    assert is_export_manifest(f"manifest.{manifest}", first)
    write_tree(files, {"z.json": b'{"mine": 1}', "a.json": b'{"mine": 2}'})  # the user's, after that export
    report = export_images(tmp_path / "out", files, sidecars=True, existing="resume", manifest=manifest)
    assert report.ok and report.stale_sidecars_removed == 2  # a.cls, z.txt
    assert files_under(files) == {"a.png", "a.txt", "a.json", "z.png", "z.json", f"manifest.{manifest}"}
    assert (files / "z.json").read_bytes() == b'{"mine": 1}'
    # the new manifest lists what this export has there: a.json is not its own, so a third export keeps it too
    make_output(str(tmp_path / "bare"), [image("a.jpg", 1), image("z.jpg", 2)])
    report = export_images(tmp_path / "bare", files, sidecars=True, existing="overwrite", manifest=manifest)
    assert report.ok and report.stale_sidecars_removed == 1  # a.txt
    assert files_under(files) == {"a.png", "a.json", "z.png", "z.json", f"manifest.{manifest}"}


@pytest.mark.parametrize("existing", ["overwrite", "resume"])
def test_a_plain_export_over_a_sidecars_export_keeps_its_sidecars_listed_for_a_later_cleanup(tmp_path: Path,
                                                                                             existing: str) -> None:
    """A plain export (no --sidecars) into the DIR of a --sidecars export leaves that export's sidecar files there;
    its manifest, replacing the earlier one, listed none of them, so a later --sidecars export took a stale one for a
    user's own file and kept it, to read back as the image's column. The plain export's manifest lists them."""
    make_output(str(tmp_path / "old"), [image("a.jpg", 1, txt="cap", label=9), image("z.jpg", 2)])
    make_output(str(tmp_path / "new"), [image("a.jpg", 1, txt="cap", label=None), image("z.jpg", 2)])
    files = tmp_path / "files"
    assert export_images(tmp_path / "old", files, sidecars=True).ok
    assert export_images(tmp_path / "new", files, existing=existing).ok
    assert {row["path"]: json.loads(row["sidecar_files"]) for row in manifest_rows(files)} == \
        {"a.png": ["a.cls", "a.txt"], "z.png": []}
    report = export_images(tmp_path / "new", files, sidecars=True, existing=existing)
    assert report.ok and report.stale_sidecars_removed == 1
    assert files_under(files) == {"a.png", "a.txt", "z.png", "manifest.csv"}


def test_a_column_named_as_the_manifests_sidecar_list_is_renamed_and_no_sidecar_is_removed_by_it(tmp_path: Path) -> None:
    """A data/ column `sidecar_files` of an input's own is written `input_sidecar_files`: left as it was, a later export
    would take its values for the sidecar files an earlier export wrote, and remove a user's."""
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, sidecar_files=["a.txt"])])
    files = tmp_path / "files"
    assert export_images(tmp_path / "out", files).ok
    assert "input_sidecar_files" in manifest_rows(files)[0] and "sidecar_files" not in manifest_rows(files)[0]
    write_tree(files, {"a.txt": b"my notes"})
    assert export_images(tmp_path / "out", files, sidecars=True, existing="overwrite").stale_sidecars_removed == 0
    assert (files / "a.txt").read_bytes() == b"my notes"


def test_sidecars_are_written_to_a_remote_folder_too(tmp_path: Path) -> None:
    make_output(str(tmp_path / "out"), [image("cats/a.jpg", 1, txt="cap", label=2, url="u")])
    to = "memory://export-sidecars-test/files"
    try:
        report = export_images(tmp_path / "out", to, sidecars=True)
        assert report.ok and report.sidecars_written == 3
        fs = fsspec.filesystem("memory")
        assert fs.cat_file("/export-sidecars-test/files/cats/a.txt") == b"cap"
        assert fs.cat_file("/export-sidecars-test/files/cats/a.cls") == b"2"
        assert json.loads(fs.cat_file("/export-sidecars-test/files/cats/a.json")) == {"url": "u"}
        assert export_images(tmp_path / "out", to, sidecars=True, existing="resume").sidecars_written == 0
        fs.pipe_file("/export-sidecars-test/files/cats/a.png.txt", b"mine")  # the user's: no export listed it
        make_output(str(tmp_path / "less"), [image("cats/a.jpg", 1, txt="cap", url="u")])
        report = export_images(tmp_path / "less", to, sidecars=True, existing="overwrite")
        assert report.ok and report.stale_sidecars_removed == 1  # a.cls, which the manifest there listed
        assert not fs.exists("/export-sidecars-test/files/cats/a.cls")
        assert fs.cat_file("/export-sidecars-test/files/cats/a.png.txt") == b"mine"
    finally:
        fsspec.filesystem("memory").rm("/export-sidecars-test", recursive=True)


def test_a_sidecar_that_cannot_be_written_fails_its_row_named_and_the_rest_are_exported(tmp_path: Path, capsys) -> None:
    records = [image(f"{n}.jpg", i, txt=f"cap {n}", url=f"u{n}") for i, n in enumerate("abc")]
    make_output(str(tmp_path / "out"), records)
    (tmp_path / "files" / "b.txt").mkdir(parents=True)  # a folder where b's caption goes
    (tmp_path / "files" / "c.json").mkdir()
    argv = ["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress",
            "--overwrite"]
    assert main(argv) == 1
    said = capsys.readouterr()
    # named by the sidecar, under DIR, not by a hidden temporary file's path
    assert "failed: b.jpg: its sidecar file b.txt could not be written, so neither was its image: IsADirectoryError" \
        in said.err, said.err
    assert "failed: c.jpg: its sidecar file c.json could not be written" in said.err, said.err
    assert ".tmp" not in said.err
    assert "(1 written, 3 sidecar files written, 2 failed)" in said.out  # a's two, c's .txt before its .json failed
    assert not (tmp_path / "files" / "b.png").exists() and (tmp_path / "files" / "a.png").exists()


def test_an_image_named_as_the_manifest_at_the_top_is_refused_with_sidecars_unless_manifest_none(
        tmp_path: Path, capsys) -> None:
    # the reader takes a file named as an image with another extension for its sidecar: DIR/manifest.csv beside
    # DIR/manifest.png read back as that image's column csv, the whole manifest in it
    make_output(str(tmp_path / "out"), [image("manifest.jpg", 1, txt="cap"), image("b.jpg", 2),
                                        image("sub/manifest.jpg", 3)])
    argv = ["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "an image is exported as manifest.<its extension> at the top of --to" in err and "--manifest none" in err, err
    assert not (tmp_path / "files").exists()
    assert main([*argv, "--manifest", "jsonl"]) == 2  # manifest.jsonl pairs with it as well
    assert main([*argv, "--manifest", "none"]) == 0
    assert sorted(read_folder(str(tmp_path / "files"))["manifest.png"]["meta"]) == ["txt"]
    # without --sidecars DIR is no promise to read back so: exported with its manifest, as before
    assert export_images(tmp_path / "out", tmp_path / "plain").ok
    # the reader pairs names by their case: Manifest.png is no manifest.csv's image
    make_output(str(tmp_path / "out2"), [image("Manifest.jpg", 1, txt="cap"), image("sub/manifest.jpg", 3)])
    assert export_images(tmp_path / "out2", tmp_path / "files2", sidecars=True).ok
    assert sorted(read_folder(str(tmp_path / "files2"))["Manifest.png"]["meta"]) == ["txt"]


def test_without_sidecars_the_export_writes_none(tmp_path: Path) -> None:
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap", label=2)])
    assert export_images(tmp_path / "out", tmp_path / "files").ok
    assert files_under(tmp_path / "files") == {"a.png", "manifest.csv"}


def test_sidecars_must_be_true_or_false(tmp_path: Path) -> None:
    from pipeline.export import ExportError

    make_output(str(tmp_path / "out"), [image("a.jpg", 1)])
    with pytest.raises(ExportError, match="sidecars must be True or False, got 'yes'"):
        export_images(tmp_path / "out", tmp_path / "files", sidecars="yes")
    assert not (tmp_path / "files").exists()
    assert "--sidecars" in build_parser().format_help()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_purified_img2dataset_folder_exported_with_sidecars_reads_back_with_the_outputs_columns(
        tmp_path: Path, model) -> None:
    files = {k: v for k, v in shard_files().items() if k.startswith(("00000/000000", "00000/000001"))}
    write_tree(tmp_path / "in", files)
    summary = run_job(small_job_config(tmp_path, model))
    assert summary["this_run"]["purified"] == 2
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    assert main(["--output", str(tmp_path / "out"), "--to", str(tmp_path / "files"), "--sidecars", "--no-progress"]) == 0
    again = read_folder(str(tmp_path / "files"))
    jobs = {"id", "image", "width", "height", "source", "source_sha256", "original_mode", "original_format",
            "original_frames", "psnr_vs_input_db", "downscale_factor"}
    for id_, row in rows.items():
        own = {k: v for k, v in row.items() if k not in jobs and v is not None}
        assert again[id_[:-4] + ".png"]["meta"] == own, id_


def test_with_sidecars_a_to_that_cannot_be_made_and_an_output_changed_meanwhile_are_said_not_a_traceback(
        tmp_path: Path, capsys) -> None:
    """--sidecars rebound the name export's errors name the caller's arguments by to the sidecars' column list: a --to
    under a file stopped with AttributeError ('list' object has no attribute 'given') instead of `error: --to ...`
    (exit 2), and an output a run began writing during the export failed the export at its very end, every image
    written, instead of warning."""

    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1, txt="cap")])
    (tmp_path / "file").write_bytes(b"x")
    to = tmp_path / "file" / "images"
    assert main(["--output", str(out), "--to", str(to), "--sidecars", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --to {to} cannot be made or written: ") and "NotADirectoryError" in err, err

    report = export_images(out, tmp_path / "files", sidecars=True, progress=progress_of_a_run_that_starts(out))
    assert report.written == 1 and report.sidecars_written == 1
    (warning,) = report.warnings
    assert "changed during the export" in warning and 'existing="resume"' in warning, warning


def test_resume_and_overwrite_on_s3_delete_only_the_stale_sidecars_there_and_count_them(tmp_path: Path) -> None:
    """An export resumed or overwritten into an object store sent a DELETE for each name an image's stale sidecar could
    have (5 an image here: a.cls, a.json, a.png.txt, a.png.cls, a.png.json), whether or not one was there: 50,000
    requests for 10,000 images to remove none. DIR is listed once; only the stale files there are deleted, and
    counted in the last line."""
    from pipeline.export import report_lines
    from tests.s3util import moto_s3_logged

    make_output(str(tmp_path / "out"), [image(f"{i}.jpg", i, txt=f"cap {i}") for i in range(10)])
    # an earlier output whose rows 3 and 4 had a label and a url: its export wrote 3.cls and 4.json
    make_output(str(tmp_path / "old"), [image(f"{i}.jpg", i, txt=f"cap {i}", label=7 if i == 3 else None,
                                              url="u" if i == 4 else None) for i in range(10)])
    with moto_s3_logged("files") as (client, so, log):
        to = "s3://files/images"

        def deletes() -> list[str]:
            # the manifest's own temporary file, copied into place then deleted, is no sidecar
            found = [path for method, path, query in log.requests
                     if method == "DELETE" or method == "POST" and "delete" in query]
            log.requests.clear()
            return [p for p in found if "/.tmp-" not in p]

        assert export_images(tmp_path / "out", to, storage_options=so, sidecars=True).sidecars_written == 10
        deletes()
        report = export_images(tmp_path / "out", to, storage_options=so, sidecars=True, existing="resume")
        assert deletes() == []
        assert report.ok and report.present == 10 and report.stale_sidecars_removed == 0
        assert "stale" not in report_lines(report)[-1]
        assert export_images(tmp_path / "old", to, storage_options=so, sidecars=True, existing="overwrite").ok
        for key in ("images/4.png.json", "images/keep.cls"):  # the user's: no export listed them, kept
            client.put_object(Bucket="files", Key=key, Body=b"7")
        client.put_object(Bucket="files", Key="images/5.json/x", Body=b"a folder of a stale name: not a sidecar")
        deletes()
        for existing in ("overwrite", "resume"):
            report = export_images(tmp_path / "out", to, storage_options=so, sidecars=True, existing=existing)
            assert report.ok and report.stale_sidecars_removed == (2 if existing == "overwrite" else 0), existing
            assert sorted(deletes()) == ([] if existing == "resume" else ["/files/images/3.cls", "/files/images/4.json"])
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="files")["Contents"]}
        assert keys == {f"images/{i}.{ext}" for i in range(10) for ext in ("png", "txt")} | {
            "images/manifest.csv", "images/keep.cls", "images/4.png.json", "images/5.json/x"}


def test_stale_sidecars_removed_are_counted_in_the_last_line(tmp_path: Path) -> None:
    from pipeline.export import ExportReport, report_lines

    make_output(str(tmp_path / "old"), [image("a.jpg", 1, txt="cap", label=9, url="u"), image("b.jpg", 2, url="u")])
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap"), image("b.jpg", 2, txt="cap")])
    assert export_images(tmp_path / "old", tmp_path / "files", sidecars=True).sidecars_written == 4
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True, existing="resume")
    assert report.stale_sidecars_removed == 3
    assert "(0 written, 2 already there, 1 sidecar file written, 1 sidecar file already there, 3 stale sidecar files of an " \
        "earlier export removed)" in report_lines(report)[-1]
    many = ExportReport("out", "files", written=1, sidecars=True, sidecars_written=1, stale_sidecars_removed=1234)
    assert "(1 written, 1 sidecar file written, 1,234 stale sidecar files of an earlier export removed)" in \
        report_lines(many)[-1]


def test_caption_column_writes_another_columns_text_as_the_txt_and_the_folder_reads_back_with_it(
        tmp_path: Path, capsys) -> None:
    """img2dataset's Parquet output keeps captions in `caption` (others in `text`, `prompt`): --sidecars wrote it into
    x.json only, and caption loaders, which pair x.png with x.txt, found none. --caption-column caption writes it as
    x.txt, and keeps it in x.json, so that the folder reads back with the output's columns (and `txt`, the same text)."""
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, caption="a cat, \"quoted\"\non a mat", url="u1"),
                                        image("b.jpg", 2, caption=None, url="u2"),
                                        image("c.jpg", 3, caption="caf\\xe9 latin-1", url="u3")])
    files = tmp_path / "files"
    argv = ["--output", str(tmp_path / "out"), "--to", str(files), "--sidecars", "--no-progress"]
    assert main(argv) == 0
    assert "--caption-column caption writes it as the .txt too" in capsys.readouterr().err  # said where it is
    assert not (files / "a.txt").exists()
    assert main([*argv, "--overwrite", "--caption-column", "caption"]) == 0
    assert (files / "a.txt").read_bytes() == b"a cat, \"quoted\"\non a mat"
    assert (files / "c.txt").read_bytes() == "caf\xe9 latin-1".encode("latin-1")  # the reader's escape undone
    assert not (files / "b.txt").exists()  # no caption, no file
    assert json.loads((files / "a.json").read_bytes()) == {"caption": "a cat, \"quoted\"\non a mat", "url": "u1"}
    assert files_under(files) == {"a.png", "a.txt", "a.json", "b.png", "b.json", "c.png", "c.txt", "c.json",
                                  "manifest.csv"}
    again = read_folder(str(files))
    assert again["a.png"]["meta"] == {"txt": "a cat, \"quoted\"\non a mat", "caption": "a cat, \"quoted\"\non a mat",
                                      "url": "u1"}
    assert again["b.png"]["meta"] == {"url": "u2"}
    assert again["c.png"]["meta"]["txt"] == again["c.png"]["meta"]["caption"] == "caf\\xe9 latin-1"
    # back to the default: c's .txt is then stale (its row has no txt), removed
    assert export_images(tmp_path / "out", files, sidecars=True, existing="overwrite").stale_sidecars_removed == 2
    assert not (files / "a.txt").exists() and not (files / "c.txt").exists()


def test_a_caption_column_that_is_missing_not_text_or_beside_a_txt_column_is_refused_naming_it(
        tmp_path: Path, capsys) -> None:
    from pipeline.export import ExportError

    make_output(str(tmp_path / "out"), [image("a.jpg", 1, caption="cap", url="u", n=3)])
    make_output(str(tmp_path / "both"), [image("a.jpg", 1, caption="cap", txt="a .txt caption")])
    files = tmp_path / "files"
    for out, flags, said in (
            ("out", ["--sidecars", "--caption-column", "prompt"],
             "error: --caption-column prompt: the output has no column of that name; its columns besides the job's "
             "own are: caption, n, url"),
            ("out", ["--sidecars", "--caption-column", "n"], "error: --caption-column n is a column of int64, not text"),
            ("out", ["--sidecars", "--caption-column", "source"],
             "error: --caption-column source is one of the job's own columns"),
            ("both", ["--sidecars", "--caption-column", "caption"],
             "error: --caption-column caption: the output has a txt column too, which the .txt is read back as"),
            ("out", ["--sidecars", "--caption-column", ""], "error: --caption-column must be a column's name, got ''"),
            ("out", ["--caption-column", "caption"],
             "error: --caption-column names the column of each image's .txt sidecar file: it needs --sidecars")):
        assert main(["--output", str(tmp_path / out), "--to", str(files), "--no-progress", *flags]) == 2, said
        assert said in capsys.readouterr().err, said
        assert not files.exists()
    with pytest.raises(ExportError, match="^caption_column='prompt': the output has no column"):
        export_images(tmp_path / "out", files, sidecars=True, caption_column="prompt")
    with pytest.raises(ExportError, match="it needs sidecars=True"):
        export_images(tmp_path / "out", files, caption_column="caption")
    assert "--caption-column NAME" in build_parser().format_help()


def test_the_listing_of_an_s3_dir_is_not_kept_in_the_file_systems_cache(tmp_path: Path) -> None:
    """s3fs's find keeps the entry of every file it lists (its size, etag, times) in the file system's listing cache,
    for as long as the process lives: the one listing of DIR a resume makes would hold about 1 KB per file in DIR."""
    from pipeline.storage import storage_path

    make_output(str(tmp_path / "out"), [image(f"d{i % 3}/{i}.jpg", i, txt=f"cap {i}") for i in range(30)])
    with moto_s3("files") as (client, so):
        assert export_images(tmp_path / "out", "s3://files/images", storage_options=so, sidecars=True).ok
        fs, _ = storage_path("s3://files/images", so)
        fs.invalidate_cache()
        assert export_images(tmp_path / "out", "s3://files/images", storage_options=so, sidecars=True,
                             existing="resume").present == 30
        cached = [entry["name"] for entries in fs.dircache.values() for entry in entries]
        assert len(cached) < 10, cached
        # without sidecars, a resume lists all of DIR too (for each file's size and checksum): not kept either
        assert export_images(tmp_path / "out", "s3://files/flat", storage_options=so, sidecars=True).ok
        fs.invalidate_cache()
        for i in range(30):
            client.put_object(Bucket="files", Key=f"flat/user-{i}.png", Body=b"x")
        seen: list[int] = []  # entries cached while the export runs (its manifest's write at the end drops them)

        class Probe:
            def __init__(self, total: int) -> None:
                pass

            def update(self, n: int) -> None:
                seen.append(sum(len(entries) for entries in fs.dircache.values()))

            def close(self) -> None:
                pass

        assert export_images(tmp_path / "out", "s3://files/flat", storage_options=so, existing="resume",
                             progress=Probe).ok
        assert seen and max(seen) < 10, seen


def test_a_resume_counts_the_sidecar_files_already_there(tmp_path: Path) -> None:
    """A resume said `0 sidecar files written` of a folder whose sidecars were all there, as of one that had none."""
    from pipeline.export import report_lines

    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap", url="u"), image("b.jpg", 2, txt="cap")])
    assert export_images(tmp_path / "out", tmp_path / "files", sidecars=True).sidecars_written == 3
    (tmp_path / "files" / "b.txt").unlink()
    report = export_images(tmp_path / "out", tmp_path / "files", sidecars=True, existing="resume")
    assert (report.sidecars_written, report.sidecars_present) == (1, 2)
    assert "(0 written, 2 already there, 1 sidecar file written, 2 sidecar files already there)" in report_lines(report)[-1]


def test_label_column_writes_another_columns_class_as_the_cls_and_the_folder_reads_back_with_it(
        tmp_path: Path, capsys) -> None:
    """Only a `label` column became x.cls: an output whose class is in `class` (a metadata CSV's) or `target` had it
    in x.json alone, and WebDataset-style loaders reading x.cls found none. --label-column class writes it as x.cls,
    and keeps it in x.json, so that the folder reads back with the output's columns (and `label`, the same value)."""
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, cls=3, url="u1"), image("b.jpg", 2, cls=None, url="u2"),
                                        image("c.jpg", 3, cls=12, url="u3")])
    make_output(str(tmp_path / "named"), [image("a.jpg", 1, category="cat"), image("b.jpg", 2, category="007")])
    files = tmp_path / "files"
    argv = ["--output", str(tmp_path / "out"), "--to", str(files), "--sidecars", "--no-progress"]
    assert main(argv) == 0
    assert not (files / "a.cls").exists()
    assert main([*argv, "--overwrite", "--label-column", "cls"]) == 0
    assert (files / "a.cls").read_bytes() == b"3" and (files / "c.cls").read_bytes() == b"12"
    assert not (files / "b.cls").exists()  # no class, no file
    assert json.loads((files / "a.json").read_bytes()) == {"cls": 3, "url": "u1"}
    assert files_under(files) == {"a.png", "a.cls", "a.json", "b.png", "b.json", "c.png", "c.cls", "c.json",
                                  "manifest.csv"}
    again = read_folder(str(files))
    assert again["a.png"]["meta"] == {"label": 3, "cls": 3, "url": "u1"}
    assert again["b.png"]["meta"] == {"url": "u2"}
    # back to the default: the .cls files are then stale (their rows have no label), removed
    assert export_images(tmp_path / "out", files, sidecars=True, existing="overwrite").stale_sidecars_removed == 2
    assert not (files / "a.cls").exists()
    # text: a class name is the .cls; one a .cls would read back as another value ('007' as 7) is a .json key alone
    named = tmp_path / "named-files"
    report = export_images(tmp_path / "named", named, sidecars=True)
    assert "--label-column category" not in " ".join(report.warnings)  # the API's own name
    assert 'label_column="category" writes it as the .cls too' in " ".join(report.warnings)
    assert export_images(tmp_path / "named", named, sidecars=True, label_column="category", existing="overwrite").ok
    assert (named / "a.cls").read_bytes() == b"cat" and not (named / "b.cls").exists()
    assert json.loads((named / "b.json").read_bytes()) == {"category": "007"}
    assert read_folder(str(named))["a.png"]["meta"] == {"label": "cat", "category": "cat"}


def test_a_label_column_that_is_missing_not_a_class_or_beside_a_label_column_is_refused_naming_it(
        tmp_path: Path, capsys) -> None:
    from pipeline.export import ExportError

    make_output(str(tmp_path / "out"), [image("a.jpg", 1, cls=3, score=0.5, caption="cap", flag=True)])
    make_output(str(tmp_path / "both"), [image("a.jpg", 1, cls=3, label=4)])
    files = tmp_path / "files"
    for out, flags, said in (
            ("out", ["--sidecars", "--label-column", "target"],
             "error: --label-column target: the output has no column of that name; its columns besides the job's "
             "own are: caption, cls, flag, score"),
            ("out", ["--sidecars", "--label-column", "score"],
             "error: --label-column score is a column of double: a .cls label holds a whole number or text"),
            ("out", ["--sidecars", "--label-column", "flag"], "error: --label-column flag is a column of bool"),
            ("out", ["--sidecars", "--label-column", "width"],
             "error: --label-column width is one of the job's own columns"),
            ("out", ["--sidecars", "--caption-column", "caption", "--label-column", "caption"],
             "error: --label-column caption is the caption column too (--caption-column)"),
            ("both", ["--sidecars", "--label-column", "cls"],
             "error: --label-column cls: the output has a label column too, which the .cls is read back as"),
            ("out", ["--sidecars", "--label-column", ""], "error: --label-column must be a column's name, got ''"),
            ("out", ["--label-column", "cls"],
             "error: --label-column names the column of each image's .cls sidecar file: it needs --sidecars")):
        assert main(["--output", str(tmp_path / out), "--to", str(files), "--no-progress", *flags]) == 2, said
        assert said in capsys.readouterr().err, said
        assert not files.exists()
    with pytest.raises(ExportError, match="^label_column='target': the output has no column"):
        export_images(tmp_path / "out", files, sidecars=True, label_column="target")
    with pytest.raises(ExportError, match="it needs sidecars=True"):
        export_images(tmp_path / "out", files, label_column="cls")
    assert "--label-column NAME" in build_parser().format_help()


def test_a_delete_the_storage_refuses_loses_nothing_and_is_said(tmp_path: Path, capsys, monkeypatch) -> None:
    """A store that refuses DELETE (S3 credentials without s3:DeleteObject): an earlier export's stale sidecar that
    cannot be removed is left, named in a warning, with exit status 1, and its row is exported; a partial file that
    cannot be removed is a warning. Nothing is lost: every file that was there is still there. The new manifest still
    lists the stale sidecar beside its image (it failed the row, which the manifest then left out: the next export took
    the file for a user's own and kept it for good), so an export once the store allows DELETE removes it."""
    import uuid

    from fsspec.implementations.memory import MemoryFileSystem

    make_output(str(tmp_path / "old"), [image("a.jpg", 1, txt="cap", label=3), image("b.jpg", 2, txt="b")])
    make_output(str(tmp_path / "out"), [image("a.jpg", 1, txt="cap"), image("b.jpg", 2, txt="b2")])
    to, fs = "memory://export-refused-delete/files", fsspec.filesystem("memory")
    try:
        assert export_images(tmp_path / "old", to, sidecars=True).ok
        partial = f"/export-refused-delete/files/.tmp-{uuid.uuid4().hex}-manifest.csv.tmp"
        fs.pipe_file(partial, b"id,path\n")
        before = set(fs.find("/export-refused-delete/files"))

        def refused(self, path, *args, **kwargs):  # noqa: ANN001, ANN202 - fsspec's signature
            raise PermissionError(13, "Access Denied")

        rm_file, rm = MemoryFileSystem.rm_file, MemoryFileSystem._rm
        monkeypatch.setattr(MemoryFileSystem, "rm_file", refused)
        monkeypatch.setattr(MemoryFileSystem, "_rm", refused)
        argv = ["--output", str(tmp_path / "out"), "--to", to, "--sidecars", "--resume", "--no-progress"]
        assert main(argv) == 1
        said = capsys.readouterr()
        assert f"warning: the stale sidecar file {to}/a.cls (its row has no value for it) could not be removed: " \
               "PermissionError: [Errno 13] Access Denied; the manifest lists it beside its image" in said.err
        assert f"warning: the partial file {to}/{partial.rsplit('/', 1)[1]} an earlier export left could not be " \
               "removed: PermissionError: [Errno 13] Access Denied" in said.err
        assert "exported 2 of 2 images" in said.out and "1 stale sidecar file that could not be removed" in said.out
        assert before <= set(fs.find("/export-refused-delete/files"))
        assert fs.cat_file("/export-refused-delete/files/b.txt") == b"b2"
        listed = {row["path"]: json.loads(row["sidecar_files"]) for row in
                  csv.DictReader(io.StringIO(fs.cat_file("/export-refused-delete/files/manifest.csv").decode()))}
        assert listed == {"a.png": ["a.cls", "a.txt"], "b.png": ["b.txt"]}
        # the store allows DELETE again: the next export knows a.cls for an export's, and removes it
        monkeypatch.setattr(MemoryFileSystem, "rm_file", rm_file)
        monkeypatch.setattr(MemoryFileSystem, "_rm", rm)
        assert main(argv) == 0
        assert "1 stale sidecar file of an earlier export removed" in capsys.readouterr().out
        assert not fs.exists("/export-refused-delete/files/a.cls")
    finally:
        monkeypatch.undo()
        fs.rm("/export-refused-delete", recursive=True)
