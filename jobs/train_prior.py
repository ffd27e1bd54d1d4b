"""Train the project's own unconditional diffusion prior (ε-prediction DDPM) on clean CIFAR-10 (or GTSRB).

What it trains: a 32 px UNet in our guided-diffusion-compatible layout (default: 32 channels, mults 1,2,2, 2 res
blocks, attention at 16 px: 1.7M parameters, the shipped prior's shape), ε-MSE on DDPM timesteps 0..999, Adam with
warm-up, gradient clipping at 1 and an EMA of the weights, which is what gets exported.
Data: the clean training split of --data, read from the shared data folder ($ZIP_SHARED_DIR/data, else shared/data
beside the repository's folder) and decoded once into $ZIP_CACHE_DIR (else ~/.cache/zip-purify).

Files in --out:
  last.pt            resume state (weights, EMA, optimiser, random streams), every --save-every-min minutes and on exit
  prior.pt           the EMA weights as a fp16 bundle (or where --export says: a path or a URI such as s3://bucket/
                     prior.pt, uploaded through fsspec), rewritten with every last.pt. --out itself must be a local
                     folder (a path, ~/..., or file://...).
                     Both are checked before the first step: a URI by writing a small hidden file beside it and
                     deleting it, so a missing bucket or credentials stop the run at once (exit status 2).
  train_log.jsonl    one JSON line per --log-every steps: step, images, mean loss, img/s, minutes
  .lock              held while a run trains, so that a second run into the same --out is refused (an empty file,
                     left in place; no run holds it after its process ends, a killed one's included)
The console shows the same line with the minutes left of the budget.

Resume: run the same command again. It continues from OUT/last.pt (the same weights, optimiser and random streams),
and --minutes is the total training time across resumes (startup and loading the data are not counted), so to
train longer rerun with a larger --minutes. Ctrl-C or SIGTERM saves last.pt and the prior before it exits (exit
status 130 / 143; a second Ctrl-C or SIGTERM quits at once, unsaved); after a hard kill at most --save-every-min
minutes are lost. A last.pt made with another --data, --schedule, --max-timestep (999 and none are the same: every
timestep) or other model flags is refused; --fresh starts over. Optimiser settings (--lr, --batch, --warmup-steps,
--ema, --precision, --device) may change on resume (a note says so; a rerun with the budget spent trains nothing, so
last.pt and the prior go on recording the ones it trained with); another --seed changes nothing (the run continues its
saved random streams; a note says so). So do other training images than last.pt records (their count and sha256: another
copy of --data, such as another $ZIP_SHARED_DIR): the run goes on with them, and a note says so.

Use the result: python jobs/purify.py --checkpoint OUT/prior.pt --input ... --output ...
(or Purifier.from_checkpoint("OUT/prior.pt")). The job, the purifier and jobs/evaluate.py sample with the noise
schedule the prior records (--schedule cosine needs no flag there), and a prior trained with --max-timestep T from the
largest of their steps within 0..T unless given a --start (a note says which; a start above T is refused). The repository ships
priors of at most 20 MB: fp16 stores two bytes per parameter, so up to about 64 channels at the default depth.

    python jobs/train_prior.py --minutes 90 --out runs/prior          # 2-core CPU default
    python jobs/train_prior.py --device cuda --precision bf16 --channels 64 --batch 256 --minutes 60 --out runs/prior-gpu
    python jobs/train_prior.py --data gtsrb --minutes 90 --out runs/prior-gtsrb  # an in-domain prior for GTSRB
    python jobs/train_prior.py --init-from pipeline/assets/cifar10_prior.pt --lr 1e-4 --minutes 60 --out runs/prior-ft

--init-from starts from an exported prior's weights (its architecture, whatever width options are given: a note names
them; and the noise schedule and --max-timestep it records unless given; fresh optimiser), to train a shipped prior
further or adapt it to another clean data set.
Rerunning that command resumes as above; an --init-from other than the one OUT/last.pt started from (or one given to a
run that started from random weights) is refused, since the resume would ignore it: add --fresh to start over from it,
or use another --out. A password in --init-from's or --export's URI (ftp://user:password@host/prior.pt) is never
printed or recorded: last.pt and the prior record the URI as ftp://user:***@host/prior.pt, and a resume knows the
prior it started from by its sha256 (the same file under the account's next password resumes too).

Exit status: 0 trained (or the budget was already spent) and exported; 1 training diverged (last.pt and the prior
keep the last good save, if any; the message says what a rerun continues), a step ran out of memory (a --batch too
large for the device: last.pt keeps the last save, if any; rerun with a smaller --batch) or the prior could not be
written to --export (last.pt is saved: rerun to write it); 2 could not start (a bad option, missing data or images that are not
32x32 RGB, an --out or --export that cannot be written, a refused --init-from or last.pt, an --out in use by
another run); 130 / 143 interrupted by Ctrl-C / SIGTERM, after saving.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/train_prior.py"):
    import numpy as np
    import torch

    from pipeline.cli_common import Parser, script_prog
    from pipeline.errors import out_of_memory
    from pipeline.evaluation.cache import sha256_of_arrays
    from pipeline.evaluation.datasets import DataError, load_dataset
    from pipeline.model import UNetConfig, build_unet
    from pipeline.schedule import NoiseSchedule
    from pipeline.training_loop import Saves, SecondSignal, StopRequest, budget_spent, farewell, shown_export, train
    from pipeline.training_options import (
        AUTOCAST,
        TRAINING_SETS,
        check_args,
        is_uri,
        load_initial,
        make_config,
        note_replaced_width_options,
        resolve_noise_settings,
    )
    from pipeline.training_run import Recipe, TrainingRun, UnusableState
    from pipeline.training_run_folder import (
        LOG,
        OPTIMISER,
        check_init_from_resumable,
        check_resumable,
        learned_settings,
        load_state,
        lock_run_folder,
        note_optimiser_changes,
        open_log,
        shown_note,
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default after its help (where it has a value to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # one `error:` line and a pointer to --help for a bad option, as the purify job's and the export's (not the usage)
    p = Parser(prog=script_prog(__file__), description=__doc__, formatter_class=_HelpFormatter)
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
                        "width and depth options below (a note names those given), and the noise schedule and "
                        "largest timestep it records are the defaults of --schedule and --max-timestep (default: "
                        "none, random weights drawn from --seed)")
    p.add_argument("--channels", type=int, default=32, help="UNet base width (num_channels); a multiple of 32")
    p.add_argument("--channel-mult", default="1,2,2", help="width multiplier per resolution level (32, 16, 8 px, ...)")
    p.add_argument("--res-blocks", type=int, default=2, help="residual blocks per level (num_res_blocks)")
    p.add_argument("--attention", default="16", help="attention resolutions in pixels, comma-separated ('' for none)")
    p.add_argument("--head-channels", type=int, default=32, help="channels per attention head")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout in the residual blocks")
    p.add_argument("--batch", type=int, default=64,
                   help="images per optimiser step: at most the training set's size (a larger --batch is refused "
                        "before the first step)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate after the warm-up")
    p.add_argument("--warmup-steps", type=int, default=200, help="steps of linear learning-rate warm-up")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (with the usual (1+n)/(10+n) warm-up)")
    p.add_argument("--schedule", default=None, choices=["linear", "cosine"],
                   help="noise schedule (β_t) (default: the one --init-from's prior records, else linear)")
    p.add_argument("--max-timestep", type=int, default=None, metavar="T",
                   help="train only on timesteps 0..T (default: the T --init-from's prior records, else all of "
                        "0..999). A prior for late-start purification "
                        "(--start S) only ever sees t <= S*1000, so it can spend its capacity there; such a prior "
                        "records T, and the purifier then starts at the largest of its steps within 0..T unless given "
                        "a start, and refuses one that would run it above T")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST),
                   help="bf16: the UNet's forward pass under bfloat16 autocast (a GPU's tensor cores; loss, optimiser "
                        "and EMA stay fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as many as torch picks)")
    p.add_argument("--save-every-min", type=float, default=5.0,
                   help="write last.pt and the prior every this many minutes (0: after every step; and always at the end "
                        "or on Ctrl-C)")
    p.add_argument("--log-every", type=int, default=25, help="log every N steps")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds a new run's initial weights, image order and noise (a resume continues the run's own); "
                        "0 to 4294967295 (2**32 - 1)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore OUT/last.pt and start over. Any run that starts over keeps the previous train_log.jsonl "
                        "as train_log.jsonl.old (an older one there moves to the first free train_log.jsonl.old.N) and logs "
                        "to a new train_log.jsonl")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


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
           init_note: str | None) -> tuple[str | None, str | None]:
    """Continue `run` from last.pt, after refusing a state this command must not continue; the provenance note of the
    weights it now holds, and the training images it records (`images_id`; None from a state before it was kept). The
    random streams (which images, flips, timesteps, noise, dropout) continue where the state
    left them, so a resumed run trains as the uninterrupted one would."""
    state = load_state(last, run.device)
    check_resumable(last, state, config, learned)
    if args.init_from:
        check_init_from_resumable(last, state, args.init_from, init_note)
    if state.get("seed", args.seed) != args.seed:  # the run's streams are saved: another --seed would do nothing
        print(f"note: resuming {last} with --seed {args.seed}; it continues the random streams it saved (it started "
              f"with --seed {state['seed']})", file=sys.stderr, flush=True)
        args.seed = state["seed"]  # the seed its saves record
    try:
        run.restore(state, args.seed)
    except UnusableState as err:
        raise SystemExit(f"error: {last} is damaged and cannot be resumed ({err}); pass --fresh to start over "
                         f"(it is then overwritten), or delete it") from err.__cause__
    print(f"resumed from {last}: step {run.step}, {run.images_seen} images, {run.elapsed / 60:.1f} min", flush=True)
    if budget_spent(run, args):
        # Nothing trains with this command's optimiser settings, so the saves go on recording the ones the weights were
        # trained with: a rerun with --ema 0.99 that had nothing to train wrote 0.99 into last.pt and the prior's meta.
        for name, value in state.get("optimiser", {}).items():
            if name in OPTIMISER:
                setattr(args, name, value)
    else:
        note_optimiser_changes(last, state, args)
    # The weights, and so their provenance, come from last.pt (a state from before it recorded one: this command's)
    note = shown_note(state["initialised_from"]) if "initialised_from" in state else init_note
    recorded = state.get("training_images")
    return note, recorded if isinstance(recorded, str) else None


def load_training_images(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, str]:
    """--data's clean training split, N x 32 x 32 x 3 uint8, on the device: the whole set lives there (150 MB for
    CIFAR-10), so no step copies images; and what identifies those images (`images_id`)."""
    try:
        data = load_dataset(args.data, "train").images
    except DataError as err:  # the message names the folder and the variable to set
        raise SystemExit(f"error: --data {args.data}: {err}") from err
    # The UNet is fully convolutional, so images of another size trained without a word, into a "32 px" prior.
    if data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        raise SystemExit(f"error: --data {args.data}: the training images are {'x'.join(map(str, data.shape[1:]))}, not "
                         f"32x32x3 (RGB): the prior is a 32 px model; is ZIP_SHARED_DIR the shared copy of {args.data}?")
    return torch.from_numpy(data).to(device), images_id(data)


def images_id(images: np.ndarray) -> str:
    """What a run records of its training images, to tell a resume on other ones: their count and content hash (the
    evaluation's train_sha256). Another copy of --data (another $ZIP_SHARED_DIR, a stand-in subset for a smoke test)
    passed every check, and a resume trained on it without a word."""
    return f"{len(images)} images, sha256 {sha256_of_arrays(images)[:16]}"


def make_recipe(args: argparse.Namespace, alpha_bars: torch.Tensor) -> Recipe:
    """How this command's steps train (a resume may change these; see OPTIMISER in pipeline/training_run_folder.py)."""
    t_high = len(alpha_bars) if args.max_timestep is None else args.max_timestep + 1
    return Recipe(alpha_bars=alpha_bars, t_high=t_high, batch=args.batch, lr=args.lr, warmup_steps=args.warmup_steps,
                  ema=args.ema, autocast=AUTOCAST[args.precision], flips=TRAINING_SETS[args.data][1])


SHIP_MB = 20  # the largest prior the repository ships in pipeline/assets


def announce(run: TrainingRun, n_images: int, args: argparse.Namespace, export: str | Path) -> None:
    """What is about to be trained, and a note when the export would be too large to ship."""
    n_params = sum(p.numel() for p in run.model.parameters())
    export_mb = n_params * 2 / 1e6  # fp16 weights; the bundle's flags and meta add a few kB
    print(f"training {n_params / 1e6:.2f}M-parameter prior on {n_images} images, budget {args.minutes} min, "
          f"{run.device}, {args.precision}; export {shown_export(export)} about {export_mb:.1f} MB", flush=True)
    if export_mb > SHIP_MB:
        print(f"note: a {export_mb:.0f} MB prior works with --checkpoint but is over the {SHIP_MB} MB a prior shipped in "
              f"pipeline/assets may take (fewer --channels or --res-blocks make it smaller)", file=sys.stderr, flush=True)


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
        note_replaced_width_options(args, config)
    resolve_noise_settings(args, init_meta)
    run = start_run(args, config, initial, device)
    alpha_bars = torch.tensor(NoiseSchedule.named(args.schedule).alphas_cumprod, dtype=torch.float32, device=device)
    learned = learned_settings(args, len(alpha_bars))
    resumed = last.exists() and not args.fresh
    if resumed:
        init_note, trained_on = resume(run, last, args, config, learned, init_note)
    elif args.minutes == 0 and initial is None:
        raise SystemExit(f"error: --minutes 0 with nothing to start from (no {last} to resume, no --init-from) would "
                         f"export an untrained prior")
    pixels, training_images = load_training_images(args, device)
    if resumed and trained_on is not None and trained_on != training_images:
        print(f"note: resuming {last} on other training images than it was trained on so far ({trained_on} then, "
              f"{training_images} now: another copy of --data {args.data}?); it goes on training on these, and --fresh "
              f"starts over on them alone", file=sys.stderr, flush=True)
    if args.batch > len(pixels):
        # Each step then held every image more than once (a --batch of 64 over 16 images: each 4 times), without a
        # word; and a --batch far above the data set's size is a typo that asks for that much memory per step.
        raise SystemExit(f"error: --batch {args.batch} is more than the {len(pixels)} training images of --data "
                         f"{args.data}; give --batch {len(pixels)} or less")
    run.match_data(len(pixels))  # a restored epoch order of another data set is not continued
    announce(run, len(pixels), args, export)
    recipe = make_recipe(args, alpha_bars)
    saves = Saves(args, argv, last, export, config, learned, init_note, saved_step=run.step if resumed else None,
                  training_images=training_images)

    out.mkdir(parents=True, exist_ok=True)
    # Held to the end, so that a second run into this folder is refused (see lock_run_folder) and a signal saves the
    # state (see StopRequest).
    with lock_run_folder(out), StopRequest() as stop, open_log(out / LOG, run.step if resumed else None) as log:
        if resumed and budget_spent(run, args):
            print(f"nothing to train: the budget ({args.minutes} min, --max-steps {args.max_steps}) is spent; rerun with a "
                  f"larger --minutes or --max-steps to train longer", flush=True)
        try:
            diverged = train(run, pixels, recipe, args, saves, stop, log)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not out_of_memory(err):
                raise
            # a --batch too large for the device: torch's traceback named neither the option nor what was kept
            kept = f"{last} keeps step {saves.saved_step}" if saves.saved_step is not None else "nothing was saved"
            print(f"error: out of memory on {device} at step {run.step + 1} with --batch {args.batch} "
                  f"({str(err).splitlines()[0][:200]}); {kept}; rerun with a smaller --batch (a resume may change it)",
                  file=sys.stderr, flush=True)
            return 1
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
