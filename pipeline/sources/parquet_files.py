"""The reader of Parquet files: one record per row, its image from the image column (`find_image_column`), the other
columns passed through with their Arrow types; read a row group at a time, a storage error retried from the row it
stopped at."""

from __future__ import annotations

import contextlib
import functools
import struct
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.arrow_values import python_rows
from pipeline.sources.arrow_ipc import IPC_FORMAT, IpcTable, ipc_headers, ipc_records, is_arrow_ipc, open_ipc
from pipeline.sources.file_bytes import file_opener, too_large
from pipeline.sources.ids import relative_id
from pipeline.sources.ipc_headers import IpcHeaders, node_count
from pipeline.sources.parquet_footer import columns_encrypted, footer_of
from pipeline.sources.pixel_arrays import (
    ARRAY_FORMAT,
    ArrayProblem,
    array_cell_size,
    cell_pixels,
    is_pixel_array_column,
    is_tensor_extension,
    pixels_mode,
    pixels_png,
    pixels_sha256,
)
from pipeline.sources.read_budget import ReadBudget
from pipeline.sources.records import (
    LastingProblem,
    container_reject,
    image_record,
    is_lasting,
    passthrough_name,
    refusal_said,
    reject_record,
)
from pipeline.sources.units import ReadUnit
from pipeline.storage import backoff, describe, is_transient

IMAGE_COLUMN_CANDIDATES = ("image", "img", "image_bytes", "bytes", "jpg", "png")
PARQUET_FORMAT = "Parquet"  # the format's name in a text said of a file (`format_name`)
# Arrow reads a column chunk (a row group's images) in one piece unless given a buffer: then it reads page by page, so
# a file whose pages are small is read with a few MB in memory instead of its largest row group (and faster too).
READ_BUFFER_BYTES = 2**20


# The most bytes (as stored, uncompressed) one batch of rows should hold: 256 rows of 1 MB images made a 256 MB batch,
# on top of the pages it was decoded from.
BATCH_BYTES = 16 * 2**20


