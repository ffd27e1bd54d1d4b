"""The Arrow IPC record batch headers read by hand (`pipeline.sources.ipc_headers`), through what a user sees of them:
the progress total and the dry run's count of rows with no image. Each test here kills mutants of that module that the
Arrow IPC reading tests let live (a mutation audit)."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.job import progress_total
from pipeline.plan import plan_job
from pipeline.sources.arrow_ipc import ipc_headers
from pipeline.sources.ipc_headers import HeaderProblem, read_headers
from tests.jobutil import image_bytes


def _write(path, table: pa.Table, form: str = "stream", chunk: int = 2) -> None:
    with pa.OSFile(str(path), "wb") as sink, (ipc.new_stream if form == "stream" else ipc.new_file)(
            sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=chunk)


def _null_warning(out: str) -> str:
    (line,) = [line for line in out.splitlines() if "warning" in line and "have no image" in line]
    return line


def test_a_wide_table_after_a_tensor_column_is_counted_and_its_null_images_found(tmp_path, model, capsys) -> None:
    # A batch header longer than the first read of a message (300 columns: 5 KB of nodes), and an extension-typed
    # column before the image column: its nodes are its storage's (a fixed-size list: 2), so the image's nulls lie
    # after them. Taken for one node, the image column's nulls were read from the tensor's values: none found.
    (tmp_path / "in").mkdir()
    n = 5
    table = pa.table({
        "embedding": pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((n, 2, 2), np.float32)),
        "image": pa.array([None if i in (1, 4) else image_bytes(8, 8, i) for i in range(n)], pa.binary()),
        **{f"c{i:03d}": pa.array(range(n)) for i in range(300)}})
    for form in ("stream", "file"):
        _write(tmp_path / "in" / f"w_{form}.arrow", table, form)
    config = JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model)
    assert progress_total(plan_job(config, dry_run=True), {}) == 2 * n
    assert cli.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "4 rows of 2 Arrow IPC files have no image" in _null_warning(capsys.readouterr().out)


# A damaged file whose headers are read as if whole gave a progress total the run never reached, or a dry-run count of
# null images that is wrong (negative, even): its headers must be a HeaderProblem, so that neither is said. Each case
# below damages one field of a file pyarrow wrote, found by pyarrow's own reading of its messages.
ROWS, NULLS = 77, 11  # a batch's rows and its label column's nulls: numbers no buffer offset or length (8-aligned) is


def _batches() -> pa.Table:
    return pa.table({"label": pa.array([None if i % 7 == 0 else i for i in range(2 * ROWS)], pa.int64()),
                     "image": pa.array([image_bytes(4, 4, i % 3) for i in range(2 * ROWS)], pa.binary())})


def _messages(data: bytes, start: int) -> list[tuple[int, int, int]]:
    """(where it starts, its metadata's length with the marker and length before it, its body's length) of each
    message of the stream at `start` of `data`, as pyarrow reads them."""
    source = pa.BufferReader(data)
    source.seek(start)
    reader, out, at = ipc.MessageReader.open_stream(source), [], start
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            return out
        end = source.tell()
        out.append((at, end - at - message.body.size, message.body.size))
        at = end


def _replace(data: bytearray, start: int, end: int, old: bytes, new: bytes) -> None:
    assert old in data[start:end]
    data[start:end] = data[start:end].replace(old, new)


def _damaged(form: str, damage: str) -> bytes:
    sink = pa.BufferOutputStream()
    with (ipc.new_stream if form == "stream" else ipc.new_file)(sink, _batches().schema) as writer:
        writer.write_table(_batches(), max_chunksize=ROWS)
    data = bytearray(sink.getvalue().to_pybytes())
    schema, first, second = _messages(bytes(data), 0 if form == "stream" else 8)[:3]
    meta = (first[0], first[0] + first[1])  # the first record batch's metadata
    block = struct.pack("<qi4xq", *first)  # its block in a file's footer
    footer = (len(data) - 10 - int.from_bytes(data[-10:-6], "little"), len(data) - 10)
    if damage == "negative rows":
        _replace(data, *meta, struct.pack("<q", ROWS), struct.pack("<q", -ROWS))
    elif damage == "negative nulls":
        _replace(data, *meta, struct.pack("<q", NULLS), struct.pack("<q", -NULLS))
    elif damage == "a body past the file's end":  # a file's reading takes its body's length from the footer
        _replace(data, *footer, block, struct.pack("<qi4xq", first[0], first[1], len(data)))
    elif damage == "a negative body" and form == "file":
        _replace(data, *footer, block, struct.pack("<qi4xq", first[0], first[1], -8))
    elif damage == "a negative body":  # one stepping back onto four zero bytes: taken for a stream's end, it ended there
        zeros = bytes(data).find(b"\0\0\0\0", schema[0] + 8, first[0])
        _replace(data, *meta, struct.pack("<q", first[2]), struct.pack("<q", zeros - first[0] - first[1]))
    elif damage == "a block shorter than its metadata":
        _replace(data, *footer, block, struct.pack("<qi4xq", first[0], first[1] - 8, first[2] + 8))
    elif damage == "a block of the schema":
        _replace(data, *footer, block, struct.pack("<qi4xq", schema[0], schema[1], 0))
    elif damage == "its last magic":
        data[-6:] = b"ARROW2"
    elif damage == "two bytes after a stream without its end":
        del data[second[0] + second[1] + second[2]:]
        data += b"\0\0"
    elif damage == "no schema first":
        del data[: first[0]]
    elif damage == "no end marker":  # as a writer that never closed its stream leaves it: whole, as pyarrow reads it
        del data[second[0] + second[1] + second[2]:]
    return bytes(data)


@pytest.mark.parametrize(("form", "damage"), [
    ("stream", "negative rows"), ("stream", "negative nulls"), ("stream", "a negative body"),
    ("stream", "two bytes after a stream without its end"), ("stream", "no schema first"),
    ("file", "negative rows"), ("file", "negative nulls"), ("file", "a body past the file's end"),
    ("file", "a negative body"), ("file", "a block shorter than its metadata"), ("file", "a block of the schema"),
    ("file", "its last magic")])
def test_a_damaged_header_or_footer_leaves_the_counts_unknown(tmp_path, form: str, damage: str) -> None:
    whole = _damaged(form, "")
    assert read_headers(lambda at, n: whole[at : at + n], len(whole)).rows == 2 * ROWS  # the damage alone counts
    data = _damaged(form, damage)
    assert data != whole
    (tmp_path / "d.arrow").write_bytes(data)
    with pytest.raises(HeaderProblem):
        ipc_headers(str(tmp_path / "d.arrow"), {})


def test_a_stream_without_its_end_marker_is_counted_whole(tmp_path) -> None:
    data = _damaged("stream", "no end marker")
    assert ipc.open_stream(data).read_all().num_rows == 2 * ROWS
    (tmp_path / "d.arrow").write_bytes(data)
    assert ipc_headers(str(tmp_path / "d.arrow"), {}).rows == 2 * ROWS
