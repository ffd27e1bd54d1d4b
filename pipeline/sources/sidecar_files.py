"""Sidecar files beside image files in a folder, as img2dataset's `--output_format files` writes a shard (`00000/`
holding `000000.jpg`, `000000.json`, `000000.txt`, ...) and hand-made sets keep captions and labels (`x.png` with
`x.txt`, `x.cls`): the listing pairs each such file with its image (`pair_sidecars`), so that it is no input of its own
but the image's columns, read by the image's read task as the same member of a WebDataset tar key is
(`image_files.read_files`, `webdataset_keys.sidecar_columns`).

The rules (names only, in one folder; looked at when image-folder metadata is joined, --join-metadata):
- an image file is one whose name ends in an image extension (`x.jpg`, `x.jfif`, `x.heic`; its stem `x`); a file that
  is not (not an image extension, not a tar, Parquet, zip or TFRecord file, not a metadata.csv / .jsonl, not an archive
  the job names or a video: `NOT_SIDECAR_EXTENSIONS`) whose name is an image's stem, a
  dot and more (`x.json`, `x.txt`, `x.cls`, `x.seg.json`) or an image's whole name, a dot and more (`x.jpg.json`, as
  Google Takeout and some labelling tools write) is that image's sidecar; what follows is its extension, which names its
  column as in a tar (`json`: its keys, `cls`: `label`, `seg.json`: `seg_json`), in lower case; an empty one after a
  dot (`x.jpg.`, `x..txt`, `x.jpg.json.`) names no column: no sidecar (`empty_extension`);
- a name that could belong to two images is the nearest name's: `a.b.txt` is `a.b.jpg`'s beside `a.jpg`, and
  `x.jpg.json` is `x.jpg`'s; a name that fits two images of one stem (`x.jpg` and `x.png`, with `x.txt`) is a sidecar
  of each, so that neither loses it;
- an image file is never a sidecar (a mask `x.seg.png` beside `x.png` is an image of its own, unlike in a tar key,
  where every file is one sample's member), and a file that names no image of its folder (`00000_stats.json`, a
  caption whose image is gone) stays an input: a reject that says it is no image.
An image's stamp takes its sidecars' stamps (`stamped_row`), so that a sidecar edited, added or removed is a change of
its image, as an edited metadata row is (`units.with_metadata_row`)."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.sources.folder_metadata import is_folder_metadata
from pipeline.sources.webdataset_keys import IMAGE_EXTENSIONS, JsonColumns, sidecar_columns

# In the row a stamp digests (`stamped_row`): no column of a metadata file can be named so
SIDECARS_KEY = "\x00sidecars"


@dataclass
class Sidecars:
    """The listing's sidecar files: each image file's (its full path -> [(extension, sidecar's full path, listed size,
    content stamp)], by name), and the sidecar files' ids (paths below the input's root), sorted."""

    of: dict[str, list[tuple[str, str, int | None, str | None]]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Empty, for a listing made again (a retried one counts once)."""
        self.of, self.ids = {}, []


# Images by names a tar key does not take for its image, read all the same (the decoder goes by content): JPEG's .jpe,
# .jfif, .jif and .mpo, PNG's .apng, PPM's .pnm, BMP's .dib; a phone's HEIF/AVIF photo, a reject that says so; a
# camera's raw file beside its JPEG (IMG_1.CR2 with IMG_1.JPG; a DNG is a TIFF, purified); and the other image formats
# a folder of pictures holds (a .psd or .svg beside its .png). Never a sidecar: each is an input of its own, not a bytes
# column of the other's row, copied unpurified (25 MB of raw data a row)
OTHER_IMAGE_EXTENSIONS = frozenset({
    ".jpe", ".jfif", ".jif", ".mpo", ".apng", ".pnm", ".dib", ".heic", ".heif", ".hif", ".avif",
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef", ".srw",
    ".raw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq",
    ".psd", ".xcf", ".svg", ".eps", ".ai", ".ico", ".icns", ".tga", ".jp2", ".j2k", ".jxl", ".exr", ".hdr"})
# Files that stay inputs of their own beside an image of their stem, by their last extension: archives and compressed
# data the job names in a reject (a 7z or RAR archive, a .tar.zst shard, a .gz), and videos (a phone's Live Photo
# `IMG_1.MOV` beside `IMG_1.JPG`). As a sidecar each became its image's bytes column, copied unpurified into the
# output, or, over --max-image-mb, made its image a reject; the containers the job reads (.tar, .zip, .parquet, ...)
# are left out by the callers (`listing.is_container_name`)
NOT_SIDECAR_EXTENSIONS = frozenset({".7z", ".rar", ".zst", ".zstd", ".tzst", ".lz4", ".gz", ".bz2", ".xz", ".mov",
                                    ".mp4", ".m4v", ".avi", ".mkv", ".webm", ".3gp"})


