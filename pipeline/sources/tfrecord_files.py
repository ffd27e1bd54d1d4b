"""TFRecord inputs: files of `tf.train.Example` records (TensorFlow Datasets, the TF Object Detection API, Ray Data's
`write_tfrecords`), named `.tfrecord`, `.tfrecords` or `.tfrec`, with a TFDS shard suffix or not
(`name-train.tfrecord-00000-of-00016`), plain, GZIP- or ZLIB-compressed (TensorFlow's compression types, told by the
file's first bytes; a GZIP one is often named with `.gz` after).
Read as a sequential container: record by record, one in memory at a time, never the whole file.

Each record is framed as: its length (uint64, little-endian), the masked CRC-32C of those 8 bytes, the data, the
masked CRC-32C of the data (`crc32c`). A length whose CRC does not match cannot be trusted to find the next record, so
it ends the file with its `#unreadable` reject, after the records before it, as a damaged Arrow IPC batch does; a
later run reads the file again, its done records skipped. Data whose CRC does not match is that record's reject.

A record's image is its bytes feature named like an image (`IMAGE_FEATURES`: `image/encoded` as the Object Detection
API writes, `image` as TFDS and Ray write, ...; `--image-column` names another); every other feature is a pass-through
column (`passthrough_name`): one value as that value (an int64 label an integer column), more as a list, bytes that
are UTF-8 as text, as a tar sidecar's; a list in every record where TFDS's `features.json` beside the file declares
one (`declared_list_features`), as a per-object feature is (`PER_OBJECT`). Ids are `shard.tfrecord#N`, N the
record's index, as a Parquet file's rows are named: these files are "parquet" read units (`sources.listing`),
resumed and recorded by `--incremental` as those are."""

from __future__ import annotations

import contextlib
import gzip
import posixpath
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from pipeline.sources.crc32c import masked_crc32c
from pipeline.sources.file_bytes import file_opener, too_large
from pipeline.sources.ids import relative_id, text_value, without_signed_query
from pipeline.sources.optional_files import RefusedFile, read_optional
from pipeline.sources.records import (
    LastingProblem,
    container_reject,
    image_record,
    is_lasting,
    passthrough_name,
    reject_record,
)
from pipeline.sources.tf_examples import ExampleProblem, parse_example
from pipeline.sources.tfds_metadata import FEATURES, TfdsProblem, declared_lists, metadata_folder, read_json
from pipeline.sources.units import ReadUnit
from pipeline.storage import backoff, concurrent_reads, describe, is_transient, storage_path

# '.tfrecord', a TFDS shard 'x.tfrecord-00000-of-00016', either with '.gz' (or '.gzip') after it
TFRECORD_NAME = re.compile(r"\.(?:tfrecords?|tfrec)(?:-\d+-of-\d+)?(?:\.gz|\.gzip)?$", re.IGNORECASE)
TFRECORD_FORMAT = "TFRecord"
# the features taken for the image, in this order, before any other bytes feature (as a Parquet file's image columns)
IMAGE_FEATURES = ("image/encoded", "image", "img", "image_bytes", "bytes", "jpg", "png", "encoded")
HEADER_BYTES = 12  # length (8) and its masked CRC (4)
GZIP_MAGIC = b"\x1f\x8b"
SKIP_CHUNK = 2**20  # what a skipped record's data is read in, from a file that cannot seek
ZLIB_CHUNK = 2**16  # compressed bytes read at once from a ZLIB file
NOTE_READERS = 16  # folders whose features.json the planning looks up at once (`features_json_notes`)


def is_tfrecord(path: str) -> bool:
    """Whether `path` is named as a TFRecord file (a presigned address's query is not part of its name)."""
    return TFRECORD_NAME.search(without_signed_query(path)) is not None


class FrameProblem(ValueError):
    """A record's framing that cannot be read: the records after it cannot be found."""


class NotTfrecord(FrameProblem, LastingProblem):
    """The file's first length does not match its CRC: its first bytes are no TFRecord record's, as they stay while it
    is unchanged (its reject is lasting: `records.LastingProblem`)."""


