"""Three weaknesses of the output's lease watch (pipeline/lease.py), each reproduced on the code before the fix.

1. A storage error while the watch re-read another machine's lease was reported as 'cannot write to output': it was
   a read, of the lease, during the watch.
2. A lease that another run took during the watch and that already looked ended (a run on this machine that died
   within one poll) was reported as a clock disagreement with that run's host: it is a takeover, and says so.
3. A dead run's lease from a machine whose clock is ahead of ours has a heartbeat in our future, which looked live:
   with a clock 10 minutes ahead it blocked every run for 10 + 3 minutes, refused in planning before the watch could
   see that it no longer changes. Such a lease is now watched, and taken over when its heartbeat does not change.

The watch's waiting runs on a fake clock here, so the tests take no real time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, OutputLease, refuse_live_lease
from tests.leaseutil import write_foreign_lease

AHEAD_S = 600.0  # the holder's clock is 10 minutes ahead of ours
BEHIND_S = 600.0


def _write_lease(out: Path, **fields: Any) -> bytes:
    return write_foreign_lease(out, BEHIND_S, **fields)


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid




@pytest.fixture
def no_wait(monkeypatch) -> None:
    def sleep(seconds: float) -> None:
        raise AssertionError("the watch waited")

    monkeypatch.setattr(output_lease, "_sleep", sleep)
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)


def _ours(out: Path, lease: OutputLease) -> bool:
    return json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]


# 1. A read that fails during the watch says it was a read


def test_a_storage_error_while_watching_says_the_lease_could_not_be_read(tmp_path, wait, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    theirs = _write_lease(out)
    lease = OutputLease(str(out), {})
    real_cat = lease.fs.cat_file
    reads: list[str] = []

    def denied_after_the_first(path: str, *args: Any, **kwargs: Any) -> bytes:
        reads.append(path)
        if len(reads) == 1:  # the first read finds the stale-looking lease; the watch's next read is refused
            return real_cat(path, *args, **kwargs)
        raise PermissionError(13, "Access Denied", path)

    monkeypatch.setattr(lease.fs, "cat_file", denied_after_the_first)  # fsspec shares the instance: undone after
    with pytest.raises(JobError) as refused:
        lease.acquire()
    said = str(refused.value)
    assert "cannot write" not in said, said
    for part in (f"cannot read the lease {out}/{LEASE_FILE} while watching", "PermissionError", "Access Denied",
                 "not taken over"):
        assert part in said, said
    assert len(reads) == 2  # stopped at the failed read: no write was tried, and nothing read again to release
    assert (out / LEASE_FILE).read_bytes() == theirs
    assert "could not release" not in capsys.readouterr().err  # this run had no lease to release


# 2. Another run that took the lease during the watch is not a clock disagreement


@pytest.mark.parametrize("taker", ["died on this machine within a poll", "on a machine whose clock is behind"])
def test_another_run_that_took_the_lease_during_the_watch_and_looks_ended_is_named_not_taken(tmp_path, wait,
                                                                                             taker) -> None:
    out = tmp_path / "out"
    _write_lease(out)
    if taker.startswith("died"):  # its heartbeat is fresh by our clock, but its process is gone
        fields: dict[str, Any] = {"host": socket.gethostname(), "pid": _dead_pid(), "heartbeat": time.time()}
    else:  # a run on another machine, its heartbeat 10 minutes old by our clock
        fields = {"host": "batch-node-9", "pid": 77, "heartbeat": time.time() - BEHIND_S}
    taken: list[bytes] = []

    def third_run_takes_it(n: int) -> None:
        if n == 1:
            taken.append(_write_lease(out, run_id="th1rd", started=time.time(), **fields))

    wait.during = third_run_takes_it
    with pytest.raises(JobError) as refused:
        OutputLease(str(out), {}).acquire()
    said = str(refused.value)
    assert "clocks" not in said and "NTP" not in said, said  # not the holder's clock: another run
    for part in (f"another run took the lease of output {out} over while this one watched it (run th1rd on host "
                 f"{fields['host']}, pid {fields['pid']}", "looks ended", "Run again", "judged afresh"):
        assert part in said, said
    assert len(wait.sleeps) == 1  # stopped at the change
    assert (out / LEASE_FILE).read_bytes() == taken[0]  # left to that run: neither replaced nor deleted


def test_the_same_run_whose_heartbeat_moved_is_still_a_clock_disagreement(tmp_path, wait) -> None:
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() - BEHIND_S - 20)
    wait.during = lambda n: _write_lease(out) if n == 1 else None  # its next beat, 10 minutes old by our clock
    with pytest.raises(JobError, match="clocks of this machine and host batch-node-7 disagree"):
        OutputLease(str(out), {}).acquire()


# 3. A heartbeat ahead of our clock is watched, and taken over when it does not change


def test_a_dead_runs_lease_from_a_clock_ahead_is_taken_over_after_the_watch(tmp_path, wait, capsys) -> None:
    out = tmp_path / "out"
    theirs = _write_lease(out, heartbeat=time.time() + AHEAD_S)  # its last beat, and no more: the run is dead

    def nothing_written_yet(n: int) -> None:
        assert (out / LEASE_FILE).read_bytes() == theirs  # watched before anything of ours is written

    wait.during = nothing_written_yet
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    assert sum(wait.sleeps) >= 45.0  # the whole watch, not taken at once
    err = capsys.readouterr().err
    assert "waiting up to 45 s to see whether the lease of" in err and "ahead of this machine's clock" in err
    taking = [line for line in err.splitlines() if line.startswith("warning: taking over the stale lease")]
    assert len(taking) == 1, err
    for part in ("run 0ther on host batch-node-7", "600 s ahead of this machine's clock",
                 "clocks of this machine and host batch-node-7 disagree", "did not change in the 45 s watched"):
        assert part in taking[0], taking[0]
    assert not (out / LEASE_FILE).exists()  # released


def test_a_live_lease_from_a_clock_ahead_is_refused_once_its_heartbeat_changes(tmp_path, wait) -> None:
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() + AHEAD_S - 20)
    beaten: list[bytes] = []

    def holder_beats(n: int) -> None:
        if n == 2:
            beaten.append(_write_lease(out, heartbeat=time.time() + AHEAD_S))

    wait.during = holder_beats
    with pytest.raises(JobError) as refused:
        OutputLease(str(out), {}).acquire()
    said = str(refused.value)
    assert said.startswith(f"output {out} is in use by another run (run 0ther on host batch-node-7"), said
    assert "clocks of this machine and host batch-node-7 disagree" in said, said
    # not 'once its heartbeat is 3 minutes old', which by our clock it will not be for 13 minutes
    assert "3 minutes old" not in said and "taken over after a 45 s watch" in said, said
    assert len(wait.sleeps) == 2  # watched, and stopped at the change
    assert (out / LEASE_FILE).read_bytes() == beaten[0]


def test_planning_lets_a_lease_from_a_clock_ahead_through_to_the_watch_without_waiting(tmp_path, monkeypatch) -> None:
    # run_job plans (refuse_live_lease, which never waits) and then acquires: a refusal in planning would stop every
    # run before acquire could watch the lease, for as long as the holder's clock is ahead
    out = tmp_path / "out"
    theirs = _write_lease(out, heartbeat=time.time() + AHEAD_S)
    planned_sleeps: list[float] = []
    monkeypatch.setattr(output_lease, "_sleep", planned_sleeps.append)
    holder = refuse_live_lease(str(out), {})
    assert planned_sleeps == []
    assert holder is not None and holder.startswith("run 0ther on host batch-node-7")
    assert "ahead of this machine's clock" in holder
    assert (out / LEASE_FILE).read_bytes() == theirs
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(output_lease, "_sleep", sleep)
    monkeypatch.setattr(output_lease, "_clock", lambda: clock[0])
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    assert clock[0] >= output_lease.LEASE_WATCH_S


def test_a_heartbeat_a_little_ahead_is_live_and_refused_at_once(tmp_path, no_wait) -> None:
    # clocks kept by NTP differ by far less than a heartbeat interval: a live run is refused without a watch
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() + 5)
    with pytest.raises(JobError, match=f"output {out} is in use by another run"):
        refuse_live_lease(str(out), {})
    with pytest.raises(JobError, match=f"output {out} is in use by another run"):
        OutputLease(str(out), {}).acquire()


def test_a_lease_of_this_machine_with_a_heartbeat_ahead_is_judged_by_its_process(tmp_path, no_wait) -> None:
    # written by our own clock (stepped back since): its pid tells, and a live process keeps it, without a watch
    out = tmp_path / "out"
    _write_lease(out, host=socket.gethostname(), pid=os.getppid(), heartbeat=time.time() + AHEAD_S)
    with pytest.raises(JobError, match=f"output {out} is in use by another run"):
        refuse_live_lease(str(out), {})
    with pytest.raises(JobError, match=f"output {out} is in use by another run"):
        OutputLease(str(out), {}).acquire()
