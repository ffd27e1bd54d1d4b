"""Print the target check of several evaluation reports as one Markdown table.

Each `jobs/evaluate.py` report (<dataset>.json) holds a target check for its ZIP settings: is ZIP's average CA
and PA above ShrinkPad's and A⁺A x's, and is its average ASR at most 5 %, each with a 95 % paired-bootstrap
interval over the test images. This puts one row per report side by side, e.g. to compare settings or seeds.
A report without a check gets the same verdicts from its Average row, marked "no interval"; one run with
--bootstrap 0 kept its per-image predictions, and --bootstrap N computes its intervals from them here, exactly as
its jobs/evaluate.py command with --bootstrap N would have (N resamples, seeded with the report's --seed), without
rerunning it. A report's own check is always shown as stored. Every file gets its own row, labelled by its name (with as many
parent folders as it takes to tell files of the same name apart); a file that is no usable report (unreadable, not
a jobs/evaluate.py report, or from a run without attacks) is named on stderr and left out.

--attacks a,b,c judges each report over those attacks only (e.g. the ZIP paper's Table 1 averages BadNet, Blended
and PhysicalBA, without WaNet): its Average row and its check are recomputed from its per-attack results and
per-image predictions, exactly as its run would have computed them had it run only those attacks (the resamples of
its own check, or --bootstrap N, default 2000, for one run with --bootstrap 0; seeded with its --seed). Naming every
attack a report ran gives its stored check. A report without per-image predictions, or that did not run a named
attack, is named on stderr and left out:

    python jobs/target_table.py docs/cifar10.json docs/cifar10-k2.json
    python jobs/target_table.py --zip zip-authors results/*.json
    python jobs/target_table.py --bootstrap 2000 results/cifar10.json     # a report run with --bootstrap 0
    python jobs/target_table.py --attacks badnet,blended,physicalba docs/cifar10.json   # the paper's three attacks
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/target_table.py"):
    from pipeline.cli_common import Parser, script_prog
    from pipeline.evaluation.predictions import AttackNotRun, check_target, decode_predictions, over_attacks
    from pipeline.evaluation.report import ATTACK_TITLES, CLEAN, target_summary
    from pipeline.evaluation.target import RESAMPLES, point_check

# The backdoor attacks jobs/evaluate.py runs (pipeline.evaluation.attacks.ATTACKS, which imports torch: not here).
BACKDOOR_ATTACKS = tuple(a for a in ATTACK_TITLES if a != CLEAN)
JSON_TYPES = {"dict": "an object", "list": "an array", "str": "a string", "int": "a number", "float": "a number",
              "bool": "a boolean", "NoneType": "null"}


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


def computed_check(report: dict[str, Any], resamples: int) -> dict[str, Any] | None:
    """The target check the report's run would have stored with --bootstrap `resamples`, from its per-image
    predictions: the evaluation's own `check_target`, on the same labels, defenses, seed (the report's --seed) and Average
    row, so the same resamples and the same figures. None when the run had no ZIP defense, baseline or attack to check.
    Raises UnusableReport when the predictions or settings it needs are missing or malformed."""
    config = report["config"]
    try:
        labels, predictions = decode_predictions(report["predictions"])
        return check_target(labels, predictions, config["defenses"], resamples, config["seed"], report["average"])
    except KeyError as err:
        raise UnusableReport(f"it has no {err} to compute the intervals from") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as err:  # OverflowError: a label too large for int64
        raise UnusableReport(f"its per-image predictions are malformed ({err})") from None


def _number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float (isfinite converts it)
        return False


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value).__name__, "a value")


def stored_check_problem(rows: Any) -> str | None:
    """What keeps a report's stored check rows (target.checks[<zip defense>]) from being shown, or None. The table reads
    each row's metric, baseline, ZIP's value or the difference, the interval, the verdict and whether it is met: a
    hand-edited file, or another tool's, may hold anything there, which gave a traceback and lost every file's row."""
    if not isinstance(rows, list):
        return f"holds {_json_type(rows)}, not a list of check rows"
    if not rows:
        return "holds no check rows"
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            return f"row {i} holds {JSON_TYPES.get(type(r).__name__, 'a value')}, not a check row (a JSON object)"
        missing = [k for k in ("metric", "baseline", "interval", "verdict", "met") if k not in r]
        if missing:
            return f"row {i} has no {', '.join(missing)}"
        if r["metric"] not in ("ca", "pa", "asr") or not (r["baseline"] is None or isinstance(r["baseline"], str)):
            return f"row {i} checks an unknown criterion ({r['metric']!r} against {r['baseline']!r})"
        value = "zip" if r["baseline"] is None else "difference"  # the figure the table shows
        if not _number(r.get(value)):
            return f"row {i} has no {value} figure (a finite number)"
        interval = r["interval"]
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2 and all(map(_number, interval))):
            return f"row {i}'s interval is not null or two finite numbers"
        if not isinstance(r["verdict"], str) or not isinstance(r["met"], bool):
            return f"row {i}'s verdict is not text or its met is not true / false"
    return None


def with_checks(report: dict[str, Any], zip_defense: str, path: Path, resamples: int = 0) -> dict[str, Any]:
    """The report with its target check of `zip_defense`: its own; or, for one run with --bootstrap 0 and `resamples`
    above 0, the check computed from its predictions (`computed_check`); or else (an older report, or no resamples
    asked for) the point check of its averages, which gives the verdicts without intervals."""
    target = report.get("target")
    # A run with --bootstrap 0 stores no target (null); anything else there that is not a check is a damaged one, not a
    # run without intervals, which the stderr line and a --bootstrap N recomputation would have taken it for.
    if target is not None and not isinstance(target, dict):
        raise UnusableReport(f"its stored target check is malformed: target holds {_json_type(target)}, not an object")
    checks = target.get("checks") if isinstance(target, dict) else None
    if target is not None and not isinstance(checks, dict):
        raise UnusableReport(f"its stored target check is malformed: target.checks holds {_json_type(checks)}, not an "
                             "object of check rows per ZIP defense")
    if isinstance(checks, dict) and zip_defense in checks:
        if problem := stored_check_problem(checks[zip_defense]):
            raise UnusableReport(f"its stored target check of {zip_defense} is malformed: {problem}")
        return report
    failed = None
    if resamples and report.get("predictions"):
        try:
            computed = computed_check(report, resamples)
        except UnusableReport as err:
            computed, failed = None, str(err)
        if computed is not None and computed["checks"].get(zip_defense):
            print(f"{path}: run with --bootstrap 0; intervals computed here from its per-image predictions "
                  f"({resamples} resamples, seed {computed['seed']}), as jobs/evaluate.py --bootstrap {resamples} "
                  "would have", file=sys.stderr)
            return {**report, "target": computed}
        failed = failed or f"its predictions hold no {zip_defense}, baseline and backdoor attack to check"
    averages = report.get("average")
    try:
        rows = point_check(averages if isinstance(averages, dict) else {}, zip_defense)
    except (ValueError, OverflowError) as err:  # OverflowError: an average too large for a float
        raise UnusableReport(f"no target check for {zip_defense}: {err}") from None
    if failed:
        why = f"no intervals: {failed}; point estimates only"
    elif report.get("predictions"):  # its run had the predictions but skipped the check (--bootstrap 0)
        why = ("run with --bootstrap 0, so no intervals: point estimates only (give this command --bootstrap 2000 to "
               "compute them from its per-image predictions, the same as rerunning its jobs/evaluate.py command with "
               "--bootstrap 2000 --overwrite)")
    else:
        why = "no per-image predictions, so no intervals: point estimates only (rerun jobs/evaluate.py for intervals)"
    print(f"{path}: {why}", file=sys.stderr)
    return {**report, "target": {"checks": {zip_defense: rows}}}


def attack_names(text: str) -> list[str]:
    """argparse type of --attacks: backdoor attacks, comma-separated, each once (any case), in the order given."""
    names = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in BACKDOOR_ATTACKS]
    choose = f"choose from {', '.join(BACKDOOR_ATTACKS)}"
    if not names:
        raise argparse.ArgumentTypeError(f"no attack given; {choose}")
    if unknown:
        clean = " (the clean classifier's row is in no average)" if {"none", CLEAN} & set(unknown) else ""
        raise argparse.ArgumentTypeError(f"unknown attack {', '.join(map(repr, unknown))}{clean}; {choose}")
    return names


def over_named_attacks(report: dict[str, Any], attacks: list[str], zip_defense: str, path: Path,
                       resamples: int = 0) -> dict[str, Any]:
    """The report with its Average row and target check over `attacks` only (`over_attacks`, from its per-attack results
    and per-image predictions): with its own check's resamples, or `resamples` (else the runner's default) for a
    report run with --bootstrap 0; seeded with its --seed. UnusableReport when it has no predictions, did not run a
    named attack, or holds malformed ones."""
    if not report.get("predictions"):
        raise UnusableReport("no per-image predictions, so no averages over the named attacks (a report written before "
                             "they were kept; rerun its jobs/evaluate.py command for them)")
    target = report.get("target")
    own = target.get("resamples") if isinstance(target, dict) else None
    count = own if isinstance(own, int) and not isinstance(own, bool) and own > 0 else resamples or RESAMPLES
    try:
        average, check = over_attacks(report, attacks, count)
    except AttackNotRun as err:
        raise UnusableReport(str(err)) from None
    except KeyError as err:
        raise UnusableReport(f"it has no {err} to recompute its averages from") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as err:  # OverflowError: a label too large for int64
        raise UnusableReport(f"its per-attack results or per-image predictions are malformed ({err})") from None
    if check is None or not check["checks"].get(zip_defense):
        raise UnusableReport(f"it has no {zip_defense}, baseline and backdoor attack to check")
    print(f"{path}: averages and target check over {', '.join(attacks)} only, recomputed from its per-image predictions "
          f"({count} resamples, seed {check['seed']})", file=sys.stderr)
    return {**report, "average": average, "target": check}


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
    # one `error:` line and a pointer to --help for a bad option, as the evaluation's and the job's (not the usage)
    p = Parser(prog=script_prog(__file__), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="evaluation JSON files (jobs/evaluate.py --out)")
    p.add_argument("--zip", default="zip", choices=["zip", "zip-authors"], help="which ZIP defense to show (default zip)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="for a report run with --bootstrap 0 (per-image predictions kept, no check): compute its 95 %% "
                        "intervals here with N resamples, exactly as jobs/evaluate.py --bootstrap N would have (seeded "
                        "with the report's --seed; the runner's default is 2000). A report's own check is always shown "
                        "as stored. Default: 0, point estimates for such a report (with --attacks: 2000)")
    p.add_argument("--attacks", type=attack_names, metavar="A,B,...",
                   help=f"judge each report over these backdoor attacks only ({', '.join(BACKDOOR_ATTACKS)}; e.g. "
                        "badnet,blended,physicalba, the three the ZIP paper's Table 1 averages): its Average row and "
                        "target check are recomputed from its per-image predictions, as its run would have computed them "
                        "with only these attacks (its own check's resamples and seed). A report without predictions, "
                        "or that did not run one of them, is named on stderr and left out. Default: the attacks each "
                        "report ran, its check as stored")
    args = p.parse_args(argv)
    if args.bootstrap < 0:
        p.error("--bootstrap must be 0 or more")
    reports = {}
    for path, label in zip(args.reports, row_labels(args.reports), strict=True):
        try:
            report = read_report(path)
            if args.attacks:
                report = over_named_attacks(report, args.attacks, args.zip, path, args.bootstrap)
            else:
                report = with_checks(report, args.zip, path, args.bootstrap)
            try:  # its own row first: whatever else a file holds that the table cannot show costs that row only
                target_summary({label: report}, args.zip)
            except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as err:
                raise UnusableReport(f"its target check cannot be shown ({type(err).__name__}: {err})") from None
            reports[label] = report
        except UnusableReport as err:
            print(f"{path}: {err} (skipped)", file=sys.stderr)
    if not reports:
        return 2
    print(target_summary(reports, args.zip), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
