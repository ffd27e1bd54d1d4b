"""End-to-end defense evaluation on a tiny synthetic data set: every output written, caches reused on a rerun."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoint import save_bundle
from pipeline.evaluation import runner, victims
from pipeline.evaluation.attacks import PhysicalBA, make_attack
from pipeline.evaluation.classifier import load_classifier, predict
from pipeline.evaluation.datasets import LabelledImages, load_splits, stratified_subset
from pipeline.evaluation.predictions import decode_predictions
from pipeline.evaluation.preflight import EvaluationError, preflight
from pipeline.model import UNetConfig, build_unet
from pipeline.purifier import Purifier

ATTACKS = ["badnet", "blended", "physicalba", "wanet"]
DEFENSES = ["none", "shrinkpad", "naive", "zip", "zip-authors"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _synthetic(n: int, seed: int) -> LabelledImages:
    """Two classes of 32x32 images: dark and bright, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    base = np.where(labels == 1, 190, 60)[:, None, None, None]
    images = np.clip(base + rng.integers(-40, 41, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return LabelledImages(images, labels, 2)


def fake_loader(name: str, split: str) -> LabelledImages:
    assert name == "synthetic"
    return _synthetic(48, 1) if split == "train" else _synthetic(24, 2)


def _tiny_prior(path: Path) -> Path:
    torch.manual_seed(0)
    config = UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="",
                        num_head_channels=32, learn_sigma=False)
    save_bundle(path, build_unet(config))
    return path


def test_evaluation_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = runner.EvalConfig(
        dataset="synthetic", attacks=[*ATTACKS, "none"], defenses=DEFENSES, checkpoint=str(_tiny_prior(tmp_path / "prior.pt")),
        steps=2, pool=4, subset=10, seed=0, epochs=1, threads=1, cache_dir=tmp_path / "cache",
        out_dir=tmp_path / "results", examples=3, train_options={"depth": 8, "batch_size": 16},
    )
    report = runner.evaluate_dataset(config, loader=fake_loader)

    out = tmp_path / "results"
    saved = json.loads((out / "synthetic.json").read_text())
    assert saved["results"] == report["results"]
    assert saved["config"]["subset_actual"] == 10 and saved["config"]["steps"] == 2 and saved["config"]["pool"] == 4
    assert len(saved["config"]["checkpoint_sha256"]) == 64
    for attack in ATTACKS:
        assert saved["classifiers"][attack]["epochs"] == 1
        assert 0 <= saved["classifiers"][attack]["no_defense_ca"] <= 100
        for defense in DEFENSES:
            cell = saved["results"][attack][defense]
            assert all(0.0 <= cell[m] <= 100.0 for m in ("ca", "asr", "pa")), (attack, defense, cell)
    assert set(saved["average"]) == set(DEFENSES)
    clean_row = saved["results"]["clean"]  # the clean classifier: CA only, not part of the average
    assert all(clean_row[d]["asr"] is None and 0 <= clean_row[d]["ca"] <= 100 for d in DEFENSES)
    assert saved["average"]["none"]["ca"] == pytest.approx(np.mean([saved["results"][a]["none"]["ca"] for a in ATTACKS]),
                                                           abs=0.01)
    assert saved["fidelity"]["none"]["psnr"] is None and saved["fidelity"]["zip"]["psnr"] > 0

    # ASR without a trigger, for no defense: the classifier's target rate on the untouched clean subset.
    test = fake_loader("synthetic", "test")
    subset = stratified_subset(test.labels, 10, 0)
    for attack in ATTACKS:
        model = load_classifier(saved["classifiers"][attack]["path"])
        target = make_attack(attack, 32).target
        keep = test.labels[subset] != target
        expected = 100.0 * np.mean(predict(model, test.images[subset][keep]) == target)
        assert saved["results"][attack]["none"]["asr_no_trigger"] == pytest.approx(expected, abs=0.01)
        assert all(0.0 <= saved["results"][attack][d]["asr_no_trigger"] <= 100.0 for d in DEFENSES)
    assert all(clean_row[d]["asr_no_trigger"] is None for d in DEFENSES)

    # The classifier targets are judged on the whole test split (24 images here), cached beside the weights.
    for attack in [*ATTACKS, "clean"]:
        info = saved["classifiers"][attack]
        model = load_classifier(info["path"])
        assert info["full_test_images"] == 24
        assert info["full_test_ca"] == pytest.approx(100.0 * np.mean(predict(model, test.images) == test.labels), abs=0.01)
        if attack == "clean":
            assert info["full_test_asr"] is None
        else:
            target = make_attack(attack, 32).target
            keep = test.labels != target
            triggered = make_attack(attack, 32).apply(test.images[keep])
            assert info["full_test_asr"] == pytest.approx(100.0 * np.mean(predict(model, triggered) == target), abs=0.01)
        meta = json.loads(Path(info["path"]).with_suffix(".json").read_text())
        assert meta["full_test"]["ca"] == info["full_test_ca"] and meta["epochs"] == 1
    assert "CA, whole test split" in (out / "synthetic.md").read_text()

    table = (out / "synthetic.md").read_text()
    assert "| Attack | No defense CA | No defense ASR | No defense PA |" in table
    assert "ASR without a trigger" in table
    assert "| Average |" in table and "| WaNet |" in table and "| None |" in table and "ZIP (k=4) CA" in table

    # The target check rescored the stored per-image predictions: its point estimates are the Average row.
    labels, predictions = decode_predictions(saved["predictions"])
    assert np.array_equal(labels, test.labels[subset])
    assert set(predictions) == {*ATTACKS, "clean"} and predictions["clean"]["target"] is None
    badnet = predictions["badnet"]
    assert 100.0 * np.mean(badnet["clean"]["zip"] == labels) == pytest.approx(saved["results"]["badnet"]["zip"]["ca"],
                                                                           abs=0.01)
    assert 100.0 * np.mean(badnet["triggered"]["naive"] == 1) == pytest.approx(
        saved["results"]["badnet"]["naive"]["asr"], abs=0.01)
    checks = saved["target"]["checks"]
    assert set(checks) == {"zip", "zip-authors"} and saved["target"]["images"] == 10
    for row in checks["zip"]:
        if row["baseline"] is None:
            assert row["zip"] == saved["average"]["zip"]["asr"] and row["met"] == (row["zip"] <= 5.0)
        else:
            assert row["zip"] == saved["average"]["zip"][row["metric"]]
            assert row["other"] == saved["average"][row["baseline"]][row["metric"]]
            assert row["interval"][0] <= row["interval"][1] and row["met"] == (row["difference"] > 0)
    assert "Against the target" in table and "| ZIP (k=4) | average PA above ShrinkPad |" in table

    from PIL import Image

    with Image.open(out / "synthetic-examples.png") as png:
        assert png.width > 3 * 96 and png.height > 4 * 3 * 96  # 4 attacks x (poisoned, naive, zip, zip-authors)

    classifier_files = sorted((tmp_path / "cache" / "classifiers").glob("*.pt"))
    classifier_files += sorted((tmp_path / "cache" / "classifiers").glob("*.json"))  # full-test scores not redone
    suffix = {"badnet": "-restamp", "physicalba": "-nocrop"}
    assert [p.name for p in classifier_files if p.suffix == ".pt"] == sorted(
        f"synthetic-{a}-e1{suffix.get(a, '')}-batch_size16-depth8.pt" for a in [*ATTACKS, "clean"]
    )
    physicalba_info = json.loads(next((tmp_path / "cache" / "classifiers").glob("*physicalba*.json")).read_text())
    assert physicalba_info["train_options"]["crop_pad"] == 0
    cached = sorted((tmp_path / "cache" / "purified").rglob("*.npz"))
    # per cached defense (shrinkpad, naive, zip, zip-authors): clean + 3 triggered sets (PhysicalBA reuses BadNet's)
    assert len(cached) == 4 * 4
    mtimes = {p: p.stat().st_mtime_ns for p in classifier_files + cached}

    # Second run: nothing may be retrained or re-purified.
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache not used")

    monkeypatch.setattr(victims, "train_classifier", forbidden)
    monkeypatch.setattr(Purifier, "from_checkpoint", forbidden)
    again = runner.evaluate_dataset(config, loader=fake_loader)
    assert again["results"] == report["results"] and again["fidelity"] == report["fidelity"]
    assert not any(info["trained_now"] for info in again["classifiers"].values())
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_without_flips_cancels_physicalba_flip() -> None:
    """GTSRB's PhysicalBA classifier trains on physical transforms without the horizontal flip."""
    identity_but_flip = PhysicalBA(brightness=0.0, contrast=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    images = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    flipped = identity_but_flip.train_transform(images, np.random.default_rng(1))
    mirrored = [np.array_equal(f, im[:, ::-1]) and not np.array_equal(f, im) for f, im in zip(flipped, images, strict=True)]
    assert 5 < sum(mirrored) < 35
    rng = np.random.default_rng(1)
    out = victims.without_flips(identity_but_flip.train_transform)(images, rng)
    np.testing.assert_array_equal(out, images)
    reference = np.random.default_rng(1)
    identity_but_flip.train_transform(images, reference)
    assert rng.random() == reference.random()  # the caller's generator advances exactly as without the wrapper


def test_restamped_and_uncropped_classifiers_have_their_own_cache_name(tmp_path: Path) -> None:
    """A classifier cached before restamping (BadNet) or crop-free training (PhysicalBA) existed is not reused."""
    from pipeline.evaluation.victims import classifier_path

    assert classifier_path(tmp_path, "cifar10", "badnet", 10).name == "cifar10-badnet-e10-restamp.pt"
    assert classifier_path(tmp_path, "cifar10", "physicalba", 10).name == "cifar10-physicalba-e10-nocrop.pt"
    assert classifier_path(tmp_path, "cifar10", "blended", 10).name == "cifar10-blended-e10.pt"
    assert classifier_path(tmp_path, "gtsrb", None, 6).name == "gtsrb-clean-e6.pt"


def test_attack_options_train_the_changed_attack_under_its_own_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PhysicalBA victim trained with another affine resampling is cached beside the evaluation's, never instead of
    it, and its transform really uses the option."""
    from pipeline.evaluation.classifier import ClassifierConfig, build_classifier

    warped: list[np.ndarray] = []

    def untrained(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, **kwargs: object) -> object:
        transform = kwargs["extra_transform"]
        warped.append(transform(images[:8], np.random.default_rng(0)))  # type: ignore[operator]
        return build_classifier(ClassifierConfig(num_classes=num_classes, depth=8)).eval()

    monkeypatch.setattr(victims, "train_classifier", untrained)
    train = fake_loader("synthetic", "train")
    _, default = victims.get_classifier("synthetic", "physicalba", tmp_path, 1, train=train)
    _, nearest = victims.get_classifier("synthetic", "physicalba", tmp_path, 1, train=train,
                                        attack_options={"interpolation": "nearest"})
    assert Path(default["path"]).name == "synthetic-physicalba-e1-nocrop.pt"
    assert Path(nearest["path"]).name == "synthetic-physicalba-e1-nocrop-attack-interpolationnearest.pt"
    assert nearest["attack_options"] == {"interpolation": "nearest"} and default["attack_options"] == {}
    assert not np.array_equal(warped[0], warped[1])  # same draws, other resampling
    with pytest.raises(ValueError, match="clean classifier"):
        victims.get_classifier("synthetic", None, tmp_path, 1, train=train, attack_options={"interpolation": "nearest"})


def _untrained_victims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Victims built untrained instead of trained (seconds, not minutes); returns the list each training appends its
    number of images to."""
    from pipeline.evaluation.classifier import ClassifierConfig, build_classifier

    trained: list[int] = []

    def untrained(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, **kwargs: object) -> object:
        trained.append(len(images))
        return build_classifier(ClassifierConfig(num_classes=num_classes, depth=8)).eval()

    monkeypatch.setattr(victims, "train_classifier", untrained)
    return trained


def test_a_cached_classifier_from_other_data_or_attack_parameters_is_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache name holds the data set, attack and options given, not the training images or the attack's defaults:
    a victim trained on another copy of the data set, or before an attack default changed, is retrained, not served.
    A meta file from before this record is served as it is (the published reports' classifiers)."""
    trained = _untrained_victims(monkeypatch)
    train = fake_loader("synthetic", "train")
    _, first = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    _, again = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    assert trained == [len(train.labels)] and again["trained_now"] is False
    assert again["attack_params"]["class"] == "BadNet" and again["attack_params"]["patch_size"] == 3

    other_copy = LabelledImages(255 - train.images, train.labels, train.num_classes)
    _, retrained = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=other_copy)
    assert len(trained) == 2 and retrained["trained_now"] is True
    assert retrained["train_sha256"] != first["train_sha256"]

    monkeypatch.setattr(victims, "make_attack", lambda name, size: replace(make_attack(name, size), patch_size=4))
    victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=other_copy)
    assert len(trained) == 3

    # a classifier saved by a version before these were kept, in its weights' file and in its record: served
    from pipeline.evaluation.classifier import load_classifier, save_classifier

    save_classifier(load_classifier(first["path"]), first["path"])
    meta = Path(first["path"]).with_suffix(".json")
    old_record = {k: v for k, v in json.loads(meta.read_text()).items() if k not in ("attack_params", "train_sha256")}
    meta.write_text(json.dumps(old_record))
    _, served = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    assert len(trained) == 3 and served["trained_now"] is False


def test_a_lost_classifier_record_is_rebuilt_from_its_weights_file_and_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged .json beside a cached classifier was read as empty, the classifier served, and the record written again
    with its whole-split scores only: what it was trained from was gone, so another copy of the data set was never
    noticed again. The weights' file now holds it too."""
    trained = _untrained_victims(monkeypatch)
    train = fake_loader("synthetic", "train")
    _, first = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    meta = Path(first["path"]).with_suffix(".json")
    meta.write_text("{damaged")
    _, served = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    assert len(trained) == 1 and served["trained_now"] is False
    assert json.loads(meta.read_text())["train_sha256"] == first["train_sha256"]  # written back
    meta.write_text("{damaged")
    other_copy = LabelledImages(255 - train.images, train.labels, train.num_classes)
    _, retrained = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=other_copy)
    assert len(trained) == 2 and retrained["trained_now"] is True


