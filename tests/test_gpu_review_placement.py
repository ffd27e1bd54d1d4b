"""What only a GPU would show, checked on a CPU: where the purifier's tensors and generators live, the reduced
precision code path, and how the job places its purifier actors on GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.model import UNetConfig, build_unet
from pipeline.placement import (
    actor_placement,
    cluster_wait_problem,
    cpu_cluster_note,
    default_actors_and_gpus,
    fitted_actor_cpus,
    local_ray_problem,
)
from tests.jobutil import image_folder, small_job_argv, small_job_config, tiny_model_file

ROOT = Path(__file__).resolve().parents[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="16",
                              num_res_blocks=1, learn_sigma=True))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


# --- device placement: the sampler on the meta device, where a CPU tensor in a device op raises as on CUDA ---------

_RealGenerator = torch.Generator


class _TaggedGenerator(_RealGenerator):
    """A CPU generator that remembers the device it was asked for (torch has no meta generator)."""

    def __new__(cls, device: str | torch.device = "cpu"):
        g = _RealGenerator.__new__(cls)
        g.made_for = torch.device(device)
        return g

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()


@pytest.mark.parametrize("settings", [dict(), dict(sampler="ddpm"), dict(start=0.5), dict(resample=2),
                                      dict(operators="gray,pool", blend_k=10.0)])
@pytest.mark.parametrize("per_canvas", [False, True])
def test_every_tensor_and_generator_of_the_sampler_is_on_the_purifiers_device(monkeypatch, settings, per_canvas) -> None:
    """CUDA refuses an op mixing a CPU tensor with a device one, and a generator of one device type for noise on
    another; the meta device refuses the first too ('Tensor on device cpu is not on the expected device meta'), and
    the tagged generators check the second."""
    purifier = Purifier(_model(), ZipSettings(steps=3, **settings), device="meta")
    real_randn, uses = torch.randn, []

    def randn(*args, generator=None, device=None, **kw):
        if generator is not None:
            made_for = getattr(generator, "made_for", torch.device("cpu"))
            uses.append((made_for.type, torch.device(device or "cpu").type))
            assert made_for.type == uses[-1][1], f"a generator made for {made_for} drew noise on {device}"
        return real_randn(*args, generator=generator, device=device, **kw)

    monkeypatch.setattr(torch, "Generator", _TaggedGenerator)
    monkeypatch.setattr(torch, "randn", randn)
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # on the CPU, as purify_canvases hands it over
    y = purifier.purify_tensor(x, seeds=[3, 4] if per_canvas else None)
    assert y.device.type == "meta" and y.dtype == torch.float32 and y.shape == x.shape
    assert ("meta", "meta") in uses or settings.get("start", 1) < 1  # the step noise came from device generators
    if per_canvas:  # the starting noise is drawn on the CPU (the same on every device), then moved
        assert ("cpu", "cpu") in uses


# --- precision: eps() under autocast on the purifier's own device type ---------------------------------------------

def test_reduced_precision_runs_under_autocast_of_the_purifiers_device_and_stays_close() -> None:
    """eps() entered torch.autocast("cuda") whatever the device; on a CPU that autocast is disabled with a warning,
    so the bf16 path could not be exercised here. It now uses the purifier's device type (the same on CUDA)."""
    model = _model()
    fp32 = Purifier(model, ZipSettings(steps=4, pool=4, eta=1.0))
    bf16 = Purifier(model, ZipSettings(steps=4, pool=4, eta=1.0))
    bf16.precision = "bf16"  # refused on a CPU by the constructor; set here to run the autocast path
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    t = torch.full((3,), 500)
    e32, e16 = fp32.eps(x, t), bf16.eps(x, t)
    assert e16.dtype == torch.float32  # the model's bf16 output is handed on in float32
    assert 0 < (e32 - e16).abs().max() < 0.1  # autocast engaged (results differ), and only by rounding
    y32 = fp32.purify_tensor(x, seeds=[1, 2, 3])
    y16 = bf16.purify_tensor(x, seeds=[1, 2, 3])
    assert (y32 - y16).abs().mean() < 0.01  # (the shipped prior, 64 CIFAR-10 images, 20 steps: 0.12 of 255 levels)


