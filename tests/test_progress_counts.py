"""The job's progress bar shows each batch's count as it comes."""

from __future__ import annotations

import io

from pipeline.progress import LogProgress, progress_bar


class Terminal(io.StringIO):
    """A stream that says it is a terminal: the job draws tqdm's bar on it."""

    def isatty(self) -> bool:
        return True


def drawn(terminal: Terminal) -> str:
    """What the terminal shows now: the bar's last drawing (tqdm draws over it after a carriage return)."""
    return terminal.getvalue().rsplit("\r", 1)[-1]


def test_a_bar_redrawn_at_each_update_on_a_terminal_and_a_line_a_minute_in_a_log() -> None:
    """The job's bar (each_update=True) on a terminal shows each batch's count as it comes: tqdm drew at most every
    0.1 s, and an update that came sooner was shown only at the next, a batch later. In a log it is still a line a
    minute and one at the end, with no carriage return."""
    terminal = Terminal()
    bar = progress_bar(4, "images", "img", terminal, each_update=True)
    bar.update(3)
    bar.update(1)  # at once: within tqdm's 0.1 s
    assert "| 4/4 [" in drawn(terminal), terminal.getvalue()
    bar.close()

    log = io.StringIO()
    bar = progress_bar(4, "images", "img", log, each_update=True)
    assert isinstance(bar, LogProgress)
    bar.update(3)
    bar.update(1)
    assert log.getvalue() == ""  # not a line an update
    bar.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == [line for line in log.getvalue().splitlines() if line.startswith("images: 4/4")]
    assert len(log.getvalue().splitlines()) == 1
