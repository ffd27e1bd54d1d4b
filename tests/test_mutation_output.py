"""Mutation audit of pipeline/output.py (the output folder: part-file indexes, damaged parts, superseded rows,
deduplication, column types, where the output may lie): behaviour that hand-made mutants changed without any test
noticing, and what they found (85 mutants: 56 killed by the existing tests, 25 by these, 4 equivalent). No Ray, no
subprocess: each test builds an output's part files by hand and calls the check a run makes."""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

import pipeline.storage as storage
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.output import (
    check_output_location,
    clear_output,
    deduplicate_output,
    input_inside_written_folder,
    output_files_inside_input,
    output_inside_input,
    output_inside_written_folder,
    run_history_path,
    unify_output_types,
    write_json,
)
from pipeline.plan import plan_job
from pipeline.stages import REJECTS_SCHEMA
from tests.jobutil import image_bytes

T0 = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)
STAMP = pa.timestamp("us", tz="UTC")


def _part(out: Path, folder: str, name: str, columns: dict[str, pa.Array | list]) -> Path:
    (out / folder).mkdir(parents=True, exist_ok=True)
    path = out / folder / f"part-{name}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _reject(out: Path, name: str, ids: list[str], at: list[datetime.datetime | None] | None = None,
            time_type: pa.DataType = STAMP) -> Path:
    """A rejects/ part file of this version's columns (rejected_at of `time_type`; all T0 unless `at`)."""
    at = at if at is not None else [T0] * len(ids)
    return _part(out, "rejects", name, {
        "id": ids, "source": [f"/in/{i}" for i in ids], "source_sha256": ["0" * 64] * len(ids),
        "stage": ["read"] * len(ids), "error": [f"error of {i}" for i in ids],
        "rejected_at": pa.array(at, STAMP).cast(time_type, safe=False)})


def _files(out: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (out / folder).glob("part-*.parquet"))


# --- _runs/: each run's summary, named so that the names sort by when the runs started ---

def test_run_summaries_of_one_second_sort_by_their_start_not_their_run_id() -> None:
    start = datetime.datetime(2026, 12, 4, 13, 13, 26, tzinfo=datetime.UTC).timestamp()
    first = run_history_path("/out", start + 0.1, "ffffffff-run-a")
    second = run_history_path("/out/", start + 0.6, "00000000-run-b")
    assert first == "/out/_runs/20261204T131326.100000Z-ffffffff.json"
    assert sorted([second, first]) == [first, second]


# --- the output's JSON records ---

def test_a_record_whose_temporary_cannot_be_deleted_stops_the_run_before_any_work(monkeypatch) -> None:
    # an object store (no rename: copy, then delete the temporary) that lets the job write but not delete: the job's
    # first write says so at once, rather than every later write leaving a hidden copy behind
    fs = MemoryFileSystem()
    real_rm = MemoryFileSystem.rm_file

    def no_delete(self, path):
        if "/.tmp-" in path:
            raise PermissionError(13, "Access Denied", path)
        return real_rm(self, path)

    monkeypatch.setattr(MemoryFileSystem, "rm_file", no_delete)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not a warning: an error
            with pytest.raises(PermissionError):
                write_json("memory://audit-out/_job.json", {"settings": {}}, {})
    finally:
        monkeypatch.undo()
        fs.rm("/audit-out", recursive=True)


# --- the end-of-run check's counts ---

def test_a_refresh_resumed_after_its_new_rows_landed_counts_them_refreshed(tmp_path) -> None:
    # the killed --refresh-changed run wrote x's new row (part-new); the run that finishes it wrote no file itself
    out = tmp_path / "out"
    _part(out, "data", "old", {"id": ["x", "y"], "n": [1, 2]})
    _part(out, "data", "new", {"id": ["x"], "n": [3]})
    rows = deduplicate_output(str(out), {}, written=(), journal={"x": ["data/part-old.parquet"],
                                                                  "y": ["data/part-old.parquet"]})
    assert pq.read_table(out / "data" / "part-old.parquet").column("id").to_pylist() == ["y"]
    assert (rows.refreshed, rows.refresh_left, rows.duplicates_removed, rows.purified) == (1, frozenset({"y"}), 0, 2)


def test_a_rejects_file_rewritten_for_a_duplicate_is_not_counted_as_upgraded(tmp_path) -> None:
    out = tmp_path / "out"
    _reject(out, "a", ["x", "y"])
    _reject(out, "b", ["x"], at=[T0 + datetime.timedelta(days=1)])
    rows = deduplicate_output(str(out), {})
    assert _files(out, "rejects") == ["part-a.parquet", "part-b.parquet"]
    assert pq.read_table(out / "rejects" / "part-a.parquet").column("id").to_pylist() == ["y"]
    assert (rows.duplicates_removed, rows.rejects_files_upgraded, rows.rejected) == (1, 0, 2)


