"""A ZIP set of the evaluation survives an interruption: each finished purifier batch is kept, a rerun purifies only
the others, and the set comes out bit-identical to an uninterrupted run's. Before, the whole set was purified again
(with DDPM 50 steps and --subset 1000, many minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import runner
from pipeline.evaluation.defenses import Defense, make_defense, purified
from pipeline.purifier import Purifier
from tests.jobutil import tiny_model_file
from tests.test_evaluation_e2e import fake_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Stop(Exception):
    """Stands for Ctrl-C or a kill in the middle of a purifier batch."""


class Batches:
    """Counts the purifier's batches (one `purify_tensor` call each) and stops in the `stop_in`-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_in: int | None = None) -> None:
        self.calls, self.stop_in = 0, stop_in
        original = Purifier.purify_tensor

        def counted(purifier: Purifier, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.stop_in:
                raise Stop
            return original(purifier, *args, **kwargs)

        monkeypatch.setattr(Purifier, "purify_tensor", counted)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _zip(prior: str, name: str = "zip", **overrides: Any) -> Defense:
    sha = load_checkpoint(prior, verify_only=True).sha256
    settings: dict[str, Any] = dict(steps=2, pool=4, checkpoint=prior, checkpoint_sha256=sha, batch_size=2)
    return make_defense(name, **{**settings, **overrides})


def _interrupted(defense: Defense, images: np.ndarray, cache: Path, monkeypatch: pytest.MonkeyPatch,
                 finished: int) -> Path:
    """Purify until `finished` batches are done, stop in the next; returns the folder of the kept batches."""
    with monkeypatch.context() as patch, pytest.raises(Stop):
        Batches(patch, stop_in=finished + 1)
        purified(defense, images, cache, "clean")
    (partial,) = (cache / defense.key).glob("clean-*.partial")
    return partial


@pytest.mark.parametrize("name, overrides, images, batches", [
    ("zip", {}, 10, 5),                                  # one 32 px image per canvas, DDIM
    ("zip-authors", {"zip_overrides": {"sampler": "ddpm", "seed": 3}}, 10, 5),
    ("zip", {"canvas_size": 64, "batch_size": 1}, 10, 3),  # four 32 px images share a 64 px canvas
])
def test_an_interrupted_set_resumes_with_its_missing_batches_bit_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str,
        overrides: dict[str, Any], images: int, batches: int) -> None:
    prior = tiny_model_file(tmp_path)
    x = _images(images)
    reference = purified(_zip(prior, name, **overrides), x, tmp_path / "uninterrupted", "clean")
    # Batch by batch, the same images as the purifier's one call over the whole set (how sets were purified before).
    np.testing.assert_array_equal(reference, _zip(prior, name, **overrides)(x))

    finished = batches - 2
    partial = _interrupted(_zip(prior, name, **overrides), x, tmp_path / "cache", monkeypatch, finished)
    kept = sorted(partial.glob("*.npz"))
    assert len(kept) == finished and not list(partial.glob("*tmp*"))  # written whole, by temporary file and rename
    assert not list(partial.parent.glob("*.npz"))  # the set itself is not cached yet
    capsys.readouterr()

    counted = Batches(monkeypatch)
    out = purified(_zip(prior, name, **overrides), x, tmp_path / "cache", "clean")
    assert counted.calls == 2  # only the batches the interrupted run had not finished
    np.testing.assert_array_equal(out, reference)
    assert f"resuming: {finished} of {batches} purifier batches" in capsys.readouterr().err
    (whole,) = partial.parent.glob("clean-*.npz")
    with np.load(whole) as data:
        np.testing.assert_array_equal(data["images"], reference)
    assert not partial.exists()  # the batches go once the set is kept whole


def test_the_resumed_log_says_how_much_was_kept_and_counts_the_progress_from_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prior = tiny_model_file(tmp_path)
    x = _images(12)
    _interrupted(_zip(prior), x, tmp_path / "cache", monkeypatch, finished=4)
    capsys.readouterr()
    purified(_zip(prior), x, tmp_path / "cache", "clean")
    err = capsys.readouterr().err
    assert ("zip/clean: resuming: 4 of 6 purifier batches (8 of 12 images) kept from an interrupted run, purifying "
            "the other 2") in err
    # The progress (in a log: a line at the end) counts on from the kept batches' steps (2 steps x 4 of 6 batches), so
    # it ends at 12/12, not at this run's 4.
    assert "purifying: 12/12 (100 %)" in err
    assert "images/s, 4 of the 12 this run)" in err


def test_a_damaged_or_foreign_batch_file_is_purified_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    prior = tiny_model_file(tmp_path)
    x = _images(12)
    reference = purified(_zip(prior), x, tmp_path / "uninterrupted", "clean")
    partial = _interrupted(_zip(prior), x, tmp_path / "cache", monkeypatch, finished=4)
    cut, flipped, foreign, intact = sorted(partial.glob("*.npz"))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the canvases' bytes: only the CRC-32 tells
    flipped.write_bytes(bytes(data))
    with np.load(foreign) as old:  # canvases from other noise (as from a changed per-batch seed)
        np.savez(foreign, canvases=old["canvases"], seed=np.int64(99), seconds=old["seconds"])
    capsys.readouterr()

    counted = Batches(monkeypatch)
    out = purified(_zip(prior), x, tmp_path / "cache", "clean")
    err = capsys.readouterr().err
    for path in (cut, flipped, foreign):
        assert f"warning: cache file {path} is damaged" in err and "purifying its batch again" in err
    assert "noise seed 99, expected uint8 (2, 32, 32, 3) of seed 4" in err
    assert f"cache file {intact} is damaged" not in err
    assert counted.calls == 5  # the three damaged ones and the two never finished
    np.testing.assert_array_equal(out, reference)


def test_an_interrupted_evaluation_reports_what_an_uninterrupted_one_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole matrix, stopped in the triggered set's third batch and run again."""
    settings: dict[str, Any] = dict(
        dataset="synthetic", attacks=["badnet"], defenses=["none", "naive", "zip"],
        checkpoint=tiny_model_file(tmp_path), steps=2, pool=4, subset=10, epochs=1, threads=1, batch_size=2,
        examples=2, bootstrap=50, train_options={"depth": 8, "batch_size": 16},
    )
    reference = runner.evaluate_dataset(runner.EvalConfig(**settings, cache_dir=tmp_path / "a", out_dir=tmp_path / "ra"),
                                        loader=fake_loader)
    config = runner.EvalConfig(**settings, cache_dir=tmp_path / "b", out_dir=tmp_path / "rb")
    capsys.readouterr()
    with monkeypatch.context() as patch, pytest.raises(Stop):
        Batches(patch, stop_in=5 + 3)  # the clean set's 5 batches, then 2 of the 5 triggered images' 3
        runner.evaluate_dataset(config, loader=fake_loader)
    counted = Batches(monkeypatch)
    report = runner.evaluate_dataset(config, loader=fake_loader)
    assert counted.calls == 1  # the clean set came from its cache, 2 of the triggered set's 3 batches were kept
    assert "zip/badnet: resuming: 2 of 3 purifier batches (4 of 5 images)" in capsys.readouterr().err
    for part in ("results", "fidelity", "target", "predictions"):
        assert report[part] == reference[part], part
    assert json.loads((tmp_path / "rb" / "synthetic.json").read_text())["results"] == reference["results"]
