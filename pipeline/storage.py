"""Object-storage calls with retries: transient failures are retried with backoff, permanent ones are not.

This layer retries whole operations (read a file, write a file) for every fsspec backend, with exponential
backoff and jitter, and tells permanent errors apart so a missing bucket or a denied access fails fast with a
clear message. For S3 it owns the retry budget: stacked on s3fs's and botocore's own retries with their defaults,
one read under a sustained 503 SlowDown made up to 156 requests and waited minutes. `filesystem` therefore
turns s3fs's retries off and leaves botocore a small per-request budget (`BOTOCORE_RETRIES`) unless the storage
options set one, so that one S3 request of an operation is sent at most attempts x 3 times (18 with the defaults).

Errors are classified by what they are, not by words in their message: s3fs turns S3's answers into
OSError/PermissionError/FileNotFoundError and keeps the botocore ClientError (its code and HTTP status)
as the cause, so the cause decides; transport errors (botocore, aiohttp, sockets) by their class. A message
can quote a path ('s3://b/timeout-500/x.png'), so a path never makes an error transient.

It also turns a URI into its file system and path (`storage_path`) and a listed path back into a URI
(`with_protocol`), for every module that reads or writes storage.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import posixpath
import random
import re
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.redaction import redact, redact_uri, uris_redacted

if TYPE_CHECKING:
    import fsspec

T = TypeVar("T")

PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# Errors of the data or the code, never of storage, whatever their message says (a ValueError naming the file
# 'timeout.png' was retried six times, relisting the whole input each time).
NOT_STORAGE = (ValueError, TypeError, LookupError, AttributeError, ArithmeticError, AssertionError, NotImplementedError)

# S3 error codes (and those of S3-compatible stores) that say "try again": throttling, server trouble, timeouts.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "ProvisionedThroughputExceededException", "ServiceUnavailable", "InternalError",
    "InternalFailure", "RequestTimeout", "RequestTimeoutException", "OperationAborted", "PriorRequestNotComplete",
    "XAmzContentSHA256Mismatch",
    # 409 to a conditional PUT racing another write or a delete of the key: AWS S3 says to retry it, and the retry gets
    # the settled answer (412: the other run's lease is there; or created). Not retried, the run that lost the race,
    # or that took a lease being released, failed with 'cannot write to output' instead of naming the holder.
    "ConditionalRequestConflict",
})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# s3fs maps SlowDown/503 to EBUSY and InternalError/500 to EREMOTEIO; the rest are the OS's dropped connections.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "EAGAIN",
                                      "EBUSY", "EREMOTEIO", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "ENETRESET")
    if hasattr(errno, name))
# Transport errors of the HTTP stacks fsspec backends use, by (top-level module, class name anywhere in the MRO):
# matched by name so that this module imports none of them. SSL errors are a certificate or setup problem.
TRANSPORT_ERRORS = frozenset({
    ("botocore", "HTTPClientError"), ("botocore", "ConnectionError"), ("botocore", "IncompleteReadError"),
    ("botocore", "ResponseParserError"), ("aiohttp", "ClientConnectionError"), ("aiohttp", "ClientPayloadError"),
    ("http", "IncompleteRead"), ("urllib3", "ProtocolError"), ("urllib3", "TimeoutError"),
    ("requests", "ConnectionError"), ("requests", "Timeout"), ("ssl", "SSLEOFError"), ("ssl", "SSLZeroReturnError"),
})
NOT_TRANSPORT_ERRORS = frozenset({("botocore", "SSLError"), ("aiohttp", "ClientSSLError"), ("requests", "SSLError")})
# Last resort for backends that give neither a status nor a typed error: phrases servers and sockets use, none of
# them likely in a file name (unlike '500', 'timeout' or 'connection', which were matched before).
TRANSIENT_PHRASES = ("slowdown", "slow down", "reduce your request rate", "throttl", "too many requests",
                     "service unavailable", "serviceunavailable", "internal server error", "internalerror",
                     "bad gateway", "gateway timeout", "temporarily unavailable", "please try again",
                     "connection reset", "connection aborted", "connection was closed", "broken pipe", "timed out")

TEMP_PREFIX = ".tmp-"

# botocore's retries of each S3 request when the storage options set none (config_kwargs={"retries": {...}}): its
# "standard" mode, 3 attempts, waits of at most 1 s then 2 s, and a retry quota per client that stops them during
# a sustained outage. Its default ("legacy", 5 attempts) times with_retries' 6 made 30 requests per failing S3 call.
# Not 1: a lone 503 in the middle of a streamed tar is absorbed here instead of restarting the whole pass.
BOTOCORE_RETRIES: dict[str, Any] = {"mode": "standard", "total_max_attempts": 3}
S3_PROTOCOLS = frozenset({"s3", "s3a"})
GCS_PROTOCOLS = frozenset({"gs", "gcs"})
AZURE_BLOB_PROTOCOLS = frozenset({"abfs", "abfss", "az"})  # adlfs' AzureBlobFileSystem

# Azure's SDK (azure-storage-blob's ExponentialRetry, under adlfs) retries each request 3 times by itself, waiting
# 15 + 3^n s (n = 1, 2, 3): 84 s before one listing of an endpoint that refuses or cannot be resolved (a mistyped
# account name) fails, and under with_retries' 6 attempts such a run took 8.5 min to stop. As botocore on S3, it
# keeps 3 tries of each request, with waits of about 1.5 s then 2.25 s (±0.5 s): adlfs takes no retry option, so
# `filesystem` sets these on the SDK's retry policy, which every client adlfs derives from its service client shares.
AZURE_SDK_RETRIES: dict[str, float] = {"total_retries": 2, "initial_backoff": 0, "increment_base": 1.5,
                                       "random_jitter_range": 0.5}


class RetriesExhausted(OSError):
    """A transient storage error that lasted through every attempt of an operation. Not transient itself, so that a
    retry loop around the operation does not multiply its attempts; the storage's own error is its __cause__."""


