"""A prior training run's folder (`--out` of `jobs/train_prior.py`): the resume state last.pt and what a resume must
agree on, the log train_log.jsonl, the lock that keeps a second run out, and the exported prior (a local file or a URI).
What is trained and how is in `pipeline/training_run.py` and `pipeline/training_loop.py`; this module only reads and
writes the files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch

from pipeline.checkpoint import save_bundle
from pipeline.model import UNetConfig
from pipeline.redaction import redact_uri
from pipeline.storage import make_parent_dirs, replace_file, storage_path, url_connection_options

LOG = "train_log.jsonl"
OBJECTIVE = "epsilon"  # the only objective jobs/train_prior.py trains: ε-prediction MSE
STATE_KEYS = {"model", "ema", "opt", "step", "images_seen", "elapsed_s", "flags"}
# What a resumed last.pt must agree on: these change what the model learns, so a run that mixed them would be neither
# prior. Optimiser and bookkeeping settings (--lr, --warmup-steps, --batch, --ema, --precision, --seed, --minutes,
# --max-steps, --device, --threads) may change on resume: they change how the same objective is optimised, not what it is.
# The model flags (width, depth, attention, dropout, learn_sigma) are compared separately.
LEARNED = ("data", "schedule", "max_timestep", "objective", "timesteps")
# The value a last.pt written before a setting was recorded was trained with; the schedule has always been a flag, so an
# old state's schedule is unknown (None).
LEGACY = {"data": "cifar10", "schedule": None, "max_timestep": None, "objective": OBJECTIVE, "timesteps": 1000}
# Optimiser settings a resume may change (see LEARNED); recorded so that a change is said, not silent. (--seed is not
# one: a resumed run continues the saved random streams.)
OPTIMISER = ("batch", "lr", "warmup_steps", "ema", "precision", "device")


def learned_settings(args: argparse.Namespace, timesteps: int) -> dict:
    """What this command's run learns (see LEARNED), as last.pt records it and a resume compares it."""
    return {"data": args.data, "schedule": args.schedule, "max_timestep": args.max_timestep, "objective": OBJECTIVE,
            "timesteps": timesteps}


def load_state(last: Path, device: torch.device) -> dict:
    """The resume state in OUT/last.pt; a file that cannot be read as one is an error naming it (it is left in place)."""
    try:
        state = torch.load(last, map_location=device, weights_only=True)
    except Exception as err:  # a truncated zip, a pickle torch refuses, a folder: all mean "cannot resume from this"
        raise SystemExit(f"error: {last} is damaged and cannot be resumed ({type(err).__name__}: {err}); pass --fresh "
                         f"to start over (it is then overwritten), or delete it") from err
    missing = STATE_KEYS - set(state) if isinstance(state, dict) else STATE_KEYS
    if missing:
        raise SystemExit(f"error: {last} is damaged or not a training state (it lacks {', '.join(sorted(missing))}); "
                         f"pass --fresh to start over (it is then overwritten), or delete it")
    return state


def check_resumable(last: Path, state: dict, config: UNetConfig, learned: dict) -> None:
    """Refuse to continue a run whose model or learning problem differs from this command's (see LEARNED)."""
    again = "; use --fresh or another --out"
    started = _uri_of(shown_note(state.get("initialised_from")))
    if started:
        # Its model and noise settings are that prior's: without --init-from, the width options' defaults describe another
        again = f"; to resume it, give --init-from {started} (the prior it started from); else use --fresh or another --out"
    flags = config.to_flags()
    if state["flags"] != flags:
        differ = ", ".join(f"{k} {state['flags'].get(k)}, not {v}" for k, v in flags.items() if state["flags"].get(k) != v)
        raise SystemExit(f"error: {last} was trained with other model flags ({differ}){again}")
    for name in LEARNED:
        before = state.get(name, LEGACY[name])
        if name == "max_timestep" and _all_timesteps(before, state) and _all_timesteps(learned[name], learned):
            continue  # no --max-timestep and --max-timestep 999 (with 1000 timesteps) both train on every timestep
        if name == "schedule" and before is None:
            print(f"warning: {last} predates recording its noise schedule; assuming it is --schedule {learned[name]}",
                  file=sys.stderr, flush=True)
        elif before != learned[name]:
            if name == "data":
                raise SystemExit(f"error: {last} was trained on {before}, not {learned[name]}{again}")
            if name == "max_timestep":  # None is the flag left out (every timestep), not a value to give
                was, now = (_with_max_timestep(value) for value in (before, learned[name]))
                raise SystemExit(f"error: {last} was trained {was}, not {now}{again}")
            flag = {"schedule": "--schedule"}.get(name, name)
            raise SystemExit(f"error: {last} was trained with {flag} {before}, not {learned[name]}{again}")


def _with_max_timestep(max_timestep: int | None) -> str:
    """A recorded --max-timestep as a refusal names it: none recorded is the flag left out, not "--max-timestep None"."""
    return "without --max-timestep (every timestep)" if max_timestep is None else f"with --max-timestep {max_timestep}"


def _all_timesteps(max_timestep: int | None, settings: dict) -> bool:
    """Whether a recorded --max-timestep means every timestep of the `timesteps` the same settings record."""
    return max_timestep is None or max_timestep == settings.get("timesteps", LEGACY["timesteps"]) - 1


def provenance_note(uri: str, sha256: str) -> str:
    """What a run started from, as last.pt and the exported prior record it ("URI (sha256 0123abcd...)"): the URI as
    `redact_uri` shows it, a server's password as '***' (an exported prior is shared). A resume knows the prior by
    its sha256 (see `check_init_from_resumable`), so the password is not needed to tell it."""
    return f"{redact_uri(uri)} (sha256 {sha256[:12]})"


