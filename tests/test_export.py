"""zip-purify-export: an output's purified images as image files, for tools that read files (ImageFolder, a glob).

The outputs here are written by the job's own writer (`pipeline.stages.write_stage`, the job's schemas), with the
records a run hands it, so no model runs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.export import (
    FAILURES_KEPT,
    UNFETCHED,
    ExportError,
    ExportReport,
    export_images,
    export_path,
    report_lines,
    resolve_collisions,
)
from pipeline.export_cli import main
from pipeline.lease import LEASE_FILE
from pipeline.output import JOB_FILE, SUMMARY_FILE, write_json
from pipeline.sources import reject_record
from pipeline.stages import batch_of, write_stage
from tests.jobutil import image_bytes
from tests.s3util import moto_s3, without_aws_credentials


def image(id_: str, seed: int, original_format: str = "JPEG", **meta) -> dict:
    """The record of one purified image as the job's writer gets it."""
    png = image_bytes(6 + seed % 5, 7 + seed % 3, seed)
    with Image.open(io.BytesIO(png)) as im:
        width, height = im.size
    return {"kind": "image", "id": id_, "source": f"/in/{id_}", "source_sha256": f"{seed:064x}", "png": png,
            "width": width, "height": height, "meta": meta, "original_format": original_format,
            "original_mode": "RGB", "original_frames": 1, "psnr_vs_input_db": 30.0 + seed,
            "downscale_factor": 1.0}


def make_output(out: str, records: list[dict], status: str | None = "complete", per_file: int = 512,
                storage_options: dict | None = None) -> None:
    """An output holding `records` (images and rejects), with its job record and a summary of `status`."""
    so = storage_options or {}
    for start in range(0, len(records), per_file):
        write_stage(batch_of(records[start : start + per_file]), out, so, max_rows_per_file=per_file)
    write_json(f"{out}/{JOB_FILE}", {"settings": {}}, so)
    if status is not None:
        write_json(f"{out}/{SUMMARY_FILE}", {"status": status, "started": 1.0}, so)


def stored_images(out: Path) -> dict[str, bytes]:
    """id -> the PNG bytes data/ holds."""
    found = {}
    for part in sorted((out / "data").glob("part-*.parquet")):
        for row in pq.read_table(part, columns=["id", "image"]).to_pylist():
            found[row["id"]] = row["image"]["bytes"]
    return found


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def progress_of_a_run_that_starts(out: Path) -> type:
    """A progress bar class for export_images whose first update marks `out` as rewritten by a run that starts
    meanwhile (its summary goes from complete to running), so a test can see what the export says of it."""

    class RunStarts:
        def __init__(self, total: int) -> None:
            pass

        def update(self, n: int) -> None:
            write_json(f"{out}/{SUMMARY_FILE}", {"status": "running", "started": 2.0}, {})

        def close(self) -> None:
            pass

    return RunStarts


LAYOUT = {
    "cats/a.jpg": "cats/a.png",
    "cats/sub/b.PNG": "cats/sub/b.png",
    "shard-0001.tar/000123": "shard-0001.tar/000123.png",
    "shard-0001.tar/cat.0": "shard-0001.tar/cat.0.png",
    "s.tar.gz/dir/k": "s.tar.gz/dir/k.png",
    "a.zip/x/y.jpeg": "a.zip/x/y.png",
    "t.parquet#3": "t.parquet/3.png",
    "lake/p.PQ#12": "lake/p.PQ/12.png",
    "odd#name.jpg": "odd#name.png",
    "not-parquet.txt#4": "not-parquet.txt#4.png",
    "noext": "noext.png",
}


def test_each_image_lands_at_its_id_with_the_stored_png_bytes_and_pixels(tmp_path: Path) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(LAYOUT)], per_file=4)
    report = export_images(out, to)
    assert report.ok and report.written == report.rows == len(LAYOUT)
    assert files_under(to) == set(LAYOUT.values()) | {"manifest.csv"}
    for id_, png in stored_images(out).items():
        exported = (to / LAYOUT[id_]).read_bytes()
        assert exported == png  # as stored: nothing re-encoded
        assert np.array_equal(pixels(exported), pixels(png))


def test_export_path_by_format() -> None:
    assert export_path("cats/a.jpg") == ("cats/a.png", False)
    assert export_path("cats/a.jpg", "input") == ("cats/a.jpg", False)
    assert export_path("shard.tar/000123", "input", "JPEG") == ("shard.tar/000123.jpg", False)
    assert export_path("t.parquet#3", "input", "WEBP") == ("t.parquet/3.webp", False)
    assert export_path("shard.tar/k", "input", None) == ("shard.tar/k.png", False)  # format unknown: PNG as stored
    assert export_path("x/.jpg") == ("x/.jpg.png", False)  # a name that is all extension keeps it


@pytest.mark.parametrize("id_, expected", [
    ("../evil.jpg", "%2E%2E/evil.png"),
    ("a/../../b.jpg", "a/%2E%2E/%2E%2E/b.png"),
    ("/etc/passwd.jpg", "etc/passwd.png"),
    ("a//b/./c.jpg", "a/b/%2E/c.png"),
    ("nul\0name.jpg", "nul%00name.png"),
    ("..", "%2E%2E.png"),
    ("/", "%2F.png"),
    # a folder separator on Windows (and on a Windows share a Linux machine writes to): one name, never followed
    ("a\\..\\..\\b.jpg", "a%5C..%5C..%5Cb.png"),
    ("caf\\xe9.jpg", "caf%5Cxe9.png"),  # a name that is not UTF-8, as its id writes it
])
def test_an_id_that_would_leave_the_folder_is_escaped(id_: str, expected: str) -> None:
    assert export_path(id_) == (expected, True)


def test_unsafe_ids_are_written_inside_the_folder_and_nothing_outside(tmp_path: Path) -> None:
    ids = ["../evil.jpg", "../../evil2.jpg", "/abs/x.jpg", "a/./b.jpg", "nul\0.jpg", "ok.jpg"]
    out, to = tmp_path / "out", tmp_path / "box" / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    before = files_under(tmp_path)
    report = export_images(out, to)
    assert report.ok and report.written == len(ids) and report.escaped == 5
    assert files_under(tmp_path) - before == {f"box/images/{p}" for p in files_under(to)}
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert rows["../evil.jpg"] == "%2E%2E/evil.png" and rows["/abs/x.jpg"] == "abs/x.png"
    for id_, path in rows.items():
        assert (to / path).resolve().is_relative_to(to.resolve()), id_
        assert (to / path).read_bytes() == stored_images(out)[id_]


# --- names Windows refuses: a folder exported on Linux or an object store, copied to Windows or a Windows share ---

WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)), *(f"LPT{n}" for n in range(1, 10))}


def windows_refuses(name: str) -> bool:
    """Whether a Windows disk refuses `name` (one file or folder name), takes it for another name (a trailing dot
    or space dropped) or for a device (CON, nul.png, 'COM1 .png'), or may take it for another file's short name."""
    stem = name.partition(".")[0]
    return (name.endswith((".", " ")) or any(c in '<>:"|?*\\/' or ord(c) < 32 for c in name)
            or stem.rstrip(" ").upper() in WINDOWS_DEVICES
            or (len(stem) <= 8 and any(a == "~" and b.isdigit() for a, b in zip(stem, stem[1:], strict=False))))


@pytest.mark.parametrize("id_, expected", [
    ("CON", "%43ON.png"), ("con.jpg", "%63on.png"), ("Nul.tar.gz", "%4Eul.tar.gz.png"), ("aux/x.jpg", "%61ux/x.png"),
    ("COM1.png", "%43OM1.png"), ("lpt9.jpeg", "%6Cpt9.png"), ("CON .jpg", "%43ON .png"), ("prn.x.y.jpg", "%70rn.x.y.png"),
    ("a:b.jpg", "a%3Ab.png"), ('x*y<z>|"w?.jpg', "x%2Ay%3Cz%3E%7C%22w%3F.png"), ("tab\there.jpg", "tab%09here.png"),
    ("dir./b.jpg", "dir%2E/b.png"), ("dir /b.jpg", "dir%20/b.png"), ("a.", "a%2E.png"), ("...", "..%2E.png"),
    ("ABCDEF~1.PNG", "ABCDEF%7E1.png"), ("PROGRA~1/x.jpg", "PROGRA%7E1/x.png"),
])
def test_a_name_windows_refuses_is_escaped(id_: str, expected: str) -> None:
    # copied to Windows (or written to a Windows share), CON.png went to the console, 'a:b.png' failed or became an
    # NTFS stream, 'dir.' became 'dir' and ABCDEF~1.PNG opened another image: lost or clobbered
    assert export_path(id_) == (expected, True)
    assert not any(windows_refuses(name) for name in expected.split("/"))


