"""Mutation-audit gaps in the evaluation runner (pipeline/evaluation/runner.py): what its tests did not pin about
resuming a ZIP set (foreign batch files, a short last batch, the seconds recorded), the purified-set cache (another
shape, sets alike in their first image), which settings its seeds come from (ShrinkPad and the target check follow
--seed, ZIP --sampler-seed; --start reaches ZIP), that a defense is scored on its own output with its images' labels,
and how a single-split data set is split."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import pipeline.evaluation.defenses as defenses_module
from pipeline.evaluation import cache, metrics, runner
from pipeline.evaluation.attacks import make_attack, poison_test_set
from pipeline.evaluation.classifier import load_classifier, predict
from pipeline.evaluation.datasets import LabelledImages, load_splits, stratified_subset
from pipeline.evaluation.predictions import check_target, decode_predictions
from pipeline.evaluation.preflight import preflight
from pipeline.evaluation.report import CLEAN, stored_score
from pipeline.evaluation.target import ASR_LIMIT, AttackPredictions, bootstrap_averages
from pipeline.purifier import Purifier
from tests.jobutil import tiny_model_file
from tests.test_evalcache_resume import Batches, Stop, _images, _interrupted, _zip
from tests.test_evaluation_e2e import fake_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_batch_file_of_other_pixel_values_is_purified_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Canvases in model units ([-1, 1] floats) of the right shape and seed are not a batch of uint8 pixels."""
    prior = tiny_model_file(tmp_path)
    x = _images(6)
    reference = defenses_module.purified(_zip(prior), x, tmp_path / "uninterrupted", "clean")
    partial = _interrupted(_zip(prior), x, tmp_path / "cache", monkeypatch, finished=2)
    first = sorted(partial.glob("*.npz"))[0]
    with np.load(first) as old:
        np.savez(first, canvases=old["canvases"] / 127.5 - 1, seed=old["seed"], seconds=old["seconds"])
    capsys.readouterr()
    counted = Batches(monkeypatch)
    out = defenses_module.purified(_zip(prior), x, tmp_path / "cache", "clean")
    assert f"cache file {first} is damaged" in capsys.readouterr().err
    assert counted.calls == 2  # the float batch and the one never finished
    np.testing.assert_array_equal(out, reference)


def test_a_short_last_batch_finished_before_the_set_was_kept_is_reused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after the last batch's file was written, before the whole set was: a rerun purifies nothing. The last
    batch is shorter than the batch size (5 canvases in batches of 2), and its file is named by its own range."""
    prior = tiny_model_file(tmp_path)
    x = _images(5)
    original = defenses_module.save_npz

    def stop_at_the_set(path: Path, **arrays: object) -> None:
        if path.name.startswith("clean-"):
            raise Stop
        original(path, **arrays)

    with monkeypatch.context() as patch, pytest.raises(Stop):
        patch.setattr(defenses_module, "save_npz", stop_at_the_set)
        defenses_module.purified(_zip(prior), x, tmp_path / "cache", "clean")
    counted = Batches(monkeypatch)
    out = defenses_module.purified(_zip(prior), x, tmp_path / "cache", "clean")
    assert counted.calls == 0
    np.testing.assert_array_equal(out, _zip(prior)(x))


def test_a_resumed_set_records_the_seconds_of_all_its_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that moves 10 s per purifier batch: each batch file holds its own 10 s, and the set, resumed with one of
    three batches left, the 30 s of all three (the earlier run's 20 and this run's 10)."""
    prior = tiny_model_file(tmp_path)
    now = [0.0]
    monkeypatch.setattr(defenses_module, "time", SimpleNamespace(perf_counter=lambda: now[0], strftime=time.strftime))
    original = Purifier.purify_tensor

    def ten_seconds(self: Purifier, *args: Any, **kwargs: Any) -> Any:
        now[0] += 10
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Purifier, "purify_tensor", ten_seconds)
    x = _images(6)
    partial = _interrupted(_zip(prior), x, tmp_path / "cache", monkeypatch, finished=2)
    for path in partial.glob("*.npz"):
        with np.load(path) as batch:
            assert float(batch["seconds"]) == 10
    defenses_module.purified(_zip(prior), x, tmp_path / "cache", "clean")
    (whole,) = partial.parent.glob("clean-*.npz")
    with np.load(whole) as data:
        assert float(data["seconds"]) == 30


