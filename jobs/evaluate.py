"""Evaluate the defenses against backdoor attacks: the ZIP paper's Table 1 on this project's data.

For every data set: one ResNet-20 per attack trained on a poisoned training set (BadNet, Blended, PhysicalBA at
5 %, WaNet at 10 %; "none" adds a clean classifier row), a class-stratified test subset, and every defense applied
to the clean subset and to each attack's triggered subset:

  none         no defense (the identity)
  shrinkpad    ShrinkPad: shrink by 4 px (on 32 px images), zero-pad back at a random offset
  naive        the naive purification A⁺A x: average pooling by --pool, then nearest upsampling
  zip          ZIP, Algorithm 2 of the paper: guided DDIM, --steps steps, pool --pool, λ = 0, η = 1 (the job's defaults)
  zip-authors  ZIP with the authors' released code's settings (gray + pool guidance, soft blend k = 10, η = 1)

Metrics (percent): CA on purified clean images, ASR and PA on purified triggered images whose true label is not
the target; PSNR / SSIM of purified clean images vs the originals. Outputs, per data set, in --out:
<dataset>.json (every number, the configuration and every image's predicted label), <dataset>.md (Table 1 layout,
then the target check: is ZIP's average CA and PA above ShrinkPad's and A⁺A x's, and its average ASR at most 5 %,
each with a 95 % paired-bootstrap interval over the test images), <dataset>-examples.png.

Time on a 2-core CPU (measured, docs/results.md): each classifier trains once, 11-30 min (10 epochs; a progress bar
shows its ETA); with the classifiers cached, the default matrix (both data sets, --subset 500, every defense) took
21 min on an idle machine (42 min with other jobs sharing it), most of it ZIP (each zip variant on the clean subset
and on every attack's triggered subset; a progress bar per purified set shows its ETA). --subset 1000 takes about
twice that.

Caches and resume: trained classifiers (classifiers/, with an epoch checkpoint <name>.partial.pt while one trains) and
purified image sets (purified/) are kept in --cache-dir (default $ZIP_CACHE_DIR, else ~/.cache/zip-purify); the
decoded data sets (<dataset>-<split>.npz) are kept in $ZIP_CACHE_DIR, else ~/.cache/zip-purify. Re-running the same
command after an interruption (Ctrl-C, a kill) only does the unfinished work: a classifier resumes from its last
finished epoch, a ZIP set with the purifier batches (--batch-size canvases) it had not finished, bit for bit as an
uninterrupted run (the finished ones are kept in <set>.partial/ until the set is whole). A damaged cache file is named
in a warning and rebuilt. ZIP sets are cached per device type: a GPU draws other noise than a CPU from the same seed.
An epoch checkpoint stays until its own --epochs is run again: one of a run interrupted and never rerun at that
--epochs is kept for good (a run that trains the same classifier to other --epochs names it in a note, but leaves
it; delete it if unwanted). To clear: remove <cache-dir>/purified (purified images: cheap to redo),
<cache-dir>/classifiers (hours of training, and such epoch checkpoints), or the *.npz data copies (decoded again
from the shared folder, $ZIP_SHARED_DIR, else shared/ beside the repository's folder).

Checks: settings, the data, the prior and the --out and --cache-dir folders are checked before any work starts (exit
status 2 and one error line). --out and --cache-dir are local folders, made when missing: a URI (s3://..., ftp://...)
is refused, a file:// URI and a leading ~ name the local folder. An --out folder holding a report of another
configuration is refused (give another --out, or --overwrite); rerunning the same configuration regenerates its
report. SIGTERM stops a run as Ctrl-C does (exit status 143, 130 for Ctrl-C), saying how to resume. Running out of
memory (a --batch-size or --canvas-size too large for the device) or a write that fails during the run (a full disk)
is one error line and exit status 1; the caches keep what was finished.

    python jobs/evaluate.py                                    # CIFAR-10 + GTSRB, everything (hours the first time)
    python jobs/evaluate.py --datasets cifar10 --attacks badnet --defenses none,naive,zip --subset 500 --threads 1
    python jobs/evaluate.py --datasets imagenette --subset 500 --device cuda --checkpoint 256x256_diffusion_uncond.pt
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/evaluate.py"):
    import torch

    from pipeline.checkpoint import CheckpointError
    from pipeline.cli_common import Parser, script_prog
    from pipeline.errors import out_of_memory
    from pipeline.evaluation.attacks import ATTACKS
    from pipeline.evaluation.classifier import train_classifier
    from pipeline.evaluation.datasets import CACHE_DIR, DataError, folder_variable_problem
    from pipeline.evaluation.defenses import DEFENSES, ZIP_DEFENSES, zip_settings
    from pipeline.evaluation.log import log
    from pipeline.evaluation.preflight import EvaluationError, preflight
    from pipeline.evaluation.runner import DEFAULT_PRIOR, EvalConfig, evaluate_dataset
    from pipeline.evaluation.target import RESAMPLES
    from pipeline.local_folders import LocalPathError, local_path, remote_uri
    from pipeline.redaction import redact_uri, redact_uri_secrets
    from pipeline.settings import device_problem

DATASETS = ("cifar10", "gtsrb", "imagenette")
CROP_PAD = train_classifier.__kwdefaults__["crop_pad"]
DEFAULT_EPOCHS = 10  # ResNet-20, one-cycle: 11 epochs measured 82.7 % CA on this CIFAR copy; 10 keeps CA >= 78 %


def _csv(choices: tuple[str, ...] | list[str], what: str):
    """argparse type: a comma-separated list of names from `choices`, each once, in the order given."""

    def parse(text: str) -> list[str]:
        # A name given twice counts once: a repeated attack would weigh twice in the report's Average row (and in
        # the target check's point estimates), a repeated data set would run its whole evaluation again.
        items = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or '(empty)'}; choose from {', '.join(choices)}")
        return items

    return parse


def _given(kind: type):
    """argparse type: a path (`kind` Path or str) that is not empty. An empty one (`--out "$OUT"` with the variable
    unset) was the current folder, for the reports or for hours of cached classifiers, and an empty --checkpoint was
    refused only once the data had been checked, as a checkpoint that could not be read."""

    def parse(text: str):
        if not text:
            raise argparse.ArgumentTypeError("empty; give a path, or leave the option out for its default")
        return kind(text)

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # one `error:` line and a pointer to --help for a bad option, as the purify job's and the export's (not the usage)
    p = Parser(prog=script_prog(__file__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # in the order --help lists them
    _add_what_is_evaluated(p)
    _add_test_subset_and_zip_sampling(p)
    _add_classifier_training(p)
    _add_run_and_report_options(p)
    args = p.parse_args(argv)
    problem = _argument_problem(args)
    if problem:
        p.error(problem)
    _read_local_folders(p, args)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# The options that must name a local folder, and what is kept there (said to a URI given instead).
LOCAL_FOLDERS = {
    "out": "the reports are written there; copy them to the server once written",
    "cache_dir": "trained classifiers and purified sets are kept and resumed there",
}


def _read_local_folders(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--out and --cache-dir as the local folders they name (see pipeline/local_folders.py): a URI refused (it was
    taken as a path, a local folder 'ftp:/user:password@host/x' made), a file:// URI read as its path, and a '~' the
    shell left (zsh's --out=~/x, a quoted "~/x") expanded, so that the folder preflight checks is the one written to."""
    problem = folder_variable_problem()  # $ZIP_SHARED_DIR and $ZIP_CACHE_DIR, the data and its decoded copies
    if problem:
        p.error(problem)
    for name, held in LOCAL_FOLDERS.items():
        flag, text = f"--{name.replace('_', '-')}", str(getattr(args, name))
        if remote_uri(text):
            # a server's password in it (ftp://user:password@host/x) as '***': stderr ends up in CI logs
            local = "" if "://" in text else f"; a local folder of that name: give it as ./{text}"
            p.error(f"{flag} {redact_uri(text)}: must be a local folder, not a URI ({held}){local}")
        try:
            setattr(args, name, local_path(text))
        except LocalPathError as err:
            p.error(f"{flag} {text}: {err}")


