"""What a mutation audit of pipeline/placement.py found untested: each test here fails with one of its hand-made bugs
(named in the test's comment) that every earlier fast test let through. No Ray is started: ray.init, Ray's node and
actor tables are stand-ins, and the rest is the module's own code."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from pipeline import placement
from pipeline.errors import JobError
from tests.netutil import refused_port
from tests.test_gpu_review_placement import _job
from tests.test_mutation_cluster_paths import _Cluster, _Options
from tests.test_node_loss_note import _node

ROOT = Path(__file__).resolve().parents[1]


# --- init_local_ray: what it leaves in the calling program ------------------------------------------------------------

@pytest.fixture
def ray_init_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """ray.init as a stand-in that keeps its arguments and the PYTHONPATH its Ray processes would inherit; no Ray up."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append({**kw, "PYTHONPATH": os.environ.get("PYTHONPATH")}))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(placement, "_OWN_RAY_NODE", [None])
    return calls


@pytest.mark.parametrize("theirs", [None, "/their/modules"])
def test_the_workers_get_the_checkout_and_the_callers_path_and_the_caller_keeps_its_own(
        monkeypatch: pytest.MonkeyPatch, ray_init_calls: list[dict], theirs: str | None) -> None:
    # a program without PYTHONPATH had one set for the rest of its life (its own subprocesses then imported this
    # checkout's modules first); the caller's entries were left out of the workers' path
    if theirs is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", theirs)
    placement.init_local_ray(num_cpus=1)
    assert ray_init_calls[0]["PYTHONPATH"].split(os.pathsep) == [str(ROOT), *([theirs] if theirs else [])]
    assert os.environ.get("PYTHONPATH") == theirs


def test_rays_loggers_are_as_they_were_once_the_local_ray_has_started(monkeypatch: pytest.MonkeyPatch,
                                                                      ray_init_calls: list[dict]) -> None:
    # the filters that keep ray.init's token note and Ray's CPU count lines off stderr outlived it: Ray's lines of
    # those loggers (a later count's warning; the note as the program's own later ray.init turns token authentication
    # on) were dropped for good
    import ray._private.utils as ray_utils

    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda **kw: 0.5)
    placement.init_local_ray()
    assert ray_init_calls[0]["num_cpus"] == 1
    for name in ("ray._private.authentication.authentication_token_setup", "ray._private.utils"):
        for line in ("a line after the start", f"{placement.TOKEN_AUTH_ENABLED_NOTE}. Set RAY_AUTH_MODE=disabled"):
            record = logging.LogRecord(name, logging.WARNING, __file__, 1, line, None, None)
            assert logging.getLogger(name).filter(record), (name, line)


def test_only_rays_token_note_is_kept_off_while_the_local_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # the note that token authentication is on is dropped; Ray's other lines of that logger still reach the user
    import ray

    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    monkeypatch.setattr(auth, "handlers", [handler])

    def init(**kw) -> None:
        auth.warning(f"{placement.TOKEN_AUTH_ENABLED_NOTE}. Set RAY_AUTH_MODE=disabled to opt out.")
        auth.warning("The token file ~/.ray/auth_token could not be read")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    placement.init_local_ray(num_cpus=1)
    assert seen == ["The token file ~/.ray/auth_token could not be read"]


def test_a_ray_whose_cpu_count_fails_starts_with_rays_own_count(monkeypatch: pytest.MonkeyPatch,
                                                                ray_init_calls: list[dict]) -> None:
    # Ray's internal count (another Ray's signature, a cgroup file it cannot read) raising stopped the run before Ray
    import ray._private.utils as ray_utils

    def fails(**kw: object) -> float:
        raise TypeError("get_num_cpus() got an unexpected keyword argument 'truncate'")

    monkeypatch.setattr(ray_utils, "get_num_cpus", fails)
    placement.init_local_ray()
    assert ray_init_calls[0]["num_cpus"] is None


# --- which Ray this process started -------------------------------------------------------------------------------------

