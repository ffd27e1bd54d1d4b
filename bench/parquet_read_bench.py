"""How much memory and time the job's Parquet reader needs for one large row group.

    python bench/parquet_read_bench.py                 # 300 cells of 1 MiB in one row group, both page layouts
    python bench/parquet_read_bench.py --cells 100 --cell-kb 2048

Two layouts of the same cells: Arrow's default writer (a page closes only every 1,024 values, so the row group is
one page) and pages of one cell each (`write_batch_size=1`, as a careful writer, or this job's part files with about
8 cells a page, makes them). Each file is read through the job's reader (`pipeline.sources.read_unit`, streamed from
disk: the file is larger than --in-memory-mb) and, for reference, with pyarrow's defaults (the whole column chunk in
one read), each in a fresh process so that the peak RSS is that read's alone, less what the imports took.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_file(path: Path, cells: int, cell_bytes: int, one_page_per_cell: bool) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, cell_bytes, dtype=np.uint8).tobytes()
    table = pa.table({"image": [blob[: cell_bytes - i] for i in range(cells)]})
    extra = {"write_batch_size": 1} if one_page_per_cell else {}
    pq.write_table(table, path, row_group_size=cells, compression="none", **extra)


def peak_rss_mb() -> float:
    """This process's peak RSS since it started: VmHWM belongs to its own address space, where getrusage's ru_maxrss
    carries the parent's peak over a fork (the parent wrote hundreds of MB of cells)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def read_one(path: str, how: str) -> None:
    """Read every cell of `path` (in this process) and print the cells, the peak RSS the read added to what the
    imports took, and the time."""
    import pyarrow.parquet as pq

    from pipeline.sources import discover, read_unit

    imported = peak_rss_mb()
    start = time.perf_counter()
    if how == "job":
        (unit,) = discover(path)
        n = sum(1 for r in read_unit(unit, in_memory_bytes=1) if r.get("kind") == "image")
    else:
        n = sum(batch.num_rows for batch in pq.ParquetFile(path).iter_batches(batch_size=8))
    print(f"{n}\t{peak_rss_mb() - imported:.0f}\t{time.perf_counter() - start:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=300, help="cells in the row group")
    p.add_argument("--cell-kb", type=int, default=1024, help="size of each cell in KiB")
    p.add_argument("--read-one", nargs=2, metavar=("PATH", "HOW"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.read_one:
        read_one(*args.read_one)
        return 0
    mb = args.cells * args.cell_kb / 1024
    print(f"one row group of {args.cells} cells of {args.cell_kb} KiB ({mb:.0f} MiB), read cell by cell\n")
    print("| Pages | Reader | Cells | Peak RSS added by the read (MB) | Time (s) |")
    print("| --- | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for layout, one_each in (("one page (Arrow's default writer)", False), ("a page per cell", True)):
            path = Path(tmp) / f"{'small' if one_each else 'one'}-pages" / "t.parquet"
            path.parent.mkdir()
            write_file(path, args.cells, args.cell_kb * 1024, one_each)
            for how, name in (("job", "the job's (1 MiB buffered reads)"), ("plain", "pyarrow defaults, 8 rows a batch")):
                out = subprocess.run([sys.executable, __file__, "--read-one", str(path), how], check=True,
                                     capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                n, peak, secs = out.stdout.strip().splitlines()[-1].split("\t")
                print(f"| {layout} | {name} | {n} | {peak} | {secs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
