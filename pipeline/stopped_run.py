"""A run that stops before its end (Ctrl-C, SIGTERM, a failed batch): signals raised in the driver, and what the
stopped run wrote, counted from its part files, so that its summary says "interrupted" or "failed" with true counts
instead of "running" forever."""

from __future__ import annotations

import contextlib
import posixpath
import re
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import JobFailed, JobInterrupted, NotOnThisNodeError
from pipeline.output import DamagedOutput, part_file_ids
from pipeline.redaction import redact_uri_secrets
from pipeline.sources import listing_stamp
from pipeline.stages import DATA_DIR, PURIFIER_RESTARTS, REJECTS_DIR
from pipeline.storage import REASON_CHARS, concurrent_calls, describe, shortened, storage_path, with_retries


class _Interrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM in the driver, raised where the main thread is (usually waiting on Ray Data)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StoppedWhileLoading(_Interrupt):
    """SIGINT or SIGTERM while a run still loads (its model and inputs checked, Ray started), before it holds the
    output's lease: nothing was written to the output. The CLI's `interrupted:` line said "every file in the output is
    whole" then, of an output that did not exist."""


# A traceback's exception line: a name with an exception's ending (ValueError, SystemExit), or any name its module
# qualifies (zipfile.BadZipFile, pyarrow.lib.ArrowInvalid), as Python writes every exception not built in; a message's
# own "Note: ..." line is neither
_NAME = r"[A-Za-z_]\w*"
_EXCEPTION_LINE = re.compile(
    rf"^(?:(?:{_NAME}\.)*({_NAME}(?:Error|Exception|Exit|Interrupt|Warning))|(?:{_NAME}\.)+({_NAME})): ?(.*)$")


# Said after Ray's ActorDiedError: the job's one actor pool is the purifier's (PurifyStage), restarted PURIFIER_RESTARTS
# times before Ray gives up
ACTOR_DIED_NOTE = (f" (the purifier actor's process died {PURIFIER_RESTARTS + 1} times, its {PURIFIER_RESTARTS} restarts "
                   "spent: out of memory, most often; a smaller --batch-size needs less)")


def failure_reason(err: BaseException) -> str:
    """One line on what made a run fail. A failed batch comes back from Ray as RayTaskError(UserCodeException), whose
    first line names only the actor ("ray::MapWorker(...).submit() (pid=..., ...)") and whose cause is Ray Data's
    "UDF failed to process a data block"; the worker's own exception survives only in the remote traceback text,
    innermost first, so its first exception line is the reason. Ray's ActorDiedError for an actor's process that died
    says only that "the actor died unexpectedly": which one, how often and the likeliest cause are added
    (ACTOR_DIED_NOTE)."""
    reason = _first_exception_line(err)
    # its process died ("unexpectedly"), not its constructor raising ("... an error raised in its creation task")
    died = reason.startswith("ActorDiedError") and "died unexpectedly" in reason
    return shortened(reason, REASON_CHARS - len(ACTOR_DIED_NOTE)) + ACTOR_DIED_NOTE if died else reason


def _first_exception_line(err: BaseException) -> str:
    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match:
            # a local path not on a node of the cluster: its line names the path, the node and the fix, all kept
            name = match[1] or match[2]
            whole = name == NotOnThisNodeError.__name__
            return shortened(f"{name}: {match[3]}", 4 * REASON_CHARS if whole else REASON_CHARS)
    return describe(err)


