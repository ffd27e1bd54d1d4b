"""Input discovery: the read units under an input URI (`discover`), each file's kind by its suffix (a tar shard, a
Parquet or Arrow IPC file, a zip archive, else an image file), hidden files skipped and counted (so is the metadata of
a data set Hugging Face datasets saved to disk), and the checks that stop a run whose files would give one id twice
(a file under a container's id, a name written with escapes beside its twin)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import InputRefused, unlistable_folder
from pipeline.sources.arrow_ipc import ARROW_SUFFIXES, saved_dataset_metadata
from pipeline.sources.export_manifests import export_manifests
from pipeline.sources.file_bytes import read_bytes
from pipeline.sources.folder_metadata import FolderMetadata, is_folder_metadata, join_folder_metadata
from pipeline.sources.hidden import HIDDEN_EXAMPLES, HiddenSkipped, is_hidden
from pipeline.sources.ids import LOOKALIKE, relative_id, text_name, without_signed_query
from pipeline.sources.sidecar_files import Sidecars, pair_sidecars, stamped_row
from pipeline.sources.tfrecord_files import TFRECORD_NAME, tfds_metadata
from pipeline.sources.units import ReadUnit, content_stamp, listing_stamp, with_metadata_row
from pipeline.sources.walk import find_following_links
from pipeline.storage import (
    S3_PROTOCOLS,
    WEB_PROTOCOLS,
    access_denied,
    describe,
    is_url_chain,
    protocols,
    storage_path,
    unmasked,
    with_protocol,
    with_retries,
)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")
PARQUET_SUFFIXES = (".parquet", ".pq")
# the files read as tables (kind "parquet"): Parquet files, and Arrow IPC files (`arrow_ipc`: .arrow, .feather, .ipc)
TABLE_SUFFIXES = PARQUET_SUFFIXES + ARROW_SUFFIXES
ZIP_SUFFIXES = (".zip",)


# by its name: a presigned web address's query is not part of it ('s.tar?X-Amz-Signature=...' is a tar shard)
def _is_tar(path: str) -> bool:
    return without_signed_query(path).lower().endswith(TAR_SUFFIXES)


def _is_parquet(path: str) -> bool:
    """Whether `path` is read as a table, a "parquet" unit: a Parquet file or an Arrow IPC file (`arrow_ipc`), or a
    TFRecord file (`tfrecord_files`), whose records are numbered as a table's rows."""
    return is_table_name(without_signed_query(path))


def is_table_name(name: str) -> bool:
    """Whether `name` is that of a file whose records are rows with ids `name#N`: Parquet, Arrow IPC, TFRecord."""
    return name.lower().endswith(TABLE_SUFFIXES) or TFRECORD_NAME.search(name) is not None


def _is_zip(path: str) -> bool:
    return without_signed_query(path).lower().endswith(ZIP_SUFFIXES)


def is_container_name(path: str) -> bool:
    """Whether `path` is read as a container of inputs (a tar shard, a table, a zip archive) by its name; never an image
    file's sidecar (`sidecar_files`), in a folder or inside a zip archive."""
    return _is_tar(path) or _is_parquet(path) or _is_zip(path)


def input_location(uri: str, storage_options: dict[str, Any]) -> str | None:
    """The folder an input's ids are relative to (`discover`: the input folder, or a single input file's folder),
    normalised so that one location compares equal however it is written ('file://', './', a trailing '/'): a
    local one with links resolved (a 'latest' link moved to another day's folder is another input), a remote one
    with its protocol. None when the input is not there (`discover` says so, with its hints)."""
    fs, path = storage_path(uri, storage_options)
    try:
        one_file = with_retries(lambda: _one_file(fs, path, uri), f"look up {uri}")
    except FileNotFoundError:
        return None
    folder = posixpath.dirname(path) if one_file else path
    if "file" in protocols(fs):
        return os.path.realpath(folder)
    return with_protocol(fs, folder.rstrip("/"))


