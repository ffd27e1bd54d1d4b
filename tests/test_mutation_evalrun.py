"""What a mutation audit of the evaluation's classifier, run orchestration, preflight checks, cache files, per-image
predictions and ShrinkPad / naive baselines found its tests did not pin (pipeline/evaluation/classifier.py, runner.py,
preflight.py, cache.py, predictions.py, baselines.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation import cache, runner, victims
from pipeline.evaluation.baselines import naive_transform, no_defense, shrink_pad
from pipeline.evaluation.classifier import (
    ClassifierConfig,
    build_classifier,
    classifier_trained_from,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from pipeline.evaluation.datasets import DataError, LabelledImages
from pipeline.evaluation.defenses import Defense, make_defense, purified
from pipeline.evaluation.predictions import AttackNotRun, over_attacks
from pipeline.evaluation.preflight import EvaluationError, preflight
from tests.jobutil import tiny_model_file
from tests.test_evaluation_e2e import fake_loader
from tests.test_mutation_classifier import KW, _identifiable
from tests.test_mutation_eval_runner import _small

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("depth", [2, 7, 10])
def test_a_resnet_depth_not_6n_plus_2_with_a_block_per_stage_is_refused(depth: int) -> None:
    """Depth 2 is 6·0 + 2: no residual block at all, not a ResNet."""
    with pytest.raises(ValueError, match=f"6n \\+ 2 with n >= 1.*got {depth}"):
        ClassifierConfig(depth=depth)


def test_stage_widths_other_than_three_are_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="expected 3 stage widths"):
        ClassifierConfig(widths=(16, 32))  # type: ignore[arg-type]


def test_the_model_feeds_its_first_layer_the_input_standardised_by_its_own_mean_and_std() -> None:
    """The statistics travel with the weights: the stem sees (x - mean) / std per channel, for x = uint8 / 255."""
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.25, 0.5)
    model = build_classifier(ClassifierConfig(num_classes=3, depth=8, mean=mean, std=std)).eval()
    seen: list[torch.Tensor] = []
    model.stem.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    x = torch.rand(2, 3, 8, 8)
    model(x)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected)


def test_training_on_no_images_says_it_needs_at_least_one() -> None:
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least one"):
        train_classifier(empty, np.zeros(0, dtype=np.int64), **KW)


@pytest.mark.parametrize("changed", [{"lr": 0.05}, {"checkpoint_key": "other data"}, {"weight_decay": 1e-3},
                                     {"crop_pad": 2}, {"hflip": False}, {"schedule": "cosine"}])
def test_a_checkpoint_of_training_with_another_setting_is_not_resumed(tmp_path: Path, changed: dict,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint is resumed only by the same training: another learning rate, weight decay, augmentation or
    schedule, or another caller's key (the data's hash, the attack), starts afresh and says why."""
    images, labels = _identifiable(16)
    checkpoint = tmp_path / "victim.partial.pt"
    train_classifier(images, labels, checkpoint=checkpoint, checkpoint_key="data", **{**KW, "epochs": 2})
    assert checkpoint.is_file()
    capsys.readouterr()
    train_classifier(images, labels, checkpoint=checkpoint, **{"checkpoint_key": "data", **KW, "epochs": 2, **changed})
    assert f"training checkpoint {checkpoint} is of other training" in capsys.readouterr().err


def test_an_unknown_lr_schedule_is_refused() -> None:
    images, labels = _identifiable(8)
    with pytest.raises(ValueError, match="schedule must be 'onecycle' or 'cosine', got 'linear'"):
        train_classifier(images, labels, schedule="linear", **KW)


def test_training_leaves_torchs_global_random_stream_where_it_was() -> None:
    """The initial weights follow from --seed alone, in a stream of their own: the caller's next draw is the one it
    would have been without the training."""
    images, labels = _identifiable(8)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    train_classifier(images, labels, seed=7, **KW)
    torch.testing.assert_close(torch.rand(4), expected)


