"""The fixed cost of a small run: N runs of a handful of images in one process, on one local Ray.

    python bench/small_run_bench.py --runs 6 --images 16
    python bench/small_run_bench.py --runs 4 --profile /tmp/driver.prof     # cProfile of the driver, runs 2..N

Small on-demand and scheduled runs, and the test suite (hundreds of runs on one Ray), pay a run's fixed cost each
time. Each run here is `pipeline.job.run_job` on --images random PNGs of --size px into a new output, with a tiny
model (the tests' own: 32 px canvases, two levels) and --steps 1, on a local Ray started once (as tests/conftest.py's
`ray_local` does). The first run is printed apart (it starts Ray's workers); the median is of the others. Per run:
wall time; the CPU seconds of the driver (getrusage, less this bench's sampling thread) and of Ray's processes (each
descendant of this process read from /proc every 0.1 s: raylet, GCS, workers, the purifier actor; `--by-process`
prints each one's); the driver's wall time by phase, from timestamps taken around the job's own functions (wrapped
here, not changed): plan (plan_job), cluster (Ray joined, placement), output start (lease, job record, "running"
summary), pipeline (build + run + the last written batch taken), end check (deduplicate_output, unify_output_types)
and summary (records, _summary.json); `after last part` (from the last part file's mtime to run_job's return); and
the purifier actor's own notes (`TimedPurifyStage`, the job's actor class with timestamps): the CPU its process spent
before its constructor and in it, the constructor's wall time, its batches' wall time, the CPU of its process by its
last batch, and when (seconds from the run's start) its process started, its constructor began and ended and its
last batch ended. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.job as job_module  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.placement import init_local_ray  # noqa: E402
from pipeline.stages import PurifyStage  # noqa: E402

# The job's functions timed, in the order a run calls them, and the phase each is charged to
PHASES = [("plan_job", "plan"), ("_start_cluster", "cluster"), ("_start_output", "output start"),
          ("_purify", "pipeline"), ("deduplicate_output", "end check"), ("unify_output_types", "end check"),
          ("_write_summary", "summary"), ("_record_containers_read", "summary"), ("_record_inputs_read_again", "summary")]


def descendants_cpu() -> dict[tuple[int, int], float]:
    """CPU seconds (user + system) of each live descendant of this process, by (pid, start time), from /proc (Linux):
    Ray's processes. An ended one's is lost (Ray's raylet does not wait for its workers: their CPU is in no parent's
    count), so `CpuSampler` reads them all every SAMPLE_S."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[tuple[int, int], float] = {}
    keys: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        keys[pid] = (pid, int(fields[19]))
        cpu[keys[pid]] = (int(fields[11]) + int(fields[12])) / ticks
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - mine
        mine |= frontier
    return {keys[pid]: cpu[keys[pid]] for pid in mine}


SAMPLE_S = 0.1


