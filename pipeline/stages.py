"""The job's stages: small functions over batches of records, and one stateful actor (the model), which lives in
`pipeline.purify_stage` so that its process imports none of the readers (its names are re-exported here).

Each Ray row holds one pickled `record` dict (see `pipeline.sources.records` for the kinds). Records are
heterogeneous (images, rejects, counts, canvases) and carry arbitrary pass-through values; one
opaque binary column keeps every stage's schema the same and lets Arrow move them without
guessing types. Only our own stages write and read these pickles.

Every stage passes records it does not handle through unchanged, so nothing can vanish
between reading and writing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.arrow_values import extension_python, times_as_text
from pipeline.decode import Decoded, DecodePolicy, decode_image, encode_png, image_format_of
from pipeline.errors import NotOnThisNodeError

# the purifier actor's names, re-exported: pipeline.stages is where the job's other modules and its tests find them
from pipeline.purify_stage import (  # noqa: F401
    ALL_CORES,
    CLUSTER_PATH_FIX,
    FAULT_ENV,
    PURIFIER_RESTARTS,
    PURIFY_ATTEMPTS,
    PurifyStage,
    _maybe_inject_fault,
    batch_of,
    cell_psnr,
    check_checkpoint_seen,
    check_store_here,
    driver_faults,
    long_lived_objects_made,
    node_name,
    records_of,
    this_nodes_checkpoint,
    unusable_gpus,
    wait_at_gate,
)
from pipeline.sources import (
    HIDDEN_EXAMPLES,
    IMAGE_EXTENSIONS,
    IN_MEMORY_BYTES,
    JOB_COLUMNS,
    MAX_IMAGE_BYTES,
    ReadUnit,
    ids_key,
    read_unit,
    reject_record,
    text_name,
    text_value,
)
from pipeline.sources.folder_metadata import UNMATCHED_EXAMPLES, is_folder_metadata, table_note
from pipeline.storage import (
    TEMP_PREFIX,
    discard,
    local_file_path,
    make_parent_dirs,
    move_into_place,
    storage_path,
    with_retries,
)
from pipeline.tiling import pack, plan_layout, unpack

Batch = dict[str, Any]


# --- local paths on a Ray cluster ----------------------------------------------------------------------


def as_the_driver_sees(uri: str) -> str:
    """`uri` as the driver names it to a task or actor: a local path (a bare path, file://) made this process's absolute
    path, '~' and a relative path read here; any other store's URI as it is. A task resolves a relative path against
    its worker's folder, which is the folder Ray was started in (the job's own Ray: where the program first ran a job;
    a `ray start` head: where that ran), not the driver's: a run from another folder, or a program's later run after
    os.chdir, wrote its part files elsewhere, or was stopped as if on another node."""
    path = local_file_path(uri)
    return uri if path is None else path


def _seen_here(path: str) -> bool:
    """Whether file `path` is there on this node. A file another machine of a shared file system (NFS) wrote moments
    ago and that a stat does not find is looked for once more in its folder's listing, which asks the server."""
    if os.path.exists(path):
        return True
    try:
        return os.path.basename(path) in os.listdir(os.path.dirname(path) or ".")
    except OSError:
        return False


def check_input_root(root: str) -> None:
    """Before a read task reads a unit: its input folder (the one the driver listed), when local, must be there on this
    node, or each of its files would be rejected as not found though the driver's disk holds it. A single file gone
    since the listing stays that file's reject (`read_unit`)."""
    path = local_file_path(root)
    if path is not None and not os.path.isdir(path):
        raise NotOnThisNodeError(f"--input folder {root} is not there on node {node_name()}, where a read task ran "
                                 f"(or it was removed since the run listed it): {CLUSTER_PATH_FIX}")


def check_output_seen(output: str, start_file: str | None) -> None:
    """Before a write task writes into a local output: `start_file`, a file the driver wrote in the output at the run's
    start, must be there on this node. Otherwise the part file would land on this node's own disk, where the driver's
    end-of-run check and the next run never see it: nothing is written (no folder made) and the run stops."""
    path = None if start_file is None else local_file_path(start_file)
    if path is not None and not _seen_here(path):
        raise NotOnThisNodeError(f"--output {output} on node {node_name()}, where a write task ran, lacks the file "
                                 f"{_last_two(path)} this run wrote there at its start (or the folder was "
                                 f"removed since): {CLUSTER_PATH_FIX}")


