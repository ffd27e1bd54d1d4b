"""How fast each prior size trains and purifies here: the measurement behind the shipped prior's width and depth.

    python bench/prior_sizes_bench.py                                   # the sizes pipeline/assets/cifar10_prior.md names
    python bench/prior_sizes_bench.py --sizes 64:1,2,2:2 --device cuda --precision bf16 --batch 128

A size is CHANNELS:CHANNEL_MULT:RES_BLOCKS, the flags of jobs/train_prior.py (--channels, --channel-mult,
--res-blocks; attention at 16 px and 32 channels per head, as it trains). For each size it builds the UNet with random
weights (speed does not depend on them), runs --warmup optimiser steps of jobs/train_prior.py's loss and Adam, then
times --steps more, and times the purifier's share: one forward pass over a batch, of which ZIP runs one per sampler
step. It prints parameters, the fp16 size a bundle would ship (the repo ships at most 20 MB), training images/s and
purifying images/s at 20 steps. Random images stand in for CIFAR-10: the cost of a step does not depend on what the
images show. On a shared machine, compare sizes from one run only; --threads fixes torch's CPU thread count
(jobs/train_prior.py --threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model import UNetConfig, build_unet  # noqa: E402
from pipeline.schedule import NoiseSchedule  # noqa: E402
from pipeline.training import epsilon_loss  # noqa: E402

DEFAULT_SIZES = "32:1,2,2:2,64:1,2,2:1,64:1,2,2:2,32:1,2,2,2:3"
SAMPLER_STEPS = 20  # ZIP's default: one forward pass of the model per step


def parse_sizes(text: str) -> list[tuple[int, str, int]]:
    """'32:1,2,2:2,64:1,2,2:1' -> [(32, '1,2,2', 2), (64, '1,2,2', 1)]: the channel multipliers hold commas, so a size
    is read as channels, then multipliers up to the next colon, then the block count up to the next comma."""
    sizes, rest = [], text.strip()
    while rest:
        try:
            channels, rest = rest.split(":", 1)
            mult, rest = rest.split(":", 1)
            blocks, _, rest = rest.partition(",")
            sizes.append((int(channels), mult, int(blocks)))
        except ValueError:
            raise SystemExit(f"error: --sizes {text!r}: expected CHANNELS:MULT:BLOCKS[,...], e.g. 32:1,2,2:2") from None
    return sizes


def config_of(channels: int, mult: str, blocks: int) -> UNetConfig:
    """The UNet jobs/train_prior.py builds for these flags (its other options at their defaults)."""
    return UNetConfig(image_size=32, num_channels=channels, num_res_blocks=blocks, channel_mult=mult,
                      attention_resolutions="16", num_head_channels=32, use_scale_shift_norm=True,
                      resblock_updown=False, learn_sigma=False, class_cond=False)


def time_size(config: UNetConfig, batch: int, warmup: int, steps: int, device: torch.device,
              autocast: torch.dtype | None) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_unet(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4)
    alpha_bars = torch.as_tensor(NoiseSchedule.named("linear").alphas_cumprod, dtype=torch.float32, device=device)
    x0 = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1

    def train_step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        loss = epsilon_loss(model, x0, t, torch.randn_like(x0), alpha_bars, autocast)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for _ in range(warmup):
        train_step()
    start = synced()
    for _ in range(steps):
        train_step()
    train_s = synced() - start
    model.eval()
    t = torch.full((batch,), 500, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        model(x0, t)
        start = synced()
        for _ in range(steps):
            model(x0, t)
        forward_s = synced() - start
    return {"params": params, "fp16_mb": params * 2 / 1e6, "train_images_s": batch * steps / train_s,
            "purify_images_s": batch * steps / forward_s / SAMPLER_STEPS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"CHANNELS:MULT:BLOCKS, comma-separated (default {DEFAULT_SIZES})")
    p.add_argument("--batch", type=int, default=64, help="images per optimiser step and per forward pass (default 64)")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps and forward passes (default 5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: forward passes under bfloat16 autocast, as jobs/train_prior.py --precision bf16 "
                        "(default fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    args = p.parse_args(argv)
    if min(args.batch, args.steps) < 1 or args.warmup < 0:
        p.error("--batch and --steps must be at least 1, --warmup at least 0")
    sizes = parse_sizes(args.sizes)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, {args.steps} timed steps, "
          f"{args.precision}")
    print("| channels | channel_mult | res blocks | parameters | fp16 MB | train images/s | purify images/s (20 steps) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for channels, mult, blocks in sizes:
        row = time_size(config_of(channels, mult, blocks), args.batch, args.warmup, args.steps, device, autocast)
        print(f"| {channels} | {mult} | {blocks} | {row['params']:,} | {row['fp16_mb']:.1f} | "
              f"{row['train_images_s']:.1f} | {row['purify_images_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
