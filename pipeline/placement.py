"""Where the purifier actors run: starting or joining Ray, and how many actors, with how many GPUs, on which device.

All of it is decided before an actor is started (and, as far as the options alone allow, in a dry run too): an
actor that cannot use its device would otherwise fail only once the cluster has loaded its model, or hold GPUs it
never uses. The functions take a run's options as `PlacementOptions` (JobConfig has them), not JobConfig itself, so
that this module does not import pipeline.config, which imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from pipeline.background import repeated
from pipeline.errors import JobError
from pipeline.stages import ALL_CORES
from pipeline.storage import describe


class PlacementOptions(Protocol):
    """The options of a run that decide where its purifier actors go (fields of `pipeline.config.JobConfig`)."""

    ray_address: str | None
    actors: int
    gpus_per_actor: float | None
    cpus_per_actor: float | None  # None: the default (`actor_cpus`), sized to fit where the run starts Ray itself
    cpus_per_task: float
    torch_threads: int | None
    device: str | None
    precision: str


# What Ray's logger says as it starts a local Ray with token authentication on (Ray 2.60's default): "Token
# authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out. ...". The Ray the job starts
# for itself, and stops when it ends, keeps it on; a note that invites the job's user to turn it off is noise there.
TOKEN_AUTH_ENABLED_NOTE = "Token authentication is enabled for this Ray cluster"


class _DropRecords(logging.Filter):
    """A logging filter that drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# The node id of the local Ray `init_local_ray` started last (Ray's own, random per start): a run on it is a run on the
# job's own Ray, whose Ray Data INFO lines `ray_data_console_quieted` keeps off stderr; None before any.
_OWN_RAY_NODE: list[str | None] = [None]


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray whose workers import `pipeline` from this checkout, quietly: Ray's own INFO lines as it starts
    ("Started a local Ray instance.") and its note that token authentication is on stay out of the job's stderr.
    Ray Data's INFO lines are quieted while a run uses this Ray (`ray_data_console_quieted`). Both are scoped: the
    process's loggers are as Ray leaves them once ray.init returns, so a program that calls `pipeline.job.run_job`
    keeps its own Ray and Ray Data output after the run. Ray's own settings win where the user gave them:
    RAY_LOGGER_LEVEL, RAY_DATA_LOGGING_CONFIG, RAY_DATA_LOG_LEVEL. Joining a cluster (`init_ray` with an address)
    keeps Ray's output as it is."""
    import ray

    root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _DropRecords(TOKEN_AUTH_ENABLED_NOTE)
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    auth_logger.addFilter(quiet)
    caller_pythonpath = os.environ.get("PYTHONPATH")
    try:
        # The workers find `pipeline` through PYTHONPATH in the environment of the Ray processes ray.init starts here,
        # which the workers inherit, not through a runtime_env: Ray starts each worker of a job with a runtime_env
        # through a Python process of its own (setup_worker.py, ~0.4 CPU s) that then starts the worker, so each
        # purifier actor (a new process every run) and each task worker started that much later
        # (bench/small_run_bench.py). The caller's own PYTHONPATH is put back once ray.init returns.
        os.environ["PYTHONPATH"] = pythonpath
        # address="local": without it ray.init joins a head started on this machine with `ray start` (found through
        # /tmp/ray), silently, with the workers' output off, where --help promises a local Ray.
        ray.init(address="local", num_cpus=own_ray_cpus(num_cpus), include_dashboard=False, log_to_driver=False,
                 logging_level=os.environ.get("RAY_LOGGER_LEVEL", "warning"))
    finally:
        if caller_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = caller_pythonpath
        auth_logger.removeFilter(quiet)
        if "RAY_LOGGER_LEVEL" not in os.environ:
            # ray.init's own lines quieted, not the caller's later ones: the "ray" logger left at WARNING hid every
            # INFO line of Ray's in a program that had called run_job, for the rest of its life
            ray_logger.setLevel(level)
    # is_initialized first: ray.get_runtime_context() would start a Ray of its own (ray.init's auto-init) where none is
    # up (a stand-in for ray.init in tests); nothing is quieted then
    _OWN_RAY_NODE[0] = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def own_ray_cpus(num_cpus: int | None) -> int | None:
    """The CPUs the job's own local Ray is started with: `num_cpus` where given, else Ray's own count (None), except
    on a machine whose share is a fraction of one CPU (a container limited with `docker run --cpus 0.5`, a Kubernetes
    limit of 500m): Ray truncates that share to 0 CPUs, where neither a task nor an actor can run, and the default run
    was refused with advice no flag could follow (a smaller --cpus-per-actor or --cpus-per-task). It gets 1 CPU there,
    which its processes share as the machine's share allows."""
    if num_cpus is not None:
        return num_cpus
    counter = logging.getLogger("ray._private.utils")
    quiet = _DropRecords("")  # its lines as it counts ("... truncated from 0.5 to 0"): not what the job does
    counter.addFilter(quiet)
    try:
        from ray._private.utils import get_num_cpus

        counted = get_num_cpus(override_docker_cpu_warning=True, truncate=False)
    except Exception:  # noqa: BLE001 - Ray's internal count: without it Ray counts, as it always did
        return None
    finally:
        counter.removeFilter(quiet)
    return 1 if 0 < counted < 1 else None