def _last_two(path: str) -> str:
    """A path's folder and name ('_runs/x.json'): a file of the output, named within it."""
    return posixpath.join(posixpath.basename(posixpath.dirname(path)), posixpath.basename(path))


def read_stage(batch: Batch, storage_options: dict[str, Any], labels_from_folders: bool,
               image_column: str | None, skip_ids: frozenset[str], max_records: int = 256,
               in_memory_bytes: int = IN_MEMORY_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES,
               max_bytes: int = 16 * 2**20, partitioning: str = "none", join_metadata: bool = False) -> Iterator[Batch]:
    """Units in; raw image/reject/count records out, in batches of at most `max_records`, so a large unit
    (a tar shard or Parquet file of many thousands of images) is decoded and tiled a batch at a time instead
    of sitting in a worker's memory whole. A batch is handed on as soon as its images' bytes reach `max_bytes`
    too: `max_records` images of up to `max_image_bytes` each would otherwise pile up in the read task.
    A row's own "skip" ids (the done ids of its tar, Parquet or zip file) are skipped besides `skip_ids`; its
    "purified" ids, those of them in data/ (`sources.read_unit`), tell a tar member added beside a purified one; its
    "named" ids, a tar shard's ids an earlier version named from its members' names, are kept by its keys.
    `partitioning` "hive": each image gets its file's `key=value` folders as columns (`sources.partitions`).
    A row's "metadata": its image files' rows of image-folder metadata files (`sources.folder_metadata`); its
    "sidecars": their sidecar files (`sources.sidecar_files`).
    A local input folder that is not there on this node stops the run (`check_input_root`)."""
    pending: list[dict[str, Any]] = []
    size = 0
    count = len(batch["kind"])
    sizes = batch.get("sizes", [None] * count)
    own_skips = batch.get("skip", [None] * count)
    own_purified = batch.get("purified", [None] * count)
    own_named = batch.get("named", [None] * count)
    metadata = batch.get("metadata", [""] * count)
    sidecars = batch.get("sidecars", [""] * count)
    for kind, paths, root, listed, own, purified, named, joined, beside in zip(
            batch["kind"], batch["paths"], batch["root"], sizes, own_skips, own_purified, own_named, metadata, sidecars,
            strict=True):
        check_input_root(root)
        check_store_here(root, "--input", "read task")
        unit = ReadUnit.from_row({"kind": kind, "paths": list(paths), "root": root,
                                  "sizes": None if listed is None else [int(size) for size in listed]})
        skip = skip_ids if own is None or not len(own) else skip_ids | frozenset(own)
        for record in read_unit(unit, storage_options, labels_from_folders, image_column, skip, in_memory_bytes,
                                max_image_bytes, frozenset(purified) if purified is not None else frozenset(),
                                partitioning, str(joined or ""), join_metadata, str(beside or ""),
                                frozenset(named) if named is not None else frozenset()):
            pending.append(record)
            size += len(record.get("data", b""))
            if len(pending) >= max_records or size >= max_bytes:
                yield batch_of(pending)
                pending, size = [], 0
    if pending:
        yield batch_of(pending)


def decode_stage(batch: Batch, policy: DecodePolicy) -> Batch:
    """Image bytes to RGB pixels; undecodable inputs become rejects with the reason."""
    out = []
    for r in records_of(batch):
        if r["kind"] == "image" and "data" in r:
            decoded = decode_image(r.pop("data"), policy)
            if isinstance(decoded, Decoded):
                # a Parquet row of pixel arrays was made a PNG to be decoded here: its format says so ("tensor"), and
                # its mode where the PNG's would not (16-bit colour: "RGB;16")
                r.update(pixels=decoded.pixels, original_mode=r.get("original_mode") or decoded.mode,
                         original_format=r.get("original_format") or decoded.format,
                         original_frames=decoded.frames)
            else:  # a Parquet row whose image column was found, not named: which column, and the others
                note = f" ({r['decode_note']})" if r.get("decode_note") else _metadata_file_note(r["id"])
                r = reject_record(r["id"], r["source"], decoded + note, "decode", r["source_sha256"])
        out.append(r)
    return batch_of(out)


