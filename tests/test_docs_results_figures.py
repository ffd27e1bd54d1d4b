"""docs/results.md says every figure on it comes from the JSON reports beside it, and README's Results table quotes a
selection: the averages tables and the per-attack tables (CA / ASR / PA) must read what those reports hold, rounded
as the reports' own tables round them (once, half up). A report rescored or replaced without its tables, or a row
copied from the wrong report, would otherwise stand on the page. The rows are named in order below: a row added to
a table needs its report added here."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest

from pipeline.evaluation.report import _rounded

ROOT = Path(__file__).resolve().parent.parent
DEFENSES = ["none", "shrinkpad", "naive", "zip", "zip-authors"]
ATTACK_ROWS = {"BadNet": "badnet", "Blended": "blended", "PhysicalBA": "physicalba", "WaNet": "wanet",
               "None (clean classifier)": "clean", "Average": None}

# (page, the table's header line starts with, the report of each row in order, defense columns after the label)
AVERAGES_TABLES = [
    ("docs/results.md", "| Data set, pooling |", [
        "cifar10", "cifar10-ddpm50", "cifar10-start03", "cifar10-ddpm50-start03", "cifar10-k2",
        "cifar10-flip-only-victims", "cifar10-flip-only-victims-ddpm50-start03", "cifar10-flip-only-victims-k2",
        "gtsrb", "gtsrb-k2", "gtsrb-gtsrb-prior", "gtsrb-gtsrb-prior-ddpm50", "gtsrb-gtsrb-prior-start03",
        "gtsrb-gtsrb-prior-ddpm50-start03", "gtsrb-gtsrb-prior-k2"], 5),
    ("README.md", "| Data set, setting |", [
        "cifar10", "cifar10-ddpm50-start03", "cifar10-k2", "cifar10-flip-only-victims-k2", "gtsrb",
        "gtsrb-gtsrb-prior", "gtsrb-gtsrb-prior-k2"], 5),
    ("docs/results.md", "| CIFAR-10 averages, CA / ASR / PA |", [
        "cifar10-flip-only-victims", "cifar10-flip-only-victims-ddpm50-start03", "cifar10-flip-only-victims-k2",
        "cifar10", "cifar10-ddpm50-start03", "cifar10-k2"], 4),
    ("docs/results.md", "| GTSRB averages, CA / ASR / PA |", [
        "gtsrb-gtsrb-prior-crop-free-victims", "gtsrb-gtsrb-prior-crop-free-victims-k2", "gtsrb-gtsrb-prior",
        "gtsrb-gtsrb-prior-k2"], 4),
]
# the Table 1 layout tables of docs/results.md (a row per attack), in page order
ATTACK_TABLES = ["cifar10", "gtsrb", "cifar10-k2", "gtsrb-k2", "gtsrb-gtsrb-prior"]


def tables(page: str, header: str) -> list[list[list[str]]]:
    """Every table of `page` whose header line starts with `header`: its body rows as cells, bold marks removed."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(header):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip().strip("*").strip() for cell in row.strip().strip("|").split("|")])
            found.append(rows)
    return found


@functools.cache
def report(name: str) -> dict:
    return json.loads((ROOT / "docs" / f"{name}.json").read_text(encoding="utf-8"))


def shows(page_cell: str, scores: dict | None, old_report: bool) -> bool:
    """Whether a 'CA / ASR / PA' cell (or '–') reads `scores`. A report older than per-image predictions stored its
    figures at 2 decimals, so its 95.35 may be a 95.348 that the page rightly shows as 95.3."""
    if scores is None:
        return page_cell == "–"
    figures = [scores.get(m) for m in ("ca", "asr", "pa")]
    parts = page_cell.split(" / ")
    if len(parts) != 3:
        return False
    for shown, stored in zip(parts, figures, strict=True):
        if stored is None:
            if shown != "–":
                return False
        elif shown != _rounded(stored) and not (
                old_report and shown != "–" and math.isclose(float(shown), stored, abs_tol=0.0501)):
            return False
    return True


