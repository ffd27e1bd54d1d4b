"""Mutation-audit gaps in the output's lease (pipeline/lease.py): the edges of 'stale', whose process counts as gone,
leases that are not a run's record, and the settle step that decides a race no store made atomic."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, LEASE_STALE_S, OutputLease, lease_ended, read_lease


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _lease(out: Path, **fields: object) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "0ther", "started": time.time(), **fields}))


def test_a_heartbeat_exactly_stale_s_old_is_stale_and_one_just_younger_is_not() -> None:
    lease = {"run_id": "0ther", "host": "batch-node-7", "pid": 4242, "heartbeat": 1_000_000.0}
    assert lease_ended(lease, now=1_000_000.0 + LEASE_STALE_S) is not None
    assert lease_ended(lease, now=1_000_000.0 + LEASE_STALE_S - 1) is None


def test_a_dead_pid_means_nothing_when_the_lease_is_another_hosts_in_a_namespace_of_the_same_name() -> None:
    # every Linux host's first pid namespace has the same inode ('pid:[4026531836]'): only the host name tells that
    # pid 4242 is another machine's process, alive there though absent here
    lease = {"run_id": "0ther", "host": socket.gethostname() + "-other", "pid": _dead_pid(),
             "pid_namespace": output_lease._pid_namespace(), "heartbeat": time.time()}
    assert lease_ended(lease) is None


def test_a_process_that_exists_but_cannot_be_signalled_is_alive(monkeypatch) -> None:
    # os.kill(pid, 0) on another user's process raises PermissionError: it exists, its run is live
    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(output_lease.os, "kill", kill)
    lease = {"run_id": "0ther", "host": socket.gethostname(), "pid": 1 if os.getpid() != 1 else 2,
             "pid_namespace": output_lease._pid_namespace(), "heartbeat": time.time()}
    assert lease_ended(lease) is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '"a string"'])
def test_a_lease_that_is_not_a_runs_record_is_stale_and_taken_over(tmp_path, capsys, monkeypatch, content) -> None:
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.05)
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE_FILE).write_text(content)
    assert read_lease(str(out), {}) == {"unreadable": True}
    with OutputLease(str(out), {}) as lease:
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]
    assert "taking over the stale lease" in capsys.readouterr().err


def test_a_create_that_landed_before_its_retry_was_refused_is_this_runs_lease(tmp_path, monkeypatch) -> None:
    # a conditional PUT whose answer was lost lands, and its retry is refused (412): create_if_absent says False, the
    # lease there is this run's own, and the run goes on instead of refusing itself
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.05)

    def landed_then_refused(fs: object, path: str, data: bytes, what: str) -> bool:
        Path(path).write_bytes(data)
        return False

    monkeypatch.setattr(output_lease, "create_if_absent", landed_then_refused)
    out = tmp_path / "out"
    with OutputLease(str(out), {}) as lease:
        assert lease._beat is not None
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]


def two_runs_take_the_lease_at_once(out: Path, monkeypatch) -> tuple[list[OutputLease], list[JobError]]:
    """Two runs (threads 'first' and 'second') acquire the lease of `out` at once: both read the lease there before
    either writes, and the second writes a little later, well inside the settle time, as a second machine would.
    Returns (the two leases, the refusals); the caller releases the leases."""
    both_read, second_wrote = threading.Barrier(2), threading.Event()
    real_read, real_replace = output_lease.read_lease, output_lease.replace_file
    first_read: set[str] = set()
    first_wrote: list[float] = []

    def read(output: str, so: dict) -> dict | None:
        name = threading.current_thread().name
        if name == "first" and first_wrote and time.monotonic() - first_wrote[0] >= 0.3:
            # the first's read-back after a settle: the second write, 0.3 s after the barrier, has landed by then
            # whatever the threads' schedule (a second thread that waited 0.7 s for a core wrote after it, and both
            # runs won); a read-back with no settle before it comes sooner, and sees no second write yet
            second_wrote.wait(30)
        lease = real_read(output, so)
        if name in ("first", "second") and name not in first_read:  # both see the earlier lease before either writes
            first_read.add(name)
            both_read.wait(timeout=10)
        return lease

    def replace(fs: object, path: str, data: bytes, what: str) -> None:
        name = threading.current_thread().name
        if name == "second":
            time.sleep(0.3)
        real_replace(fs, path, data, what)
        if name == "first":
            first_wrote.append(time.monotonic())
        elif name == "second":
            second_wrote.set()

    monkeypatch.setattr(output_lease, "read_lease", read)
    monkeypatch.setattr(output_lease, "replace_file", replace)
    leases, refused = [OutputLease(str(out), {}), OutputLease(str(out), {})], []

    def take(lease: OutputLease) -> None:
        try:
            lease.acquire()
        except JobError as err:
            refused.append(err)

    threads = [threading.Thread(target=take, args=(lease,), name=name)
               for lease, name in zip(leases, ["first", "second"], strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return leases, refused


def test_two_runs_taking_over_one_stale_lease_at_once_one_wins(tmp_path, monkeypatch) -> None:
    """Replacing a stale lease is a plain write on every store: both runs read the stale lease, both write theirs,
    and only the settle (wait, read back) tells the earlier writer that it lost. The second write comes a little
    later, well inside the settle time, as it would from a second machine."""
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 1.0)
    out = tmp_path / "out"
    _lease(out, host="batch-node-7", pid=4242, heartbeat=time.time() - LEASE_STALE_S - 60)
    leases, refused = two_runs_take_the_lease_at_once(out, monkeypatch)
    try:
        winners = [lease for lease in leases if lease._beat is not None]
        assert len(winners) == 1 and len(refused) == 1, refused
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == winners[0].record["run_id"]
        assert winners[0].record["run_id"] in str(refused[0])
        assert str(refused[0]).startswith(f"output {out} is in use by another run")  # not 'cannot write to output'
    finally:
        for lease in leases:
            lease.release()


def test_a_refusal_names_the_other_run_and_is_not_called_a_storage_failure(tmp_path) -> None:
    out = tmp_path / "out"
    _lease(out, host="batch-node-7", pid=4242, heartbeat=time.time())
    with pytest.raises(JobError) as refused:
        OutputLease(str(out), {}).acquire()
    assert str(refused.value).startswith(f"output {out} is in use by another run (run 0ther on host batch-node-7")


def test_ctrl_c_while_settling_removes_the_lease_just_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    out = tmp_path / "out"
    _lease(out, host="batch-node-7", pid=4242, heartbeat=time.time() - LEASE_STALE_S - 60)
    real_read, reads = output_lease.read_lease, []

    def read(output: str, so: dict) -> dict | None:
        reads.append(output)
        if len(reads) == 2:  # the read-back after the settle
            assert json.loads((out / LEASE_FILE).read_text())["run_id"] != "0ther"  # ours is written by now
            raise KeyboardInterrupt
        return real_read(output, so)

    monkeypatch.setattr(output_lease, "read_lease", read)
    with pytest.raises(KeyboardInterrupt):
        OutputLease(str(out), {}).acquire()
    assert not (out / LEASE_FILE).exists()  # not left behind to block the next run for minutes


def _beats(monkeypatch, on_read=None) -> list[int]:
    """Count the heartbeat's reads (the heartbeat thread only, through its own connection); `on_read(n)` may raise or
    change the lease first."""
    monkeypatch.setattr(output_lease, "LEASE_HEARTBEAT_S", 0.01)
    real_fetch, count = output_lease._fetch_lease, [0]

    def fetch(fs: object, path: str, out: str) -> dict | None:
        if threading.current_thread().name == "output-lease":
            count[0] += 1
            if on_read is not None:
                on_read(count[0])
        return real_fetch(fs, path, out)

    monkeypatch.setattr(output_lease, "_fetch_lease", fetch)
    return count


def _wait_for(condition, what: str) -> None:
    deadline = time.time() + 20
    while not condition():
        assert time.time() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


def test_the_heartbeat_goes_on_after_a_storage_error(tmp_path, monkeypatch, capsys) -> None:
    def fail_once(n: int) -> None:
        if n == 2:
            raise OSError(5, "connection reset by peer")

    beats = _beats(monkeypatch, fail_once)
    out = tmp_path / "out"
    with OutputLease(str(out), {}) as lease:
        _wait_for(lambda: beats[0] >= 5, "beats after the failed one")
        assert lease._beat.is_alive()
        before = json.loads((out / LEASE_FILE).read_text())["heartbeat"]
        _wait_for(lambda: json.loads((out / LEASE_FILE).read_text())["heartbeat"] > before, "a refreshed heartbeat")
    assert "could not refresh the lease" in capsys.readouterr().err


def test_the_heartbeat_goes_on_past_an_unreadable_lease_and_rewrites_a_deleted_one(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    beats = _beats(monkeypatch)
    with OutputLease(str(out), {}) as lease:
        (out / LEASE_FILE).write_text("{half a lea")  # not a run's lease: neither ours nor taken over
        seen = beats[0]
        _wait_for(lambda: beats[0] >= seen + 3, "beats past the unreadable lease")
        assert lease._beat.is_alive() and lease.lost is None
        assert (out / LEASE_FILE).read_text() == "{half a lea"
        (out / LEASE_FILE).unlink()  # deleted under a live run (by hand): the heartbeat puts it back
        _wait_for(lambda: (out / LEASE_FILE).exists(), "the lease to be rewritten")
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]
        assert lease.lost is None and lease._beat.is_alive()
        lease.check()



def test_a_lease_found_gone_after_this_run_s_heartbeat_went_stale_stops_the_run(tmp_path, monkeypatch) -> None:
    """A run suspended past LEASE_STALE_S (a laptop lid, SIGSTOP) may have had its lease taken over by a run that then
    finished and released it: on waking it must stop, not write its lease back and redo or change that run's work."""
    out = tmp_path / "out"
    holder: list[OutputLease] = []

    def suspended_while_another_run_came_and_went(n: int) -> None:
        if n == 3:
            holder[0]._landed -= LEASE_STALE_S  # as a suspension leaves it: the last beat landed that long ago
            (out / LEASE_FILE).unlink()  # the run that took it over has released it

    beats = _beats(monkeypatch, suspended_while_another_run_came_and_went)
    with OutputLease(str(out), {}) as lease:
        holder.append(lease)
        _wait_for(lambda: not lease._beat.is_alive(), "the heartbeat to stop")
        assert beats[0] == 3 and not (out / LEASE_FILE).exists()  # not written back
        assert lease.taken_over
        with pytest.raises(JobError, match=r"was gone when this run's heartbeat came back after 3 minutes without one.*"
                                           r"another run may have taken the output over.*Run the same command again"):
            lease.check()
    assert not (out / LEASE_FILE).exists()