# Stores whose names are keys, not paths: one may hold an object 'data' beside objects under 'data/' (a folder marker
# written without its '/', a file copied to the wrong key). S3 is asked in one request (`_s3_keys_under`); Google Cloud
# Storage, Azure Blob and memory:// through fsspec's own calls (`_keys_under`). A disk's, a server's (HDFS, SFTP, FTP,
# SMB, WebDAV) or Azure Data Lake Gen1's names are paths, never both a file and a folder, and are not asked (an FTP
# server's listing of a file is not its folder's); nor is a store this list does not name.
KEYED_PROTOCOLS = frozenset({*S3_PROTOCOLS, "gs", "gcs", "abfs", "abfss", "az", "memory"})


def _one_file(fs: Any, root: str, uri: str) -> bool:
    """Whether input `uri` (`root` on `fs`) is one file (FileNotFoundError: it is not there). An object store
    (`KEYED_PROTOCOLS`) may hold an object under a folder's own name beside keys under that folder ('s3://b/data' and
    's3://b/data/x.png'), and fsspec drops a trailing '/' from either: the one object alone was read, the folder's
    files left out unseen and the run called complete. There, `uri` ending in '/' is the folder, and without it the
    input is refused as ambiguous (ValueError); a store whose listing of the folder gives the object instead of the
    folder's files (memory://) is refused either way. Asked of the store itself, not of its listing cache, which takes
    a path it has listed under for a folder. A web address that the server redirects to itself with a '/' is a folder
    given without it, and so is a server's address without a path: refused, naming the address to give."""
    if not urlsplit(root).path and not WEB_PROTOCOLS.isdisjoint(protocols(fs)):
        # 'http://host:port' alone: the server sends its root's index page without a redirect, read as one image
        raise InputRefused(f"input {uri} is a web server's address without a path, its root folder: give {uri}/ to "
                         "read the files its index page links")
    keyed = not KEYED_PROTOCOLS.isdisjoint(protocols(fs))  # a disk's or a server's file is never a folder too
    s3 = not S3_PROTOCOLS.isdisjoint(protocols(fs))
    if keyed:
        fs.invalidate_cache(root)
    info = fs.info(root)
    if info.get("type") != "file":
        # memory:// says 'directory' for a key that has keys under it, yet holds the file: its listing of the folder
        # gives that file alone, so the folder's files cannot be read while it is there (s3fs, like gcsfs, says
        # 'file' whenever the object is there: not asked again)
        if not keyed or s3 or not fs.isfile(root):
            return False
        raise InputRefused(f"input {uri} is both an object and a folder holding objects on the store, which lists the "
                         "object in place of the folder's files, so reading either would leave the other out: move "
                         "the object away (or the folder's files to another folder) and give the folder")
    if isinstance(info.get("url"), str) and info["url"] == f"{root}/" and not WEB_PROTOCOLS.isdisjoint(protocols(fs)):
        # a web folder given without its '/': the server sends its index page, which was read as one image (a
        # reject, 'not a recognised image format'), its files left out unseen
        raise InputRefused(f"input {uri} is a web folder (the server redirects it to {info['url']}): give it with the "
                         "trailing '/' to read the files its index page links")
    if not keyed or not (_s3_keys_under(fs, root) if s3 else _keys_under(fs, root)):
        return True
    if uri.endswith("/"):
        return False
    raise InputRefused(f"input {uri} is both an object and a folder holding objects on the store, so reading either would "
                     f"leave the other out: give {uri}/ to read the folder (the object of that name is then not read), "
                     "or move the object away")


