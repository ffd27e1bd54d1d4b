"""The streaming purification job: object storage in, purified Parquet out, on Ray Data.

Before any image is read, `pipeline.plan.plan_job` checks the configuration (`pipeline.config.JobConfig`), the
checkpoint, the output and the input, and lists the read units; a dry run stops there. Read top to bottom, the
pipeline is then:

    units   = discover(input)                       # files / tar shards / Parquet files / zip archives, sorted
    read    → raw bytes per image (skipping ids already in the output)
    decode  → RGB pixels, or a reject with the reason
    tile    → model-size canvases (by size and order, never by label)
    purify  → ZIP on an actor pool, one diffusion model per actor (GPU when there is one)
    untile  → one record per image, original size
    encode  → lossless PNG
    write   → OUTPUT/data/part-*.parquet and OUTPUT/rejects/part-*.parquet, one atomic file per batch

The driver then writes OUTPUT/_summary.json (counts, timing, configuration, checkpoint sha256). A run stopped by
Ctrl-C, SIGTERM or a failed batch writes it too, with what it wrote counted from its files (`pipeline.stopped_run`).
A run whose plan leaves nothing to read (a scheduled --incremental run with nothing new) starts no Ray and builds no
pipeline; it does the rest all the same: the lease, the end-of-run check, the records and the summary.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import posixpath
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow.parquet as pq

from pipeline.cancelled_tasks import cancelled_tasks_awaited
from pipeline.changes import INPUTS_DIR, InputRecord, starting_record, write_record
from pipeline.config import JobConfig
from pipeline.errors import JobError, JobFailed, NotOnThisNodeError
from pipeline.lease import LEASE_FILE, OutputLease
from pipeline.ledger import LEDGER_DIR, ContainerRead, tar_ids_named_otherwise, write_ledger
from pipeline.output import (
    INDEX_READERS,
    JOB_FILE,
    RUNS_DIR,
    SUMMARY_FILE,
    OutputRows,
    clear_output,
    columns_differing_in_case,
    deduplicate_output,
    drop_superseded_rows,
    part_file_ids,
    run_history_path,
    unify_output_types,
    write_json,
)
from pipeline.placement import (
    actor_cpus,
    actors_started,
    cluster_wait_warning,
    cpu_actor_threads,
    cpu_cluster_note,
    default_actors_and_gpus,
    init_ray,
    node_loss_watched,
    purifier_actor_table,
    ray_data_console_quieted,
    with_fitted_actor_cpus,
)
from pipeline.plan import JobPlan, plan_job, require_job_config, uri_secrets_redacted, without_uri_secrets
from pipeline.progress import kept_alive, progress_bar
from pipeline.purifier import default_batch_size
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.refresh import REFRESH_DIR, Journal, read_journal, remove_journal, write_journal
from pipeline.sources import HIDDEN_EXAMPLES, LOOKALIKE, HiddenSkipped, ReadUnit, hidden_note, relative_id
from pipeline.sources.arrow_ipc import ipc_headers, is_arrow_ipc
from pipeline.sources.folder_metadata import ArchiveMetadata, metadata_report, unit_metadata
from pipeline.sources.parquet_files import NoImageColumn, find_image_column
from pipeline.sources.read_budget import ReadBudget
from pipeline.sources.reading import read_to_lasting_reject
from pipeline.sources.sidecar_files import unit_sidecars
from pipeline.sources.tar_count import count_keys
from pipeline.sources.tfrecord_count import count_records
from pipeline.sources.tfrecord_files import is_tfrecord
from pipeline.stages import (
    ALL_CORES,
    DATA_DIR,
    PURIFIER_RESTARTS,
    REJECTS_DIR,
    PurifyStage,
    as_the_driver_sees,
    driver_faults,
    encode_stage,
    read_decode_tile_stage,
    untile_stage,
    write_stage,
)
from pipeline.stopped_run import (
    IGNORE_STOPS,
    StoppedCount,
    StoppedWhileLoading,
    count_stopped_run,
    part_names,
    record_stopped_run,
    resume_advice,
    signals_deferred,
    signals_interrupt,
    stopped_totals,
)
from pipeline.storage import (
    RetriesExhausted,
    concurrent_reads,
    describe,
    remove_stale_temporaries,
    storage_path,
    with_retries,
)
from pipeline.version import versions

BLOCK_BYTES = 16 * 1024 * 1024  # target size of the job's Ray Data blocks (see run_job)


class _RetriedByRayType(type):
    def __instancecheck__(cls, err: object) -> bool:
        return isinstance(err, Exception) and not isinstance(err, (RetriesExhausted, NotOnThisNodeError))


class RetriedByRay(Exception, metaclass=_RetriedByRayType):
    """Every exception a task raises but a storage operation that has used up its own retries (RetriesExhausted) and a
    local path not there on the task's node (NotOnThisNodeError, which another try does not change):
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
    from their footers, of its Arrow IPC files from their record batch headers (`arrow_ipc.ipc_headers`) and of its
    TFRecord files from TFDS's dataset_info.json or their records' headers (`tfrecord_count`), of its tar shards'
    keys from their members' headers (`tar_count`), less those already done; None when a zip archive is among the
    inputs (its count is known only once read), or a footer or header cannot be read, a TFRecord file not counted
    (compressed) or a tar shard (damaged, or compressed shards past the bytes decompressed to count them), or the
    headers would take more ranged requests than the one budget of them all allows (`read_budget`), so the progress
    shows no total rather than a wrong one, nor a slow start. Footers and headers are small reads, INDEX_READERS files
    at a time."""
    if any(u.kind not in ("files", "parquet", "tar") for u in plan.units):
        return None
    tables = [u for u in plan.units if u.kind == "parquet"]
    budget = ReadBudget()
    records = count_records([u for u in tables if is_tfrecord(u.paths[0])], storage_options, budget)
    if records is None:
        return None

    image_column = plan.job_record["reading"].get("image_column")

    def rows(unit: ReadUnit) -> int:
        # a table without an image column (a sample index) gives its one reject, not a record a row
        if is_tfrecord(unit.paths[0]):
            return records[unit.paths[0]]
        if is_arrow_ipc(unit.paths[0]):
            headers = ipc_headers(unit.paths[0], storage_options, unit.sizes[0] if unit.sizes else None, budget)
            return headers.rows if _has_image_column(headers.schema, image_column) else 1
        fs, path = storage_path(unit.paths[0], storage_options)
        with with_retries(lambda: fs.open(path, "rb"), f"open {unit.paths[0]}") as f:
            footer = pq.ParquetFile(f, pre_buffer=False)
            return footer.metadata.num_rows if _has_image_column(footer.schema_arrow, image_column) else 1

    counts: list[int] = []
    if tables:
        from concurrent.futures import ThreadPoolExecutor

        try:
            # one at a time on FTP/SFTP (`concurrent_calls`)
            threads = concurrent_reads(tables[0].paths[0], INDEX_READERS)
            with ThreadPoolExecutor(min(threads, len(tables)), thread_name_prefix="footer") as pool:
                counts = list(pool.map(rows, tables))
        except Exception:  # noqa: BLE001 - the file's read task will say what is wrong with it; here only the total
            return None
    shards = [u for u in plan.units if u.kind == "tar"]
    keys = count_keys(shards, storage_options, plan.container_done, plan.job_record["reading"]["join_metadata"], budget)
    if keys.left is None:
        return None
    done = sum(1 for u in tables for id_ in plan.container_done.get(u.paths[0], []) if not id_.endswith("#unreadable"))
    return sum(len(u.paths) for u in plan.units if u.kind == "files") + sum(counts) - done + keys.left


def _has_image_column(schema: Any, image_column: str | None) -> bool:
    """Whether a table of `schema` has an image column (`find_image_column`; one named by --image-column that it lacks
    counts as one: its read task says so)."""
    try:
        find_image_column(schema, image_column)
    except NoImageColumn:
        return False
    except ValueError:
        return True
    return True


def _record_containers_read(out: str, storage_options: dict[str, Any], plan: JobPlan,
                            read_whole: list[dict[str, Any]], removed: set[str] | frozenset[str] = frozenset(),
                            refresh_left: frozenset[str] = frozenset()) -> int | str:
    """Add the containers this complete run read to their end to the output's record of them (pipeline.ledger), so
    that the next --incremental run skips them unread while they stay unchanged, with those the planning read whole
    and found as their rows were made (`JobPlan.ledger_checked`); how many were added. Only
    containers whose listing gave a version (ETag, mtime) can be recorded. A failure to write the record loses
    nothing but that saving: the next run reads them again, and the failure is said here and in the summary.
    `removed`: the reject rows this run's end-of-run check took out, which are no longer left over from the container;
    `refresh_left`: the rows --refresh-changed set out to replace and kept, as the container's new read no longer gave
    them: left over from it (its read task was not told them as done).
    Entries of containers the listing no longer gives are dropped: over a bucket whose shards are deleted once
    purified, the record grew with every shard ever read, and every run read and rewrote it whole."""
    stamps = {u.paths[0]: (u.sizes[0] if u.sizes else None, u.stamps[0] if u.stamps else None)
              for u in plan.units if u.kind != "files"}
    refreshed = {u.paths[0]: plan.changes.refreshed.get(relative_id(u.paths[0], u.root), [])
                 for u in plan.units if u.kind != "files"} if refresh_left else {}
    added = {}
    for read in read_whole:
        size, stamp = stamps.get(read["path"], (None, None))
        if stamp is not None:
            # a shard whose read task was told its purified ids that a name not UTF-8 gives checked them for look-alikes
            left = [i for i in refreshed.get(read["path"], ()) if i in refresh_left]
            if read_to_lasting_reject(read) and left:
                continue  # a changed container that now gives only its lasting reject keeps its earlier rows
            leftover = tuple(sorted({*(i for i in read.get("leftover", ()) if i not in removed), *left}))
            added[read["path"]] = ContainerRead(read["path"], size, stamp, read["records"], read["ids_sha256"],
                                                lookalikes_checked=read["path"] in plan.container_purified,
                                                leftover=leftover, lasting_reject=read_to_lasting_reject(read))
    listed = plan.listed_containers
    # plan.ledger holds the entries the planning made of containers it read whole (`JobPlan.ledger_checked`): kept
    kept = plan.ledger if listed is None else {path: entry for path, entry in plan.ledger.items() if path in listed}
    if not added and len(kept) == len(plan.ledger) and not plan.ledger_checked:
        return 0
    try:
        write_ledger(out, storage_options, {**kept, **added})
    except Exception as err:  # noqa: BLE001 - the output is complete; only the next run's saving is lost
        # the error names the record's URI: a server's password in --output (ftp://user:password@host/out) hidden, here
        # and in the summary
        message = redact_uri_secrets(f"could not record the containers read ({describe(err)}); the next --incremental "
                                     "run reads them again", out)
        print(f"zip-purify: warning: {message}", file=sys.stderr)
        return message
    return len(set(added) | (plan.ledger_checked & set(kept)))


def _record_inputs_read_again(out: str, storage_options: dict[str, Any], plan: JobPlan,
                              read_whole: list[dict[str, Any]] | None = None,
                              refresh_left: frozenset[str] = frozenset()) -> None:
    """Once a run is complete, the changed inputs it read again (`ChangedInputs.pending`) get their new stamps in the
    record of the inputs, but for one that --refresh-changed read again and that gave no new row for some of its old
    ones without being read to its end (`refresh_left`: a container that cannot be read now): its old rows stay, said
    changed by every later run. A failure to write it loses nothing: the next run reads them again (--retry-rejects,
    --refresh-changed) or says their rows are of an earlier version, and the failure is said here."""
    if plan.input_record is None or not plan.changes.pending:
        return
    record = plan.input_record
    if refresh_left:
        # once: built for each unit, 8,000 shards took 25 s here
        read = {r["path"] for r in read_whole or () if not read_to_lasting_reject(r)}
        whole = {relative_id(u.paths[0], u.root) for u in plan.units if u.kind != "files" and u.paths[0] in read}
        unsettled = {input_id for input_id, ids in plan.changes.refreshed.items()
                     if input_id not in whole and refresh_left.intersection(ids)}
        record = InputRecord(record.location, {**record.stamps,
                                               **{i: plan.changes.pending[i] for i in unsettled}})
    try:
        write_record(out, storage_options, record)
    except Exception as err:  # noqa: BLE001 - the output is complete
        print(redact_uri_secrets(f"zip-purify: warning: could not record the inputs read again ({describe(err)}); the next "
                                 "run may say they changed since their rows were written", out), file=sys.stderr)


def run_status(read: int, purified: int, rejected: int, rows_before: int, rows_after: int, replaced: int = 0) -> str:
    """"complete" when every input this run read was counted as purified or rejected, and the output's files hold
    exactly those rows on top of the ones they held before, less the `replaced` earlier reject rows that this run's
    reading made out of date (--retry-rejects; '#unreadable' of a container now read whole); else "inconsistent"
    (something was lost or doubled)."""
    counted = read == purified + rejected
    return "complete" if counted and rows_after == rows_before + purified + rejected - replaced else "inconsistent"


# Ray Data runs a pipeline from a thread of this name (its executor: a threading.Thread); closing the pipeline waits
# 2 s for it, then goes on without it.
EXECUTOR_THREAD_PREFIX = "StreamingExecutor-"
EXECUTOR_JOIN_S = 60.0


@contextlib.contextmanager
def pipeline_closed_on_exit(rows: Iterator[Any]) -> Iterator[None]:
    """Close the pipeline's row iterator on the way out, however the run leaves (Ctrl-C, a failed batch, the end),
    shut down the executor it started, and wait for the executor's thread to end. A thread still starting the purifier
    actors (Ctrl-C in a run's first seconds) ran on past the 2 s Ray Data gives it, and used Ray after the process had
    shut Ray down at exit, which then ended the process with status 1 instead of 130.

    Closing the iterator shuts the executor down only once the iterator holds it. A Ctrl-C while Ray Data was still
    setting the iteration up (its executor started, not yet handed over) left the executor running: the pipeline
    purified on while the run waited for its thread, and the executor was shut down only when the garbage collector
    freed it, after the run's `interrupted:` line, which Ray Data's "Dataset ... execution finished in ... seconds" then
    followed on stderr (its lines are quieted only while the run's pipeline runs: `placement.ray_data_console_quieted`).
    Shutting down an executor that is shut down already does nothing. Either way the executor's shutdown returns only
    once its tasks have ended (`pipeline.cancelled_tasks`): a stopped run then counts every file they wrote."""
    with cancelled_tasks_awaited():  # and once shut down, none of its tasks is still writing a part file
        before = set(threading.enumerate())
        stopping: KeyboardInterrupt | None = None
        try:
            yield
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM raised as one (`stopped_run.signals_interrupt`)
            stopping = err
            raise
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
            if stopping is not None:
                # An executor whose thread has ended already (a short pipeline done meanwhile) is held only by the
                # finished frames of Ray Data's calls that the interrupt came through: freed now, it is shut down now,
                # while its lines are quieted (the frames' lines stay in the traceback, not their variables).
                traceback.clear_frames(stopping.__traceback__)
                gc.collect()
            for thread in set(threading.enumerate()) - before:
                if thread.name.startswith(EXECUTOR_THREAD_PREFIX):
                    shutdown = getattr(thread, "shutdown", None)
                    if callable(shutdown):
                        shutdown(force=True)
                    thread.join(EXECUTOR_JOIN_S)


def run_job(config: JobConfig, *, overwrite_file: str | None = None) -> dict[str, Any]:
    """Run the job to completion and return the summary it also writes to OUTPUT/_summary.json.

    The run holds the output's lease (`OutputLease`) from its first change to the output (deleting it, with
    --overwrite) until it ends, however it ends; SIGTERM then raises like Ctrl-C, so that the lease is released.
    Ray is started (or joined) only when the plan leaves something to read; a Ray the caller started is used as it
    is, and left running either way. `overwrite_file`: the --config file that says overwrite: true, which a stopped
    --overwrite run's advice names as the file to remove it from (`stopped_run.resume_advice`). A JobError it raises
    names no credential of the run's URIs (a password in an FTP URL, a presigned URL's signature): a program logs it,
    as the command line prints it, without them."""
    try:
        return _run_job(config, overwrite_file)
    except JobError as err:
        without_uri_secrets(err, config)
        raise


def _run_job(config: JobConfig, overwrite_file: str | None) -> dict[str, Any]:
    started = time.time()
    require_job_config(config, "run_job")

    # 1-2. The model, the output's state and the inputs, all checked before any image is read; then the cluster
    # decides the device, which must suit the precision before an actor is started.
    # SIGTERM is raised as Ctrl-C is from here: while the run loads too (its default ended the process without a word)
    with signals_interrupt():
        try:
            plan = plan_job(config)
            total = _progress_total_meanwhile(config, plan)
            # Nothing left to read (a scheduled --incremental run with nothing new, say): no Ray, no actor, no
            # pipeline. The run is otherwise the same: it holds the lease, clears an --overwrite output, does the
            # end-of-run check, records what a complete run records and writes its summary.
            config, placement = _start_cluster(config) if plan.units else (config, None)
            if total is not None:  # its reads end before the output's are made: FTP, SFTP serve one at a time
                wait([total])
        except KeyboardInterrupt as err:  # Ctrl-C (or SIGTERM, raised as one) before anything is written: said so
            raise StoppedWhileLoading(getattr(err, "signum", signal.SIGINT)) from err
        out = config.output.rstrip("/")  # checked by plan_job: a str
        with OutputLease(out, config.storage_options) as lease:
            if plan.output_state == "overwrite":  # planned, not done: the output may have been another run's until now
                clear_output(out, config.storage_options)
            return _run(config, plan, placement, lease, started, overwrite_file, total)


def _progress_total_meanwhile(config: JobConfig, plan: JobPlan) -> Future[int | None] | None:
    """The progress total (`progress_total`), counted in a thread of its own while Ray starts (the run waits for it
    before it takes the output's lease): decompressing a compressed tar shard to count it took 1.8 s for GTSRB's test
    .tar.xz (25 MiB), Ray's local start 2.9 s (both measured on a loaded 2-core machine). None where the run shows no
    progress or reads nothing."""
    if not (config.progress and plan.units):
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="progress-total")
    try:
        return pool.submit(progress_total, plan, config.storage_options)
    finally:
        pool.shutdown(wait=False)  # its thread ends with the count (bounded, `read_budget`, `tar_count`)


def _start_cluster(config: JobConfig) -> tuple[JobConfig, tuple[int, float, str]]:
    """Start or join Ray, then decide the purifier actors' placement from the cluster (`pipeline.placement`): the
    config the run goes on with (its actors' CPUs decided, `with_fitted_actor_cpus`) and (actors, GPUs each, device)."""
    with signals_deferred():  # Ctrl-C while Ray starts stops the run once Ray has started whole
        init_ray(config)
    config, note = with_fitted_actor_cpus(config)
    if note:
        print(f"zip-purify: note: {note}", file=sys.stderr)
    placement = default_actors_and_gpus(config)
    for line in (cpu_cluster_note(config, placement[1]), cluster_wait_warning(config, placement[1])):
        if line:  # notes: an autoscaling cluster starts its GPU nodes only when asked, and the run waits for them
            print(f"zip-purify: note: {line}", file=sys.stderr)
    return config, placement


@dataclass
class RunTally:
    """This run's counts as the pipeline reports them: one row per batch written (`write_stage`), summed here."""

    hidden: HiddenSkipped  # the listing's hidden files, then the zip members read tasks skipped as hidden
    read: int = 0
    purified: int = 0
    rejected: int = 0
    skipped_in_units: int = 0  # done ids a read task skipped inside its container
    units_read: int = 0
    psnr_sum: float = 0.0
    psnr_count: int = 0
    psnr_min: float = math.inf
    unchanged: int = 0
    downscaled: int = 0
    downscale_max: float = 1.0
    unpurified: Counter[str] = field(default_factory=Counter)  # pass-through column -> images copied unpurified
    files: list[str] = field(default_factory=list)
    reported: dict[str, int] = field(default_factory=dict)  # part files reported written ('data/part-...') -> rows
    read_whole: list[dict[str, Any]] = field(default_factory=list)  # containers this run read to their end
    # metadata members joined inside zip archives and tar shards, and their rows naming no member
    archive_metadata: ArchiveMetadata = field(default_factory=ArchiveMetadata)

    def add(self, row: dict[str, Any]) -> None:
        self.psnr_sum += float(row["psnr_sum"])
        self.psnr_count += int(row["psnr_count"])
        self.psnr_min = min(self.psnr_min, float(row["psnr_min"]))
        self.unchanged += int(row["unchanged"])
        self.downscaled += int(row["downscaled"])
        self.downscale_max = max(self.downscale_max, float(row["downscale_max"]))
        self.purified += int(row["purified"])
        self.rejected += int(row["rejected"])
        self.read += int(row["read"])
        self.skipped_in_units += int(row["skipped"])
        self.hidden.count += int(row["hidden"])
        self.hidden.examples += json.loads(row["hidden_examples"])[: HIDDEN_EXAMPLES - len(self.hidden.examples)]
        self.unpurified.update(json.loads(row["unpurified_images"]))
        self.files += json.loads(row["files"])
        self.reported.update(json.loads(row["file_rows"]))
        self.read_whole.extend(json.loads(row["containers"]))
        if row.get("archive_metadata"):  # (a row of a test's making may have none)
            joined = json.loads(row["archive_metadata"])
            self.archive_metadata.add(joined["joined"], joined["unmatched"], joined["unmatched_examples"])
        self.units_read += int(row["units_read"])

    def skipped_already_done(self, plan: JobPlan) -> int:
        return plan.skipped_files + plan.skipped_container_records + self.skipped_in_units


# Ray Data's warning for options passed as ray_remote_args (`max_retries=3` to map_batches), from Ray 2.60 on
RAY_REMOTE_ARGS_DEPRECATED = r".*ray_remote_args.*deprecated"


def configure_ray_data() -> None:
    """The Ray Data settings the job's pipeline relies on (the driver's context, read when the pipeline starts)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar of our own, in images (see _run)
    # ...about which Ray Data then logs, once a process, "Progress bars disabled. To enable, set
    # `ray.data.DataContext.get_current().enable_progress_bars = True`": advice no user of the job can follow. Taking
    # its once-only key here leaves it unsaid.
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")
    # Blocks between the fused read -> decode -> tile steps are buffered up to this size; Ray's 128 MiB default
    # let a large tar shard's decoded images pile up several times over in one worker (bench/job_bench.py
    # memory --layout tar). Our records are small and the model, not block overhead, sets the pace.
    ctx.target_max_block_size = BLOCK_BYTES
    # Ray does not retry an exception raised inside a purify batch: PurifyStage tries such a batch again itself, a
    # bounded number of times. Ray's retries of the purifier's tasks are for the actor's loss alone
    # (build_pipeline: max_task_retries=-1), which an exception retried by Ray would turn into a hang.
    ctx.actor_task_retry_on_errors = False
    # Retries are set on purpose (build_pipeline); Ray 2.60 has no named parameter for them yet, only the
    # (deprecated) remote-args route, so silence that warning rather than the setting: for build_pipeline's calls
    # alone (Ray Data attributes it to the module that called map_batches). The filter list is the process's: without
    # `module`, a program that called run_job never again heard of its own map_batches' ray_remote_args.
    warnings.filterwarnings("ignore", message=RAY_REMOTE_ARGS_DEPRECATED, module=rf"{re.escape(__name__)}\Z")


# The DataContext fields configure_ray_data sets: the process's own, which a program calling run_job keeps using
JOB_DATA_CONTEXT = ("enable_progress_bars", "target_max_block_size", "actor_task_retry_on_errors")


@contextlib.contextmanager
def ray_data_configured() -> Iterator[None]:
    """Within it, the job's Ray Data settings (`configure_ray_data`); the caller's are put back on leaving. Left set, a
    program that had called run_job had its own actor pools retry every exception of theirs forever (Ray Data's actors
    take max_task_retries=-1 unless told), its pipeline hanging where it raised in 3 s, with no progress bars and 16 MiB
    blocks. The job's pipeline keeps them: a Dataset copies the context it is made in."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in JOB_DATA_CONTEXT}
    configure_ray_data()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


def checkpoint_option(config: JobConfig) -> str:
    """What named the run's checkpoint, as an actor's error names it (`stages.check_checkpoint_seen`): --checkpoint,
    --prior, or the default prior when neither was given."""
    return "--checkpoint" if config.checkpoint else "--prior" if config.prior else "the default prior"


def build_pipeline(config: JobConfig, plan: JobPlan, placement: tuple[int, float, str], threads: int | None,
                   start_file: str | None = None) -> Any:
    """The job's Ray Data pipeline, one stage a line (the module docstring's picture): read -> decode -> tile ->
    purify (an actor pool, one model per actor) -> untile -> encode -> write. Nothing runs until it is iterated.
    `start_file`: a file the driver wrote in the output at the run's start; on a local output, a write task on a node
    that does not see it stops the run rather than write to that node's own disk (`stages.check_output_seen`), as a
    read task does whose node lacks a local input folder, and an actor whose node lacks a local checkpoint."""
    import ray.data

    # the settings the plan resolved and recorded (the noise schedule the checkpoint records, unless one was given)
    so, settings = config.storage_options, config.settings(plan.checkpoint.meta)
    canvas_size, actors, gpus_per_actor, device = plan.canvas_size, *placement
    # CPU stages are light next to the model; a fractional CPU lets them run beside the purifier
    # actors, so finished batches are written while others are still purifying (streaming).
    task_retries = {**task_retry_options(), "num_cpus": config.cpus_per_task}
    # Image files already done were dropped from the units; a container's done ids travel with its own row.
    # (a plan with no unit runs no pipeline: see run_job)
    # A unit of image files carries its own files' metadata rows and sidecar files (--join-metadata), none of the others'.
    # a tar shard's ids an earlier version named from its members' names ('s.tar/./b'), which its keys keep: the
    # output's, those this run does not skip too (rejects retried, rows refreshed)
    named = tar_ids_named_otherwise([*plan.done, *plan.retry, *plan.changes.refreshed_rows()], plan.units)
    rows = [{**u.to_row(), "skip": plan.container_done.get(u.paths[0], []) if u.kind != "files" else [],
             "purified": plan.container_purified.get(u.paths[0], []), "named": named.get(u.paths[0], []),
             "metadata": unit_metadata(u.paths, plan.folder_metadata) if u.kind == "files" else "",
             "sidecars": unit_sidecars(u.paths, plan.sidecars) if u.kind == "files" else ""}
            for u in plan.units]
    # One input block per unit: each unit is read by its own task and flows downstream on its own, so the
    # pipeline streams (one big block would be read, purified and written as a whole).
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # One unit per read task (batch_size=1), its records decoded and tiled --tile-batch at a time in the same task
    # (`read_decode_tile_stage`). A row count above one would make Ray bundle that many *units* into one task.
    ds = ds.map_batches(read_decode_tile_stage, batch_size=1, fn_kwargs=dict(
        read=dict(storage_options=so, labels_from_folders=config.labels_from_folders, image_column=config.image_column,
                  skip_ids=frozenset(), max_records=config.tile_batch, in_memory_bytes=config.in_memory_mb * 2**20,
                  max_image_bytes=config.max_image_mb * 2**20, partitioning=config.partitioning,
                  join_metadata=config.join_metadata),
        decode=dict(policy=config.decode_policy()),
        tile=dict(canvas_size=canvas_size, align=settings.pool, large_images=settings.large_images, seed=settings.seed,
                  max_images=config.tile_batch)), **task_retries)
    purify_batch = config.batch_size or default_batch_size(canvas_size)
    ds = canvases_a_batch_a_block(ds, purify_batch, task_retries)
    ds = ds.map_batches(
        PurifyStage,
        batch_size=purify_batch,
        fn_constructor_kwargs=dict(
            # local paths as the driver reads them: a worker's own folder is the one Ray started in
            checkpoint=as_the_driver_sees(plan.checkpoint_uri), checkpoint_sha256=plan.checkpoint.sha256,
            settings=settings.to_dict(),
            preset=config.preset, flags=config.flags, device=device, precision=config.precision,
            storage_options=config.checkpoint_storage_options(plan.checkpoint_uri),  # for the checkpoint alone
            canvas_size=canvas_size, torch_threads=threads, batch_size=config.batch_size,
            checkpoint_flag=checkpoint_option(config),
            checkpoint_as_given=plan.checkpoint_uri,
            faults=driver_faults()),  # the test hook's, set where the job was started: a cluster's workers lack it
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=gpus_per_actor or None, num_cpus=actor_cpus(config),
        # A crashed actor is replaced (3 times at most, then the run fails) and its batches sent again, for as long as
        # it takes: Ray spends a retry on each try that finds the actor unreachable, and an actor on a node that was
        # lost (a spot instance reclaimed) is unreachable until Ray has declared the node dead, ~17 s on Ray's
        # defaults; 3 retries ran out in ~8 s there and failed the run with ActorUnavailableError, the actor never
        # restarted on the nodes left (bench/node_loss_cluster.py). -1 is Ray Data's own default for its actors.
        max_restarts=PURIFIER_RESTARTS, max_task_retries=-1,
    )
    # Each purified batch is untiled, encoded and written as it arrives (files of <= write_batch rows).
    ds = ds.map_batches(untile_stage, batch_size=None, fn_kwargs=dict(
        canvas_size=canvas_size, align=settings.pool, max_bytes=BLOCK_BYTES), **task_retries)
    ds = ds.map_batches(encode_stage, batch_size=None, **task_retries)
    return ds.map_batches(write_stage, batch_size=None, fn_kwargs=dict(
        output=as_the_driver_sees(config.output.rstrip("/")), storage_options=so, max_rows_per_file=config.write_batch,
        name_salt=plan.refresh.salt if plan.refresh is not None else "",
        start_file=None if start_file is None else as_the_driver_sees(start_file)), **task_retries)


def canvases_a_batch_a_block(ds: Any, batch: int, task_options: dict[str, Any]) -> Any:
    """The tile stage's canvases cut into blocks of one purifier batch each. Ray Data gathers a task's output into
    blocks of up to 16 MB (`BLOCK_BYTES`), which at 3 KB a 32 px canvas is a whole tar shard of thousands of images,
    and gives each block to one actor as one task, whose output goes on only at its end: one tar of 3,925 Imagenette
    images was purified whole before its first row was written (148 s into a 152 s run on 2 idle cores), a stop lost
    all of it, and other actors had nothing to do. Cut, each batch is written as soon as it is purified and the
    blocks spread over the actors. Ray Data's `repartition` takes no task options; given none, it would be a task
    stage of its own, 1 CPU a task (which cannot run where the actors hold every CPU) that copies each canvas once
    more. With the tile stage's own options it runs inside the tile stage's tasks (`tests/test_canvas_blocks.py`
    checks that Ray Data fuses it)."""
    ds = ds.repartition(target_num_rows_per_block=batch)
    ds._logical_plan.dag.ray_remote_args.update(task_options)
    return ds


@dataclass(frozen=True)
class StaleRejects:
    """Reject rows in the output that this run's reading made untrue, to be removed at the end of the run."""

    unreadable: set[str]  # '#unreadable' of a container (tar, Parquet, zip) read to its end this run
    superseded: set[str]  # an older version's one reject for a tar shard's numbered names ('s.tar/cat' for cat.0.jpg)
    lookalikes: set[str]  # a shard's look-alike reject that its reading did not give this time (a member renamed)
    # an image-folder metadata file's reject that an earlier run made, the file joined now (`JobPlan.metadata_rejects`),
    # or a sidecar file's, paired with its image now (`JobPlan.sidecar_rejects`)
    metadata_files: set[str] = field(default_factory=set)

    @property
    def all(self) -> set[str]:
        return self.unreadable | self.superseded | self.lookalikes | self.metadata_files


def stale_rejects(plan: JobPlan, read_whole: list[dict[str, Any]]) -> StaleRejects:
    roots = {u.paths[0]: u.root for u in plan.units if u.kind != "files"}
    unreadable = {f"{relative_id(r['path'], roots[r['path']])}#unreadable" for r in read_whole
                  if r["path"] in roots and not read_to_lasting_reject(r)}
    superseded = {id_ for r in read_whole for id_ in r.get("superseded", [])}
    shards = {relative_id(r["path"], roots[r["path"]]) for r in read_whole if r["path"] in roots}
    held = [*(id_ for r in read_whole for id_ in plan.container_done.get(r["path"], [])), *plan.retry]
    lookalikes = {id_ for id_ in held if LOOKALIKE in id_ and id_.partition(LOOKALIKE)[0] in shards}
    lookalikes -= {id_ for r in read_whole for id_ in r.get("lookalike", [])}
    # a metadata file joined now: a folder's (the planning's), or a zip archive's read to its end; a sidecar file, or a
    # zip archive's sidecar member, paired with its image now
    joined = {*plan.metadata_rejects, *plan.sidecar_rejects,
              *(id_ for r in read_whole for id_ in (*r.get("metadata", []), *r.get("sidecars", [])))}
    return StaleRejects(unreadable, superseded, lookalikes, joined)


def _run(config: JobConfig, plan: JobPlan, placement: tuple[int, float, str] | None, lease: OutputLease,
         started: float, overwrite_file: str | None = None, total: Future[int | None] | None = None) -> dict[str, Any]:
    """The run, once it holds the output's lease. `placement`: the purifier actors' (actors, GPUs each, device); None
    when the plan left nothing to read, and no pipeline runs. `total`: the progress total, being counted."""
    so = config.storage_options
    out = config.output.rstrip("/")
    tally = _start_tally(plan)
    stop = StopRecorder(config, plan, lease, started, tally, overwrite_file=overwrite_file)

    # Stops are recorded from just before the first "running" summary is written (`_start_output`): a Ctrl-C or
    # SIGTERM right after that write, before the recorder was in place, left the summary saying "running" forever.
    with record_stopped_run(stop.record, out, stop.advice, stop.recorded):
        _start_output(config, plan, out, started, run_history_path(out, started, lease.record["run_id"]), stop)
        _remove_old_temporaries(out, so)
        _start_refresh(out, so, plan)
        # What the output holds now, for a stopped run to tell its own files from these (one listing; a new output,
        # or one --overwrite cleared, holds none)
        stop.before = part_names(out, so) if plan.output_state in ("resume", "incremental") else set()

        # 3. The pipeline, and this run's counts as its written batches come back; none when nothing is left to read.
        threads, started_actors = (None, 0) if placement is None else _purify(config, plan, placement, stop, total)
        stop.pipeline_ended = True  # before: a stop while it notes them must not note them again as not whole
        if placement is not None:  # this run's killed writes' temporaries: every write it started has ended
            _remove_old_temporaries(out, so, made_since=started)
        _note_refreshed_reads(out, so, plan, tally.read_whole, pipeline_ended=True)
        # Every file the pipeline wrote is reported now; the end-of-run check below rewrites earlier files under their
        # own names, and a stop there must not count their rows as this run's: names only, no stamps compared.
        stop.before = set(stop.before)
        wall = time.time() - started

        # 4. The output's end-of-run check. Not when another run has taken the output over: the duplicate check
        # rewrites files, and that run's end does it.
        lease.check()
        stale = stale_rejects(plan, tally.read_whole)
        rows = deduplicate_output(out, so, written=tally.files, retried=plan.retry, resolved=stale.all,
                                  journal=plan.refresh.rows if plan.refresh else None)
        retyped = unify_output_types(out, so, rows.data_schemas)
        case_twins = columns_differing_in_case(rows.data_schemas.values())
        # 5. The summary, still as a stopped run's until it is written: a SIGTERM here, or a summary that cannot be
        # written (a full disk), is recorded as "interrupted" or "failed" (exit status 143 or 1) rather than leaving
        # "running" behind, or exit status 2 ("could not start"). Once written, a signal lets the run end as recorded.
        summary = _summary(config, plan, placement, threads, started_actors, tally, rows, stale, retyped, wall, started,
                           case_twins)
        if summary["status"] == "complete":
            recorded = _record_containers_read(out, so, plan, tally.read_whole, stale.all, rows.refresh_left)
            summary["this_run"]["containers_recorded"] = recorded
            _record_inputs_read_again(out, so, plan, tally.read_whole, rows.refresh_left)
            if plan.refresh is not None:
                # applied (each id it names is once in the output) and its inputs' new stamps recorded: until then it
                # is what tells a later run those stamps (`Journal.new_stamps`), and it stays after a run not complete
                remove_journal(out, so)
        _write_summary(out, summary, so, run_history_path(out, started, lease.record["run_id"]))
        IGNORE_STOPS.set()
    if summary["status"] != "complete":
        raise JobFailed(f"read {tally.read} inputs and counted {tally.purified} purified + {tally.rejected} rejected; "
                        f"the output now holds {rows.purified} purified + {rows.rejected} rejected rows in all; see "
                        f"{out}/{SUMMARY_FILE}")
    return summary


def _purify(config: JobConfig, plan: JobPlan, placement: tuple[int, float, str],
            stop: StopRecorder, total: Future[int | None] | None = None) -> tuple[int | None, int | None]:
    """Run the pipeline over the plan's read units to its end, with the progress bar, adding each written batch to
    `stop.tally`; the torch threads each purifier actor was given, and how many purifier actors started (the pool
    grows as work waits, up to `placement`'s actors; None where Ray does not say)."""
    threads = cpu_actor_threads(config, *placement[:2])
    earlier = set(purifier_actor_table() or {})  # a program that runs the job again: its earlier runs' actors
    # on the job's own local Ray, Ray Data's INFO lines (dataset ids, plans, timings) stay off stderr for this run only
    # on a joined cluster, a node lost mid-run is said, and where the nodes left cannot go on, that the run waits
    with ray_data_configured(), ray_data_console_quieted(), node_loss_watched(config, placement[1]):
        # this run's own history summary, written at its start (`_start_output`): no other run's output holds it
        start_file = run_history_path(config.output, stop.started, stop.lease.record["run_id"])
        ds = build_pipeline(config, plan, placement, threads, start_file)
        if config.progress:
            # "images", not "purified": it counts the rejects too ("images: 10/10 (100 %) ..., rejected 1": 9 purified),
            # the rows of each batch once its part files are written (`written_batches`), each batch drawn as it comes
            stop.bar = progress_bar(_total(total, plan, config.storage_options), "images", "img", sys.stderr,
                                    each_update=True)
            stop.bar.set_postfix(**_progress_postfix(stop.bar, plan, stop.tally))  # what a line before any batch says
        notes = RefreshReadNotes(config.output.rstrip("/"), config.storage_options, plan)
        with kept_alive(stop.bar):  # a batch may take minutes to be written: the bar shows the run goes on meanwhile
            _tally_written_batches(ds, plan, stop.lease, stop.tally, stop.bar, notes)
    if stop.bar is not None:
        stop.bar.close()  # every row reported: its count is the run's
        stop.bar = None
    return threads, actors_started(purifier_actor_table(), earlier)


def _total(total: Future[int | None] | None, plan: JobPlan, storage_options: dict[str, Any]) -> int | None:
    if total is None:
        return progress_total(plan, storage_options)
    try:
        return total.result()
    except Exception:  # noqa: BLE001 - only the total is lost: the progress shows none
        return None


def _write_summary(out: str, summary: dict[str, Any], so: dict[str, Any], history: str) -> None:
    """The run's summary, each time whole: at `history` (its own in the output's RUNS_DIR) and as _summary.json, last,
    so that _summary.json is never ahead of the history."""
    write_json(history, summary, so)
    write_json(f"{out}/{SUMMARY_FILE}", summary, so)


def _start_output(config: JobConfig, plan: JobPlan, out: str, started: float, history: str, stop: StopRecorder) -> None:
    """The job record and a "running" summary, written before any work: a refusal (a full disk, a quota) is then
    "could not start", naming the output. Tells `stop` (`StopRecorder.recorded`) when a stop is to be recorded: from
    just before the "running" summary is written, which says so until the stop's summary replaces it."""
    so = config.storage_options
    try:
        write_json(f"{out}/{JOB_FILE}", {**plan.job_record, "config": config.public()}, so)
        stop.summary_begun = True  # one assignment: a signal comes before it (nothing to correct) or after (recorded)
        _write_summary(out, {"status": "running", "started": started, "config": config.public()}, so, history)
        if plan.input_record is not None:  # before any image is read: the rows this run writes are covered if it is killed
            write_record(out, so, starting_record(plan.input_record, plan.changes))
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot write to output {out}: {describe(err)}") from err
    stop.output_started = True


def _start_refresh(out: str, storage_options: dict[str, Any], plan: JobPlan) -> None:
    """Before this run writes a row: finish the replacement a --refresh-changed run stopped before its end left
    (its journal's rule, `pipeline.refresh`), then write this run's own journal when it refreshes inputs."""
    earlier = read_journal(out, storage_options)
    if earlier is not None:
        drop_superseded_rows(out, storage_options, earlier.rows)
        remove_journal(out, storage_options)
    if plan.refresh is not None:
        write_journal(out, storage_options, plan.refresh)


def _note_refreshed_reads(out: str, storage_options: dict[str, Any], plan: JobPlan, read_whole: list[dict[str, Any]],
                          *, pipeline_ended: bool, running: bool = False) -> bool:
    """Write a --refresh-changed run's journal again with the `_containers/` entry a complete run would record of each
    refreshed container its read tasks read to their end (`Journal.read`): the next run records it and skips the
    container unread when the output holds exactly the ids its read gave, where it read the container whole again only
    to record it (a row not written leaves its id out: it is read again).

    Once the pipeline has ended (every row it read written), the journal also names those containers (`Journal.whole`):
    stopped after this, in its end-of-run check, the next run takes their new stamps, as this run would have, though a
    member one no longer holds has no new row. Without it, such a container was said changed by every later run, and
    the next --refresh-changed purified its rows again. A run stopped in its pipeline (Ctrl-C, SIGTERM, a failure)
    notes the entries only: their rows may not all be written yet. A failure to write it is said, and loses only that.
    Returns whether the journal holds the note (False: its write failed)."""
    if plan.refresh is None or not read_whole:
        return True
    whole, entries = _refreshed_reads(plan, read_whole)
    if not (whole if pipeline_ended else entries):
        return True
    noted = replace(plan.refresh, read=entries, **({"whole": frozenset(whole)} if pipeline_ended else {}))
    try:
        write_journal(out, storage_options, noted)
        return True
    except Exception as err:  # noqa: BLE001 - the journal written first still holds; only that saving is lost
        if pipeline_ended:
            lost = ("could not note the containers read whole in the refresh journal ({}); if this run stops before its "
                    "end, the next run may say they changed")
        elif running:  # `RefreshReadNotes`: tried again after REFRESH_NOTE_S, and when the run stops
            lost = ("could not note the containers read so far in the refresh journal ({}); tried again in a minute or "
                    "so; if this run is killed before, the next run reads them again")
        else:
            lost = "could not note the containers read in the refresh journal ({}); the next run reads them again"
        print(redact_uri_secrets(f"zip-purify: warning: {lost.format(describe(err))}", out), file=sys.stderr)
        return False


# How often, at most, a --refresh-changed run writes its journal again while its pipeline runs, to note the refreshed
# containers its read tasks have read to their end since (`RefreshReadNotes`): a SIGKILL, which notes nothing, leaves
# the reads of at most this many seconds (and of the batches since the last one the driver took) to be done again.
# Each write is the whole journal (1.4 CPU s for 10^6 ids, docs/benchmarks.md): at most a few % of the driver's time.
REFRESH_NOTE_S = 60.0


@dataclass
class RefreshReadNotes:
    """A --refresh-changed run's notes, while its pipeline runs, of the refreshed containers its read tasks read to
    their end (`Journal.read`, as `_note_refreshed_reads` writes them when a run stops in its pipeline): without them
    a run killed there (SIGKILL, a lost driver) left the next run to read each such container whole again only to skip
    every id of it. The first is written as soon as the driver hears of one, the next ones at most every
    REFRESH_NOTE_S. Such a note claims nothing of the container's rows (they may not all be written yet), as a stop's
    does not: the next run skips a container unread only when it is unchanged since and the output holds exactly the
    ids its read gave (`ledger.unchanged_and_done`), and one with an id left with only its old row keeps its earlier
    stamp, said changed until a --refresh-changed run replaces that row (`Journal.new_stamps`). Not `whole`: that is
    noted once the pipeline has ended (`_note_refreshed_reads`)."""

    out: str
    storage_options: dict[str, Any]
    plan: JobPlan
    seen: int = 0  # how many of the tally's `read_whole` were looked at
    due: bool = False  # a refreshed container's read not noted yet
    last: float = -math.inf  # clock() of the last note written
    clock: Callable[[], float] = time.monotonic
    paths: frozenset[str] = field(init=False)  # the refreshed containers' paths

    def __post_init__(self) -> None:
        inputs = self.plan.refresh.inputs if self.plan.refresh is not None else {}
        self.paths = frozenset(u.paths[0] for u in self.plan.units
                               if u.kind != "files" and relative_id(u.paths[0], u.root) in inputs)

    def after(self, tally: RunTally) -> None:
        if not self.paths:
            return
        if len(tally.read_whole) > self.seen:
            self.due = self.due or any(r["path"] in self.paths for r in tally.read_whole[self.seen:])
            self.seen = len(tally.read_whole)
        if self.due and self.clock() - self.last >= REFRESH_NOTE_S:
            self.last = self.clock()
            # one that could not be written (storage unavailable a while) is tried again after the interval, not
            # only once another refreshed container is read: there may be none
            self.due = not _note_refreshed_reads(self.out, self.storage_options, self.plan, tally.read_whole,
                                                 pipeline_ended=False, running=True)


def _refreshed_reads(plan: JobPlan, read_whole: list[dict[str, Any]]) -> tuple[set[str], dict[str, ContainerRead]]:
    """Of the containers a --refresh-changed run read to their end (`read_whole`: their count records), those it
    refreshes, by input id, and the `_containers/` entry of each read, as `_record_containers_read` records it (the ids
    a container's read gave no new row for are added to its leftover by the run that applies the journal)."""
    units = {u.paths[0]: u for u in plan.units if u.kind != "files"}
    reads = {relative_id(r["path"], units[r["path"]].root): r for r in read_whole
             if r["path"] in units and not read_to_lasting_reject(r)}
    refreshed = set(reads) & set(plan.refresh.inputs if plan.refresh is not None else ())
    entries = {}
    for input_id in refreshed:
        read, unit = reads[input_id], units[reads[input_id]["path"]]
        stamp = unit.stamps[0] if unit.stamps else None
        if stamp is not None:
            entries[input_id] = ContainerRead(read["path"], unit.sizes[0] if unit.sizes else None, stamp,
                                              read["records"], read["ids_sha256"],
                                              lookalikes_checked=read["path"] in plan.container_purified,
                                              leftover=tuple(read.get("leftover", ())))
    return refreshed, entries


def _start_tally(plan: JobPlan) -> RunTally:
    """This run's counts before its first batch: the hidden files the listing left out are already counted."""
    tally = RunTally(HiddenSkipped())
    tally.hidden.count, tally.hidden.examples = plan.hidden.count, list(plan.hidden.examples)
    return tally


def _remove_old_temporaries(out: str, storage_options: dict[str, Any], made_since: float | None = None) -> None:
    """Temporary files a killed run or a refused delete left behind (hidden, skipped by most readers); only old
    ones, since a younger one may be another write still under way; with `made_since`, once this run's pipeline has
    ended (every write task it started awaited), those made since it started too: a write task killed mid-write (a
    worker lost, then retried) left one in data/ for an hour, and Polars given the folder refuses a folder holding it
    ("directory contained paths with different file extensions")."""
    fs_out, out_path = storage_path(out, storage_options)
    for folder in (DATA_DIR, REJECTS_DIR, LEDGER_DIR, INPUTS_DIR, RUNS_DIR, REFRESH_DIR):
        remove_stale_temporaries(fs_out, posixpath.join(out_path, folder), made_since=made_since)
    # the output's own folder may also be the user's (an output that is its input): only its records' temporaries
    remove_stale_temporaries(fs_out, out_path, of_names=(SUMMARY_FILE, JOB_FILE, LEASE_FILE))


def written_batches(ds: Any) -> Iterator[dict[str, Any]]:
    """The pipeline's rows, one per batch written (`write_stage`'s manifest), each as soon as the driver hears of it.

    Not `ds.iter_rows()`: it fetches one block ahead (Ray Data's prefetch_batches=1) and asks the executor for the next
    block before it hands over the one it holds, so each batch's row came only once the next batch had been written.
    The progress bar, the tally and a stopped run's count of what was reported were one batch behind the part files,
    and the last batch was reported only when the pipeline ended. A manifest is one small row: nothing to fetch ahead.
    Closing this iterator closes Ray Data's, which shuts its executor down (`pipeline_closed_on_exit`)."""
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))
    try:
        for batch in batches:
            yield from batch.to_pylist()
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _tally_written_batches(ds: Any, plan: JobPlan, lease: OutputLease, tally: RunTally, bar: Any,
                           notes: RefreshReadNotes | None = None) -> None:
    """Run the pipeline to its end, adding each written batch's row to `tally` and checking the lease as it goes;
    with `notes`, a --refresh-changed run's journal notes the refreshed containers read to their end as it goes."""
    rows_iter = written_batches(ds)
    # closed on the way out, whatever stops the loop: Ray Data then stops its tasks, so no file lands while a
    # stopped run counts what it wrote (left to the garbage collector, the pipeline ran on meanwhile)
    with pipeline_closed_on_exit(rows_iter):
        for row in rows_iter:
            tally.add(row)
            lease.check()
            if notes is not None:
                notes.after(tally)
            if bar is not None:
                # before update: a log's minute line is printed by update
                bar.set_postfix(**_progress_postfix(bar, plan, tally))
                bar.update(int(row["purified"]) + int(row["rejected"]))


