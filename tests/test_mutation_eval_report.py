"""The Markdown report's layout (mutation audit): Table 1 of the ZIP paper, one row per attack in run order and the
Average row last, each figure under its own defense and metric header, halves rounded up once from the shortest
decimal form, and the side tables (target check, summary, ASR without trigger, fidelity, classifiers) showing the
figure their header names."""

from __future__ import annotations

from typing import Any

from pipeline.evaluation.report import markdown_table, target_lines, target_summary
from pipeline.evaluation.target import _row

DEFENSES = ["none", "shrinkpad", "naive", "zip"]
TITLES = {"none": "No defense", "shrinkpad": "ShrinkPad", "naive": "A⁺A x (k=2)", "zip": "ZIP (k=2)"}
ATTACKS = ["wanet", "badnet", "clean"]
ROW_TITLES = {"wanet": "WaNet", "badnet": "BadNet", "clean": "None", "average": "Average"}
METRICS = ("ca", "asr", "pa")


def _value(row: int, defense: int, metric: int) -> float:
    """A figure that says where it belongs: row r, defense d, metric m -> r d . m (e.g. 12.3)."""
    return 10.0 * row + defense + metric / 10.0


def _report() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for r, a in enumerate([*ATTACKS, "average"], start=1):
        results[a] = {}
        for di, d in enumerate(DEFENSES):
            cell: dict[str, Any] = {m: _value(r, di, mi) for mi, m in enumerate(METRICS)}
            cell["asr_no_trigger"] = 50.0 + 10 * r + di
            if a == "clean":
                cell.update(asr=None, pa=None, asr_no_trigger=None)
            results[a][d] = cell
    average = results.pop("average")
    return {
        "dataset": "cifar10",
        "config": {"defenses": DEFENSES, "pool": 2, "attacks": ATTACKS, "subset_actual": 100, "seed": 0, "steps": 20,
                   "checkpoint_sha256": "ab" * 32, "classifier_epochs": 12},
        "results": results, "average": average,
        "fidelity": {d: {"psnr": 20.0 + i + 0.04, "ssim": 0.5 + i / 10 + 0.0004} for i, d in enumerate(DEFENSES)},
        "classifiers": {"wanet": {"no_defense_ca": 91.0, "no_defense_asr": 97.0, "full_test_ca": 92.0,
                                  "full_test_asr": 98.0, "epochs": 12}},
    }