@pytest.mark.parametrize("id_", ["console.jpg", "COMX.png", "com10.jpg", "a~b.jpg", "longname~1.jpg", "x.y.jpg",
                                 " lead.jpg", "100%.jpg", "café.jpg"])
def test_a_name_windows_takes_is_kept(id_: str) -> None:
    assert export_path(id_, "input")[1] is False


def test_no_image_is_lost_or_clobbered_when_the_folder_is_copied_to_windows(tmp_path: Path) -> None:
    # ids that Windows refuses, beside ids that are already their escaped names (and those but for case): each gets a
    # file of its own that Windows takes, no two one file there, and the manifest maps each id to its image
    tokens = ["a", "B", "CON", "nul", "com1", "Lpt9", ":", "?", "*", "<", ">", "|", '"', "\x01", ".", " ", "~1", "%3A",
              "%43ON", "%2E", "%20", "x~1", "/", "\\"]
    rng = random.Random(7)
    ids = {"".join(rng.choice(tokens) for _ in range(rng.randint(1, 4))) + rng.choice(["", ".jpg", ".png", "."])
           for _ in range(150)}
    ids |= {"a:b.jpg", "a%3Ab.jpg", "A%3AB.png", "CON.jpg", "con.png", "%43ON.png", "%43on.jpg", "dir./x.jpg",
            "dir%2E/x.jpg", "dir/x.jpg", "DIR%2e/x.png", "ABCDEF~1.PNG", "abcdef%7E1.png", "abcdefgh.png"}
    ids = sorted(ids)
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)], per_file=64)
    report = export_images(out, to)
    assert report.ok and report.written == len(ids) and report.renamed > 5  # names shared once escaped: told apart
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert sorted(rows) == ids and files_under(to) == set(rows.values()) | {"manifest.csv"}
    stored = stored_images(out)
    for id_, path in rows.items():
        assert not any(windows_refuses(name) for name in path.split("/")), (id_, path)
        assert (to / path).read_bytes() == stored[id_]
    assert len({path.lower() for path in rows.values()}) == len(ids)  # one file each on a disk that ignores case


def test_ids_that_would_share_a_name_get_their_own_and_the_manifest_says_which(tmp_path: Path) -> None:
    ids = ["cats/a.jpg", "cats/a.png", "cats/a.bmp", "dogs/B.jpg", "dogs/b.jpg", "x/y.png", "X/y.png"]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)], per_file=3)
    report = export_images(out, to)
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert report.ok and report.written == len(ids) and report.renamed == 6
    assert rows["cats/a.png"] == "cats/a.png"  # its own name: kept
    assert rows["cats/a.jpg"] == "cats/a.jpg.png" and rows["cats/a.bmp"] == "cats/a.bmp.png"
    folded = [p.casefold() for p in rows.values()]
    assert len(set(folded)) == len(ids)  # no two are one file on a disk that ignores case either
    for id_, path in rows.items():
        assert (to / path).read_bytes() == stored_images(out)[id_]


