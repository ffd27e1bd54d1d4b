"""A real Ray cluster of two nodes on one Linux machine, the worker node blind to part of the driver's disk: does a run
with a local --input, --output or --checkpoint that only the driver sees stop with one clear line, and does one on a
path both nodes see run as before?

    python bench/two_node_cluster.py                                  # as root: every scenario
    python bench/two_node_cluster.py --scenarios shared,output --images 6 --timeout 300

Needs root (or CAP_SYS_ADMIN) for `unshare -m -u` and a tmpfs mount. The cluster is the topology of cluster.yaml: a
head started with `ray start --head --num-cpus 0` (it only coordinates; the job's driver joins it with --ray-address)
and one worker node, `ray start --address ... --num-cpus 2`, started inside its own mount and host-name namespaces
(host name `two-node-worker`, node IP 127.0.0.2) with an empty tmpfs mounted over the driver-only folder: that node
sees the checkout, the shared folder and everything else, but not what the driver keeps there. Every port is a free
one picked here, each node has its own --temp-dir under this run's own folder in /tmp (no clash with another Ray on the
machine), no dashboard, no usage stats.

Scenarios, each `python jobs/purify.py --ray-address HEAD ...` as a user runs it, with --images random PNGs, the
tests' tiny model (tests/jobutil.py) and --steps 1:
  shared      --input, --output, --checkpoint in the folder both nodes see
  output      --output in the driver-only folder
  input       --input in the driver-only folder
  checkpoint  --checkpoint in the driver-only folder
  prior       no --checkpoint: the default prior shipped in the package (pipeline/assets, which both nodes see)
  prior-copy  no --checkpoint, the driver run from a copy of the checkout (pipeline/, jobs/) in the driver-only folder,
              as `ray job submit --working-dir` unpacks the package under a folder of each node's own: the driver's
              path to the default prior is not there on the worker, whose own copy of the package (this checkout,
              its PYTHONPATH) holds the same file
For each: exit status, wall time, stderr's last lines, what the driver sees in the output (files, rows, the summary's
status) and what the worker node holds in the driver-only folder (read through /proc/PID/root, its own view).

Everything it started is torn down by process group and by its own temp folder (never a plain `ray stop`, which ends
every Ray on the machine), on success, on an error and on Ctrl-C; its temp folder is removed. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import NotOnThisNodeError  # noqa: E402
from pipeline.output import RUNS_DIR, SUMMARY_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
WORKER_HOST = "two-node-worker"
WORKER_IP = "127.0.0.2"  # loopback: a node IP of its own, so that the driver joins the head, not the worker
NODE_OPTIONS = ["--block", "--disable-usage-stats", "--object-store-memory", str(100 * 2**20)]
SCENARIOS = ("shared", "output", "input", "checkpoint", "prior", "prior-copy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def free_port_range(size: int) -> tuple[int, int]:
    """`size` consecutive ports none of which is bound now (for a node's worker processes)."""
    import random

    for _ in range(200):
        start = random.randrange(30000, 60000 - size)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(start, start + size):
                    s = stack.enter_context(socket.socket())
                    s.bind(("", port))
            return start, start + size - 1
        except OSError:
            continue
    raise RuntimeError(f"no {size} consecutive free ports")


_GIVEN: set[int] = set()  # the ports node_ports gave in this process


def node_ports() -> list[str]:
    """A node's ports: six free ones, none twice and none in the range of free ones its workers get (Ray refuses a
    node whose ports overlap: 'Ray component worker_ports is trying to use a port number ... used by other
    components')."""
    while True:  # nor in a range an earlier node of this bench got, whose workers bind it later
        low, high = free_port_range(60)
        if not _GIVEN.intersection(range(low, high + 1)):
            break
    ports: list[int] = []
    while len(ports) < 6:
        port = free_port()
        if port not in ports and port not in _GIVEN and not low <= port <= high:
            ports.append(port)
    _GIVEN.update(ports, range(low, high + 1))
    flags = ["--node-manager-port", "--object-manager-port", "--runtime-env-agent-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]
    return [*(x for flag, port in zip(flags, ports, strict=True) for x in (flag, str(port))),
            "--min-worker-port", str(low), "--max-worker-port", str(high)]


def ray_env(token_file: Path) -> dict[str, str]:
    """The environment of the Ray nodes, `ray status` and the job's driver: this checkout's `pipeline` importable (as
    `ray up` pip-installs it on each node), no usage stats, no RAY_ADDRESS of the caller's, and token authentication
    with this cluster's own token (Ray's default takes ~/.ray/auth_token, which other Rays on the machine share)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    return env


class Cluster:
    """A head (0 CPUs) and worker nodes, each started in its own mount and host-name namespaces (`start_worker`). The
    two-node cluster of this bench: one worker node of `worker_cpus` CPUs whose mount namespace has an empty tmpfs over
    `masked` (`start`). bench/node_loss_cluster.py starts two workers with nothing masked and kills one of them."""

    def __init__(self, base: Path, masked: Path | None, worker_cpus: int, log: Path) -> None:
        self.base, self.masked, self.worker_cpus, self.log = base, masked, worker_cpus, log
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}  # host name -> its `ray start` (the first process of its node)
        self.namespaces: dict[str, str | None] = {}  # host name -> its UTS namespace (/proc/PID/ns/uts)
        self.head_ip = ""
        self.address = ""
        self.token = base / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.env = ray_env(self.token)

    def _start(self, argv: list[str], name: str) -> subprocess.Popen:
        out = open(self.log / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process's end
        # a session of its own: its process group is exactly what this bench tears down, and a terminal's Ctrl-C goes
        # to this bench alone, which then tears it down
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_head(self, timeout_s: float) -> None:
        from ray._private.services import get_node_ip_address

        self.head_ip = get_node_ip_address()
        port = free_port()
        self.address = f"{self.head_ip}:{port}"
        self._start([RAY, "start", "--head", "--num-cpus", "0", "--num-gpus", "0", "--port", str(port),
                     "--include-dashboard", "false",
                     "--temp-dir", str(self.base / "h"), *node_ports(), *NODE_OPTIONS], "head")
        self._wait_for_nodes(1, timeout_s)

    def start_worker(self, host: str, ip: str, cpus: float, timeout_s: float, masked: Path | None = None,
                     temp: str = "w") -> subprocess.Popen:
        """A worker node joined to the head: `ray start --block` in mount and UTS namespaces of its own (host name
        `host`, node IP `ip`, a loopback address), with an empty tmpfs over `masked` if given; back once the cluster
        has one more node."""
        mount = f"mount -t tmpfs -o size=64m two-node-masked {masked} && " if masked else ""
        script = (f"hostname {host} && {mount}"
                  f"exec {RAY} start --address {self.address} --node-ip-address {ip} "
                  f"--num-cpus {cpus:g} --num-gpus 0 --temp-dir {self.base / temp} "
                  f"{' '.join(node_ports())} {' '.join(NODE_OPTIONS)}")
        proc = self._start(["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script], host)
        self.workers[host] = proc
        # its namespace, recorded once `unshare` has made it (it then execs sh, which execs `ray start`: same pid)
        deadline = time.monotonic() + 10
        while uts_namespace(proc.pid) == uts_namespace(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if uts_namespace(proc.pid) != uts_namespace(os.getpid()):
            self.namespaces[host] = uts_namespace(proc.pid)
        self._wait_for_nodes(1 + len(self.workers), timeout_s)
        return proc

    def start(self, timeout_s: float) -> None:
        self.start_head(timeout_s)
        self.worker = self.start_worker(WORKER_HOST, WORKER_IP, self.worker_cpus, timeout_s, self.masked)

    def _wait_for_nodes(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ray node ended (exit {proc.returncode}) as it started: see {self.log}")
            status = subprocess.run([RAY, "status", "--address", self.address], capture_output=True, text=True,
                                    env=self.env, timeout=60)
            active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if status.returncode == 0 and active.count("node_") >= count:
                return
            self.last_status = status.stdout + status.stderr
            time.sleep(1)
        raise RuntimeError(f"{count} Ray node(s) not up after {timeout_s:g} s: see {self.log}; `ray status` said:\n"
                           f"{getattr(self, 'last_status', '')[-2000:]}")

    def worker_view(self, path: Path) -> Path:
        """`path` as the worker node sees it (its mount namespace, through /proc)."""
        return Path(f"/proc/{self.worker.pid}/root") / path.relative_to("/")

    def node_processes(self, host: str) -> list[int]:
        """The live processes of worker node `host`: those in its host-name namespace (its `ray start`, raylet, agents,
        and the Ray workers the raylet started, whatever their process group)."""
        uts = self.namespaces.get(host)
        return [pid for pid in all_pids() if pid != os.getpid() and uts is not None and uts_namespace(pid) == uts]

    def host_of(self, pid: int) -> str | None:
        """The worker node whose host-name namespace process `pid` is in; None: the head's (the machine's) or gone."""
        uts = uts_namespace(pid)
        return next((host for host, ns in self.namespaces.items() if uts is not None and ns == uts), None)

    def _in_worker_namespaces(self) -> list[int]:
        return sorted({pid for host in self.workers for pid in self.node_processes(host)})

    def stop(self) -> None:
        """This cluster's processes, and no other Ray's: each node's process group (`ray start --block` ends its node
        on SIGTERM), then any process left whose command line names this run's temp folder."""
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # what left the process groups: a worker node's processes (in its namespace, recorded as it started: its
        # `ray start` is gone by now), then any naming this run's temp folder (a Ray worker, a job's driver), killed
        # until none is left
        self.outside_groups = {pid: "in a worker node's namespace" for pid in self._in_worker_namespaces()}
        for pid in self.outside_groups:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.outside_groups.update(processes_naming(str(self.base)))
        deadline = time.monotonic() + 10
        while (left := processes_naming(str(self.base))) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def uts_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def processes_naming(text: str) -> dict[int, str]:
    """Live processes, not this one, whose command line holds `text` (this run's unique temp folder): pid -> the start
    of its command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found[int(entry)] = cmdline[:120]
    return found


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def output_report(output: Path) -> str:
    """What the driver sees in `output`: its files by top folder, the rows of its part files, the summary's status."""
    import pyarrow.parquet as pq

    if not output.exists():
        return "not there"
    files = files_under(output)
    tops: dict[str, int] = {}
    for f in files:
        top = f.split("/", 1)[0] if "/" in f else f
        tops[top] = tops.get(top, 0) + 1
    rows = {folder: sum(pq.ParquetFile(output / f).metadata.num_rows for f in files
                        if f.startswith(f"{folder}/part-") and f.endswith(".parquet"))
            for folder in ("data", "rejects")}
    status = "-"
    with contextlib.suppress(OSError, ValueError):
        status = json.loads((output / SUMMARY_FILE).read_text()).get("status", "-")
    return (f"{len(files)} files {tops}; data rows {rows['data']}, rejects rows {rows['rejects']}; "
            f"{SUMMARY_FILE} status {status}")


