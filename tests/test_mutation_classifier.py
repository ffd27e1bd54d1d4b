"""The victim classifier, as a mutation audit found it under-tested: eval mode, augmentation, the input scaling and
statistics, the epoch order, the optimiser and LR schedule a checkpoint records, resuming only the same training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.evaluation.classifier as classifier_module
from pipeline.evaluation.classifier import (
    ClassifierConfig,
    _augment,
    _to_tensor,
    build_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW = dict(num_classes=2, epochs=1, batch_size=8, depth=8, progress=False)


def _identifiable(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i is all 7·i (so a batch's pixels say which images it holds); labels alternate."""
    images = np.repeat((np.arange(n, dtype=np.uint8) * 7)[:, None, None, None], 32 * 32 * 3, axis=1)
    return images.reshape(n, 32, 32, 3), np.arange(n, dtype=np.int64) % 2


def _spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The uint8 batches training feeds the model, in order."""
    seen: list[np.ndarray] = []
    real = classifier_module._to_tensor
    monkeypatch.setattr(classifier_module, "_to_tensor", lambda batch: (seen.append(batch.copy()), real(batch))[1])
    return seen


def test_predict_uses_running_statistics_and_leaves_them_alone() -> None:
    """A model left in training mode must still predict with its BatchNorm running statistics (not the batch's),
    so a prediction does not depend on which images share its batch, and predicting must not update them."""
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=5, depth=8))
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    together = predict(model, images)
    alone = np.concatenate([predict(model.train(), images[i : i + 1]) for i in range(len(images))])
    np.testing.assert_array_equal(together, alone)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    np.testing.assert_array_equal(together, expected)  # the model sees images in [0, 1]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_training_returns_the_model_in_eval_mode() -> None:
    images, labels = _identifiable(8)
    model = train_classifier(images, labels, **KW)
    assert not any(m.training for m in model.modules())


def test_to_tensor_scales_uint8_to_unit_range_channels_first() -> None:
    images = np.zeros((1, 2, 3, 3), np.uint8)
    images[0, 1, 2] = (255, 51, 0)
    x = _to_tensor(images)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert x[0, :, 1, 2].tolist() == pytest.approx([1.0, 0.2, 0.0]) and float(x.sum()) == pytest.approx(1.2)


def test_random_crop_uses_every_offset_of_the_padding() -> None:
    """4 px padding: the crop's top-left corner moves by any of -4..4 px in each direction, both ends included."""
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 16, 16] = 255
    out = _augment(np.repeat(image, 4000, axis=0), np.random.default_rng(0), pad=4, flip=False)
    where = [np.argwhere(o[..., 0] == 255) for o in out]
    shifts = {(int(w[0][0]) - 16, int(w[0][1]) - 16) for w in where if len(w)}
    assert {dy for dy, _ in shifts} == set(range(-4, 5)) and {dx for _, dx in shifts} == set(range(-4, 5))


def test_flip_mirrors_left_and_right_only_and_leaves_the_input_alone() -> None:
    images = np.zeros((200, 32, 32, 3), np.uint8)
    images[:, :16, :16] = 255  # top-left quadrant
    original = images.copy()
    out = _augment(images, np.random.default_rng(0), pad=0, flip=True)
    np.testing.assert_array_equal(images, original)  # the caller's array is not written to
    flipped = (out[:, :16, 16:] == 255).all(axis=(1, 2, 3))
    kept = (out[:, :16, :16] == 255).all(axis=(1, 2, 3))
    assert 40 < flipped.sum() < 160 and (flipped ^ kept).all()  # each image either as it was or mirrored
    assert (out[:, 16:] == 0).all()  # never upside down


