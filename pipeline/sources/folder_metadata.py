"""An image folder's metadata file, as Hugging Face's imagefolder layout keeps labels and captions: a `metadata.csv` or
`metadata.jsonl` beside the images, one row per image, its `file_name` the image's path relative to the metadata
file's folder, its other columns (label, caption, ...) the image's. `join_folder_metadata` reads each one the listing
gives, once, on the driver, and says which listed image file gets which row; each read task is sent its own files'
rows (`unit_metadata`), which become the records' pass-through columns (`image_files.read_files`). A zip archive's
metadata members are joined by the same rules by its read task (`zip_archives._zip_metadata`), keyed by member path.

The rules, where `datasets.load_dataset("imagefolder", ...)` is followed and where not (a streaming purifier keeps
every image):
- the names are `metadata.csv` and `metadata.jsonl` (case does not count), in any folder of the input; `file_name`
  is resolved against the metadata file's own folder (a `\\` read as `/`, `./` and `x/../` dropped), so a metadata
  file names images in its folder and the folders below it; a name matches as written, else the one image whose
  name is equal to it in Unicode's NFC form (macOS writes 'é' decomposed, a CSV typed elsewhere mostly composed: the
  two look alike), unless another row of the file names that image too, or two images are equal to it so
  (`_matched`): such a row is joined to nothing, its example saying why, never to one of them by chance; ids and
  file_name are kept as written;
- a row's columns are the image's, `file_name` included (datasets turns it into the image column; here the row's id
  says the path from the input's root, `file_name` the path the metadata file gave). A column named like one of the
  job's gets `input_` before it (`records.passthrough_name`), as any input's own column;
- an image no row names is purified all the same, with nulls in those columns (datasets leaves it out); a row naming
  no listed image file is counted and the first few named (`FolderMetadata.unmatched`), not a reject: no image is
  lost, and the names tell the user what to fix;
- an image named by two metadata files takes the row of the one nearest to it (the deeper folder), but a row naming
  it as written before one naming it under NFC alone (as before NFC matching: its row and stamp stay as they were);
- a metadata file that cannot be read as such (not UTF-8, a CSV row of the wrong width, a JSONL line that is not a
  JSON object, no `file_name` column, a `file_name` that is not text, one named twice, two columns whose names differ
  only in case, which the output could not hold apart for case-blind readers) is a reject saying what and on
  which line (`FolderMetadata.rejects`), and the images it would name are purified without its columns; once it is
  fixed and joined, a later run removes that reject (`plan.JobPlan.metadata_rejects`), and its images' rows are said
  changed (their stamps hold their rows' digests: `units.with_metadata_row`), for --refresh-changed to write again;
- a CSV column is typed as pandas (which datasets uses) reads it: integers, floats or true/false where every value
  reads so, else text (dates too), empty cells null; JSONL values as JSON types them, so that an integer label stays
  an integer."""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sources.records import free_name, passthrough_name
from pipeline.storage import describe

METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
FILE_NAME = "file_name"
UNMATCHED_EXAMPLES = 5  # names of rows naming no image file that a run shows (its count is of all of them)


def is_folder_metadata(path: str) -> bool:
    """Whether `path` (a listed file) is named as an image folder's metadata file."""
    return posixpath.basename(path).lower() in METADATA_NAMES


# Tables of text under another name: GTSRB's `GT-final_test.csv` of class ids beside its images, a labels file
TABLE_EXTS = ("csv", "tsv", "jsonl", "json")


def table_note(name: str) -> str:
    """For the reject of a file or tar member `name` that is a table of text under another name than a metadata
    file's: what it is and how the job would join its columns, since 'not a recognised image format' (or 'expected
    exactly one image member') alone read as if its labels were simply lost; '' for any other name."""
    ext = posixpath.basename(name).rpartition(".")[2].lower()
    if "." not in posixpath.basename(name) or ext not in TABLE_EXTS or is_folder_metadata(name):
        return ""
    return (f"a .{ext} table, not an image: labels or annotations? the job joins one named metadata.csv or "
            "metadata.jsonl, with a file_name column naming each image relative to its folder, to those images' rows "
            "(docs/job.md, Inputs); this one is not joined")


