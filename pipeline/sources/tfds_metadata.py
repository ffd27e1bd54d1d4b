"""What TensorFlow Datasets (TFDS) records beside a prepared data set's TFRecord shards, read without TFDS:

- `dataset_info.json`: each split's `shardLengths` (records per shard, in shard order), `numBytes` (the records' data,
  their framing not counted: a plain shard's file is its records' data and 16 bytes a record more) and
  `filepathTemplate` (the shards' names, relative to this file's folder; TFDS's default
  `{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}` where an older version wrote none), the data set's `name` and
  `fileFormat`. Numbers are strings, as protobuf writes an int64 in JSON.
- `features.json`: each feature's kind and declared shape (a FeaturesDict of Image, ClassLabel, Text, Tensor,
  Sequence, BBoxFeature, ...), nested features named as their records name them (`objects/bbox`).

Both are read as TFDS 4.9 writes them; a file that is not so gives nothing (`TfdsProblem`), and the run reads its
shards as if it were not there."""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from pipeline.sources.ids import without_signed_query
from pipeline.storage import storage_path, with_retries

DATASET_INFO, FEATURES = "dataset_info.json", "features.json"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
MAX_METADATA_BYTES = 64 * 2**20  # a dataset_info.json with a million shards' lengths is about 10 MB


def metadata_folder(path: str) -> str | None:
    """The folder whose TFDS metadata files go with the TFRecord file `path`: a web address's without its query, which
    is no part of its path ('s.tfrecord?X-Amz-Credential=AKIA.../20261207/...' gave a features.json at
    '...?X-Amz-Credential=AKIA.../20261207/us-east-1/s3/features.json', named in a warning with the credential in it).
    None for an address signed for its one file (a presigned URL, a SAS): that query grants no other file, S3 refuses
    every look beside it, and that refusal was warned of in every run for a file the user can do nothing about."""
    if without_signed_query(path) != path:
        return None
    if path[:8].lower().startswith(("http://", "https://")):
        path = path.partition("?")[0].partition("#")[0]
    return posixpath.dirname(path)


class TfdsProblem(ValueError):
    """A TFDS metadata file that is not as TFDS writes it."""


@dataclass(frozen=True)
class Shard:
    """A shard that a dataset_info.json lists: its split, how many records it holds, and its split's `numBytes`,
    records and shard paths (relative to the dataset_info.json's folder), to check the shards as listed against."""

    split: str
    records: int
    split_bytes: int
    split_records: int
    split_shards: tuple[str, ...]


