"""The reader of loose image files: one record per file of a "files" unit, its bytes or the reject saying why it was
not read, its label from its folder when labels come from folders, the columns of its sidecar files (`sidecar_files`:
`x.txt`, `x.json` beside `x.jpg`, read here as a tar key's members are) and of its row in an image folder's metadata
file when one names it (`folder_metadata`; both found at planning and sent with the unit)."""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Iterator
from typing import Any

from pipeline.sources.file_bytes import ImageTooLarge, NotAFile, read_bytes
from pipeline.sources.folder_metadata import sent_metadata, table_note, with_row
from pipeline.sources.ids import relative_id, text_name
from pipeline.sources.records import image_record, reject_record
from pipeline.sources.sidecar_files import orphan_note, sent_sidecars, sidecar_meta
from pipeline.sources.units import ReadUnit
from pipeline.sources.webdataset_keys import JsonColumns, with_own_columns
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
                max_image_bytes: int, metadata: str = "", sidecars: str = "") -> Iterator[dict[str, Any]]:
    """The records of a "files" unit's image files. `metadata`: their rows of image-folder metadata files
    (`folder_metadata.unit_metadata`); `sidecars`: their sidecar files (`sidecar_files.unit_sidecars`)."""
    rows, rejects = sent_metadata(metadata)
    sidecars_of = sent_sidecars(sidecars)
    json_columns = JsonColumns()  # the unit's .json sidecars' columns, limited as a tar shard's are
    for path, size in zip(unit.paths, unit.sizes or (None,) * len(unit.paths), strict=True):
        id_ = relative_id(path, unit.root)
        if path in rejects:  # a metadata file that could not be joined: why, not 'not a recognised image format'
            yield reject_record(id_, path, rejects[path], "read")
            continue
        parent = posixpath.dirname(id_)
        if path in sidecars_of:
            meta_or_why = _sidecar_meta(sidecars_of[path], fs_opts, max_image_bytes, json_columns)
            if isinstance(meta_or_why, str):
                yield reject_record(id_, path, meta_or_why, "read")
                continue
            meta = meta_or_why
            # as in a tar key: a sidecar's label (.cls, a .json's) wins over the folder's, a metadata row's column of a
            # sidecar's name is metadata_<name>
            with_own_columns(meta, labels_from_folders, posixpath.basename(parent) if parent else None, rows.get(path))
        else:
            meta = {}
            if labels_from_folders:
                meta["label"] = posixpath.basename(parent) if parent else None
            # a metadata row's label wins over the folder's: written for this image, as datasets takes it (the
            # folder's name stays in the id)
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
        record = image_record(id_, path, data, meta)
        orphan = orphan_note(id_)
        if orphan:  # a caption, label or .json without its image: if it is no image, its reject says so
            record["decode_note"] = "; ".join(note for note in (table_note(id_), orphan) if note)
        yield record


def _sidecar_meta(sidecars: list[tuple[str, str, int | None]], fs_opts: dict[str, Any], max_image_bytes: int,
                  json_columns: JsonColumns) -> dict[str, Any] | str:
    """An image file's columns from its sidecar files (`sidecar_files.sidecar_meta`), or why its image is a reject: a
    sidecar that cannot be read (or is over --max-image-mb), or two that give one column; its reject says which file,
    and --retry-rejects reads both again."""
    def read(path: str, size: int | None, name: str) -> bytes | str:
        try:
            # named as what it is: "image file ... is over --max-image-mb" sent a user looking at the image
            return read_bytes(path, fs_opts, max_image_bytes, listed_size=size, what=f"its sidecar file {name}")
        except ImageTooLarge as err:
            return str(err)
        except NotAFile as err:
            return f"its sidecar file {name} was not read: {err}"
        except Exception as err:  # noqa: BLE001 - a sidecar that stays unreadable after retries: its image's reject
            return (f"could not read its sidecar file {name} ({describe(err)}), so the image is not purified without "
                    "that file's columns: --retry-rejects reads both again")

    named = [(ext, path, size, text_name(posixpath.basename(path.rstrip("/")))) for ext, path, size in sidecars]
    return sidecar_meta(((ext, name, functools.partial(read, path, size, name)) for ext, path, size, name in named),
                        "file", json_columns)