def _metadata_file_note(id_: str) -> str:
    """For the reject of a file named as an imagefolder's metadata that reached the decoder (a folder's or zip
    archive's with --join-metadata false; a tar shard's is a key with no image, rejected as read), or of a table of
    text under another name (`table_note`): what it is, and that its columns are not joined (it read as 'not a
    recognised image format' alone, as if an image were damaged)."""
    if not is_folder_metadata(id_):
        note = table_note(id_)
        return f" ({note})" if note else ""
    return (" (an image folder's metadata file, as Hugging Face's imagefolder layout keeps labels and captions: its "
            "columns are not joined to the images, which are purified without them: with --join-metadata true they "
            "are; else join them to the output's rows by its file_name, the row's id relative to the file's folder)")


def canvas_seed(seed: int, ids: Iterable[str]) -> int:
    """A canvas's noise seed from its images' ids: reruns and resumes give the same output."""
    # surrogatepass: the same bytes as before for text ids; one that is not text cannot stop the run
    return zlib.crc32("\n".join(ids).encode("utf-8", "surrogatepass"), seed & 0xFFFFFFFF) & 0x7FFFFFFF


def tile_stage(batch: Batch, canvas_size: int, align: int, large_images: str, seed: int,
               max_images: int = 256) -> Batch:
    """Pack the batch's images onto canvases, `max_images` at a time (by size and order only, never by label)."""
    records = records_of(batch)
    all_images = [r for r in records if r["kind"] == "image"]
    out = [r for r in records if r["kind"] != "image"]
    for start in range(0, len(all_images), max_images):
        images = all_images[start : start + max_images]
        layout = plan_layout([r["pixels"].shape[:2] for r in images], canvas_size, align, large_images)
        canvases = pack([r["pixels"] for r in images], layout)
        members: list[list[dict[str, Any]]] = [[] for _ in range(layout.num_canvases)]
        for r, placement in zip(images, layout.placements, strict=True):
            r = {k: v for k, v in r.items() if k != "pixels"}
            members[placement.canvas].append({**r, "placement": placement})
        for i, canvas in enumerate(canvases):
            ids = [m["id"] for m in members[i]]
            out.append({"kind": "canvas", "canvas": canvas, "members": members[i], "seed": canvas_seed(seed, ids)})
    return batch_of(out)


def read_decode_tile_stage(batch: Batch, read: dict[str, Any], decode: dict[str, Any],
                           tile: dict[str, Any]) -> Iterator[Batch]:
    """`read_stage`, then `decode_stage` and `tile_stage` on each batch it yields, in the same task: a read worker
    holds one batch of decoded images at a time. As three Ray Data stages (fused into one task all the same) they did
    not, since Ray Data gathers what a stage yields into blocks of up to 16 MB before the next stage sees it: decode
    got six read batches of a tar at once (1,536 Imagenette images, 231 MB of pixels), and Ray Data warned every 30 s
    that a read worker used 1.2 GiB. One tar of 8,000 PNGs of 128 px (`bench/job_bench.py memory`): the read worker's
    private peak 305-309 MB before, 203 MB after.
    `read`, `decode`, `tile`: each stage's keyword arguments."""
    for records in read_stage(batch, **read):
        yield tile_stage(decode_stage(records, **decode), **tile)