def _open_records(f: BinaryIO) -> BinaryIO:
    """The records' bytes of an opened file: `f` itself, or its GZIP stream decompressed as read. Plain records are
    told by their first header's CRC, so a plain file whose first length starts with GZIP's magic bytes is plain."""
    head = f.read(HEADER_BYTES)
    f = _rewound(f, head)
    plain = len(head) == HEADER_BYTES and masked_crc32c(head[:8]) == int.from_bytes(head[8:], "little")
    if not plain and head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if not plain and len(head) >= 2 and _zlib_header(head):
        return _Inflated(f)  # type: ignore[return-value]
    return f


def _zlib_header(head: bytes) -> bool:
    """Whether `head` starts as a ZLIB stream does (RFC 1950: deflate, a window of at most 32 KB, the check bits)."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


class _Inflated:
    """A ZLIB stream (TensorFlow's compression_type 'ZLIB') decompressed as read, at most `n` bytes a read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.inflate, self.ready = raw, zlib.decompressobj(), b""

    def read(self, n: int) -> bytes:
        while len(self.ready) < n and not self.inflate.eof:
            # input held back by the last call's limit first, so that the stream is inflated in its order
            data = self.inflate.unconsumed_tail or self.raw.read(ZLIB_CHUNK)
            if not data:
                raise EOFError("the ZLIB stream ends before its end")
            self.ready += self.inflate.decompress(data, n - len(self.ready))
        out, self.ready = self.ready[:n], self.ready[n:]
        return out

    def seekable(self) -> bool:
        return False


def _rewound(f: BinaryIO, head: bytes) -> BinaryIO:
    """`f` at its start again, `head` having been read from it: sought back, or, for a stream that cannot seek, with
    `head` put back in front. fsspec's streamed web file (a file of unknown size) says it can seek, and cannot."""
    try:
        if f.seekable():
            f.seek(0)
            return f
    except (OSError, ValueError):
        pass
    return _Prefixed(head, f)  # type: ignore[return-value]


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out + (self.rest.read(n - len(out)) if len(out) < n else b"")
        return self.rest.read(n)

    def seekable(self) -> bool:
        return False


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = f.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _skip(f: BinaryIO, n: int) -> int:
    """Move `n` bytes on in `f`, how many it moved: sought where it can (its last byte read, so that a file that ends
    sooner is told), else read and let go (a compressed or streamed file)."""
    if n and not isinstance(f, gzip.GzipFile | _Prefixed | _Inflated):
        try:
            at = f.tell()
            f.seek(at + n - 1)
            if len(f.read(1)) == 1:
                return n
            f.seek(at)  # it ends sooner: read on from where it was, to count what it holds
        except (OSError, ValueError):  # a stream that says it can seek and cannot: read on
            pass
    moved = 0
    while moved < n:
        chunk = f.read(min(SKIP_CHUNK, n - moved))
        if not chunk:
            break
        moved += len(chunk)
    return moved


def _header(f: BinaryIO, index: int) -> int | None:
    """Record `index`'s data length, its CRC checked; None at the file's end."""
    head = _read_exactly(f, HEADER_BYTES)
    if not head:
        return None
    if len(head) < HEADER_BYTES:
        raise FrameProblem(f"the file ends inside record {index}'s header ({len(head)} of {HEADER_BYTES} bytes)")
    if masked_crc32c(head[:8]) != int.from_bytes(head[8:], "little"):
        problem = NotTfrecord if index == 0 else FrameProblem  # damage after records is read again, as a cut-short read
        raise problem(f"record {index}'s length does not match its CRC (damaged, or not a TFRecord file)")
    return int.from_bytes(head[:8], "little")


def read_tfrecord(unit: ReadUnit, fs_opts: dict[str, Any], image_feature: str | None, in_memory_bytes: int,
                   max_image_bytes: int, skip_ids: frozenset[str] | set[str] = frozenset(),
                   attempts: int = 4) -> Iterator[dict[str, Any]]:
    """One record per TFRecord record, in order. A file of at most `in_memory_bytes` is fetched whole, a larger one
    streamed from storage; either way one record is in memory at a time. A record over `max_image_bytes` is a reject
    without its data being read (on a plain file, sought past), as is a done one (`skip_ids`): a "skipped" record. A
    transient storage error is retried with the file opened again, from the record it stopped at; one that persists,
    or damaged framing (`FrameProblem`, a broken GZIP stream), ends the file with its '#unreadable' reject."""
    (path,) = unit.paths
    rel = relative_id(path, unit.root)
    with contextlib.ExitStack() as stack:
        try:
            lists = declared_list_features(path, fs_opts)
            open_file = file_opener(path, fs_opts, in_memory_bytes, unit.sizes[0] if unit.sizes else None)
            f = _open_records(stack.enter_context(open_file()))
        except Exception as err:  # noqa: BLE001
            yield reject_record(f"{rel}#unreadable", path, f"unreadable {TFRECORD_FORMAT} file: {describe(err)}", "read")
            return

        def reopen(offset: int) -> BinaryIO:
            g = _open_records(stack.enter_context(open_file()))
            if _skip(g, offset) < offset:
                raise FrameProblem("the file is shorter than when it was first read")
            return g

        yield from _records(f, reopen, path, rel, image_feature, max_image_bytes, skip_ids, attempts, lists)


def declared_list_features(path: str, fs_opts: dict[str, Any]) -> frozenset[str]:
    """The features that the TFDS `features.json` beside the TFRecord file at `path` declares a list in every record
    (`tfds_metadata.declared_lists`: a Sequence, a Tensor of shape [None]); none where there is no such file, or one
    that is not as TFDS writes it (its features then typed by their values, as without one). A storage error reading
    it is raised: the file's reading would type those columns otherwise than its other shards'. So is a refusal of one
    that is there; one refused where the store will not say whether it is there (S3 without s3:ListBucket answers 403
    for a key that is not) is taken as absent (`optional_files`; the planning notes it, `features_json_notes`): most
    TFRecord files have none, and a run over keys granted alone would otherwise be all rejects."""
    folder = metadata_folder(path)
    return _features_json(folder, fs_opts)[0] if folder is not None else frozenset()


def _features_json(folder: str, fs_opts: dict[str, Any]) -> tuple[frozenset[str], str | None]:
    """`declared_list_features` of the TFRecord files in `folder`, and the note where its features.json was taken as
    absent for a refusal."""
    fs, features_path = storage_path(posixpath.join(folder, FEATURES), fs_opts)
    try:
        features, note = read_optional(lambda: read_json(folder, FEATURES, fs_opts), fs, features_path,
                                       "the TFRecord files beside it typed by their values")
        return (declared_lists(features) if features is not None else frozenset()), note
    except TfdsProblem:
        return frozenset(), None


def features_json_notes(paths: Iterable[str], fs_opts: dict[str, Any]) -> list[str]:
    """For the planning: of the folders of TFRecord files `paths`, a note for each whose features.json is taken as
    absent though refused (`optional_files.unknown_note`), or is there and refused (each file beside it a reject). One
    small request a folder, NOTE_READERS at a time; any other trouble is left to the files' read tasks to say."""

    def note(folder: str) -> str | None:
        try:
            return _features_json(folder, fs_opts)[1]
        except RefusedFile as err:
            return f"{err}; each TFRecord file beside it is a reject until then"
        except Exception:  # noqa: BLE001 - its read tasks say it, as the file's reject
            return None

    folders = sorted({folder for p in paths if is_tfrecord(p) and (folder := metadata_folder(p)) is not None})
    if not folders:
        return []
    threads = concurrent_reads(folders[0], min(NOTE_READERS, len(folders)))  # FTP: one
    with ThreadPoolExecutor(threads, thread_name_prefix="features-json") as pool:
        return [n for n in pool.map(note, folders) if n is not None]


def _records(f: BinaryIO, reopen: Callable[[int], BinaryIO], path: str, rel: str, image_feature: str | None,
             max_image_bytes: int, skip_ids: frozenset[str] | set[str], attempts: int,
             lists: frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    index = 0
    offset = 0  # where record `index` starts, in the records' bytes (decompressed)
    failures = 0
    lost = False  # a storage error cut a read short: the file is opened again at `offset` (its failure is one more)
    while True:
        try:
            if lost:
                f, lost = reopen(offset), False
            length = _header(f, index)
            if length is None:
                return
            id_, source = f"{rel}#{index}", f"{path}#{index}"
            if id_ in skip_ids or length > max_image_bytes:
                if _skip(f, length + 4) < length + 4:
                    raise FrameProblem(f"the file ends inside record {index}'s data")
                record = {"kind": "skipped", "id": id_} if id_ in skip_ids else reject_record(
                    id_, source, too_large(f"record {index}", length, max_image_bytes), "read")
            else:
                data = _read_exactly(f, length + 4)
                if len(data) < length + 4:
                    raise FrameProblem(f"the file ends inside record {index}'s data")
                record = _record(data, index, id_, source, image_feature, lists)
        except Exception as err:  # noqa: BLE001 - classified here
            if is_transient(err) and failures < attempts - 1:
                backoff(failures)
                failures += 1
                lost = True  # the old file's place is mid-record: never read on from it
                continue
            # a broken GZIP stream: zlib.error, EOFError (it ends early), gzip.BadGzipFile (an OSError)
            yield container_reject(f"{rel}#unreadable", path, f"{TFRECORD_FORMAT} file unreadable after {index} "
                                   f"records: {_said(err)}", is_lasting(err))
            return
        yield record
        failures = 0
        offset += HEADER_BYTES + length + 4
        index += 1


def _said(err: BaseException) -> str:
    if isinstance(err, FrameProblem):
        return str(err)
    if isinstance(err, zlib.error | EOFError | gzip.BadGzipFile):
        return f"its compression (GZIP or ZLIB) is damaged ({describe(err)})"
    return describe(err)


def _record(data: bytes, index: int, id_: str, source: str, image_feature: str | None,
            lists: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Record `index`'s image record from its framed data (the data and its masked CRC), or its reject. `lists`: the
    features declared a list in every record (`declared_list_features`), as a per-object feature is."""
    body = memoryview(data)[:-4]
    if masked_crc32c(body) != int.from_bytes(data[-4:], "little"):
        return reject_record(id_, source, f"record {index}: its data does not match its CRC (damaged)", "read")
    try:
        features = parse_example(body)
    except ExampleProblem as err:
        return reject_record(id_, source, f"record {index} is not a tf.train.Example: {err}", "read")
    name = image_feature_of(features, image_feature)
    if name is None:
        wanted = repr(image_feature) if image_feature else ", ".join(map(repr, IMAGE_FEATURES))
        return reject_record(id_, source, f"record {index}: no image feature ({wanted}) among its features "
                             f"{sorted(features)}; --image-column names the feature holding the image", "read")
    kind, values = features[name]
    if kind != "bytes_list" or len(values) != 1 or not values[0]:
        held = ("no bytes" if values == [b""] else f"{len(values)} values" if kind == "bytes_list" else
                f"a {kind}" if kind else "no values")
        return reject_record(id_, source, f"record {index}: image feature {name!r} holds {held}, not one image's "
                             "bytes", "read")
    meta = {passthrough_name(n): _value(kind, values, per_object=is_per_object(n) or n in lists)
            for n, (kind, values) in features.items() if n != name}
    return image_record(id_, source, values[0], meta)


def image_feature_problem(unit: ReadUnit, fs_opts: dict[str, Any], requested: str) -> str | None:
    """Why --image-column `requested` cannot be the image feature of this TFRecord file, from its first record alone
    (streamed: nothing more is fetched), or None. Checked before any work, as a Parquet file's footer is
    (`parquet_files.image_column_problem`): a misspelt name made every record a reject in a run that ended complete.
    A file whose first record cannot be read, or is no Example, is left to the run, where it is a reject."""
    (path,) = unit.paths
    try:
        with contextlib.ExitStack() as stack:
            f = _open_records(stack.enter_context(file_opener(path, fs_opts, 0, unit.sizes[0] if unit.sizes else None)()))
            length = _header(f, 0)
            if length is None or length > 2**30:
                return None
            features = parse_example(_read_exactly(f, length))
    except Exception:  # noqa: BLE001 - the run rejects what it cannot read, with the reason
        return None
    if requested in features:
        return None
    return (f"--image-column {requested}: no feature {requested!r} in the first record of {TFRECORD_FORMAT} file "
            f"{path}, whose features are {sorted(features)}")


def image_feature_of(features: dict[str, tuple[str | None, list[Any]]], requested: str | None) -> str | None:
    """The feature holding a record's image: `requested` (--image-column) if the record has it; else the first of
    `IMAGE_FEATURES` it has as bytes; else its one bytes feature of one value that is not UTF-8 text (a lone binary
    feature, whatever its name); None when there is none, or more than one such."""
    if requested:
        return requested if requested in features else None
    for name in IMAGE_FEATURES:
        if features.get(name, (None,))[0] == "bytes_list":
            return name
    binary = [n for n, (kind, values) in features.items()
              if kind == "bytes_list" and len(values) == 1 and not _is_text(values[0])]
    return binary[0] if len(binary) == 1 else None


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# A feature of one value per object in the image: the Object Detection API's `image/object/bbox/xmin`,
# `image/object/class/label`, TensorFlow Datasets' `objects/bbox`. Its list of one value (an image with one object)
# stays a list: taken as a scalar there, beside lists of two or more elsewhere, the column had no one type and was
# written as text ('0.25', '[0.25, 0.5]').
PER_OBJECT = re.compile(r"(?:^|/)objects?/")


def is_per_object(name: str) -> bool:
    """Whether feature `name` holds one value per object of its image (`PER_OBJECT`): always a list."""
    return PER_OBJECT.search(name) is not None


def _value(kind: str | None, values: list[Any], per_object: bool = False) -> Any:
    """A pass-through feature's column value: one value as itself, more (or none) as a list, and a per-object
    feature's values always as a list (`PER_OBJECT`). One bytes value that is UTF-8 is text (`text_value`, as a tar
    sidecar's), else kept as bytes; a list of bytes is a list of text, each value that is not UTF-8 written as a
    sidecar's text is (`\\xNN` escapes, readable back with `ids.unescaped`): a list mixing text and bytes has no Arrow
    type, and its bytes were written as their Python repr."""
    if kind == "bytes_list" and len(values) == 1 and not per_object:
        return text_value(values[0].decode("utf-8")) if _is_text(values[0]) else values[0]
    if kind == "bytes_list":
        return [text_value(v.decode("utf-8", "surrogateescape")) for v in values]
    return values[0] if len(values) == 1 and not per_object else values


# The files TensorFlow Datasets keeps beside a prepared data set's TFRecord shards: its description, its features'
# structure, and a ClassLabel feature's names ('label.labels.txt'); no images
TFDS_FILES = ("dataset_info.json", "features.json")
TFDS_LABELS_SUFFIX = ".labels.txt"


def is_tfds_metadata_name(name: str) -> bool:
    """Whether a file's name is one of a TFDS data set's metadata files (`TFDS_FILES`, a `.labels.txt`)."""
    base = posixpath.basename(name)
    return base in TFDS_FILES or base.endswith(TFDS_LABELS_SUFFIX)


def tfds_metadata(paths: Iterable[str]) -> list[str]:
    """Of listed `paths`, the metadata files of a data set TFDS prepared (`is_tfds_metadata_name`) in a folder that
    holds a listed TFRecord file. They are not images: the listing skips them as it skips hidden files, counted with
    them (each was a reject, 'not a recognised image format', as if an input were damaged)."""
    paths = list(paths)
    folders = {posixpath.dirname(p) for p in paths if is_tfrecord(p)}
    return [p for p in paths if posixpath.dirname(p) in folders and is_tfds_metadata_name(p)] if folders else []
