"""One run at a time in an output: the lease OUTPUT/_lease.json.

Two runs into one output purified the same inputs twice, an --overwrite deleted the files of the run still writing
them, and each run's end-of-run duplicate check rewrote files the other was writing. A run now takes the output's
lease before it changes anything there; a second run finds it live and stops before any work (exit status 2, one
`error:` line naming the other run); a lease whose heartbeat stopped (a killed run) is taken over with a warning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.lease as output_lease
from pipeline.cli import main
from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, OutputLease
from tests.gateutil import gate_env, let_through_until, open_gate
from tests.jobutil import image_bytes, read_output, tiny_model_file
from tests.test_s3 import s3  # noqa: F401 - the moto server fixture

ROOT = Path(__file__).resolve().parents[1]


def _other_run(out: Path, heartbeat_age_s: float) -> bytes:
    """Write the lease of a run on another machine whose last heartbeat was `heartbeat_age_s` ago."""
    now = time.time()
    data = json.dumps({"run_id": "0ther", "host": "batch-node-7", "pid": 4242, "started": now - 3600,
                       "heartbeat": now - heartbeat_age_s}).encode()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lease.tmp").write_bytes(data)
    os.replace(out / ".lease.tmp", out / LEASE_FILE)  # whole, as a run writes it
    return data


def _inputs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(image_bytes(32, 32, i))
    return folder


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_second_run_stops_before_any_work_naming_the_run_that_holds_the_output(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    lease = _other_run(out, heartbeat_age_s=10)
    status = main(["--input", str(_inputs(tmp_path / "in", 2)), "--output", str(out), "--incremental"])
    stderr = capsys.readouterr().err
    assert status == 2
    [line] = _error_lines(stderr)
    assert f"output {out} is in use by another run" in line
    for said in ("host batch-node-7", "pid 4242", "started ", "last heartbeat ", "wait for it to finish", LEASE_FILE):
        assert said in line, line
    assert sorted(p.name for p in out.iterdir()) == [LEASE_FILE]  # no _job.json, no _summary.json, no data
    assert (out / LEASE_FILE).read_bytes() == lease


def test_overwrite_leaves_a_running_runs_files_and_lease_alone(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "part-0123.parquet").write_bytes(b"the other run's rows")
    (out / "_job.json").write_text("{}")
    lease = _other_run(out, heartbeat_age_s=5)
    status = main(["--input", str(_inputs(tmp_path / "in", 2)), "--output", str(out), "--overwrite"])
    assert status == 2 and len(_error_lines(capsys.readouterr().err)) == 1
    assert (out / "data" / "part-0123.parquet").read_bytes() == b"the other run's rows"
    assert (out / "_job.json").exists() and (out / LEASE_FILE).read_bytes() == lease


def test_dry_run_reports_a_live_lease_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    lease = _other_run(out, heartbeat_age_s=60)
    status = main(["--input", str(_inputs(tmp_path / "in", 2)), "--output", str(out),
                   "--checkpoint", tiny_model_file(tmp_path), "--dry-run"])
    [line] = _error_lines(capsys.readouterr().err)
    assert status == 2 and "is in use by another run" in line and "pid 4242" in line
    assert (out / LEASE_FILE).read_bytes() == lease


def test_dry_run_says_a_stale_lease_will_be_taken_over(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    lease = _other_run(out, heartbeat_age_s=output_lease.LEASE_STALE_S + 60)
    status = main(["--input", str(_inputs(tmp_path / "in", 2)), "--output", str(out),
                   "--checkpoint", tiny_model_file(tmp_path), "--dry-run"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "its lease is stale (run 0ther on host batch-node-7, pid 4242" in printed and "takes the lease over" in printed
    assert (out / LEASE_FILE).read_bytes() == lease  # a dry run changes nothing


def test_a_lease_is_held_until_released_and_then_free(tmp_path) -> None:
    out = str(tmp_path / "out")
    first = OutputLease(out, {})
    first.acquire()
    held = json.loads((tmp_path / "out" / LEASE_FILE).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(JobError, match=f"in use by another run .*pid {os.getpid()}"):
        OutputLease(out, {}).acquire()
    first.release()
    assert not (tmp_path / "out" / LEASE_FILE).exists()
    with OutputLease(out, {}):  # free again
        assert (tmp_path / "out" / LEASE_FILE).exists()
    assert not (tmp_path / "out" / LEASE_FILE).exists()


def test_create_if_absent_creates_once_and_leaves_the_first_file_whole(tmp_path) -> None:
    import fsspec

    from pipeline.storage import create_if_absent

    fs, path = fsspec.filesystem("file"), str(tmp_path / LEASE_FILE)
    assert create_if_absent(fs, path, b"first", "write") is True
    assert create_if_absent(fs, path, b"second", "write") is False  # the race a local run loses: it names the winner
    assert (tmp_path / LEASE_FILE).read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == [LEASE_FILE]  # no temporary file left beside it


def test_create_if_absent_on_s3_is_a_conditional_put(s3) -> None:  # noqa: F811
    from pipeline.storage import create_if_absent, filesystem

    _, options = s3
    fs = filesystem("s3", options)
    path = "zip-out/conditional/_lease.json"
    assert create_if_absent(fs, path, b"first", "write") is None  # written; a store may ignore the condition
    assert create_if_absent(fs, path, b"second", "write") is False  # moto, like AWS S3, refuses If-None-Match: *
    assert fs.cat_file(path) == b"first"


class _RefusingStore:
    """An object store whose conditional PUT gets the S3 error `code` / `status` (raised as s3fs raises it: an
    OSError caused by botocore's ClientError); plain PUTs land in `files`."""

    protocol = ("s3", "s3a")

    def __init__(self, code: str, status: int) -> None:
        self.code, self.status, self.files = code, status, {}

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
        from botocore.exceptions import ClientError

        if mode == "create":
            answer = {"Error": {"Code": self.code, "Message": "refused"}, "ResponseMetadata": {"HTTPStatusCode": self.status}}
            raise OSError(5, "refused") from ClientError(answer, "PutObject")
        self.files[path] = data


@pytest.mark.parametrize(("code", "status"), [("NotImplemented", 501), ("InvalidArgument", 400),
                                              ("InvalidRequest", 400)])
def test_a_store_without_conditional_writes_still_gets_a_lease(code: str, status: int) -> None:
    """Some S3-compatible stores do not implement If-None-Match and refuse the PUT: the lease is then written plainly
    and settled by reading it back (None), instead of every run failing with 'cannot write to output'."""
    from pipeline.storage import create_if_absent

    store = _RefusingStore(code, status)
    assert create_if_absent(store, "out/_lease.json", b"mine", "write") is None
    assert store.files == {"out/_lease.json": b"mine"}


def test_a_precondition_failed_without_its_condition_field_means_the_lease_is_there() -> None:
    """s3fs raises FileExistsError only when the 412 names its condition; a store that leaves it out still means
    that a lease is there: False (the caller names its holder), not a failed run."""
    from pipeline.storage import create_if_absent

    store = _RefusingStore("PreconditionFailed", 412)
    assert create_if_absent(store, "out/_lease.json", b"mine", "write") is False
    assert store.files == {}


def test_a_refused_conditional_put_for_another_reason_is_an_error() -> None:
    from pipeline.storage import create_if_absent

    store = _RefusingStore("AccessDenied", 403)
    with pytest.raises(OSError, match="refused"):
        create_if_absent(store, "out/_lease.json", b"mine", "write")
    assert store.files == {}


def test_a_stale_lease_is_taken_over_with_a_warning(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.1)
    out = tmp_path / "out"
    _other_run(out, heartbeat_age_s=output_lease.LEASE_STALE_S + 60)
    with OutputLease(str(out), {}) as lease:
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]
    warning = capsys.readouterr().err
    assert "warning: taking over the stale lease" in warning and "batch-node-7" in warning