def test_a_checkpoint_file_of_another_format_is_named_and_not_resumed(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A file at the checkpoint's path that holds the same fingerprint under another format tag (another version's
    layout) is not restored: it is named as no classifier training checkpoint and training starts afresh."""
    images, labels = _identifiable(16)
    checkpoint = tmp_path / "victim.partial.pt"
    train_classifier(images, labels, checkpoint=checkpoint, **{**KW, "epochs": 2})
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "format": "zip-purify-classifier-training/0"}, checkpoint)
    capsys.readouterr()
    resumed = train_classifier(images, labels, checkpoint=checkpoint, **{**KW, "epochs": 2})
    said = capsys.readouterr().err
    assert f"{checkpoint} is damaged (ValueError: not a classifier training checkpoint); training afresh" in said
    fresh = train_classifier(images, labels, **{**KW, "epochs": 2})
    for (name, a), b in zip(resumed.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_predicting_no_images_gives_no_labels() -> None:
    model = build_classifier(ClassifierConfig(num_classes=3, depth=8))
    out = predict(model, np.zeros((0, 32, 32, 3), dtype=np.uint8))
    assert out.dtype == np.int64 and out.shape == (0,)


def test_what_a_classifier_was_trained_from_is_read_back_from_its_file(tmp_path: Path) -> None:
    model = build_classifier(ClassifierConfig(num_classes=3, depth=8))
    save_classifier(model, tmp_path / "with.pt", trained_from={"data_sha256": "ab12", "attack": {"name": "badnet"}})
    save_classifier(model, tmp_path / "without.pt")
    assert classifier_trained_from(tmp_path / "with.pt") == {"data_sha256": "ab12", "attack": {"name": "badnet"}}
    assert classifier_trained_from(tmp_path / "without.pt") is None


def test_a_cache_write_that_fails_leaves_no_temporary_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch) -> None:
    """A full disk halfway through saving a victim, a training checkpoint or a purified set: the error is raised, the
    file written before stays whole, and no '.tmp' file is left in the cache (each one was left, taking the disk's
    space, until someone deleted it by hand)."""
    model = build_classifier(ClassifierConfig(num_classes=3, depth=8))
    save_classifier(model, tmp_path / "victim.pt")
    cache.save_npz(tmp_path / "purified.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(f, *args, **kwargs) -> None:  # writes part of the file, then the disk is full
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", lambda obj, f, *args, **kwargs: disk_full(f))
    monkeypatch.setattr(np, "savez", disk_full)
    for write in (lambda: save_classifier(model, tmp_path / "victim.pt"),
                  lambda: cache.save_npz(tmp_path / "purified.npz", images=np.ones((2, 4, 4, 3), np.uint8))):
        with pytest.raises(OSError, match="No space left"):
            write()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_file_of_another_kind_is_not_loaded_as_a_classifier(tmp_path: Path) -> None:
    """A training checkpoint (or any other torch file) given where a saved classifier belongs is named as not one."""
    images, labels = _identifiable(16)
    checkpoint = tmp_path / "victim.partial.pt"
    train_classifier(images, labels, checkpoint=checkpoint, **{**KW, "epochs": 2})
    with pytest.raises(ValueError, match="victim.partial.pt is not a classifier saved by save_classifier"):
        load_classifier(checkpoint)


def test_threads_sets_torchs_thread_count_for_the_runs_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = runner.predict
    monkeypatch.setattr(runner, "predict", lambda model, images: (seen.append(torch.get_num_threads()), real(model, images))[1])
    runner.evaluate_dataset(_small(tmp_path, threads=2, out_dir=tmp_path / "r"), loader=fake_loader)
    assert seen and set(seen) == {2}


def test_the_asr_floor_and_the_no_defense_asr_count_the_attacks_own_target_class(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A classifier that answers class 1 (BadNet's target) for every image: without a trigger it already 'succeeds'
    on every image of class 0, so the floor is 100 %, as its ASR is; CA is the half of the subset in class 1 and PA
    (the triggered images are those of class 0) is 0."""
    monkeypatch.setattr(runner, "predict", lambda model, images: np.ones(len(images), dtype=np.int64))
    report = runner.evaluate_dataset(_small(tmp_path, out_dir=tmp_path / "r"), loader=fake_loader)
    for defense in ("none", "shrinkpad"):
        assert report["results"]["badnet"][defense] == {"ca": 50.0, "asr": 100.0, "pa": 0.0, "asr_no_trigger": 100.0}
    classifier = report["classifiers"]["badnet"]
    assert (classifier["no_defense_ca"], classifier["no_defense_asr"]) == (50.0, 100.0)