def test_a_reject_made_untrue_by_this_run_is_counted_stale_not_duplicate(tmp_path) -> None:
    out = tmp_path / "out"
    _reject(out, "a", ["s.tar#unreadable", "r.png"])
    rows = deduplicate_output(str(out), {}, resolved={"s.tar#unreadable"})
    assert pq.read_table(out / "rejects" / "part-a.parquet").column("id").to_pylist() == ["r.png"]
    assert (rows.duplicates_removed, rows.stale_rejects_removed, rows.rejected) == (0, 1, 1)


def test_a_duplicate_file_whose_delete_landed_before_its_error_is_gone_not_a_failed_check(tmp_path, monkeypatch) -> None:
    # the storage deleted it and the answer was lost (a dropped connection): the retry finds no file, which is success
    out = tmp_path / "out"
    _part(out, "data", "a", {"id": ["x"]})
    _part(out, "data", "b", {"id": ["x"]})
    real_rm, failed = LocalFileSystem.rm_file, []

    def rm_then_drop(self, path):
        real_rm(self, path)
        if not failed:
            failed.append(path)
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(LocalFileSystem, "rm_file", rm_then_drop)
    monkeypatch.setattr(storage, "backoff", lambda *a, **k: 0.0)
    rows = deduplicate_output(str(out), {})
    assert failed and (rows.duplicates_removed, rows.purified) == (1, 1) and _files(out, "data") == ["part-a.parquet"]


def test_a_doubled_reject_whose_rejected_at_another_tool_wrote_as_text_loses_to_a_timed_row(tmp_path) -> None:
    # the text is no time this program can rank (and may not parse as one): such a row counts as one without a time
    out = tmp_path / "out"
    _part(out, "rejects", "a", {"id": ["x", "y"], "error": ["old", "y's"], "rejected_at": ["yesterday", "2026-12-01"]})
    _reject(out, "b", ["x"])
    rows = deduplicate_output(str(out), {})
    assert pq.read_table(out / "rejects" / "part-a.parquet").column("id").to_pylist() == ["y"]
    assert pq.read_table(out / "rejects" / "part-b.parquet").column("error").to_pylist() == ["error of x"]
    assert (rows.duplicates_removed, rows.rejected) == (1, 2)


# --- column types: data/ alone, and only the files that are still there ---

def test_retyping_after_the_check_gives_data_columns_to_data_files_only(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out, "data", "a", {"id": ["x"], "label": [3]})
    _part(out, "data", "b", {"id": ["y"], "label": ["cat"]})
    _reject(out, "r", ["z"])
    rows = deduplicate_output(str(out), {})
    assert unify_output_types(str(out), {}, rows.data_schemas) == {"label": "string"}
    assert pq.read_schema(out / "rejects" / "part-r.parquet").names == REJECTS_SCHEMA.names
    assert pq.read_table(out / "data" / "part-a.parquet").column("label").to_pylist() == ["3"]


def test_retyping_after_the_check_leaves_out_a_file_it_removed_as_all_duplicates(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out, "data", "a", {"id": ["x"], "label": [3]})
    _part(out, "data", "b", {"id": ["x"], "extra": ["only here"]})  # x again: the whole file goes
    _part(out, "data", "c", {"id": ["y"], "label": ["cat"]})
    rows = deduplicate_output(str(out), {})
    assert rows.duplicates_removed == 1 and _files(out, "data") == ["part-a.parquet", "part-c.parquet"]
    assert unify_output_types(str(out), {}, rows.data_schemas) == {"label": "string"}
    assert _files(out, "data") == ["part-a.parquet", "part-c.parquet"]
    assert pq.read_schema(out / "data" / "part-c.parquet").names == ["id", "label"]


# --- rejects/: rejected_at as this version writes it, whatever another writer left ---

def test_a_rejected_at_column_of_nulls_only_is_given_the_time_type(tmp_path) -> None:
    out = tmp_path / "out"
    _reject(out, "a", ["x"])
    _part(out, "rejects", "b", {"id": ["y"], "source": ["/in/y"], "source_sha256": ["0" * 64], "stage": ["read"],
                                "error": ["e"], "rejected_at": pa.nulls(1)})
    rows = deduplicate_output(str(out), {})
    assert rows.rejects_files_upgraded == 1
    for name in _files(out, "rejects"):
        assert pq.read_schema(out / "rejects" / name).field("rejected_at").type == STAMP, name


