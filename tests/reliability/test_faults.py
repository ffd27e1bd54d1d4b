"""Crashed workers and a killed driver: the run completes / resumes with every input exactly once.

A run that is killed with SIGKILL runs in a process of its own with a Ray of its own, killed with it (joined to the
session's Ray instead, a killed driver's actor that waited at the gate held its CPU until Ray ended it, and the next run
waited up to minutes: seen at 183 s). The other runs run in the test's process on the session's Ray (`ray_local`); the
faults injected into them reach the purifier actors from the driver's environment (`purify_stage.driver_faults`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.stages import FAULT_ENV
from tests.gateutil import gate_env, let_through_until
from tests.jobutil import image_bytes
from tests.reliability.scenario import check

ROOT = Path(__file__).resolve().parents[2]


def _images(folder: Path, n: int) -> set[str]:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:04d}.png").write_bytes(image_bytes(32, 32, i))
    return {f"{i:04d}.png" for i in range(n)}


def _own_ray_env() -> dict[str, str]:
    """The environment of a run that starts a Ray of its own (none of the session's RAY_ADDRESS)."""
    return {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}


def _job(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    """The job's command line with `args` in a process of its own (a session of its own: killed with its group, it takes
    nothing else with it), in environment `env` (the whole of it: `_own_ray_env` and the fault)."""
    return subprocess.Popen([sys.executable, str(ROOT / "jobs/purify.py"), "--no-progress", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _run(args: list[str]) -> None:
    """A run of the job's command line with `args` in this process, on the session's Ray; it must end with status 0."""
    assert cli.main(["--no-progress", *args]) == 0


# A killed run goes in batches, and part files, of 4 rows: it has as many points to be killed at as batches of 8 over
# twice the inputs would give it, while the runs before and after it, in batches of 8, have half as many batches to run
# (a batch costs Ray's overhead whatever its size). A unit of 4 files reaches the purifier's gate as 2 batches (its 4
# canvases or rejects and its count record: 5 rows in batches of 4), and its part files land once both are through.
KILLED_BATCHES = ["--files-per-unit", "4", "--tile-batch", "4", "--batch-size", "4", "--write-batch", "4"]


def _killed_after_parts(args: list[str], out: Path, at_least: int, fewer_than: int, most: int, what: str,
                        env: dict[str, str]) -> None:
    """Start the job with `args` in batches of 4 (KILLED_BATCHES), its batches held at a gate and let through one by
    one until it has written `at_least` part files in data/ and rejects/ beyond those already there, `most` batches at
    most (fewer than the run has, and few enough for fewer than `fewer_than` files), then SIGKILL it and check it was
    still running and wrote fewer than `fewer_than` (so it was killed half-way, however slow the test or fast the run:
    slowed down 0.5 s a batch instead, a test process held up 10 s found the run ended). `env`: its environment (a Ray
    of its own: `_own_ray_env`), the gate's added."""
    def parts() -> int:
        return sum(len(list((out / folder).glob("part-*.parquet"))) for folder in ("data", "rejects"))

    written = parts()
    gate = out.parent / f"gate-{what}"
    job = _job([*args, *KILLED_BATCHES], env={**env, **gate_env(gate)})
    let_through_until(gate, lambda: parts() >= written + at_least or job.poll() is not None, most)
    running = job.poll() is None
    with contextlib.suppress(ProcessLookupError):  # one that ended early: its log, below
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert running, f"the {what} ended before it was killed: {job.stdout.read()[-3000:]}"
    assert written + at_least <= parts() < written + fewer_than, f"the {what} was killed before writing, or after it finished"


@pytest.mark.usefixtures("ray_local")
def test_actor_failures_are_retried(tmp_path, tiny_model, monkeypatch) -> None:
    """A batch that raises in the purifier actor is tried again, and an actor whose process dies is restarted with its
    batch: the run completes with every input once. One run meets both faults (a raise, then a death, at its first
    batch): a run of its own for each cost a job run more and checked nothing more.

    The faults are set in the driver's environment alone, after the session's Ray started: its workers never had them,
    as a cluster's workers do not have those of a job submitted to it; the driver gives them to its actors."""
    ids = _images(tmp_path / "in", 24)
    out, raised, died = tmp_path / "out", tmp_path / "raised", tmp_path / "died"
    monkeypatch.setenv(FAULT_ENV, f"raise-once:{raised};exit-once:{died}")
    _run(["--input", str(tmp_path / "in"), "--output", str(out), "--checkpoint", tiny_model, "--steps", "1",
          "--tile-batch", "8", "--batch-size", "8"])
    assert raised.exists() and died.exists(), "a fault was never injected"
    check("worker raise-once + exit-once", str(out), ids)


def test_an_actor_that_dies_at_every_batch_fails_the_run_after_its_restarts_instead_of_hanging(tmp_path,
                                                                                                   tiny_model) -> None:
    """Ray retries the purifier's batches for as long as it takes (max_task_retries=-1, for a lost node) and restarts a
    dead actor 3 times (max_restarts=3). An actor that cannot live (it crashes, or is killed for memory, at every
    batch) must then end the run, with its status, its counts and the advice to run it again; a count of Ray's
    retries that never ran out would leave a scheduled run hanging for good. What Ray says of the deaths ("(raylet) A
    worker died ...") goes to stderr, as the job's own error does: Ray prints it to the driver's stdout, which holds
    the job's result lines alone."""
    _images(tmp_path / "in", 6)
    out, deaths = tmp_path / "out", tmp_path / "deaths"
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/purify.py"), "--no-progress", "--input",
                             str(tmp_path / "in"), "--output", str(out), "--checkpoint", tiny_model, "--steps", "1"],
                            cwd=ROOT, env={**os.environ, FAULT_ENV: f"exit-always:{deaths}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr[-3000:]
    assert len(deaths.read_text().splitlines()) == 4  # the actor and its 3 restarts, no more
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "failed" and "ActorDiedError" in summary["error"]
    assert summary["this_run"]["purified"] == 0 and summary["resume"].startswith("run the same command again")
    error = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and error[0].startswith("error: the run failed: ActorDiedError")
    assert "the purifier actor's process died 4 times, its 3 restarts spent" in error[0] and "--batch-size" in error[0]
    assert "run the same command again" in error[0]
    assert stdout == "", stdout[-2000:]  # a failed run has no result lines, and Ray's are not the job's
    assert "(raylet)" in stderr
    # the job's error is its last line: Ray is stopped before it is printed, so nothing Ray hears later follows it
    assert stderr.rstrip("\n").splitlines()[-1] == error[0], stderr[-3000:]


def _driver_killed_then_rerun(out: Path, args: list[str], ids: set[str], env: dict[str, str]) -> None:
    """The job with `args` SIGKILLed, driver and all (`env`: `_own_ray_env`), once it has written some of its output,
    then the same command run again: it completes with every input once, skipping what the killed run wrote."""
    gate = out.parent / "gate-driver"
    # its batches let through one by one until 3 part files land, the last of its 8 never: it is killed before it ends
    # however fast it runs or late the kill comes (slowed down 0.5 s a batch, it could finish first on a loaded machine)
    proc = _job(args, env={**env, **gate_env(gate)})
    let_through_until(gate, lambda: len(list((out / "data").glob("part-*.parquet"))) >= 3, most=len(ids) // 8 - 1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    parts = list((out / "data").glob("part-*.parquet"))
    assert parts, "the run was killed before writing anything; the test needs some output first"
    done_before = sum(pq.read_metadata(p).num_rows for p in parts)  # every visible file is whole Parquet
    assert done_before < len(ids), "the run finished before it could be killed"
    _run(args)
    check("driver SIGKILL + rerun", str(out), ids)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["this_run"]["skipped_already_done"] >= done_before
    assert summary["this_run"]["purified"] <= len(ids) - done_before


@pytest.mark.usefixtures("ray_local")
def test_a_retry_of_rejects_killed_then_resumed_then_retried(tmp_path, tiny_model, ray_local) -> None:
    """--retry-rejects killed half-way leaves an old and a new row for some rejects; a plain resume must still end
    complete with each input once, and a second retry must leave one row, with today's reason, per input still bad."""
    root, out = tmp_path / "in", tmp_path / "out"
    ids = _images(root, 80)
    damaged = sorted(ids)[::2]  # 40 inputs rejected by the first run
    for name in damaged:
        (root / name).write_bytes(b"junk")
    args = ["--input", str(root), "--output", str(out), "--checkpoint", tiny_model, "--steps", "1",
            "--files-per-unit", "8", "--tile-batch", "8", "--batch-size", "8", "--write-batch", "8"]
    _run(args)
    assert len(pq.read_table(out / "rejects").column("id")) == 40
    still_bad = set(damaged[:10])  # the other 30 are replaced by good images; these stay bad, another way
    for i, name in enumerate(damaged):
        (root / name).write_bytes(image_bytes(32, 32, 1000 + i)[:60] if name in still_bad else image_bytes(32, 32, i))

    # 10 units of 4 retried; the first 2 units' rejects are rewritten under their old files' names, each other unit
    # adds 1 or 2 files: 5 units let through (10 batches) add 3 to 6
    _killed_after_parts([*args, "--retry-rejects"], out, 3, 10, 10, "retry", _own_ray_env())
    _run(args)  # no flag: the killed run's rows and the old ones are both done
    assert json.loads((out / "_summary.json").read_text())["status"] == "complete"
    check("retry-rejects SIGKILL + resume", str(out), ids)

    _run([*args, "--retry-rejects"])
    _, rejects = check("retry-rejects again", str(out), ids)
    assert set(rejects["id"]) == still_bad
    assert not (rejects["error"].str.contains("not a recognised image")).any(), set(rejects["error"])
    summary = json.loads((out / "_summary.json").read_text())["this_run"]["rejects_retried"]
    assert summary["purified_now"] + summary["rejected_again"] == summary["earlier_rejects"]


@pytest.mark.usefixtures("ray_local")
def test_a_killed_run_rerun_then_a_refresh_of_changed_inputs_killed_then_resumed_then_refreshed(tmp_path, tiny_model,
                                                                                                  ray_local) -> None:
    """--refresh-changed killed half-way leaves the old and the new row of some ids with its journal; a plain resume
    must end complete with each input once, each refreshed id's row the new one where the killed run wrote it, and a
    second refresh must leave every changed input's row made from its new bytes.

    The output it refreshes is that of a plain run whose driver was killed, then run again (`_driver_killed_then_rerun`):
    that scenario's runs make the output this one starts from, where a run of its own made it."""
    import hashlib

    root, out = tmp_path / "in", tmp_path / "out"
    ids = _images(root, 64)
    args = ["--input", str(root), "--output", str(out), "--checkpoint", tiny_model, "--steps", "1",
            "--files-per-unit", "8", "--tile-batch", "8", "--batch-size", "8", "--write-batch", "8"]
    _driver_killed_then_rerun(out, args, ids, _own_ray_env())
    changed = sorted(ids)[::2]  # 32 rewritten in place: 26 with new images, 6 broken now
    new = {name: (b"junk" if i % 6 == 0 else image_bytes(32, 32, 2000 + i)) for i, name in enumerate(changed)}
    for name, data in new.items():
        before = os.stat(root / name).st_mtime_ns
        (root / name).write_bytes(data)
        os.utime(root / name, ns=(before + 2_000_000_000, before + 2_000_000_000))

    # 8 units of 4 refreshed, each adding 1 or 2 files: 3 units let through (6 batches) add 3 to 6
    _killed_after_parts([*args, "--refresh-changed"], out, 3, 8, 6, "refresh", _own_ray_env())
    assert (out / "_refresh" / "journal.json").exists()

    def rows(scenario: str) -> dict[str, str]:
        data, rejects = check(scenario, str(out), ids)
        return {**dict(zip(data["id"], data["source_sha256"], strict=True)),
                **dict(zip(rejects["id"], rejects["source_sha256"], strict=True))}

    _run(args)  # no flag: the killed run's new rows win where it wrote them, the other old rows stay
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "complete" and not (out / "_refresh" / "journal.json").exists()
    held = rows("refresh-changed SIGKILL + resume")
    done = {name for name, sha in held.items() if name in new and sha == hashlib.sha256(new[name]).hexdigest()}
    assert done and len(done) < len(new)
    assert summary["changed_inputs"]["image_files_purified"] + summary["changed_inputs"]["image_files_rejected"] == (
        len(new) - len(done))  # those the killed run did not get to are still said changed

    _run([*args, "--refresh-changed"])
    final = rows("refresh-changed again")
    assert {name for name in new if final[name] == hashlib.sha256(new[name]).hexdigest()} == set(new)
