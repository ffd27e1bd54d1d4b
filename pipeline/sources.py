"""Input discovery and raw reading: folders of image files, tar shards, Parquet files.

The reader yields raw bytes plus metadata, one record per input image; decoding happens in a
later stage so that a bad file becomes one reject row, never a failed block. Every record has
a stable `id` (what resume and incremental runs key on) and a `source` saying where it came from.

Record kinds flowing through the job:
- "image": id, source, source_sha256, data (bytes), meta (pass-through columns, e.g. label)
- "reject": id, source, source_sha256 (may be None), error, stage
- "count": n — how many image+reject records one read unit produced (checks read = purified + rejected)
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import describe, with_retries

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".webp", ".gif"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz")
PARQUET_SUFFIXES = (".parquet", ".pq")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "image_bytes", "bytes", "jpg", "png")


@dataclass(frozen=True)
class ReadUnit:
    """One task's worth of input: a tar shard, a Parquet file, or a group of image files."""

    kind: str  # "files" | "tar" | "parquet"
    paths: tuple[str, ...]  # full fsspec paths (protocol included)
    root: str  # the input root, to make ids relative

    def to_row(self) -> dict[str, Any]:
        return {"kind": self.kind, "paths": list(self.paths), "root": self.root}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReadUnit:
        return cls(row["kind"], tuple(row["paths"]), row["root"])


