"""Train the project's own unconditional diffusion prior (ε-prediction DDPM) on clean CIFAR-10 (or GTSRB).

The model is saved in our guided-diffusion-compatible UNet layout, so the purifier loads it
like any published checkpoint. Training is resumable: state goes to OUT/last.pt every few
minutes and the time budget (--minutes) counts across resumes.

    python jobs/train_prior.py --minutes 90 --out runs/prior          # 2-core CPU default
    python jobs/train_prior.py --device cuda --precision bf16 --channels 64 --batch 256 --minutes 60 --out runs/prior-gpu
    python jobs/train_prior.py --data gtsrb --minutes 90 --out runs/prior-gtsrb  # an in-domain prior for GTSRB
    python jobs/train_prior.py --init-from pipeline/assets/cifar10_prior.pt --lr 1e-4 --minutes 60 --out runs/prior-ft

--init-from starts from an exported prior's weights (its architecture; fresh optimiser), to train a shipped
prior further or adapt it to another clean data set.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_bundle  # noqa: E402
from pipeline.evaluation.datasets import load_dataset  # noqa: E402
from pipeline.model import UNetConfig, build_unet  # noqa: E402
from pipeline.schedule import NoiseSchedule  # noqa: E402

# Horizontal flips are a free augmentation for natural images but not for traffic signs, where a flipped
# "keep left" is a "keep right" the prior should not learn as equally likely.
TRAINING_SETS = {
    "cifar10": ("CIFAR-10 train (clean, shared JPEG copy), random horizontal flips", True),
    "gtsrb": ("GTSRB train (clean, shared 32x32 PPM copy), no flips", False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cifar10", choices=sorted(TRAINING_SETS),
                   help="clean training set the prior learns (needs ../shared/data; default cifar10)")
    p.add_argument("--out", default="runs/prior", help="run folder: last.pt (resume state), train_log.jsonl")
    p.add_argument("--export", default=None, help="where to write the EMA weights as a fp16 bundle (default OUT/prior.pt)")
    p.add_argument("--minutes", type=float, default=90.0, help="total training time budget, across resumes")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimiser steps (0: no limit)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this 32 px ε-prediction prior (path or URI); its architecture replaces the "
                        "width and depth options below")
    p.add_argument("--channels", type=int, default=32, help="UNet base width (num_channels)")
    p.add_argument("--channel-mult", default="1,2,2")
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--attention", default="16", help="attention resolutions in pixels, comma-separated")
    p.add_argument("--head-channels", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (with the usual (1+n)/(10+n) warm-up)")
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    p.add_argument("--max-timestep", type=int, default=None, metavar="T",
                   help="train only on timesteps 0..T (default: all of 0..999). A prior for late-start purification "
                        "(--start S) only ever sees t <= S*1000, so it can spend its capacity there; such a prior "
                        "records T and the purifier refuses settings that would run it above T")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST),
                   help="bf16: the UNet's forward pass under bfloat16 autocast (a GPU's tensor cores; loss, optimiser "
                        "and EMA stay fp32). Default fp32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--save-every-min", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=25, help="log every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore OUT/last.pt and start over")
    return p.parse_args(argv)


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


def make_config(args: argparse.Namespace) -> UNetConfig:
    return UNetConfig(
        image_size=32, num_channels=args.channels, num_res_blocks=args.res_blocks, channel_mult=args.channel_mult,
        attention_resolutions=args.attention, num_head_channels=args.head_channels, use_scale_shift_norm=True,
        resblock_updown=False, learn_sigma=False, class_cond=False, dropout=args.dropout,
    )


def load_initial(uri: str, dropout: float) -> tuple[UNetConfig, dict, str]:
    """The architecture, weights and a provenance note of the prior that --init-from names."""
    try:
        loaded = load_checkpoint(uri)
    except (CheckpointError, OSError) as err:
        raise SystemExit(f"--init-from {uri}: {err}") from err
    cfg = loaded.config
    if cfg.image_size != 32 or cfg.learn_sigma or cfg.class_cond:
        raise SystemExit(f"--init-from {uri}: need an unconditional 32 px ε-prediction model without learned sigma, "
                         f"got image_size={cfg.image_size}, learn_sigma={cfg.learn_sigma}, class_cond={cfg.class_cond}")
    return cfg.with_(dropout=dropout), loaded.model.state_dict(), f"{uri} (sha256 {loaded.sha256[:12]})"


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous state intact


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export = Path(args.export) if args.export else out / "prior.pt"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolutions
    autocast_dtype = AUTOCAST[args.precision]
    config, initial, init_note = make_config(args), None, None
    if args.init_from:
        config, initial, init_note = load_initial(args.init_from, args.dropout)

    model = build_unet(config)
    if initial is not None:
        model.load_state_dict(initial)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step, images_seen, elapsed = 0, 0, 0.0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    last = out / "last.pt"
    if last.exists() and not args.fresh:
        state = torch.load(last, map_location=device, weights_only=True)
        if state["flags"] != config.to_flags():
            raise SystemExit(f"{last} was trained with other model flags; use --fresh or another --out")
        trained_on = state.get("data", "cifar10")  # states from before --data existed are CIFAR-10 runs
        if trained_on != args.data:
            raise SystemExit(f"{last} was trained on {trained_on}, not {args.data}; use --fresh or another --out")
        if state.get("max_timestep") != args.max_timestep:
            raise SystemExit(f"{last} was trained with --max-timestep {state.get('max_timestep')}, not "
                             f"{args.max_timestep}; use --fresh or another --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, images_seen, elapsed = state["step"], state["images_seen"], state["elapsed_s"]
        rng = np.random.default_rng(args.seed + step)
        torch.manual_seed(args.seed + step)
        print(f"resumed from {last}: step {step}, {images_seen} images, {elapsed / 60:.1f} min", flush=True)

    data = load_dataset(args.data, "train").images  # N x 32 x 32 x 3 uint8, clean
    described, use_flips = TRAINING_SETS[args.data]
    pixels = torch.from_numpy(data).to(device)  # the whole set lives on the device (150 MB for CIFAR-10): no per-step copy
    alpha_bars = torch.tensor(NoiseSchedule.named(args.schedule).alphas_cumprod, dtype=torch.float32, device=device)
    if args.max_timestep is not None and not 0 <= args.max_timestep < len(alpha_bars):
        raise SystemExit(f"--max-timestep {args.max_timestep}: must be in 0..{len(alpha_bars) - 1}")
    t_high = len(alpha_bars) if args.max_timestep is None else args.max_timestep + 1
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {n_params / 1e6:.2f}M-parameter prior on {len(data)} images, budget {args.minutes} min, "
          f"{device}, {args.precision}", flush=True)

    def snapshot() -> None:
        save_state(last, {
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
            "images_seen": images_seen, "elapsed_s": elapsed, "flags": config.to_flags(),
            "data": args.data, "max_timestep": args.max_timestep,
        })
        save_bundle(export, ema, meta={
            "trained_on": described,
            "objective": "epsilon MSE, T=1000", "schedule": args.schedule, "steps": step,
            **({"max_timestep": args.max_timestep} if args.max_timestep is not None else {}),
            "images_seen": images_seen, "minutes": round(elapsed / 60, 1), "ema_decay": args.ema,
            "device": str(device), "precision": args.precision,
            **({"initialised_from": init_note} if init_note else {}),
            "command": "python jobs/train_prior.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        })

    log = open(out / "train_log.jsonl", "a")
    # The running loss stays on the device: reading it back every step would stall a GPU's queue.
    loss_sum, loss_n = torch.zeros((), device=device), 0
    t_start, t_window, last_save = time.time(), time.time(), time.time()
    base_elapsed, images_window = elapsed, 0
    model.train()
    last_loss = None  # None: this run made no step
    while elapsed < args.minutes * 60 and (not args.max_steps or step < args.max_steps):
        idx = rng.integers(0, len(data), args.batch)
        x0 = pixels[torch.from_numpy(idx).to(device)].permute(0, 3, 1, 2).float() / 127.5 - 1
        if use_flips:
            flip = torch.from_numpy(rng.random(args.batch) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, t_high, (args.batch,), device=device)
        noise = torch.randn_like(x0)
        ab = alpha_bars[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            predicted = model(x_t, t)
        loss = (predicted.float() - noise).pow(2).mean()
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        step += 1
        images_seen += args.batch
        images_window += args.batch
        loss_sum += loss.detach()
        last_loss = loss  # kept as a tensor: read once at the end
        loss_n += 1
        elapsed = base_elapsed + time.time() - t_start
        if step % args.log_every == 0:
            mean_loss = loss_sum.item() / loss_n  # waits for the device, so the rate below is true
            rate = images_window / (time.time() - t_window)
            rec = {"step": step, "images": images_seen, "loss": mean_loss, "img_per_s": round(rate, 1),
                   "minutes": round(elapsed / 60, 2)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            left = args.minutes - elapsed / 60
            print(f"step {step} loss {rec['loss']:.4f} {rate:.1f} img/s {elapsed / 60:.1f} min ({left:.1f} left)",
                  flush=True)
            loss_sum, loss_n, images_window, t_window = torch.zeros((), device=device), 0, 0, time.time()
        if time.time() - last_save > args.save_every_min * 60:
            snapshot()
            last_save = time.time()
    snapshot()
    print(f"done: {step} steps, {images_seen} images, {elapsed / 60:.1f} min; EMA prior at {export}", flush=True)
    if last_loss is not None and not math.isfinite(last_loss.item()):
        print("the loss is not finite: training diverged", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
