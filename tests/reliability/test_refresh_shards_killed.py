"""A --refresh-changed run over tar shards killed (SIGKILL) while it writes new rows and notes in its journal the
shards it has read to their end (`job.RefreshReadNotes`: the whole journal written again while the pipeline runs):
resumed, then refreshed again, every input exactly once, each changed or added member's row made from its new bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from pipeline.refresh import read_journal
from tests.gateutil import gate_env, let_through_until
from tests.jobutil import image_bytes, read_output, rewritten_in_place, tar_bytes
from tests.reliability.scenario import check
from tests.reliability.test_faults import _job, _own_ray_env, _run


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _killed_once_a_read_is_noted(args: list[str], out: Path) -> None:
    """Start the job with `args`, its batches held at a gate and let through one by one, and SIGKILL it, the driver and
    all it started, once its refresh journal notes a shard read to its end (`job.RefreshReadNotes`), while it is still
    writing rows. Its 6 changed shards reach the gate as 2 batches each (9 members and a count record in batches of 8):
    4 let through at most read a shard whole and leave the run short of its end, however slow the test or fast the run
    (slowed down 0.5 s a batch instead, a test process held up 10 s found it ended)."""
    gate = out.parent / "gate"

    def noted() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return bool(json.loads((out / "_refresh" / "journal.json").read_text()).get("read"))
        return False

    job = _job(args, env={**_own_ray_env(), **gate_env(gate)})
    let_through_until(gate, lambda: noted() or job.poll() is not None, most=4)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    journal = read_journal(str(out), {})  # whole, however the kill fell among its writes
    assert journal is not None and journal.read and not journal.whole, "killed before its first note, or after its pipeline"


@pytest.mark.usefixtures("ray_local")
def test_a_refresh_of_changed_shards_killed_once_it_noted_a_read_then_resumed_then_refreshed(tmp_path, tiny_model) -> None:
    """A real SIGKILL of a --refresh-changed run over tar shards once its journal notes a shard it read (each note is
    the whole journal written again, while the pipeline writes rows): the journal still reads, a plain resume ends
    complete with each id once, and a second refresh leaves every changed or added member's row made from its new
    bytes."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    shards = {f"s{s:02d}.tar": {f"{k}.png": image_bytes(32, 32, 100 * s + k) for k in range(8)} for s in range(12)}
    for name, members in shards.items():
        (root / name).write_bytes(tar_bytes(members))
    args = ["--input", str(root), "--output", str(out), "--checkpoint", tiny_model, "--steps", "1", "--tile-batch", "8",
            "--batch-size", "8", "--write-batch", "8"]
    _run(args)
    new = {}
    for s, name in enumerate(sorted(shards)[::2]):  # 6 shards: member 0 changed, member 8 added
        members = {**shards[name], "0.png": image_bytes(32, 32, 5000 + s), "8.png": image_bytes(32, 32, 6000 + s)}
        shards[name] = members
        new.update({f"{name}/0": _sha(members["0.png"]), f"{name}/8": _sha(members["8.png"])})
        rewritten_in_place(root / name, tar_bytes(members))
    ids = {f"{name}/{m.split('.')[0]}" for name, members in shards.items() for m in members}

    _killed_once_a_read_is_noted([*args, "--refresh-changed"], out)
    _run(args)  # no flag: the killed run's new rows win where it wrote them, the other old rows stay
    check("refresh shards SIGKILL + resume", str(out), ids)
    assert not (out / "_refresh").exists()
    _run([*args, "--refresh-changed"])
    check("refresh shards again", str(out), ids)
    data, _ = read_output(str(out))
    held = dict(zip(data["id"], data["source_sha256"], strict=True))
    assert {id_: held.get(id_) for id_ in new} == new
