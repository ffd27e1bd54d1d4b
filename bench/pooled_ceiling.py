"""How much class information survives ZIP's operator: a classifier trained on the pooled images A⁺A x themselves.

ZIP's output is a function of y = A x and the sampler's noise, so no classifier reading it can beat the best
classifier of y itself. A ResNet trained on A⁺A x (the recipe of the evaluation's victims, on pooled images) estimates
that best from below. Against the evaluation's tables it splits ZIP's accuracy loss in two: what the operator
destroys (clean accuracy down to this ceiling) and what the prior fails to restore (the ceiling down to ZIP's CA).

    python bench/pooled_ceiling.py --dataset cifar10 --pool 4 --threads 1     # 25-30 min on one core, then cached
    python bench/pooled_ceiling.py --dataset cifar10 --pool 2 --threads 1

Scores the whole test split, pooled the same way, and the evaluation's class-stratified subset (`--subset`, `--seed`:
jobs/evaluate.py's, 500 and 0 for the tables in docs/results.md), whose ZIP figures it is compared with. The
classifier is cached beside the evaluation's (`<cache>/classifiers/<dataset>-pooled<k>-e<epochs>.pt`); training
resumes from its last epoch if stopped. A cached one trained from other data (its file records the training split's
hash) or damaged is trained again.
Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation import datasets, metrics  # noqa: E402
from pipeline.evaluation.baselines import naive_transform  # noqa: E402
from pipeline.evaluation.cache import DAMAGED_CACHE, sha256_of_arrays, warn_damaged  # noqa: E402
from pipeline.evaluation.classifier import (  # noqa: E402
    classifier_trained_from,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from pipeline.evaluation.datasets import NUM_CLASSES, DataError, load_splits, stratified_subset  # noqa: E402
from pipeline.evaluation.preflight import EvaluationError, check_subset, check_subset_fits  # noqa: E402
from pipeline.local_folders import folder_problem  # noqa: E402


def class_probabilities(model: torch.nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """N x classes softmax probabilities of uint8 N x H x W x 3 images."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2).float() / 255.0
            out.append(model(x).softmax(1).numpy())
    return np.concatenate(out)


def posterior_figures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Percent: the mean probability of each image's true class (a class drawn from this posterior is right this
    often, where the argmax is right more often: a posterior sample, which is what ZIP draws, is right less often than
    the best guess from the same evidence), and the mean top probability (equal to the accuracy for a calibrated
    classifier: how far the first figure can be trusted)."""
    return {"true_class_probability": round(100.0 * float(probs[np.arange(len(labels)), labels].mean()), 2),
            "mean_confidence": round(100.0 * float(probs.max(1).mean()), 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "gtsrb"], help="Default: cifar10")
    p.add_argument("--pool", type=int, default=4, help="ZIP's pooling factor k (the job's default: 4). Default: 4")
    p.add_argument("--epochs", type=int, default=10, help="as the evaluation's victims (default 10)")
    p.add_argument("--crop-pad", type=int, default=4, help="random-crop padding in px while training (default 4, as "
                                                          "the victims; 0: flips only)")
    p.add_argument("--subset", type=int, default=500, help="the evaluation's test subset size (default 500)")
    p.add_argument("--seed", type=int, default=0, help="the evaluation's subset seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads while training (default: torch's)")
    # The evaluation's own default: with $ZIP_CACHE_DIR set, ~/.cache/zip-purify was not "beside the evaluation's"
    p.add_argument("--cache-dir", type=Path, default=datasets.CACHE_DIR,
                   help="where jobs/evaluate.py caches classifiers (its --cache-dir). Default: as jobs/evaluate.py's, "
                        "$ZIP_CACHE_DIR, else ~/.cache/zip-purify (now: %(default)s)")
    args = p.parse_args(argv)
    # Said now, in one line: each of these was a traceback, a subset too small or too large only after the training.
    problem = option_problem(args)
    if problem:
        p.error(problem)
    return args


def option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options on their own (the subset against the test split: `main`, once it is loaded)."""
    for name, least in (("pool", 1), ("epochs", 1), ("crop_pad", 0), ("seed", 0)):
        if getattr(args, name) < least:
            return f"--{name.replace('_', '-')} must be {least} or more, got {getattr(args, name)}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be 1 or more, got {args.threads}"
    try:
        check_subset(args.dataset, args.subset, NUM_CLASSES[args.dataset])
    except EvaluationError as err:
        return str(err)
    problem = folder_problem(args.cache_dir.expanduser())
    return f"--cache-dir {args.cache_dir}: {problem}" if problem else None