class _Node:
    def __init__(self, head: bool) -> None:
        self.head = head


@pytest.mark.parametrize("head, started_here", [(True, True), (False, False)])
def test_a_driver_that_joined_a_cluster_did_not_start_its_ray(monkeypatch: pytest.MonkeyPatch, head: bool,
                                                              started_here: bool) -> None:
    # a driver joined to a cluster has a node of its own that is not the head: counted as started here, its run
    # fitted the actors' CPUs to that cluster and said nothing of purifying on CPUs where GPU workers autoscale
    import ray
    import ray._private.worker as ray_worker

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: False)
    monkeypatch.setattr(ray_worker, "_global_node", _Node(head), raising=False)
    assert placement.ray_started_here() is started_here


@pytest.mark.parametrize("started_here, cpus, expected, noted", [
    (False, 1.0, 1.0, False),  # a joined cluster keeps the default (its autoscaler may add larger nodes)
    (True, 1.0, 0.75, True),
    (True, 8.0, 1.0, False),
])
def test_the_default_actor_cpus_are_fitted_only_on_a_ray_started_here(monkeypatch: pytest.MonkeyPatch,
                                                                       started_here: bool, cpus: float,
                                                                       expected: float, noted: bool) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus})
    monkeypatch.setattr(placement, "ray_started_here", lambda: started_here)
    config, note = placement.with_fitted_actor_cpus(_job())
    assert config.cpus_per_actor == expected and (note is not None) == noted, note


@pytest.mark.parametrize("ray_up", [False, True])
def test_the_users_cpus_per_actor_is_kept_on_any_ray(monkeypatch: pytest.MonkeyPatch, ray_up: bool) -> None:
    # --cpus-per-actor 4 became the default 1 on a joined cluster (or before Ray was up)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: ray_up)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(placement, "ray_started_here", lambda: False)
    assert placement.with_fitted_actor_cpus(_job(cpus_per_actor=4.0)) == (_job(cpus_per_actor=4.0), None)


def test_the_fitted_actor_cpus_are_rounded_down_to_rays_units_and_the_note_names_the_flag() -> None:
    # --cpus-per-task 0.33333 on a 1-CPU machine: rounded to the nearest unit, the actor's 0.6667 and the task's 0.33333
    # made more than the machine's one CPU, and the default run was refused; the note names the flag that sets it
    cpus, note = placement.fitted_actor_cpus(_job(cpus_per_task=0.33333), 1.0)
    assert cpus == 0.6666 and note.endswith("; --cpus-per-actor sets it"), note
    assert placement.local_ray_problem(_job(cpus_per_task=0.33333, cpus_per_actor=cpus), 0.0, cpus=1.0, gpus=0) is None


# --- Ray Data's console lines while a run goes on ---------------------------------------------------------------------

def _ray_data_levels() -> dict[str, int]:
    return {h.get_name(): h.level for h in logging.getLogger("ray.data").handlers}


@pytest.mark.parametrize("own_ray, user_setting, quieted", [
    (True, None, True),
    (False, None, False),  # a Ray the caller started or joined: its Ray Data logs as the caller set it
    (True, ("RAY_DATA_LOG_LEVEL", "INFO"), False),
    (True, ("RAY_DATA_LOGGING_CONFIG", "/etc/ray-data-logging.yaml"), False),
])
def test_ray_datas_info_lines_are_quieted_on_the_jobs_own_ray_only_and_only_on_the_console(
        monkeypatch: pytest.MonkeyPatch, own_ray: bool, user_setting: tuple[str, str] | None, quieted: bool) -> None:
    import ray.data  # noqa: F401 - its logger's handlers

    for name in ("RAY_DATA_LOG_LEVEL", "RAY_DATA_LOGGING_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    if user_setting:
        monkeypatch.setenv(*user_setting)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: own_ray)
    before = _ray_data_levels()
    assert before["console"] < logging.WARNING and "file" in before
    with placement.ray_data_console_quieted():
        during = _ray_data_levels()
    # its log file keeps every line (docs/job.md sends the user there for them)
    assert during == {**before, "console": logging.WARNING if quieted else before["console"]}
    assert _ray_data_levels() == before


