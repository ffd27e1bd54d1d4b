"""Purifier throughput: images/s and seconds per sampler step, on CPU (and CUDA when present).

    python bench/purifier_bench.py                       # tiny reference model, from ../shared
    python bench/purifier_bench.py --checkpoint pipeline/assets/cifar10_prior.pt --sizes 32
    python bench/purifier_bench.py --preset 256x256_diffusion_uncond --sizes 256 --devices cuda --precision bf16
    python bench/purifier_bench.py --sizes 256 --devices cpu --forward-batch 4   # CPU without forward slicing
    python bench/purifier_bench.py --preset 256x256_diffusion_uncond --sizes 256 --devices cuda --batch 4,16 --images 1024

--preset builds a named architecture with random weights instead of loading a checkpoint: throughput does
not depend on the weights, so the paper's 552M-parameter model can be timed without its file.

For each canvas size (and --batch) it purifies a batch of 32x32 images (1 per canvas at 32, 64 per canvas at 256)
with the given steps, after a 2-step warm-up on a batch of the timed shape, and prints a table. A step is one model
evaluation of the whole sampling batch ("canvases per step"); on a CPU it runs as several forward passes of "canvases
per forward". --per-canvas-seeds draws each canvas's noise from its own generators, as the job does. On CUDA the
table also gives the peak GPU memory torch allocated.

    python bench/purifier_bench.py --checkpoint pipeline/assets/cifar10_prior.pt --sizes 32 --images 256 --ab-plain 3

--ab-plain N (CPU) times the model's CPU inference paths (pipeline.model._cpu_inference: in-place SiLUs and sums,
attention a few canvases at a time) against the plain operations they replace, in one process, alternating which
goes first for N rounds on the same canvases, and says whether the purified uint8 images are bit-identical. On a
shared machine only such alternating in-process comparisons are worth much.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import PRESETS, Purifier, ZipSettings, build_unet, preset_config  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "shared/reference/guided-diffusion/tiny_uncond_256arch.pt"
TINY_FLAGS = dict(image_size=256, num_channels=32, num_res_blocks=1, attention_resolutions="32,16,8",
                  num_head_channels=16, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True)


def bench(purifier: Purifier, n_images: int, repeats: int, per_canvas_seeds: bool = False) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n_images)]
    calls = 0

    def count(i: int, n: int) -> None:
        nonlocal calls
        calls += 1

    from pipeline.tiling import pack, unpack

    layout = purifier.plan([im.shape[:2] for im in images])
    canvases = pack(images, layout)
    seeds = list(range(len(canvases))) if per_canvas_seeds else None
    # Warm-up on a batch of the timed shape (a GPU's kernels and autocast are set up per shape), with 2 steps.
    settings, purifier.settings = purifier.settings, dataclasses.replace(purifier.settings, steps=2)
    warm = canvases[: purifier.batch_size]
    purifier.purify_canvases(warm, seeds=seeds[: len(warm)] if seeds else None)
    purifier.settings = settings
    cuda = purifier.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(purifier.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        unpack(purifier.purify_canvases(canvases, progress=count, seeds=seeds), layout)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    # What was actually sampled together, not the purifier's capacity: 128 images on 32 px canvases are one batch of
    # 128 canvases even where batch_size is 256 (the last batch of several may be smaller still).
    per_step = min(purifier.batch_size, len(canvases))
    return {"images_per_s": round(n_images * repeats / dt, 2), "s_per_step": round(dt / calls, 4),
            "steps": calls, "canvases": len(canvases), "canvases_per_step": per_step,
            "canvases_per_forward": min(purifier.model_batch, per_step),
            "peak_gib": round(torch.cuda.max_memory_allocated(purifier.device) / 2**30, 2) if cuda else None}


def ab_plain(purifier: Purifier, n_images: int, rounds: int, per_canvas_seeds: bool = False) -> None:
    """Alternating A/B of the CPU inference paths (B) against the plain operations (A) on the same canvases."""
    import pipeline.model as model_module
    from pipeline.tiling import pack

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n_images)]
    canvases = pack(images, purifier.plan([im.shape[:2] for im in images]))
    seeds = list(range(len(canvases))) if per_canvas_seeds else None
    fast = model_module._cpu_inference

    def run(which: str) -> tuple[float, np.ndarray]:
        model_module._cpu_inference = fast if which == "B" else (lambda x: False)
        try:
            t0 = time.perf_counter()
            out = purifier.purify_canvases(canvases, seeds=seeds)
            return time.perf_counter() - t0, out
        finally:
            model_module._cpu_inference = fast

    settings, purifier.settings = purifier.settings, dataclasses.replace(purifier.settings, steps=1)
    warm = canvases[: purifier.batch_size]
    for which in "AB":  # warm-up, one step each
        model_module._cpu_inference = fast if which == "B" else (lambda x: False)
        purifier.purify_canvases(warm, seeds=seeds[: len(warm)] if seeds else None)
    model_module._cpu_inference, purifier.settings = fast, settings
    per_step = min(purifier.batch_size, len(canvases))
    print(f"A: plain operations, B: CPU inference paths; {n_images} images, {purifier.settings.steps} steps, "
          f"{per_step} canvases per step, {min(purifier.model_batch, per_step)} per forward, "
          f"{torch.get_num_threads()} threads")
    for r in range(rounds):
        times, outs = {}, {}
        for which in ("AB" if r % 2 == 0 else "BA"):
            times[which], outs[which] = run(which)
        differ = int((outs["A"] != outs["B"]).sum())
        print(f"round {r + 1} ({'A first' if r % 2 == 0 else 'B first'}): A {n_images / times['A']:.2f} images/s, "
              f"B {n_images / times['B']:.2f} images/s, B/A time {times['B'] / times['A']:.3f}; uint8 outputs "
              f"{'bit-identical' if not differ else f'DIFFER in {differ} values'}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(TINY))
    p.add_argument("--flags", default=None, help="JSON model flags (default: the tiny reference model's)")
    p.add_argument("--sizes", default="32,256", help="canvas sizes to try")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=128, help="32x32 images purified (timed), after a warm-up call")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch", default="0", help="canvases sampled together (0: auto); comma-separated to time several")
    p.add_argument("--per-canvas-seeds", action="store_true",
                   help="one noise generator per canvas, as the job draws it (default: one per sampling batch)")
    p.add_argument("--forward-batch", type=int, default=0,
                   help="canvases per UNet forward pass (0: auto, which slices the batch on a CPU)")
    p.add_argument("--devices", default=None,
                   help="comma-separated, e.g. cpu,cuda (default: cpu, and cuda when torch sees one); a device named "
                        "here that is not available is an error, not an empty table")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="time this architecture with random weights instead of --checkpoint")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="CUDA only")
    p.add_argument("--ab-plain", type=int, default=0, metavar="ROUNDS",
                   help="instead of the table: A/B the model's CPU inference paths against the plain operations "
                        "(CPU, first --sizes and --batch), alternating for this many rounds")
    args = p.parse_args()
    for name in ("steps", "images", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error(f"--batch must be comma-separated numbers of canvases such as 4,16, got {args.batch!r}")
    if any(b < 0 for b in batches) or args.forward_batch < 0:
        p.error(f"--batch and --forward-batch must be 0 (auto) or more, got {args.batch!r} and {args.forward_batch}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes must be comma-separated canvas sizes such as 32,256, got {args.sizes!r}")
    if any(size < 32 or size % 32 for size in sizes):
        p.error(f"--sizes must be multiples of 32 (the images are 32x32), got {args.sizes!r}")
    if args.ab_plain < 0:
        p.error(f"--ab-plain must be 0 (off) or a number of rounds, got {args.ab_plain}")
    if args.ab_plain and args.devices not in (None, "cpu"):
        p.error("--ab-plain compares CPU code paths: use it with --devices cpu (or no --devices)")
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.ab_plain:
        devices = ["cpu"]
    for device in devices:
        if device not in ("cpu", "cuda"):
            p.error(f"--devices: unknown device {device!r} (cpu or cuda)")
        if device == "cuda" and not torch.cuda.is_available():
            p.error("--devices cuda: torch sees no CUDA device here (driver, wheel or container runtime?)")
    flags = json.loads(args.flags) if args.flags else (TINY_FLAGS if args.checkpoint == str(TINY) else None)
    model_name = f"preset {args.preset} (random weights)" if args.preset else f"checkpoint {args.checkpoint}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {model_name}, {args.precision}")
    noise = "one noise generator per canvas (as the job)" if args.per_canvas_seeds else "one noise generator per batch"
    print(f"{args.images} images of 32x32, {args.steps} steps, {noise}, timed {args.repeats}x after a warm-up")
    if not args.ab_plain:
        print("| device | canvas | images/canvas | images/s | s per step | canvases per step | canvases per forward |"
              " peak GPU GiB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for device in devices:
        model = None
        if args.preset:  # built once per device, on it (a 552M-parameter model initialises slowly on a CPU)
            torch.manual_seed(0)
            model = build_unet(preset_config(args.preset), device=device)
        for size in sizes:
            for batch in batches:
                precision = args.precision if device == "cuda" else "fp32"
                settings = ZipSettings(steps=args.steps)
                if model is not None:
                    purifier = Purifier(model, settings, device, precision, size, batch or None)
                else:
                    purifier = Purifier.from_checkpoint(args.checkpoint, flags=flags, device=device, canvas_size=size,
                                                        batch_size=batch or None, settings=settings,
                                                        precision=precision)
                if args.forward_batch:
                    purifier.model_batch = args.forward_batch
                if args.ab_plain:
                    ab_plain(purifier, args.images, args.ab_plain, args.per_canvas_seeds)
                    return 0
                r = bench(purifier, args.images, args.repeats, args.per_canvas_seeds)
                per = (size // 32) ** 2
                peak = "-" if r["peak_gib"] is None else r["peak_gib"]
                print(f"| {device} | {size} | {per} | {r['images_per_s']} | {r['s_per_step']} |"
                      f" {r['canvases_per_step']} | {r['canvases_per_forward']} | {peak} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