def untile_stage(batch: Batch, canvas_size: int, align: int, max_bytes: int = 16 * 2**20) -> Iterator[Batch]:
    """Canvases back to one record per image, at the image's original size, handed on in batches of about
    `max_bytes` of pixels: an image shrunk to fit the canvas grows back here (a 128 px image on a 32 px canvas
    16-fold), so a block of canvases can untile into many times its own size."""
    from pipeline.tiling import MosaicLayout, Placement

    out: list[dict[str, Any]] = []
    size = 0
    for r in records_of(batch):
        if r["kind"] != "canvas":
            out.append(r)
            continue
        placements = tuple(Placement(0, *_placement_fields(m["placement"])) for m in r["members"])
        layout = MosaicLayout(canvas_size, align, placements, 1)
        for member, pixels in zip(r["members"], unpack(r["canvas"][None], layout), strict=True):
            downscale = member["placement"].downscale
            member = {k: v for k, v in member.items() if k != "placement"}
            out.append({**member, "pixels": pixels, "downscale_factor": downscale})
            size += pixels.nbytes
        if size >= max_bytes:
            yield batch_of(out)
            out, size = [], 0
    if out:
        yield batch_of(out)


def _placement_fields(p: Any) -> tuple[int, ...]:
    return (p.top, p.left, p.height, p.width, p.original_height, p.original_width)


def encode_stage(batch: Batch) -> Batch:
    """Purified pixels to lossless PNG at the original size."""
    out = []
    for r in records_of(batch):
        if r["kind"] == "image" and "pixels" in r:
            pixels = r.pop("pixels")
            r.update(png=encode_png(pixels), height=int(pixels.shape[0]), width=int(pixels.shape[1]))
        out.append(r)
    return batch_of(out)


# --- writing ---------------------------------------------------------------------------------------

DATA_DIR, REJECTS_DIR = "data", "rejects"


def _png_name(id_: str) -> str:
    """The image's file name in the output (the `path` of Hugging Face's image struct): the id's last part, its image
    extension replaced by .png. Only an image extension goes: a tar key 'cat.0' or a Parquet row 't.parquet#3'
    must not all be named 'cat.png' or 't.png'."""
    name = posixpath.basename(id_.replace("#", "_"))
    stem, ext = posixpath.splitext(name)
    return (stem if ext.lower() in IMAGE_EXTENSIONS else name or "image") + ".png"


# The job's own columns of a data/ part file before its pass-through columns, and after them (`data_column_order`).
LEADING_COLUMNS = ("id", "image", "width", "height")
TRAILING_COLUMNS = ("source", "source_sha256", "original_mode", "original_format", "original_frames", "psnr_vs_input_db",
                    "downscale_factor")


def data_column_order(names: Iterable[str]) -> list[str]:
    """`names`, a data/ part file's columns, in the order the writer gives them: the job's leading columns, the
    pass-through ones by name, then the job's others. The end of a run puts every part file's columns in this order
    where the files disagree (`pipeline.output.unify_output_types`)."""
    held = set(names)
    job = set(LEADING_COLUMNS) | set(TRAILING_COLUMNS)
    return ([n for n in LEADING_COLUMNS if n in held] + sorted(held - job)
            + [n for n in TRAILING_COLUMNS if n in held])


def _data_table(records: list[dict[str, Any]]) -> pa.Table:
    passthrough = sorted({k for r in records for k in r["meta"]})
    # The readers name an input's own `id`, `source`, ... input_id, input_source (sources.passthrough_name): a
    # pass-through column named like one of the job's would lose one of the two values here.
    clash = set(passthrough) & (JOB_COLUMNS - {"original_path"})
    if clash:
        raise RuntimeError(f"pass-through columns {sorted(clash)} reached the writer under the job's own column names")
    rows = []
    for r in records:
        row = {"id": r["id"], "image": {"bytes": r["png"], "path": _png_name(r["id"])},
               "width": r["width"], "height": r["height"]}
        row.update({k: r["meta"].get(k) for k in passthrough})
        row.update(source=r["source"], source_sha256=r["source_sha256"], original_mode=r.get("original_mode"),
                   original_format=r.get("original_format"), original_frames=r.get("original_frames"),
                   psnr_vs_input_db=r.get("psnr_vs_input_db"),
                   downscale_factor=r.get("downscale_factor"))
        rows.append(row)
    names = data_column_order(rows[0]) if rows else []
    types = {name: _input_type(records, name) for name in passthrough}
    for name in passthrough:  # an extension type's storage value, where the column is not of that type: its own value
        for row, r in zip(rows, records, strict=True):
            own = r.get("meta_types", {}).get(name)
            if isinstance(own, pa.BaseExtensionType) and own != types[name]:
                row[name] = extension_python(row[name], own)
    return pa.table({name: _column([row[name] for row in rows], types.get(name)) for name in names})