# --- an address nobody answers ----------------------------------------------------------------------------------------

def test_a_ray_client_address_nobody_answers_is_said_with_the_reason() -> None:
    # ray:// addresses (Ray Client) went to ray.init unchecked, which retried them for minutes; the reason was dropped
    with refused_port() as port:
        problem = placement.unreachable_ray_address(f"ray://127.0.0.1:{port}")
    assert problem.startswith(f"nothing answers at 127.0.0.1:{port} (ConnectionRefusedError: "), problem


def test_an_address_that_times_out_is_said_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    # not only a refused connection: a head behind a firewall that drops the packets times out (TimeoutError, an
    # OSError); that stopped the run with a traceback
    def drops(address: tuple[str, int], timeout: float) -> socket.socket:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", drops)
    assert placement.unreachable_ray_address("10.0.0.1:6379") == (
        "nothing answers at 10.0.0.1:6379 (TimeoutError: timed out); is the Ray cluster up, and is this its head's "
        "address (ray status prints it)?")


def test_a_bracketed_ipv6_head_that_answers_is_reachable() -> None:
    # the brackets of [::1]:6379 were taken for the host name, and a head that answered was refused as unreachable
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        port = server.getsockname()[1]
        assert placement.unreachable_ray_address(f"[::1]:{port}") is None
        assert placement.unreachable_ray_address(f"ray://[::1]:{port}") is None


# --- joining a cluster: Ray's SIGTERM handler, its output, the hint --------------------------------------------------

def test_ray_init_leaves_the_jobs_sigterm_handler_and_rays_setter_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # ray.init sets SIGTERM to sys.exit(15) as it starts: a SIGTERM then (a pod stopped) ended the job with status 15
    # and not a word; and a setter left replaced kept every later ray.init of the program from setting its own
    import ray
    import ray._private.utils as ray_utils

    rays_setter = ray_utils.set_sigterm_handler
    calls: list[dict] = []

    def init(**kw) -> None:
        calls.append(kw)
        ray_utils.set_sigterm_handler(lambda signum, frame: None)  # as ray.init does, through the module

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(placement, "unreachable_ray_address", lambda address: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ours = signal.getsignal(signal.SIGTERM)
    try:
        placement.init_ray(_job(ray_address="10.0.0.1:6379"))
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, ours)
    assert ray_utils.set_sigterm_handler is rays_setter
    # the joined cluster's workers' output reaches the driver, as Ray prints it (docs/job.md: it logs as Ray does)
    assert calls == [{"address": "10.0.0.1:6379", "log_to_driver": True}]