def ray_started_here() -> bool:
    """Whether Ray is up and this process started it: the job's own local Ray (`init_local_ray`), or one the caller
    started with a plain `ray.init(num_cpus=1)`. Neither has an autoscaler to start nodes for an actor it cannot place.
    A cluster joined by address (--ray-address, RAY_ADDRESS, `ray://`) is not; nor is any Ray where Ray does not say."""
    import ray

    if on_own_local_ray():
        return True
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    return ray.is_initialized() and getattr(node, "head", False) is True


def on_own_local_ray() -> bool:
    """Whether Ray is up and is the local Ray `init_local_ray` started (not one the caller started or joined)."""
    import ray

    return ray.is_initialized() and _OWN_RAY_NODE[0] is not None and \
        ray.get_runtime_context().get_node_id() == _OWN_RAY_NODE[0]


@contextlib.contextmanager
def ray_data_console_quieted() -> Iterator[None]:
    """Within it, on the job's own local Ray (`on_own_local_ray`), Ray Data's console handler at WARNING: its INFO
    lines ("Starting execution of Dataset dataset_0359...", "Execution plan of Dataset ...", "Dataset ... execution
    finished in 129.15 seconds", a time that is not the job's) go to its log file only
    (/tmp/ray/session_latest/logs/ray-data/ray-data.log). Its level is put back on leaving: a program that called
    `run_job` sees its own pipelines' lines as Ray Data prints them. Left alone when the user configured Ray Data's
    logging (RAY_DATA_LOGGING_CONFIG, RAY_DATA_LOG_LEVEL), or on a Ray the caller started or joined."""
    import ray.data  # noqa: F401 - configures Ray Data's logger and its console handler

    quieted = []
    if not (os.environ.get("RAY_DATA_LOGGING_CONFIG") or os.environ.get("RAY_DATA_LOG_LEVEL")) and on_own_local_ray():
        quieted = [(h, h.level) for h in logging.getLogger("ray.data").handlers if h.get_name() == "console"]
    for handler, level in quieted:
        handler.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in quieted:
            handler.setLevel(level)


def unreachable_ray_address(address: str, timeout_s: float = 10.0) -> str | None:
    """Why nothing could be reached at a 'host:port' or 'ray://host:port' Ray address, or None (reachable, or a form
    such as 'auto' that Ray resolves itself). ray.init retries an address nobody answers for minutes, silently."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    if not match:
        return None

    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return (f"nothing answers at {host}:{port} ({describe(err)}); is the Ray cluster up, and is this its head's "
                "address (ray status prints it)?")


@contextlib.contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """Within it, ray.init leaves the process's SIGTERM handler as it is. It would set its own, sys.exit(15), as it
    starts: a SIGTERM while Ray started (a pod stopped, `timeout`) then ended the job with status 15 and not a word,
    where the job's own handler (signals_deferred) holds it until Ray has started and stops the run as Ctrl-C does.
    Ray's setter is looked up where ray.init calls it; a Ray without it is left as it is."""
    import ray._private.utils as ray_utils

    setter = getattr(ray_utils, "set_sigterm_handler", None)
    if setter is None:
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = setter


