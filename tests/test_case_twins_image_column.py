"""The dry run's columns differing in case (`plan.column_case_twins`) are the output's columns: a file's image column
is the job's `image` in data/, not a column of its own, so a column of another file spelt as it is, in another case,
has no twin in the output and must not be said to have one."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, small_job_config


def test_an_image_column_is_no_case_twin_of_another_files_column_spelt_as_it_is(tmp_path, model) -> None:
    """a.parquet's and c.arrow's images are in their column `img` (found by that name), b.parquet's in `image`, beside a
    caption column `Img`: the output holds `Img` (b's) alone, so the dry run says no columns differ only in case."""
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"img": [image_bytes(16, 16, 0)], "label": [1]}), inp / "a.parquet")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 1)], "Img": ["a cat"]}), inp / "b.parquet")
    feather.write_feather(pa.table({"img": [image_bytes(16, 16, 2)], "label": [3]}), str(inp / "c.arrow"))
    metas = {}
    for unit in discover(str(inp), {}):
        (record,) = [r for r in read_unit(unit, {}) if r["kind"] == "image"]
        metas[record["id"]] = record["meta"]
    assert metas == {"a.parquet#0": {"label": 1}, "b.parquet#0": {"Img": "a cat"}, "c.arrow#0": {"label": 3}}
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()
    assert described["input"]["columns_differing_in_case"] == []
