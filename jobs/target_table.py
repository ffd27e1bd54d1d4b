"""Print the target check of several evaluation reports as one Markdown table.

Each `jobs/evaluate.py` report (<dataset>.json) holds a target check for its ZIP settings: is ZIP's average CA
and PA above ShrinkPad's and A⁺A x's, and is its average ASR at most 5 %, each with a 95 % paired-bootstrap
interval over the test images. This puts one row per report side by side, e.g. to compare settings or seeds.
A report without per-image predictions (written before they were kept, or run with --bootstrap 0) gets the same
verdicts from its Average row, marked "no interval":

    python jobs/target_table.py docs/cifar10.json docs/cifar10-k2.json
    python jobs/target_table.py --zip zip-authors results/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation.report import target_summary  # noqa: E402
from pipeline.evaluation.target import point_check  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="evaluation JSON files (jobs/evaluate.py --out)")
    p.add_argument("--zip", default="zip", choices=["zip", "zip-authors"], help="which ZIP defense to show (default zip)")
    args = p.parse_args(argv)
    reports = {}
    for path in args.reports:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"cannot read {path}: {e}")
        if not (report.get("target") or {}).get("checks", {}).get(args.zip):
            try:  # an older report, or one run with --bootstrap 0: its averages still give a verdict, without intervals
                rows = point_check(report.get("average") or {}, args.zip)
            except ValueError as e:
                print(f"{path}: no target check for {args.zip}: {e}", file=sys.stderr)
                continue
            print(f"{path}: no per-image predictions, so no intervals: point estimates only (rerun jobs/evaluate.py "
                  "for intervals)", file=sys.stderr)
            report = {**report, "target": {"checks": {args.zip: rows}}}
        reports[path.stem] = report
    if not reports:
        return 2
    print(target_summary(reports, args.zip), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