def test_a_record_left_beside_other_weights_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after a retrained victim's weights were saved but before its record was: the earlier victim's record
    (another copy of the data set, its whole-split scores) stayed beside the new weights, so a run on the earlier data
    was served the other data's weights as its own, and a run on the other data retrained them."""
    trained = _untrained_victims(monkeypatch)
    train = fake_loader("synthetic", "train")
    test, attack = _synthetic(24, 2), make_attack("badnet", 32)
    _, first = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    meta = Path(first["path"]).with_suffix(".json")
    victims.full_test_scores(load_classifier(first["path"]), attack, test, meta)
    first_record = meta.read_text()

    other_copy = LabelledImages(255 - train.images, train.labels, train.num_classes)
    other_model, other = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=other_copy)
    meta.write_text(first_record)  # as the stop left it: the other data's weights beside the first victim's record
    assert len(trained) == 2

    model, served = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=other_copy)
    assert served["trained_now"] is False and len(trained) == 2  # its own weights, their record rebuilt
    assert json.loads(meta.read_text())["train_sha256"] == other["train_sha256"]
    assert "full_test" not in json.loads(meta.read_text())  # the first weights' scores are not kept
    scores = victims.full_test_scores(model, attack, test, meta)  # scored afresh: the first weights' were dropped
    assert scores["ca"] == pytest.approx(100.0 * np.mean(predict(other_model, test.images) == test.labels), abs=0.01)

    meta.write_text(first_record)
    _, served = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train)
    assert served["trained_now"] is True and len(trained) == 3  # not the other data's weights