def shown_note(note: str | None) -> str | None:
    """A recorded provenance note without a password: a last.pt of an earlier version kept the --init-from URI as
    typed, password and all; a resume writes it again, into last.pt and the prior, as `provenance_note` would."""
    uri = _uri_of(note)
    return redact_uri(uri) + note[len(uri):] if note and uri else note


def _sha_of(note: str | None) -> str | None:
    """The weights' sha256 prefix in an --init-from provenance note ("URI (sha256 0123abcd...)"), or None."""
    found = re.search(r"\(sha256 ([0-9a-f]+)\)$", note or "")
    return found.group(1) if found else None


def _uri_of(note: str | None) -> str | None:
    """The prior's path or URI in an --init-from provenance note ("URI (sha256 0123abcd...)"), or None."""
    return re.sub(r" \(sha256 [0-9a-f]+\)$", "", note) if note else None


def check_init_from_resumable(last: Path, state: dict, init_from: str, init_note: str | None) -> None:
    """Refuse an --init-from that a resume would ignore: last.pt's weights win, so a user meaning to fine-tune another
    prior into this folder would silently go on training the old run. Rerunning the same command (the prior it started
    from, the same weights) resumes as before; a state from before it recorded its start gets a note instead.

    The prior is known by its sha256, not by its URI: the URI recorded hides a server's password (`provenance_note`),
    and one that differs only in its password (the account's next one) names the same file. The messages name both
    without the password."""
    shown = redact_uri(init_from)
    if "initialised_from" not in state:
        print(f"note: resuming {last}, which does not record what it started from; --init-from {shown} is not used "
              f"(its weights come from {last.name})", file=sys.stderr, flush=True)
        return
    before = shown_note(state["initialised_from"])
    if before is not None and _sha_of(before) == _sha_of(init_note):
        return
    started = f"started from {before}" if before else "started from random weights"
    # A run started from a prior has that prior's model: leaving --init-from out would describe another one
    how = f"give --init-from {_uri_of(before)}" if before else "leave out --init-from"
    if before and _uri_of(before) == shown:  # the same name, other weights: the prior there was replaced
        how = f"put the prior it started from (sha256 {_sha_of(before)}...) back at {shown}"
    raise SystemExit(f"error: --init-from {shown}: {last} holds a run to resume that {started}, and resuming it "
                     f"would ignore --init-from; to start over from {shown}, add --fresh (last.pt is then "
                     f"overwritten) or use another --out; to resume the run, {how}")


def note_optimiser_changes(last: Path, state: dict, args: argparse.Namespace) -> None:
    """Print one note per optimiser setting this resume changes (a state from before they were recorded: none)."""
    before = state.get("optimiser", {})
    for name in OPTIMISER:
        if name in before and before[name] != getattr(args, name):
            print(f"note: resuming {last} with --{name.replace('_', '-')} {getattr(args, name)}; it was trained so "
                  f"far with {before[name]}", file=sys.stderr, flush=True)


def save_state(path: Path, state: dict) -> None:
    """Write the resume state to `path` (OUT/last.pt) through a temporary file."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous state intact


def write_export(export: str | Path, model: torch.nn.Module, meta: dict) -> None:
    """Write the fp16 bundle to a local path, or upload it to a URI (s3://, gs://, ...) through fsspec, as --init-from
    reads one; an upload is one PUT, so a reader sees the old prior or the new one."""
    if isinstance(export, Path):
        save_bundle(export, model, meta=meta)
        return
    with tempfile.TemporaryDirectory() as tmp:  # save_bundle writes files; the bytes are then uploaded
        staged = Path(tmp) / "prior.pt"
        save_bundle(staged, model, meta=meta)
        data = staged.read_bytes()
    fs, path = storage_path(export, url_connection_options(export))  # a server's host from its URL (ftp://host/...)
    make_parent_dirs(fs, posixpath.dirname(path))
    replace_file(fs, path, data, f"write {export}")


def trim_log(log_path: Path, step: int) -> None:
    """Drop the log lines a resume is about to redo: a hard kill loses the steps since the last save, and their lines
    (and a line cut off mid-write) would otherwise sit before the redone ones, so the log ran backwards in steps."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line + "\n")
    tmp = log_path.with_name(LOG + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log_path)


@contextlib.contextmanager
def open_log(log_path: Path, resumed_at: int | None) -> Iterator[TextIO]:
    """The run's log, to append to: trimmed to the resumed step, or (a run that starts over) a new one."""
    if resumed_at is not None:
        trim_log(log_path, resumed_at)
    elif log_path.exists():
        # A run that starts over starts a new log; the old run's is kept rather than mixed into it or lost. LOG.old is
        # the previous log; one already there moves to the first free LOG.old.N: a --fresh run killed before its first
        # save, then started over again, would otherwise replace the original run's log with its own few lines.
        old = log_path.with_name(LOG + ".old")
        earlier = ""
        if old.exists():
            n = 1
            while log_path.with_name(f"{LOG}.old.{n}").exists():
                n += 1
            os.replace(old, log_path.with_name(f"{LOG}.old.{n}"))
            earlier = f" (the one before it is {LOG}.old.{n})"
        os.replace(log_path, old)
        print(f"starting over: the previous {log_path} is now {LOG}.old{earlier}", flush=True)
    with open(log_path, "a") as log:
        yield log


@contextlib.contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold OUT/.lock while training. Two runs into one folder would append to one log and replace each other's
    last.pt through the same temporary file; the second one is refused instead."""
    with open(out / ".lock", "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: run without the lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise SystemExit(f"error: another train_prior.py run is training into {out} (it holds {out / '.lock'}); "
                             f"wait for it or stop it, or use another --out") from err
        except OSError:  # a file system without locks
            pass
        yield  # closing the file releases the lock
