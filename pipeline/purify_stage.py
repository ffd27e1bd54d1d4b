"""The purifier actor's stage (`PurifyStage`) and what it needs, apart from the job's other stages (`pipeline.stages`).

Each run starts its purifier actor in a new process, which imports the module that defines the actor's class before
the actor's constructor runs. `pipeline.stages` imports every reader and decoder (`pipeline.sources`, PIL, ...), which
the actor never uses: ~0.25 CPU s of each run's actor start on a busy 2-core machine. This module imports only what
the actor uses (torch, the model and the checkpoint's reader when it is built); `pipeline.stages` re-exports its names.
Also here: the records' pickling (`records_of`, `batch_of`) and the checks of a node's local paths that the actor shares
with the other stages.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.errors import NotOnThisNodeError
from pipeline.evaluation.metrics import psnr
from pipeline.storage import local_file_path

Batch = dict[str, Any]


def records_of(batch: Batch) -> list[dict[str, Any]]:
    return [pickle.loads(b) for b in batch["record"]]


def batch_of(records: Iterable[dict[str, Any]]) -> Batch:
    return {"record": np.array([pickle.dumps(r, protocol=5) for r in records], dtype=object)}


# What to do when a task or actor does not find a local path where Ray ran it (`NotOnThisNodeError`)
CLUSTER_PATH_FIX = ("on a Ray cluster of several machines a local path (or file://) is the driver's machine's disk only: "
                    "give an object store URI (s3://...) or a folder every node mounts at the same path")


def node_name() -> str:
    """The node this runs on, as a user finds it in `ray status` or a cloud console: its host name, and its IP where
    Ray runs here."""
    host = socket.gethostname()
    ray = sys.modules.get("ray")  # a stage called outside Ray does not import it
    try:
        if ray is not None and ray.is_initialized():
            return f"{host} ({ray.util.get_node_ip_address()})"
    except Exception:  # noqa: BLE001 - the host name alone still names the node
        pass
    return host


def check_store_here(uri: str, flag: str, work: str) -> None:
    """Before a task reads or writes `uri`: its store's fsspec package (adlfs for abfs://, gcsfs for gs://, ...) must be
    installed on this node, as it is on the driver, which listed the input with it. A read task on a node without it
    rejected every input as "could not read file: ImportError: Install adlfs ..." and the run was called complete.
    Only the package is looked for (no file system is made, no connection opened)."""
    import fsspec
    from fsspec.registry import get_filesystem_class

    protocol, _ = fsspec.core.split_protocol(uri)
    if protocol in (None, "file", "local"):
        return
    try:
        get_filesystem_class(protocol)
    except (ImportError, ValueError) as err:  # ValueError: a protocol a package registers, unknown without it
        from pipeline.redaction import redact_uri

        raise NotOnThisNodeError(f"{flag} {redact_uri(uri)} needs a package that node {node_name()}, where a {work} "
                                 f"ran, lacks ({type(err).__name__}: {err}): install it on every node, as on the driver "
                                 "(cluster.yaml: setup_commands)") from None


def this_nodes_checkpoint(checkpoint: str, as_given: str | None = None) -> str:
    """`checkpoint`, or this node's own copy of it where it is a prior shipped with the package, named by its path in the
    driver's copy of the package, and that path is not here: `ray job submit --working-dir` unpacks the package on each
    node under a folder of that node's own (the default prior is such a path). Likewise a relative path `as_given`
    (`checkpoint` is the driver's absolute path of it, `as_the_driver_sees`): read in this worker's folder, which is
    that node's copy of the working dir. The sha256 the driver read still has to match (`load_checkpoint`), so only the
    same file is taken."""
    from pipeline.presets import ASSETS, SHIPPED_PRIORS, shipped_prior_path

    path = local_file_path(checkpoint)
    if path is None or os.path.exists(path):
        return checkpoint
    own_path = None if as_given is None or as_given == checkpoint else local_file_path(as_given)
    if own_path is not None and os.path.exists(own_path):
        return as_given
    folder, name = os.path.split(os.path.normpath(path))
    shipped = {shipped_prior_path(prior).name for prior in SHIPPED_PRIORS}
    own = ASSETS / name
    if name in shipped and folder.endswith(os.path.join("pipeline", "assets")) and own.exists():
        return str(own)
    return checkpoint


def check_checkpoint_seen(checkpoint: str, flag: str = "--checkpoint") -> None:
    """Before a purifier actor loads its model: the checkpoint the driver verified, when a local file, must be there on
    this node (`flag`: the option that named it, or "the default prior"). Loading it said only "checkpoint not found",
    without the node or what to do."""
    path = local_file_path(checkpoint)
    if path is not None and not os.path.exists(path):
        raise NotOnThisNodeError(f"{flag} {checkpoint} is not there on node {node_name()}, where a purifier actor "
                                 f"loads it (or it was removed since the run checked it): {CLUSTER_PATH_FIX}")
    check_store_here(checkpoint, flag, "purifier actor")  # a checkpoint on abfs:// needs adlfs on this node too


FAULT_ENV = "ZIP_PURIFY_INJECT_FAULT"
GATE_WAIT_S = 600.0  # how long a batch waits at a gate left shut, so that a test's mistake cannot hold a run for ever


def _maybe_inject_fault(spec: str | None = None) -> None:
    """Test hook for the reliability suite: "raise-once:MARKER" or "exit-once:MARKER" (kills the actor),
    "exit-always:MARKER" (kills every actor at its first batch: each death adds a line to MARKER), "slow:SECONDS"
    (each batch takes longer), or "gate:FOLDER" (`wait_at_gate`: a test lets batches through one by one, to stop or
    kill a run half-way whatever the machine's speed).

    The marker file makes a "-once" fault happen once per run across processes; unset in normal use. Several faults,
    separated by ";" ("raise-once:M1;exit-once:M2"), apply in that order: one run then meets each of them (a test
    pays for one run of the job, not one per fault).

    `spec`: the ZIP_PURIFY_INJECT_FAULT of the job's driver (`driver_faults`), which the purifier actors are given;
    None or empty, this process's own. The workers of a Ray the driver joined (a cluster, `ray job submit`) do not
    inherit the driver's environment, so a fault set for the job's command reached its actors only on a Ray the job
    started itself.
    """
    for fault in (spec or os.environ.get(FAULT_ENV, "")).split(";"):
        if fault:
            _inject_fault(fault)


def driver_faults() -> str | None:
    """This process's ZIP_PURIFY_INJECT_FAULT, for the driver to give its purifier actors (`_maybe_inject_fault`);
    None where unset or empty (the actors then read their own environment)."""
    return os.environ.get(FAULT_ENV) or None


def _inject_fault(spec: str) -> None:
    """One fault of `_maybe_inject_fault`'s spec, "MODE:MARKER"."""
    mode, _, marker = spec.partition(":")
    if mode == "slow":
        time.sleep(float(marker))
        return
    if mode == "gate":
        wait_at_gate(marker)
        return
    if mode == "exit-always":
        with open(marker, "a") as deaths:
            deaths.write(f"{os.getpid()}\n")
        os._exit(1)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if mode == "exit-once":
        os._exit(1)
    raise RuntimeError("injected fault (ZIP_PURIFY_INJECT_FAULT)")


def wait_at_gate(folder: str) -> None:
    """Number this batch in the order the run's batches come here, across its actors' processes (FOLDER/batch-N made
    exclusively, N the first number free), then wait until FOLDER/pass-N or FOLDER/open exists (GATE_WAIT_S at most).
    A test that stops a run once its first files land, with the rest still to come, then holds the rest back: a fixed
    slowdown only made it likely that the run had not finished meanwhile."""
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"batch-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            n += 1
    deadline = time.monotonic() + GATE_WAIT_S
    while not any(os.path.exists(os.path.join(folder, name)) for name in (f"pass-{n}", "open")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def cell_psnr(before: np.ndarray, after: np.ndarray, placement: Any) -> float:
    """PSNR (dB, 2 decimals) of one image's cell on a canvas after purification against before: how much the
    purification changed that image, at the model's resolution (inf when unchanged)."""
    cell = (slice(placement.top, placement.top + placement.height), slice(placement.left, placement.left + placement.width))
    return round(psnr(after[cell][None], before[cell][None]), 2)


def unusable_gpus(assigned: Sequence[Any], cuda_available: bool, torch_version: str, cuda_version: str | None) -> str | None:
    """Why an actor that Ray gave GPUs cannot use them, or None. Without this check the purifier falls back to the
    CPU and a GPU cluster runs at CPU speed, silently (an NVIDIA driver older than torch's CUDA needs, a node image
    without the GPU container runtime, a CPU-only torch)."""
    if not assigned or cuda_available:
        return None
    cuda = cuda_version or "none: a CPU-only build"
    return (f"purifier actor was given GPU(s) {list(assigned)} but torch {torch_version} (CUDA {cuda}) sees none: the "
            "node's NVIDIA driver is older than this CUDA needs, or the container has no GPU runtime; fix the node image "
            "(cluster.yaml ImageId) or pass --device cpu to run on CPUs")


# torch_threads value for a CPU actor: every core of the node it runs on (Ray would give it one thread, its
# num_cpus; the driver's core count says nothing about a worker node's).
ALL_CORES = 0


PURIFY_ATTEMPTS = 4  # tries of a purify batch that raises, in its actor: the first and 3 retries (PurifyStage)
PURIFIER_RESTARTS = 3  # a purifier actor whose process died is started again this many times, then the run fails


@contextlib.contextmanager
def long_lived_objects_made() -> Iterator[None]:
    """Around a purifier actor's setup (torch's import, the model): no cyclic garbage collection while it runs, then,
    in a Ray actor, everything it made moved out of the collector's sight (gc.freeze). Each run starts its actor in a
    new process, and without this that process spent about 0.18 CPU s collecting during torch's import and about
    0.45 CPU s more at its exit, when Python's final collection walks every object torch made (0.67 CPU s measured
    from the actor's last call to its process's end, 0.20 with the freeze). The frozen objects live as long as the
    actor anyway. Not frozen outside an actor: a program that builds the stage itself keeps its collector whole."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
    if _in_a_ray_actor():
        gc.collect()  # the setup's own cyclic garbage goes first, or freezing would keep it for good
        gc.freeze()


def _in_a_ray_actor() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


class PurifyStage:
    """Actor: loads the diffusion model once (setup in __init__), then purifies batches of canvases."""

    faults: str | None = None  # the driver's ZIP_PURIFY_INJECT_FAULT (`_maybe_inject_fault`); None in normal use

    def __init__(self, checkpoint: str, checkpoint_sha256: str, settings: dict[str, Any], preset: str | None,
                 flags: dict[str, Any] | None, storage_options: dict[str, Any], device: str | None,
                 precision: str, canvas_size: int, torch_threads: int | None, batch_size: int | None = None,
                 checkpoint_flag: str = "--checkpoint", checkpoint_as_given: str | None = None,
                 faults: str | None = None):
        self.faults = faults
        with long_lived_objects_made():
            import torch

            # a shipped prior, or a relative path given: the package's or working dir's copy on this node
            checkpoint = this_nodes_checkpoint(checkpoint, checkpoint_as_given)
            check_checkpoint_seen(checkpoint, checkpoint_flag)  # the driver's file, on this node too

            from pipeline.purifier import Purifier
            from pipeline.settings import ZipSettings

            if torch_threads == ALL_CORES:
                torch.set_num_threads(os.cpu_count() or 1)  # this node's cores, not the driver's
            elif torch_threads:
                torch.set_num_threads(torch_threads)
            if device is None or device.startswith("cuda"):
                # The job always names the device ("cuda" on GPU actors), so check there too: otherwise torch's own
                # error ("CUDA driver version is insufficient ...") is all a user sees, without the GPUs Ray assigned.
                import ray

                problem = unusable_gpus(ray.get_gpu_ids() if ray.is_initialized() else [], torch.cuda.is_available(),
                                        torch.__version__, torch.version.cuda)
                if problem:
                    raise RuntimeError(problem)
            self.purifier = Purifier.from_checkpoint(
                checkpoint, preset, device=device, precision=precision, canvas_size=canvas_size, flags=flags,
                storage_options=storage_options, expected_sha256=checkpoint_sha256, settings=ZipSettings(**settings),
                batch_size=batch_size,
            )

    def __call__(self, batch: Batch) -> Batch:
        """The batch purified. One whose purification raises is tried again here, in this actor, up to
        PURIFY_ATTEMPTS times in all, and then fails the run: Ray retries the actor's tasks only for the actor's own
        loss (`build_pipeline`: max_task_retries=-1 for that, which a count of Ray's would also spend on errors
        raised here, forever)."""
        for attempt in range(1, PURIFY_ATTEMPTS + 1):
            try:
                return self._purified(batch)
            except Exception:
                if attempt == PURIFY_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _purified(self, batch: Batch) -> Batch:
        _maybe_inject_fault(self.faults)
        records = records_of(batch)
        canvases = [r for r in records if r["kind"] == "canvas"]
        if canvases:
            stack = np.stack([r["canvas"] for r in canvases])
            purified = self.purifier.purify_canvases(stack, seeds=[r["seed"] for r in canvases])
            for r, canvas in zip(canvases, purified, strict=True):
                for member in r["members"]:
                    member["psnr_vs_input_db"] = cell_psnr(r["canvas"], canvas, member["placement"])
                r["canvas"] = canvas
        return batch_of(records)


