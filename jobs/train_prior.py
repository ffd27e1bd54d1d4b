"""Train the project's own unconditional diffusion prior (ε-prediction DDPM) on clean CIFAR-10 (or GTSRB).

What it trains: a 32 px UNet in our guided-diffusion-compatible layout (default: 32 channels, mults 1,2,2, 2 res
blocks, attention at 16 px: 1.7M parameters, the shipped prior's shape), ε-MSE on DDPM timesteps 0..999, Adam with
warm-up, gradient clipping at 1 and an EMA of the weights, which is what gets exported.
Data: the clean training split of --data, read from the shared data folder ($ZIP_SHARED_DIR/data, else ../shared/data)
and decoded once into $ZIP_CACHE_DIR (else ~/.cache/zip-purify).

Files in --out:
  last.pt            resume state (weights, EMA, optimiser, random streams), every --save-every-min minutes and on exit
  prior.pt           the EMA weights as a fp16 bundle (or where --export says: a path or a URI such as s3://bucket/
                     prior.pt, uploaded through fsspec), rewritten with every last.pt. --out itself must be local.
  train_log.jsonl    one JSON line per --log-every steps: step, images, mean loss, img/s, minutes
The console shows the same line with the minutes left of the budget.

Resume: run the same command again. It continues from OUT/last.pt (the same weights, optimiser and random streams),
and --minutes is the total training time across resumes (startup and loading the data are not counted), so to
train longer rerun with a larger --minutes. Ctrl-C or SIGTERM saves last.pt and the prior before it exits (exit
status 130 / 143; a second Ctrl-C or SIGTERM quits at once, unsaved); after a hard kill at most --save-every-min
minutes are lost. A last.pt made with another --data, --schedule, --max-timestep or other model flags is refused;
--fresh starts over. Optimiser settings (--lr, --batch, --warmup-steps, --ema, --precision, --device) may change on
resume (a note says so).

Use the result: python jobs/purify.py --checkpoint OUT/prior.pt --input ... --output ...
(or Purifier.from_checkpoint("OUT/prior.pt")). The repository ships priors of at most 20 MB: fp16 stores two bytes
per parameter, so up to about 64 channels at the default depth.

    python jobs/train_prior.py --minutes 90 --out runs/prior          # 2-core CPU default
    python jobs/train_prior.py --device cuda --precision bf16 --channels 64 --batch 256 --minutes 60 --out runs/prior-gpu
    python jobs/train_prior.py --data gtsrb --minutes 90 --out runs/prior-gtsrb  # an in-domain prior for GTSRB
    python jobs/train_prior.py --init-from pipeline/assets/cifar10_prior.pt --lr 1e-4 --minutes 60 --out runs/prior-ft

--init-from starts from an exported prior's weights (its architecture, and the noise schedule and --max-timestep it
records unless given; fresh optimiser), to train a shipped prior further or adapt it to another clean data set.
Rerunning that command resumes as above; an --init-from other than the one OUT/last.pt started from (or one given to a
run that started from random weights) is refused, since the resume would ignore it: add --fresh to start over from it,
or use another --out.

Exit status: 0 trained (or the budget was already spent) and exported; 1 training diverged (last.pt and the prior
keep the last good save) or the prior could not be written to --export (last.pt is saved: rerun to write it); 2 could
not start (a bad option, missing data, a refused --init-from or last.pt, an --out in use by another run); 130 / 143
interrupted by Ctrl-C / SIGTERM, after saving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import posixpath
import re
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/train_prior.py"):
    import fsspec
    import torch

    from pipeline.checkpoint import CheckpointError, load_checkpoint, save_bundle
    from pipeline.evaluation.datasets import DataError, load_dataset
    from pipeline.model import UNetConfig, build_unet
    from pipeline.schedule import NoiseSchedule
    from pipeline.settings import device_problem, seed_problem
    from pipeline.storage import describe, make_parent_dirs, replace_file, storage_path
    from pipeline.training_run import LogWindow, Recipe, TrainingRun, UnusableState
    from pipeline.version import versions

# Horizontal flips are a free augmentation for natural images but not for traffic signs, where a flipped
# "keep left" is a "keep right" the prior should not learn as equally likely.
TRAINING_SETS = {
    "cifar10": ("CIFAR-10 train (clean, shared JPEG copy), random horizontal flips", True),
    "gtsrb": ("GTSRB train (clean, shared 32x32 PPM copy), no flips", False),
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default after its help (where it has a value to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--data", default="cifar10", choices=sorted(TRAINING_SETS),
                   help="clean training set the prior learns (its train split, from the shared data folder)")
    p.add_argument("--out", default="runs/prior",
                   help="run folder: last.pt (resume state), train_log.jsonl and, without --export, prior.pt")
    p.add_argument("--export", default=None,
                   help="where to write the EMA weights as a fp16 bundle (default: OUT/prior.pt)")
    p.add_argument("--minutes", type=float, default=90.0,
                   help="training time budget in minutes, total across resumes (0: export what last.pt or --init-from "
                        "holds)")
    p.add_argument("--max-steps", type=int, default=0, help="also stop after this many optimiser steps (0: no limit)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this 32 px ε-prediction prior (path or URI); its architecture replaces the "
                        "width and depth options below, and the noise schedule and largest timestep it records are "
                        "the defaults of --schedule and --max-timestep")
    p.add_argument("--channels", type=int, default=32, help="UNet base width (num_channels); a multiple of 32")
    p.add_argument("--channel-mult", default="1,2,2", help="width multiplier per resolution level (32, 16, 8 px, ...)")
    p.add_argument("--res-blocks", type=int, default=2, help="residual blocks per level (num_res_blocks)")
    p.add_argument("--attention", default="16", help="attention resolutions in pixels, comma-separated ('' for none)")
    p.add_argument("--head-channels", type=int, default=32, help="channels per attention head")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout in the residual blocks")
    p.add_argument("--batch", type=int, default=64, help="images per optimiser step")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate after the warm-up")
    p.add_argument("--warmup-steps", type=int, default=200, help="steps of linear learning-rate warm-up")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (with the usual (1+n)/(10+n) warm-up)")
    p.add_argument("--schedule", default=None, choices=["linear", "cosine"],
                   help="noise schedule (β_t) (default: the one --init-from's prior records, else linear)")
    p.add_argument("--max-timestep", type=int, default=None, metavar="T",
                   help="train only on timesteps 0..T (default: the T --init-from's prior records, else all of "
                        "0..999). A prior for late-start purification "
                        "(--start S) only ever sees t <= S*1000, so it can spend its capacity there; such a prior "
                        "records T and the purifier refuses settings that would run it above T")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST),
                   help="bf16: the UNet's forward pass under bfloat16 autocast (a GPU's tensor cores; loss, optimiser "
                        "and EMA stay fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as many as torch picks)")
    p.add_argument("--save-every-min", type=float, default=5.0,
                   help="write last.pt and the prior every this many minutes (and always at the end or on Ctrl-C)")
    p.add_argument("--log-every", type=int, default=25, help="log every N steps")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights, the image order and the noise; 0 to 4294967295 (2**32 - 1)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore OUT/last.pt and start over. Any run that starts over keeps the previous train_log.jsonl "
                        "as train_log.jsonl.old (replacing an older one) and logs to a new train_log.jsonl")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad options before anything is built, trained or written (p.error: a usage message, exit status 2)."""
    for name in ("batch", "log_every", "channels", "res_blocks", "head_channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
    for name in ("max_steps", "warmup_steps", "threads"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    # The purify job's range: a resume reseeds from --seed + step, and torch refuses seeds of 2**64 or more, so a seed
    # near that trained a first run and then crashed its resume.
    problem = seed_problem("--seed", args.seed)
    if problem:
        p.error(problem)
    # inf is a fine "no limit" for the time options (--max-steps then ends the run); nan compares false to everything
    # and would silently end a run at once or never save.
    for name in ("minutes", "save_every_min"):
        if math.isnan(getattr(args, name)) or getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.ema < 1:
        p.error(f"--ema must be in [0, 1), got {args.ema}")
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    timesteps = NoiseSchedule.named(args.schedule or "linear").num_steps
    if args.max_timestep is not None and not 0 <= args.max_timestep < timesteps:
        p.error(f"--max-timestep {args.max_timestep}: must be in 0..{timesteps - 1}")
    problem = device_problem(args.device)
    if problem:
        p.error(problem)
    # Checked even with --init-from (which replaces them): a bad value is a mistake worth hearing about either way.
    problem = architecture_problem(args)
    if problem:
        p.error(problem)
    if is_uri(args.out):
        # The run folder is appended to (the log), locked and read back on resume: that needs a local file system.
        p.error(f"--out {args.out}: give a local folder (it holds the resumable state and the log); to upload the "
                f"prior, give the URI as --export, e.g. --export {args.out.rstrip('/')}/prior.pt")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file, not a folder")
    problem = unwritable_folder(out)
    if problem:
        p.error(f"--out {out}: {problem}")
    export_local = local_path(args.export) if args.export else None
    if args.export and export_local is None:
        try:  # only builds the file system (a missing s3fs or gcsfs is said now); writing it is tried at the first save
            storage_path(args.export, {})
        except (ImportError, ValueError, OSError) as err:
            p.error(f"--export {args.export}: {describe(err)}")
    elif export_local is not None:
        export = export_local
        # The run folder, or one above it, is a folder by the first save even when it is not there yet.
        if export.is_dir() or out.resolve().is_relative_to(export.resolve()):
            p.error(f"--export {args.export} is a folder; give the file to write, e.g. {export / 'prior.pt'}")
        if export.resolve() in {(out / name).resolve() for name in ("last.pt", LOG, ".lock")}:
            p.error(f"--export {args.export} would overwrite the run's own {export.name}")
        # Checked now: the first export comes with the first save, minutes into the run.
        problem = unwritable_folder(export.parent)
        if problem:
            p.error(f"--export {args.export}: {problem}")
    # The first save would replace the prior the run starts from, and a resume, which checks that it is the one the run
    # started from, would then be refused (and --fresh restart from the overwritten weights).
    # (The run's own OUT/prior.pt, the export without --export, is rewritten at every save too, and so is OUT/last.pt.)
    export_to = args.export or str(out / "prior.pt")
    init_local = local_path(args.init_from) if args.init_from else None
    if init_local is not None and init_local.resolve() == (out / "last.pt").resolve():
        p.error(f"--init-from {args.init_from} is the run's own last.pt, which every save rewrites; copy it elsewhere "
                "first, or start from OUT/prior.pt in another --out")
    export_to_local = local_path(export_to)
    if args.init_from and (export_to_local.resolve() == init_local.resolve()
                           if export_to_local is not None and init_local is not None else export_to == args.init_from):
        p.error(f"--export {export_to} would overwrite the --init-from prior the run starts from; export it elsewhere "
                "(another --export or --out; replace the old prior once the new one is trained)")


def is_uri(text: str) -> bool:
    """Whether an option names a location by URI (s3://, gs://, file://, ...) rather than a local path."""
    return fsspec.core.split_protocol(text)[0] is not None


def local_path(text: str) -> Path | None:
    """The local file an option names, as a path or a file:// (local://) URI; None for any other store."""
    protocol, rest = fsspec.core.split_protocol(text)
    if protocol is None:
        return Path(text)
    return Path(rest) if protocol in ("file", "local") else None


def unwritable_folder(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created as needed), or None. Creates nothing: bad options leave no
    trace."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def architecture_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the UNet width/depth options, named by flag; None when they build a 32 px UNet."""
    try:
        mults = [float(m) for m in args.channel_mult.split(",")]
    except ValueError:
        return f"--channel-mult must be comma-separated numbers such as 1,2,2, got {args.channel_mult!r}"
    if not all(math.isfinite(m) and m > 0 for m in mults):
        return f"--channel-mult must be positive numbers, got {args.channel_mult!r}"
    if len(mults) > 6:  # one halving per level but the last: 32 px allows 32, 16, 8, 4, 2, 1
        return f"--channel-mult {args.channel_mult}: {len(mults)} levels halve 32 px below one pixel; use at most 6"
    widths = [int(m * args.channels) for m in mults]
    if any(w < 1 or w % 32 for w in widths):
        return (f"--channels {args.channels} x --channel-mult {args.channel_mult} gives level widths {widths}; each must "
                f"be a positive multiple of 32 (the UNet's GroupNorm has 32 groups)")
    levels = {32 >> i: w for i, w in enumerate(widths)}  # resolution in px -> width
    try:
        attention = [int(a) for a in args.attention.split(",") if a.strip()]
    except ValueError:
        return f"--attention must be comma-separated resolutions in pixels such as 16,8, got {args.attention!r}"
    unreached = [a for a in attention if a not in levels]
    if unreached:
        return f"--attention {args.attention}: the UNet has no {unreached} px level (its levels: {sorted(levels)} px)"
    # The middle block always attends at the lowest resolution.
    for width in {levels[a] for a in attention} | {widths[-1]}:
        if width % args.head_channels:
            return f"--head-channels {args.head_channels} does not divide the width {width} of a level with attention"
    try:  # a last net for what the checks above miss; the meta device allocates nothing
        with torch.device("meta"):
            build_unet(make_config(args))
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return f"the UNet options (--channels, --channel-mult, --res-blocks, --attention, --head-channels) do not fit: {err}"
    return None


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}
LOG = "train_log.jsonl"
SHIP_MB = 20  # the largest prior the repository ships in pipeline/assets
OBJECTIVE = "epsilon"  # the only objective this script trains: ε-prediction MSE
STATE_KEYS = {"model", "ema", "opt", "step", "images_seen", "elapsed_s", "flags"}
# What a resumed last.pt must agree on: these change what the model learns, so a run that mixed them would be neither
# prior. Optimiser and bookkeeping settings (--lr, --warmup-steps, --batch, --ema, --precision, --seed, --minutes,
# --max-steps, --device, --threads) may change on resume: they change how the same objective is optimised, not what it is.
# The model flags (width, depth, attention, dropout, learn_sigma) are compared separately.
LEARNED = ("data", "schedule", "max_timestep", "objective", "timesteps")
# The value a last.pt written before a setting was recorded was trained with; the schedule has always been a flag, so an
# old state's schedule is unknown (None).
LEGACY = {"data": "cifar10", "schedule": None, "max_timestep": None, "objective": OBJECTIVE, "timesteps": 1000}


def make_config(args: argparse.Namespace) -> UNetConfig:
    return UNetConfig(
        image_size=32, num_channels=args.channels, num_res_blocks=args.res_blocks, channel_mult=args.channel_mult,
        attention_resolutions=args.attention, num_head_channels=args.head_channels, use_scale_shift_norm=True,
        resblock_updown=False, learn_sigma=False, class_cond=False, dropout=args.dropout,
    )


def load_initial(uri: str, dropout: float) -> tuple[UNetConfig, dict, str, dict]:
    """The architecture, weights, a provenance note and the meta of the prior that --init-from names."""
    try:
        loaded = load_checkpoint(uri)
    except (CheckpointError, OSError) as err:
        raise SystemExit(f"error: --init-from {uri}: {err}") from err
    cfg = loaded.config
    if cfg.image_size != 32 or cfg.learn_sigma or cfg.class_cond:
        raise SystemExit(f"error: --init-from {uri}: need an unconditional 32 px ε-prediction model without learned sigma, "
                         f"got image_size={cfg.image_size}, learn_sigma={cfg.learn_sigma}, class_cond={cfg.class_cond}")
    return cfg.with_(dropout=dropout), loaded.model.state_dict(), f"{uri} (sha256 {loaded.sha256[:12]})", loaded.meta


def resolve_noise_settings(args: argparse.Namespace, init_meta: dict | None) -> None:
    """--schedule and --max-timestep not given: the ones --init-from's prior records (one that records none, e.g. a
    guided-diffusion .pt, was trained on the linear schedule over every timestep), else linear over all. Before, such a
    prior went on training, and with --minutes 0 was exported, as linear over 0..999 whatever it had learned, and the
    purifier sampled it at noise levels it never saw."""
    meta = init_meta or {}
    inherited = []
    if args.schedule is None:
        args.schedule = meta.get("schedule") or "linear"
        if args.schedule != "linear":
            inherited.append(f"the {args.schedule} noise schedule")
    if args.max_timestep is None and meta.get("max_timestep") is not None:
        args.max_timestep = meta["max_timestep"]
        timesteps = NoiseSchedule.named(args.schedule).num_steps
        if not args.max_timestep < timesteps:
            raise SystemExit(f"error: --init-from {args.init_from} records max_timestep {args.max_timestep}, beyond the "
                             f"{args.schedule} schedule's timesteps 0..{timesteps - 1}")
        inherited.append(f"timesteps 0..{args.max_timestep}")
    if inherited:
        print(f"note: training with {' and '.join(inherited)} that --init-from {args.init_from} was trained with "
              "(give --schedule / --max-timestep to change them)", flush=True)


def _sha_of(note: str | None) -> str | None:
    """The weights' sha256 prefix in an --init-from provenance note ("URI (sha256 0123abcd...)"), or None."""
    found = re.search(r"\(sha256 ([0-9a-f]+)\)$", note or "")
    return found.group(1) if found else None


def check_init_from_resumable(last: Path, state: dict, init_from: str, init_note: str | None) -> None:
    """Refuse an --init-from that a resume would ignore: last.pt's weights win, so a user meaning to fine-tune another
    prior into this folder would silently go on training the old run. Rerunning the same command (the prior it started
    from, the same weights) resumes as before; a state from before it recorded its start gets a note instead."""
    if "initialised_from" not in state:
        print(f"note: resuming {last}, which does not record what it started from; --init-from {init_from} is not used "
              f"(its weights come from {last.name})", file=sys.stderr, flush=True)
        return
    before = state["initialised_from"]
    if before is not None and _sha_of(before) == _sha_of(init_note):
        return
    started = f"started from {before}" if before else "started from random weights"
    raise SystemExit(f"error: --init-from {init_from}: {last} holds a run to resume that {started}, and resuming it "
                     f"would ignore --init-from; to start over from {init_from}, add --fresh (last.pt is then "
                     f"overwritten) or use another --out; to resume the run, leave out --init-from")


def write_export(export: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """Write the fp16 bundle to a local path, or upload it to a URI (s3://, gs://, ...) through fsspec, as --init-from
    reads one; an upload is one PUT, so a reader sees the old prior or the new one."""
    if isinstance(export, Path):
        save_bundle(export, model, meta=meta)
        return
    with tempfile.TemporaryDirectory() as tmp:  # save_bundle writes files; the bytes are then uploaded
        staged = Path(tmp) / "prior.pt"
        save_bundle(staged, model, meta=meta)
        data = staged.read_bytes()
    fs, path = storage_path(export, {})
    make_parent_dirs(fs, posixpath.dirname(path))
    replace_file(fs, path, data, f"write {export}")


def learned_settings(args: argparse.Namespace, timesteps: int) -> dict:
    return {"data": args.data, "schedule": args.schedule, "max_timestep": args.max_timestep, "objective": OBJECTIVE,
            "timesteps": timesteps}


def load_state(last: Path, device: torch.device) -> dict:
    """The resume state in OUT/last.pt; a file that cannot be read as one is an error naming it (it is left in place)."""
    try:
        state = torch.load(last, map_location=device, weights_only=True)
    except Exception as err:  # a truncated zip, a pickle torch refuses, a folder: all mean "cannot resume from this"
        raise SystemExit(f"error: {last} is damaged and cannot be resumed ({type(err).__name__}: {err}); pass --fresh "
                         f"to start over (it is then overwritten), or delete it") from err
    missing = STATE_KEYS - set(state) if isinstance(state, dict) else STATE_KEYS
    if missing:
        raise SystemExit(f"error: {last} is damaged or not a training state (it lacks {', '.join(sorted(missing))}); "
                         f"pass --fresh to start over (it is then overwritten), or delete it")
    return state


def check_resumable(last: Path, state: dict, config: UNetConfig, learned: dict) -> None:
    """Refuse to continue a run whose model or learning problem differs from this command's (see LEARNED)."""
    again = "; use --fresh or another --out"
    flags = config.to_flags()
    if state["flags"] != flags:
        differ = ", ".join(f"{k} {state['flags'].get(k)}, not {v}" for k, v in flags.items() if state["flags"].get(k) != v)
        raise SystemExit(f"error: {last} was trained with other model flags ({differ}){again}")
    for name in LEARNED:
        before = state.get(name, LEGACY[name])
        if name == "schedule" and before is None:
            print(f"warning: {last} predates recording its noise schedule; assuming it is --schedule {learned[name]}",
                  file=sys.stderr, flush=True)
        elif before != learned[name]:
            if name == "data":
                raise SystemExit(f"error: {last} was trained on {before}, not {learned[name]}{again}")
            flag = {"schedule": "--schedule", "max_timestep": "--max-timestep"}.get(name, name)
            raise SystemExit(f"error: {last} was trained with {flag} {before}, not {learned[name]}{again}")


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous state intact


# Optimiser settings a resume may change (see LEARNED); recorded so that a change is said, not silent. (--seed is not
# one: a resumed run continues the saved random streams.)
OPTIMISER = ("batch", "lr", "warmup_steps", "ema", "precision", "device")


def note_optimiser_changes(last: Path, state: dict, args: argparse.Namespace) -> None:
    """Print one note per optimiser setting this resume changes (a state from before they were recorded: none)."""
    before = state.get("optimiser", {})
    for name in OPTIMISER:
        if name in before and before[name] != getattr(args, name):
            print(f"note: resuming {last} with --{name.replace('_', '-')} {getattr(args, name)}; it was trained so "
                  f"far with {before[name]}", file=sys.stderr, flush=True)


def trim_log(log_path: Path, step: int) -> None:
    """Drop the log lines a resume is about to redo: a hard kill loses the steps since the last save, and their lines
    (and a line cut off mid-write) would otherwise sit before the redone ones, so the log ran backwards in steps."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line + "\n")
    tmp = log_path.with_name(LOG + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log_path)


@contextlib.contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold OUT/.lock while training. Two runs into one folder would append to one log and replace each other's
    last.pt through the same temporary file; the second one is refused instead."""
    with open(out / ".lock", "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: run without the lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise SystemExit(f"error: another train_prior.py run is training into {out} (it holds {out / '.lock'}); "
                             f"wait for it or stop it, or use another --out") from err
        except OSError:  # a file system without locks
            pass
        yield  # closing the file releases the lock


class SecondSignal(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM while stopping: quit at once, with that signal's exit status (143 for SIGTERM, which
    a scheduler reads as its stop; not Ctrl-C's 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """Turns Ctrl-C and SIGTERM into a request the training loop honours after its current step, so the state it saves
    is a whole step's. A second signal while stopping raises SecondSignal, a KeyboardInterrupt (the previous files stay
    whole: every save is atomic)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise SecondSignal(signum)
        self.signum = signum
        # The way to quit at once is the signal that came: Ctrl-C is advice for a terminal, not for a scheduler's stop
        # (SIGTERM), which is usually followed by SIGKILL after its grace period anyway.
        again = "Ctrl-C again" if signum == signal.SIGINT else f"another {signal.Signals(signum).name}"
        print(f"\n{signal.Signals(signum).name}: saving the state after this step ({again} to quit without saving)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                # An ignored signal stays ignored: a shell starts background jobs (cmd &) with SIGINT ignored, so that
                # the terminal's Ctrl-C does not stop them, and nohup-like launchers do the same for others.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def start_run(args: argparse.Namespace, config: UNetConfig, initial: dict | None, device: torch.device) -> TrainingRun:
    """A fresh run of the UNet `config` describes: --init-from's weights, else random ones drawn from --seed."""
    # Seeded before the model is built: its initial weights are the first thing drawn from torch's RNG, which a fresh
    # process seeds at random, so two runs with the same --seed started from different weights.
    torch.manual_seed(args.seed)
    model = build_unet(config)
    if initial is not None:
        model.load_state_dict(initial)
    return TrainingRun.start(model.to(device), device, args.lr, args.seed)


def resume(run: TrainingRun, last: Path, args: argparse.Namespace, config: UNetConfig, learned: dict,
           init_note: str | None) -> str | None:
    """Continue `run` from last.pt, after refusing a state this command must not continue; the provenance note of the
    weights it now holds. The random streams (which images, flips, timesteps, noise, dropout) continue where the state
    left them, so a resumed run trains as the uninterrupted one would."""
    state = load_state(last, run.device)
    check_resumable(last, state, config, learned)
    if args.init_from:
        check_init_from_resumable(last, state, args.init_from, init_note)
    try:
        run.restore(state, args.seed)
    except UnusableState as err:
        raise SystemExit(f"error: {last} is damaged and cannot be resumed ({err}); pass --fresh to start over "
                         f"(it is then overwritten), or delete it") from err.__cause__
    print(f"resumed from {last}: step {run.step}, {run.images_seen} images, {run.elapsed / 60:.1f} min", flush=True)
    note_optimiser_changes(last, state, args)
    # The weights, and so their provenance, come from last.pt (a state from before it recorded one: this command's)
    return state["initialised_from"] if "initialised_from" in state else init_note


def load_training_images(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """--data's clean training split, N x 32 x 32 x 3 uint8, on the device: the whole set lives there (150 MB for
    CIFAR-10), so no step copies images."""
    try:
        data = load_dataset(args.data, "train").images
    except DataError as err:  # the message names the folder and the variable to set
        raise SystemExit(f"error: --data {args.data}: {err}") from err
    return torch.from_numpy(data).to(device)


def make_recipe(args: argparse.Namespace, alpha_bars: torch.Tensor) -> Recipe:
    """How this command's steps train (a resume may change these; see OPTIMISER)."""
    t_high = len(alpha_bars) if args.max_timestep is None else args.max_timestep + 1
    return Recipe(alpha_bars=alpha_bars, t_high=t_high, batch=args.batch, lr=args.lr, warmup_steps=args.warmup_steps,
                  ema=args.ema, autocast=AUTOCAST[args.precision], flips=TRAINING_SETS[args.data][1])


def announce(run: TrainingRun, n_images: int, args: argparse.Namespace, export: str | Path) -> None:
    """What is about to be trained, and a note when the export would be too large to ship."""
    n_params = sum(p.numel() for p in run.model.parameters())
    export_mb = n_params * 2 / 1e6  # fp16 weights; the bundle's flags and meta add a few kB
    print(f"training {n_params / 1e6:.2f}M-parameter prior on {n_images} images, budget {args.minutes} min, "
          f"{run.device}, {args.precision}; export {export} about {export_mb:.1f} MB", flush=True)
    if export_mb > SHIP_MB:
        print(f"note: a {export_mb:.0f} MB prior works with --checkpoint but is over the {SHIP_MB} MB a prior shipped in "
              f"pipeline/assets may take (fewer --channels or --res-blocks make it smaller)", file=sys.stderr, flush=True)


class Saves:
    """Writes last.pt (the run's state and what it was trained as) and the exported prior (the EMA weights and how they
    were made), and keeps what the saves so far left: the step last.pt holds, and why the latest export failed.
    (A plain class: the tests load this script without registering it as a module, which dataclasses need.)"""

    def __init__(self, args: argparse.Namespace, argv: list[str] | None, last: Path, export: str | Path,
                 config: UNetConfig, learned: dict, init_note: str | None, saved_step: int | None) -> None:
        self.args, self.argv, self.last, self.export = args, argv, last, export
        self.config, self.learned, self.init_note = config, learned, init_note
        self.saved_step = saved_step
        self.export_error: str | None = None

    def save(self, run: TrainingRun) -> None:
        self.saved_step = run.step
        save_state(self.last, {
            **run.state_dict(), "flags": self.config.to_flags(), **self.learned, "initialised_from": self.init_note,
            "optimiser": {name: getattr(self.args, name) for name in OPTIMISER},
        })
        try:
            write_export(self.export, run.ema, self.meta(run))
            self.export_error = None
        except Exception as err:  # noqa: BLE001 - last.pt is saved; a failed upload must not end hours of training
            self.export_error = describe(err)
            print(f"warning: could not write the prior to {self.export} ({self.export_error}); {self.last} is saved, "
                  f"and the next save tries again", file=sys.stderr, flush=True)

    def meta(self, run: TrainingRun) -> dict:
        """The exported prior's meta: what it learned, for how long, and the command and versions that trained it."""
        args = self.args
        return {
            "trained_on": TRAINING_SETS[args.data][0],
            "objective": f"epsilon MSE, T={self.learned['timesteps']}", "schedule": args.schedule, "steps": run.step,
            **({"max_timestep": args.max_timestep} if args.max_timestep is not None else {}),
            "images_seen": run.images_seen, "minutes": round(run.elapsed / 60, 1), "ema_decay": args.ema,
            "device": str(run.device), "precision": args.precision,
            **({"initialised_from": self.init_note} if self.init_note else {}),
            # Quoted as a shell reads it: a plain join lost --attention '' (and split paths with spaces).
            "command": shlex.join(["python", "jobs/train_prior.py", *(self.argv if self.argv is not None else sys.argv[1:])]),
            "versions": versions(),  # the code and libraries it was trained with
        }


@contextlib.contextmanager
def open_log(log_path: Path, resumed_at: int | None) -> Iterator[TextIO]:
    """The run's log, to append to: trimmed to the resumed step, or (a run that starts over) a new one."""
    if resumed_at is not None:
        trim_log(log_path, resumed_at)
    elif log_path.exists():
        # A run that starts over starts a new log; the old run's is kept (once) rather than mixed into it or lost.
        os.replace(log_path, log_path.with_name(LOG + ".old"))
        print(f"starting over: the previous {log_path} is now {LOG}.old", flush=True)
    with open(log_path, "a") as log:
        yield log


def budget_spent(run: TrainingRun, args: argparse.Namespace) -> bool:
    """Whether a resumed run has nothing left to train (--minutes or --max-steps reached)."""
    return bool(run.elapsed >= args.minutes * 60 or (args.max_steps and run.step >= args.max_steps))


def within_budget(run: TrainingRun, args: argparse.Namespace) -> bool:
    # Not `not budget_spent(...)`: a NaN elapsed time (a hand-made state) compares false both ways, and stops the run.
    return bool(run.elapsed < args.minutes * 60 and (not args.max_steps or run.step < args.max_steps))


def log_line(log: TextIO, run: TrainingRun, window: LogWindow, args: argparse.Namespace) -> bool:
    """Write the window's line to the log and the console, then open the next window; whether its mean loss is finite."""
    mean_loss, rate = window.read()
    rec = {"step": run.step, "images": run.images_seen, "loss": mean_loss, "img_per_s": round(rate, 1),
           "minutes": round(run.elapsed / 60, 2)}
    log.write(json.dumps(rec) + "\n")
    log.flush()
    left = max(0.0, args.minutes - run.elapsed / 60)
    if args.max_steps and rate > 0:  # whichever limit comes first ends the run
        left = min(left, (args.max_steps - run.step) * args.batch / rate / 60)
    print(f"step {run.step} loss {rec['loss']:.4f} {rate:.1f} img/s {run.elapsed / 60:.1f} min ({left:.1f} min left)",
          flush=True)
    window.restart()
    return math.isfinite(mean_loss)


def train(run: TrainingRun, pixels: torch.Tensor, recipe: Recipe, args: argparse.Namespace, saves: Saves,
          stop: StopRequest, log: TextIO) -> bool:
    """Train until the budget or --max-steps is spent, a signal asks to stop, or the run diverges (a loss or weights not
    finite: then nothing more is saved); save every --save-every-min minutes and at the end. Whether it diverged."""
    t_start = last_save = time.time()
    base_elapsed, window = run.elapsed, LogWindow(run.device)
    run.model.train()
    diverged = False
    while stop.signum is None and not diverged and within_budget(run, args):
        window.add(run.train_step(pixels, recipe), recipe.batch)
        run.elapsed = base_elapsed + time.time() - t_start
        if run.step % args.log_every == 0:
            diverged = not log_line(log, run, window, args)  # (not diverged so far: the loop checks it)
        if time.time() - last_save > args.save_every_min * 60:
            diverged = diverged or not run.weights_sound()
            if not diverged:
                saves.save(run)
            last_save = time.time()
    if window.steps:  # the steps since the last line (a run rarely ends on a multiple of --log-every)
        finite = log_line(log, run, window, args)
        diverged = diverged or not finite
    diverged = diverged or not run.weights_sound()
    if not diverged:
        saves.save(run)
    return diverged


def farewell(run: TrainingRun, saves: Saves, diverged: bool, signum: int | None, fresh: bool) -> int:
    """The run's last words and its exit status."""
    last, export, step = saves.last, saves.export, run.step
    if diverged:
        kept = "nothing was saved" if saves.saved_step is None else f"{last} and {export} keep step {saves.saved_step}"
        print(f"error: training diverged by step {step} (a loss or weights not finite, or past fp16's range); {kept}. "
              f"Rerun with a lower --lr to continue from the last save, or --fresh", file=sys.stderr, flush=True)
        return 1
    # the same command with --fresh would start over from scratch, discarding the state just saved
    again = "rerun the same command without --fresh" if fresh else "rerun the same command"
    if saves.export_error is not None:
        print(f"error: the prior could not be written to {export} ({saves.export_error}); {last} holds step {step}: "
              f"{again} to write it (with the budget spent it only exports)", file=sys.stderr, flush=True)
        return 1
    if signum is not None:
        print(f"interrupted at step {step} ({run.elapsed / 60:.1f} min): saved {last} and the EMA prior at {export}; "
              f"{again} to resume", file=sys.stderr, flush=True)
        return 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    print(f"done: {step} steps, {run.images_seen} images, {run.elapsed / 60:.1f} min; EMA prior at {export}", flush=True)
    print(f"use it: python jobs/purify.py --checkpoint {export} --input ... --output ...", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) the prior and export it; the exit status is the module docstring's."""
    args = parse_args(argv)  # every option is checked here, before anything is built or written
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    last = out / "last.pt"
    # A URI stays a string (written through fsspec); a local path is a Path.
    export: str | Path = args.export if args.export and is_uri(args.export) else Path(args.export or out / "prior.pt")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolutions
    config, initial, init_note, init_meta = make_config(args), None, None, None
    if args.init_from:
        config, initial, init_note, init_meta = load_initial(args.init_from, args.dropout)
    resolve_noise_settings(args, init_meta)
    run = start_run(args, config, initial, device)
    alpha_bars = torch.tensor(NoiseSchedule.named(args.schedule).alphas_cumprod, dtype=torch.float32, device=device)
    learned = learned_settings(args, len(alpha_bars))
    resumed = last.exists() and not args.fresh
    if resumed:
        init_note = resume(run, last, args, config, learned, init_note)
    elif args.minutes == 0 and initial is None:
        raise SystemExit(f"error: --minutes 0 with nothing to start from (no {last} to resume, no --init-from) would "
                         f"export an untrained prior")
    pixels = load_training_images(args, device)
    run.match_data(len(pixels))  # a restored epoch order of another data set is not continued
    announce(run, len(pixels), args, export)
    recipe = make_recipe(args, alpha_bars)
    saves = Saves(args, argv, last, export, config, learned, init_note, saved_step=run.step if resumed else None)

    out.mkdir(parents=True, exist_ok=True)
    # Held to the end, so that a second run into this folder is refused (see lock_run_folder) and a signal saves the
    # state (see StopRequest).
    with lock_run_folder(out), StopRequest() as stop, open_log(out / LOG, run.step if resumed else None) as log:
        if resumed and budget_spent(run, args):
            print(f"nothing to train: the budget ({args.minutes} min, --max-steps {args.max_steps}) is spent; rerun with a "
                  f"larger --minutes or --max-steps to train longer", flush=True)
        diverged = train(run, pixels, recipe, args, saves, stop, log)
    return farewell(run, saves, diverged, stop.signum, args.fresh)


def cli(argv: list[str] | None = None) -> int:
    """The command line: main's exit status (argparse's usage errors: 2), with its refusals (a SystemExit carrying an
    "error: ..." line: missing data, a refused --init-from or last.pt, an --out in use) as that one line and status 2,
    like argparse's own; Ctrl-C outside the training loop (loading data, building the model) as one line and 130."""
    try:
        return main(argv)
    except SystemExit as err:
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr, flush=True)
            return 2
        if isinstance(err.code, int):  # argparse's usage errors (2) and --help (0), as a status callers can test
            return err.code
        raise
    except KeyboardInterrupt as err:
        # Before training (reading the data, building the model) or a second Ctrl-C / SIGTERM: every save is atomic, so
        # the run folder holds the last save's whole files.
        signum = err.signum if isinstance(err, SecondSignal) else signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name}): the run folder keeps its last save; rerun the same command "
              "to resume", file=sys.stderr, flush=True)
        return 128 + signum


if __name__ == "__main__":
    raise SystemExit(cli())
