"""What the job writes down about where data lives, without the credentials in it: storage options whose names say
they are secrets, and a URI's password or signed query (a presigned checkpoint URL). _job.json, _summary.json, the dry
run's report and a failed run's recorded error go through here."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

# "auth": an HTTP store's headers={"Authorization": ...} and aiohttp's auth=BasicAuth(...); "cookie": its session cookies;
# "connection"/"conn_str": Azure's connection string (adlfs' connection_string), which holds the account key or a SAS
SECRET_KEYS = ("key", "secret", "token", "password", "session", "auth", "cookie", "credential", "connection", "conn_str")
# A value that is itself a connection string, under whatever name it was given, holds a key or a signature.
_SECRET_IN_VALUE = re.compile(r"(?i)(?:^|;)\s*(?:AccountKey|SharedAccessSignature|SharedAccessKey)\s*=")
# Query parameters that carry credentials in a URL: presigned S3 (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token), GCS (X-Goog-Signature), Azure SAS (sig), API keys and tokens.
SECRET_QUERY_KEYS = (*SECRET_KEYS, "signature", "sig")


def redact(options: Any) -> Any:
    """Storage options as they may be written down: a value whose key names a secret (key, token, ...) is '***', as is
    a connection string holding a key; a URL's password and signed query as `redact_uri` shows them (a proxy's
    'http://user:password@proxy:3128', under a key that names no secret)."""
    if isinstance(options, dict):
        return {k: ("***" if any(s in str(k).lower() for s in SECRET_KEYS) else redact(v)) for k, v in options.items()}
    if isinstance(options, list | tuple):
        return [redact(item) for item in options]
    if isinstance(options, str) and _SECRET_IN_VALUE.search(options):
        return "***"
    return redact_uri(options)


# A link of an fsspec URL chain begins after '::' where a scheme follows ('simplecache::s3://...', 'zip://a.png::
# s3://...'); a '::' followed by anything else is part of the link (a password or a key holding '::').
_LINK = re.compile(r"::(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(.*)", re.DOTALL)


# Schemes whose authority may end in a port (host:port). Object stores' (s3://, gs://, az://, ...) names a bucket or
# container, never a port: there a ':' in it begins a password, whatever follows.
# Schemes of an archive's member ('zip://me@x.png::s3://bucket/a.zip'): where the archive follows ('::' and its link or
# path), what comes after 'zip://' is a name inside the archive, never a user or password, whatever it holds ('@', ':').
_MEMBER_SCHEMES = frozenset({"zip", "tar", "libarchive"})
# Azure's URLs name a container before the account's host ('abfss://imgs@account.dfs.core.windows.net/in/', as
# adlfs, Spark and Hadoop write them): that '@' ends a container's name (3 to 63 lower-case letters, digits and '-',
# or a '$' one: '$web'), no user or token. Hidden, it left the output's record and every message without the container.
_CONTAINER_AT_SCHEMES = frozenset({"abfs", "abfss", "az", "wasb", "wasbs"})
_CONTAINER = re.compile(r"\$?[a-z0-9][a-z0-9-]{1,62}")
_PORT_SCHEMES = frozenset({"http", "https", "ftp", "ftps", "sftp", "ssh", "hdfs", "webhdfs", "swebhdfs", "viewfs",
                           "smb", "dav", "davs", "webdav", "ws", "wss"})
# host:port as a person types it: a DNS name (letters, digits, '-' inside a label, '.' between labels) or a bracketed
# IPv6 address, then a port of 1 to 65535 without a leading zero (checked apart). A user name outside this (holding
# '_', '+', '%', '~', ...) is no host, so what follows its ':' is a password.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_PORT = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\]):([1-9][0-9]{{0,4}})")


def _is_host_port(head: str, authority: str) -> bool:
    """Whether `authority` (a URL's first name after its last '@', if any) is host:port for a URL of scheme `head`."""
    if head[:-3].lower() not in _PORT_SCHEMES:
        return False
    match = _HOST_PORT.fullmatch(authority)
    return match is not None and int(match.group(1)) <= 65535


@dataclass(frozen=True)
class _Link:
    """One URI of a chain, cut where its credentials are: `head` (scheme://), `userinfo` (user:password, a user alone,
    or '' for none), `rest` (host, path, query and fragment)."""

    head: str
    userinfo: str
    rest: str

    @property
    def query(self) -> str:
        """Its query's 'k=v&...' text, '' for none."""
        try:
            return urllib.parse.urlsplit(self.head + self.rest).query
        except ValueError:  # not a URL after all (an odd local name): nothing in it is a query
            return ""


def _links(uri: str) -> list[_Link | str]:
    """`uri`'s links (an fsspec chain's, or the one), those with a scheme cut (`_Link`), the others as they are.

    The user part (user:password) of a link ends at its last '@' when its first name (up to the first '/', '?' or '#')
    holds a ':' before any '@': a password may hold '/', '#', '?' or '@' as typed (`ftp://user:pa/ss@host/x`), which
    a URL parser takes for the path, fragment or query, leaving the rest of the password there. So an '@' later in
    such a URI's path ('ftp://u:pw@h/me@x.png') hides more than the password: unsure where the password ends, the
    whole of what may be one is hidden. Otherwise the user part is what comes before the first name's last '@' (a user
    alone may be a token).

    Except a port: where the scheme takes one (http, ftp, hdfs, ... not s3 or gs) and the first name's part after its
    last '@' (all of it, when it has none) is host:port (`_HOST_PORT`: a host name, digits 1 to 65535), the user part
    ends at that '@' or there is none: 'https://h:8443/a@b' is the host h, port 8443 and path /a@b, and
    'https://u:pw@h:8443/me@x' the password pw. Both could also be read as a password that holds '/' ('8443/a' for the
    host b), but a URL parser, and so the client the job hands the URL to, reads the port: that password would never
    be sent. What stays ambiguous, and hidden whole: a "port" that cannot be one (letters, 0, over 65535, a leading
    zero: 'user:0123/x@h'), a "host" with characters no host name has ('my_user:1234/x@h'), a host:port after the
    later '@' too ('https://user:1234/x@host:8080/p': that is where the password ends), an object store's URL
    ('s3://key:1234/se@bucket', no port there), and a first name with no port ('ftp://u:pw@h/me@x.png'). Left shown:
    a password of 1 to 5 digits (at most 65535), an unescaped '/' and more, for a host with no port
    ('ftp://alice:1234/x@h/p'): a URL no client logs in with (it connects to the host 'alice').

    An Azure URL's 'container@account.dfs.core.windows.net' has no user part either (`_CONTAINER_AT_SCHEMES`).

    A zip, tar or libarchive link followed by another (the archive: 'zip://me@x.png::s3://bucket/a.zip', or a path:
    'zip://me@x.png::/data/a.zip') names a member of that archive: it has no user part, whatever '@' or ':' its name
    holds (the archive's link keeps its own)."""
    found: list[_Link | str] = []
    pieces = _LINK.split(uri)
    for i, piece in enumerate(pieces):
        match = _SCHEME.match(piece)
        if match is None:
            found.append(piece)
            continue
        head, body = match.groups()
        if head[:-3].lower() in _MEMBER_SCHEMES and (i + 1 < len(pieces) or body.partition("::")[2]):  # archive next
            found.append(_Link(head, "", body))
            continue
        first = re.split(r"[/?#]", body, maxsplit=1)[0]
        if head[:-3].lower() in _CONTAINER_AT_SCHEMES and _CONTAINER.fullmatch(first.split("@", 1)[0]):
            found.append(_Link(head, "", body))  # 'container@account...': see _CONTAINER_AT_SCHEMES
            continue
        last = body.rfind("@")  # after it, where the '@' is past the first name: a host:port there ends a password
        after = re.split(r"[/?#]", body[last + 1 :], maxsplit=1)[0] if last >= len(first) else ""
        if _is_host_port(head, first.rpartition("@")[2]) and not _is_host_port(head, after):
            at = first.rfind("@")
            if at < 0:
                found.append(_Link(head, "", body))
                continue
        elif ":" in first.split("@", 1)[0] and "@" in body:
            at = body.rindex("@")
        elif "@" in first:
            at = first.rindex("@")
        else:
            found.append(_Link(head, "", body))
            continue
        found.append(_Link(head, body[:at], body[at + 1 :]))
    return found


def _hidden_userinfo(userinfo: str) -> str:
    return f"{userinfo.split(':', 1)[0]}:***" if ":" in userinfo else "***"  # a user alone may be a token


def _hidden_query(link: _Link) -> tuple[str, list[str]]:
    """(`link`'s query with its credential values as '***', the raw values hidden). An http(s) URL's query values all
    go: a presigned or SAS URL is a credential whatever its parameters are named."""
    every = link.head.lower() in ("http://", "https://")
    hidden: list[str] = []

    def param(item: str) -> str:
        key, sep, value = item.partition("=")
        if sep and (every or any(s in urllib.parse.unquote_plus(key).lower() for s in SECRET_QUERY_KEYS)):
            hidden.append(value)
            return f"{key}=***"
        return item

    query = link.query
    return ("&".join(param(item) for item in query.split("&")) if query else ""), hidden


def redact_uri(uri: Any) -> Any:
    """`uri` as it may be written down (_job.json, _summary.json, the dry run): a password or token in its user part,
    and the values of its credential-like query parameters, as '***', in each link of an fsspec chain
    ('simplecache::s3://key:secret@bucket/x'). A password may hold '/', '#', '?' or '@' as typed: see `_links`. An
    http(s) URL's query values all go. Keys and user names stay, to show what was there; a URI without credentials
    is returned as typed."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    shown = []
    for link in _links(uri):
        if isinstance(link, str):
            shown.append(link)
            continue
        rest = link.rest
        query, _ = _hidden_query(link)
        if query != link.query:
            at = rest.index("?" + link.query) + 1  # the query follows the first '?' (urlsplit's)
            rest = rest[:at] + query + rest[at + len(link.query) :]
        shown.append(link.head + (f"{_hidden_userinfo(link.userinfo)}@" if link.userinfo else "") + rest)
    return "::".join(shown)


# A URI as a message quotes it: up to a space, a quote or a bracket around it
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


def uris_redacted(text: str) -> str:
    """`text` (a message) with each URI in it as `redact_uri` shows it, for a message whose URIs are not known apart
    (a storage call's own description and error)."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def redact_uri_secrets(text: str, uri: str) -> str:
    """`text` (an error message) with the credentials `redact_uri` hides in `uri` written as '***' wherever they
    appear: messages quote a URI whole, as a path (without its scheme), decoded, or cut where a parser cut it (a
    password holding '/' or '#')."""
    redacted = redact_uri(uri)
    if redacted == uri:
        return text
    text = text.replace(uri, redacted)
    contexts: dict[str, str] = {}  # quoted forms hidden wherever they are, however short
    secrets: set[str] = set()  # values hidden wherever they are when long enough not to be a common word
    for link in _links(uri):
        if isinstance(link, str):
            continue
        _, values = _hidden_query(link)
        secrets.update(values)
        secrets.update(urllib.parse.unquote_plus(v) for v in values)
        if not link.userinfo:
            continue
        user, sep, password = link.userinfo.partition(":")
        for form in {link.userinfo, urllib.parse.unquote(link.userinfo)}:
            contexts[f"{form}@"] = f"{_hidden_userinfo(form)}@"  # 'user:pass@host/out' in a path
        secret = password if sep else user
        for form in {secret, urllib.parse.unquote(secret)}:
            secrets.add(form)
            # a parser's pieces of it: 'ftp://user:pa/ss@host' read as host 'user', port 'pa', path '/ss@host'
            pieces = re.split(r"[/?#@:]", form)
            secrets.update(pieces)
            if len(pieces) > 1:
                if sep:  # its first piece after 'user:' (a token alone has no such context: a short piece is a word)
                    contexts[f"{user}:{pieces[0]}"] = f"{user}:***"
                contexts[f"{pieces[-1]}@"] = "***@"
    for form in sorted(contexts, key=len, reverse=True):  # longest first
        if form.strip("@:"):
            text = text.replace(form, contexts[form])
    # Quoted otherwise (as a path, decoded): a value short enough to be a common word ('v=1') would mangle the
    # message, and is no credential; signatures, keys and tokens are long.
    for secret in sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True):  # longest first
        text = text.replace(secret, "***")
    return text


def storage_value_shown(value: Any) -> str:
    """A storage option's value (the file's storage_options or storage_option) as an error may quote it: what it is
    and the names it gives, never a value, which may be a credential (the error goes to stderr, so to CI logs)."""
    if isinstance(value, dict):
        return f"a mapping of {', '.join(map(str, value)) or 'nothing'}"
    if isinstance(value, list):
        return f"a list ({', '.join(storage_item_shown(item) for item in value)})"
    if isinstance(value, str):
        return f"the text {storage_item_shown(value)}"
    return type(value).__name__


def storage_item_shown(item: Any) -> str:
    """One KEY=VALUE (or a mistyped 'key: value') as an error may quote it: the name, then *** for the rest."""
    text = str(item)
    name = re.match(r"\s*[\w.-]*\s*[=:]?\s*", text).group(0)  # type: ignore[union-attr]
    return repr(name + "***" if text[len(name):] else text)