def _chain(err: BaseException) -> Iterator[BaseException]:
    """The error and what it was raised from (explicit cause, else the error being handled), outermost first."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen and len(seen) < 16:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)


def _server_answer(err: BaseException) -> tuple[str, int | None] | None:
    """(error code, HTTP status) of a storage service's answer carried by `err`, or None if it carries none."""
    if type(err).__module__.startswith("aiohttp.http_exceptions"):
        # aiohttp's own parse errors of a response cut short (ContentLengthError, the cause of a ClientPayloadError
        # when a connection drops mid-body) carry code = 400: the client's verdict on the bytes, not the server's
        return None
    response = getattr(err, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(response["Error"].get("Code") or ""), status if isinstance(status, int) else None
    for attr in ("status_code", "status", "code"):  # aiohttp, gcsfs, azure, urllib
        value = getattr(err, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return "", value
    return None


def _answer_is_transient(code: str, status: int | None) -> bool:
    if code in TRANSIENT_CODES:
        return True
    if code.isdigit():  # a HEAD request's error has no body: botocore gives the status as the code
        status = int(code)
    return status in TRANSIENT_STATUS


def _type_verdict(err: BaseException) -> bool | None:
    """Transient or not by the error's class (or errno); None when the class does not say."""
    if isinstance(err, PERMANENT + NOT_STORAGE):
        return False
    names = {(cls.__module__.split(".")[0], cls.__name__) for cls in type(err).__mro__}
    if names & NOT_TRANSPORT_ERRORS:
        return False
    if isinstance(err, ConnectionError | TimeoutError) or names & TRANSPORT_ERRORS:
        return True
    if isinstance(err, OSError) and isinstance(err.errno, int):
        return err.errno in TRANSIENT_ERRNOS
    return None


def is_transient(err: BaseException) -> bool:
    """Whether retrying the operation that raised `err` can succeed: throttling, 5xx, timeouts, dropped connections.

    A missing file or bucket, a denied access, bad credentials, and any error of the data or the code are not."""
    chain = list(_chain(err))
    if isinstance(err, PERMANENT + NOT_STORAGE + (RetriesExhausted,)):
        return False
    for e in chain:  # the service's own answer decides: s3fs's OSError(EIO) can stand for a 400 or a 502
        answer = _server_answer(e)
        if answer is not None:
            return _answer_is_transient(*answer)
    for e in chain:
        verdict = _type_verdict(e)
        if verdict is not None:
            return verdict
    return any(p in f"{type(e).__name__} {e}".lower() for e in chain for p in TRANSIENT_PHRASES)


def access_denied(err: BaseException) -> bool:
    """Whether `err` is a store refusing these credentials what was asked, as each store says it: s3fs's
    PermissionError (HTTP 403, also S3's answer to a HEAD or GET of a key that is not there when the credentials may
    not list the bucket), gcsfs's OSError('Forbidden: ...'), or an error carrying HTTP 401 or 403 in its status_code
    (as azure.core's HttpResponseError does) or its status (aiohttp's ClientResponseError, which fsspec's HTTP file
    system raises for a web server's refusal). Not a missing file (FileNotFoundError, a 404), whatever its words."""
    if isinstance(err, PermissionError):
        return True
    # gcsfs says HTTP 403 as a plain OSError(f"Forbidden: {url}\n{reason}"): told by its class and its opening words,
    # as the word alone may be a file's name (fsspec's archive file systems say a missing member by its own path:
    # FileNotFoundError('Forbidden.png')) and a subclass of OSError says another thing (one with an errno begins
    # '[Errno n]')
    if type(err) is OSError and str(err).startswith("Forbidden: "):
        return True
    return any(getattr(err, name, None) in (401, 403) for name in ("status_code", "status"))


def list_permission(fs: Any) -> str:
    """The permission whose lack makes `fs`'s store answer "refused" where it would say "not there", in its own
    words, for the messages that ask for it."""
    names = set(protocols(fs))
    if names & S3_PROTOCOLS:
        return "s3:ListBucket"
    if names & GCS_PROTOCOLS:
        return "storage.objects.list"
    if names & AZURE_BLOB_PROTOCOLS:
        return "the container's List permission"
    return "permission to list its folder"


def refusal_hint(fs: Any, uri: str | None = None) -> str:
    """For a refused read of a file that is needed (a checkpoint, at `uri`): on an object store, that a key that is not
    there is refused too where the credentials may not list (S3 without s3:ListBucket answers 403, not 404), so that a
    mistyped path is looked for as well as a permission; on a web server, what it may want (`web_refusal_hint`); else
    nothing."""
    if not WEB_PROTOCOLS.isdisjoint(protocols(fs)):
        return web_refusal_hint(fs, uri)
    if OBJECT_STORE_PROTOCOLS.isdisjoint(protocols(fs)):
        return ""
    return (f" (the store refuses a file that is not there too, where these credentials lack {list_permission(fs)}: "
            "check the path as well as the permission to read it)")


def web_refusal_hint(fs: Any, uri: str | None = None) -> str:
    """For a web server's refusal (HTTP 401 or 403) of `uri`: what it may want, as the user gives it. fsspec's HTTP file
    system sends the `headers` storage option with every request; a presigned address carries its credentials in its
    query, and answers 403 once its signature has expired. The entry is named by `uri`'s own scheme: the file system's
    first protocol is 'http', which an https:// address was shown (either entry serves both)."""
    own = fsspec_protocol(uri) if uri else None
    scope = own if own in WEB_PROTOCOLS else protocols(fs)[0]
    return (f" (the web server refused the request: give the credentials it asks for as headers, e.g. --storage-option "
            f"{scope}='{{\"headers\": {{\"Authorization\": \"Bearer ...\"}}}}', or, for a presigned address, a "
            "fresh one: its signature may have expired)")


def backoff_delay(attempt: int, base_delay: float = 0.2, max_delay: float = 8.0) -> float:
    """Seconds to wait before retry number `attempt` + 1: base·2^attempt with ±50 % jitter (so that workers
    throttled together do not retry together), never more than max_delay."""
    return min(max_delay, base_delay * 2 ** min(attempt, 32) * (0.5 + random.random()))


def backoff(attempt: int, base_delay: float = 0.2, max_delay: float = 8.0) -> float:
    """Sleep `backoff_delay(attempt)` seconds; return them."""
    delay = backoff_delay(attempt, base_delay, max_delay)
    time.sleep(delay)
    return delay


def with_retries(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.2,
                 max_delay: float = 8.0) -> T:
    """Call fn(); on a transient error wait (see `backoff_delay`) and try again, `attempts` times in all, then raise
    RetriesExhausted naming `what`, the attempts and the storage's last answer. With the defaults the waits add up
    to at most 9.3 s. fn must be safe to repeat: it may have taken effect before its error came back."""
    started = time.monotonic()
    for attempt in range(attempts):
        tried = time.monotonic()
        try:
            return fn()
        except Exception as caught:  # noqa: BLE001 - classified below
            err = unmasked(caught)
            if not is_transient(err):
                if err is caught:
                    raise
                raise err from None  # a web server's refusal, said as what it is (`unmasked`), not as a missing file
            if attempt == attempts - 1:
                took = time.monotonic() - started
                raise RetriesExhausted(f"{what}: gave up after {attempts} attempts in {took:.0f} s ({_advice(err)});"
                                       f" last error{_last_answer(err)}: {described_whole(err)}") from err
            _note_slow_attempt(what, err, time.monotonic() - tried, attempt + 2, attempts)
            backoff(attempt, base_delay, max_delay)
    raise AssertionError(f"unreachable: {what}")  # pragma: no cover


def unmasked(err: BaseException) -> BaseException:
    """fsspec's HTTP file system answers info() (and so exists, isfile, size) with FileNotFoundError for any failure,
    the real error kept as its cause: a host that does not resolve, a refused connection, a 503 to its HEAD and its
    GET. A web input or checkpoint was then said not to exist, at once. That cause where it is transient, so that it
    is retried and said as what it is, or a refusal (HTTP 401 or 403: a server behind a login, an expired presigned
    address), which was said to be missing; `err` itself otherwise (a 404 stays not found)."""
    cause = err.__cause__
    if isinstance(err, FileNotFoundError) and cause is not None and (is_transient(cause) or access_denied(cause)):
        return cause
    return err


def _advice(err: BaseException) -> str:
    """What to do about a transient error that outlasted every attempt: said before the error, which `describe` may cut. A
    name that does not resolve or a port that refuses is retried like an outage (DNS and servers restart), but after
    the last attempt it is far more likely a mistyped endpoint, account or host than a storage that needs time."""
    for e in _chain(err):
        if isinstance(e, socket.gaierror):
            return "the host name does not resolve: check the host, endpoint or account name, and DNS"
        if isinstance(e, ConnectionRefusedError):
            return "nothing accepts connections there: check the host and port"
    return "the storage is throttling or unavailable: try again later"


# An attempt that failed after this long is said on stderr before it is tried again. A store that does not answer
# (an endpoint behind a firewall, gcsfs retrying a request for 33 s by itself) could otherwise keep
# a run silent for many minutes before its error; quick failures (throttling) are retried without a word.
SLOW_ATTEMPT_S = 10.0


def _note_slow_attempt(what: str, err: BaseException, took: float, next_attempt: int, attempts: int) -> None:
    if took < SLOW_ATTEMPT_S:
        return
    # what and the error may quote a URI with its password or signature
    shown = uris_redacted(f"{what}: failed after {took:.0f} s{_last_answer(err)} ({describe(err).rstrip('.')})")
    print(f"zip-purify: note: {shown}; trying again, attempt {next_attempt} of {attempts}", file=sys.stderr, flush=True)


def _last_answer(err: BaseException) -> str:
    """' SlowDown (HTTP 503)', ' HTTP 500' (a HEAD's answer has no code): what the storage answered, '' if nothing."""
    for e in _chain(err):
        answer = _server_answer(e)
        if answer is not None:
            code, status = answer
            if code and not code.isdigit():
                return f" {code} (HTTP {status})" if status else f" {code}"
            return f" HTTP {status or code}"
    return ""


def local_file_path(uri: str) -> str | None:
    """`uri`'s absolute path on this machine's own file system (a bare path, file://, local://; '~' and a relative path
    read here), or None for any other store: only the protocol is looked at, so an object store costs no request."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    protocol, _ = fsspec.core.split_protocol(uri)
    return LocalFileSystem._strip_protocol(uri) if protocol in (None, "file", "local") else None


def url_connection_options(uri: str) -> dict[str, Any]:
    """What a URL itself says about how to connect (hdfs://namenode:8020/..., webhdfs://host:port/..., ftp://host/...):
    the host, port or user fsspec's own url_to_fs gives its file system, which `filesystem(protocol, options)` does not.

    Empty for local paths and S3, whose bucket is part of the path (and a key's '?versionId=' stays part of its name),
    and for a protocol whose package is not installed (its own error says so where the file system is made)."""
    import fsspec
    from fsspec.registry import get_filesystem_class

    protocol, _ = fsspec.core.split_protocol(uri)
    if not protocol or protocol in ("file", "local") or protocol in S3_PROTOCOLS:
        return {}
    try:
        cls = get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return {}
    return dict(cls._get_kwargs_from_urls(uri))


def with_url_options(uris: dict[str, str], storage_options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`storage_options` with the connection options of each URI (`url_connection_options`) added, and the problems:
    two URIs that name different servers. The job makes every file system, on the driver and on Ray's workers, from a
    protocol and one set of options, so a host given only in the URL was lost ("WebHDFS.__init__() missing 1 required
    positional argument: 'host'"). An option the user gave wins over the URL's, as in fsspec. `uris`: flag -> URI."""
    merged, problems, given_by = dict(storage_options), [], {}
    remote = {_store_kind(u) for u in uris.values()} - {_store_kind("file")}
    made: dict[str, dict[str, Any]] = {}  # entries made here: store -> the shared options the user gave
    for flag, uri in uris.items():
        connection = url_connection_options(uri)
        # into the options its store is made with: its own entry where it has one (`scoped_options`)
        scope = own_entry(uri, merged)
        if scope is None and connection and len(remote) > 1:
            # Beside another remote store (hdfs://namenode:8020/in into s3://), the shared options reach both: the
            # server's host and port stopped the S3 file system ("AioSession.__init__() got an unexpected keyword
            # argument 'host'"). Its own entry gets them, with the shared options it was made with before.
            scope = fsspec_protocol(uri)
            made[scope] = {k: v for k, v in storage_options.items() if k not in store_scopes(storage_options)}
            merged[scope] = dict(made[scope])
        given, into = ((made.get(scope, storage_options.get(scope)), dict(merged[scope])) if scope
                       else (storage_options, merged))
        for key, value in connection.items():
            if key in given:
                continue
            where = (scope, key)
            if where in given_by and into[key] != value:
                # as storage options are shown: the problem is printed, and ends up in CI logs, as it is
                was, now = (redact({key: v})[key] for v in (into[key], value))
                problems.append(f"{given_by[where]} and {flag} name different servers ({key} {was!r} and {now!r}): a "
                                "run reads and writes with one set of storage options; copy the input to the output's "
                                "server first")
                continue
            into[key], given_by[where] = value, flag
        if scope:
            merged[scope] = into
    return merged, problems


def with_own_url_options(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` with what `uri` itself says about its server (`url_connection_options`) added where its file
    system takes its options from: the store's own entry where the options have one (`scoped_options`), else the shared
    options. An option given wins, as in fsspec. For a reader of one URI that may be given no options: the job merges
    its input's and output's servers (`with_url_options`), but `load_checkpoint("webhdfs://nn:9870/m.pt")`, an
    --init-from ftp://host/prior.pt or a checkpoint on a server beside local data lost the host ("missing 1 required
    positional argument: 'host'"). The options themselves when the URL names no server (a local path, S3)."""
    connection = url_connection_options(uri)
    if not connection:
        return storage_options
    scope = own_entry(uri, storage_options)
    if scope is not None:
        return {**storage_options, scope: {**connection, **storage_options[scope]}}
    return {**connection, **storage_options}


def _store_kind(uri: str) -> object:
    """What kind of store a URI is on: its fsspec file system class (s3 and s3a, http and https, file and a bare path
    are one kind each), or the protocol's name where its package is not installed."""
    import fsspec
    from fsspec.registry import get_filesystem_class

    protocol = fsspec.core.split_protocol(uri)[0] or "file"
    try:
        return get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return protocol


WEB_PROTOCOLS = frozenset({"http", "https"})


def _is_store_name(key: str) -> bool:
    from fsspec.registry import known_implementations, registry

    return key in known_implementations or key in registry


def store_scopes(storage_options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of `storage_options` that are one store's own: a key naming an fsspec protocol (s3, https, gs,
    ...) that holds a mapping, as in fsspec's options for URL chains."""
    return {k: v for k, v in storage_options.items() if isinstance(v, dict) and _is_store_name(k)}


def own_entry(uri: str, storage_options: dict[str, Any]) -> str | None:
    """The key of the entry `storage_options` hold for the store of `uri` (a URI, or 'protocol://'), if any: s3 and
    s3a, http and https are one store each."""
    kind = _store_kind(uri)
    return next((name for name in store_scopes(storage_options) if _store_kind(f"{name}://") == kind), None)


# Stores whose name as an option can only be meant as that store's own entry (fsspec knows words such as "data" and
# "root" as protocols too, which a file system may take as an option of its own).
COMMON_STORES = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "http", "https", "abfs", "abfss", "az", "adl",
                           "hdfs", "webhdfs", "arrow_hdfs", "ftp", "sftp", "oci", "oss"})


def store_entry_problems(storage_options: dict[str, Any]) -> list[str]:
    """Options named after a store that are not a mapping: meant as that store's own entry, they would otherwise
    reach every file system as an option it does not know."""
    return [f"storage option {name} names a store: give its own options as a mapping, e.g. "
            f"--storage-option {name}='{example}' (in a --config file: storage_options: {{{name}: {example}}})"
            for name, value in storage_options.items() if name in COMMON_STORES and not isinstance(value, dict)
            for example in [_STORE_ENTRY_EXAMPLE.get(name, _ANY_ENTRY_EXAMPLE)]]


# An entry each store's own file system takes, for the message above: fsspec's HTTP file system passes its options on
# to every request, and aiohttp refuses anon ("unexpected keyword argument 'anon'"), which the message gave every store
_STORE_ENTRY_EXAMPLE = {**dict.fromkeys(("s3", "s3a", "gs", "gcs"), '{"anon": true}'),
                        **dict.fromkeys(("http", "https"), '{"headers": {"Authorization": "Bearer ..."}}')}
_ANY_ENTRY_EXAMPLE = '{"OPTION": "VALUE"}'


def scoped_options(protocol: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The options a `protocol` file system is made with. A store with an entry of its own (`store_scopes`; s3 and
    s3a, http and https are one store each) gets that entry alone; any other store gets the other options. One set of
    options cannot serve two stores: S3's endpoint_url or key given to fsspec's HTTP file system stops it."""
    scopes = store_scopes(storage_options)
    if not scopes:
        return storage_options
    own = own_entry(f"{protocol}://", storage_options)
    return scopes[own] if own else {k: v for k, v in storage_options.items() if k not in scopes}


def with_web_store_scoped(uris: list[str], storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` with an empty entry of its own for a web store (http, https) that is beside another remote
    store (a web folder read into s3://): the options given are then the other store's (an endpoint, keys), and the
    web server, which takes none of them, is read without them. Unchanged when the options already scope it."""
    kinds = {_store_kind(u) for u in uris} - {_store_kind("file")}
    web = [u for u in uris if (fsspec_protocol(u) or "file") in WEB_PROTOCOLS]
    if not web or len(kinds) < 2:
        return storage_options
    if own_entry(web[0], storage_options):
        return storage_options
    return {**storage_options, fsspec_protocol(web[0]): {}}


def fsspec_protocol(uri: str) -> str | None:
    """A URI's protocol as fsspec reads it (None for a bare path), lower-cased."""
    import fsspec

    protocol = fsspec.core.split_protocol(uri)[0]
    return None if protocol is None else protocol.lower()


def options_for(uri: str, data_uris: list[str], storage_options: dict[str, Any]) -> dict[str, Any]:
    """The storage options to open `uri` (a checkpoint) with, in a run whose options are for the store of its data
    (`data_uris`: the input and output): those options, unless the data is on another remote store, whose options
    would break this one's file system (S3's endpoint_url or key given to fsspec's HTTP one, for a presigned https://
    checkpoint beside s3:// data): then only the entry the options hold for the checkpoint's own store, if any (the
    headers a web server asks for, `--storage-option https='{"headers": ...}'`), which was dropped too. A local file
    system ignores options, so a run on local data passes them all on."""
    local = _store_kind("file")
    remote = {_store_kind(u) for u in data_uris} - {local}
    if not remote or _store_kind(uri) in remote:
        return _without_other_server(uri, data_uris, storage_options)
    own = own_entry(uri, storage_options)
    return {own: storage_options[own]} if own else {}


def _without_other_server(uri: str, data_uris: list[str], storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` less the connection options (host, port, user, ...) that the data's URLs put in them
    (`with_url_options`) when `uri` names another server of that store, or another port or account on it: the data on
    ftp://a:2121/in, the checkpoint on ftp://b/prior.pt, which was read from a:2121; webhdfs://nn:50070/m.pt beside
    webhdfs://nn:9870/in, read from port 9870; ftp://bob:...@a/prior.pt beside ftp://alice:...@a/in, read as alice.
    `read_bytes` then takes `uri`'s own from its URL. What `uri` leaves out (no port, no user) is the data's server's,
    as before. An option whose value is not the URLs' (given by the user) stays, and wins, as everywhere."""
    own = url_connection_options(uri)
    if "host" not in own:
        return storage_options
    from_urls = with_url_options({f"data {i}": u for i, u in enumerate(data_uris)}, {})[0]
    run_scope, url_scope = own_entry(uri, storage_options), own_entry(uri, from_urls)
    run = storage_options[run_scope] if run_scope else storage_options
    urls = from_urls[url_scope] if url_scope else from_urls
    if urls.get("host") is None or run.get("host") != urls["host"]:
        return storage_options  # no server named by the data, or a host the user gave
    if all(urls.get(key, value) == value for key, value in own.items()):
        return storage_options  # the data's own server, as far as `uri` says
    kept = {k: v for k, v in run.items() if k not in urls or v != urls[k]}
    return {**storage_options, run_scope: kept} if run_scope else kept


HDFS_PROTOCOLS = frozenset({"hdfs", "arrow_hdfs"})


def no_jvm_message(err: OSError) -> str:
    """pyarrow's HDFS client runs in a JVM; without one its error is "Unable to load libjvm" and a line for each of the
    dozens of places it looked, which buried the one thing to do."""
    lines = str(err).splitlines()
    tried = [line for line in lines[1:] if line.startswith("dlopen(")]
    first = tried[0].partition(")")[0].removeprefix("dlopen(") if tried else None
    looked = f" (looked in {len(tried)} places, such as {first})" if first else ""
    return (f"hdfs:// needs a Java runtime: pyarrow could not load libjvm{looked}; install a JDK, set JAVA_HOME to "
            "it, and set HADOOP_HOME and CLASSPATH (`hadoop classpath --glob`) as pyarrow's HDFS guide says")


def filesystem(protocol: str, storage_options: dict[str, Any]) -> fsspec.AbstractFileSystem:
    """fsspec's file system for `protocol` with `storage_options`; on S3 and Azure with_retries owns the retry budget.

    s3fs retries throttling and dropped connections 5 times by itself, in two nested loops for ranged reads (up to
    25 calls), on top of botocore's and with_retries' attempts: its retries are turned off (s3fs refuses them as
    an option). botocore keeps BOTOCORE_RETRIES unless the options set config_kwargs={"retries": {...}}."""
    import fsspec

    options = storage_options = scoped_options(protocol, storage_options)
    config = storage_options.get("config_kwargs")
    if protocol in S3_PROTOCOLS and (config is None or isinstance(config, dict) and "retries" not in config):
        options = {**storage_options, "config_kwargs": {**(config or {}), "retries": dict(BOTOCORE_RETRIES)}}
    try:
        fs = fsspec.filesystem(protocol, **options)
    except OSError as err:
        if protocol in HDFS_PROTOCOLS and "libjvm" in str(err):
            raise OSError(no_jvm_message(err)) from None
        raise
    if protocol in S3_PROTOCOLS:
        fs.retries = 1  # type: ignore[attr-defined]
    if protocol in AZURE_BLOB_PROTOCOLS:
        _bound_azure_sdk_retries(fs)
    if protocol in GCS_PROTOCOLS:
        _quiet_library_logger("gcsfs")
    return fs


def _quiet_library_logger(name: str) -> None:
    """A NullHandler on library logger `name`, as a library's own should have: gcsfs logs a whole traceback
    ('_request out of retries on exception: , 503') each time its own retries of a request run out, and with no
    handler configured Python's last-resort one printed it on stderr, 12 tracebacks before the job's error under an
    outage, each saying what the job's notes say in a line. A program that configures logging still gets them."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _bound_azure_sdk_retries(fs: object) -> None:
    """AZURE_SDK_RETRIES on an adlfs file system's retry policy; an SDK whose policy lacks these attributes is left
    as it is."""
    config = getattr(getattr(fs, "service_client", None), "_config", None)
    policy = getattr(config, "retry_policy", None)
    if policy is None or not all(hasattr(policy, name) for name in AZURE_SDK_RETRIES):
        return
    for name, value in AZURE_SDK_RETRIES.items():
        setattr(policy, name, value)


def scheme_case_problem(uri: str) -> str | None:
    """What is wrong with a URI whose scheme has capitals ('S3://bucket/x'), with the URI as it must be written:
    fsspec knows its schemes in lower case only, and the run said "Protocol not known: S3". None for any other URI."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if scheme is None or scheme.group(1) == scheme.group(1).lower():
        return None
    return (f"the URL scheme {scheme.group(1)!r} must be written in lower case: "
            f"{redact_uri(scheme.group(1).lower() + uri[scheme.end(1):])}")


def storage_path(uri: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of `uri` and the path on it. Unlike fsspec.open and url_to_fs, '::' is part of the name (a key
    'x::y.png' is a file, not the URL chain 'x' :: 'y.png'); chained input URLs are refused by `discover`."""
    import fsspec

    problem = scheme_case_problem(uri)
    if problem is not None:
        raise ValueError(problem)
    protocol, _ = fsspec.core.split_protocol(uri)
    fs = filesystem(protocol or "file", storage_options)  # on S3, retries bounded: see pipeline.storage
    return fs, fs._strip_protocol(uri)


# fsspec's file systems of an archive's members, whose URL names a member and then, after '::', the archive
# ('zip://a.png::s3://bucket/a.zip'); alone they read nothing: 'zip:///data/a.zip' opened the working directory as
# the archive, and --input said "Is a directory: '/home/me'", a folder the user never named
ARCHIVE_PROTOCOLS = frozenset({"zip", "tar", "libarchive"})


def is_url_chain(uri: str) -> bool:
    """An fsspec URL chain ('simplecache::s3://...', or a member of an archive: 'zip://a.png::s3://bucket/a.zip'): its
    listed paths cannot be read back without the chain. An archive's member URL without its chain
    ('zip:///data/a.zip') is one too: it names no archive to read."""
    from fsspec.registry import known_implementations

    first = re.match(r"^([A-Za-z][\w+.-]*)::", uri)
    if first is not None and first.group(1) in known_implementations:
        return True
    member = re.match(r"^([A-Za-z][\w+.-]*)://", uri)
    return member is not None and member.group(1).lower() in ARCHIVE_PROTOCOLS


def protocols(fs: object) -> tuple[str, ...]:
    """The names a file system answers to (fsspec gives one name as a string, several as a tuple; one without any is
    taken as local)."""
    protocol = getattr(fs, "protocol", "file")
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A listed path as a URI of its file system (fsspec lists object-store paths without their protocol)."""
    names = protocols(fs)
    protocol = names[0]
    if protocol in ("file", "local"):
        return path
    if any(path.startswith(f"{p}://") for p in names):  # HTTP(S) lists whole URLs
        return path
    # a server's file system (HDFS, WebHDFS, FTP) lists absolute paths without its host: give it back, so that the
    # URI names the file (a `source` of ftp:///in/a.png named no server)
    options = getattr(fs, "storage_options", None) or {}
    host = options.get("host")
    if isinstance(host, str) and host and host != "default" and path.startswith("/"):
        port = options.get("port")
        return f"{protocol}://{host}{f':{port}' if port else ''}{path}"
    return f"{protocol}://{path}"


# Object stores, where one PUT replaces an object whole and nothing renames. gcsfs still has a mv of its own (GCS's
# moveTo): it expands glob characters in its source as fsspec's generic mv does, so a write under an output prefix
# 'run[1]' failed with FileNotFoundError naming the temporary file, and where the server lacks moveTo (the GCS
# emulator answers 501) it retried for about 20 s per file before it copied.
OBJECT_STORE_PROTOCOLS = frozenset({*S3_PROTOCOLS, *GCS_PROTOCOLS, *AZURE_BLOB_PROTOCOLS, "adl", "oss"})


def has_rename(fs: Any) -> bool:
    """Whether the file system moves a file by renaming it (local disks, HDFS, FTP) rather than by fsspec's generic
    copy + delete, which also expands glob characters: an output prefix 'run[1]' matched no file on S3. No object
    store has one (`OBJECT_STORE_PROTOCOLS`), whatever its mv."""
    from fsspec.spec import AbstractFileSystem

    if OBJECT_STORE_PROTOCOLS & set(protocols(fs)):
        return False
    return type(fs).mv is not AbstractFileSystem.mv


def move_into_place(fs: Any, tmp: str, path: str, size: int, what: str, tolerate_leftover: bool = True,
                    on_leftover: Callable[[BaseException], None] | None = None) -> None:
    """Move the whole file `tmp` (of `size` bytes) to `path`, each step retried on its own.

    Where there is a rename, it is atomic; a retried rename whose first attempt had landed finds `tmp` gone and
    `path` whole, and that is success. Object stores have no rename: `path` is a server-side copy of `tmp` (a
    repeated copy gives the same object), then `tmp` is deleted. Once `path` is in place the write has succeeded:
    a temporary file that cannot be deleted is left, with a warning, under its hidden name that readers skip
    (`on_leftover(the delete's error)` instead, for a caller that says it in its own words); with
    `tolerate_leftover=False` that raises instead (a check before any work that the output allows deletes)."""
    rename = has_rename(fs)

    def move() -> None:
        try:
            if rename:
                fs.mv(tmp, path)
            else:
                fs.cp_file(tmp, path)
        except FileNotFoundError:
            if not fs.exists(tmp) and fs.exists(path) and fs.size(path) == size:
                return
            raise

    with_retries(move, what)
    if rename:
        return
    try:
        with_retries(lambda: fs.rm_file(tmp), f"remove {tmp}")
    except FileNotFoundError:
        pass  # a retried delete whose first attempt had landed
    except Exception as err:  # noqa: BLE001 - the file is in place; only a hidden copy is left behind
        if not tolerate_leftover:
            raise
        if on_leftover is not None:
            on_leftover(err)
            return
        warnings.warn(f"{what}: done, but the temporary file {tmp} could not be removed ({describe(err)}); "
                      "readers skip its hidden name", RuntimeWarning, stacklevel=2)


def temporary_name(path: str) -> str:
    """A hidden name beside `path`, unique to this write (readers and remove_stale_temporaries know the prefix)."""
    return posixpath.join(posixpath.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(path)}")


def replace_file(fs: Any, path: str, data: bytes, what: str) -> None:
    """Write `data` to `path` so that a reader sees the old content or the new, never part of it: on a file system
    with a rename, a hidden temporary file renamed over `path`; on an object store one PUT, which is atomic."""
    if not has_rename(fs):
        with_retries(lambda: fs.pipe_file(path, data), what)
        return
    tmp = temporary_name(path)
    try:
        with_retries(lambda: fs.pipe_file(tmp, data), what)
        move_into_place(fs, tmp, path, len(data), what)
    except Exception:
        discard(fs, tmp)
        raise


def create_if_absent(fs: Any, path: str, data: bytes, what: str) -> bool | None:
    """Create `path` holding `data` unless a file is there: True if created atomically, False if a file was there,
    None if written without that guarantee, which the caller must then settle another way (read it back later).

    Local disks: a hard link of a whole temporary file (atomic, and unlike O_EXCL a reader never sees the file
    empty). Object stores: a conditional PUT (fsspec's mode="create"; s3fs sends If-None-Match: *, refused with
    FileExistsError by AWS S3, MinIO and moto), but a store that ignores the condition overwrites silently and
    fsspec's generic mode="create" checks and then writes, so success there is None. Same without hard links."""
    protocol = getattr(fs, "protocol", "file")
    if {"file", "local"} & set((protocol,) if isinstance(protocol, str) else protocol):
        tmp = temporary_name(path)
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE and SMB mounts): as an object store
            pass
        finally:
            os.unlink(tmp)
    try:
        with_retries(lambda: fs.pipe_file(path, data, mode="create"), what)
    except FileExistsError:  # also a retried PUT whose first attempt had landed: the caller reads whose it is
        return False
    except OSError as err:
        answer = _condition_answer(err)
        if answer == "exists":  # 412 without the Condition field s3fs looks for (it then raises a plain OSError)
            return False
        if answer != "unsupported":
            raise
        with_retries(lambda: fs.pipe_file(path, data), what)  # a store without conditional writes: settle by reading
    return None


# What S3-compatible stores that do not implement conditional writes answer a PUT with If-None-Match.
CONDITION_UNSUPPORTED_CODES = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})


def _condition_answer(err: BaseException) -> str | None:
    """'exists' when the storage refused a conditional PUT because the object is there (412 Precondition Failed),
    'unsupported' when it does not implement the condition (501, or a 400 naming it), else None."""
    for e in _chain(err):
        answer = _server_answer(e)
        if answer is not None:
            code, status = answer
            if code == "PreconditionFailed" or status == 412 or code == "412":
                return "exists"
            if status == 501 or code in ("501", "NotImplemented") or (
                    status == 400 and code in CONDITION_UNSUPPORTED_CODES):
                return "unsupported"
    return None


# File systems that hold one connection to their server, which threads may not share (ftplib's, paramiko's SFTP
# channel): two threads' requests interleave on it and each waits for ever for its answer. An sftp:// output of
# several part files hung its run at the start, reading their ids 16 at a time.
SINGLE_CONNECTION_PROTOCOLS = frozenset({"ftp", "sftp", "ssh"})


def concurrent_calls(fs: Any, wanted: int) -> int:
    """How many threads may call `fs` at once: `wanted`, or 1 where the file system holds a single connection."""
    return 1 if SINGLE_CONNECTION_PROTOCOLS & set(protocols(fs)) else wanted


def concurrent_reads(uri: str, wanted: int) -> int:
    """`concurrent_calls` of the file system that `uri` is on: how many of its files a thread pool may read at once.
    Told by its class (`filesystem_class`): a file system made to be asked was an FTP login for nothing."""
    return concurrent_calls(filesystem_class(uri), wanted)


def filesystem_class(uri: str) -> type:
    """The class of the file system `uri` is on, for what the class says (its protocols, `_strip_protocol`), without
    making one: fsspec keeps no FTP file system for the next use, so each one made connects and logs in anew, and
    holds its connection open until it is collected."""
    import fsspec

    return fsspec.get_filesystem_class(fsspec_protocol(uri) or "file")


def list_uncached(fs: Any, folder: str) -> list[dict[str, Any]]:
    """`fs.ls(folder, detail=True)`, past the file system's listing cache where it keeps one (s3fs and gcsfs take
    refresh=True; adlfs takes the keyword and answers from its cache still, until the folder's entry is invalidated:
    temporaries left since an earlier listing in the same process, as a scheduler's loop of runs, went unseen). SFTP's ls
    takes no such keyword: passed it, every run on sftp:// failed with a TypeError."""
    invalidate = getattr(fs, "invalidate_cache", None)  # every fsspec file system has it (a no-op without a cache)
    for cached in {folder, folder.rstrip("/")} if invalidate else ():  # adlfs keys its cache without the '/'
        invalidate(cached)
    parameters = inspect.signature(fs.ls).parameters.values()
    if any(p.name == "refresh" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return fs.ls(folder, detail=True, refresh=True)
    return fs.ls(folder, detail=True)


def discard(fs: Any, path: str) -> None:
    """Delete `path` if it can be deleted, once: cleaning up after a failure must not hide that failure."""
    try:
        fs.rm_file(path)
    except Exception:  # noqa: BLE001 - best effort
        pass


def remove_stale_temporaries(fs: Any, folder: str, older_than_s: float = 3600.0,
                             of_names: Collection[str] | None = None, made_since: float | None = None) -> int:
    """Delete the temporary files (hidden names starting with TEMP_PREFIX) that writes left in `folder` more than
    `older_than_s` seconds ago (a killed run, a delete that failed); younger ones may belong to a write still
    running. With `made_since` (a time.time()), those last written since then too: a run's own, once every write it
    started has ended. With `of_names`, only the temporaries of those files (`.tmp-<hex>-NAME`, as `temporary_name`
    makes them, or `.NAME.tmp`, as versions before it did): a folder the user also keeps files in (an output that is
    its input folder) may hold a `.tmp-` file of theirs. Returns how many were deleted."""
    try:
        listing = with_retries(lambda: list_uncached(fs, folder), f"list {folder}")
    except FileNotFoundError:
        return 0
    now, removed = time.time(), 0
    for info in listing:
        name = info["name"]
        if info.get("type") != "file" or not _is_temporary(posixpath.basename(name.rstrip("/")), of_names):
            continue
        modified = _modified(info)
        if modified is None or now - modified < older_than_s and (made_since is None or modified < made_since):
            continue
        try:
            with_retries(lambda n=name: fs.rm_file(n), f"remove {name}")
            removed += 1
        except FileNotFoundError:
            pass
    return removed


_TEMPORARY_OF = re.compile(r"\.tmp-[0-9a-f]{32}-(?P<name>.+)|\.(?P<old>.+)\.tmp")


def _is_temporary(basename: str, of_names: Collection[str] | None) -> bool:
    """Whether `basename` is a temporary file's name: any under TEMP_PREFIX, or with `of_names` one of theirs."""
    if of_names is None:
        return basename.startswith(TEMP_PREFIX)
    match = _TEMPORARY_OF.fullmatch(basename)
    return match is not None and (match["name"] or match["old"]) in of_names


def _modified(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time in seconds since the epoch (local: mtime; S3: LastModified)."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified", info.get("created"))))
    if isinstance(value, int | float):
        return float(value)
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else None


def make_parent_dirs(fs: object, folder: str) -> None:
    """Create folders on file systems that have them: local disks, and servers' file systems whose paths start at a
    root (HDFS, WebHDFS, FTP: an FTP server refuses a file in a folder that is missing). Object stores have no
    folders, and s3fs's makedirs would silently create a missing bucket instead of failing."""
    names = set(protocols(fs))
    if {"file", "local"} & names or (folder.startswith("/") and not S3_PROTOCOLS & names):
        fs.makedirs(folder, exist_ok=True)  # type: ignore[attr-defined]


REASON_CHARS = 300  # the longest reason kept in a reject row or a summary


def shortened(text: str, limit: int = REASON_CHARS) -> str:
    """`text` of at most `limit` characters: cut at a word and marked with '…' when longer, so that a reason cut short
    does not read as a whole sentence ("The task may ; this run wrote ...")."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    word = cut.rfind(" ")
    return (cut[:word] if word > limit // 2 else cut).rstrip(" ,;:") + "…"


def describe(err: BaseException) -> str:
    """A one-line reason for logs and reject rows. A URL in it is shown as `redact_uri` shows it: a web store's error
    names the address it was sent to, which may be a redirect's presigned target (S3's, a CDN's) that no URI the job
    was given holds, and a reject row's reason is kept in the output data set."""
    return shortened(uris_redacted(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))


# A refusal said once on the command line keeps the store's whole reason, but not a page a server sent as one
WHOLE_REASON_CHARS = 2_000
_TRACEBACK = re.compile(r"^\s*(Traceback \(most recent call last\)|File \"[^\"]*\", line \d+)")


def described_whole(err: BaseException) -> str:
    """`describe`'s reason with the error's whole message, for an error that stops a run (a reject row's reason is cut
    to REASON_CHARS): an S3 AccessDenied naming the role, the action and the bucket runs past that, and gcsfs says why
    a request was Forbidden on a second line. Its lines are joined into one, up to a traceback a library put in its
    message (its frames are no reason for the user to act on). A URL in it is shown as `redact_uri` shows it: a web
    store's refusal names the address it was sent to, a redirect's presigned target (S3's, a CDN's) too, whose
    signature and key id at its end the first line cut at REASON_CHARS left out, and which no URI the job was given
    holds, so that no redaction of those hid them."""
    lines = []
    for line in str(err).splitlines():
        if _TRACEBACK.match(line):
            break
        if line.strip():
            lines.append(uris_redacted(line.strip()))  # line by line: a URL ends where its line does
    text = "".join(f"{'' if i == 0 else ' ' if lines[i - 1][-1] in ':,;(' else '; '}{line}"
                   for i, line in enumerate(lines))
    return shortened(f"{type(err).__name__}: {text}", WHOLE_REASON_CHARS)