def test_the_report_records_the_subset_it_drew_when_the_classes_do_not_divide_the_asked_size(tmp_path: Path) -> None:
    """--subset 5 over 2 classes draws 2 of each: the report says 4 images were scored, beside the 5 asked for."""
    report = runner.evaluate_dataset(_small(tmp_path, subset=5, out_dir=tmp_path / "r"), loader=fake_loader)
    assert report["config"]["subset"] == 5 and report["config"]["subset_actual"] == 4
    assert len(report["predictions"]["labels"].split()) == 4


def _refuse_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(victims, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(runner, "purified", lambda *a, **k: pytest.fail("purified"))


def test_a_pool_that_does_not_divide_a_loaded_sets_images_is_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set the preflight does not know (its image size is learnt on loading) gets the same check."""
    _refuse_work(monkeypatch)
    with pytest.raises(EvaluationError, match="--pool 3 does not divide synthetic's 32 px images"):
        runner.evaluate_dataset(_small(tmp_path, pool=3, out_dir=tmp_path / "r"), loader=fake_loader)


def test_a_data_set_that_cannot_be_read_is_an_evaluation_error_naming_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader's DataError becomes the run's one error line (jobs/evaluate.py prints EvaluationError as one)."""
    _refuse_work(monkeypatch)

    def unreadable(name: str, split: str) -> LabelledImages:
        raise DataError(f"{name} {split}: archive /data/synthetic.tar is damaged; download it again")

    with pytest.raises(EvaluationError, match="^data: synthetic train: archive /data/synthetic.tar is damaged"):
        runner.evaluate_dataset(_small(tmp_path, out_dir=tmp_path / "r"), loader=unreadable)


def test_a_run_of_the_clean_classifier_alone_has_no_examples_and_no_target(tmp_path: Path) -> None:
    """Without an attack no image carries a trigger: no examples picture, and the clean row's predictions name no
    target class (a class there would read as a backdoor's)."""
    out = tmp_path / "r"
    report = runner.evaluate_dataset(_small(tmp_path, attacks=["none"], examples=2, out_dir=out), loader=fake_loader)
    assert not (out / "synthetic-examples.png").exists()
    assert report["predictions"]["attacks"]["clean"]["target"] is None
    assert report["predictions"]["attacks"]["clean"]["triggered"] == {}


def test_the_reports_markdown_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """The Markdown table holds 'A⁺A x', '≤' and '–': under a locale whose encoding lacks them (an ASCII C locale
    without UTF-8 mode, Latin-1, Windows' cp1252) the report used to end a finished run in UnicodeEncodeError, after
    the hours of work, with the .json written and no .md. It is written as UTF-8 bytes, as everywhere else."""
    table = "| Defense | CA |\n| A⁺A x (k=4) | ≤ 5 % – ZIP − baseline |\n"
    path = tmp_path / "synthetic.md"
    code = ("import sys; from pathlib import Path; from pipeline.evaluation.cache import write_text_atomic; "
            f"write_text_atomic(Path(sys.argv[1]), {ascii(table)})")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(cache.__file__).parents[2])}  # this checkout
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert path.read_bytes() == table.encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic.md"]  # no temporary file left beside it