def read_json(folder: str, name: str, fs_opts: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON object in file `name` of `folder` (a full path), None where there is no such file; TfdsProblem for
    one that is no JSON object, or too large to be TFDS's; a storage error as it is."""
    fs, path = storage_path(posixpath.join(folder, name), fs_opts)
    try:
        size = with_retries(lambda: fs.size(path), f"stat {folder}/{name}")
    except FileNotFoundError:
        return None
    if size is not None and size > MAX_METADATA_BYTES:
        raise TfdsProblem(f"{name} is {size:,} bytes, over the {MAX_METADATA_BYTES:,} TFDS's could take")
    data = with_retries(lambda: fs.cat_file(path), f"read {folder}/{name}")
    try:
        found = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise TfdsProblem(f"{name} is not JSON ({err})") from err
    except RecursionError as err:  # nested past the parser's depth: no file TFDS writes, not a reason to reject shards
        raise TfdsProblem(f"{name} is nested too deep to be TFDS's") from err
    if not isinstance(found, dict):
        raise TfdsProblem(f"{name} holds no JSON object")
    return found


def _number(value: Any, what: str) -> int:
    """An int64 as protobuf's JSON writes it (a string) or as a number; TfdsProblem for anything else or a negative."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TfdsProblem(f"{what} is {value!r}, not a count")
    try:
        n = int(value)
    except ValueError as err:
        raise TfdsProblem(f"{what} is {value!r}, not a count") from err
    if n < 0:
        raise TfdsProblem(f"{what} is negative ({n})")
    return n


def shard_name(template: str, dataset: str, split: str, file_format: str, index: int, shards: int) -> str:
    """Shard `index` of `shards`' path as TFDS names it from a split's template (`naming.ShardedFileTemplate`: shard
    numbers of at least 5 digits, as many as `shards` takes). TfdsProblem for a template TFDS could not fill."""
    digits = max(len(str(shards)), 5)
    x, y = f"{index:0{digits}d}", f"{shards:0{digits}d}"
    try:
        return template.format(DATASET=dataset, SPLIT=split, FILEFORMAT=file_format, SHARD_INDEX=x, NUM_SHARDS=y,
                               SHARD_X_OF_Y=f"{x}-of-{y}")
    except (KeyError, IndexError, ValueError) as err:
        raise TfdsProblem(f"a file path template TFDS does not write ({template!r})") from err


def listed_shards(info: dict[str, Any]) -> dict[str, Shard]:
    """Every shard a dataset_info.json lists, by its path relative to the file's folder. TfdsProblem where it is not
    as TFDS writes it."""
    dataset, file_format = info.get("name"), info.get("fileFormat") or "tfrecord"
    splits = info.get("splits", [])
    if not isinstance(dataset, str) or not isinstance(file_format, str) or not isinstance(splits, list):
        raise TfdsProblem("a dataset_info.json without its name or splits")
    out: dict[str, Shard] = {}
    for split in splits:
        if not isinstance(split, dict) or not isinstance(split.get("name"), str):
            raise TfdsProblem("a split without its name")
        lengths = split.get("shardLengths", [])
        if not isinstance(lengths, list):
            raise TfdsProblem(f"split {split['name']!r}'s shardLengths is no list")
        counts = [_number(n, f"a shard length of split {split['name']!r}") for n in lengths]
        template = split.get("filepathTemplate") or DEFAULT_TEMPLATE
        if not isinstance(template, str):
            raise TfdsProblem(f"split {split['name']!r}'s filepathTemplate is no text")
        names = tuple(posixpath.normpath(shard_name(template, dataset, split["name"], file_format, i, len(counts)))
                      for i in range(len(counts)))
        split_bytes, split_records = _number(split.get("numBytes", 0), f"split {split['name']!r}'s numBytes"), sum(counts)
        for name, n in zip(names, counts, strict=True):  # summed once a split: a sum a shard took hours for a million
            out[name] = Shard(split["name"], n, split_bytes, split_records, names)
    return out


def declared_lists(features: dict[str, Any]) -> frozenset[str]:
    """The features a features.json declares with a shape that does not hold exactly one value (a Sequence, a Tensor
    of shape [None] or [2], a BBoxFeature), by the names their records give them: their values are a list in every
    record, though some records hold one. A feature of exactly one value (a ClassLabel, a Text, an Image, a Tensor
    of shape [] or [1]) is left out, as is one of a kind this does not know: both keep the type their values give."""
    lists: set[str] = set()
    _walk(features, "", False, lists)
    return frozenset(lists)


def _walk(feature: Any, name: str, in_sequence: bool, lists: set[str]) -> None:
    if not isinstance(feature, dict):
        raise TfdsProblem(f"feature {name or '(top)'} is not described as TFDS describes one")
    if "featuresDict" in feature:
        children = feature["featuresDict"].get("features") if isinstance(feature["featuresDict"], dict) else None
        if not isinstance(children, dict):
            raise TfdsProblem(f"feature {name or '(top)'}'s FeaturesDict holds no features")
        for child, described in children.items():
            _walk(described, f"{name}/{child}" if name else child, in_sequence, lists)
        return
    if "sequence" in feature:
        sequence = feature["sequence"]
        if not isinstance(sequence, dict):
            raise TfdsProblem(f"feature {name}'s Sequence is not described")
        length = _signed(sequence.get("length", -1), name)
        _walk(sequence.get("feature"), name, in_sequence or length != 1, lists)
        return
    if not name:
        raise TfdsProblem("features.json holds no FeaturesDict")
    shaped = feature.get("tensor") or feature.get("boundingBox")
    if in_sequence:
        if any(key in feature for key in ("tensor", "boundingBox", "classLabel", "text", "image")):
            lists.add(name)
        return
    if isinstance(shaped, dict) and shaped.get("encoding", "none") in ("none", ""):
        # a Tensor's values are its elements: one value exactly only where every dimension is 1
        dims = shaped.get("shape", {}).get("dimensions", []) if isinstance(shaped.get("shape"), dict) else None
        if not isinstance(dims, list):
            raise TfdsProblem(f"feature {name}'s shape is not described")
        sizes = [_signed(d, name) for d in dims]
        if any(d < 0 for d in sizes) or math.prod(sizes) != 1:
            lists.add(name)


def _signed(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise TfdsProblem(f"feature {name} has a dimension {value!r}") from err
