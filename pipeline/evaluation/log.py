"""The evaluation's progress log: timestamped lines on stderr, so that stdout stays free for callers."""

from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    """Progress line on stderr (stdout stays free for callers)."""
    print(f"[evaluate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