def test_zip_settings_out_of_their_own_limits_are_named_before_the_prior_is_read(tmp_path: Path) -> None:
    """--steps 0 is wrong whatever the prior: said as such, even when the prior cannot be read (it is not read)."""
    config = _small(tmp_path, defenses=["none", "zip"], checkpoint=str(tmp_path / "no-such-prior.pt"), steps=0,
                    out_dir=tmp_path / "r")
    with pytest.raises(EvaluationError, match="^ZIP settings: ") as raised:
        preflight(config, fake_loader)
    assert "no-such-prior" not in str(raised.value)


def test_a_report_of_another_bootstrap_count_is_not_replaced_unasked(tmp_path: Path) -> None:
    """--bootstrap changes the report's target check, so it is a setting the report records and is compared on."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "synthetic.json").write_text(json.dumps({"config": {"subset": 4, "bootstrap": 2000}}))
    with pytest.raises(EvaluationError, match=r"another configuration \(bootstrap 2000 there, 0 now\)"):
        preflight(_small(tmp_path, out_dir=out), fake_loader)
    assert preflight(_small(tmp_path, out_dir=out, bootstrap=2000), fake_loader).settings["bootstrap"] == 2000


@pytest.mark.parametrize(("pool", "canvas_size", "canvas"), [(8, 36, 36), (3, None, 32)])
def test_a_pool_that_does_not_divide_the_zip_canvas_is_refused(tmp_path: Path, pool: int, canvas_size: int | None,
                                                               canvas: int) -> None:
    """The canvas is --canvas-size, else the prior's image size (32 px here)."""
    config = _small(tmp_path, defenses=["none", "zip"], checkpoint=tiny_model_file(tmp_path), pool=pool,
                    canvas_size=canvas_size, out_dir=tmp_path / "r")
    with pytest.raises(EvaluationError, match=f"--pool {pool} does not divide the ZIP canvas size {canvas}"):
        preflight(config, fake_loader)


def test_a_report_older_than_some_settings_is_compared_on_those_it_recorded_only(tmp_path: Path) -> None:
    """A report written before --bootstrap, --sampler-seed or --examples were recorded is not another configuration
    for lacking them: the same command reruns into its folder."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "synthetic.json").write_text(json.dumps({"config": {"subset": 4, "steps": 2, "pool": 4}}))
    assert preflight(_small(tmp_path, out_dir=out), fake_loader).settings["subset"] == 4
    with pytest.raises(EvaluationError, match=r"another configuration \(steps 2 there, 3 now\)"):
        preflight(_small(tmp_path, out_dir=out, steps=3), fake_loader)


def test_a_defense_named_twice_is_evaluated_once_in_the_order_first_named(tmp_path: Path) -> None:
    """As an attack named twice: the report's columns, its Average row and its purified sets hold each defense once."""
    checked = preflight(_small(tmp_path, defenses=["shrinkpad", "none", "shrinkpad"], out_dir=tmp_path / "r"), fake_loader)
    assert checked.defenses == ["shrinkpad", "none"] and checked.settings["defenses"] == ["shrinkpad", "none"]


def test_shrinkpad_refuses_a_shrink_of_the_whole_side() -> None:
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shrink must be in \[0, 8\), got 8"):
        shrink_pad(images, shrink=8)


@pytest.mark.parametrize("defense", [lambda x: shrink_pad(x, shrink=0), lambda x: naive_transform(x, 1), no_defense],
                         ids=["shrinkpad-0", "naive-pool-1", "none"])
def test_an_identity_defense_returns_a_copy_the_caller_may_change(defense) -> None:
    """The purified set is cached and scored while the clean subset is reused for every attack: changing one must
    not change the other."""
    images = np.full((2, 8, 8, 3), 9, dtype=np.uint8)
    out = defense(images)
    np.testing.assert_array_equal(out, images)
    out[:] = 0
    assert int(images.min()) == 9


def test_the_naive_pool_factor_must_be_an_integer_not_a_flag() -> None:
    with pytest.raises(ValueError, match="pool must be a positive integer, got True"):
        naive_transform(np.zeros((1, 4, 4, 3), dtype=np.uint8), True)  # type: ignore[arg-type]