def init_ray(config: PlacementOptions) -> None:
    import ray

    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    named = f"{'--ray-address' if config.ray_address else 'RAY_ADDRESS'} {address}"
    if ray.is_initialized():
        if address and on_own_local_ray():
            # A program's earlier run_job started this local Ray, which stays up for the process's later runs: a run
            # given an address went on it, silently, and reported a complete run on this machine, not the cluster.
            raise JobError(f"{named}: this process already runs the local Ray an earlier run started (a run without "
                           "an address starts one and keeps it for the process's later runs), so the cluster cannot "
                           "be joined; call ray.shutdown() before a run that joins a cluster")
        return  # a Ray the caller started or joined: used as it is
    if address:
        problem = unreachable_ray_address(address)
        if problem:
            raise JobError(f"{named}: {problem}")
    try:
        with sigterm_handler_kept():
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                init_local_ray()
    except Exception as err:  # Ray's own failures are plain Exceptions ("The current node timed out during startup")
        where = f"join the Ray cluster at {address}" if address else "start a local Ray"
        raise JobError(f"could not {where}: {describe(err)}{join_hint(address)}") from err


def join_hint(address: str | None) -> str:
    """What to try when joining a cluster that answers fails. A head that `ray start` started where a token exists
    (~/.ray/auth_token) has token authentication on, and refuses a driver without RAY_AUTH_MODE=token: Ray then says
    only 'Failed to connect to Ray cluster', after seconds of 'Unauthenticated' lines and a guess that an earlier Ray
    crashed, with `ray stop` as the remedy (which stops every Ray on the machine, this head too)."""
    if not address or os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        return ""
    return ("; if that cluster has token authentication on (Ray's lines above say 'Unauthenticated'; `ray start` "
            "turns it on where ~/.ray/auth_token exists), export RAY_AUTH_MODE=token and run again")


def default_actors_and_gpus(config: PlacementOptions) -> tuple[int, float, str]:
    import ray

    resources = ray.cluster_resources()
    placement = actor_placement(config, resources.get("GPU", 0))
    if on_own_local_ray():
        problem = local_ray_problem(config, placement[1], resources.get("CPU", 0), resources.get("GPU", 0))
        if problem:
            raise JobError(problem)
    return placement


DEFAULT_CPUS_PER_ACTOR = 1.0  # CPUs a purifier actor reserves without --cpus-per-actor (`fitted_actor_cpus`)


def actor_cpus(config: PlacementOptions) -> float:
    """The CPUs each purifier actor reserves: --cpus-per-actor, else the default."""
    return DEFAULT_CPUS_PER_ACTOR if config.cpus_per_actor is None else config.cpus_per_actor


def fitted_actor_cpus(config: PlacementOptions, cpus: float) -> tuple[float, str | None]:
    """The CPUs each purifier actor reserves on a Ray of `cpus` CPUs that this process started (`ray_started_here`),
    and a note for the run's output when that is not what the options alone say. Without --cpus-per-actor an actor
    reserves DEFAULT_CPUS_PER_ACTOR; on a machine of 1 CPU (a small VM, a container limited with `--cpus 1`) that and a
    task's --cpus-per-task are more than it has, and the default run was refused (exit status 2): the actor reserves
    what is left beside one task instead. --cpus-per-actor given is kept as it is (`local_ray_problem` refuses it where
    it cannot fit), as is a Ray where even one task takes every CPU."""
    wanted = actor_cpus(config)
    if config.cpus_per_actor is not None or wanted + config.cpus_per_task <= cpus:
        return wanted, None
    # Ray counts CPUs in 1/10000ths: rounded down, so that the actor and one task fit
    left = math.floor(round((cpus - config.cpus_per_task) * RAY_RESOURCE_UNITS, 6)) / RAY_RESOURCE_UNITS
    if left <= 0:
        return wanted, None
    return left, (f"the local Ray has {cpus:g} CPU{'s' if cpus != 1 else ''}: each purifier actor reserves "
                  f"{left:g} CPU (not the default {wanted:g}), so that it runs beside the pipeline's tasks "
                  f"(--cpus-per-task {config.cpus_per_task:g}); --cpus-per-actor sets it")


def with_fitted_actor_cpus(config: PlacementOptions) -> tuple[PlacementOptions, str | None]:
    """`config` with the CPUs its purifier actors reserve decided (`fitted_actor_cpus` on a Ray this process started;
    the default elsewhere, a joined cluster's autoscaler may add larger nodes), and the note to print, if any. `config`
    is a dataclass (JobConfig): the copy has every other option as it is."""
    import ray

    if config.cpus_per_actor is not None:
        return config, None
    cpus, note = DEFAULT_CPUS_PER_ACTOR, None
    if ray.is_initialized() and ray_started_here():
        cpus, note = fitted_actor_cpus(config, ray.cluster_resources().get("CPU", 0))
    return dataclasses.replace(config, cpus_per_actor=cpus), note


