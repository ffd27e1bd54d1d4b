"""Review of eed76bb (naive_purify on any size), 7ff10b8 (damaged part files named) and 1dd0138 (stopped retry counts).

- naive_purify iterated whatever it was given: a bare H x W x 3 image came back as H grey "images" of W x 3 (the old
  code and `Purifier` refuse it).
- A dry run of --overwrite over an output with a damaged part file stopped (exit 2) telling the user to move the file
  out, though --overwrite itself starts and deletes it.
- Part files damaged during a run (found by its end-of-run check) were named one at a time, after data/ files had been
  rewritten, and the run's error said "every file is whole: run the same command again", which stops on them.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import pipeline.stopped_run as stopped_run
from pipeline.errors import JobError, JobFailed
from pipeline.output import _fs, _part_indexes, damaged_parts_error, deduplicate_output, output_ids
from pipeline.plan import plan_job
from pipeline.purifier import naive_purify
from pipeline.stopped_run import count_stopped_run, record_stopped_run
from tests.jobutil import image_bytes, small_job_config, tiny_model_file


def _part_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_naive_purify_refuses_a_bare_image_as_the_purifier_does() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"got an array of shape \(8, 12, 3\); for one image, pass \[image\]"):
        naive_purify(image, 4)  # was 8 grey images of 12 x 3
    with pytest.raises(ValueError, match=r"for one image, pass \[image\]"):
        naive_purify(image[..., 0], 4)
    with pytest.raises(TypeError, match=r"for one image, pass \[image\]"):
        naive_purify(Image.fromarray(image), 4)
    # the containers Purifier takes still work: a batch array, a list, an object column
    batch = np.stack([image, image[::-1]])
    out = naive_purify(batch, 4)
    assert [o.shape for o in out] == [(8, 12, 3)] * 2
    np.testing.assert_array_equal(out[1], naive_purify([image[::-1]], 4)[0])
    column = np.empty(2, dtype=object)
    column[:] = [image, image[:4, :8]]
    assert [o.shape for o in naive_purify(column, 4)] == [(8, 12, 3), (4, 8, 3)]


def _damaged_output(tmp_path) -> tuple:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 0))
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()
    (out / "data" / "part-good.parquet").write_bytes(_part_bytes(pa.table({"id": ["x.png", "y.png"]})))
    (out / "data" / "part-empty.parquet").write_bytes(b"")
    (out / "rejects" / "part-r.parquet").write_bytes(_part_bytes(pa.table({"id": ["z.png"]})))
    return small_job_config(tmp_path, tiny_model_file(tmp_path), overwrite=True), out


def test_a_dry_run_of_overwrite_is_not_stopped_by_a_damaged_part_file(tmp_path, capsys) -> None:
    config, out = _damaged_output(tmp_path)
    real = plan_job(config)  # the run itself starts: --overwrite deletes the output whole
    plan = plan_job(config, dry_run=True)  # stopped with "Move them out of the output and run again"
    assert (plan.output_state, plan.done_purified, plan.done_rejected) == ("overwrite", 2, 1)
    err = capsys.readouterr().err
    assert "1 part file(s) that cannot be read (e.g. data/part-empty.parquet); --overwrite deletes them" in err
    assert (out / "data" / "part-empty.parquet").exists()  # a dry run deletes nothing
    # without --overwrite the dry run stops, as the run does, naming the file
    (out / "_job.json").write_text(json.dumps(real.job_record))
    (out / "_summary.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(JobError, match=r"data/part-empty\.parquet \(ArrowInvalid"):
        plan_job(dataclasses.replace(config, overwrite=False, incremental=True), dry_run=True)


def test_the_end_of_run_check_names_every_damaged_file_before_it_rewrites_any(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()
    (out / "data" / "part-a.parquet").write_bytes(_part_bytes(pa.table({"id": ["a", "b"]})))
    (out / "data" / "part-b.parquet").write_bytes(_part_bytes(pa.table({"id": ["b"]})))  # a duplicate: would go
    good = _part_bytes(pa.table({"id": ["c"]}))
    (out / "data" / "part-c.parquet").write_bytes(good[:-10])  # cut short during the run
    (out / "rejects" / "part-r.parquet").write_bytes(b"")
    with pytest.raises(JobError) as caught:  # was a DamagedPart (a ValueError) naming data/part-c alone
        deduplicate_output(str(out), {})
    message = str(caught.value)
    assert "holds 2 part file(s) that cannot be read" in message
    assert "data/part-c.parquet (ArrowInvalid" in message and "rejects/part-r.parquet (ArrowInvalid" in message
    assert "Move them out of the output" in message
    # nothing rewritten on a view that lacks the damaged files' ids
    assert pq.read_table(out / "data" / "part-b.parquet").column("id").to_pylist() == ["b"]


def test_a_run_that_finds_damaged_files_at_its_end_says_what_to_do_not_run_again(tmp_path) -> None:
    damaged = []
    for name in ("data/part-1.parquet", "rejects/part-2.parquet"):
        path = tmp_path / "out" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    fs, root = _fs(str(tmp_path / "out"), {})
    list(_part_indexes(fs, [f"{root}/data/part-1.parquet", f"{root}/rejects/part-2.parquet"], damaged))
    recorded = {}

    def record(status: str, details: dict) -> str:
        recorded.update(details, status=status)
        return "this run wrote 3 purified and 0 rejected (1 part file)"

    with pytest.raises(JobFailed) as caught, record_stopped_run(record, str(tmp_path / "out")):
        raise damaged_parts_error(str(tmp_path / "out"), damaged)
    message = str(caught.value)
    assert "is whole" not in message and "run the same command again to resume" not in message
    # the advice in full (a failure's reason is cut at 300 characters), and in the summary too
    assert message.startswith("the run failed: output ") and "(pass --incremental if the output holds" in message
    assert "data/part-1.parquet" in message and "rejects/part-2.parquet" in message
    assert recorded["status"] == "failed" and recorded["error"].endswith("holds a complete run)")


def test_hidden_and_other_files_beside_the_parts_are_not_taken_for_damage(tmp_path) -> None:
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    (data / "part-good.parquet").write_bytes(_part_bytes(pa.table({"id": ["a"]})))
    for name in (".tmp-part-x.parquet", ".part-y.parquet", "_SUCCESS", "part-z.parquet.crc", "notes.txt"):
        (data / name).write_bytes(b"")  # a killed write's temporary, another tool's markers: never part files
    assert output_ids(str(tmp_path / "out"), {}) == ({"a"}, set())


def test_a_reject_rejected_again_into_its_own_old_file_is_counted_once(tmp_path) -> None:
    """The part name is a hash of the ids: rejected again in the same grouping, the retry's file replaces the old one
    (it is in `before` and in `reported`). The totals subtract the retried ones, so the output counts 2, as it holds."""
    rejects = tmp_path / "out" / "rejects"
    rejects.mkdir(parents=True)
    name = "rejects/part-h.parquet"
    pq.write_table(pa.table({"id": ["r1", "r2"]}), tmp_path / "out" / name)  # today's rows, over the old ones
    count = count_stopped_run(str(tmp_path / "out"), {}, {name}, {name: 2}, frozenset({"r1", "r2"}))
    assert (count.purified, count.rejected, count.files, count.retried) == (0, 2, 1, 2)
    assert 2 + count.rejected - count.retried == 2  # record_stop's output_totals: earlier + this run's - retried


def test_a_stopped_retry_run_whose_count_is_cut_short_claims_no_more_rejects_than_it_can(tmp_path, monkeypatch) -> None:
    """A --retry-rejects run that purified its 3 earlier rejects, stopped, with a second Ctrl-C while it read their ids,
    said the output held "at least 3 purified and 3 rejected": each input once, it holds 3 and 0."""
    out = tmp_path / "out"
    pq.write_table(pa.table({"id": ["r1", "r2", "r3"]}), _made(out / "rejects" / "part-old.parquet"))
    pq.write_table(pa.table({"id": ["r1", "r2", "r3"]}), _made(out / "data" / "part-new.parquet"))
    retry = frozenset({"r1", "r2", "r3"})

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stopped_run, "part_file_ids", second_ctrl_c)
    count = count_stopped_run(str(out), {}, {"rejects/part-old.parquet"}, {}, retry)
    # the file that landed is still counted: only the retried ones are unknown
    assert (count.purified, count.rejected, count.files, count.retried) == (3, 0, 1, 0)
    assert count.short == "a second signal stopped the count of the earlier rejects its files hold again"
    assert stopped_run.stopped_totals((0, 3), count, retry) == {"purified": 3, "rejected": 0}
    # counted in full, the retried ones are known and the totals exact
    monkeypatch.undo()
    exact = count_stopped_run(str(out), {}, {"rejects/part-old.parquet"}, {}, retry)
    assert (exact.short, exact.retried) == (None, 3)
    assert stopped_run.stopped_totals((0, 3), exact, retry) == {"purified": 3, "rejected": 0}
    # a cut-short count of a run that wrote a reject again: at least 1 of the 3 earlier rejects is still one
    short = stopped_run.StoppedCount(2, 1, 2, "cut", 0)
    assert stopped_run.stopped_totals((5, 3), short, retry) == {"purified": 7, "rejected": 1}


def _made(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