@pytest.mark.parametrize(("image_format", "ids"), [("png", ["B.png", "b.png"]), ("input", ["B.jpg", "b.jpg"])])
def test_two_ids_that_are_both_their_files_name_but_for_case_both_move(tmp_path: Path, image_format, ids) -> None:
    """docs/job.md: the id whose name is already the file's keeps it where only one is; two such ids (names that
    differ only in case) are both given their stem and a digest, neither `b.png.png`, as no id is the one to keep."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    report = export_images(out, to, image_format=image_format)
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert report.ok and report.renamed == 2, report
    for id_ in ids:
        stem, ext = os.path.splitext(id_)
        assert re.fullmatch(re.escape(stem) + r"\.[0-9a-f]{8}" + re.escape(ext), rows[id_]), rows


def test_the_names_given_depend_on_the_ids_not_their_order() -> None:
    entries = [("a.jpg", "a.png"), ("a.png", "a.png"), ("A.gif", "A.png"), ("b/k", "b/k.png"), ("b/k.jpg", "b/k.png")]
    first = resolve_collisions(entries)
    for seed in range(5):
        shuffled = entries[:]
        random.Random(seed).shuffle(shuffled)
        assert resolve_collisions(shuffled) == first
    assert "a.png" not in first and len({p.casefold() for p in first.values()} | {"a.png"}) == 5
    # a new name is never one another row holds already
    assert resolve_collisions([("a.jpg", "a.png"), ("a.gif", "a.png")], taken=lambda key: key == "a.jpg.png")[
        "a.jpg"] != "a.jpg.png"


def test_the_manifest_holds_each_rows_columns_and_says_what_it_leaves_out(tmp_path: Path) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [
        image("s.tar/0001", 1, label=3, txt="a cat, on a mat", seg_png=image_bytes(4, 4, 9)),
        image("s.tar/0002", 2, label=5, txt='say "hi"\nnext line', seg_png=image_bytes(4, 4, 8)),
        reject_record("bad.jpg", "/in/bad.jpg", "not an image", "decode"),
    ])
    report = export_images(out, to)
    assert report.manifest_left_out == ["seg_png"] and report.rejects == 1
    rows = {row["id"]: row for row in manifest_rows(to)}
    assert set(rows) == {"s.tar/0001", "s.tar/0002"}  # rejects are not exported
    one = rows["s.tar/0001"]
    assert one["path"] == "s.tar/0001.png" and one["label"] == "3" and one["txt"] == "a cat, on a mat"
    assert one["source_sha256"] == f"{1:064x}" and one["source"] == "/in/s.tar/0001"
    assert rows["s.tar/0002"]["txt"] == 'say "hi"\nnext line'
    assert "seg_png" not in one and "image" not in one
    jsonl = tmp_path / "jsonl"
    export_images(out, jsonl, manifest="jsonl")
    lines = [json.loads(line) for line in (jsonl / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {line["id"]: line["label"] for line in lines} == {"s.tar/0001": 3, "s.tar/0002": 5}


def test_an_inputs_own_path_column_is_kept_in_the_manifest_beside_the_files_path(tmp_path: Path) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1, path="original/place.jpg")])
    export_images(out, to)
    (row,) = manifest_rows(to)
    assert row["path"] == "a.png" and row["input_path"] == "original/place.jpg"


def test_an_inputs_own_path_column_in_another_case_is_kept_under_another_name_too(tmp_path: Path) -> None:
    # An input's `Path` column was written as it was, beside the file's `path`: DuckDB, whose names have no case, read
    # the manifest's columns as path and Path_1, so `SELECT Path` gave the exported file's path, not the input's.
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1, Path="original/place.jpg", input_path="older")])
    export_images(out, to)
    (row,) = manifest_rows(to)
    assert len({name.lower() for name in row}) == len(row), list(row)
    assert row["path"] == "a.png" and row["input_input_Path"] == "original/place.jpg" and row["input_path"] == "older"


def test_reencoding_to_the_ids_own_format(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_output(str(out), [image("cats/a.jpg", 1), image("cats/b.png", 2, "PNG"), image("s.tar/k", 3, "JPEG"),
                           image("t.parquet#0", 4, "BMP"), image("g/c.webp", 5, "WEBP")])
    stored = stored_images(out)
    fine, coarse = tmp_path / "q95", tmp_path / "q20"
    report = export_images(out, fine, image_format="input", jpeg_quality=95)
    export_images(out, coarse, image_format="input", jpeg_quality=20)
    assert report.ok and files_under(fine) == {"cats/a.jpg", "cats/b.png", "s.tar/k.jpg", "t.parquet/0.bmp",
                                               "g/c.webp", "manifest.csv"}
    with Image.open(fine / "cats/a.jpg") as im:
        assert im.format == "JPEG"
    assert (fine / "cats/b.png").read_bytes() == stored["cats/b.png"]  # PNG stays as stored
    for id_, path in (("t.parquet#0", "t.parquet/0.bmp"), ("g/c.webp", "g/c.webp")):  # lossless formats
        assert np.array_equal(pixels((fine / path).read_bytes()), pixels(stored[id_]))
    # JPEG is lossy, and the quality is the one asked for
    error = {q: np.abs(pixels((folder / "cats/a.jpg").read_bytes()).astype(int) - pixels(stored["cats/a.jpg"])).mean()
             for q, folder in ((95, fine), (20, coarse))}
    assert 0 < error[95] < error[20]


@pytest.mark.parametrize("id_, path, fmt", [
    ("n.jpe", "n.jpe", "JPEG"), ("n.JFIF", "n.JFIF", "JPEG"), ("n.tif", "n.tif", "TIFF"), ("n.TIFF", "n.TIFF", "TIFF"),
    ("n.pnm", "n.pnm", "PPM"), ("n.apng", "n.apng", "PNG"),
    ("n.mpo", "n.mpo.jpg", "JPEG"), ("n.dat", "n.dat.jpg", "JPEG"),  # no format the export writes: the input's added
])
def test_format_input_keeps_every_extension_it_can_write(tmp_path: Path, id_: str, path: str, fmt: str) -> None:
    # an input named n.jpe was exported as n.jpe.jpg
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, 1, "JPEG")])
    assert export_images(out, to, image_format="input").ok
    assert files_under(to) == {path, "manifest.csv"}
    with Image.open(to / path) as im:
        assert im.format == fmt
    if fmt == "PNG":
        assert (to / path).read_bytes() == stored_images(out)[id_]  # written as stored
    # --format png replaces only the extensions it always did (a resumed export finds its files by those names)
    assert export_path(id_) == ((id_.rpartition(".")[0] if fmt == "TIFF" else id_) + ".png", False)


def test_the_export_lines_count_one_image_and_one_row_as_one() -> None:
    # "exported 1 of 1 images", "(1 rows not exported)", "... and 1 more rows"
    report = ExportReport("out", "images", rows=1, written=1, failed=FAILURES_KEPT + 1,
                          failures=[("a.jpg", "x")] * FAILURES_KEPT,
                          damaged=[("data/p.parquet", "damaged", 1), ("data/q.parquet", f"{UNFETCHED} gone", 1)])
    text = "\n".join(report_lines(report))
    assert "failed: ... and 1 more row\n" in text, text
    assert "damaged part file: data/p.parquet: damaged (1 row not exported)" in text, text
    assert "1 damaged part file(s) (1 row not exported); 1 row not exported from 1 part file(s)" in text, text
    assert "exported 1 of 1 image to images (" in text, text
    report.rows, report.written = 2, 2
    assert "exported 2 of 2 images to images (" in "\n".join(report_lines(report))


def test_the_export_lines_write_counts_with_thousands_separators_as_the_jobs_lines_do() -> None:
    # the progress bar says "12,000/12,000": the last line said "exported 12000 of 12000 images (12000 written, ...)"
    report = ExportReport("out", "images", rows=12_345, written=11_000, present=1_344, failed=1_001, repeated=1_000,
                          renamed=2_000, escaped=3_000, rejects=4_000, rejects_unreadable=1_200, sidecars=True,
                          sidecars_written=36_000, failures=[("a.jpg", "x")] * FAILURES_KEPT,
                          damaged=[("data/p.parquet", "damaged", 5_000), ("data/q.parquet", f"{UNFETCHED} gone", 6_000)])
    text = "\n".join(report_lines(report))
    assert "exported 12,344 of 11,345 images to images (11,000 written, 1,344 already there, 36,000 sidecar files " \
           "written, 1,001 failed; 1 damaged part file(s) (5,000 rows not exported); 6,000 rows not exported from 1 " \
           "part file(s)" in text, text
    assert "4,000 rejected input(s) are not exported" in text and "(1,200 rejects part file(s)" in text, text
    assert "failed: ... and 981 more rows" in text and "(5,000 rows not exported)" in text, text
    for note in ("note: 2,000 image(s)", "note: 3,000 id(s)", "note: 1,000 row(s)"):
        assert note in text, text


def test_resume_keeps_whole_files_and_writes_the_missing_and_the_cut_short(tmp_path: Path) -> None:
    ids = [f"c/{i}.jpg" for i in range(6)]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    export_images(out, to)
    (to / "c/0.png").unlink()
    cut = (to / "c/1.png").read_bytes()
    (to / "c/1.png").write_bytes(cut[: len(cut) // 2])
    kept = (to / "c/2.png").stat().st_mtime_ns
    (to / "manifest.csv").unlink()
    report = export_images(out, to, existing="resume")
    assert report.ok and (report.written, report.present) == (2, 4)
    assert (to / "c/1.png").read_bytes() == cut and (to / "c/0.png").exists()
    assert (to / "c/2.png").stat().st_mtime_ns == kept
    assert len(manifest_rows(to)) == 6  # the manifest lists every image, those kept too


def test_a_folder_that_is_not_empty_is_refused_unless_overwrite(tmp_path: Path, capsys) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1), image("b.jpg", 2)])
    to.mkdir()
    (to / "a.png").write_bytes(b"old")
    (to / "mine.txt").write_text("keep me")
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --to") and "not empty" in err and "--overwrite" in err and "\n" not in err
    assert files_under(to) == {"a.png", "mine.txt"} and (to / "a.png").read_bytes() == b"old"
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--overwrite"]) == 0
    assert (to / "a.png").read_bytes() == stored_images(out)["a.jpg"] and (to / "mine.txt").read_text() == "keep me"


def test_export_images_into_a_folder_that_is_not_empty_names_its_existing_argument_not_the_flags(tmp_path: Path,
                                                                                               capsys) -> None:
    """docs/api.md: `existing` is the API's way into a DIR that holds files; the API's error named the command line's
    --resume and --overwrite, which an API caller has no way to pass. The command line still names its flags."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)])
    to.mkdir()
    (to / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="is not empty") as refused:
        export_images(out, to)
    said = str(refused.value)
    assert 'existing="resume"' in said and 'existing="overwrite"' in said
    assert "--resume" not in said and "--overwrite" not in said
    assert files_under(to) == {"mine.txt"}
    assert export_images(out, to, existing="resume").ok  # the way the error names works
    assert main(["--output", str(out), "--to", str(tmp_path / "other"), "--no-progress"]) == 0
    assert main(["--output", str(out), "--to", str(tmp_path / "other"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: --to" in err and "--resume" in err and "--overwrite" in err and "existing=" not in err


def _refusals(tmp_path: Path) -> list[tuple[str, str, dict, list[str], str, str]]:
    """Exports that cannot start, each as (output, DIR, export_images's other arguments, the same as flags, what the
    API's error says, what the command line's says)."""
    out, unfinished = tmp_path / "out", tmp_path / "unfinished"
    make_output(str(out), [image("Manifest.csv/b.jpg", 1)])
    make_output(str(unfinished), [image("a.jpg", 1)], status="interrupted")
    full, file, to = tmp_path / "full", tmp_path / "file", str(tmp_path / "to")
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    file.write_bytes(b"x")
    jsonl = ({"manifest": "jsonl"}, ["--manifest", "jsonl"])
    return [
        (str(unfinished), to, {}, [], "or pass force=True to export", "or pass --force to export"),
        (str(out), to, {}, [], 'give manifest="jsonl" or manifest="none"', "give --manifest jsonl or --manifest none"),
        (str(out), str(full), *jsonl, f'to={str(full)!r} is not empty; give an empty or new folder, existing="resume"',
         f"--to {full} is not empty; give an empty or new folder, --resume"),
        (str(out), str(file), *jsonl, f"to={str(file)!r} is a file", f"--to {file} is a file"),
        (str(out), str(out / "data"), *jsonl, f"to={str(out / 'data')!r} is inside its data/",
         f"--to {out / 'data'} is inside its data/"),
        (str(out), str(file / "x"), *jsonl, f"to={str(file / 'x')!r} cannot be made or written",
         f"--to {file / 'x'} cannot be made or written"),
        (str(out), "https://example.invalid/x", *jsonl, "to='https://example.invalid/x' is a web address",
         "--to https://example.invalid/x is a web address"),
    ]


def test_each_refusal_names_the_arguments_the_caller_gave(tmp_path: Path, capsys) -> None:
    """docs/api.md: export_images takes keyword arguments, yet its errors named the command line's flags (--to,
    --force, --manifest), which an API caller has no way to pass; the command line still names its flags."""
    flags = {"--to", "--force", "--manifest", "--resume", "--overwrite", "--output", "--format", "--workers"}
    for output, to, arguments, options, api, cli in _refusals(tmp_path):
        with pytest.raises(ExportError) as refused:
            export_images(output, to, **arguments)
        said = str(refused.value)
        assert api in said and not any(flag in said for flag in flags), said
        assert main(["--output", output, "--to", to, "--no-progress", *options]) == 2
        err = capsys.readouterr().err
        assert cli in err and "=True" not in err and "to=" not in err and 'manifest="' not in err, err
    assert not (tmp_path / "to").exists() and os.listdir(tmp_path / "full") == ["mine.txt"]


def test_the_warnings_of_a_forced_export_name_the_arguments_the_caller_gave(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)], status="failed")
    report = export_images(out, tmp_path / "api", force=True)
    assert report.ok and "(force=True)" in report.warnings[0] and "--force" not in report.warnings[0]
    assert main(["--output", str(out), "--to", str(tmp_path / "cli"), "--no-progress", "--force"]) == 0
    assert "(--force)" in capsys.readouterr().err


@pytest.mark.parametrize("status", [None, "running", "interrupted", "failed", "inconsistent"])
def test_an_unfinished_output_is_refused_unless_forced(tmp_path: Path, capsys, status: str | None) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)], status=status)
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: output {out} is not complete") and "--force" in err and "\n" not in err
    assert not to.exists()
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--force"]) == 0
    captured = capsys.readouterr()
    assert "warning: output" in captured.err and "exported 1 of 1 image to" in captured.out
    assert files_under(to) == {"a.png", "manifest.csv"}