def read_bytes(path: str, storage_options: dict[str, Any]) -> bytes:
    """The whole object, retrying transient storage errors."""

    def once() -> bytes:
        with fsspec.open(path, "rb", **storage_options) as f:
            return f.read()

    return with_retries(once, f"read {path}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def relative_id(path: str, root: str) -> str:
    """A path relative to the input root, '/'-separated (the record id for file inputs)."""
    path, root = path.split("://", 1)[-1], root.split("://", 1)[-1].rstrip("/")
    if path == root:
        return posixpath.basename(path)
    return posixpath.relpath(path, root)


def discover(uri: str, storage_options: dict[str, Any] | None = None, files_per_unit: int = 64) -> list[ReadUnit]:
    """List the input units under `uri` (a file or a folder/prefix), sorted, hidden files skipped.

    Every non-hidden file is an input: tar and Parquet files by suffix, everything else as an image
    file (its content decides; a non-image ends up in rejects with the reason, never silently dropped).
    """
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(root):
        raise FileNotFoundError(f"input {uri} does not exist")
    if fs.isfile(root):
        paths, root_dir = [root], posixpath.dirname(root)
    else:
        paths = sorted(p for p in fs.find(root) if not _hidden(relative_id(p, root)))
        root_dir = root
    root_uri = _with_protocol(fs, root_dir)
    units: list[ReadUnit] = []
    images: list[str] = []
    for p in paths:
        full = _with_protocol(fs, p)
        if _is_tar(p):
            units.append(ReadUnit("tar", (full,), root_uri))
        elif _is_parquet(p):
            units.append(ReadUnit("parquet", (full,), root_uri))
        else:
            images.append(full)
    for i in range(0, len(images), files_per_unit):
        units.append(ReadUnit("files", tuple(images[i : i + files_per_unit]), root_uri))
    return units


def _image_record(id_: str, source: str, data: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "image", "id": id_, "source": source, "source_sha256": sha256(data), "data": data, "meta": meta}


def reject_record(id_: str, source: str, error: str, stage: str, source_sha256: str | None = None) -> dict[str, Any]:
    return {"kind": "reject", "id": id_, "source": source, "source_sha256": source_sha256, "error": error,
            "stage": stage, "meta": {}}


def _read_files(unit: ReadUnit, fs_opts: dict[str, Any], labels_from_folders: bool) -> Iterator[dict[str, Any]]:
    for path in unit.paths:
        id_ = relative_id(path, unit.root)
        meta: dict[str, Any] = {}
        if labels_from_folders:
            parent = posixpath.dirname(id_)
            meta["label"] = posixpath.basename(parent) if parent else None
        try:
            data = read_bytes(path, fs_opts)
        except Exception as err:  # noqa: BLE001 - a file that stays unreadable after retries is a per-file reject
            yield reject_record(id_, path, f"could not read file: {describe(err)}", "read")
            continue
        yield _image_record(id_, path, data, meta)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename, ext = the rest."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _sidecar_value(ext: str, data: bytes) -> tuple[str, Any]:
    text = data.decode("utf-8", errors="replace").strip()
    if ext == "cls":
        try:
            return "label", int(text)
        except ValueError:
            return "label", text
    return ext.replace(".", "_"), text


def _json_sidecar(data: bytes) -> dict[str, Any]:
    """A .json sidecar's keys become columns when it holds an object; otherwise its text is kept."""
    try:
        value = json.loads(data)
    except ValueError:
        return {"json": data.decode("utf-8", errors="replace")}
    return value if isinstance(value, dict) else {"json": json.dumps(value)}


def _read_tar(unit: ReadUnit, fs_opts: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One record per key. The headers are indexed first and each key's members read only when its record
    is made, so a shard's images are never all in memory at once (members of a key need not be adjacent)."""
    (path,) = unit.paths
    shard = relative_id(path, unit.root)
    keys: dict[str, dict[str, tarfile.TarInfo]] = {}  # key -> extension -> member, in order of first appearance
    failure: str | None = None
    try:
        raw = io.BytesIO(read_bytes(path, fs_opts))
        tar = tarfile.open(fileobj=raw, mode="r:*")
    except Exception as err:  # noqa: BLE001 - unreadable shard: one reject for the whole unit
        yield reject_record(f"{shard}#unreadable", path, f"tar shard unreadable after 0 keys: {describe(err)}", "read")
        return
    with raw, tar:
        try:
            for member in tar:
                if member.isfile():
                    key, ext = _split_key(member.name)
                    keys.setdefault(key, {})[ext] = member
        except Exception as err:  # noqa: BLE001 - a truncated/corrupt shard: keep what was indexed, reject the rest
            failure = f"tar shard unreadable after {len(keys)} keys: {describe(err)}"
        for key, members in keys.items():
            parts: dict[str, bytes] = {}
            error = None
            for ext, member in members.items():
                try:
                    parts[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
                except Exception as err:  # noqa: BLE001
                    error = f"corrupt tar member {member.name}: {type(err).__name__}: {err}"
            yield _tar_key_record(path, f"{shard}/{key}", key, parts, error)
    if failure:
        yield reject_record(f"{shard}#unreadable", path, failure, "read")


def _tar_key_record(path: str, id_: str, key: str, parts: dict[str, bytes], error: str | None) -> dict[str, Any]:
    """The image record of one WebDataset key (sidecars become columns), or its reject."""
    if error is not None:
        return reject_record(id_, f"{path}:{key}", error, "read")
    image_exts = [e for e in parts if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
    if len(image_exts) != 1:
        found = ", ".join(sorted(parts)) or "nothing"
        return reject_record(id_, f"{path}:{key}", f"expected exactly one image member for key {key}, found {found}",
                             "read")
    ext = image_exts[0]
    meta: dict[str, Any] = {}
    for e, v in parts.items():
        if e == "json":
            meta.update(_json_sidecar(v))
        elif e != ext:
            meta.update([_sidecar_value(e, v)])
    return _image_record(id_, f"{path}:{key}.{ext}", parts[ext], meta)


def find_image_column(schema: pa.Schema, requested: str | None = None) -> str:
    """The Parquet column holding image bytes: a struct<bytes, path> (Hugging Face layout) or binary."""
    def usable(field: pa.Field) -> bool:
        t = field.type
        if pa.types.is_struct(t):
            return t.get_field_index("bytes") >= 0
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    if requested:
        if requested not in schema.names:
            raise ValueError(f"image column {requested!r} not in Parquet columns {schema.names}")
        if not usable(schema.field(requested)):
            raise ValueError(f"column {requested!r} has type {schema.field(requested).type}, not image bytes")
        return requested
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in schema.names and usable(schema.field(name)):
            return name
    for field in schema:
        if usable(field):
            return field.name
    raise ValueError(f"no image column (struct<bytes, path> or binary) among Parquet columns {schema.names}")


def _read_parquet(unit: ReadUnit, fs_opts: dict[str, Any], image_column: str | None,
                  rows_per_batch: int = 256) -> Iterator[dict[str, Any]]:
    """One record per row, read a few hundred rows at a time (a large file is never all in Python objects)."""
    (path,) = unit.paths
    rel = relative_id(path, unit.root)
    try:
        parquet = pq.ParquetFile(io.BytesIO(read_bytes(path, fs_opts)))
        column = find_image_column(parquet.schema_arrow, image_column)
    except Exception as err:  # noqa: BLE001
        yield reject_record(f"{rel}#unreadable", path, f"unreadable Parquet file: {describe(err)}", "read")
        return
    others = [n for n in parquet.schema_arrow.names if n != column]
    i = 0
    try:
        for table in parquet.iter_batches(batch_size=rows_per_batch):
            for row in table.to_pylist():
                yield _parquet_row_record(path, f"{rel}#{i}", i, row, column, others)
                i += 1
    except Exception as err:  # noqa: BLE001 - a corrupt row group: keep the rows read, reject the rest
        yield reject_record(f"{rel}#unreadable", path, f"Parquet file unreadable after {i} rows: {describe(err)}",
                            "read")


def _parquet_row_record(path: str, id_: str, i: int, row: dict[str, Any], column: str,
                        others: list[str]) -> dict[str, Any]:
    value = row[column]
    data = value.get("bytes") if isinstance(value, dict) else value
    meta = {n: row[n] for n in others}
    if isinstance(value, dict) and value.get("path") is not None:
        meta.setdefault("original_path", value["path"])
    if not isinstance(data, bytes) or not data:
        return reject_record(id_, f"{path}#{i}", f"row {i}: image column {column!r} holds no bytes", "read")
    return _image_record(id_, f"{path}#{i}", data, meta)


def read_unit(
    unit: ReadUnit,
    storage_options: dict[str, Any] | None = None,
    labels_from_folders: bool = False,
    image_column: str | None = None,
    skip_ids: frozenset[str] | set[str] = frozenset(),
) -> Iterator[dict[str, Any]]:
    """Records of one unit, skipping ids already done, followed by one "count" record."""
    opts = storage_options or {}
    if unit.kind == "files":
        records = _read_files(unit, opts, labels_from_folders)
    elif unit.kind == "tar":
        records = _read_tar(unit, opts)
    elif unit.kind == "parquet":
        records = _read_parquet(unit, opts, image_column)
    else:
        raise ValueError(f"unknown read unit kind {unit.kind!r}")
    n = skipped = 0
    for record in records:
        if record["id"] in skip_ids:
            skipped += 1
            continue
        n += 1
        yield record
    yield {"kind": "count", "n": n, "skipped": skipped}
