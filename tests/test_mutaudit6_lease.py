"""Mutation audit of the lease heartbeat's own connection (`lease.OutputLease._own_fs`): with storage options scoped
by store (an sftp:// output beside an s3:// input, each store's options its own), the heartbeat still connects anew
after its connection is dropped; the options' scoping had dropped its wish for a new connection, and every beat after
the drop took the dropped connection again, the lease going stale under a live run."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from pipeline import storage
from tests.test_lease_connections import BEATS, _beats, _CountedSFTP


def test_an_sftp_heartbeat_with_options_scoped_by_store_connects_again_after_a_drop(tmp_path: Path, monkeypatch,
                                                                                    capsys) -> None:
    from pipeline import lease as leases

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "sftp", _CountedSFTP)
    _CountedSFTP.clear_instance_cache()
    monkeypatch.setattr(_CountedSFTP, "made", 0)
    monkeypatch.setattr(_CountedSFTP, "dropped_below", 0)
    monkeypatch.setattr(_CountedSFTP, "heartbeat_logins", 0)
    monkeypatch.setattr(_CountedSFTP, "IDLE_CALLS", 10**6)
    monkeypatch.setattr(leases, "LEASE_HEARTBEAT_S", 0.01)
    monkeypatch.setattr(storage, "backoff_delay", lambda *args, **kwargs: 0.0)
    (tmp_path / "out").mkdir()
    lease_file = tmp_path / "out" / leases.LEASE_FILE
    options = {"sftp": {}, "s3": {"endpoint_url": "http://127.0.0.1:1"}}  # the input's store's options apart
    with leases.OutputLease(f"sftp://{tmp_path / 'out'}", options) as lease:
        _beats(lease_file, BEATS, lease.record["started"])
        assert _CountedSFTP.heartbeat_logins == 1
        _CountedSFTP.drop()
        _beats(lease_file, BEATS, time.time())
        assert _CountedSFTP.heartbeat_logins == 2
    lease._beat.join()
    _CountedSFTP.clear_instance_cache()
    assert capsys.readouterr().err.count("could not refresh the lease") == 1
    assert not lease_file.exists()