def _progress_postfix(bar: Any, plan: JobPlan, tally: RunTally) -> dict[str, Any]:
    """What the progress bar shows beside its count. Tar shards and zip archives hold an unknown number of images: no
    total, so say how many of the read tasks (one per shard or file) are done, for the user to judge how far the run
    is."""
    if bar.total is not None:
        return {"rejected": tally.rejected}
    return {"rejected": tally.rejected, "read_tasks": f"{min(tally.units_read, len(plan.units)):,}/{len(plan.units):,}"}


@dataclass
class StopRecorder:
    """What a run that did not finish needs to say in its summary how it ended, with what it wrote. `bar` and
    `before` are set as the run goes (`_run`): the progress bar once it is shown, and the output's part files when
    this run began (-> their listing stamps; None until listed, a set of names once the pipeline has reported all
    it wrote)."""

    config: JobConfig
    plan: JobPlan
    lease: OutputLease
    started: float
    tally: RunTally
    bar: Any = None
    before: dict[str, str | None] | set[str] | None = None
    pipeline_ended: bool = False  # its refresh journal then notes the containers read whole (`_note_refreshed_reads`)
    files_written: int | None = None  # part files this run wrote, once `record` has counted them
    overwrite_file: str | None = None  # the --config file that set overwrite: true (`run_job`)
    summary_begun: bool = False  # set by `_start_output` just before its "running" summary: stops recorded from then
    output_started: bool = False  # set once `_start_output` has written the output's first records: failures too

    def recorded(self, err: BaseException) -> bool:
        """Whether the summary is to say how the run stopped (`record_stopped_run`): a stop (Ctrl-C, SIGTERM) once the
        "running" summary may be written, which would say so forever otherwise (one before has no summary of this
        run's to correct: the CLI's own `interrupted:` line); a failure once the output's first records are written
        (one while they are written, a full disk, is "could not start", exit status 2, as it is raised)."""
        return self.summary_begun if isinstance(err, KeyboardInterrupt) else self.output_started

    def advice(self, failure: str | None = None) -> str:
        """What to run next, once the stop is counted: the line that ends the run and the summary's `resume` both say
        it (an --overwrite run is resumed without --overwrite; `failure`: a failed run's reason)."""
        return resume_advice(self.config.overwrite is True, self.files_written != 0, self.overwrite_file, failure)

    def record(self, status: str, details: dict[str, Any]) -> str:
        """Say in the summary how the run ended, with what it wrote: counted in the output (see count_stopped_run),
        as the pipeline's own counts lag the files that have landed. Returns a phrase on what was written."""
        if self.lease.taken_over:  # the output's summary is (or may be) the other run's now
            self._close_bar(None)
            return "the summary was left to that run"
        plan, so, out = self.plan, self.config.storage_options, self.config.output.rstrip("/")
        # an actor's error may quote the checkpoint's URL (a checkpoint it could not read), a task's the input's or the
        # output's (a storage give-up names the file: `stages.write_parquet_atomic`): not their credentials
        details = {k: uri_secrets_redacted(redact_uri_secrets(v, plan.checkpoint_uri), self.config) if isinstance(v, str)
                   else v for k, v in details.items()}
        # a second Ctrl-C may cut the count short
        count = None
        try:
            count = count_stopped_run(out, so, self.before, self.tally.reported, plan.retry)
        finally:
            self._close_bar(count)
        self.files_written = None if count.short else count.files  # a count cut short may have missed some
        IGNORE_STOPS.set()  # but not the summary's write
        if not self.pipeline_ended:  # once it has, the journal notes the containers read whole already
            _note_refreshed_reads(out, so, plan, self.tally.read_whole, pipeline_ended=False)
        earlier = (plan.done_purified, plan.done_rejected) if plan.output_state in ("resume", "incremental") else (0, 0)
        done = _stopped_this_run(plan, self.tally, count, self.started)
        totals = {**stopped_totals(earlier, count, plan.retry),
                  "before_this_run": {"purified": earlier[0], "rejected": earlier[1]}}
        if plan.refresh is not None:  # old rows replaced: they go at the next run's start
            replaced = _replaced_by_stopped_refresh(out, so, plan.refresh, self.before, self.tally.reported,
                                                    count.short is not None)
            totals.update(purified=max(0, totals["purified"] - replaced[0]),
                          rejected=max(0, totals["rejected"] - replaced[1]))
        unwritten = ""
        try:
            _write_summary(out, {
                "status": status, **details, "this_run": done, "output_totals": totals,
                "resume": self.advice(details.get("error") if status == "failed" else None),
                "settings": plan.job_record["settings"], "config": self.config.public(), "versions": versions(),
                "started": self.started, "stopped": time.time()},
                so, run_history_path(out, self.started, self.lease.record["run_id"]))
        except Exception as err:  # noqa: BLE001 - a full disk: the stop is said all the same, with its exit status
            unwritten = f"; {out}/{SUMMARY_FILE} could not be written ({describe(err)}) and may still say 'running'"
        return _stopped_phrase(count, totals, self.tally.hidden) + unwritten

    def _close_bar(self, count: StoppedCount | None) -> None:
        """The progress bar's last line, with the rows `count` found in the output when the pipeline had not reported
        them all yet (a batch's files landed just before the stop): it said `images: 0/3` above the `interrupted:`
        line's `this run wrote 3 purified`. A count cut short leaves the bar's own."""
        if self.bar is None:
            return
        if count is not None and count.short is None:
            behind = count.purified + count.rejected - self.bar.n
            if behind > 0:
                self.bar.set_postfix(**{**_progress_postfix(self.bar, self.plan, self.tally), "rejected": count.rejected})
                self.bar.update(behind)
        self.bar.close()