def local_ray_problem(config: PlacementOptions, gpus_per_actor: float, cpus: float, gpus: float) -> str | None:
    """Why a purifier actor (with `gpus_per_actor` GPUs) cannot run beside the pipeline's tasks on the job's own local
    Ray of `cpus` CPUs and `gpus` GPUs, or None. That Ray is one machine that no node joins: an actor it cannot place
    waited for one forever, the run hanging with no word after Ray Data's 'may hang forever' warning (--cpus-per-actor
    64 on a 2-core machine, --gpus-per-actor 1 on one without GPUs). A cluster joined with --ray-address may start
    nodes for it (an autoscaler), so it is not checked there."""
    where = f"this machine's Ray (started by the job, no other node joins it) has {_counted(cpus, 'CPU')}"
    if actor_cpus(config) + config.cpus_per_task > cpus:
        return (f"--cpus-per-actor {actor_cpus(config):g} with --cpus-per-task {config.cpus_per_task:g}: {where}, "
                "so a purifier actor and the tasks that read and write its images cannot run together; use a smaller "
                "--cpus-per-actor or --cpus-per-task, or join a larger cluster with --ray-address")
    if gpus_per_actor > gpus:
        return (f"--gpus-per-actor {gpus_per_actor:g}: {where} and {_counted(gpus, 'GPU')}, so no purifier actor could start; "
                "leave --gpus-per-actor out to run on what it has, or join a GPU cluster with --ray-address")
    return None


def _counted(count: float, unit: str) -> str:
    return f"{count:g} {unit}{'s' if count != 1 else ''}"


def _asks(cpus: float, gpus: float) -> str:
    return _counted(cpus, "CPU") + (f" and {_counted(gpus, 'GPU')}" if gpus else "")


def cluster_wait_problem(config: PlacementOptions, gpus_per_actor: float, nodes: list[dict[str, float]],
                         free: dict[str, float]) -> str | None:
    """Why the run would wait on a cluster whose alive nodes have `nodes` resources in all (`free` of the cluster's
    now): no node can hold a purifier actor, or none can hold one with one of the pipeline's tasks beside it (on it or
    on another node), or None. Said, not refused: a joined cluster's autoscaler may add a node that can. The second
    one waited with no word at all (`--cpus-per-actor 2` on a cluster of one 2-CPU node: the actor took the node and
    the tasks that feed it waited for a CPU); for the first Ray says that no node type fits, in its own terms."""
    cpus, task = actor_cpus(config), config.cpus_per_task
    slack = 0.5 / RAY_RESOURCE_UNITS  # Ray's own units: 1.2 - 0.95 is 0.25 there, a hair under it in floats
    holders = [i for i, n in enumerate(nodes)
               if n.get("CPU", 0) + slack >= cpus and n.get("GPU", 0) + slack >= gpus_per_actor]
    fits = any(nodes[i].get("CPU", 0) - cpus + slack >= task
               or any(n.get("CPU", 0) + slack >= task for j, n in enumerate(nodes) if j != i) for i in holders)
    if fits:
        return None
    shown = sorted(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), reverse=True)
    has = ", ".join(_asks(n.get("CPU", 0), n.get("GPU", 0)) for n in shown[:4]) + (", ..." if len(shown) > 4 else "")
    has = (f"its {len(nodes)} node{'s' if len(nodes) != 1 else ''} ha{'ve' if len(nodes) != 1 else 's'} {has}"
           if nodes else "it has no node") + f" ({_asks(free.get('CPU', 0), free.get('GPU', 0))} free now)"
    flags = "--cpus-per-actor" + (" or --gpus-per-actor" if gpus_per_actor else "")
    if not holders:
        what = f"no node of the cluster can hold a purifier actor ({_asks(cpus, gpus_per_actor)} each)"
    else:
        what = (f"the cluster cannot run a purifier actor ({_asks(cpus, gpus_per_actor)}) and the tasks that read and "
                f"write its images (--cpus-per-task {task:g} each) together")
        flags += " or --cpus-per-task"
    return (f"{what}: {has}; the run waits for a node that can to be added (a cluster's autoscaler adds one; without "
            f"one it waits forever: Ctrl-C stops it, and a smaller {flags} fits the nodes there are)")


