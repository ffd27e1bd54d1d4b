"""Another machine's lease that looks stale is watched before it is taken over (pipeline/lease.py).

A heartbeat is written by the holder's clock and was judged by ours alone: with host A's clock 10 minutes behind host
B's (no NTP), a run on B took A's live lease over (in 0.1 s, while A refreshed it every heartbeat), and two runs wrote
one output. A run now reads such a lease again for LEASE_WATCH_S and stops, naming the holder and the clocks, when it
still changes. The watch's waiting runs on a fake clock here, so the tests take no real time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, OutputLease, refuse_live_lease
from tests.leaseutil import write_foreign_lease

SKEW_S = 600.0  # the holder's clock is 10 minutes behind ours


def _write_lease(out: Path, **fields: Any) -> bytes:
    return write_foreign_lease(out, SKEW_S, **fields)




def _ours(out: Path, lease: OutputLease) -> bool:
    return json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]


def test_a_live_lease_from_a_machine_whose_clock_is_behind_is_not_taken_over(tmp_path, wait, capsys) -> None:
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() - SKEW_S - 20)  # its last beat 20 s ago, by its own clock
    beaten: list[bytes] = []

    def holder_beats(n: int) -> None:
        if n == 2:  # the holder's next heartbeat, from its clock: still 10 minutes old by ours
            beaten.append(_write_lease(out))

    wait.during = holder_beats
    with pytest.raises(JobError) as refused:
        OutputLease(str(out), {}).acquire()
    said = str(refused.value)
    assert said.startswith(f"output {out} is in use by another run (run 0ther on host batch-node-7, pid 4242"), said
    for part in ("its heartbeat is still refreshed although it looks 10 minutes old on this machine's clock",
                 "clocks of this machine and host batch-node-7 disagree", "NTP", "Run again once that run has ended"):
        assert part in said, said
    assert "waiting up to 45 s to see whether the lease of" in capsys.readouterr().err
    assert len(wait.sleeps) == 2  # stopped at the change, not after the whole watch
    assert sorted(p.name for p in out.iterdir()) == [LEASE_FILE]  # nothing written beside it
    assert (out / LEASE_FILE).read_bytes() == beaten[0]  # the holder's lease: neither replaced nor deleted


def test_a_lease_refreshed_by_a_running_thread_is_seen_with_the_real_clock(tmp_path, monkeypatch) -> None:
    # the module's own sleep and clock: another run (a thread here) rewrites its lease while this one watches
    monkeypatch.setattr(output_lease, "LEASE_WATCH_S", 20.0, raising=False)
    monkeypatch.setattr(output_lease, "LEASE_WATCH_POLL_S", 0.05, raising=False)
    monkeypatch.setattr(output_lease, "_sleep", time.sleep, raising=False)
    monkeypatch.setattr(output_lease, "_clock", time.monotonic, raising=False)
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    out = tmp_path / "out"
    _write_lease(out)
    stop = threading.Event()

    def holder() -> None:
        while not stop.wait(0.01):
            _write_lease(out)

    beating = threading.Thread(target=holder, daemon=True)
    beating.start()
    try:
        with pytest.raises(JobError, match="clocks of this machine and host batch-node-7 disagree"):
            OutputLease(str(out), {}).acquire()
    finally:
        stop.set()
        beating.join()
    assert json.loads((out / LEASE_FILE).read_text())["run_id"] == "0ther"


@pytest.mark.parametrize("holder", ["another host", "this host name in another PID namespace"])
def test_a_stale_lease_that_stays_unchanged_for_the_watch_is_taken_over(tmp_path, wait, capsys, holder) -> None:
    out = tmp_path / "out"
    fields = {} if holder == "another host" else {"host": socket.gethostname(), "pid_namespace": "pid:[1]"}
    theirs = _write_lease(out, **fields)

    def nothing_written_yet(n: int) -> None:
        assert (out / LEASE_FILE).read_bytes() == theirs  # watched before anything of ours is written

    wait.during = nothing_written_yet
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    err = capsys.readouterr().err
    assert "waiting up to 45 s to see whether the lease of" in err and "is still refreshed" in err
    assert sum(wait.sleeps) >= 45.0
    assert "warning: taking over the stale lease" in err and "none in the 45 s watched" in err
    assert not (out / LEASE_FILE).exists()  # released


def test_a_lease_deleted_during_the_watch_leaves_the_output_free(tmp_path, wait, capsys) -> None:
    out = tmp_path / "out"
    _write_lease(out)
    wait.during = lambda n: (out / LEASE_FILE).unlink() if n == 1 else None  # the holder ended and released it
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    assert len(wait.sleeps) == 1
    assert "taking over" not in capsys.readouterr().err  # nothing was taken over: the lease was created anew


def test_another_run_taking_the_lease_during_the_watch_is_named(tmp_path, wait) -> None:
    out = tmp_path / "out"
    _write_lease(out)
    wait.during = lambda n: _write_lease(out, run_id="th1rd", host="batch-node-9", heartbeat=time.time()) if n == 1 \
        else None
    with pytest.raises(JobError) as refused:
        OutputLease(str(out), {}).acquire()
    assert str(refused.value).startswith(f"output {out} is in use by another run (run th1rd on host batch-node-9")
    assert "clocks" not in str(refused.value)  # its heartbeat is fresh by our clock: the plain refusal


def test_ctrl_c_during_the_watch_leaves_the_other_lease_alone(tmp_path, wait) -> None:
    out = tmp_path / "out"
    theirs = _write_lease(out)

    def ctrl_c(n: int) -> None:
        raise KeyboardInterrupt

    wait.during = ctrl_c
    with pytest.raises(KeyboardInterrupt):
        OutputLease(str(out), {}).acquire()
    assert (out / LEASE_FILE).read_bytes() == theirs  # release() deleted only a lease of ours, and there is none


@pytest.fixture
def no_wait(monkeypatch) -> None:
    def sleep(seconds: float) -> None:
        raise AssertionError("the watch waited")

    monkeypatch.setattr(output_lease, "_sleep", sleep, raising=False)
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)


@pytest.mark.parametrize("heartbeat_age_s", [0.0, SKEW_S])
def test_a_lease_of_this_machine_is_judged_at_once(tmp_path, no_wait, capsys, heartbeat_age_s) -> None:
    # its process is asked (gone: over at once), and its heartbeat was written by our own clock: nothing to watch
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    _write_lease(out, host=socket.gethostname(), pid=dead.pid, heartbeat=time.time() - heartbeat_age_s)
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    err = capsys.readouterr().err
    assert "warning: taking over the stale lease" in err and "waiting" not in err


def test_an_unreadable_lease_is_taken_over_without_a_watch(tmp_path, no_wait, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_text("{not json")  # not a run's lease: runs write whole files
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    err = capsys.readouterr().err
    assert "taking over the stale lease of" in err and "(unreadable)" in err and "waiting" not in err


def test_planning_reports_a_stale_looking_lease_without_waiting(tmp_path, no_wait) -> None:
    # planning and --dry-run call it stale; whether it is still refreshed is watched when the run takes the lease
    out = tmp_path / "out"
    theirs = _write_lease(out)
    stale = refuse_live_lease(str(out), {})
    assert stale is not None and stale.startswith("run 0ther on host batch-node-7, pid 4242")
    assert (out / LEASE_FILE).read_bytes() == theirs


def test_the_watch_outlasts_a_heartbeat_and_ends_long_before_a_lease_goes_stale() -> None:
    # one beat late by its storage retries (about 10 s) is still seen; a run that waited is still well inside its own
    # lease's staleness once it writes
    assert output_lease.LEASE_HEARTBEAT_S + 10 <= output_lease.LEASE_WATCH_S <= output_lease.LEASE_STALE_S / 2
    assert output_lease.LEASE_WATCH_POLL_S * 3 <= output_lease.LEASE_WATCH_S


def test_the_lease_warnings_name_the_output_without_its_credentials(wait, capsys) -> None:
    """The watch's and the takeover's lines named the output as given: an FTP password, printed into a scheduler's log.
    fsspec's memory store takes such a URL as a path, so it stands in for an FTP server here."""
    import fsspec

    out = "memory://writer:lease-pa55word@host/lease-test-out"
    fs = fsspec.filesystem("memory")
    record = {"run_id": "0ther", "host": "batch-node-7", "pid": 4242, "pid_namespace": output_lease._pid_namespace(),
              "started": time.time() - 4200, "heartbeat": time.time() - SKEW_S}
    fs.pipe(f"{fs._strip_protocol(out)}/{LEASE_FILE}", json.dumps(record).encode())
    try:
        with OutputLease(out, {}) as lease:
            assert lease.record["run_id"] != "0ther"
    finally:
        fs.rm(fs._strip_protocol(out), recursive=True)
    err = capsys.readouterr().err
    assert "the lease of memory://writer:***@host/lease-test-out" in err, err
    assert "warning: taking over the stale lease of memory://writer:***@host/lease-test-out" in err, err
    assert "lease-pa55word" not in err, err
