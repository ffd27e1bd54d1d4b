"""A prior's training run as state (pipeline/training_run.py): the epoch order, the steps, and the save/restore round trip
that makes a resumed jobs/train_prior.py run train as the uninterrupted one would."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.training_run import LogWindow, Recipe, TrainingRun, UnusableState
from tests.jobutil import TRAIN_TINY_ARGS, train_prior_on_noise

CPU = torch.device("cpu")
N_IMAGES = 10


class TinyEpsModel(torch.nn.Module):
    """An ε-model small enough to step in microseconds; its dropout draws from torch's stream, as the UNet's does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x))


def new_run(seed: int) -> TrainingRun:
    torch.manual_seed(seed)
    return TrainingRun.start(TinyEpsModel(), CPU, lr=1e-2, seed=seed)


RECIPE = Recipe(alpha_bars=torch.linspace(0.999, 0.01, 1000), t_high=1000, batch=3, lr=1e-2, warmup_steps=2, ema=0.9,
                autocast=None, flips=True)
PIXELS = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (N_IMAGES, 4, 4, 3), dtype=np.uint8))


def test_each_epoch_visits_every_image_once_also_across_batches_that_straddle_it() -> None:
    run = new_run(0)
    drawn = np.concatenate([run.next_indices(N_IMAGES, 3) for _ in range(10)])  # 30 images: exactly 3 epochs
    epochs = drawn.reshape(3, N_IMAGES)
    for epoch in epochs:
        assert sorted(epoch) == list(range(N_IMAGES))
    assert len({tuple(epoch) for epoch in epochs}) == 3  # each epoch its own order


def test_the_epoch_order_continues_across_a_restore() -> None:
    straight = new_run(0)
    for _ in range(2):
        straight.next_indices(N_IMAGES, 3)
    state = copy.deepcopy(straight.state_dict())  # mid-epoch: 6 of 10 images used
    after = [straight.next_indices(N_IMAGES, 3) for _ in range(4)]
    resumed = new_run(1)  # another seed: everything it draws must come from the state
    resumed.restore(state, seed=1)
    assert resumed.cursor == 6
    for expected in after:
        np.testing.assert_array_equal(resumed.next_indices(N_IMAGES, 3), expected)
    # the epoch the state was in is finished, not started over: its first 6 and the next 4 are all 10 images
    first_epoch = np.concatenate([state["order"].numpy()[:6], after[0], after[1][:1]])
    assert sorted(first_epoch) == list(range(N_IMAGES))


def test_restore_of_a_state_dict_continues_every_stream_so_the_next_steps_are_identical() -> None:
    straight = new_run(0)
    for _ in range(3):
        straight.train_step(PIXELS, RECIPE)
    state = copy.deepcopy(straight.state_dict())  # torch.save's copy: the live tensors go on changing
    losses = [straight.train_step(PIXELS, RECIPE).item() for _ in range(3)]
    torch.manual_seed(123)  # what ran in between must not matter: restore sets torch's stream too
    resumed = new_run(7)
    resumed.restore(state, seed=7)
    assert (resumed.step, resumed.images_seen) == (3, 9)
    assert [resumed.train_step(PIXELS, RECIPE).item() for _ in range(3)] == losses
    for part in ("model", "ema"):
        for name, value in getattr(straight, part).state_dict().items():
            torch.testing.assert_close(getattr(resumed, part).state_dict()[name], value, rtol=0, atol=0)
    assert (resumed.step, resumed.images_seen, resumed.cursor) == (straight.step, straight.images_seen, straight.cursor)


def test_a_state_from_before_the_streams_were_saved_reseeds_from_seed_plus_step() -> None:
    run = new_run(0)
    run.train_step(PIXELS, RECIPE)
    state = {k: v for k, v in copy.deepcopy(run.state_dict()).items() if k not in {"rng", "order", "cursor"}}
    restored = new_run(0)
    restored.restore(state, seed=41)
    assert restored.rng.random() == np.random.default_rng(42).random()
    drawn = torch.rand(3)
    torch.manual_seed(42)
    assert torch.equal(drawn, torch.rand(3))
    assert restored.order is None and restored.cursor == 0


def test_weights_that_do_not_fit_are_an_unusable_state_with_the_cause_chained() -> None:
    state = copy.deepcopy(new_run(0).state_dict())
    del state["model"]["conv.bias"]
    with pytest.raises(UnusableState, match="conv.bias") as caught:
        new_run(0).restore(state, seed=0)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_an_order_drawn_for_another_data_set_size_is_forgotten() -> None:
    run = new_run(0)
    run.next_indices(N_IMAGES, 3)
    run.match_data(N_IMAGES)
    assert run.order is not None and run.cursor == 3  # the same data: the epoch goes on
    run.match_data(N_IMAGES + 1)
    assert run.order is None and run.cursor == 0
    assert sorted(run.next_indices(N_IMAGES + 1, N_IMAGES + 1)) == list(range(N_IMAGES + 1))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e6, -1e6])
def test_weights_past_fp16s_range_in_the_model_or_its_ema_are_unsound(value: float) -> None:
    for part in ("model", "ema"):
        run = new_run(0)
        assert run.weights_sound()
        with torch.no_grad():
            getattr(run, part).conv.weight[0, 0, 0, 0] = value
        assert not run.weights_sound(), part


def test_the_log_window_averages_its_steps_and_restarts_empty() -> None:
    window = LogWindow(CPU)
    window.add(torch.tensor(1.0), 4)
    window.add(torch.tensor(3.0), 4)
    mean_loss, rate = window.read()
    assert (mean_loss, window.steps, window.images) == (2.0, 2, 8) and rate > 0
    window.restart()
    assert (window.steps, window.images, window.loss_sum.item()) == (0, 0, 0.0)


def test_a_last_pt_whose_weights_do_not_fit_is_refused_as_damaged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    job = train_prior_on_noise(monkeypatch, "train_prior_training_run")
    argv = ["--max-steps", "1", "--out", str(tmp_path), *TRAIN_TINY_ARGS]
    assert job.cli(argv) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["model"]["out.2.bias"]  # the flags still match: only loading the weights finds it
    torch.save(state, tmp_path / "last.pt")
    capsys.readouterr()
    assert job.cli([*argv[:1], "2", *argv[2:]]) == 2
    err = capsys.readouterr().err.strip()
    # (torch's message for missing keys has a line break of its own, so this refusal is not always one line)
    assert err.startswith(f"error: {tmp_path / 'last.pt'} is damaged and cannot be resumed (")
    assert "out.2.bias" in err and err.endswith("pass --fresh to start over (it is then overwritten), or delete it"), err