def _table(lines: list[str], first_cell: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows (as cells) of the Markdown table whose header starts with `first_cell`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return header, body


def test_each_figure_sits_under_its_defense_and_metric_and_average_is_the_last_row() -> None:
    lines = markdown_table(_report()).splitlines()
    header, body = _table(lines, "Attack")
    assert header[1:] == [f"{TITLES[d]} {m.upper()}" for d in DEFENSES for m in METRICS]
    assert [row[0] for row in body] == ["WaNet", "BadNet", "None", "Average"]  # run order, then the average
    for r, row in enumerate(body, start=1):
        for column, cell in zip(header[1:], row[1:], strict=True):
            title, metric = column.rsplit(" ", 1)
            d = next(k for k, v in TITLES.items() if v == title)
            if row[0] == "None" and metric != "CA":
                assert cell == "–"
            else:
                assert cell == f"{_value(r, DEFENSES.index(d), METRICS.index(metric.lower())):.1f}", (row[0], column)


def test_side_tables_show_the_figure_their_header_names() -> None:
    lines = markdown_table(_report()).splitlines()
    header, body = _table(lines, "Attack | " + TITLES["none"])
    assert header[1:] == [TITLES[d] for d in DEFENSES]
    # the clean classifier has no target: no "without a trigger" row; the others show asr_no_trigger, not ASR
    assert [row[0] for row in body] == ["WaNet", "BadNet", "Average"]
    for row, r in zip(body, (1, 2, 4), strict=True):
        assert row[1:] == [f"{50.0 + 10 * r + di:.1f}" for di in range(len(DEFENSES))]
    _, body = _table(lines, "Defense")
    assert body == [[TITLES[d], f"{20.0 + i:.1f}", f"{0.5 + i / 10:.3f}"] for i, d in enumerate(DEFENSES)]
    header, body = _table(lines, "Attack | CA")
    assert header == ["Attack", "CA", "ASR", "CA, whole test split", "ASR, whole test split", "epochs"]
    assert body == [["WaNet", "91.0", "97.0", "92.0", "98.0", "12"]]


def test_table_figures_round_halves_up_from_their_shortest_decimal_form() -> None:
    """0.25 -> 0.3 and 0.45 -> 0.5 (not to even), 26.15 and 1.15 -> 26.2 and 1.2 (their binary values lie just
    below the half, which a float-based rounding would follow down)."""
    report = _report()
    report["average"]["none"].update(ca=0.25, asr=0.45, pa=26.15)
    report["average"]["shrinkpad"].update(ca=1.15, asr=2.675, pa=99.95)
    _, body = _table(markdown_table(report).splitlines(), "Attack")
    assert body[-1][1:7] == ["0.3", "0.5", "26.2", "1.2", "2.7", "100.0"]


def _target(zip_name: str = "zip") -> dict[str, Any]:
    rows = [_row("ca", "shrinkpad", 55.0, 60.25, [-7.5, 0.5], 5.0), _row("ca", "naive", 55.0, 50.0, [2.0, 8.0], 5.0),
            _row("pa", "shrinkpad", 50.0, 40.0, [6.0, 14.0], 5.0), _row("pa", "naive", 50.0, 45.0, [1.0, 9.0], 5.0),
            _row("asr", None, 4.25, 5.0, [2.5, 6.0], 5.0)]
    return {"asr_limit": 5.0, "images": 100, "resamples": 2000, "checks": {zip_name: rows}}


def test_target_lines_show_each_criterions_figures_interval_and_verdict() -> None:
    header, body = _table(target_lines({"config": {"pool": 2}, "target": _target()}), "ZIP setting")
    assert header == ["ZIP setting", "Criterion", "ZIP", "Baseline or bound", "ZIP − baseline", "95 % interval", "Met"]
    assert body[0] == ["ZIP (k=2)", "average CA above ShrinkPad", "55.0", "60.3", "-5.3", "-7.5 to +0.5",
                       "no, within noise"]
    assert body[1] == ["ZIP (k=2)", "average CA above A⁺A x (k=2)", "55.0", "50.0", "+5.0", "+2.0 to +8.0", "yes"]
    assert body[4] == ["ZIP (k=2)", "average ASR ≤ 5 %", "4.3", "≤ 5", "–", "2.5 to 6.0 (ZIP's ASR)",
                       "yes, within noise"]


def test_summary_is_all_met_only_when_every_criterion_was_judged_and_met() -> None:
    """A run without A⁺A x judges three of the five criteria: even if those are met, the target is not shown met."""
    everything = _target()
    everything["checks"]["zip"] = [dict(r, met=True) for r in everything["checks"]["zip"]]
    partial = {**everything, "checks": {"zip": [r for r in everything["checks"]["zip"] if r["baseline"] != "naive"]}}
    summary = target_summary({"full": {"config": {"pool": 2}, "target": everything},
                              "no-naive": {"config": {"pool": 2}, "target": partial}})
    rows = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")] for row in summary.splitlines()[2:]}
    assert rows["full"][-1] == "yes" and rows["no-naive"][-1] == "no"
    assert rows["no-naive"][3] == "–"  # CA − A⁺A x was not judged
    # the baseline criteria show ZIP minus the baseline, the ASR criterion ZIP's own ASR
    assert rows["full"][2] == "-5.3 [-7.5, +0.5] no, within noise"
    assert rows["full"][6] == "4.3 [2.5, 6.0] yes, within noise"


def test_the_header_says_nothing_of_zip_when_no_zip_defense_ran() -> None:
    """A run of the baselines alone described ZIP's sampler steps, sampler seed and prior ('prior sha256 `-`')."""
    report = _report()
    report["config"].update(defenses=["none", "naive"], sampler_seed=0, start=0.3, schedule="cosine",
                            checkpoint_sha256=None)
    head = markdown_table(report).splitlines()[2]
    assert "100 class-stratified test images (seed 0); pool k = 2; classifiers: ResNet, 12 epochs." in head, head
    for said in ("ZIP", "DDIM", "sampler", "late start", "cosine", "prior"):
        assert said not in head, said
    report["config"].update(defenses=["naive", "zip"], checkpoint_sha256="ab" * 32)
    head = markdown_table(report).splitlines()[2]
    assert ("; ZIP 20 DDIM steps (late start: only those at t ≤ 0.3·T run), cosine noise schedule, sampler seed 0, "
            "pool k = 2; prior sha256 `abababababababab`;") in head, head


def test_the_classifier_tables_precision_note_is_said_for_the_subset_the_report_holds() -> None:
    """It said 'on 500 images one image is 0.2 points' in a report of 10 images, where one image is 10 points."""
    report = _report()
    report["config"]["subset_actual"] = 10
    text = markdown_table(report)
    assert "on these 10 images one image is 10 points" in text and "500 images" not in text
    report["config"]["subset_actual"] = 500
    assert "on these 500 images one image is 0.2 points and the standard error of a score near 80 % about 1.8" \
        in markdown_table(report)
