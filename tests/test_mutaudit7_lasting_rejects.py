"""Mutation audit of lasting rejects (`sources.records.LastingProblem`, `_containers/` `lasting_reject`, pipeline/job.py's
handling of a changed container read only to its lasting reject): what tests/test_lasting_rejects.py and
tests/test_refresh_changed.py left unchecked."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from tests.changeutil import SavedRun, rewritten
from tests.jobutil import image_bytes, rewritten_in_place, run_stopped_at, small_job_config, tar_bytes
from tests.test_refresh_changed import _each_id_once


@pytest.fixture(scope="module")
def shard_and_image_done(tmp_path_factory, model, ray_local) -> SavedRun:
    """in/: s.tar of two members and a.png, purified by a first run (tests.changeutil: each test restores it)."""
    folder = tmp_path_factory.mktemp("shard_and_image")
    root = folder / "in"
    root.mkdir()
    (root / "s.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(16, 16, 30 + k) for k in range(2)}))
    (root / "a.png").write_bytes(image_bytes(16, 16, 1))
    assert run_job(small_job_config(folder, model))["status"] == "complete"
    return SavedRun(folder)


@pytest.mark.parametrize("step", ["deduplicate_output", "_record_inputs_read_again"])
def test_a_stopped_refresh_of_a_shard_that_cannot_be_read_now_keeps_its_rows_once_resumed(shard_and_image_done, model,
                                                                                         monkeypatch, step: str) -> None:
    # the run that applies a stopped refresh's journal: a shard rewritten as no tar gave only its lasting reject, no
    # new row, so its earlier rows stay and it stays said changed (the journal naming it read with its new stamp, its
    # rows passed for that content's; as refreshed, its old rows went with no new ones)
    tmp_path = shard_and_image_done.restore()
    root = tmp_path / "in"
    rewritten(root / "s.tar", b"not a tar any more" * 40)
    rewritten(root / "a.png", image_bytes(16, 16, 2))
    run_stopped_at(step, tmp_path, model, monkeypatch, refresh_changed=True)
    resumed = run_job(small_job_config(tmp_path, model))
    assert resumed["status"] == "complete"
    data, rejects = _each_id_once(tmp_path)
    assert set(data) == {"a.png", "s.tar/0", "s.tar/1"} and set(rejects) == {"s.tar#unreadable"}
    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (later["changed_inputs"]["containers"], later["changed_inputs"]["container_rows"]) == (1, 2)


def test_a_refreshed_shard_that_cannot_be_read_now_is_not_said_to_hold_no_images_while_its_rows_stay(
        shard_and_image_done, model) -> None:
    # its earlier rows stay in data/: it is no file that holds only its one reject, and it is not recorded as read
    # with its new stamp (its rows would pass for this content's); a later run reads it again (a.png, unchanged, not)
    tmp_path = shard_and_image_done.restore()
    rewritten(tmp_path / "in" / "s.tar", b"not a tar any more" * 40)
    assert run_job(small_job_config(tmp_path, model, refresh_changed=True))["status"] == "complete"
    report = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["input"]
    assert (report["containers_already_done"], report["containers_already_rejected"], report["read_tasks"]) == (0, 0, 1)


def test_a_shard_whose_first_block_is_damaged_but_holds_members_after_it_is_no_lasting_not_a_tar(tmp_path) -> None:
    # a damaged first header with members after it is a damaged tar, read again by the next run, its members kept:
    # not 'not a tar file ... no member was found after it'
    (tmp_path / "s.tar").write_bytes(b"garbage!" * 64 + tar_bytes({"0.png": image_bytes(8, 8, 1),
                                                                  "1.png": image_bytes(8, 8, 2)}))
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/0", "s.tar/1"]
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["error"].startswith("tar shard unreadable after 2 keys: ReadError: ") and \
        "the members read around it are kept" in reject["error"], reject["error"]
    assert "container" not in records[-1]


@pytest.mark.usefixtures("ray_local")
def test_the_dry_run_says_no_file_holds_no_images_of_one_it_reads_again(tmp_path, model) -> None:
    # a table without an image column, read again by --retry-rejects or once changed, is no file 'read by an earlier
    # run, unchanged, holding only its one reject: not read again'
    root = tmp_path / "in"
    root.mkdir()
    pq.write_table(pa.table({"label": [1, 2]}), root / "t.parquet")
    # no image beside it: a run with nothing to purify starts no purifier (the table is this test's subject)
    first = run_job(small_job_config(tmp_path, model))
    assert first["status"] == "complete" and first["this_run"]["rejected"] == 1
    incremental = small_job_config(tmp_path, model, incremental=True)
    assert plan_job(incremental, dry_run=True).describe()["input"]["containers_already_rejected"] == 1
    retried = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True).describe()["input"]
    assert (retried["containers_already_done"], retried["containers_already_rejected"], retried["read_tasks"]) == (0, 0, 1)
    rewritten_in_place(root / "t.parquet", (root / "t.parquet").read_bytes() + b"")
    changed = plan_job(incremental, dry_run=True).describe()["input"]
    assert (changed["containers_already_done"], changed["containers_already_rejected"], changed["read_tasks"]) == (0, 0, 1)
