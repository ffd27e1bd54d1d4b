"""Counts on the command line are written with thousands separators, every one of them: the dry run said
'12632 images to read' and '10000 image files' beside sizes with units ('25.0 MiB'), and the run's summary line and
progress line wrote their counts bare too. Now '12,632 images to read', 'read 12,632, purified 12,000, ...',
'images: 12,632/12,632 (100 %) ...', and the notes on hidden, changed and gone inputs alike."""

from __future__ import annotations

import copy
import io
import re
import tarfile
from pathlib import Path

from pipeline.changes import changed_warning, gone_note, refreshed_note
from pipeline.cli import _print_run_summary, main, print_plan
from pipeline.plan import plan_job
from pipeline.progress import progress_bar
from pipeline.sources import hidden_note
from pipeline.sources.folder_metadata import unmatched_note
from tests.jobutil import small_job_argv, small_job_config

# a count of four digits or more written without separators ('12632'), not part of a longer word or number
_BARE = re.compile(r"(?<![\w.,/-])\d{4,}(?![\w.,])")


def _input(tmp_path: Path, files: int = 1_200, keys: int = 1_100) -> None:
    """`files` image files and a tar shard of `keys` keys (the dry run reads neither's bytes: listed, and the shard's
    headers counted)."""
    root = tmp_path / "in"
    root.mkdir()
    for n in range(files):
        (root / f"{n:05d}.png").write_bytes(b"png")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in range(keys):
            info = tarfile.TarInfo(f"{n:05d}.png")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"png"))
    (root / "s.tar").write_bytes(buf.getvalue())


def _counted_lines(text: str, *uris: str) -> list[str]:
    """The lines of `text` that say counts: the model's and settings' lines aside (a sha256, a step count), the URIs
    (a temporary folder's number) left out."""
    for uri in uris:
        text = text.replace(uri, "URI")
    lines = text.splitlines()
    return [line for line in lines if not line.startswith(("model:", "  checkpoint", "  sha256", "settings:"))
            and not re.match(r"  \d+ px model", line)]