def _slow_beat(monkeypatch, wait_s: float) -> threading.Event:
    """The heartbeat's next write takes 0.5 s; release then waits up to `wait_s` for it (its join timeout is
    LEASE_HEARTBEAT_S). Returns the event set once that write has started."""
    monkeypatch.setattr(output_lease, "LEASE_HEARTBEAT_S", 0.01)
    real_replace, writing = output_lease.replace_file, threading.Event()

    def slow_replace(fs: object, path: str, data: bytes, what: str) -> None:
        if threading.current_thread().name == "output-lease" and not writing.is_set():
            monkeypatch.setattr(output_lease, "LEASE_HEARTBEAT_S", wait_s)
            writing.set()
            time.sleep(0.5)  # a slow PUT: release comes while it is in flight
        real_replace(fs, path, data, what)

    monkeypatch.setattr(output_lease, "replace_file", slow_replace)
    return writing


def test_release_stops_the_heartbeat_and_then_removes_the_lease(tmp_path, monkeypatch) -> None:
    writing = _slow_beat(monkeypatch, wait_s=20)
    out = tmp_path / "out"
    lease = OutputLease(str(out), {})
    lease.acquire()
    assert writing.wait(timeout=20)
    lease.release()
    assert not lease._beat.is_alive()
    assert not (out / LEASE_FILE).exists()


