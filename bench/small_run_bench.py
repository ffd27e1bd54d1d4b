"""The fixed cost of a small run: N runs of a handful of images in one process, on one local Ray.

    python bench/small_run_bench.py --runs 6 --images 16
    python bench/small_run_bench.py --runs 4 --profile /tmp/driver.prof     # cProfile of the driver, runs 2..N

Small on-demand and scheduled runs, and the test suite (hundreds of runs on one Ray), pay a run's fixed cost each
time. Each run here is `pipeline.job.run_job` on --images random PNGs of --size px into a new output, with a tiny
model (the tests' own: 32 px canvases, two levels) and --steps 1, on a local Ray started once (as tests/conftest.py's
`ray_local` does). The first run is printed apart (it starts Ray's workers, imports torch in them); the others are
the steady state. Per run: wall time, the CPU seconds of the driver (getrusage) and of Ray's processes (the CPU of
this process's descendants read from /proc: raylet, GCS, workers, the purifier actor), and the driver's wall time by
phase, from timestamps taken around the job's own functions (wrapped here, not changed): plan (plan_job), cluster
(Ray joined, placement), output start (lease, job record, "running" summary), pipeline (build + run + the last
written batch taken), end check (deduplicate_output, unify_output_types) and summary (records, _summary.json), and
`after last part` (from the last part file's mtime to run_job's return). Reports, never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.job as job_module  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.placement import init_local_ray  # noqa: E402

# The job's functions timed, in the order a run calls them, and the phase each is charged to
PHASES = [("plan_job", "plan"), ("_start_cluster", "cluster"), ("_start_output", "output start"),
          ("_purify", "pipeline"), ("deduplicate_output", "end check"), ("unify_output_types", "end check"),
          ("_write_summary", "summary"), ("_record_containers_read", "summary"), ("_record_inputs_read_again", "summary")]


def descendants_cpu() -> float:
    """CPU seconds (user + system) of every live descendant of this process, with those of the children each has
    waited for (an ended actor's, counted by the raylet that started it), from /proc (Linux): Ray's processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(f) for f in fields[11:15]) / ticks
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - mine
        mine |= frontier
    return sum(cpu[pid] for pid in mine)


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
    ap.add_argument("--profile", help="write a cProfile of the driver's runs 2..N to this file")
    args = ap.parse_args()

    clock = PhaseClock()
    clock.install()
    t0 = time.perf_counter()
    init_local_ray(num_cpus=args.num_cpus)
    print(f"ray started in {time.perf_counter() - t0:.2f} s")
    profile = cProfile.Profile() if args.profile else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_model(root)
        write_inputs(root / "in", args.images, args.size)
        for i in range(args.runs):
            out = root / f"out{i}"
            config = JobConfig(input=str(root / "in"), output=str(out), checkpoint=model, steps=1, pool=4,
                               progress=False, write_batch=8, canvas_size=32)
            clock.spent = {}
            cpu0, ray0, t = driver_cpu(), descendants_cpu(), time.perf_counter()
            with (profile if profile is not None and i > 0 else contextlib.nullcontext()):
                summary = job_module.run_job(config)
            wall = time.perf_counter() - t
            tail = time.time() - last_part_mtime(out)
            row = {"wall": wall, "driver_cpu": driver_cpu() - cpu0, "ray_cpu": descendants_cpu() - ray0,
                   "after_last_part": tail, **clock.spent}
            rows.append(row)
            assert summary["status"] == "complete", summary["status"]
            print(f"run {i}: wall {wall:.2f} s, driver CPU {row['driver_cpu']:.2f} s, Ray CPU {row['ray_cpu']:.2f} s, "
                  f"after last part {tail:.2f} s; " + ", ".join(f"{k} {v:.2f}" for k, v in clock.spent.items()),
                  flush=True)
    if profile is not None:
        profile.dump_stats(args.profile)
    steady = rows[1:] or rows
    print(f"median of runs 1..{len(rows) - 1}: " + ", ".join(
        f"{k} {statistics.median(r.get(k, 0.0) for r in steady):.2f}" for k in steady[0]))


if __name__ == "__main__":
    main()
