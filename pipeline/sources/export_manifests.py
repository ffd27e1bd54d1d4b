"""The manifest an export of an output writes beside its images (`pipeline.export`: DIR/manifest.csv or
DIR/manifest.jsonl, one line per exported image). A run over an export folder (to purify it again, or to check it) took
it for an input, a reject saying it is not a recognised image format; the listing skips it as it skips a data set's
metadata files, counted with the hidden entries and named in the dry run and the run's summary. Told by its name and
its first line (the export's header: `id`, `path`, then the output's columns), not by its name alone: a user's own
table named manifest.csv stays an input."""

from __future__ import annotations

import csv
import json
import posixpath
from typing import Any

EXPORT_MANIFESTS = ("manifest.csv", "manifest.jsonl")  # pipeline.export.MANIFEST_NAME, with each of its formats
# columns every export manifest has after `id` and `path`: the data table's own, which every row of data/ holds
MANIFEST_COLUMNS = frozenset({"width", "height", "source", "source_sha256"})
FIRST_LINE_BYTES = 2**20  # a header (or a JSON line) longer than this is no export manifest's
_CHUNK = 2**16


def is_export_manifest_name(path: str) -> bool:
    return posixpath.basename(path) in EXPORT_MANIFESTS


def export_manifests(fs: Any, paths: list[str]) -> list[str]:
    """Of listed `paths`, the export manifests (`is_export_manifest`): one small read of each file so named, none of
    any other. One that cannot be read stays an input, whose read task says why."""
    return [p for p in paths if is_export_manifest_name(p) and is_export_manifest(p, _first_line(fs, p))]


def is_export_manifest(path: str, first_line: bytes | None) -> bool:
    """Whether the file at `path`, whose first line is `first_line` (None: unread), is an export's manifest: its
    header (CSV) or first object's keys (JSON lines) start with `id`, `path` and hold `MANIFEST_COLUMNS`."""
    if first_line is None:
        return False
    try:
        text = first_line.decode("utf-8")
        if path.endswith(".csv"):
            names = next(csv.reader([text]))
        else:
            row = json.loads(text)
            names = list(row) if isinstance(row, dict) else []
    except (UnicodeDecodeError, ValueError, csv.Error, StopIteration):
        return False
    return names[:2] == ["id", "path"] and MANIFEST_COLUMNS <= set(names[2:])


def _first_line(fs: Any, path: str) -> bytes | None:
    """The file's first line (at most FIRST_LINE_BYTES), without its line end; None when it cannot be read."""
    head = b""
    try:
        with fs.open(path, "rb") as f:
            while b"\n" not in head and len(head) < FIRST_LINE_BYTES:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                head += chunk
    except Exception:  # noqa: BLE001 - left an input: its read task rejects it, saying why
        return None
    return head.split(b"\n", 1)[0].rstrip(b"\r")