def test_crop_pad_option_retrains_the_victims_under_their_own_name_except_physicalba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jobs/evaluate.py --crop-pad 0 (flips only) reaches every classifier but PhysicalBA's, whose recipe fixes no
    crop; the table says how the victims were trained."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).parents[1] / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    configs: list[runner.EvalConfig] = []
    monkeypatch.setattr(job, "evaluate_dataset", lambda config, **_: configs.append(config))
    out = ["--out", str(tmp_path / "out")]  # not a results/ folder wherever the tests run
    job.main(["--datasets", "cifar10", "--crop-pad", "0", *out])
    job.main(["--datasets", "cifar10", *out])
    assert configs[0].train_options == {"crop_pad": 0} and configs[1].train_options == {}  # default: the cached names
    with pytest.raises(SystemExit):
        job.parse_args(["--crop-pad", "-1"])

    from pipeline.evaluation.classifier import ClassifierConfig, build_classifier

    received: list[object] = []

    def untrained(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, **kwargs: object) -> object:
        received.append(kwargs["crop_pad"])
        return build_classifier(ClassifierConfig(num_classes=num_classes, depth=8)).eval()

    monkeypatch.setattr(victims, "train_classifier", untrained)
    options = {"crop_pad": 0, "depth": 8}
    train = fake_loader("synthetic", "train")
    _, badnet = victims.get_classifier("synthetic", "badnet", tmp_path, 1, train=train, train_options=options)
    _, physical = victims.get_classifier("synthetic", "physicalba", tmp_path, 1, train=train, train_options=options)
    assert Path(badnet["path"]).name == "synthetic-badnet-e1-restamp-crop_pad0-depth8.pt"
    assert Path(physical["path"]).name == "synthetic-physicalba-e1-nocrop-depth8.pt"
    assert received == [0, 0]

    config = runner.EvalConfig(
        dataset="synthetic", attacks=["blended"], defenses=["none", "shrinkpad"], checkpoint="unused", subset=4,
        epochs=1, threads=1, cache_dir=tmp_path, out_dir=tmp_path / "results", examples=1, train_options=options,
    )
    runner.evaluate_dataset(config, loader=fake_loader)
    assert "trained with crop_pad = 0, depth = 8." in (tmp_path / "results" / "synthetic.md").read_text()


