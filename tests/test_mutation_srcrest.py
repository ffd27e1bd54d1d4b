"""Mutation-audit gaps in the loose image file reader, partition folders, read units and their version stamps, hidden
entries, the read unit's count record, records and reject rows, the background repeats, the job's errors and the
training step's math: what the old tests left unchecked, each test asserting what a user of the job depends on."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

import pipeline.job as job_module
from pipeline.background import repeated
from pipeline.errors import JobError, JobFailed, JobInterrupted, NotOnThisNodeError
from pipeline.sources import discover, read_unit
from pipeline.sources.hidden import HiddenSkipped, hidden_note
from pipeline.sources.ids import terminal_text
from pipeline.sources.records import passthrough_name, reject_record
from pipeline.sources.units import ReadUnit, content_stamp, listing_stamp
from pipeline.training import epsilon_loss, noised
from tests.jobutil import image_bytes, png_inputs, tar_bytes
from tests.test_hive_partitions import _images, _parquet
from tests.test_training_math import ALPHA_BARS


def _records(root: Path, **options) -> dict[str, dict]:
    """Each record of reading `root`'s units, by id (the count records left out)."""
    return {r["id"]: r for unit in discover(str(root)) for r in read_unit(unit, **options) if r["kind"] != "count"}


# --- loose image files ------------------------------------------------------------------------------------------------


def test_a_files_label_is_the_folder_it_lies_in_and_a_file_at_the_top_has_none(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "cats" / "young").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes(8, 8, 0))
    (root / "cats" / "b.png").write_bytes(image_bytes(8, 8, 1))
    (root / "cats" / "young" / "c.png").write_bytes(image_bytes(8, 8, 2))
    records = _records(root, labels_from_folders=True)
    assert {i: r["meta"]["label"] for i, r in records.items()} == {"a.png": None, "cats/b.png": "cats",
                                                                   "cats/young/c.png": "young"}
    assert all(r["meta"] == {} for r in _records(root).values())  # without the option: no label column


def test_a_file_gone_after_the_listing_is_one_reject_saying_why_and_the_others_are_read(tmp_path: Path) -> None:
    """A file deleted (or made unreadable) between the listing and its read task is that file's reject, naming the
    storage's reason; the read task goes on with the unit's other files."""
    root = tmp_path / "in"
    root.mkdir()
    for name, seed in (("a.png", 0), ("b.png", 1), ("c.png", 2)):
        (root / name).write_bytes(image_bytes(8, 8, seed))
    (unit,) = discover(str(root))
    os.remove(root / "b.png")
    records = list(read_unit(unit))
    by_id = {r["id"]: r for r in records if r["kind"] != "count"}
    assert {i: r["kind"] for i, r in by_id.items()} == {"a.png": "image", "b.png": "reject", "c.png": "image"}
    error = by_id["b.png"]["error"]
    assert error.startswith("could not read file: FileNotFoundError") and "b.png" in error, error
    assert by_id["b.png"]["stage"] == "read" and records[-1] == {"kind": "count", "n": 3, "skipped": 0}


def test_a_fifo_is_a_reject_saying_what_it_is_not_a_storage_error(tmp_path: Path) -> None:
    """A FIFO among the input files is never opened: its reason says what it is, and not 'could not read file', which
    reads as a storage failure that a later run could get past."""
    root = tmp_path / "in"
    root.mkdir()
    os.mkfifo(root / "p.png")
    error = _records(root)["p.png"]["error"]
    assert error == ("p.png is a FIFO (named pipe), not a regular file, so it was not read (reading it could wait or "
                     "run forever)")


# --- partition folders ------------------------------------------------------------------------------------------------


def test_a_key_written_quoted_in_one_folder_and_plain_in_another_is_given_twice_naming_both_folders(
        tmp_path: Path) -> None:
    """`a=1/%61=2/`: both folders are key 'a' once unquoted (as pyarrow reads them); the reason names both."""
    png_inputs(tmp_path / "in" / "a=1" / "%61=2", 1)
    (record,) = _images(tmp_path)
    assert record["kind"] == "reject"
    assert "lies in 2 folders of partition key 'a' (a=1, %61=2)" in record["error"], record["error"]
    assert "--partitioning none" in record["error"]


