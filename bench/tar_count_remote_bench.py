"""Seconds the dry run's and the progress total's count of a compressed tar shard takes (`tar_count.count_keys`) at its
bound off a local disk, `COMPRESSED_BYTES_REMOTE` (16 MiB), on a local disk, a local web server and a local S3 (moto,
as the tests use it: `pip install -e ".[test]"`).

    python bench/tar_count_remote_bench.py            # three shards of just under 16 MiB, each counted 3 times a store
    python bench/tar_count_remote_bench.py --reps 5

The shards: a .tar.gz of 3 KB random members (JPEG-like: they barely compress) and a .cls each; a .tar.gz of 300-byte
members that compress well (the most keys 16 MiB holds: tarfile's walk, a header at a time, is the cost); a .tar.xz of
3 KB members that compress well. The stores are on this machine, so the download (the count fetches a compressed shard
whole, in one request) costs what a fast network would; the rest is the walk's own time. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.sources import discover  # noqa: E402 - after the path is set
from pipeline.sources.tar_count import COMPRESSED_BYTES_REMOTE, count_keys  # noqa: E402
from tests.s3util import moto_s3  # noqa: E402
from tests.webutil import serving  # noqa: E402

CASES = (("gz", 3000, False), ("gz", 300, True), ("xz", 3000, True))
COMPRESS = {"gz": lambda data: gzip.compress(data, 6), "xz": lambda data: lzma.compress(data, preset=1)}


def _tar(keys: int, member_bytes: int, compressible: bool) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(keys):
            data = (bytes(rng.integers(0, 8, member_bytes, dtype=np.uint8)) if compressible
                    else rng.bytes(member_bytes))
            for name, member in ((f"{k:07d}.jpg", data), (f"{k:07d}.cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(member)
                tar.addfile(info, io.BytesIO(member))
    return buf.getvalue()


def shard(kind: str, member_bytes: int, compressible: bool, target: int = COMPRESSED_BYTES_REMOTE - 4096,
          ) -> tuple[bytes, int]:
    """A shard of as many keys as fit `target` compressed bytes (estimated from 500 keys), and its keys."""
    compress = COMPRESS[kind]
    keys = int(500 * target / len(compress(_tar(500, member_bytes, compressible))) * 0.98)
    data = compress(_tar(keys, member_bytes, compressible))
    while len(data) > target:
        keys = int(keys * 0.97)
        data = compress(_tar(keys, member_bytes, compressible))
    return data, keys


def timed(folder: str, options: dict, reps: int) -> tuple[int | None, list[float]]:
    (unit,) = discover(folder, options)
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        keys = count_keys([unit], options, {}, False)
        seconds.append(time.perf_counter() - started)
    return keys.left, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for kind, size, compressible in CASES:
        data, keys = shard(kind, size, compressible)
        what = (f".tar.{kind} {len(data) / 2**20:.2f} MiB, {keys:,} keys of a {size:,}-byte "
                f"{'compressible' if compressible else 'random'} member and a .cls")
        with tempfile.TemporaryDirectory() as folder:
            os.makedirs(f"{folder}/in")
            Path(f"{folder}/in/s.tar.{kind}").write_bytes(data)
            results = [("local disk", *timed(f"{folder}/in", {}, args.reps))]
            with serving(Path(f"{folder}/in")) as url:
                results.append(("web server", *timed(url, {}, args.reps)))
        with moto_s3("shards") as (client, options):
            client.put_object(Bucket="shards", Key=f"in/s.tar.{kind}", Body=data)
            results.append(("S3 (moto)", *timed("s3://shards/in/", options, args.reps)))
        for store, counted, seconds in results:
            said = "not counted" if counted is None else f"{counted:,} keys"
            print(f"{what} | {store} | {said} | " + ", ".join(f"{s:.2f}" for s in seconds) + " s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
