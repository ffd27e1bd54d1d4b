"""How long the record of the inputs' stamps (`OUTPUT/_inputs/stamps.parquet`, pipeline.changes) takes to write and
to read at scale. Every run that writes to an --incremental output writes it whole before it reads any image (and
again at its end after --retry-rejects or --refresh-changed), and reads it during its planning: a scheduled run over
a bucket of N inputs, a few of them new, pays this for N. Prints, per size: the file's size, the wall and CPU
seconds of `write_record` and of `read_record` (best of --repeat), and, for scale, the CPU seconds of building the
record from a listing (`changes.updated_record`, which every such run does too). Nothing is asserted.

    python bench/stamps_bench.py                       # 100000,1000000 stamps, on the local disk
    python bench/stamps_bench.py --sizes 1000000,5000000 --repeat 3

Ids look like a bucket's keys ('shard-0042/class-7/img-00123456.png', about 35 characters), each with a 16-character
content stamp (`sources.content_stamp`), in folders of 1,000, as the listing gives them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from pipeline.changes import ChangedInputs, InputRecord, read_record, record_path, updated_record, write_record
from pipeline.sources import ReadUnit


def _ids(n: int) -> list[str]:
    return [f"shard-{i // 100000:04d}/class-{(i // 1000) % 100}/img-{i:08d}.png" for i in range(n)]


def _timed(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds of `repeat` calls, and the last call's result."""
    wall = cpu = float("inf")
    result = None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="stamps in the record, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="calls of each, the best one printed (default 2)")
    args = parser.parse_args()
    print("| stamps | file MB | write: wall s | CPU s | read: wall s | CPU s | updated_record: CPU s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (int(s) for s in args.sizes.split(",")):
        ids = _ids(n)
        stamps = {id_: ("files", f"{i * 2654435761 % 2**64:016x}") for i, id_ in enumerate(ids)}
        location = "s3://bucket/images"
        record = InputRecord(location, stamps)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            w_wall, w_cpu, _ = _timed(lambda: write_record(out, {}, record), args.repeat)  # noqa: B023
            size = os.path.getsize(record_path(out)) / 1e6
            r_wall, r_cpu, back = _timed(lambda: read_record(out, {}, location), args.repeat)  # noqa: B023
            assert back is not None and len(back.stamps) == n
            root = "/in"
            unit = ReadUnit("files", tuple(f"{root}/{i}" for i in ids), root,
                            contents=tuple(s for _, s in stamps.values()))
            _, u_cpu, _ = _timed(lambda: updated_record(record, location, [unit], ChangedInputs()), 1)  # noqa: B023
        print(f"| {n:,} | {size:.1f} | {w_wall:.2f} | {w_cpu:.2f} | {r_wall:.2f} | {r_cpu:.2f} | {u_cpu:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
