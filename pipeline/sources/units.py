"""Read units: one read task's worth of input (a tar shard, a Parquet file, a zip archive, or a group of image
files), as the listing makes it and a Ray row carries it, and the version stamp a listing gives a container."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReadUnit:
    """One task's worth of input: a tar shard, a Parquet file, a zip archive, or a group of image files."""

    kind: str  # "files" | "tar" | "parquet" (a Parquet, Arrow IPC or TFRecord file: rows `name#N`) | "zip"
    paths: tuple[str, ...]  # full fsspec paths (protocol included)
    root: str  # the input root, to make ids relative
    sizes: tuple[int | None, ...] = ()  # bytes per path as listed (None where storage gave none); () if not listed
    stamps: tuple[str | None, ...] = ()  # a container's version as listed (listing_stamp); () for image files
    # each path's content as listed (content_stamp), for telling an input changed since its row was written
    # (pipeline.changes); () where not listed. The driver's alone: not sent to the read task (to_row), nor compared
    contents: tuple[str | None, ...] = field(default=(), compare=False)

    def to_row(self) -> dict[str, Any]:
        # The listed sizes go to the read task (-1: none listed; Arrow turns a list with nulls into floats): with
        # them, an object store's file is fetched in one request, without the HEAD its open would send first.
        sizes = self.sizes or (None,) * len(self.paths)
        return {"kind": self.kind, "paths": list(self.paths), "root": self.root,
                "sizes": [-1 if size is None else int(size) for size in sizes]}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReadUnit:
        sizes = row.get("sizes")
        listed = tuple(None if size is None or size < 0 else int(size) for size in sizes) if sizes is not None else ()
        return cls(row["kind"], tuple(row["paths"]), row["root"], listed if len(listed) == len(row["paths"]) else ())


# Listing fields that change when an object or file is replaced: S3's ETag (and VersionId when versioned), GCS's
# generation, a local file's mtime and inode, a web server's ETag or Last-Modified header. A listing with none of
# them cannot tell a replaced shard from the one read before (pipeline.ledger), so such a container is always read.
VERSION_FIELDS = ("ETag", "etag", "VersionId", "generation", "mtime", "LastModified", "last_modified", "Last-Modified",
                  "ino")


def listing_stamp(info: dict[str, Any]) -> str | None:
    """What a listing entry says of its file's version, as one comparable string; None when it says nothing."""
    fields = {name: str(info[name]) for name in VERSION_FIELDS if info.get(name) is not None}
    if not fields or set(fields) == {"ino"}:  # an inode alone survives rewriting the file in place
        return None
    return json.dumps(fields, sort_keys=True)


# An object store's content hash: where the listing gives one, a re-upload of the same bytes (a new LastModified, a new
# VersionId) is no change of content
CONTENT_HASH_FIELDS = ("ETag", "etag")


def content_stamp(info: dict[str, Any]) -> str | None:
    """A short digest of what a listing entry says of its file's content: its size with its ETag where the store
    gives one, else with its version fields (a local file's mtime and inode); None when it says nothing of its
    version. Kept for every listed file (pipeline.changes), so a digest (16 characters), not the fields."""
    fields = {name: str(info[name]) for name in VERSION_FIELDS if info.get(name) is not None}
    hashed = {name: value for name, value in fields.items() if name in CONTENT_HASH_FIELDS}
    if hashed:
        fields = hashed
    elif not fields or set(fields) == {"ino"}:
        return None
    text = json.dumps([info.get("size"), fields], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# In an image file's content stamp, before the digest of the image-folder metadata row joined to it (`with_metadata_row`)
METADATA_ROW = "+m"
# that digest where the row is not known (a metadata file that cannot be joined may name the image): taken as recorded
ROW_UNKNOWN = "?"


def with_metadata_row(content: str | None, row: dict[str, Any] | None, unknown: bool = False,
                      covered: bool = False) -> str | None:
    """An image file's content stamp with a digest of the metadata row joined to it (its output columns: `folder_metadata`),
    so that a row edited, added or removed is a change of that image's input as new bytes are; `content` as it is when
    no row is joined (as versions before joining stamped it). A file the listing says nothing of the version of
    (`content` None: a web folder's image file, which has no ETag or Last-Modified in its index page) is stamped with
    its row's digest alone (`+m<digest>`), or `+m` when it has no row but lies where a joined metadata file may name
    it (`covered`: in that file's folder or below): its bytes replaced are not seen, its row edited, added or removed
    is; elsewhere None, as before (a metadata file removed since is told by the stamp it had: `changes.find_changes`).
    `unknown`: a metadata file that cannot be joined may name it: ROW_UNKNOWN for the digest, so that a file broken
    by an edit does not make its images changed (`changes.rows_as_recorded`), nor --refresh-changed drop their columns."""
    if unknown:
        return f"{content or ''}{METADATA_ROW}{ROW_UNKNOWN}"
    if row is None:
        return METADATA_ROW if content is None and covered else content
    text = json.dumps(row, sort_keys=True, ensure_ascii=False)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{content or ''}{METADATA_ROW}{digest}"
