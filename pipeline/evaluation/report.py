"""Reports of a defense evaluation: the Markdown table laid out like the ZIP paper's Table 1, and the PNG grid of
examples. Pure functions of the report dictionary (and images) that `runner.evaluate_dataset` builds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.evaluation.baselines import naive_transform
from pipeline.evaluation.target import DECIMALS

CLEAN = "clean"  # attack name of the clean (non-backdoored) classifier row; "none" on the command line
ATTACK_TITLES = {"badnet": "BadNet", "blended": "Blended", "physicalba": "PhysicalBA", "wanet": "WaNet", CLEAN: "None"}
EXAMPLE_ROWS = {"zip": "ZIP", "zip-authors": "ZIP authors"}  # purified rows of the examples grid, when run


def defense_title(name: str, pool: int) -> str:
    """Column-group title of a defense in the Markdown table."""
    return {
        "none": "No defense", "shrinkpad": "ShrinkPad", "naive": f"A⁺A x (k={pool})", "zip": f"ZIP (k={pool})",
        "zip-authors": f"ZIP authors' code (k={pool})",
    }[name]


def _rounded(value: float, places: int = 1, sign: bool = False) -> str:
    """`value` to `places` decimals, halves rounded up (away from zero), from its shortest decimal form: a stored
    26.15 shows as 26.2, where f"{26.15:.1f}" gives 26.1 (the binary float lies just below the half)."""
    shown = Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{shown:+}" if sign else f"{shown}"


def _fmt(value: float | None) -> str:
    return "–" if value is None else _rounded(value)


def stored_score(value: float | None) -> float | None:
    """A figure as the report stores it: `DECIMALS` decimals, so that the one the tables show is rounded once."""
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def average_scores(results: dict[str, dict[str, dict[str, float | None]]], attacks: Sequence[str],
                   defenses: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """The report's Average row: each defense's mean CA, ASR, PA and ASR floor over `attacks`, from their rows of
    `results` (attack -> defense -> metric), in the order given; the clean classifier's row is not one. The runner
    averages every attack it ran; jobs/target_table.py --attacks averages a few of a report's."""
    return {
        d: {
            m: stored_score(float(np.mean(vals))) if (vals := [results[a][d][m] for a in attacks
                                                         if a != CLEAN and results[a][d][m] is not None]) else None
            for m in ("ca", "asr", "pa", "asr_no_trigger")
        }
        for d in defenses
    }


