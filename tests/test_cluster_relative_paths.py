"""Relative local paths on one machine and on a cluster (see tests/test_cluster_local_paths.py for the checks): Ray's
workers keep the folder Ray was started in, not the driver's current one, so a task or actor is given the driver's
absolute path of a local --output or --checkpoint; an actor whose node lacks that path reads a relative --checkpoint in
its own folder (`ray job submit --working-dir`: that node's copy of the working dir), its sha256 still checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import job
from pipeline.errors import NotOnThisNodeError
from pipeline.stages import PurifyStage
from tests.jobutil import image_folder, small_job_config


@pytest.mark.usefixtures("ray_local")
def test_relative_paths_are_the_drivers_own_where_ray_was_started_in_another_folder(tmp_path, model,
                                                                                  monkeypatch) -> None:
    # The job's own Ray stays up for a program's later runs, and its workers keep the folder it was started in (as the
    # workers of a `ray start` head keep theirs): a relative --output or --checkpoint, read there, was another folder.
    # The run wrote its part files into that folder's out/ (and failed its end-of-run check), then was stopped as if on
    # another node of a cluster; on one machine, relative paths are the driver's.
    image_folder(tmp_path / "in", 2)
    (tmp_path / "ckpt.pt").write_bytes(Path(model).read_bytes())
    ray_folder = Path.cwd()
    monkeypatch.chdir(tmp_path)
    summary = job.run_job(small_job_config(tmp_path, model, input="in", output="out", checkpoint="ckpt.pt"))
    assert summary["status"] == "complete" and summary["this_run"]["purified"] == 2
    assert len(list((tmp_path / "out" / "data").glob("part-*.parquet"))) == 1
    assert ray_folder != tmp_path and not (ray_folder / "out").exists()


def test_a_relative_checkpoint_is_read_from_the_nodes_own_working_dir_where_the_drivers_is_not_there(
        tmp_path, model, monkeypatch) -> None:
    # `ray job submit --working-dir .` unpacks the working dir on each node under a folder of its own, and runs the
    # workers there: a relative --checkpoint is that node's copy (the sha256 the driver read still checked), where the
    # driver's absolute path of it, which the actors are given, is not there
    drivers = tmp_path / "driver-pkg" / "models" / "tiny.pt"  # not on this node
    node_pkg = tmp_path / "node-pkg"
    (node_pkg / "models").mkdir(parents=True)
    (node_pkg / "models" / "tiny.pt").write_bytes(Path(model).read_bytes())
    monkeypatch.chdir(node_pkg)
    stage = PurifyStage(checkpoint=str(drivers), checkpoint_sha256=None, settings={"steps": 1}, preset=None, flags=None,
                        storage_options={}, device="cpu", precision="fp32", canvas_size=32, torch_threads=None,
                        checkpoint_as_given="models/tiny.pt")
    assert stage.purifier is not None
    # not there either: the driver's path is named
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotOnThisNodeError, match=rf"^--checkpoint {drivers} is not there on node"):
        PurifyStage(checkpoint=str(drivers), checkpoint_sha256=None, settings={"steps": 1}, preset=None, flags=None,
                    storage_options={}, device="cpu", precision="fp32", canvas_size=32, torch_threads=None,
                    checkpoint_as_given="models/tiny.pt")
