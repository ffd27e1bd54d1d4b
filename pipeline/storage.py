"""Object-storage calls with retries: transient failures are retried with backoff, permanent ones are not.

s3fs and botocore already retry throttling (SlowDown, 503) and dropped connections a few times;
this layer adds a bounded retry with exponential backoff and jitter around whole operations
(read a file, write a file) for every fsspec backend, and tells permanent errors apart so a
missing bucket or a denied access fails fast with a clear message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
TRANSIENT_MARKERS = ("slowdown", "slow down", "throttl", "reduce your request rate", "serviceunavailable",
                     "service unavailable", "503", "500", "internalerror", "requesttimeout", "timed out", "timeout",
                     "connection", "reset by peer", "broken pipe", "incompleteread", "temporarily")


def is_transient(err: BaseException) -> bool:
    if isinstance(err, PERMANENT):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(err).__name__} {err}".lower()
    if any(s in text for s in ("accessdenied", "access denied", "nosuchbucket", "forbidden", "invalidaccesskeyid")):
        return False
    return any(s in text for s in TRANSIENT_MARKERS)


def backoff(attempt: int, base_delay: float = 0.2, max_delay: float = 8.0) -> None:
    """Wait before retry number `attempt` + 1: base·2^attempt, capped, with jitter so retries do not align."""
    time.sleep(min(max_delay, base_delay * 2**attempt) * (0.5 + random.random()))


def with_retries(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.2,
                 max_delay: float = 8.0) -> T:
    """Call fn(); on a transient error wait base·2^i (with jitter, capped) and try again."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified below
            if attempt == attempts - 1 or not is_transient(err):
                raise
            backoff(attempt, base_delay, max_delay)
    raise AssertionError(f"unreachable: {what}")  # pragma: no cover


def make_parent_dirs(fs: object, folder: str) -> None:
    """Create folders on file systems that have them; object stores have no folders, and s3fs's
    makedirs would silently create a missing bucket instead of failing."""
    protocol = getattr(fs, "protocol", "file")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if {"file", "local"} & set(protocols):
        fs.makedirs(folder, exist_ok=True)  # type: ignore[attr-defined]


def describe(err: BaseException) -> str:
    """A one-line reason for logs and reject rows."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
