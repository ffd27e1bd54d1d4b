"""How long `jobs/evaluate.py` takes once its classifiers are cached, without first spending hours training them.

The issue behind the evaluation asks for the whole matrix within about an hour on 2 cores "once classifiers are
cached". What a run does after training (poisoning the test subsets, every defense, ZIP's purification, the
whole-split and subset scoring, the bootstrap check, the reports and the examples grid) does not depend on the
classifiers' weights. So this script:

1. caches stand-in classifiers under the names a run with `--epochs E` uses, each trained by the evaluation's own
   code (same architecture, same poisoning and augmentation) for E epochs on only its first `--stand-in-images`
   training images: seconds each, not 11-30 minutes;
2. removes their whole-split scores and any purified sets from the cache, so the timed run computes them all, as a
   run right after training does;
3. runs `python jobs/evaluate.py <your options> --epochs E --cache-dir <work>/cache` in a child process and prints
   its wall time, CPU time, peak memory and the load average around it.

The stand-ins' accuracy figures mean nothing; the reports go to `<work>/reports`, not docs/.

    python bench/evaluation_time.py --work /tmp/evaltime                                  # the default matrix
    python bench/evaluation_time.py --work /tmp/evaltime -- --datasets cifar10 --subset 100
Needs ../shared/data (the decoded copies are cached as the evaluation caches them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "jobs")]

from pipeline.evaluation import victims  # noqa: E402


def cache_stand_ins(evaluate_args: list[str], epochs: int, images: int, cache: Path, out: Path) -> None:
    """Run the evaluation with no defense but the identity, its classifier training cut to `images` images."""
    import evaluate  # jobs/evaluate.py

    train = victims.train_classifier

    def few_images(data: Any, labels: Any, num_classes: int, n_epochs: int, **options: Any) -> Any:
        if options.get("restamp") is not None:  # BadNet's re-stamp mask follows the images it marks
            mask, trigger = options["restamp"]
            options["restamp"] = (mask[:images], trigger)
        return train(data[:images], labels[:images], num_classes, n_epochs, **options)

    victims.train_classifier = few_images
    # run in this process, evaluate.py's messages ("run ... --help for the options") would name it evaluate.py,
    # which runs nothing: as the script this process runs, they name the command that does
    ran = sys.argv[:1]
    sys.argv[:1] = [as_typed(ROOT / "jobs" / "evaluate.py")]
    try:
        status = evaluate.main([*evaluate_args, "--epochs", str(epochs), "--defenses", "none",
                                "--cache-dir", str(cache), "--out", str(out), "--overwrite"])
    finally:
        victims.train_classifier = train
        sys.argv[:1] = ran
    if status != 0:
        raise SystemExit(f"caching the stand-in classifiers failed (exit status {status})")


def as_typed(path: Path) -> str:
    """`path` as a command line names it: relative to the working folder where it lies inside it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def forget_results(cache: Path) -> None:
    """Drop what the timed run must compute itself: the classifiers' whole-split scores and every purified set."""
    for meta in (cache / "classifiers").glob("*.json"):
        info = json.loads(meta.read_text())
        if info.pop("full_test", None) is not None:
            meta.write_text(json.dumps(info, indent=2))
    shutil.rmtree(cache / "purified", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="scratch folder: cache/, stand-ins/, reports/")
    p.add_argument("--epochs", type=int, default=1,
                   help="the --epochs the timed run is given (its cache names). Default: 1")
    p.add_argument("--stand-in-images", type=int, default=512,
                   help="training images per stand-in classifier. Default: 512")
    p.add_argument("evaluate_args", nargs="*", help="options for jobs/evaluate.py (after --); default: none")
    args = p.parse_args(argv)
    if args.stand_in_images < 1:  # (--epochs is jobs/evaluate.py's to check) none was a traceback from the training
        p.error(f"--stand-in-images must be 1 or more, got {args.stand_in_images}")
    cache = args.work / "cache"
    cache_stand_ins(args.evaluate_args, args.epochs, args.stand_in_images, cache, args.work / "stand-ins")
    forget_results(cache)

    command = [sys.executable, str(ROOT / "jobs" / "evaluate.py"), *args.evaluate_args, "--epochs", str(args.epochs),
               "--cache-dir", str(cache), "--out", str(args.work / "reports"), "--overwrite"]
    load_before = os.getloadavg()
    start = time.perf_counter()
    status = subprocess.call(command)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the timed run (the stand-ins ran in this process)
    print(f"command: {' '.join(command[1:])}")
    print(f"exit status {status}; wall {wall / 60:.1f} min ({wall:.0f} s); CPU {usage.ru_utime:.0f} s user + "
          f"{usage.ru_stime:.0f} s system; peak RSS {usage.ru_maxrss / 1024:.0f} MiB; load average (1 min) "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {os.cpu_count()} CPUs")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
