"""The victims' cache and training entry, the data sets' splits and the report's layout, as a mutation audit found them
under-tested: a victim's cache name (attack spelled any case, options in any order, attack and training options apart),
what it trains from (GTSRB's PhysicalBA without flips, BadNet's restamp mask, the recipe's flips and crops, seed 0)
and what it leaves behind; the single-split data sets' held-out test share; and the report's rows and side tables.
No Ray, no real training: victims are built untrained (`_untrained_victims`'s way) in a second or so.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.evaluation import datasets, victims
from pipeline.evaluation.attacks import PhysicalBA, make_attack, poison_training_set
from pipeline.evaluation.classifier import ClassifierConfig, build_classifier
from pipeline.evaluation.datasets import LabelledImages
from pipeline.evaluation.report import average_scores, markdown_table, stored_score, target_summary, write_examples
from tests.test_evaluation_e2e import _synthetic, fake_loader
from tests.test_mutation_eval_datasets import _add, _labels, _png
from tests.test_mutation_eval_report import _report, _table

# --- victims: the cache name -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["None", "NONE", "Clean", None])
def test_the_clean_classifier_is_found_under_any_spelling_of_none(tmp_path: Path, spelling: str | None) -> None:
    assert victims.classifier_path(tmp_path, "cifar10", spelling, 10).name == "cifar10-clean-e10.pt"


def test_an_attack_in_capitals_is_the_same_cached_classifier(tmp_path: Path) -> None:
    assert victims.normalise_attack("BadNet") == "badnet"
    assert victims.classifier_path(tmp_path, "cifar10", "BadNet", 10) == victims.classifier_path(tmp_path, "cifar10",
                                                                                                  "badnet", 10)


def test_an_unknown_attack_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown attack 'badnets'.*'badnet'.*'wanet'.*'none'"):
        victims.normalise_attack("badnets")


def test_options_in_another_order_are_the_same_cached_classifier(tmp_path: Path) -> None:
    one = victims.classifier_path(tmp_path, "cifar10", "blended", 10, {"depth": 8, "batch_size": 16, "lr": 0.1})
    other = victims.classifier_path(tmp_path, "cifar10", "blended", 10, {"lr": 0.1, "batch_size": 16, "depth": 8})
    assert one == other and one.name == "cifar10-blended-e10-batch_size16-depth8-lr0.1.pt"


def test_an_attack_option_and_a_training_option_of_one_name_are_other_classifiers(tmp_path: Path) -> None:
    """`attack_options` change the poison, `train_options` the training: never the same cache file."""
    by_attack = victims.classifier_path(tmp_path, "cifar10", "wanet", 10, attack_options={"k": 4})
    by_training = victims.classifier_path(tmp_path, "cifar10", "wanet", 10, train_options={"k": 4})
    assert by_attack != by_training


def test_the_epoch_checkpoint_is_not_the_cached_classifier(tmp_path: Path) -> None:
    path = victims.classifier_path(tmp_path, "cifar10", "badnet", 10)
    partial = victims.training_checkpoint_path(path)
    assert partial != path and partial.parent == path.parent and partial.name == "cifar10-badnet-e10-restamp.partial.pt"


# --- victims: what a victim trains from ------------------------------------------------------------------------------


def _recording_trainer(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`train_classifier` replaced by an untrained classifier that records what it was given and, as the real one does,
    leaves an epoch checkpoint at `checkpoint` while it trains."""
    calls: list[dict[str, Any]] = []

    def untrained(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, **kwargs: Any) -> object:
        calls.append({"images": images, "labels": labels, **kwargs})
        Path(kwargs["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
        Path(kwargs["checkpoint"]).write_bytes(b"epoch 1 of 2")
        return build_classifier(ClassifierConfig(num_classes=num_classes, depth=8)).eval()

    monkeypatch.setattr(victims, "train_classifier", untrained)
    return calls


def test_gtsrb_physicalba_victim_trains_without_flips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Traffic signs are not flip-invariant: PhysicalBA's own transforms must not flip GTSRB's images, while on other
    data sets they do."""
    calls = _recording_trainer(monkeypatch)
    only_flips = PhysicalBA(brightness=0.0, contrast=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    monkeypatch.setattr(victims, "make_attack", lambda name, size: only_flips)
    train = fake_loader("synthetic", "train")
    victims.get_classifier("gtsrb", "physicalba", tmp_path, 1, train=train)
    victims.get_classifier("cifar10", "physicalba", tmp_path, 1, train=train)
    gtsrb, cifar = calls
    images = gtsrb["images"]
    np.testing.assert_array_equal(gtsrb["extra_transform"](images, np.random.default_rng(1)), images)
    assert not np.array_equal(cifar["extra_transform"](images, np.random.default_rng(1)), images)
    assert gtsrb["hflip"] is False and cifar["hflip"] is True


def test_badnet_restamps_exactly_its_poisoned_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_trainer(monkeypatch)
    train = _synthetic(80, 1)
    _, info = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    mask, stamp = calls[0]["restamp"]
    assert mask.sum() == info["poisoned"] == 4  # 5 % of 80
    images, labels, poisoned = poison_training_set(train.images, train.labels, make_attack("badnet", 32), seed=0)
    assert np.flatnonzero(mask).tolist() == sorted(poisoned.tolist())
    # trained on the training split poisoned with seed 0: the victims the published reports used
    np.testing.assert_array_equal(calls[0]["images"], images)
    np.testing.assert_array_equal(calls[0]["labels"], labels)


def test_a_trained_victim_leaves_no_epoch_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished training's epoch checkpoint would resume a later retraining (other data) from these weights."""
    _recording_trainer(monkeypatch)
    _, info = victims.get_classifier("synthetic", "blended", tmp_path, 1, train=fake_loader("synthetic", "train"))
    path = Path(info["path"])
    assert path.is_file() and not victims.training_checkpoint_path(path).exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.with_suffix(".json").name, path.name]


def test_physicalba_trains_without_crops_whatever_crop_pad_is_given(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_trainer(monkeypatch)
    train = fake_loader("synthetic", "train")
    victims.get_classifier("synthetic", "physicalba", tmp_path, 1, train=train)
    victims.get_classifier("synthetic", "physicalba", tmp_path / "other", 1, train=train, train_options={"crop_pad": 2})
    victims.get_classifier("synthetic", "blended", tmp_path, 1, train=train)
    assert calls[0]["crop_pad"] == 0 and calls[1]["crop_pad"] == 0 and "crop_pad" not in calls[2]


def test_a_cached_victim_is_moved_to_the_device_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _recording_trainer(monkeypatch)
    train = fake_loader("synthetic", "train")
    victims.get_classifier("synthetic", "blended", tmp_path, 1, train=train)
    model, info = victims.get_classifier("synthetic", "blended", tmp_path, 1, train=train, device="meta")
    assert info["trained_now"] is False and next(model.parameters()).device.type == "meta"


def test_whole_split_scores_keep_the_victims_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring the whole test split adds to the record; what the victim was trained from stays in it."""
    _recording_trainer(monkeypatch)
    model, info = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=fake_loader("synthetic", "train"))
    meta = Path(info["path"]).with_suffix(".json")
    victims.full_test_scores(model, make_attack("badnet", 32), _synthetic(24, 2), meta)
    record = json.loads(meta.read_text())
    assert record["train_sha256"] == info["train_sha256"] and record["poisoned"] == info["poisoned"]
    assert record["full_test"]["images"] == 24


# --- datasets --------------------------------------------------------------------------------------------------------


def _single_split_loader(counts: list[int]) -> datasets.Loader:
    labels = _labels(counts)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)

    def loader(name: str, split: str) -> LabelledImages:
        assert (name, split) == ("imagenette", "val")
        return LabelledImages(images, labels, len(counts))

    return loader


def test_a_single_split_data_set_holds_out_a_quarter_of_its_rarest_class_from_every_class() -> None:
    loader = _single_split_loader([40, 20, 80])
    train, test = datasets.load_splits("imagenette", loader)
    assert np.bincount(test.labels).tolist() == [5, 5, 5]  # round(0.25 * 20) of each
    assert np.bincount(train.labels).tolist() == [35, 15, 75]
    held_out = set(test.images[:, 0, 0, 0].tolist())
    assert held_out.isdisjoint(train.images[:, 0, 0, 0].tolist())  # no test image is trained on


def test_the_single_split_test_share_is_fixed_by_the_seed_12345() -> None:
    """The held-out images are the same in every run and as in the published reports (seed 12345)."""
    loader = _single_split_loader([40, 20, 80])
    full = loader("imagenette", "val")
    _, test = datasets.load_splits("imagenette", loader)
    expected = datasets.stratified_subset(full.labels, 15, seed=12345)
    np.testing.assert_array_equal(test.images, full.images[expected])


def _cifar_archive(shared: Path) -> None:
    path = shared / "data" / "cifar10" / "cifar10-test.tar.gz"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "test/cat/0000.png", _png(7))


def test_a_decoded_data_set_is_served_from_its_cache_without_decoding_again(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "shared")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    _cifar_archive(tmp_path / "shared")
    datasets.load_dataset("cifar10", "test")
    monkeypatch.setitem(datasets._READERS, "cifar10", (lambda split: pytest.fail("decoded again"), 10))
    assert datasets.load_dataset("cifar10", "test").labels.tolist() == [3]
    assert datasets.cached_labels("cifar10", "test").tolist() == [3]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cifar10-test.npz"]  # no temporary left


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_cut_short_archive_is_one_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: float) -> None:
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "shared")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    _cifar_archive(tmp_path / "shared")
    path = datasets.archive_path("cifar10", "test")
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(datasets.DataError, match=f"cifar10/test: archive {path} could not be read"):
        datasets.load_dataset("cifar10", "test")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


def test_a_cifar10_archive_with_files_beside_the_class_folders_reads_its_images(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "shared")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    _cifar_archive(tmp_path / "shared")
    path = datasets.archive_path("cifar10", "test")
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "test/README.txt", b"CIFAR-10 test split")
        _add(tar, "test/cat/0000.png", _png(7))
    assert datasets.load_dataset("cifar10", "test").labels.tolist() == [3]


def test_no_shared_folder_is_said_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(datasets.MissingDataError, match="shared data folder .*nowhere not found.*ZIP_SHARED_DIR"):
        datasets.load_dataset("gtsrb", "test")
    assert "shared data folder" in datasets.missing_data("gtsrb", "test")


def test_an_empty_folder_variable_is_the_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZIP_CACHE_DIR", "")
    assert datasets._folder_variable("ZIP_CACHE_DIR", tmp_path) == tmp_path


def test_a_folder_variable_naming_a_uri_hides_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIP_SHARED_DIR", "s3://KEYID:s3cr3t@bucket/shared")
    monkeypatch.delenv("ZIP_CACHE_DIR", raising=False)
    problem = datasets.folder_variable_problem()
    assert problem is not None and "$ZIP_SHARED_DIR" in problem and "s3cr3t" not in problem


# --- report ----------------------------------------------------------------------------------------------------------


def test_the_average_row_leaves_out_a_figure_an_attack_has_not() -> None:
    results = {"badnet": {"zip": {"ca": 90.0, "asr": 2.0, "pa": None, "asr_no_trigger": None}},
               "wanet": {"zip": {"ca": 80.0, "asr": 4.0, "pa": 70.0, "asr_no_trigger": None}},
               "clean": {"zip": {"ca": 99.0, "asr": None, "pa": None, "asr_no_trigger": None}}}
    assert average_scores(results, ["badnet", "wanet", "clean"], ["zip"]) == {
        "zip": {"ca": 85.0, "asr": 3.0, "pa": 70.0, "asr_no_trigger": None}}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None])
def test_a_figure_without_a_value_is_stored_as_none(value: float | None) -> None:
    """The report's JSON holds null, never NaN or Infinity (not JSON), and the table shows a dash."""
    assert stored_score(value) is None


def test_rows_follow_the_runs_attack_order_with_average_last() -> None:
    report = _report()
    report["config"]["attacks"] = ["wanet", "badnet", "clean"]
    _, body = _table(markdown_table(report).splitlines(), "Attack")
    assert [row[0] for row in body] == ["WaNet", "BadNet", "None", "Average"]


def test_the_asr_without_trigger_table_leaves_out_rows_without_that_figure() -> None:
    lines = markdown_table(_report()).splitlines()
    start = lines.index(next(line for line in lines if line.startswith("ASR without a trigger")))
    _, floor = _table(lines[start:], "Attack")
    assert [row[0] for row in floor] == ["WaNet", "BadNet", "Average"]  # the clean classifier has no target


def test_the_header_says_how_the_victims_were_trained_in_a_fixed_order_and_the_prior_in_short() -> None:
    report = _report()
    report["config"].update(classifier_options={"lr": 0.1, "crop_pad": 0}, start=1.0)
    text = markdown_table(report)
    assert "late start" not in text  # every step ran
    assert "trained with crop_pad = 0, lr = 0.1" in text
    assert "prior sha256 `" + "ab" * 8 + "`" in text and "ab" * 9 not in text


def test_the_summary_signs_a_point_checks_differences() -> None:
    rows = [{"metric": m, "baseline": b, "zip": 90.0, "other": 80.0, "difference": 2.25, "interval": None,
             "verdict": "met", "met": True} for m, b in (("ca", "shrinkpad"), ("ca", "naive"), ("pa", "shrinkpad"),
                                                          ("pa", "naive"))]
    rows.append({"metric": "asr", "baseline": None, "zip": 3.0, "other": 5.0, "difference": None, "interval": None,
                 "verdict": "met", "met": True})
    line = target_summary({"r": {"config": {"pool": 2}, "target": {"checks": {"zip": rows}}}}).splitlines()[-1]
    assert line == "| r | 2 | +2.3 met | +2.3 met | +2.3 met | +2.3 met | 3.0 met | yes |"


def test_the_examples_grid_leaves_no_temporary_file(tmp_path: Path) -> None:
    triggered = np.zeros((3, 8, 8, 3), np.uint8)
    assert write_examples(tmp_path / "examples.png", {"badnet": triggered}, {"badnet": {}}, 2, 2)
    assert os.listdir(tmp_path) == ["examples.png"]


def test_whole_split_asr_is_scored_on_triggered_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A classifier that answers the target (1) exactly when BadNet's white corner patch is there: its whole-split ASR
    is 100 % (every non-target image, triggered) and its CA 50 % (it never answers 1 on clean images)."""

    def patch_detector(model: object, images: np.ndarray) -> np.ndarray:
        return (images[:, -3:, -3:].min(axis=(1, 2, 3)) == 255).astype(np.int64)

    monkeypatch.setattr(victims, "predict", patch_detector)
    test = _synthetic(24, 2)
    scores = victims.full_test_scores(object(), make_attack("badnet", 32), test, tmp_path / "meta.json")  # type: ignore[arg-type]
    assert scores["ca"] == 50.0 and scores["asr"] == 100.0 and scores["triggered_images"] == 12
