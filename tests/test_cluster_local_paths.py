"""A local path (a bare path, file://) on a Ray cluster of several machines is the driver's machine's disk, but read
tasks, write tasks and purifier actors run on whichever node Ray picks. Without a shared file system each node wrote
its part files to its own disk (the driver's end-of-run check and the next run never saw them), recorded the inputs it
could not find as rejects, and a GPU node's actor could not load a checkpoint on the head. Each now stops the run with
one line naming the flag, the path, the node and the fix, where the work runs, before it writes anything there."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from pipeline import cli, job
from pipeline.errors import JobFailed, NotOnThisNodeError
from pipeline.output import RUNS_DIR, SUMMARY_FILE
from pipeline.sources import discover
from pipeline.stages import (
    PurifyStage,
    batch_of,
    check_checkpoint_seen,
    read_stage,
    records_of,
    write_stage,
)
from pipeline.stopped_run import failure_reason
from tests.jobutil import image_bytes, image_folder, small_job_argv, small_job_config, stage_records, started_output

FIX = "object store URI (s3://...) or a folder every node mounts at the same path"


# --- write tasks ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["", "file://"])
@pytest.mark.parametrize("node_has_folder", [False, True])
def test_a_write_on_a_node_without_the_drivers_output_stops_and_creates_nothing(tmp_path, scheme, node_has_folder) -> None:
    start = str(started_output(tmp_path / "driver"))  # the driver's disk: the only one holding the run's start file
    node_view = tmp_path / "node"  # what a worker node holds at the output's path: nothing, or a folder of its own
    if node_has_folder:
        node_view.mkdir()
    out = f"{scheme}{node_view}"
    with pytest.raises(NotOnThisNodeError) as err:
        write_stage(batch_of(stage_records()), out, {}, start_file=f"{out}/{RUNS_DIR}/{os.path.basename(start)}")
    message = str(err.value)
    assert message.startswith(f"--output {out} on node {socket.gethostname()}")
    assert f"{RUNS_DIR}/{os.path.basename(start)}" in message and FIX in message
    # nothing made on this node: no folder, no part file, no temporary
    assert node_view.exists() == node_has_folder and not (node_has_folder and any(node_view.iterdir()))


def test_a_write_that_sees_the_drivers_start_file_writes_as_before(tmp_path) -> None:
    out = tmp_path / "out"
    start = str(started_output(out))
    manifest = write_stage(batch_of(stage_records()), str(out), {}, start_file=start)
    files = json.loads(manifest["files"][0])
    assert [f.split("/")[0] for f in files] == ["data", "rejects"] and all((out / f).is_file() for f in files)
    assert int(manifest["purified"][0]) == 1 and int(manifest["rejected"][0]) == 1
    # the same output as a file:// URI: the same file, written again
    assert write_stage(batch_of(stage_records()), f"file://{out}", {}, start_file=f"file://{start}")["files"][0] == \
        manifest["files"][0]


def test_an_object_store_output_is_not_looked_up(tmp_path) -> None:
    # memory:// stands for any store every node reaches alike: the start file is not asked for (no request per batch)
    manifest = write_stage(batch_of(stage_records()), "memory://cluster-out", {},
                           start_file="memory://cluster-out/_runs/never-written.json")
    assert int(manifest["purified"][0]) == 1
    import fsspec

    assert fsspec.filesystem("memory").exists("/cluster-out/data")


# --- read tasks -------------------------------------------------------------------------------------------------------

def _row(unit) -> dict:
    return {k: [v] for k, v in unit.to_row().items()}


def test_a_read_on_a_node_without_the_input_folder_stops_instead_of_rejecting_its_files(tmp_path) -> None:
    root = image_folder(tmp_path / "in", 3)
    (unit,) = discover(str(root))
    node_view = tmp_path / "in-elsewhere"
    root.rename(node_view)  # this node's disk does not hold the folder the driver listed
    with pytest.raises(NotOnThisNodeError) as err:
        list(read_stage(_row(unit), {}, False, None, frozenset()))
    message = str(err.value)
    assert message.startswith(f"--input folder {root} is not there on node {socket.gethostname()}")
    assert FIX in message
    assert not root.exists()  # nothing made in its place


def test_a_file_gone_since_the_listing_is_still_its_own_reject(tmp_path) -> None:
    root = image_folder(tmp_path / "in", 3)
    (unit,) = discover(f"file://{root}")
    (root / "1.png").unlink()
    records = [r for b in read_stage(_row(unit), {}, False, None, frozenset()) for r in records_of(b)]
    assert sorted(r["id"] for r in records if r["kind"] == "image") == ["0.png", "2.png"]
    [reject] = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == "1.png" and reject["stage"] == "read"


# --- purifier actors --------------------------------------------------------------------------------------------------

def test_an_actor_on_a_node_without_the_checkpoint_names_it_the_node_and_the_fix(tmp_path, model) -> None:
    gone = tmp_path / "ckpt" / "model.pt"
    with pytest.raises(NotOnThisNodeError) as err:
        PurifyStage(checkpoint=str(gone), checkpoint_sha256=None, settings={"steps": 1}, preset=None, flags=None,
                    storage_options={}, device="cpu", precision="fp32", canvas_size=32, torch_threads=None)
    assert str(err.value).startswith(f"--checkpoint {gone} is not there on node {socket.gethostname()}")
    assert FIX in str(err.value)
    with pytest.raises(NotOnThisNodeError, match=r"^--prior file:///nowhere/p\.pt is not there"):
        check_checkpoint_seen("file:///nowhere/p.pt", "--prior")
    check_checkpoint_seen(model)  # there: nothing said
    check_checkpoint_seen("s3://bucket/model.pt")  # a store: not looked up here (the actor's load reads it)


# --- how it reaches the user --------------------------------------------------------------------------------------------

def test_the_error_is_not_retried_and_its_line_is_kept_whole() -> None:
    long_path = "/mnt/" + "d" * 200
    err = NotOnThisNodeError(f"--output {long_path} on node gpu-1 (10.0.0.7), where a write task ran, lacks ...: {FIX}")
    assert not isinstance(err, job.RetriedByRay)
    # as Ray hands a task's failure to the driver: the worker's exception line inside the remote traceback
    wrapped = RuntimeError(f"ray::Write() (pid=1)\n  File \"x\", line 1\npipeline.errors.NotOnThisNodeError: {err}")
    assert failure_reason(wrapped) == f"NotOnThisNodeError: {err}"


@pytest.mark.usefixtures("ray_local")
def test_a_run_whose_write_task_does_not_see_the_output_stops_with_one_line_and_records_it(tmp_path, model, monkeypatch,
                                                                                           capsys) -> None:
    image_folder(tmp_path / "in", 2)
    built = job.build_pipeline

    def on_a_node_without_the_output(config, plan, placement, threads, start_file=None):
        # what a write task on another node sees: the output path, without the driver's start file
        assert start_file is not None and Path(start_file).is_file()  # the driver's own file, written at the start
        return built(config, plan, placement, threads, f"{tmp_path}/elsewhere/{RUNS_DIR}/{Path(start_file).name}")

    monkeypatch.setattr(job, "build_pipeline", on_a_node_without_the_output)
    assert cli.main(small_job_argv(tmp_path, model)) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    out = tmp_path / "out"
    assert line.startswith(f"error: the run failed: NotOnThisNodeError: --output {out} on node ")
    assert FIX in line and "this run wrote 0 purified and 0 rejected" in line
    # the same command alone would stop the same way: what to mend first, in the line and the summary alike
    advice = ("once every node of the cluster sees that path at the same place, run the same command again to resume "
              "(what is written is skipped, not purified again)")
    assert line.endswith(f": {advice}")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("NotOnThisNodeError: --output")
    assert summary["resume"] == advice
    assert not (out / "data").exists() and not (out / "rejects").exists()
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_run_whose_input_folder_is_gone_where_it_is_read_stops_rather_than_rejecting(tmp_path, model,
                                                                                      monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"{i}.png").write_bytes(image_bytes(16, 16, i))
    plan = job.plan_job

    def listed_then_not_there(config, dry_run=False):
        planned = plan(config, dry_run)
        (tmp_path / "in").rename(tmp_path / "moved")  # the read tasks' node does not hold the listed folder
        return planned

    monkeypatch.setattr(job, "plan_job", listed_then_not_there)
    with pytest.raises(JobFailed, match=r"NotOnThisNodeError: --input folder \S+/in is not there on node") as err:
        job.run_job(small_job_config(tmp_path, model))
    assert FIX in str(err.value)
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and summary["this_run"]["rejected"] == 0
    assert not (tmp_path / "out" / "rejects").exists()  # its two files were not recorded as rejects ("not found")


@pytest.mark.usefixtures("ray_local")
def test_a_run_whose_actor_does_not_find_the_checkpoint_names_the_flag_and_the_node(tmp_path, model, monkeypatch) -> None:
    image_folder(tmp_path / "in", 2)
    checkpoint = tmp_path / "ckpt" / "tiny.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(Path(model).read_bytes())
    plan = job.plan_job

    def verified_then_not_there(config, dry_run=False):
        planned = plan(config, dry_run)
        checkpoint.unlink()  # the driver verified it; the actors' node does not hold it
        return planned

    monkeypatch.setattr(job, "plan_job", verified_then_not_there)
    with pytest.raises(JobFailed, match=rf"NotOnThisNodeError: --checkpoint {checkpoint} is not there on node \S+"):
        job.run_job(small_job_config(tmp_path, model, checkpoint=str(checkpoint)))
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and FIX in summary["error"]


def test_an_actor_whose_node_unpacked_the_package_elsewhere_loads_its_own_copy_of_the_shipped_prior(tmp_path) -> None:
    # `ray job submit --working-dir .` unpacks the package under a folder of each node's own: the driver's path to the
    # default prior need not exist on a GPU node, where the same file does, in that node's copy of the package
    from pipeline.config import DEFAULT_PRIOR
    from pipeline.presets import shipped_prior_path
    from pipeline.stages import this_nodes_checkpoint

    drivers = tmp_path / "_ray_pkg_0123" / "pipeline" / "assets" / "cifar10_prior.pt"
    assert this_nodes_checkpoint(str(drivers)) == str(DEFAULT_PRIOR)
    assert this_nodes_checkpoint(f"file://{drivers}") == str(DEFAULT_PRIOR)
    assert this_nodes_checkpoint(str(shipped_prior_path("gtsrb")).replace(str(shipped_prior_path("gtsrb").parents[2]),
                                                                          str(tmp_path))) == str(shipped_prior_path("gtsrb"))
    # anything else stays as given (and is then said not to be there, as above): a user's file of the same name, a
    # file that is here, a store
    for kept in (str(tmp_path / "mine" / "cifar10_prior.pt"), str(tmp_path / "pipeline" / "assets" / "other.pt"),
                 str(DEFAULT_PRIOR), "s3://bucket/pipeline/assets/cifar10_prior.pt"):
        assert this_nodes_checkpoint(kept) == kept
    stage = PurifyStage(checkpoint=str(drivers), checkpoint_sha256=None, settings={"steps": 1}, preset=None, flags=None,
                        storage_options={}, device="cpu", precision="fp32", canvas_size=32, torch_threads=None)
    assert stage.purifier is not None


def test_only_a_path_no_node_sees_puts_mending_it_before_the_advice_to_resume() -> None:
    from pipeline.stopped_run import resume_advice

    plain = resume_advice(False)
    assert resume_advice(False, failure="OSError: [Errno 28] No space left on device") == plain
    assert resume_advice(False, failure=None) == plain
    mend = "once every node of the cluster sees that path at the same place, "
    assert resume_advice(False, failure="NotOnThisNodeError: --input folder /d is not there") == mend + plain
    overwrite = resume_advice(True, True, "job.yaml", failure="NotOnThisNodeError: --output /o on node n")
    assert overwrite == mend + resume_advice(True, True, "job.yaml")