def test_a_heartbeat_slower_than_release_waits_for_does_not_leave_the_lease_behind(tmp_path, monkeypatch) -> None:
    # storage slower than LEASE_HEARTBEAT_S at the end of a run: release stops waiting for the beat in flight and
    # deletes the lease, then that beat's write lands. The lease left behind named a live pid (this process) and
    # refused the next run for LEASE_STALE_S: a notebook calling run_job twice, or a job on another machine.
    writing = _slow_beat(monkeypatch, wait_s=0.01)
    out = tmp_path / "out"
    lease = OutputLease(str(out), {})
    lease.acquire()
    assert writing.wait(timeout=20)
    lease.release()
    lease._beat.join(timeout=20)
    assert not lease._beat.is_alive()
    assert not (out / LEASE_FILE).exists()
    with OutputLease(str(out), {}):  # and the next run in this process gets the output
        pass


def test_a_run_killed_on_this_machine_leaves_a_lease_the_next_run_takes_over_at_once(tmp_path, monkeypatch) -> None:
    # the lease as a run writes it (its pid namespace included), the run then killed without releasing it
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    out = tmp_path / "out"
    code = ("import os, sys; from pipeline.lease import OutputLease; OutputLease(sys.argv[1], {}).acquire(); "
            "os._exit(9)")
    killed = subprocess.run([sys.executable, "-c", code, str(out)], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert lease_ended(json.loads((out / LEASE_FILE).read_text())) == (
        f"its process {json.loads((out / LEASE_FILE).read_text())['pid']} on this machine is gone")
    with OutputLease(str(out), {}) as lease:
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]


