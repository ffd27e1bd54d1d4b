"""Mutation-audit gaps in the record of containers read whole (pipeline.ledger) and the output's lease
(pipeline.lease), tested against the modules' functions (no Ray). The mutant ids in the comments (L: ledger.py,
E: lease.py) are those of the audit table in this file's commit message."""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, LEASE_STALE_S, OutputLease, lease_ended, read_lease, refuse_live_lease
from pipeline.ledger import ContainerRead, container_ids, ledger_path, read_ledger, unchanged_and_done, write_ledger
from pipeline.sources import ReadUnit, ids_digest
from tests.leaseutil import put_lease, write_foreign_lease
from tests.test_mutation_lease import _beats, _dead_pid, _lease, _wait_for, two_runs_take_the_lease_at_once

# --- pipeline.ledger ---


def test_the_rows_of_a_parquet_file_in_a_folder_with_a_hash_are_its_records() -> None:
    # kills L02: split at the first '#', 'run#3/t.parquet#0' was no row of t.parquet: a resumed run purified the row
    # again (a duplicate) and the file was never skipped unread
    units = [ReadUnit("parquet", ("/in/run#3/t.parquet",), "/in"), ReadUnit("parquet", ("/in/a#b.parquet",), "/in")]
    done = ["run#3/t.parquet#0", "run#3/t.parquet#11", "run#3/t.parquet#unreadable", "a#b.parquet#2", "a#b.parquet"]
    assert container_ids(done, units) == {"/in/run#3/t.parquet": ["run#3/t.parquet#0", "run#3/t.parquet#11"],
                                          "/in/a#b.parquet": ["a#b.parquet#2"]}


def test_a_containers_leftover_ids_survive_the_record_and_it_is_still_skipped_unread(tmp_path) -> None:
    # kills L14 (leftover not read back), L23 (not written), L31 (not left out) and L34 (left out by count): a shard
    # rewritten smaller keeps its old rows, and without its leftover the next --incremental run read it again each run
    out = str(tmp_path / "out")
    unit = ReadUnit("tar", ("/in/s.tar",), "/in", (100,), ("v2",))
    gives = ["s.tar/0", "s.tar/1"]
    entry = ContainerRead("/in/s.tar", 100, "v2", 2, ids_digest(gives), leftover=("s.tar/2",))
    write_ledger(out, {}, {"/in/s.tar": entry})
    back = read_ledger(out, {})
    assert back == {"/in/s.tar": entry}
    # the output's ids come in no particular order: the leftover one first here
    assert unchanged_and_done(unit, "v2", back["/in/s.tar"], ["s.tar/2", *gives])


def test_the_first_incremental_run_finds_no_record_without_a_note(tmp_path, capsys) -> None:
    # kills L15: a missing record (every first --incremental run) was reported as a record ignored
    assert read_ledger(str(tmp_path / "out"), {}) == {}
    assert capsys.readouterr().err == ""


def test_a_presigned_containers_address_is_not_written_to_the_record(tmp_path) -> None:
    # kills L19: the signature of a presigned shard ('?X-Amz-Signature=...') is access to it: it must not be left in
    # the output (and, renewed at each signing, the entry could never match again)
    out = str(tmp_path / "out")
    signed = "https://h.example/s.tar?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=5ecret5ig"
    plain = "https://h.example/t.tar"
    entries = {p: ContainerRead(p, 10, "etag", 0, ids_digest([])) for p in (signed, plain)}
    write_ledger(out, {}, entries)
    text = open(ledger_path(out)).read()
    assert "5ecret5ig" not in text and "AKIDEXAMPLE" not in text
    assert read_ledger(out, {}) == {plain: entries[plain]}
    assert json.loads(text)["format"] == 1



