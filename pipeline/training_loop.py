"""The prior's training loop for `jobs/train_prior.py`: steps until the budget (--minutes, --max-steps) is spent, a
signal asks to stop (`StopRequest`) or the run diverges; a log line every --log-every steps; last.pt and the exported
prior every --save-every-min minutes and at the end (`Saves`); and the run's last words and exit status. One step's
math is in `pipeline/training.py`, the run's state in `pipeline/training_run.py`, its files in
`pipeline/training_run_folder.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import torch

from pipeline.model import UNetConfig
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.storage import describe
from pipeline.training_options import TRAINING_SETS
from pipeline.training_run import LogWindow, Recipe, TrainingRun
from pipeline.training_run_folder import OPTIMISER, save_state, write_export
from pipeline.version import versions


class SecondSignal(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM while stopping: quit at once, with that signal's exit status (143 for SIGTERM, which
    a scheduler reads as its stop; not Ctrl-C's 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """Turns Ctrl-C and SIGTERM into a request the training loop honours after its current step, so the state it saves
    is a whole step's. A second signal while stopping raises SecondSignal, a KeyboardInterrupt (the previous files stay
    whole: every save is atomic)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise SecondSignal(signum)
        self.signum = signum
        # The way to quit at once is the signal that came: Ctrl-C is advice for a terminal, not for a scheduler's stop
        # (SIGTERM), which is usually followed by SIGKILL after its grace period anyway.
        again = "Ctrl-C again" if signum == signal.SIGINT else f"another {signal.Signals(signum).name}"
        print(f"\n{signal.Signals(signum).name}: saving the state after this step ({again} to quit without saving)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                # An ignored signal stays ignored: a shell starts background jobs (cmd &) with SIGINT ignored, so that
                # the terminal's Ctrl-C does not stop them, and nohup-like launchers do the same for others.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def shown_export(export: str | Path) -> str | Path:
    """The exported prior as the run's lines name it: a URI without a server's password (ftp://user:***@host/
    prior.pt), as the purify job names its URIs; the console ends up in CI logs."""
    return redact_uri(export) if isinstance(export, str) else export


def shown_command(argv: list[str]) -> str:
    """The command line the exported prior records (a file users share): each URI in it (--init-from's, --export's,
    also as --flag=URI) without a server's password."""
    words = []
    for word in argv:
        flag, sep, value = word.partition("=") if word.startswith("-") else ("", "", word)
        words.append(flag + sep + redact_uri(value))
    return shlex.join(["python", "jobs/train_prior.py", *words])


class Saves:
    """Writes last.pt (the run's state and what it was trained as) and the exported prior (the EMA weights and how they
    were made), and keeps what the saves so far left: the step last.pt holds, and why the latest export failed."""

    def __init__(self, args: argparse.Namespace, argv: list[str] | None, last: Path, export: str | Path,
                 config: UNetConfig, learned: dict, init_note: str | None, saved_step: int | None,
                 training_images: str | None = None) -> None:
        self.args, self.argv, self.last, self.export = args, argv, last, export
        self.training_images = training_images  # what last.pt records of them, for a resume to compare
        self.shown_export = shown_export(export)
        self.config, self.learned, self.init_note = config, learned, init_note
        self.saved_step = saved_step
        self.export_error: str | None = None

    def save(self, run: TrainingRun, window: LogWindow | None = None) -> None:
        self.saved_step = run.step
        save_state(self.last, {
            **run.state_dict(), "flags": self.config.to_flags(), **self.learned, "initialised_from": self.init_note,
            "optimiser": {name: getattr(self.args, name) for name in OPTIMISER}, "seed": self.args.seed,
            **({"log_window": window.state()} if window is not None and window.steps else {}),
            **({"training_images": self.training_images} if self.training_images else {}),
        })
        try:
            write_export(self.export, run.ema, self.meta(run))
            self.export_error = None
        except Exception as err:  # noqa: BLE001 - last.pt is saved; a failed upload must not end hours of training
            # the store's answer may quote the URI it was given
            self.export_error = describe(err) if isinstance(self.export, Path) else redact_uri_secrets(describe(err),
                                                                                                      self.export)
            print(f"warning: could not write the prior to {self.shown_export} ({self.export_error}); {self.last} is saved, "
                  f"and the next save tries again", file=sys.stderr, flush=True)

    def meta(self, run: TrainingRun) -> dict:
        """The exported prior's meta: what it learned, for how long, and the command and versions that trained it."""
        args = self.args
        return {
            "trained_on": TRAINING_SETS[args.data][0],
            "objective": f"epsilon MSE, T={self.learned['timesteps']}", "schedule": args.schedule, "steps": run.step,
            **({"max_timestep": args.max_timestep} if args.max_timestep is not None else {}),
            "images_seen": run.images_seen, "minutes": round(run.elapsed / 60, 1), "ema_decay": args.ema,
            "device": str(run.device), "precision": args.precision,
            **({"initialised_from": self.init_note} if self.init_note else {}),
            # Quoted as a shell reads it: a plain join lost --attention '' (and split paths with spaces).
            # (URIs without a server's password: see `shown_command`)
            "command": shown_command(self.argv if self.argv is not None else sys.argv[1:]),
            "versions": versions(),  # the code and libraries it was trained with
        }


def budget_spent(run: TrainingRun, args: argparse.Namespace) -> bool:
    """Whether a resumed run has nothing left to train (--minutes or --max-steps reached)."""
    return bool(run.elapsed >= args.minutes * 60 or (args.max_steps and run.step >= args.max_steps))


def within_budget(run: TrainingRun, args: argparse.Namespace) -> bool:
    # Not `not budget_spent(...)`: a NaN elapsed time (a hand-made state) compares false both ways, and stops the run.
    return bool(run.elapsed < args.minutes * 60 and (not args.max_steps or run.step < args.max_steps))


def log_line(log: TextIO, run: TrainingRun, window: LogWindow, args: argparse.Namespace) -> bool:
    """Write the window's line to the log and the console, then open the next window; whether its mean loss is finite."""
    mean_loss, rate = window.read()
    rec = {"step": run.step, "images": run.images_seen, "loss": mean_loss, "img_per_s": round(rate, 1),
           "minutes": round(run.elapsed / 60, 2)}
    log.write(json.dumps(rec) + "\n")
    log.flush()
    left = max(0.0, args.minutes - run.elapsed / 60)
    if args.max_steps and rate > 0:  # whichever limit comes first ends the run
        left = min(left, (args.max_steps - run.step) * args.batch / rate / 60)
    print(f"step {run.step} loss {rec['loss']:.4f} {rate:.1f} img/s {run.elapsed / 60:.1f} min ({left:.1f} min left)",
          flush=True)
    window.restart()
    return math.isfinite(mean_loss)


def train(run: TrainingRun, pixels: torch.Tensor, recipe: Recipe, args: argparse.Namespace, saves: Saves,
          stop: StopRequest, log: TextIO) -> bool:
    """Train until the budget or --max-steps is spent, a signal asks to stop, or the run diverges (a loss or weights not
    finite: then nothing more is saved); save every --save-every-min minutes and at the end. Whether it diverged."""
    t_start = last_save = time.time()
    base_elapsed, window = run.elapsed, LogWindow(run.device, run.log_window)
    run.model.train()
    diverged = False
    while stop.signum is None and not diverged and within_budget(run, args):
        window.add(run.train_step(pixels, recipe), recipe.batch)
        run.elapsed = base_elapsed + time.time() - t_start
        if run.step % args.log_every == 0:
            diverged = not log_line(log, run, window, args)  # (not diverged so far: the loop checks it)
        if time.time() - last_save > args.save_every_min * 60:
            diverged = diverged or not run.weights_sound()
            if not diverged:
                saves.save(run, window)
            last_save = time.time()
    if window.steps:  # the steps since the last line (a run rarely ends on a multiple of --log-every)
        finite = log_line(log, run, window, args)
        diverged = diverged or not finite
    diverged = diverged or not run.weights_sound()
    if not diverged:
        saves.save(run)
    return diverged


def farewell(run: TrainingRun, saves: Saves, diverged: bool, signum: int | None, fresh: bool) -> int:
    """The run's last words and its exit status."""
    last, export, step = saves.last, saves.shown_export, run.step
    if diverged:
        if saves.saved_step is None:
            # This run saved nothing: there is no save of it to continue. A --fresh run may have left an earlier run's
            # last.pt in place, which rerunning without --fresh would resume instead of starting over.
            kept = "nothing was saved"
            how = "rerun with --fresh and a lower --lr to start over" if fresh else "rerun with a lower --lr to start over"
        else:
            kept = f"{last} and {export} keep step {saves.saved_step}"
            how = (f"rerun with a lower --lr{' and without --fresh' if fresh else ''} to continue from that save, or with "
                   f"--fresh to start over")
        print(f"error: training diverged by step {step} (a loss or weights not finite, or past fp16's range); {kept}; "
              f"{how}", file=sys.stderr, flush=True)
        return 1
    # the same command with --fresh would start over from scratch, discarding the state just saved
    again = "rerun the same command without --fresh" if fresh else "rerun the same command"
    if saves.export_error is not None:
        print(f"error: the prior could not be written to {export} ({saves.export_error}); {last} holds step {step}: "
              f"{again} to write it (with the budget spent it only exports)", file=sys.stderr, flush=True)
        return 1
    if signum is not None:
        print(f"interrupted at step {step} ({run.elapsed / 60:.1f} min): saved {last} and the EMA prior at {export}; "
              f"{again} to resume", file=sys.stderr, flush=True)
        return 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    print(f"done: {step} steps, {run.images_seen} images, {run.elapsed / 60:.1f} min; EMA prior at {export}", flush=True)
    # The bare command: the job samples the prior with the noise schedule it records and, for one trained with
    # --max-timestep, from the largest step within its timesteps (a note says which), so it needs no flag for either.
    print(f"use it: python jobs/purify.py --checkpoint {export} --input ... --output ...", flush=True)
    return 0
