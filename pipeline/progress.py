"""Progress for long work: tqdm's bar on a terminal, plain lines in a log. tqdm redraws its bar with carriage
returns, which a log file (`2> log`, `ray job logs`, a scheduler's) keeps as one ever-growing line."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from pipeline.background import repeated


class LogProgress:
    """Progress for a log: a plain line at most every `every` seconds and one at the end, with counts, rate and
    ETA (and any set_postfix figures)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: Any, initial: int = 0,
                 every: float = 60.0) -> None:
        self.total, self.desc, self.unit, self.stream, self.every = total, desc, unit, stream, every
        self.n = self.initial = initial
        self.started = self.last = time.monotonic()
        self.closed = False
        self.postfix: dict[str, Any] = {}
        self.printed: tuple[int, dict[str, Any]] | None = None  # what the last line said
        self._lock = threading.Lock()  # `refresh` comes from `kept_alive`'s thread

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if time.monotonic() - self.last >= self.every:
                self._line()

    def refresh(self) -> None:
        """The minute's line, if a minute has passed since the last one, though the count has not moved."""
        with self._lock:
            if not self.closed and time.monotonic() - self.last >= self.every:
                self._line()

    def set_postfix(self, **values: Any) -> None:
        """Figures to add to each line (tqdm's set_postfix), e.g. rejected=3."""
        self.postfix = values

    def write(self, line: str, file: Any = None) -> None:
        """A message of its own (tqdm's bar.write): in a log it is just a line."""
        with self._lock:
            print(line, file=file or self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                if self.printed != (self.n, self.postfix):  # the minute's line may have just said it all
                    self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.started
        done = self.n - self.initial  # the rate counts only this run's work, not a resumed run's earlier part
        text = f"{self.desc}: {self.n:,}"  # '12,632': as the dry run and the summary line count
        # a count past its total (a file grown since it was counted) shows no total, as tqdm's bar does: "12/11
        # (109 %)" said more done than all there was, and no ETA where work was left
        total = self.total if self.total is not None and self.n <= self.total else None
        if total is not None:
            # floored: 100 % only once all are done (rounded, 199/200 said 100 %)
            text += f"/{total:,} ({100 * self.n // max(total, 1)} %)"
        text += f" in {elapsed:.0f} s"
        if done > 0 and elapsed > 0:
            text += f", {_rate(done / elapsed)} {self.unit}/s"
            if total is not None and self.n < total:
                text += f", ETA {(total - self.n) * elapsed / done:.0f} s"
        text += "".join(f", {key} {value:,}" if type(value) is int else f", {key} {value}"
                        for key, value in self.postfix.items())
        print(text, file=self.stream, flush=True)
        self.printed = (self.n, dict(self.postfix))


def _rate(per_s: float) -> str:
    """A rate with three significant digits, never in exponent form: 0.164, 2.1, 4,130 (not 4.13e+03)."""
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


def progress_bar(
    total: int | None, desc: str, unit: str, stream: Any = None, initial: int = 0, mininterval: float = 0.1,
    each_update: bool = False,
) -> Any:
    """tqdm's bar on a terminal; in a log (not a terminal) a plain line a minute and one at the end (LogProgress).
    Either has update(n), refresh(), write(line, file=...) and close().

    `each_update`: the bar is redrawn at every update that adds to its count, for updates that come seconds apart (a
    batch each): tqdm otherwise skips an update that comes within `mininterval` of the last drawing, or that adds less
    than what it has learnt to expect (its dynamic miniters), and shows the count of before until the next update,
    which may be minutes away. A log still gets a line a minute."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        drawing = {"mininterval": 0.0, "miniters": 1} if each_update else {"mininterval": mininterval}
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, **drawing)
    return LogProgress(total, desc, unit, stream, initial)


@contextlib.contextmanager
def kept_alive(bar: Any, every_s: float = 1.0) -> Iterator[None]:
    """While the block runs, `bar.refresh()` every `every_s` seconds from a thread of its own: work whose count moves
    rarely (the job's moves a written batch at a time, which can be minutes apart) still shows it goes on. A terminal's
    bar then keeps its elapsed time running, and a log still gets its line a minute (`LogProgress.refresh`); without it
    both said nothing until the first batch was written. `bar` None: nothing to keep alive."""
    if bar is None:
        yield
        return

    def refresh() -> bool:
        try:
            bar.refresh()
        except Exception:  # noqa: BLE001 -- a drawing that fails must not end the work it draws
            return False
        return True

    with repeated(refresh, every_s, "progress-kept-alive"):
        yield
