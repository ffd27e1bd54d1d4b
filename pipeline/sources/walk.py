"""Walking an input folder: every file under a root with its listing entry (`_find_following_links`), links to local
folders followed (a loop kept as one entry), folders that cannot be listed reported, and each local entry cut to the
fields the listing reads as the walk goes (10^6 files' full infos were most of the driver's memory)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.sources.units import VERSION_FIELDS
from pipeline.storage import WEB_PROTOCOLS, protocols

# What discover reads of a listing entry: its size, its type and the fields of its version stamp (listing_stamp); and
# "islink", which the walk below reads. fsspec's local info holds ~12 fields (~830 bytes a file with its objects): at
# 10^6 files, held together until the listing ends, they were most of the driver's memory.
_KEPT_FIELDS = ("size", "type", "islink", *VERSION_FIELDS)
# The fields of fsspec's local info (LocalFileSystem.info); of VERSION_FIELDS, only mtime and ino are among them.
_LOCAL_INFO_FIELDS = frozenset(("name", "size", "type", "created", "islink", "mode", "uid", "gid", "mtime", "ino",
                                "nlink", "destination"))
# _local_ls does what these do; a subclass overriding either is listed through its own ls.
_FSSPEC_LOCAL_LS, _FSSPEC_LOCAL_INFO = LocalFileSystem.ls, LocalFileSystem.info


class _LocalEntry(Mapping[str, Any]):
    """A local file's listing entry, read as a dict of its kept fields: in slots, ~80 bytes against a dict's ~190."""

    __slots__ = ("size", "type", "islink", "mtime", "ino")

    def __init__(self, info: dict[str, Any]) -> None:
        self.size, self.type, self.islink = info["size"], info["type"], info["islink"]
        self.mtime, self.ino = info["mtime"], info["ino"]

    def __getitem__(self, name: str) -> Any:
        if name not in self.__slots__:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:  # Mapping's raises and catches KeyError: slower
        return getattr(self, name) if name in self.__slots__ else default

    def __contains__(self, name: object) -> bool:
        return name in self.__slots__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__slots__)

    def __len__(self) -> int:
        return len(self.__slots__)

    def __repr__(self) -> str:
        return repr(dict(self))


def _kept(info: dict[str, Any]) -> Mapping[str, Any]:
    if info.keys() <= _LOCAL_INFO_FIELDS:  # no version field but mtime and ino
        try:
            return _LocalEntry(info)
        except KeyError:
            pass
    return {name: info[name] for name in _KEPT_FIELDS if name in info}  # an fsspec whose info has other fields


def _local_ls(fs: LocalFileSystem, path: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    """fs.ls(path, detail=True) as (name, type, kept fields), each entry cut down as it is listed: fsspec's ls builds
    the whole folder's full infos first, ~830 MB for one folder of 10^6 files. Its steps: fs.info on the folder, then
    on each scandir entry, one gone meanwhile skipped; any other error raised, so that the folder is left out whole
    as fsspec's walk leaves it. A file system whose ls or info is not fsspec's own is listed through its ls."""
    if type(fs).ls is not _FSSPEC_LOCAL_LS or type(fs).info is not _FSSPEC_LOCAL_INFO:
        return [(info["name"], info["type"], _kept(info)) for info in fs.ls(path, detail=True)]
    path_info = fs.info(path)
    if path_info["type"] != "directory":
        return [(path_info["name"], path_info["type"], _kept(path_info))]
    entries = []
    with os.scandir(path) as it:
        for entry in it:
            try:
                info = fs.info(entry)
            except FileNotFoundError:
                continue
            entries.append((info["name"], info["type"], _kept(info)))
    return entries


def _local_find(fs: LocalFileSystem, root: str) -> dict[str, Mapping[str, Any]]:
    """fs.find(root, detail=True, withdirs=True) with each entry cut to `_kept` folder by folder as the walk goes: the
    same paths in the same (sorted) order, a folder that cannot be listed left out (its entry kept, nothing under it),
    links not followed (fsspec's walk sees a link as a file)."""
    path = fs._strip_protocol(root)
    out: dict[str, Mapping[str, Any]] = {}
    if path != "" and fs.isdir(path):
        out[path] = _kept(fs.info(path))
    folders = [path]
    while folders:  # fsspec's walk; the order it visits folders in does not matter, the result is sorted
        folder = fs._strip_protocol(folders.pop())
        try:
            entries = _local_ls(fs, folder)
        except OSError:  # FileNotFoundError included; walk(on_error="omit")
            continue
        for name, type_, info in entries:
            pathname = name.rstrip("/")
            if type_ == "directory" and pathname != folder:
                folders.append(pathname)
            out[name] = info
    if not out and fs.isfile(path):
        out[path] = {}
    return {name: out[name] for name in sorted(out)}


def _find_following_links(fs: fsspec.AbstractFileSystem, root: str, _inside: tuple[str, ...] = (),
                           unlistable: list[tuple[str, OSError]] | None = None) -> dict[str, Mapping[str, Any]]:
    """Every file under `root`, with sizes. A local folder reached through a symbolic link (fsspec lists the link
    as one entry, which would be read as one file and rejected) is listed too, under the link's path; a link to a
    folder that is being listed already (a loop) stays one entry, and so a reject naming it. Only local file
    systems report links. A local folder that cannot be listed (no permission, an I/O error) goes into `unlistable`
    with its error: fsspec's walk leaves such a folder out, and its files with it, without a word. A local file's
    entry holds only the fields in `_KEPT_FIELDS`; an object store's is its file system's own (s3fs builds and caches
    the whole listing itself, so cutting it down after would not lower the peak)."""
    local = isinstance(fs, LocalFileSystem)
    listed: dict[str, Mapping[str, Any]] = {}
    # folders too, to tell an unlistable one from an empty one
    web = root.endswith("/") and not WEB_PROTOCOLS.isdisjoint(protocols(fs))
    found = _local_find(fs, root) if local else _web_find(fs, root) if web else fs.find(root, detail=True)
    if local and unlistable is not None:
        holding = {posixpath.dirname(p) for p in found}
        for folder in (p for p, info in found.items() if info.get("type") == "directory" and p not in holding):
            try:
                fs.ls(folder)  # nothing was listed in it: empty, or its listing failed
            except OSError as err:
                unlistable.append((folder, err))
    for path, info in found.items():
        if local and info.get("type") == "directory":
            continue
        if info.get("islink") and fs.isdir(path):
            inside = _inside or (os.path.realpath(root),)
            target = os.path.realpath(path)
            if not any(target == folder or folder.startswith(target + os.sep) for folder in inside):
                listed.update(_find_following_links(fs, path, (*inside, target), unlistable))
                continue
        listed[path] = info
    return listed


def _inside_web_folder(url: str, root: str) -> str | None:
    """`url` with its '.' and '..' folders resolved, when it lies below the web folder `root` on its server (also once
    percent-decoded: '%2e%2e/' is '../' to a server), else None."""
    parts, top = urlsplit(url), urlsplit(root)
    if (parts.scheme.replace("https", "http"), parts.netloc) != (top.scheme.replace("https", "http"), top.netloc):
        return None

    def folder(path: str) -> str:
        return posixpath.normpath(path).rstrip("/") + "/"

    path = posixpath.normpath(parts.path) + ("/" if parts.path.endswith("/") else "")
    if path == folder(top.path) or not path.startswith(folder(top.path)) or \
            not folder(unquote(parts.path)).startswith(folder(unquote(top.path))):
        return None
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# How deep below the input a web folder's subfolders are listed, and how many folders (the input's own included) its
# pages may link in all. A server's pages are the sender's: one that makes up a subfolder on every page it serves
# (/a/, /a/a/, ... or a thousand new ones a page) was listed until memory ran out (1.6 GB of listing after 30 s of
# /a/a/...; 3.9 GB after 850 pages of a thousand subfolders each). Past either limit the listing stops with an error,
# before any work: an input whose folders the job did not list would lose their files unsaid.
MAX_WEB_DEPTH = 32
MAX_WEB_FOLDERS = 10_000
# The most bytes of one index page the listing reads. fsspec reads a page whole into memory: a server that streams
# gigabytes on one page (or never ends it) took memory until it ran out. The page is read in chunks, whatever its
# Content-Length says (or if it gives none), and one longer than this stops the listing, as the limits above do.
MAX_WEB_PAGE_BYTES = 64 * 2**20
_WEB_PAGE_CHUNK = 2**20


class WebFolderTooLarge(ValueError):
    """A web folder whose index pages link subfolders deeper than MAX_WEB_DEPTH or more than MAX_WEB_FOLDERS of them,
    or one of whose index pages is longer than MAX_WEB_PAGE_BYTES."""


def _web_ls(fs: fsspec.AbstractFileSystem, url: str, root: str) -> list[dict[str, Any]]:
    """fs.ls(url, detail=True) of fsspec's HTTP file system (the same request, links and entries), its page read in
    chunks of at most MAX_WEB_PAGE_BYTES: a longer one raises WebFolderTooLarge, naming it. A file system whose ls is
    not fsspec's own is listed through its ls."""
    from fsspec.asyn import sync
    from fsspec.implementations.http import HTTPFileSystem, ex, ex2

    if not isinstance(fs, HTTPFileSystem) or type(fs)._ls_real is not HTTPFileSystem._ls_real or \
            type(fs)._ls is not HTTPFileSystem._ls:
        return fs.ls(url, detail=True)

    async def page(address: str) -> str | None:
        session = await fs.set_session()
        async with session.get(fs.encode_url(address), **fs.kwargs) as r:
            fs._raise_not_found_for_status(r, address)
            if r.headers.get("Content-Type", "text/html").partition(";")[0] != "text/html":
                return None
            chunks, size = [], 0
            async for chunk in r.content.iter_chunked(_WEB_PAGE_CHUNK):
                size += len(chunk)
                if size > MAX_WEB_PAGE_BYTES:
                    raise WebFolderTooLarge(
                        f"web folder {root} has an index page ({address[:300]}) longer than {MAX_WEB_PAGE_BYTES // 2**20} "
                        "MiB, the most the job reads of one page: a server that streams a page without end would "
                        "fill the memory. Give a folder with a shorter page as --input, or copy the data to an object "
                        "store or local disk")
                chunks.append(chunk)
            return b"".join(chunks).decode(r.charset or "utf-8", errors="ignore")

    def links(address: str) -> set[str]:
        try:
            text = sync(fs.loop, page, address)
        except (LookupError, UnicodeDecodeError):  # an unknown charset; fsspec's "binary, not HTML"
            text = None
        found = [] if text is None else ex2.findall(text) + [u[2] for u in ex.findall(text)] if fs.simple_links else \
            [u[2] for u in ex.findall(text)]
        out, parts = set(), urlsplit(address)
        for link in found:  # as fsspec's _ls_real
            if link.startswith("/") and len(link) > 1:
                link = f"{parts.scheme}://{parts.netloc}{link}"
            if link.startswith("http"):
                if fs.same_schema and link.startswith(address.rstrip("/") + "/") or \
                        link.replace("https", "http").startswith(address.replace("https", "http").rstrip("/") + "/"):
                    out.add(link)
            elif link not in ("..", "../"):
                out.add("/".join([address.rstrip("/"), link.lstrip("/")]))
        return out

    out = links(url)
    if not out and url.endswith("/"):
        out = links(url.rstrip("/"))
    return [{"name": u, "size": None, "type": "directory" if u.endswith("/") else "file"} for u in out]


def _web_find(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Mapping[str, Any]]:
    """Every file a web folder's index pages link, in it and its subfolders (links ending in '/'), with their listing
    entries. fsspec's walk keeps a link to another server out, but follows a relative one up and out of the folder
    ('../secret.png', 'sub/../../other/'), so a page could make the job read files the user did not name, and a link
    back to a folder above ('../../data/') walked it again inside itself until Python's recursion limit crashed the
    listing. Here a link is resolved ('.' and '..') first: one out of the folder is left out, and each folder is
    listed once. A subfolder more than MAX_WEB_DEPTH below `root`, or more than MAX_WEB_FOLDERS folders in all, stop
    the listing with WebFolderTooLarge (a server can link endless made-up folders), as does a page longer than
    MAX_WEB_PAGE_BYTES (`_web_ls`)."""
    found: dict[str, Mapping[str, Any]] = {}
    seen = {root}
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        for info in _web_ls(fs, folder, root):
            url = _inside_web_folder(info["name"], root)
            if url is None:
                continue
            if info.get("type") == "directory" or url.endswith("/"):
                if url not in seen:
                    if depth + 1 > MAX_WEB_DEPTH:
                        raise WebFolderTooLarge(
                            f"web folder {root} links subfolders more than {MAX_WEB_DEPTH} deep (such as {url[:300]}), "
                            "the most the job lists: a server that makes up a folder on every page would be listed "
                            "forever. Give a folder nearer the files as --input, or copy the data to an object store "
                            "or local disk")
                    if len(seen) >= MAX_WEB_FOLDERS:
                        raise WebFolderTooLarge(
                            f"web folder {root} links more than {MAX_WEB_FOLDERS:,} folders (subfolders included), the "
                            "most the job lists: a server that makes up folders on every page would be listed forever. "
                            "Give one of its subfolders as --input (each with its own --output), or copy the data to "
                            "an object store or local disk")
                    seen.add(url)
                    pending.append((url, depth + 1))
            else:
                found[url] = {**info, "name": url}
    return found