def _replaced_by_stopped_refresh(out: str, storage_options: dict[str, Any], journal: Journal,
                                 before: dict[str, str | None] | set[str] | None,
                                 reported: dict[str, int], short: bool = False) -> tuple[int, int]:
    """The old rows, in data/ and in rejects/, of the ids a stopped --refresh-changed run wrote a new row of: the next
    run's start removes them (`pipeline.refresh`), so the output holds them no longer. Its files are those it reported
    and those not there when it began (its names are salted: none is an old one's). (0, 0) when they cannot be read.
    `short`: its count was cut short, its totals the least the output holds: any id of the journal may have its new
    row, and its old one is taken out (as `stopped_totals` takes every reject --retry-rejects reads again)."""
    if before is None:
        return 0, 0
    if short:
        ids = set(journal.rows)
    else:
        try:
            names = set(reported) | (set(part_names(out, storage_options)) - set(before))
            ids = set(journal.rows) & part_file_ids(out, storage_options, sorted(names))
        except Exception:  # noqa: BLE001 - the stop must still be recorded; the totals are then the upper bound
            return 0, 0
    data = sum(any(name.startswith(f"{DATA_DIR}/") for name in journal.rows[id_]) for id_ in ids)
    return data, len(ids) - data


def _stopped_this_run(plan: JobPlan, tally: RunTally, count: StoppedCount, started: float) -> dict[str, Any]:
    """A stopped run's "this_run" in its summary: the rows and files counted in the output (`count`), the rest as
    the pipeline reported them."""
    hidden = tally.hidden
    done = {"read": max(tally.read, count.purified + count.rejected),  # each row written was read; that count lags
            "purified": count.purified, "rejected": count.rejected,
            "skipped_already_done": tally.skipped_already_done(plan),
            # as a finished run's: the listing's, and the zip members of the read tasks that reported so far
            "hidden_skipped": hidden.count, "hidden_skipped_examples": hidden.examples,
            # as a finished run's: the planning joined them before any image was read
            **_metadata_report(plan, tally),
            "unpurified_image_columns": dict(sorted(tally.unpurified.items())),
            "storage_notes": list(getattr(plan, "storage_notes", [])),
            "files_written": count.files,
            "counted": "from the part files this run wrote, after it stopped" if count.short is None else
                       f"at least: {count.short}",
            "wall_s": round(time.time() - started, 2)}
    if plan.retry:  # earlier rejects read again and written again: counted once each, as the next run will
        done["rejects_retried"] = count.retried
    return done


