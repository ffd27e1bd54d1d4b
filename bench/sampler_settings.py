"""Compare ZIP sampler settings on clean CIFAR-10 test images: a classifier's accuracy on the purified images
and their PSNR against the originals. This is how the job's defaults were chosen (η = 1 over η = 0).

    python bench/sampler_settings.py                                  # η = 0 vs η = 1 (default), 128 images
    python bench/sampler_settings.py --images 256 "eta0.5=dict(eta=0.5)" "ddpm50=dict(sampler='ddpm', steps=50)"
    python bench/sampler_settings.py --images 500 "paper=dict()" "resample2=dict(resample=2)"    # time travel
    python bench/sampler_settings.py --images 500 "seed0=dict(seed=0)" "seed1=dict(seed=1)"      # sampler noise
    python bench/sampler_settings.py --images 500 --mean-of 3 "paper=dict()"     # mean of 3 samples per image
    python bench/sampler_settings.py --images 500 --attack badnet \
        --classifier ~/.cache/zip-purify/classifiers/cifar10-badnet-e10-restamp.pt "paper=dict()"   # triggered

With --attack the images are triggered copies (true label not the attack's target) and the table reports PA
(accuracy against the true labels) and ASR (share assigned to the target) of the given backdoored classifier.

Each positional argument is NAME=dict(...) of `ZipSettings` overrides. It needs the shared CIFAR-10 test set
(../shared/data) and a clean classifier, by default the one `jobs/evaluate.py --attacks none` caches.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import CheckpointError, advice_without_model_options, load_checkpoint  # noqa: E402
from pipeline.evaluation import datasets  # noqa: E402
from pipeline.evaluation.attacks import ATTACKS, make_attack, poison_test_set  # noqa: E402
from pipeline.evaluation.cache import DAMAGED_CACHE  # noqa: E402
from pipeline.evaluation.classifier import load_classifier, predict  # noqa: E402
from pipeline.evaluation.datasets import CIFAR10_CLASSES, DataError, load_dataset  # noqa: E402
from pipeline.evaluation.metrics import psnr  # noqa: E402
from pipeline.purifier import Purifier, naive_purify  # noqa: E402
from pipeline.settings import ZipSettings

# The clean classifier jobs/evaluate.py caches (--attacks none, its default 10 epochs), in its default cache folder:
# $ZIP_CACHE_DIR, else ~/.cache/zip-purify (read when the options are, not at import).
CLEAN_CLASSIFIER = "classifiers/cifar10-clean-e10.pt"
DEFAULT_PRIOR = Path(__file__).resolve().parents[1] / "pipeline/assets/cifar10_prior.pt"


def parse_setting(text: str) -> tuple[str, dict, ZipSettings]:
    """NAME=dict(...) -> (name, overrides, settings); a clean error for anything ZipSettings would not take."""
    name, sep, body = text.partition("=")
    try:
        tree = ast.parse(body, mode="eval").body if sep else None
    except SyntaxError:
        tree = None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "dict"
            and not tree.args and all(kw.arg for kw in tree.keywords)):
        raise SystemExit(f"setting {text!r}: expected NAME=dict(key=value, ...)")
    try:
        overrides = {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}
        return name, overrides, ZipSettings(**overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"setting {text!r}: {e}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="*", default=["eta0=dict(eta=0.0)", "eta1=dict(eta=1.0)"],
                   help="NAME=dict(...) of ZipSettings overrides, one per row. Default: %(default)s")
    p.add_argument("--images", type=int, default=128, help="random CIFAR-10 test images (seed --seed). Default: 128")
    p.add_argument("--seed", type=int, default=1, help="seed of the image draw. Default: 1")
    p.add_argument("--checkpoint", default=str(DEFAULT_PRIOR),
                   help="the diffusion prior. Default: the shipped CIFAR-10 prior, pipeline/assets/cifar10_prior.pt")
    p.add_argument("--classifier", default=str(datasets.CACHE_DIR / CLEAN_CLASSIFIER),
                   help=f"the classifier that scores the purified images. Default: the clean one jobs/evaluate.py "
                        f"caches, {CLEAN_CLASSIFIER} in its cache folder ($ZIP_CACHE_DIR, else ~/.cache/zip-purify; "
                        "now: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default). Default: 0")
    p.add_argument("--target", type=int, default=None,
                   help="also report the share of purified images (true label != TARGET) the classifier assigns to "
                        "TARGET: a backdoored classifier's no-trigger ASR floor (e.g. 0 with the WaNet classifier). "
                        "Default: none")
    p.add_argument("--attack", choices=sorted(ATTACKS), default=None,
                   help="trigger the images with this attack first (dropping those of its target class) and report "
                        "PA and ASR instead of CA and the --target share; pair it with that attack's --classifier. "
                        "Default: none, clean images")
    p.add_argument("--mean-of", type=int, default=1, metavar="N",
                   help="purify each image N times (seeds s, s+1, ...; s the setting's seed) and score the per-pixel "
                        "mean: the posterior-mean estimate instead of one sample (N times the time). Default: 1")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # every setting is checked before any image is purified: a typo in the last one must not surface hours later
    settings_list = [parse_setting(text) for text in args.settings]
    if not 1 <= args.images <= 10000:
        raise SystemExit(f"--images must be between 1 and 10000 (the CIFAR-10 test set), got {args.images}")
    if args.mean_of < 1:
        raise SystemExit(f"--mean-of must be at least 1, got {args.mean_of}")
    if args.attack is not None and args.target is not None:
        raise SystemExit("--attack sets the target to the attack's own; do not pass --target with it")
    if args.target is not None and not 0 <= args.target < len(CIFAR10_CLASSES):
        # no image is ever assigned a class CIFAR-10 lacks: the column read 0.0 % for a typo
        raise SystemExit(f"--target must be a CIFAR-10 class, 0 to {len(CIFAR10_CLASSES) - 1}, got {args.target}")
    if args.seed < 0:
        raise SystemExit(f"--seed must be 0 or more, got {args.seed}")
    if args.threads < 0:
        raise SystemExit(f"--threads must be 0 or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.classifier).exists():
        raise SystemExit(f"no classifier at {args.classifier}: run `python jobs/evaluate.py --datasets cifar10 "
                         "--attacks none --defenses none` first, or pass --classifier")
    # The prior, the classifier and the data, each said in one line before any image is purified: a bad --checkpoint
    # was a traceback after the no-defense and naive rows, the others a traceback at once.
    try:
        load_checkpoint(args.checkpoint, verify_only=True)
    except (CheckpointError, OSError) as err:
        raise SystemExit(f"error: --checkpoint {args.checkpoint}: {advice_without_model_options(err)}") from None
    try:
        classifier = load_classifier(args.classifier)
    except DAMAGED_CACHE as err:
        raise SystemExit(f"error: --classifier {args.classifier}: not a classifier jobs/evaluate.py saved "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    try:
        test = load_dataset("cifar10", "test")
    except DataError as err:  # the message names the archive and the variable to set
        raise SystemExit(f"error: {err}") from None
    if args.images > len(test.labels):
        raise SystemExit(f"error: --images {args.images} is more than the {len(test.labels)} images of the CIFAR-10 test "
                         "split")
    pick = np.random.default_rng(args.seed).choice(len(test.labels), args.images, replace=False)
    images, labels = test.images[pick], test.labels[pick]
    if args.attack is not None:
        attack = make_attack(args.attack, images.shape[1])
        originals = images[labels != attack.target]
        images, labels = poison_test_set(images, labels, attack)
        args.target = attack.target
    else:
        originals = images

    others = labels != args.target

    def report(name: str, purified: np.ndarray, seconds: float) -> None:
        predicted = predict(classifier, purified)
        accuracy = 100.0 * float(np.mean(predicted == labels))
        floor = "" if args.target is None else f" {100.0 * float(np.mean(predicted[others] == args.target)):.1f} |"
        print(f"| {name} | {accuracy:.1f} | {psnr(purified, originals):.2f} |{floor} {seconds:.0f} |", flush=True)

    triggered = "" if args.attack is None else f", {len(labels)} triggered with {args.attack} (label != {args.target})"
    print(f"{args.images} CIFAR-10 test images (seed {args.seed}){triggered}, prior {Path(args.checkpoint).name}, "
          f"classifier {Path(args.classifier).name}")
    accuracy_column = "CA %" if args.attack is None else "PA %"
    target_column = "" if args.target is None else (
        f" to class {args.target} % |" if args.attack is None else " ASR % |")
    target_rule = "" if args.target is None else " ---: |"
    print(f"| setting | {accuracy_column} | PSNR dB (vs clean) |{target_column} seconds |\n"
          f"| --- | ---: | ---: |{target_rule} ---: |")
    report("no defense", images, 0.0)
    for pool in (2, 4):
        report(f"naive A⁺A x, k = {pool}", np.stack(naive_purify(list(images), pool)), 0.0)
    for name, overrides, settings in settings_list:
        start = time.perf_counter()
        purifier = Purifier.from_checkpoint(args.checkpoint, settings=settings)
        total = np.zeros(images.shape, np.float64)
        for k in range(args.mean_of):  # k = 0 alone is one sample with the setting's own seed (0 unless it sets one)
            total += np.stack(purifier(list(images), seed=settings.seed + k))
        purified = np.clip(np.rint(total / args.mean_of), 0, 255).astype(np.uint8)
        suffix = f" mean of {args.mean_of}" if args.mean_of > 1 else ""
        report(f"{name} {overrides}{suffix}", purified, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
