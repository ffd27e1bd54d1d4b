"""Seconds the job spends on three kinds of hostile input whose cost was once out of proportion to their size.

    python bench/hostile_inputs_bench.py                      # all three, at their default sizes
    python bench/hostile_inputs_bench.py --columns 20000 --zeros-mib 200 --json-keys 5000

- wide part files: the end-of-run column check (`pipeline.output.unify_output_types`) over two part files of
  `--columns` columns each, no column shared (a .json sidecar's keys become columns). It was quadratic in the
  columns; it is linear now.
- zero padding: reading a .tar.gz whose one image is followed by `--zeros-mib` MiB of zeros (a few KB compressed)
  through the job's tar reader, both passes. tarfile reads zero blocks one at a time; the reader now checks the rest
  a MiB at a time once it has gone 1 MiB of them.
- json fields: a tar shard of `--json-keys` keys whose .json sidecars each hold a caption and a field of their own,
  read, written 512 rows a part file and given the end-of-run check: every field was a column of every part file; past
  1,000 a shard's new fields now go to its `json` column as text.
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


def json_fields_shard(folder: Path, keys: int) -> tuple[float, int, float]:
    """Seconds to read a shard of `keys` keys, each .json sidecar with a field of its own, write it 512 rows a part
    file and give the output the end-of-run check; the columns of a part file then, and the part files' MiB."""
    import io
    import json
    import os
    import tarfile

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.output import unify_output_types
    from pipeline.sources import discover, read_unit
    from pipeline.stages import batch_of, write_stage

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    (folder / "in").mkdir()
    with tarfile.open(folder / "in" / "s.tar", "w") as archive:
        for i in range(keys):
            sidecar = json.dumps({"caption": "x", f"field_{i}": i}).encode()
            for name, data in ((f"{i:06d}.png", png.getvalue()), (f"{i:06d}.json", sidecar)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    (unit,) = discover(str(folder / "in"))
    started = time.perf_counter()
    images = [{**{k: v for k, v in r.items() if k != "data"}, "png": r["data"], "width": 8, "height": 8}
              for r in read_unit(unit) if r["kind"] == "image"]
    for start in range(0, len(images), 512):
        write_stage(batch_of(images[start : start + 512]), str(folder / "out"), {})
    unify_output_types(str(folder / "out"), {})
    seconds = time.perf_counter() - started
    parts = sorted((folder / "out" / "data").iterdir())
    return seconds, pq.ParquetFile(parts[0]).metadata.num_columns, sum(os.path.getsize(p) for p in parts) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--columns", type=int, default=3000, help="columns in each of the two part files")
    parser.add_argument("--zeros-mib", type=int, default=200, help="MiB of zeros after the tar's one image")
    parser.add_argument("--json-keys", type=int, default=5000, help="tar keys whose .json sidecars each add a field")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as wide, tempfile.TemporaryDirectory() as zeros:
        seconds = wide_part_files(Path(wide), args.columns)
        print(f"end-of-run column check, 2 part files x {args.columns:,} columns: {seconds:.2f} s")
        seconds, size = zero_padded_tar_gz(Path(zeros), args.zeros_mib)
        print(f"tar reader, one image + {args.zeros_mib} MiB of zeros ({size / 1024:.0f} KB gzip): {seconds:.2f} s")
    with tempfile.TemporaryDirectory() as fields:
        seconds, columns, mib = json_fields_shard(Path(fields), args.json_keys)
        print(f"tar shard of {args.json_keys:,} keys, a .json field of their own each: read, written and checked in "
              f"{seconds:.2f} s; {columns:,} columns a part file, {mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
