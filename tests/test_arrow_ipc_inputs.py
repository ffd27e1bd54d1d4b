"""Arrow IPC files as input (`.arrow`, `.feather`, `.ipc`; the IPC file format or the stream format, as Hugging Face
datasets' `save_to_disk` writes them): read as Parquet files are, one record per row (id `d.arrow#3`), the image from
a struct<bytes, path> or binary column, the other columns passed through; the data set's dataset_info.json and
state.json beside them are its metadata, skipped, not rejects."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.export import export_path
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import HiddenSkipped, discover, parquet_files, read_unit
from tests.jobutil import image_bytes, read_output, rewritten_in_place

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the file fetched whole, or read from storage a batch at a time
SHARD = "data-00000-of-00001.arrow"


def _table(n: int = 4) -> pa.Table:
    """Rows as Hugging Face's Image feature writes them: struct<bytes, path>, and an int64 label."""
    images = [{"bytes": image_bytes(16, 16, i), "path": f"img{i}.png"} for i in range(n)]
    return pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                     "label": pa.array(range(n), pa.int64())})


def _write(path, table: pa.Table, form: str) -> None:
    """`table` at `path` in two record batches: an IPC stream, an IPC file, or Feather (an IPC file, lz4)."""
    if form == "feather":
        feather.write_feather(table, str(path), chunksize=2)
        return
    with pa.OSFile(str(path), "wb") as sink, (ipc.new_stream if form == "stream" else ipc.new_file)(
            sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)