class MetadataProblem(ValueError):
    """Why a metadata file cannot be joined: what is wrong, and where (its line)."""


@dataclass
class FolderMetadata:
    """What the listing's metadata files give: each joined image file's columns, the metadata files joined (skipped as
    inputs, counted as metadata), those that are rejects and why, and the rows that name no listed image file."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # listed image path -> its output columns
    joined: list[str] = field(default_factory=list)  # listed paths of the metadata files joined
    joined_ids: list[str] = field(default_factory=list)  # their ids (paths below the input's root)
    # listed image paths whose row is not known: a metadata file that cannot be joined lies in their folder or above,
    # nearer to them than the one whose row they have (if any); it may name them
    unknown: set[str] = field(default_factory=set)
    rejects: dict[str, str] = field(default_factory=dict)  # listed path of a metadata file -> why it is a reject
    unmatched: int = 0  # rows whose file_name is no listed image file
    unmatched_examples: list[str] = field(default_factory=list)  # 'train/metadata.csv: 7.png'
    folders: set[str] = field(default_factory=set)  # the folders (ids) of the metadata files joined

    def covers(self, id_: str) -> bool:
        """Whether a joined metadata file lies in the folder of the image file `id_` or above it (it may name it)."""
        folder = posixpath.dirname(id_)
        while True:
            if folder in self.folders:
                return True
            if not folder:
                return False
            folder = posixpath.dirname(folder)

    def found(self) -> bool:
        """Whether the listing gave any metadata file (joined or not)."""
        return bool(self.joined or self.rejects)

    def reset(self) -> None:
        """Empty, for a listing made again (a retried one counts once)."""
        self.rows, self.joined, self.joined_ids, self.rejects, self.unknown, self.folders = {}, [], [], {}, set(), set()
        self.unmatched, self.unmatched_examples = 0, []


@dataclass
class ArchiveMetadata:
    """What the read tasks joined inside zip archives and tar shards (their metadata members are read there, not at
    the listing): the metadata members joined, and their rows that name no member (with the first few, each
    'd.zip/train/metadata.csv: 7.png'), summed over the read units' count records (`sources.read_unit`)."""

    joined: int = 0
    unmatched: int = 0
    unmatched_examples: list[str] = field(default_factory=list)
    # a dry run's: the sidecar members of the zip archives, from the same directories (`zip_metadata_found`); a run's
    # read tasks name theirs in their count records instead
    sidecars: int = 0

    def add(self, joined: int, unmatched: int, examples: list[str], sidecars: int = 0) -> None:
        self.joined += joined
        self.unmatched += unmatched
        self.unmatched_examples += examples[: UNMATCHED_EXAMPLES - len(self.unmatched_examples)]
        self.sidecars += sidecars

    def found(self) -> bool:
        return bool(self.joined or self.unmatched)


def metadata_report(folders: FolderMetadata | None, archives: ArchiveMetadata, earlier_rejects_removed: int = 0,
                    ) -> dict[str, Any] | None:
    """--join-metadata: what the run or dry run joined, for its summary or report (None when it found no metadata
    file): the folders' metadata files joined and not, the image files given a row, of those joined the files an
    earlier run made a reject of (fixed since: that reject goes), the metadata members of zip archives and tar shards
    joined (`archives`), and the rows of either that name no image file of the input, with the first few."""
    if not ((folders is not None and folders.found()) or archives.found()):
        return None
    found = folders or FolderMetadata()
    examples = [*found.unmatched_examples, *archives.unmatched_examples][:UNMATCHED_EXAMPLES]
    return {"files_joined": len(found.joined), "files_rejected": len(found.rejects),
            "image_files_joined": len(found.rows), "earlier_rejects_removed": earlier_rejects_removed,
            "archive_files_joined": archives.joined,
            "rows_without_image_file": found.unmatched + archives.unmatched,
            "rows_without_image_file_examples": examples}