@pytest.mark.parametrize("mode", ["TOKEN", " token ", "Token"])
def test_ray_auth_mode_token_in_any_case_is_not_advised_again(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # Ray reads RAY_AUTH_MODE without regard to case: TOKEN is set already, and not the cause of a refused join
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert placement.join_hint("10.0.0.1:6379") == ""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert "export RAY_AUTH_MODE=token" in placement.join_hint("10.0.0.1:6379")


# --- what the run says of its actors and its cluster -------------------------------------------------------------------

def test_an_actor_too_large_for_the_jobs_own_ray_is_refused_with_what_to_change() -> None:
    problem = placement.local_ray_problem(_job(cpus_per_actor=4), 0.0, cpus=2, gpus=0)
    assert "use a smaller --cpus-per-actor or --cpus-per-task, or join a larger cluster with --ray-address" in problem


def test_a_one_cpu_machine_is_said_to_have_1_cpu_not_1_cpus() -> None:
    problem = placement.local_ray_problem(_job(cpus_per_actor=1), 0.0, cpus=1, gpus=0)
    assert "(started by the job, no other node joins it) has 1 CPU, so" in problem, problem
    problem = placement.local_ray_problem(_job(), 1.0, cpus=2, gpus=0)
    assert "has 2 CPUs and 0 GPUs, so no purifier actor could start" in problem, problem


def test_the_wait_note_shows_the_largest_nodes_first_and_says_there_are_more() -> None:
    nodes = [{"CPU": c} for c in (2, 32, 4, 16, 8)]
    problem = placement.cluster_wait_problem(_job(cpus_per_actor=64), 0.0, nodes, {"CPU": 3})
    assert ": its 5 nodes have 32 CPUs, 16 CPUs, 8 CPUs, 4 CPUs, ... (3 CPUs free now);" in problem, problem


@pytest.mark.parametrize("actor, task, node", [(0.2, 0.5, 0.7), (0.4, 0.3, 0.7), (0.1, 0.2, 0.3)])
def test_an_actor_and_a_task_that_fill_a_node_exactly_are_not_said_to_wait(actor: float, task: float,
                                                                            node: float) -> None:
    # 0.7 - 0.2 is a hair under 0.5 in floats: the run said it would wait forever on a node that holds both
    assert placement.cluster_wait_problem(_job(cpus_per_actor=actor, cpus_per_task=task), 0.0, [{"CPU": node}],
                                          {"CPU": node}) is None


class _ClusterWithTotals(_Cluster):
    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 10.0}


def test_the_start_note_counts_alive_nodes_only_and_what_is_free_now(monkeypatch: pytest.MonkeyPatch) -> None:
    # ray.nodes() keeps dead nodes among its records: a large node ended before the run was counted as one that could
    # hold the actor, and the run waited with no word; "free now" is what the cluster has free, not its total
    cluster = _ClusterWithTotals([[_node("10.0.1.7", 8, alive=False), _node("10.0.1.8", 2)]], looks=1)
    cluster.available_resources = lambda: {"CPU": 0.5}
    monkeypatch.setitem(__import__("sys").modules, "ray", cluster)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: False)
    warning = placement.cluster_wait_warning(_job(cpus_per_actor=2), 0.0)
    assert warning.startswith("the cluster cannot run a purifier actor (2 CPUs) and the tasks"), warning
    assert ": its 1 node has 2 CPUs (0.5 CPUs free now);" in warning, warning


def test_two_nodes_lost_are_counted_and_named() -> None:
    note = placement.lost_nodes_note(_Options(cpus_per_actor=0.5), 0.0,
                                     [_node("10.0.1.7", 1, alive=False), _node("10.0.1.9", 1, alive=False)],
                                     [_node("10.0.1.8", 1)], {"CPU": 0.5})
    assert note == ("2 nodes of the cluster lost mid-run (10.0.1.7, 10.0.1.9): Ray runs their tasks and purifier "
                    "actors again on the nodes left")


# --- the watch for lost nodes ---------------------------------------------------------------------------------------------

class _FlakyCluster(_Cluster):
    """A cluster whose node table fails at the looks numbered in `failing` (1: the look as the watch starts)."""

    def __init__(self, views: list[list[dict]], looks: int, failing: set[int]) -> None:
        super().__init__(views, looks)
        self.failing = failing

    def nodes(self) -> list[dict]:
        if self.calls + 1 in self.failing:
            self.calls += 1
            raise ConnectionError("GCS unavailable")
        return super().nodes()


def _notes(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "lost mid-run" in line]


def test_a_node_lost_after_a_failed_look_and_later_looks_is_still_said(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # a look that failed (the cluster busy) ended the watch for the rest of the run; and a node lost at a look after
    # the first was never said (the nodes known were emptied and not refilled)
    up = [_node("10.0.1.5", 4), _node("10.0.1.6", 4)]
    down = [_node("10.0.1.5", 4), _node("10.0.1.6", 4, alive=False)]
    cluster = _FlakyCluster([up, up, up, up, down], looks=8, failing={3})
    monkeypatch.setitem(__import__("sys").modules, "ray", cluster)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: False)
    with placement.node_loss_watched(_Options(), 0.0, period_s=0.001):
        assert cluster.looked.wait(30)
    assert _notes(capsys) == ["zip-purify: note: 1 node of the cluster lost mid-run (10.0.1.6): Ray runs its tasks "
                              "and purifier actors again on the nodes left"]