def _saved_dataset(folder, form: str = "stream") -> None:
    """A folder as `Dataset.save_to_disk` leaves it: its Arrow shard, dataset_info.json and state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / SHARD, _table(), form)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"image": {"_type": "Image"}}}))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": SHARD}], "_split": None}))


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
@pytest.mark.parametrize(("name", "form"), [(SHARD, "stream"), (SHARD, "file"), ("t.feather", "feather"),
                                            ("t.ipc", "file")])
def test_an_arrow_ipc_file_gives_one_record_per_row(tmp_path, name: str, form: str, in_memory_bytes: int) -> None:
    _write(tmp_path / name, _table(), form)
    (unit,) = discover(str(tmp_path))
    assert unit.kind == "parquet" and unit.stamps[0] is not None  # read as a table; its version kept for --incremental
    records = list(read_unit(unit, in_memory_bytes=in_memory_bytes))
    images = [r for r in records if r["kind"] == "image"]
    assert [(r["id"], r["meta"]["label"], r["meta"]["original_path"]) for r in images] == [
        (f"{name}#{i}", i, f"img{i}.png") for i in range(4)]
    assert [r["data"] for r in images] == [image_bytes(16, 16, i) for i in range(4)]
    assert images[0]["meta_types"] == {"label": pa.int64()}
    assert records[-1]["n"] == 4 and records[-1]["container"]["records"] == 4  # read whole: recorded for --incremental


def test_a_saved_datasets_metadata_is_skipped_and_counted_not_rejected(tmp_path) -> None:
    _saved_dataset(tmp_path / "ds" / "train")
    (tmp_path / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    (tmp_path / "notes.json").write_text("{}")  # no Arrow file beside it: an input, a reject as before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "state.json").write_text("{}")  # nor here
    hidden = HiddenSkipped()
    units = discover(str(tmp_path), hidden=hidden)
    assert sorted((u.kind, p.removeprefix(f"{tmp_path}/")) for u in units for p in u.paths) == [
        ("files", "notes.json"), ("files", "other/state.json"), ("parquet", f"ds/train/{SHARD}")]
    assert hidden.count == 3
    assert hidden.examples == ["ds/dataset_dict.json", "ds/train/dataset_info.json", "ds/train/state.json"]
    note = cli.hidden_note(hidden.count, hidden.examples)
    assert "a saved Hugging Face data set's metadata" in note and "ds/train/state.json" not in note.split(": ")[0]


def test_a_damaged_arrow_file_is_one_reject_and_a_cut_stream_keeps_the_rows_before_the_cut(tmp_path) -> None:
    (tmp_path / "bad.arrow").write_bytes(b"ARROW1\x00\x00" + b"not the rest of an Arrow file" * 10)
    _write(tmp_path / "cut.arrow", _table(), "stream")
    whole = (tmp_path / "cut.arrow").read_bytes()
    (tmp_path / "cut.arrow").write_bytes(whole[: len(whole) - 200])  # the second batch's end lost
    bad, cut = discover(str(tmp_path))
    (reject, count) = list(read_unit(bad))
    assert reject["id"] == "bad.arrow#unreadable" and reject["error"].startswith("unreadable Arrow IPC file: ")
    assert "container" not in count  # not read whole: the next --incremental run reads it again
    records = list(read_unit(cut))
    assert [(r["id"], r["kind"]) for r in records[:-1]] == [
        ("cut.arrow#0", "image"), ("cut.arrow#1", "image"), ("cut.arrow#unreadable", "reject")]
    assert "Arrow IPC file unreadable after 2 rows: record batch 1 cannot be read" in records[2]["error"]
    assert "container" not in records[-1]


def test_a_row_holding_only_a_path_is_a_reject_that_names_the_arrow_file_and_image_column_is_checked(tmp_path) -> None:
    table = _table(2)
    image = pa.array([{"bytes": None, "path": "/data/y.png"}, {"bytes": image_bytes(16, 16, 1), "path": None}],
                     table.schema.field("image").type)
    _write(tmp_path / SHARD, table.set_column(0, "image", image), "stream")
    (unit,) = discover(str(tmp_path))
    reject, image_row, _ = read_unit(unit)
    assert (reject["id"], image_row["id"]) == (f"{SHARD}#0", f"{SHARD}#1")
    assert "only a path (/data/y.png) to an image outside the Arrow IPC file" in reject["error"]
    # a misspelt --image-column stops the run before any work, as for a Parquet file
    assert "'imgae' not in Arrow IPC columns ['image', 'label']" in parquet_files.image_column_problem(unit, {}, "imgae")
    assert parquet_files.image_column_problem(unit, {}, "image") is None


def test_an_ipc_file_named_parquet_is_read_by_its_first_bytes(tmp_path) -> None:
    _write(tmp_path / "t.parquet", _table(), "file")
    (unit,) = discover(str(tmp_path))
    assert [r["id"] for r in read_unit(unit) if r["kind"] == "image"] == [f"t.parquet#{i}" for i in range(4)]


def test_a_storage_error_mid_stream_is_retried_without_a_row_twice(tmp_path, monkeypatch) -> None:
    from pipeline.sources import arrow_ipc

    _write(tmp_path / SHARD, _table(), "stream")
    (unit,) = discover(str(tmp_path))
    original, left = arrow_ipc.IpcTable.batch, {"n": 2}

    def flaky(self, i: int):
        if i == 1 and left["n"]:
            left["n"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return original(self, i)

    monkeypatch.setattr(arrow_ipc.IpcTable, "batch", flaky)
    monkeypatch.setattr(arrow_ipc, "backoff", lambda attempt: 0.0)
    records = list(parquet_files.read_parquet(unit, {}, None, 0, 2**20))
    assert [(r["id"], r["kind"]) for r in records] == [(f"{SHARD}#{i}", "image") for i in range(4)]


def test_an_exported_arrow_row_lies_in_a_folder_named_after_its_file() -> None:
    assert export_path(f"train/{SHARD}#3") == (f"train/{SHARD}/3.png", False)


@pytest.mark.usefixtures("ray_local")
def test_a_job_over_a_saved_dataset_and_an_incremental_run_that_reads_nothing_new(tmp_path, model, capsys) -> None:
    _saved_dataset(tmp_path / "in")
    config = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1, progress=False,
                  canvas_size=32)
    cli.print_plan(plan_job(JobConfig(**config), dry_run=True).describe())
    said = " ".join(capsys.readouterr().out.split())
    assert "0 image files to read" in said and "0 Parquet files, 1 Arrow IPC file," in said
    first = run_job(JobConfig(**config))["this_run"]
    assert (first["read"], first["purified"], first["rejected"]) == (4, 4, 0)
    assert (first["hidden_skipped"], first["containers_recorded"]) == (2, 1)
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(zip(data["id"], data["label"], strict=True)) == [(f"{SHARD}#{i}", i) for i in range(4)]
    assert str(data["label"].dtype) == "int64" and list(rejects["id"]) == []
    again = run_job(JobConfig(**config, incremental=True))["this_run"]
    assert (again["read"], again["purified"], again["containers_skipped_unread"]) == (0, 0, 1)
    # rewritten with another image in row 2: read to compare, and told as changed (with the 4 rows it gave)
    images = _table(6)["image"].combine_chunks()
    _write(tmp_path / "other.arrow", _table().set_column(0, "image", pa.concat_arrays([images[:2], images[5:], images[3:4]])),
           "stream")
    rewritten_in_place(tmp_path / "in" / SHARD, (tmp_path / "other.arrow").read_bytes())
    changed = plan_job(JobConfig(**config, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (changed["containers"], changed["container_rows"], changed["examples"]) == (1, 4, [SHARD])
    assert (changed["containers_compared"], changed["containers_same_members"]) == (1, 0)


def test_texts_name_the_format_a_file_was_read_as_and_leave_the_users_names_as_they_are(tmp_path) -> None:
    # The reader's texts were made for Parquet and had "Parquet" replaced: a path or column of the user's holding the
    # word was rewritten too ('/data/Arrow IPC exports/y.png'), and an IPC file named .parquet was said to be Parquet.
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    _write(tmp_path / "a.arrow", pa.table({
        "image": pa.array([{"bytes": None, "path": "/data/Parquet exports/y.png"}, {"bytes": b"\x01" * 8, "path": None}],
                          struct),
        "from_Parquet": pa.array([image_bytes(16, 16, 0), image_bytes(16, 16, 1)], pa.binary())}), "file")
    _write(tmp_path / "b.parquet", pa.table({"label": pa.array([1, 2], pa.int64())}), "stream")
    a, b = discover(str(tmp_path))
    path_only, not_an_image, _count = read_unit(a)
    assert "only a path (/data/Parquet exports/y.png) to an image outside the Arrow IPC file" in path_only["error"]
    assert not_an_image["decode_note"] == (
        "Arrow IPC column 'image', found as the image column; --image-column picks another: 'from_Parquet'")
    (unreadable, _count) = read_unit(b)
    assert unreadable["error"].startswith("Arrow IPC file with no image column (struct<bytes, path> or binary, or "
                                          "pixel arrays named image, img, image_bytes, bytes, jpg, png) among Arrow IPC "
                                          "columns ['label']: a table without images")
    assert "'photo' not in Arrow IPC columns ['label']" in parquet_files.image_column_problem(b, {}, "photo")


def _with_nulls(table: pa.Table, nulls: set[int]) -> pa.Table:
    """`table` with a null image struct at rows `nulls`, and two columns before it whose nodes come first in a batch's
    header (a list column has two, a dictionary-encoded one one), so the image column's nulls are found by its place."""
    n = table.num_rows
    images = pa.array([None if i in nulls else cell for i, cell in enumerate(table["image"].to_pylist())],
                      table.schema.field("image").type)
    return pa.table({"tags": pa.array([[f"t{i}"] if i % 2 else None for i in range(n)], pa.list_(pa.string())),
                     "kind": pa.array([None if i % 3 else "x" for i in range(n)]).dictionary_encode(),
                     "image": images, "label": table["label"]})