def test_a_cached_set_of_another_shape_is_not_taken_for_the_set(tmp_path: Path) -> None:
    """A file under the input's hash whose images have another shape (foreign or stale) is purified afresh."""
    x = _images(3)
    defense = defenses_module.make_defense("naive", pool=4)
    digest = cache.sha256_of_arrays(x)[:16]
    cache.save_npz(tmp_path / defense.key / f"clean-{digest}.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    out = defenses_module.purified(defense, x, tmp_path, "clean")
    np.testing.assert_array_equal(out, defense(x))


def test_two_sets_differing_after_their_first_image_are_cached_apart(tmp_path: Path) -> None:
    """The cache file is named by a hash of every input image, not only of what they start with."""
    defense = defenses_module.make_defense("naive", pool=4)
    a = _images(3)
    b = a.copy()
    b[2] = 255 - b[2]
    first = defenses_module.purified(defense, a, tmp_path, "clean")
    second = defenses_module.purified(defense, b, tmp_path, "badnet")
    np.testing.assert_array_equal(second, defense(b))
    assert not np.array_equal(first, second)


def _small(tmp_path: Path, **overrides: Any) -> runner.EvalConfig:
    settings: dict[str, Any] = dict(
        dataset="synthetic", attacks=["badnet"], defenses=["none", "shrinkpad"], checkpoint="unused", steps=2, subset=4,
        epochs=1, threads=1, cache_dir=tmp_path / "cache", examples=0, bootstrap=0,
        train_options={"depth": 8, "batch_size": 16},
    )
    return runner.EvalConfig(**{**settings, **overrides})


def test_shrinkpad_offsets_follow_the_subset_seed_not_the_sampler_seed(tmp_path: Path) -> None:
    """--sampler-seed reruns only ZIP's noise: the published sampler-seed runs (docs/cifar10-sampler-seed1.json) record
    ShrinkPad with seed 0, the --seed of the subset, so their baseline rows are those of the seed-0 run."""
    first = runner.evaluate_dataset(_small(tmp_path, out_dir=tmp_path / "a"), loader=fake_loader)
    rerun = runner.evaluate_dataset(_small(tmp_path, sampler_seed=1, out_dir=tmp_path / "b"), loader=fake_loader)
    assert rerun["config"]["defense_settings"]["shrinkpad"]["seed"] == 0
    assert rerun["results"] == first["results"]
    other = runner.evaluate_dataset(_small(tmp_path, seed=1, out_dir=tmp_path / "c"), loader=fake_loader)
    assert other["config"]["defense_settings"]["shrinkpad"]["seed"] == 1


def test_start_sampler_and_sampler_seed_reach_both_zip_defenses_and_nothing_else(tmp_path: Path) -> None:
    """--start 0.3 runs of docs/results.md purify with the late start, not the paper's full run: the report's ZIP
    settings (and so the cache key) carry it, and the pixels differ from a full run's. The sampler seed is ZIP's
    alone: the target check's bootstrap keeps --seed."""
    common = dict(defenses=["none", "naive", "zip", "zip-authors"], checkpoint=tiny_model_file(tmp_path), subset=2,
                  batch_size=2, bootstrap=20)
    late = runner.evaluate_dataset(_small(tmp_path, **common, start=0.5, sampler="ddpm", sampler_seed=2,
                                          out_dir=tmp_path / "late"), loader=fake_loader)
    for name in defenses_module.ZIP_DEFENSES:
        settings = late["config"]["defense_settings"][name]["zip"]
        assert (settings["start"], settings["sampler"], settings["seed"]) == (0.5, "ddpm", 2), name
    # The target check's resampling follows --seed, as in the published sampler-seed runs (docs/*-sampler-seed*.json).
    assert late["target"]["seed"] == 0
    full = runner.evaluate_dataset(_small(tmp_path, **common, out_dir=tmp_path / "full"), loader=fake_loader)
    assert full["config"]["defense_settings"]["zip"]["zip"]["start"] == 1.0
    assert late["fidelity"]["zip"] != full["fidelity"]["zip"]


def test_each_defense_is_scored_on_its_own_purified_images_with_their_own_labels(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """CA, ASR, PA and fidelity of a defense come from the classifier's predictions on that defense's output. The
    'naive' defense is made an inverting one here (dark and bright, the synthetic classes, swap), so scores of the
    unpurified images could not pass for it."""
    monkeypatch.setattr(defenses_module, "naive_transform", lambda x, pool: 255 - x)
    report = runner.evaluate_dataset(_small(tmp_path, defenses=["none", "naive"], subset=8, out_dir=tmp_path / "r"),
                                     loader=fake_loader)
    test = fake_loader("synthetic", "test")
    idx = stratified_subset(test.labels, 8, 0)
    clean, labels = test.images[idx], test.labels[idx]
    assert report["config"]["subset_sha256"] == cache.sha256_of_arrays(idx)  # the subset's indices, not its pixels
    model = load_classifier(report["classifiers"]["badnet"]["path"])
    attack = make_attack("badnet", 32)
    triggered, true_labels = poison_test_set(clean, labels, attack)
    for defense, apply in (("none", lambda x: x), ("naive", lambda x: 255 - x)):
        on_clean, on_triggered = predict(model, apply(clean)), predict(model, apply(triggered))
        expected = {"ca": metrics.clean_accuracy(on_clean, labels),
                    "asr": metrics.attack_success_rate(on_triggered, true_labels, attack.target),
                    "pa": metrics.poisoned_accuracy(on_triggered, true_labels),
                    "asr_no_trigger": metrics.attack_success_rate(on_clean, labels, attack.target)}
        assert report["results"]["badnet"][defense] == {k: stored_score(v) for k, v in expected.items()}, defense
    assert report["results"]["badnet"]["naive"]["ca"] != report["results"]["badnet"]["none"]["ca"]
    assert report["fidelity"]["naive"] == {"psnr": stored_score(metrics.psnr(255 - clean, clean)),
                                           "ssim": stored_score(metrics.ssim(255 - clean, clean))}
    assert report["fidelity"]["none"] == {"psnr": None, "ssim": None}


def test_a_single_split_set_holds_out_a_rounded_quarter_of_its_rarest_class_per_class() -> None:
    """Imagenette's one split: 25 % of the rarest class's count, rounded to nearest (14 -> 3.5 -> 4 per class, not 3),
    from every class; the rest is the training split, with no test image in it."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), [14, 20])
    images = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))  # tells every image apart

    def loader(name: str, split: str) -> LabelledImages:
        assert (name, split) == ("imagenette", "val")
        return LabelledImages(images, labels, 2)

    train, test = load_splits("imagenette", loader)
    assert np.bincount(test.labels).tolist() == [4, 4]
    assert len(train.labels) == len(labels) - 8
    assert not set(train.images[:, 0, 0, 0]) & set(test.images[:, 0, 0, 0])
    # Images and labels stay paired in both splits.
    for part in (train, test):
        np.testing.assert_array_equal(labels[part.images[:, 0, 0, 0]], part.labels)


def test_the_target_checks_point_estimates_are_the_reports_average_row() -> None:
    """The check's ZIP and baseline figures are the report's Average row, to the last stored decimal, so the check and
    the table cannot disagree. The exact averages (the bootstrap's unresampled row) differ from that row only by the
    rounding of the per-attack scores it averages: at most one unit of the sixth decimal. docs/gtsrb.json has such
    rows (ZIP's average PA: 19.26407 in the table, 19.264069 exactly)."""
    report = json.loads((Path(__file__).parents[1] / "docs" / "gtsrb.json").read_text())
    labels, predictions = decode_predictions(report["predictions"])
    defenses, average = report["config"]["defenses"], report["average"]
    target = check_target(labels, predictions, defenses, 50, 0, average)
    assert target is not None
    rows = 0
    for zip_defense, checks in target["checks"].items():
        for row in checks:
            assert row["zip"] == average[zip_defense][row["metric"]], (zip_defense, row["criterion"])
            other = average[row["baseline"]][row["metric"]] if row["baseline"] is not None else ASR_LIMIT
            assert row["other"] == other, (zip_defense, row["criterion"])
            rows += 1
    assert rows == 10  # two ZIP defenses: CA and PA against two baselines, and the ASR limit
    attacks = [AttackPredictions(p["target"], p["clean"], p["triggered"]) for a, p in predictions.items()
               if a != CLEAN]
    scored = [d for d in defenses if d != "none"]
    exact = bootstrap_averages(labels, attacks, scored, resamples=1)
    gaps = [abs(float(exact[d][m][0]) - average[d][m]) for d in scored for m in ("ca", "asr", "pa")]
    assert 0 < max(gaps) <= 1.5e-6


def test_a_runs_target_check_takes_its_figures_from_the_runs_average_row(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_dataset hands the report's Average row to the target check. The stored figures are put on a grid of
    3 points here (50 -> 51, 100 -> 99), so a check working from the exact averages would show other figures than
    the table's; with the real 6 decimals they differ in the last one (see the test above)."""
    monkeypatch.setattr(runner, "stored_score", lambda v: None if v is None or not np.isfinite(v) else 3.0 * round(v / 3))
    report = runner.evaluate_dataset(
        _small(tmp_path, defenses=["none", "naive", "zip"], checkpoint=tiny_model_file(tmp_path), subset=6,
               batch_size=6, bootstrap=20, out_dir=tmp_path / "r"), loader=fake_loader)
    average = report["average"]
    rows = report["target"]["checks"]["zip"]
    assert [r["criterion"] for r in rows] == ["ca above naive", "pa above naive", "asr at most 5"]
    for row in rows:
        assert row["zip"] == average["zip"][row["metric"]], row["criterion"]
        assert row["other"] == (average["naive"][row["metric"]] if row["baseline"] else ASR_LIMIT)
    labels, predictions = decode_predictions(report["predictions"])
    exact = check_target(labels, predictions, ["none", "naive", "zip"], 20, 0)["checks"]["zip"]
    assert [(r["zip"], r["other"]) for r in exact] != [(r["zip"], r["other"]) for r in rows]  # the test can tell


def test_an_exact_tie_rounded_one_unit_apart_in_the_average_row_is_no_win() -> None:
    """ZIP's PA is 5/9 and 5/9 on two attacks, naive's 9/9 and 1/9: exactly the same average, 55.6 % in the table. The
    Average row averages per-attack figures rounded to 6 decimals, so it stores 55.555556 against 55.555555; the
    check showed that 1e-6 as ZIP beating naive ('yes'), where a tie is no win."""
    labels = np.arange(10)
    triggered_labels = labels[labels != 0]

    def right(k: int) -> np.ndarray:  # k of the 9 triggered images classed right, the others as another class, not 0
        out = triggered_labels.copy()
        out[k:] = np.where(out[k:] == 5, 6, 5)
        return out

    predictions: dict[str, dict[str, Any]] = {}
    for attack, (zip_right, naive_right) in {"badnet": (5, 9), "blended": (5, 1)}.items():
        predictions[attack] = {"target": 0, "clean": {"zip": labels, "naive": labels},
                               "triggered": {"zip": right(zip_right), "naive": right(naive_right)}}
    average = {d: {"ca": 100.0, "asr": 0.0, "pa": stored_score(float(np.mean([
        stored_score(metrics.poisoned_accuracy(predictions[a]["triggered"][d], triggered_labels))
        for a in predictions])))} for d in ("zip", "naive")}
    assert (average["zip"]["pa"], average["naive"]["pa"]) == (55.555556, 55.555555)
    target = check_target(labels, predictions, ["zip", "naive"], 100, 0, average)
    row = next(r for r in target["checks"]["zip"] if r["criterion"] == "pa above naive")
    assert (row["zip"], row["other"]) == (55.555556, 55.555555)  # the table's figures, as before
    assert row["met"] is False and row["verdict"].startswith("no")
    ca = next(r for r in target["checks"]["zip"] if r["criterion"] == "ca above naive")
    assert ca["met"] is False  # 100 against 100


def test_an_attack_named_twice_is_evaluated_and_averaged_once(tmp_path: Path) -> None:
    """Named twice (here in two spellings), BadNet weighed twice in the Average row while the target check's
    resamples, keyed by attack, counted it once: with BadNet's naive PA 33.3 and Blended's 0, the Average row said
    22.2 and the check's interval was around 16.7. Each attack is now run once, in the order first named."""
    config = _small(tmp_path, attacks=["BadNet", "badnet", "none", "clean", "blended"], out_dir=tmp_path / "r")
    checked = preflight(config, loader=fake_loader)
    assert checked.attacks == ["badnet", "clean", "blended"]
    assert checked.settings["attacks"] == ["badnet", "clean", "blended"]


@pytest.mark.parametrize("field", ["defenses", "attacks"])
def test_an_empty_defense_or_attack_list_is_refused_before_any_work(tmp_path: Path, field: str) -> None:
    """The command line refuses an empty --defenses or --attacks; the API ran on, trained the classifiers and wrote a
    report whose tables had no column (`| Average |  |`) or no attack row."""
    from pipeline.evaluation.preflight import EvaluationError

    config = _small(tmp_path, out_dir=tmp_path / "r", **{field: []})
    with pytest.raises(EvaluationError, match=f"no {field[:-1]} to evaluate"):
        runner.evaluate_dataset(config, loader=fake_loader)
    assert not (tmp_path / "r").exists()
