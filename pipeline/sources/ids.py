"""Record ids and their digests. A file's id is its path relative to the input root, as valid text (`relative_id`,
`text_name`); a container's records add to the container's id ('s.tar/key', 'a.zip/x/y.jpg', 't.parquet#3',
's.tar#unreadable', a tar shard's look-alike rejects: `LOOKALIKE`). A set of ids is hashed by `ids_key` and
`ids_digest` (part file names, pipeline.ledger)."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, unquote

from pipeline.redaction import redact_uri

# The id of the reject of a tar member that gives the id of one purified in an earlier run (`read_tar`): the shard's
# id, this, and that id's key ('s.tar#lookalike/caf\\xe9'). A member's id is the shard's id and '/', so it is never one.
LOOKALIKE = "#lookalike/"


# Unicode's bidirectional controls, which reorder what a terminal shows after them ('gpj.exe' shown as 'exe.jpg').
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def terminal_text(text: str) -> str:
    """`text` as a line the CLI may print: each control character (a newline, ESC, a C1 control; Unicode category
    Cc), line or paragraph separator (U+2028, U+2029: line breaks to Python's splitlines() and to log viewers), lone
    surrogate and bidirectional control written as its escape (\\n, \\x1b, \\u202e). Names come from the input's
    senders, and a file or zip member named 'x\\n' + 'error: ...' or holding a terminal escape sequence printed as it
    came forged a line of the job's own (an `error:` line in a scheduler's log) or rewrote the terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI_CONTROLS:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or
                       (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return "".join(out)


def text_name(name: str) -> str:
    """`name` as valid UTF-8 text: ids, sources, errors and column names are Parquet strings, which must be. A local
    name that is not UTF-8 (a latin-1 'café' from an old disk or tar) reaches Python with each byte it cannot decode
    as a lone surrogate (surrogateescape); such a byte is written as `\\xe9` (Python's backslashreplace) and, in such
    a name only, a backslash as `\\\\`, so the name's bytes can be read back from it (any other lone surrogate, from a
    JSON escape, as `\\ud800`). A valid name is returned unchanged: the ids earlier runs wrote stay the same."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    out = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # one undecodable byte, 0x80-0xff
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


# The escapes `text_name` writes in text that is not valid UTF-8: a backslash (\\\\), a byte that is not UTF-8 (\\x80 to
# \\xff, lowercase), a lone surrogate (\\ud800). Valid text holding one literally has every backslash doubled (`text_value`).
_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f]|ud[89a-f][0-9a-f]{2})")


def text_value(text: str) -> str:
    """A tar sidecar's text as written to its column (a caption, a label, a .json key's string, a sidecar's bytes in a
    text column), so that its bytes can always be read back (`unescaped`): text that is not valid UTF-8 as `text_name`
    writes it (\\xe9, and every backslash \\\\); valid text that holds what reads as such an escape (a caption
    'caf\\xe9' typed so, '\\\\', '\\ud800') with every backslash doubled; any other text, backslashes and all,
    unchanged."""
    named = text_name(text)
    if named != text or not _ESCAPE.search(text):
        return named
    return text.replace("\\", "\\\\")


def unescaped(text: str) -> str:
    """The text `text_value` was given, from what it wrote: \\\\ a backslash, \\xNN the byte NN (as Python's
    surrogateescape holds it: `unescaped(t).encode("utf-8", "surrogateescape")` is a sidecar's bytes), \\udNNN that
    lone surrogate; any other backslash itself."""

    def one(match: re.Match[str]) -> str:
        escape = match[1]
        if escape == "\\":
            return "\\"
        return chr(0xDC00 + int(escape[1:], 16)) if escape[0] == "x" else chr(int(escape[1:], 16))

    return _ESCAPE.sub(one, text)


# A web address's query parameter that carries a credential: a presigned S3 or GCS URL's signature, credential and
# security token (X-Amz-Signature, X-Goog-Credential, X-Amz-Security-Token), an Azure SAS's sig, CloudFront's Signature,
# an API key ('api_key', 'apikey', 'api-key', 'x-api-key', Azure API Management's 'subscription-key': any '..._key' or
# '...-key'), an 'auth' value, an access token, a session id ('sessionid', 'PHPSESSID', 'sid': whoever holds it is
# logged in) or a password under a short name ('pwd', 'passwd'). Not a bare 'key', which a server may name a file by
# ('get?key=cats/1.png').
_CREDENTIAL_PARAM = re.compile(r"sig|.*signature|.*token|.*credential|.*password|.*secret|.*api[_-]?key|.+[_-]key|auth"
                               r"|authorization|.*sess(?:ion)?[_-]?id|session|sid|.*passwd|pwd|pass", re.IGNORECASE)


def _credential_params(query: str) -> bool:
    return any(_CREDENTIAL_PARAM.fullmatch(unquote(item.partition("=")[0]).strip())
               for item in query.split("&") if "=" in item)


def without_signed_query(url: str) -> str:
    """A web address without its query when the query holds a credential ('s.tar?X-Amz-Signature=...': a presigned
    URL, a SAS): such a query is access to the file, not its name, and changes each time the URL is signed again. Any
    other address (and any other query: 'get?id=3') as it is."""
    base, sep, query = url.partition("?")
    return base if sep and _is_web(url) and _credential_params(query.partition("#")[0]) else url


def shown_source(source: str) -> str:
    """A record's `source` as the output keeps it: a password or token in the address's user part written '***' (a web
    folder read as 'https://user:password@host/shards/' lists its files so), and in a web address the value of each
    query parameter that carries a credential too (a presigned shard's 's.tar?X-Amz-Signature=...:0001' would put the
    signature in every row made from it)."""
    base, sep, rest = source.partition("?")
    source = redact_uri(base) + sep + rest  # the query's own rule is below: a name's query ('get?key=a.png') stays
    if "?" not in source or not _is_web(source):
        return source

    def hidden(match: re.Match[str]) -> str:
        key = match[2]
        return f"{match[1]}{key}=***" if _CREDENTIAL_PARAM.fullmatch(unquote(key).strip()) else match[0]

    base, sep, rest = source.partition("?")
    return base + sep + re.sub(r"(^|&)([^=&#:]*)=([^&#:]*)", hidden, rest)


def web_name(url: str) -> str:
    """A web address's path as the names it stands for: percent escapes decoded ('road%20signs/caf%C3%A9.png' is
    'road signs/café.png'; an escaped byte that is not UTF-8 stays that byte, which `text_name` writes as \\xNN, as
    for a local name), a query that holds a credential left out (`without_signed_query`). Index pages link every name
    so escaped (python's http.server, nginx and Apache write a space, '=' and non-ASCII so), and the same files on a
    disk or an object store have the plain names."""
    url = without_signed_query(url)
    return unquote(url, errors="surrogateescape") if "%" in url else url


def _is_web(uri: str) -> bool:
    return uri[:8].lower().startswith(("http://", "https://"))


def relative_id(path: str, root: str) -> str:
    """A path relative to the input root, '/'-separated (the record id for file inputs), as valid text (`text_name`).
    A web address's path is taken as the names it stands for (`web_name`), so a web folder's ids, folder labels and
    partition folders are those of the same files anywhere else."""
    if _is_web(path):
        path, root = web_name(path), web_name(root)
    path, root = path.split("://", 1)[-1], root.split("://", 1)[-1].rstrip("/")
    if path == root:
        return text_name(posixpath.basename(path))
    # A listed path is its root, '/', then plain names: cut it there. posixpath.relpath makes both paths absolute
    # and splits them (10 us a path): called several times for each of a listing's files, it was seconds at 100k.
    if root and path.startswith(root + "/"):
        rest = path[len(root) + 1 :]
        if not any(part in ("", ".", "..") for part in rest.split("/")):
            return text_name(rest)
    return text_name(posixpath.relpath(path, root))


def path_of_id(id_: str, root: str) -> str:
    """The path under `root` whose `relative_id` is `id_`, for an input that is gone from the listing: a web folder's
    address with the id's names percent-escaped, which `relative_id` decodes back (an id holding '%', as 'a%20b.zip'
    for a file of that name, was decoded twice, to 'a b.zip'); another's path as it is."""
    return posixpath.join(root, quote(id_, safe="/") if _is_web(root) else id_)


def ids_key(ids: Iterable[str]) -> bytes:
    """The bytes a set of ids is hashed by: one text per set, whatever the order, and never the same for two sets.

    Ids joined by newlines, as every earlier version did (so part file names and ledger digests stay as they were),
    unless an id holds a newline or NUL: a file may be named "a.png\nb.png", and the joined set {"a.png\nb.png"} would
    then equal {"a.png", "b.png"}: two write batches would share a part file name and the second would replace the
    first. Such sets are written as a JSON list behind a NUL, which no joined form starts with.
    """
    ordered = sorted(ids)
    if any("\n" in i or "\0" in i for i in ordered):
        text = "\0" + json.dumps(ordered, ensure_ascii=True)
    else:
        text = "\n".join(ordered)
    # surrogatepass: an id that is not valid text (undecodable bytes in a file name) cannot stop the hash
    return text.encode("utf-8", "surrogatepass")


def ids_digest(ids: Iterable[str]) -> str:
    """A digest of a set of ids, independent of their order (pipeline.ledger compares it with the output's ids)."""
    return hashlib.sha256(ids_key(ids)).hexdigest()
