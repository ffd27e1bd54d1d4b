"""The state of a diffusion prior's training run and its steps, for `jobs/train_prior.py`.

`TrainingRun` holds what a resumed run must continue exactly: the weights, their EMA, the optimiser, the counters, the
random stream that orders and flips the images, and the epoch's image order with how much of it is used. Its
`state_dict()` and `restore()` round-trip all of it (torch's global random streams included), so a run stopped and
resumed trains as the uninterrupted one would. `Recipe` is how each step trains (fixed for one run, free to change on a
resume), `LogWindow` the steps since the last log line. The loop with its budget and messages is in
`pipeline/training_loop.py`, the files in `pipeline/training_run_folder.py`; the math of one step is in
`pipeline/training.py`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.training import ema_decay, epsilon_loss, update_ema, warmup_lr


class UnusableState(Exception):
    """A resume state whose weights or optimiser state do not load into this run's model (the cause is chained)."""


@dataclass(frozen=True)
class Recipe:
    """How every step of a run trains: timesteps 0..t_high - 1 of the schedule's ᾱ, `batch` images (flipped at
    random where `flips`), Adam at `lr` after `warmup_steps` of warm-up, an EMA decaying at most `ema`, the forward pass
    under `autocast` (None: fp32)."""

    alpha_bars: torch.Tensor
    t_high: int
    batch: int
    lr: float
    warmup_steps: int
    ema: float
    autocast: torch.dtype | None
    flips: bool


