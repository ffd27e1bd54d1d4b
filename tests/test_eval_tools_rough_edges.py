"""The evaluation and training tools' remaining rough edges (each test says what it was before): the purified-set
cache of a --subset that is no multiple of the class count, what --help says, classifier checkpoints of interrupted
runs, and --init-from beside width options."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluation import runner
from tests.test_evaluation_e2e import fake_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path: Path, subset: int) -> runner.EvalConfig:
    return runner.EvalConfig(dataset="synthetic", attacks=["badnet"], defenses=["none", "naive"], checkpoint="unused",
                             pool=4, subset=subset, seed=0, epochs=1, threads=1, cache_dir=tmp_path / "cache",
                             out_dir=tmp_path / f"results-{subset}", examples=1,
                             train_options={"depth": 8, "batch_size": 16})


def test_a_subset_rounded_down_shares_the_purified_sets_of_the_images_it_chose(tmp_path: Path) -> None:
    """Before: --subset 5 on two classes chose the same 4 images as --subset 4, but its purified sets went to a folder
    of its own (synthetic-n5-seed0), so they were purified again."""
    runner.evaluate_dataset(_config(tmp_path, 4), loader=fake_loader)
    report = runner.evaluate_dataset(_config(tmp_path, 5), loader=fake_loader)
    assert report["config"]["subset_actual"] == 4
    assert sorted(p.name for p in (tmp_path / "cache" / "purified").iterdir()) == ["synthetic-n4-seed0"]


def test_a_purified_folder_named_by_an_earlier_version_is_kept(tmp_path: Path) -> None:
    """A folder the earlier naming made (by the --subset given) is renamed to the images' count, not left to be
    redone; one of a multiple of the class count keeps its name."""
    old = tmp_path / "cache" / "purified" / "synthetic-n5-seed0" / "none-abc"
    old.mkdir(parents=True)
    (old / "clean-0123.npz").write_bytes(b"kept")
    folder = runner.purified_folder(tmp_path / "cache", _config(tmp_path, 5), 4)
    assert folder == tmp_path / "cache" / "purified" / "synthetic-n4-seed0"
    assert (folder / "none-abc" / "clean-0123.npz").read_bytes() == b"kept"
    assert not (tmp_path / "cache" / "purified" / "synthetic-n5-seed0").exists()
    assert runner.purified_folder(tmp_path / "cache", _config(tmp_path, 4), 4) == folder


def _help_of(job, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        job.parse_args(["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_evaluate_steps_help_is_true_of_either_sampler(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: '--steps ZIP DDIM steps', also of --sampler ddpm (whose --steps are DDPM's)."""
    from tests.jobutil import load_evaluate_job

    said = _help_of(load_evaluate_job("evaluate_steps_help"), capsys)
    described = said.rindex("--steps STEPS")  # its description, after the usage line
    steps = said[described:said.index("--pool POOL", described)]
    assert "DDIM steps" not in steps and "ddim or ddpm" in steps, steps


def test_a_finished_classifier_names_an_interrupted_training_of_it_to_other_epochs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the epoch checkpoint an interrupted --epochs 3 run left stayed in the cache for good, unsaid, while the
    same classifier was trained to --epochs 1; now it is named (and kept: a rerun with --epochs 3 may finish it)."""
    from pipeline.evaluation.victims import classifier_path, get_classifier, training_checkpoint_path

    options = {"depth": 8, "batch_size": 16}
    interrupted = training_checkpoint_path(classifier_path(tmp_path, "synthetic", "badnet", 3, options))
    other_recipe = training_checkpoint_path(classifier_path(tmp_path, "synthetic", "blended", 3, options))
    for partial in (interrupted, other_recipe):
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"an interrupted run's state")
    capsys.readouterr()
    get_classifier("synthetic", "badnet", tmp_path, 1, 1, loader=fake_loader, train_options=options, progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1 and str(interrupted) in notes[0] and "--epochs 3" in notes[0], notes
    assert interrupted.read_bytes() == other_recipe.read_bytes() == b"an interrupted run's state"


def test_train_prior_init_from_says_the_width_options_it_does_not_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before: --init-from with --channels 64 trained the prior's 32 channels without a word, though --help says its
    architecture replaces the width options."""
    from tests.jobutil import TRAIN_TINY_ARGS, train_prior_on_noise

    job = train_prior_on_noise(monkeypatch, "train_prior_width_note")
    assert job.cli(["--out", str(tmp_path / "first"), "--max-steps", "1", *TRAIN_TINY_ARGS]) == 0
    prior = str(tmp_path / "first" / "prior.pt")
    capsys.readouterr()
    assert job.cli(["--init-from", prior, "--minutes", "0", "--batch", "4", "--channels", "64", "--res-blocks", "3",
                    "--out", str(tmp_path / "wide")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "not used" in line]
    assert len(notes) == 1, notes
    assert "--channels 64, --res-blocks 3 not used" in notes[0] and "num_channels=32, num_res_blocks=1" in notes[0]
    assert job.cli(["--init-from", prior, "--minutes", "0", "--batch", "4", "--out", str(tmp_path / "plain")]) == 0
    assert "not used" not in capsys.readouterr().out  # none given: nothing to say


def test_train_prior_docstring_names_every_file_a_run_leaves_in_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    """Before: the .lock a run keeps in --out was in no list of its files."""
    from tests.jobutil import TRAIN_TINY_ARGS, train_prior_on_noise

    job = train_prior_on_noise(monkeypatch, "train_prior_files_listed")
    assert job.cli(["--out", str(tmp_path / "run"), "--max-steps", "1", *TRAIN_TINY_ARGS]) == 0
    listed = job.__doc__.split("Files in --out:")[1].split("\n\n")[0]
    described = {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert {p.name for p in (tmp_path / "run").iterdir()} <= described, described


def test_evaluation_time_passes_on_evaluate_hints_that_run_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a mistyped evaluate option given to bench/evaluation_time.py was answered 'run evaluate.py --help for
    the options', which runs nothing from the repository's folder (evaluate.py is in jobs/)."""
    import sys

    from tests.jobutil import load_job_script

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    module = load_job_script("evaluation_time.py", "evaluation_time_hint", folder="bench")
    argv0 = list(sys.argv[:1])
    with pytest.raises(SystemExit):
        module.main(["--work", str(tmp_path), "--", "--subsett", "5"])
    err = capsys.readouterr().err
    assert "(run python jobs/evaluate.py --help for the options)" in err, err
    assert sys.argv[:1] == argv0  # put back
