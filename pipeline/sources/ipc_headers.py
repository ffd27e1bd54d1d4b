"""What an Arrow IPC file's record batches hold, from their headers alone (a few hundred bytes each), none of their data
read: how many rows each batch has and how many nulls each column has in it. A Parquet footer gives both for a whole
file at once; an IPC file gives them only in each batch's own header, and pyarrow reads those only with the batch
(`RecordBatchFileReader.count_rows` reads every batch's body: for a 4 MB file, 4 MB), so they are read here, by the
IPC format's layout (Arrow's `format/Message.fbs`, `File.fbs`, `Schema.fbs`):

- a message is a 0xFFFFFFFF marker (not written before Arrow 0.15), the length of its metadata, the metadata (a
  flatbuffer `Message`: its header's type, the header, the length of the body after it), then the body;
- a stream is the schema's message, then dictionary and record batch messages, then an end marker (a length of 0);
- a file is `ARROW1` and 2 bytes of padding, a stream, a `Footer` flatbuffer (where each record batch's message lies),
  the footer's length and `ARROW1`.

A record batch's header (`RecordBatch`) holds its rows and a node (length, null count) per column and per child of one,
depth first, in the schema's order. The headers are read in the file's order, each read taking at least `block` bytes
and the headers that lie within a read taken from it, no second request (`_Reads`): on an object store a ranged
request of 64 KiB takes the headers of all the small batches in it, their bodies stepped over (a file's footer says
where each header lies; a stream's are found one after another), and a batch of large images costs a request of its
own. Those requests are taken from the run's `ReadBudget`, past which the file is not counted; a local file reads
each header as asked, uncounted. A file of more than MAX_BATCHES batches is not counted either. Anything that is not
as the format says (a file cut short, damaged) is a HeaderProblem: the counts are then unknown, and the file's reading
says what is wrong with it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from pipeline.sources.read_budget import BudgetSpent, ReadBudget

FILE_MAGIC = b"ARROW1"
_CONTINUATION = 0xFFFFFFFF
# The message header types this reads (the flatbuffer union `MessageHeader`)
_SCHEMA, _RECORD_BATCH = 1, 3
# The most record batch headers read of one file. Hugging Face datasets and Feather write batches of hundreds to tens
# of thousands of rows: a file of more is rare, and left uncounted rather than slow to plan.
MAX_BATCHES = 10_000
# What a stream message's first read takes: its marker, its length and, most often, all its metadata
_PEEK = 4096
# The longest metadata read: a batch header holds 48 bytes or so a column; one longer is damage, not worth its read
MAX_METADATA = 64 * 2**20

# (offset, length) -> the bytes there, fewer at the file's end
ReadAt = Callable[[int, int], bytes]


class HeaderProblem(ValueError):
    """Headers that are not as the IPC format writes them, or more than MAX_BATCHES of them: the counts are unknown."""


@dataclass(frozen=True)
class BatchHeader:
    rows: int
    nulls: tuple[int, ...]  # null count of each node: the columns and their children, depth first


@dataclass(frozen=True)
class IpcHeaders:
    schema: pa.Schema
    batches: tuple[BatchHeader, ...]

    @property
    def rows(self) -> int:
        return sum(batch.rows for batch in self.batches)


def node_count(t: pa.DataType) -> int:
    """How many nodes a column of type `t` has in a record batch's header: one, and its children's (a list's items, a
    struct's fields); a dictionary-encoded column one (its values are in dictionary batches); an extension type its
    storage's."""
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    if pa.types.is_dictionary(t):
        return 1
    return 1 + sum(node_count(t.field(i).type) for i in range(t.num_fields))


def read_headers(read_at: ReadAt, size: int, block: int = 0, budget: ReadBudget | None = None) -> IpcHeaders:
    """The schema and every record batch header of the IPC file or stream of `size` bytes that `read_at` reads, at
    least `block` bytes a read, each read taken from `budget` if one is given (`_Reads`)."""
    reads = _Reads(read_at, size, block, budget)
    if reads(0, len(FILE_MAGIC)) == FILE_MAGIC:
        return _file_headers(reads, size)
    return _stream_headers(reads, size)


class _Reads:
    """The reads of one file, as a ReadAt: a range that the last two reads hold is taken from them (a header after the
    one just read, the footer from the read of the file's end), any other read of at least `block` bytes from where
    it starts, and taken from `budget`. What a read gives is held as it is, fewer bytes where the file ends early:
    the callers' checks of each length stay as they were."""

    def __init__(self, read_at: ReadAt, size: int, block: int, budget: ReadBudget | None) -> None:
        self.read_at, self.size, self.block, self.budget = read_at, size, block, budget
        self.held: list[tuple[int, bytes]] = []  # (where, the bytes read there), the last read last

    def holds(self, offset: int, length: int) -> bool:
        """Whether the last reads hold these bytes (or all of them before the file's end)."""
        end = min(offset + length, self.size)
        return any(start <= offset and end <= start + len(data) for start, data in self.held)

    def __call__(self, offset: int, length: int, span: int | None = None) -> bytes:
        """`length` bytes from `offset`; where the last reads do not hold them, a read of `span` bytes (as many as
        `length` or more), else of `length` or `block`, whichever is more."""
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        for start, data in self.held:
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        if self.budget is not None:
            try:
                self.budget.take()
            except BudgetSpent as err:
                raise HeaderProblem(str(err)) from err
        data = self.read_at(offset, max(length, span if span is not None else self.block))
        self.held = [*self.held[-1:], (offset, data)]
        return data[:length]

    def tail(self, length: int) -> bytes:
        """The file's last `length` bytes, read with the `block` bytes before them (where a file's footer lies)."""
        start = max(0, self.size - max(length, self.block))
        return self(start, self.size - start)[self.size - length - start :]


def _unpack(fmt: str, buf: bytes, at: int) -> int:
    """A little-endian number at `at` of `buf`; HeaderProblem where it does not lie within (struct would take a
    negative offset from the end)."""
    if at < 0 or at + struct.calcsize(fmt) > len(buf):
        raise HeaderProblem(f"an offset ({at}) outside the {len(buf)} bytes of a header")
    return struct.unpack_from(fmt, buf, at)[0]


class _Table:
    """A flatbuffer table at `pos` of `buf`, its fields by number (as Arrow's .fbs files number them, from 0)."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _unpack("<i", buf, pos)
        self.vtable_size = _unpack("<H", buf, self.vtable)

    def _field(self, n: int) -> int:
        at = 4 + 2 * n
        return _unpack("<H", self.buf, self.vtable + at) if at + 2 <= self.vtable_size else 0

    def number(self, n: int, fmt: str) -> int:
        """A scalar field: 0 when absent (the schemas' default for each one read here)."""
        at = self._field(n)
        return _unpack(fmt, self.buf, self.pos + at) if at else 0

    def table(self, n: int) -> _Table:
        at = self._field(n)
        if not at:
            raise HeaderProblem("a header without its table")
        return _Table(self.buf, self.pos + at + _unpack("<I", self.buf, self.pos + at))

    def vector(self, n: int) -> tuple[int, int]:
        """(where its first item lies, how many it has) of a vector field."""
        at = self._field(n)
        if not at:
            return 0, 0
        at = self.pos + at + _unpack("<I", self.buf, self.pos + at)
        return at + 4, _unpack("<I", self.buf, at)


def _root(buf: bytes) -> _Table:
    return _Table(buf, _unpack("<I", buf, 0))


def _metadata_at(buf: bytes) -> tuple[int, int]:
    """(where the metadata starts, its length) of a message starting `buf`: after the marker and length, or after
    the length alone (Arrow before 0.15)."""
    first = _unpack("<I", buf, 0)
    if first == _CONTINUATION:
        return 8, _unpack("<i", buf, 4)
    return 4, first


def _batch(message: _Table) -> BatchHeader:
    """A record batch message's rows and null counts (`Message` field 2 is its header; `RecordBatch` field 0 its
    length, field 1 its nodes: structs of two int64, length and null count)."""
    header = message.table(2)
    rows = header.number(0, "<q")
    start, count = header.vector(1)
    nulls = tuple(_unpack("<q", header.buf, start + 16 * i + 8) for i in range(count))
    if rows < 0 or any(n < 0 for n in nulls):
        raise HeaderProblem("a record batch header with a negative count")
    return BatchHeader(rows, nulls)


def _file_headers(read_at: _Reads, size: int) -> IpcHeaders:
    """The IPC file format: the footer gives each record batch's block (`Footer` field 3: structs of an int64 offset,
    an int32 metadata length and padding, an int64 body length); the schema is the message after the magic."""
    tail = read_at.tail(10) if size >= 18 else b""
    if len(tail) != 10 or tail[4:] != FILE_MAGIC:
        raise HeaderProblem("no footer: the file does not end as an Arrow IPC file does")
    length = _unpack("<i", tail, 0)
    if not 0 < length <= size - 18:
        raise HeaderProblem(f"a footer length ({length}) the file cannot hold")
    footer = _root(read_at(size - 10 - length, length))
    start, count = footer.vector(3)
    if count > MAX_BATCHES:
        raise HeaderProblem(f"{count:,} record batches, over the {MAX_BATCHES:,} whose headers are read")
    blocks = [(_unpack("<q", footer.buf, at), _unpack("<i", footer.buf, at + 8), _unpack("<q", footer.buf, at + 16))
              for at in range(start, start + 24 * count, 24)]
    schema, _ = _schema(read_at, 8, size)
    batches = []
    for offset, meta_length, body_length in blocks:
        if offset < 8 or not 8 <= meta_length <= MAX_METADATA or body_length < 0 or offset + meta_length + body_length > size:
            raise HeaderProblem(f"a record batch ({offset}, {meta_length}, {body_length}) the file cannot hold")
        meta = read_at(offset, meta_length,
                       None if read_at.holds(offset, meta_length) else _span(blocks, len(batches), read_at.block))
        begin, n = _metadata_at(meta)
        if begin + n > len(meta):
            raise HeaderProblem("a record batch's metadata longer than its block")
        message = _root(meta[begin : begin + n])
        if message.number(1, "<B") != _RECORD_BATCH:
            raise HeaderProblem("a block of the footer that holds no record batch")
        batches.append(_batch(message))
    return IpcHeaders(schema, tuple(batches))


def _span(blocks: list[tuple[int, int, int]], i: int, block: int) -> int:
    """The bytes from record batch `i`'s header that one read takes: to the end of the last of the headers after it
    (in the footer's order) that end within `block` bytes of its start; the bodies between them are read with them,
    none after the last."""
    offset, length, _ = blocks[i]
    end = offset + length
    for later, later_length, _ in blocks[i + 1 :]:
        if later < end or later + later_length > offset + block:
            break
        end = later + later_length
    return end - offset


def _message(read_at: _Reads, at: int, size: int, span: int | None = None) -> tuple[_Table, bytes, int] | None:
    """The message at `at`: (its metadata, its bytes up to its body, where the next message starts); None at the end
    marker or the end of the file. `span`: what a read for it takes, when not a block."""
    if at >= size:
        return None
    chunk = read_at(at, _PEEK, span)
    if len(chunk) < min(_PEEK, size - at):
        raise HeaderProblem("a file shorter than its size, as listed")
    if len(chunk) < 4:  # no end marker, and bytes that are no message: the reading's reject after the rows before them
        raise HeaderProblem(f"a stream that ends {len(chunk)} byte(s) into a message at byte {at}")
    if _unpack("<I", chunk, 0) == 0 or chunk[:8] == b"\xff\xff\xff\xff\x00\x00\x00\x00":
        return None
    begin, n = _metadata_at(chunk)
    if not 0 < n <= MAX_METADATA or at + begin + n > size:
        raise HeaderProblem(f"a message at byte {at} whose metadata the file cannot hold")
    if begin + n > len(chunk):
        chunk += read_at(at + len(chunk), begin + n - len(chunk))
    message = _root(chunk[begin : begin + n])
    body = message.number(3, "<q")
    if body < 0 or at + begin + n + body > size:  # cut short: the reading gives its rows before it, and a reject
        raise HeaderProblem(f"a message at byte {at} whose body the file cannot hold")
    return message, chunk[: begin + n], at + begin + n + body


def _schema(read_at: _Reads, at: int, size: int) -> tuple[pa.Schema, int]:
    """The schema's message at `at`, as pyarrow reads it, and where the next message starts."""
    found = _message(read_at, at, size)
    if found is None or found[0].number(1, "<B") != _SCHEMA:
        raise HeaderProblem("no schema where an Arrow IPC stream starts")
    try:
        return pa.ipc.read_schema(pa.py_buffer(found[1])), found[2]
    except (pa.ArrowException, OSError, ValueError) as err:  # pyarrow says a damaged flatbuffer with an OSError
        raise HeaderProblem(f"a schema that cannot be read ({err})") from err


def _stream_headers(read_at: _Reads, size: int) -> IpcHeaders:
    """The IPC stream format: each message in turn, its body stepped over. After a body of a block or more, the next
    message is read with a small read of its own (a block would hold little but the next body's bytes)."""
    schema, at = _schema(read_at, 0, size)
    batches = []
    span = None
    while (found := _message(read_at, at, size, span)) is not None:
        message, meta, after = found
        span, at = (_PEEK if after - at - len(meta) >= read_at.block else None), after
        if message.number(1, "<B") == _RECORD_BATCH:
            if len(batches) == MAX_BATCHES:
                raise HeaderProblem(f"over {MAX_BATCHES:,} record batches, the most whose headers are read")
            batches.append(_batch(message))
    return IpcHeaders(schema, tuple(batches))