def target_lines(report: dict[str, Any]) -> list[str]:
    """The target check's table (`target.target_check`): one row per criterion and ZIP defense; none for reports
    written before the check existed or runs without a ZIP defense, a baseline or an attack."""
    target = report.get("target")
    if not target:
        return []
    pool = report["config"]["pool"]
    names = {"ca": "CA", "pa": "PA", "asr": "ASR"}
    lines = ["", f"Against the target (ZIP beats ShrinkPad and A⁺A x on average CA and average PA, with average ASR ≤ "
             f"{target['asr_limit']:g} %). Differences are ZIP minus the baseline, in points; the interval is a 95 % "
             f"paired bootstrap over the {target['images']} test images ({target['resamples']} resamples): the choice "
             "of test images and the sampler's noise, not the classifiers' or the prior's training. \"within noise\": "
             "the interval straddles the bound.", "",
             "| ZIP setting | Criterion | ZIP | Baseline or bound | ZIP − baseline | 95 % interval | Met |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for z, rows in target["checks"].items():
        for r in rows:
            if r["baseline"] is None:
                criterion = f"average {names[r['metric']]} ≤ {r['other']:g} %"
                other, diff = f"≤ {r['other']:g}", "–"
                interval = f"{_rounded(r['interval'][0])} to {_rounded(r['interval'][1])} (ZIP's {names[r['metric']]})"
            else:
                criterion = f"average {names[r['metric']]} above {defense_title(r['baseline'], pool)}"
                other, diff = _fmt(r["other"]), _rounded(r["difference"], sign=True)
                interval = f"{_rounded(r['interval'][0], sign=True)} to {_rounded(r['interval'][1], sign=True)}"
            lines.append(f"| {defense_title(z, pool)} | {criterion} | {_fmt(r['zip'])} | {other} | {diff} | {interval} "
                         f"| {r['verdict']} |")
    return lines


def target_summary(reports: dict[str, dict[str, Any]], zip_defense: str = "zip") -> str:
    """One Markdown row per evaluation report (keyed by a label, e.g. its file name) with the target check of
    `zip_defense`: each criterion's difference (or ZIP's ASR), its 95 % interval (none for a point check) and
    whether it is met."""
    criteria = [("ca", "shrinkpad"), ("ca", "naive"), ("pa", "shrinkpad"), ("pa", "naive"), ("asr", None)]
    titles = {("ca", "shrinkpad"): "CA − ShrinkPad", ("ca", "naive"): "CA − A⁺A x", ("pa", "shrinkpad"): "PA − ShrinkPad",
              ("pa", "naive"): "PA − A⁺A x", ("asr", None): "ASR (≤ 5)"}
    lines = ["| Evaluation | k | " + " | ".join(titles[c] for c in criteria) + " | all met |",
             "| --- | ---: |" + " --- |" * (len(criteria) + 1)]
    for label, report in reports.items():
        target = report.get("target") or {}
        rows = {(r["metric"], r["baseline"]): r for r in target.get("checks", {}).get(zip_defense, [])}
        if not rows:
            continue
        cells = []
        for c in criteria:
            r = rows.get(c)
            if r is None:
                cells.append("–")
                continue
            value = r["zip"] if r["baseline"] is None else r["difference"]
            sign = r["baseline"] is not None
            if r["interval"] is None:  # a point check (`target.point_check`): the report kept no predictions
                cells.append(f"{_rounded(value, sign=sign)} {r['verdict']}")
                continue
            lo, hi = (_rounded(v, sign=sign) for v in r["interval"])
            cells.append(f"{_rounded(value, sign=sign)} [{lo}, {hi}] {r['verdict']}")
        met = all(r["met"] for r in rows.values()) and len(rows) == len(criteria)
        lines.append(f"| {label} | {report['config']['pool']} | " + " | ".join(cells) + f" | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def markdown_table(report: dict[str, Any]) -> str:
    """Table 1 of the ZIP paper: a row per attack plus Average; per defense a CA / ASR / PA column group."""
    cfg = report["config"]
    defenses, pool = cfg["defenses"], cfg["pool"]
    header = ["Attack"] + [f"{defense_title(d, pool)} {m}" for d in defenses for m in ("CA", "ASR", "PA")]
    # Reports written before an option existed lack its key: they ran every step, with DDIM, and did not record
    # the sampler's seed.
    start = cfg.get("start", 1.0)
    sampler_seed = f"sampler seed {cfg['sampler_seed']}, " if "sampler_seed" in cfg else ""
    # A late start runs only the steps at t ≤ start·T of the `steps`-step schedule (0.3 of 20 DDIM steps: 7 of them).
    late = f" (late start: only those at t ≤ {start:g}·T run)" if start < 1 else ""
    # Recorded only when not linear (`preflight.report_settings`): a prior of train_prior.py --schedule cosine.
    schedule = f", {cfg['schedule']} noise schedule" if cfg.get("schedule", "linear") != "linear" else ""
    options = cfg.get("classifier_options") or {}
    trained = (", trained with " + ", ".join(f"{k} = {v}" for k, v in sorted(options.items()))) if options else ""
    # The sampler's settings and the prior are ZIP's (the defenses of EXAMPLE_ROWS): a run without them says nothing of
    # them.
    ran_zip = any(d in EXAMPLE_ROWS for d in defenses)
    zip_sampler = (f"ZIP {cfg['steps']} {cfg.get('sampler', 'ddim').upper()} steps{late}{schedule}, {sampler_seed}"
                   if ran_zip else "")
    prior = f"; prior sha256 `{(cfg['checkpoint_sha256'] or '-')[:16]}`" if ran_zip else ""
    lines = [
        f"# Defense evaluation: {report['dataset']}",
        "",
        f"{cfg['subset_actual']} class-stratified test images (seed {cfg['seed']}); {zip_sampler}pool k = {cfg['pool']}"
        f"{prior}; classifiers: ResNet, {cfg['classifier_epochs']} epochs{trained}. CA on purified clean images, ASR / PA "
        "on purified triggered images whose true label is not the target (percent).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    rows = [(ATTACK_TITLES.get(a, a), report["results"][a]) for a in cfg["attacks"]]
    rows.append(("Average", report["average"]))
    for title, cells in rows:
        values = [_fmt(cells[d][m]) for d in defenses for m in ("ca", "asr", "pa")]
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    lines += target_lines(report)
    lines += ["", "ASR without a trigger: percent of purified clean images (true label ≠ target) that the backdoored "
              "classifier assigns to the target. An ASR close to this floor is the purified images drifting to the "
              "target class, not a surviving trigger.", "",
              "| Attack | " + " | ".join(defense_title(d, pool) for d in defenses) + " |",
              "|" + "|".join([" --- "] + [" ---: "] * len(defenses)) + "|"]
    for title, cells in rows:
        if any(cells[d].get("asr_no_trigger") is not None for d in defenses):
            lines.append(f"| {title} | " + " | ".join(_fmt(cells[d].get("asr_no_trigger")) for d in defenses) + " |")
    lines += ["", "Purified clean images vs the originals:", "", "| Defense | PSNR (dB) | SSIM |", "| --- | ---: | ---: |"]
    for d in defenses:
        fid = report["fidelity"][d]
        ssim = "–" if fid["ssim"] is None else _rounded(fid["ssim"], 3)
        lines.append(f"| {defense_title(d, pool)} | {_fmt(fid['psnr'])} | {ssim} |")
    lines += ["", "Classifiers without defense, on this subset and on the whole test split (the more precise figure: "
              f"{_subset_precision(cfg['subset_actual'])}):", "",
              "| Attack | CA | ASR | CA, whole test split | ASR, whole test split | epochs |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for a, info in report["classifiers"].items():
        lines.append(f"| {ATTACK_TITLES.get(a, a)} | {_fmt(info['no_defense_ca'])} | {_fmt(info['no_defense_asr'])} "
                     f"| {_fmt(info.get('full_test_ca'))} | {_fmt(info.get('full_test_asr'))} | {info['epochs']} |")
    return "\n".join(lines) + "\n"


def _subset_precision(n: int) -> str:
    """How coarse a score on `n` images is: what one image moves it by, and the standard error of an accuracy near
    80 % (sqrt(p (1 - p) / n)), said for this run's subset (a report of 10 images said 500's figures)."""
    if n <= 0:
        return "this subset holds no image"
    one, error = 100 / n, 100 * math.sqrt(0.8 * 0.2 / n)
    return (f"on these {n:,} images one image is {one:.2g} points and the standard error of a score near 80 % about "
            f"{error:.2g} points")


def write_examples(
    path: Path,
    poisoned_sets: dict[str, np.ndarray],
    poisoned_out: dict[str, dict[str, np.ndarray]],
    examples: int,
    pool: int,
) -> bool:
    """PNG grid: per attack, `examples` columns; rows poisoned / A⁺A x / ZIP-purified (and ZIP authors' code when run).

    Returns whether it was written: a run without triggered images (attacks none) has no examples, and an earlier
    run's PNG at `path` is removed, so it cannot pass for this run's."""
    blocks = []
    for name, triggered in poisoned_sets.items():
        if len(triggered) == 0:
            continue
        count = min(examples, len(triggered))
        pick = np.linspace(0, len(triggered) - 1, count).round().astype(int)
        rows = [("poisoned", triggered[pick])]
        naive = poisoned_out[name].get("naive")
        rows.append((f"A+A x (k={pool})", naive[pick] if naive is not None else naive_transform(triggered[pick], pool)))
        for d, label in EXAMPLE_ROWS.items():
            if d in poisoned_out[name]:
                rows.append((f"{label} (k={pool})", poisoned_out[name][d][pick]))
        blocks.append((ATTACK_TITLES.get(name, name), rows))
    if not blocks:
        path.unlink(missing_ok=True)
        return False
    height, width = next(iter(poisoned_sets.values())).shape[1:3]
    scale = max(1, math.ceil(96 / max(height, width)))
    cell_h, cell_w, gap, label_w, title_h = height * scale, width * scale, 4, 130, 18
    columns = max(len(rows[0][1]) for _, rows in blocks)
    canvas_w = label_w + columns * (cell_w + gap)
    canvas_h = sum(title_h + len(rows) * (cell_h + gap) + gap for _, rows in blocks)
    canvas = Image.new("RGB", (canvas_w, canvas_h), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for title, rows in blocks:
        draw.text((4, y + 3), title, fill="black")
        y += title_h
        for label, images in rows:
            draw.text((4, y + cell_h // 2 - 6), label, fill="black")
            for i, image in enumerate(images):
                tile = Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST)
                canvas.paste(tile, (label_w + i * (cell_w + gap), y))
            y += cell_h + gap
        y += gap
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    canvas.save(tmp)
    os.replace(tmp, path)
    return True
