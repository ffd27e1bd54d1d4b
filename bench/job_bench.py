"""The job against a bare loop, and the job's memory as the input grows.

    python bench/job_bench.py throughput --images 512 --steps 20
    python bench/job_bench.py memory --sizes 1000,10000 --steps 2
    python bench/job_bench.py memory --sizes 2000,8000,16000 --steps 1 --layout tar --image-size 128   # one shard
    python bench/job_bench.py memory --sizes 8000 --steps 1 --layout tar --image-size 128 --in-memory-mb 1024
    python bench/job_bench.py overhead --sizes 10000,100000 --layout mixed
    python bench/job_bench.py incremental --shards 200 --layout tar
    python bench/job_bench.py incremental --shards 50 --layout parquet

throughput: the same images, model and settings through (a) one process calling the Purifier in
chunks of --chunk images, (b) the Ray Data job with one CPU actor; prints images/s of both and the ratio.
memory: runs the job on N generated images for each N (a fresh local Ray each time) and prints the
peak resident memory (VmHWM, Linux) of the driver and of the largest Ray worker process: flat means
streaming, no full materialisation. VmHWM is read at the end, so it misses workers Ray has already retired, and it
counts the object store's shared pages a worker touched; so each worker's private memory (RssAnon, sampled five
times a second while the job runs) is printed too: the peak of the read tasks (read, decode and tile, fused), of
the purifier actor, and of the largest other worker (untile, encode, write), with its task.
`--layout tar` puts all N images into a single tar shard (one read unit, the worst case for a reader that would
hold a whole unit's images at once); `--in-memory-mb` sets the size above which the job streams a shard instead
of fetching it whole.
overhead: the driver's work that grows with the number of inputs, not with the images purified: listing and planning
(what --dry-run does), reading the output's ids (output_ids, at the start of a resumed or --incremental run) and the
end-of-run duplicate check (deduplicate_output), on N tiny 8x8 PNGs in nested folders (`--layout mixed`: plus N/500
tar shards of 10 images beside them, which the id-collision check compares) and an output that already holds all
but 50 of the files, written in the job's own part-file format (256 rows a file). Best of 2, in-process, no Ray;
driver peak RSS (a fresh process per size). Reports, never asserts.
incremental: the scheduled use over containers. --shards tar shards (`--layout parquet`: Parquet files) of
--per-shard tiny 8x8 PNGs each, one complete run of the real job (default prior, --steps 1 unless given), then
--repeat times: one new shard added and a real --incremental run timed. Each run is a fresh process with its own
local Ray, as a scheduler would start it: `job s` is run_job alone, `process s` the whole process (imports, Ray
start and stop). `containers skipped unread` is the summary's containers_skipped_unread ('-' where the code has no
such key); read, purified and skipped are the summary's this_run counts. A last run, with nothing new, is the
scheduled command itself (jobs/purify.py --incremental), which starts no Ray when nothing is left to read: `job s` is
its summary's wall_s. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import Purifier  # noqa: E402
from pipeline.config import DEFAULT_PRIOR, JobConfig  # noqa: E402
from pipeline.job import run_job  # noqa: E402
from pipeline.placement import init_local_ray  # noqa: E402


def make_images(folder: Path, n: int, size: int = 32, layout: str = "files", keep: bool = True) -> list[np.ndarray]:
    """n random PNG images as files in `folder`, or (layout "tar") as the members of one shard in it; returns
    their pixels when `keep` (the memory runs do not, so the driver's peak is the job's own)."""
    rng = np.random.default_rng(0)
    images = []
    folder.mkdir(parents=True, exist_ok=True)
    shard = tarfile.open(folder / "shard.tar", "w") if layout == "tar" else None
    for i in range(n):
        im = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        if shard is None:
            (folder / f"{i:06d}.png").write_bytes(buf.getvalue())
        else:
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = buf.tell()
            buf.seek(0)
            shard.addfile(info, buf)
        if keep:
            images.append(im)
    if shard is not None:
        shard.close()
    return images


def ray_worker_peaks_mb() -> dict[int, float]:
    """Peak RSS of every live Ray worker process, from /proc (VmHWM)."""
    peaks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "ray::" not in cmd and "default_worker.py" not in cmd:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(pid)] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return peaks


class PrivateMemoryWatch:
    """Samples every Ray worker's private resident memory (RssAnon: heap, not the object store's shared pages,
    which VmHWM also counts) a few times a second and keeps each one's peak, with the worker's task name."""

    def __init__(self, every_s: float = 0.2) -> None:
        import threading

        self.peaks: dict[tuple[int, str], tuple[float, str]] = {}
        self._last_task: dict[int, str] = {}
        self._every, self._stop = every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    if "ray::" not in cmd:
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            # Ray reuses a worker process for other tasks: a peak belongs to the task running then
                            mb, name = int(line.split()[1]) / 1024, cmd.split("\0")[0].removeprefix("ray::")[:40]
                            # An idle worker (ray::IDLE) still holds what its last task left: that task's memory,
                            # not an "other" worker's (a reader gone idle was counted as the largest other worker)
                            if name == "IDLE":
                                name = self._last_task.get(int(pid), name)
                            else:
                                self._last_task[int(pid)] = name
                            if mb > self.peaks.get((int(pid), name), (0.0, ""))[0]:
                                self.peaks[(int(pid), name)] = (mb, name)
                except OSError:
                    continue

    def __enter__(self) -> PrivateMemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def largest(self, task: str | None = None, excluding: tuple[str, ...] = ()) -> tuple[float, str]:
        """The largest peak among workers whose task name has `task` in it (any when None), minus `excluding` and
        Ray's own helper actors (names starting with `_`, e.g. _StatsActor, _AutoscalingCoordinatorActor)."""
        return max(((mb, name) for mb, name in self.peaks.values()
                    if (task is None or task in name) and not any(e in name for e in excluding)
                    and not name.startswith("_")), default=(0.0, "-"))


