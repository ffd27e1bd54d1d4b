"""The streaming purification job: object storage in, purified Parquet out, on Ray Data.

Read top to bottom, the pipeline is:

    units   = discover(input)                       # files / tar shards / Parquet files, sorted
    read    → raw bytes per image (skipping ids already in the output)
    decode  → RGB pixels, or a reject with the reason
    tile    → model-size canvases (by size and order, never by label)
    purify  → ZIP on an actor pool, one diffusion model per actor (GPU when there is one)
    untile  → one record per image, original size
    encode  → lossless PNG
    write   → OUTPUT/data/part-*.parquet and OUTPUT/rejects/part-*.parquet, one atomic file per batch

The driver then writes OUTPUT/_summary.json (counts, timing, configuration, checkpoint sha256).
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import re
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.checkpoint import LoadedCheckpoint, load_checkpoint, save_bundle
from pipeline.decode import DecodePolicy
from pipeline.errors import JobError, JobFailed, JobInterrupted
from pipeline.lease import OutputLease, refuse_live_lease
from pipeline.ledger import ContainerRead, container_ids, read_ledger, unchanged_and_done, write_ledger
from pipeline.output import (
    INDEX_READERS,
    JOB_FILE,
    SUMMARY_FILE,
    DamagedOutput,
    DamagedPart,
    check_output_location,
    clear_output,
    deduplicate_output,
    input_inside_written_folder,
    is_written_file,
    list_parts,
    output_files_inside_input,
    output_ids,
    output_inside_input,
    part_file_ids,
    read_json,
    unify_output_types,
    write_json,
)
from pipeline.placement import cpu_actor_threads, default_actors_and_gpus, init_ray, placement_problem
from pipeline.presets import ASSETS, shipped_prior_path
from pipeline.progress import progress_bar
from pipeline.purifier import (
    PRECISIONS,
    ZipSettings,
    canonical_operators,
    check_trained_timesteps,
    default_batch_size,
    device_problem,
    is_whole_number,
    recipe_values,
)
from pipeline.redaction import redact, redact_uri, redact_uri_secrets
from pipeline.sources import (
    HIDDEN_EXAMPLES,
    IN_MEMORY_BYTES,
    LOOKALIKE,
    MAX_IMAGE_BYTES,
    HiddenSkipped,
    ReadUnit,
    discover,
    hidden_note,
    input_location,
    listing_stamp,
    relative_id,
)
from pipeline.stages import (
    ALL_CORES,
    DATA_DIR,
    REJECTS_DIR,
    PurifyStage,
    decode_stage,
    encode_stage,
    read_stage,
    tile_stage,
    untile_stage,
    write_stage,
)
from pipeline.storage import (
    RetriesExhausted,
    describe,
    is_url_chain,
    remove_stale_temporaries,
    storage_path,
    with_retries,
    with_url_options,
)

DEFAULT_INPUT = str(ASSETS / "sample")
DEFAULT_PRIOR_NAME = "cifar10"
DEFAULT_PRIOR = shipped_prior_path(DEFAULT_PRIOR_NAME)
BLOCK_BYTES = 16 * 1024 * 1024  # target size of the job's Ray Data blocks (see run_job)


@dataclass
class JobConfig:
    """Everything a run depends on. Field docs are the CLI's --help texts."""

    input: str = DEFAULT_INPUT
    output: str = "./purified"
    checkpoint: str | None = None
    prior: str | None = None
    preset: str | None = None
    flags: dict[str, Any] | None = None
    checkpoint_sha256: str | None = None
    steps: int = 20
    pool: int = 4
    lam: float = 0.0
    eta: float = 1.0
    sampler: str = "ddim"
    operators: str = "pool"
    blend_k: float | None = None
    clip_denoised: bool = True
    resample: int = 1
    start: float = 1.0
    schedule: str = "linear"
    large_images: str = "fit"
    seed: int = 0
    canvas_size: int | None = None
    batch_size: int | None = None
    tile_batch: int = 256
    write_batch: int = 512
    files_per_unit: int = 256
    in_memory_mb: int = IN_MEMORY_BYTES // 2**20
    actors: int = 0
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    cpus_per_task: float = 0.25
    torch_threads: int | None = None
    device: str | None = None
    precision: str = "fp32"
    labels_from_folders: bool = False
    image_column: str | None = None
    max_pixels: int = 64_000_000
    max_image_mb: int = MAX_IMAGE_BYTES // 2**20
    alpha: str = "white"
    exif_transpose: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)
    incremental: bool = False
    retry_rejects: bool = False
    input_moved: bool = False
    overwrite: bool = False
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # The input's and output's own connection details (hdfs://namenode:8020/...) join the storage options, which
        # travel to every file system the run makes; URIs naming two servers are one of check()'s problems. No other
        # attribute is kept: JobConfig(**config.__dict__) must make the same config.
        if isinstance(self.storage_options, dict):
            self.storage_options = with_url_options(self._uris(), self.storage_options)[0]

    def _uris(self) -> dict[str, str]:
        return {f"--{name}": getattr(self, name) for name in ("input", "output")
                if isinstance(getattr(self, name), str) and getattr(self, name)}

    @classmethod
    def from_recipe(cls, name: str, **fields: Any) -> JobConfig:
        """A config with a named sampler recipe (`pipeline.purifier.RECIPES`); `fields` win over the recipe's values."""
        return cls(**{**recipe_values(name), **fields})

    def check(self) -> None:
        """Refuse option values a run cannot use, naming the option: a bad value must stop the run (and the dry
        run) before any work, not drop images or crash an actor later. The sampler's own options are checked by
        ZipSettings, the decoding ones by DecodePolicy."""
        problems = []

        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        def is_number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("tile_batch", "write_batch", "files_per_unit", "max_image_mb"):
            if not (is_whole_number(getattr(self, name)) and getattr(self, name) >= 1):
                problems.append(f"{flag(name)} must be a whole number of at least 1, got {getattr(self, name)!r}")
        for name in ("batch_size", "canvas_size", "torch_threads"):
            v = getattr(self, name)
            if v is not None and not (is_whole_number(v) and v >= 1):
                problems.append(f"{flag(name)} must be a whole number of at least 1, got {v!r}")
        for name in ("in_memory_mb", "actors"):
            if not (is_whole_number(getattr(self, name)) and getattr(self, name) >= 0):
                problems.append(f"{flag(name)} must be a whole number of 0 or more, got {getattr(self, name)!r}")
        for name in ("cpus_per_actor", "cpus_per_task"):
            if not (is_number(getattr(self, name)) and getattr(self, name) > 0):
                problems.append(f"{flag(name)} must be a number above 0, got {getattr(self, name)!r}")
        if self.gpus_per_actor is not None and not (is_number(self.gpus_per_actor) and self.gpus_per_actor >= 0):
            problems.append(f"--gpus-per-actor must be a number of 0 or more, got {self.gpus_per_actor!r}")
        elif self.gpus_per_actor is not None and self.gpus_per_actor > 1:
            # The purifier runs on one device: an actor's second GPU would be held and never used.
            problems.append(f"--gpus-per-actor must be at most 1 (each actor runs its model on one GPU), got "
                            f"{self.gpus_per_actor!r}; use --actors for more GPUs")
        elif self.gpus_per_actor is not None and 0 < self.gpus_per_actor < 1e-4:
            problems.append(f"--gpus-per-actor must be 0 or at least 0.0001 (Ray's smallest fraction), got "
                            f"{self.gpus_per_actor!r}")
        for name in ("labels_from_folders", "incremental", "retry_rejects", "input_moved", "overwrite", "progress",
                     "exif_transpose", "clip_denoised"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{flag(name)} must be true or false, got {getattr(self, name)!r}")
        if self.incremental is True and self.overwrite is True:
            # one adds to a finished output, the other deletes it first: which one was meant is the user's to say
            problems.append("--incremental and --overwrite contradict each other: --incremental adds new inputs to a "
                            "finished output, --overwrite deletes it first; give one")
        if self.retry_rejects is True and self.overwrite is True:
            problems.append("--retry-rejects and --overwrite contradict each other: --retry-rejects reads an output's "
                            "rejects again, --overwrite deletes them first; give one")
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"{flag(name)} must be a path or URI, got {getattr(self, name)!r}")
            elif is_url_chain(getattr(self, name)):
                problems.append(f"{flag(name)} must be the storage's own URI (s3://..., a path), got the fsspec URL chain "
                                f"{getattr(self, name)!r}; storage settings go in --storage-option")
        for name in ("checkpoint", "prior", "preset", "image_column", "ray_address"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                problems.append(f"{flag(name)} must be text, got {v!r}")
        if self.checkpoint_sha256 is not None and not (
                isinstance(self.checkpoint_sha256, str) and len(self.checkpoint_sha256) == 64
                and all(c in "0123456789abcdefABCDEF" for c in self.checkpoint_sha256)):
            problems.append(f"--checkpoint-sha256 must be 64 hexadecimal digits, got {self.checkpoint_sha256!r}")
        if not isinstance(self.storage_options, dict):
            problems.append(f"storage_options must be a mapping of fsspec options, got {self.storage_options!r}")
        problems.extend(with_url_options(self._uris(), {})[1])  # from the URIs alone: the options now hold one of them
        if self.flags is not None and not isinstance(self.flags, dict):
            problems.append(f"--flags must be a JSON object of create_model flags, got {self.flags!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device is not None:
            # not checked against this machine's GPUs: the purifier actors run on the cluster's
            problem = device_problem(self.device, on_this_machine=False)
            if problem:
                problems.append(problem)
            elif self.device == "cpu" and self.precision in PRECISIONS and self.precision != "fp32":
                problems.append(f"--precision {self.precision} needs a CUDA device; use fp32 with --device cpu")
            elif self.gpus_per_actor is None or (is_number(self.gpus_per_actor) and 0 <= self.gpus_per_actor <= 1):
                problem = placement_problem(self.device, self.gpus_per_actor)
                if problem:
                    problems.append(problem)
        elif self.gpus_per_actor == 0 and self.precision in PRECISIONS and self.precision != "fp32":
            # --gpus-per-actor 0 puts the actors on CPUs, whatever the cluster holds: known now, so the dry run says so
            problems.append(f"--precision {self.precision} needs CUDA, but --gpus-per-actor 0 runs the actors on the "
                            "CPU; use --precision fp32, or give the actors a GPU")
        for make in (self.settings, self.decode_policy):
            try:
                make()
            except (TypeError, ValueError) as err:
                problems.append(_with_flag(str(err)))
        if problems:
            raise JobError("; ".join(problems))

    def decode_policy(self) -> DecodePolicy:
        return DecodePolicy(max_pixels=self.max_pixels, alpha=self.alpha, exif_transpose=self.exif_transpose)

    def settings(self) -> ZipSettings:
        return ZipSettings(steps=self.steps, pool=self.pool, lam=self.lam, eta=self.eta, sampler=self.sampler,
                           operators=self.operators, blend_k=self.blend_k, clip_denoised=self.clip_denoised,
                           resample=self.resample, start=self.start, schedule=self.schedule,
                           large_images=self.large_images, seed=self.seed)

    def public(self) -> dict[str, Any]:
        """The configuration with storage secrets, and credentials in its URIs (a presigned checkpoint URL's
        signature), redacted (for logs and the summary)."""
        d = asdict(self)
        d["storage_options"] = redact(self.storage_options)
        for name in ("input", "output", "checkpoint"):
            d[name] = redact_uri(d[name])
        return d


# How ZipSettings' and DecodePolicy's messages (Python names, for the API) begin, and the job's flag for each.
_MESSAGE_FLAGS = {
    "steps ": "--steps", "seed ": "--seed", "clip_denoised ": "--clip-denoised", "unknown noise schedule": "--schedule",
    "large_images ": "--large-images", "blend_k ": "--blend-k", "eta ": "--eta", "lam ": "--lam",
    "resample ": "--resample", "start ": "--start", "unknown sampler": "--sampler", "pool factor": "--pool",
    "unknown operator": "--operators", "max_pixels ": "--max-pixels", "alpha ": "--alpha",
    "exif_transpose ": "--exif-transpose",
}


def _with_flag(message: str) -> str:
    """A settings error as the CLI's user needs it: prefixed with the flag it is about."""
    flag = next((f for start, f in _MESSAGE_FLAGS.items() if message.startswith(start)), None)
    return f"{flag}: {message}" if flag else message


class _Interrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM in the driver, raised where the main thread is (usually waiting on Ray Data)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning)): ?(.*)$")


