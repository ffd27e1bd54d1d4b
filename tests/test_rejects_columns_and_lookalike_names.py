"""Two ways an output lost something without saying so.

1. rejects/ with an older version's files, which lack `rejected_at`, beside this version's: pandas, pyarrow.dataset
   and pq.read_table take one file's columns, so `pd.read_parquet("OUT/rejects")` had no rejected_at at all when the
   first file by name was an older version's. The end-of-run check now gives every rejects file the column.
2. Look-alike names inside one container: a tar member whose name is not UTF-8 (latin-1 b'caf\\xe9.png', id
   's.tar/caf\\xe9') beside one literally named 'caf\\xe9.png' gave two images one id (the run then failed as
   "inconsistent", its output holding the id twice); zip members 'a/b.png' and 'a\\b.png' were one path, and the
   earlier was dropped unread. Each now gives one reject naming both members.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.output import deduplicate_output
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit, reject_record
from pipeline.stages import REJECTS_SCHEMA, _rejects_table
from tests.jobutil import image_bytes, small_job_config, tar_bytes

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OLD_REJECTS = pa.schema([f for f in REJECTS_SCHEMA if f.name != "rejected_at"])  # before db809d4


def _old_rejects(folder, name: str, ids: list[str], reason: str = "old reason") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "source": ids, "source_sha256": [None] * len(ids), "stage": ["read"] * len(ids),
                             "error": [reason] * len(ids)}, schema=OLD_REJECTS), folder / f"part-{name}.parquet")


def _new_rejects(folder, name: str, ids: list[str]) -> None:
    records = [{**reject_record(i, i, "new reason", "decode"), "rejected_at": T0} for i in ids]
    pq.write_table(_rejects_table(records), folder / f"part-{name}.parquet")


READERS = {
    "pandas": lambda folder: pd.read_parquet(folder),
    "pyarrow.dataset": lambda folder: pads.dataset(folder).to_table().to_pandas(),
    "pq.read_table": lambda folder: pq.read_table(folder).to_pandas(),
}


# --- 1. rejects/ files of two versions ---

@pytest.mark.parametrize("old_first", [True, False])
def test_every_reader_of_rejects_sees_rejected_at_after_the_end_of_run_check(tmp_path, old_first: bool) -> None:
    folder = tmp_path / "out" / "rejects"
    _old_rejects(folder, "0aa" if old_first else "fff", ["a", "b"])
    _new_rejects(folder, "fff" if old_first else "0aa", ["c"])
    rows = deduplicate_output(str(tmp_path / "out"), {})
    for name, read in READERS.items():
        frame = read(folder).sort_values("id")
        assert list(frame.columns) == REJECTS_SCHEMA.names, name
        assert list(frame["id"]) == ["a", "b", "c"] and list(frame["error"]) == ["old reason"] * 2 + ["new reason"]
        # the older version's rows have no time (null), this version's keeps its own
        assert frame["rejected_at"].isna().tolist() == [True, True, False] and frame["rejected_at"].iloc[2] == T0, name
    assert all(pq.read_schema(p).equals(REJECTS_SCHEMA) for p in folder.iterdir())
    assert (rows.rejected, rows.duplicates_removed, rows.rejects_files_upgraded) == (3, 0, 1)


def test_an_output_of_only_older_rejects_files_is_given_the_column_too(tmp_path) -> None:
    # the next run to add a reject would otherwise mix the two schemas again
    folder = tmp_path / "out" / "rejects"
    _old_rejects(folder, "0aa", ["a"])
    _old_rejects(folder, "0bb", ["b"])
    rows = deduplicate_output(str(tmp_path / "out"), {})
    assert [pq.read_schema(p).equals(REJECTS_SCHEMA) for p in sorted(folder.iterdir())] == [True, True]
    assert rows.rejects_files_upgraded == 2
    # done once: a second check rewrites nothing
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert deduplicate_output(str(tmp_path / "out"), {}).rejects_files_upgraded == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_a_file_losing_a_duplicate_is_given_the_column_in_the_same_write(tmp_path) -> None:
    out = tmp_path / "out"
    _old_rejects(out / "rejects", "0aa", ["a", "x"])
    pq.write_table(pa.table({"id": ["x"]}), (out / "data").mkdir(parents=True) or out / "data" / "part-d.parquet")
    _new_rejects(out / "rejects", "fff", ["c"])
    rows = deduplicate_output(str(out), {})
    frame = pd.read_parquet(out / "rejects").sort_values("id")
    assert list(frame["id"]) == ["a", "c"] and "rejected_at" in frame
    assert (rows.duplicates_removed, rows.rejected, rows.rejects_files_upgraded) == (1, 2, 1)


def test_times_of_another_unit_or_zone_are_given_this_versions_type_as_the_same_instant(tmp_path) -> None:
    folder = tmp_path / "out" / "rejects"
    folder.mkdir(parents=True)
    naive_ns = pa.array([T0.replace(tzinfo=None)], pa.timestamp("ns"))  # a naive time is read as UTC, as before
    pq.write_table(pa.table({"id": ["a"], "error": ["e"], "rejected_at": naive_ns}), folder / "part-0aa.parquet")
    _new_rejects(folder, "fff", ["c"])
    deduplicate_output(str(tmp_path / "out"), {})
    frame = pq.read_table(folder).to_pandas().sort_values("id")
    assert list(frame["rejected_at"]) == [T0, T0]
    assert pq.read_schema(folder / "part-0aa.parquet").field("rejected_at").type == pa.timestamp("us", tz="UTC")


def test_a_rejected_at_that_is_not_a_time_keeps_its_values(tmp_path) -> None:
    # written by another tool: not cast (its values could be lost), the missing columns still added
    folder = tmp_path / "out" / "rejects"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "error": ["e"], "rejected_at": ["yesterday"]}), folder / "part-0aa.parquet")
    rows = deduplicate_output(str(tmp_path / "out"), {})
    table = pq.read_table(folder / "part-0aa.parquet")
    assert table.column("rejected_at").to_pylist() == ["yesterday"] and table.num_rows == 1
    assert set(REJECTS_SCHEMA.names) <= set(table.column_names)
    assert rows.rejects_files_upgraded == 1


# --- 2. look-alike names inside one container ---

def _latin1_tar(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members, encoding="latin-1")


def _records(tmp_path) -> list[dict]:
    (unit,) = discover(str(tmp_path))
    return list(read_unit(unit))


def test_a_tar_member_not_utf8_and_one_named_with_its_escapes_give_one_reject_naming_both(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(_latin1_tar({"café.png": image_bytes(8, 8, 1), "caf\\xe9.png": image_bytes(8, 8, 2),
                                                   "caf\\xe9.cls": b"3", "ok.png": image_bytes(8, 8, 3)}))
    *records, count = _records(tmp_path)
    ids = [r["id"] for r in records]
    assert sorted(ids) == ["s.tar/caf\\xe9", "s.tar/ok"]  # each id once (was: 's.tar/caf\\xe9' twice, two images)
    (twin,) = [r for r in records if r["id"] == "s.tar/caf\\xe9"]
    assert twin["kind"] == "reject" and twin["stage"] == "read"
    # both members named, told apart by their bytes
    assert "b'caf\\xe9.png'" in twin["error"] and "b'caf\\\\xe9.png'" in twin["error"]
    assert "b'caf\\\\xe9.cls'" in twin["error"] and "rename one" in twin["error"]
    assert (count["n"], count["container"]["records"]) == (2, 2)  # read whole: one record per id


def test_tar_twins_done_in_an_earlier_run_are_one_skipped_id(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(_latin1_tar({"café.png": image_bytes(8, 8, 1), "caf\\xe9.png": image_bytes(8, 8, 2)}))
    (unit,) = discover(str(tmp_path))
    (count,) = list(read_unit(unit, skip_ids={"s.tar/caf\\xe9"}))
    assert (count["n"], count["skipped"], count["container"]["records"]) == (0, 1, 1)


def test_a_tar_of_names_that_are_not_utf8_alone_is_read_as_before(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(_latin1_tar({"café.png": image_bytes(8, 8, 1), "naïve.png": image_bytes(8, 8, 2)}))
    *records, _ = _records(tmp_path)
    assert [(r["kind"], r["id"]) for r in records] == [("image", "s.tar/caf\\xe9"), ("image", "s.tar/na\\xefve")]


def test_zip_members_that_are_one_path_give_one_reject_naming_both(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a/b.png", image_bytes(8, 8, 1))
        archive.writestr("a\\b.png", image_bytes(8, 8, 2))  # some tools write '\\' for '/': the same path
        archive.writestr("c.png", image_bytes(8, 8, 3))
    (tmp_path / "d.zip").write_bytes(buf.getvalue())
    *records, count = _records(tmp_path)
    assert [(r["kind"], r["id"]) for r in records] == [("reject", "d.zip/a/b.png"), ("image", "d.zip/c.png")]
    assert "'a/b.png' and 'a\\\\b.png'" in records[0]["error"]  # was: a/b.png dropped unread, a\b.png purified
    assert count["container"]["records"] == 2


# --- both, in a whole run that resumes an older version's output ---


@pytest.mark.usefixtures("ray_local")
def test_a_run_over_an_older_output_leaves_every_column_readable_and_every_input_accounted_for(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "new.png").write_bytes(image_bytes(8, 8, 1))
    (root / "junk.png").write_bytes(b"not an image")
    (root / "s.tar").write_bytes(_latin1_tar({"café.png": image_bytes(8, 8, 2), "caf\\xe9.png": image_bytes(8, 8, 3),
                                              "ok.png": image_bytes(8, 8, 4)}))
    # an older version's output, its files named to sort first: data/ without original_frames, psnr_vs_input_db
    # and downscale_factor; rejects/ without rejected_at; a run killed before its summary (to resume)
    config = small_job_config(tmp_path, model)
    (out / "data").mkdir(parents=True)
    (out / "_job.json").write_text(json.dumps(plan_job(config).job_record))
    png = image_bytes(8, 8, 9)
    pq.write_table(pa.table({"id": ["old.png"], "image": [{"bytes": png, "path": "old.png"}], "width": [8], "height": [8],
                             "source": ["old.png"], "source_sha256": ["0" * 64], "original_mode": ["RGB"],
                             "original_format": ["PNG"]}), out / "data" / "part-000.parquet")
    _old_rejects(out / "rejects", "000", ["old_bad.png"])
    summary = run_job(config)
    assert summary["status"] == "complete"
    assert summary["output_totals"]["purified"] == 3 and summary["output_totals"]["rejected"] == 3
    assert summary["this_run"]["rejects_files_upgraded"] == 1  # the older version's one rejects file
    for folder, ids in (("data", ["new.png", "old.png", "s.tar/ok"]),
                        ("rejects", ["junk.png", "old_bad.png", "s.tar/caf\\xe9"])):
        schemas = [pq.read_schema(p) for p in (out / folder).glob("part-*.parquet")]
        columns = set().union(*(s.names for s in schemas))
        assert all(set(s.names) == columns for s in schemas), folder
        for name, read in READERS.items():
            frame = read(out / folder)
            assert sorted(frame["id"]) == ids and set(frame.columns) == columns, (folder, name)
    assert {"original_frames", "psnr_vs_input_db", "downscale_factor"} <= set(pq.read_schema(
        next((out / "data").glob("part-000*"))).names)
    rejects = pd.read_parquet(out / "rejects").set_index("id")
    assert pd.isna(rejects.loc["old_bad.png", "rejected_at"]) and pd.notna(rejects.loc["junk.png", "rejected_at"])
    assert "b'caf\\xe9.png'" in rejects.loc["s.tar/caf\\xe9", "error"]
    assert json.loads((out / "_summary.json").read_text())["this_run"]["read"] == 4  # 2 files, 2 ids of the shard
