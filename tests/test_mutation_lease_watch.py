"""Gaps a hand mutation audit of the lease watch of 67a31ae (pipeline/lease.py) found: each test here fails on a small
change of that code that the lease tests before it let through (named in each test's comment).

- how far ahead another machine's heartbeat must be to be watched (more than LEASE_AHEAD_S, one heartbeat);
- how a holder's heartbeat reads: 'N s ago', or 'N s ahead of this machine's clock', never a negative number;
- a write of this run's lease that landed although storage answered with an error is still released;
- a lease ahead of our clock replaced by a file that is not a run's lease is not said to have 'not changed';
- the watch's waiting line says why it waits for a lease ahead of our clock;
- any failed read during the watch (a throttled one, not only a refused one) says it was a read.

The watch's waiting runs on a fake clock (tests/conftest.py), so the tests take no real time."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, OutputLease, heartbeat_ahead, lease_holder
from pipeline.storage import RetriesExhausted
from tests.leaseutil import garble_lease_after_each_sleep, write_foreign_lease

AHEAD_S = 600.0  # the holder's clock is 10 minutes ahead of ours


def _write_lease(out: Path, **fields: Any) -> bytes:
    return write_foreign_lease(out, 600.0, **fields)


@pytest.fixture
def quick_settle(monkeypatch) -> None:
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)


def _ours(out: Path, lease: OutputLease) -> bool:
    return json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]


# --- how far ahead is 'ahead' ---


def test_a_heartbeat_exactly_lease_ahead_s_ahead_is_not_watched_and_one_just_more_is() -> None:
    # kills '> LEASE_AHEAD_S' -> '>=': the docstring and README say 'more than'
    now = 1_000_000.0
    other = {"run_id": "0ther", "host": "batch-node-7", "pid": 4242}
    assert heartbeat_ahead({**other, "heartbeat": now + output_lease.LEASE_AHEAD_S}, now) is None
    assert heartbeat_ahead({**other, "heartbeat": now + output_lease.LEASE_AHEAD_S + 0.5}, now) == pytest.approx(
        output_lease.LEASE_AHEAD_S + 0.5)


def test_a_dead_runs_lease_two_heartbeats_ahead_is_watched_and_taken_over(tmp_path, quick_settle, capsys) -> None:
    # kills LEASE_AHEAD_S = LEASE_STALE_S: a run killed on a machine whose clock is a minute ahead must not block
    # every run for LEASE_STALE_S + 1 minute; a heartbeat more than one beat ahead is watched (45 s), then taken over
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() + 2 * output_lease.LEASE_HEARTBEAT_S)
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    err = capsys.readouterr().err
    assert "waiting up to" in err and "taking over the stale lease" in err and "did not change" in err, err


# --- how a holder's heartbeat reads ---


@pytest.mark.parametrize(("offset_s", "reads"), [
    (-12.0, "(12 s ago)"),
    (0.4, "(0 s ago)"),  # a little skew (NTP): not '-0 s ago', not '0 s ahead'
    (AHEAD_S, "(600 s ahead of this machine's clock)"),
])
def test_a_holders_heartbeat_reads_as_seconds_ago_or_seconds_ahead(monkeypatch, offset_s: float, reads: str) -> None:
    # kills 'age > -1' -> 'age > 0', dropping max(age, 0) and printing the ahead seconds negative: the dry run, the
    # refusal and the takeover warning all name the holder this way
    now = 1_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    said = lease_holder({"run_id": "0ther", "host": "batch-node-7", "pid": 4242, "heartbeat": now + offset_s})
    assert said.endswith(reads), said
    assert "-" not in said.split("UTC")[-1], said  # no negative number after the heartbeat's date


# --- a write that landed although storage said it failed ---


@pytest.mark.parametrize("where", ["no lease there", "a stale lease replaced"])
def test_a_lease_write_that_landed_but_reported_an_error_is_released(tmp_path, quick_settle, monkeypatch,
                                                                     where) -> None:
    # kills setting _written only after the write returned: storage may apply a write and still answer with an
    # error (a timeout after the PUT landed); the run stops, and a lease of its own left behind would hold off the
    # next run elsewhere for LEASE_STALE_S
    out = tmp_path / "out"
    out.mkdir()
    if where == "a stale lease replaced":
        _write_lease(out)  # another machine's, 10 minutes old: watched (fake clock), then replaced
        name, real = "replace_file", output_lease.replace_file
    else:
        name, real = "create_if_absent", output_lease.create_if_absent

    def landed_then_timed_out(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise TimeoutError("the write timed out")

    monkeypatch.setattr(output_lease, name, landed_then_timed_out)
    with pytest.raises(JobError, match=f"cannot write to output {out}: .*timed out"):
        OutputLease(str(out), {}).acquire()
    assert not (out / LEASE_FILE).exists()  # ours removed; the stale one was being taken over anyway


# --- a lease ahead of our clock during the watch ---


def test_a_lease_ahead_replaced_by_a_file_that_is_no_runs_lease_is_taken_over_as_that(tmp_path, quick_settle,
                                                                                      monkeypatch, capsys) -> None:
    # kills checking 'ahead' before 'replaced': the warning would say the holder's heartbeat 'did not change', and
    # name the old holder's clock, about a lease that was replaced
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() + AHEAD_S)
    garble_lease_after_each_sleep(monkeypatch, out)
    with OutputLease(str(out), {}) as lease:
        assert _ours(out, lease)
    err = capsys.readouterr().err
    taking = [line for line in err.splitlines() if line.startswith("warning: taking over the stale lease")]
    assert len(taking) == 1, err
    assert "(unreadable)" in taking[0] and "replaced during the watch by a file that is not a run's lease" in taking[0]
    assert "did not change" not in taking[0] and "clocks" not in taking[0], taking[0]


def test_the_watch_says_it_waits_because_the_heartbeat_is_ahead_not_stale(tmp_path, quick_settle, capsys) -> None:
    # kills a waiting line that ignores 'ahead': a heartbeat 10 minutes in our future does not 'look stale'
    out = tmp_path / "out"
    _write_lease(out, heartbeat=time.time() + AHEAD_S)
    with OutputLease(str(out), {}):
        pass
    waiting = [line for line in capsys.readouterr().err.splitlines() if line.startswith("waiting up to")]
    assert len(waiting) == 1, waiting
    assert re.search(r"its heartbeat is \d+ s ahead of this machine's clock, so it looks live", waiting[0]), waiting
    assert "looks stale" not in waiting[0], waiting


# --- any failed read during the watch is a read ---


def test_a_throttled_read_during_the_watch_says_the_lease_could_not_be_read(tmp_path, quick_settle,
                                                                            monkeypatch) -> None:
    # kills catching only PermissionError: storage that throttles through every retry (RetriesExhausted, an
    # OSError) while the lease is watched did not refuse a write
    out = tmp_path / "out"
    theirs = _write_lease(out)
    real_fetch = output_lease._fetch_lease
    reads = [0]

    def throttled_after_the_first(*args: Any) -> dict[str, Any] | None:
        reads[0] += 1
        if reads[0] == 1:  # the first read finds the stale-looking lease; the watch's next read is throttled
            return real_fetch(*args)
        raise RetriesExhausted(f"read {out}/{LEASE_FILE}: gave up after 6 attempts in 9 s; last error SlowDown")

    monkeypatch.setattr(output_lease, "_fetch_lease", throttled_after_the_first)
    with pytest.raises(JobError) as refused:
        OutputLease(str(out), {}).acquire()
    said = str(refused.value)
    assert "cannot write" not in said, said
    assert f"cannot read the lease {out}/{LEASE_FILE} while watching" in said and "gave up after 6 attempts" in said
    assert (out / LEASE_FILE).read_bytes() == theirs