def test_an_unknown_defense_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="unknown defense 'jpeg'; choose from none, shrinkpad, naive, zip"):
        preflight(_small(tmp_path, defenses=["none", "jpeg"], out_dir=tmp_path / "r"), fake_loader)


def test_an_attack_with_predictions_but_no_results_row_is_one_the_report_did_not_run() -> None:
    """A report cut down by hand (its results row of BadNet removed) has not run BadNet for --attacks: it says so and
    names the attacks it has whole, instead of a KeyError."""
    report = {
        "predictions": {"labels": "0 1", "attacks": {
            "badnet": {"target": 1, "clean": {"none": "0 1"}, "triggered": {"none": "1"}},
            "blended": {"target": 1, "clean": {"none": "0 1"}, "triggered": {"none": "0"}}}},
        "results": {"blended": {"none": {"ca": 100.0, "asr": 0.0, "pa": 100.0, "asr_no_trigger": 0.0}}},
        "config": {"defenses": ["none"], "seed": 0},
    }
    with pytest.raises(AttackNotRun, match=r"^it ran no badnet \(its attacks: blended\)$"):
        over_attacks(report, ["badnet", "blended"])


def test_shrinkpad_keeps_the_images_brightness_rounding_not_truncating() -> None:
    """The shrunken image is rounded to the nearest level: its mean brightness is the original's (truncation darkened
    every image by half a level on average, a bias the classifier sees on every ShrinkPad image)."""
    images = np.random.default_rng(0).integers(1, 256, (8, 32, 32, 3), dtype=np.uint8)  # no 0: the padding shows
    out = shrink_pad(images, shrink=4, seed=0)
    shifts = []
    for image, padded in zip(images, out, strict=True):
        rows, cols = np.nonzero(padded.max(axis=-1))
        shrunk = padded[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert shrunk.shape == (28, 28, 3)
        shifts.append(shrunk.astype(np.float64).mean() - image.astype(np.float64).mean())
    assert abs(float(np.mean(shifts))) < 0.2


def test_two_arrays_of_the_same_bytes_in_another_shape_or_type_hash_apart() -> None:
    """The content hash names cache files: images of another shape (or dtype) with the same bytes are another set."""
    flat = np.arange(24, dtype=np.uint8)
    hashes = {cache.sha256_of_arrays(flat.reshape(shape)) for shape in [(2, 12), (12, 2), (2, 3, 4)]}
    hashes.add(cache.sha256_of_arrays(flat.view(np.uint32)))
    assert len(hashes) == 4


def _cached_set(tmp_path: Path, images: np.ndarray) -> tuple[Defense, Path]:
    defense = make_defense("naive", pool=4)
    purified(defense, images, tmp_path, "clean")
    (path,) = (tmp_path / defense.key).glob("clean-*.npz")
    return defense, path


@pytest.mark.parametrize("damage", ["cut off", "without its images"])
def test_a_purified_set_file_cut_off_or_lacking_its_images_is_named_and_made_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    defense, path = _cached_set(tmp_path, images)
    if damage == "cut off":
        path.write_bytes(path.read_bytes()[:100])  # a zip archive without its central directory (BadZipFile)
    else:
        cache.save_npz(path, other=np.zeros(3))  # a readable archive without "images" (KeyError)
    capsys.readouterr()
    np.testing.assert_array_equal(purified(defense, images, tmp_path, "clean"), defense(images))
    assert f"warning: cache file {path} is damaged" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "error"), [(b"[1, 2]", "TypeError: a JSON list, not an object"),
                                                (b'{"a": "\xff"}', "UnicodeDecodeError"),
                                                (b'{"a": ', "JSONDecodeError")])
def test_a_damaged_json_record_is_named_and_read_as_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            content: bytes, error: str) -> None:
    path = tmp_path / "victim.json"
    path.write_bytes(content)
    assert cache.read_json_cache(path) == {}
    assert f"warning: cache file {path} is damaged ({error}" in capsys.readouterr().err