def test_an_output_a_run_is_writing_is_refused(tmp_path: Path) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)])  # complete, but a run (of --incremental) has the lease now
    lease = {"run_id": "r1", "host": "elsewhere", "pid": 1, "started": time.time(), "heartbeat": time.time()}
    (out / LEASE_FILE).write_text(json.dumps(lease))
    with pytest.raises(ExportError, match="a run is writing it now .*run r1 on host elsewhere") as refused:
        export_images(out, to)
    assert not to.exists()
    # what to do: wait for it (running the same zip-purify command again, the advice for a stopped run, is refused by
    # the same lease while that run holds it)
    assert "wait for that run to finish, then export" in str(refused.value)
    assert "run the same zip-purify command again" not in str(refused.value)


def test_a_part_file_the_storage_will_not_give_is_not_called_damaged(tmp_path: Path, capsys, monkeypatch) -> None:
    """A storage failure that outlasts the retries (here: permission denied) says the file could not be fetched and
    that --resume finishes the job, not that the data is damaged; the other part files are exported."""
    import fsspec.implementations.local

    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(6)], per_file=3)
    refused = sorted((out / "data").glob("part-*.parquet"))[0]
    cat_file = fsspec.implementations.local.LocalFileSystem.cat_file

    def denied(self, path, *args, **kwargs):
        if Path(str(path).removeprefix("file://")) == refused:
            raise PermissionError(13, "Permission denied", str(path))
        return cat_file(self, path, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "cat_file", denied)
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"unfetched part file: {refused}: could not be fetched from the storage (PermissionError" in captured.err
    assert "damaged" not in captured.out + captured.err
    assert "3 rows not exported from 1 part file(s) the storage did not give: run again with --resume" in captured.out
    assert len(files_under(to) - {"manifest.csv"}) == 3
    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "cat_file", cat_file)
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--resume"]) == 0
    assert len(files_under(to) - {"manifest.csv"}) == 6


def test_the_exports_lines_name_its_destination_without_its_credentials(tmp_path: Path, capsys) -> None:
    """Its last line (stdout) and warnings (stderr) name --to and --output: an FTP password or a presigned URL's
    signature in them was printed as given, into a scheduler's log. fsspec's memory store takes such a URL as a path,
    so it stands in for an FTP server here."""
    import fsspec

    out = tmp_path / "out"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(3)], per_file=3)
    to = "memory://writer:to-pa55word@host/export-test-files"
    fs = fsspec.filesystem("memory")
    try:
        assert main(["--output", str(out), "--to", to, "--no-progress"]) == 0
        said = capsys.readouterr()
        assert len(fs.find(fs._strip_protocol(to))) == 4  # 3 images and the manifest
    finally:
        fs.rm(fs._strip_protocol(to), recursive=True)
    assert "to-pa55word" not in said.out + said.err
    assert "exported 3 of 3 images to memory://writer:***@host/export-test-files" in said.out, said.out


def test_the_last_line_and_the_manifest_name_the_folder_as_given(tmp_path: Path, capsys, monkeypatch) -> None:
    # the last line named DIR as given ('images') and the manifest by its absolute path (/home/me/.../images/
    # manifest.csv): a script could not tell from one what the other was, nor find the manifest by the folder it gave
    monkeypatch.chdir(tmp_path)
    make_output("out", [image(f"{i}.jpg", i) for i in range(2)])
    assert main(["--output", "out", "--to", "images/", "--no-progress"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "exported 2 of 2 images to images (2 written); manifest images/manifest.csv;" in last, last
    absolute = tmp_path / "abs"
    assert main(["--output", "out", "--to", str(absolute), "--no-progress", "--manifest", "jsonl"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert f"images to {absolute} (2 written); manifest {absolute}/manifest.jsonl;" in last, last
    report = export_images("out", "api-images")
    assert report.manifest == "api-images/manifest.csv" and Path(report.manifest).is_file()


def test_a_password_holding_a_slash_in_to_is_not_printed(tmp_path: Path, capsys) -> None:
    # 'ftp://user:pa/ss@host/...': the URL parser takes 'ss@host/...' for the path, and the line printed the password
    import fsspec

    out = tmp_path / "out"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(2)])
    to = "memory://writer:to-pa55/word#x@host/export-slash-test"
    fs = fsspec.filesystem("memory")
    try:
        assert main(["--output", str(out), "--to", to, "--no-progress"]) == 0
        said = capsys.readouterr()
    finally:
        fs.rm(fs._strip_protocol(to), recursive=True)
    for secret in ("to-pa55", "word#x", "pa55/word"):
        assert secret not in said.out + said.err
    assert "exported 2 of 2 images to memory://writer:***@host/export-slash-test (2 written); manifest " \
           "memory://writer:***@host/export-slash-test/manifest.csv;" in said.out, said.out


def test_a_damaged_part_file_is_named_and_the_others_are_exported(tmp_path: Path, capsys) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(9)], per_file=3)
    parts = sorted((out / "data").glob("part-*.parquet"))
    cut_short = parts[0].read_bytes()
    parts[0].write_bytes(cut_short[:-20])  # no footer: found while the names are read
    # the second's image column overwritten in its middle: its footer and ids read, its images do not
    data = bytearray(parts[1].read_bytes())
    column = pq.ParquetFile(parts[1]).metadata.row_group(0).column(1)
    start = column.data_page_offset + column.total_compressed_size // 3
    data[start : start + 200] = os.urandom(200)
    parts[1].write_bytes(bytes(data))
    intact = {row["id"] for row in pq.read_table(parts[2], columns=["id"]).to_pylist()}
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"{parts[0]}: cannot be read" in captured.err and f"{parts[1]}: cannot be read to its end" in captured.err
    assert "2 damaged part file(s)" in captured.out
    assert {row["id"] for row in manifest_rows(to)} == intact
    assert files_under(to) == {f"{id_[:-4]}.png" for id_ in intact} | {"manifest.csv"}


def test_a_row_that_cannot_be_written_is_named_and_the_rest_are_exported(tmp_path: Path, capsys) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1), image("b.jpg", 2)])
    (to / "a.png").mkdir(parents=True)  # a folder where a's file goes
    (to / "a.png" / "x").write_text("")
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "failed: a.jpg: " in captured.err and "(1 written, 1 failed)" in captured.out
    assert (to / "b.png").read_bytes() == stored_images(out)["b.jpg"]
    assert [row["id"] for row in manifest_rows(to)] == ["b.jpg"]  # the manifest lists only files that are there


def test_an_id_held_twice_in_an_unfinished_output_is_exported_once(tmp_path: Path) -> None:
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1), image("b.jpg", 2)], status="interrupted", per_file=1)
    write_stage(batch_of([image("a.jpg", 1)]), str(out), {}, name_salt="again")  # a retried batch's second copy
    report = export_images(out, to, force=True)
    assert report.ok and report.rows == 3 and report.written == 2 and report.repeated == 1
    assert [row["id"] for row in manifest_rows(to)].count("a.jpg") == 1


@pytest.mark.parametrize("case", ["missing", "a file", "no job record", "its data folder", "to inside data",
                                  "to is the output", "to is a file", "to is a web address"])
