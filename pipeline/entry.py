"""What runs before the command-line tools have loaded: a Ctrl-C while torch and Ray are imported (a second or more
on a cold start) is one line and status 130, as it is once they run, not a page of import frames.

Imports nothing heavy itself, so that it is in place before the heavy imports start."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


@contextmanager
def interrupted_while_loading(tool: str) -> Iterator[None]:
    """Around a tool's imports: Ctrl-C there exits 130 with one line (nothing has started, nothing is written)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\ninterrupted: {tool} stopped while loading; nothing was started", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None


def exit_without_teardown(code: int | None) -> NoReturn:
    """End the process with `code` once the tool is done, its output flushed, without the interpreter's teardown.

    At that teardown a native thread pool of the libraries the planning loads (a dry run, an argument refused)
    sometimes aborted the process: "terminate called without an active exception", status -6 (SIGABRT) after a dry
    run that had printed its whole report (2 of 60 dry runs on the 2-core machine under load). Nothing of the job's
    is left to do then: a run has written its summary and released the output's lease before `main` returns (a run
    with nothing to read, which starts no Ray, ends here too). A process that started Ray ends the usual way: Ray's own
    exit hooks stop what it started."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        # Python's last collection at exit would walk every object torch and Ray made (~0.3 CPU s), to free memory
        # the process is about to give back anyway; frozen objects are left to the exit
        gc.freeze()
        raise SystemExit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


class RayLinesToStderr:
    """A process's stdout that passes what Ray's own code prints to stderr, the rest to stdout.

    Ray prints its raylet's messages (an actor's process that died, a task it retries) to the driver's stdout, from a
    thread of its own and, for the repeats it held back, from its shutdown at exit; so a failed run's stdout held Ray's
    lines, colour codes and all, where a script reading the job's results expects the job's lines alone. A write is
    Ray's when the function making it (`print`'s caller) is in a module of Ray's. Everything but writing is the real
    stdout's (isatty, encoding, fileno, buffer)."""

    def __init__(self, stdout, stderr) -> None:
        self._stdout, self._stderr = stdout, stderr

    def _stream(self):
        try:
            writer = sys._getframe(2).f_globals.get("__name__", "")  # 0: _stream, 1: write, 2: who called print
        except ValueError:  # no Python caller (a write from C code): not Ray's printing
            return self._stdout
        return self._stderr if writer == "ray" or writer.startswith("ray.") else self._stdout

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def flush(self) -> None:
        for stream in (self._stdout, self._stderr):
            stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stdout, name)


def ray_lines_to_stderr() -> None:
    """From here on, for the rest of the process (Ray prints until it exits): Ray's lines on stderr
    (`RayLinesToStderr`). For a tool's own process only; a program that calls the job keeps its streams."""
    if not isinstance(sys.stdout, RayLinesToStderr) and sys.stdout is not None and sys.stderr is not None:
        sys.stdout = RayLinesToStderr(sys.stdout, sys.stderr)


def purify() -> NoReturn:
    """The `zip-purify` console script: `pipeline.cli.main` once it is loaded."""
    with interrupted_while_loading("zip-purify"):
        from pipeline.cli import main
    exit_without_teardown(main())


def export() -> NoReturn:
    """The `zip-purify-export` console script: `pipeline.export_cli.main` once it is loaded."""
    with interrupted_while_loading("zip-purify-export"):
        from pipeline.export_cli import main
    exit_without_teardown(main())
