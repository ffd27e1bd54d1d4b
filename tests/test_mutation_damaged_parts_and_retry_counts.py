"""Mutation audit of the Dec 3 changes (damaged part files, stopped --retry-rejects counts, naive_purify's inputs):
behaviour that hand-made mutants of pipeline/output.py, job.py, purifier.py and storage.py changed without any test
noticing (75 mutants: 45 killed by the existing tests, 22 by these, 8 equivalent or not worth a test)."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import signal
from types import SimpleNamespace

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.job as job
import pipeline.stopped_run as stopped_run
from pipeline.errors import JobError, JobFailed
from pipeline.output import DamagedPart, damaged_parts_error, output_ids, unify_output_types
from pipeline.plan import plan_job
from pipeline.purifier import naive_purify
from pipeline.stopped_run import count_stopped_run, record_stopped_run, stopped_totals
from pipeline.storage import _last_answer, is_transient
from tests.jobutil import image_bytes, small_job_config, tiny_model_file


def _part_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _damaged(names: list[str]) -> list[DamagedPart]:
    return [DamagedPart(f"/out/{name}", pa.ArrowInvalid("Parquet file size is 0 bytes")) for name in names]


def test_exactly_ten_damaged_files_are_all_listed_with_no_more_to_count() -> None:
    message = str(damaged_parts_error("/out", _damaged([f"data/part-{i:02d}.parquet" for i in range(10)])))
    assert "holds 10 part file(s)" in message and "data/part-09.parquet" in message
    assert "more" not in message  # "; and 0 more" with exactly ten


def test_the_files_listed_are_the_first_by_name_whatever_order_they_were_found_in() -> None:
    # the end-of-run check reads this run's rejects first: the ten named are still the first ten by path
    names = [f"rejects/part-{i:02d}.parquet" for i in range(12)]
    message = str(damaged_parts_error("/out", _damaged(names[::-1])))
    assert "rejects/part-00.parquet" in message and "rejects/part-11.parquet" not in message
    assert message.index("part-00.parquet") < message.index("part-09.parquet")
    assert "; and 2 more." in message


def test_a_multi_line_error_is_named_by_its_first_line() -> None:
    # the reason goes into one line per file of one message
    damaged = DamagedPart("/out/data/part-a.parquet", OSError("Couldn't deserialize thrift\nat offset 12\n"))
    assert damaged.reason == "OSError: Couldn't deserialize thrift"
    assert str(damaged) == "/out/data/part-a.parquet: OSError: Couldn't deserialize thrift"
    # it is shown in parentheses: no dangling ": " for an empty message, nor a full stop
    assert DamagedPart("/p", OSError()).reason == "OSError"
    assert DamagedPart("/p", pa.ArrowInvalid("Invalid data.")).reason == "ArrowInvalid: Invalid data"


def test_an_error_of_the_storage_while_reading_ids_is_retried_or_raised_not_called_damage(tmp_path, monkeypatch) -> None:
    # a dropped connection or a denied read says nothing of the file's bytes: never "move them out of the output"
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    (data / "part-a.parquet").write_bytes(_part_bytes(pa.table({"id": ["a"]})))
    real, errors = pq.ParquetFile, [ConnectionResetError("reset by peer")]

    def flaky(*args, **kwargs):
        if errors:
            raise errors.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", flaky)
    assert output_ids(str(tmp_path / "out"), {}) == ({"a"}, set())  # retried, then read
    errors.append(PermissionError(errno.EACCES, "access denied"))
    with pytest.raises(PermissionError):
        output_ids(str(tmp_path / "out"), {})


def test_retyping_data_reads_every_part_file_and_names_each_damaged_one(tmp_path) -> None:
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    (data / "part-a.parquet").write_bytes(_part_bytes(pa.table({"id": ["a"], "cls": [3]})))
    (data / "part-b.parquet").write_bytes(_part_bytes(pa.table({"id": ["b"], "cls": ["cat"]})))
    (data / "part-c.parquet").write_bytes(b"")
    (data / "part-d.parquet").write_bytes(b"not parquet" * 10)
    with pytest.raises(JobError) as caught:  # was a DamagedPart naming part-c alone, or nothing at all
        unify_output_types(str(tmp_path / "out"), {})
    message = str(caught.value)
    assert "holds 2 part file(s)" in message and "data/part-c.parquet" in message and "data/part-d.parquet" in message
    assert "Move them out of the output" in message
    # nothing retyped on a partial view
    assert pq.read_table(data / "part-a.parquet").schema.field("cls").type == pa.int64()


def test_a_dry_run_of_overwrite_counts_every_damaged_file_and_names_the_first(tmp_path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(16, 16, 0))
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()
    (out / "data" / "part-good.parquet").write_bytes(_part_bytes(pa.table({"id": ["x.png"]})))
    (out / "data" / "part-z.parquet").write_bytes(b"")
    (out / "rejects" / "part-a.parquet").write_bytes(b"")
    (out / "data" / "part-b.parquet").write_bytes(b"")
    config = small_job_config(tmp_path, tiny_model_file(tmp_path), overwrite=True)
    plan = plan_job(config, dry_run=True)
    assert (plan.done_purified, plan.done_rejected) == (1, 0)
    err = capsys.readouterr().err
    assert "holds 3 part file(s) that cannot be read (e.g. data/part-b.parquet)" in err


def test_the_recorded_error_of_damaged_files_hides_the_outputs_credentials() -> None:
    out = "s3://AKIDEXAMPLE:s3cr3tKey@bucket/out"
    recorded: dict = {}

    def record(status: str, details: dict) -> str:
        recorded.update(details, status=status)
        return "this run wrote 0 purified and 0 rejected"

    with pytest.raises(JobFailed), record_stopped_run(record, out):
        raise damaged_parts_error(out, _damaged(["data/part-1.parquet"]))
    assert recorded["status"] == "failed" and "s3cr3tKey" not in recorded["error"]
    assert "s3://AKIDEXAMPLE:***@bucket/out holds 1 part file(s)" in recorded["error"]


def test_a_signal_after_damaged_files_are_recorded_does_not_replace_the_failure() -> None:
    # a second Ctrl-C while the lease is released: the run still ends with its failure and what to do
    outcome: list[BaseException] = []
    try:
        with stopped_run.signals_interrupt():  # run_job's, around the output's lease
            try:
                with record_stopped_run(lambda status, details: "0 purified", "/out"):
                    raise damaged_parts_error("/out", _damaged(["data/part-1.parquet"]))
            finally:
                os.kill(os.getpid(), signal.SIGINT)
                outcome.append(RuntimeError("the lease's release ran to its end"))
    except BaseException as err:  # noqa: BLE001 - a KeyboardInterrupt here is the failure looked for
        outcome.append(err)
    assert len(outcome) == 2 and isinstance(outcome[1], JobFailed), outcome
    assert "Move them out of the output" in str(outcome[1])


def test_a_stopped_retry_run_that_cannot_read_its_files_ids_claims_the_least_it_can(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["r1", "r2"]}), out / "data" / "part-new.parquet")
    retry = frozenset({"r1", "r2", "r3"})

    def denied(*args, **kwargs):
        raise PermissionError("access denied")

    monkeypatch.setattr(stopped_run, "part_file_ids", denied)
    count = count_stopped_run(str(out), {}, set(), {}, retry)
    assert (count.purified, count.rejected, count.files, count.retried) == (2, 0, 1, 0)
    assert count.short is not None and "could not be counted" in count.short and "access denied" in count.short
    # which of the 3 earlier rejects were purified is unknown: none of them is counted as still rejected
    assert stopped_totals((4, 3), count, retry) == {"purified": 6, "rejected": 0}
    # read in full: r3, not in this run's files, is still a reject
    monkeypatch.undo()
    exact = count_stopped_run(str(out), {}, set(), {}, retry)
    assert (exact.short, exact.retried) == (None, 2)
    assert stopped_totals((4, 3), exact, retry) == {"purified": 6, "rejected": 1}


def test_a_second_signal_while_listing_stops_the_count_there_and_reads_no_ids(tmp_path, monkeypatch) -> None:
    # the user pressed Ctrl-C twice: what is left to do is short, no further reads of the output
    pq.write_table(pa.table({"id": ["r1"]}), _made(tmp_path / "out" / "data" / "part-reported.parquet"))
    read: list = []

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stopped_run, "part_names", second_ctrl_c)
    monkeypatch.setattr(stopped_run, "part_file_ids", lambda *args: read.append(args) or {"r1"})
    count = count_stopped_run(str(tmp_path / "out"), {}, set(), {"data/part-reported.parquet": 1}, frozenset({"r1"}))
    assert count.short == "a second signal stopped the count of its part files" and not read
    assert (count.purified, count.files, count.retried) == (1, 1, 0)


@pytest.mark.parametrize("pool", [True, 2.5, 0])
def test_naive_purify_refuses_a_pool_that_is_not_a_positive_integer(pool) -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="naive_purify: pool must be a positive integer"):
        naive_purify([image], pool)  # True was a pool of 1 (no change), 2.5 one of 2
    assert naive_purify([image], np.int64(2))[0].shape == (8, 8, 3)


def test_naive_purify_refuses_a_dict_of_images_as_the_purifier_does() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="images must be a list of images or an N x H x W x 3 uint8 array, got dict"):
        naive_purify({"a.png": image}, 2)  # its keys were taken for the images


@pytest.mark.parametrize(("status", "transient"), [(503, True), (500, True), (403, False), (404, False)])
def test_an_aiohttp_http_answer_keeps_its_status(status: int, transient: bool) -> None:
    # only aiohttp's own parse errors (aiohttp.http_exceptions) carry a code that is not the server's: a 503 that
    # http/gcs storage answers through aiohttp is retried, and named, as one
    request = SimpleNamespace(real_url="https://storage.example/out/data/part-a.parquet")
    err = aiohttp.ClientResponseError(request, (), status=status, message="answer")
    assert is_transient(err) is transient
    assert _last_answer(err) == f" HTTP {status}"


@pytest.mark.parametrize("ids_readable", [True, False])
def test_a_failed_retry_run_counts_each_earlier_reject_it_read_again_once(tmp_path, monkeypatch,
                                                                          ids_readable: bool) -> None:
    """A --retry-rejects run whose end-of-run check failed (its summary is written as a stopped run's is): it counts
    the rejects it read again (one purified now, one rejected again) once each, as the output will hold them, and says
    how many there were. Cut short, it counts the least the output can hold, which here is the same."""
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"{i}.png").write_bytes(image_bytes(16, 16, i))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "in" / "fixed.png").write_bytes(b"not an image yet")
    config = small_job_config(tmp_path, tiny_model_file(tmp_path))
    # the output of a complete first run, by hand (one Ray run in this test, not two): 2 purified, 2 rejected
    record = plan_job(config).job_record
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()
    pq.write_table(pa.table({"id": ["0.png", "1.png"]}), out / "data" / "part-first.parquet")
    pq.write_table(pa.table({"id": ["broken.png", "fixed.png"]}), out / "rejects" / "part-first.parquet")
    (out / "_job.json").write_text(json.dumps(record))
    (out / "_summary.json").write_text(json.dumps({"status": "complete"}))
    (tmp_path / "in" / "fixed.png").write_bytes(image_bytes(16, 16, 9))

    def check_fails(*args, **kwargs):
        raise RuntimeError("the end-of-run check failed")

    monkeypatch.setattr(job, "deduplicate_output", check_fails)
    if not ids_readable:  # the count is cut short: any earlier reject may be one read again, the least is claimed
        monkeypatch.setattr(stopped_run, "part_file_ids", lambda *args: (_ for _ in ()).throw(PermissionError("denied")))
    with pytest.raises(JobFailed):
        job.run_job(dataclasses.replace(config, retry_rejects=True))
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["status"] == "failed"
    run = summary["this_run"]
    assert (run["purified"], run["rejected"], run["rejects_retried"]) == (1, 1, 2 if ids_readable else 0)
    assert run["counted"].startswith("from the part files" if ids_readable else "at least: ")
    totals = summary["output_totals"]  # fixed.png purified, broken.png rejected: each once
    assert (totals["purified"], totals["rejected"]) == (3, 1)


def _made(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