def test_what_cannot_be_exported_is_one_line_and_status_2(tmp_path: Path, capsys, case: str) -> None:
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.parquet").write_bytes(b"")
    (tmp_path / "file").write_text("")
    given, to, said = {
        "missing": (tmp_path / "nope", tmp_path / "to", "does not exist"),
        "a file": (tmp_path / "file", tmp_path / "to", "is a file"),
        "no job record": (other, tmp_path / "to", "is not a zip-purify output"),
        "its data folder": (out / "data", tmp_path / "to", f"give the output itself, {out}"),
        "to inside data": (out, out / "data" / "images", "inside its data/ folder"),
        "to is the output": (out, out, "is the output itself"),
        "to is a file": (out, tmp_path / "file", "is a file"),
        "to is a web address": (out, "https://example.com/images/", "is a web address"),
    }[case]
    assert main(["--output", str(given), "--to", str(to), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and err.count("\n") == 1
    assert not (tmp_path / "to").exists() and not (out / "data" / "images").exists()


def test_an_output_the_export_may_not_look_at_is_said_so_not_missing(tmp_path: Path, capsys, monkeypatch) -> None:
    """A local output under a folder its user may not search (os.stat: PermissionError): fsspec's exists answers False
    for it, and the export said 'does not exist' of an output that is there. (Made with a refusing stat: the tests run
    as root, whom no permission bit stops.)"""
    from fsspec.implementations.local import LocalFileSystem

    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    real_info = LocalFileSystem.info

    def refusing_info(self, path, **kwargs):  # noqa: ANN001 - fsspec's signature
        if str(path).rstrip("/") == str(out):
            raise PermissionError(13, "Permission denied", str(out))
        return real_info(self, path, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "info", refusing_info)
    assert main(["--output", str(out), "--to", str(tmp_path / "to"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot be looked at" in err and "Permission denied" in err and "does not exist" not in err, err
    assert err.count("\n") == 1


def test_an_argument_given_without_its_flag_is_named(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["out", "images"])
    assert stop.value.code == 2 and "--output OUT --to DIR" in capsys.readouterr().err


def test_s3_to_s3_with_the_jobs_storage_flags(tmp_path: Path, capsys) -> None:
    with moto_s3("clean", "files") as (client, so):
        make_output("s3://clean/out", [image("cats/a.jpg", 1), image("s.tar/k", 2),
                                       reject_record("bad.jpg", "/in/bad.jpg", "not an image", "decode")],
                    storage_options=so)
        flags = ["--s3-endpoint", so["client_kwargs"]["endpoint_url"], "--storage-option", f"key={so['key']}",
                 "--storage-option", f"secret={so['secret']}", "--storage-option", "client_kwargs={\"region_name\": "
                 "\"us-east-1\"}", "--no-progress"]
        assert main(["--output", "s3://clean/out/", "--to", "s3://files/images/", *flags]) == 0
        assert "1 rejected input(s) are not exported" in capsys.readouterr().out
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="files")["Contents"]}
        assert keys == {"images/cats/a.png", "images/s.tar/k.png", "images/manifest.csv"}
        local = tmp_path / "local"
        make_output(str(local), [image("cats/a.jpg", 1), image("s.tar/k", 2)])
        for key, id_ in (("images/cats/a.png", "cats/a.jpg"), ("images/s.tar/k.png", "s.tar/k")):
            assert client.get_object(Bucket="files", Key=key)["Body"].read() == stored_images(local)[id_]
        # refused when not empty, resumed with nothing to write
        assert main(["--output", "s3://clean/out", "--to", "s3://files/images", *flags]) == 2
        assert "not empty" in capsys.readouterr().err
        report = export_images("s3://clean/out", "s3://files/images", storage_options=so, existing="resume")
        assert report.ok and (report.written, report.present) == (0, 2)
        # a misspelt bucket stops the export before any file, rather than failing every file's write
        assert main(["--output", "s3://clean/out", "--to", "s3://flies/images", *flags]) == 2
        assert "the bucket of --to s3://flies/images (flies) does not exist" in capsys.readouterr().err


def test_progress_counts_every_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(5)], per_file=2)
    bars = []

    class Bar:
        def __init__(self, total: int) -> None:
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    export_images(out, tmp_path / "images", progress=Bar)
    assert [(b.total, b.n, b.closed) for b in bars] == [(5, 5, True)]


def test_the_export_tool_loads_neither_torch_nor_ray() -> None:
    code = ("import sys; import pipeline.export_cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                            text=True, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_an_export_leaves_no_thread_behind(tmp_path: Path) -> None:
    """Its part files are read on its own thread: an Arrow pool thread reading them from a Python file object let go
    of it only as the interpreter exited, where that can abort the process (see test_driver_reads)."""
    make_output(str(tmp_path / "out"), [image(f"{i}.jpg", i) for i in range(6)], per_file=2)
    # The export's own Python threads (its read-ahead) end with it, but one can take a moment to leave /proc after
    # its last line: wait up to 5 s for them. An Arrow pool thread never leaves.
    program = (f"import os, sys, time; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
               "from pipeline.export_cli import main\n"
               "before = set(os.listdir('/proc/self/task'))\n"
               f"code = main(['--output', {str(tmp_path / 'out')!r}, '--to', {str(tmp_path / 'files')!r}, '--no-progress'])\n"
               "for _ in range(100):\n"
               "    left = set(os.listdir('/proc/self/task')) - before\n"
               "    if not left:\n"
               "        break\n"
               "    time.sleep(0.05)\n"
               "print(code, len(left))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(files_under(tmp_path / "files") - {"manifest.csv"}) == 6
    assert done.stdout.split()[-2:] == ["0", "0"]  # status 0, and no thread started that is still there


def test_zip_purify_points_export_at_its_tool(capsys) -> None:
    from pipeline.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["export", "--output", "out"])
    assert stop.value.code == 2 and "zip-purify-export --output OUT --to DIR" in capsys.readouterr().err


def test_ctrl_c_leaves_whole_files_and_no_manifest_and_resume_finishes(tmp_path: Path, capsys, monkeypatch) -> None:
    import pipeline.export as export

    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(6)], per_file=2)
    original, calls = export._export_one, []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(export, "_export_one", interrupted)
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--workers", "1"]) == 130
    assert "--resume" in capsys.readouterr().err
    written = files_under(to)
    assert written and len(written) < 6 and all(name.endswith(".png") for name in written)  # no manifest, no temporary
    for name in written:
        assert (to / name).read_bytes() == stored_images(out)[name[:-4] + ".jpg"]
    monkeypatch.setattr(export, "_export_one", original)
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--resume"]) == 0
    assert len(manifest_rows(to)) == 6 and len(files_under(to)) == 7