def _this_machines_run(out: Path, pid: int, namespace: str | None) -> None:
    now = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "0ther", "host": socket.gethostname(), "pid": pid,
                                              "pid_namespace": namespace, "started": now, "heartbeat": now}))


def test_a_lease_whose_process_on_this_machine_is_gone_is_taken_over_at_once(tmp_path, capsys, monkeypatch) -> None:
    # a run killed with SIGKILL and rerun at once: its heartbeat is fresh, but its process is gone
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    _this_machines_run(out, dead.pid, output_lease._pid_namespace())
    with OutputLease(str(out), {}) as lease:
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]
    assert f"its process {dead.pid} on this machine is gone" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["process alive", "other pid namespace"])
def test_a_fresh_lease_is_live_unless_its_process_is_known_gone(tmp_path, case) -> None:
    if case == "process alive":
        pid, namespace = os.getppid(), output_lease._pid_namespace()
    else:  # the same host name in another container: its pid means nothing here
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid, namespace = dead.pid, "pid:[1]"
    _this_machines_run(tmp_path / "out", pid, namespace)
    with pytest.raises(JobError, match=f"in use by another run .*pid {pid}"):
        OutputLease(str(tmp_path / "out"), {}).acquire()


def test_the_heartbeat_refreshes_the_lease_and_notices_a_takeover(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(output_lease, "LEASE_HEARTBEAT_S", 0.05)
    out = tmp_path / "out"
    lease = OutputLease(str(out), {})
    lease.acquire()
    try:
        first = json.loads((out / LEASE_FILE).read_text())["heartbeat"]
        deadline = time.time() + 30
        while json.loads((out / LEASE_FILE).read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads((out / LEASE_FILE).read_text())["heartbeat"] > first
        lease.check()  # still ours
        # Another run wrote over it (the object-store race) and, being live, keeps writing it: one write alone can
        # land between our heartbeat's read and its write and be overwritten, which is the race, not a takeover.
        other = _other_run(out, heartbeat_age_s=0)
        while lease.lost is None and time.time() < deadline:
            time.sleep(0.05)
            if lease.lost is None:
                (out / ".lease.tmp").write_bytes(other)
                os.replace(out / ".lease.tmp", out / LEASE_FILE)
        with pytest.raises(JobError, match="another run took over output .*batch-node-7"):
            lease.check()
    finally:
        lease.release()
    assert (out / LEASE_FILE).read_bytes() == other  # neither refreshed nor deleted: it is the other run's


def test_a_run_refused_in_planning_takes_no_lease_and_creates_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    status = main(["--input", str(_inputs(tmp_path / "in", 1)), "--output", str(out),
                   "--checkpoint", str(tmp_path / "missing.pt")])
    assert status == 2 and "missing.pt" in _error_lines(capsys.readouterr().err)[0]
    assert not out.exists()


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_the_lease_is_released_however_the_run_ends(tmp_path, stop) -> None:
    out = tmp_path / "out"
    with pytest.raises(stop), OutputLease(str(out), {}):
        assert (out / LEASE_FILE).exists()
        raise stop("a failed batch" if stop is RuntimeError else "Ctrl-C")
    assert not (out / LEASE_FILE).exists()


@pytest.mark.usefixtures("ray_local")
def test_a_run_takes_over_a_stale_lease_completes_and_releases_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.1)
    out = tmp_path / "out"
    _other_run(out, heartbeat_age_s=output_lease.LEASE_STALE_S + 1)  # a run killed 3 minutes ago
    status = main(["--input", str(_inputs(tmp_path / "in", 4)), "--output", str(out), "--checkpoint",
                   tiny_model_file(tmp_path), "--steps", "2", "--no-progress"])
    stderr = capsys.readouterr().err
    assert status == 0, stderr[-3000:]
    assert "warning: taking over the stale lease" in stderr and "pid 4242" in stderr
    assert json.loads((out / "_summary.json").read_text())["status"] == "complete"
    assert not (out / LEASE_FILE).exists()


def test_lease_on_s3_one_run_at_a_time_and_stale_taken_over(s3, monkeypatch) -> None:  # noqa: F811
    fs, options = s3
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.2)
    out = "s3://zip-out/leased"
    with OutputLease(out, options) as lease:
        held = json.loads(fs.cat_file(f"zip-out/leased/{LEASE_FILE}"))
        assert held["run_id"] == lease.record["run_id"]
        with pytest.raises(JobError, match="in use by another run"):
            OutputLease(out, options).acquire()
    assert not fs.exists(f"zip-out/leased/{LEASE_FILE}")
    fs.pipe_file(f"zip-out/leased/{LEASE_FILE}", json.dumps({"run_id": "0ther", "heartbeat": 0}).encode())
    with OutputLease(out, options) as lease:
        assert json.loads(fs.cat_file(f"zip-out/leased/{LEASE_FILE}"))["run_id"] == lease.record["run_id"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_taking_the_lease_at_once_one_wins(s3, tmp_path, where) -> None:  # noqa: F811
    import threading

    fs, options = s3
    out, so = (str(tmp_path / "out"), {}) if where == "local" else (f"s3://zip-out/race-{tmp_path.name}", options)
    start = threading.Barrier(2)
    leases = [OutputLease(out, so), OutputLease(out, so)]
    refused: list[JobError] = []

    def take(lease: OutputLease) -> None:
        start.wait()
        try:
            lease.acquire()
        except JobError as err:
            refused.append(err)

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [lease for lease in leases if lease._beat is not None]
    try:
        assert len(winners) == 1 and len(refused) == 1, refused
        assert "in use by another run" in str(refused[0]) and winners[0].record["run_id"] in str(refused[0])
    finally:
        for lease in leases:
            lease.release()


@pytest.mark.slow  # one real run of the job in a subprocess, joined to the test process's Ray (~6 CPU s)
def test_second_run_refused_while_the_first_runs_and_sigterm_releases_the_lease(tmp_path, capsys, joined_ray_env) -> None:
    n = 32
    inp = _inputs(tmp_path / "in", n)
    model = tiny_model_file(tmp_path)
    out = tmp_path / "out"
    args = ["--input", str(inp), "--output", str(out), "--checkpoint", model, "--steps", "2", "--files-per-unit", "8",
            "--tile-batch", "8", "--batch-size", "8", "--write-batch", "8", "--no-progress"]
    first = subprocess.Popen([sys.executable, str(ROOT / "jobs/purify.py"), *args], cwd=ROOT, text=True,
                             env={**joined_ray_env, **gate_env(tmp_path / "gate")}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        # its batches let through one by one until a part file lands, the last of its 4 never: the first run still runs
        # when the second starts and when SIGTERM comes, however long the second takes to be refused (slowed down 0.5 s
        # a batch, the first could finish meanwhile on a loaded machine)
        let_through_until(tmp_path / "gate", lambda: first.poll() is not None or any((out / "data").glob("part-*.parquet")),
                          most=n // 8 - 1)
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert json.loads((out / LEASE_FILE).read_text())["pid"] == first.pid
        assert main(args) == 2  # the second run, started while the first is writing
        [line] = _error_lines(capsys.readouterr().err)
        assert f"pid {first.pid}" in line and "in use by another run" in line
        # To the driver alone, as a container's stop sends it to its first process. Sent to the whole process group,
        # the local Ray's raylet gets it too, and its death raced the driver's clean exit (exit 1 instead of 143,
        # seen once in CI on a loaded machine); the lease is released either way.
        os.kill(first.pid, signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
        open_gate(tmp_path / "gate")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 143, stderr[-3000:]
    assert not (out / LEASE_FILE).exists()  # released on SIGTERM: the next run need not wait for it to go stale
    assert json.loads((out / "_summary.json").read_text())["status"] == "interrupted"
    data, _ = read_output(str(out))
    assert 0 < len(data) < n and data["id"].is_unique
