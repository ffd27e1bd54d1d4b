"""jobs/train_prior.py as a user meets it on the command line: --help, and refusals as one line with exit status 2.

The script runs as `python jobs/train_prior.py` would (its __main__ block, through runpy), in this process so that torch
is imported once; the training set is a 16-image stand-in, so no ../shared is needed.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.evaluation.datasets as datasets
from pipeline.evaluation.datasets import LabelledImages
from pipeline.training_run import TrainingRun

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "train_prior.py"
TINY = ["--channels", "32", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "", "--batch", "4",
        "--threads", "1", "--log-every", "1"]


def fake_cifar(name: str, split: str) -> LabelledImages:
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    return LabelledImages(images, np.zeros(16, np.int64), 1)


def run_script(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int | str:
    """The exit status `python jobs/train_prior.py ARGV` would have; an exception that escapes it is returned by name
    (the interpreter would print a traceback)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            return err.code or 0
        print(err.code, file=sys.stderr)  # what the interpreter does with a message: print it, exit status 1
        return 1
    except (Exception, KeyboardInterrupt) as err:
        return f"{type(err).__name__}: {err}"
    return 0


def test_help_names_the_defaults_the_files_resuming_and_how_to_use_the_prior(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(SCRIPT), run_name="train_prior").get("parse_args")(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines wherever the terminal ends
    assert stopped.value.code == 0
    for default in ("--channels CHANNELS UNet base width (num_channels); a multiple of 32 (default: 32)",
                    "(default: 1,2,2)", "(default: 0.999)", "(default: 90.0)", "(default: 5.0)", "(default: 0.0002)",
                    "images per optimiser step: at most the training set's size (a larger --batch is refused before "
                    "the first step) (default: 64)"):
        assert default in text, default
    for said in ("last.pt", "prior.pt", "train_log.jsonl", "run the same command again", "--checkpoint OUT/prior.pt",
                 "ZIP_SHARED_DIR", "Ctrl-C", "20 MB"):
        assert said in text, said
    assert "(default: None)" not in text and "(default: False)" not in text


def test_missing_data_is_one_error_line_and_status_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "no-shared")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "no-cache")
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "run"), *TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data cifar10: ") and "ZIP_SHARED_DIR" in err[0], err
    assert not (tmp_path / "run").exists()


def test_an_out_or_export_under_a_file_is_refused_before_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    (tmp_path / "file").write_text("")
    for bad in (["--out", str(tmp_path / "file" / "run")],
                ["--out", str(tmp_path / "run"), "--export", str(tmp_path / "file" / "prior.pt")]):
        assert run_script(monkeypatch, "--max-steps", "1", *TINY, *bad) == 2
        err = capsys.readouterr().err
        assert f"error: {bad[-2]} {bad[-1]}: {tmp_path / 'file'} is a file, not a folder" in err, err
        assert not (tmp_path / "run").exists()


def test_refusals_after_the_options_are_read_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    run = ["--max-steps", "1", "--out", str(tmp_path / "run"), *TINY]
    (tmp_path / "not-a-checkpoint.pt").write_text("hello")
    for init in ("missing.pt", "not-a-checkpoint.pt"):
        assert run_script(monkeypatch, *run, "--init-from", str(tmp_path / init)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --init-from {tmp_path / init}: "), err
    assert run_script(monkeypatch, *run) == 0
    capsys.readouterr()
    assert run_script(monkeypatch, *run, "--channels", "64") == 2  # resuming into a run of another width
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other model flags (num_channels 32, not 64)" in err[0], err
    (tmp_path / "run" / "last.pt").write_bytes((tmp_path / "run" / "last.pt").read_bytes()[:1000])  # cut short
    assert run_script(monkeypatch, *run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt is damaged" in err[0] and "--fresh" in err[0], err


@pytest.mark.parametrize("shape", [(4, 64, 64, 3), (4, 32, 32, 4)])
def test_training_images_that_are_not_32_px_rgb_are_refused_before_anything_is_written(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture, shape: tuple[int, ...]) -> None:
    # A shared copy of other images (another data set's archive under cifar10/, a 64 px re-export) was trained on
    # silently: the fully convolutional UNet takes any size, and the export called the result a 32 px prior.
    def other_images(name: str, split: str) -> LabelledImages:
        return LabelledImages(np.zeros(shape, np.uint8), np.zeros(shape[0], np.int64), 1)

    monkeypatch.setattr(datasets, "load_dataset", other_images)
    assert run_script(monkeypatch, "--max-steps", "1", "--out", str(tmp_path / "run"), *TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data cifar10: "), err
    assert "32x32" in err[0] and "x".join(map(str, shape[1:])) in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, default", [("--out", "runs/prior"), ("--export", "OUT/prior.pt"),
                                           ("--init-from", "random weights")])
def test_an_empty_path_from_an_unset_variable_is_refused_before_training(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                        flag: str, default: str) -> None:
    # `--init-from "$PRIOR"` with PRIOR unset trained from random weights for the whole budget; an empty --out kept
    # last.pt, the log and the prior in the folder the command ran in
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    monkeypatch.chdir(tmp_path)
    argv = ["--out", str(tmp_path / "run"), "--max-steps", "1", *TINY, flag, ""]
    assert run_script(monkeypatch, *argv) == 2
    err = capsys.readouterr().err
    assert f"error: {flag} is empty; give a path, or leave it out ({default})" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_batch_larger_than_the_training_set_is_refused_before_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    # BUG (fixed here): --batch 64 over 16 images trained without a word, each step holding every image 4 times
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    argv = ["--max-steps", "1", "--out", str(tmp_path / "run"), *TINY]
    assert run_script(monkeypatch, *argv, "--batch", "64") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --batch 64 is more than the 16 training images of --data cifar10; give --batch 16 or less"], err
    assert not (tmp_path / "run").exists()
    assert run_script(monkeypatch, *argv, "--batch", "16") == 0  # the whole set in one step is fine


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 42949672960 bytes")])
def test_a_step_out_of_memory_is_one_line_naming_batch_and_what_was_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         error: Exception) -> None:
    # a --batch too large for the device (only a fake error here: a real one takes tens of GB) was torch's traceback,
    # naming neither --batch nor what the run folder kept
    monkeypatch.setattr(datasets, "load_dataset", fake_cifar)
    real, steps = TrainingRun.train_step, []

    def step_then_fail(self, pixels, recipe):
        steps.append(recipe.batch)
        if len(steps) == 2:
            raise error
        return real(self, pixels, recipe)

    monkeypatch.setattr(TrainingRun, "train_step", step_then_fail)
    argv = ["--max-steps", "3", "--save-every-min", "0", "--out", str(tmp_path / "run"), *TINY]
    assert run_script(monkeypatch, *argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: out of memory on cpu at step 2 with --batch 4 (") and "smaller --batch" in err[0]
    assert f"{tmp_path / 'run' / 'last.pt'} keeps step 1" in err[0], err
    monkeypatch.setattr(TrainingRun, "train_step", real)
    assert run_script(monkeypatch, *argv, "--batch", "2") == 0  # the advice: a smaller --batch resumes the run
    assert "resumed from" in capsys.readouterr().out