def test_partition_goes_on_before_the_key_while_the_row_has_that_name_too(tmp_path: Path) -> None:
    """A Parquet file with columns `split` and `partition_split` under `split=train/`: the folder's value goes to
    `partition_partition_split`, and neither of the file's own values is overwritten."""
    _parquet(tmp_path / "in" / "split=train" / "t.parquet", {"split": ["a", "b"], "partition_split": ["c", "d"]})
    records = _images(tmp_path)
    assert [(r["meta"]["split"], r["meta"]["partition_split"], r["meta"]["partition_partition_split"])
            for r in records] == [("a", "c", "train"), ("b", "d", "train")]
    assert records[0]["meta_types"]["partition_partition_split"] == pa.string()


# --- read units and the version stamps of a listing -------------------------------------------------------------------


def test_a_read_unit_sent_to_its_read_task_keeps_each_listed_size_an_empty_file_and_an_unlisted_one_apart() -> None:
    """The listed sizes travel in the Ray row (-1: none listed): a size storage gave none for must come back as
    unknown, never as an empty file, and an empty file as empty; contents stay with the driver."""
    unit = ReadUnit("files", ("s3://b/in/a.png", "s3://b/in/b.png", "s3://b/in/c.png"), "s3://b/in", (0, None, 5),
                    contents=("x", "y", "z"))
    row = unit.to_row()
    assert "contents" not in row and "stamps" not in row
    back = ReadUnit.from_row(row)
    assert (back.kind, back.paths, back.root, back.sizes) == (unit.kind, unit.paths, unit.root, (0, None, 5))
    # a row whose sizes do not match its paths is read without them, not with sizes of other files
    assert ReadUnit.from_row({**row, "sizes": [7]}).sizes == ()
    assert ReadUnit.from_row({**row, "sizes": None}).sizes == ()


@pytest.mark.parametrize("name", ["ETag", "etag", "VersionId", "generation", "mtime", "LastModified", "last_modified",
                                  "Last-Modified"])
def test_each_version_field_of_a_listing_alone_stamps_a_container_and_a_new_value_is_a_new_stamp(name: str) -> None:
    """Without a stamp a container is always read again (pipeline.ledger); with one, replacing it must change it. A
    value of 0 (a file whose mtime is the epoch, as reproducible builds and Nix write them) is a value too."""
    stamps = {listing_stamp({"name": "s.tar", "size": 10, name: value}) for value in ("1", "2", 0)}
    assert None not in stamps and len(stamps) == 3
    assert listing_stamp({"name": "s.tar", "size": 10, name: 0, "ino": 7}) is not None


def test_an_inode_alone_or_nothing_is_no_stamp_and_an_mtime_of_zero_with_an_inode_is_one() -> None:
    assert listing_stamp({"size": 10}) is None and listing_stamp({"size": 10, "ino": 7}) is None
    assert content_stamp({"size": 10}) is None and content_stamp({"size": 10, "ino": 7}) is None
    assert content_stamp({"size": 10, "mtime": 0, "ino": 7}) is not None
    assert content_stamp({"size": 10, "mtime": 0, "ino": 7}) != content_stamp({"size": 10, "mtime": 1, "ino": 7})


@pytest.mark.parametrize("etag", ["ETag", "etag"])
def test_an_objects_content_stamp_is_its_etag_and_size_whatever_its_other_version_fields_say(etag: str) -> None:
    """A re-upload of the same bytes (a new LastModified, a new VersionId) is no change of content; other bytes (a new
    ETag) or another size are."""
    first = content_stamp({"size": 10, etag: '"abc"', "LastModified": "2026-11-01", "VersionId": "v1"})
    assert first == content_stamp({"size": 10, etag: '"abc"', "LastModified": "2026-12-01", "VersionId": "v2"})
    assert first != content_stamp({"size": 10, etag: '"abd"', "LastModified": "2026-11-01", "VersionId": "v1"})
    assert first != content_stamp({"size": 11, etag: '"abc"', "LastModified": "2026-11-01", "VersionId": "v1"})
    assert content_stamp({"size": 10, "mtime": 5.0}) != content_stamp({"size": 11, "mtime": 5.0})


# --- hidden entries ---------------------------------------------------------------------------------------------------


def test_hidden_entries_are_all_counted_and_the_first_ten_named() -> None:
    hidden = HiddenSkipped()
    for i in range(12):
        hidden.add(f"_train/{i}.png")
    assert hidden.count == 12 and hidden.examples == [f"_train/{i}.png" for i in range(10)]