def test_times_in_nanoseconds_are_kept_to_the_microsecond(tmp_path) -> None:
    out = tmp_path / "out"
    at = pa.array([1_764_579_600_123_456_789], pa.timestamp("ns", tz="UTC"))
    _part(out, "rejects", "a", {"id": ["x"], "source": ["/in/x"], "source_sha256": ["0" * 64], "stage": ["read"],
                                "error": ["e"], "rejected_at": at})
    rows = deduplicate_output(str(out), {})
    assert rows.rejects_files_upgraded == 1
    column = pq.read_table(out / "rejects" / "part-a.parquet").column("rejected_at")
    assert column.type == STAMP and column.cast(pa.int64()).to_pylist() == [1_764_579_600_123_456]


def test_a_rejects_column_of_bytes_beside_text_is_made_text_with_its_bytes_escaped(tmp_path) -> None:
    # a column another tool added to rejects/ files: bytes in one (not UTF-8), text in another
    out = tmp_path / "out"
    _part(out, "rejects", "a", {"id": ["x"], "detail": pa.array([b"\xffraw"], pa.binary())})
    _part(out, "rejects", "b", {"id": ["y"], "detail": ["text"]})
    deduplicate_output(str(out), {})
    a = pq.read_table(out / "rejects" / "part-a.parquet")
    assert a.schema.field("detail").type == pa.string() and a.column("detail").to_pylist() == ["\\xffraw"]
    assert pq.read_table(out / "rejects" / "part-b.parquet").column("detail").to_pylist() == ["text"]