def throughput(args: argparse.Namespace) -> None:
    checkpoint = args.checkpoint or str(DEFAULT_PRIOR)
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp) / "in", args.images)
        purifier = Purifier.from_checkpoint(checkpoint, steps=args.steps, pool=args.pool, device="cpu")
        purifier(images[: args.chunk])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(images), args.chunk):
            purifier(images[i : i + args.chunk])
        bare = len(images) / (time.perf_counter() - t0)
        init_local_ray()
        # Warm-up run (actor start, imports) on a few images, then the measured run.
        run_job(JobConfig(input=str(Path(tmp) / "in" / "000000.png"), output=str(Path(tmp) / "warm"),
                          checkpoint=checkpoint, steps=args.steps, pool=args.pool, progress=False))
        t0 = time.perf_counter()
        summary = run_job(JobConfig(input=str(Path(tmp) / "in"), output=str(Path(tmp) / "out"), checkpoint=checkpoint,
                                    steps=args.steps, pool=args.pool, progress=False, tile_batch=args.chunk))
        job = summary["this_run"]["purified"] / (time.perf_counter() - t0)
    print(f"| images | steps | bare loop images/s | job images/s | job / bare |\n| --- | --- | --- | --- | --- |\n"
          f"| {args.images} | {args.steps} | {bare:.2f} | {job:.2f} | {job / bare:.2f} |")


def memory_one(args: argparse.Namespace) -> None:
    """One size in this (fresh) process, so the driver's peak belongs to this size alone."""
    import ray

    checkpoint = args.checkpoint or str(DEFAULT_PRIOR)
    n = args.images
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp) / "in", n, args.image_size, args.layout, keep=False)
        init_local_ray()
        t0 = time.perf_counter()
        with PrivateMemoryWatch() as private:
            run_job(JobConfig(input=str(Path(tmp) / "in"), output=str(Path(tmp) / "out"), checkpoint=checkpoint,
                              steps=args.steps, pool=args.pool, progress=False, in_memory_mb=args.in_memory_mb))
        wall = time.perf_counter() - t0
        workers = ray_worker_peaks_mb()
        driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ray.shutdown()
    other, task = private.largest(excluding=("PurifyStage", "read_decode_tile_stage"))
    read = private.largest("read_decode_tile_stage")[0]
    print(f"| {n} | {wall:.1f} | {driver:.0f} | {max(workers.values(), default=0):.0f} | "
          f"{read:.0f} | {private.largest('PurifyStage')[0]:.0f} | {other:.0f} ({task}) | {len(workers)} |", flush=True)