def test_the_hidden_note_names_three_says_when_there_are_more_and_escapes_control_characters() -> None:
    assert hidden_note(1, ["_a.png"]) == "1 hidden entry (names starting with . or _) skipped, not read: _a.png"
    three = hidden_note(3, ["_a", "_b", "_c"])
    assert three.endswith("skipped, not read: _a, _b, _c") and three.startswith("3 hidden entries (")
    assert hidden_note(12, [f"_{i}" for i in range(10)]).endswith("skipped, not read: _0, _1, _2, ...")
    # a name holding a terminal escape is shown escaped, never sent to the terminal as it is
    note = hidden_note(1, ["_\x1b[2Jx.png"])
    assert "\x1b" not in note and note.endswith(terminal_text("_\x1b[2Jx.png"))


# --- reading a unit: its records and count record ---------------------------------------------------------------------


def test_a_file_refused_for_a_key_given_twice_is_a_reject_that_keeps_the_hash_of_its_bytes(tmp_path: Path) -> None:
    """Read through the API all the same, such a file's rows are rejects; the reject's `source_sha256` is that of the
    bytes read, as for any reject of a file that was read (what tells which input a reject row is of)."""
    png_inputs(tmp_path / "in" / "a=1" / "a=2", 1)
    data = (tmp_path / "in" / "a=1" / "a=2" / "000.png").read_bytes()
    (record,) = _images(tmp_path)
    assert record["kind"] == "reject" and record["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["stage"] == "read" and record["id"] == "a=1/a=2/000.png"


def test_rows_done_in_an_earlier_run_are_skipped_though_their_row_group_is_read_for_the_others(tmp_path: Path) -> None:
    """A resumed run reads a Parquet row group that holds rows not yet done; the rows done before are skipped (counted
    as such), never purified and written a second time, and the file's record still names all its ids."""
    _parquet(tmp_path / "in" / "t.parquet", n=4)
    (unit,) = discover(str(tmp_path / "in"))
    records = list(read_unit(unit, skip_ids=frozenset({"t.parquet#0", "t.parquet#2"})))
    assert [r["id"] for r in records[:-1]] == ["t.parquet#1", "t.parquet#3"]
    count = records[-1]
    assert (count["n"], count["skipped"], count["container"]["records"]) == (2, 2, 4)


def test_a_damaged_shard_read_again_gives_none_of_its_rejects_twice(tmp_path: Path) -> None:
    """A resumed run reads a damaged shard again (it was not read to its end): its keys and its '#unreadable' reject,
    done in the run before, are skipped, not written a second time."""
    data = gzip.compress(tar_bytes({f"{i}.png": image_bytes(16, 16, i) for i in range(6)}))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar.gz").write_bytes(data[: len(data) * 2 // 3])
    (unit,) = discover(str(tmp_path / "in"))
    first = [r for r in read_unit(unit) if r["kind"] != "count"]
    assert first[-1]["id"] == "s.tar.gz#unreadable"
    again = list(read_unit(unit, skip_ids=frozenset(r["id"] for r in first)))
    assert again == [{"kind": "count", "n": 0, "skipped": len(first)}]


def test_a_shard_read_whole_after_an_earlier_unreadable_reject_names_only_its_vanished_ids_as_leftover(
        tmp_path: Path) -> None:
    """A shard that an earlier run could not read to its end ('s.tar#unreadable') and that reads whole now: that reject
    is settled by this read (the run removes it), so it is no leftover row; a done id the shard no longer gives is.
    A leftover makes the read no record of a container read whole (pipeline.changes): it would be read every run."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(tar_bytes({"a.png": image_bytes(8, 8, 0), "b.png": image_bytes(8, 8, 1)}))
    (unit,) = discover(str(tmp_path / "in"))
    records = list(read_unit(unit, skip_ids=frozenset({"s.tar#unreadable", "s.tar/gone", "s.tar/a"})))
    assert [r["id"] for r in records[:-1]] == ["s.tar/b"]
    count = records[-1]
    assert (count["n"], count["skipped"], count["container"]["records"]) == (1, 1, 2)
    assert count["container"]["leftover"] == ["s.tar/gone"]
    records = list(read_unit(unit, skip_ids=frozenset({"s.tar#unreadable", "s.tar/a"})))
    assert "leftover" not in records[-1]["container"]


def test_the_ids_a_shard_supersedes_are_no_records_read(tmp_path: Path) -> None:
    """read = purified + rejected is checked at the end of a run: the count record's `n` is of the image and reject
    records given, never of the ids an older version of the job gave the shard's keys (`superseded`)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(tar_bytes({"cat.0.png": image_bytes(8, 8, 1),
                                                       "cat.1.png": image_bytes(8, 8, 2)}))
    (unit,) = discover(str(tmp_path / "in"))
    records = list(read_unit(unit))
    assert [r["kind"] for r in records] == ["image", "image", "count"]
    assert records[-1]["n"] == 2 and records[-1]["container"]["superseded"] == ["s.tar/cat"]


