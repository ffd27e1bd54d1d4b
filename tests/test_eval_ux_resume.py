"""A victim classifier's training (11-30 min on 2 cores) survives an interruption: it resumes after its last finished
epoch and ends with the same weights as an uninterrupted run; its progress shows an ETA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation import classifier, victims
from pipeline.evaluation.classifier import train_classifier
from pipeline.evaluation.datasets import LabelledImages

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    base = np.where(labels == 1, 190, 60)[:, None, None, None]
    return np.clip(base + rng.integers(-40, 41, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8), labels


KW = dict(num_classes=2, epochs=3, batch_size=16, depth=8, progress=False)


class Stop(Exception):
    """Stands for Ctrl-C or a kill in the middle of an epoch."""


class _stopping_after:  # noqa: N801 - used like a function
    """An extra transform (the identity) that counts its batches and stops training at its `batches`+1-th."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.seen += 1
        if self.seen > self.batches:
            raise Stop
        return images


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_an_interrupted_training_resumes_after_its_last_epoch_with_the_same_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a classifier killed in its last epoch was trained again from epoch 1."""
    images, labels = _data()
    reference = train_classifier(images, labels, extra_transform=_stopping_after(10**6), **KW)
    checkpoint = tmp_path / "victim.partial.pt"
    with pytest.raises(Stop):  # 2 batches per epoch: stopped in the middle of the second epoch
        train_classifier(images, labels, extra_transform=_stopping_after(3), checkpoint=checkpoint, **KW)
    assert checkpoint.is_file() and not list(tmp_path.glob("*.tmp"))  # written whole, by temp file and rename
    counted = _stopping_after(10**6)
    resumed = train_classifier(images, labels, extra_transform=counted, checkpoint=checkpoint,
                               **{**KW, "progress": True})
    assert f"resuming classifier training from {checkpoint} after epoch 1/3" in capsys.readouterr().err
    assert _same_weights(resumed, reference)
    assert counted.seen == 4  # epochs 2 and 3 only


def test_a_checkpoint_of_other_training_or_a_damaged_one_is_not_resumed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = _data()
    reference = train_classifier(images, labels, extra_transform=_stopping_after(10**6), **KW)
    checkpoint = tmp_path / "victim.partial.pt"
    with pytest.raises(Stop):
        train_classifier(images, labels, extra_transform=_stopping_after(3), checkpoint=checkpoint,
                         checkpoint_key="data A", **KW)
    other = train_classifier(images, labels, extra_transform=_stopping_after(10**6), checkpoint=checkpoint,
                             checkpoint_key="data B", **KW)
    assert "is of other training" in capsys.readouterr().err and _same_weights(other, reference)

    checkpoint.write_bytes(checkpoint.read_bytes()[:500])  # cut short
    again = train_classifier(images, labels, extra_transform=_stopping_after(10**6), checkpoint=checkpoint,
                             checkpoint_key="data B", **KW)
    assert f"warning: training checkpoint {checkpoint} is damaged" in capsys.readouterr().err
    assert _same_weights(again, reference)


def test_training_progress_shows_an_eta(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: one line per epoch (1.5-3 min each on CIFAR-10) and no ETA."""
    images, labels = _data()
    train_classifier(images, labels, **{**KW, "progress": True})
    err = capsys.readouterr().err
    assert "epoch 1/3:" in err and "ETA" in err and "training classifier" in err


def test_the_evaluation_keeps_an_epoch_checkpoint_while_a_victim_trains_and_removes_it_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []
    write = classifier._write_training_state
    monkeypatch.setattr(classifier, "_write_training_state", lambda path, state: (written.append(path),
                                                                                   write(path, state)))
    images, labels = _data(48, 1)
    train = LabelledImages(images, labels, 2)
    cache = tmp_path / "cache"
    _, info = victims.get_classifier("synthetic", "badnet", cache, 2, 1, train=train, progress=False,
                                     train_options={"depth": 8, "batch_size": 16})
    path = Path(info["path"])
    assert written == [victims.training_checkpoint_path(path)] == [path.with_name(f"{path.stem}.partial.pt")]
    assert path.is_file() and not written[0].exists()