def test_a_containers_address_with_a_password_is_not_written_to_the_record(tmp_path) -> None:
    # BUG: a web folder read with its user and password in the URL (https://user:password@host/shards/) gives
    # containers whose listed paths hold them, and a complete run wrote them to OUTPUT/_containers/containers.json in
    # plain text. Such a container is read again by a later run (its done ids skipped), as a presigned one is.
    out = str(tmp_path / "out")
    with_password = "https://alice:s3cretpw@h.example/shards/s.tar"
    with_token = "https://ghp0token0value@h.example/shards/u.tar"
    plain = "https://h.example:8443/shards/me@t.tar"
    entries = {p: ContainerRead(p, 10, "etag", 0, ids_digest([])) for p in (with_password, with_token, plain)}
    write_ledger(out, {}, entries)
    text = open(ledger_path(out)).read()
    assert "s3cretpw" not in text and "ghp0token0value" not in text
    assert read_ledger(out, {}) == {plain: entries[plain]}


# --- pipeline.lease ---


def test_a_lease_whose_heartbeat_is_not_a_time_is_stale_not_a_crash(tmp_path) -> None:
    # kills E02: a heartbeat written as text (a hand-made or foreign lease) failed planning with a TypeError instead of
    # being judged stale and named as such
    write_foreign_lease(tmp_path / "out", heartbeat="2026-12-06T09:00:00Z")
    lease = read_lease(str(tmp_path / "out"), {})
    assert lease_ended(lease) == "no heartbeat for 3 minutes"
    holder = refuse_live_lease(str(tmp_path / "out"), {})
    assert holder is not None and "run 0ther on host batch-node-7" in holder and "last heartbeat unknown" in holder


def test_planning_says_an_unreadable_lease_is_unreadable(tmp_path) -> None:
    # kills E24: --dry-run named the garbled lease 'run ? on host ?, pid ?, ...' as if a run had written it
    put_lease(tmp_path / "out", b"{half a lea")
    assert refuse_live_lease(str(tmp_path / "out"), {}) == "unreadable"


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The lease module's wall clock, set by the test (its heartbeats and their ages); sleeps stay real."""
    now = [1.9e9]
    monkeypatch.setattr(output_lease, "time", SimpleNamespace(time=lambda: now[0], sleep=time.sleep,
                                                              strftime=time.strftime, gmtime=time.gmtime))
    return now


def test_a_lease_deleted_under_a_run_older_than_stale_s_whose_beats_land_is_written_back(tmp_path, monkeypatch,
                                                                                       clock) -> None:
    # kills E55: a beat that landed did not count as landed, so any run past LEASE_STALE_S whose lease was deleted by
    # hand stopped as if suspended, instead of writing its lease back
    out = tmp_path / "out"

    def ten_seconds_a_beat_then_deleted(n: int) -> None:
        clock[0] += 10.0
        if n == 40:  # 400 s into the run, every beat landed
            (out / LEASE_FILE).unlink()

    beats = _beats(monkeypatch, ten_seconds_a_beat_then_deleted)
    with OutputLease(str(out), {}) as lease:
        _wait_for(lambda: beats[0] >= 43 or not lease._beat.is_alive(), "beats past the deleted lease")
        assert not lease.taken_over
        lease.check()
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]


def test_a_run_whose_lease_went_stale_but_is_still_its_own_goes_on(tmp_path, monkeypatch, clock) -> None:
    # kills E59: a run suspended past LEASE_STALE_S whose lease nobody took over (still its own) stopped with 'another
    # run may have taken the output over', though none did
    out = tmp_path / "out"

    def suspended(n: int) -> None:
        if n == 3:
            clock[0] += 2 * LEASE_STALE_S

    beats = _beats(monkeypatch, suspended)
    with OutputLease(str(out), {}) as lease:
        _wait_for(lambda: beats[0] >= 6 or not lease._beat.is_alive(), "beats after the suspension")
        assert not lease.taken_over
        lease.check()
        assert json.loads((out / LEASE_FILE).read_text())["heartbeat"] == clock[0]


