"""How fast zip-purify-export writes an output's images as files (pipeline.export.export_images): an output of N small
PNG rows in part files of 512 (the job's own writer, `write_stage`) on the local disk, exported to a local folder,
as stored (--format png) or re-encoded to JPEG (--format input), with --workers threads. Prints rows/s and the
process's peak memory (ru_maxrss) after making the output and after each export (an export's own peak shows where it
is above the first); nothing is asserted.

    python bench/export_bench.py --rows 10000 --workers 1,8
    python bench/export_bench.py --rows 10000 --format input
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.export import export_images
from pipeline.output import JOB_FILE, SUMMARY_FILE, write_json
from pipeline.stages import batch_of, write_stage


def _png(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_output(out: str, rows: int, size: int, folders: int) -> None:
    """An output of `rows` purified images of size x size (ids c<k>/<i>.jpg over `folders` folders)."""
    for start in range(0, rows, 512):
        records = [{"kind": "image", "id": f"c{i % folders}/{i:07d}.jpg", "source": f"/in/{i}.jpg",
                    "source_sha256": f"{i:064x}", "png": _png(i, size), "width": size, "height": size,
                    "meta": {"label": f"c{i % folders}"}, "original_format": "JPEG", "original_mode": "RGB"}
                   for i in range(start, min(rows, start + 512))]
        write_stage(batch_of(records), out, {}, max_rows_per_file=512)
    write_json(f"{out}/{JOB_FILE}", {}, {})
    write_json(f"{out}/{SUMMARY_FILE}", {"status": "complete"}, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10000, help="purified images in the output (default 10000)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--folders", type=int, default=10, help="folders the ids lie in (default 10)")
    parser.add_argument("--format", choices=["png", "input"], default="png", help="as stored, or JPEG (default png)")
    parser.add_argument("--workers", default="8", help="comma-separated --workers values to time (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/out"
        started = time.perf_counter()
        make_output(out, args.rows, args.size, args.folders)
        made = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"output of {args.rows} rows of {args.size}x{args.size} made in {time.perf_counter() - started:.1f} s "
              f"(peak RSS {made:.0f} MiB)")
        for workers in (int(w) for w in args.workers.split(",")):
            to = Path(tmp) / f"images-{workers}"
            started = time.perf_counter()
            report = export_images(out, to, image_format=args.format, workers=workers)
            took = time.perf_counter() - started
            assert report.ok and report.written == args.rows, report
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"--format {args.format} --workers {workers}: {args.rows} files in {took:.2f} s "
                  f"({args.rows / took:,.0f} rows/s), peak RSS so far {peak:.0f} MiB")


if __name__ == "__main__":
    main()
