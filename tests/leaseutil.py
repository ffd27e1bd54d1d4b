"""Helpers for lease tests: another machine's lease written as a run writes it, and a lease garbled mid-watch."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pipeline.lease as output_lease
from pipeline.lease import LEASE_FILE


def put_lease(out: Path, data: bytes) -> None:
    """Write lease bytes whole (rename over), as a run writes its lease."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lease.tmp").write_bytes(data)
    os.replace(out / ".lease.tmp", out / LEASE_FILE)


def write_foreign_lease(out: Path, behind_s: float = 600.0, **fields: Any) -> bytes:
    """The lease of a run on another machine whose heartbeat looks `behind_s` old by our clock; `fields` override."""
    heartbeat = time.time() - behind_s
    record = {"run_id": "0ther", "host": "batch-node-7", "pid": 4242,
              # every Linux host's first PID namespace has the same name: the host name tells the machines apart
              "pid_namespace": output_lease._pid_namespace(), "started": heartbeat - 3600,
              "heartbeat": heartbeat, **fields}
    data = json.dumps(record).encode()
    put_lease(out, data)
    return data


def garble_lease_after_each_sleep(monkeypatch, out: Path) -> None:
    """Make the lease unreadable after every sleep of the watch (what a foreign, non-run writer might leave)."""
    sleep = output_lease._sleep

    def sleep_then_garble(seconds: float) -> None:
        sleep(seconds)
        (out / LEASE_FILE).write_text("{not json")

    monkeypatch.setattr(output_lease, "_sleep", sleep_then_garble)