def _keys_under(fs: Any, root: str) -> bool:
    """Whether an object store other than S3 holds a file under `root` + '/' beside the file `root`, by fsspec's own
    call: a listing of `root` that gives a name under `root` + '/' (gcsfs lists the keys under 'data/', and gives the
    object alone when there are none; a store that lists the object's folder or its siblings, 'data-2', gives none)."""
    try:
        names = fs.ls(root, detail=False)
    except (FileNotFoundError, PermissionError, NotADirectoryError):  # nothing listed there, or not to this reader
        return False
    except Exception as err:
        if not access_denied(err):
            raise
        return False  # an object that may be read but not listed beside: none seen, as on S3 (`_s3_keys_under`)
    folder = root.rstrip("/") + "/"
    return any(str(name).startswith(folder) and str(name) != folder for name in names)


def _s3_keys_under(fs: Any, root: str) -> bool:
    """Whether S3 holds a key under `root` + '/' other than that folder's marker: one request of at most two keys (an
    ls of an object lists its parent folder when nothing is under it: thousands of requests in a large folder)."""
    bucket, key, _ = fs.split_path(root)
    prefix = key.rstrip("/") + "/"
    try:
        answer = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=2)
    except PermissionError:  # a key that may be read but not listed beside (GetObject without ListBucket): none seen
        return False
    return any(item["Key"] != prefix or item.get("Size") for item in answer.get("Contents", []))


class InputNotFound(FileNotFoundError):
    """The input itself is not there: its message names it and says what to give instead (a wildcard)."""


