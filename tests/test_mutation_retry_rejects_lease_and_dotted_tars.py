"""Mutation-audit gaps in the code of --retry-rejects (pipeline/job.py), the watch of another machine's lease
(pipeline/lease.py) and the tar shards of Kaggle-style names (pipeline/sources/): each test here kills a hand-made
mutant that every earlier fast test let through. No Ray: the end-of-run check, planning and reading are called
directly."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.job import run_status
from pipeline.lease import LEASE_FILE, OutputLease
from pipeline.output import JOB_FILE, SUMMARY_FILE, deduplicate_output
from pipeline.plan import plan_job
from pipeline.sources import discover, file_bytes, read_unit, tar_members
from tests.jobutil import image_bytes, read_output, small_job_config, spy_on_extraction, tar_bytes
from tests.leaseutil import garble_lease_after_each_sleep, write_foreign_lease


def _part(folder: Path, name: str, ids: list[str], error: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "error": [error] * len(ids)}), folder / f"part-{name}.parquet")


# --- the end-of-run check (deduplicate_output) ---

def test_a_write_of_this_run_doubled_by_a_retry_is_a_duplicate_not_a_retried_reject(tmp_path) -> None:
    # Both files are this run's (a write retried with another batch after its first attempt landed) and 'x' was not
    # one of the rejects it set out to read again: a duplicate, not a retry; counted as a retry, the summary claimed
    # an earlier reject had been read again that was never in rejects/.
    out = tmp_path / "out"
    _part(out / "rejects", "a", ["old"], error="old reason")  # an earlier run's; its input is gone now
    _part(out / "rejects", "b", ["x"], error="today")
    _part(out / "rejects", "c", ["x"], error="today")
    rows = deduplicate_output(str(out), {}, written=["rejects/part-b.parquet", "rejects/part-c.parquet"],
                              retried={"old"})
    assert (rows.duplicates_removed, rows.retried_purified, rows.retried_rejected, rows.rejected) == (1, 0, 0, 2)


def test_a_retried_reject_purified_in_a_doubled_write_counts_one_duplicate_and_one_retry(tmp_path) -> None:
    # 'r' was rejected before; this run purified it and its data write landed twice (retried with another batch). The
    # second data row is a duplicate; the old reject row is the retry's. Taking the data double for the retry too left
    # duplicates_removed at 0 while a row had been removed.
    out = tmp_path / "out"
    _part(out / "rejects", "a", ["r"], error="old reason")
    _part(out / "data", "y", ["r"])
    _part(out / "data", "z", ["r"])
    rows = deduplicate_output(str(out), {}, written=["data/part-y.parquet", "data/part-z.parquet"], retried={"r"})
    assert (rows.duplicates_removed, rows.retried_purified, rows.retried_rejected) == (1, 1, 0)
    assert (rows.purified, rows.rejected) == (1, 0)
    data, rejects = read_output(str(out))
    assert list(data["id"]) == ["r"] and rejects.empty


def test_in_data_the_first_file_by_name_keeps_a_doubled_row_even_when_a_later_one_is_this_runs(tmp_path) -> None:
    # Only rejects/ puts this run's files first (a reject read again keeps today's reason); in data/ the documented
    # rule stays the first file by name, as the scale tests pin it for outputs without this run's files.
    out = tmp_path / "out"
    _part(out / "data", "a", ["p"], error="earlier")
    _part(out / "data", "b", ["p"], error="this run")
    rows = deduplicate_output(str(out), {}, written=["data/part-b.parquet"])
    assert (rows.duplicates_removed, rows.purified) == (1, 1)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-a.parquet"]


def test_a_run_that_replaced_old_reject_rows_is_complete_only_with_them_subtracted() -> None:
    # 10 read, 3 of them earlier rejects whose old rows were removed: the output gained 10 - 3 rows
    assert run_status(read=10, purified=8, rejected=2, rows_before=20, rows_after=27, replaced=3) == "complete"
    assert run_status(read=10, purified=8, rejected=2, rows_before=20, rows_after=30, replaced=3) == "inconsistent"
    assert run_status(read=10, purified=8, rejected=2, rows_before=20, rows_after=33, replaced=3) == "inconsistent"


# --- planning with --retry-rejects (no Ray: a finished output is laid out by hand) ---


def _finished_output(tmp_path: Path, model: str) -> None:
    """in/: a.png (purified), b.png (rejected), s.tar with keys 0 (purified) and 1 (rejected); out/: that run, done."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    for name in ("a.png", "b.png"):
        (root / name).write_bytes(image_bytes(8, 8, 1))
    (root / "s.tar").write_bytes(tar_bytes({"0.png": image_bytes(8, 8, 2), "1.png": image_bytes(8, 8, 3)}))
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record  # the settings a run would record
    _part(out / "data", "a", ["a.png", "s.tar/0"])
    _part(out / "rejects", "a", ["b.png", "s.tar/1"], error="cannot identify image")
    (out / JOB_FILE).write_text(json.dumps(record))
    (out / SUMMARY_FILE).write_text(json.dumps({"status": "complete"}))