def image_stem(name: str) -> str | None:
    """The stem of a file name that ends in an image extension ('x.jpg' -> 'x', 'x.jfif' -> 'x'), else None."""
    stem, dot, ext = name.rpartition(".")
    ext = f".{ext.lower()}"
    return stem if dot and stem and (ext in IMAGE_EXTENSIONS or ext in OTHER_IMAGE_EXTENSIONS) else None


def _input_of_its_own(name: str) -> bool:
    """Whether a file named `name` stays an input whatever image lies beside it (`NOT_SIDECAR_EXTENSIONS`)."""
    _, dot, ext = name.rpartition(".")
    return bool(dot) and f".{ext.lower()}" in NOT_SIDECAR_EXTENSIONS


def _never_sidecar(name: str) -> bool:
    """Whether a file named `name` is no sidecar whatever lies beside it: an image, a folder's metadata table, or an
    input of its own (`_input_of_its_own`)."""
    return image_stem(name) is not None or is_folder_metadata(name) or _input_of_its_own(name)


def pair_sidecars(paths: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """The sidecars among listed `paths` (the files read as image files: no container), by the module's rules: each
    sidecar's path -> [(its image's path, its extension)], one pair per image it belongs to."""
    folders: dict[str, list[str]] = {}
    for path in paths:
        folders.setdefault(posixpath.dirname(path), []).append(path)
    paired: dict[str, list[tuple[str, str]]] = {}
    for names in folders.values():
        # a prefix of a sidecar's name -> the images it names: a stem ('x' of x.jpg, x.png) or a whole name ('x.jpg')
        images: dict[str, list[str]] = {}
        for path in names:
            base = posixpath.basename(path)
            stem = image_stem(base)
            if stem is not None:
                images.setdefault(stem, []).append(path)
                images.setdefault(base, []).append(path)
        if not images:
            continue
        for path in names:
            base = posixpath.basename(path)
            if _never_sidecar(base):
                continue
            at = len(base)
            while (at := base.rfind(".", 0, at)) > 0:  # the longest prefix first: the nearest name
                ext = base[at + 1 :]
                if not all(ext.split(".")):
                    break  # an empty extension ('x.jpg.', 'x..txt', 'x.jpg.json.'): `empty_extension`
                if base[:at] in images:
                    paired[path] = [(image, ext.lower()) for image in sorted(set(images[base[:at]]))]
                    break
    return paired


def empty_extension(name: str) -> bool:
    """Whether a file name has an empty extension: a dot at its end, or two together after its first character ('x.jpg.',
    'x.jpg..', 'x..txt', 'x.jpg.json.'). Such an extension names no column, so `pair_sidecars` makes no sidecar of it
    (as one, 'x.jpg.' was a 'jpg.' bytes column of x.jpg's row, copied unpurified): the file is an input of its own,
    read by its bytes as any file that is no sidecar."""
    rest = name[1:]  # a dot-file's first dot is no extension's
    return "." in rest and not all(rest.split(".")[1:])


# The extensions of the sidecars a file left without its image most likely is: a caption, a label, a .json
ORPHAN_EXTENSIONS = frozenset({"txt", "text", "transcript", "cls", "json"})


def orphan_note(name: str) -> str:
    """For the reject of a file that is no image, named as a caption, label or .json sidecar (`ORPHAN_EXTENSIONS`): that
    it would be an image's columns had it one beside it ('' for other names). 'not a recognised image format' alone
    read as a damaged image, and left a user to guess that the image is missing (img2dataset's `00000_stats.json`, a
    caption whose image was deleted), or that --join-metadata false reads sidecars as inputs."""
    base = posixpath.basename(name)
    if empty_extension(base) and not _never_sidecar(base):  # a damaged 'IMG..1.jpg' is no sidecar that lost its image
        return ("its name has an empty extension (a '.' at its end, or two together), which names no column: it is no "
                "image's sidecar (docs/job.md, Inputs)")
    stem, dot, ext = base.rpartition(".")
    if not (dot and stem) or ext.lower() not in ORPHAN_EXTENSIONS:
        return ""
    return (f"if it is an image's sidecar, no image named {stem}.<image extension> lies beside it in its folder, or "
            "--join-metadata is false: a sidecar gives its image's row its columns (docs/job.md, Inputs)")


def stamped_row(row: dict[str, Any] | None, sidecars: list[tuple[str, str, int | None, str | None]]) -> dict[str, Any] | None:
    """An image file's metadata row as its stamp digests it (`units.with_metadata_row`): with its sidecars' names and
    content stamps, so that one edited, added or removed changes its image's stamp whatever the image's bytes (a change
    `changes.same_bytes` does not take back); `row` itself where it has none, so that an image without sidecars keeps the
    stamp it had before sidecars were read."""
    if not sidecars:
        return row
    return {**(row or {}), SIDECARS_KEY: sorted([posixpath.basename(path), content] for _, path, _, content in sidecars)}


def unit_sidecars(paths: Iterable[str], found: Sidecars | None) -> str:
    """The sidecars a read task of image files `paths` is sent with its unit, as JSON text (a Ray row's column of one
    type in every row: '' when it has none): image path -> [[extension, sidecar path, listed size or -1], ...]."""
    if found is None:
        return ""
    sent = {p: [[ext, path, -1 if size is None else size] for ext, path, size, _ in found.of[p]] for p in paths
            if p in found.of}
    return json.dumps(sent) if sent else ""


def sent_sidecars(text: str | None) -> dict[str, list[tuple[str, str, int | None]]]:
    """A read task's `unit_sidecars`: image path -> [(extension, sidecar path, listed size or None)]."""
    if not text:
        return {}
    return {image: [(ext, path, None if size < 0 else size) for ext, path, size in sidecars]
            for image, sidecars in json.loads(text).items()}


def sidecar_meta(sidecars: Iterable[tuple[str, str, Callable[[], bytes | str]]], kind: str,
                 json_columns: JsonColumns) -> dict[str, Any] | str:
    """An image's columns from its sidecars (extension, name as shown, read: its bytes or why it was not read), as the
    same members of a tar key give them (`webdataset_keys.sidecar_columns`); or why its image is a reject: a sidecar
    not read, or two that give one column ('x.TXT' and 'x.txt', 'x.json' and 'x.jpg.json'). Never the image without a
    sidecar's columns, which would lose them unsaid. `kind`: 'file' (a folder's) or 'member' (a zip archive's)."""
    parts: dict[str, tuple[str, bytes]] = {}
    for ext, shown, read in sidecars:
        if ext in parts:
            return (f"sidecar {kind}s {parts[ext][0]} and {shown} both give this image's {ext!r} values, so one would "
                    "be lost: rename or remove one of them")
        data = read()
        if isinstance(data, str):
            return data
        parts[ext] = (shown, data)
    meta = sidecar_columns(parts, json_columns)
    return f"sidecar {kind}s {meta}" if isinstance(meta, str) else meta


# How many .json sidecar files a dry run reads to learn the columns their keys give (`sampled_json_sidecars`): the
# first image's of each folder, up to this many, read as many at once as the store allows. Their keys are the columns
# most likely to differ in case from another file's (a table's `Caption` beside the .json's `caption`); an
# img2dataset folder's are the same for every image.
JSON_SAMPLE = 16


def sampled_json_sidecars(images: Iterable[str], found: Sidecars, fs_opts: dict[str, Any], max_bytes: int,
                          limit: int = JSON_SAMPLE) -> dict[str, bytes]:
    """For a dry run: the .json sidecar's bytes of the first image of each folder among `images` that has one (one with
    a single .json sidecar: two make it a reject), of at most `limit` folders, by image path. One over `max_bytes` or
    that cannot be read is left out (its image's reject, in the run, says why)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.sources.file_bytes import read_bytes
    from pipeline.storage import concurrent_reads

    chosen: dict[str, tuple[str, str, int | None]] = {}  # folder -> (image, its .json sidecar, listed size)
    for image in images:
        folder = posixpath.dirname(image)
        if folder in chosen:
            continue
        jsons = [(path, size) for ext, path, size, _ in found.of.get(image, ()) if ext == "json"]
        if len(jsons) == 1:
            chosen[folder] = (image, *jsons[0])
            if len(chosen) >= limit:
                break
    if not chosen:
        return {}

    def read(item: tuple[str, str, int | None]) -> bytes | None:
        _, path, size = item
        try:
            return read_bytes(path, fs_opts, max_bytes, listed_size=size)
        except Exception:  # noqa: BLE001 - the run reads it again, and its image's reject says why
            return None

    items = list(chosen.values())
    with ThreadPoolExecutor(concurrent_reads(items[0][1], len(items))) as pool:
        return {image: data for (image, _, _), data in zip(items, pool.map(read, items), strict=True) if data is not None}


def sidecar_names(image: str, found: Sidecars, json_bytes: dict[str, bytes]) -> dict[str, Any] | None:
    """The columns (names; the values are no one's) the sidecars of image file `image` give its row, as its read task
    names them (`sidecar_meta`): a sidecar's by its extension, a .json's keys from its bytes in `json_bytes`; None when
    it has a .json sidecar not there (its keys unknown before the run reads it), {} when its sidecars make it a reject."""
    sidecars = found.of.get(image, ())
    if any(ext == "json" for ext, *_ in sidecars) and image not in json_bytes:
        return None
    given = (json_bytes[image] if ext == "json" else b"" for ext, *_ in sidecars)
    meta = sidecar_meta(((ext, posixpath.basename(path), lambda data=data: data)
                         for (ext, path, _, _), data in zip(sidecars, given, strict=True)), "file", JsonColumns())
    return {} if isinstance(meta, str) else meta