def _add_what_is_evaluated(p: argparse.ArgumentParser) -> None:
    """--datasets, --attacks, --defenses and the prior of the zip defenses (--checkpoint)."""
    p.add_argument("--datasets", type=_csv(DATASETS, "data set"), default=["cifar10", "gtsrb"],
                   help="comma-separated data sets (cifar10, gtsrb; imagenette: 224 px, only sensible with a GPU "
                        "and a 256x256 prior; its single shared split is divided 3:1 into train/test). "
                        "Default: cifar10,gtsrb")
    p.add_argument("--attacks", type=_csv([*ATTACKS, "none"], "attack"), default=[*ATTACKS, "none"],
                   help="comma-separated attacks (badnet, blended, physicalba, wanet; 'none' is a classifier trained "
                        "on clean data: a row with CA only, Table 1's 'None'). Default: badnet,blended,physicalba,"
                        "wanet,none")
    p.add_argument("--defenses", type=_csv(DEFENSES, "defense"), default=list(DEFENSES),
                   help="comma-separated defenses (none, shrinkpad, naive, zip, zip-authors). Default: all")
    p.add_argument("--checkpoint", type=_given(str), default=DEFAULT_PRIOR,
                   help="diffusion prior for the zip defenses (path or fsspec URI; its sha256 keys the cache). "
                        "Default: the shipped CIFAR-10 prior, pipeline/assets/cifar10_prior.pt")