def _metadata_report(plan: JobPlan, tally: RunTally) -> dict[str, Any]:
    """The summary's "folder_metadata" (--join-metadata): the planning's join of the folders' metadata files, with
    the metadata members its read tasks joined inside zip archives and tar shards (those that reported, in a stopped
    run); nothing when neither found one."""
    report = metadata_report(getattr(plan, "folder_metadata", None), tally.archive_metadata,
                             len(getattr(plan, "metadata_rejects", ())))
    return {"folder_metadata": report} if report else {}


def _stopped_phrase(count: StoppedCount, totals: dict[str, Any], hidden: HiddenSkipped) -> str:
    """What a stopped run wrote and what the output now holds, in words, for the line that ends the run."""
    least = "" if count.short is None else "at least "
    files = f"{count.files:,} part file{'' if count.files == 1 else 's'}"
    return (f"this run wrote {least}{count.purified:,} purified and {count.rejected:,} rejected ({files}), so the "
            f"output now holds {least}{totals['purified']:,} purified and {totals['rejected']:,} rejected"
            + ("" if count.short is None else f" ({count.short})")
            + (f"; {hidden_note(hidden.count, hidden.examples)}" if hidden.count else ""))


def _summary(config: JobConfig, plan: JobPlan, placement: tuple[int, float, str] | None, threads: int | None,
             started_actors: int | None, tally: RunTally, rows: OutputRows, stale: StaleRejects,
             retyped: dict[str, str], wall: float, started: float,
             case_twins: list[list[str]] | None = None) -> dict[str, Any]:
    """The finished run's OUTPUT/_summary.json: this run's counts, the whole output's, the model and the cluster."""
    replaced = rows.retried_purified + rows.retried_rejected + rows.stale_rejects_removed + rows.refreshed
    resolved = stale.all
    rows_before = plan.done_purified + plan.done_rejected if plan.output_state in ("resume", "incremental") else 0
    ckpt = plan.checkpoint
    return {
        "status": run_status(tally.read, tally.purified, tally.rejected, rows_before, rows.purified + rows.rejected,
                             replaced),
        "this_run": {"read": tally.read, "purified": tally.purified, "rejected": tally.rejected,
                     "skipped_already_done": tally.skipped_already_done(plan),
                     # containers read whole by an earlier complete run and unchanged: not read
                     "containers_skipped_unread": plan.skipped_containers,
                     # hidden entries (.x, _x): files and zip members left out, not read (not in "read")
                     "hidden_skipped": tally.hidden.count, "hidden_skipped_examples": tally.hidden.examples,
                     # --join-metadata: image-folder metadata files joined, and their rows that name no image file
                     **_metadata_report(plan, tally),
                     # pass-through columns holding images, copied unpurified: column -> rows this run
                     "unpurified_image_columns": dict(sorted(tally.unpurified.items())),
                     # optional files beside the inputs the store refused (JobPlan.storage_notes)
                     "storage_notes": list(getattr(plan, "storage_notes", [])),
                     "files_written": len(tally.files), "duplicates_removed": rows.duplicates_removed,
                     # --retry-rejects: earlier rejects read again, now purified or rejected again (the new reason
                     # kept); those whose input is gone keep their old row
                     "rejects_retried": {"earlier_rejects": len(plan.retry), "purified_now": rows.retried_purified,
                                         "rejected_again": rows.retried_rejected,
                                         "containers_now_read_whole": len(plan.retry & (resolved - stale.superseded
                                                                                         - stale.lookalikes
                                                                                         - stale.metadata_files)),
                                         "superseded": len(plan.retry & stale.superseded),
                                         "lookalikes_renamed": len(plan.retry & stale.lookalikes),
                                         # a zip archive's metadata member, rejected before, joined now
                                         "metadata_joined": len(plan.retry & stale.metadata_files)},
                     # reject rows this run's reading made untrue, removed (StaleRejects)
                     "stale_rejects_removed": rows.stale_rejects_removed,
                     # --refresh-changed: changed inputs purified again; ids whose old row the new one replaced, and
                     # those kept with their old row (members the container's new read no longer gave)
                     "refreshed": {"inputs": len(plan.changes.refreshed), "rows_replaced": rows.refreshed,
                                   "rows_kept": len(rows.refresh_left)},
                     # pass-through columns whose type differed between part files, and the one type they now have
                     "columns_retyped": retyped,
                     # data/ columns whose names differ only in case, which case-blind readers take for one
                     "columns_differing_in_case": case_twins or [],
                     # rejects/ files an older version wrote without a column (rejected_at), rewritten with it as nulls
                     "rejects_files_upgraded": rows.rejects_files_upgraded,
                     "wall_s": round(wall, 2),
                     "images_per_s": round((tally.purified + tally.rejected) / wall, 3) if wall else None,
                     # how much purification changed the images (per image in data/, column psnr_vs_input_db)
                     "psnr_vs_input_db": {
                         "mean": round(tally.psnr_sum / tally.psnr_count, 2) if tally.psnr_count else None,
                         "min": tally.psnr_min if tally.psnr_count else None, "unchanged": tally.unchanged},
                     # images larger than the model, shrunk to fit its canvas (per image: column downscale_factor)
                     "downscaled": {"images": tally.downscaled, "max_factor": tally.downscale_max}},
        "output_totals": {"purified": rows.purified, "rejected": rows.rejected,
                          "before_this_run": {"purified": plan.done_purified, "rejected": plan.done_rejected}},
        # inputs whose rows the output keeps though they changed under the same name, or went, since (pipeline.changes)
        "changed_inputs": plan.changes.summary(),
        "model": {"checkpoint": redact_uri(plan.checkpoint_uri), "sha256": ckpt.sha256, "note": plan.model_note,
                  "canvas_size": plan.canvas_size,
                  "flags": ckpt.config.to_flags(), "meta": ckpt.meta},
        "ray": _ray_summary(config, placement, threads, started_actors),
        # the sampler's settings as run: `config` holds the options as given, where an unset start or schedule is
        # null (the prior's own, resolved here)
        "settings": plan.job_record["settings"],
        "config": config.public(),
        "versions": versions(),
        "started": started,
        "finished": time.time(),
    }


# The summary's "ray" note of a run that had nothing to read (`_ray_summary`)
NOTHING_TO_READ = "nothing was left to read: this run started no Ray, no purifier actor and no pipeline"


def _ray_summary(config: JobConfig, placement: tuple[int, float, str] | None, threads: int | None,
                 started: int | None) -> dict[str, Any]:
    """The summary's "ray": how many purifier actors the run started (`actors`; None where Ray does not say) and the most
    its pool could grow to (`actors_max`: the pool starts one and adds more while work waits for them, so a short run
    on 8 GPUs may start 1), the CPUs and GPUs each reserved, their device and torch threads; a run that had nothing to
    read started none, and says so rather than what a cluster it never joined would have given."""
    if placement is None:
        return {"actors": 0, "actors_max": 0, "cpus_per_actor": None, "gpus_per_actor": None, "device": None,
                "torch_threads": None, "note": NOTHING_TO_READ}
    actors, gpus_per_actor, device = placement
    return {"actors": started, "actors_max": actors, "cpus_per_actor": actor_cpus(config), "gpus_per_actor": gpus_per_actor,
            "device": device, "torch_threads": "all cores of the actor's node" if threads == ALL_CORES else threads}