def failure_reason(err: BaseException) -> str:
    """One line on what made a run fail. A failed batch comes back from Ray as RayTaskError(UserCodeException), whose
    first line names only the actor ("ray::MapWorker(...).submit() (pid=..., ...)") and whose cause is Ray Data's
    "UDF failed to process a data block"; the worker's own exception survives only in the remote traceback text,
    innermost first, so its first exception line is the reason."""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match[1]}: {match[2]}"[:300]
    return describe(err)


# Set once a stopped run has counted what it wrote: further SIGINT/SIGTERM are ignored by `signals_interrupt`'s handler
# while it writes its summary and releases the lease. A second Ctrl-C there left the summary "running", the lease
# held, or replaced the run's `interrupted:` line with a bare one.
_IGNORE_STOPS = threading.Event()


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within it, SIGINT and SIGTERM raise `_Interrupt` (a KeyboardInterrupt) in the main thread, so that `finally`
    blocks run (a run's summary, its lease) where SIGTERM's default would end the process on the spot."""
    def handler(signum: int, frame: Any) -> None:
        if _IGNORE_STOPS.is_set():
            return  # a second Ctrl-C while the stop is recorded: what is left (summary, lease, exit) is short
        raise _Interrupt(signum)

    _IGNORE_STOPS.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        # An ignored signal stays ignored: a shell starts background jobs (cmd &) with SIGINT ignored, so that the
        # terminal's Ctrl-C is not theirs.
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, old)


@contextlib.contextmanager
def record_stopped_run(record: Callable[[str, dict[str, Any]], str], out: str) -> Iterator[None]:
    """Run a job's pipeline so that, if it stops, its summary says so instead of "running" forever.

    SIGINT and SIGTERM are raised as an interruption in the driver (Ray's own SIGTERM handler would exit with the
    output's summary left at "running"); `record(status, details)` writes the summary ("interrupted" or "failed")
    and returns a phrase on what was written. Then JobInterrupted or JobFailed is raised, for the CLI's exit status.
    """
    with signals_interrupt():
        try:
            yield
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            written = record("interrupted", {"signal": name})
            _IGNORE_STOPS.set()
            raise JobInterrupted(f"stopped by {name}; {written}. Every file in {out} is whole: run the same command "
                                 f"again to resume ({RESUME_SKIPS})", signum) from None
        except DamagedOutput as err:
            # part files damaged during the run (its end-of-run check): not "every file is whole, run it again",
            # which stops on them; the error names them all and says what to do, in full (a reason is cut at 300)
            written = record("failed", {"error": redact_uri_secrets(str(err), out)})  # it quotes the output's URI
            _IGNORE_STOPS.set()
            raise JobFailed(f"the run failed: {err}; {written}") from err
        except Exception as err:
            reason = failure_reason(err)
            written = record("failed", {"error": reason})
            _IGNORE_STOPS.set()
            raise JobFailed(f"the run failed: {reason}; {written}. Every file in {out} is whole: run the same "
                            f"command again to resume ({RESUME_SKIPS})") from err


RESUME_SKIPS = "what is written is skipped, not purified again"


def part_names(out: str, storage_options: dict[str, Any]) -> dict[str, str | None]:
    """The output's part files, named as write_stage names them ('data/part-....parquet', 'rejects/part-....parquet'),
    each with its listing stamp (`listing_stamp`; None where the listing gives no version): one listing per folder."""
    fs, root = storage_path(out, storage_options)
    found: dict[str, str | None] = {}
    for folder in (DATA_DIR, REJECTS_DIR):
        path = posixpath.join(root, folder)
        fs.invalidate_cache(path)  # s3fs caches listings (see list_parts)
        if not fs.exists(path):
            continue
        for info in fs.ls(path, detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            if name.startswith("part-") and name.endswith(".parquet"):  # as list_parts: no temporaries
                found[f"{folder}/{name}"] = listing_stamp(info)
    return found


def part_rows(out: str, storage_options: dict[str, Any], names: list[str]) -> dict[str, int]:
    """Rows of each named part file, from its footer alone (a few KiB each, however many images it holds)."""
    fs, root = storage_path(out, storage_options)

    def rows(name: str) -> int:
        def once() -> int:
            with fs.open(posixpath.join(root, name), "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows

        return with_retries(once, f"read the footer of {out}/{name}")

    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return dict(zip(names, pool.map(rows, names), strict=True))


@dataclass(frozen=True)
class StoppedCount:
    """What a stopped run wrote: rows in data/ and rejects/, its part files, and, when the count is a lower bound
    only, why."""

    purified: int
    rejected: int
    files: int
    short: str | None = None
    # --retry-rejects: earlier rejects found in this run's files (purified now, or rejected again), whose old rows
    # are still in rejects/ until the end-of-run check of a later run removes them
    retried: int = 0


def count_stopped_run(out: str, storage_options: dict[str, Any],
                      before: dict[str, str | None] | set[str] | frozenset[str] | None,
                      reported: dict[str, int], retry: frozenset[str] = frozenset()) -> StoppedCount:
    """Count the rows a stopped run wrote from its part files, not from what the pipeline had reported: a file's
    manifest reaches the driver a second or more after the file is in place, and those still on their way when the run
    stopped never do (a run interrupted with 4 files, 128 rows, written said 0). Its files are those it reported
    (`reported`: name -> rows, write_stage's manifests) and those listed now that were not there when it began
    (`before`; None: stopped before it listed the output, so before the pipeline started), or listed then under the
    same name with another stamp (`before` as `part_names` gives it: a name is a hash of the ids, so a --retry-rejects
    batch rejected again in the same grouping is written over its old file, and was not counted when its manifest
    had not arrived). `before` as a set of names compares none (the caller's once the pipeline has reported all it
    wrote: the end-of-run check then rewrites earlier files under their names). Only the unreported ones'
    footers are read: a few, however large the output. With --retry-rejects (`retry`: the earlier rejects read again),
    the ids of this run's files are read too, to count the retried ones, each of which an earlier reject row also
    holds. A second Ctrl-C while counting, or storage that cannot be listed, leaves the reported count, marked as a
    lower bound."""
    known = {folder: sum(n for name, n in reported.items() if name.startswith(folder + "/"))
             for folder in (DATA_DIR, REJECTS_DIR)}
    extra = {DATA_DIR: 0, REJECTS_DIR: 0}
    landed: set[str] = set()
    short = None
    retried = 0
    if before is not None:
        try:
            stamps = before if isinstance(before, dict) else dict.fromkeys(before)
            landed = {name for name, stamp in part_names(out, storage_options).items() if name not in reported and (
                name not in stamps or (None not in (stamp, stamps[name]) and stamp != stamps[name]))}
            for name, n in part_rows(out, storage_options, sorted(landed)).items():
                extra[name.partition("/")[0]] += n
        except KeyboardInterrupt:  # a second Ctrl-C: stop counting, but still record the stop
            landed, extra = set(), {DATA_DIR: 0, REJECTS_DIR: 0}
            short = "a second signal stopped the count of its part files"
        except Exception as err:  # noqa: BLE001 - the stop must still be recorded
            landed, extra = set(), {DATA_DIR: 0, REJECTS_DIR: 0}
            short = f"its part files could not be counted ({describe(err)})"
    if retry and before is not None and short is None:
        # on its own: the rows counted stand when only the ids cannot be read (`stopped_totals` then takes the least)
        try:
            retried = len(retry & part_file_ids(out, storage_options, sorted(set(reported) | landed)))
        except KeyboardInterrupt:
            short = "a second signal stopped the count of the earlier rejects its files hold again"
        except Exception as err:  # noqa: BLE001 - the stop must still be recorded
            short = f"the earlier rejects its files hold again could not be counted ({describe(err)})"
    return StoppedCount(known[DATA_DIR] + extra[DATA_DIR], known[REJECTS_DIR] + extra[REJECTS_DIR],
                        len(reported) + len(landed), short, retried)


def stopped_totals(earlier: tuple[int, int], count: StoppedCount, retry: frozenset[str]) -> dict[str, int]:
    """What the output holds after a stopped run, each input once: the earlier rows and this run's, less the earlier
    rejects that this run's files hold again (their old rows go at the next end-of-run check). A count cut short
    (`count.short`) did not read which those are, so any earlier reject may be one: the least the output can hold
    (taking none of them counted the rejects it purified or rejected again twice, and called that "at least")."""
    retried = count.retried if count.short is None else len(retry)
    return {"purified": earlier[0] + count.purified, "rejected": max(0, earlier[1] + count.rejected - retried)}


def _checkpoint_for(config: JobConfig) -> tuple[str, str]:
    """The checkpoint to use and a note on where it came from."""
    if config.checkpoint and config.prior:
        raise JobError(f"give a checkpoint or a shipped prior, not both (checkpoint {config.checkpoint!r}, "
                       f"prior {config.prior!r})")
    if config.checkpoint:
        return config.checkpoint, "user checkpoint"
    name = config.prior or DEFAULT_PRIOR_NAME
    try:
        path = shipped_prior_path(name)
    except ValueError as err:
        raise JobError(str(err)) from err
    if path.exists():
        return str(path), f"the project's own {name} prior (pipeline/assets/{path.name})"
    if config.prior:
        raise JobError(f"shipped prior {name!r} is missing from this installation ({path})")
    # No trained prior shipped: a seeded random-weight model of the right architecture, said loudly.
    import torch

    from pipeline.model import build_unet
    from pipeline.presets import preset_config

    torch.manual_seed(0)
    path = Path.home() / ".cache" / "zip-purify" / "random_prior.pt"
    save_bundle(path, build_unet(preset_config("cifar10_prior_small")), meta={"random_weights": True})
    return str(path), "RANDOM-WEIGHT model (no trained prior shipped): output is not a real purification"


def check_output_state(config: JobConfig, job_record: dict[str, Any], dry_run: bool = False) -> str:
    """Refuse to mix runs with different settings, or to silently append to a finished run; return the output's
    state: "new", "resume" (an unfinished run), "incremental" (a finished run, --incremental) or "overwrite".

    With --overwrite the existing output is deleted first, except in a dry run, which deletes nothing.
    """
    so = config.storage_options
    out = config.output.rstrip("/")
    fs, root = check_output_location(out, so)
    if config.overwrite:
        for folder in (DATA_DIR, REJECTS_DIR):
            # --overwrite deletes these folders whole: an output given as a data set's own folder (or the input
            # itself) would lose the user's images in a data/ or rejects/ folder of theirs
            path = posixpath.join(root, folder)
            foreign = sorted(p for p in (fs.find(path) if fs.exists(path) else []) if not is_written_file(p))
            if foreign:
                raise JobError(f"--overwrite would delete {out}/{folder}/, which holds {len(foreign)} file(s) this job "
                               f"did not write (e.g. {foreign[0]}); choose another output")
        if not dry_run:
            clear_output(out, so)
        return "overwrite"
    previous = read_json(f"{out}/{JOB_FILE}", so)
    has_parts = bool(list_parts(out, DATA_DIR, so) or list_parts(out, REJECTS_DIR, so))
    if previous is None:
        if has_parts:
            raise JobError(f"{out} holds part files but no {JOB_FILE}: not an output of this job; choose another "
                           "output or pass --overwrite")
        return "new"
    # A settings field added after that output was written is missing from its record; the field's default is
    # what that older version did, so fill it in rather than refuse an upgraded scheduled (--incremental) run.
    previous = {**previous, "settings": {**ZipSettings().to_dict(), **(previous.get("settings") or {})},
                "decoding": {**asdict(DecodePolicy()), **(previous.get("decoding") or {})}}
    # Versions before one spelling per operator setting recorded it as given ("gray, pool", a YAML list): the same
    # operators, which must not refuse the command that wrote the output
    with contextlib.suppress(ValueError):
        previous["settings"]["operators"] = canonical_operators(previous["settings"]["operators"])
    differ = []
    for key in ("settings", "decoding", "checkpoint_sha256", "canvas_size", "reading"):
        before, now = previous.get(key), job_record.get(key)
        if before == now or (key == "reading" and before is None):  # not recorded by an older version: compatible
            continue
        if isinstance(before, dict) and isinstance(now, dict):
            what = ", ".join(f"{name} {before.get(name)!r} (now {now.get(name)!r})"
                             for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name))
        else:
            what = f"{key} {before!r} (now {now!r})"
        if key == "reading":  # they set the rows' columns: say how to give the output's own
            flags = [f"--{name.replace('_', '-')} {json.dumps(before.get(name))}" if before.get(name) is not None
                     else f"no --{name.replace('_', '-')}" for name in sorted(before) if before.get(name) != now.get(name)]
            differ.append((what, f"{out} was written with other input-reading options: {what}; they set its rows' "
                                 f"columns (label, the Parquet image), so this run's rows would not match the output's: "
                                 f"give {', '.join(flags)} as its runs did, or use another output"))
            continue
        differ.append((what, f"{out} was written with other {key}: {what}; use another output, or --overwrite to "
                             "start over"))
    before_input = (previous.get("input") or {}).get("location")
    now_input = (job_record.get("input") or {}).get("location")
    if before_input is not None and now_input is not None and before_input != now_input and not config.input_moved:
        # an older version's record has no input: compatible
        differ.append((f"input {before_input} (now {now_input})",
                       f"{out} was made from input {before_input}, and this run's --input {redact_uri(config.input)} is "
                       f"{now_input}: an output's ids are paths relative to its input, so every file here whose "
                       "relative path the output already holds would be skipped as done, unread; write to another "
                       "output, or give the original input (if the same files only moved here, pass --input-moved)"))
    if differ and not has_parts:
        # The run that recorded those settings wrote no row (it failed before its first batch, e.g. on an option the
        # model could not take): nothing is purified with them, so this run's settings replace them rather than
        # lock the corrected command out of the output.
        print(f"zip-purify: note: {out} holds no rows yet; the settings its earlier run recorded "
              f"({'; '.join(what for what, _ in differ)}) are replaced by this run's", file=sys.stderr)
        differ = []
    if differ:
        raise JobError(differ[0][1])
    summary = read_json(f"{out}/{SUMMARY_FILE}", so)
    complete = bool(summary) and summary.get("status") == "complete"
    if complete and not (config.incremental or config.retry_rejects):
        raise JobError(f"{out} already holds a complete run; pass --incremental to purify only new inputs, "
                       "--retry-rejects to read its rejected inputs again as well, or --overwrite to start over")
    return "incremental" if complete else "resume"


@dataclass
class JobPlan:
    """What a run will do, worked out before any image is read: the model, the output's state, the inputs."""

    checkpoint_uri: str
    model_note: str
    checkpoint: LoadedCheckpoint
    canvas_size: int
    job_record: dict[str, Any]
    output_state: str  # "new", "resume" (a partial run), "incremental" (a finished run) or "overwrite"
    done: set[str]  # ids already in the output's data/ or rejects/ (with --retry-rejects: data/ only)
    done_purified: int
    done_rejected: int
    units: list[ReadUnit]  # what is left to read; image files already done are dropped here
    skipped_files: int
    in_memory_bytes: int  # tar shards and Parquet files over this are streamed from storage
    excluded_output_files: int = 0  # files of the job's own output, found inside the input and not read
    max_image_bytes: int = MAX_IMAGE_BYTES  # an image file, tar member or Parquet cell over this is rejected unread
    stale_lease: str | None = None  # the holder of a lease left by a run that stopped without releasing it
    # Containers (tar shards, Parquet files, zip archives): the done ids of each one left to read (its read task
    # skips them unread), those an earlier complete run read whole (pipeline.ledger), and how many of those are
    # unchanged and skipped unread.
    container_done: dict[str, list[str]] = field(default_factory=dict)
    ledger: dict[str, ContainerRead] = field(default_factory=dict)
    skipped_containers: int = 0
    skipped_container_records: int = 0
    retry: frozenset[str] = frozenset()  # --retry-rejects: the ids in rejects/ that this run reads again
    # the done ids of each tar shard left to read that are in data/ and that a name not UTF-8 can give ('\\x'): its
    # read task tells a member added beside one purified earlier under the same id (sources.tar_shards._read_tar)
    container_purified: dict[str, list[str]] = field(default_factory=dict)
    hidden: HiddenSkipped = field(default_factory=HiddenSkipped)  # hidden files the listing left out (sources.hidden._hidden)

    def describe(self) -> dict[str, Any]:
        """Counts a person can check before committing a cluster to the run (the --dry-run report)."""
        by_kind = {kind: [u for u in self.units if u.kind == kind] for kind in ("files", "tar", "parquet", "zip")}
        sizes = [size for u in self.units for size in u.sizes]
        streamed = [size for u in self.units if u.kind != "files" for size in u.sizes
                    if size is not None and size > self.in_memory_bytes]
        return {
            "model": {"checkpoint": redact_uri(self.checkpoint_uri), "note": self.model_note,
                      "sha256": self.checkpoint.sha256,
                      "image_size": self.checkpoint.config.image_size, "canvas_size": self.canvas_size},
            "settings": self.job_record["settings"],
            "output": {"state": self.output_state, "purified": self.done_purified, "rejected": self.done_rejected,
                       "rejects_to_retry": len(self.retry)},
            "stale_lease": self.stale_lease,
            "input": {"image_files_to_read": sum(len(u.paths) for u in by_kind["files"]),
                      "image_files_already_done": self.skipped_files,
                      "tar_shards": sum(len(u.paths) for u in by_kind["tar"]),
                      "parquet_files": sum(len(u.paths) for u in by_kind["parquet"]),
                      "zip_files": sum(len(u.paths) for u in by_kind["zip"]),
                      # read whole by an earlier complete run, unchanged since, all their ids in the output: not read
                      "containers_already_done": self.skipped_containers,
                      "read_tasks": len(self.units),
                      "bytes": sum(size for size in sizes if size is not None),
                      "unsized": sum(size is None for size in sizes),
                      "streamed": len(streamed), "in_memory_mb": self.in_memory_bytes // 2**20,
                      # known from the listing; tar members and Parquet cells over the limit are found when read
                      "image_files_over_max_image_mb": sum(
                          size is not None and size > self.max_image_bytes
                          for u in by_kind["files"] for size in u.sizes),
                      "max_image_mb": self.max_image_bytes // 2**20,
                      "excluded_output_files": self.excluded_output_files,
                      "hidden_files_skipped": self.hidden.count, "hidden_files_examples": self.hidden.examples},
        }


def plan_job(config: JobConfig, dry_run: bool = False) -> JobPlan:
    """Check the model and the output and list the inputs, without reading an image or writing anything.

    Every error a run can find before its first image (unsafe or mismatched checkpoint, missing input, an
    output made with other settings, a finished output without --incremental) is raised here as a JobError.
    """
    config.check()
    so = config.storage_options
    out = config.output.rstrip("/")
    settings = config.settings()

    # The model is checked before any data is read: unreadable, unsafe or mismatched files stop here.
    checkpoint_uri, model_note = _checkpoint_for(config)
    ckpt: LoadedCheckpoint = load_checkpoint(checkpoint_uri, config.preset, config.flags, so,
                                             config.checkpoint_sha256, verify_only=True)
    try:
        check_trained_timesteps(ckpt.meta, settings)
    except ValueError as err:
        raise JobError(str(err)) from err
    canvas_size = config.canvas_size or ckpt.config.image_size
    canvas_problem = _canvas_problem(canvas_size, config.canvas_size is not None, settings.pool,
                                     ckpt.config.min_input_multiple)
    if canvas_problem:
        raise JobError(canvas_problem)
    try:
        location = input_location(config.input, so)
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot list input {config.input}: {describe(err)}") from err
    job_record = {"settings": settings.to_dict(), "checkpoint_sha256": ckpt.sha256, "canvas_size": canvas_size,
                  "decoding": asdict(config.decode_policy()), "checkpoint": redact_uri(checkpoint_uri),
                  "model": model_note,
                  # options that set the rows' columns: a run with others would add rows unlike the output's
                  "reading": {"labels_from_folders": config.labels_from_folders, "image_column": config.image_column},
                  # what the output's ids are relative to: another input's same-named files would be skipped as done
                  "input": {"uri": redact_uri(config.input), "location": redact_uri(location)}}

    # Before the output is looked at (and, with --overwrite, emptied by run_job): it must not be, or hold, the input.
    overlap = input_inside_written_folder(config.input, out, so)
    if overlap:
        raise JobError(overlap)
    # What is already done (resume / incremental), and what there is to read.
    try:
        # deletes nothing: run_job empties an --overwrite output once it holds the output's lease
        state = check_output_state(config, job_record, dry_run=True)
        stale_lease = refuse_live_lease(out, so)  # before any work; a real run takes the lease after planning
        # A new or overwritten output holds nothing yet (in a dry run: will hold nothing when the run starts, and
        # the plan reports what --overwrite would delete).
        purified_ids, rejected_ids = (set(), set()) if state in ("new", "overwrite") else output_ids(out, so)
        prior_purified, prior_rejected = len(purified_ids), len(rejected_ids)
        if state == "overwrite" and dry_run:
            # what --overwrite would delete; part files that cannot be read are deleted with the rest, so they do
            # not stop the dry run (they stopped it with advice to move them out, though the run itself would start)
            damaged: list[DamagedPart] = []
            purified_old, rejected_old = output_ids(out, so, damaged)
            prior_purified, prior_rejected = len(purified_old), len(rejected_old)
            if damaged:
                first = min(d.path for d in damaged)
                print(f"zip-purify: note: {out} holds {len(damaged)} part file(s) that cannot be read (e.g. "
                      f"{posixpath.basename(posixpath.dirname(first))}/{posixpath.basename(first)}); --overwrite "
                      "deletes them with the rest, and their rows are not in these counts", file=sys.stderr)
        # --retry-rejects: a rejected input is not done; it is read again, and its old reject row goes at the end
        retry = frozenset(rejected_ids) if config.retry_rejects else frozenset()
        skip = purified_ids if config.retry_rejects else purified_ids | rejected_ids
    except JobError:
        raise
    except Exception as err:  # noqa: BLE001 - permanent storage errors stop the job before any work
        raise JobError(f"cannot use output {out}: {describe(err)}") from err
    hidden = HiddenSkipped()
    own_files = output_files_inside_input(config.input, out, so)  # not counted as hidden inputs (a 2nd run's summary)
    try:
        units = with_retries(lambda: discover(config.input, so, config.files_per_unit, hidden, own_files),
                             f"list {config.input}")
    except FileNotFoundError as err:
        raise JobError(f"input {config.input} not found: {describe(err)}") from err
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot list input {config.input}: {describe(err)}") from err
    inside = output_inside_input(config.input, out, so)
    skipped_files, kept_units, excluded = 0, [], 0
    for unit in units:
        if inside is not None:  # the job's own output is not input: reading it back would purify it twice
            pairs = list(zip(unit.paths, unit.sizes or [None] * len(unit.paths), strict=True))
            own = [inside(p) for p, _ in pairs]  # once a path: each is looked up on disk (a link may lead anywhere)
            outside = [pair for pair, mine in zip(pairs, own, strict=True) if not mine]
            foreign = [p for (p, _), mine in zip(pairs, own, strict=True) if mine and not is_written_file(p)]
            if foreign:  # the user's own files, in a folder the job writes its output to: neither read nor skipped
                raise JobError(f"input file {foreign[0]} lies in the data/ or rejects/ folder of --output {out}, which "
                               "the job writes to and does not read; write the output to another folder")
            excluded += len(pairs) - len(outside)
            if not outside:
                continue
            unit = ReadUnit(unit.kind, tuple(p for p, _ in outside), unit.root, tuple(size for _, size in outside),
                            unit.stamps)  # a container is one path: kept whole or not at all
        if unit.kind == "files":
            kept = [(p, size) for p, size in zip(unit.paths, unit.sizes or [None] * len(unit.paths), strict=True)
                    if relative_id(p, unit.root) not in skip]
            skipped_files += len(unit.paths) - len(kept)
            if kept:
                kept_units.append(ReadUnit("files", tuple(p for p, _ in kept), unit.root, tuple(s for _, s in kept)))
        else:
            kept_units.append(unit)
    # Containers (tar, Parquet, zip): each read task gets its own container's done ids (not the whole output's), and
    # one that an earlier complete run read whole and that is unchanged since is not read at all.
    containers = [u for u in kept_units if u.kind != "files"]
    container_done = container_ids(skip, containers) if skip else {}
    tars = {u.paths[0] for u in containers if u.kind == "tar"}
    try:
        ledger = read_ledger(out, so) if containers and state in ("resume", "incremental") else {}
    except Exception as err:  # noqa: BLE001 - read_ledger ignores a bad record; this is storage failing
        raise JobError(f"cannot use output {out}: {describe(err)}") from err
    # A container's '#unreadable' reject is no record of it (not in the digest), but it is done: a shard still
    # broken gives it again, and written twice it would make the run inconsistent.
    broken = {u.paths[0]: f"{relative_id(u.paths[0], u.root)}#unreadable" for u in containers}
    # the done ids of each tar shard that are in data/ and that a name not UTF-8 can give ('\\x'): its read task tells
    # a member added beside one purified earlier under the same id (sources.tar_shards._read_tar)
    escaped = {path: purified for path, ids in container_done.items()
               if path in tars and (purified := [i for i in ids if "\\x" in i and i in purified_ids])}
    # One with such a reject is read again even where the record says it was read whole (an older version recorded
    # it and kept the reject): once it reads whole, the reject goes (`resolved` in _run).
    # So is a shard holding such an id that an older version recorded (not `lookalikes_checked`), once: that version
    # skipped a member added beside the purified one without a word, and recorded the shard as read whole.
    unread = {u.paths[0] for u in containers
              if broken[u.paths[0]] not in rejected_ids and broken[u.paths[0]] not in purified_ids
              and unchanged_and_done(u, u.stamps[0] if u.stamps else None, ledger.get(u.paths[0]),
                                     container_done.get(u.paths[0], []))
              and (u.paths[0] not in escaped or ledger[u.paths[0]].lookalikes_checked)}
    return JobPlan(checkpoint_uri, model_note, ckpt, canvas_size, job_record, state, skip, prior_purified,
                   prior_rejected, [u for u in kept_units if u.kind == "files" or u.paths[0] not in unread],
                   skipped_files, config.in_memory_mb * 2**20, excluded,
                   max_image_bytes=config.max_image_mb * 2**20, stale_lease=stale_lease,
                   container_done={path: ids + [broken[path]] * (broken[path] in skip)
                                   for path, ids in container_done.items() if path not in unread},
                   ledger=ledger, skipped_containers=len(unread),
                   skipped_container_records=sum(ledger[path].records for path in unread), retry=retry,
                   container_purified={path: ids for path, ids in escaped.items() if path not in unread},
                   hidden=hidden)


def _canvas_problem(canvas_size: int, given: bool, pool: int, model_multiple: int) -> str | None:
    """Why the model cannot purify canvases of `canvas_size` px with this pool factor, naming the sizes it takes; None
    when it can. Found here, the run stops before it writes anything (in the purifier actors, it failed after
    recording the size in the output, whose record then refused the corrected command)."""
    multiple = math.lcm(pool, model_multiple)
    if canvas_size % multiple == 0:
        return None
    below = canvas_size // multiple * multiple
    sizes = " or ".join(str(n) for n in (below, below + multiple) if n > 0)
    if not given:
        return (f"pool factor {pool} does not divide the model's canvas size {canvas_size}: give a --pool that divides "
                f"it, or --canvas-size {sizes}")
    why = [f"the model halves its input {model_multiple.bit_length() - 1} times: multiples of {model_multiple}"] * (
        model_multiple > 1) + [f"--pool {pool}: multiples of {pool}"] * (pool > 1)
    return (f"--canvas-size {canvas_size} cannot be used: canvases must be multiples of {multiple} ({'; '.join(why)}); "
            f"use {sizes}")


class _RetriedByRayType(type):
    def __instancecheck__(cls, err: object) -> bool:
        return isinstance(err, Exception) and not isinstance(err, RetriesExhausted)


class RetriedByRay(Exception, metaclass=_RetriedByRayType):
    """Every exception a task raises but a storage operation that has used up its own retries (RetriesExhausted):
    `isinstance(err, RetriedByRay)` says which exceptions Ray retries a task on. Ray's retry_exceptions takes only
    classes to retry, checked with isinstance (Ray Data's UserCodeException unwrapped to the task's own error), and
    RetriesExhausted is an OSError, so no list of plain classes could keep the other OSErrors and leave it out."""


def task_retry_options() -> dict[str, Any]:
    """Ray options of the job's tasks: a task is retried 3 times when its worker dies (a crash, the OOM killer:
    Ray retries those whatever retry_exceptions says) and when it raises, except for a storage give-up. That one
    already retried each request with_retries x botocore times (18); Ray's 3 retries made it 72 requests and 4
    times the wait before a run under a sustained S3 outage failed, and added to the throttling it was waiting out.
    A new list each call: Ray Data appends its RaySystemError to the one it is given."""
    return {"max_retries": 3, "retry_exceptions": [RetriedByRay]}


def progress_total(plan: JobPlan, storage_options: dict[str, Any]) -> int | None:
    """How many images this run will count (purified + rejected): its image files, and the rows of its Parquet files
    from their footers, less those already done; None when a tar shard or zip archive is among the inputs (their
    counts are known only once read) or a footer cannot be read, so the progress shows no total rather than a wrong
    one. Footers are small reads, INDEX_READERS at a time."""
    if any(u.kind not in ("files", "parquet") for u in plan.units):
        return None
    tables = [u for u in plan.units if u.kind == "parquet"]

    def rows(unit: ReadUnit) -> int:
        fs, path = storage_path(unit.paths[0], storage_options)
        with with_retries(lambda: fs.open(path, "rb"), f"open {unit.paths[0]}") as f:
            return pq.ParquetFile(f, pre_buffer=False).metadata.num_rows

    counts: list[int] = []
    if tables:
        from concurrent.futures import ThreadPoolExecutor

        try:
            with ThreadPoolExecutor(min(INDEX_READERS, len(tables)), thread_name_prefix="footer") as pool:
                counts = list(pool.map(rows, tables))
        except Exception:  # noqa: BLE001 - the file's read task will say what is wrong with it; here only the total
            return None
    done = sum(1 for u in tables for id_ in plan.container_done.get(u.paths[0], []) if not id_.endswith("#unreadable"))
    return sum(len(u.paths) for u in plan.units if u.kind == "files") + sum(counts) - done


def _record_containers_read(out: str, storage_options: dict[str, Any], plan: JobPlan,
                            read_whole: list[dict[str, Any]]) -> int | str:
    """Add the containers this complete run read to their end to the output's record of them (pipeline.ledger), so
    that the next --incremental run skips them unread while they stay unchanged; how many were added. Only
    containers whose listing gave a version (ETag, mtime) can be recorded. A failure to write the record loses
    nothing but that saving: the next run reads them again, and the failure is said here and in the summary."""
    stamps = {u.paths[0]: (u.sizes[0] if u.sizes else None, u.stamps[0] if u.stamps else None)
              for u in plan.units if u.kind != "files"}
    added = {}
    for read in read_whole:
        size, stamp = stamps.get(read["path"], (None, None))
        if stamp is not None:
            # a shard whose read task was told its purified ids that a name not UTF-8 gives checked them for look-alikes
            added[read["path"]] = ContainerRead(read["path"], size, stamp, read["records"], read["ids_sha256"],
                                                lookalikes_checked=read["path"] in plan.container_purified)
    if not added:
        return 0
    try:
        write_ledger(out, storage_options, {**plan.ledger, **added})
    except Exception as err:  # noqa: BLE001 - the output is complete; only the next run's saving is lost
        message = f"could not record the containers read ({describe(err)}); the next --incremental run reads them again"
        print(f"zip-purify: warning: {message}", file=sys.stderr)
        return message
    return len(added)


def run_status(read: int, purified: int, rejected: int, rows_before: int, rows_after: int, replaced: int = 0) -> str:
    """"complete" when every input this run read was counted as purified or rejected, and the output's files hold
    exactly those rows on top of the ones they held before, less the `replaced` earlier reject rows that this run's
    reading made out of date (--retry-rejects; '#unreadable' of a container now read whole); else "inconsistent"
    (something was lost or doubled)."""
    counted = read == purified + rejected
    return "complete" if counted and rows_after == rows_before + purified + rejected - replaced else "inconsistent"


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run the job to completion and return the summary it also writes to OUTPUT/_summary.json.

    The run holds the output's lease (`OutputLease`) from its first change to the output (deleting it, with
    --overwrite) until it ends, however it ends; SIGTERM then raises like Ctrl-C, so that the lease is released."""
    started = time.time()
    out = config.output.rstrip("/")

    # 1-2. The model, the output's state and the inputs, all checked before any image is read; then the cluster
    # decides the device, which must suit the precision before an actor is started.
    plan = plan_job(config)
    init_ray(config)
    placement = default_actors_and_gpus(config)
    with signals_interrupt(), OutputLease(out, config.storage_options) as lease:
        if plan.output_state == "overwrite":  # planned, not done: the output may have been another run's until now
            clear_output(out, config.storage_options)
        return _run(config, plan, placement, lease, started)


def _run(config: JobConfig, plan: JobPlan, placement: tuple[int, float, str], lease: OutputLease,
         started: float) -> dict[str, Any]:
    import ray
    import ray.data

    so = config.storage_options
    out = config.output.rstrip("/")
    settings = config.settings()
    policy = config.decode_policy()
    canvas_size, ckpt = plan.canvas_size, plan.checkpoint
    actors, gpus_per_actor, device = placement
    try:
        write_json(f"{out}/{JOB_FILE}", {**plan.job_record, "config": config.public()}, so)
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot write to output {out}: {describe(err)}") from err
    write_json(f"{out}/{SUMMARY_FILE}", {"status": "running", "started": started, "config": config.public()}, so)

    bar: Any = None
    purified = rejected = read = skipped_in_units = psnr_count = unchanged = downscaled = 0
    hidden = HiddenSkipped()  # the listing's hidden files, then the zip members read tasks skipped as hidden
    hidden.count, hidden.examples = plan.hidden.count, list(plan.hidden.examples)
    unpurified: Counter[str] = Counter()  # pass-through column -> purified rows holding an image there, copied as it was
    psnr_sum, psnr_min, downscale_max = 0.0, math.inf, 1.0
    files: list[str] = []
    reported: dict[str, int] = {}  # part files the pipeline reported written ('data/part-....parquet') -> rows
    before: dict[str, str | None] | set[str] | None = None  # the output's part files when this run began -> their
    # listing stamps; None until listed
    read_whole: list[dict[str, Any]] = []  # containers (tar, Parquet, zip) this run read to their end
    earlier = (plan.done_purified, plan.done_rejected) if plan.output_state in ("resume", "incremental") else (0, 0)

    def record_stop(status: str, details: dict[str, Any]) -> str:
        """Say in the summary how a run that did not finish ended, with what it wrote: counted in the output (see
        count_stopped_run), as the pipeline's own counts lag the files that have landed."""
        if bar is not None:
            bar.close()
        if lease.lost is not None:  # the output's summary is the other run's now
            return "the summary was left to that run"
        # an actor's error may quote the checkpoint's URL (a checkpoint it could not read): not its credentials
        details = {k: redact_uri_secrets(v, plan.checkpoint_uri) if isinstance(v, str) else v for k, v in details.items()}
        count = count_stopped_run(out, so, before, reported, plan.retry)  # a second Ctrl-C may cut this short
        _IGNORE_STOPS.set()  # but not the summary's write
        done = {"read": max(read, count.purified + count.rejected),  # each row written was read; that count lags too
                "purified": count.purified, "rejected": count.rejected,
                "skipped_already_done": plan.skipped_files + plan.skipped_container_records + skipped_in_units,
                # as a finished run's: the listing's, and the zip members of the read tasks that reported so far
                "hidden_skipped": hidden.count, "hidden_skipped_examples": hidden.examples,
                "unpurified_image_columns": dict(sorted(unpurified.items())),
                "files_written": count.files,
                "counted": "from the part files this run wrote, after it stopped" if count.short is None else
                           f"at least: {count.short}",
                "wall_s": round(time.time() - started, 2)}
        if plan.retry:  # earlier rejects read again and written again: counted once each, as the next run will
            done["rejects_retried"] = count.retried
        totals = {**stopped_totals(earlier, count, plan.retry),
                  "before_this_run": {"purified": earlier[0], "rejected": earlier[1]}}
        write_json(f"{out}/{SUMMARY_FILE}", {
            "status": status, **details, "this_run": done, "output_totals": totals,
            "resume": "run the same command again: inputs already in data/ or rejects/ are skipped, the rest are read",
            "config": config.public(), "started": started, "stopped": time.time()}, so)
        least = "" if count.short is None else "at least "
        files = f"{count.files} part file{'' if count.files == 1 else 's'}"
        return (f"this run wrote {least}{count.purified} purified and {count.rejected} rejected ({files}), so the "
                f"output now holds {least}{totals['purified']} purified and {totals['rejected']} rejected"
                + ("" if count.short is None else f" ({count.short})")
                + (f"; {hidden_note(hidden.count, hidden.examples)}" if hidden.count else ""))

    with record_stopped_run(record_stop, out):
        # Temporary files a killed run or a refused delete left behind (hidden, skipped by every reader); only old
        # ones, since a younger one may be another write still under way.
        fs_out, out_path = storage_path(out, so)
        for folder in (DATA_DIR, REJECTS_DIR):
            remove_stale_temporaries(fs_out, posixpath.join(out_path, folder))
        # What the output holds now, for a stopped run to tell its own files from these (one listing; a new output,
        # or one --overwrite cleared, holds none)
        before = part_names(out, so) if plan.output_state in ("resume", "incremental") else set()

        # 3. The pipeline.
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # one bar of our own, in images, below
        # Blocks between the fused read -> decode -> tile steps are buffered up to this size; Ray's 128 MiB default
        # let a large tar shard's decoded images pile up several times over in one worker (bench/job_bench.py
        # memory --layout tar). Our records are small and the model, not block overhead, sets the pace.
        ctx.target_max_block_size = BLOCK_BYTES
        ctx.actor_task_retry_on_errors = True  # an exception inside a purify batch is retried (max_task_retries below)
        # Retries are set on purpose below; Ray 2.60 has no named parameter for them yet, only the
        # (deprecated) remote-args route, so silence that warning rather than the setting.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        threads = cpu_actor_threads(config, actors, gpus_per_actor)
        # CPU stages are light next to the model; a fractional CPU lets them run beside the purifier
        # actors, so finished batches are written while others are still purifying (streaming).
        task_retries = {**task_retry_options(), "num_cpus": config.cpus_per_task}
        # Image files already done were dropped from the units; a container's done ids travel with its own row.
        rows = [{**u.to_row(), "skip": plan.container_done.get(u.paths[0], []) if u.kind != "files" else [],
                 "purified": plan.container_purified.get(u.paths[0], [])}
                for u in plan.units] or [{**ReadUnit("files", (), "").to_row(), "skip": [], "purified": []}]
        # One input block per unit: each unit is read by its own task and flows downstream on its own, so the
        # pipeline streams (one big block would be read, purified and written as a whole).
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        # Batch sizes: read takes one unit per task and yields its records --tile-batch at a time; decode and
        # tile work on whatever block a read produced (batch_size=None). Explicit row counts there would make
        # Ray bundle that many *units* into one fused read task and stop the pipeline from streaming.
        ds = ds.map_batches(read_stage, batch_size=1, fn_kwargs=dict(
            storage_options=so, labels_from_folders=config.labels_from_folders, image_column=config.image_column,
            skip_ids=frozenset(), max_records=config.tile_batch, in_memory_bytes=config.in_memory_mb * 2**20,
            max_image_bytes=config.max_image_mb * 2**20),
            **task_retries)
        ds = ds.map_batches(decode_stage, batch_size=None, fn_kwargs=dict(policy=policy), **task_retries)
        ds = ds.map_batches(tile_stage, batch_size=None, fn_kwargs=dict(
            canvas_size=canvas_size, align=settings.pool, large_images=settings.large_images, seed=settings.seed,
            max_images=config.tile_batch), **task_retries)
        ds = ds.map_batches(
            PurifyStage,
            batch_size=config.batch_size or default_batch_size(canvas_size),
            fn_constructor_kwargs=dict(
                checkpoint=plan.checkpoint_uri, checkpoint_sha256=ckpt.sha256, settings=settings.to_dict(),
                preset=config.preset, flags=config.flags, storage_options=so, device=device,
                precision=config.precision, canvas_size=canvas_size, torch_threads=threads, batch_size=config.batch_size),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_gpus=gpus_per_actor or None, num_cpus=config.cpus_per_actor,
            max_restarts=3, max_task_retries=3,  # a crashed actor is replaced and its batch retried
        )
        # Each purified batch is untiled, encoded and written as it arrives (files of <= write_batch rows).
        ds = ds.map_batches(untile_stage, batch_size=None, fn_kwargs=dict(
            canvas_size=canvas_size, align=settings.pool, max_bytes=BLOCK_BYTES), **task_retries)
        ds = ds.map_batches(encode_stage, batch_size=None, **task_retries)
        ds = ds.map_batches(write_stage, batch_size=None, fn_kwargs=dict(
            output=out, storage_options=so, max_rows_per_file=config.write_batch), **task_retries)

        if config.progress:
            bar = progress_bar(progress_total(plan, so), "purified", "img", sys.stderr)
        units_read = 0
        rows_iter = iter(ds.iter_rows())
        # closed on the way out, whatever stops the loop: Ray Data then stops its tasks, so no file lands while a
        # stopped run counts what it wrote (left to the garbage collector, the pipeline ran on meanwhile)
        with contextlib.closing(rows_iter):
            for row in rows_iter:
                psnr_sum += float(row["psnr_sum"])
                psnr_count += int(row["psnr_count"])
                psnr_min = min(psnr_min, float(row["psnr_min"]))
                unchanged += int(row["unchanged"])
                downscaled += int(row["downscaled"])
                downscale_max = max(downscale_max, float(row["downscale_max"]))
                purified += int(row["purified"])
                rejected += int(row["rejected"])
                read += int(row["read"])
                skipped_in_units += int(row["skipped"])
                hidden.count += int(row["hidden"])
                hidden.examples += json.loads(row["hidden_examples"])[: HIDDEN_EXAMPLES - len(hidden.examples)]
                unpurified.update(json.loads(row["unpurified_images"]))
                files += json.loads(row["files"])
                reported.update(json.loads(row["file_rows"]))
                read_whole.extend(json.loads(row["containers"]))
                lease.check()
                units_read += int(row["units_read"])
                if bar is not None:
                    # Tar shards and zip archives hold an unknown number of images: no total, so say how many of the
                    # read tasks (one per shard or file) are done, for the user to judge how far the run is.
                    shown = {"rejected": rejected} if bar.total is not None else {
                        "rejected": rejected, "read_tasks": f"{min(units_read, len(plan.units))}/{len(plan.units)}"}
                    bar.set_postfix(**shown)  # before update: a log's minute line is printed by update
                    bar.update(int(row["purified"]) + int(row["rejected"]))
        # Every file the pipeline wrote is reported now; the end-of-run check below rewrites earlier files under their
        # own names, and a stop there must not count their rows as this run's: names only, no stamps compared.
        before = set(before)
        if bar is not None:
            bar.close()
        wall = time.time() - started

        # 4. Summary: this run's counts, and the whole output's. Not when another run has taken the output over:
        # the duplicate check rewrites files, and that run's end does it.
        lease.check()
        # a container read to its end this run: an '#unreadable' reject an earlier run left for it is out of date
        roots = {u.paths[0]: u.root for u in plan.units if u.kind != "files"}
        resolved = {f"{relative_id(r['path'], roots[r['path']])}#unreadable" for r in read_whole if r["path"] in roots}
        # and so is the reject an older version gave a tar shard's numbered names ('s.tar/cat' for cat.0.jpg, ...)
        superseded = {id_ for r in read_whole for id_ in r.get("superseded", [])}
        # and so is a shard's look-alike reject that its reading did not give this time (one of the members renamed)
        shards = {relative_id(r["path"], roots[r["path"]]) for r in read_whole if r["path"] in roots}
        held = [*(id_ for r in read_whole for id_ in plan.container_done.get(r["path"], [])), *plan.retry]
        outdated = {id_ for id_ in held if LOOKALIKE in id_ and id_.partition(LOOKALIKE)[0] in shards}
        outdated -= {id_ for r in read_whole for id_ in r.get("lookalike", [])}
        resolved |= superseded | outdated
        rows = deduplicate_output(out, so, written=files, retried=plan.retry, resolved=resolved)
        duplicates_removed, total_purified, total_rejected = rows.duplicates_removed, rows.purified, rows.rejected
        replaced = rows.retried_purified + rows.retried_rejected + rows.stale_rejects_removed
        retyped = unify_output_types(out, so, rows.data_schemas)
    summary = {
        "status": run_status(read, purified, rejected,
                             plan.done_purified + plan.done_rejected if plan.output_state in ("resume", "incremental")
                             else 0, total_purified + total_rejected, replaced),
        "this_run": {"read": read, "purified": purified, "rejected": rejected,
                     "skipped_already_done": plan.skipped_files + plan.skipped_container_records + skipped_in_units,
                     # containers read whole by an earlier complete run and unchanged: not read
                     "containers_skipped_unread": plan.skipped_containers,
                     # hidden entries (.x, _x): files and zip members left out, not read (not in "read")
                     "hidden_skipped": hidden.count, "hidden_skipped_examples": hidden.examples,
                     # pass-through columns holding images, copied unpurified: column -> rows this run
                     "unpurified_image_columns": dict(sorted(unpurified.items())),
                     "files_written": len(files), "duplicates_removed": duplicates_removed,
                     # --retry-rejects: earlier rejects read again, now purified or rejected again (the new reason
                     # kept); those whose input is gone keep their old row
                     "rejects_retried": {"earlier_rejects": len(plan.retry), "purified_now": rows.retried_purified,
                                         "rejected_again": rows.retried_rejected,
                                         "containers_now_read_whole": len(plan.retry & (resolved - superseded - outdated)),
                                         "superseded": len(plan.retry & superseded),
                                         "lookalikes_renamed": len(plan.retry & outdated)},
                     # reject rows this run's reading made untrue, removed: '#unreadable' of tar/Parquet/zip files
                     # read to their end, an older version's one reject for a tar shard's numbered names, and a
                     # look-alike reject whose members no longer share an id
                     "stale_rejects_removed": rows.stale_rejects_removed,
                     # pass-through columns whose type differed between part files, and the one type they now have
                     "columns_retyped": retyped,
                     # rejects/ files an older version wrote without a column (rejected_at), rewritten with it as nulls
                     "rejects_files_upgraded": rows.rejects_files_upgraded,
                     "wall_s": round(wall, 2),
                     "images_per_s": round((purified + rejected) / wall, 3) if wall else None,
                     # how much purification changed the images (per image in data/, column psnr_vs_input_db)
                     "psnr_vs_input_db": {"mean": round(psnr_sum / psnr_count, 2) if psnr_count else None,
                                          "min": psnr_min if psnr_count else None, "unchanged": unchanged},
                     # images larger than the model, shrunk to fit its canvas (per image: column downscale_factor)
                     "downscaled": {"images": downscaled, "max_factor": downscale_max}},
        "output_totals": {"purified": total_purified, "rejected": total_rejected,
                          "before_this_run": {"purified": plan.done_purified, "rejected": plan.done_rejected}},
        "model": {"checkpoint": redact_uri(plan.checkpoint_uri), "sha256": ckpt.sha256, "note": plan.model_note,
                  "canvas_size": canvas_size,
                  "flags": ckpt.config.to_flags(), "meta": ckpt.meta},
        "ray": {"actors": actors, "gpus_per_actor": gpus_per_actor, "device": device,
                "torch_threads": "all cores of the actor's node" if threads == ALL_CORES else threads},
        "config": config.public(),
        "started": started,
        "finished": time.time(),
    }
    if summary["status"] == "complete":
        summary["this_run"]["containers_recorded"] = _record_containers_read(out, so, plan, read_whole)
    write_json(f"{out}/{SUMMARY_FILE}", summary, so)
    if summary["status"] != "complete":
        raise JobFailed(f"read {read} inputs and counted {purified} purified + {rejected} rejected; the output now holds "
                       f"{total_purified} purified + {total_rejected} rejected rows in all; see {out}/{SUMMARY_FILE}")
    return summary