class CpuSampler:
    """The CPU of this process's descendants, read every SAMPLE_S from a thread (whose own CPU is kept apart, so
    that it is not counted as the driver's): `ray_cpu()` since `mark()`, those that ended meanwhile with the CPU
    last seen of them (up to SAMPLE_S of each one's last moments missed)."""

    def __init__(self) -> None:
        self.latest: dict[tuple[int, int], float] = {}
        self.baseline: dict[tuple[int, int], float] = {}
        self.own_cpu = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        now = descendants_cpu()
        with self.lock:
            self.latest.update(now)

    def _loop(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            t = time.thread_time()
            self._sample()
            self.own_cpu += time.thread_time() - t

    def mark(self) -> None:
        self._sample()
        with self.lock:
            self.baseline = dict(self.latest)

    def ray_cpu(self) -> float:
        self._sample()
        with self.lock:
            return sum(v - self.baseline.get(k, 0.0) for k, v in self.latest.items())

    def by_process(self) -> list[tuple[float, str]]:
        """CPU seconds since `mark()` of each descendant, with its process title (Ray's `ray::...`), largest first."""
        self._sample()
        with self.lock:
            spent = [(v - self.baseline.get(k, 0.0), k) for k, v in self.latest.items()]
        named = []
        for cpu, (pid, _) in sorted(spent, reverse=True):
            if cpu < 0.05:
                break
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                title = "(ended)"
            named.append((cpu, f"{pid} {title[:60].strip()}"))
        return named


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PhaseClock:
    """Wall seconds by phase, from wrappers around the job module's functions (see PHASES)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def install(self) -> None:
        for name, phase in PHASES:
            real = getattr(job_module, name)

            def timed(*args: Any, _real=real, _phase=phase, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _real(*args, **kwargs)
                finally:
                    self.spent[_phase] = self.spent.get(_phase, 0.0) + time.perf_counter() - t0

            setattr(job_module, name, timed)


class TimedPurifyStage(PurifyStage):
    """The job's purifier actor, noting in NOTES_DIR (a file per actor) the CPU its process had spent when its
    constructor began (Python's start, Ray's worker, the class unpickled) and ended (torch imported, the model
    loaded), the constructor's wall time, and after each batch the process's CPU so far."""

    NOTES_DIR = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        t, cpu = time.time(), time.process_time()
        super().__init__(*args, **kwargs)
        self._note = Path(self.NOTES_DIR) / f"actor-{os.getpid()}-{t:.3f}.json"
        self._times = {"before_init_cpu": cpu, "init_cpu": time.process_time() - cpu, "init_wall": time.time() - t,
                       "process_at": process_started(), "init_at": t, "ready_at": time.time()}
        self._write(0.0)

    def _write(self, batch_wall: float) -> None:
        self._times["cpu_so_far"] = time.process_time()
        self._times["batches_wall"] = self._times.get("batches_wall", 0.0) + batch_wall
        self._times["last_batch_at"] = time.time()
        self._note.write_text(json.dumps(self._times))

    def __call__(self, batch: Any) -> Any:
        t = time.time()
        out = super().__call__(batch)
        self._write(time.time() - t)
        return out


def process_started() -> float:
    """When this process started (Linux: /proc), in time.time()'s terms."""
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    stat = Path("/proc/self/stat").read_text()
    return boot + int(stat[stat.rindex(")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")


def actor_notes(folder: Path, run_started: float) -> dict[str, float]:
    """The purifier actors' notes of one run (summed over its actors; the times `*_at` of its first actor, in seconds
    from the run's start), and removed."""
    notes = sorted((json.loads(p.read_text()) for p in folder.glob("actor-*.json")), key=lambda n: n["init_at"])
    for p in folder.glob("actor-*.json"):
        p.unlink()
    if not notes:
        return {}
    sums = {k: sum(n[k] for n in notes) for k in ("before_init_cpu", "init_cpu", "init_wall", "cpu_so_far",
                                                   "batches_wall")}
    return {**sums, **{k: notes[0][k] - run_started for k in ("process_at", "init_at", "ready_at", "last_batch_at")}}


def tiny_model(folder: Path) -> str:
    """The tests' tiny model (tests/jobutil.py tiny_model_file), made the same way when tests/ is not at hand."""
    try:
        from tests.jobutil import tiny_model_file
    except ImportError:
        tiny_model_file = None
    if tiny_model_file is not None:
        return tiny_model_file(folder)
    import torch

    from pipeline.checkpoint import save_bundle
    from pipeline.model import UNetConfig, build_unet

    torch.manual_seed(0)
    model = build_unet(UNetConfig.from_flags(dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                                                  attention_resolutions="")))
    path = folder / "tiny.pt"
    save_bundle(path, model, meta={"test": True})
    return str(path)


def write_inputs(folder: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def last_part_mtime(out: Path) -> float:
    parts = [p for d in ("data", "rejects") if (out / d).is_dir() for p in (out / d).iterdir() if p.name.startswith("part-")]
    return max((p.stat().st_mtime for p in parts), default=float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--num-cpus", type=int, default=2, help="the local Ray's CPUs (tests use 2)")
    ap.add_argument("--torch-threads", type=int, help="the purifier actor's torch threads (default: the job's own)")
    ap.add_argument("--by-process", action="store_true", help="print each Ray process's CPU of each run")
    ap.add_argument("--profile", help="write a cProfile of the driver's runs 2..N to this file")
    args = ap.parse_args()

    clock = PhaseClock()
    clock.install()
    t0 = time.perf_counter()
    init_local_ray(num_cpus=args.num_cpus)
    print(f"ray started in {time.perf_counter() - t0:.2f} s")
    sampler = CpuSampler()
    profile = cProfile.Profile() if args.profile else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_model(root)
        notes = root / "actor-notes"
        notes.mkdir()
        TimedPurifyStage.NOTES_DIR = str(notes)
        job_module.PurifyStage = TimedPurifyStage
        write_inputs(root / "in", args.images, args.size)
        for i in range(args.runs):
            out = root / f"out{i}"
            config = JobConfig(input=str(root / "in"), output=str(out), checkpoint=model, steps=1, pool=4,
                               progress=False, write_batch=8, canvas_size=32,
                               torch_threads=args.torch_threads)
            clock.spent = {}
            sampler.mark()
            cpu0, own0, t, run_started = driver_cpu(), sampler.own_cpu, time.perf_counter(), time.time()
            with (profile if profile is not None and i > 0 else contextlib.nullcontext()):
                summary = job_module.run_job(config)
            wall = time.perf_counter() - t
            tail = time.time() - last_part_mtime(out)
            row = {"wall": wall, "driver_cpu": driver_cpu() - cpu0 - (sampler.own_cpu - own0), "ray_cpu": sampler.ray_cpu(),
                   "after_last_part": tail, **clock.spent,
                   **{f"actor {k}": v for k, v in actor_notes(notes, run_started).items()}}
            rows.append(row)
            assert summary["status"] == "complete", summary["status"]
            print(f"run {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
            if args.by_process:
                for cpu, name in sampler.by_process():
                    print(f"    {cpu:5.2f} CPU s  {name}")
    if profile is not None:
        profile.dump_stats(args.profile)
    steady = rows[1:] or rows
    print(f"median of runs 1..{len(rows) - 1}: " + ", ".join(
        f"{k} {statistics.median(r.get(k, 0.0) for r in steady):.2f}" for k in steady[0]))


if __name__ == "__main__":
    main()