def job_checkpoint(output: Path) -> str:
    """The checkpoint the output's job record names (the driver's path to it)."""
    try:
        record = json.loads((output / "_job.json").read_text())
    except (OSError, ValueError):
        return "-"
    found = [str(v) for k, v in record.items() if "checkpoint" in k and isinstance(v, str)]
    return ", ".join(found) or "-"


def run_scenario(name: str, argv: list[str], output: Path, cluster: Cluster, timeout_s: float,
                 checkout: Path = ROOT) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(checkout / "jobs" / "purify.py"), *argv], cwd=checkout, env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        code: Any = proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # as a user's Ctrl-C: the job records its stop
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        code = f"hung: stopped after {timeout_s:g} s (then {proc.returncode})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - started
    masked = cluster.worker_view(cluster.masked)
    return {"scenario": name, "exit": code, "wall_s": round(wall, 1), "stderr": stderr.strip().splitlines(),
            "stdout": stdout.strip().splitlines(), "output": output_report(output),
            "checkpoint": job_checkpoint(output),
            "not_on_node_line": any(NotOnThisNodeError.__name__ in line for line in stderr.splitlines()),
            "worker_masked": files_under(masked) if masked.exists() else "not readable"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=240, help="seconds a run may take before it is called hung")
    parser.add_argument("--start-timeout", type=float, default=120, help="seconds for the nodes to come up")
    parser.add_argument("--tail", type=int, default=4, help="stderr lines printed per scenario")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (the nodes' logs) after the run")
    args = parser.parse_args()
    try:
        run(args, parser)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C or SIGTERM): what it started is torn down", file=sys.stderr)
        sys.exit(130)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}")

    from tests.jobutil import image_folder, tiny_model_file

    # SIGTERM as Ctrl-C: the finally below tears the cluster down either way
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    base = Path(tempfile.mkdtemp(prefix="tn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    shared, masked, logs = base / "shared", base / "driver-only", base / "logs"
    for folder in (shared, masked, logs):
        folder.mkdir()
    cluster = Cluster(base, masked, 2, logs)
    results = []
    try:
        image_folder(shared / "in", args.images)
        image_folder(masked / "in", args.images)
        tiny = tiny_model_file(shared)
        copy = masked / "checkout"  # the driver's own copy of the package, which the worker does not see
        for part in ("pipeline", "jobs"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(tiny, masked / "tiny.pt")
        t0 = time.monotonic()
        cluster.start(timeout_s=args.start_timeout)
        print(f"cluster up in {time.monotonic() - t0:.1f} s: head {cluster.address} (0 CPUs), worker {WORKER_HOST} "
              f"({WORKER_IP}, 2 CPUs, tmpfs over {masked}); logs {logs}", flush=True)
        seen = cluster.worker_view(masked)
        print(f"worker's view of {masked}: {files_under(seen) if seen.exists() else 'not readable'}; "
              f"driver's: {len(files_under(masked))} files (in/, tiny.pt, checkout/)", flush=True)
        small = ["--steps", "1", "--no-progress", "--ray-address", cluster.address]
        tiny_opts = ["--pool", "4", "--canvas-size", "32"]
        plans = {
            "shared": (shared / "in", shared / "out-shared", ["--checkpoint", tiny, *tiny_opts]),
            "output": (shared / "in", masked / "out", ["--checkpoint", tiny, *tiny_opts]),
            "input": (masked / "in", shared / "out-input", ["--checkpoint", tiny, *tiny_opts]),
            "checkpoint": (shared / "in", shared / "out-checkpoint", ["--checkpoint", str(masked / "tiny.pt"),
                                                                      *tiny_opts]),
            "prior": (shared / "in", shared / "out-prior", []),
            "prior-copy": (shared / "in", shared / "out-prior-copy", []),
        }
        for name in chosen:
            source, output, more = plans[name]
            argv = ["--input", str(source), "--output", str(output), *more, *small]
            script = (copy if name == "prior-copy" else ROOT) / "jobs" / "purify.py"
            print(f"\n== {name}: python {script} {' '.join(argv)}", flush=True)
            result = run_scenario(name, argv, output, cluster, args.timeout, copy if name == "prior-copy" else ROOT)
            results.append(result)
            print(f"exit {result['exit']}, wall {result['wall_s']} s", flush=True)
            for line in result["stderr"][-args.tail:]:
                print(f"  stderr| {line}")
            print(f"  driver's output: {result['output']}; its _job.json's checkpoint: {result['checkpoint']}")
            if output.is_relative_to(masked):
                print(f"  worker's {masked}: {result['worker_masked']}")
            runs = output / RUNS_DIR
            print(f"  NotOnThisNodeError line: {result['not_on_node_line']}; "
                  f"{RUNS_DIR}/ holds {len(files_under(runs))} file(s)", flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the teardown short
            signal.signal(signum, signal.SIG_IGN)
        t0 = time.monotonic()
        cluster.stop()
        left = processes_naming(str(base))
        print(f"\ncluster torn down in {time.monotonic() - t0:.1f} s; processes outside its nodes' process groups, "
              f"killed by name: {getattr(cluster, 'outside_groups', {})}; processes left naming {base}: {left}")
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("\nsummary:")
    for r in results:
        print(f"  {r['scenario']:<11} exit {r['exit']}  {r['wall_s']:>6} s  NotOnThisNodeError "
              f"{'yes' if r['not_on_node_line'] else 'no '}  output: {r['output']}")


if __name__ == "__main__":
    main()