def test_no_flip_when_hflip_is_off_even_with_cropping(monkeypatch: pytest.MonkeyPatch) -> None:
    """GTSRB's setting: random crops, but a "keep left" sign never becomes a "keep right" one."""
    images, labels = _identifiable(16)
    images[:, :, :8] = 255  # a bright left strip, which a flip would move to the right edge
    seen = _spy_batches(monkeypatch)
    train_classifier(images, labels, hflip=False, **{**KW, "epochs": 2})
    batches = np.concatenate(seen)
    assert (batches[:, :, 28:] != 255).all()


def test_the_extra_transform_runs_before_the_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """extra_transform sees the un-augmented batch (a physical trigger is then cropped and flipped with the image)."""
    images, labels = _identifiable(16)
    images[:] = 100
    seen_by_transform: list[np.ndarray] = []

    def stamp(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen_by_transform.append(batch.copy())
        batch = batch.copy()
        batch[:, 10:13, 10:13] = 255
        return batch

    seen = _spy_batches(monkeypatch)
    train_classifier(images, labels, extra_transform=stamp, **KW)
    assert all((b == 100).all() for b in seen_by_transform)  # not yet cropped (a crop brings in black padding)
    batches = np.concatenate(seen)
    at_place = (batches[:, 10:13, 10:13] == 255).all(axis=(1, 2, 3))
    assert not at_place.all()  # the crop moved the stamp in some samples


def test_each_epoch_visits_every_image_once_in_a_fresh_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """33 images in batches of 8: 5 batches an epoch, the last one partial; labels follow their images."""
    images, labels = _identifiable(33)
    seen = _spy_batches(monkeypatch)
    labels_seen: list[np.ndarray] = []
    real_ce = classifier_module.F.cross_entropy
    monkeypatch.setattr(classifier_module.F, "cross_entropy",
                        lambda logits, y: (labels_seen.append(y.numpy().copy()), real_ce(logits, y))[1])
    train_classifier(images, labels, augment=False, **{**KW, "epochs": 2})
    drawn = [int(v) // 7 for b in seen for v in b[:, 0, 0, 0]]
    assert [len(b) for b in seen] == [8, 8, 8, 8, 1] * 2
    first, second = drawn[:33], drawn[33:]
    assert sorted(first) == list(range(33)) and sorted(second) == list(range(33))
    assert first != list(range(33)) and first != second
    np.testing.assert_array_equal(np.concatenate(labels_seen), labels[drawn])


def test_the_input_statistics_are_the_training_images_per_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 60, (16, 32, 32)), rng.integers(100, 256, (16, 32, 32)),
                       np.full((16, 32, 32), 200)], axis=-1).astype(np.uint8)
    model = train_classifier(images, np.arange(16) % 2, **KW)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(model.mean.flatten().numpy(), pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.std.flatten().numpy(), np.maximum(pixels.std(0), 1e-3), rtol=1e-4)


def test_cifar_resnet_downsamples_32_px_to_8_px_in_stages_2_and_3() -> None:
    model = build_classifier(ClassifierConfig(num_classes=3, depth=14))
    shapes: list[tuple[int, ...]] = []
    for block in model.layers:
        block.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    model.eval()(torch.zeros(1, 3, 32, 32))
    assert shapes == [(16, 32, 32)] * 2 + [(32, 16, 16)] * 2 + [(64, 8, 8)] * 2