# Set once a stopped run has counted what it wrote: further SIGINT/SIGTERM are ignored by `signals_interrupt`'s handler
# while it writes its summary and releases the lease. A second Ctrl-C there left the summary "running", the lease
# held, or replaced the run's `interrupted:` line with a bare one.
IGNORE_STOPS = threading.Event()


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within it, SIGINT and SIGTERM raise `_Interrupt` (a KeyboardInterrupt) in the main thread, so that `finally`
    blocks run (a run's summary, its lease) where SIGTERM's default would end the process on the spot."""
    def handler(signum: int, frame: Any) -> None:
        if IGNORE_STOPS.is_set():
            return  # a second Ctrl-C while the stop is recorded: what is left (summary, lease, exit) is short
        raise _Interrupt(signum)

    IGNORE_STOPS.clear()
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
def signals_deferred() -> Iterator[None]:
    """Within it, SIGINT and SIGTERM are held back, and the first is raised as `_Interrupt` once it ends: around starting
    Ray, which a KeyboardInterrupt raised inside `ray.init` left half started, so that the process printed its
    `interrupted:` line and then crashed as it exited (status -11 instead of 130). A handler set within it (ray.init
    sets its own for SIGTERM) is left in place."""
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not caught:
            caught.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(s) is not signal.SIG_IGN}  # an ignored signal stays ignored
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None and signal.getsignal(signum) is handler:
                signal.signal(signum, old)
    if caught:
        raise _Interrupt(caught[0])


RESUME_SKIPS = "what is written is skipped, not purified again"
WITHOUT_OVERWRITE = "run the command again without --overwrite"


def resume_advice(overwrite: bool, wrote: bool = True, overwrite_file: str | None = None,
                  failure: str | None = None) -> str:
    """What to run after a stopped run, whose files are all whole: the one place that decides it, for the line that
    ends the run (`interrupted:`, `error:`) and its summary's `resume` alike, which said it apart and disagreed.

    The same command resumes it, unless it has --overwrite: that deletes what the stopped run wrote and starts over, so
    its rows are kept by the command without --overwrite (the output's record is this run's, its settings the same); a
    run that wrote nothing (stopped before its pipeline wrote a file, the output's earlier files deleted) has nothing to
    resume, and starts over either way. `overwrite_file`: the --config file whose overwrite: true made it an
    --overwrite run, which the command without the flag still reads: named as the file to remove it from. `failure`:
    the reason a failed run gives (`failure_reason`); one that the same command meets again whatever it resumes (a
    local path a node of the cluster does not see) puts what to mend first."""
    if not overwrite:
        advice = f"run the same command again to resume ({RESUME_SKIPS})"
    elif not wrote:
        advice = ("--overwrite deleted the output's earlier files and this run purified nothing yet: run the same "
                  "command again to start over")
    else:
        without = WITHOUT_OVERWRITE if overwrite_file is None else \
            f"{WITHOUT_OVERWRITE} (remove overwrite: true from {overwrite_file})"
        advice = f"{without} to resume ({RESUME_SKIPS}); with --overwrite it deletes them and starts over"
    if failure is not None and failure.startswith(f"{NotOnThisNodeError.__name__}:"):
        return f"once every node of the cluster sees that path at the same place, {advice}"
    return advice


@contextlib.contextmanager
def record_stopped_run(record: Callable[[str, dict[str, Any]], str], out: str,
                       advice: Callable[[str | None], str] = lambda failure: resume_advice(False, failure=failure),
                       recorded: Callable[[BaseException], bool] = lambda err: True) -> Iterator[None]:
    """Run a job's pipeline so that, if it stops, its summary says so instead of "running" forever.

    SIGINT and SIGTERM are raised as an interruption in the driver (Ray's own SIGTERM handler would exit with the
    output's summary left at "running"); `record(status, details)` writes the summary ("interrupted" or "failed")
    and returns a phrase on what was written. Then JobInterrupted or JobFailed is raised, for the CLI's exit status,
    ending with `advice(reason)` (asked once the stop is recorded: `resume_advice`; `reason` is a failure's, None for a
    stop). A stop or failure for which `recorded(err)` is False (the run's records not begun yet:
    `StopRecorder.recorded`) is raised as it is.
    """
    with signals_interrupt():
        try:
            yield
        except KeyboardInterrupt as err:
            if not recorded(err):
                raise
            signum = getattr(err, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            written = record("interrupted", {"signal": name})
            IGNORE_STOPS.set()
            raise JobInterrupted(f"stopped by {name}; {written}. Every file in {out} is whole: {advice(None)}",
                                 signum) from None
        except DamagedOutput as err:
            if not recorded(err):
                raise
            # part files damaged during the run (its end-of-run check): not "every file is whole, run it again",
            # which stops on them; the error names them all and says what to do, in full (a reason is cut at 300)
            written = record("failed", {"error": redact_uri_secrets(str(err), out)})  # it quotes the output's URI
            IGNORE_STOPS.set()
            raise JobFailed(f"the run failed: {err}; {written}") from err
        except Exception as err:
            if not recorded(err):
                raise
            reason = failure_reason(err)
            written = record("failed", {"error": reason})
            IGNORE_STOPS.set()
            raise JobFailed(f"the run failed: {reason}; {written}. Every file in {out} is whole: {advice(reason)}") \
                from err


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
    with ThreadPoolExecutor(max_workers=min(concurrent_calls(fs, 8), len(names))) as pool:
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