def test_a_lease_that_cannot_be_deleted_is_a_warning_not_an_error(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    lease = OutputLease(str(out), {})
    lease.acquire()

    def denied(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(lease.fs, "rm_file", denied)  # fsspec shares the instance: undone after the test
    lease.release()  # the run's own outcome stands
    assert "warning: could not release the lease" in capsys.readouterr().err
    assert (out / LEASE_FILE).exists()


def test_the_heartbeat_comes_several_times_before_a_lease_counts_as_stale() -> None:
    # a beat can be late by its storage retries (about 10 s) or a missed beat: a live run must never look stale
    assert 3 * output_lease.LEASE_HEARTBEAT_S <= LEASE_STALE_S
    assert output_lease.LEASE_SETTLE_S < output_lease.LEASE_HEARTBEAT_S


def test_a_lease_that_cannot_be_read_is_an_error_not_no_lease(tmp_path, monkeypatch) -> None:
    # a denied GET is not 'no lease': taking the output then would run beside the holder, or name a holder '?'
    class Denied:
        def cat_file(self, path: str) -> bytes:
            raise PermissionError(13, "Access Denied", path)

    monkeypatch.setattr(output_lease, "storage_path", lambda uri, so: (Denied(), uri))
    with pytest.raises(PermissionError):
        read_lease(str(tmp_path / "out"), {})
    with pytest.raises(PermissionError):
        output_lease.refuse_live_lease(str(tmp_path / "out"), {})


def test_a_lease_removed_meanwhile_is_released_without_a_warning(tmp_path, capsys, monkeypatch) -> None:
    # release and a late heartbeat both clean up: the second delete finds the lease gone, which is what it wanted
    out = tmp_path / "out"
    lease = OutputLease(str(out), {})
    lease.acquire()
    real_rm = lease.fs.rm_file

    def removed_meanwhile(path: str) -> None:
        real_rm(path)
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(lease.fs, "rm_file", removed_meanwhile)
    lease.release()
    assert "warning" not in capsys.readouterr().err
    assert not (out / LEASE_FILE).exists()