@pytest.mark.parametrize("form", ["stream", "file", "feather", "legacy"])
def test_the_record_batch_headers_give_each_batchs_rows_and_nulls_as_pyarrow_reads_them(tmp_path, form: str) -> None:
    from pipeline.sources.arrow_ipc import ipc_headers
    from pipeline.sources.ipc_headers import node_count

    table = _with_nulls(_table(5), {0, 3})
    path = tmp_path / "t.arrow"
    if form == "legacy":  # the stream format of Arrow before 0.15: no marker before each message's length
        with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(
                sink, table.schema, options=ipc.IpcWriteOptions(use_legacy_format=True)) as writer:
            writer.write_table(table, max_chunksize=2)
    else:
        _write(path, table, form)
    headers = ipc_headers(str(path), {})
    assert headers.schema == table.schema and [b.rows for b in headers.batches] == [2, 2, 1] and headers.rows == 5
    starts = [0, 2, 3, 4]  # each column's first node: tags (a list: 2 nodes), kind (dictionary: 1), image (struct: 3)
    assert [node_count(f.type) for f in table.schema] == [2, 1, 3, 1]
    for column, start in zip(table.column_names, starts, strict=True):
        assert sum(b.nulls[start] for b in headers.batches) == table[column].null_count, column
    from pipeline.sources.parquet_files import ipc_rows_without_image
    assert ipc_rows_without_image(headers, "image") == 2