def mismatches(checked: list[tuple[list[str], int, str, dict]]) -> list[str]:
    """The cells that do not read their report's scores: (row, column, report name, scores) each."""
    return [f"{row[0]!r}, {name}: page {row[col]!r}, report {_cells(scores)}" for row, col, name, scores in checked
            if not shows(row[col], scores, old_report="predictions" not in report(name))]


def _cells(scores: dict | None) -> str:
    if scores is None:
        return "–"
    return " / ".join("–" if scores.get(m) is None else _rounded(scores[m]) for m in ("ca", "asr", "pa"))


@pytest.mark.parametrize(("page", "header", "names", "columns"), AVERAGES_TABLES,
                         ids=[f"{page} {header}" for page, header, _, _ in AVERAGES_TABLES])
def test_an_averages_table_reads_its_reports(page: str, header: str, names: list[str], columns: int) -> None:
    [rows] = tables(page, header)
    assert len(rows) == len(names), f"{page} {header}: {len(rows)} rows, {len(names)} reports named here"
    checked = [(row, col, name, report(name)["average"].get(defense))
               for row, name in zip(rows, names, strict=True) for col, defense in enumerate(DEFENSES[:columns], 1)]
    assert mismatches(checked) == []


def test_each_attack_table_reads_its_report() -> None:
    found = tables("docs/results.md", "| Attack | No defense CA / ASR / PA |")
    assert len(found) == len(ATTACK_TABLES), "a Table 1 layout table added to docs/results.md needs its report here"
    checked = []
    for rows, name in zip(found, ATTACK_TABLES, strict=True):
        rep = report(name)
        for row in rows:
            attack = ATTACK_ROWS[row[0]]
            checked += [(row, col, name, rep["average"][d] if attack is None else rep["results"][attack][d])
                        for col, d in enumerate(DEFENSES, 1)]
    assert mismatches(checked) == []


def test_a_figure_copied_wrong_is_caught() -> None:
    scores = {"ca": 40.95, "asr": 5.444444, "pa": 38.833333}
    assert shows("41.0 / 5.4 / 38.8", scores, old_report=False)
    assert not shows("40.9 / 5.4 / 38.8", scores, old_report=False)  # 40.95 rounds half up
    assert not shows("41.0 / 5.5 / 38.8", scores, old_report=False)
    assert shows("95.3 / 96.8 / 2.9", {"ca": 95.35, "asr": 96.75, "pa": 2.92}, old_report=True)
    assert not shows("95.3 / 96.8 / 2.9", {"ca": 95.35, "asr": 96.75, "pa": 2.92}, old_report=False)
    assert shows("82.4 / – / –", {"ca": 82.4, "asr": None, "pa": None}, old_report=False)


def _target_table_commands() -> list[list[str]]:
    from tests.test_docs_commands import documented_commands

    commands = documented_commands((ROOT / "docs/results.md").read_text(encoding="utf-8"))
    return [c.split()[1:] for c in dict.fromkeys(commands)
            if c.startswith("jobs/target_table.py ") and "*" not in c and "REPORT" not in c]


@pytest.mark.parametrize("argv", _target_table_commands(), ids=lambda argv: " ".join(argv)[:80])
def test_a_target_table_on_the_page_is_what_its_command_prints(argv: list[str], monkeypatch, capsys) -> None:
    """jobs/target_table.py, run as docs/results.md shows it, prints the table the page shows under it."""
    from tests.jobutil import load_job_script

    monkeypatch.chdir(ROOT)
    assert load_job_script("target_table.py", "documented_target_table").main(argv) == 0
    printed = "\n".join(line for line in capsys.readouterr().out.splitlines() if line.startswith("|"))
    assert printed.count("\n") >= 2
    assert printed in (ROOT / "docs/results.md").read_text(encoding="utf-8")
