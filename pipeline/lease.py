"""The output's lease: one run at a time writes into an output.

Two runs at once each purify what the other has not finished (work done twice), an --overwrite deletes the other's
files under it, and the end-of-run duplicate check of one rewrites files the other is still counting. The running
driver holds OUTPUT/_lease.json (hidden: readers of the output and the job's own listings skip names starting with _
and .) and refreshes its heartbeat; a lease whose heartbeat is LEASE_STALE_S old belongs to a run that died without
releasing it (SIGKILL, a lost node), and on the same machine a lease whose process is gone is over at once. A
heartbeat is written by the holder's clock and judged by ours: before a run takes over another machine's lease that
looks stale, it watches the lease for a heartbeat interval, and a lease that still changes is live (the two clocks
disagree), not stale. A heartbeat more than LEASE_AHEAD_S ahead of our clock (the holder's clock is ahead) looks live
however long its run has been dead; it is watched the same way, and one that does not change is taken over. A lease
that another run took during the watch is left to that run: the run that watched stops, and a run started again
judges that lease afresh.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from typing import Any

from pipeline.errors import JobError
from pipeline.redaction import redact_uri, redact_uri_secrets
from pipeline.storage import (
    concurrent_calls,
    create_if_absent,
    describe,
    fsspec_protocol,
    make_parent_dirs,
    replace_file,
    scoped_options,
    storage_path,
    with_retries,
)

LEASE_FILE = "_lease.json"
LEASE_HEARTBEAT_S = 30.0
LEASE_STALE_S = 180.0
# Where creating the lease is not known to be atomic (object stores: a conditional PUT that a store may ignore; a
# stale lease replaced), a run writes its lease, waits this long and reads it back; of two runs that wrote within
# this time of each other, the later write stands and the other run stops.
LEASE_SETTLE_S = 2.0
# Another machine's lease that looks stale by our clock is watched this long (a little more than one heartbeat, so a
# beat late by its storage retries is still seen), read again every LEASE_WATCH_POLL_S, before it is taken over.
LEASE_WATCH_S = LEASE_HEARTBEAT_S + 15.0
LEASE_WATCH_POLL_S = 5.0
# Another machine's heartbeat this far ahead of our clock is not taken as live without a watch: a little skew (clocks
# kept by NTP) must not make every refusal of a live run wait LEASE_WATCH_S, and a heartbeat within a beat of now
# will be judged by its age soon enough.
LEASE_AHEAD_S = LEASE_HEARTBEAT_S
# The watch's waiting, through names tests can replace (the settle keeps time.sleep: a race of real writers)
_sleep = time.sleep
_clock = time.monotonic


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if isinstance(t, int | float) else "unknown"


def _pid_namespace() -> str | None:
    """This process's PID namespace ('pid:[4026531836]'), so that a pid is compared only within the one it means:
    two containers can share a host name. None where there is no /proc (macOS)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _this_machines(lease: dict[str, Any]) -> bool:
    """Whether `lease` was written on this machine (same host name and PID namespace): its pid can be asked about,
    and its heartbeat was written by our clock."""
    return lease.get("host") == socket.gethostname() and lease.get("pid_namespace") == _pid_namespace()


def lease_ended(lease: dict[str, Any], now: float | None = None) -> str | None:
    """Why the run holding `lease` is over, or None while it may be running: no heartbeat for LEASE_STALE_S (one in
    the future, from a clock ahead of ours, is live), or, on this machine, its process is gone (a run killed with
    SIGKILL and rerun at once need not wait for its lease to go stale)."""
    beat = lease.get("heartbeat")
    if not isinstance(beat, int | float) or (now or time.time()) - beat >= LEASE_STALE_S:
        return f"no heartbeat for {LEASE_STALE_S / 60:.0f} minutes"
    pid = lease.get("pid")
    if _this_machines(lease) and isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return f"its process {pid} on this machine is gone"
        except OSError:
            pass  # it exists (another user's)
    return None


