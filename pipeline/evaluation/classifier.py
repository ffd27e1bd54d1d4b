"""The victim classifier: a CIFAR-style ResNet (ResNet-20 by default), its training loop and its persistence.

The model normalises its own input, so every caller feeds images scaled to [0, 1] (uint8 / 255) and the
per-channel statistics travel with the saved weights.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.cache import write_atomic

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

ExtraTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# (mask over the training set, trigger function): the trigger is stamped again after augmentation on masked samples.
Restamp = tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class ClassifierConfig:
    """depth = 6n + 2 (20, 32, 44, 56, ...): n basic blocks in each of 3 stages of width `widths`."""

    num_classes: int = 10
    depth: int = 20
    widths: tuple[int, int, int] = (16, 32, 64)
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __post_init__(self) -> None:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {self.depth}")
        if len(self.widths) != 3:
            raise ValueError(f"expected 3 stage widths, got {self.widths}")


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, section 4.2) with 1x1 projection shortcuts; input N x 3 x H x W in [0, 1]."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
        blocks_per_stage = (config.depth - 2) // 6
        w1, w2, w3 = config.widths
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        in_ch = w1
        for stage, width in enumerate((w1, w2, w3)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(w3, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_classifier(config: ClassifierConfig) -> ResNet:
    """A freshly initialised classifier (uses torch's global RNG; seed it first for reproducibility)."""
    return ResNet(config)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def _augment(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """Random crop with `pad` px zero padding (+ random horizontal flip), per image, on uint8 N x H x W x C."""
    n, height, width, _ = images.shape
    out = images
    if pad > 0:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        dy = rng.integers(0, 2 * pad + 1, size=n)
        dx = rng.integers(0, 2 * pad + 1, size=n)
        rows = dy[:, None, None] + np.arange(height)[None, :, None]
        cols = dx[:, None, None] + np.arange(width)[None, None, :]
        out = padded[np.arange(n)[:, None, None], rows, cols]
    if flip:
        flips = rng.random(n) < 0.5
        out = out.copy() if out is images else out
        out[flips] = out[flips, :, ::-1]
    return out


def _check_training_data(images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(images)} and {len(labels)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")


def _channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks (no full float copy of the set)."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += part.sum(axis=0)
        squares += (part * part).sum(axis=0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    extra_transform: ExtraTransform | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    hflip: bool = True,
    crop_pad: int = 4,
    depth: int = 20,
    schedule: str = "onecycle",
    weight_decay: float = 5e-4,
    num_threads: int | None = None,
    restamp: Restamp | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_key: str = "",
) -> ResNet:
    """Train a ResNet on uint8 N x H x W x 3 images (SGD with Nesterov momentum and weight decay; one-cycle LR, which
    also cycles the momentum between 0.95 and 0.85, or cosine LR with momentum 0.9).

    augment: random crop with `crop_pad` px zero padding (0: no crop), plus a random horizontal flip when `hflip`
    (set hflip=False for GTSRB: traffic signs are not flip-invariant). extra_transform(batch, rng) -> batch runs on
    every uint8 training batch before that augmentation (e.g. `PhysicalBA.train_transform`). The input
    normalisation statistics are measured on `images`. num_threads: torch's intra-op thread count during
    training when given, restored afterwards (the process's setting is otherwise left alone). Returns the model
    in eval mode. restamp=(mask, trigger): after augmentation, `trigger` is applied again to the batch's samples
    where mask is True (the poisoned ones), so random crops cannot shift or cut a corner patch: the attacker
    controls the training loop and wants the trigger exactly where it will be at test time.

    checkpoint: a file the training state (weights, optimizer, LR schedule, random generator) is written to after
    every epoch, atomically; a run that finds one made by the same training resumes after its last finished epoch
    and ends with the same weights as an uninterrupted run. checkpoint_key: what else the caller's training depends
    on (the data's hash, the attack), compared with the checkpoint's along with every argument here. A checkpoint of
    other training, or a damaged one, is named on stderr and training starts afresh. The caller removes it when done.
    progress: a bar over the batches with the ETA, and a line per epoch.
    """
    if crop_pad < 0:
        raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
    if restamp is not None and len(restamp[0]) != len(images):
        raise ValueError(f"restamp mask has {len(restamp[0])} entries for {len(images)} images")
    with _torch_threads(num_threads):
        return _train(images, labels, num_classes, epochs, batch_size, lr, seed, augment, extra_transform, device, progress,
                      hflip=hflip, crop_pad=crop_pad, depth=depth, schedule=schedule, weight_decay=weight_decay,
                      restamp=restamp, checkpoint=None if checkpoint is None else Path(checkpoint),
                      checkpoint_key=checkpoint_key)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `num_threads` while the block runs and restored afterwards; None leaves
    the process's setting alone."""
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous_threads)


def _train(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, batch_size: int, lr: float, seed: int,
           augment: bool, extra_transform: ExtraTransform | None, device: str | torch.device, progress: bool, *,
           hflip: bool, crop_pad: int, depth: int, schedule: str, weight_decay: float, restamp: Restamp | None = None,
           checkpoint: Path | None = None, checkpoint_key: str = "") -> ResNet:
    labels = np.asarray(labels, dtype=np.int64)
    _check_training_data(images, labels, num_classes)
    _check_training_options(epochs, batch_size, schedule)
    mean, std = _channel_stats(images)
    config = ClassifierConfig(num_classes=num_classes, depth=depth, mean=mean, std=std)  # type: ignore[arg-type]
    model = _seeded_classifier(config, seed, device)
    steps_per_epoch = -(-len(images) // batch_size)
    optimizer, scheduler = _sgd_with_schedule(model, lr, weight_decay, schedule, epochs * steps_per_epoch)
    run = _ClassifierTraining(model, optimizer, scheduler, np.random.default_rng(seed))
    recipe = _BatchRecipe(augment, crop_pad, hflip, extra_transform, restamp)
    # Everything the weights follow from, so that a checkpoint of other training is never resumed.
    fingerprint = json.dumps({
        "n": len(images), "num_classes": num_classes, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "augment": augment, "hflip": hflip, "crop_pad": crop_pad, "depth": depth, "schedule": schedule,
        "weight_decay": weight_decay, "extra_transform": extra_transform is not None, "restamp": restamp is not None,
        "mean": mean, "std": std, "key": checkpoint_key,
    }, sort_keys=True)
    first_epoch = 0 if checkpoint is None else _resume(run, checkpoint, fingerprint, epochs, progress)
    bar = _batch_bar(epochs * steps_per_epoch, first_epoch * steps_per_epoch) if progress and first_epoch < epochs else None
    targets = torch.from_numpy(labels)
    epoch_seconds: list[float] = []
    for epoch in range(first_epoch, epochs):
        start = time.perf_counter()
        loss, accuracy = run.train_epoch(images, targets, batch_size, recipe, device, bar)
        if checkpoint is not None and epoch + 1 < epochs:
            _write_training_state(checkpoint, run.state_dict(fingerprint, epoch + 1))
        epoch_seconds.append(time.perf_counter() - start)
        if progress:
            _say(_epoch_line(epoch, epochs, loss, accuracy, epoch_seconds), bar)
    if bar is not None:
        bar.close()
    return model.eval()


def _check_training_options(epochs: int, batch_size: int, schedule: str) -> None:
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    if schedule not in ("onecycle", "cosine"):
        raise ValueError(f"schedule must be 'onecycle' or 'cosine', got {schedule!r}")


def _seeded_classifier(config: ClassifierConfig, seed: int, device: str | torch.device) -> ResNet:
    """A fresh classifier whose initial weights follow from `seed` alone; torch's global random stream is left as it
    was (the caller's own draws do not shift)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_classifier(config).to(device)


def _sgd_with_schedule(model: ResNet, lr: float, weight_decay: float, schedule: str, total_steps: int
                       ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and weight decay, and its LR schedule over all `total_steps`: one-cycle (which also
    cycles the momentum between 0.95 and 0.85) or cosine."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return optimizer, scheduler


@dataclass(frozen=True)
class _BatchRecipe:
    """How a training batch is made from its images (see `train_classifier`)."""

    augment: bool
    crop_pad: int
    hflip: bool
    extra_transform: ExtraTransform | None
    restamp: Restamp | None

    def batch(self, images: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """images[idx] as the model trains on them: the extra transform, then the random crop and flip, then the
        trigger stamped again on the poisoned samples. The draws from `rng` come in this order, which a resumed
        training relies on to continue the same stream."""
        batch = images[idx]
        if self.extra_transform is not None:
            batch = self.extra_transform(batch, rng)
        if self.augment:
            batch = _augment(batch, rng, pad=self.crop_pad, flip=self.hflip)
            if self.restamp is not None:
                mask, trigger = self.restamp
                hit = mask[idx]
                if hit.any():
                    batch = batch.copy() if batch is images else batch
                    batch[hit] = trigger(batch[hit])
        return batch


@dataclass
class _ClassifierTraining:
    """What a resumed training must continue exactly: the weights, the optimiser, the LR schedule and the generator
    that orders, transforms and augments the batches. `state_dict()` and `restore()` round-trip all of it."""

    model: ResNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator

    def train_epoch(self, images: np.ndarray, targets: torch.Tensor, batch_size: int, recipe: _BatchRecipe,
                    device: str | torch.device, bar: Any) -> tuple[float, float]:
        """One pass over every image, in a fresh random order, one SGD step a batch; the epoch's mean loss and
        accuracy (%) on its augmented batches."""
        self.model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        order = self.rng.permutation(len(images))
        for first in range(0, len(images), batch_size):
            idx = order[first : first + batch_size]
            x = _to_tensor(recipe.batch(images, idx, self.rng)).to(device)
            y = targets[idx].to(device)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            if bar is not None:
                bar.update(1)
        return loss_sum / seen, 100.0 * correct / seen

    def state_dict(self, fingerprint: str, epoch: int) -> dict:
        """The checkpoint after `epoch` finished epochs of the training `fingerprint` names."""
        return {
            "fingerprint": fingerprint, "epoch": epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, state: dict) -> int:
        """Continue from a `state_dict()`; the number of epochs it had finished."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        return int(state["epoch"])


def _resume(run: _ClassifierTraining, checkpoint: Path, fingerprint: str, epochs: int, progress: bool) -> int:
    """The epochs already trained: those of a checkpoint made by the same training (restored into `run`), else 0."""
    state = _read_training_state(checkpoint, fingerprint)
    if state is None:
        return 0
    first_epoch = run.restore(state)
    if progress:
        print(f"resuming classifier training from {checkpoint} after epoch {first_epoch}/{epochs}",
              file=sys.stderr, flush=True)
    return first_epoch


def _batch_bar(total_steps: int, done_steps: int) -> Any:
    """A bar over the training's batches, with the ETA, starting at those a resumed training already did."""
    from pipeline.progress import progress_bar

    # tqdm's bar on a terminal; a log file gets a plain line a minute instead of one \r-joined line.
    return progress_bar(total_steps, "training classifier", "batch", sys.stderr, done_steps, mininterval=0.5)


def _epoch_line(epoch: int, epochs: int, loss: float, accuracy: float, epoch_seconds: list[float]) -> str:
    """The line after each epoch: its loss, accuracy and seconds, and the time left at this run's mean epoch."""
    left = (epochs - epoch - 1) * sum(epoch_seconds) / len(epoch_seconds)
    return (f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}, train acc {accuracy:.2f}%, "
            f"{epoch_seconds[-1]:.1f}s" + (f", ETA {left / 60:.1f} min" if epoch + 1 < epochs else ""))


def _say(line: str, bar: Any) -> None:
    """A line on stderr, above the bar when there is one (so the bar is not torn)."""
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


TRAINING_STATE_FORMAT = "zip-purify-classifier-training/1"


def _write_training_state(path: Path, state: dict) -> None:
    """Atomic: a run killed while writing leaves the previous epoch's checkpoint, never half of one."""
    write_atomic(path, lambda tmp: torch.save({"format": TRAINING_STATE_FORMAT, **state}, tmp))


def _read_training_state(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at `path` when it was made by the same training, else None (named on stderr when it exists)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
            raise ValueError("not a classifier training checkpoint")
        if state.get("fingerprint") != fingerprint:
            print(f"note: training checkpoint {path} is of other training (other data, attack or options); training "
                  "afresh", file=sys.stderr, flush=True)
            return None
        return state
    except Exception as err:  # any damage: the checkpoint only saves time, so training afresh is always safe
        print(f"warning: training checkpoint {path} is damaged ({type(err).__name__}: {err}); training afresh",
              file=sys.stderr, flush=True)
        return None


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted class (int64) for each uint8 N x H x W x 3 image; puts the model in eval mode."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    model.eval()
    device = next(model.parameters()).device
    preds = [
        model(_to_tensor(images[i : i + batch_size]).to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(preds).numpy().astype(np.int64) if preds else np.zeros(0, dtype=np.int64)


def save_classifier(model: ResNet, path: str | Path, trained_from: dict[str, Any] | None = None) -> None:
    """Store config + state dict in one file that loads with torch.load(weights_only=True); `trained_from` (what the
    weights follow from: the data's hash, the attack's parameters) goes in it as JSON text, read back by
    `classifier_trained_from`."""
    config = asdict(model.config)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"format": "zip-purify-classifier/1", "config": config, "state_dict": state}
    if trained_from is not None:
        payload["trained_from"] = json.dumps(trained_from, sort_keys=True)
    write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def classifier_trained_from(path: str | Path) -> dict[str, Any] | None:
    """What a classifier saved by `save_classifier` was trained from, or None when it does not say (saved without it,
    by a version before it was kept)."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    recorded = payload.get("trained_from") if isinstance(payload, dict) else None
    return json.loads(recorded) if isinstance(recorded, str) else None


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ResNet:
    """Rebuild a classifier saved by `save_classifier` (eval mode, on `device`)."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "zip-purify-classifier/1":
        raise ValueError(f"{path} is not a classifier saved by save_classifier")
    raw = payload["config"]
    config = ClassifierConfig(
        num_classes=int(raw["num_classes"]),
        depth=int(raw["depth"]),
        widths=tuple(int(w) for w in raw["widths"]),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
    )
    model = build_classifier(config)
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.to(device).eval()
