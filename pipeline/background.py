"""A step repeated on a thread of its own while a block of work runs (the progress bar's refresh, the watch of a
cluster's nodes)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def repeated(step: Callable[[], bool | None], every_s: float, name: str,
             join_timeout_s: float | None = None) -> Iterator[None]:
    """While the block runs, `step()` every `every_s` seconds on a daemon thread named `name`; a step that returns False
    ends the repeats. However the block ends, the thread is told to stop and joined (for at most `join_timeout_s`, None:
    until it ends), so no step runs once the block is done."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            if step() is False:
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(join_timeout_s)