def batch_rows(group: pq.RowGroupMetaData, most: int) -> int:
    """Rows per batch for a row group: at most `most`, and fewer when its rows are large (from the footer's size of the
    group), so that a batch holds about BATCH_BYTES; at least 1."""
    per_row = group.total_byte_size / max(group.num_rows, 1)
    return max(1, min(most, int(BATCH_BYTES // per_row) if per_row > 0 else most))


def _open_parquet(f: Any) -> pq.ParquetFile:
    parquet = pq.ParquetFile(f, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
    if _columns_encrypted(f, parquet.metadata):  # before any column chunk's metadata is asked for: that aborts
        raise EncryptedParquet("an encrypted Parquet file (its columns encrypted, its footer plain: Parquet modular "
                               "encryption), which the job is given no keys to read: write it again unencrypted")
    return parquet


def _columns_encrypted(f: Any, meta: pq.FileMetaData) -> bool:
    """Whether the opened Parquet file `f` has encrypted columns under a plain footer (`parquet_footer`). Its footer is
    walked only where its length is not its metadata's own (such a footer ends with a 28-byte signature): a plain
    file's costs one read of its last 8 bytes. False where they cannot be read: reading the file says why."""
    try:
        f.seek(-8, 2)
        (length,) = struct.unpack("<I", f.read(4))
        return length != meta.serialized_size and columns_encrypted(footer_of(f))
    except Exception:  # noqa: BLE001 - a storage error or a footer Thrift cannot read: the read of its rows says
        return False


def _open_table(f: Any, path: str) -> pq.ParquetFile | IpcTable:
    """A Parquet file, or an Arrow IPC file or stream (`arrow_ipc`): told by its first bytes where its name says IPC,
    or where a file named as Parquet is not Parquet (a file named .parquet is opened as before, no byte more read)."""
    if is_arrow_ipc(path):
        return open_ipc(f, named_ipc=True) or _open_parquet(f)
    try:
        return _open_parquet(f)
    except OSError as err:
        if not is_transient(err) and _encrypted_footer(f):
            raise EncryptedParquet("an encrypted Parquet file (its footer encrypted: Parquet modular encryption), "
                                   "which the job is given no keys to read: write it again unencrypted") from err
        raise
    except pa.ArrowInvalid as err:
        f.seek(0)
        table = open_ipc(f, named_ipc=False)
        if table is None and "magic bytes" in str(err):  # no Parquet's at its end, nor Arrow IPC's at its start
            raise NotATable(f"neither a Parquet nor an Arrow IPC file ({describe(err)})") from err
        if table is None:
            raise
        return table


class NotATable(LastingProblem):
    """A file named as Parquet whose bytes are neither Parquet's nor Arrow IPC's (no magic bytes): not a table, as it
    stays while it is unchanged. One with Parquet's magic bytes and a damaged footer is not this: it is read again."""


class EncryptedParquet(LastingProblem):
    """A Parquet file whose footer is encrypted (it ends with 'PARE'), or whose columns are under a plain footer
    (`_columns_encrypted`): Arrow cannot read it without its keys, as it stays while it is unchanged."""


ENCRYPTED_FOOTER_MAGIC = b"PARE"


def _encrypted_footer(f: Any) -> bool:
    """Whether the file `f` ends as a Parquet file with an encrypted footer does; False where that cannot be read."""
    try:
        f.seek(-len(ENCRYPTED_FOOTER_MAGIC), 2)
        return f.read(len(ENCRYPTED_FOOTER_MAGIC)) == ENCRYPTED_FOOTER_MAGIC
    except Exception:  # noqa: BLE001 - a stream that cannot seek, a storage error: the open's own error is said
        return False


def format_name(table: pq.ParquetFile | IpcTable) -> str:
    """What the texts said of an opened file call its format: 'Parquet', or 'Arrow IPC' (`arrow_ipc`), by what it was
    opened as, not by its name."""
    return IPC_FORMAT if isinstance(table, IpcTable) else PARQUET_FORMAT


def _named_format(path: str) -> str:
    """The format a file that could not be opened is said to be in: the one its name says."""
    return IPC_FORMAT if is_arrow_ipc(path) else PARQUET_FORMAT


def _usable(field: pa.Field, named: bool = False) -> bool:
    """Whether `field` can hold image bytes (a list<uint8> only when `named`: see `find_image_column`; never a tensor
    type, whose storage may be a list<uint8> where Ray's types are not registered: `pixel_arrays`)."""
    t = field.type
    if is_tensor_extension(field):
        return False
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0
    if named and (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_uint8(t.value_type):
        return True
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


class NoImageColumn(LastingProblem):
    """A table with no column that can hold images, none named: a sample index or a table of labels (img2dataset's
    `00000.parquet` beside its shard folder), not images; its message says what it holds and how to use it."""


# What a table without images is told to do: its columns reach the images' rows as an image folder's metadata file's do
TABLE_ADVICE = ("a table without images, not read (a sample index or labels, such as img2dataset's 00000.parquet "
                "beside its 00000/ folder, whose .json sidecars give each image those columns already?): to add its "
                "columns to the images' rows, write them as a metadata.csv or metadata.jsonl beside the images, with a "
                "file_name column naming each image relative to its folder (docs/job.md, Inputs); if it does hold "
                "images, name their column with --image-column")


def find_image_column(schema: pa.Schema, requested: str | None = None, kind: str = PARQUET_FORMAT) -> str:
    """The column of a Parquet file (of a file of format `kind`, as its errors name it) holding image bytes: a
    struct<bytes, path> (Hugging Face layout) or binary (also large, view or dictionary-encoded); a list<uint8> only
    when named (--image-column, or one of the usual image names), since such a list may as well hold numbers that are
    not a file. Else, only when named too, a column of pixel arrays (`pixel_arrays`: Ray's tensor types, Arrow's
    fixed_shape_tensor, nested lists): a file that holds image bytes reads as it did, and a tensor column of another
    name (a mask, an embedding) is not taken for the images."""
    if requested:
        if requested not in schema.names:
            raise ValueError(f"image column {requested!r} not in {kind} columns {schema.names}")
        field = schema.field(requested)
        if not _usable(field, named=True) and not is_pixel_array_column(field):
            raise ValueError(f"column {requested!r} has type {field.type}, not image bytes or pixel arrays")
        return requested
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in schema.names and _usable(schema.field(name), named=True):
            return name
    for field in schema:
        if _usable(field):
            return field.name
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in schema.names and is_pixel_array_column(schema.field(name)):
            return name
    raise NoImageColumn(f"no image column (struct<bytes, path> or binary, or pixel arrays named "
                        f"{', '.join(IMAGE_COLUMN_CANDIDATES)}) among {kind} columns {schema.names}")


def image_column_problem(unit: ReadUnit, fs_opts: dict[str, Any], requested: str) -> str | None:
    """Why --image-column `requested` cannot be the image column of this Parquet file (from its footer alone), or
    None. Checked on the input's first Parquet file before any work: a misspelt name made every file one
    '#unreadable' reject in a run that ended complete, and the output then refused the corrected name as other
    reading options. A footer that cannot be read is left to the run, where that file is a reject."""
    (path,) = unit.paths
    try:
        with contextlib.ExitStack() as stack:
            open_file = file_opener(path, fs_opts, 0, unit.sizes[0] if unit.sizes else None)  # streamed: the footer only
            schema_of = _open_table(stack.enter_context(open_file()), path)
            schema = schema_of.schema_arrow
    except Exception:  # noqa: BLE001 - the run rejects a file it cannot read, with the reason
        return None
    if schema.names.count(requested) > 1:  # Arrow finds no column by such a name: the run rejects the file, saying why
        return None
    try:
        find_image_column(schema, requested, format_name(schema_of))
    except ValueError as err:
        return f"--image-column {requested}: {err}, in {path}"
    return None


def rows_without_image(unit: ReadUnit, fs_opts: dict[str, Any], requested: str | None,
                       budget: ReadBudget | None = None, columns: dict[str, list[str]] | None = None,
                       no_images: list[str] | None = None) -> int | None:
    """How many rows of this Parquet file have a null image cell (a null binary, or a struct<bytes, path> whose
    bytes are null), each of which the run rejects: the sum of the image column's null_count over the row groups
    whose footer statistics give one (no data is read), so a lower bound where some do not. None when no row group
    gives one, when the image column is a list (its null_count counts items, not rows) or when the footer cannot be
    read or has no image column (the run says why, in the file's reject). An Arrow IPC file's from its record batch
    headers instead (`ipc_rows_without_image`), their ranged requests taken from `budget`: None past it. `columns`
    (path -> names), when given, gets the file's pass-through columns as the output names them, read from the same
    footer or headers (`plan.column_case_twins`). `no_images`, when given, gets the file's path when it has no image
    column (`NoImageColumn`: a table without images, which the dry run names)."""
    (path,) = unit.paths
    if is_arrow_ipc(path):
        try:
            headers = ipc_headers(path, fs_opts, unit.sizes[0] if unit.sizes else None, budget)
            column = find_image_column(headers.schema, requested, IPC_FORMAT)
            if columns is not None:
                columns[path] = [passthrough_name(n) for n in headers.schema.names if n != column]
            return ipc_rows_without_image(headers, column)
        except Exception as err:  # noqa: BLE001 - the run rejects a file it cannot read, with the reason
            if isinstance(err, NoImageColumn) and no_images is not None:
                no_images.append(path)
            return None
    try:
        with contextlib.ExitStack() as stack:
            open_file = file_opener(path, fs_opts, 0, unit.sizes[0] if unit.sizes else None)  # streamed: the footer only
            parquet = _open_parquet(stack.enter_context(open_file()))
            column = find_image_column(parquet.schema_arrow, requested)
            meta = parquet.metadata
    except Exception as err:  # noqa: BLE001 - the run rejects a file it cannot read, with the reason
        if isinstance(err, NoImageColumn) and no_images is not None:
            no_images.append(path)
        return None
    if columns is not None:
        columns[path] = [passthrough_name(n) for n in parquet.schema_arrow.names if n != column]
    t = parquet.schema_arrow.field(column).type
    leaf = f"{column}.bytes" if pa.types.is_struct(t) else column if not pa.types.is_nested(t) else None
    at = next((i for i in range(meta.num_columns) if meta.schema.column(i).path == leaf), None)
    if at is None:
        return None
    counts = [stats.null_count for g in range(meta.num_row_groups)
              if (stats := meta.row_group(g).column(at).statistics) is not None and stats.has_null_count]
    return sum(counts) if counts else None


def ipc_rows_without_image(headers: IpcHeaders, column: str) -> int:
    """How many rows of an Arrow IPC file have a null image cell in `column`, from its record batch headers (no data
    read): the column's null count in each batch; for a struct<bytes, path>, the larger of its own and its 'bytes'
    field's (a lower bound: a row may have both null, and the headers do not say which rows). A list's null count
    counts rows (a null cell), unlike a Parquet footer's."""
    fields = list(headers.schema)
    at = next(i for i, f in enumerate(fields) if f.name == column)
    node = sum(node_count(f.type) for f in fields[:at])
    t = fields[at].type
    t = t.storage_type if isinstance(t, pa.BaseExtensionType) else t
    nodes = [node]
    if pa.types.is_struct(t):  # the 'bytes' field's node: after the struct's, and its fields' before it
        inner = t.get_field_index("bytes")
        nodes.append(node + 1 + sum(node_count(t.field(i).type) for i in range(inner)))
    return sum(max(batch.nulls[n] for n in nodes) for batch in headers.batches)


def other_image_columns(schema: pa.Schema, column: str, kind: str = PARQUET_FORMAT) -> str | None:
    """For an image column `find_image_column` found (not one named by --image-column): the file's other columns that
    could hold the images, as a note for the rejects of rows whose cell is not an image. A first binary column of
    hashes was taken for the images, and every row was rejected as 'not a recognised image format', naming no column."""
    named = IMAGE_COLUMN_CANDIDATES  # a column of pixel arrays too, named like images (not a mask or an embedding)
    others = [f.name for f in schema if f.name != column and (_usable(f, named=f.name in named)
                                                                or (f.name in named and is_pixel_array_column(f)))]
    if not others:
        return None
    return (f"{kind} column {column!r}, found as the image column; --image-column picks another: "
            f"{', '.join(map(repr, others))}")


def read_parquet(unit: ReadUnit, fs_opts: dict[str, Any], image_column: str | None, in_memory_bytes: int,
                  max_image_bytes: int, rows_per_batch: int = 256,
                  skip_ids: frozenset[str] | set[str] = frozenset(), attempts: int = 4) -> Iterator[dict[str, Any]]:
    """One record per row, read a row group at a time, a few hundred rows at a time, fewer when they are large
    (`batch_rows`: a large file is never all in Python objects). A cell over `max_image_bytes` is a reject: it is in
    Arrow's memory with its page, but never copied into Python. A row whose id is in `skip_ids` (done in an earlier
    run) gives a "skipped" record instead, its cell never copied; a row group whose rows are all done is not read at
    all (on a streamed file, not fetched).

    The footer says how many rows each group has, so every row's id is known before its group is read: a group whose
    data is damaged makes one reject per row it has left, and the next group is read. A storage error is retried with
    the file opened again, resuming after the rows already given; one that persists ends the file with its
    '#unreadable' reject, and the rows not read are left for the next run."""
    (path,) = unit.paths
    rel = relative_id(path, unit.root)
    kind = _named_format(path)  # until it is opened: then what it was opened as (an IPC file named .parquet, ...)
    with contextlib.ExitStack() as stack:
        try:
            # a large file's row groups are fetched as they are read (Parquet's footer says where each one lies)
            # a file of unknown size over in_memory_bytes is a stream that cannot seek: read from a local copy
            open_file = file_opener(path, fs_opts, in_memory_bytes, unit.sizes[0] if unit.sizes else None, spool=stack)
            parquet = _open_table(stack.enter_context(open_file()), path)  # or an Arrow IPC file (`arrow_ipc`)
            kind = format_name(parquet)
        except Exception as err:  # noqa: BLE001 - lasting where its bytes are neither Parquet nor IPC (`NotATable`)
            yield container_reject(f"{rel}#unreadable", path, f"unreadable {kind} file: {refusal_said(err)}",
                                   is_lasting(err))
            return
        try:
            _refuse_columns_named_twice(parquet.schema_arrow)  # first: Arrow finds no column by such a name
            column = find_image_column(parquet.schema_arrow, image_column, kind)
            others_note = None if image_column else other_image_columns(parquet.schema_arrow, column, kind)
        except NoImageColumn as err:  # read, and readable: a table, not images; what it holds, and what to do
            yield container_reject(f"{rel}#unreadable", path, f"{kind} file with {err}: {TABLE_ADVICE}", lasting=True)
            return
        except ValueError as err:
            # what the file's schema says, with --image-column, an option a run over the output cannot change (a run
            # with another is refused, `plan.check_output_state`): read again unchanged, it says the same
            yield container_reject(f"{rel}#unreadable", path, f"unreadable {kind} file: {describe(err)}", lasting=True)
            return
        except Exception as err:  # noqa: BLE001
            yield container_reject(f"{rel}#unreadable", path, f"unreadable {kind} file: {describe(err)}")
            return

        def reopen() -> pq.ParquetFile | IpcTable:
            return _open_table(stack.enter_context(open_file()), path)

        reading = ParquetReading(path, rel, parquet, reopen, column, others_note, skip_ids, max_image_bytes,
                                  rows_per_batch, attempts)
        if isinstance(parquet, IpcTable):  # its batches in order, each whole: `ipc_records`
            yield from ipc_records(reading, parquet, reopen, BATCH_BYTES)
        else:
            yield from reading.records()


def _refuse_columns_named_twice(schema: pa.Schema) -> None:
    """Arrow cannot select a column by a name the file holds twice: every row was a reject saying its row group
    "cannot be read" (KeyError), of a file whose data is whole."""
    twice = sorted(name for name, n in Counter(schema.names).items() if n > 1)
    if twice:
        raise ValueError(f"columns named more than once ({', '.join(map(repr, twice))}), whose values could not "
                         "be told apart in the output: rename them")


class ParquetReading:
    """The reading of one opened Parquet file, its row groups in order (`read_parquet` says how): the file, a way to
    open it again (a fresh connection for a retried read) and what each row's record needs."""

    def __init__(self, path: str, rel: str, parquet: pq.ParquetFile, reopen: Callable[[], pq.ParquetFile],
                 column: str, others_note: str | None, skip_ids: frozenset[str] | set[str], max_image_bytes: int,
                 rows_per_batch: int, attempts: int):
        self.path, self.rel, self.parquet, self.reopen = path, rel, parquet, reopen
        self.kind = format_name(parquet)  # "Parquet" or "Arrow IPC", in the texts said of the file
        self.column, self.others_note, self.skip_ids = column, others_note, skip_ids
        self.max_image_bytes, self.rows_per_batch, self.attempts = max_image_bytes, rows_per_batch, attempts
        self.others = [n for n in parquet.schema_arrow.names if n != column]
        field = parquet.schema_arrow.field(column)
        self.arrays = field if not _usable(field, named=True) else None  # a column of pixel arrays (`pixel_arrays`)
        # the input's Arrow types, by output column, so the writer keeps them (Python values lose float32, int32, ...)
        self.types = {passthrough_name(f.name): f.type for f in parquet.schema_arrow if f.name != column}

    def records(self) -> Iterator[dict[str, Any]]:
        """Every row's record, group by group; a group whose rows are all done is skipped unread."""
        first = 0  # the current group's first row
        for group in range(self.parquet.num_row_groups):
            rows = self.parquet.metadata.row_group(group).num_rows
            if self.skip_ids and all(f"{self.rel}#{j}" in self.skip_ids for j in range(first, first + rows)):
                yield from ({"kind": "skipped", "id": f"{self.rel}#{j}"} for j in range(first, first + rows))
            elif not (yield from self._group(group, first, rows)):
                return
            first += rows

    def _group(self, group: int, first: int, rows: int) -> Generator[dict[str, Any], None, bool]:
        """One row group's records, its read retried after a transient storage error from the row it stopped at; False
        when that error persists: the file ends there, with its '#unreadable' reject."""
        given = 0  # rows of this group already yielded: a retried read resumes after them
        for attempt in range(self.attempts):
            try:
                for record in self._group_rows(group, first, rows, given):
                    yield record
                    given += 1
                return True
            except Exception as err:  # noqa: BLE001 - classified here
                if is_transient(err) and attempt < self.attempts - 1:
                    backoff(attempt)
                    # a fresh connection for the next attempt; if opening fails too, it tries the old one
                    with contextlib.suppress(Exception):
                        self.parquet = self.reopen()
                    continue
                if is_transient(err):
                    yield reject_record(f"{self.rel}#unreadable", self.path, f"Parquet file unreadable after "
                                        f"{first + given} rows: {describe(err)}", "read")
                    return False
                yield from self._lost_rows(group, range(first + given, first + rows), err)
                return True
        return True

    def _group_rows(self, group: int, first: int, rows: int, given: int) -> Iterator[dict[str, Any]]:
        """The records of a row group's rows from its `given`-th on, a batch of rows at a time (`batch_rows`)."""
        at_row = 0
        size = batch_rows(self.parquet.metadata.row_group(group), self.rows_per_batch)
        # use_threads=False: on this thread, not on Arrow's pool, whose threads read the Python file object and let go
        # of its buffers as late as the interpreter's exit, where that can abort the process (changes.read_parquet_bytes);
        # the pool decodes one image column no faster (bench/parquet_read_bench.py: times alike, within their noise)
        for table in self.parquet.iter_batches(batch_size=size, row_groups=[group], use_threads=False):
            yield from self.batch_records(table, first + at_row, max(0, given - at_row))
            at_row += table.num_rows
        if at_row < rows:  # rows the footer gives the group that its data does not hold: damage, said
            raise ValueError(f"its data ends after {at_row} of the {rows} rows the file's footer gives it")

    def batch_records(self, table: pa.RecordBatch | pa.Table, first: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """The records of a batch's rows from its `start`-th on, its first row being the file's row `first`."""
        cells, other_bytes = table.column(self.column), _text_and_bytes(table, self.others)
        # a row over the limit is not made Python values: the others are, a batch at once
        values = None if max(other_bytes, default=0) > self.max_image_bytes else _python_rows(table, self.others)
        for at in range(start, table.num_rows):
            row = functools.partial(_row_at, table, values, self.others, at)
            yield self._row_record(first + at, row, cells[at], other_bytes[at])

    def _row_record(self, i: int, row: Callable[[], dict[str, Any]], cell: pa.Scalar, other_bytes: int) -> dict[str, Any]:
        rel, path, column = self.rel, self.path, self.column
        if f"{rel}#{i}" in self.skip_ids:
            return {"kind": "skipped", "id": f"{rel}#{i}"}
        size = _cell_size(cell) if self.arrays is None else array_cell_size(cell, self.arrays)
        if size is not None and size > self.max_image_bytes:
            return reject_record(f"{rel}#{i}", f"{path}#{i}", too_large(
                f"row {i}: image column {column!r}", size, self.max_image_bytes), "read")
        if (size or 0) + other_bytes > self.max_image_bytes:
            return reject_record(f"{rel}#{i}", f"{path}#{i}", too_large(
                f"row {i}: its image and its other columns' text and bytes together", (size or 0) + other_bytes,
                self.max_image_bytes), "read")
        try:
            values = row()
        except _NoPythonValue as err:
            return reject_record(f"{rel}#{i}", f"{path}#{i}", f"row {i}: {err}", "read")
        if self.arrays is not None:
            record = self._array_record(i, cell, values)
        else:
            record = _parquet_row_record(path, f"{rel}#{i}", i, {**values, column: cell.as_py()}, column, self.others,
                                         self.kind)
        if record["kind"] == "image":
            record["meta_types"] = self.types
            if self.others_note:
                record["decode_note"] = self.others_note
        return record

    def _array_record(self, i: int, cell: pa.Scalar, values: dict[str, Any]) -> dict[str, Any]:
        """A row whose image is a pixel array: its PNG, to be decoded as any image is, with the sha256 of its pixels
        (`pixel_arrays.pixels_sha256`); a cell that is no such image is the row's reject, saying what it holds."""
        try:
            pixels = cell_pixels(cell, self.arrays)
        except ArrayProblem as err:
            return reject_record(f"{self.rel}#{i}", f"{self.path}#{i}",
                                 f"row {i}: image column {self.column!r} holds {err}", "read")
        meta = {passthrough_name(n): values[n] for n in self.others}
        record = image_record(f"{self.rel}#{i}", f"{self.path}#{i}", pixels_png(pixels), meta)
        record.update(source_sha256=pixels_sha256(pixels), original_format=ARRAY_FORMAT)
        if pixels_mode(pixels):  # 16-bit colour, handed to the decoder as 8-bit: its mode would say RGB
            record["original_mode"] = pixels_mode(pixels)
        return record

    def _lost_rows(self, group: int, lost: range, err: Exception) -> Iterator[dict[str, Any]]:
        """Damaged data: these rows, and only these, are lost (each one's reject, or "skipped" if done already)."""
        rel, path = self.rel, self.path
        for j in lost:
            yield {"kind": "skipped", "id": f"{rel}#{j}"} if f"{rel}#{j}" in self.skip_ids else reject_record(
                f"{rel}#{j}", f"{path}#{j}", f"row {j}: row group {group} of the Parquet file cannot be "
                f"read: {describe(err)}", "read")


def _python_rows(batch: pa.RecordBatch, names: list[str]) -> list[dict[str, Any]] | None:
    """The values of columns `names`, a dict per row; None when a value has no Python form (a time past the year 9999,
    where Python's datetime ends), whose row then is made Python values alone (`_row_at`): it is a reject that names
    the column, and the other rows are purified. One such value made every row of its row group a reject, said as a
    row group that could not be read."""
    try:
        return python_rows(batch.select(names))
    except (OverflowError, ValueError):
        return None


class _NoPythonValue(ValueError):
    """A row's value of a pass-through column that has no Python form, said as its reject's reason."""


def _row_at(batch: pa.RecordBatch, rows: list[dict[str, Any]] | None, names: list[str], at: int) -> dict[str, Any]:
    """Row `at`'s values of columns `names`: from `rows` when the batch was made Python values, else that row alone.
    Raises _NoPythonValue naming the first column whose value has no Python form."""
    if rows is not None:
        return rows[at]
    row = batch.slice(at, 1).select(names)
    try:
        return python_rows(row)[0]
    except (OverflowError, ValueError) as err:
        for name in names:
            try:
                row.column(name).to_pylist()
            except (OverflowError, ValueError) as own:
                raise _NoPythonValue(
                    f"column {name!r} ({row.schema.field(name).type}) holds a value that has no Python form to pass "
                    f"through ({describe(own)}; a time before the year 1 or after 9999 is one): write the column as "
                    "int64 or text, or leave it out, to purify this row") from err
        raise


def _text_and_bytes(batch: pa.RecordBatch, names: list[str]) -> list[int]:
    """Per row, how many bytes its text and binary cells among `names` hold, from Arrow's lengths (nothing copied).
    Only the image cell was checked against --max-image-mb: a pass-through column holding hundreds of MB a row (a
    caption of zeros, compressed to almost nothing) was copied into Python, into the record and into the output."""
    total = pa.array([0] * batch.num_rows, pa.int64())
    for name in names:
        values = batch.column(name)
        if pa.types.is_dictionary(values.type) and _flat_bytes(values.type.value_type):
            lengths = pc.binary_length(values.dictionary).take(values.indices)
        elif _flat_bytes(values.type):
            lengths = pc.binary_length(values)
        else:
            continue
        total = pc.add(total, pc.fill_null(lengths, 0).cast(pa.int64()))
    return total.to_pylist()


def _flat_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _cell_size(cell: pa.Scalar) -> int | None:
    """How many bytes an image cell holds, from Arrow's buffers (nothing is copied); None for no value."""
    if isinstance(cell, pa.DictionaryScalar):
        cell = cell.value
    if isinstance(cell, pa.StructScalar):
        if not cell.is_valid:
            return None
        cell = cell["bytes"]
    if not cell.is_valid:
        return None
    if isinstance(cell, pa.ListScalar | pa.LargeListScalar):  # list<uint8>: one byte per item
        return len(cell.values)
    return cell.as_buffer().size if isinstance(cell, pa.BinaryScalar | pa.LargeBinaryScalar | pa.BinaryViewScalar) else None


def _parquet_row_record(path: str, id_: str, i: int, row: dict[str, Any], column: str,
                        others: list[str], kind: str = PARQUET_FORMAT) -> dict[str, Any]:
    value = row[column]
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(data, list) and None not in data:  # list<uint8>
        data = bytes(data)
    # the input's own `id`, `source`, ... under input_id, input_source (`passthrough_name`): the job's columns keep theirs
    meta = {passthrough_name(n): row[n] for n in others}
    if isinstance(value, dict) and value.get("path") is not None:
        meta["original_path"] = value["path"]  # an input's own original_path column is input_original_path
    if not isinstance(data, bytes) or not data:
        no_bytes = data is None or data == b"" or data == []
        elsewhere = value.get("path") if isinstance(value, dict) and no_bytes else None
        # Hugging Face's Image feature may keep only a path to a file outside the Parquet file; a cell whose 'bytes'
        # hold text has more than a path: it was told so, as if the image were not in the file
        hint = (f", only a path ({elsewhere}) to an image outside the {kind} file, which is not read: write the "
                "images into the file (datasets: embed_external_files) or give the image files as input"
                ) if elsewhere else ""
        # what the cell holds: "no bytes" was said of a list<uint8> with a null item and of a struct's text 'bytes' too
        what = ("no bytes" if no_bytes else
                f"a list with {data.count(None)} null item(s), not bytes" if isinstance(data, list) else
                "text in its 'bytes' field, not bytes: the field is a string, where an image needs binary (text such "
                "as base64 must be decoded into the image's bytes when the file is written)" if isinstance(data, str) else
                f"a {type(data).__name__} value, not bytes")
        return reject_record(id_, f"{path}#{i}", f"row {i}: image column {column!r} holds {what}{hint}", "read")
    return image_record(id_, f"{path}#{i}", data, meta)
