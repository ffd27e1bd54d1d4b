"""The Parquet reads of the driver (the record of the inputs, a part file it rewrites, a Parquet input the planning
compares with its rows) run on the calling thread. On Arrow's thread pools, reading from a Python file object, they
let go of its bytes as late as the interpreter's exit, and one aborted a dry run there that had printed its whole
report (SIGABRT, 'terminate called without an active exception'). A thread never started cannot: the test counts
the process's threads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.changes import InputRecord, write_record
from tests.jobutil import image_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_the_drivers_parquet_reads_start_no_thread(tmp_path) -> None:
    out = tmp_path / "out"
    write_record(str(out), {}, InputRecord("/in", {"a.png": ("files", "v1"), "b.tar": ("tar", "v2")}))
    part = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"id": ["a.png", "b.png"], "cls": [3, 4]}).replace_schema_metadata({"k": "v"}), part)
    (tmp_path / "in").mkdir()
    images = pa.table({"image": [image_bytes(8, 8, i) for i in range(3)], "label": [0, 1, 2]})
    pq.write_table(images, tmp_path / "in" / "t.parquet", row_group_size=2)
    # A fresh interpreter: Arrow's pools are process-wide, and threads another test started would hide new ones.
    program = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
import fsspec
from pipeline.changes import read_record
from pipeline.output import _read_part
from pipeline.sources import discover, read_unit

started, last = {{}}, set(os.listdir("/proc/self/task"))

def count(name):
    global last
    now = set(os.listdir("/proc/self/task"))
    started[name], last = len(now - last), now

record = read_record({str(out)!r}, {{}}, "/in")
count("record of the inputs")
table = _read_part(fsspec.filesystem("file"), {str(part)!r})
count("part file")
(unit,) = discover({str(tmp_path / "in")!r})
labels = [r["meta"]["label"] for r in read_unit(unit, in_memory_bytes=1) if r["kind"] == "image"]
count("Parquet input")
print(json.dumps({{"started": started, "stamps": record.stamps, "rows": table.to_pylist(), "labels": labels,
                  "metadata": {{k.decode(): v.decode() for k, v in table.schema.metadata.items()}}}}))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["stamps"] == {"a.png": ["files", "v1"], "b.tar": ["tar", "v2"]}
    assert seen["rows"] == [{"id": "a.png", "cls": 3}, {"id": "b.png", "cls": 4}]
    assert seen["metadata"]["k"] == "v"  # the file's own metadata comes with it, for the rewrite to keep
    assert seen["labels"] == [0, 1, 2]
    assert seen["started"] == {"record of the inputs": 0, "part file": 0, "Parquet input": 0}