def test_the_dry_runs_counts_have_thousands_separators(tmp_path, model, capsys) -> None:
    _input(tmp_path)
    assert main([*small_job_argv(tmp_path, model), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1,200 image files to read (0 already done, skipped), 1 tar shard (" in out
    assert "; 1,100 images to read), " in out  # was '1100 images to read'
    lines = _counted_lines(out, str(tmp_path / "in"), str(tmp_path / "out"))
    assert [line for line in lines if _BARE.search(line)] == []


def test_every_count_of_a_full_dry_run_report_has_them(tmp_path, model, capsys) -> None:
    """Each line the dry run can print, with every count in the thousands."""
    _input(tmp_path, files=3, keys=3)
    report = copy.deepcopy(plan_job(small_job_config(tmp_path, model), dry_run=True).describe())
    out, inp = report["output"], report["input"]
    out.update(state="incremental", purified=12_632, rejected=1_500, rejects_to_retry=2_000,
               rejects_to_retry_image_files=1_200, rejects_to_retry_in_containers=700)
    inp.update(image_files_to_read=10_000, image_files_already_done=2_345, tar_shards=1_001,
               tar_keys={"to_read": 12_632, "already_done": 50_000, "unknown_why": None}, parquet_files=1_002,
               arrow_files=1_003, tfrecord_files=1_004, tfrecord_records=123_456, zip_files=1_005,
               containers_already_done=1_006, read_tasks=1_007, unsized=1_008, streamed=1_009,
               image_files_over_max_image_mb=1_010, excluded_output_files=1_011, hidden_files_skipped=1_012,
               hidden_files_examples=["_x.png"],
               partitions={"keys": {"date": 1_013}, "files": 1_014, "files_outside": 1_015},
               folder_metadata={"files_joined": 1_016, "image_files_joined": 1_017, "earlier_rejects_removed": 1_018,
                                "archive_files_joined": 1_019, "files_rejected": 1_020,
                                "rows_without_image_file": 1_021, "rows_without_image_file_examples": ["m.csv: 1.png"]},
               parquet_rows_without_image={"rows": 1_022, "files": 1_023, "examples": [["t.parquet", 1_024]]})
    print_plan(report, str(tmp_path / "in"), str(tmp_path / "out"))
    text = capsys.readouterr().out
    for said in ("it holds 12,632 purified, 1,500 rejected", "1,900 of the output's 2,000 rejects would be read again",
                 "(1,200 image files, 700 in tar/Parquet/zip files", "; 100 are not in the input",
                 "10,000 image files to read (2,345 already done, skipped), 1,001 tar shards",
                 "12,632 images to read, 50,000 already done, skipped)", "1,004 TFRecord files (123,456 records)",
                 "1,007 read tasks", "1,006 tar shards / Parquet / zip files were read whole",
                 "1,012 hidden entries", "date (1,013 values)", "1,015 of the 1,014 input files",
                 "1,016 metadata files joined to 1,017 image files", "1,019 inside zip archives",
                 "1,021 rows of image-folder metadata files", "1,022 rows of 1,023 Parquet files", "t.parquet (1,024)",
                 "1,008 files of unknown size", "1,009 tar/Parquet files over"):
        assert said in text, said
    lines = _counted_lines(text, str(tmp_path / "in"), str(tmp_path / "out"))
    assert [line for line in lines if _BARE.search(line)] == []


def test_the_runs_summary_lines_have_them(tmp_path, capsys) -> None:
    config = small_job_config(tmp_path, "model.pt")
    summary = {"status": "complete", "model": {"note": "m", "canvas_size": 32},
               "this_run": {"read": 12_632, "purified": 12_000, "rejected": 632, "skipped_already_done": 1_000,
                            "wall_s": 1.5, "images_per_s": 8421.3, "psnr_vs_input_db": {"mean": None},
                            "downscaled": {"images": 1_234, "max_factor": 2.0}, "hidden_skipped": 1_100,
                            "hidden_skipped_examples": ["_x.png"],
                            "rejects_retried": {"earlier_rejects": 2_000, "purified_now": 1_500, "rejected_again": 1_200,
                                                "containers_now_read_whole": 0},
                            "refreshed": {"inputs": 1_300, "rows_replaced": 4_000, "rows_kept": 1_001},
                            "unpurified_image_columns": {"mask": 5_000}},
               "changed_inputs": {"image_files_purified": 1_400, "examples": ["a.png"], "gone_image_files": 1_600,
                                  "gone_examples": ["b.png"]},
               "output_totals": {"purified": 13_000, "rejected": 632}}
    _print_run_summary(config, summary)
    said = capsys.readouterr()
    assert said.out.startswith("read 12,632, purified 12,000, rejected 632, skipped (already done) 1,000 in 1.5 s")
    assert "holds 13,000 purified and 632 rejected in all" in said.out
    assert "retried 2,000 earlier rejects: 1,500 purified now, 1,200 rejected again" in said.out
    assert "refreshed 1,300 input(s) changed in place (--refresh-changed): 4,000 old row(s) replaced by new ones, " \
           "1,001 kept" in said.out
    assert "1,100 hidden entries" in said.out
    assert "warning: 1,234 image(s) were larger" in said.err and "mask (5,000 rows)" in said.err
    assert "warning: 1,400 image file(s) purified earlier" in said.err and "note: 1,600 image file(s)" in said.err
    lines = _counted_lines(said.out + said.err, str(tmp_path / "in"), str(tmp_path / "out"))
    assert [line for line in lines if _BARE.search(line)] == []


def test_the_progress_line_and_the_notes_have_them() -> None:
    log = io.StringIO()
    bar = progress_bar(12_632, "images", "img", log)
    bar.set_postfix(rejected=1_234, read_tasks="1,000/1,200")
    bar.update(12_632)
    bar.close()
    assert log.getvalue().startswith("images: 12,632/12,632 (100 %) in ")
    assert log.getvalue().rstrip().endswith(", rejected 1,234, read_tasks 1,000/1,200")
    assert hidden_note(1_234, ["_a.png"]).startswith("1,234 hidden entries")
    assert unmatched_note(1_234, ["m.csv: 1.png"]).startswith("1,234 rows of image-folder metadata files")
    changed = {"image_files_purified": 1_001, "image_files_rejected": 1_002, "containers": 1_003,
               "container_rows": 12_632, "examples": ["a.png"], "refreshed_inputs": 1_004, "refreshed_rows": 1_005,
               "refreshed_examples": ["a.png"], "gone_image_files": 1_006, "gone_containers": 1_007,
               "gone_container_rows": 1_008, "gone_examples": ["b.png"]}
    text = " ".join(note(changed) for note in (changed_warning, refreshed_note, gone_note))
    for said in ("1,001 image file(s) purified earlier", "1,002 image file(s) rejected earlier",
                 "1,003 tar/Parquet/zip file(s) replaced since", "of their 12,632 rows",
                 "would purify 1,004 changed input(s) again, replacing their 1,005 row(s)",
                 "1,006 image file(s) and 1,007 tar/Parquet/zip file(s) (1,008 rows)"):
        assert said in text, said
    assert not _BARE.search(text)


def test_the_dry_run_says_shards_without_a_size_are_of_unknown_size_not_0_bytes() -> None:
    """A web server that sends no Content-Length lists its shards without a size: the dry run said such a shard
    '(0 bytes; ...)', a size it does not know; a mix says the known part and how many are unknown."""
    from pipeline.cli import _tar_keys

    keys = {"to_read": 1_500, "already_done": 0, "unknown_why": None}

    def said(sized: int, unsized: int) -> str:
        return _tar_keys({"tar_shards": sized + unsized, "tar_bytes": 3 * 2**20 * sized, "tar_shards_unsized": unsized,
                          "tar_keys": keys})

    assert said(0, 2) == " (size unknown; 1,500 images to read)"
    assert said(1, 1_200) == " (3.0 MiB, and 1,200 of unknown size; 1,500 images to read)"
    assert said(2, 0) == " (6.0 MiB; 1,500 images to read)"
