"""What mutation testing of the local-path checks found untested (each test here failed on a deliberate change to the
code it covers, which every earlier test let pass): the local-folder options' edges (an upper-case FILE://, a file://
chained onto another store, a folder one may not enter, jobs/train_prior.py's --out on a folder it cannot write), the
local:// spelling of a local path on a cluster, a start file NFS lists but a stat misses, a relative --checkpoint whose
worker folder holds another file of its name, the option a checkpoint's error names, and the note of a node lost
mid-run (said once, for a node lost during the run only)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from pipeline import placement
from pipeline.errors import NotOnThisNodeError
from pipeline.output import RUNS_DIR
from pipeline.sources import discover
from pipeline.stages import PurifyStage, batch_of, check_checkpoint_seen, read_stage, this_nodes_checkpoint, write_stage
from tests.jobutil import (
    cifar10_archive_stand_ins,
    evaluate_job_without_evaluation,
    image_folder,
    load_job_script,
    run_main,
    stage_records,
    started_output,
    train_prior_parsed,
)

SECRET = "s3cr3t-pw"


# --- the local-folder options (pipeline/local_folders.py) ------------------------------------------------------------

@pytest.fixture
def train_prior() -> ModuleType:
    return load_job_script("train_prior.py", "train_prior_mutation_paths")


def test_an_upper_case_file_uri_is_a_local_folder_too(train_prior: ModuleType, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a URI's scheme is case-insensitive (RFC 3986): FILE:///x is the folder /x, not a URI to refuse
    monkeypatch.chdir(tmp_path)
    assert Path(train_prior_parsed(train_prior, "--out", f"FILE://{tmp_path}/run").out) == tmp_path / "run"


def test_a_local_uri_is_a_local_folder_as_a_file_uri_is(train_prior: ModuleType, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # fsspec's other name for the local file system: local:///x/run is the folder /x/run, as the purify job reads it
    monkeypatch.chdir(tmp_path)
    assert Path(train_prior_parsed(train_prior, "--out", f"local://{tmp_path}/run").out) == tmp_path / "run"
    assert list(tmp_path.iterdir()) == []


def test_a_file_uri_chained_onto_a_server_is_refused_without_its_password(train_prior: ModuleType, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # an fsspec chain whose first link is file://: taken as a path, a folder 'run::ftp:/user:<password>@host/x' was
    # accepted for the run, the password in its name
    monkeypatch.chdir(tmp_path)
    value = f"file://{tmp_path}/run::ftp://user:{SECRET}@host/x"
    assert train_prior_parsed(train_prior, "--out", value) == 2
    err = capsys.readouterr().err
    assert "error: --out file://" in err and "give a local folder" in err and SECRET not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def evaluate(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return evaluate_job_without_evaluation(monkeypatch, "evaluate_job_mutation_paths")


@pytest.mark.parametrize("denied", ["write", "search"])
def test_both_jobs_refuse_an_out_in_a_folder_they_may_not_write_in_or_enter(
        train_prior: ModuleType, evaluate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], denied: str) -> None:
    """A folder without write permission, or without search (x) permission, which creating a file in it needs too
    (chmod a-x): refused in one line before any work. The permission is stubbed: this test may run as root, whom only
    a read-only mount refuses. jobs/train_prior.py's permission check had no test (it could be dropped unseen)."""
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    locked, real = tmp_path / "locked", os.access
    locked.mkdir()
    bit = os.W_OK if denied == "write" else os.X_OK
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: not (os.path.abspath(path) == str(locked)
                                                                       and mode & bit) and real(path, mode, *a, **k))
    said = f"{locked} is not writable by this user (no permission, or a read-only file system)"
    assert train_prior_parsed(train_prior, "--out", str(locked / "run")) == 2
    assert f"error: --out {locked / 'run'}: {said}" in capsys.readouterr().err
    argv = ["--datasets", "cifar10", "--attacks", "none", "--defenses", "none", "--subset", "20",
            "--out", str(locked / "reports"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(evaluate, argv) == 2
    assert f"error: --out {locked / 'reports'}: {said}" in capsys.readouterr().err
    assert evaluate.started == [] and list(locked.iterdir()) == []


# --- local paths on a Ray cluster (pipeline/stages.py, storage.local_file_path) --------------------------------------

def test_a_local_uri_is_a_local_path_to_the_checks_on_a_cluster(tmp_path: Path) -> None:
    # fsspec's other name for the local file system: local:///x is the driver's disk as much as file:///x is, so a
    # write task or read task on a node without it stops rather than writing there or rejecting every file
    start = started_output(tmp_path / "driver")
    node_view = tmp_path / "node"
    out = f"local://{node_view}"
    with pytest.raises(NotOnThisNodeError, match=rf"^--output {out} on node {socket.gethostname()}"):
        write_stage(batch_of(stage_records()), out, {}, start_file=f"{out}/{RUNS_DIR}/{start.name}")
    assert not node_view.exists()
    root = image_folder(tmp_path / "in", 1)
    (unit,) = discover(f"local://{root}")
    root.rename(tmp_path / "moved")
    row = {k: [v] for k, v in unit.to_row().items()}
    with pytest.raises(NotOnThisNodeError, match=r"^--input folder \S+/in is not there on node"):
        list(read_stage(row, {}, False, None, frozenset()))


def test_a_start_file_a_stat_misses_but_its_folders_listing_shows_is_seen(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # NFS: a file another machine wrote moments ago may be missed by a stat (the client's cached attributes) while the
    # server's listing of its folder holds it; the write task then went on, rather than stop a run that sees the output
    out = tmp_path / "out"
    start = started_output(out)
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: os.fspath(p) != str(start) and real(p))
    monkeypatch.chdir(tmp_path)  # the current folder is not the start file's
    manifest = write_stage(batch_of(stage_records()), str(out), {}, start_file=str(start))
    assert int(manifest["purified"][0]) == 1 and any((out / "data").iterdir())


def test_a_relative_checkpoint_here_is_the_drivers_file_not_one_of_its_name_in_the_workers_folder(
        tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # One machine, Ray started in another folder that holds a models/tiny.pt of its own (an older one): the driver's
    # absolute path of --checkpoint models/tiny.pt is here, and is the file loaded; the worker folder's copy would
    # have failed the run on its sha256
    drivers = tmp_path / "project" / "models" / "tiny.pt"
    drivers.parent.mkdir(parents=True)
    drivers.write_bytes(Path(model).read_bytes())
    ray_folder = tmp_path / "ray-started-here"
    (ray_folder / "models").mkdir(parents=True)
    (ray_folder / "models" / "tiny.pt").write_bytes(b"an older file of the same name")
    monkeypatch.chdir(ray_folder)
    assert this_nodes_checkpoint(str(drivers), "models/tiny.pt") == str(drivers)
    stage = PurifyStage(checkpoint=str(drivers), checkpoint_sha256=hashlib.sha256(drivers.read_bytes()).hexdigest(),
                        settings={"steps": 1}, preset=None, flags=None, storage_options={}, device="cpu",
                        precision="fp32", canvas_size=32, torch_threads=None, checkpoint_as_given="models/tiny.pt")
    assert stage.purifier is not None


def test_a_shipped_prior_missing_from_the_nodes_package_too_is_named_by_the_drivers_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a node whose copy of the package lacks the prior (an install without its assets): the error names the path the
    # driver verified, not one of the node's that nobody gave
    from pipeline import presets

    monkeypatch.setattr(presets, "ASSETS", tmp_path / "node-pkg" / "pipeline" / "assets")
    drivers = tmp_path / "driver-pkg" / "pipeline" / "assets" / "cifar10_prior.pt"
    assert this_nodes_checkpoint(str(drivers)) == str(drivers)
    with pytest.raises(NotOnThisNodeError, match=rf"^the default prior {drivers} is not there on node"):
        check_checkpoint_seen(this_nodes_checkpoint(str(drivers)), "the default prior")


def test_an_actors_missing_checkpoint_is_named_by_the_option_that_gave_it() -> None:
    from pipeline.config import JobConfig
    from pipeline.job import checkpoint_option

    def named(**kw: str) -> str:
        return checkpoint_option(JobConfig(input="/in", output="/out", **kw))

    assert named(checkpoint="/m/tiny.pt") == "--checkpoint"
    assert named(prior="gtsrb") == "--prior"
    assert named() == "the default prior"


# --- a node lost mid-run (placement.node_loss_watched) ---------------------------------------------------------------

@dataclass
class _Options:
    ray_address: str | None = "10.0.0.1:6379"
    actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = 0.5
    cpus_per_task: float = 0.25
    torch_threads: int | None = None
    device: str | None = None
    precision: str = "fp32"


def _node(name: str, alive: bool = True) -> dict:
    return {"NodeID": f"id-{name}", "NodeName": name, "Alive": alive, "Resources": {"CPU": 4.0}}


class _Cluster:
    """Ray as the watcher sees it: `views` of ray.nodes(), one a look (the last one repeated); `looked` is set once
    the watcher has looked `looks` times."""

    def __init__(self, views: list[list[dict]], looks: int) -> None:
        self.views, self.looks, self.calls, self.looked = views, looks, 0, threading.Event()

    def is_initialized(self) -> bool:
        return True

    def nodes(self) -> list[dict]:
        view = self.views[min(self.calls, len(self.views) - 1)]
        self.calls += 1
        if self.calls >= self.looks:
            self.looked.set()
        return view

    def available_resources(self) -> dict[str, float]:
        return {"CPU": 8.0}


def test_a_node_lost_mid_run_is_said_once_and_one_lost_before_it_never(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # ray.nodes() keeps a node dead before the run (one the autoscaler ended) among its records: the run did not lose
    # it. A node lost during the run is said once, not at every look after.
    before = [_node("10.0.1.5"), _node("10.0.1.6"), _node("10.0.1.4", alive=False)]
    after = [_node("10.0.1.5"), _node("10.0.1.6", alive=False), _node("10.0.1.4", alive=False)]
    cluster = _Cluster([before, after], looks=5)
    monkeypatch.setitem(__import__("sys").modules, "ray", cluster)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: False)
    with placement.node_loss_watched(_Options(), 0.0, period_s=0.001):
        assert cluster.looked.wait(30)
    notes = [line for line in capsys.readouterr().err.splitlines() if "lost mid-run" in line]
    assert notes == ["zip-purify: note: 1 node of the cluster lost mid-run (10.0.1.6): Ray runs its tasks and purifier "
                     "actors again on the nodes left"]


def test_the_jobs_own_local_ray_is_not_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    # one machine: no node of it can be lost while the run goes on, and Ray's node table is not asked every few seconds
    cluster = _Cluster([[_node("127.0.0.1")]], looks=1)
    monkeypatch.setitem(__import__("sys").modules, "ray", cluster)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: True)
    with placement.node_loss_watched(_Options(), 0.0, period_s=0.001):
        assert not any(t.name == "zip-purify-node-watch" for t in threading.enumerate())
    assert cluster.calls == 0