def test_a_read_unit_of_an_unknown_kind_is_an_error_not_an_empty_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown read unit kind 'csv'"):
        list(read_unit(ReadUnit("csv", (str(tmp_path / "a.csv"),), str(tmp_path))))


# --- records ----------------------------------------------------------------------------------------------------------

# The data table's own columns as docs/job.md lists them: an input's column of one of these names is renamed
DOCUMENTED_JOB_COLUMNS = ("id", "image", "width", "height", "source", "source_sha256", "original_path", "original_mode",
                          "original_format", "original_frames", "psnr_vs_input_db", "downscale_factor")


@pytest.mark.parametrize("column", DOCUMENTED_JOB_COLUMNS)
def test_an_input_column_named_like_a_job_column_gets_input_before_it_once_more_each_time(column: str) -> None:
    """Purifying an output again (`--input OUT/data`) must keep every one of its columns: `x` -> `input_x`,
    `input_x` -> `input_input_x`, and so on, so no two input names meet in one output column."""
    names = [column, f"input_{column}", f"input_input_{column}"]
    assert [passthrough_name(n) for n in names] == [f"input_{n}" for n in names]


def test_an_input_column_named_like_no_job_column_keeps_its_name() -> None:
    for name in ("label", "input_label", "input_", "ids", "input_idx", "Input_Label", "Images", "caption"):
        assert passthrough_name(name) == name


def test_an_input_column_named_like_a_job_column_in_another_case_gets_input_before_it() -> None:
    """DuckDB, Spark and Hive take `Image` beside the job's `image` for one column."""
    for name in ("Image", "ID", "Source_SHA256", "Input_id", "INPUT_input_Width"):
        assert passthrough_name(name) == "input_" + name


def test_a_password_in_a_web_files_address_is_in_no_record_read_from_it(web) -> None:
    """A web folder read as 'http://user:password@host/in/': each record's `source`, and a reject's error quoting the
    address as the storage did, hold '***' in the password's place (the output's Parquet is read by others)."""
    folder, url = web
    (folder / "a.png").write_bytes(image_bytes(8, 8, 0))
    given = url.replace("http://", "http://alice:s3cretpw@")
    unit = ReadUnit("files", (given + "a.png", given + "gone.png"), given)
    image, reject, _ = read_unit(unit)
    shown = url.replace("http://", "http://alice:***@")
    assert (image["kind"], image["source"]) == ("image", shown + "a.png")
    assert (reject["kind"], reject["source"]) == ("reject", shown + "gone.png")
    assert shown + "gone.png" in reject["error"] and "s3cretpw" not in reject["error"]


def test_a_reject_error_hides_the_password_of_the_inputs_address_and_of_any_other_it_quotes() -> None:
    """A storage error can quote the input's address in a form of its own (a path without its scheme), or another
    address (a mirror it was redirected to, a proxy): the password is '***' in the reject's error either way."""
    error = "OSError: fetching https://bob:hunter2@mirror.example/a.png failed"
    reject = reject_record("a.png", "https://host/in/a.png", error, "read")
    assert reject["error"] == "OSError: fetching https://bob:***@mirror.example/a.png failed"
    # the input's own address quoted as a path, its scheme cut off as fsspec's FTP and SFTP errors quote it
    reject = reject_record("a.png", "ftp://alice:s3cret@host/in/a.png", "FileNotFoundError: alice:s3cret@host/in/a.png",
                           "read")
    assert reject["error"] == "FileNotFoundError: alice:***@host/in/a.png"
    assert reject["source"] == "ftp://alice:***@host/in/a.png"


# --- background repeats -----------------------------------------------------------------------------------------------


def test_a_step_that_returns_none_is_repeated_and_one_that_returns_false_is_the_last() -> None:
    calls: list[int] = []
    enough = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) == 3:
            enough.set()

    with repeated(step, 0.001, "srcrest-none"):
        assert enough.wait(30)  # None is no request to stop
    falses: list[int] = []
    with repeated(lambda: falses.append(1) or False, 0.001, "srcrest-false"):
        for _ in range(3000):  # the thread ends after its first step (at most 30 s)
            if not any(t.name == "srcrest-false" for t in threading.enumerate()):
                break
            threading.Event().wait(0.01)
    assert falses == [1]