def test_imagenette_shaped_run_single_split_and_images_larger_than_the_prior(tmp_path: Path) -> None:
    """Imagenette's path on a CPU: one shared split divided 3:1, images (here 64 px) larger than the 32 px prior."""
    requested: list[str] = []

    def single_split_loader(name: str, split: str) -> LabelledImages:
        requested.append(f"{name}/{split}")
        rng = np.random.default_rng(3)
        labels = np.arange(64, dtype=np.int64) % 2
        base = np.where(labels == 1, 190, 60)[:, None, None, None]
        images = np.clip(base + rng.integers(-40, 41, size=(64, 64, 64, 3)), 0, 255).astype(np.uint8)
        return LabelledImages(images, labels, 2)

    train, test = load_splits("imagenette", single_split_loader)
    assert requested == ["imagenette/val"] and (len(train.labels), len(test.labels)) == (48, 16)
    assert np.bincount(test.labels).tolist() == [8, 8]
    train_keys = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in train_keys for im in test.images)  # no test image was trained on

    config = runner.EvalConfig(
        dataset="imagenette", attacks=["badnet", "wanet"], defenses=["none", "shrinkpad", "naive", "zip"],
        checkpoint=str(_tiny_prior(tmp_path / "prior.pt")), steps=2, pool=4, subset=8, seed=0, epochs=1, threads=1,
        cache_dir=tmp_path / "cache", out_dir=tmp_path / "results", examples=2,
        train_options={"depth": 8, "batch_size": 16},
    )
    report = runner.evaluate_dataset(config, loader=single_split_loader)
    saved = json.loads((tmp_path / "results" / "imagenette.json").read_text())
    assert saved["results"] == report["results"] and saved["config"]["image_size"] == 64
    for attack in ("badnet", "wanet"):
        assert all(0.0 <= saved["results"][attack]["zip"][m] <= 100.0 for m in ("ca", "asr", "pa"))
    assert saved["fidelity"]["zip"]["psnr"] > 0
    (zip_clean,) = (tmp_path / "cache" / "purified").glob("imagenette-n8-seed0/zip-*/clean-*.npz")
    with np.load(zip_clean) as cached:
        assert cached["images"].shape == (8, 64, 64, 3)  # purified at the prior's 32 px, returned at 64 px


