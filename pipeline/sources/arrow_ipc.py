"""Arrow IPC inputs: `.arrow`, `.feather` and `.ipc` files, in the IPC file format (Feather version 2) or the stream
format (what Hugging Face `datasets`' `save_to_disk` writes), read as Parquet files are (`parquet_files`): the same
image column, pass-through columns with their Arrow types, ids (`d.arrow#3`), rejects and `--incremental` record, the
file's record batches in the place of row groups. Which of the two formats a file holds is told by its first bytes
(`open_ipc`), as is an IPC file named `.parquet`.

A Parquet footer gives each row group's rows before any is read; an IPC file says how many rows a batch holds only in
that batch's own header (the file format's footer gives where each batch lies; a stream has no footer), so the
batches are read in order, each whole, and a row's id is known once its batch is read (`ipc_records`). The plan and
the progress read those headers alone, no batch's data parsed (`ipc_headers`: on an object store a request of 64 KiB
takes every header within it, from a budget for all of a run's files), for the rows a file holds. A batch that
cannot be read ends the file there, with its `#unreadable` reject: the rows after it cannot be numbered. The rows
before it are purified, and a later run reads the file again, its done rows skipped.

Reading goes through the same opener as Parquet's (`file_bytes.file_opener`): a file up to `--in-memory-mb` is fetched
whole, a larger one read from storage a batch at a time (ranged reads on an object store), so a read task holds one
record batch at a time, never the file. A local file is not memory-mapped: one truncated by another process while
mapped would kill the read task's worker (SIGBUS) instead of making a reject."""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc

from pipeline.sources.ids import without_signed_query
from pipeline.sources.ipc_headers import HeaderProblem, IpcHeaders, read_headers
from pipeline.sources.read_budget import ReadBudget
from pipeline.sources.records import LastingProblem, reject_record
from pipeline.storage import backoff, describe, is_transient, local_file_path, storage_path, with_retries

if TYPE_CHECKING:
    from pipeline.sources.parquet_files import ParquetReading

ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
IPC_FORMAT = "Arrow IPC"  # the format's name in a text said of such a file (`parquet_files.format_name`)
FILE_MAGIC = b"ARROW1"  # the IPC file format (Feather version 2) starts with it, and ends with it
STREAM_CONTINUATION = b"\xff\xff\xff\xff"  # each message of a stream (Arrow 0.15 on) starts with it
FEATHER_V1_MAGIC = b"FEA1"
PARQUET_MAGIC = b"PAR1"
# on this thread: Arrow's pool would read the Python file object from its own threads (see parquet_files._group_rows)
_READ_OPTIONS = ipc.IpcReadOptions(use_threads=False)
BLOCK = 64 * 2**10  # what one ranged request for record batch headers takes on an object store, as TFRecord's


def is_arrow_ipc(path: str) -> bool:
    """Whether `path` is named as an Arrow IPC file (by its suffix; a presigned address's query is not part of it)."""
    return without_signed_query(path).lower().endswith(ARROW_SUFFIXES)


class IpcTable:
    """An opened Arrow IPC file or stream, as much of one as its reading needs: its schema (`schema_arrow`, as a
    ParquetFile gives it) and its record batches by number (`batch`): at random in the file format, in order in a
    stream (an earlier batch asked again, as after a reopen, is read from the stream's start)."""

    def __init__(self, f: Any, file_format: bool) -> None:
        self.file_format = file_format
        self.reader = ipc.open_file(f, options=_READ_OPTIONS) if file_format else ipc.open_stream(f, options=_READ_OPTIONS)
        self.schema_arrow: pa.Schema = self.reader.schema
        self.at = 0  # a stream's next batch

    def batch(self, i: int) -> pa.RecordBatch | None:
        """Record batch `i` (from 0), or None past the last one."""
        if self.file_format:
            return self.reader.get_batch(i) if i < self.reader.num_record_batches else None
        if i < self.at:
            raise ValueError(f"batch {i} of a stream already read past")
        found = None
        while self.at <= i:
            try:
                found = self.reader.read_next_batch()
            except StopIteration:
                return None
            self.at += 1
        return found


def open_ipc(f: Any, named_ipc: bool) -> IpcTable | None:
    """`f` (a seekable binary file at its start) opened as an Arrow IPC file or stream, by its first bytes; None when
    they are not IPC's (a Parquet file, whatever its name; anything else unless `named_ipc`). A file named as IPC
    without a stream's marker is opened as a stream of Arrow before 0.15, or fails saying why. Feather version 1 (a
    format of its own) raises a ValueError saying how to rewrite it."""
    head = f.read(8)
    f.seek(0)
    if head.startswith(FILE_MAGIC):
        return IpcTable(f, file_format=True)
    if head.startswith(FEATHER_V1_MAGIC):
        raise LastingProblem("a Feather version 1 file, which is not read: write it again as Feather version 2, an "
                             "Arrow IPC file (pyarrow.feather.write_feather's default)")
    if head.startswith(STREAM_CONTINUATION):
        return IpcTable(f, file_format=False)
    if named_ipc and not head.startswith(PARQUET_MAGIC):
        _refuse_no_stream(f, head)
        return IpcTable(f, file_format=False)
    return None


