"""A worker node lost mid-run (a spot or preemptible instance reclaimed) on a real Ray cluster of three nodes on one
Linux machine: does the run finish on the node left, hang or fail; what does its output hold then (rows, duplicate
ids, inputs missing, `_summary.json`); and does the same command run again complete it, every input exactly once?

    python bench/node_loss_cluster.py                                 # as root: both scenarios
    python bench/node_loss_cluster.py --scenarios actor --images 800 --timeout 300

Needs root (or CAP_SYS_ADMIN) for `unshare -m -u`. The cluster is bench/two_node_cluster.py's (its `Cluster`): a head
started with `ray start --head --num-cpus 0` and, here, two worker nodes of --node-cpus CPUs each (host names
`node-a`, `node-b`, node IPs 127.0.0.2 and 127.0.0.3), each `ray start --block` inside mount and host-name namespaces
of its own; nothing is masked, every node sees the same disk. The job is `python jobs/purify.py --ray-address HEAD`
over --images random PNGs of 16 px, the tests' tiny model (tests/jobutil.py), `--steps 1`, one purifier actor
(`--actors 1 --cpus-per-actor 0.5 --cpus-per-task 0.25`: what two 1-CPU nodes hold, the actor and a task on one node),
small read units and write batches so that many part files are written. Once the run has written --kill-after part
files to data/, one worker node is killed as a reclaimed machine is: SIGKILL to every process of its namespace (its
`ray start`, raylet, agents and the Ray workers its raylet started), all at once.

Scenarios, each on a fresh cluster:
  tasks  the worker node that does not host the purifier actor (only the pipeline's tasks run there)
  actor  the worker node that hosts the purifier actor (found by its process, `ray::...PurifyStage...`, and the node
         namespace that process is in)
For each: which node hosted the actor before and after, the exit status and wall time, stderr's last lines (and its
lines about the lost node), the output (rows in data/ and rejects/, ids held twice, input ids missing,
`_summary.json`'s status and counts), and, where the run did not leave every input exactly once, the same command
run again on the node left, with the same report.

Everything it started is torn down (bench/two_node_cluster.py's `Cluster.stop`, never a plain `ray stop`), on
success, on an error and on Ctrl-C. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.two_node_cluster import RAY, ROOT, Cluster, processes_naming  # noqa: E402
from pipeline.output import SUMMARY_FILE  # noqa: E402
from pipeline.placement import PURIFIER_ACTOR_CLASS  # noqa: E402

SCENARIOS = ("tasks", "actor")
NODES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}


def purifier_actors(cluster: Cluster) -> dict[int, str]:
    """The purifier actors' processes on this cluster's worker nodes: pid -> the node's host name. Ray titles an actor's
    process `ray::MapWorker(MapBatches(PurifyStage))` (`.method` while it runs one); another Ray on the machine may
    run the job too, so only processes in this cluster's node namespaces count."""
    found = {}
    for pid, cmdline in processes_naming("ray::").items():
        if cmdline.startswith("ray::") and PURIFIER_ACTOR_CLASS in cmdline:
            host = cluster.host_of(pid)
            if host:
                found[pid] = host
    return found


def parts(output: Path, folder: str = "data") -> int:
    where = output / folder
    return sum(1 for p in where.glob("part-*.parquet")) if where.exists() else 0


def ids_of(output: Path, folder: str) -> list[str]:
    import pyarrow.parquet as pq

    ids: list[str] = []
    for path in sorted((output / folder).glob("part-*.parquet")) if (output / folder).exists() else []:
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return ids


def output_state(output: Path, expected: set[str]) -> dict[str, Any]:
    """Rows in data/ and rejects/, ids held more than once (across both), input ids held by neither, ids that are not
    inputs, and `_summary.json`'s status and counts."""
    data, rejects = ids_of(output, "data"), ids_of(output, "rejects")
    counts = collections.Counter(data + rejects)
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((output / SUMMARY_FILE).read_text())
    return {"data_rows": len(data), "rejects_rows": len(rejects), "data_parts": parts(output),
            "twice": sorted(i for i, n in counts.items() if n > 1), "missing": sorted(expected - set(counts)),
            "not_inputs": sorted(set(counts) - expected), "status": summary.get("status", "-"),
            "this_run": summary.get("this_run", {}), "output_totals": summary.get("output_totals", {}),
            "duplicates_removed": summary.get("this_run", {}).get("duplicates_removed", "-"),
            "error": summary.get("error", summary.get("reason", "-")), "resume": summary.get("resume", "-")}


def show_state(label: str, state: dict[str, Any]) -> None:
    print(f"  {label}: data rows {state['data_rows']} in {state['data_parts']} part files, rejects rows "
          f"{state['rejects_rows']}; ids twice {len(state['twice'])} {state['twice'][:5]}; inputs missing "
          f"{len(state['missing'])} {state['missing'][:5]}; not inputs {len(state['not_inputs'])} "
          f"{state['not_inputs'][:3]}", flush=True)
    print(f"  {label}: {SUMMARY_FILE} status {state['status']}; this_run {json.dumps(state['this_run'])[:400]}; "
          f"output_totals {json.dumps(state['output_totals'])[:300]}; duplicates_removed "
          f"{state['duplicates_removed']}", flush=True)
    for key in ("error", "resume"):
        if state[key] != "-":
            print(f"  {label}: {SUMMARY_FILE} {key}: {str(state[key])[:600]}", flush=True)