def test_a_lease_gone_after_exactly_stale_s_without_a_beat_stops_the_run(tmp_path, monkeypatch, clock) -> None:
    # kills E58: another run may take over a lease whose heartbeat is exactly LEASE_STALE_S old (lease_ended); the run
    # that held it must then not write it back as if nothing happened
    out = tmp_path / "out"
    holder: list[OutputLease] = []

    def silent_for_stale_s_then_gone(n: int) -> None:
        if n == 3:
            clock[0] = holder[0]._landed + LEASE_STALE_S
            (out / LEASE_FILE).unlink()

    _beats(monkeypatch, silent_for_stale_s_then_gone)
    with OutputLease(str(out), {}) as lease:
        holder.append(lease)
        _wait_for(lambda: not lease._beat.is_alive(), "the heartbeat to stop")
        assert lease.taken_over and not (out / LEASE_FILE).exists()
        with pytest.raises(JobError, match="was gone when this run's heartbeat came back"):
            lease.check()


def test_two_runs_replacing_a_dead_local_runs_lease_at_once_one_wins(tmp_path, monkeypatch) -> None:
    # kills E37 (no settle) and E38 (the lease not read back after it): a stale lease is replaced by a plain write on
    # every store, and a lease this machine's dead run left is not watched first, so only the settle tells the earlier
    # writer that a second run wrote after it. Both runs purified into the one output.
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 1.0)
    out = tmp_path / "out"
    _lease(out, host=socket.gethostname(), pid_namespace=output_lease._pid_namespace(), pid=_dead_pid(),
           heartbeat=time.time())
    leases, refused = two_runs_take_the_lease_at_once(out, monkeypatch)
    try:
        winners = [lease for lease in leases if lease._beat is not None]
        assert [lease.record["run_id"] for lease in winners] == [leases[1].record["run_id"]], refused
        assert len(refused) == 1 and str(refused[0]).startswith(f"output {out} is in use by another run (run "
                                                                f"{leases[1].record['run_id']} ")
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == leases[1].record["run_id"]
    finally:
        for lease in leases:
            lease.release()


def test_a_failed_heartbeat_is_said_without_the_outputs_password(monkeypatch, capsys) -> None:
    # kills E63: the storage error of a heartbeat names the lease's URI, an FTP password in it printed into a
    # scheduler's log (fsspec's memory store takes such a URL as a path: it stands in for an FTP server)
    import fsspec

    out = "memory://writer:beat-pa55word@host/beat-out"
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)  # the memory store's lease is read back after it

    def refused(n: int) -> None:
        if n == 2:
            raise OSError(f"read {out}/{LEASE_FILE}: 530 Login incorrect")

    beats = _beats(monkeypatch, refused)
    try:
        with OutputLease(out, {}):
            _wait_for(lambda: beats[0] >= 4, "beats after the failed one")
    finally:
        fs = fsspec.filesystem("memory")
        fs.rm(fs._strip_protocol(out), recursive=True)
    err = capsys.readouterr().err
    shown = "memory://writer:***@host/beat-out"
    assert f"could not refresh the lease of {shown}: OSError: read {shown}/{LEASE_FILE}: 530 Login incorrect" in err, err
    assert "beat-pa55word" not in err


def test_a_lease_that_cannot_be_released_is_said_without_the_outputs_password(monkeypatch, capsys) -> None:
    # kills E75: the store's refusal names the lease's path, with the FTP password in it, in the run's last warning
    import fsspec

    out = "memory://writer:release-pa55word@host/release-out"
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)  # the memory store's lease is read back after it
    lease = OutputLease(out, {})
    lease.acquire()

    def denied(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(lease.fs, "rm_file", denied)  # fsspec shares the instance: undone after the test
    try:
        lease.release()
    finally:
        monkeypatch.undo()
        fs = fsspec.filesystem("memory")
        fs.rm(fs._strip_protocol(out), recursive=True)
    err = capsys.readouterr().err
    assert f"could not release the lease memory://writer:***@host/release-out/{LEASE_FILE} (" in err, err
    assert "Permission denied" in err and "release-pa55word" not in err, err
