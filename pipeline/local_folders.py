"""Options that must name a local folder (jobs/evaluate.py's --out and --cache-dir, jobs/train_prior.py's --out): what
such an option's value means, and why a folder cannot be used, found before any work and without leaving anything (a
write is tried by making an empty folder and removing it).

A URI (s3://bucket/x, ftp://user:password@host/x) or an fsspec chain (simplecache::s3://..., memory::x) is no local path:
taken as one it became a local folder named 'ftp:/user:password@host/x', the password in its name. `remote_uri` tells
such a value, for the option to refuse (its message shows it through `redaction.redact_uri`); `local_path` reads the
rest: a file:// URI (or file:/x) as its path, a '~' the shell left (zsh's --out=~/x, a quoted "~/x") as the home folder.
`folder_problem` says why files cannot be written into a folder (created as needed): a file on its way, a link that
leads nowhere (mkdir then failed with 'File exists', after the work), no permission, a name the system refuses.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# A URI's scheme (RFC 3986: a letter, then letters, digits, '+', '-', '.') and what follows it: '://', or fsspec's
# '::' that chains one file system onto another. A path that starts otherwise ('./a::b', '/x/ftp://y') is local.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)(://|::)")
LOCAL_SCHEMES = ("file", "local")  # fsspec's names of the local file system
# file:/x, a file URI without its empty host (Hadoop's, Spark's and Java's File.toURI form): fsspec, and so the purify
# job's --output, reads it as /x; taken as a path it was the folder 'file:/x' in the current one
_ONE_SLASH = re.compile(r"(?i)(?:file|local):(?=/(?!/))")


class LocalPathError(ValueError):
    """A value that names no local path this run can use; the message says why, without the option's name."""


def remote_uri(text: str) -> bool:
    """Whether `text` names a location by URI that is not a local file (any scheme:// but file:// and local://) or by
    an fsspec chain ('memory::x', 'simplecache::s3://...': a file system's name before the '::', or a URI after it),
    rather than by a local path. Any other 'a::b' is a local folder's name, as the jobs always took it ('runs::v2')."""
    found = _SCHEME.match(text)
    if found is None:  # a path, or file:/x (a chain after it as after file://)
        short = _ONE_SLASH.match(text)
        return short is not None and _chained_on(text[short.end():])
    if found.group(2) == "::":
        return _is_file_system(found.group(1)) or _CHAINED_URI.search(text) is not None
    return found.group(1).lower() not in LOCAL_SCHEMES or _chained_on(text[found.end():])


# A link of a chain that is a URI ('x::s3://bucket/y'), or a file system's name with a link after it ('x::memory::y')
_CHAINED_URI = re.compile(r"::[A-Za-z][A-Za-z0-9+.-]*://")
_CHAINED_NAME = re.compile(r"::(?=([A-Za-z][A-Za-z0-9+.-]*)::)")


def _chained_on(path: str) -> bool:
    """Whether a file:// URI's path goes on to another file system by fsspec's '::' (a URI or a file system's name
    after it), as 'a::b' does without the file:// (`remote_uri`): file:///tmp/runs::v2 names the folder 'runs::v2'
    there, as the purify job's --output and /tmp/runs::v2 take it."""
    return _CHAINED_URI.search(path) is not None or any(
        _is_file_system(name.group(1)) for name in _CHAINED_NAME.finditer(path))


def _is_file_system(name: str) -> bool:
    """Whether fsspec knows a file system by `name` (its own or one a package registered)."""
    from fsspec.registry import known_implementations, registry

    return name in known_implementations or name in registry


def local_path(text: str) -> Path:
    """The local path an option's value names: a file:// (local://) URI, or one with a single slash (file:/x), as its
    path, a leading '~' or '~user' as that home folder. Raises LocalPathError for a '~user' of no known user;
    `remote_uri` values are the caller's to refuse."""
    found = _SCHEME.match(text)
    if found is not None and found.group(2) == "://" and not remote_uri(text):  # not a local name's 'a::'
        text = text[found.end():]
        if not text:
            raise LocalPathError("a file:// URI without a path")
    elif (short := _ONE_SLASH.match(text)) is not None:
        text = text[short.end():]
    try:
        return Path(text).expanduser()
    except RuntimeError:  # '~nobody/x', or '~' without $HOME nor a password entry: pathlib cannot tell the folder
        raise LocalPathError(f"no home folder is known for {text.split('/')[0]!r}") from None


def nearest_existing(folder: Path) -> Path:
    """`folder` (made absolute) if it is there, else its nearest parent that is. Raises LocalPathError for a link on
    the way that leads nowhere (a folder cannot be made there) and for a path the system will not look up (a name
    too long)."""
    path = folder.absolute()
    try:
        while not path.exists():
            if path.is_symlink():
                raise LocalPathError(f"{path} is a link to {os.readlink(path)}, which leads nowhere")
            if path.parent == path:
                break
            path = path.parent
    except OSError as err:
        raise LocalPathError(err.strerror or str(err)) from None
    return path


def not_writable(folder: Path) -> str | None:
    """Why this user cannot write in the existing `folder`, or None (asked of the system: a read-only mount says no
    to root too)."""
    # the effective ids, which the writes use (a setuid launcher's real ones may differ), where the system tells them
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"{folder} is not writable by this user (no permission, or a read-only file system)"
    # access() answers from the permission bits, and root passes them all: a file system that refuses writes anyway (a
    # root-squashed NFS export, a kernel file system, a security module's rule) let an evaluation run its hours and then
    # fail writing its report. An empty folder made and removed at once is the system's own answer.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as err:
        return f"{folder} is not writable ({err.strerror or err})"
    return None


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created as needed), or None. Creates nothing: bad options leave no
    trace."""
    try:
        existing = nearest_existing(folder)
    except LocalPathError as err:
        return str(err)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return not_writable(existing)
