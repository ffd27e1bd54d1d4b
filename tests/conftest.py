from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("ZIP_SHARED_DIR", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference" / "guided-diffusion"

requires_shared = pytest.mark.skipif(
    not REFERENCE.exists(), reason=f"{SHARED} not found (a fresh clone without the project's shared folder)"
)


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict:
    return json.loads((REFERENCE / "tiny_checkpoints.json").read_text())


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from pipeline.placement import init_local_ray

    if not ray.is_initialized():
        init_local_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine, thread hand-offs make tiny models many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _lease_watch_on_a_fake_clock(monkeypatch):
    """The lease watch (up to 45 s before another machine's stale-looking lease is taken over) without real waiting:
    tests that take over such a lease would each wait the real 45 s. Tests of the watch itself set their own."""
    import pipeline.lease as lease

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(lease, "_sleep", sleep)
    monkeypatch.setattr(lease, "_clock", lambda: clock[0])