def _add_test_subset_and_zip_sampling(p: argparse.ArgumentParser) -> None:
    """ZIP's steps and pooling, the test subset and its seed, then ZIP's sampler, late start, schedule and noise seed."""
    p.add_argument("--steps", type=int, default=20,
                   help="ZIP's sampler steps, spaced evenly over T = 1000, of --sampler ddim or ddpm alike (both zip "
                        "variants). Default: 20")
    p.add_argument("--pool", type=int, default=4,
                   help="average-pooling factor k of A, shared by naive, zip and zip-authors. Default: 4")
    p.add_argument("--subset", type=int, default=500,
                   help="size of the class-stratified test subset (rounded down to a multiple of the class count, "
                        "e.g. 473 for GTSRB's 43 classes at the default; at most the class count times the rarest class's test "
                        "images: 10000 on CIFAR-10, 2580 on GTSRB, 890 on Imagenette's held-out quarter; a larger "
                        "one is refused; the purified sets are cached by the images chosen, so 15 and 10 on ten "
                        "classes share them). Default: 500, the size of docs/results.md's tables")
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset and of ShrinkPad's offsets. Default: 0")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim",
                   help="ZIP's sampler (both zip variants): ddim, the paper's Algorithm 2, or ddpm, its Algorithm 1 "
                        "(guided ancestral sampling; give it more --steps, e.g. 50). Part of the cache key. Default: ddim")
    p.add_argument("--start", type=float, default=None,
                   help="ZIP's late start (both zip variants): run only the steps t <= START*T, from the noised input "
                        "(0.3: 7 of 20 steps). Part of the cache key. Default: 1.0, the paper; for a prior trained only "
                        "up to some timestep (jobs/train_prior.py --max-timestep), the largest start in its range, "
                        "which the run's log says")
    p.add_argument("--schedule", choices=["linear", "cosine"], default=None,
                   help="the noise schedule ZIP samples with (both zip variants): the one the prior was trained with. "
                        "Part of the cache key. Default: the one the prior records (jobs/train_prior.py --schedule), "
                        "else linear (guided-diffusion's priors); one that differs from the recorded one is refused")
    p.add_argument("--sampler-seed", type=int, default=0,
                   help="seed of the ZIP sampler's noise (both zip variants; part of the purified-set cache key). One "
                        "run draws one sample per image; rerun with other seeds to see how much a difference is chance. "
                        "Default: 0")


