"""Mutation audit of the lease's connections of its own on sftp:// and ftp:// outputs (`pipeline.lease`): a heartbeat
whose first connection fails goes on beating (the lease kept fresh through a long run), and a late beat that finds the
run released removes the lease it wrote through its own connection, not the driver's, which an FTP server has closed
as idle by then (the lease was left behind, holding off the next run)."""

from __future__ import annotations

import importlib
import json
import threading
import time
from pathlib import Path

from tests.test_one_connection_stores import IdleClosing


class _FirstBeatRefused(IdleClosing):
    """An FTP server that refuses the heartbeat thread's first connection (a login refused once, a network blip)."""

    refusals = 1

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - fsspec's signature
        if threading.current_thread().name == "output-lease" and type(self).refusals:
            type(self).refusals -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        super().__init__(*args, **kwargs)


def test_a_heartbeat_whose_first_connection_fails_beats_at_the_next(tmp_path: Path, monkeypatch, capsys) -> None:
    from pipeline import lease as leases

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "ftp", _FirstBeatRefused)
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.01)
    _FirstBeatRefused.refusals = 1
    (tmp_path / "out").mkdir()
    lease_file = tmp_path / "out" / leases.LEASE_FILE
    with leases.OutputLease(f"ftp://{tmp_path / 'out'}", {}) as lease:
        started = lease.record["started"]
        beat, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline:  # a beat after the refused one lands (within a few beats of 0.01 s)
            time.sleep(0.01)
            beat = json.loads(lease_file.read_bytes())["heartbeat"] if lease_file.exists() else None
            if beat is not None and beat > started:
                break
        assert beat is not None and beat > started, "the heartbeat stopped at its first refused connection"
        assert _FirstBeatRefused.refusals == 0
    lease._beat.join()
    assert "could not refresh the lease" in capsys.readouterr().err  # the refused beat, said
    assert not lease_file.exists()


class _SlowWrites(IdleClosing):
    """An FTP server whose writes take longer than the release waits for a beat: the last beat lands after it."""

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001 - fsspec's signature
        if "w" in mode:
            time.sleep(0.1)
        return super()._open(path, mode=mode, **kwargs)


def test_a_late_beat_removes_its_lease_through_its_own_connection(tmp_path: Path, monkeypatch, capsys) -> None:
    # release() stops waiting for a beat still writing and removes the lease; the beat's write lands after, and the
    # beat removes that lease itself: through the driver's connection, idle since the lease was taken, it could not
    from pipeline import lease as leases

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "ftp", _SlowWrites)
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.01)
    (tmp_path / "out").mkdir()
    with leases.OutputLease(f"ftp://{tmp_path / 'out'}", {}) as lease:
        IdleClosing.run_past_idle_timeout()  # the run: longer than the server keeps an idle connection
    lease._beat.join()
    assert "could not" not in capsys.readouterr().err
    assert not (tmp_path / "out" / leases.LEASE_FILE).exists()