def cached_classifier(path: Path, trained_from: dict) -> torch.nn.Module | None:
    """The classifier cached at `path` when it was trained from `trained_from` (a file of before it was recorded is
    taken as it is); None, said, when it is damaged or was trained from other data (a smaller stand-in copy, say),
    which were served as they were."""
    if not path.exists():
        return None
    try:
        model, recorded = load_classifier(path), classifier_trained_from(path)
    except DAMAGED_CACHE as err:
        warn_damaged(path, err, "retraining the classifier")
        return None
    if recorded is not None and recorded != trained_from:
        print(f"cached classifier {path} was trained from other data or options; retraining it", file=sys.stderr)
        return None
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train, test = load_splits(args.dataset)
        check_subset_fits(args.dataset, args.subset, test.labels)
    except (DataError, EvaluationError) as err:  # a missing archive (named, with the variable to set), a subset too big
        raise SystemExit(f"error: {err}") from None
    crop = "" if args.crop_pad == 4 else f"-crop{args.crop_pad}"
    path = args.cache_dir.expanduser() / "classifiers" / f"{args.dataset}-pooled{args.pool}-e{args.epochs}{crop}.pt"
    trained_from = {"train_sha256": sha256_of_arrays(train.images, train.labels)}
    started = time.time()
    model = cached_classifier(path, trained_from)
    if model is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        model = train_classifier(naive_transform(train.images, args.pool), train.labels, train.num_classes,
                                 args.epochs, seed=0, hflip=args.dataset != "gtsrb", crop_pad=args.crop_pad,
                                 num_threads=args.threads, checkpoint=path.with_suffix(".training"),
                                 checkpoint_key=f"{args.dataset}-pooled{args.pool}-{trained_from['train_sha256']}")
        save_classifier(model, path, trained_from)
        path.with_suffix(".training").unlink(missing_ok=True)
    pooled_test = naive_transform(test.images, args.pool)
    subset = stratified_subset(test.labels, args.subset, args.seed)
    probs = class_probabilities(model, pooled_test)
    report = {
        "dataset": args.dataset, "pool": args.pool, "epochs": args.epochs, "crop_pad": args.crop_pad,
        "classifier": str(path), "test_images": int(len(test.labels)),
        "ca_on_pooled_test": round(metrics.clean_accuracy(probs.argmax(1), test.labels), 2),
        "subset": int(len(subset)), "subset_seed": args.seed,
        "ca_on_pooled_subset": round(metrics.clean_accuracy(probs[subset].argmax(1), test.labels[subset]), 2),
        "whole_split": posterior_figures(probs, test.labels),
        "on_subset": posterior_figures(probs[subset], test.labels[subset]),
        "ca_on_clean_test": round(metrics.clean_accuracy(predict(model, test.images), test.labels), 2),
        "seconds": round(time.time() - started, 1),
    }
    print(f"{args.dataset}, ResNet-20 trained on A⁺A x (pool {args.pool}), whole test split: "
          f"{report['ca_on_pooled_test']:.2f} % on pooled test images ({report['ca_on_clean_test']:.2f} % on clean ones); "
          f"{report['ca_on_pooled_subset']:.2f} % on the evaluation's {report['subset']}-image pooled subset; mean "
          f"probability of the true class {report['whole_split']['true_class_probability']:.2f} % (subset "
          f"{report['on_subset']['true_class_probability']:.2f} %), mean top probability "
          f"{report['whole_split']['mean_confidence']:.2f} %")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