def _input_type(records: list[dict[str, Any]], name: str) -> pa.DataType | None:
    """The Arrow type Parquet inputs gave pass-through column `name`, when every record holding it has one (records of
    tar sidecars do not); else None, and the type is inferred. Parquet files that disagree get one type every file can
    be given, as the end of the run gives part files (`common_column_types`): a file where the column is all nulls
    (Arrow type null) takes the others' type, and int16 with int32 is int32, so that a batch mixing such files does
    not widen a float32 to double or an int16 to int64. Types that share none (a date32 with a timestamp, a naive
    timestamp with a zoned one) give string, as the end of the run gives them: the type Arrow guessed from the Python
    values cut a timestamp to its date, or dropped its zone."""
    found = set()
    for r in records:
        if name in r["meta"]:
            t = r.get("meta_types", {}).get(name)
            if t is None:
                return None
            found.add(t)
    typed = {t for t in found if not pa.types.is_null(t)}
    if len(typed) <= 1:
        return typed.pop() if typed else (found.pop() if found else None)
    return promoted_type(typed) or pa.string()


def promoted_type(types: set[pa.DataType]) -> pa.DataType | None:
    """The one type every one of `types` can be given by Arrow's permissive promotion (int16 and int32 -> int32, int64
    and double -> double), or None when there is none. Text with bytes is text (string), not Arrow's binary: the text
    of a column, written as its sidecar's or its text column's escapes (`text_value`), then read as bytes, and the
    bytes then read as UTF-8, gave some values other bytes than their own (`_as_text` writes the bytes as text)."""
    if any(_text_type(t) for t in types) and any(_bytes_type(t) for t in types):
        return pa.string()
    try:
        return pa.unify_schemas([pa.schema([("c", t)]) for t in types], promote_options="permissive").field("c").type
    except (pa.ArrowException, TypeError, ValueError):
        return None


