"""Records, as the readers yield them: raw bytes plus metadata, one record per input image; decoding happens in a
later stage so that a bad file becomes one reject row, never a failed block. Every record has a stable `id` (what
resume and incremental runs key on, `pipeline.sources.ids`) and a `source` saying where it came from.

Record kinds flowing through the job:
- "image": id, source, source_sha256, data (bytes), meta (pass-through columns, e.g. label, named apart from the job's
  own: `passthrough_name`), and for a Parquet row meta_types (each meta column's Arrow type in the input)
- "reject": id, source, source_sha256 (may be None), error, stage, rejected_at (when it was made, UTC)
- "count": n — how many image+reject records one read unit produced (checks read = purified + rejected); with
  "hidden" and "hidden_examples" when the unit skipped hidden entries (a zip archive's `__MACOSX/`, `_x`; a tar
  shard's macOS metadata); made by `pipeline.sources.reading.read_unit`
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pipeline.redaction import redact_uri_secrets, uris_redacted
from pipeline.sources.ids import shown_source, text_name
from pipeline.storage import describe, is_transient

# The data table's own columns (pipeline.stages._data_table writes them; original_path is the path field of a Parquet
# input's struct<bytes, path> image). An input's column of one of these names is renamed (`passthrough_name`).
JOB_COLUMNS = frozenset({"id", "image", "width", "height", "source", "source_sha256", "original_path", "original_mode",
                         "original_format", "original_frames", "psnr_vs_input_db", "downscale_factor"})
RENAMED_PREFIX = "input_"


def passthrough_name(name: str) -> str:
    """The output column of an input's own column (a Parquet column, a tar .json key or sidecar): its name, unless that
    is one of the job's columns (`JOB_COLUMNS`), or one with `input_` (once or more) before it; such a name gets one more
    `input_` (id -> input_id, and input_id, as in a re-purified output, -> input_input_id). The rule looks at the name
    alone, so a column has one name in every part file, and no two input names get the same one: none is lost. Case
    does not count (`ID` -> input_ID, `Input_Source` -> input_Input_Source): readers whose names have no case (DuckDB,
    Spark, Hive) take `ID` beside the job's `id` for one column, and DuckDB's `SELECT source` gave an input's `Source`."""
    bare = name
    while bare[: len(RENAMED_PREFIX)].lower() == RENAMED_PREFIX:
        bare = bare[len(RENAMED_PREFIX) :]
    return RENAMED_PREFIX + name if bare.lower() in JOB_COLUMNS else name


def free_name(name: str, taken: set[str], prefix: str) -> str:
    """`name` with `prefix` before it as often as a column of `taken` (names in lower case) has it, in any case: readers
    that ignore case (DuckDB, Spark, Hive, Athena, BigQuery) take `Label` beside `label` for one column. The name is
    added to `taken`."""
    while name.lower() in taken:
        name = prefix + name
    taken.add(name.lower())
    return name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_record(id_: str, source: str, data: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "image", "id": text_name(id_), "source": text_name(shown_source(source)), "source_sha256": sha256(data),
            "data": data, "meta": meta}


# The key a container's own '#unreadable' reject record holds when reading the container again, unchanged, can only give
# it again (`lasting_reject`): `sources.read_unit` takes it off, and names the container as read to its end, so that
# pipeline.ledger records it and --incremental runs skip it unread. A storage error's reject has none: it is read again
# by the next run.
LASTING = "lasting"


class LastingProblem(ValueError):
    """Why a container is refused whole, found in its own bytes before any record of it: it is not a file of its kind
    (a zip without a zip's directory, a tar whose first header is none, a TFRecord whose first length fails its CRC, a
    Parquet file without Parquet's magic bytes, a .arrow file starting as no IPC), is encrypted (a Parquet file's footer
    or columns, a zip's directory), or holds nothing the job reads (a table without an image column, a
    column named twice, no column --image-column names, which a run over the output cannot change). Read again
    unchanged, it says the same: its reject is lasting (`lasting_reject`). Never a storage error, a read cut short, a
    limit a flag sets (--max-image-mb, --in-memory-mb), or damage found after records were given: those are read
    again."""


def is_lasting(err: BaseException) -> bool:
    """Whether `err`, refusing a container on opening it, is what the container's bytes say (`LastingProblem`), not
    how reading them went."""
    return isinstance(err, LastingProblem) and not is_transient(err)


def refusal_said(err: BaseException) -> str:
    """`describe`'s one-line reason; a `LastingProblem`'s without its type's name, its words being the reason."""
    said = describe(err)
    return said.partition(": ")[2] if isinstance(err, LastingProblem) else said


def container_reject(id_: str, source: str, error: str, lasting: bool = False) -> dict[str, Any]:
    """A container's own '#unreadable' reject; `lasting` (`LASTING`) where the reader refused it whole on opening it,
    before any of its records, for what its bytes say (`is_lasting`, or a check of its schema): reading it again
    unchanged only gives it again. The one place a reader marks a reject so."""
    record = reject_record(id_, source, error, "read")
    if lasting:
        record[LASTING] = True
    return record


def reject_record(id_: str, source: str, error: str, stage: str, source_sha256: str | None = None) -> dict[str, Any]:
    # rejected_at: of two reject rows of one id (a --retry-rejects run killed before its end-of-run check), the end of
    # a later run keeps the newer, today's reason; the order of the file names says nothing about which is newer
    # the error quotes the address as the storage did ('FileNotFoundError: https://user:password@host/a.png'): its
    # credentials go as they go from `source`
    error = uris_redacted(redact_uri_secrets(error, source.partition("?")[0]))
    return {"kind": "reject", "id": text_name(id_), "source": text_name(shown_source(source)), "source_sha256": source_sha256,
            "error": text_name(error), "stage": stage, "meta": {}, "rejected_at": datetime.now(UTC)}