def test_retry_rejects_plans_to_read_the_rejects_of_a_complete_output_again(tmp_path, model) -> None:
    _finished_output(tmp_path, model)
    plan = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True)
    assert plan.output_state == "incremental"
    assert plan.retry == {"b.png", "s.tar/1"} and plan.done == {"a.png", "s.tar/0"}
    assert (plan.done_purified, plan.done_rejected) == (2, 1 + 1)
    files = [Path(p).name for u in plan.units if u.kind == "files" for p in u.paths]
    assert files == ["b.png"]  # the rejected file is read again, the purified one is not
    assert plan.container_done[str(tmp_path / "in" / "s.tar")] == ["s.tar/0"]  # only its purified key is skipped
    assert plan.describe()["output"]["rejects_to_retry"] == 2


def test_incremental_without_retry_rejects_leaves_rejects_done(tmp_path, model) -> None:
    _finished_output(tmp_path, model)
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert plan.retry == frozenset() and plan.describe()["output"]["rejects_to_retry"] == 0
    assert plan.done == {"a.png", "b.png", "s.tar/0", "s.tar/1"}
    assert not [u for u in plan.units if u.kind == "files"]  # both image files done
    with pytest.raises(JobError, match="--retry-rejects"):
        plan_job(small_job_config(tmp_path, model), dry_run=True)  # a complete output, neither option: refused


# --- the watch of another machine's stale-looking lease (fake clock) ---

def _foreign_lease(out: Path) -> bytes:
    """A lease from another machine whose heartbeat looks 10 minutes old by our clock."""
    return write_foreign_lease(out, 600.0)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The watch's sleeps on a fake clock; a watch of 12 s polled every 5 s (not a multiple: its last sleep is short)."""
    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(output_lease, "LEASE_WATCH_S", 12.0)
    monkeypatch.setattr(output_lease, "LEASE_WATCH_POLL_S", 5.0)
    monkeypatch.setattr(output_lease, "_sleep", sleep)
    monkeypatch.setattr(output_lease, "_clock", lambda: clock[0])
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    return slept


def test_the_watch_lasts_lease_watch_s_and_not_a_poll_longer(tmp_path, sleeps) -> None:
    out = tmp_path / "out"
    _foreign_lease(out)
    with OutputLease(str(out), {}):
        pass
    assert sleeps[:3] == [5.0, 5.0, 2.0]  # the settle after it uses time.sleep, not the watch's


def test_a_lease_that_turns_unreadable_during_the_watch_is_taken_over_not_called_live(tmp_path, sleeps,
                                                                                   monkeypatch, capsys) -> None:
    # not a run's lease (runs write whole files): nothing to watch any more, and no clock disagrees
    out = tmp_path / "out"
    _foreign_lease(out)
    garble_lease_after_each_sleep(monkeypatch, out)
    with OutputLease(str(out), {}) as lease:
        assert json.loads((out / LEASE_FILE).read_text())["run_id"] == lease.record["run_id"]
    err = capsys.readouterr().err
    assert len(sleeps) == 1 and "taking over the stale lease of" in err and "(unreadable)" in err


