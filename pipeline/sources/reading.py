"""Reading one read unit: the reader of its container kind, ids done in an earlier run skipped, and the unit's
"count" record (how many records it gave, the hidden entries it skipped; for a container read to its end, its ids'
digest, kept by pipeline.ledger)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.sources.file_bytes import IN_MEMORY_BYTES, MAX_IMAGE_BYTES
from pipeline.sources.folder_metadata import UNMATCHED_EXAMPLES
from pipeline.sources.hidden import HiddenSkipped
from pipeline.sources.ids import LOOKALIKE, ids_digest, relative_id
from pipeline.sources.image_files import read_files
from pipeline.sources.parquet_files import read_parquet
from pipeline.sources.partitions import add_partitions, partition_folders, repeated_key_problem, repeated_partition_key
from pipeline.sources.records import LASTING, reject_record
from pipeline.sources.tar_shards import read_tar
from pipeline.sources.tfrecord_files import is_tfrecord, read_tfrecord
from pipeline.sources.units import ReadUnit
from pipeline.sources.zip_archives import read_zip


def read_unit(
    unit: ReadUnit,
    storage_options: dict[str, Any] | None = None,
    labels_from_folders: bool = False,
    image_column: str | None = None,
    skip_ids: frozenset[str] | set[str] = frozenset(),
    in_memory_bytes: int = IN_MEMORY_BYTES,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    purified_ids: frozenset[str] | set[str] = frozenset(),
    partitioning: str = "none",
    metadata: str = "",
    join_metadata: bool = False,
    sidecars: str = "",
    named_ids: frozenset[str] | set[str] = frozenset(),
) -> Iterator[dict[str, Any]]:
    """Records of one unit, skipping ids already done, followed by one "count" record.

    Tar and Parquet files larger than `in_memory_bytes` are read from storage piece by piece (a tar twice; one storage
    gives no size for is copied to a local file once and read from there). An image
    file, tar member or Parquet cell over `max_image_bytes` is a reject, found from its size before it is read.
    A tar or Parquet file read to its end (no '#unreadable' reject) is named in its count record, with how many ids
    it gave and their digest: what `pipeline.ledger` keeps so that a later --incremental run can skip it unread, and
    the look-alike rejects (`LOOKALIKE`) it gave or skipped: any other the output holds for it is out of date. So is
    one whose '#unreadable' reject lasts while it is unchanged (`records.LASTING`: a table without an image column, a
    file that is not one of its kind: `records.LastingProblem`), with "lasting_reject": that reject is true, not out
    of date.
    `purified_ids`: done ids that are in data/ (`read_tar`; those with '\\x' are enough).
    `named_ids`: a tar shard's ids in the output that an earlier version named from its members' names ('s.tar/./b'
    for './b.jpg'), which its keys keep (`read_tar`; `plan.tar_ids_named_otherwise`).
    `partitioning` "hive": each image record gets the columns of its file's `key=value` folders (`sources.partitions`;
    a container's folders, not those inside it).
    `metadata`: a "files" unit's rows of image-folder metadata files and their rejects, as the planning joined them
    (`folder_metadata.unit_metadata`). `join_metadata`: a zip archive's or tar shard's metadata members are joined to
    its members (`zip_archives._zip_metadata`, `tar_shards._shard_metadata`); their ids are named in its count record
    ("metadata"), an earlier reject of them untrue now, and their rows that name no member are counted in it
    ("metadata_unmatched", with the first few as "metadata_unmatched_examples": 'd.zip/train/metadata.csv: 7.png'), and
    its sidecar members (`zip_archives._zip_sidecars`) are named in it too ("sidecars").
    `sidecars`: a "files" unit's sidecar files, as the planning paired them (`sidecar_files.unit_sidecars`)."""
    opts = storage_options or {}
    if unit.kind == "files":
        records = read_files(unit, opts, labels_from_folders, max_image_bytes, metadata, sidecars)
    elif unit.kind == "tar":
        records = read_tar(unit, opts, in_memory_bytes, max_image_bytes, skip_ids, purified_ids, join_metadata,
                            labels_from_folders, named_ids)
    elif unit.kind == "parquet" and is_tfrecord(unit.paths[0]):  # rows numbered as a table's: `tfrecord_files`
        records = read_tfrecord(unit, opts, image_column, in_memory_bytes, max_image_bytes, skip_ids)
    elif unit.kind == "parquet":
        records = read_parquet(unit, opts, image_column, in_memory_bytes, max_image_bytes, skip_ids=skip_ids)
    elif unit.kind == "zip":
        records = read_zip(unit, opts, in_memory_bytes, max_image_bytes, labels_from_folders, skip_ids, join_metadata)
    else:
        raise ValueError(f"unknown read unit kind {unit.kind!r}")
    container = unit.kind != "files"
    container_id = relative_id(unit.paths[0], unit.root) if container else ""
    broken = f"{container_id}#unreadable" if container else None
    lookalike = f"{container_id}{LOOKALIKE}" if container else ""
    container_partitions = _partitions_of(container_id) if container and partitioning == "hive" else {}
    ids: list[str] = []  # a container's record ids, to digest
    lookalikes: list[str] = []
    superseded: list[str] = []
    joined: list[str] = []  # a zip archive's or tar shard's metadata members joined to its members: no inputs
    sidecars: list[str] = []  # a zip archive's sidecar members, read with their images: no inputs either
    hidden = HiddenSkipped()
    unmatched, unmatched_examples = 0, []  # metadata rows of a zip archive or tar shard that name no member
    whole = True
    lasting = False  # its '#unreadable' reject is one that reading it again, unchanged, gives again
    n = skipped = 0
    for record in records:
        if record["kind"] == "superseded":
            superseded.extend(record["ids"])
            continue
        if record["kind"] == "unmatched":
            unmatched += record["count"]
            unmatched_examples.extend(record["examples"][: UNMATCHED_EXAMPLES - len(unmatched_examples)])
            continue
        if record["kind"] == "sidecar":  # a zip member read with its image, as its columns: no record
            sidecars.append(record["name"])
            continue
        if record["kind"] in ("hidden", "joined"):  # a member skipped as hidden or joined: no record, only counted
            hidden.add(record["name"])
            if record["kind"] == "joined":
                joined.append(record["name"])
            continue
        if record["id"] == broken:
            lasting = bool(record.pop(LASTING, False))
            whole = whole and lasting
        elif container:
            ids.append(record["id"])
            if record["id"].startswith(lookalike):
                lookalikes.append(record["id"])
        if record["kind"] == "skipped" or record["id"] in skip_ids:
            skipped += 1
            continue
        n += 1
        if partitioning == "hive" and record["kind"] == "image":
            record = _partitioned(record, container_partitions if container else _partitions_of(record["id"]))
        yield record
    count: dict[str, Any] = {"kind": "count", "n": n, "skipped": skipped}
    if hidden.count:
        count["hidden"], count["hidden_examples"] = hidden.count, hidden.examples
    if joined:
        count["metadata_joined"] = len(joined)
    if unmatched:
        count["metadata_unmatched"], count["metadata_unmatched_examples"] = unmatched, unmatched_examples
    if container and whole:
        count["container"] = {"path": unit.paths[0], "records": len(ids), "ids_sha256": ids_digest(ids)}
        if superseded:  # ids an older version gave this container's records, if the output holds them
            count["container"]["superseded"] = superseded
        if lookalikes:
            count["container"]["lookalike"] = lookalikes
        if joined:
            count["container"]["metadata"] = joined
        if sidecars:  # an earlier version's rejects of them are untrue now
            count["container"]["sidecars"] = sidecars
        if lasting:  # its '#unreadable' reject stays, and is skipped as done while the container is unchanged
            count["container"]["lasting_reject"] = True
        # done ids of this container that it no longer gives (a shard or Parquet file rewritten smaller): their rows
        # stay, and the record of this read says so, or the output's ids never matched it and every later run read
        # the container again (pipeline.ledger)
        given = set(ids)
        leftover = sorted(i for i in skip_ids if i != broken and i not in given and i not in joined and i not in sidecars)
        if leftover:
            count["container"]["leftover"] = leftover
    yield count


def read_to_lasting_reject(read: dict[str, Any]) -> bool:
    """Whether a container's read to its end (its count record's "container") ended in its own lasting reject (a table
    without an image column, a file not of its kind): it gave no row. That reject is true, not out of date; the rows an
    earlier version of the container gave stay, and keep their stamp: the container is still said changed (its new
    stamp recorded for them, they would pass for this content's)."""
    return bool(read.get("lasting_reject"))


def _partitions_of(rel_path: str) -> dict[str, str | None] | str:
    """The partition columns' values of an input file at `rel_path` (relative to the input root), or why it has none:
    a path giving one key twice is refused before any work (pipeline.plan); read here all the same, its rows are
    rejects saying why."""
    key = repeated_partition_key(rel_path)
    return repeated_key_problem(rel_path, key) if key is not None else dict(partition_folders(rel_path))


def _partitioned(record: dict[str, Any], partitions: dict[str, str | None] | str) -> dict[str, Any]:
    """An image record with its file's partition columns (`_partitions_of`), or its reject."""
    if isinstance(partitions, str):
        return reject_record(record["id"], record["source"], partitions, "read", record["source_sha256"])
    add_partitions(record, partitions)
    return record
