"""How long the planning takes to tell tar shards whose listing changed but whose members are still those their rows
were made from (pipeline.changes.same_members): N WebDataset shards of M samples (a PNG and a .cls label each) on the
local disk, whose rows are in one data/ part file, all of them with a changed listing stamp; each shard grown by a
tenth more samples (appended), of which a share also has one member's bytes changed. Prints the time, the rate and
the process's peak memory; nothing is asserted.

    python bench/same_members_bench.py --shards 100 --members 100 --changed 0.1
"""

from __future__ import annotations

import argparse
import hashlib
import io
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.changes import InputRecord, same_members
from pipeline.sources import ReadUnit


def _png(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _shard(samples: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, (image, label) in samples.items():
            for name, data in ((f"{key}.png", image), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100, help="tar shards, all with a changed stamp (default 100)")
    parser.add_argument("--members", type=int, default=100, help="samples per shard with a row (default 100)")
    parser.add_argument("--changed", type=float, default=0.1, help="share with one member's bytes changed (0.1)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", Path(tmp) / "out"
        root.mkdir()
        (out / "data").mkdir(parents=True)
        images = [_png(i, args.size) for i in range(args.members + args.members // 10 + 1)]  # shared by every shard
        changed = set(range(0, args.shards, max(1, round(1 / args.changed)))) if args.changed > 0 else set()
        rows: dict[str, list] = {"id": [], "source": [], "source_sha256": [], "label": []}
        units = []
        for s in range(args.shards):
            path = root / f"{s:05d}.tar"
            samples = {f"{k:06d}": (images[k], k % 10) for k in range(args.members)}
            for key, (image, label) in samples.items():
                rows["id"].append(f"{path.name}/{key}")
                rows["source"].append(f"{path}:{key}.png")
                rows["source_sha256"].append(hashlib.sha256(image).hexdigest())
                rows["label"].append(label)
            grown = {**samples, **{f"{k:06d}": (images[k], k % 10) for k in range(args.members, len(images))}}
            if s in changed:  # the last sample with a row: other bytes
                grown[f"{args.members - 1:06d}"] = (images[-1], 0)
            path.write_bytes(_shard(grown))
            units.append(ReadUnit("tar", (str(path),), str(root), (path.stat().st_size,), ("l2",), ("now",)))
        pq.write_table(pa.table(rows), out / "data" / "part-0.parquet")
        record = InputRecord(None, {f"{s:05d}.tar": ("tar", "before") for s in range(args.shards)})
        started = time.perf_counter()
        stamps, same = same_members(units, set(rows["id"]), set(), frozenset(), record, {}, str(out), {})
        took = time.perf_counter() - started
        total = sum(unit.sizes[0] for unit in units) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.shards} shards of {args.members} samples, grown by a tenth ({total:.1f} MiB), {len(changed)} with a "
              f"member changed: {same} found the same, {len(stamps) - same} other, in {took:.2f} s "
              f"({args.shards / took:.0f} shards/s, {total / took:.0f} MiB/s); peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
