"""Walking an input folder: every file under a root with its listing entry (`find_following_links`), links to local
folders followed (a loop kept as one entry), folders that cannot be listed reported, and each local entry cut to the
fields the listing reads as the walk goes (10^6 files' full infos were most of the driver's memory)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import InputRefused
from pipeline.sources.ids import web_name
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


def find_following_links(fs: fsspec.AbstractFileSystem, root: str, _inside: tuple[str, ...] = (),
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
            below = os.path.join(target, "")  # '/' is above every folder too ('/' + os.sep was '//')
            if not any(target == folder or folder.startswith(below) for folder in inside):
                listed.update(find_following_links(fs, path, (*inside, target), unlistable))
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


class WebFolderTooLarge(InputRefused):
    """A web folder whose index pages link subfolders deeper than MAX_WEB_DEPTH or more than MAX_WEB_FOLDERS of them,
    or one of whose index pages is longer than MAX_WEB_PAGE_BYTES."""


class _Links(HTMLParser):
    """The href of every <a> tag of a page, in page order, entities unescaped (a page is fed as latin-1, see _web_ls)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href" and value)


def _from_page_bytes(href: str) -> str:
    """An href parsed from a page fed as latin-1 (one character a byte), read as UTF-8 where it is: the bytes of a
    UTF-8 name come back as that name, and any other bytes (a page in latin-1) stay one character each."""
    try:
        return href.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not UTF-8, or an entity beyond latin-1 (&#x2603;) already made a character of it
        return href


def _web_ls(fs: fsspec.AbstractFileSystem, url: str, root: str) -> list[dict[str, Any]]:
    """The links of the index page of web folder `url` (ending in '/'), resolved against it, as listing entries (name,
    size None, type 'directory' for a link ending in '/', else 'file'); a folder whose page links nothing is asked
    again without its '/'. The page is fetched through the file system's streaming open, so the storage options
    (headers, auth, client settings) apply, and read in chunks: one longer than MAX_WEB_PAGE_BYTES raises
    WebFolderTooLarge, naming it; a missing folder (404) raises FileNotFoundError. Links are the href of <a> tags (the
    index pages of python's http.server, nginx and Apache give every file one); a URL only written in the page's text
    is not one. Which links lie in the folder is `_web_find`'s to decide. A file system other than fsspec's HTTP one
    is listed through its ls."""
    from fsspec.implementations.http import HTTPFileSystem

    if not isinstance(fs, HTTPFileSystem):
        return fs.ls(url, detail=True)

    def links(address: str) -> list[str]:
        page = bytearray()
        # block_size=0: a streaming file, read as it arrives. A size is given only so that open does not first ask
        # the server for one (a HEAD, then a GET where the HEAD fails or gives no length): a stream does not use it.
        with fs.open(address, "rb", block_size=0, size=MAX_WEB_PAGE_BYTES) as stream:
            while chunk := stream.read(_WEB_PAGE_CHUNK):
                page += chunk
                if len(page) > MAX_WEB_PAGE_BYTES:
                    raise WebFolderTooLarge(
                        f"web folder {root} has an index page ({address[:300]}) longer than {MAX_WEB_PAGE_BYTES // 2**20} "
                        "MiB, the most the job reads of one page: a server that streams a page without end would "
                        "fill the memory. Give a folder with a shorter page as --input, or copy the data to an object "
                        "store or local disk")
        # Parsed whole: fed chunk by chunk, a tag left open for megabytes ('<a ' then no '>') is scanned again on
        # every chunk (10 s for 64 MiB; 0.6 s at once). As latin-1, one character a byte, whatever the page's encoding
        # (its markup is ASCII in UTF-8 and latin-1 alike); each href is read as UTF-8 afterwards (_from_page_bytes).
        parser = _Links()
        parser.feed(page.decode("latin-1"))
        parser.close()
        # relative links are the folder's, whichever of its two addresses gave them
        return [urljoin(url, _from_page_bytes(href.strip())) for href in parser.hrefs]

    found = links(url)
    if not found and url.endswith("/"):  # as fsspec's listing did: a page without links is asked again without '/'
        found = links(url.rstrip("/"))
    return [{"name": u, "size": None, "type": "directory" if u.endswith("/") else "file"} for u in dict.fromkeys(found)]


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
    # A file linked in two spellings of one name ('a%20b.png' and 'a b.png', '%61.png' and 'a.png', 'sub/%2E%2E/a.png')
    # is one file, with one id (`relative_id` decodes the escapes): listed once, under the first link to it. Two
    # addresses that are not one file but give one id once decoded ('a%3Fb.png', the file 'a?b.png', and 'a?b.png',
    # the file 'a' asked with the query 'b.png') stop the listing, as other inputs that share an id do: the output
    # keeps one row an id, so one of the two would be lost.
    names: dict[str, tuple[tuple[str, str], str]] = {}  # id -> (the file it names: path and query decoded, its link)
    clashes: list[tuple[str, str]] = []
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        for info in _web_ls(fs, folder, root):
            url = _inside_web_folder(info["name"], root)
            if url is None:
                continue
            if urlsplit(url).path.endswith("/"):  # a folder's view ('sub/?C=N;O=D', Apache's sort): the folder itself
                url = urlunsplit(urlsplit(url)._replace(query=""))
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
                name = posixpath.normpath(web_name(url))  # 'sub/%2E%2E/x.png' is 'x.png' too
                parts = urlsplit(url)
                resource = (posixpath.normpath(unquote(parts.path)), unquote(parts.query))
                if name not in names:
                    names[name] = (resource, url)
                    found[url] = {**info, "name": url}
                elif names[name][0] != resource:
                    clashes.append((names[name][1], url))
    if clashes:
        # the pairs first: a listing's error is cut to a reason's length where the command line prints it
        shown = "; ".join(f"{a} and {b}" for a, b in clashes[:5])
        raise InputRefused(f"{len(clashes)} pair(s) of links give one id: {shown}; rename one on the server: they are two "
                         "files, one id once their percent escapes are decoded (a '?' written %3F is part of a name, one "
                         "written as it is begins a query), so one of each pair would be lost from the output")
    return found