def unmatched_note(count: int, examples: list[str]) -> str:
    """What a run says of the metadata rows that name no image file of the input."""
    shown = "; ".join(examples) + ("; ..." if count > len(examples) else "")
    return (f"{count:,} row{'' if count == 1 else 's'} of image-folder metadata files name{'s' if count == 1 else ''} no "
            f"image file of the input (its file_name, relative to the metadata file's folder), joined to nothing: "
            f"{shown}")


def join_folder_metadata(images: dict[str, str], metadata_files: dict[str, str], read: Callable[[str], bytes],
                         found: FolderMetadata) -> None:
    """Join the rows of `metadata_files` to the listed image files `images` (each id -> its full path), into `found`,
    keyed by full paths. `read` gives a file's bytes from its full path (an error it raises makes that file a reject).
    Matched by id, the path below the input's root that the run names a file by (a web folder's escapes decoded)."""
    found.reset()
    spellings = _Spellings(images)
    # path -> (depth of its metadata file's folder, columns, whether the row names it as written)
    by_image: dict[str, tuple[int, dict[str, Any], bool]] = {}
    rejected: dict[str, int] = {}  # folder id of a metadata file that cannot be joined -> its depth
    # deeper folders last: an image named twice takes the nearest metadata file's row
    for id_ in sorted(metadata_files, key=lambda i: (i.count("/"), i)):
        path = metadata_files[id_]
        try:
            rows = parse_metadata(posixpath.basename(id_), read(path))
        except MetadataProblem as err:
            found.rejects[path] = f"image-folder metadata file not joined to its images: {err}"
            rejected[posixpath.dirname(id_)] = id_.count("/")
            continue
        except Exception as err:  # noqa: BLE001 - a file that cannot be read is its own reject, as an image is
            found.rejects[path] = f"image-folder metadata file not joined to its images: could not read it: {describe(err)}"
            rejected[posixpath.dirname(id_)] = id_.count("/")
            continue
        found.joined.append(path)
        found.joined_ids.append(id_)
        folder = posixpath.dirname(id_)
        found.folders.add(folder)
        for row, image, why, exact in _matched(rows, folder, images, spellings):
            if image is None:
                found.unmatched += 1
                if len(found.unmatched_examples) < UNMATCHED_EXAMPLES:
                    found.unmatched_examples.append(f"{id_}: {row[FILE_NAME]}{why}")
                continue
            # a row naming the image as written wins over a nearer file's naming it in another spelling, which is
            # how the image was joined before NFC matching: its row, and so its stamp, stay as they were
            if image in by_image and by_image[image][2] and not exact:
                continue
            by_image[image] = (id_.count("/"), {passthrough_name(k): v for k, v in row.items()}, exact)
    found.rows = {image: columns for image, (_, columns, _) in by_image.items()}
    if rejected:
        found.unknown = {image for id_, image in images.items()
                         if _nearest_rejected(id_, rejected) > by_image.get(image, (-1, None, False))[0]}


def _nearest_rejected(id_: str, rejected: dict[str, int]) -> int:
    """The depth of the deepest folder holding `id_` whose metadata file cannot be joined; -1 for none."""
    folder, deepest = posixpath.dirname(id_), -1
    while True:
        deepest = max(deepest, rejected.get(folder, -1))
        if not folder:
            return deepest
        folder = posixpath.dirname(folder)


class _Spellings:
    """The listed ids by their NFC form, made at the first row whose name matches no id as it is written: macOS
    writes names decomposed (NFD: 'e' and a combining accent), a CSV typed elsewhere mostly holds them composed (NFC),
    and the two look alike. Only non-ASCII ids are indexed (an ASCII name is its own NFC form)."""

    def __init__(self, images: dict[str, str]) -> None:
        self.images = images
        self.index: dict[str, list[str]] | None = None

    def alike(self, id_: str) -> list[str]:
        """The listed ids equal to `id_` under NFC, sorted (`id_` is none of them)."""
        if self.index is None:
            self.index = {}
            for name in self.images:
                if not name.isascii():
                    self.index.setdefault(unicodedata.normalize("NFC", name), []).append(name)
        key = unicodedata.normalize("NFC", id_)
        return sorted({*self.index.get(key, ()), *([key] if key in self.images else [])})