def test_the_progress_total_counts_arrow_ipc_rows_from_batch_headers_not_their_data(tmp_path, model,
                                                                                   monkeypatch) -> None:
    # An Arrow IPC file among the inputs left the run without a total: its rows were known only once read.
    import os

    from pipeline.job import progress_total

    (tmp_path / "in").mkdir()
    big = pa.table({"image": pa.array([image_bytes(160, 160, i) for i in range(6)], pa.binary()),
                    "label": pa.array(range(6), pa.int64())})  # 6 PNGs of noise, 460 KB
    _write(tmp_path / "in" / "a.arrow", big, "stream")
    _write(tmp_path / "in" / "b.feather", _table(3), "feather")
    _write(tmp_path / "in" / "c.ipc", _table(5), "file")
    (tmp_path / "in" / "d.png").write_bytes(image_bytes(8, 8, 0))
    plan = plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model), dry_run=True)
    read, original = [], os.pread

    def counted(fd, length, offset):  # a local file's headers are read with os.pread, a small read each
        data = original(fd, length, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counted)
    assert progress_total(plan, {}) == 6 + 3 + 5 + 1
    size = sum(f.stat().st_size for f in (tmp_path / "in").iterdir())
    assert size > 400_000 and 0 < sum(read) < 50_000  # the headers alone: a few KB a batch at most, no image read
    # a stream cut short: its last batch's rows will not be read, so no total rather than one never reached
    whole = (tmp_path / "in" / "a.arrow").read_bytes()
    (tmp_path / "in" / "a.arrow").write_bytes(whole[: len(whole) - 1000])
    assert progress_total(plan, {}) is None  # shorter than listed
    again = plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model), dry_run=True)
    assert progress_total(again, {}) is None


def test_a_dry_run_warns_of_arrow_ipc_rows_whose_image_is_null_from_their_batch_headers(tmp_path, capsys) -> None:
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "a.arrow", _with_nulls(_table(6), {0, 2, 5}), "stream")
    _write(tmp_path / "in" / "b.feather", _with_nulls(_table(4), {1}), "feather")
    _write(tmp_path / "in" / "c.arrow", _table(4), "file")
    assert cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert ("4 rows of 2 Arrow IPC files have no image (a null image column, by the files' record batch headers) and "
            "will be rejected, one reject each: a.arrow (3), b.feather (1)") in line
    pq.write_table(pa.table({"image": pa.array([None, image_bytes(8, 8, 0)], pa.binary())}), tmp_path / "in" / "d.parquet")
    assert cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert "5 rows of 3 Parquet and Arrow IPC files have no image (a null image column, by the files' footer " \
           "statistics and record batch headers)" in line


def test_damaged_or_too_many_record_batch_headers_are_a_header_problem_never_another_error(tmp_path,
                                                                                         monkeypatch) -> None:
    # The headers are read by the format's layout from bytes no one checked: a damaged file must leave its counts
    # unknown (HeaderProblem), not fail the plan with an error of its own, and what they say must be what pyarrow reads.
    import io
    import random

    from pipeline.sources import ipc_headers as headers_module
    from pipeline.sources.ipc_headers import HeaderProblem, read_headers

    table = _with_nulls(_table(5), {1})
    whole = []
    for form in ("stream", "file"):
        _write(tmp_path / f"{form}.arrow", table, form)
        whole.append((tmp_path / f"{form}.arrow").read_bytes())
    rng = random.Random(0)
    agreed = 0
    for _ in range(400):
        data = bytearray(rng.choice(whole))
        for _ in range(rng.randint(1, 3)):  # the headers lie in the first and last few hundred bytes
            data[rng.choice([rng.randrange(600), len(data) - 1 - rng.randrange(600)])] = rng.randrange(256)
        data = bytes(data[: len(data) if rng.random() < 0.8 else rng.randrange(len(data))])
        try:
            rows = read_headers(lambda offset, length, data=data: data[offset : offset + length], len(data)).rows
        except HeaderProblem:
            continue
        try:
            reader = (ipc.open_file if data.startswith(b"ARROW1") else ipc.open_stream)(io.BytesIO(data))
            read = reader.read_all().num_rows
        except (pa.ArrowException, OSError):
            continue  # damaged past the headers: the run's reading rejects it
        assert rows == read
        agreed += 1
    assert agreed > 20
    monkeypatch.setattr(headers_module, "MAX_BATCHES", 2)  # 3 batches: not counted, one request each on a store
    for data in whole:
        with pytest.raises(HeaderProblem, match="record batches"):
            read_headers(lambda offset, length, data=data: data[offset : offset + length], len(data))
