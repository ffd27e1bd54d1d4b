"""A --refresh-changed run over tar shards killed (SIGKILL) while it writes new rows and notes in its journal the
shards it has read to their end (`job.RefreshReadNotes`: the whole journal written again while the pipeline runs):
resumed, then refreshed again, every input exactly once, each changed or added member's row made from its new bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time

import pytest

from pipeline.refresh import read_journal
from tests.jobutil import image_bytes, read_output, rewritten_in_place, tar_bytes
from tests.reliability.scenario import check
from tests.reliability.test_faults import _job, _run


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _killed_once_a_read_is_noted(args: list[str], out) -> None:
    """Start the job with `args` slowed down and SIGKILL it, the driver and all it started, once its refresh journal
    notes a shard read to its end (`job.RefreshReadNotes`), while it is still writing rows."""
    job = _job(args, env={"ZIP_PURIFY_INJECT_FAULT": "slow:0.5"})
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((out / "_refresh" / "journal.json").read_text()).get("read"):
                break
        time.sleep(0.1)
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
