"""What a run on a joined cluster says when a node of it is lost mid-run (pipeline.placement.lost_nodes_note).

The purifier actor of a node lost is restarted on a node left (Ray), which may then hold it but not the tasks that feed
it: on a cluster of two 1-CPU nodes with --cpus-per-actor 1, the run then waited with no word at all
(bench/node_loss_cluster.py). It says the node was lost, and where the nodes left cannot run the purifier beside its
tasks, that it waits for a node and which flags fit the nodes there are."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.placement import lost_nodes_note


@dataclass
class _Options:
    ray_address: str | None = "10.0.0.1:6379"
    actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = 1.0
    cpus_per_task: float = 0.25
    torch_threads: int | None = None
    device: str | None = None
    precision: str = "fp32"


def _node(name: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": f"id-{name}", "NodeName": name, "Alive": alive, "Resources": {"CPU": cpus, "memory": 1e9}}


def test_a_lost_node_whose_work_the_nodes_left_can_run_is_said_and_nothing_more() -> None:
    note = lost_nodes_note(_Options(cpus_per_actor=0.5), 0.0, [_node("10.0.1.7", 1, alive=False)],
                           [_node("10.0.1.8", 1)], {"CPU": 0.5})
    assert note == ("1 node of the cluster lost mid-run (10.0.1.7): Ray runs its tasks and purifier actors again on "
                    "the nodes left")


def test_nodes_left_that_cannot_run_the_purifier_beside_its_tasks_make_the_run_say_it_waits() -> None:
    note = lost_nodes_note(_Options(), 0.0, [_node("10.0.1.7", 1, alive=False)], [_node("10.0.1.8", 1)], {"CPU": 0.0})
    assert note.startswith("1 node of the cluster lost mid-run (10.0.1.7): Ray runs its tasks and purifier actors "
                           "again on the nodes left; but the cluster cannot run a purifier actor (1 CPU) and the tasks")
    assert "without one it waits forever: Ctrl-C stops it" in note and "--cpus-per-actor or --cpus-per-task" in note
