"""The victim classifier: a tiny ResNet learns a trivially separable task and survives a save/load round trip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation.attacks import BadNet, PhysicalBA
from pipeline.evaluation.classifier import (
    ClassifierConfig,
    build_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _black_white(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n, dtype=np.int64) % 2
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    images[labels == 1] = 255
    noise = np.random.default_rng(0).integers(0, 30, size=images.shape)
    images = np.where(labels[:, None, None, None] == 1, images - noise, images + noise).astype(np.uint8)
    return images, labels


def test_resnet_shapes_and_depth() -> None:
    model = build_classifier(ClassifierConfig(num_classes=7, depth=8))
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)
    n_blocks = sum(1 for m in build_classifier(ClassifierConfig()).modules() if type(m).__name__ == "BasicBlock")
    assert n_blocks == 9  # ResNet-20: 3 stages x 3 blocks
    with pytest.raises(ValueError, match="6n"):
        ClassifierConfig(depth=21)


def test_train_learns_black_vs_white_and_round_trips(tmp_path: Path) -> None:
    images, labels = _black_white()
    model = train_classifier(
        images,
        labels,
        num_classes=2,
        epochs=1,
        batch_size=16,
        lr=0.05,
        depth=8,
        progress=False,
        num_threads=1,
    )
    preds = predict(model, images)
    assert preds.dtype == np.int64 and preds.shape == labels.shape
    assert np.mean(preds == labels) == 1.0
    path = tmp_path / "clf.pt"
    save_classifier(model, path)
    loaded = load_classifier(path)
    assert np.array_equal(predict(loaded, images, batch_size=7), preds)
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["depth"] == 8



def test_saving_leaves_another_processs_half_written_save_alone(tmp_path: Path) -> None:
    """Two evaluations sharing a cache can save the same victim at once; the temporary file was <name>.pt.tmp for both,
    so one took the other's half-written file and renamed it away, and the other's save then failed
    (FileNotFoundError) or left a damaged file."""
    path = tmp_path / "clf.pt"
    others = [path.with_name(path.name + ".tmp"), path.with_name(f"{path.name}.{os.getpid() + 1}.tmp")]  # other processes'
    for other in others:
        other.write_bytes(b"half of another process's save")
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(depth=8))
    save_classifier(model, path)
    assert all(other.read_bytes() == b"half of another process's save" for other in others)
    images, _ = _black_white(8)
    assert np.array_equal(predict(load_classifier(path), images), predict(model, images))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clf.pt", *(other.name for other in others)])

def test_train_is_seeded_and_accepts_extra_transform() -> None:
    images, labels = _black_white(16)
    attack = PhysicalBA()
    threads = torch.get_num_threads()
    kwargs = dict(num_classes=2, epochs=1, batch_size=8, depth=8, progress=False, hflip=False, num_threads=1)
    a = train_classifier(images, labels, extra_transform=attack.train_transform, seed=1, **kwargs)
    b = train_classifier(images, labels, extra_transform=attack.train_transform, seed=1, **kwargs)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert torch.get_num_threads() == threads  # the thread count is restored after training


def test_crop_pad_zero_trains_on_uncropped_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """crop_pad=0 (PhysicalBA's classifiers) leaves every pixel in place; the default 4 px crop shifts some."""
    import pipeline.evaluation.classifier as classifier_module

    images, labels = _black_white(32)
    images[:] = 100
    images[:, -3:, -3:] = 255  # a corner patch on every image: where it lands shows the crop
    seen: list[np.ndarray] = []
    real_to_tensor = classifier_module._to_tensor

    def spy(batch: np.ndarray) -> torch.Tensor:
        seen.append(batch.copy())
        return real_to_tensor(batch)

    monkeypatch.setattr(classifier_module, "_to_tensor", spy)
    kwargs = dict(num_classes=2, epochs=1, batch_size=8, depth=8, progress=False, num_threads=1, hflip=False)
    train_classifier(images, labels, crop_pad=0, **kwargs)
    assert all(np.array_equal(batch, images[: len(batch)]) for batch in seen)
    seen.clear()
    train_classifier(images, labels, **kwargs)
    moved = [not (batch[i, -3:, -3:] == 255).all() for batch in seen for i in range(len(batch))]
    assert any(moved)
    with pytest.raises(ValueError, match="crop_pad"):
        train_classifier(images, labels, crop_pad=-1, **kwargs)


def test_train_rejects_bad_labels() -> None:
    images, labels = _black_white(8)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(images, labels + 5, num_classes=2, epochs=1, progress=False, num_threads=1)


def test_restamp_puts_the_patch_back_on_poisoned_samples_after_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crop shift must not move or cut the BadNet patch of a poisoned sample: the model sees it in the corner."""
    import pipeline.evaluation.classifier as classifier_module

    images, labels = _black_white(32)
    images[:] = 100  # uniform grey: a patch that survived augmentation would show up anywhere
    mask = np.zeros(len(images), dtype=bool)
    mask[[3, 10, 17]] = True
    seen: list[np.ndarray] = []
    real_to_tensor = classifier_module._to_tensor

    def spy(batch: np.ndarray) -> torch.Tensor:
        seen.append(batch.copy())
        return real_to_tensor(batch)

    monkeypatch.setattr(classifier_module, "_to_tensor", spy)
    kwargs = dict(num_classes=2, epochs=2, batch_size=8, depth=8, progress=False, num_threads=1)
    train_classifier(images, labels, restamp=(mask, BadNet().apply), **kwargs)
    batches = np.concatenate(seen)
    corner_white = (batches[:, -3:, -3:, :] == 255).all(axis=(1, 2, 3))
    assert corner_white.sum() == 2 * mask.sum()  # each poisoned sample, each epoch, patch exactly in the corner
    assert (batches == 255).sum() == corner_white.sum() * 27  # and nowhere else
    with pytest.raises(ValueError, match="restamp mask"):
        train_classifier(images, labels, restamp=(mask[:5], BadNet().apply), **kwargs)