def heartbeat_ahead(lease: dict[str, Any], now: float | None = None) -> float | None:
    """How many seconds another machine's heartbeat is ahead of our clock, when that is more than LEASE_AHEAD_S; else
    None. Such a lease looks live to `lease_ended` until our clock passes it: only a watch tells whether it is still
    refreshed. A lease of this machine is None: its heartbeat was written by our own clock, and its pid is asked."""
    beat = lease.get("heartbeat")
    if not isinstance(beat, int | float) or lease.get("unreadable") or _this_machines(lease):
        return None
    ahead = beat - (now or time.time())
    return ahead if ahead > LEASE_AHEAD_S else None


def lease_is_live(lease: dict[str, Any], now: float | None = None) -> bool:
    """Whether the run holding `lease` may still be running (see `lease_ended`)."""
    return lease_ended(lease, now) is None


def lease_holder(lease: dict[str, Any]) -> str:
    """'run 3f2a... on host h, pid 123, started ..., last heartbeat ... (12 s ago)'."""
    beat = lease.get("heartbeat")
    age = time.time() - beat if isinstance(beat, int | float) else None
    # a heartbeat in our future (the holder's clock is ahead): '-600 s ago' would read as a typo
    ago = ("" if age is None else f" ({max(age, 0.0):.0f} s ago)" if age > -1
           else f" ({-age:.0f} s ahead of this machine's clock)")
    return (f"run {lease.get('run_id', '?')} on host {lease.get('host', '?')}, pid {lease.get('pid', '?')}, "
            f"started {_when(lease.get('started'))}, last heartbeat {_when(beat)}{ago}")


def _in_use(out: str, lease: dict[str, Any], note: str = "") -> JobError:
    # a heartbeat ahead of our clock is not 'old' until our clock passes it: a run again watches it instead
    then = (f"once its heartbeat is {LEASE_STALE_S / 60:.0f} minutes old: the stale lease is then taken over"
            if heartbeat_ahead(lease) is None else
            f"after that run has ended: a lease whose heartbeat no longer changes is taken over after a "
            f"{LEASE_WATCH_S:.0f} s watch")
    return JobError(f"output {out} is in use by another run ({lease_holder(lease)}){note}; wait for it to finish or "
                    "write to another output. If that run is no longer running (killed on another machine), delete "
                    f"{out}/{LEASE_FILE}, or run again {then}")


def _clocks_disagree(lease: dict[str, Any]) -> str:
    return f"the clocks of this machine and host {lease.get('host', '?')} disagree (keep them in sync with NTP)"


def read_lease(output: str, storage_options: dict[str, Any]) -> dict[str, Any] | None:
    """The output's lease, or None when there is none. One GET, not exists + GET: s3fs answers exists() from its
    cached listings, which can miss a lease written since. An unreadable lease (not JSON) has no heartbeat: stale."""
    return _fetch_lease(*storage_path(f"{output.rstrip('/')}/{LEASE_FILE}", storage_options), output.rstrip("/"))


def _fetch_lease(fs: Any, path: str, out: str) -> dict[str, Any] | None:
    try:
        data = with_retries(lambda: fs.cat_file(path), f"read {out}/{LEASE_FILE}")
    except FileNotFoundError:
        return None
    try:
        lease = json.loads(data)
    except ValueError:
        return {"unreadable": True}
    return lease if isinstance(lease, dict) else {"unreadable": True}


def refuse_live_lease(output: str, storage_options: dict[str, Any]) -> str | None:
    """Raise JobError naming the other run when the output's lease is live: in planning, before any work (a dry run
    takes no lease, and a real run takes it only once planned). Returns who holds a stale lease, if one is there.
    Never waits: whether another machine's stale-looking lease is still refreshed is watched at `acquire` only. So is
    one whose heartbeat is ahead of our clock (`heartbeat_ahead`): it is not refused here, since a refusal here would
    stop every run before `acquire` could see that the lease no longer changes."""
    lease = read_lease(output, storage_options)
    if lease is not None and lease_is_live(lease) and heartbeat_ahead(lease) is None:
        raise _in_use(output.rstrip("/"), lease)
    return None if lease is None else "unreadable" if lease.get("unreadable") else lease_holder(lease)