def discover(uri: str, storage_options: dict[str, Any] | None = None, files_per_unit: int = 64,
             hidden: HiddenSkipped | None = None, exclude: Callable[[str], bool] | None = None,
             metadata: FolderMetadata | None = None, sidecars: Sidecars | None = None) -> list[ReadUnit]:
    """List the input units under `uri` (a file or a folder/prefix), sorted, hidden files skipped (counted in
    `hidden`, from the same listing: no more storage requests). A hidden file for which `exclude` (given the listed
    path with its protocol) is true is left out uncounted: the job's own output files, found inside its input.

    Every non-hidden file is an input: tar, Parquet, Arrow IPC, TFRecord and zip files by name, everything else as an
    image file (its content decides; a non-image ends up in rejects with the reason, never silently dropped), except
    the metadata files of a data set Hugging Face datasets saved to disk (`arrow_ipc.saved_dataset_metadata`) or TFDS
    prepared (`tfrecord_files.tfds_metadata`) and an export's manifest (`export_manifests`: one small read of each
    file named so), skipped and counted in `hidden`. With `metadata` (--join-metadata), an
    image folder's metadata.csv / metadata.jsonl files are read here, once, and joined to the listed image files into
    it (`folder_metadata`): one joined is counted in `hidden` as metadata, not an input; one that cannot be joined
    stays an input, whose read task makes it a reject saying why. With `sidecars` (--join-metadata too), the files named
    as an image file's sidecars (`sidecar_files`: `x.txt`, `x.json` beside `x.jpg`) are paired with their images into
    it: no inputs, and part of their images' stamps.
    """
    if is_url_chain(uri):
        raise InputRefused(f"input {uri} is an fsspec URL chain, which is not supported: give the storage's own URI "
                         "(s3://..., a path) and its settings with --storage-option")
    fs, root = storage_path(uri, storage_options or {})
    try:
        # Not fs.exists: s3fs answers False for a bucket on any error, so a revoked key or a throttled request read
        # "does not exist"; info raises what went wrong (PermissionError, a transient OSError to retry).
        fs.info(root)
    except FileNotFoundError as err:
        if unmasked(err) is not err:  # a web server's refusal or outage, which fsspec says as a missing file
            raise unmasked(err) from None
        glob = " (wildcards are not expanded: give a folder, a prefix or one file)" if any(c in uri for c in "*[") else ""
        raise InputNotFound(f"input {uri} does not exist{glob}") from None
    if not _web_index(fs, root) and _one_file(fs, root, uri):
        listed, root_dir = {root: fs.info(root)}, posixpath.dirname(root)
    else:
        # detail=True: the sizes come with the same listing requests, for the dry run's report. A zero-byte key
        # ending in '/' is an object store's folder marker (S3 console "Create folder", Hadoop tools): not a file.
        unlistable: list[tuple[str, OSError]] = []
        listed, skipped = {}, []
        for p, info in find_following_links(fs, root, unlistable=unlistable).items():
            if p.endswith("/") and not info.get("size"):
                continue
            rel = relative_id(p, root)
            if is_hidden(rel):
                # the output's _summary.json, lease, temporaries: not the user's input, so no hidden input skipped
                if exclude is None or not exclude(with_protocol(fs, p)):
                    skipped.append(rel)
            else:
                listed[p] = info
        # a saved Hugging Face data set's dataset_info.json and state.json, a TFDS one's dataset_info.json and
        # features.json, an export's manifest.csv: its metadata, no image, skipped as hidden files are (each was a
        # reject, 'not a recognised image format'); named first among the examples
        metadata_files_of = sorted({*saved_dataset_metadata(listed), *tfds_metadata(listed),
                                    *export_manifests(fs, list(listed))})
        for p in metadata_files_of:
            del listed[p]
        metadata_files = sorted(relative_id(p, root) for p in metadata_files_of)
        if sidecars is not None:  # before the metadata files are joined: a sidecar is no image a row could name
            _pair_sidecars(fs, root, listed, sidecars)
        if metadata is not None:  # --join-metadata: an image folder's metadata files, read once, here
            joined = _join_folder_metadata(fs, root, listed, storage_options or {}, metadata)
            for p in joined:
                del listed[p]
            metadata_files += sorted(relative_id(p, root) for p in joined)
        if hidden is not None:  # set, not added to: a retried listing counts once
            hidden.count = len(skipped) + len(metadata_files)
            hidden.examples = [*metadata_files, *sorted(skipped)][:HIDDEN_EXAMPLES]
        unlistable = [(p, err) for p, err in unlistable if p == root or not is_hidden(relative_id(p, root))]
        if unlistable:  # its files would be left out of the run unseen, and the run called complete
            folder, err = unlistable[0]
            more = f" (and {len(unlistable) - 1} more)" if len(unlistable) > 1 else ""
            raise unlistable_folder(err, f"input folder {text_name(folder)}{more} cannot be listed ({describe(err)}), "
                                    "so its files would be left out of the run unseen: make it readable, or move it out "
                                    "of the input (a folder whose name starts with '_' or '.' is skipped)") from err
        root_dir = root
        if _web_index(fs, root):
            _ask_web_containers(fs, listed)
    root_uri = with_protocol(fs, root_dir)
    units: list[ReadUnit] = []
    images: list[tuple[str, int | None, str | None]] = []
    for p in sorted(listed):
        full, size, content = with_protocol(fs, p), listed[p].get("size"), content_stamp(listed[p])
        kind = "tar" if _is_tar(p) else "parquet" if _is_parquet(p) else "zip" if _is_zip(p) else None
        if kind is not None:
            units.append(ReadUnit(kind, (full,), root_uri, (size,), (listing_stamp(listed[p]),), (content,)))
        else:  # a metadata row joined to it, and its sidecars, are part of its content: edited, a change of this input
            row = stamped_row(metadata.rows.get(full) if metadata else None, sidecars.of.get(full, []) if sidecars else [])
            if metadata is not None:
                content = with_metadata_row(content, row, full in metadata.unknown,
                                            content is None and metadata.covers(relative_id(p, root_dir)))
            elif row is not None:
                content = with_metadata_row(content, row)
            images.append((full, size, content))
    # containers too: on an object store a shard 'd.tar/x.parquet' can lie under a shard 'd.tar'
    _refuse_colliding_ids(units, [*(p for p, _, _ in images), *(u.paths[0] for u in units)], root_uri)
    _refuse_escaped_twins(sorted(listed), root_dir)
    for i in range(0, len(images), files_per_unit):
        group = images[i : i + files_per_unit]
        units.append(ReadUnit("files", tuple(p for p, _, _ in group), root_uri, tuple(size for _, size, _ in group),
                              (), tuple(content for _, _, content in group)))
    return units