def _matched(rows: list[dict[str, Any]], folder: str, images: dict[str, str], spellings: _Spellings,
             ) -> Iterator[tuple[dict[str, Any], str | None, str, bool]]:
    """Each row of one metadata file in `folder` with the listed image (full path) it is joined to, or None and why
    not (for the example of a row joined to nothing: '' when it names no file), and whether it names the image as
    written. A row names the id its file_name
    resolves to, as written, else the one id equal to it under NFC, unless another row of the file names that one
    (as written, or so too: each image takes one row) or several ids are (files named alike in two normalizations):
    such a row goes to none of them, rather than to one by chance."""
    exact: set[str] = set()
    loose: dict[str, list[int]] = {}  # id -> the rows naming it under NFC alone
    found: list[tuple[dict[str, Any], str | None, str, bool]] = []
    for n, row in enumerate(rows):
        id_ = _resolved(folder, row[FILE_NAME])
        if id_ in images:
            exact.add(id_)
            found.append((row, images[id_], "", True))
            continue
        alike = [] if id_.isascii() else spellings.alike(id_)  # an ASCII name is its own NFC form
        if len(alike) == 1:
            loose.setdefault(alike[0], []).append(n)
            found.append((row, alike[0], "", False))
        elif alike:
            found.append((row, None, f" ({len(alike)} image files have this name in other Unicode normalizations, so "
                                     f"it is joined to none: {', '.join(ascii(a)[1:-1] for a in alike)})", False))
        else:
            found.append((row, None, "", False))
    for id_, named in loose.items():
        for n in named:
            if id_ in exact or len(named) > 1:
                found[n] = (rows[n], None, f" (names {ascii(id_)[1:-1]} in another Unicode normalization, as another "
                                           f"row does: each image takes one row)", False)
            else:
                found[n] = (rows[n], images[id_], "", False)
    yield from found


def _resolved(folder: str, file_name: str) -> str:
    """The id a row's file_name names: relative to its metadata file's folder (an id too), '\\' read as '/'."""
    return posixpath.normpath(posixpath.join(folder, file_name.replace("\\", "/")))


def parse_metadata(name: str, data: bytes) -> list[dict[str, Any]]:
    """The rows of metadata file `name` holding `data`, each with its file_name (text), in file order: MetadataProblem
    when it cannot be joined."""
    try:
        text = data.decode("utf-8-sig")  # Excel writes a byte-order mark before the header
    except UnicodeDecodeError as err:
        raise MetadataProblem(f"not UTF-8 text (byte {err.start} is not UTF-8)") from None
    rows, lines = _jsonl_rows(text) if name.lower().endswith(".jsonl") else _csv_rows(text)
    seen: dict[str, int] = {}
    for row, line in zip(rows, lines, strict=True):
        value = row.get(FILE_NAME)
        if FILE_NAME not in row:
            raise MetadataProblem(f"line {line}: no {FILE_NAME} (the column naming each row's image file)")
        if not isinstance(value, str) or not value:
            raise MetadataProblem(f"line {line}: {FILE_NAME} {json.dumps(value)} is not a file's name")
        key = posixpath.normpath(value.replace("\\", "/"))
        if key in seen:
            raise MetadataProblem(f"lines {seen[key]} and {line} both name {value} (each image takes one row)")
        seen[key] = line
    return rows


def _case_twins(first: str, second: str) -> str:
    """What is said of two columns of a metadata file whose names differ only in case: the output would hold both."""
    return (f"columns {first} and {second} differ only in case, which readers that ignore case (DuckDB, Spark, Hive, "
            "Athena) take for one column: rename one")


JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "true/false", type(None): "null"}


