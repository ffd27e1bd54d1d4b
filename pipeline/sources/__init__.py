"""Input discovery and raw reading: folders of image files, tar shards, Parquet and TFRecord files, zip archives.

The reading side of the job, step by step: `listing.discover` lists an input into read units (`units.ReadUnit`: one
read task's worth, kept a Ray row), walking a folder with `walk`, skipping hidden files (`hidden`) and joining an
image folder's metadata.csv / metadata.jsonl to its images (`folder_metadata`, sent with each unit). A read task
gives its unit to `reading.read_unit`, which calls the reader of the unit's container kind: `image_files` (a group of
loose image files), `tar_shards` (WebDataset or plain tar shards; their passes in `tar_members`, their samples in
`webdataset_keys`), `zip_archives` or `parquet_files` (Arrow IPC files too, through `arrow_ipc`; their rows counted
before a run from their record batch headers alone, `ipc_headers`); a "parquet" unit named as a TFRecord file goes to
`tfrecord_files` (its records parsed by `tf_examples`, checked by `crc32c`). Each reader takes
bytes from storage through `file_bytes` and yields raw bytes plus metadata, one record per input image (`records`),
each with a stable id (`ids`); decoding happens in a later stage, so that a bad file becomes one reject row, never a
failed block.

The names the rest of the job, its benchmarks and tests use are importable from here. A test that replaces a name
(monkeypatch) must replace it in the module that looks it up when it runs, e.g. `tar_members.backoff`, not here.
"""

from pipeline.sources.file_bytes import IN_MEMORY_BYTES, MAX_IMAGE_BYTES, read_bytes
from pipeline.sources.hidden import HIDDEN_EXAMPLES, HiddenSkipped, hidden_note
from pipeline.sources.ids import (
    LOOKALIKE,
    ids_digest,
    ids_key,
    path_of_id,
    relative_id,
    terminal_text,
    text_name,
    text_value,
    unescaped,
)
from pipeline.sources.listing import discover, input_location
from pipeline.sources.parquet_files import find_image_column, image_column_problem, rows_without_image
from pipeline.sources.partitions import PARTITIONINGS, partition_folders, repeated_key_problem, repeated_partition_key
from pipeline.sources.reading import read_unit
from pipeline.sources.records import JOB_COLUMNS, passthrough_name, reject_record
from pipeline.sources.units import VERSION_FIELDS, ReadUnit, content_stamp, listing_stamp
from pipeline.sources.webdataset_keys import IMAGE_EXTENSIONS

# storage concepts that lived here before (pipeline.storage): still importable from here
from pipeline.storage import is_url_chain, storage_path, with_protocol

__all__ = [
    "HIDDEN_EXAMPLES",
    "IMAGE_EXTENSIONS",
    "IN_MEMORY_BYTES",
    "JOB_COLUMNS",
    "LOOKALIKE",
    "MAX_IMAGE_BYTES",
    "PARTITIONINGS",
    "VERSION_FIELDS",
    "HiddenSkipped",
    "ReadUnit",
    "content_stamp",
    "discover",
    "find_image_column",
    "image_column_problem",
    "hidden_note",
    "terminal_text",
    "ids_digest",
    "ids_key",
    "input_location",
    "is_url_chain",
    "listing_stamp",
    "partition_folders",
    "passthrough_name",
    "read_bytes",
    "read_unit",
    "reject_record",
    "path_of_id",
    "relative_id",
    "rows_without_image",
    "repeated_key_problem",
    "repeated_partition_key",
    "storage_path",
    "text_name",
    "text_value",
    "unescaped",
    "with_protocol",
]