def test_the_first_step_waits_its_interval_and_a_block_done_sooner_runs_none() -> None:
    """`step()` every `every_s` seconds: not at once as the block starts, and none as or after it ends (a progress
    line, a look at the cluster's nodes, made for a run that is over)."""
    calls: list[int] = []
    with repeated(lambda: calls.append(1), 3600, "srcrest-interval"):
        assert any(t.name == "srcrest-interval" for t in threading.enumerate())
    assert calls == [] and not any(t.name == "srcrest-interval" for t in threading.enumerate())


def test_the_block_ends_once_the_step_running_then_is_done_and_no_step_after() -> None:
    """A step still running as the block ends (a progress bar drawing, a look at the cluster's nodes) is waited for:
    nothing of the block's work is reported after it is over."""
    entered, release, log = threading.Event(), threading.Event(), []

    def step() -> bool:
        entered.set()
        release.wait(30)
        log.append("step done")
        return True

    with repeated(step, 0.001, "srcrest-wait"):
        assert entered.wait(30)
        threading.Timer(0.2, release.set).start()
    log.append("block over")
    assert log == ["step done", "block over"]


def test_a_step_that_hangs_holds_the_end_of_the_block_no_longer_than_the_join_timeout() -> None:
    """The node watch's look can hang (a Ray call that does not answer): the run's end waits `join_timeout_s` for it,
    no longer, and the thread, a daemon, keeps no process alive once the run is over."""
    entered, release, daemon = threading.Event(), threading.Event(), []

    def step() -> bool:
        entered.set()
        release.wait(60)
        return True

    def block() -> None:
        with repeated(step, 0.001, "srcrest-hang", join_timeout_s=0.05):
            assert entered.wait(30)
            daemon.extend(t.daemon for t in threading.enumerate() if t.name == "srcrest-hang")

    runner = threading.Thread(target=block, daemon=True)
    runner.start()
    runner.join(30)
    try:
        assert not runner.is_alive(), "the block waited for a hung step past its join timeout"
        assert daemon == [True]
    finally:
        release.set()


# --- the job's errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [JobFailed("a batch failed at ftp://alice:s3cret@host/in/a.png"),
                                   JobInterrupted("stopped reading ftp://alice:s3cret@host/in/a.png", signal.SIGTERM)])
def test_a_run_that_failed_or_was_stopped_raises_a_job_error_naming_no_credential(monkeypatch, error) -> None:
    """docs/api.md: `run_job` raises `JobFailed` or `JobInterrupted` (its `signum`), both `JobError`s, and a JobError
    from it names no credential of the run's URIs: a program that catches JobError logs it as it is."""
    def run(config: object, overwrite_file: str | None) -> dict:
        raise error

    monkeypatch.setattr(job_module, "_run_job", run)
    config = SimpleNamespace(checkpoint="/m.pt", input="ftp://alice:s3cret@host/in/", output="/out")
    with pytest.raises(JobError) as raised:
        job_module.run_job(config)
    assert raised.value is error and "s3cret" not in str(raised.value) and "ftp://" in str(raised.value)
    if isinstance(error, JobInterrupted):
        assert raised.value.signum == signal.SIGTERM


def test_a_path_missing_on_a_node_is_a_job_error() -> None:
    """docs/api.md: what stops a run is a JobError; a local path a task does not find on its node stops it too."""
    assert issubclass(NotOnThisNodeError, JobError) and issubclass(JobError, RuntimeError)


# --- the training step's math -----------------------------------------------------------------------------------------


class _Conv(torch.nn.Module):
    """A convolution that remembers the precision it computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        self.dtypes.append(out.dtype)
        return out


def test_without_an_autocast_dtype_the_forward_pass_runs_in_full_precision() -> None:
    """--precision fp32 trains in fp32: no autocast (whose default on CPU is bf16, on CUDA fp16) unless one is asked."""
    torch.manual_seed(0)
    model, x0, noise = _Conv(), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 500])
    loss = epsilon_loss(model, x0, t, noise, ALPHA_BARS)
    with torch.no_grad():
        expected = (model.conv(noised(x0, t, noise, ALPHA_BARS)) - noise).pow(2).mean()
    assert model.dtypes == [torch.float32] and torch.equal(loss.detach(), expected)
    epsilon_loss(model, x0, t, noise, ALPHA_BARS, autocast_dtype=torch.bfloat16)
    assert model.dtypes[-1] == torch.bfloat16
