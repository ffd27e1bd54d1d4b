"""The export tool's behaviours that a mutation audit of pipeline/export.py and pipeline/export_cli.py found no test
holding: each test here fails with one such change made (named in its docstring) and passes without it. The outputs
are test_export's (the job's own writer, no model, no Ray)."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import pipeline.export as export
from pipeline.export import (
    FAILURES_KEPT,
    ExportError,
    export_images,
    export_path,
    manifest_columns,
    report_lines,
    resolve_collisions,
)
from pipeline.export_cli import build_parser, main
from tests.jobutil import image_bytes
from tests.test_export import (
    files_under,
    image,
    make_output,
    manifest_rows,
    pixels,
    progress_of_a_run_that_starts,
    stored_images,
)


def not_png(id_: str, seed: int) -> dict:
    """The record of a row whose image bytes are a JPEG, not the PNG data/ holds (a foreign or damaged output)."""
    record = image(id_, seed)
    record["png"] = image_bytes(6, 7, seed, "JPEG")
    return record


# --- names --------------------------------------------------------------------------------------------------------


def test_a_name_of_exactly_255_bytes_is_kept_and_one_of_256_is_shortened(tmp_path) -> None:
    """`_fit` shortening names of 255 bytes (`<` for `<=`): a name every disk takes was given a digest."""
    fits, over = "x" * 251 + ".jpg", "x" * 252 + ".jpg"
    assert export_path(fits) == ("x" * 251 + ".png", False)
    name, escaped = export_path(over)
    assert escaped and len(name.encode()) == 255 and name != "x" * 252 + ".png"
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(fits, 1)])
    report = export_images(out, to)
    assert report.ok and report.escaped == 0 and (to / ("x" * 251 + ".png")).read_bytes() == stored_images(out)[fits]


def test_a_parquet_row_id_is_a_folder_only_when_its_row_is_a_number() -> None:
    """A file named 'x.parquet#notes.jpg' (a '#' in a file name) was put in a folder 'x.parquet' as if it were a row
    of x.parquet (the `row.isdigit()` test dropped)."""
    assert export_path("d/x.parquet#notes.jpg") == ("d/x.parquet#notes.png", False)
    assert export_path("d/x.parquet#12") == ("d/x.parquet/12.png", False)


def test_an_id_whose_own_name_is_another_ids_folder_moves(tmp_path) -> None:
    """`a.png` (its own name) kept `a.png` though `a.png/b.jpg` needs a folder of that name (the keeper chosen without
    `not folder`): a disk holds one of the two, so one image failed."""
    ids = ["a.png", "a.png/b.jpg", "c.png"]
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(id_, i) for i, id_ in enumerate(ids)])
    report = export_images(out, to)
    rows = {row["id"]: row["path"] for row in manifest_rows(to)}
    assert report.ok and report.written == 3 and report.renamed == 1
    assert rows["a.png/b.jpg"] == "a.png/b.png" and rows["c.png"] == "c.png" and rows["a.png"] != "a.png"
    for id_, path in rows.items():
        assert (to / path).read_bytes() == stored_images(out)[id_]


def test_resolve_collisions_never_gives_a_path_that_an_entry_keeps() -> None:
    """docs/api.md's resolve_collisions: a new name is one no path in `entries` holds. Without the check against the
    entries' own paths (`_fold(c) not in groups`), `a.jpg` was moved to `a.jpg.png`, which the id `a.jpg.png` keeps
    (the export passes `taken` as well, so only a caller of the function met it)."""
    entries = [("a.jpg", "a.png"), ("a.png", "a.png"), ("a.jpg.png", "a.jpg.png"), ("a.jpg.jpg", "a.jpg.png")]
    moved = resolve_collisions(entries)
    kept = {path.lower() for id_, path in entries if id_ not in moved}
    assert kept == {"a.png", "a.jpg.png"}
    assert not {path.lower() for path in moved.values()} & kept
    assert len({path.lower() for path in moved.values()}) == len(moved) == 2


# --- the manifest -------------------------------------------------------------------------------------------------


def test_a_column_holding_bytes_in_a_struct_or_list_is_left_out_and_names_stay_unique() -> None:
    """A struct or list holding bytes (an input's annotation with a mask) went into the manifest, where a CSV or JSON
    line cannot hold bytes: the manifest failed. And an input with both `path` and `input_path` columns got two
    columns named input_path (the rename tried once, not until free)."""
    schema = pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary())])), ("path", pa.string()),
                        ("input_path", pa.string()), ("ann", pa.struct([("mask", pa.binary()), ("n", pa.int32())])),
                        ("masks", pa.list_(pa.binary())), ("label", pa.int64())])
    columns, left_out = manifest_columns([schema])
    assert left_out == ["ann", "masks"]
    names = [name for name, _ in columns]
    assert names[:2] == ["id", "path"] and len(set(names)) == len(names)
    assert dict(columns) == {"id": "id", "path": None, "input_input_path": "path", "input_path": "input_path",
                             "label": "label"}


def test_a_jsonl_manifest_is_strict_json_for_an_unchanged_images_infinite_psnr(tmp_path) -> None:
    """An image the purification left unchanged has psnr_vs_input_db inf: written as the bare `Infinity`, which is no
    JSON (jq, JSON.parse and Go's encoding/json refuse the line)."""
    out, to = tmp_path / "out", tmp_path / "images"
    unchanged = image("a.jpg", 1)
    unchanged["psnr_vs_input_db"] = math.inf
    make_output(str(out), [unchanged, image("b.jpg", 2)])
    assert export_images(out, to, manifest="jsonl").ok

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    lines = [json.loads(line, parse_constant=refuse) for line in (to / "manifest.jsonl").read_text().splitlines()]
    assert {line["id"]: line["psnr_vs_input_db"] for line in lines} == {"a.jpg": "inf", "b.jpg": 32.0}


def test_a_parquet_inputs_decimal_and_duration_columns_are_written_in_the_manifest(tmp_path) -> None:
    """A Parquet input's columns keep their Arrow types in data/ (docs/job.md): a decimal column (a price), a duration
    or a struct holding a decimal made the manifest fail ("Object of type Decimal is not JSON serializable"), exit
    status 1, and --resume failed the same way each time. Such a value is its text, in the CSV and the JSON lines."""
    out = tmp_path / "out"
    make_output(str(out), [image("t.parquet#0", 1, price=decimal.Decimal("1.50"), wait=datetime.timedelta(seconds=3),
                                 box={"w": decimal.Decimal("2.5"), "n": 1})])
    csv_report = export_images(out, tmp_path / "csv")
    assert csv_report.ok and csv_report.manifest_error is None
    (row,) = manifest_rows(tmp_path / "csv")
    assert (row["price"], row["wait"], json.loads(row["box"])) == ("1.50", "0:00:03", {"w": "2.5", "n": 1})
    jsonl_report = export_images(out, tmp_path / "jsonl", manifest="jsonl")
    assert jsonl_report.ok and jsonl_report.manifest_error is None
    (line,) = (tmp_path / "jsonl" / "manifest.jsonl").read_text().splitlines()
    assert {k: v for k, v in json.loads(line).items() if k in ("price", "wait", "box")} == {
        "price": "1.50", "wait": "0:00:03", "box": {"w": "2.5", "n": 1}}


# --- re-encoding ----------------------------------------------------------------------------------------------------


def test_an_mpo_input_without_an_extension_is_exported_as_jpeg(tmp_path) -> None:
    """A tar key whose input was an MPO (a camera's JPEG holding more than one picture) took .png with --format
    input, not the .jpg its format is written as."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("s.tar/k", 1, "MPO")])
    assert export_images(out, to, image_format="input").ok
    assert files_under(to) == {"s.tar/k.jpg", "manifest.csv"}
    with Image.open(to / "s.tar/k.jpg") as im:
        assert im.format == "JPEG"


def few_colours_png() -> bytes:
    """An 8x8 PNG of four colours, none of them in a web palette's 216."""
    a = np.zeros((8, 8, 3), np.uint8)
    a[:4, :4], a[4:, :4], a[:4, 4:], a[4:, 4:] = (10, 200, 37), (250, 3, 99), (77, 77, 78), (1, 2, 3)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_gif_keeps_the_colours_of_an_image_of_256_or_fewer_and_pgm_pbm_are_grey_and_one_bit(tmp_path) -> None:
    """--help: "to GIF keeps 256 colours, to .pgm/.pbm grey / 1-bit". A GIF written through Pillow's default palette
    (convert("P"): 216 web colours) changed every colour here; a .pgm written from RGB was a colour PPM (P6) under a
    grey image's name."""
    out, to = tmp_path / "out", tmp_path / "images"
    records = [image(id_, i) for i, id_ in enumerate(["g.gif", "p.pgm", "b.pbm", "c.ppm"])]
    for record in records:
        record["png"] = few_colours_png()
    make_output(str(out), records)
    assert export_images(out, to, image_format="input").ok
    stored = pixels(few_colours_png())
    assert np.array_equal(pixels((to / "g.gif").read_bytes()), stored)
    assert np.array_equal(pixels((to / "c.ppm").read_bytes()), stored)
    for name, mode, magic in (("p.pgm", "L", b"P5"), ("b.pbm", "1", b"P4"), ("c.ppm", "RGB", b"P6")):
        assert (to / name).read_bytes()[:2] == magic
        with Image.open(to / name) as im:
            assert im.mode == mode
    with Image.open(io.BytesIO(few_colours_png())) as im:
        grey = np.asarray(im.convert("L"))
    with Image.open(to / "p.pgm") as im:
        assert np.array_equal(np.asarray(im), grey)


# --- rows that cannot be exported, and memory -----------------------------------------------------------------------


def test_bytes_that_are_not_png_are_a_failed_row_not_a_png_file(tmp_path) -> None:
    """Without the PNG signature check, a row holding other bytes (a JPEG) was written under a .png name as they are,
    and counted written: a file whose name lies about its format, exit status 0."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [not_png("bad.jpg", 1), image("good.jpg", 2)])
    report = export_images(out, to)
    assert not report.ok and (report.written, report.failed) == (1, 1)
    assert report.failures == [("bad.jpg", "ValueError: the row's image is not PNG bytes")]
    assert files_under(to) == {"good.png", "manifest.csv"}
    assert [row["id"] for row in manifest_rows(to)] == ["good.jpg"]


def test_the_first_failed_rows_are_named_and_the_rest_counted(tmp_path) -> None:
    """FAILURES_KEPT failed rows are named, the others counted ("... and 2 more rows"): `<=` for `<` named one more."""
    n = FAILURES_KEPT + 2
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [not_png(f"{i:02d}.jpg", i) for i in range(n)])
    report = export_images(out, to, manifest="none")
    assert report.failed == n and len(report.failures) == FAILURES_KEPT and report.written == 0
    lines = report_lines(report)
    assert sum(line.startswith("failed: ") for line in lines) == FAILURES_KEPT + 1
    assert "failed: ... and 2 more rows" in lines and f"(0 written, {n} failed)" in lines[-1]


def test_rows_are_read_a_batch_at_a_time(tmp_path, monkeypatch) -> None:
    """The module's docstring: the images are read one part file at a time, a batch of rows at once. Read as one
    table (every image of a part file decoded into Python at once) the export's memory grew with the part file."""
    batches: list[int] = []
    real = export._export_rows

    def counted(rows, *args, **kwargs):
        batches.append(len(rows))
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(export, "BATCH_ROWS", 3)
    monkeypatch.setattr(export, "_export_rows", counted)
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(10)])
    report = export_images(out, to)
    assert report.ok and report.written == 10 and len(manifest_rows(to)) == 10
    assert batches == [3, 3, 3, 1]