def test_retyping_a_data_file_changes_its_column_types_and_keeps_its_schema_metadata(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    table = pa.table({"id": ["x"], "label": [3]}).replace_schema_metadata({b"origin": b"kept"})
    pq.write_table(table, out / "data" / "part-a.parquet")
    _part(out, "data", "b", {"id": ["y"], "label": ["cat"]})
    assert unify_output_types(str(out), {}) == {"label": "string"}
    schema = pq.read_schema(out / "data" / "part-a.parquet")
    assert schema.field("label").type == pa.string() and schema.metadata[b"origin"] == b"kept"


def test_a_refresh_that_makes_the_only_purified_input_a_reject_leaves_no_empty_data_folder(tmp_path) -> None:
    # a.png, purified before, was replaced in place by bytes that are no image: --refresh-changed rejects it now, and
    # its old row goes; an empty data/ read as a table with no columns (pd.read_parquet(OUTPUT/data)['id']: KeyError)
    out = tmp_path / "out"
    _part(out, "data", "old", {"id": ["a.png"], "n": [1]})
    _reject(out, "new", ["a.png"])
    rows = deduplicate_output(str(out), {}, written=["rejects/part-new.parquet"],
                              journal={"a.png": ["data/part-old.parquet"]})
    assert (rows.purified, rows.rejected, rows.refreshed, rows.duplicates_removed) == (0, 1, 1, 0)
    assert not (out / "data").exists()
    assert pq.read_table(out / "rejects").column("id").to_pylist() == ["a.png"]


# --- where the output may lie ---

def test_an_output_under_a_file_is_refused_naming_that_file(tmp_path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(JobError, match=f"cannot write to output .*: {tmp_path / 'a-file'} is a file, not a folder"):
        check_output_location(str(tmp_path / "a-file" / "out"), {})


@pytest.mark.parametrize("denied", ["write", "search"])
def test_an_output_in_a_folder_this_user_may_not_write_in_or_enter_is_refused(tmp_path, monkeypatch, denied) -> None:
    # the permission stubbed: the suite may run as root, whom only a read-only mount refuses
    locked, real = tmp_path / "locked", os.access
    locked.mkdir()
    bit = os.W_OK if denied == "write" else os.X_OK
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: not (os.path.abspath(path) == str(locked)
                                                                       and mode & bit) and real(path, mode, *a, **k))
    with pytest.raises(JobError, match=f"{locked} is not writable by this user"):
        check_output_location(str(locked / "out"), {})
    check_output_location(str(tmp_path / "free" / "out"), {})  # its nearest folder there: tmp_path


def test_an_output_that_is_an_object_on_a_store_is_refused() -> None:
    # an object store holds an object 'run' and objects under 'run/' side by side: the check must ask
    fs = MemoryFileSystem()
    fs.pipe_file("/audit-bucket/run", b"a file")
    try:
        with pytest.raises(JobError, match="is a file; give a folder or prefix"):
            check_output_location("memory://audit-bucket/run", {})
        check_output_location("memory://audit-bucket/other", {})
    finally:
        fs.rm("/audit-bucket", recursive=True)


# --- --overwrite ---

def test_overwrite_clears_every_record_of_the_output_and_keeps_the_lease_and_the_users_files(tmp_path) -> None:
    out = tmp_path / "out"
    job_files = ["_summary.json", "_job.json", "data/part-a.parquet", "rejects/part-b.parquet",
                 "_containers/containers.json", "_inputs/stamps.parquet", "_runs/20261204T131326.123456Z-1a2b3c4d.json",
                 "_refresh/journal.json"]
    for name in [*job_files, "_lease.json", "notes.txt", "more/kept.png"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    clear_output(str(out), {})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["_lease.json", "more", "more/kept.png", "notes.txt"]


# --- an input and an output that nest ---

def test_an_input_inside_the_outputs_rejects_folder_is_refused_and_one_beside_it_is_not(tmp_path) -> None:
    out = tmp_path / "out"
    said = input_inside_written_folder(str(out / "rejects" / "batch"), str(out), {})
    assert said is not None and "lies inside the rejects/ folder the job writes" in said
    # folders whose names only begin like the job's: the user's
    for beside in ("database", "rejects-2025", "data.old"):
        assert input_inside_written_folder(str(out / beside), str(out), {}) is None, beside


def test_only_the_outputs_own_folders_are_left_out_of_an_input_it_lies_in(tmp_path) -> None:
    root = tmp_path / "set"
    out = root / "out"
    written, own = output_inside_input(str(root), str(out), {}), output_files_inside_input(str(root), str(out), {})
    for path in (out / "data" / "part-a.parquet", out / "rejects" / "part-b.parquet"):
        assert written(str(path)) and own(str(path)), path
    for path in (out / "database" / "a.png", out / "rejects-2025" / "b.png", out / "_runs-old" / "c.png",
                 root / "data" / "d.png"):
        assert not written(str(path)) and not own(str(path)), path


def test_an_output_inside_the_data_folder_of_an_output_at_the_top_of_a_store_is_refused() -> None:
    # an output at the top of a bucket (its records at the root): another run's output under its data/ is inside it
    fs = MemoryFileSystem()
    fs.pipe_file("/_job.json", b"{}")
    try:
        said = output_inside_written_folder("memory://data/run2", {})
        assert said is not None and "lies inside the data/ folder of another run's output (memory:///)" in said
        assert output_inside_written_folder("memory://elsewhere/run2", {}) is None
    finally:
        fs.rm_file("/_job.json")


def test_overwrite_deletes_a_killed_writes_temporary_in_data_and_refuses_a_users_file(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    out = tmp_path / "out"
    _part(out, "data", "a", {"id": ["a.png"]})
    (out / "data" / ".tmp-0123abcd-part-b.parquet").write_bytes(b"half a part file")  # a write killed before its move
    config = JobConfig(input=str(tmp_path / "in"), output=str(out), overwrite=True)
    assert plan_job(config, dry_run=True).describe()["output"]["state"] == "overwrite"
    (out / "data" / "notes.txt").write_text("the user's")
    with pytest.raises(JobError, match="--overwrite would delete .*data/, which holds 1 file"):
        plan_job(config, dry_run=True)


def test_the_jobs_own_files_in_an_output_that_is_the_input_folder_are_its_records_and_nothing_else(tmp_path) -> None:
    # they are not counted as the user's hidden inputs skipped; the user's files there are read
    root = tmp_path / "set"
    own = output_files_inside_input(str(root), str(root), {})
    for name in ("_summary.json", "_job.json", "_lease.json", ".tmp-0123abcd-_lease.json", "_inputs/stamps.parquet",
                 "_containers/containers.json", "_runs/20261204T131326.123456Z-1a2b3c4d.json", "_refresh/journal.json",
                 "data/part-a.parquet", "rejects/.tmp-0123abcd-part-b.parquet"):
        assert own(str(root / name)), name
    for name in ("a.png", ".hidden.png", "notes/_lease.json", "sub/_summary.json", "_inputs.png"):
        assert not own(str(root / name)), name


def test_an_output_that_is_a_link_to_nothing_is_refused_as_such_not_called_a_file(tmp_path) -> None:
    """A local --output (or a folder above it) that is a symbolic link whose target is gone (an unmounted volume, a
    moved folder) was refused as 'is a file, not a folder', which sent the user looking for a file."""
    from pipeline.errors import JobError
    from pipeline.output import check_output_location

    (tmp_path / "out").symlink_to(tmp_path / "gone")
    for out in (tmp_path / "out", tmp_path / "out" / "run1"):
        with pytest.raises(JobError) as err:
            check_output_location(str(out), {})
        assert str(err.value) == (f"cannot write to output {out}: {tmp_path / 'out'} is a symbolic link to "
                                  f"{tmp_path / 'gone'}, which does not exist"), err.value
