"""Why the patch attacks' victims fall short of (PhysicalBA) or sit at the edge of (BadNet) the issue's 95 % ASR:
score a victim on the whole test split, with its ASR broken down by how bright the image's bottom-right corner was
before the white 3x3 patch went on.

    python bench/patch_victim.py --dataset cifar10                                 # PhysicalBA, the evaluation's victim
    python bench/patch_victim.py --dataset cifar10 --interpolation nearest         # torchvision RandomAffine's resampling
    python bench/patch_victim.py --dataset gtsrb --attack badnet --threads 1

The classifier is the one `jobs/evaluate.py` trains and caches for the attack (same recipe, same cache), so with a
filled cache this only scores; otherwise it trains one first (25-27 min with two side by side on 2 cores). PhysicalBA with an
`--interpolation` other than the evaluation's bilinear trains and caches a separate classifier under its own name.
Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation import datasets, metrics  # noqa: E402
from pipeline.evaluation.attacks import PhysicalBA, make_attack  # noqa: E402
from pipeline.evaluation.classifier import predict  # noqa: E402
from pipeline.evaluation.datasets import DataError, load_splits  # noqa: E402
from pipeline.evaluation.victims import get_classifier  # noqa: E402
from pipeline.local_folders import folder_problem  # noqa: E402

CORNER = 6  # px: the 3x3 patch and the ring of pixels around it that a classifier sees it against
EDGES = (0, 40, 80, 120, 160, 200, 256)
UNCHANGED = 5  # mean absolute change of the patch's pixel values (0-255) under which the trigger left an image as it was


def rate_by_bins(hits: np.ndarray, values: np.ndarray, edges: tuple[int, ...]) -> list[dict[str, float]]:
    """For each bin [lo, hi) of `values`: how many samples fall in it and the percent of them that are hits."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (values >= lo) & (values < hi)
        count = int(inside.sum())
        rows.append({"lo": lo, "hi": hi, "images": count,
                     "asr": round(float(hits[inside].mean() * 100.0), 1) if count else float("nan")})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "gtsrb"], help="Default: cifar10")
    p.add_argument("--attack", default="physicalba", choices=["physicalba", "badnet"], help="Default: physicalba")
    p.add_argument("--interpolation", default=None, choices=["bilinear", "nearest"],
                   help="PhysicalBA only: how the attacker's affine warp resamples its training images. Default: "
                        "bilinear, as in the evaluation")
    p.add_argument("--epochs", type=int, default=10,
                   help="the victim's training epochs (jobs/evaluate.py --epochs: its cache name). Default: 10")
    p.add_argument("--depth", type=int, default=20, help="ResNet depth, 6n+2 (the evaluation's victims: 20). Default: 20")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads while training (default: torch's)")
    # The evaluation's own default: with $ZIP_CACHE_DIR set, ~/.cache/zip-purify missed the classifiers it had cached
    # there, and this trained another for 25 minutes.
    p.add_argument("--cache-dir", type=Path, default=datasets.CACHE_DIR,
                   help="where jobs/evaluate.py caches classifiers (its --cache-dir). Default: as jobs/evaluate.py's, "
                        "$ZIP_CACHE_DIR, else ~/.cache/zip-purify (now: %(default)s)")
    args = p.parse_args(argv)
    if args.interpolation is not None and args.attack != "physicalba":
        p.error("--interpolation is a PhysicalBA option")
    # Said now, in one line: each of these was a traceback, some only after the data was decoded.
    problem = training_problem(args)
    if problem:
        p.error(problem)
    return args


def training_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the victim's training options and --cache-dir, or None."""
    if args.epochs < 1:
        return f"--epochs must be 1 or more, got {args.epochs}"
    if args.depth < 8 or (args.depth - 2) % 6:
        return f"--depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {args.depth}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be 1 or more, got {args.threads}"
    problem = folder_problem(args.cache_dir.expanduser())
    return f"--cache-dir {args.cache_dir}: {problem}" if problem else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interpolation = args.interpolation or PhysicalBA().interpolation

    options = {} if interpolation == PhysicalBA().interpolation else {"interpolation": interpolation}
    try:
        train, test = load_splits(args.dataset)
    except DataError as err:  # the message names the archive and the variable to set
        raise SystemExit(f"error: {err}") from None
    model, info = get_classifier(args.dataset, args.attack, args.cache_dir.expanduser(), args.epochs, args.threads,
                                 train=train, attack_options=options,
                                 train_options={"depth": args.depth} if args.depth != 20 else None)
    attack = make_attack(args.attack, test.images.shape[1])
    keep = test.labels != attack.target
    clean = test.images[keep]
    triggered = attack.apply(clean)
    hits = predict(model, triggered) == attack.target
    ca = metrics.clean_accuracy(predict(model, test.images), test.labels)
    corner = clean[:, -CORNER:, -CORNER:].astype(np.float64).mean(axis=(1, 2, 3))
    # where the corner is already white the trigger changes (almost) nothing: the triggered image is the clean one,
    # and no classifier can call it the target without also misclassifying the clean image
    patch = (slice(None), slice(-attack.patch_size, None), slice(-attack.patch_size, None))
    unchanged = np.abs(triggered[patch].astype(np.int16) - clean[patch]).mean(axis=(1, 2, 3)) < UNCHANGED
    report = {
        "dataset": args.dataset, "attack": args.attack, "classifier": info["path"], "attack_options": options,
        "ca": round(ca, 2), "asr": round(float(hits.mean() * 100.0), 2), "triggered_images": int(keep.sum()),
        "asr_by_corner_brightness": rate_by_bins(hits, corner, EDGES),
        "unchanged_by_trigger": int(unchanged.sum()), "asr_on_unchanged": round(float(hits[unchanged].mean() * 100.0), 1)
        if unchanged.any() else None,
    }
    recipe = f"ResNet-{args.depth}" + (f", {interpolation} warp" if args.attack == "physicalba" else "")
    print(f"{args.dataset}, {args.attack} victim ({recipe}), whole test split: "
          f"CA {report['ca']:.2f} %, ASR {report['asr']:.2f} % on {report['triggered_images']} triggered images")
    print(f"\n| mean of the {CORNER}x{CORNER} corner before the patch (0-255) | images | ASR % |\n| --- | ---: | ---: |")
    for row in report["asr_by_corner_brightness"]:
        print(f"| {row['lo']}-{row['hi'] - 1} | {row['images']} | {row['asr']} |")
    print(f"\n{report['unchanged_by_trigger']} triggered images ({100.0 * unchanged.mean():.2f} %) differ from their clean "
          f"image by less than {UNCHANGED}/255 per patch pixel on average (ASR on them: {report['asr_on_unchanged']} %)")
    print("\n" + json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
