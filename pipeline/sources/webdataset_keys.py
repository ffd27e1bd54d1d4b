"""WebDataset keys of a tar shard: which members make one sample (`tar_key`: a member's path up to the first dot of
its name; a numbered name such as Kaggle's 'cat.0.jpg' keyed with its number), and a key's record (`tar_key_record`):
its one image member, its other members (.cls, .json, a mask) as columns."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pipeline.sources.folder_metadata import is_folder_metadata, table_note
from pipeline.sources.ids import text_name, text_value
from pipeline.sources.records import free_name, image_record, passthrough_name, reject_record

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".webp", ".gif"}


def member_path(name: str) -> str:
    """A tar member's path inside the shard, as a zip member's is (`zip_archives._zip_member_path`): its empty and '.'
    folders dropped. `tar -C folder -cf s.tar .` names its members './b.jpg', './cat/a.jpg', which are the files
    'b.jpg' and 'cat/a.jpg' (extracted, zipped or in a folder), and so are './/b.jpg', 'cat/./a.jpg', 'cat//a.jpg' and
    '/b.jpg' (GNU tar strips the leading '/'). '..' folders are kept: they lead elsewhere. A name left with no part
    ('.', a folder's entry, which is no member) is kept as it is."""
    if not name.startswith(("./", "/")) and "//" not in name and "/./" not in name:
        return name  # the common case, a plain name: no split
    return "/".join(part for part in name.split("/") if part not in ("", ".")) or name


def split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename (the member's path: `member_path`),
    ext = the rest."""
    return _split_key(member_path(name))


def _split_key(name: str) -> tuple[str, str]:
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _image_like(ext: str) -> bool:
    """Whether a member with extension `ext` ('jpg', 'seg.png') is an image: its last part is an image extension."""
    return "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def _numbered(ext: str) -> tuple[str, str] | None:
    """('0', 'jpg') for a compound extension that starts with a number ('0.jpg', '12.seg.png'), else None."""
    number, dot, rest = ext.partition(".")
    return (number, rest) if dot and rest and number.isascii() and number.isdigit() else None


def tar_key(name: str) -> tuple[str, str]:
    """A shard member's (key, ext): WebDataset's (`split_key`), except for a numbered name such as Kaggle's
    'cat.0.jpg', whose key takes the number ('cat.0', ext 'jpg'; 'cat.0.cls' and the mask 'cat.0.seg.png' are that
    key's sidecars). A plain tar of 'cat.0.jpg', 'cat.1.jpg', ... is many images, not one WebDataset sample with many;
    the rule looks at the name alone, so a key does not change with the shard's other members (one image of a name
    in one shard, several in the next, or one appended later). The key is of the member's path (`member_path`):
    './0001.jpg' and '0001.cls' are one key, '0001'."""
    return _tar_key(member_path(name))


def earlier_key(name: str) -> str:
    """The key earlier versions gave member `name`, from its name as the shard holds it: './b' for './b.jpg', where
    `tar_key` gives 'b'. An output's id of that form ('s.tar/./b') stays the key's (`tar_shards.read_tar`)."""
    return _tar_key(name)[0]


def earlier_ids(shard: str, names_of: Mapping[str, Iterable[str]], known: Callable[[str], bool]) -> dict[str, str]:
    """Key -> the id an earlier version gave it, for the keys of shard `shard` (its id) whose members' names
    (`names_of`: key -> its members' names) gave another key then (`earlier_key`: 's.tar/./b' for './b.jpg') where
    the output holds that id and not the key's own (`known`): such a key keeps the id its row or reject has, so that
    a resumed, incremental, retried or refreshing run skips or replaces that row and never writes a second one of the
    same member under the new id."""
    kept: dict[str, str] = {}
    for key, names in names_of.items():
        for name in names:
            earlier = earlier_key(name)
            if earlier != key and known(id_ := f"{shard}/{text_name(earlier)}") and not known(f"{shard}/{text_name(key)}"):
                kept[key] = id_
                break
    return kept


def _tar_key(name: str) -> tuple[str, str]:
    key, ext = _split_key(name)
    numbered = _numbered(ext)
    return (f"{key}.{numbered[0]}", numbered[1]) if numbered else (key, ext)


# A .cls label that is a whole number as written (ASCII digits, a sign before them) is that number, as WebDataset reads
# a class. int() takes more: '1_0' was read as 10 and an Arabic-Indic '٣' as 3, each then the label of another class.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")

# Sidecars that hold text whatever their bytes: WebDataset's own decoder reads these extensions as text.
TEXT_EXTENSIONS = {"txt", "text", "transcript"}


def _sidecar_value(ext: str, data: bytes) -> tuple[str, Any]:
    """A sidecar's column and value: its text, or its bytes when it is not UTF-8 text (a mask, an array). A caption
    (`TEXT_EXTENSIONS`: '.txt') is text all the same: one in latin-1 gave bytes, and since Arrow makes a column of
    text and bytes binary, every caption of its part file was written as bytes. Its bytes that are not UTF-8 are
    written as a name's are (`text_value`: b'caf\xe9' as 'caf\xe9', a backslash in it as '\\'), so they can be
    read back (`unescaped`). So is a .cls label that is not UTF-8 (a latin-1 'café' beside 'cat' made the label column
    binary). Text that is UTF-8 is written so too (`text_value`): unchanged, unless it holds such an escape literally
    (a caption 'caf\xe9' typed so), which would read back as another caption's byte: its backslashes are doubled."""
    # A caption's or label's surrounding whitespace (the newline an editor or `echo` ends it with) is not part of it;
    # any other sidecar that happens to be UTF-8 (a .csv, an .xml, an ASCII array) keeps its bytes exactly.
    captioned = ext.rsplit(".", 1)[-1] in TEXT_EXTENSIONS or ext == "cls"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if captioned:
            return "label" if ext == "cls" else ext.replace(".", "_"), text_value(
                data.decode("utf-8", "surrogateescape").strip())
        return ext.replace(".", "_"), data
    if captioned:
        text = text.strip()
    if ext == "cls":
        if _WHOLE_NUMBER.fullmatch(text):
            return "label", int(text)
        return "label", text_value(text)
    return ext.replace(".", "_"), text_value(text)


# The deepest a .json sidecar's object may nest (objects and lists within each other, the sidecar's own object counted)
# for its keys to become columns. Parquet readers refuse to open a file whose columns nest much deeper (pyarrow: 100
# schema levels, a list taking two), so one hostile sidecar made a part file the job itself could not read back: the
# run failed, and every later run stopped on that file. Deeper JSON is kept as text, as JSON that is not an object is.
MAX_JSON_DEPTH = 32
# The most columns and fields (object keys, within objects; the keys of a list's objects once each) a .json sidecar
# may give: each is a column of the key's part file, and at the end of the run of every part file (a sidecar of 20,000
# keys gave each file a 10 MB footer). More is kept as text, like deeper JSON.
MAX_JSON_FIELDS = 10_000


# The longest a .json sidecar's key may be (in characters, as written: `text_name`) for its field to be a column, and
# the longest key an object within its value may hold (a struct's field). A column's and a struct field's names are
# in the footer of every part file (the end of the run gives each part file every column): one sidecar with a 1 MB key
# put 1 MB into each. A field whose key, or a key within its value, is longer goes into the key's `json` column, as
# the text of one JSON object, as fields past `MAX_SHARD_JSON_COLUMNS` do.
MAX_JSON_KEY_LENGTH = 256


# The most distinct columns the .json sidecars of one tar shard's keys may give together. Every column of a part file
# becomes, at the end of the run, a column of every part file: 5,000 keys whose sidecars each held one field of their
# own gave each of 10 part files 5,013 columns (1.7 MiB written became 11.5 MiB, the end-of-run check took 5.9 s and
# pd.read_parquet 10.7 s), growing with the square of such keys. Past the limit, a key's fields that are not columns
# yet go into its `json` column, as the text of one JSON object; its other fields stay columns.
MAX_SHARD_JSON_COLUMNS = 1_000


class JsonColumns:
    """The columns one shard's .json sidecars have given so far, in the order its keys are read, and which fields of the
    next sidecar may be columns (`split`)."""

    def __init__(self) -> None:
        self.given: set[str] = {"json"}  # where fields past the limit go, and a sidecar kept as text

    def split(self, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """`fields` as (those that are columns, those past MAX_SHARD_JSON_COLUMNS, to be kept as JSON text)."""
        columns, over = {}, {}
        for name, value in fields.items():
            if name in self.given or len(self.given) < MAX_SHARD_JSON_COLUMNS:
                self.given.add(name)
                columns[name] = value
            else:
                over[name] = value
        return columns, over


def _json_sidecar(data: bytes) -> dict[str, Any]:
    """A .json sidecar's keys become columns when it holds an object nested at most `MAX_JSON_DEPTH` levels deep, with
    at most `MAX_JSON_FIELDS` keys and no empty object in it; otherwise (not an object, not valid JSON, nested deeper,
    too deep for Python's parser, too many keys, or a {} within it) its text is kept."""
    return _json_fields(data)[0]


def _json_fields(data: bytes) -> tuple[dict[str, Any], bool]:
    """`_json_sidecar`'s fields, and whether they are the sidecar kept as text ({"json": its text})."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep; it broke off the whole shard
        return {"json": _kept_text(data)}, True
    if isinstance(value, dict) and _json_fits(value):
        return value, False
    if not isinstance(value, dict):
        try:
            return {"json": json.dumps(value)}, True
        except RecursionError:
            pass
    return {"json": _kept_text(data)}, True


def _kept_text(data: bytes) -> str:
    """A .json sidecar's text as kept in the json column: each byte that is not UTF-8 (a latin-1 'café') written as a
    name's are (`text_name`: \\xe9, a backslash then as \\\\), so its bytes can be read back; they were replaced by
    U+FFFD, which could not."""
    return text_name(data.decode("utf-8", "surrogateescape"))


def _json_fits(value: Any) -> bool:
    """Whether a parsed JSON value nests at most `MAX_JSON_DEPTH` levels deep (1 for a flat object), gives at most
    `MAX_JSON_FIELDS` columns and fields, and holds no empty object `{}` (Parquet writes no struct without fields, and
    beside a full one Arrow read {} back as {"a": None}); looked at without recursion, and only until it is known not
    to fit."""
    fields, pending = 0, [(value, 1, True)]  # (item, its depth, whether its keys are counted)
    while pending:
        item, depth, counted = pending.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            return False
        if isinstance(item, dict):
            if not item and depth > 1:  # {}: a struct with no fields, which Parquet cannot write (every run failed)
                return False
            fields += len(item) if counted else 0
            pending.extend((child, depth + 1, True) for child in item.values())
        else:  # a list's objects are one struct: their keys count once
            fields += len({key for element in item if isinstance(element, dict) for key in element})
            pending.extend((child, depth + 1, False) for child in item)
        if fields > MAX_JSON_FIELDS:
            return False
    return True


def image_extensions(exts: Iterable[str]) -> list[str]:
    """Of a key's members' extensions, those that may be its image: the plain image ones ('jpg'), else those with a
    compound image extension ('seg.png'); a key has an image when there is exactly one."""
    image_like = [e for e in exts if _image_like(e)]
    return [e for e in image_like if "." not in e] or image_like


def tar_key_record(path: str, id_: str, key: str, parts: dict[str, tuple[str, bytes]],
                    error: str | None, split: bool = False, json_columns: JsonColumns | None = None,
                    row: dict[str, Any] | None = None, labels_from_folders: bool = False) -> dict[str, Any]:
    """The image record of one WebDataset key (sidecars become columns), or its reject. The image is the member whose
    extension is an image one ('jpg'); one with a compound image extension ('seg.png', a mask) is a sidecar when the
    key has such an image, and the image when it is the key's only image member. `split`: the key's numbered names
    were keyed apart (`tar_key`), so what is left in it ('cat.cls' beside 'cat.0.jpg') has no image. `json_columns`:
    the columns the shard's earlier keys' .json sidecars gave, past whose limit this key's new fields are JSON text.
    `row`: the columns an image-folder metadata member of the shard gives its image (`tar_shards._shard_metadata`),
    added after the key's own members': one named like a sidecar's or a .json field's column, in any case, is written
    as metadata_<name> (again while taken: `free_name`), so that both values are kept and the key's own keep the names they have
    without a metadata file. `labels_from_folders`: a `label` column holding the name of the folder the key lies in
    inside the shard (None at its top), as a zip member's, where no member of the key gives a column of that name in
    any case (its `.cls` is written for it; the folder's name stays in the id); a metadata row's `label` wins over it,
    as in a folder (`folder_metadata.with_row`)."""
    if error is not None:
        return reject_record(id_, f"{path}:{key}", error, "read")
    image_exts = image_extensions(parts)
    if len(image_exts) != 1:
        # the members' own names, not their extensions: 'found csv' left a user to guess which file was meant; made
        # text with the whole reason (`reject_record`), once: a name not UTF-8 made text here too was escaped twice
        names = [posixpath.basename(parts[e][0]) for e in sorted(parts)]
        found = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") or "nothing"
        orphan = (f": it belongs to no image, as each {key}.<number>.<image ext> is a key of its own, with sidecars "
                  f"named {key}.<number>.<ext>") if split else ""
        # a plain tar of 'cat.a.jpg', 'cat.b.jpg' is one WebDataset key, 'cat', with many images: say how to fix it
        many = (f"; a key is a member's path up to the first dot of its name, so {key}.{image_exts[0]} and "
                f"{key}.{image_exts[1]} are one sample: give each image its own key (e.g. {key}_1.jpg, or a numbered "
                f"{key}.1.jpg), or give the images as files, not a tar") if len(image_exts) > 1 and "." in image_exts[0] else ""
        return reject_record(id_, f"{path}:{key}", f"expected exactly one image member for key {key}, found {found}"
                             f"{orphan}{many}{_table_note(parts) if not image_exts and not split else ''}", "read")
    ext = image_exts[0]
    meta = sidecar_columns({e: part for e, part in parts.items() if e != ext}, json_columns)
    if isinstance(meta, str):
        return reject_record(id_, f"{path}:{key}", f"tar members {meta}", "read")
    with_own_columns(meta, labels_from_folders, _folder_label(text_name(key)), row)
    name, data = parts[ext]
    return image_record(id_, f"{path}:{name}", data, meta)


def sidecar_columns(parts: dict[str, tuple[str, bytes]], json_columns: JsonColumns | None = None,
                    ) -> dict[str, Any] | str:
    """The columns an image's sidecars give (`parts`: each sidecar's extension -> its name and bytes; a tar key's
    members other than its image, or the files named so beside an image file, `sidecar_files`): a .json's keys, a .cls
    as `label`, any other by its extension (`_sidecar_value`), named apart from the job's columns. Or, when two of them
    give one column ('0001.cls' and '0001.label'), which would lose a value, what to say of it: '<one> and <other> both
    give column ...', for the caller to begin with what they are ('tar members', 'sidecar files')."""
    meta: dict[str, Any] = {}
    given_by: dict[str, str] = {}  # column -> the member that gave it
    for e, (member, v) in parts.items():
        if e == "json":
            continue
        column, value = _sidecar_value(e, v)
        column = passthrough_name(text_name(column))
        if column in meta:  # '0001.cls' and '0001.label' (or '.seg.png' and '.seg_png'): one column, two values
            return (f"{given_by[column]} and {member} both give column {column!r}, so one value would be lost: rename "
                    "one of them")
        meta[column], given_by[column] = value, member
    if "json" in parts:
        (fields, as_text), over = _json_fields(parts["json"][1]), {}
        if not as_text:
            fields, over = _split_long_keys(fields)
        if json_columns is not None:
            fields, past = json_columns.split(fields)
            over.update(past)
        if not as_text:  # a string field is written as a caption is (`text_value`); JSON text kept as it is
            fields = {k: text_value(v) if isinstance(v, str) else v for k, v in fields.items()}
        _add_json_keys(meta, fields)
        if over:  # after the columns: 'json' is taken when the sidecar has a field of that name (json_json then)
            column = "json"
            while column in meta:
                column = "json_" + column
            # a lone surrogate ("\ud800") is no UTF-8: such text was written as `text_name` writes it, each backslash
            # doubled, so '"' in a value read as '\\"' and the JSON no longer parsed; JSON's own escapes keep it
            text = json.dumps(over, ensure_ascii=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = json.dumps(over)
            meta[column] = text
    return meta


def with_own_columns(meta: dict[str, Any], labels_from_folders: bool, folder_label: str | None,
                     row: dict[str, Any] | None) -> None:
    """Add to an image's sidecar columns `meta` its folder's `label` (`labels_from_folders`, where no sidecar gives a
    column of that name in any case: a .cls is written for the image; the folder's name stays in the id), then its
    image-folder metadata row's columns: one named like a sidecar's or a .json field's, in any case, is written as
    metadata_<name> (again while taken: `free_name`), so that both values are kept, and a row's `label` wins over the
    folder's, as in a folder (`folder_metadata.with_row`)."""
    taken = {column.lower() for column in meta}
    folder = "label" if labels_from_folders and "label" not in taken else None
    if folder:
        meta[folder] = folder_label
        taken.add(folder)
    for column, value in (row or {}).items():
        meta[column if column == folder else free_name(column, taken, "metadata_")] = value


def _table_note(parts: dict[str, tuple[str, bytes]]) -> str:
    """For the reject of a key holding no image: what its members are when they are tables of text (`table_note`), or
    a metadata file the run was told not to join. A .json is a WebDataset sample's own sidecar, its image missing: no
    table."""
    members = [member for member, _ in parts.values()]
    if any(member.lower().endswith(".json") for member in members):
        return ""
    if members and all(is_folder_metadata(member) for member in members):
        return ": an image folder's metadata file, not joined to the images with --join-metadata false"
    notes = [table_note(member) for member in members]
    return f": {notes[0]}" if notes and all(notes) else ""


def _folder_label(key: str) -> str | None:
    """A key's folder label: the name of the folder it lies in inside the shard (None at the shard's top). Its folders
    as a zip archive's member or an image file gets them: `tar -C folder .` names each member './x.png' and
    './cat/0.png', whose top key was labelled '.', and an absolute '/x.png' was labelled ''."""
    folder = posixpath.normpath(posixpath.dirname(key) or ".").strip("/")
    return posixpath.basename(folder) if folder not in ("", ".", "..") else None


def _split_long_keys(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A .json sidecar's `fields` as (those that may be columns, those whose key, or a key of an object within whose
    value, is longer than `MAX_JSON_KEY_LENGTH`, to be kept as JSON text). Looked at without recursion."""
    columns, over = {}, {}
    for key, value in fields.items():
        long = len(text_name(key)) > MAX_JSON_KEY_LENGTH
        pending = [value]
        while pending and not long:
            item = pending.pop()
            if isinstance(item, dict):
                long = any(len(text_name(k)) > MAX_JSON_KEY_LENGTH for k in item)
                pending.extend(item.values())
            elif isinstance(item, list):
                pending.extend(item)
        (over if long else columns)[key] = value
    return columns, over


def _add_json_keys(meta: dict[str, Any], keys: dict[str, Any]) -> None:
    """A .json sidecar's keys into `meta`, which holds the key's other sidecars' columns. A key named like one of
    those, or like one of them or another key in another case (a "label" or "Label" beside a .cls, a "seg_png" beside a
    .seg.png) is written as json_label, json_Label, json_seg_png (json_ again while the name is taken), and a key
    named like a job column as input_id (`passthrough_name`): each value is kept, the member's under the column name
    the README gives it."""
    clashing = []
    taken = {column.lower() for column in meta}  # in any case: `Label` beside a .cls `label` is json_Label
    for key, value in keys.items():
        column = passthrough_name(text_name(key))
        if column.lower() in taken:
            clashing.append((column, value))
        else:
            meta[column] = value
            taken.add(column.lower())
    for column, value in clashing:  # after every key that is free: those keep their names
        meta[free_name(column, taken, "json_")] = value
