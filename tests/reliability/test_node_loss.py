"""A worker node lost mid-run (a spot instance reclaimed) on a Ray cluster of several nodes: the run completes on the
nodes left, every input exactly once.

The cluster is Ray's own multi-node one on this machine (ray.cluster_utils: a head of 0 CPUs and two worker nodes of 1
CPU, each a raylet of its own); the job joins it with --ray-address, as on a real cluster. The node killed is the one
whose raylet started the purifier actor: its raylet and every process under it are SIGKILLed at once, so that the
actor is unreachable (its connections refused) until Ray declares the node dead (~17 s on Ray's defaults, its health
checks). Its tasks' retries, 3 of them, ran out in ~8 s of that: the run failed with ActorUnavailableError, the actor
never restarted on the node left (bench/node_loss_cluster.py measured the same on nodes of their own namespaces).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateutil import gate_env, let_through_until
from tests.reliability.scenario import check
from tests.reliability.test_faults import ROOT, _images

pytestmark = pytest.mark.slow


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _under(root: int) -> list[int]:
    """`root`'s live descendants (Linux /proc)."""
    parents = {int(e): _parent_of(int(e)) for e in os.listdir("/proc") if e.isdigit()}
    found, frontier = [], {root}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier}
        found += sorted(children)
        frontier = children
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the actor's node through Linux /proc")
def test_a_run_survives_the_loss_of_its_purifier_actors_node(tmp_path, tiny_model, monkeypatch) -> None:
    from ray.cluster_utils import Cluster

    # the nodes' and the job's environment: this checkout importable, the purifier's batches held at a gate so that the
    # run is still going when its node is lost, however slow the test (slowed down 0.3 s a batch instead, a test process
    # held up long enough found the run ended)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    gate = tmp_path / "gate"
    for name, value in gate_env(gate).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    proc = None
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
        ids = _images(tmp_path / "in", 96)
        out = tmp_path / "out"
        log = tmp_path / "job.log"  # a file, not a pipe that fills while the test watches the output
        with open(log, "w") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "jobs/purify.py"), "--no-progress", "--input", str(tmp_path / "in"),
                 "--output", str(out), "--checkpoint", tiny_model, "--steps", "1", "--ray-address", cluster.address,
                 "--actors", "1", "--cpus-per-actor", "0.5", "--cpus-per-task", "0.25", "--files-per-unit", "4",
                 "--tile-batch", "4", "--batch-size", "4", "--write-batch", "4"],
                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        def parts() -> int:
            return len(list((out / "data").glob("part-*.parquet")))

        # its 48 batches (24 units of 4 files, 2 batches each) let through until 2 part files land, 10 at most: the
        # node is lost with most of the run still to come
        let_through_until(gate, lambda: parts() >= 2 or proc.poll() is not None, most=10)
        lost = next((raylet for raylet in raylets for pid in _under(raylet)
                     if _title(pid).startswith("ray::") and "PurifyStage" in _title(pid)), None)
        assert parts() >= 2 and lost is not None, (
            f"the run ended, or no purifier actor was found, before the node was lost: {proc.poll()}")
        at_loss = parts()
        for pid in [lost, *_under(lost)]:  # a machine gone: its raylet and all under it at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cluster.remove_node(raylets[lost], allow_graceful=False)  # what is left of it (its agents), reaped
        (gate / "open").touch()  # the rest of the run, its lost batches again among them, goes through
        proc.wait(timeout=300)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert at_loss < parts(), "the run had written all its part files when its node was lost"
        check("purifier's node lost", str(out), ids)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cluster.shutdown()