def _text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _bytes_type(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _column(values: list[Any], input_type: pa.DataType | None = None) -> pa.Array:
    """One column of the data table: of `input_type` (the Parquet input's own) when its values still fit it, else its
    type inferred as Arrow does. Pass-through values need not agree on a type (a .cls label that is 3 in one record and
    "cat" in another, a JSON key holding a number or a string): such a column is written as strings, other values as
    their JSON text and nulls as nulls, so that no value is lost and the write cannot fail. So is a column whose
    inferred type Parquet cannot write: an empty object ({}) gives a struct with no fields, and every write failed.
    Text and bytes together make a text column too, its bytes escaped (`text_column`), as at the end of the run
    (`promoted_type`): Arrow made them binary, the text's escapes (a latin-1 caption's \\xe9) left in the bytes."""
    if any(isinstance(v, str) for v in values) and any(isinstance(v, bytes) for v in values):
        return text_column(values)
    if input_type is not None and _text_type(input_type) and any(v is not None and not isinstance(v, str) for v in values):
        return text_column(values)  # Parquet inputs whose types share none (`_input_type`): each value's text
    if input_type is not None:
        try:
            return pa.array(values, type=input_type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass  # e.g. float16, which Arrow will not build from Python floats: inferred as before
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return text_column(values)
    return array if _writable(array.type) else text_column(values)


def _writable(t: pa.DataType) -> bool:
    """Whether Parquet can write a column of type `t`: no struct in it without fields."""
    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(_writable(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _writable(t.value_type)
    return True


def text_column(values: list[Any]) -> pa.Array:
    """Values as a string column: strings kept (a lone surrogate, as a JSON sidecar's "\\ud800" gives, written as that
    escape: a Parquet string must be UTF-8), nulls kept, bytes (a sidecar that is not UTF-8, beside text ones) as text
    written as a sidecar's text is (`text_value`: b'caf\\xe9' as 'caf\\xe9', b'caf\\\\xe9' as 'caf\\\\\\xe9', readable
    back with `unescaped`), anything else as its JSON text."""
    return pa.array([_as_text(v) for v in values], pa.string())


def _as_text(value: Any) -> str | None:
    if isinstance(value, bytes):  # json.dumps(default=str) wrote its repr, "b'\\xff'", which reads as neither
        return text_value(value.decode("utf-8", "surrogateescape"))
    if value is None or isinstance(value, str) and value.isascii():
        return value
    return text_name(value) if isinstance(value, str) else json.dumps(times_as_text(value), default=str)


# When a reject row was made: the end-of-run check keeps the newest of an id's reject rows (pipeline.output).
REJECTED_AT = "rejected_at"
REJECTS_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("source_sha256", pa.string()),
                            ("stage", pa.string()), ("error", pa.string()),
                            (REJECTED_AT, pa.timestamp("us", tz="UTC"))])


def _rejects_table(records: list[dict[str, Any]]) -> pa.Table:
    # One schema for every file, whatever its rows hold: a row without a time (a record made elsewhere) is null,
    # which the end-of-run check ranks oldest, and the column keeps its type.
    return pa.Table.from_pylist([{f: r.get(f) for f in REJECTS_SCHEMA.names} for r in records], schema=REJECTS_SCHEMA)


PAGE_ROWS = 8  # see write_parquet_atomic


def write_parquet_atomic(table: pa.Table, uri: str, storage_options: dict[str, Any]) -> None:
    """Write to a hidden temporary name, then move into place: readers never see half a file.

    The temporary name starts with '.' (Arrow, pandas and Spark skip it in a folder; the job lists part-* files only)
    and does not end in .parquet, so a '*.parquet' glob (fsspec's matches hidden names) skips a leftover one too: on an
    object store that is a whole copy of a part file, whose rows it would count twice. Writing and moving are retried
    apart (`move_into_place`), so a failed delete of the temporary copy does not upload the file again."""
    fs, path = storage_path(uri, storage_options)
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}.tmp")
    buf = io.BytesIO()
    # Arrow closes a page only between batches of write_batch_size values (1,024 by default), so 512 large images
    # made one page that any reader of a single row had to hold whole; batches of 8 keep pages near 1 MB.
    pq.write_table(table, buf, compression="zstd", write_batch_size=PAGE_ROWS)
    data = buf.getvalue()

    def put() -> None:
        make_parent_dirs(fs, folder)
        fs.pipe_file(tmp, data)

    try:
        with_retries(put, f"write {uri}")
        move_into_place(fs, tmp, path, len(data), f"write {uri}")
    except Exception:
        discard(fs, tmp)  # a failed write leaves no half-written temporary file behind where it can help it
        raise


def part_name(ids: list[str], salt: str = "") -> str:
    """Deterministic from the ids it holds (and the run's `salt`), so a retried write replaces its own file. A
    --refresh-changed run gives a salt of its own, so that no new row lands in the file of an old one under the same
    name: its journal tells a new row by the file it is in (`pipeline.refresh`)."""
    key = ids_key(ids) + (b"\0salt\0" + salt.encode() if salt else b"")
    return "part-" + hashlib.sha1(key).hexdigest()[:20] + ".parquet"


def unpurified_images(records: list[dict[str, Any]]) -> dict[str, int]:
    """Pass-through column -> how many of these purified rows hold an image in it (bytes, or an image struct's
    'bytes'): a Parquet data set's thumbnail or second view, a tar shard's '.seg.png' mask. The job purifies one image
    per row and copies the rest as they came, so a trigger there reaches the output: the run says so."""
    found: dict[str, int] = {}
    for r in records:
        for column, value in r["meta"].items():
            data = value.get("bytes") if isinstance(value, dict) else value
            if image_format_of(data) is not None:
                found[column] = found.get(column, 0) + 1
    return found


def write_stage(batch: Batch, output: str, storage_options: dict[str, Any], max_rows_per_file: int = 512,
                name_salt: str = "", start_file: str | None = None) -> Batch:
    """Write purified images to data/ and rejects to rejects/ (files of at most max_rows_per_file rows; their names
    `part_name` of their ids and `name_salt`); return one manifest row. `start_file`: a file the driver wrote in a
    local output at the run's start, which this node must see before it writes there (`check_output_seen`)."""
    check_output_seen(output, start_file)
    check_store_here(output, "--output", "write task")
    records = records_of(batch)
    images = [r for r in records if r["kind"] == "image"]
    rejects = [r for r in records if r["kind"] == "reject"]
    read_count = sum(r["n"] for r in records if r["kind"] == "count")
    skipped = sum(r["skipped"] for r in records if r["kind"] == "count")
    # hidden entries the read units skipped (a zip's __MACOSX/): counted apart, never read, purified or rejected
    hidden = sum(r.get("hidden", 0) for r in records if r["kind"] == "count")
    hidden_examples = [name for r in records if r["kind"] == "count" for name in r.get("hidden_examples", [])]
    # containers read to their end (pipeline.ledger records them once the run is complete)
    containers = [r["container"] for r in records if r["kind"] == "count" and "container" in r]
    # a zip archive's or tar shard's image-folder metadata members joined, and their rows that name no member
    archive_metadata = {"joined": sum(r.get("metadata_joined", 0) for r in records if r["kind"] == "count"),
                        "unmatched": sum(r.get("metadata_unmatched", 0) for r in records if r["kind"] == "count"),
                        "unmatched_examples": [e for r in records if r["kind"] == "count"
                                               for e in r.get("metadata_unmatched_examples", [])][:UNMATCHED_EXAMPLES]}
    unknown = [r["kind"] for r in records if r["kind"] not in ("image", "reject", "count")]
    if unknown:
        raise RuntimeError(f"records of kinds {sorted(set(unknown))} reached the writer; a stage dropped its work")
    files = []
    file_rows = {}
    for folder, rows, to_table in ((DATA_DIR, images, _data_table), (REJECTS_DIR, rejects, _rejects_table)):
        for start in range(0, len(rows), max_rows_per_file):
            chunk = rows[start : start + max_rows_per_file]
            name = part_name([r["id"] for r in chunk], name_salt)
            write_parquet_atomic(to_table(chunk), f"{output.rstrip('/')}/{folder}/{name}", storage_options)
            files.append(f"{folder}/{name}")
            file_rows[f"{folder}/{name}"] = len(chunk)
    psnrs = [r["psnr_vs_input_db"] for r in images if r.get("psnr_vs_input_db") is not None]
    downscales = [r["downscale_factor"] for r in images if r.get("downscale_factor", 1.0) > 1.0]
    finite = [v for v in psnrs if math.isfinite(v)]
    return {"purified": np.array([len(images)]), "rejected": np.array([len(rejects)]),
            "read": np.array([read_count]), "skipped": np.array([skipped]), "files": np.array([json.dumps(files)]),
            "hidden": np.array([hidden]), "hidden_examples": np.array([json.dumps(hidden_examples[:HIDDEN_EXAMPLES])]),
            "unpurified_images": np.array([json.dumps(unpurified_images(images))]),
            # rows per file: a stopped run's driver counts what landed by file (pipeline.stopped_run.count_stopped_run)
            "file_rows": np.array([json.dumps(file_rows)]),
            "containers": np.array([json.dumps(containers)]),
            "archive_metadata": np.array([json.dumps(archive_metadata)]),
            "units_read": np.array([sum(r["kind"] == "count" for r in records)]),  # one count record per read unit
            "written_at": np.array([time.time()]),
            # per-image change, summed here so the driver can report its mean and minimum for the whole run
            "psnr_sum": np.array([float(sum(finite))]), "psnr_count": np.array([len(finite)]),
            "psnr_min": np.array([min(finite) if finite else math.inf]),
            "unchanged": np.array([len(psnrs) - len(finite)]),
            # images larger than the model's canvas, shrunk to fit it: they come back with the canvas's detail
            "downscaled": np.array([len(downscales)]), "downscale_max": np.array([max(downscales, default=1.0)])}