def _jsonl_rows(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """A JSON Lines file's objects, and the line of each (blank lines skipped)."""
    rows, lines = [], []
    spelt: dict[str, str] = {}  # a column's name in lower case -> as the file first spells it (its rows may differ)
    # split at line feeds alone: str.splitlines also splits at U+2028 and the like, which a JSON string may hold
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetadataProblem(f"line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise MetadataProblem(f"line {number}: a JSON {JSON_KINDS.get(type(row), 'value')}, not an object of columns")
        for column in row:
            if spelt.setdefault(column.lower(), column) != column:
                raise MetadataProblem(f"line {number}: {_case_twins(spelt[column.lower()], column)}")
        rows.append(row)
        lines.append(number)
    return rows, lines


def _csv_rows(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """A CSV file's rows, each column typed (`_typed`), and the line each row ends on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise MetadataProblem("line 1: no header row (the column names, file_name among them)")
    if FILE_NAME not in header:
        raise MetadataProblem(f"line 1: no {FILE_NAME} column (the header names {', '.join(header)})")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise MetadataProblem(f"line 1: column {', '.join(twice)} named twice")
    spelt: dict[str, str] = {}
    for name in header:
        if spelt.setdefault(name.lower(), name) != name:
            raise MetadataProblem(f"line 1: {_case_twins(spelt[name.lower()], name)}")
    cells, lines = [], []
    try:
        for row in reader:
            if not row or row == [""]:  # a blank line
                continue
            if len(row) != len(header):
                raise MetadataProblem(f"line {reader.line_num}: {len(row)} fields, where the header has {len(header)}")
            cells.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:  # a NUL byte, a quote left open at the end
        raise MetadataProblem(f"line {reader.line_num}: not read as CSV ({err})") from None
    unnamed = [k for k, name in enumerate(header) if not name.strip()]
    held = [k for k in unnamed if any(row[k] for row in cells)]
    if held:  # a trailing comma's empty column is dropped; one holding values needs its name
        raise MetadataProblem(f"line 1: column {held[0] + 1} has no name, and line "
                              f"{lines[next(n for n, row in enumerate(cells) if row[held[0]])]} holds a value in it")
    columns = {name: [row[k] for row in cells] if name == FILE_NAME else _typed([row[k] for row in cells])
               for k, name in enumerate(header) if k not in unnamed}
    return [{name: values[n] for name, values in columns.items()} for n in range(len(cells))], lines


# The types a CSV column is read as, the first its every value fits (as pandas reads them, which datasets uses); else
# text. Dates and times stay text: pyarrow's CSV reader made a timestamp of '2026-01-01T10:00:00' whatever it was given.
CSV_TYPES = (pa.int64(), pa.float64(), pa.bool_())


def _typed(texts: list[str]) -> list[Any]:
    """A CSV column's values: empty cells null, the rest integers, floats (NaN and infinities null: no JSON for them) or
    true/false where every one reads so, else the text."""
    column = pa.array([text or None for text in texts], pa.string())
    for kind in CSV_TYPES:
        try:
            values = pc.cast(column, kind).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
    return column.to_pylist()


def with_row(meta: dict[str, Any], row: dict[str, Any]) -> None:
    """Add an image's metadata `row` to its columns `meta` (the folder's `label` of --labels-from-folders): a row's
    column of the same name wins (written for this image, as datasets takes it; the folder's name stays in the id),
    and one named so in another case (`Label`) gets `metadata_` before it, as beside a tar key's own columns: the
    output keeps both, and case-blind readers do not take one for the other."""
    own, taken = set(meta), {column.lower() for column in meta}
    for column, value in row.items():
        meta[column if column in own else free_name(column, taken, "metadata_")] = value


def unit_metadata(paths: Iterable[str], found: FolderMetadata | None) -> str:
    """The metadata a read task of `paths` is sent with its unit: its own files' columns and rejects, as JSON text
    (a Ray row's column of one type in every row: '' when it has none)."""
    if found is None:
        return ""
    rows = {p: found.rows[p] for p in paths if p in found.rows}
    rejects = {p: found.rejects[p] for p in paths if p in found.rejects}
    return json.dumps({"rows": rows, "rejects": rejects}) if rows or rejects else ""


def sent_metadata(text: str | None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """A read task's `unit_metadata`: path -> columns, and path -> why it is a reject."""
    if not text:
        return {}, {}
    sent = json.loads(text)
    return sent["rows"], sent["rejects"]