# --- tar shards of Kaggle-style names ---

def test_dotted_names_with_an_upper_case_extension_are_images(tmp_path) -> None:
    # 'IMG.0.JPG': keyed at the last dot like 'cat.0.jpg', its extension compared in lower case as everywhere else
    (tmp_path / "s.tar").write_bytes(tar_bytes({f"IMG.{i}.JPG": image_bytes(8, 8, i, "JPEG") for i in range(3)}))
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert sorted(r["id"] for r in records if r["kind"] == "image") == ["s.tar/IMG.0", "s.tar/IMG.1", "s.tar/IMG.2"]
    assert not [r for r in records if r["kind"] == "reject"]


def test_a_link_whose_dotted_key_is_done_does_not_extract_its_target(tmp_path, monkeypatch) -> None:
    # 'cat.5.jpg' is a hard link to 'cat.1.jpg'; both keys are done: the target's bytes are needed by no one
    (tmp_path / "s.tar").write_bytes(tar_bytes({f"cat.{i}.jpg": image_bytes(8, 8, i, "JPEG") for i in range(5)},
                                               {"cat.5.jpg": "cat.1.jpg"}))
    (unit,) = discover(str(tmp_path))
    extracted = spy_on_extraction(monkeypatch)
    records = list(read_unit(unit, skip_ids={"s.tar/cat.1", "s.tar/cat.5"}))
    assert "cat.1.jpg" not in extracted
    assert sorted(r["id"] for r in records if r["kind"] == "image") == ["s.tar/cat.0", "s.tar/cat.2", "s.tar/cat.3",
                                                                       "s.tar/cat.4"]


class _DropsOnFirstOpen(io.BytesIO):
    """A shard's stream that drops the connection half-way the first time it is opened: in the index pass."""

    opened = 0

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        type(self).opened += 1
        self._cut = len(raw) // 2 if type(self).opened == 1 else None

    def read(self, n: int | None = -1) -> bytes:
        if self._cut is not None and self.tell() + (n if n is not None and n >= 0 else 1 << 40) > self._cut:
            raise ConnectionError("Connection reset by peer")
        return super().read(n)


def test_a_dropped_connection_in_the_index_pass_restarts_it_without_counting_members_twice(tmp_path,
                                                                                         monkeypatch) -> None:
    # The index pass counts each key's members; counted again from a restart, no key ever had all of its members
    # and every image of the shard became a 'the shard broke off' reject.
    raw = tar_bytes({**{f"cat.{i}.jpg": image_bytes(8, 8, i, "JPEG") for i in range(6)}, "cat.2.cls": b"1"})
    (tmp_path / "s.tar").write_bytes(raw)
    (unit,) = discover(str(tmp_path))
    storage_path = file_bytes.storage_path

    def dropping(path: str, options: dict) -> tuple[Any, str]:
        fs, fs_path = storage_path(path, options)
        return type("FS", (), {"__getattr__": lambda self, name: getattr(fs, name),
                               "open": lambda self, p, mode: _DropsOnFirstOpen(raw)})(), fs_path

    monkeypatch.setattr(file_bytes, "storage_path", dropping)
    monkeypatch.setattr(tar_members, "backoff", lambda attempt: None)
    _DropsOnFirstOpen.opened = 0
    records = list(read_unit(unit, in_memory_bytes=0))
    assert _DropsOnFirstOpen.opened == 3  # the index pass that broke off, its restart, the data pass
    images = {r["id"]: r for r in records if r["kind"] == "image"}
    assert sorted(images) == [f"s.tar/cat.{i}" for i in range(6)] and len(records) == 7
    assert images["s.tar/cat.2"]["meta"] == {"label": 1}
