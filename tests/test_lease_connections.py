"""The lease's heartbeat on an ftp:// or sftp:// output reads and writes the lease through one connection of its own,
kept from beat to beat, and connects again only after that connection is dropped. Each beat read the lease through a
new connection (fsspec keeps no FTP file system for the next use): a login every 30 s for the whole run, which servers
log, and which they rate-limit or refuse past a user's few. And on sftp:// (fsspec keeps one file system per thread),
the beat after a dropped connection took the same dropped connection again: every later beat failed, and the lease
went stale under a live run."""

from __future__ import annotations

import importlib
import json
import threading
import time
from pathlib import Path

import pytest

from pipeline import storage
from tests.test_one_connection_stores import Dropping, IdleClosing

BEATS = 12


class _CountedFTP(Dropping):
    """`Dropping` (each instance one connection, logged in as it is made, dropped by `drop()`) that counts the
    connections the lease's heartbeat thread makes."""

    heartbeat_logins = 0

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - fsspec's signature
        super().__init__(*args, **kwargs)
        if threading.current_thread().name == "output-lease":
            type(self).heartbeat_logins += 1


class _CountedSFTP(_CountedFTP):
    """The same as sftp://, which fsspec caches per thread: a thread asking for it again gets its one instance."""

    protocol = ("sftp",)
    cachable = True

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001 - fsspec's signature
        path = path[len("sftp://"):] if isinstance(path, str) and path.startswith("sftp://") else path
        return IdleClosing.__mro__[1]._strip_protocol(path)


def _beats(lease_file: Path, n: int, after: float) -> None:
    """Wait until the lease has had `n` heartbeats after `after` (each beat rewrites it with a later heartbeat)."""
    seen: set[float] = set()
    deadline = time.monotonic() + 20
    while len(seen) < n and time.monotonic() < deadline:
        beat = json.loads(lease_file.read_text())["heartbeat"] if lease_file.exists() else 0
        if beat > after:
            seen.add(beat)
        time.sleep(0.002)
    assert len(seen) >= n, f"{len(seen)} beats"


@pytest.mark.parametrize("protocol", ["ftp", "sftp"])
def test_a_heartbeat_logs_in_once_and_again_only_after_its_connection_is_dropped(tmp_path: Path, monkeypatch, capsys,
                                                                                 protocol: str) -> None:
    from pipeline import lease as leases

    server = _CountedFTP if protocol == "ftp" else _CountedSFTP
    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, protocol, server)
    server.clear_instance_cache()
    monkeypatch.setattr(server, "made", 0)
    monkeypatch.setattr(server, "dropped_below", 0)
    monkeypatch.setattr(server, "heartbeat_logins", 0)
    monkeypatch.setattr(server, "IDLE_CALLS", 10**6)  # the server's idle timeout is longer than a beat, as it is
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.01)
    monkeypatch.setattr(storage, "backoff_delay", lambda *args, **kwargs: 0.0)
    (tmp_path / "out").mkdir()
    lease_file = tmp_path / "out" / leases.LEASE_FILE
    with leases.OutputLease(f"{protocol}://{tmp_path / 'out'}", {}) as lease:
        _beats(lease_file, BEATS, lease.record["started"])
        assert server.heartbeat_logins == 1  # was one a beat on ftp://
        server.drop()
        _beats(lease_file, BEATS, time.time())  # beating again: on sftp://, every beat after the drop failed
        assert server.heartbeat_logins == 2
    lease._beat.join()
    server.clear_instance_cache()
    assert capsys.readouterr().err.count("could not refresh the lease") == 1  # the beat on the dropped connection
    assert not lease_file.exists()
