"""What the job writes down about where data lives, without the credentials in it: storage options whose names say
they are secrets, and a URI's password or signed query (a presigned checkpoint URL). _job.json, _summary.json, the dry
run's report and a failed run's recorded error go through here."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

# "auth": an HTTP store's headers={"Authorization": ...} and aiohttp's auth=BasicAuth(...); "cookie": its session cookies
SECRET_KEYS = ("key", "secret", "token", "password", "session", "auth", "cookie", "credential")
# Query parameters that carry credentials in a URL: presigned S3 (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token), GCS (X-Goog-Signature), Azure SAS (sig), API keys and tokens.
SECRET_QUERY_KEYS = (*SECRET_KEYS, "signature", "sig")


def redact(options: Any) -> Any:
    """Storage options as they may be written down: a value whose key names a secret (key, token, ...) is '***'."""
    if isinstance(options, dict):
        return {k: ("***" if any(s in k.lower() for s in SECRET_KEYS) else redact(v)) for k, v in options.items()}
    return options


def redact_uri(uri: Any) -> Any:
    """`uri` as it may be written down (_job.json, _summary.json, the dry run): a password or token in its user part,
    and the values of its credential-like query parameters, as '***'. An http(s) URL's query values all go: a
    presigned or SAS URL is a credential whatever its parameters are named. Keys stay, to show what was there."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:  # not a URL after all (an odd local name): nothing in it is a query or a user part
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"***@{host}"  # a user alone may be a token
    every = parts.scheme.lower() in ("http", "https")

    def param(item: str) -> str:
        key, sep, _ = item.partition("=")
        secret = every or any(s in urllib.parse.unquote_plus(key).lower() for s in SECRET_QUERY_KEYS)
        return f"{key}=***" if sep and secret else item

    query = "&".join(param(item) for item in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return uri  # unchanged, as typed (urlunsplit would normalise it)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_uri_secrets(text: str, uri: str) -> str:
    """`text` (an error message) with the credentials `redact_uri` hides in `uri` written as '***' wherever they
    appear: messages quote a URI whole, as a path, or decoded."""
    redacted = redact_uri(uri)
    if redacted == uri:
        return text
    parts = urllib.parse.urlsplit(uri)
    kept = {item.partition("=")[0] for item in urllib.parse.urlsplit(redacted).query.split("&")
            if not item.endswith("=***")}
    secrets = [value for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
               if key not in kept and value]
    secrets += [raw.partition("=")[2] for raw in parts.query.split("&") if raw.partition("=")[0] not in kept]
    if "@" in parts.netloc:
        user = parts.netloc.rsplit("@", 1)[0]
        secrets.append(user.split(":", 1)[1] if ":" in user else user)
    text = text.replace(uri, redacted)
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
