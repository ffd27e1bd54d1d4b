"""Print the target check of several evaluation reports as one Markdown table.

Each `jobs/evaluate.py` report (<dataset>.json) holds a target check for its ZIP settings: is ZIP's average CA
and PA above ShrinkPad's and A⁺A x's, and is its average ASR at most 5 %, each with a 95 % paired-bootstrap
interval over the test images. This puts one row per report side by side, e.g. to compare settings or seeds.
A report without per-image predictions (written before they were kept, or run with --bootstrap 0) gets the same
verdicts from its Average row, marked "no interval". Every file gets its own row, labelled by its name (with as many
parent folders as it takes to tell files of the same name apart); a file that is no usable report (unreadable, not
a jobs/evaluate.py report, or from a run without attacks) is named on stderr and left out:

    python jobs/target_table.py docs/cifar10.json docs/cifar10-k2.json
    python jobs/target_table.py --zip zip-authors results/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation.report import target_summary  # noqa: E402
from pipeline.evaluation.target import point_check  # noqa: E402

JSON_TYPES = {"list": "an array", "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
              "NoneType": "null"}


class UnusableReport(ValueError):
    """A file that gives no row; the message says why."""


def read_report(path: Path) -> dict[str, Any]:
    """The JSON object of a jobs/evaluate.py report, or UnusableReport."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UnusableReport(f"cannot read it: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UnusableReport("not UTF-8 text, so not a JSON report") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as err:
        raise UnusableReport(f"not valid JSON: {err}") from None
    if not isinstance(report, dict):
        raise UnusableReport(f"holds {JSON_TYPES.get(type(report).__name__, 'a value')}, not a report (a JSON object)")
    if not isinstance(report.get("config"), dict) or "pool" not in report["config"]:
        raise UnusableReport("no config with the pool factor: not a jobs/evaluate.py report")
    return report


def with_checks(report: dict[str, Any], zip_defense: str, path: Path) -> dict[str, Any]:
    """The report with its target check of `zip_defense`: its own, or (an older report, or one run with --bootstrap 0)
    the point check of its averages, which gives the verdicts without intervals."""
    target = report.get("target")
    checks = target.get("checks") if isinstance(target, dict) else None
    if isinstance(checks, dict) and checks.get(zip_defense):
        return report
    averages = report.get("average")
    try:
        rows = point_check(averages if isinstance(averages, dict) else {}, zip_defense)
    except ValueError as err:
        raise UnusableReport(f"no target check for {zip_defense}: {err}") from None
    if report.get("predictions"):  # its run had the predictions but skipped the check (--bootstrap 0)
        why = ("run with --bootstrap 0, so no intervals: point estimates only (rerun its jobs/evaluate.py command with "
               "--bootstrap 2000 --overwrite for intervals)")
    else:
        why = "no per-image predictions, so no intervals: point estimates only (rerun jobs/evaluate.py for intervals)"
    print(f"{path}: {why}", file=sys.stderr)
    return {**report, "target": {"checks": {zip_defense: rows}}}


def row_labels(paths: list[Path]) -> list[str]:
    """A distinct label per file: its stem, with parent folders added until files of the same stem differ; a file
    given twice gets a number."""
    labels = [p.stem for p in paths]
    for depth in range(1, max((len(p.parts) for p in paths), default=0)):
        clashing = {label for label in labels if labels.count(label) > 1}
        if not clashing:
            break
        labels = [str(Path(*p.parts[-depth - 1:-1], p.stem)) if label in clashing else label
                  for p, label in zip(paths, labels, strict=True)]
    seen: dict[str, int] = {}
    numbered = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        numbered.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return numbered


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="evaluation JSON files (jobs/evaluate.py --out)")
    p.add_argument("--zip", default="zip", choices=["zip", "zip-authors"], help="which ZIP defense to show (default zip)")
    args = p.parse_args(argv)
    reports = {}
    for path, label in zip(args.reports, row_labels(args.reports), strict=True):
        try:
            reports[label] = with_checks(read_report(path), args.zip, path)
        except UnusableReport as err:
            print(f"{path}: {err} (skipped)", file=sys.stderr)
    if not reports:
        return 2
    print(target_summary(reports, args.zip), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