def cluster_wait_warning(config: PlacementOptions, gpus_per_actor: float) -> str | None:
    """`cluster_wait_problem` on the cluster Ray is connected to, where the run would wait for a node (a joined cluster,
    or a Ray the caller started); None on the job's own local Ray, which refuses such actors (`local_ray_problem`)."""
    import ray

    if not ray.is_initialized() or on_own_local_ray():
        return None
    nodes = [{k: float(v) for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU")}
             for n in ray.nodes() if n.get("Alive")]
    return cluster_wait_problem(config, gpus_per_actor, nodes, ray.available_resources())


def cpu_cluster_note(config: PlacementOptions, gpus_per_actor: float) -> str | None:
    """What a run on a joined cluster (not a Ray this process started) says when its purifier actors get no GPU though
    the options left that to the cluster (no --device, no --gpus-per-actor): the cluster had none as the run started.
    A cluster whose GPU workers autoscale from zero (cluster.yaml's `min_workers: 0`) has none yet, and such a run
    purified on CPU actors, many times slower, without a word; asking for GPU actors makes the autoscaler start them.
    None on a Ray started here (a laptop's run on its CPUs is the expected case) and where the options chose."""
    if gpus_per_actor or config.device is not None or config.gpus_per_actor is not None or ray_started_here():
        return None
    return ("the cluster has no GPU as the run starts, so its purifier actors run on CPUs; where GPU workers autoscale "
            "from zero, run with --actors N --gpus-per-actor 1 to have them started (--device cpu runs on CPUs "
            "without this note)")


def lost_nodes_note(config: PlacementOptions, gpus_per_actor: float, lost: list[dict[str, Any]],
                    alive: list[dict[str, Any]], free: dict[str, float]) -> str:
    """What the run says when `lost` nodes of its cluster (records of `ray.nodes()`) were lost mid-run, `alive` left,
    `free` of the cluster's resources now: Ray runs their work again on the nodes left, and, where those cannot run a
    purifier actor beside the tasks that feed it (`cluster_wait_problem`), that the run waits. It waited with no word
    (a cluster of two 1-CPU nodes, --cpus-per-actor 1, the actor's node lost: the actor restarted on the node left,
    which then had no CPU for the tasks; bench/node_loss_cluster.py)."""
    names = ", ".join(f"{n.get('NodeName') or n.get('NodeManagerAddress') or n.get('NodeID', '?')}" for n in lost)
    many = len(lost) != 1
    line = (f"{len(lost)} node{'s' if many else ''} of the cluster lost mid-run ({names}): Ray runs "
            f"{'their' if many else 'its'} tasks and purifier actors again on the nodes left")
    resources = [{k: float(v) for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU")} for n in alive]
    problem = cluster_wait_problem(config, gpus_per_actor, resources, free)
    return f"{line}; but {problem}" if problem else line


@contextlib.contextmanager
def node_loss_watched(config: PlacementOptions, gpus_per_actor: float, period_s: float = 5.0) -> Iterator[None]:
    """Within it, on a cluster Ray joined (not the job's own local Ray, one machine), a thread that looks at the
    cluster's nodes every `period_s` and says on stderr when one is lost (`lost_nodes_note`)."""
    import ray

    if not ray.is_initialized() or on_own_local_ray():
        yield
        return
    try:
        known = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    except Exception:  # noqa: BLE001 - Ray's node table: without it the run goes on, unwatched
        yield
        return

    def look() -> None:
        try:
            nodes = ray.nodes()
            lost = [n for n in nodes if n.get("NodeID") in known and not n.get("Alive")]
            if lost:
                alive = [n for n in nodes if n.get("Alive")]
                note = lost_nodes_note(config, gpus_per_actor, lost, alive, ray.available_resources())
                print(f"zip-purify: note: {note}", file=sys.stderr, flush=True)
            known.clear()
            known.update(n["NodeID"] for n in nodes if n.get("Alive"))  # a node added later is watched too
        except Exception:  # noqa: BLE001 - a look that failed (the cluster going down): the next one may not
            pass

    with repeated(look, period_s, "zip-purify-node-watch", join_timeout_s=period_s + 5):
        yield


def placement_problem(device: str, gpus_per_actor: float | None) -> str | None:
    """What is wrong with running purifier actors on `device` with `gpus_per_actor` GPUs each, or None (None GPUs:
    not decided yet, the cluster's GPUs decide). Checked with the options, in a dry run too, and again once the
    cluster's GPUs have set the number."""
    if device.startswith("cuda") and gpus_per_actor is not None and not gpus_per_actor:
        return (f"--device {device} needs GPU actors, but they get none (the cluster has no GPUs, or "
                "--gpus-per-actor is 0); leave --device out to run on the CPU")
    if device.startswith("cuda") and int(device.partition(":")[2] or 0) >= 1:
        # Ray sets each actor's CUDA_VISIBLE_DEVICES to its own GPU (at most one: --gpus-per-actor <= 1), cuda:0.
        return (f"--device {device}: a purifier actor sees only the GPU Ray gives it, as cuda:0; leave --device "
                "out (or use --device cuda)")
    if device == "cpu" and gpus_per_actor:
        return (f"--device cpu with --gpus-per-actor {gpus_per_actor:g}: the actors would hold GPUs they never "
                "use; leave --gpus-per-actor out (or 0) to run on CPUs")
    return None


def cpu_actor_threads(config: PlacementOptions, actors: int, gpus_per_actor: float) -> int | None:
    """torch threads for each purifier actor: --torch-threads when given; torch's own default on GPU actors; every
    core of its node for a lone CPU actor; and the CPUs Ray reserved for it (--cpus-per-actor, at least 1) when
    several CPU actors may share a node, since each taking all of the node's cores oversubscribes it N-fold."""
    if config.torch_threads:
        return config.torch_threads
    if gpus_per_actor:
        return None
    if actors <= 1:
        return ALL_CORES
    return max(1, int(actor_cpus(config)))


RAY_RESOURCE_UNITS = 10_000  # Ray counts a resource in 1/10000ths of a unit (--gpus-per-actor's smallest fraction)


def actor_placement(config: PlacementOptions, cluster_gpus: float) -> tuple[int, float, str]:
    """(actors, GPUs per actor, device) for the purifier pool on a cluster with `cluster_gpus` GPUs now; a JobError
    for a device the actors could not use, before any actor is started."""
    if config.gpus_per_actor is not None:
        gpus_per_actor = config.gpus_per_actor
    else:  # --device cpu on a cluster with GPUs: the actors must not hold GPUs they never use
        gpus_per_actor = 1.0 if cluster_gpus and config.device != "cpu" else 0.0
    if config.actors:
        actors = config.actors
    elif gpus_per_actor:
        # as many as fit on each GPU (an actor's share is on one GPU, never split across two), counted as Ray counts
        # them, in 1/10000ths: 1 // 0.2 is 4.0 in floats, and 2 GPUs // 0.6 is 3 where only 2 fit
        per_gpu = RAY_RESOURCE_UNITS // max(1, round(gpus_per_actor * RAY_RESOURCE_UNITS))
        actors = max(1, int(cluster_gpus) * per_gpu)
    else:
        actors = 1
    device = config.device or ("cuda" if gpus_per_actor else "cpu")
    problem = placement_problem(device, gpus_per_actor)
    if problem:
        raise JobError(problem)
    if not device.startswith("cuda") and config.precision != "fp32":
        raise JobError(f"--precision {config.precision} needs CUDA, but the actors run on {device} (the cluster has "
                       "no GPUs, or --gpus-per-actor is 0); use --precision fp32")
    return actors, gpus_per_actor, device


# Ray Data names a pool's actor class after its stage: 'MapWorker(MapBatches(PurifyStage))'
PURIFIER_ACTOR_CLASS = "PurifyStage"


def purifier_actor_table() -> dict[str, dict[str, Any]] | None:
    """The purifier actors of this driver's Ray job that Ray's control store knows (actor id -> its record: "State",
    "StartTime" in ms, 0 until its constructor has returned), those of earlier runs in this process too; None where Ray
    does not say (a Ray Client connection, `ray://`; a Ray without this table)."""
    import ray

    if not ray.is_initialized():  # ray.get_runtime_context() would start a Ray of its own
        return None
    try:
        from ray._private import state

        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        table = state.actors(job_id=job)
    except Exception:  # noqa: BLE001 - Ray's internal table: without it the run goes on, and does not say
        return None
    return {actor_id: record for actor_id, record in table.items()
            if PURIFIER_ACTOR_CLASS in str(record.get("ActorClassName", ""))}


def actors_started(table: dict[str, dict[str, Any]] | None, before: set[str]) -> int | None:
    """How many purifier actors in `table` (`purifier_actor_table`) not in `before` (those of earlier runs) started: their
    constructor returned (the model loaded), whether they are alive, restarting or ended since. None: Ray did not say."""
    if table is None:
        return None
    return sum(1 for actor_id, record in table.items() if actor_id not in before and record.get("StartTime"))
