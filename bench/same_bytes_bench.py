"""How long the planning takes to tell image files rewritten with the same bytes (pipeline.changes.same_bytes): N
PNG files on the local disk whose rows are in one data/ part file, all of them with a changed listing stamp (a sync
that touched every file), of which a share was really rewritten. Prints the time and the rate; nothing is asserted.

    python bench/same_bytes_bench.py --files 5000 --changed 0.1
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.changes import InputRecord, same_bytes
from pipeline.sources import ReadUnit


def _png(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=5000, help="image files, all with a changed stamp (default 5000)")
    parser.add_argument("--changed", type=float, default=0.1, help="share really rewritten with other bytes (0.1)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", Path(tmp) / "out"
        root.mkdir()
        (out / "data").mkdir(parents=True)
        ids, digests = [], []
        for i in range(args.files):
            data = _png(i, args.size)
            (root / f"{i}.png").write_bytes(data)
            ids.append(f"{i}.png")
            digests.append(hashlib.sha256(data).hexdigest())
        rewritten = set(range(0, args.files, max(1, round(1 / args.changed)))) if args.changed > 0 else set()
        for i in rewritten:
            (root / f"{i}.png").write_bytes(_png(10**6 + i, args.size))
        pq.write_table(pa.table({"id": ids, "source_sha256": digests}), out / "data" / "part-0.parquet")
        paths = tuple(str(root / name) for name in ids)
        sizes = tuple((root / name).stat().st_size for name in ids)
        unit = ReadUnit("files", paths, str(root), sizes, (), tuple("now" for _ in ids))
        record = InputRecord(None, {name: ("files", "before") for name in ids})
        started = time.perf_counter()
        stamps, same = same_bytes([unit], set(ids), set(), frozenset(), record, str(out), {})
        took = time.perf_counter() - started
        total = sum(sizes) / 2**20
        print(f"{args.files} files ({total:.1f} MiB), {len(rewritten)} rewritten: {same} found the same, "
              f"{len(stamps) - same} other bytes, in {took:.2f} s ({args.files / took:.0f} files/s)")


if __name__ == "__main__":
    main()
