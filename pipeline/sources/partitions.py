"""Hive-style partition folders (`--partitioning hive`): a `key=value` folder between the input root and an input file
(an image file, a tar shard, a Parquet file, a zip archive: the file's own folders on storage, never a path inside an
archive) gives each of that file's rows a string column `key` holding `value`, as Ray Data's read_parquet,
pyarrow.dataset and Spark read such a layout (`s3://lake/imgs/date=2026-11-01/split=train/part-0.parquet`).

The rules, in the order they apply:
- a folder is a partition when it holds a '=' after at least one character: `key=value`, split at the first '='
  (`a=b=c` is key `a`, value `b=c`); `=x` (no key) and a folder without '=' are not partitions;
- key and value are URL-unquoted as Hive and Spark write them, and pyarrow reads them (`%3D` -> '=', `%2F` -> '/');
  the value `__HIVE_DEFAULT_PARTITION__` (Hive's and Spark's null) is a null; an empty value (`a=`) is '';
- the same key twice in one path (`a=1/a=2/`) is refused, the run stopped before any work (`repeated_partition_key`,
  pipeline.plan): which value its rows should take is not the job's to guess, and pyarrow quietly keeps the outer one;
- a key named like one of the job's own columns gets `input_` before it, as a pass-through column does
  (`passthrough_name`: `id=3/` -> `input_id`);
- a key the row already has as a column of its own, in any case (a Parquet file's column, a tar key's sidecar or .json
  key, the `label` of --labels-from-folders; case-blind readers take `Label` and `label` for one) leaves that column
  as it is, and the folder's value goes to `partition_<key>` (`partition_` once more while that name is taken too):
  no value is lost, and the file's own values, which can differ from row to row, keep their name;
- the column is a string (Arrow `string`), whatever the value looks like: users cast (`date` to a date)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from pipeline.sources.records import free_name, passthrough_name

PARTITIONINGS = ("none", "hive")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
PARTITION_PREFIX = "partition_"


def partition_folders(rel_path: str) -> list[tuple[str, str | None]]:
    """(key, value) of each `key=value` folder of `rel_path` (a path relative to the input root; its last part is the
    file itself, never a partition), outermost first, unquoted; a repeated key is listed each time."""
    pairs: list[tuple[str, str | None]] = []
    for folder in rel_path.split("/")[:-1]:
        key, eq, value = folder.partition("=")
        if not eq or not key:
            continue
        value = unquote(value)
        pairs.append((unquote(key), None if value == HIVE_NULL else value))
    return pairs


def repeated_partition_key(rel_path: str) -> str | None:
    """The first key that `rel_path`'s folders give twice (`a=1/a=2/`), or None."""
    seen: set[str] = set()
    for key, _ in partition_folders(rel_path):
        if key in seen:
            return key
        seen.add(key)
    return None


def repeated_key_problem(rel_path: str, key: str) -> str:
    """What is said of a path that gives partition key `key` twice."""
    folders = [f for f in rel_path.split("/")[:-1] if f.partition("=")[1] and unquote(f.partition("=")[0]) == key]
    return (f"--partitioning hive: input {rel_path} lies in {len(folders)} folders of partition key {key!r} "
            f"({', '.join(folders)}): which value its rows would take is not clear; rename the folders so that each "
            "key is given once, or run with --partitioning none")


def partition_column(key: str, meta: dict[str, Any]) -> str:
    """The output column of partition key `key` in a row whose own columns are `meta`: the key as a pass-through column
    is named (`passthrough_name`), with `partition_` before it while the row holds that name already, in any case."""
    return free_name(passthrough_name(key), {column.lower() for column in meta}, PARTITION_PREFIX)


def add_partitions(record: dict[str, Any], partitions: dict[str, str | None]) -> None:
    """Give an image record the columns of its file's partition folders, typed string (the writer keeps the type, so a
    batch whose values are all null still writes a string column)."""
    if not partitions:
        return
    meta = record["meta"]
    types = dict(record.get("meta_types") or {})  # a Parquet file's records share one mapping: not changed in place
    for key, value in partitions.items():
        name = partition_column(key, meta)
        meta[name] = value
        types[name] = pa.string()
    record["meta_types"] = types
