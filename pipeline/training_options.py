"""`jobs/train_prior.py`'s options checked and turned into what a run trains: the refusals made before anything is
built, trained or written (usage errors, exit status 2), the UNet the width and depth options describe, or the prior
--init-from names, and the noise settings --init-from's prior records.
"""

from __future__ import annotations

import argparse
import math
import posixpath
from pathlib import Path

import fsspec
import torch

from pipeline.checkpoint import CheckpointError, advice_without_model_options, load_checkpoint
from pipeline.evaluation.datasets import folder_variable_problem
from pipeline.local_folders import LocalPathError, folder_problem, remote_uri
from pipeline.local_folders import local_path as read_local_path
from pipeline.model import UNetConfig, build_unet
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.schedule import NoiseSchedule
from pipeline.settings import device_problem, seed_problem
from pipeline.storage import (
    describe,
    discard,
    local_file_path,
    make_parent_dirs,
    storage_path,
    temporary_name,
    url_connection_options,
    with_retries,
)
from pipeline.training_run_folder import LOG, provenance_note

# Horizontal flips are a free augmentation for natural images but not for traffic signs, where a flipped
# "keep left" is a "keep right" the prior should not learn as equally likely.
TRAINING_SETS = {
    "cifar10": ("CIFAR-10 train (clean, shared JPEG copy), random horizontal flips", True),
    "gtsrb": ("GTSRB train (clean, shared 32x32 PPM copy), no flips", False),
}
# --precision: the dtype of the UNet's forward pass under autocast (None: plain fp32)
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad options before anything is built, trained or written (p.error: a usage message, exit status 2)."""
    # An empty one (`--init-from "$PRIOR"` with the variable unset) was taken as not given, or as the current folder:
    # a run trained from random weights for its whole budget, or kept its state and prior in the folder it ran in.
    for name, leave_out in (("out", "runs/prior"), ("export", "OUT/prior.pt"), ("init_from", "random weights")):
        if getattr(args, name) == "":
            p.error(f"--{name.replace('_', '-')} is empty; give a path, or leave it out ({leave_out})")
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
    # those given (not at their defaults), which --init-from's architecture replaces (`note_replaced_width_options`)
    args.width_options_given = [name for name in WIDTH_OPTIONS if getattr(args, name) != p.get_default(name)]
    problem = folder_variable_problem()  # $ZIP_SHARED_DIR and $ZIP_CACHE_DIR, the data and its decoded copy
    if problem:
        p.error(problem)
    if remote_uri(args.out):
        # The run folder is appended to (the log), locked and read back on resume: that needs a local file system.
        shown = redact_uri(args.out)  # a server's password in it (ftp://user:password@host/...) as '***'
        p.error(f"--out {shown}: give a local folder (it holds the resumable state and the log); to upload the "
                f"prior, give the URI as --export, e.g. --export {shown.rstrip('/')}/prior.pt")
    # What the run writes to: a file:// URI as its path, and a '~' the shell left (zsh's --out=~/x, a quoted "~/x") as
    # the home folder, not a folder named '~' in the current one. Likewise a local --export and --init-from.
    for name in ("out", "export", "init_from"):
        text = getattr(args, name)
        if text and (name == "out" or not is_uri(text)):
            try:
                setattr(args, name, str(read_local_path(text)))
            except LocalPathError as err:
                p.error(f"--{name.replace('_', '-')} {text}: {err}")
    out = Path(args.out)
    problem = unwritable_folder(out)  # a file there or on the way, a link that leads nowhere, no permission
    if problem:
        p.error(f"--out {out}: {problem}")
    export_local = local_path(args.export) if args.export else None
    if args.export and export_local is None:
        if args.export.lower().startswith(("http://", "https://")):
            # fsspec's HTTP file system cannot write: every save would fail, and the run end with status 1
            p.error(f"--export {redact_uri(args.export)}: a web address is read-only here; give a path or a URI of "
                    "storage the run can write (s3://..., gs://...), and serve the prior from there")
        try:  # builds the file system (a missing s3fs or gcsfs is said now)
            storage_path(args.export, url_connection_options(args.export))
        except (ImportError, ValueError, OSError, TypeError) as err:
            p.error(redact_uri_secrets(f"--export {args.export}: {describe(err)}", args.export))
        # Tried now, not at the first save minutes (or hours) into the run: a missing bucket, no credentials or
        # read-only ones failed only there, and the run then ended with status 1 after the whole budget.
        problem = unwritable_uri(args.export)
        if problem:  # the URI's credentials (a password in it, a signed query) are not echoed
            p.error(redact_uri_secrets(f"--export {args.export}: cannot write there ({problem}); fix the URI or the "
                                       "credentials, or give a local path", args.export))
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
        p.error(f"--export {redact_uri(export_to)} would overwrite the --init-from prior the run starts from; export it "
                "elsewhere (another --export or --out; replace the old prior once the new one is trained)")


def is_uri(text: str) -> bool:
    """Whether an option names a location by URI (s3://, gs://, file://, ...) rather than a local path."""
    return fsspec.core.split_protocol(text)[0] is not None


def local_path(text: str) -> Path | None:
    """The local file an option names, as a path or a file:// (local://) URI; None for any other store. A '~' in a
    file:// URI is the home folder, as fsspec reads and writes it (`check_args` has read a bare path's already): taken
    as a folder named '~', --init-from ~/p.pt --export file://~/p.pt was not seen to overwrite the prior it started
    from."""
    path = local_file_path(text)
    return None if path is None else Path(path)


def unwritable_folder(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created as needed), or None. Creates nothing: bad options leave no
    trace."""
    return folder_problem(folder)


def unwritable_uri(uri: str) -> str | None:
    """Why a file cannot be written at `uri` (an object store's or a server's), or None: a small hidden file is written
    beside it and deleted (a store's answer is the only sure test of a bucket, credentials and permissions)."""
    fs, path = storage_path(uri, url_connection_options(uri))
    probe = temporary_name(path)
    try:
        make_parent_dirs(fs, posixpath.dirname(path))
        with_retries(lambda: fs.pipe_file(probe, b""), f"write {uri}")
    except Exception as err:  # noqa: BLE001 - any failure to write is the answer, named
        return describe(err)
    discard(fs, probe)
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


# The options that describe the UNet's width and depth (as dests), each with the UNetConfig field it sets.
WIDTH_OPTIONS = {"channels": "num_channels", "channel_mult": "channel_mult", "res_blocks": "num_res_blocks",
                 "attention": "attention_resolutions", "head_channels": "num_head_channels"}


def note_replaced_width_options(args: argparse.Namespace, config: UNetConfig) -> None:
    """Say which width options given beside --init-from go unused: its prior's architecture (`config`) replaces them,
    as --help says, and a run given --channels 64 otherwise trained the prior's 32 channels without a word."""
    given = getattr(args, "width_options_given", [])
    if not args.init_from or not given:
        return
    shown = ", ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in given)
    prior = ", ".join(f"{WIDTH_OPTIONS[name]}={getattr(config, WIDTH_OPTIONS[name])}" for name in given)
    print(f"note: {shown} not used: the architecture is --init-from {redact_uri(args.init_from)}'s ({prior}); leave "
          "them out, or train from random weights without --init-from", flush=True)


def make_config(args: argparse.Namespace) -> UNetConfig:
    return UNetConfig(
        image_size=32, num_channels=args.channels, num_res_blocks=args.res_blocks, channel_mult=args.channel_mult,
        attention_resolutions=args.attention, num_head_channels=args.head_channels, use_scale_shift_norm=True,
        resblock_updown=False, learn_sigma=False, class_cond=False, dropout=args.dropout,
    )


def load_initial(uri: str, dropout: float) -> tuple[UNetConfig, dict, str, dict]:
    """The architecture, weights, a provenance note and the meta of the prior that --init-from names. The note
    ("URI (sha256 0123abcd...)", kept in last.pt and the exported prior) and the errors name the URI without a server's
    password (ftp://user:***@host/prior.pt): an exported prior is shared, stderr ends up in CI logs."""
    try:
        loaded = load_checkpoint(uri)
    except (CheckpointError, OSError) as err:
        # a server's password in the URI (ftp://user:password@host/prior.pt) not echoed: stderr ends up in CI logs
        raise SystemExit(redact_uri_secrets(f"error: --init-from {uri}: {advice_without_model_options(err)}", uri)) from err
    cfg = loaded.config
    if cfg.image_size != 32 or cfg.learn_sigma or cfg.class_cond:
        raise SystemExit(f"error: --init-from {redact_uri(uri)}: need an unconditional 32 px ε-prediction model without "
                         f"learned sigma, got image_size={cfg.image_size}, learn_sigma={cfg.learn_sigma}, "
                         f"class_cond={cfg.class_cond}")
    return cfg.with_(dropout=dropout), loaded.model.state_dict(), provenance_note(uri, loaded.sha256), loaded.meta


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
            raise SystemExit(f"error: --init-from {redact_uri(args.init_from)} records max_timestep {args.max_timestep}, "
                             f"beyond the {args.schedule} schedule's timesteps 0..{timesteps - 1}")
        inherited.append(f"timesteps 0..{args.max_timestep}")
    if inherited:
        print(f"note: training with {' and '.join(inherited)} that --init-from {redact_uri(args.init_from)} was trained "
              "with (give --schedule / --max-timestep to change them)", flush=True)