def test_a_manifest_that_cannot_be_written_is_said_and_the_images_are_exported(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    import pipeline.export as export

    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(4)])

    def full_disk(value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_csv_value", full_disk)
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "the manifest could not be written (OSError: [Errno 28] No space left on device)" in captured.err
    assert files_under(to) == {f"{i}.png" for i in range(4)}  # the images; no manifest, no temporary left


def test_an_earlier_exports_manifest_that_a_failed_one_would_have_replaced_is_removed_not_left_as_this_ones(
        tmp_path: Path, capsys, monkeypatch) -> None:
    # an --overwrite (or --resume) of a folder holding an earlier export's manifest.csv, whose new manifest failed, left
    # the old one in place: a reader took it for the manifest of the folder as it now is, lacking the new images
    import pipeline.export as export

    to = tmp_path / "images"
    make_output(str(tmp_path / "old"), [image(f"{i}.jpg", i) for i in range(2)])
    assert main(["--output", str(tmp_path / "old"), "--to", str(to), "--no-progress"]) == 0
    assert [row["id"] for row in manifest_rows(to)] == ["0.jpg", "1.jpg"]
    make_output(str(tmp_path / "new"), [image(f"{i}.jpg", i + 10) for i in range(4)])
    original = export._csv_value

    def full_disk(value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_csv_value", full_disk)
    capsys.readouterr()
    assert main(["--output", str(tmp_path / "new"), "--to", str(to), "--no-progress", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "the manifest could not be written" in err
    assert "note: the earlier export's manifest of that name was removed: it did not list this export's images" in err
    assert files_under(to) == {f"{i}.png" for i in range(4)}  # the new images, no manifest at all
    for i in range(4):
        assert (to / f"{i}.png").read_bytes() == stored_images(tmp_path / "new")[f"{i}.jpg"]
    # written again from data/ by --resume, with every image
    monkeypatch.setattr(export, "_csv_value", original)
    assert main(["--output", str(tmp_path / "new"), "--to", str(to), "--no-progress", "--resume"]) == 0
    assert [row["id"] for row in manifest_rows(to)] == [f"{i}.jpg" for i in range(4)]
    # one that cannot be removed is warned of, naming the folder and why
    monkeypatch.setattr(export, "_csv_value", full_disk)

    def refused(self, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(export.storage_path(str(to), {})[0]), "rm_file", refused)
    capsys.readouterr()
    report = export_images(tmp_path / "new", to, existing="overwrite")
    assert not report.ok and report.earlier_manifest == "PermissionError: [Errno 13] Permission denied"
    lines = export.report_lines(report)
    assert any(line.startswith(f"warning: an earlier export's manifest of that name is still in {to} and could not be "
                               "removed (PermissionError") and line.endswith("it does not list this export's images")
               for line in lines), lines
    assert (to / "manifest.csv").exists()


def test_an_image_whose_name_is_another_ids_folder_gets_its_own(tmp_path: Path) -> None:
    # a.jpg's file (a.png) is the folder of a.png/b.jpg's, and B.jpg's is b.png/x.jpg's but for case: on a disk one
    # could not be written (which one depended on the workers' order); on an object store a sync to a disk fails
    ids = ["a.jpg", "a.png/b.jpg", "B.jpg", "b.png/x.jpg", "c/d.jpg", "c.jpg"]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)], per_file=2)
    report = export_images(out, to)
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert report.ok and report.written == len(ids) and report.renamed == 2
    assert rows == {"a.jpg": "a.jpg.png", "a.png/b.jpg": "a.png/b.png", "B.jpg": "B.jpg.png", "b.png/x.jpg": "b.png/x.png",
                    "c/d.jpg": "c/d.png", "c.jpg": "c.png"}
    for id_, path in rows.items():
        assert (to / path).read_bytes() == stored_images(out)[id_]
    assert resolve_collisions([("x.jpg", "x.png")], folders=lambda key: key == "x.png") == {"x.jpg": "x.jpg.png"}


def test_a_manifest_never_lands_inside_a_folder_of_its_name(tmp_path: Path, capsys) -> None:
    # it was moved into the folder under its hidden temporary name, and the last line named DIR/manifest.csv
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("Manifest.csv/b.jpg", 1), image("c.jpg", 2)])
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "folder named manifest.csv/ (or that but for case)" in err and "--manifest jsonl" in err
    assert err.count("\n") == 1 and not to.exists()
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--manifest", "jsonl"]) == 0
    assert files_under(to) == {"Manifest.csv/b.png", "c.png", "manifest.jsonl"}
    capsys.readouterr()
    # a folder of that name put in DIR by another hand: the manifest is not written, and the last lines say so
    other = tmp_path / "other"
    (other / "manifest.csv").mkdir(parents=True)
    (other / "manifest.csv" / "mine.txt").write_text("")
    make_output(str(tmp_path / "out2"), [image("c.jpg", 2)])
    assert main(["--output", str(tmp_path / "out2"), "--to", str(other), "--no-progress", "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "the manifest could not be written" in captured.err and "manifest " not in captured.out
    assert files_under(other) == {"c.png", "manifest.csv/mine.txt"}


def test_a_name_that_fits_the_file_system_is_written_whatever_the_temporary_names_length(tmp_path: Path) -> None:
    # 230 bytes fit a disk's 255 per name; the hidden temporary name beside it was 42 bytes longer and failed
    ids = ["x" * 226 + ".jpg", "d/" + "é" * 113 + ".jpg"]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    report = export_images(out, to)
    assert report.ok and report.written == 2 and report.escaped == 0
    assert (to / ("x" * 226 + ".png")).read_bytes() == stored_images(out)[ids[0]]
    assert (to / "d" / ("é" * 113 + ".png")).read_bytes() == stored_images(out)[ids[1]]


def test_a_name_longer_than_a_disk_allows_is_shortened_and_told_apart(tmp_path: Path) -> None:
    # names over 255 bytes could not be written on a disk: every such row failed, and failed again on --resume
    long_ids = ["y" * 300 + ".jpg", "y" * 300 + "z.jpg", "é" * 200 + ".jpg", "z" * 300 + "/a.jpg", "z" * 300 + "/b.jpg"]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate([*long_ids, "ok.jpg"])])
    report = export_images(out, to)
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert report.ok and report.written == 6 and report.escaped == 5 and rows["ok.jpg"] == "ok.png"
    assert len(set(rows.values())) == 6 and rows[long_ids[3]].rsplit("/")[0] == rows[long_ids[4]].rsplit("/")[0]
    for id_, path in rows.items():
        assert all(len(name.encode()) <= 255 for name in path.split("/")) and path.endswith(".png")
        assert path.startswith(id_[:100]) or id_ == "ok.jpg"  # the start of the name is kept
        assert (to / path).read_bytes() == stored_images(out)[id_]
    name, escaped = export_path("y" * 300 + ".jpg")
    assert escaped and len(name.encode()) == 255 and export_path("y" * 300 + ".jpg") == (name, True)


def test_resume_writes_over_a_file_of_the_same_size_but_other_bytes(tmp_path: Path) -> None:
    # another export's image at the same size (BMP, PPM and TIFF of one size always are; the output re-purified since):
    # it was kept and counted "already there", exit status 0
    ids = [f"c/{i}.bmp" for i in range(3)]
    out, old, to = tmp_path / "out", tmp_path / "old", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    make_output(str(old), [image(id_, i + 15) for i, id_ in enumerate(ids)])  # same sizes, other pixels
    export_images(old, to, image_format="input")
    assert export_images(out, to, image_format="input", existing="overwrite").written == 3
    expected = {p: (to / p).read_bytes() for p in ("c/0.bmp", "c/1.bmp", "c/2.bmp")}
    export_images(old, to, image_format="input", existing="overwrite")
    assert all(len((to / p).read_bytes()) == len(data) for p, data in expected.items())
    report = export_images(out, to, image_format="input", existing="resume")
    assert report.ok and (report.written, report.present) == (3, 0)
    assert {p: (to / p).read_bytes() for p in expected} == expected
    again = export_images(out, to, image_format="input", existing="resume")
    assert (again.written, again.present) == (0, 3)


def test_names_one_only_by_unicode_normalization_get_their_own(tmp_path: Path) -> None:
    # café written precomposed (NFC) and with a combining accent (NFD): two files on Linux, one on macOS's disks
    # (APFS and HFS+ compare names normalized), where one image took the other's place and both rows said that file
    import unicodedata

    ids = ["café.jpg", "cafe\u0301.jpg", "CAFE\u0301/x.jpg", "café.png/y.jpg"]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    report = export_images(out, to)
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert report.ok and report.written == 4 and report.renamed == 2
    files = [unicodedata.normalize("NFD", p).casefold() for p in rows.values()]
    folders = {f.rsplit("/", 1)[0] for f in files if "/" in f}
    assert len(set(files)) == 4 and not folders & set(files)
    for id_, path in rows.items():
        assert (to / path).read_bytes() == stored_images(out)[id_]


