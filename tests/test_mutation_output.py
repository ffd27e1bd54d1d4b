"""Mutation audit of pipeline/output.py (the output folder: part-file indexes, damaged parts, superseded rows,
deduplication, column types, where the output may lie): behaviour that hand-made mutants changed without any test
noticing, and what they found. No Ray, no subprocess: each test builds an output's part files by hand and calls the
check a run makes."""

from __future__ import annotations

import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output import deduplicate_output

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


# --- the end-of-run check ---

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