@dataclass
class TrainingRun:
    """A run's state between steps (see the module docstring); `start` makes a fresh one around built weights."""

    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    device: torch.device
    rng: np.random.Generator  # the image order and the flips; torch's global stream draws t, the noise and dropout
    step: int = 0
    images_seen: int = 0
    elapsed: float = 0.0  # training seconds across resumes
    order: np.ndarray | None = None  # this epoch's shuffled image order
    cursor: int = 0  # how much of `order` has been used
    # The log window a save left open (see LogWindow.state), restored for the resumed loop's first line to continue
    log_window: dict | None = None

    @classmethod
    def start(cls, model: torch.nn.Module, device: torch.device, lr: float, seed: int) -> TrainingRun:
        """A run at step 0 of `model` (already on `device`, as the user named it): the EMA starts as a copy of it, Adam
        at `lr`."""
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        return cls(model, ema, opt, device, np.random.default_rng(seed))

    def next_indices(self, n_images: int, batch: int) -> np.ndarray:
        """The next batch's images: each epoch visits every image once, in a fresh random order (drawing with
        replacement instead left e^-epochs of the images unseen: 7 % of CIFAR-10 in a 2.6-epoch run). A batch that
        ends an epoch takes the rest from the next one."""
        parts, need = [], batch
        while need:
            if self.order is None or self.cursor == len(self.order):
                self.order, self.cursor = self.rng.permutation(n_images), 0
            part = self.order[self.cursor:self.cursor + need]
            parts.append(part)
            self.cursor += len(part)
            need -= len(part)
        return np.concatenate(parts)

    def match_data(self, n_images: int) -> None:
        """Forget a restored epoch order drawn for a data set of another size: the next batch starts a new epoch."""
        if self.order is not None and len(self.order) != n_images:
            self.order, self.cursor = None, 0

    def train_step(self, pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        """One optimiser step on the next batch of `pixels` (N x 32 x 32 x 3 uint8, on the run's device); its loss,
        detached and left on the device. The draws come in a fixed order (images, flips, t, noise), which a resume
        relies on to continue the same streams."""
        idx = self.next_indices(len(pixels), recipe.batch)
        x0 = pixels[torch.from_numpy(idx).to(self.device)].permute(0, 3, 1, 2).float() / 127.5 - 1
        if recipe.flips:
            flip = torch.from_numpy(self.rng.random(recipe.batch) < 0.5).to(self.device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, recipe.t_high, (recipe.batch,), device=self.device)
        noise = torch.randn_like(x0)
        loss = epsilon_loss(self.model, x0, t, noise, recipe.alpha_bars, recipe.autocast)
        for group in self.opt.param_groups:
            group["lr"] = warmup_lr(recipe.lr, self.step, recipe.warmup_steps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        update_ema(self.ema, self.model, ema_decay(self.step, recipe.ema))
        self.step += 1
        self.images_seen += recipe.batch
        return loss.detach()

    def weights_sound(self) -> bool:
        """Whether the weights are still numbers the fp16 export can hold: a diverged step leaves NaN, inf or values
        past 65504 in them, and saving those would replace the last good state (and prior) with a useless one."""
        limit = torch.finfo(torch.float16).max
        params = [*self.model.parameters(), *self.ema.parameters()]
        return bool(torch.stack([p.detach().abs().max() <= limit for p in params]).all())

    def state_dict(self) -> dict:
        """The run's resumable state: weights, EMA, optimiser, counters, random streams and the epoch order."""
        streams = {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            streams["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "step": self.step, "images_seen": self.images_seen, "elapsed_s": self.elapsed, "rng": streams,
            **({"order": torch.from_numpy(self.order), "cursor": self.cursor} if self.order is not None else {}),
        }

    def restore(self, state: dict, seed: int) -> None:
        """Continue from `state` (a `state_dict()`, possibly from before it held the random streams or the epoch
        order). Raises UnusableState when its weights or optimiser state do not fit this run's model."""
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise UnusableState(err) from err
        self.step, self.images_seen, self.elapsed = state["step"], state["images_seen"], state["elapsed_s"]
        # A state from before the streams were saved reseeds instead. (A seed is at most 2**32 - 1, so seed + step stays
        # far below torch's limit of 2**64; the modulo only makes that explicit and leaves every reachable value, and so
        # every existing run's stream, as it was.)
        self.rng = np.random.default_rng((seed + self.step) % 2**64)
        torch.manual_seed((seed + self.step) % 2**64)
        saved = state.get("rng", {})
        if "numpy" in saved:
            self.rng.bit_generator.state = saved["numpy"]
        if "torch" in saved:
            torch.set_rng_state(saved["torch"].cpu())
        if self.device.type == "cuda" and "cuda" in saved:
            torch.cuda.set_rng_state(saved["cuda"].cpu(), self.device)
        if "order" in state:
            self.order, self.cursor = state["order"].cpu().numpy(), state["cursor"]
        self.log_window = state.get("log_window")


class LogWindow:
    """The steps since the last log line: their summed loss (kept on the device: reading it back every step would stall
    a GPU's queue), their images, and when the window opened. A save keeps an open window (`state`) and a resume
    continues it (`carried`): the losses of the steps between the last line and the save are in the next line, as they
    are in an uninterrupted run's, rather than in no line after a hard kill."""

    def __init__(self, device: torch.device, carried: dict | None = None) -> None:
        self.device = device
        self.restart()
        if carried:
            self.loss_sum = carried["loss_sum"].to(device=device, dtype=self.loss_sum.dtype)
            self.steps, self.images = int(carried["steps"]), int(carried["images"])
            self.opened -= float(carried["seconds"])

    def state(self) -> dict:
        """What a save keeps of the window (the loss read back: a save waits for the device anyway)."""
        return {"loss_sum": self.loss_sum.detach().cpu(), "steps": self.steps, "images": self.images,
                "seconds": time.time() - self.opened}

    def restart(self) -> None:
        """Open a new window (after its line is written, so writing it is not counted against the next one's rate)."""
        self.loss_sum, self.steps, self.images, self.opened = torch.zeros((), device=self.device), 0, 0, time.time()

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.images += images

    def read(self) -> tuple[float, float]:
        """The window's mean loss and images per second. Reading the loss waits for the device, so the rate is true."""
        mean_loss = self.loss_sum.item() / self.steps
        return mean_loss, self.images / (time.time() - self.opened)
