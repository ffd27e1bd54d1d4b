"""The reader of loose image files: one record per file of a "files" unit, its bytes or the reject saying why it was
not read, its label from its folder when labels come from folders, and the columns of its row in an image folder's
metadata file when one names it (`folder_metadata`, joined at planning and sent with the unit)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from typing import Any

from pipeline.sources.file_bytes import ImageTooLarge, NotAFile, read_bytes
from pipeline.sources.folder_metadata import sent_metadata, with_row
from pipeline.sources.ids import relative_id, text_name
from pipeline.sources.records import image_record, reject_record
from pipeline.sources.units import ReadUnit
from pipeline.storage import describe


def _folder_link_reason(path: str) -> str:
    """The reject reason of an input entry that is a folder: a local link to a folder being listed already (a loop),
    which `discover` does not follow; 'Is a directory' alone did not say why it was not listed."""
    local = path.removeprefix("file://")
    if os.path.islink(local):
        return (f"not read: a link to a folder that is being listed already ({text_name(os.path.basename(local))} -> "
                f"{text_name(os.readlink(local))}: a loop), which is not followed; that folder's files are read under "
                "their own paths")
    return "not read: a folder, not a file (it was not one when the input was listed)"


def read_files(unit: ReadUnit, fs_opts: dict[str, Any], labels_from_folders: bool,
                max_image_bytes: int, metadata: str = "") -> Iterator[dict[str, Any]]:
    rows, rejects = sent_metadata(metadata)
    for path, size in zip(unit.paths, unit.sizes or (None,) * len(unit.paths), strict=True):
        id_ = relative_id(path, unit.root)
        if path in rejects:  # a metadata file that could not be joined: why, not 'not a recognised image format'
            yield reject_record(id_, path, rejects[path], "read")
            continue
        meta: dict[str, Any] = {}
        if labels_from_folders:
            parent = posixpath.dirname(id_)
            meta["label"] = posixpath.basename(parent) if parent else None
        # a metadata row's label wins over the folder's: written for this image, as datasets takes it (the folder's
        # name stays in the id)
        with_row(meta, rows.get(path, {}))
        if path.endswith("/"):  # `discover` keeps such a key when it holds bytes: no folder marker, but unreadable
            yield reject_record(id_, path, f"not read: an object whose key ends in '/' holding {size} bytes (a folder "
                                "marker holds none); s3fs drops the '/' and cannot read it: copy it to a key without "
                                "the '/'", "read")
            continue
        try:
            data = read_bytes(path, fs_opts, max_image_bytes, listed_size=size)
        except (ImageTooLarge, NotAFile) as err:
            yield reject_record(id_, path, str(err), "read")
            continue
        except IsADirectoryError:  # `discover` keeps a link back to a folder it lists (a loop) as one entry
            yield reject_record(id_, path, _folder_link_reason(path), "read")
            continue
        except Exception as err:  # noqa: BLE001 - a file that stays unreadable after retries is a per-file reject
            yield reject_record(id_, path, f"could not read file: {describe(err)}", "read")
            continue
        yield image_record(id_, path, data, meta)