def _add_classifier_training(p: argparse.ArgumentParser) -> None:
    """The classifiers' training: --epochs and --crop-pad (both part of a classifier's cache name)."""
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"classifier training epochs (ResNet-20, one-cycle LR; ~1.5 min per CIFAR epoch on 2 idle CPU "
                        f"cores, CA >= 78 %% on the shared CIFAR copy). Part of the classifier cache name. "
                        f"Default: {DEFAULT_EPOCHS}")
    p.add_argument("--crop-pad", type=int, default=CROP_PAD,
                   help=f"the classifiers' random-crop augmentation: zero padding in px before a random 32 px crop "
                        f"(0: flips only). PhysicalBA's classifier always trains without it (its own affine transforms "
                        f"shift every image). ShrinkPad's accuracy depends on it: a classifier trained on 4 px shifts "
                        f"barely notices ShrinkPad's. Part of the classifier cache name. Default: {CROP_PAD}")


def _add_run_and_report_options(p: argparse.ArgumentParser) -> None:
    """Where and how it runs (threads, caches, --out, device, the purifier's canvases) and what the report holds."""
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads for training, purification and prediction (0: torch's default). Use 1 when "
                        "another job shares a 2-core machine: two threads fighting for cores are several times slower. "
                        "Default: 0")
    p.add_argument("--cache-dir", type=_given(str), default=CACHE_DIR,
                   help="local folder where trained classifiers (classifiers/) and purified image sets (purified/) "
                        "are cached and reused on the next run. Default: $ZIP_CACHE_DIR, else ~/.cache/zip-purify "
                        "(now: %(default)s)")
    p.add_argument("--out", type=_given(str), default="results",
                   help="local folder for <dataset>.json, <dataset>.md and <dataset>-examples.png. A report of another "
                        "configuration there is refused (rerunning the same one regenerates it). Default: results")
    p.add_argument("--overwrite", action="store_true",
                   help="replace reports of another configuration in --out")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto (cuda when available). ZIP's sets are cached per device type (a GPU's "
                        "noise differs from a CPU's for the same seed). Default: auto")
    p.add_argument("--canvas-size", type=int, default=None,
                   help="purifier canvas size (default: the prior's image size; part of the cache key)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="purifier canvases sampled together (default: the purifier's; part of the cache key, since the "
                        "noise is drawn per batch)")
    p.add_argument("--examples", type=int, default=6, help="images per attack in the examples PNG. Default: 6")
    p.add_argument("--bootstrap", type=int, default=RESAMPLES,
                   help="resamples of the target check's paired bootstrap over test images (a 95 %% interval for each "
                        "of ZIP's differences to ShrinkPad and A⁺A x and for its ASR; needs a zip defense, a baseline and "
                        f"an attack in the run); 0 leaves the check out. Default: {RESAMPLES}")


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options on their own (the data sets, prior and --out are `preflight.preflight`'s)."""
    for name in ("steps", "pool", "subset", "epochs", "examples"):
        if getattr(args, name) < 1:
            return f"--{name} must be positive"
    for name in ("crop_pad", "bootstrap", "threads", "seed", "sampler_seed"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be 0 or more"
    for name in ("canvas_size", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be positive"
    # The sampler's settings matter only to the ZIP defenses selected: a run of none,shrinkpad,naive never reads --steps
    # or --start, so their limits are no reason to refuse it. --pool's own checks (positive above, dividing the images
    # in preflight) stay, since A⁺A x pools by it too.
    zips = [d for d in ZIP_DEFENSES if d in args.defenses]
    if zips and args.start is not None and not (math.isfinite(args.start) and 0.0 < args.start <= 1.0):
        return f"--start must be in (0, 1] (a fraction of the T diffusion steps), got {args.start}"
    try:  # the sampler's own limits (e.g. at most 1000 steps)
        for d in zips:
            zip_settings(d, args.steps, args.pool, seed=args.sampler_seed, sampler=args.sampler, start=args.start,
                         **({"schedule": args.schedule} if args.schedule else {}))
    except ValueError as err:
        return f"ZIP settings (--steps {args.steps}, --pool {args.pool}): {err}"
    return _device_problem(args.device)


def _device_problem(device: str) -> str | None:
    return None if device == "auto" else device_problem(device, expected="cpu, cuda, cuda:N or auto")


def make_config(args: argparse.Namespace, dataset: str) -> EvalConfig:
    return EvalConfig(
        dataset=dataset, attacks=args.attacks, defenses=args.defenses, checkpoint=args.checkpoint,
        steps=args.steps, pool=args.pool, subset=args.subset, seed=args.seed, sampler_seed=args.sampler_seed,
        sampler=args.sampler, start=args.start, schedule=args.schedule, epochs=args.epochs,
        threads=args.threads or None, cache_dir=args.cache_dir, out_dir=args.out, device=args.device,
        canvas_size=args.canvas_size, batch_size=args.batch_size, examples=args.examples,
        train_options={} if args.crop_pad == CROP_PAD else {"crop_pad": args.crop_pad}, bootstrap=args.bootstrap,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [make_config(args, dataset) for dataset in args.datasets]
    try:  # every data set's checks before the first one's hours of work
        checked = [preflight(config) for config in configs]
    except EvaluationError as err:
        print(f"error: {_shown(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the checks read the data sets and the priors: seconds, and nothing is written yet
        print("\ninterrupted: stopped while checking the data sets and priors; nothing was started", file=sys.stderr)
        return 130
    try:
        with sigterm_as_interrupt():
            for config, check in zip(configs, checked, strict=True):
                if config.dataset == "imagenette" and not args.device.startswith("cuda"):
                    log("warning: imagenette (224 px) on CPU takes very long; it is meant for a GPU run")
                evaluate_dataset(config, checked=check)
    # What only the data, once loaded, can tell, and a prior that changed after the checks: one line, no traceback.
    except (EvaluationError, DataError, CheckpointError) as err:
        print(f"error: {_shown(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # Finished classifiers, epochs and purified sets are cached: say so instead of a page of torch frames.
        by = "stopped by SIGTERM; " if isinstance(err, Terminated) else ""
        print(f"\ninterrupted: {by}rerun the same command to resume from the caches in {args.cache_dir}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    except OSError as err:
        # A disk that fills up, a folder removed or made read-only during the run: one line, and what is kept.
        print(f"error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}; finished classifiers, epochs and "
              f"purified batches are kept in {args.cache_dir}: rerun the same command once that is fixed",
              file=sys.stderr)
        return 1
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        # A --batch-size (or --canvas-size, or prior) too large for the device was a torch traceback naming neither.
        print(f"error: out of memory on {args.device} ({str(err).splitlines()[0][:200]}); finished classifiers, epochs "
              f"and purified batches are kept in {args.cache_dir}: rerun with a smaller --batch-size or --canvas-size "
              "(part of the purified sets' cache key: a set being purified starts over) or on a device with more "
              "memory", file=sys.stderr)
        return 1
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, a plain `kill`) raised where Ctrl-C raises KeyboardInterrupt: the same way out."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM as `Terminated` while the work runs: it ended the process without a word (the caches' writes are atomic,
    so nothing is lost either way), where Ctrl-C said how to resume; now both do, SIGTERM with status 143. An ignored
    SIGTERM stays ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _shown(err: BaseException, args: argparse.Namespace) -> str:
    """An error as its line shows it: a server's password in the prior's URI (--checkpoint ftp://user:password@host/
    prior.pt) as '***', wherever a message quotes it (the checks' own messages already hide it)."""
    return redact_uri_secrets(str(err), args.checkpoint)


if __name__ == "__main__":
    raise SystemExit(main())