def test_a_label_equal_to_the_class_count_is_refused() -> None:
    images, labels = _identifiable(8)
    with pytest.raises(ValueError, match="labels must lie in"):
        train_classifier(images, np.where(labels == 1, 2, 0), **KW)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_the_checkpoint_records_sgd_with_nesterov_weight_decay_and_the_lr_schedule(tmp_path: Path,
                                                                                    schedule: str) -> None:
    """The checkpoint left after epoch 1 of 2 (the caller removes it): SGD with Nesterov momentum and the given
    weight decay, and a schedule spanning all steps of all epochs (20 images in batches of 8: 3 steps an epoch)."""
    images, labels = _identifiable(20)
    checkpoint = tmp_path / "victim.partial.pt"
    train_classifier(images, labels, checkpoint=checkpoint, schedule=schedule, weight_decay=1e-3, lr=0.05,
                     **{**KW, "epochs": 2})
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1
    group = state["optimizer"]["param_groups"][0]
    assert (group["nesterov"], group["weight_decay"]) == (True, 1e-3)
    sched = state["scheduler"]
    if schedule == "onecycle":
        assert sched["total_steps"] == 6 and sched["last_epoch"] == 3
        assert max(g["max_lr"] for g in state["optimizer"]["param_groups"]) == 0.05
    else:
        assert sched["T_max"] == 6 and sched["last_epoch"] == 3 and sched["base_lrs"] == [0.05]
        assert group["momentum"] == 0.9  # (one-cycle cycles the momentum between 0.85 and 0.95 instead)


def test_a_checkpoint_of_another_seed_is_not_resumed(tmp_path: Path) -> None:
    images, labels = _identifiable(16)
    checkpoint = tmp_path / "victim.partial.pt"
    train_classifier(images, labels, checkpoint=checkpoint, seed=0, **{**KW, "epochs": 2})
    assert checkpoint.is_file()  # left after epoch 1
    resumed = train_classifier(images, labels, checkpoint=checkpoint, seed=1, **{**KW, "epochs": 2})
    fresh = train_classifier(images, labels, seed=1, **{**KW, "epochs": 2})
    for (name, a), b in zip(resumed.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_restamp_stamps_the_poisoned_images_wherever_the_shuffle_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _identifiable(24)
    mask = np.zeros(24, dtype=bool)
    mask[[2, 13, 20]] = True

    def trigger(batch: np.ndarray) -> np.ndarray:
        batch = batch.copy()
        batch[:, 0, 0] = 255
        return batch

    seen = _spy_batches(monkeypatch)
    train_classifier(images, labels, restamp=(mask, trigger), crop_pad=0, hflip=False, **{**KW, "epochs": 2})
    batches = np.concatenate(seen)
    stamped = sorted(int(b[5, 5, 0]) // 7 for b in batches if (b[0, 0] == 255).all())
    assert stamped == [2, 2, 13, 13, 20, 20]  # each poisoned image in each epoch, and no other


def test_every_weight_is_trained_from_its_seeded_start() -> None:
    """Four SGD steps on 16 images move every weight away from the seeded initialisation: gradients cleared after
    the backward pass instead of before it leave the network as initialised (only BatchNorm's statistics change)."""
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(16) % 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        start = build_classifier(ClassifierConfig(num_classes=2, depth=8))
    trained = train_classifier(images, labels, seed=3, **{**KW, "epochs": 2})
    initial = dict(start.named_parameters())
    for name, value in trained.named_parameters():
        assert (value.detach() - initial[name].detach()).abs().max().item() > 1e-4, name


def test_a_loaded_classifier_is_in_eval_mode(tmp_path: Path) -> None:
    """Saved in training mode, loaded in eval mode: callers that run the model directly (not through `predict`) must
    get BatchNorm's running statistics, not each batch's."""
    model = build_classifier(ClassifierConfig(num_classes=3, depth=8)).train()
    save_classifier(model, tmp_path / "victim.pt")
    loaded = load_classifier(tmp_path / "victim.pt")
    assert not any(m.training for m in loaded.modules())


def test_num_threads_applies_during_training_and_is_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's own thread count (1 here, from the fixture) comes back after training with num_threads=2."""
    images, labels = _identifiable(8)
    during: list[int] = []
    real = classifier_module._to_tensor
    monkeypatch.setattr(classifier_module, "_to_tensor", lambda batch: (during.append(torch.get_num_threads()),
                                                                        real(batch))[1])
    assert torch.get_num_threads() == 1
    train_classifier(images, labels, num_threads=2, **KW)
    assert during == [2]
    assert torch.get_num_threads() == 1