def test_naming_holds_8_bytes_a_row_and_twice_that_while_sorting(tmp_path: Path) -> None:
    # the digests were held three times at once while sorted (24 bytes a row), against the 8 bytes the docs say
    import tracemalloc

    import pyarrow as pa
    from fsspec.implementations.local import LocalFileSystem

    from pipeline.export import plan_names

    rows, per_file = 100_000, 1000
    paths = []
    for p in range(rows // per_file):
        ids = [f"c{i % 7}/{i}.jpg" for i in range(p * per_file, (p + 1) * per_file)]
        paths.append(str(tmp_path / f"part-{p:05d}.parquet"))
        pq.write_table(pa.table({"id": ids}), paths[-1])
    plan_names(LocalFileSystem(), paths[:2], "png", [])  # what the first call imports and caches is not counted
    tracemalloc.start()
    try:
        plan, parts = plan_names(LocalFileSystem(), paths, "png", [])
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(p.rows for p in parts) == rows and not plan.moved
    assert held < 10 * rows and peak < 21 * rows


def test_numpy_integers_are_a_jpeg_quality_and_workers(tmp_path: Path) -> None:
    """The check takes numpy's integers (a value from an array, a grid of settings) as whole numbers, but Pillow
    refuses quality=np.int64(90): every JPEG of the export failed, 'ValueError: Invalid quality setting'."""
    out = tmp_path / "out"
    make_output(str(out), [image("cats/a.jpg", 1)])
    report = export_images(out, tmp_path / "np", image_format="input", jpeg_quality=np.int64(90), workers=np.int32(2))
    assert report.ok and report.failures == [] and report.written == 1
    export_images(out, tmp_path / "int", image_format="input", jpeg_quality=90)
    assert (tmp_path / "np" / "cats/a.jpg").read_bytes() == (tmp_path / "int" / "cats/a.jpg").read_bytes()


@pytest.mark.parametrize("argument, value", [("existing", "replace"), ("image_format", "jpg"), ("manifest", "xml"),
                                             ("jpeg_quality", 0), ("workers", 0)])
def test_a_bad_argument_of_export_images_is_an_export_error_before_anything_is_written(tmp_path: Path, argument: str,
                                                                                       value: object) -> None:
    """docs/api.md: export_images raises ExportError when the export cannot start; a bad `existing` raised ValueError,
    which a caller catching ExportError (as the command line does) let through as a traceback."""
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    with pytest.raises(ExportError, match=f"{argument} must be"):
        export_images(str(out), str(tmp_path / "to"), **{argument: value})
    assert not (tmp_path / "to").exists()


@pytest.mark.parametrize("argument, value", [("force", "no"), ("force", 1), ("workers", "8"), ("workers", 2.5),
                                             ("workers", True), ("jpeg_quality", "95"), ("storage_options", "anon=true"),
                                             ("progress", True), ("on_damaged", "log"), ("to", None), ("output", None)])
def test_an_argument_of_the_wrong_type_is_an_export_error_naming_it_before_anything_is_written(
        tmp_path: Path, monkeypatch, argument: str, value: object) -> None:
    """force="no" exported as force=True (an unfinished output let through), workers="8" and jpeg_quality="95" raised
    a bare TypeError, storage_options="..." a ValueError about a dictionary update, progress=True failed only once
    the manifest was begun in `to`, on_damaged="log" only at a damaged part file, mid-export, and to=None exported
    into a folder named 'None'."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    arguments = {"output": str(out), "to": str(tmp_path / "to"), argument: value}
    with pytest.raises(ExportError, match=f"^{argument} must be"):
        export_images(arguments.pop("output"), arguments.pop("to"), **arguments)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("flag", ["--output", "--to"])
def test_an_empty_output_or_to_is_one_line_naming_the_flag(tmp_path: Path, monkeypatch, capsys, flag: str) -> None:
    # `--to "$DIR"` with DIR unset was taken as `/` (the empty name stripped of its slashes, then "/"): refused only as
    # "--to / is not empty", and with --overwrite the export wrote its files into the file system's root
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    arguments = {"--output": str(out), "--to": str(tmp_path / "to"), flag: ""}
    assert main([x for kv in arguments.items() for x in kv]) == 2
    assert f"error: {flag} is empty; give a path or URI" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("flag, value, said", [("--workers", "0", "at least 1"), ("--jpeg-quality", "101", "from 1 to 100"),
                                               ("--jpeg-quality", "0", "from 1 to 100"), ("--workers", "x", "whole")])
def test_an_option_out_of_range_is_named_by_its_flag(tmp_path: Path, capsys, flag: str, value: str, said: str) -> None:
    # the export's own check named the Python argument: "error: workers must be at least 1, got 0"
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    with pytest.raises(SystemExit) as stop:
        main(["--output", str(out), "--to", str(tmp_path / "to"), flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: " in err and said in err and not (tmp_path / "to").exists()


@pytest.mark.parametrize("manifest", ["csv", "none"])
def test_a_to_that_cannot_be_made_is_named_by_its_flag_and_nothing_is_written(tmp_path: Path, capsys,
                                                                              manifest: str) -> None:
    """--to under a file: the export stopped with a bare "error: [Errno 20] Not a directory: '.../x'" (from the
    manifest's temporary file), naming neither --to nor the fix, and export_images raised OSError, not the ExportError
    docs/api.md promises when the export cannot start. With --manifest none every image failed on its own, exit 1."""
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    (tmp_path / "file").write_bytes(b"x")
    to = tmp_path / "file" / "images"
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--manifest", manifest]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --to {to} cannot be made or written: ") and "NotADirectoryError" in err, err
    with pytest.raises(ExportError, match="^to='.*' cannot be made or written"):
        export_images(str(out), str(to), manifest=manifest)
    assert (tmp_path / "file").read_bytes() == b"x"


def test_an_export_whose_stdout_reader_went_away_keeps_its_exit_status(tmp_path: Path, capsys, monkeypatch) -> None:
    """`zip-purify-export ... | head -0` (PYTHONUNBUFFERED=1): the last line met the closed pipe after every image was
    written, and the export ended in a traceback, exit status 1."""

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)])
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 0
    assert "error" not in capsys.readouterr().err and files_under(to) == {"a.png", "manifest.csv"}


@pytest.mark.parametrize("side", ["output", "to"])
def test_no_s3_credentials_is_one_line_saying_where_they_are_read_from(tmp_path, capsys, monkeypatch, side) -> None:
    """README's first export, `zip-purify-export --output s3://bucket/clean/ --to /data/clean-images`, without
    credentials ended in botocore's traceback and exit status 1 (a partial export), where the job says in one line
    where it reads credentials from, with exit status 2 (nothing exported)."""
    from pipeline.cli_common import NO_CREDENTIALS_ADVICE

    without_aws_credentials(monkeypatch, tmp_path)
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 0)])
    where = {"output": str(out), "to": str(tmp_path / "files")}
    where[side] = f"s3://no-credentials-{side}/x/"
    # nothing listens on port 9: botocore signs a request, and finds no credentials, before it connects
    assert main(["--output", where["output"], "--to", where["to"], "--s3-endpoint", "http://127.0.0.1:9",
                 "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Unable to locate credentials" in err[0], err
    assert err[0].endswith(NO_CREDENTIALS_ADVICE), err
    assert "the job" not in err[0], err  # the export said "the job reads S3 credentials ..."


def test_resume_removes_the_partial_files_of_an_export_killed_outright_and_no_one_elses(tmp_path: Path, capsys) -> None:
    """An export killed with SIGKILL (the OOM killer, a machine lost) leaves the hidden temporary file of each write it
    was making, `.tmp-<hex>-3.png.tmp`, and the manifest's; --resume finished the export and left them in DIR for
    ever (a glob of '*' or a sync of DIR copies them). The export holds at a gate here (ZIP_PURIFY_EXPORT_GATE) with
    two writes' temporary files certainly on disk when it is killed."""
    from pipeline.export import EXPORT_GATE_ENV
    from tests.gateutil import let_through_until

    out, to, gate = tmp_path / "out", tmp_path / "images", tmp_path / "gate"
    make_output(str(out), [image(f"{i}.jpg", i, txt=f"cap {i}") for i in range(6)])
    gate.mkdir()
    argv = ["--output", str(out), "--to", str(to), "--sidecars", "--workers", "2", "--no-progress"]
    export = subprocess.Popen([sys.executable, "jobs/export.py", *argv], cwd=Path(__file__).parents[1],
                              env={**os.environ, EXPORT_GATE_ENV: str(gate)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        # two writes let through whole, then each of the two workers holds one with its temporary file written
        let_through_until(gate, lambda: export.poll() is not None or len(list(gate.glob("batch-*"))) >= 4, most=2,
                          deadline_s=60)
        assert export.poll() is None, export.communicate()  # it finished: nothing held it
        export.kill()  # SIGKILL: no handler runs, no temporary file is cleaned up
        export.wait()
    finally:
        if export.poll() is None:
            export.kill()
            export.wait()
    partial = {name for name in files_under(to) if name.startswith(".tmp-")}
    assert len(partial) == 3 and any(name.endswith("-manifest.csv.tmp") for name in partial), partial
    theirs = {"notes.tmp", ".tmp-notes.tmp", "sub/.tmp-x.png.tmp", f".tmp-{uuid.uuid4().hex}-part-00000.parquet.tmp",
              f".tmp-{uuid.uuid4().hex}-a.png",  # no export's names: a user's, the job's part file, no .tmp at the end
              f".tmp-{hashlib.md5(b'x').hexdigest()}-a.png.tmp"}  # another tool's, of 32 hex digits, no uuid4's
    for name in theirs:
        (to / name).parent.mkdir(exist_ok=True)
        (to / name).write_bytes(b"not the export's")
    assert main([*argv, "--resume"]) == 0
    said = capsys.readouterr()
    assert f"note: removed 3 partial files (.tmp-*.tmp) that an export stopped outright (killed, its machine lost) " \
           f"left in {to}" in said.err, said.err
    assert files_under(to) == {f"{i}.{ext}" for i in range(6) for ext in ("png", "txt")} | {"manifest.csv"} | theirs
    assert main([*argv, "--resume"]) == 0
    assert "partial" not in capsys.readouterr().err  # none left, none said


def test_resume_on_an_object_store_removes_the_manifests_partial_copy(tmp_path: Path) -> None:
    """On an object store each image is one PUT, but the manifest is streamed to a temporary key and copied into place:
    an export killed between the copy and the delete left `.tmp-<hex>-manifest.csv.tmp` at DIR's top."""
    import fsspec

    make_output(str(tmp_path / "out"), [image("a.jpg", 1)])
    to, fs = "memory://export-partial-test/images", fsspec.filesystem("memory")
    try:
        left = f"/export-partial-test/images/.tmp-{uuid.uuid4().hex}-manifest.csv.tmp"
        fs.pipe_file(left, b"id,path\n")
        fs.pipe_file("/export-partial-test/images/.tmp-mine.tmp", b"a user's")
        report = export_images(tmp_path / "out", to, existing="resume")
        assert report.ok and report.partial_writes_removed == 1
        assert not fs.exists(left) and fs.exists("/export-partial-test/images/.tmp-mine.tmp")
        assert any("removed 1 partial file (.tmp-*.tmp)" in line for line in report_lines(report))
    finally:
        fs.rm("/export-partial-test", recursive=True)


def test_resume_into_a_store_with_rename_finds_partial_files_in_every_folder(tmp_path: Path, monkeypatch) -> None:
    """A store with a rename that is not the local disk (sftp://, stood in for by a local folder) writes each file
    under a temporary name as the disk does, in every folder: --resume lists the whole DIR for them."""
    import importlib

    from fsspec.implementations.local import LocalFileSystem

    class AsSftp(LocalFileSystem):
        protocol = ("sftp", "ssh")
        root_marker = "/"

        @classmethod
        def _strip_protocol(cls, path):  # noqa: ANN001 - fsspec's signature
            path = path[len("sftp://"):] if isinstance(path, str) and path.startswith("sftp://") else path
            return super()._strip_protocol(path)

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "sftp", AsSftp)
    AsSftp.clear_instance_cache()
    out, to = tmp_path / "out", tmp_path / "exported"
    make_output(str(out), [image("cats/a.jpg", 1, txt="cap"), image("b.jpg", 2)])
    make_output(str(tmp_path / "old"), [image("cats/a.jpg", 1, txt="cap", label=3), image("b.jpg", 2)])
    assert export_images(tmp_path / "old", to, sidecars=True).ok  # an earlier export: cats/a.cls is its own, stale
    left = [f"cats/.tmp-{uuid.uuid4().hex}-a.png.tmp", f".tmp-{uuid.uuid4().hex}-manifest.csv.tmp",
            f"cats/.tmp-{uuid.uuid4().hex}-a.txt.tmp"]
    for name in [*left, "cats/.tmp-mine.tmp"]:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(b"x")
    report = export_images(f"sftp://{out}", f"sftp://{to}", existing="resume", sidecars=True)
    assert report.ok and report.partial_writes_removed == 3 and report.stale_sidecars_removed == 1
    assert files_under(to) == {"cats/a.png", "cats/a.txt", "b.png", "manifest.csv", "cats/.tmp-mine.tmp"}
    AsSftp.clear_instance_cache()


def test_resume_on_s3_takes_sizes_and_checksums_from_one_listing_and_downloads_nothing_it_settles(
        tmp_path: Path) -> None:
    """A --resume into S3 sent a HEAD for every file and downloaded every one of its size to compare bytes: resuming
    an export of a million images read most of them back. DIR is listed once; a file whose listed ETag is the MD5 of
    the bytes to write is kept with no request of its own; one of another size or checksum is written; only a file
    whose ETag is no MD5 (a multipart upload's) is read back, and kept when its bytes are the same."""
    from tests.s3util import moto_s3_logged

    make_output(str(tmp_path / "out"), [image(f"c/{i}.jpg", i, txt=f"cap {i}") for i in range(12)])
    local = tmp_path / "local"
    export_images(tmp_path / "out", local, sidecars=True)
    with moto_s3_logged("files") as (client, so, log):
        to = "s3://files/images"

        def requests(method: str) -> list[str]:  # of DIR's files (not the manifest's, not DIR's own look or listing)
            return sorted(path for m, path, _ in log.requests if m == method and path.startswith("/files/images/")
                          and "manifest.csv" not in path)

        assert export_images(tmp_path / "out", to, storage_options=so, sidecars=True).written == 12
        # c/0.png: another image's bytes of its size; c/1.txt: other bytes of its size; c/2.png: gone; c/3.png: whole,
        # uploaded in parts (its ETag '<hex>-1' is no MD5 of its bytes)
        other = (local / "c/0.png").read_bytes()[::-1]
        client.put_object(Bucket="files", Key="images/c/0.png", Body=other)
        client.put_object(Bucket="files", Key="images/c/1.txt", Body=b"cap X")
        client.delete_object(Bucket="files", Key="images/c/2.png")
        upload = client.create_multipart_upload(Bucket="files", Key="images/c/3.png")["UploadId"]
        part = client.upload_part(Bucket="files", Key="images/c/3.png", UploadId=upload, PartNumber=1,
                                  Body=(local / "c/3.png").read_bytes())
        client.complete_multipart_upload(Bucket="files", Key="images/c/3.png", UploadId=upload,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
        assert "-" in client.head_object(Bucket="files", Key="images/c/3.png")["ETag"]
        log.requests.clear()
        report = export_images(tmp_path / "out", to, storage_options=so, sidecars=True, existing="resume")
        assert report.ok and (report.written, report.present) == (2, 10)
        assert (report.sidecars_written, report.sidecars_present) == (1, 11)
        # read back: c/3.png (no MD5 listed) and the two of their size whose listed MD5 is another's (an ETag under
        # SSE-KMS is no MD5 of the bytes: never taken for "other bytes" unread); s3fs's read asks the size first
        read = ["/files/images/c/0.png", "/files/images/c/1.txt", "/files/images/c/3.png"]
        assert requests("GET") == read and requests("HEAD") == read  # were 23 and 47: every file of its size
        assert requests("PUT") == ["/files/images/c/0.png", "/files/images/c/1.txt", "/files/images/c/2.png"]
        assert sum(m == "GET" and p == "/files" for m, p, _ in log.requests) <= 3  # DIR listed once (and looked at)
        for rel in ("c/0.png", "c/1.txt", "c/2.png", "c/3.png"):
            assert client.get_object(Bucket="files", Key=f"images/{rel}")["Body"].read() == (local / rel).read_bytes()


def test_resume_reads_back_only_the_files_a_listed_md5_cannot_settle(tmp_path: Path, monkeypatch) -> None:
    """A store listing GCS's md5Hash (base64) for its objects, but none for a composite one (stood in for by a memory
    file system), and one whose listing has sizes alone: a --resume asks neither for a file's size, and reads back
    only the files of their size that no listed MD5 settles."""
    import base64
    import hashlib
    import importlib

    from fsspec.implementations.memory import MemoryFileSystem

    asked: list[tuple[str, str]] = []

    class Listed(MemoryFileSystem):
        protocol = ("listedmem",)
        md5 = True

        @classmethod
        def _strip_protocol(cls, path):  # noqa: ANN001, ANN206 - fsspec's signature
            path = path[len("listedmem://"):] if isinstance(path, str) and path.startswith("listedmem://") else path
            return super()._strip_protocol(path)

        def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):  # noqa: ANN001, ANN201
            found = super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
            if detail and self.md5:
                for name, info in found.items():
                    if info["type"] == "file" and not name.endswith("c/3.png"):  # a composite object: no md5Hash
                        info["md5Hash"] = base64.b64encode(hashlib.md5(self.store[name].getvalue()).digest()).decode()
            return found

        def cat_file(self, path, *args, **kwargs):  # noqa: ANN001, ANN201
            if "manifest" not in path:  # not the manifest's own write
                asked.append(("read", self._strip_protocol(path)))
            return super().cat_file(path, *args, **kwargs)

        def size(self, path):  # noqa: ANN001, ANN201
            if "manifest" not in path:  # the manifest's write asks its temporary copy's size
                asked.append(("size", self._strip_protocol(path)))
            return super().size(path)

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "listedmem", Listed)
    make_output(str(tmp_path / "out"), [image(f"c/{i}.jpg", i) for i in range(6)])
    to = "listedmem://export-listed-test/images"
    try:
        assert export_images(tmp_path / "out", to).written == 6
        Listed().pipe_file("/export-listed-test/images/c/1.png", b"cut short")
        asked.clear()
        report = export_images(tmp_path / "out", to, existing="resume")
        assert report.ok and (report.written, report.present) == (1, 5)
        assert asked == [("read", "/export-listed-test/images/c/3.png")]
        Listed.md5 = False  # sizes alone: each file of its size is read back, none is asked its size
        asked.clear()
        assert export_images(tmp_path / "out", to, existing="resume").present == 6
        assert sorted(asked) == [("read", f"/export-listed-test/images/c/{i}.png") for i in range(6)]
    finally:
        MemoryFileSystem().rm("/export-listed-test", recursive=True)
