"""Of two reject rows of one id, the end-of-run check keeps the newer (`rejected_at`), not the first file by name.

Two rows come from a --retry-rejects run killed after writing an input's new reject (today's reason) and before its
end-of-run check removed the old row; the next run, without the flag, wrote neither file, and kept whichever file
sorted first: the old, untrue reason half of the time. Part file names are hashes of their ids, and modification
times are no better (the end-of-run check rewrites old files)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.output as output
from pipeline.job import run_job
from pipeline.output import deduplicate_output
from pipeline.sources import reject_record
from pipeline.stages import _rejects_table
from tests.jobutil import image_bytes, read_output, small_job_config

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
STAMP = pa.timestamp("us", tz="UTC")


def _rejects(out, name: str, rows: dict[str, str], at: datetime | None = None, type_: pa.DataType = STAMP) -> None:
    """A rejects/ part file: id -> reason, each row made at `at` (None: the column left out, as an older version)."""
    folder = out / "rejects"
    folder.mkdir(parents=True, exist_ok=True)
    columns = {"id": list(rows), "error": list(rows.values())}
    if at is not None:
        columns["rejected_at"] = pa.array([at] * len(rows), STAMP).cast(type_)
    pq.write_table(pa.table(columns), folder / f"part-{name}.parquet")


def _kept(out) -> dict[str, str]:
    _, rejects = read_output(str(out))
    assert rejects["id"].is_unique
    return dict(zip(rejects["id"], rejects["error"], strict=True))


# --- an interrupted retry, resumed without the flag ---

def test_the_newer_reject_row_is_kept_though_the_older_file_sorts_first(tmp_path) -> None:
    out = tmp_path / "out"
    _rejects(out, "0aa", {"x": "old reason", "y": "old"}, at=T0)  # the first run's
    _rejects(out, "f00", {"x": "new reason"}, at=T0 + timedelta(days=1))  # the killed --retry-rejects run's
    rows = deduplicate_output(str(out), {}, written=())
    assert _kept(out) == {"x": "new reason", "y": "old"}
    # counted as before: one row removed as a duplicate, two rejects left, nothing retried by this run
    assert (rows.duplicates_removed, rows.rejected, rows.retried_rejected, rows.stale_rejects_removed) == (1, 2, 0, 0)


def test_a_row_with_a_time_wins_over_an_older_versions_row_without_one(tmp_path) -> None:
    # the first run by a version before rejected_at, the interrupted retry by this one
    out = tmp_path / "out"
    _rejects(out, "0aa", {"x": "old reason"})
    _rejects(out, "f00", {"x": "new reason", "z": "new"}, at=T0)
    rows = deduplicate_output(str(out), {})
    assert _kept(out) == {"x": "new reason", "z": "new"}
    assert not (out / "rejects" / "part-0aa.parquet").exists()  # its one row went: the file too
    assert (rows.duplicates_removed, rows.rejected) == (1, 2)


def test_times_stored_in_another_unit_or_without_a_zone_compare_as_instants(tmp_path) -> None:
    # a rejects file rewritten by another tool (pandas writes ns); a naive time is read as UTC
    out = tmp_path / "out"
    _rejects(out, "0aa", {"x": "old reason"}, at=T0, type_=pa.timestamp("ns", tz="UTC"))
    _rejects(out, "f00", {"x": "new reason"}, at=T0 + timedelta(microseconds=1), type_=pa.timestamp("us"))
    deduplicate_output(str(out), {})
    assert _kept(out) == {"x": "new reason"}


def test_this_runs_row_is_kept_whatever_the_times_say(tmp_path) -> None:
    # Runs hold the output one at a time: a row this run wrote is newer than any earlier run's, even where the
    # machine that made it has a clock behind the one that made the older row.
    out = tmp_path / "out"
    _rejects(out, "0aa", {"x": "today"}, at=T0)
    _rejects(out, "f00", {"x": "earlier run"}, at=T0 + timedelta(minutes=5))
    rows = deduplicate_output(str(out), {}, written=["rejects/part-0aa.parquet"], retried={"x"})
    assert _kept(out) == {"x": "today"}
    assert (rows.duplicates_removed, rows.retried_rejected) == (0, 1)


def test_a_data_row_still_wins_over_a_newer_reject(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["x"]}), out / "data" / "part-0.parquet")
    _rejects(out, "0aa", {"x": "old"}, at=T0)
    _rejects(out, "f00", {"x": "new"}, at=T0 + timedelta(days=1))
    rows = deduplicate_output(str(out), {})
    assert read_output(str(out))[1].empty and (rows.purified, rows.rejected, rows.duplicates_removed) == (1, 0, 2)


# --- outputs of older versions, and cost ---

def test_an_older_versions_output_without_the_column_keeps_the_first_file_by_name(tmp_path) -> None:
    out = tmp_path / "out"
    _rejects(out, "a", {"x": "first", "y": "only"})
    _rejects(out, "b", {"x": "second"})
    _rejects(out, "c", {"y": "third"}, at=None)
    rows = deduplicate_output(str(out), {})
    assert _kept(out) == {"x": "first", "y": "only"}
    assert (rows.duplicates_removed, rows.rejected) == (2, 2)
    assert sorted(p.name for p in (out / "rejects").iterdir()) == ["part-a.parquet"]


def test_rows_of_equal_time_keep_the_first_file_by_name(tmp_path) -> None:
    out = tmp_path / "out"
    _rejects(out, "a", {"x": "first"}, at=T0)
    _rejects(out, "b", {"x": "second"}, at=T0)
    deduplicate_output(str(out), {})
    assert _kept(out) == {"x": "first"}


def test_times_are_read_only_from_the_rejects_files_holding_a_doubled_id(tmp_path, monkeypatch) -> None:
    # every run's end-of-run check lists the whole output's ids; the times are one more read, for the rare doubled id
    out = tmp_path / "out"
    for k in range(6):
        _rejects(out, f"{k}", {f"i{k}": "r"}, at=T0)
    read: list[str] = []
    original = output._rejected_at
    monkeypatch.setattr(output, "_rejected_at", lambda fs, path, wanted: read.append(path) or original(fs, path, wanted))
    deduplicate_output(str(out), {})
    assert read == []
    _rejects(out, "9", {"i2": "newer"}, at=T0 + timedelta(seconds=1))
    deduplicate_output(str(out), {})
    assert sorted(p.rsplit("/", 1)[1] for p in read) == ["part-2.parquet", "part-9.parquet"]
    assert _kept(out)["i2"] == "newer"


# --- what the job writes ---

def test_a_rejects_file_has_one_time_type_even_for_rows_without_a_time() -> None:
    made = reject_record("a.png", "a.png", "bad", "decode")
    mixed = _rejects_table([made, {"id": "b.png", "source": "b.png", "stage": "read", "error": "x"}])
    assert mixed.schema.field("rejected_at").type == STAMP
    assert mixed.column("rejected_at").to_pylist() == [made["rejected_at"], None]
    assert _rejects_table([{"id": "b.png", "source": "b.png", "stage": "read", "error": "x"}]).schema.field(
        "rejected_at").type == STAMP  # not Arrow's null type, which a reader could not combine with the others


@pytest.mark.usefixtures("ray_local")
def test_a_run_stamps_its_rejects_and_not_its_data(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "ok.png").write_bytes(image_bytes(8, 8, 1))
    (root / "junk.png").write_bytes(b"not an image")
    before = datetime.now(UTC)
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    after = datetime.now(UTC)
    (data_part,) = (out / "data").glob("part-*.parquet")
    (reject_part,) = (out / "rejects").glob("part-*.parquet")
    assert "rejected_at" not in pq.read_schema(data_part).names
    rejects = pq.read_table(reject_part)
    assert rejects.schema.field("rejected_at").type == STAMP
    (stamp,) = rejects.column("rejected_at").to_pylist()
    assert before <= stamp <= after
    # and pandas users get a zone-aware time
    assert str(read_output(str(out))[1]["rejected_at"].dtype) == "datetime64[us, UTC]"