def _pair_sidecars(fs: Any, root: str, listed: dict[str, dict[str, Any]], found: Sidecars) -> None:
    """Pair the listing's sidecar files with their image files (`sidecar_files`), into `found` (keyed by full paths, as
    the read units name files), and take them out of `listed`: they are no inputs."""
    found.reset()
    candidates = [p for p in listed if not is_container_name(p)]
    for path, images in pair_sidecars(candidates).items():
        info = listed.pop(path)
        for image, ext in images:
            found.of.setdefault(with_protocol(fs, image), []).append(
                (ext, with_protocol(fs, path), info.get("size"), content_stamp(info)))
        found.ids.append(relative_id(path, root))
    for sidecars in found.of.values():
        sidecars.sort(key=lambda sidecar: sidecar[1])
    found.ids.sort()


def _join_folder_metadata(fs: Any, root: str, listed: dict[str, dict[str, Any]], storage_options: dict[str, Any],
                          found: FolderMetadata) -> list[str]:
    """Join the listing's image-folder metadata files (`folder_metadata`) to its image files, into `found` (keyed by
    full paths, as the read units name files); the listed paths of those joined, no inputs now."""
    candidates = [p for p in listed if is_folder_metadata(p)]
    if not candidates:
        found.reset()
        return []
    full = {with_protocol(fs, p): p for p in candidates}
    images = {relative_id(p, root): with_protocol(fs, p) for p in listed
              if not (is_folder_metadata(p) or _is_tar(p) or _is_parquet(p) or _is_zip(p))}
    join_folder_metadata(images, {relative_id(p, root): path for path, p in full.items()},
                         lambda path: read_bytes(path, storage_options, listed_size=listed[full[path]].get("size")),
                         found)
    return [full[path] for path in found.joined]


def _web_index(fs: Any, root: str) -> bool:
    """An http(s) URL ending in '/': a web server's index page, whose links are the folder's files. Every URL is a
    "file" to fsspec's HTTP file system (it answers 200), so a folder must be said so, by its trailing '/'."""
    return root.endswith("/") and any(p in ("http", "https") for p in protocols(fs))


# How many HEAD requests a web folder's containers are asked at once: enough to hide a server's latency on a few
# thousand shards, few enough not to look like a flood to it.
WEB_HEADS = 16


def _ask_web_containers(fs: Any, listed: dict[str, dict[str, Any]]) -> None:
    """Give a web folder's containers what their index page leaves out: their size (for the dry run) and version
    stamp (ETag or Last-Modified, so that `--incremental` skips an unchanged shard unread), with one HEAD request each.
    Image files are left as listed: a request per image would cost more than reading the few bytes of one. A URL that
    does not answer keeps its listing; reading it then makes the reject that says why."""
    containers = [p for p in listed if _is_tar(p) or _is_parquet(p) or _is_zip(p)]

    def ask(path: str) -> dict[str, Any] | None:
        try:
            return fs.info(path)
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=WEB_HEADS) as pool:
        for path, info in zip(containers, pool.map(ask, containers), strict=True):
            if info is not None:
                listed[path] = {**listed[path], **info}


def _odd_key(path: str) -> bool:
    """An object store key with an empty, '.' or '..' folder ('a//b.png', 'a/./b.png', 'x/../b.png'), or holding bytes
    under a name ending in '/': its id drops them (`relative_id`), so another key may give the same id."""
    return "//" in path or "/./" in path or "/../" in path or path.endswith(("/", "/.", "/.."))