class OutputLease:
    """This run's lease on an output: `acquire` before anything in the output is changed (JobError naming the other
    run when its lease is live), a heartbeat every LEASE_HEARTBEAT_S, `check` (JobError once another run has taken
    the lease over), `release` at the end, whatever the end. Also a context manager that does all four."""

    def __init__(self, output: str, storage_options: dict[str, Any]) -> None:
        self.out = output.rstrip("/")
        self.shown = redact_uri(self.out)  # as its warnings name it: stderr ends up in CI logs
        self.fs, self.path = storage_path(f"{self.out}/{LEASE_FILE}", storage_options)
        now = time.time()
        self.record = {"run_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_namespace": _pid_namespace(), "started": now, "heartbeat": now}
        self.lost: dict[str, Any] | None = None  # the lease of the run that took ours over
        self.lost_while_stale: float | None = None  # seconds without a heartbeat after which the lease was found gone
        self._landed = now  # when this run's heartbeat last landed
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._so = storage_options
        self._written = False  # whether a lease of this run may have been written: only then is there one to release

    def _write(self, fs: Any = None) -> None:
        self.record["heartbeat"] = time.time()
        replace_file(self.fs if fs is None else fs, self.path, json.dumps(self.record, indent=2).encode(),
                     f"write {self.out}/{LEASE_FILE}")
        self._landed = self.record["heartbeat"]

    def _mine(self, lease: dict[str, Any] | None) -> bool:
        return lease is not None and lease.get("run_id") == self.record["run_id"]

    def acquire(self) -> None:
        try:
            self._take()
        except BaseException:
            # refused, or stopped (Ctrl-C, SIGTERM) while settling: a lease of ours must not be left to go stale. Before
            # any write there is none, and reading the lease again (storage that refused the read that failed) would
            # only add a warning about releasing a lease this run never had
            if self._written:
                self.release()
            raise
        self._beat = threading.Thread(target=self._heartbeat, name="output-lease", daemon=True)
        self._beat.start()

    def _take(self) -> None:
        try:
            current = read_lease(self.out, self._so)
            if current is not None:
                ended = lease_ended(current)
                ahead = heartbeat_ahead(current)
                if ended is None and ahead is None:
                    raise _in_use(self.out, current)
                if not current.get("unreadable") and not _this_machines(current):
                    # judged by its heartbeat alone, which another machine's clock wrote: stale, or that clock is
                    # behind ours; or, ahead, live by our clock however long ago its run died. Only a heartbeat that
                    # stops changing tells.
                    watched = self._watch(current, ahead)
                    if watched is not None and watched is not current:  # not a run's lease: nothing to wait for
                        ended = "replaced during the watch by a file that is not a run's lease"
                    elif ahead is not None:
                        ended = (f"its heartbeat is {ahead:.0f} s ahead of this machine's clock, so "
                                 f"{_clocks_disagree(current)}, and it did not change in the "
                                 f"{LEASE_WATCH_S:.0f} s watched")
                    else:
                        ended = f"{ended}, and none in the {LEASE_WATCH_S:.0f} s watched"
                    current = watched
            if current is not None:
                print(f"warning: taking over the stale lease of {self.shown} ("
                      + ("unreadable" if current.get("unreadable") else lease_holder(current))
                      + f"): {ended}, so that run was killed without releasing it; its finished files are kept and "
                      "its inputs left undone are purified now", file=sys.stderr)
            self._written = True  # from here on a write of ours may land, whatever error comes back
            make_parent_dirs(self.fs, posixpath.dirname(self.path))
            if current is None:
                created = create_if_absent(self.fs, self.path, json.dumps(self.record, indent=2).encode(),
                                           f"write {self.out}/{LEASE_FILE}")
            else:  # a stale lease is replaced: no store here can make that conditional
                self._write()
                created = None
            if created is False:  # a lease was there after all: another run's (say whose), or our retried write's
                there = read_lease(self.out, self._so)
                if not self._mine(there):
                    raise _in_use(self.out, there or {})
                created = None
            if created is None:
                time.sleep(LEASE_SETTLE_S)
                back = read_lease(self.out, self._so)
                if not self._mine(back):
                    raise _in_use(self.out, back or {})
        except JobError:
            raise
        except Exception as err:  # noqa: BLE001 - a storage refusal: the run cannot write its output either
            raise JobError(f"cannot write to output {self.out}: {describe(err)}") from err

    def _watch(self, lease: dict[str, Any], ahead: float | None = None) -> dict[str, Any] | None:
        """Read `lease` again for LEASE_WATCH_S: None when it is gone meanwhile (the output is free), the lease when it
        stayed as it was (stale: take it over); JobError when it changed, since a run then holds it. `ahead`: its
        heartbeat is that many seconds ahead of our clock (else it looks stale)."""
        why = ("looks stale by this machine's clock" if ahead is None
               else f"is {ahead:.0f} s ahead of this machine's clock, so it looks live however long ago its run ended")
        print(f"waiting up to {LEASE_WATCH_S:.0f} s to see whether the lease of {self.shown} ({lease_holder(lease)}) is "
              f"still refreshed: its heartbeat {why}", file=sys.stderr)
        deadline = _clock() + LEASE_WATCH_S
        while (left := deadline - _clock()) > 0:
            _sleep(min(LEASE_WATCH_POLL_S, left))
            try:
                now = _fetch_lease(self.fs, self.path, self.out)
            except Exception as err:  # noqa: BLE001 - a read that failed: not 'cannot write', which _take would say
                raise JobError(f"cannot read the lease {self.out}/{LEASE_FILE} while watching whether it is still "
                               f"refreshed: {describe(err)}; the lease is not taken over") from err
            if now is None:
                return None
            if now == lease:
                continue
            if now.get("unreadable"):
                return now  # not a run's lease (runs write whole files): nothing to watch
            ended = lease_ended(now)
            if now.get("run_id") != lease.get("run_id"):
                if ended is None:
                    raise _in_use(self.out, now)  # a new run that took the lease
                # Another run took the lease and its lease already looks ended (a run on this machine that died
                # within a poll, or one on a machine whose clock is behind). Refused, not taken over: that lease was
                # not watched, only seen once, and the run that took it may be live (a clock behind ours) or a third
                # run may be taking it now. A run started again judges it afresh, at once where its pid tells.
                raise JobError(
                    f"another run took the lease of output {self.out} over while this one watched it "
                    f"({lease_holder(now)}), and that lease already looks ended ({ended}); this run does not take it "
                    "over. Run again: if that run is gone, its lease is judged afresh and taken over")
            if ended is None:
                # the holder's heartbeat moved and looks live: a clock that caught up, or one ahead of ours
                raise _in_use(self.out, now, "" if ahead is None else f"; its heartbeat is ahead of this machine's "
                              f"clock and still refreshed, so {_clocks_disagree(now)}")
            beat = now.get("heartbeat")
            looks = (f"looks {(time.time() - beat) / 60:.0f} minutes old" if isinstance(beat, int | float)
                     else "has no time")
            raise JobError(
                f"output {self.out} is in use by another run ({lease_holder(now)}): its heartbeat is still refreshed "
                f"although it {looks} on this machine's clock, so {_clocks_disagree(now)}; the lease is not taken "
                "over. Run again once that run has ended")
        return lease

    def _own_fs(self, new: bool = False) -> Any:
        """`self.fs`, or where its store holds one connection that threads may not share (SFTP, FTP), one of the calling
        thread's own: fsspec gives each thread its own SFTP file system, so `self.fs` is the driver's, whose writes and
        reads of the output go on while the heartbeat writes the lease (both waited for ever on a real server); FTP's
        is a new connection each time. `new`: a new connection on SFTP too, not the thread's that fsspec keeps, which
        after a drop is the same dropped connection again."""
        if concurrent_calls(self.fs, 2) > 1:
            return self.fs
        options = {**scoped_options(fsspec_protocol(self.out) or "file", self._so), "skip_instance_cache": new}
        return storage_path(f"{self.out}/{LEASE_FILE}", options)[0]

    def _heartbeat(self) -> None:
        # Made on this thread (`_own_fs`), at the first beat: one that fails to connect is tried at the next. Each
        # beat reads and writes the lease through it: read through a connection of its own (`read_lease`), each beat
        # was an FTP login, every 30 s for the whole run, which servers log and rate-limit.
        fs = None
        while not self._stop.wait(LEASE_HEARTBEAT_S):
            try:
                fs = fs if fs is not None else self._own_fs(new=True)
                current = _fetch_lease(fs, self.path, self.out)
                if current is not None and current.get("unreadable"):
                    continue  # not a run's lease (runs write whole files): neither ours nor taken over
                if current is not None and not self._mine(current):
                    self.lost = current  # not overwritten: the other run holds the output now
                    return
                if current is None and (silent := time.time() - self._landed) >= LEASE_STALE_S:
                    # Our lease went stale (this process or its machine suspended, the storage unreachable), so another
                    # run may have taken it over, purified and released it: that run's work must not be redone or
                    # changed. Deleted by hand under a live run, it is only put back (below).
                    self.lost_while_stale = silent
                    return
                self._write(fs)
                if self._stop.is_set():
                    # release() stopped waiting for this beat (storage slower than LEASE_HEARTBEAT_S) and may have
                    # deleted the lease before the write above landed: a lease left behind would hold off the next
                    # run for LEASE_STALE_S, or a next run in this process, whose pid it names, until then as well
                    self._remove_if_mine(fs)
            except Exception as err:  # noqa: BLE001 - storage trouble: the next beat tries again
                # on a connection of its own: one the server dropped (its idle timeout, a restart) failed every beat
                # after, so that the lease went stale under a live run
                fs = None
                print(f"warning: could not refresh the lease of {self.shown}: {redact_uri_secrets(describe(err), self.out)}",
                      file=sys.stderr)

    @property
    def taken_over(self) -> bool:
        """Whether another run took this run's lease over, or may have (the lease gone after ours went stale)."""
        return self.lost is not None or self.lost_while_stale is not None

    def check(self) -> None:
        """Raise JobError when another run has taken this run's lease over (a lease written within LEASE_SETTLE_S of
        ours on an object store, or ours gone stale while this driver stalled)."""
        if self.lost is not None:
            raise JobError(f"another run took over output {self.out} while this one ran ({lease_holder(self.lost)}); "
                           "this run stops so that the two do not change each other's files")
        if self.lost_while_stale is not None:
            raise JobError(f"the lease of output {self.out} was gone when this run's heartbeat came back after "
                           f"{self.lost_while_stale / 60:.0f} minutes without one (a suspended process or machine, or "
                           "storage out of reach), so another run may have taken the output over and ended meanwhile; "
                           "this run stops so that it does not change that run's files. Run the same command again: "
                           "it purifies only what is not done")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this run's; a failure to is a warning only (the
        lease goes stale), never an error over the run's own outcome."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=LEASE_HEARTBEAT_S)
        try:
            # FTP's `self.fs`, its own connection, sat idle through the run (the heartbeat has its own): a server may
            # have closed it since; a beat still writing (storage slower than the join) is on another
            self._remove_if_mine(self._own_fs())
        except Exception as err:  # noqa: BLE001
            why = redact_uri_secrets(describe(err), self.out)
            print(f"warning: could not release the lease {self.shown}/{LEASE_FILE} ({why}); a next run on "
                  f"this machine takes it over at once, elsewhere once it is {LEASE_STALE_S / 60:.0f} minutes old",
                  file=sys.stderr)

    def _remove_if_mine(self, fs: Any = None) -> None:
        fs = self.fs if fs is None else fs  # read and removed through one connection
        if self._mine(_fetch_lease(fs, self.path, self.out)):
            try:
                with_retries(lambda: fs.rm_file(self.path), f"remove {self.out}/{LEASE_FILE}")
            except FileNotFoundError:
                pass  # removed meanwhile (release and a late heartbeat both clean up): what was wanted

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