def test_whole_split_scores_are_cached_per_test_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scored once per classifier and test split; another copy of the test split is scored afresh."""
    from pipeline.evaluation.classifier import ClassifierConfig, build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=2, depth=8)).eval()
    meta = tmp_path / "clf.json"
    meta.write_text(json.dumps({"epochs": 3}))
    test, attack = _synthetic(24, 2), make_attack("badnet", 32)
    first = victims.full_test_scores(model, attack, test, meta)
    preds = predict(model, test.images)
    assert first["ca"] == pytest.approx(100.0 * np.mean(preds == test.labels), abs=0.01)
    assert first["triggered_images"] == int(np.sum(test.labels != attack.target)) and first["images"] == 24
    saved = json.loads(meta.read_text())
    assert saved["epochs"] == 3 and saved["full_test"] == first  # the training record is kept

    monkeypatch.setattr(victims, "predict", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
    assert victims.full_test_scores(model, attack, test, meta) == first
    other = _synthetic(24, 3)
    with pytest.raises(AssertionError, match="not cached"):
        victims.full_test_scores(model, attack, other, meta)


def test_whole_split_scores_of_the_same_images_labelled_otherwise_are_not_served(tmp_path: Path) -> None:
    """The whole-split scores were keyed by the test images alone: a test split whose labels changed (a reader's fix, a
    loader of the API) was served the CA and ASR scored against the old labels."""
    from pipeline.evaluation.classifier import ClassifierConfig, build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=2, depth=8)).eval()
    meta = tmp_path / "clf.json"
    meta.write_text("{}")
    test, attack = _synthetic(24, 2), make_attack("badnet", 32)
    victims.full_test_scores(model, attack, test, meta)
    relabelled = LabelledImages(test.images, 1 - test.labels, test.num_classes)
    scores = victims.full_test_scores(model, attack, relabelled, meta)
    preds = predict(model, relabelled.images)
    assert scores["ca"] == pytest.approx(100.0 * np.mean(preds == relabelled.labels), abs=0.01)
    assert scores["triggered_images"] == int(np.sum(relabelled.labels != attack.target))


def test_sampler_seed_and_sampler_draw_other_zip_samples_under_their_own_cache_keys(tmp_path: Path) -> None:
    """--sampler-seed reruns ZIP with other noise (to measure the sampler's chance), --sampler ddpm with the paper's
    Algorithm 1; the baselines stay shared."""
    common = dict(
        dataset="synthetic", attacks=["badnet"], defenses=["none", "naive", "zip"],
        checkpoint=str(_tiny_prior(tmp_path / "prior.pt")), steps=2, pool=4, subset=10, seed=0, epochs=1, threads=1,
        cache_dir=tmp_path / "cache", examples=1, train_options={"depth": 8, "batch_size": 16},
    )
    first = runner.evaluate_dataset(runner.EvalConfig(**common, out_dir=tmp_path / "seed0"), loader=fake_loader)
    second = runner.evaluate_dataset(runner.EvalConfig(**common, sampler_seed=1, out_dir=tmp_path / "seed1"),
                                     loader=fake_loader)

    assert first["config"]["sampler_seed"] == 0 and second["config"]["sampler_seed"] == 1
    assert second["config"]["defense_settings"]["zip"]["zip"]["seed"] == 1
    assert "sampler seed 1" in (tmp_path / "seed1" / "synthetic.md").read_text()
    purified = tmp_path / "cache" / "purified" / "synthetic-n10-seed0"
    zip_dirs = sorted(purified.glob("zip-*"))
    assert len(zip_dirs) == 2 and len(list(purified.glob("naive-*"))) == 1  # the naive sets are not redone
    seeds = {json.loads((d / "settings.json").read_text())["zip"]["seed"]: d for d in zip_dirs}
    assert set(seeds) == {0, 1}
    with np.load(next(seeds[0].glob("clean-*.npz"))) as a, np.load(next(seeds[1].glob("clean-*.npz"))) as b:
        assert a["images"].shape == b["images"].shape and not np.array_equal(a["images"], b["images"])
    assert second["fidelity"]["naive"] == first["fidelity"]["naive"]
    assert second["results"]["badnet"]["none"] == first["results"]["badnet"]["none"]

    third = runner.evaluate_dataset(runner.EvalConfig(**common, sampler="ddpm", out_dir=tmp_path / "ddpm"),
                                    loader=fake_loader)
    assert third["config"]["sampler"] == "ddpm" and third["config"]["defense_settings"]["zip"]["zip"]["sampler"] == "ddpm"
    assert "2 DDPM steps" in (tmp_path / "ddpm" / "synthetic.md").read_text()
    assert "2 DDIM steps" in (tmp_path / "seed0" / "synthetic.md").read_text()
    assert len(list(purified.glob("zip-*"))) == 3 and len(list(purified.glob("naive-*"))) == 1


def _small_config(tmp_path: Path, **overrides: object) -> runner.EvalConfig:
    """One attack, the cheap defenses, four test images: a run of a fraction of a second."""
    settings: dict = dict(
        dataset="synthetic", attacks=["badnet"], defenses=["none", "naive"], checkpoint="unused", steps=2, subset=4,
        epochs=1, threads=1, cache_dir=tmp_path / "cache", out_dir=tmp_path / "results", examples=1,
        train_options={"depth": 8, "batch_size": 16},
    )
    return runner.EvalConfig(**{**settings, **overrides})


def test_subset_smaller_than_the_class_count_is_refused_before_any_work(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A class-stratified subset of fewer images than classes would hold no image at all."""
    monkeypatch.setattr(victims, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(runner, "purified", lambda *a, **k: pytest.fail("purified"))
    with pytest.raises(EvaluationError, match="--subset 1 is too small for synthetic.*at least 2"):
        runner.evaluate_dataset(_small_config(tmp_path, subset=1), loader=fake_loader)
    with pytest.raises(EvaluationError, match="--subset 40 is too small for gtsrb.*at least 43"):
        preflight(_small_config(tmp_path, dataset="gtsrb", subset=40))  # the shared set: known without loading


def test_a_report_of_another_configuration_is_not_replaced_without_overwrite(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = runner.evaluate_dataset(_small_config(tmp_path), loader=fake_loader)
    report = tmp_path / "results" / "synthetic.json"
    assert first["config"]["steps"] == 2 and first["config"]["examples"] == 1
    again = runner.evaluate_dataset(_small_config(tmp_path, threads=2), loader=fake_loader)  # same settings: fine
    assert again["results"] == first["results"]

    monkeypatch.setattr(victims, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(EvaluationError, match=r"another configuration \(steps 2 there, 3 now\).*--overwrite"):
        runner.evaluate_dataset(_small_config(tmp_path, steps=3), loader=fake_loader)
    with pytest.raises(EvaluationError, match=r'attacks \["badnet"\] there, \["clean"\] now; pool 4 there, 2 now'):
        runner.evaluate_dataset(_small_config(tmp_path, attacks=["none"], pool=2), loader=fake_loader)
    assert json.loads(report.read_text())["config"]["steps"] == 2
    assert runner.evaluate_dataset(_small_config(tmp_path, steps=3, overwrite=True), loader=fake_loader)["config"]["steps"] == 3

    report.write_text("[1, 2]")
    with pytest.raises(EvaluationError, match="not a report of jobs/evaluate.py"):
        preflight(_small_config(tmp_path, steps=3))


def test_a_run_without_triggered_images_removes_the_earlier_examples_png(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    runner.evaluate_dataset(_small_config(tmp_path), loader=fake_loader)
    png = tmp_path / "results" / "synthetic-examples.png"
    assert png.exists() and "-examples.png" in capsys.readouterr().err
    runner.evaluate_dataset(_small_config(tmp_path, attacks=["none"], overwrite=True), loader=fake_loader)
    assert not png.exists()
    wrote = next(line for line in capsys.readouterr().err.splitlines() if ": wrote " in line)
    assert "synthetic.json, .md (" in wrote and "examples" not in wrote


def test_damaged_cache_files_are_named_and_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated classifier (.pt), its record (.json) and a truncated purified set (.npz) are derived: warned
    about by name and rebuilt as if missing."""
    runner.evaluate_dataset(_small_config(tmp_path), loader=fake_loader)
    (weights,) = (tmp_path / "cache" / "classifiers").glob("*.pt")
    purified_sets = sorted((tmp_path / "cache" / "purified").rglob("*.npz"))
    assert len(purified_sets) == 2  # naive: clean and triggered
    for path in (weights, *purified_sets):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()

    report = runner.evaluate_dataset(_small_config(tmp_path), loader=fake_loader)
    err = capsys.readouterr().err
    for path in (weights, *purified_sets):
        assert f"warning: cache file {path} is damaged" in err
    assert report["classifiers"]["badnet"]["trained_now"]
    load_classifier(weights)  # replaced by the retrained one
    test = fake_loader("synthetic", "test")
    with np.load(next(p for p in purified_sets if p.name.startswith("clean-"))) as data:
        from pipeline.evaluation.baselines import naive_transform

        expected = naive_transform(test.images[stratified_subset(test.labels, 4, 0)], 4)
        np.testing.assert_array_equal(data["images"], expected)

    record = weights.with_suffix(".json")
    record.write_text('{"epochs": ')
    again = runner.evaluate_dataset(_small_config(tmp_path), loader=fake_loader)
    assert f"warning: cache file {record} is damaged" in capsys.readouterr().err
    assert not again["classifiers"]["badnet"]["trained_now"] and again["results"] == report["results"]
    assert json.loads(record.read_text())["full_test"]["images"] == 24  # rescored and written back


def test_a_damaged_decoded_data_set_is_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.evaluation import datasets

    fresh = _synthetic(6, 0)
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path)
    monkeypatch.setitem(datasets._READERS, "cifar10", (lambda split: (fresh.images, fresh.labels), 10))
    cache = tmp_path / "cifar10-test.npz"
    cache.write_bytes(b"PK\x03\x04 cut short")
    loaded = datasets.load_dataset("cifar10", "test")
    assert f"warning: cache file {cache} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(loaded.images, fresh.images)
    with np.load(cache) as data:
        np.testing.assert_array_equal(data["labels"], fresh.labels)


def test_reports_from_before_the_sampler_options_still_render() -> None:
    """A report written before --sampler and --sampler-seed existed (one is published in docs/) has neither key."""
    from pipeline.evaluation.report import markdown_table

    report = json.loads((Path(__file__).parents[1] / "docs" / "cifar10-rerun-finetuned-prior.json").read_text())
    assert "sampler" not in report["config"] and "sampler_seed" not in report["config"]
    text = markdown_table(report)
    assert "ZIP 20 DDIM steps, pool k = 4; prior sha256 `a55074084239f6ac`" in text
    # A⁺A x's average CA is (27.0 + 26.6 + 24.6 + 26.4) / 4 = 26.15 exactly: 26.2, not the float's 26.1; ZIP's PA is
    # (193 + 173 + 195 + 142) / 1800 = 39.056 %: 39.1 (the JSON's 39.05 comes from rounding it to two decimals)
    assert "| Average | 82.4 | 95.6 | 3.8 | 80.5 | 48.1 | 39.7 | 26.2 | 0.3 | 26.9 | 42.8 | 8.6 | 39.1 |" in text