def overhead_one(args: argparse.Namespace) -> None:
    """One size in this (fresh) process: times of the driver's per-input work, and its peak memory."""
    from pipeline.output import JOB_FILE, SUMMARY_FILE, deduplicate_output, output_ids, write_json
    from pipeline.plan import plan_job
    from pipeline.sources import discover
    from pipeline.stages import _data_table, part_name, write_parquet_atomic

    n = args.images
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", str(Path(tmp) / "out")
        ids = [f"a{i // 10000:02d}/b{(i // 1000) % 10}/{i:07d}.png" for i in range(n)]
        for i, id_ in enumerate(ids):
            if i % 1000 == 0:
                (root / id_).parent.mkdir(parents=True, exist_ok=True)
            (root / id_).write_bytes(png.getvalue())
        for s in range(n // 500 if args.layout == "mixed" else 0):
            with tarfile.open(root / f"shard-{s:05d}.tar", "w") as shard:
                for k in range(10):
                    info = tarfile.TarInfo(f"{k}.png")
                    info.size = len(png.getvalue())
                    shard.addfile(info, io.BytesIO(png.getvalue()))
        config = JobConfig(input=str(root), output=out, steps=1, incremental=True, progress=False)
        plan = plan_job(JobConfig(input=str(root), output=out, steps=1), dry_run=True)
        write_json(f"{out}/{JOB_FILE}", plan.job_record, {})
        done = ids[: n - 50]
        for s in range(0, len(done), 256):
            chunk = [{"id": i, "png": png.getvalue(), "width": 8, "height": 8, "meta": {}, "source": i,
                      "source_sha256": "0" * 64, "psnr_vs_input_db": 30.0, "downscale_factor": 1.0,
                      "original_mode": "RGB", "original_format": "PNG", "original_frames": 1} for i in done[s : s + 256]]
            write_parquet_atomic(_data_table(chunk), f"{out}/data/{part_name([r['id'] for r in chunk])}", {})
        write_json(f"{out}/{SUMMARY_FILE}", {"status": "complete"}, {})

        def best(fn: Any) -> float:
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        figures = [best(lambda: discover(str(root), {}, config.files_per_unit)),
                   best(lambda: plan_job(config, dry_run=True)), best(lambda: output_ids(out, {})),
                   best(lambda: deduplicate_output(out, {}))]
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {n} | {n // 500 if args.layout == 'mixed' else 0} | {-(-len(done) // 256)} | "
          + " | ".join(f"{t:.2f}" for t in figures) + f" | {driver:.0f} |", flush=True)


def overhead(args: argparse.Namespace) -> None:
    import subprocess

    print(f"{args.layout}: N tiny PNG files{' + N/500 tar shards' if args.layout == 'mixed' else ''}, output holding "
          "all files but 50\n| image files | tar shards | output part files | discover s | plan (--dry-run) s | "
          "output_ids s | deduplicate_output s | driver peak MB |\n| --- | --- | --- | --- | --- | --- | --- | --- |",
          flush=True)
    for n in args.sizes.split(","):
        subprocess.run([sys.executable, __file__, "overhead-one", "--images", n, "--layout", args.layout], check=True)


def memory(args: argparse.Namespace) -> None:
    import subprocess

    print(f"{args.layout}, {args.image_size} px random PNGs\n"
          "| images | wall s | driver peak MB | largest live worker peak MB (VmHWM) | private peak MB: reader | "
          "purifier actor | largest other worker (its task) | workers |\n| --- | --- | --- | --- | --- | --- | --- | --- |",
          flush=True)
    for n in args.sizes.split(","):
        cmd = [sys.executable, __file__, "memory-one", "--images", n, "--steps", str(args.steps), "--pool",
               str(args.pool), "--layout", args.layout, "--image-size", str(args.image_size),
               "--in-memory-mb", str(args.in_memory_mb)] + (
                   ["--checkpoint", args.checkpoint] if args.checkpoint else [])
        subprocess.run(cmd, check=True)


def make_containers(folder: Path, first: int, count: int, layout: str, per: int) -> None:
    """Tar shards (layout "tar") or Parquet files (layout "parquet") numbered first .. first+count-1 in `folder`,
    each of `per` different 8x8 PNGs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for s in range(first, first + count):
        rng = np.random.default_rng(s)
        pngs = []
        for _ in range(per):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        if layout == "parquet":
            pq.write_table(pa.table({"image": pngs}), folder / f"part-{s:05d}.parquet")
            continue
        with tarfile.open(folder / f"shard-{s:05d}.tar", "w") as shard:
            for k, png in enumerate(pngs):
                info = tarfile.TarInfo(f"{k:04d}.png")
                info.size = len(png)
                shard.addfile(info, io.BytesIO(png))


def incremental_one(args: argparse.Namespace) -> None:
    """One run of the job in this (fresh) process, with its own local Ray; its figures as one JSON line."""
    import ray

    init_local_ray()
    t0 = time.perf_counter()
    summary = run_job(JobConfig(input=args.input, output=args.output, checkpoint=args.checkpoint, steps=args.steps,
                                pool=args.pool, incremental=args.incremental, progress=False))
    wall = time.perf_counter() - t0
    ray.shutdown()
    this_run = summary["this_run"]
    print(json.dumps({"status": summary["status"], "job_s": wall, "read": this_run["read"],
                      "purified": this_run["purified"], "skipped": this_run["skipped_already_done"],
                      # absent before the output recorded the containers it read whole (e7e8d41)
                      "unread": this_run.get("containers_skipped_unread")}), flush=True)


def incremental(args: argparse.Namespace) -> None:
    import subprocess

    kind = "tar shards" if args.layout == "tar" else "Parquet files"
    print(f"{args.shards} {kind} of {args.per_shard} 8x8 PNGs, steps {args.steps}; then one new one per "
          f"--incremental run\n| run | {kind} in input | job s | process s | read | purified | skipped already done | "
          "containers skipped unread |\n| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "in", str(Path(tmp) / "out")
        make_containers(root, 0, args.shards, args.layout, args.per_shard)
        for run in range(args.repeat + 1):
            if run:
                make_containers(root, args.shards + run - 1, 1, args.layout, args.per_shard)
            cmd = [sys.executable, __file__, "incremental-one", "--input", str(root), "--output", out, "--steps",
                   str(args.steps), "--pool", str(args.pool)] + (["--incremental"] if run else []) + (
                       ["--checkpoint", args.checkpoint] if args.checkpoint else [])
            t0 = time.perf_counter()
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
            process = time.perf_counter() - t0
            got = json.loads(done.stdout.strip().splitlines()[-1])
            if got["status"] != "complete":
                raise SystemExit(f"run {run} ended {got['status']!r}: the figures would not be of a complete run")
            label = "first, complete" if not run else f"--incremental, +1 new ({run})"
            print(f"| {label} | {args.shards + run} | {got['job_s']:.1f} | {process:.1f} | {got['read']} | "
                  f"{got['purified']} | {got['skipped']} | {'-' if got['unread'] is None else got['unread']} |",
                  flush=True)
        # nothing new: the command a scheduler runs, as it runs it (its own process, Ray only if there is work)
        cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "purify.py"), "--input", str(root),
               "--output", out, "--steps", str(args.steps), "--pool", str(args.pool), "--incremental",
               "--no-progress"] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        process = time.perf_counter() - t0
        summary = json.loads((Path(out) / "_summary.json").read_text())
        got = summary["this_run"]
        print(f"| --incremental, nothing new (jobs/purify.py) | {args.shards + args.repeat} | {got['wall_s']:.1f} | "
              f"{process:.1f} | {got['read']} | {got['purified']} | {got['skipped_already_done']} | "
              f"{got.get('containers_skipped_unread', '-')} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["throughput", "memory", "memory-one", "overhead", "overhead-one", "incremental",
                                    "incremental-one"])
    p.add_argument("--checkpoint", default=None, help="default: the embedded prior")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--steps", type=int, default=None, help="default: 20 (incremental: 1)")
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--layout", choices=["files", "tar", "mixed", "parquet"], default=None,
                   help="memory: image files (default), or one tar shard; overhead: image files (default), or mixed "
                        "(files + tar shards); incremental: tar shards (default) or Parquet files")
    p.add_argument("--image-size", type=int, default=32, help="memory: side of the generated images")
    p.add_argument("--in-memory-mb", type=int, default=JobConfig.in_memory_mb,
                   help="memory: the job's --in-memory-mb (shards larger than this are streamed)")
    p.add_argument("--chunk", type=int, default=256, help="images per purifier call / per tiling batch")
    p.add_argument("--shards", type=int, default=200, help="incremental: tar shards or Parquet files at the start")
    p.add_argument("--per-shard", type=int, default=10, help="incremental: images in each shard or Parquet file")
    p.add_argument("--repeat", type=int, default=2, help="incremental: --incremental runs, each after one new shard")
    # incremental-one: the run a fresh process times (set by the incremental mode)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--incremental", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps is None:  # incremental times the work around purification, not the model
        args.steps = 1 if args.mode.startswith("incremental") else 20
    try:
        sizes = [int(n) for n in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes must be comma-separated image counts such as 1000,10000, got {args.sizes!r}")
    for name, value in [("images", args.images), ("steps", args.steps), ("pool", args.pool), ("image-size", args.image_size),
                        ("in-memory-mb", args.in_memory_mb), ("chunk", args.chunk), ("shards", args.shards),
                        ("per-shard", args.per_shard), ("repeat", args.repeat)] + [("sizes", n) for n in sizes]:
        if value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    allowed = {"memory": ("files", "tar"), "overhead": ("files", "mixed"), "incremental": ("tar", "parquet")}
    for mode, layouts in allowed.items():
        if args.mode.startswith(mode) and args.layout not in (None, *layouts):
            p.error(f"--layout {args.layout} is not for the {mode} mode ({' or '.join(layouts)})")
    if args.layout is None:
        args.layout = "tar" if args.mode.startswith("incremental") else "files"
    if args.mode == "incremental-one" and not (args.input and args.output):
        p.error("incremental-one is started by the incremental mode")
    {"throughput": throughput, "memory": memory, "memory-one": memory_one, "overhead": overhead,
     "overhead-one": overhead_one, "incremental": incremental, "incremental-one": incremental_one}[args.mode](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