def _refuse_escaped_twins(paths: list[str], root: str) -> None:
    """Stop when two listed files give one id, which the output keeps once, so one of the two would be lost: a name that
    is not UTF-8, written with escapes (`text_name`: b'caf\\xe9.png' as 'caf\\xe9.png'), and a file that is named so (a
    literal backslash, 'x', two hex digits); or, on an object store, keys that differ only in empty, '.' or '..'
    folders ('a//b.png' beside 'a/b.png'). Looked for only when some name is not UTF-8 or some key has such a folder
    (the only ways two files give one id); renaming one is the fix."""
    if all((p.isascii() or text_name(p) == p) and not _odd_key(p) for p in paths):
        return
    first: dict[str, str] = {}
    twins = []
    for p in paths:
        id_ = relative_id(p, root)
        if id_ in first:
            twins.append((first[id_], p))
        first.setdefault(id_, p)
    escaped = [(a, b) for a, b in twins if not (_odd_key(a) or _odd_key(b))]
    if escaped:
        def named(p: str) -> str:  # the two print alike as text; their bytes tell them apart (as for tar members)
            try:
                raw = p.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = p.encode("utf-8", "surrogatepass")
            return f"{text_name(p)} (as bytes: {raw!r})"

        shown = "; ".join(f"{named(a)} and {named(b)}" for a, b in escaped[:5])
        raise InputRefused(f"{len(escaped)} pair(s) of input files have one id once the bytes of a name that are not "
                         f"UTF-8 are written as \\xNN, so one of each pair would be lost from the output: {shown}; "
                         "rename one")
    if twins:
        shown = "; ".join(f"{text_name(a)!r} and {text_name(b)!r} (id {relative_id(a, root)})" for a, b in twins[:5])
        raise InputRefused(f"{len(twins)} pair(s) of input files have one id, since an id leaves out the empty, '.' and "
                         f"'..' folders of an object's key, so one of each pair would be lost from the output: {shown}; "
                         "rename (copy and delete) one")


def _refuse_colliding_ids(containers: list[ReadUnit], image_files: list[str], root: str) -> None:
    """Stop when an image file's id could equal a tar member's (`x.tar/k`, or `x.tar/cat.0` for a shard of Kaggle-style
    names), a zip member's (`x.zip/a/b.jpg`) or a reject's or Parquet row's (`x.tar#unreadable`, `t.parquet#0`): the
    output keeps one row per id, so one of the two would be lost. Any file under a tar shard or zip archive (its id, then
    '/') is refused, whatever its name: a tar key may hold dots, and `pipeline.ledger` counts every id under a
    container as the container's; so is one under a shard's look-alike rejects (`x.tar#lookalike/`). Only odd names
    collide (on an object store, an object `x.tar/k.png` beside a shard `x.tar`, or `x.zip/a.jpg` beside `x.zip`; a
    file named `t.parquet#0`); renaming one is the fix."""
    containers_by_id = {relative_id(unit.paths[0], root): unit for unit in containers}

    def clash(id_: str) -> str | None:
        head, sep, rest = id_.rpartition("#")  # the last '#': a folder's name may hold one (as container_ids)
        if sep and head in containers_by_id and (rest == "unreadable" or rest.isdigit()):
            return containers_by_id[head].paths[0]
        head, sep, _ = id_.partition(LOOKALIKE)
        if sep and head in containers_by_id and containers_by_id[head].kind == "tar":
            return containers_by_id[head].paths[0]
        # A shard whose id is one of this id's folders: looked up folder by folder, not shard by shard (files x
        # shards comparisons took 10 s for 100,000 files beside 200 shards, and grew with both).
        at = id_.find("/")
        while at > 0:
            unit = containers_by_id.get(id_[:at])
            if unit is not None and unit.kind in ("tar", "zip"):
                return unit.paths[0]
            at = id_.find("/", at + 1)
        return None

    if not containers_by_id:
        return
    clashes = [(path, found) for path in image_files if (found := clash(relative_id(path, root)))]
    if clashes:
        shown = "; ".join(f"{path} (beside {container})" for path, container in clashes[:5])
        raise InputRefused(f"{len(clashes)} input file(s) have ids that a tar or zip member's or a Parquet row's id could "
                         f"equal, so one of the two would be lost from the output: {shown}; rename them")
