"""What runs before the command-line tools have loaded: a Ctrl-C while torch and Ray are imported (a second or more
on a cold start) is one line and status 130, as it is once they run, not a page of import frames.

Imports nothing heavy itself, so that it is in place before the heavy imports start."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def interrupted_while_loading(tool: str) -> Iterator[None]:
    """Around a tool's imports: Ctrl-C there exits 130 with one line (nothing has started, nothing is written)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\ninterrupted: {tool} stopped while loading; nothing was started", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None


def purify() -> int:
    """The `zip-purify` console script: `pipeline.cli.main` once it is loaded."""
    with interrupted_while_loading("zip-purify"):
        from pipeline.cli import main
    return main()
