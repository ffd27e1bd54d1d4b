"""Mutation audit of the command line's newer lines (`cli.print_plan`, `cli._print_run_summary`): the sidecar files'
lines, the tables without an image column and the earlier rejects a run removed say their counts with thousands
separators as every other count does, and are said only when there is something to say."""

from __future__ import annotations

import copy
import re

from pipeline.cli import _print_run_summary, print_plan
from pipeline.plan import plan_job
from tests.jobutil import small_job_config
from tests.test_count_separators import _BARE, _counted_lines, _input


def _report(tmp_path, model) -> dict:
    _input(tmp_path, files=3, keys=3)
    return copy.deepcopy(plan_job(small_job_config(tmp_path, model), dry_run=True).describe())


def test_the_sidecar_and_table_lines_of_the_dry_run_have_separators(tmp_path, model, capsys) -> None:
    report = _report(tmp_path, model)
    examples = [f"t{n}.parquet" for n in range(5)]
    report["input"].update(sidecar_files=12_632, sidecar_rejects_removed=1_234,
                           tables_without_images={"files": 1_500, "examples": examples})
    print_plan(report, str(tmp_path / "in"), str(tmp_path / "out"))
    text = capsys.readouterr().out
    assert "  12,632 sidecar files beside image files, named as theirs" in text
    assert "  1,234 earlier rejects of files paired as sidecars now" in text
    # the examples named, and how many more: 'and 1495 more' was written bare
    assert ("  warning: 1,500 Parquet / Arrow IPC files without an image column (t0.parquet, t1.parquet, t2.parquet, "
            "t3.parquet, t4.parquet and 1,495 more): tables, not images") in text
    lines = _counted_lines(text, str(tmp_path / "in"), str(tmp_path / "out"))
    assert [line for line in lines if _BARE.search(line)] == []


def test_those_lines_are_not_said_of_nothing(tmp_path, model, capsys) -> None:
    report = _report(tmp_path, model)
    report["input"].update(sidecar_files=0, sidecar_rejects_removed=0,
                           tables_without_images={"files": 2, "examples": ["a.parquet", "b.parquet"]})
    print_plan(report, str(tmp_path / "in"), str(tmp_path / "out"))
    text = capsys.readouterr().out
    assert "sidecar" not in text
    # every table named: no 'and 0 more'
    assert "without an image column (a.parquet, b.parquet): tables" in text


def test_the_runs_removed_rejects_line_has_separators_and_is_said_only_of_some(tmp_path, capsys) -> None:
    config = small_job_config(tmp_path, "model.pt")
    summary = {"status": "complete", "model": {"note": "m", "canvas_size": 32},
               "this_run": {"read": 0, "purified": 0, "rejected": 0, "skipped_already_done": 12_632, "wall_s": 1.0,
                            "images_per_s": 0.0, "psnr_vs_input_db": {"mean": None}, "downscaled": {"images": 0},
                            "stale_rejects_removed": 1_234},
               "changed_inputs": {}, "output_totals": {"purified": 12_632, "rejected": 0}}
    _print_run_summary(config, summary)
    out = capsys.readouterr().out
    assert re.search(r"^removed 1,234 earlier rejects that this run's reading made untrue", out, re.M)
    summary["this_run"]["stale_rejects_removed"] = 0
    _print_run_summary(config, summary)
    assert "earlier reject" not in capsys.readouterr().out


def test_the_changed_inputs_notes_counts_of_sidecars_and_compared_files_have_separators() -> None:
    from pipeline.changes import changed_warning, compared_note

    warned = changed_warning({"image_files_purified": 12_632, "image_files_metadata_changed": 1_234,
                              "examples": ["a.png"]})
    assert "12,632 image file(s) purified earlier (data/ holds their earlier version, purified; 1,234 of them for " \
           "their row of an image-folder metadata file or their sidecar files" in warned
    compared = compared_note({"image_files_compared": 12_632, "image_files_same_bytes": 12_000,
                              "containers_compared": 1_001, "containers_same_members": 1_000})
    assert ("the planning read 12,632 image file(s) (12,000 with the bytes their rows were made from) and 1,001 "
            "tar/Parquet/zip file(s) (1,000 giving every member of their rows as it was)") in compared
    assert not _BARE.search(warned + compared)


def test_a_stopped_runs_words_and_the_shards_progress_have_separators() -> None:
    from types import SimpleNamespace

    from pipeline import job
    from pipeline.sources import HiddenSkipped
    from pipeline.stopped_run import StoppedCount

    phrase = job._stopped_phrase(StoppedCount(12_632, 1_234, 1_001), {"purified": 13_000, "rejected": 2_000},
                                 HiddenSkipped())
    assert phrase == ("this run wrote 12,632 purified and 1,234 rejected (1,001 part files), so the output now holds "
                      "13,000 purified and 2,000 rejected")
    tally = job.RunTally(HiddenSkipped())
    tally.rejected, tally.units_read = 1_500, 1_000
    plan = SimpleNamespace(units=[None] * 1_200)
    assert job._progress_postfix(SimpleNamespace(total=None), plan, tally) == {"rejected": 1_500,
                                                                               "read_tasks": "1,000/1,200"}