def _overflowing_in_reduced_precision(model: torch.nn.Module, calls: list[bool], value: float = float("inf")) -> None:
    """Make `model` give inf (or NaN) under autocast, as fp16 does once an activation passes 65504; right in fp32."""
    forward = model.forward

    def overflowing(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        reduced = torch.is_autocast_enabled("cpu")
        calls.append(reduced)
        out = forward(x, t)
        return out * value if reduced else out

    model.forward = overflowing


def test_a_reduced_precision_overflow_is_done_again_in_fp32_not_written_as_black_images() -> None:
    """Before: an fp16 overflow in one forward pass made NaN that the sampler carried to the end and to_uint8 wrote
    as black images, counted as purified. Now that pass is run again in fp32, with one warning."""
    model = _model()
    fp32 = Purifier(model, ZipSettings(steps=3, pool=4))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = fp32.purify_tensor(x, seeds=[1, 2])
    calls: list[bool] = []
    _overflowing_in_reduced_precision(model, calls)
    half = Purifier(model, ZipSettings(steps=3, pool=4))
    half.precision = "bf16"  # refused on a CPU by the constructor; set here to run the autocast path
    with pytest.warns(RuntimeWarning, match="overflowed") as warned:
        y = half.purify_tensor(x, seeds=[1, 2])
    assert len(warned) == 1 and half.precision_fallbacks == 3 and calls == [True, False] * 3
    assert torch.isfinite(y).all() and torch.allclose(y, expected)


def test_a_model_whose_output_is_not_finite_stops_instead_of_giving_black_images() -> None:
    model = _model()
    _overflowing_in_reduced_precision(model, [], float("nan"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 purifier, but the model overflows in every pass
        with pytest.raises(FloatingPointError, match="output is NaN or infinite"):
            Purifier(model, ZipSettings(steps=2, pool=4)).purify_tensor(torch.zeros(1, 3, 32, 32))


# --- the job's actor placement -------------------------------------------------------------------------------------

def _job(**kw) -> JobConfig:
    return JobConfig(input="in", output="out", **kw)


def test_actor_placement_on_gpu_and_cpu_clusters() -> None:
    assert actor_placement(_job(), 8) == (8, 1.0, "cuda")
    assert actor_placement(_job(gpus_per_actor=0.5), 2) == (4, 0.5, "cuda")
    assert actor_placement(_job(actors=3, gpus_per_actor=1), 0) == (3, 1, "cuda")  # autoscaling from zero
    assert actor_placement(_job(), 0) == (1, 0.0, "cpu")
    assert actor_placement(_job(precision="bf16"), 1) == (1, 1.0, "cuda")


@pytest.mark.parametrize("per_actor, gpus, actors", [
    (0.2, 1, 5), (0.1, 1, 10), (0.25, 1, 4), (0.3, 1, 3), (0.5, 2, 4), (1, 8, 8),
    (0.6, 2, 2), (0.4, 3, 6), (0.7, 1, 1),
])
def test_fractional_gpus_give_as_many_actors_as_fit_on_each_gpu(per_actor, gpus, actors) -> None:
    """The pool was the cluster's GPUs // --gpus-per-actor in floats: 1 // 0.2 is 4.0, so one actor in five was never
    started (0.1 gave 9), and a share cannot span two GPUs, so 2 GPUs at 0.6 each were counted 3 actors where 2 fit."""
    assert actor_placement(_job(gpus_per_actor=per_actor), gpus) == (actors, per_actor, "cuda")


def test_an_actor_the_jobs_own_ray_cannot_place_is_refused_before_it_waits_forever() -> None:
    """The job's own local Ray is one machine that no node joins: an actor asking for more than it has was never
    placed, and the run hung with no word (--cpus-per-actor 64 on 2 cores; --gpus-per-actor 1 without a GPU)."""
    assert local_ray_problem(_job(cpus_per_actor=64), 0.0, cpus=2, gpus=0).startswith("--cpus-per-actor 64 with")
    assert "cannot run together" in local_ray_problem(_job(cpus_per_actor=2), 0.0, cpus=2, gpus=0)
    assert "cannot run together" in local_ray_problem(_job(cpus_per_actor=1, cpus_per_task=1.5), 0.0, cpus=2, gpus=0)
    assert local_ray_problem(_job(), 1.0, cpus=2, gpus=0).startswith("--gpus-per-actor 1: ")
    assert local_ray_problem(_job(), 0.0, cpus=2, gpus=0) is None
    assert local_ray_problem(_job(cpus_per_actor=1.75), 0.0, cpus=2, gpus=0) is None
    assert local_ray_problem(_job(), 0.5, cpus=2, gpus=1) is None


def test_the_run_on_its_own_ray_refuses_an_actor_larger_than_the_machine(ray_local) -> None:
    """Checked where the run places its actors (exit status 2, before any work), on the local Ray the job starts."""
    import ray

    cpus = ray.cluster_resources()["CPU"]
    with pytest.raises(JobError, match=rf"--cpus-per-actor 64 .* has {cpus:g} CPUs"):
        default_actors_and_gpus(_job(cpus_per_actor=64))
    if not ray.cluster_resources().get("GPU"):
        with pytest.raises(JobError, match="--gpus-per-actor 1: .* and 0 GPUs"):
            default_actors_and_gpus(_job(gpus_per_actor=1))
    assert default_actors_and_gpus(_job(device="cpu")) == (1, 0.0, "cpu")


@pytest.mark.parametrize("options, cpus, fitted, fits", [
    ({}, 1, 0.75, True), ({}, 1.2, 0.95, True), ({"cpus_per_task": 0.5}, 1, 0.5, True),
    ({"cpus_per_task": 0.3}, 1, 0.7, True), ({}, 2, 1.0, True), ({}, 1.25, 1.0, True), ({}, 64, 1.0, True),
    ({"cpus_per_actor": 1.0}, 1, 1.0, False), ({"cpus_per_actor": 0.5}, 64, 0.5, True),  # the user's, kept
    ({"cpus_per_task": 1}, 1, 1.0, False),  # no room beside a task: kept, and refused by local_ray_problem
])
def test_the_default_actor_cpus_fit_a_local_ray_of_one_cpu(options, cpus, fitted, fits) -> None:
    """Without --cpus-per-actor an actor reserved 1 CPU, and a task 0.25 more: a default run on a 1-CPU machine (a small
    VM, a container limited with --cpus 1) was refused with exit status 2, telling the user to set a flag."""
    got, note = fitted_actor_cpus(_job(**options), cpus)
    assert got == fitted
    assert (note is not None) == ("cpus_per_actor" not in options and got != 1.0), note
    placed = _job(**{**options, "cpus_per_actor": got})
    assert (local_ray_problem(placed, 0.0, cpus=cpus, gpus=0) is None) == fits


@pytest.mark.parametrize("share, started_with", [(0.5, 1), (0.25, 1), (1.0, None), (2.5, None), (None, None)])
def test_the_jobs_own_ray_on_a_machine_of_less_than_one_cpu_gets_one(monkeypatch, capfd, share, started_with) -> None:
    """A container limited to a fraction of a CPU (docker --cpus 0.5, a Kubernetes limit of 500m): Ray truncates its
    share to 0 CPUs, where no task nor actor can run, and the default run was refused with exit status 2, naming a
    --cpus-per-actor 1 it was not given and advising a smaller --cpus-per-actor or --cpus-per-task, which no value
    could satisfy. The job's own Ray is started with 1 CPU there (Ray's own count elsewhere, `share` None: no limit)."""
    import ray
    import ray._private.utils as ray_utils

    from pipeline import placement

    monkeypatch.setattr(ray_utils, "_get_docker_cpus", lambda *a, **k: share)
    monkeypatch.setattr(ray_utils.multiprocessing, "cpu_count", lambda: 4)
    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(placement, "_OWN_RAY_NODE", [None])
    placement.init_local_ray()
    assert calls[0]["num_cpus"] == started_with
    placement.init_local_ray(num_cpus=3)  # the caller's number is kept
    assert calls[1]["num_cpus"] == 3
    monkeypatch.setenv("RAY_USE_MULTIPROCESSING_CPU_COUNT", "1")  # Ray counts every core then: never a fraction
    placement.init_local_ray()
    assert calls[2]["num_cpus"] is None
    # Ray's lines as the job counts ("... truncated from 0.5 to 0", "Detected RAY_USE_MULTIPROCESSING_CPU_COUNT=1"):
    # not what the job does, and ray.init itself starts with its INFO lines off
    assert capfd.readouterr().err == ""


def test_a_default_run_on_a_one_cpu_ray_runs_whether_the_job_or_the_calling_program_started_it(tmp_path) -> None:
    """1. A program's own `ray.init(num_cpus=1)`, then run_job with the defaults: the actor took the only CPU and the
    tasks that feed it waited for one, forever and with no word (the job's own Ray refused it; this one is not the
    job's, and was not checked).
    2. The whole run on the job's own local Ray of 1 CPU, as on a 1-CPU machine: the default run completes, saying in
    one line what its actor reserves; --cpus-per-actor 1, given, cannot fit and is refused (exit status 2) as before.
    Both in one process, one Ray after the other: a process each cost the interpreter and the imports again."""
    caller, own = tmp_path / "caller", tmp_path / "own"
    image_folder(caller / "in", 2)
    image_folder(own / "in", 2)
    model = tiny_model_file(tmp_path)
    code = ("import sys, json, ray; from pathlib import Path; from pipeline.job import run_job\n"
            "from pipeline.placement import init_local_ray; from pipeline.cli import main\n"
            "from tests.jobutil import small_job_config\n"
            # address="local": its own Ray, as a plain ray.init() starts where no other runs (that one joins a
            # `ray start` head or another Ray running on the machine, whose CPUs are not this test's)
            "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
            "s = run_job(small_job_config(Path(sys.argv[1]), sys.argv[2]))\n"
            "print('run', s['status'], s['this_run']['purified'], s['ray']['cpus_per_actor'], flush=True)\n"
            "ray.shutdown()\n"
            "print('-- own --', file=sys.stderr, flush=True)\n"
            "init_local_ray(num_cpus=1)\n"
            "argv = json.loads(sys.argv[3])\n"
            "print('explicit', main([*argv, '--cpus-per-actor', '1']), file=sys.stderr, flush=True)\n"
            "print('-- default --', file=sys.stderr, flush=True)\n"
            "print('default', main(argv), file=sys.stderr, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code, str(caller), model, json.dumps(small_job_argv(own, model))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # 1. the caller's Ray
    assert "run complete 2 0.75" in done.stdout, done.stdout
    by_caller, _, on_own = done.stderr.partition("-- own --")
    assert "zip-purify: note: the local Ray has 1 CPU: each purifier actor reserves 0.75 CPU" in by_caller, \
        by_caller[-3000:]
    # 2. the job's own Ray
    explicit, _, default = on_own.partition("-- default --")
    assert "explicit 2" in explicit and "--cpus-per-actor 1 with --cpus-per-task 0.25" in explicit, explicit[-3000:]
    assert "default 0" in default, default[-3000:]
    notes = [line for line in default.splitlines() if line.startswith("zip-purify: note:")]
    assert len(notes) == 1 and "reserves 0.75 CPU" in notes[0] and "--cpus-per-actor" in notes[0], default[-3000:]
    summary = json.loads((own / "out" / "_summary.json").read_text())
    assert summary["status"] == "complete" and summary["this_run"]["purified"] == 2
    assert summary["config"]["cpus_per_actor"] == 0.75


def test_the_summary_counts_the_actors_the_run_started_beside_the_most_its_pool_could_have(tmp_path, ray_local) -> None:
    """The summary's ray.actors was the pool's maximum (--actors, or one per GPU), not the actors started: the pool
    starts one and adds more only while work waits for them, so a short run with --actors 3 started 1 and said 3."""
    import ray
    from ray._private import state

    from pipeline.job import run_job

    def purifiers() -> dict[str, dict]:
        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        return {k: v for k, v in state.actors(job_id=job).items() if "PurifyStage" in v["ActorClassName"]}

    before = set(purifiers())
    image_folder(tmp_path / "in", 2)
    summary = run_job(small_job_config(tmp_path, tiny_model_file(tmp_path), actors=3, cpus_per_actor=0.5))
    started = [k for k, v in purifiers().items() if k not in before and v["StartTime"]]
    assert summary["status"] == "complete" and started
    assert summary["ray"]["actors"] == len(started) and summary["ray"]["actors_max"] == 3, summary["ray"]
    assert summary["ray"]["cpus_per_actor"] == 0.5


@pytest.mark.parametrize("options, gpus, nodes, said", [
    ({"cpus_per_actor": 2}, 0.0, [{"CPU": 2}], "cannot run a purifier actor (2 CPUs) and the tasks"),
    ({"cpus_per_actor": 64}, 0.0, [{"CPU": 2}], "no node of the cluster can hold a purifier actor (64 CPUs each)"),
    ({}, 0.0, [{"CPU": 0}], "no node of the cluster can hold a purifier actor (1 CPU each): its 1 node has 0 CPUs"),
    ({}, 0.0, [], "no node of the cluster can hold a purifier actor (1 CPU each): it has no node"),
    ({}, 1.0, [{"CPU": 8}, {"CPU": 8}], "(1 CPU and 1 GPU each): its 2 nodes have 8 CPUs, 8 CPUs"),
    ({}, 0.0, [{"CPU": 2}], None),
    ({"cpus_per_actor": 2}, 0.0, [{"CPU": 2}, {"CPU": 2}], None),  # the tasks on the other node
    ({"cpus_per_actor": 0.95}, 0.0, [{"CPU": 1.2}], None),
    ({}, 1.0, [{"CPU": 0}, {"CPU": 8, "GPU": 1}], None),
])
def test_a_cluster_the_run_would_wait_on_is_said_at_the_start(options, gpus, nodes, said) -> None:
    """On a joined cluster an actor that no node can hold waits for a node (an autoscaler may add one); one that takes
    the only node's CPUs leaves none to the tasks that feed it, and that run waited with no word at all."""
    problem = cluster_wait_problem(_job(**options), gpus, nodes, {"CPU": 0.5})
    if said is None:
        assert problem is None, problem
    else:
        assert said in problem and "autoscaler adds one" in problem and "--cpus-per-actor" in problem, problem
        assert "(0.5 CPUs free now)" in problem and ("--gpus-per-actor" in problem) == bool(gpus), problem


def test_a_run_on_a_cluster_whose_nodes_cannot_hold_its_actor_and_tasks_says_so_as_it_starts(ray_local, monkeypatch,
                                                                                          capsys) -> None:
    """A Ray that is not the job's own (a joined cluster, or the caller's) of 2 CPUs with --cpus-per-actor 2: the run
    waited for a CPU for its tasks forever, and said nothing; it still waits, and says why as it starts."""
    import pipeline.job as job
    import pipeline.placement as placement

    monkeypatch.setattr(placement, "_OWN_RAY_NODE", [None])  # as on a joined cluster: not refused, no node joins
    cpus = ray_local_cpus()
    _, placed = job._start_cluster(_job(cpus_per_actor=cpus))
    assert placed == (1, 0.0, "cpu")
    err = capsys.readouterr().err
    assert f"zip-purify: note: the cluster cannot run a purifier actor ({cpus:g} CPUs)" in err, err
    job._start_cluster(_job(cpus_per_actor=cpus / 2))
    assert "zip-purify:" not in capsys.readouterr().err


@pytest.mark.parametrize("options, gpus, started_here, said", [
    ({}, 0.0, False, True),  # a joined cluster with no GPU yet (GPU workers autoscaling from zero)
    ({"actors": 8}, 0.0, False, True),  # --actors alone asks for CPU actors
    ({}, 0.0, True, False),  # a Ray this process started: a machine's own CPUs, as expected
    ({}, 1.0, False, False),  # GPU actors
    ({"device": "cpu"}, 0.0, False, False),  # CPUs chosen
    ({"gpus_per_actor": 0}, 0.0, False, False),
])
def test_a_run_on_a_joined_cluster_without_gpus_says_it_purifies_on_cpus(monkeypatch, options, gpus, started_here,
                                                                          said) -> None:
    """A run submitted to a cluster whose GPU workers autoscale from zero (cluster.yaml's min_workers: 0) without
    --gpus-per-actor found no GPU as it started and purified on CPU actors, many times slower, without a word."""
    import pipeline.placement as placement

    monkeypatch.setattr(placement, "ray_started_here", lambda: started_here)
    note = cpu_cluster_note(_job(**options), gpus)
    if said:
        assert note.startswith("the cluster has no GPU as the run starts, so its purifier actors run on CPUs"), note
        assert "--actors N --gpus-per-actor 1" in note and "--device cpu" in note, note
    else:
        assert note is None, note


def test_the_cpu_cluster_note_is_printed_as_a_run_joins_a_cluster_without_gpus(ray_local, monkeypatch, capsys) -> None:
    import pipeline.job as job
    import pipeline.placement as placement

    monkeypatch.setattr(placement, "ray_started_here", lambda: False)  # as on a cluster joined by address
    monkeypatch.setattr(placement, "_OWN_RAY_NODE", [None])
    assert job._start_cluster(_job())[1] == (1, 0.0, "cpu")
    assert "zip-purify: note: the cluster has no GPU as the run starts" in capsys.readouterr().err
    job._start_cluster(_job(device="cpu"))
    assert "zip-purify:" not in capsys.readouterr().err


def ray_local_cpus() -> float:
    import ray

    return ray.cluster_resources()["CPU"]


def test_device_cpu_on_a_gpu_cluster_does_not_hold_gpus() -> None:
    """--device cpu on a cluster with GPUs gave every actor a GPU it never used (and, with GPUs, no torch threads
    setting, so Ray's OMP_NUM_THREADS=1 ran the model on one core)."""
    assert actor_placement(_job(device="cpu"), 8) == (1, 0.0, "cpu")
    with pytest.raises(JobError, match="hold GPUs they never use"):
        actor_placement(_job(device="cpu", gpus_per_actor=1), 8)


def test_a_cuda_index_an_actor_cannot_see_is_refused_before_any_actor() -> None:
    """Ray sets each actor's CUDA_VISIBLE_DEVICES to its own GPU: --device cuda:1 is 'invalid device ordinal' in
    every actor, after the run has started."""
    assert actor_placement(_job(device="cuda:0"), 4)[2] == "cuda:0"
    for device, per_actor in (("cuda:1", None), ("cuda:1", 0.5)):
        with pytest.raises(JobError, match="sees only the GPU Ray gives it"):
            actor_placement(_job(device=device, gpus_per_actor=per_actor), 4)
    with pytest.raises(JobError, match="needs GPU actors"):
        actor_placement(_job(device="cuda"), 0)
    with pytest.raises(JobError, match="--precision fp16 needs CUDA"):
        actor_placement(_job(precision="fp16"), 0)


@pytest.mark.parametrize("value, message", [(2, "at most 1"), (1.5, "at most 1"), (0.00001, "at least 0.0001")])
def test_gpus_per_actor_the_purifier_cannot_use_are_refused(value, message) -> None:
    """The purifier runs its model on one GPU: a second GPU per actor was held and idle; Ray refuses fractions
    below 0.0001 only when the actors start."""
    with pytest.raises(JobError, match=message):
        _job(gpus_per_actor=value).check()
    _job(gpus_per_actor=0.25).check()
    _job(gpus_per_actor=0).check()


@pytest.mark.parametrize("option", ["cpus_per_actor", "cpus_per_task"])
def test_cpus_below_rays_smallest_fraction_are_refused_before_any_work(option) -> None:
    """Ray refuses a CPU share below 0.0001 only as the pipeline's tasks and actors start: --cpus-per-task 0.00001 passed
    the check and the dry run, took the output and wrote its records, then failed with exit status 1 and Ray's
    ValueError, advising to run the same command again, which failed the same way."""
    with pytest.raises(JobError, match=rf"--{option.replace('_', '-')} must be 0.0001 or more \(Ray's smallest "
                                       r"fraction of a CPU\), got 1e-05"):
        _job(**{option: 0.00001}).check()
    _job(**{option: 0.0001}).check()
    _job(**{option: 0.25}).check()


def test_an_actor_told_to_use_cuda_with_gpus_torch_cannot_see_names_the_cause(tmp_path, monkeypatch) -> None:
    """The job always passes device='cuda' to GPU actors, so the check for GPUs torch cannot see (which ran only
    for device=None) never ran in a job: the actor failed with torch's bare CUDA error instead."""
    import ray

    from pipeline import stages

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = dict(checkpoint=tiny_model_file(tmp_path), checkpoint_sha256=None, settings={"steps": 2}, preset=None,
                flags=None, storage_options={}, precision="fp32", canvas_size=32, torch_threads=None)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match=r"given GPU\(s\) \[0\] but torch .* sees none"):
            stages.PurifyStage(device=device, **args)


@pytest.mark.parametrize("options, message", [
    (dict(device="cpu", gpus_per_actor=1), "hold GPUs they never use"),
    (dict(device="cuda:1"), "sees only the GPU Ray gives it"),
    (dict(device="cuda", gpus_per_actor=0), "needs GPU actors"),
])
def test_placements_no_cluster_can_run_are_refused_with_the_options_in_a_dry_run_too(options, message) -> None:
    """These used to pass `--dry-run` (exit 0) and stop only the real run, once Ray was up."""
    with pytest.raises(JobError, match=message):
        _job(**options).check()
    _job(device="cuda:0").check()
    _job(device="cpu", gpus_per_actor=0).check()