def ended(proc: subprocess.Popen, deadline: float) -> Any:
    """The job's exit status once it ends by `deadline` (time.monotonic()); else it is called hung and stopped as a
    user's Ctrl-C would (SIGINT: the job records its stop), killed if that does not end it in 60 s."""
    try:
        return proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return f"hung: stopped at the timeout (then {proc.returncode})"


def stopped(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def node_loss_lines(stderr: list[str]) -> list[str]:
    words = ("node", "Node", "died", "Died", "ActorDied", "unavailable", "error:", "Error")
    return [line for line in stderr if any(w in line for w in words)]


def job(argv: list[str], cluster: Cluster, logs: Path, name: str) -> subprocess.Popen:
    out, err = open(logs / f"{name}.out", "w"), open(logs / f"{name}.err", "w")  # noqa: SIM115 - ends with the job
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "purify.py"), *argv], cwd=ROOT, env=cluster.env,
                            stdout=out, stderr=err, text=True)


def tail(path: Path) -> list[str]:
    return path.read_text(errors="replace").strip().splitlines() if path.exists() else []


def run_scenario(name: str, args: argparse.Namespace, base: Path, source: Path, tiny: str,
                 expected: set[str]) -> dict[str, Any]:
    own = base / name  # the cluster's own folder: its token, its nodes' temp dirs
    logs = own / "logs"
    logs.mkdir(parents=True)
    cluster = Cluster(own, None, 1, logs)
    result: dict[str, Any] = {"scenario": name}
    proc = None
    try:
        t0 = time.monotonic()
        cluster.start_head(args.start_timeout)
        for host, ip in NODES.items():
            cluster.start_worker(host, ip, args.node_cpus, args.start_timeout, temp=host)
        print(f"cluster up in {time.monotonic() - t0:.1f} s: head {cluster.address} (0 CPUs), "
              f"{', '.join(f'{h} ({ip}, {args.node_cpus:g} CPU)' for h, ip in NODES.items())}; logs {logs}", flush=True)
        output = base / f"out-{name}"
        argv = ["--input", str(source), "--output", str(output), "--checkpoint", tiny, "--pool", "4",
                "--canvas-size", "32", "--steps", "1", "--no-progress", "--ray-address", cluster.address,
                "--actors", "1", "--cpus-per-actor", f"{args.cpus_per_actor:g}", "--cpus-per-task", "0.25",
                "--write-batch", str(args.write_batch), "--files-per-unit", str(args.files_per_unit)]
        print(f"== {name}: python jobs/purify.py {' '.join(argv)}", flush=True)
        started = time.monotonic()
        deadline = started + args.timeout
        proc = job(argv, cluster, logs, "run")
        victim, actors_before = None, {}
        while proc.poll() is None and time.monotonic() < deadline:
            actors_before = purifier_actors(cluster)
            if actors_before and parts(output) >= args.kill_after:
                on = sorted(set(actors_before.values()))
                victim = on[0] if name == "actor" else next(h for h in NODES if h not in on)
                break
            time.sleep(0.2)
        if victim is None:
            print(f"  no kill: the run {'ended' if proc.poll() is not None else 'was still'} at {parts(output)} part "
                  f"files, actors {actors_before} (more --images, or a smaller --kill-after)", flush=True)
        else:
            pids = cluster.node_processes(victim)
            titles = processes_naming("ray::")
            workers = sorted(titles[p].split(" ")[0][:60] for p in pids if titles.get(p, "").startswith("ray::"))
            at_kill = time.monotonic() - started
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(cluster.workers[victim].pid, signal.SIGKILL)
            result.update(victim=victim, killed_at_s=round(at_kill, 1), parts_at_kill=parts(output),
                          actor_before=actors_before, processes_killed=len(pids))
            print(f"  killed {victim} at {at_kill:.1f} s ({len(pids)} processes, SIGKILL; its Ray workers then: "
                  f"{workers}), {parts(output)} data part files written then; purifier actor before: {actors_before}",
                  flush=True)
        after: dict[int, str] = {}
        while proc.poll() is None and time.monotonic() < deadline:
            now = {p: h for p, h in purifier_actors(cluster).items() if p not in actors_before}
            if now and not after:
                after = now
                print(f"  a new purifier actor at {time.monotonic() - started:.1f} s: {after}", flush=True)
            time.sleep(0.5)
        code = ended(proc, deadline)
        result.update(exit=code, wall_s=round(time.monotonic() - started, 1), actor_after=after)
        stderr = tail(logs / "run.err")
        print(f"  exit {code}, wall {result['wall_s']} s", flush=True)
        for line in stderr[-args.tail:]:
            print(f"  stderr| {line[:400]}")
        lost = node_loss_lines(stderr)
        print(f"  stderr: {len(stderr)} lines, {len(lost)} naming a node, an error or a death; the first "
              f"{min(len(lost), args.tail)}:")
        for line in lost[:args.tail]:
            print(f"  stderr~ {line[:400]}")
        for line in tail(logs / "run.out")[-3:]:
            print(f"  stdout| {line[:400]}")
        state = output_state(output, expected)
        result["state"] = state
        show_state("output", state)
        status = subprocess.run([RAY, "status", "--address", cluster.address], capture_output=True, text=True,
                                env=cluster.env, timeout=60).stdout
        active = status.split("Active:", 1)[-1].split("Pending:", 1)[0].count("node_")
        dead = status.split("Recent failures:", 1)[-1].split("Resources", 1)[0].count("node_")
        print(f"  ray status: {active} active node(s), {dead} recent failure(s)", flush=True)
        exactly_once = code == 0 and not state["twice"] and not state["missing"] and not state["not_inputs"]
        if not exactly_once and args.resume:
            # `ray status` may still count the lost node active here: Ray declares it dead only after its health checks
            print(f"  the same command again (resume), on the same cluster ({active} active by `ray status`):", flush=True)
            again = time.monotonic()
            proc = job(argv, cluster, logs, "resume")
            code2 = ended(proc, again + args.timeout)
            result.update(resume_exit=code2, resume_wall_s=round(time.monotonic() - again, 1))
            print(f"  resume exit {code2}, wall {result['resume_wall_s']} s", flush=True)
            for line in tail(logs / "resume.err")[-args.tail:]:
                print(f"  stderr| {line[:400]}")
            for line in tail(logs / "resume.out")[-3:]:
                print(f"  stdout| {line[:400]}")
            result["resume_state"] = output_state(output, expected)
            show_state("after resume", result["resume_state"])
    finally:
        handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
        stopped(proc)  # a second Ctrl-C does not cut the teardown short
        t0 = time.monotonic()
        cluster.stop()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        left = processes_naming(str(own))
        print(f"  cluster torn down in {time.monotonic() - t0:.1f} s; processes outside its nodes' process groups, "
              f"killed: {len(getattr(cluster, 'outside_groups', {}))}; processes left naming {own}: {left}",
              flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--write-batch", type=int, default=20, help="--write-batch of the job: rows per part file")
    parser.add_argument("--files-per-unit", type=int, default=20, help="--files-per-unit of the job")
    parser.add_argument("--kill-after", type=int, default=3, help="data part files written before the node is killed")
    parser.add_argument("--node-cpus", type=float, default=1, help="CPUs of each worker node")
    parser.add_argument("--cpus-per-actor", type=float, default=0.5,
                        help="--cpus-per-actor of the job (1: the node left cannot hold the actor and a task together)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take before it is called hung")
    parser.add_argument("--start-timeout", type=float, default=120, help="seconds for the nodes to come up")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="do not run the same command again after a run that left inputs missing or twice")
    parser.add_argument("--tail", type=int, default=6, help="stderr lines printed per run")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (the nodes' logs) after the run")
    args = parser.parse_args()
    chosen = [s for s in args.scenarios.split(",") if s]
    if set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(set(chosen) - set(SCENARIOS))}")
    # SIGTERM as Ctrl-C: each scenario's finally tears its cluster down either way
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from tests.jobutil import image_folder, tiny_model_file

    base = Path(tempfile.mkdtemp(prefix="nl-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    results = []
    try:
        source = image_folder(base / "in", args.images)
        expected = {p.name for p in source.iterdir()}
        tiny = tiny_model_file(base)
        for name in chosen:
            print(f"\n## scenario {name}", flush=True)
            results.append(run_scenario(name, args, base, source, tiny, expected))
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C or SIGTERM): what it started is torn down", file=sys.stderr)
        sys.exit(130)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the teardown short
            signal.signal(signum, signal.SIG_IGN)
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("\nsummary:")
    for r in results:
        s, again = r.get("state", {}), r.get("resume_state")
        print(f"  {r['scenario']:<6} killed {r.get('victim', '-')} at {r.get('killed_at_s', '-')} s "
              f"({r.get('parts_at_kill', '-')} parts); exit {r.get('exit')} in {r.get('wall_s')} s; status "
              f"{s.get('status')}; rows {s.get('data_rows')}+{s.get('rejects_rows')}, twice {len(s.get('twice', []))}, "
              f"missing {len(s.get('missing', []))}" + (
                  f"; resume exit {r.get('resume_exit')} in {r.get('resume_wall_s')} s, status {again['status']}, rows "
                  f"{again['data_rows']}+{again['rejects_rows']}, twice {len(again['twice'])}, missing "
                  f"{len(again['missing'])}" if again else ""))


if __name__ == "__main__":
    main()
