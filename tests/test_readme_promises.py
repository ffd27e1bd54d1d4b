"""README audit (Dec 3): where running what README.md says gave another result or an unclear message.

1. README: "Every value is checked before any work, in a dry run too" and exit status 0 for "a dry run found nothing
   that stops the run". `--precision fp16 --gpus-per-actor 0 --dry-run` exited 0, and the same command without
   --dry-run then stopped with exit status 2 ("--precision fp16 needs CUDA, but the actors run on cpu").
2. README: "a link back to a folder being listed (a loop) is not followed and is one reject". Its reject said only
   "could not read file: IsADirectoryError: [Errno 21] Is a directory: '.../sub/loop'".
3. README: a file named like the escape of a name that is not UTF-8 "beside the file it stands for stops the run before
   any work, naming both". Both names were printed as the same text ('.../caf\\xe9.png and .../caf\\xe9.png').
4. README: `jobs/target_table.py`: "a report whose stored check is malformed, say hand-edited, is named on stderr with the
   reason and left out". With target.checks (or target) not an object, or no rows for the ZIP defense, the report got a
   row of point estimates and the stderr line "run with --bootstrap 0, so no intervals" (its run had 2,000 resamples).
5. README: jobs/train_prior.py: "Ctrl-C or SIGTERM saves before it exits, and the same command run again resumes". A run
   started with --fresh, stopped by SIGTERM, said "rerun the same command to resume"; that command, --fresh and all,
   starts over and overwrites the state just saved.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, load_job_script, run_main
from tests.test_train_ux_cli import TINY, fake_cifar, run_script
from tests.test_train_ux_resume import logged_steps, signal_at_step

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_refuses_half_precision_on_actors_told_to_use_no_gpu(tmp_path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 0))
    for precision in ("fp16", "bf16"):
        config = JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), precision=precision,
                           gpus_per_actor=0)
        with pytest.raises(JobError, match=rf"--precision {precision} needs CUDA.*--gpus-per-actor 0"):
            config.check()
    # the dry run stops on it, as the run itself would, with exit status 2 and nothing written
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--precision", "fp16",
            "--gpus-per-actor", "0", "--dry-run"]
    assert main(argv) == 2
    assert "--precision fp16 needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # not refused: fp32 on CPU actors, and fp16 on GPU actors or where the cluster's GPUs decide
    JobConfig(input="in", output="out", precision="fp32", gpus_per_actor=0).check()
    JobConfig(input="in", output="out", precision="fp16", gpus_per_actor=1).check()
    JobConfig(input="in", output="out", precision="fp16").check()


def test_a_link_loop_is_a_reject_that_says_it_is_a_loop(tmp_path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes(8, 8, 0))
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    records = {r["id"]: r for unit in discover(str(root)) for r in read_unit(unit) if r["kind"] != "count"}
    assert {i: r["kind"] for i, r in records.items()} == {"a.png": "image", "sub/up": "reject"}
    error = records["sub/up"]["error"]
    assert "loop" in error and f"up -> {root}" in error, error
    assert "IsADirectoryError" not in error


def test_escaped_twin_files_are_named_so_that_they_can_be_told_apart(tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    try:
        with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:  # latin-1 'café.png'
            f.write(image_bytes(8, 8, 0))
    except OSError:
        pytest.skip("this file system takes UTF-8 names only")
    (root / "caf\\xe9.png").write_bytes(image_bytes(8, 8, 1))  # a real backslash: the first one's id
    with pytest.raises(ValueError) as err:
        discover(str(root))
    message = str(err.value)
    assert "caf\\xe9.png'" in message and "caf\\\\xe9.png'" in message, message  # each name's bytes, as repr shows them


@pytest.mark.parametrize("damage", [
    lambda report: report["target"].update(checks="zip: all met"),  # checks that are no object
    lambda report: report.update(target=["not", "a", "check"]),  # a target that is no object
    lambda report: report["target"]["checks"].update(zip=[]),  # no rows for the ZIP defense shown
])
def test_target_table_skips_a_report_whose_stored_check_is_malformed_above_its_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any) -> None:
    good = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    bad = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    damage(bad)
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    job = load_job_script("target_table.py", "target_table_readme_audit")
    for extra in ([], ["--bootstrap", "20"]):  # nor are intervals computed for it, as for a --bootstrap 0 run
        assert run_main(job, [*extra, str(tmp_path / "good.json"), str(tmp_path / "bad.json")]) == 0
        out, err = capsys.readouterr()
        assert "| good |" in out and "| bad |" not in out
        assert "bad.json: its stored target check" in err and "malformed" in err and "(skipped)" in err, err
        assert "--bootstrap 0" not in err


def test_a_fresh_training_run_stopped_by_a_signal_says_to_resume_without_fresh(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pipeline.evaluation.datasets as datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    def unhandled(*_: object) -> None:  # stands in for the default action, which would end the test process
        raise RuntimeError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        signal_at_step(monkeypatch, signal.SIGTERM, at=3)
        command = ["--max-steps", "5", "--save-every-min", "60", "--out", str(tmp_path), *TINY]
        assert run_script(monkeypatch, *command, "--fresh") == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and "rerun the same command without --fresh to resume" in err, err
    monkeypatch.undo()
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    assert run_script(monkeypatch, *command) == 0  # what the line says to run: it resumes at step 4
    assert "resumed from" in capsys.readouterr().out
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5]