def _refuse_no_stream(f: Any, head: bytes) -> None:
    """Raise LastingProblem where a file named as IPC, without a file's or a stream's marker, cannot be a stream of
    Arrow before 0.15 either: that starts with its first message's length (int32), more than 0 and within the file; a
    PNG's, a CSV's or an HTML page's first bytes give a length past the file's end, a JPEG's one below 0. Told from its
    first bytes and its size, so that reading it again unchanged says the same. One that gives a length that fits is
    opened as such a stream, as is one under 8 bytes (empty, or cut short: nothing in it says it is no IPC): their
    failures are read again."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    length = int.from_bytes(head[:4], "little", signed=True)
    if size < 8 or 0 < length <= size - 4:  # 8: a stream's continuation marker and its first length
        return
    raise LastingProblem(f"not an Arrow IPC file: it starts with neither {FILE_MAGIC.decode()} (a file's, Feather "
                         "version 2's), a stream's marker, nor the length of a first message that fits in it (its first "
                         f"bytes: {head.hex(' ')})")


def ipc_headers(path: str, fs_opts: dict[str, Any], size: int | None = None,
                budget: ReadBudget | None = None) -> IpcHeaders:
    """The schema and record batch headers of the Arrow IPC file at `path` (`ipc_headers.read_headers`: rows and null
    counts, no batch's data read); `size` from the listing, else asked. A local file is read a header at a time
    (os.pread), none of its reads taken from `budget`; on any other storage each read is a ranged request of BLOCK
    bytes or more, which holds the headers of the small batches in it, each taken from `budget` if one is given.
    HeaderProblem where they cannot be had (the requests spent among them); a storage error as it is."""
    local = local_file_path(path)
    if local is not None:
        fd = os.open(local, os.O_RDONLY)
        try:
            held = size if size is not None else os.fstat(fd).st_size
            return read_headers(lambda offset, length: os.pread(fd, max(0, min(length, held - offset)), offset), held)
        finally:
            os.close(fd)
    fs, fs_path = storage_path(path, fs_opts)
    if size is None:
        size = with_retries(lambda: fs.size(fs_path), f"stat {path}")
    if not isinstance(size, int):  # a web server that gives no length: the footer cannot be found
        raise HeaderProblem("a file whose size its storage does not give")
    known: int = size

    def read_at(offset: int, length: int) -> bytes:
        end = min(offset + length, known)
        if end <= offset:
            return b""
        return with_retries(lambda: fs.cat_file(fs_path, start=offset, end=end), f"read {path}")

    return read_headers(read_at, known, BLOCK, budget)


def _slice_rows(batch: pa.RecordBatch, most: int, batch_bytes: int) -> int:
    """Rows of `batch` made Python values at once: at most `most`, fewer when its rows are large, so that a slice
    holds about `batch_bytes` (as `parquet_files.batch_rows` for a row group); at least 1."""
    per_row = batch.nbytes / max(batch.num_rows, 1)
    return max(1, min(most, int(batch_bytes // per_row) if per_row > 0 else most))


def ipc_records(reading: ParquetReading, table: IpcTable, reopen: Callable[[], IpcTable],
                batch_bytes: int) -> Iterator[dict[str, Any]]:
    """Every row's record of an opened IPC file, batch by batch in order (`reading`: the Parquet reader's per-row
    work: the image cell, its size, the pass-through values, done ids). A transient storage error reading a batch is
    retried with the file opened again; a batch that cannot be read ends the file with its '#unreadable' reject,
    naming the rows read before it. A batch whose rows are all done gives them as "skipped", none made Python values."""
    rel, path, skip_ids = reading.rel, reading.path, reading.skip_ids
    first = 0  # the current batch's first row
    index = 0
    while True:
        batch = None
        for attempt in range(reading.attempts):
            try:
                batch = table.batch(index)
                break
            except Exception as err:  # noqa: BLE001 - classified here
                if is_transient(err) and attempt < reading.attempts - 1:
                    backoff(attempt)
                    with contextlib.suppress(Exception):  # a fresh connection; if opening fails, the old one again
                        table = reopen()
                    continue
                yield reject_record(f"{rel}#unreadable", path, f"Arrow IPC file unreadable after {first} rows: record "
                                    f"batch {index} cannot be read: {describe(err)}", "read")
                return
        if batch is None:
            return
        rows = batch.num_rows
        if skip_ids and all(f"{rel}#{j}" in skip_ids for j in range(first, first + rows)):
            yield from ({"kind": "skipped", "id": f"{rel}#{j}"} for j in range(first, first + rows))
        else:
            size = _slice_rows(batch, reading.rows_per_batch, batch_bytes)
            for start in range(0, rows, size):
                yield from reading.batch_records(batch.slice(start, size), first + start)
        first += rows
        index += 1


# The files Hugging Face datasets' save_to_disk writes beside a data set's .arrow files: its description and the list
# of its files; and a DatasetDict's list of splits, in the folder above theirs.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json")
SAVED_DATASET_DICT = "dataset_dict.json"


def saved_dataset_metadata(paths: Iterable[str]) -> list[str]:
    """Of listed `paths`, the metadata files of a data set Hugging Face datasets saved to disk: `dataset_info.json`
    and `state.json` in a folder that holds a listed Arrow IPC file, `dataset_dict.json` in a folder above one. They
    are not images: the listing skips them as it skips hidden files, counted with them (each was a reject, 'not a
    recognised image format', as if an input were damaged)."""
    paths = list(paths)
    folders = {posixpath.dirname(p) for p in paths if is_arrow_ipc(p)}
    if not folders:
        return []
    found = []
    for p in paths:
        folder, name = posixpath.split(p)
        if (name in SAVED_DATASET_FILES and folder in folders) or (
                name == SAVED_DATASET_DICT and any(f.startswith(folder.rstrip("/") + "/") for f in folders)):
            found.append(p)
    return found