def test_a_node_table_that_fails_as_the_run_starts_leaves_the_run_unwatched(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _FlakyCluster([[_node("10.0.1.5", 4)]], looks=1, failing={1})
    monkeypatch.setitem(__import__("sys").modules, "ray", cluster)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: False)
    ran = []
    with placement.node_loss_watched(_Options(), 0.0, period_s=0.001):
        ran.append(True)
    assert ran == [True] and not any(t.name == "zip-purify-node-watch" for t in threading.enumerate())


def test_the_watch_ends_with_the_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # a watch left running looked at the cluster for the rest of the program, and said a later run's lost node in
    # this run's name
    cluster = _Cluster([[_node("10.0.1.5", 4)]], looks=3)
    monkeypatch.setitem(__import__("sys").modules, "ray", cluster)
    monkeypatch.setattr(placement, "on_own_local_ray", lambda: False)
    with placement.node_loss_watched(_Options(), 0.0, period_s=0.001):
        assert cluster.looked.wait(30)
    assert not any(t.name == "zip-purify-node-watch" for t in threading.enumerate())
    looks = cluster.calls
    threading.Event().wait(0.05)
    assert cluster.calls == looks


# --- where the actors run -------------------------------------------------------------------------------------------------

def test_cuda_0_on_actors_without_gpus_is_refused_as_cuda_is() -> None:
    with pytest.raises(JobError, match="--device cuda:0 needs GPU actors"):
        placement.actor_placement(_job(device="cuda:0"), 0)
    with pytest.raises(JobError, match="--device cuda:0 needs GPU actors"):
        _job(device="cuda:0", gpus_per_actor=0).check()


def test_reduced_precision_runs_on_cuda_0() -> None:
    # --device cuda:0 --precision fp16 was refused as if the actors ran on the CPU
    assert placement.actor_placement(_job(device="cuda:0", precision="fp16"), 2) == (2, 1.0, "cuda:0")


def test_gpu_actors_on_a_cluster_with_no_gpu_yet_are_a_pool_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # --gpus-per-actor 1 without --actors on a cluster whose GPU workers autoscale from zero: a pool of 0 actors,
    # which Ray Data refuses, where one actor asks the autoscaler for a GPU node
    assert placement.actor_placement(_job(gpus_per_actor=1), 0) == (1, 1, "cuda")
    assert placement.actor_placement(_job(gpus_per_actor=0.5), 0) == (1, 0.5, "cuda")


# --- the summary's count of the actors started --------------------------------------------------------------------------

def test_the_actors_started_are_this_runs_whose_model_loaded() -> None:
    table = {"a": {"StartTime": 17}, "b": {"StartTime": 0}, "c": {"StartTime": 12}, "d": {}}
    assert placement.actors_started(table, before={"c"}) == 1
    assert placement.actors_started(None, before=set()) is None  # Ray did not say: not 0 actors


def test_the_actor_table_holds_the_purifier_actors_and_none_where_ray_cannot_say(monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    import ray
    from ray._private import state

    class Context:
        def get_job_id(self) -> str:
            return "01000000"

    table = {"a": {"ActorClassName": "MapWorker(MapBatches(PurifyStage))", "StartTime": 5},
             "b": {"ActorClassName": "TheirOwnActor", "StartTime": 5}}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    monkeypatch.setattr(state, "actors", lambda job_id: table)
    assert placement.purifier_actor_table() == {"a": table["a"]}

    def no_table(job_id: object) -> dict:
        raise ConnectionError("not through a Ray Client connection")

    monkeypatch.setattr(state, "actors", no_table)
    assert placement.purifier_actor_table() is None
