"""Seconds the job spends on two kinds of hostile input whose cost was once out of proportion to their size.

    python bench/hostile_inputs_bench.py                      # both, at their default sizes
    python bench/hostile_inputs_bench.py --columns 20000 --zeros-mib 200

- wide part files: the end-of-run column check (`pipeline.output.unify_output_types`) over two part files of
  `--columns` columns each, no column shared (a .json sidecar's keys become columns). It was quadratic in the
  columns; it is linear now.
- zero padding: reading a .tar.gz whose one image is followed by `--zeros-mib` MiB of zeros (a few KB compressed)
  through the job's tar reader, both passes. tarfile reads zero blocks one at a time; the reader now checks the rest
  a MiB at a time once it has gone 1 MiB of them.
Nothing here is asserted; tests/test_hostile_inputs.py checks what these inputs give.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wide_part_files(folder: Path, columns: int) -> float:
    """Seconds the end-of-run column check takes over two part files of `columns` columns each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.output import unify_output_types

    (folder / "data").mkdir()
    for name in "ab":
        table = {"id": pa.array([name]), **{f"{name}{i}": pa.array([i]) for i in range(columns)}}
        pq.write_table(pa.table(table), folder / "data" / f"part-{name}.parquet")
    started = time.perf_counter()
    unify_output_types(str(folder), {})
    return time.perf_counter() - started


def zero_padded_tar_gz(folder: Path, zeros_mib: int) -> tuple[float, int]:
    """Seconds the job's reader takes over a .tar.gz of one image and `zeros_mib` MiB of zeros; its compressed size."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from pipeline.sources import discover, read_unit

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("0001.png")
        info.size = len(png.getvalue())
        archive.addfile(info, io.BytesIO(png.getvalue()))
    data = gzip.compress(tar.getvalue() + b"\0" * (zeros_mib * 2**20), compresslevel=9)
    (folder / "z.tar.gz").write_bytes(data)
    (unit,) = discover(str(folder))
    started = time.perf_counter()
    kinds = [record["kind"] for record in read_unit(unit)]
    seconds = time.perf_counter() - started
    assert kinds.count("image") == 1, kinds  # the reader still gives the image (a sanity check, not a measurement)
    return seconds, len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--columns", type=int, default=3000, help="columns in each of the two part files")
    parser.add_argument("--zeros-mib", type=int, default=200, help="MiB of zeros after the tar's one image")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as wide, tempfile.TemporaryDirectory() as zeros:
        seconds = wide_part_files(Path(wide), args.columns)
        print(f"end-of-run column check, 2 part files x {args.columns:,} columns: {seconds:.2f} s")
        seconds, size = zero_padded_tar_gz(Path(zeros), args.zeros_mib)
        print(f"tar reader, one image + {args.zeros_mib} MiB of zeros ({size / 1024:.0f} KB gzip): {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