# --- refusals and warnings ------------------------------------------------------------------------------------------


def test_a_to_inside_the_outputs_rejects_folder_is_refused(tmp_path) -> None:
    """DIR inside rejects/ was let through (only data/ and the output itself were refused): a reader of the rejects
    would meet the images among their part files."""
    out = tmp_path / "out"
    make_output(str(out), [image("a.jpg", 1)])
    with pytest.raises(ExportError, match="is inside its rejects/ folder"):
        export_images(out, out / "rejects" / "images")
    assert not (out / "rejects" / "images").exists()


def test_an_output_a_run_began_writing_during_the_export_is_warned_of(tmp_path) -> None:
    """Without the check at the end, an export whose output a run rewrote meanwhile (its summary changed) said
    nothing: its files may mix two runs' images."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image(f"{i}.jpg", i) for i in range(3)])

    report = export_images(out, to, progress=progress_of_a_run_that_starts(out))
    assert report.written == 3
    (warning,) = report.warnings
    assert f"output {out} changed during the export" in warning and "status complete -> running" in warning
    assert 'existing="resume"' in warning
    assert export_images(out, tmp_path / "again", force=True, progress=None).warnings[0].startswith(
        f"warning: output {out} is not complete")


# --- the command line -----------------------------------------------------------------------------------------------


def test_storage_that_refuses_access_is_one_line_and_status_2(tmp_path, capsys, monkeypatch) -> None:
    """--help: status 2 for "storage that refuses access". A listing of data/ refused (S3's AccessDenied, an
    OSError) ended in a traceback when the command line caught only JobError and ValueError."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)])

    def refused(*args, **kwargs):
        raise PermissionError(13, "Access Denied", f"{out}/data")

    monkeypatch.setattr(export, "list_parts", refused)
    assert main(["--output", str(out), "--to", str(to), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Access Denied" in err and err.count("\n") == 1


def test_resume_keeps_the_files_already_there_and_overwrite_writes_them_again(tmp_path, capsys) -> None:
    """--resume and --overwrite swapped (or taken for one another) still exported every image; what tells them
    apart is whether a file already there with its bytes is written again."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1), image("b.jpg", 2)])
    flags = ["--output", str(out), "--to", str(to), "--no-progress"]
    assert main(flags) == 0
    capsys.readouterr()
    assert main([*flags, "--resume"]) == 0
    assert "exported 2 of 2 images to" in (last := capsys.readouterr().out) and "(0 written, 2 already there)" in last
    assert main([*flags, "--overwrite"]) == 0
    assert "(2 written)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--overwrite", "--resume"], ["--out", "{out}"]])
def test_flags_that_contradict_or_are_abbreviated_are_refused(tmp_path, capsys, argv: list[str]) -> None:
    """--overwrite with --resume (which wins?) and an abbreviated flag (--out for --output: a later flag of that start
    would change what it means) are refused with status 2, before anything is written."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)])
    given = ["--output", str(out)] if argv[0] != "--out" else []
    with pytest.raises(SystemExit) as stop:
        main([*given, "--to", str(to), "--no-progress", *(a.format(out=out) for a in argv)])
    assert stop.value.code == 2 and not to.exists()
    assert "error: " in capsys.readouterr().err


def test_the_command_lines_jpeg_quality_is_95_unless_given_as_its_help_says(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    make_output(str(out), [image("cats/a.jpg", 1)])
    help_text = " ".join(build_parser().format_help().split())
    assert "JPEG quality from 1 to 100 for --format input (default 95)" in help_text
    assert main(["--output", str(out), "--to", str(tmp_path / "cli"), "--no-progress", "--format", "input"]) == 0
    export_images(out, tmp_path / "q95", image_format="input", jpeg_quality=95)
    export_images(out, tmp_path / "q90", image_format="input", jpeg_quality=90)
    cli = (tmp_path / "cli" / "cats/a.jpg").read_bytes()
    assert cli == (tmp_path / "q95" / "cats/a.jpg").read_bytes() != (tmp_path / "q90" / "cats/a.jpg").read_bytes()


@pytest.mark.parametrize("id_, path", [
    ("cats/a.jpg", "DIR/cats/a.png"), ("shard-0001.tar/000123", "DIR/shard-0001.tar/000123.png"),
    ("a.zip/x/y.jpg", "DIR/a.zip/x/y.png"), ("t.parquet#3", "DIR/t.parquet/3.png"), ("a:b.jpg", "a%3Ab.png"),
    ("CON.jpg", "%43ON.png"),
])
def test_the_names_the_help_shows_are_the_names_the_export_gives(id_: str, path: str) -> None:
    """--help's examples of where an id goes (its lines broken anywhere, a long path across two)."""
    shown = re.sub(r"/\s+", "/", " ".join(build_parser().format_help().split()))
    assert f"{id_} -> {path}" in shown
    assert export_path(id_)[0] == path.removeprefix("DIR/")


def test_the_helps_exit_statuses_say_a_manifest_that_could_not_be_written_is_1(tmp_path, capsys, monkeypatch) -> None:
    """--help gave status 0 for "every purified image is in DIR" and named no manifest under 1, yet an export whose
    images are all in DIR but whose manifest could not be written ends with status 1 (docs/job.md)."""
    out, to = tmp_path / "out", tmp_path / "images"
    make_output(str(out), [image("a.jpg", 1)])
    (to / "manifest.csv").mkdir(parents=True)  # a folder where the manifest goes: it cannot be written
    assert main(["--output", str(out), "--to", str(to), "--no-progress", "--overwrite"]) == 1
    assert "the manifest could not be written" in capsys.readouterr().err
    statuses = " ".join(build_parser().format_help().split("exit status:")[1].split())
    zero, one = statuses.split(" 1 ")[0], statuses.split(" 1 ")[1].split(" 2 ")[0]
    assert "manifest" in zero and "the manifest could not be written" in one


def test_the_helps_defaults_are_the_parsers() -> None:
    """--help's "(default ...)" for --workers, --format and --manifest against what the parser gives when they are
    not given (a default changed in one place and not the other)."""
    text = " ".join(build_parser().format_help().split())
    args = build_parser().parse_args(["--output", "o", "--to", "d"])
    assert f"(default {args.workers};" in text and f"(default {args.jpeg_quality})" in text
    assert f"under .{args.format} names (lossless, nothing re-encoded; the default)" in text
    assert f"DIR/manifest.{args.manifest} (default)" in text
    assert (args.workers, args.format, args.manifest, args.overwrite, args.resume) == (8, "png", "csv", False, False)
