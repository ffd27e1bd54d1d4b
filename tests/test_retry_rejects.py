"""--retry-rejects: the inputs in an output's rejects/ are read again (after an outage, with a larger --max-image-mb,
once a damaged file is replaced), each ending in exactly one row; and the end-of-run check's bookkeeping that goes
with it: rows doubled by a killed run count once, and a container's '#unreadable' reject goes once the container
has been read to its end."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.output import deduplicate_output, output_ids
from pipeline.plan import plan_job
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes


def _part(folder, name: str, ids: list[str], error: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "error": [error] * len(ids)}), folder / f"part-{name}.parquet")


# --- the end-of-run check ---

def test_an_old_reject_read_again_loses_its_row_to_this_runs_and_is_counted_as_retried(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out / "data", "a", ["ok"])
    _part(out / "rejects", "a", ["fixed", "still-bad", "gone"], error="old reason")  # an earlier run's
    _part(out / "data", "z", ["fixed"])  # this run's: purified now
    _part(out / "rejects", "b", ["still-bad"], error="new reason")  # this run's; sorts after part-a by name
    rows = deduplicate_output(str(out), {}, written=["data/part-z.parquet", "rejects/part-b.parquet"],
                              retried={"fixed", "still-bad", "gone"})
    assert (rows.retried_purified, rows.retried_rejected, rows.duplicates_removed) == (1, 1, 0)
    assert (rows.purified, rows.rejected) == (2, 2)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["fixed", "ok"]
    # one row each; the reject read again keeps today's reason, the one not read again keeps its old row
    assert dict(zip(rejects["id"], rejects["error"], strict=True)) == {"still-bad": "new reason", "gone": "old reason"}


def test_a_doubled_row_not_read_again_is_a_duplicate_not_a_retry(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out / "rejects", "a", ["x"], error="first")
    _part(out / "rejects", "b", ["x"], error="second")  # both earlier runs' (a killed run's doubled write)
    rows = deduplicate_output(str(out), {}, written=[], retried={"x"})
    assert (rows.retried_purified, rows.retried_rejected, rows.duplicates_removed, rows.rejected) == (0, 0, 1, 1)


def test_a_retried_batch_rejected_again_under_its_old_file_name_is_counted_as_retried(tmp_path) -> None:
    # part files are named after a hash of their ids: the same inputs rejected again in the same batch are written
    # over their old file, so no old row is left to remove, and the run must still count them (else its status is
    # "inconsistent": found by tests/reliability, a retry killed, resumed and retried again)
    out = tmp_path / "out"
    _part(out / "data", "a", ["ok"])
    _part(out / "rejects", "same", ["b", "c"], error="new reason")  # this run's write, over the earlier file
    rows = deduplicate_output(str(out), {}, written=["rejects/part-same.parquet"], retried={"b", "c"})
    assert (rows.retried_purified, rows.retried_rejected, rows.duplicates_removed, rows.rejected) == (0, 2, 0, 2)


def test_rows_doubled_by_a_killed_run_are_counted_once(tmp_path) -> None:
    # the counts a resumed run starts from: counting rows, the end-of-run check (which leaves one) made the
    # resumed run's totals disagree with them and its status "inconsistent"
    out = tmp_path / "out"
    _part(out / "data", "a", ["a", "b"])
    _part(out / "data", "b", ["b"])
    _part(out / "rejects", "a", ["c", "a"])
    purified, rejected = output_ids(str(out), {})
    assert (purified, rejected) == ({"a", "b"}, {"c"})


def test_the_unreadable_reject_of_a_container_read_whole_is_removed(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out / "rejects", "a", ["s.tar#unreadable", "s.tar/3", "u.tar#unreadable"])
    rows = deduplicate_output(str(out), {}, resolved={"s.tar#unreadable"})
    assert (rows.stale_rejects_removed, rows.rejected, rows.duplicates_removed) == (1, 2, 0)
    assert sorted(read_output(str(out))[1]["id"]) == ["s.tar/3", "u.tar#unreadable"]


# --- options ---

def test_retry_rejects_and_overwrite_are_refused_together(tmp_path, model) -> None:
    with pytest.raises(JobError, match="--retry-rejects and --overwrite contradict"):
        small_job_config(tmp_path, model, retry_rejects=True, overwrite=True).check()
    with pytest.raises(JobError, match="--retry-rejects must be true or false"):
        small_job_config(tmp_path, model, retry_rejects="yes").check()


# --- whole runs ---

def _layout(root, shard_member_2: bytes, loose: bytes, truncate_t: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        (root / f"{k}.png").write_bytes(image_bytes(8, 8, k))
    (root / "loose.png").write_bytes(loose)
    (root / "s.tar").write_bytes(tar_bytes({"0.png": image_bytes(8, 8, 10), "1.png": image_bytes(8, 8, 11),
                                            "2.png": shard_member_2}))
    whole = tar_bytes({f"{k}.png": image_bytes(8, 8, 20 + k) for k in range(3)})
    (root / "t.tar").write_bytes(whole[:1700] if truncate_t else whole)  # cut inside its second member


@pytest.mark.usefixtures("ray_local")
def test_retry_rejects_reads_rejects_again_and_leaves_one_row_per_input(tmp_path, model, capsys) -> None:
    from pipeline.cli import main

    root, out = tmp_path / "in", tmp_path / "out"
    _layout(root, shard_member_2=b"not an image", loose=b"junk", truncate_t=True)
    (root / "deleted.png").write_bytes(b"also junk")
    first = run_job(small_job_config(tmp_path, model))
    assert first["status"] == "complete"
    _, rejects = read_output(str(out))
    before = dict(zip(rejects["id"], rejects["error"], strict=True))
    assert {"loose.png", "deleted.png", "s.tar/2", "t.tar#unreadable"} <= set(before)

    # A complete output without --incremental or --retry-rejects: the refusal names both.
    with pytest.raises(JobError, match="--retry-rejects"):
        plan_job(small_job_config(tmp_path, model))
    # The damaged shard member and the truncated shard are replaced; loose.png is damaged in another way; s.tar is
    # otherwise the same shard, read whole before, and must be read again for its reject; deleted.png is gone.
    good = image_bytes(8, 8, 2)
    _layout(root, shard_member_2=image_bytes(8, 8, 12), loose=good[: len(good) // 2], truncate_t=False)
    (root / "deleted.png").unlink()
    plan = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True).describe()
    assert plan["output"]["rejects_to_retry"] == len(before)
    assert plan["input"]["containers_already_done"] == 0

    assert main(["--input", str(root), "--output", str(out), "--checkpoint", model, "--steps", "1",
                 "--canvas-size", "32", "--no-progress", "--retry-rejects"]) == 0
    printed = capsys.readouterr().out
    assert "not found in the input (their reject rows are kept)" in printed
    data, rejects = read_output(str(out))
    assert data["id"].is_unique and rejects["id"].is_unique and not set(data["id"]) & set(rejects["id"])
    assert {"s.tar/2", "t.tar/0", "t.tar/1", "t.tar/2"} <= set(data["id"])
    after = dict(zip(rejects["id"], rejects["error"], strict=True))
    assert set(after) == {"loose.png", "deleted.png"}
    assert after["loose.png"] != before["loose.png"]  # today's reason, not the old one
    assert after["deleted.png"] == before["deleted.png"]
    import json

    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "complete"
    retried = summary["this_run"]["rejects_retried"]
    # the truncated t.tar gave '#unreadable' and a reject for the key it broke off in; both are gone now
    assert retried["earlier_rejects"] == len(before)
    assert retried["rejected_again"] == 1 and retried["containers_now_read_whole"] == 1
    assert retried["purified_now"] == len(before) - 3  # all but loose.png, deleted.png and t.tar#unreadable
    assert summary["output_totals"]["rejected"] == 2


@pytest.mark.usefixtures("ray_local")
def test_a_container_read_whole_at_last_loses_its_unreadable_reject_without_retry(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    whole = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(3)})
    (root / "t.tar").write_bytes(whole[:1700])
    (root / "x.png").write_bytes(image_bytes(8, 8, 9))
    run_job(small_job_config(tmp_path, model))
    assert "t.tar#unreadable" in set(read_output(str(out))[1]["id"])
    (root / "t.tar").write_bytes(whole)  # the full shard arrives
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    assert summary["status"] == "complete" and summary["this_run"]["stale_rejects_removed"] == 1
    data, rejects = read_output(str(out))
    assert set(data["id"]) == {"t.tar/0", "t.tar/2", "x.png"}
    # the key the shard broke off in is a reject like any other: done, until --retry-rejects reads it again
    assert list(rejects["id"]) == ["t.tar/1"]


def test_rejects_folder_emptied_by_the_check_is_removed_not_left_as_a_table_with_no_columns(tmp_path) -> None:
    # Every reject purified on a retry left rejects/ as an empty folder: pd.read_parquet read it as a table with no
    # columns, so rejects["id"] raised KeyError. It now reads as an output that never had a reject, as on S3.
    out = tmp_path / "out"
    _part(out / "data", "a", ["ok"])
    _part(out / "rejects", "a", ["fixed"], error="old reason")
    _part(out / "data", "z", ["fixed"])  # this run's: purified now
    rows = deduplicate_output(str(out), {}, written=["data/part-z.parquet"], retried={"fixed"})
    assert (rows.retried_purified, rows.rejected) == (1, 0) and not (out / "rejects").exists()
    assert output_ids(str(out), {}) == ({"ok", "fixed"}, set())
    _part(out / "rejects", "b", ["bad"])
    (out / "rejects" / ".part-c.parquet.tmp").write_bytes(b"")  # a write still under way
    deduplicate_output(str(out), {}, resolved={"bad"})
    assert (out / "rejects").exists()  # not empty: kept
