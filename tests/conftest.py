from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("ZIP_SHARED_DIR", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference" / "guided-diffusion"

requires_shared = pytest.mark.skipif(
    not REFERENCE.exists(), reason=f"{SHARED} not found (a fresh clone without the project's shared folder)"
)


# The reliability scenarios' table (docs/guarantees.md): tests/reliability puts each line in its test's report
# under this name; this file, which the process that writes the summary always loads, collects and prints them.
SCENARIO_PROPERTY = "reliability_scenario"
_scenario_lines: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # the last report of a test, holding every property its fixtures added
        _scenario_lines.extend(value for key, value in report.user_properties if key == SCENARIO_PROPERTY)


def pytest_terminal_summary(terminalreporter) -> None:
    if _scenario_lines:
        terminalreporter.section("reliability scenarios")
        terminalreporter.write_line(f"{'scenario':<34} inputs purified rejected duplicates lost")
        for line in _scenario_lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_as_in_a_terminal():
    """A shell starts a background job (`pytest &`, nohup) with SIGINT ignored, and the job keeps an ignored signal
    ignored on purpose (pipeline.stopped_run.signals_interrupt): the tests that press Ctrl-C would then see nothing happen.
    They test a run started from a terminal, so the suite gets Python's own Ctrl-C handler back for its duration."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


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
def joined_ray_env(ray_local) -> dict[str, str]:
    """The environment for a subprocess run of the job that joins this test process's Ray (RAY_ADDRESS), as a run
    submitted to a cluster does, instead of starting a Ray of its own: that start and shutdown cost a subprocess run
    about 15 of its ~21 CPU seconds (4 PNGs, tiny model, 2 cores; 3 s of driver + ~2.5 s of actor when joined). For
    tests whose subject is not the process's own local Ray (its start, its quiet output, Ctrl-C from a terminal): a
    joined run prints Ray Data's INFO lines, as on a cluster. RAY_AUTH_MODE: this Ray has token authentication on."""
    import ray

    return dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
                RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread in the test process, for every test (a test that needs another count sets its own; the count
    is put back after each test). On a busy 2-core machine, thread hand-offs make tiny models many times slower: with
    the suite in two processes (-n 2) each took both cores, and tests/test_sampler.py took 49-98 s instead of 9 s.
    Ray's workers and the job's subprocesses keep their own counts: this is the test process's alone."""
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


@dataclass
class FakeWait:
    """The watch's sleeps, on a fake clock; `during(n)` runs in the n-th sleep (the other run's doings meanwhile)."""

    sleeps: list[float] = field(default_factory=list)
    during: Any = None


@pytest.fixture
def wait(monkeypatch) -> FakeWait:
    """For tests of the lease watch itself: its sleeps on a fake clock, recorded."""
    import pipeline.lease as lease_module

    fake, clock = FakeWait(), [1000.0]

    def sleep(seconds: float) -> None:
        fake.sleeps.append(seconds)
        clock[0] += seconds
        if fake.during is not None:
            fake.during(len(fake.sleeps))

    # raising=False: on code without the watch these names are absent, and the test fails on what it checks. The
    # lengths are set, not inherited, so that the messages checked say 45 s whatever the autouse fixture above patches
    monkeypatch.setattr(lease_module, "LEASE_WATCH_S", 45.0, raising=False)
    monkeypatch.setattr(lease_module, "LEASE_WATCH_POLL_S", 5.0, raising=False)
    monkeypatch.setattr(lease_module, "_sleep", sleep, raising=False)
    monkeypatch.setattr(lease_module, "_clock", lambda: clock[0], raising=False)
    monkeypatch.setattr(lease_module, "LEASE_SETTLE_S", 0.01)
    return fake


@pytest.fixture(scope="module")
def purifier():
    """A tiny random-weight Purifier (16 px model, 1 step, pool 2): the API's behaviour, not its quality."""
    import torch

    from pipeline import Purifier, ZipSettings
    from pipeline.model import UNetConfig, build_unet

    torch.manual_seed(0)
    model = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                                  num_res_blocks=1))
    return Purifier(model, ZipSettings(steps=1, pool=2))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A tiny random-weight checkpoint file (tests.jobutil.tiny_model_file), one per test module: for the job's runs."""
    from tests.jobutil import tiny_model_file

    return tiny_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture
def web(tmp_path: Path):
    """A folder served over HTTP on a free local port (tests/webutil.py): (the folder, its URL ending in '/')."""
    from tests.webutil import serving

    folder = tmp_path / "site"
    folder.mkdir()
    with serving(folder) as url:
        yield folder, url
