"""The job's progress counts the rows of each batch once its part files are written, not one batch later."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.progress import LogProgress, progress_bar
from pipeline.stages import write_stage
from tests.jobutil import image_folder, read_output, small_job_config, tiny_model_file

# How long a batch's write waits for the driver to have shown the batch before it. The driver of the old code took a
# batch's row only once the next batch was written: each write then waited this long, and the test failed.
GATE_S = 30.0


class Terminal(io.StringIO):
    """A stream that says it is a terminal: the job draws tqdm's bar on it."""

    def isatty(self) -> bool:
        return True


def rows_written(out: Path) -> int:
    """The rows in the output's part files (a write lands whole: a hidden temporary, renamed)."""
    return sum(map(len, read_output(str(out))))


def drawn(terminal: Terminal) -> str:
    """What the terminal shows now: the bar's last drawing (tqdm draws over it after a carriage return)."""
    return terminal.getvalue().rsplit("\r", 1)[-1]


@pytest.mark.slow  # one small run of the job (~30 s of Ray on a busy machine)
@pytest.mark.usefixtures("ray_local")
def test_each_progress_update_counts_the_rows_written_by_then(tmp_path, monkeypatch) -> None:
    """Several batches; each batch's write waits (up to GATE_S) until the driver has shown the batch before, so that
    what is on disk at an update is what the update should count, with no race. The bar used to show each batch only
    once the next was written ('images: 6' over 10 rows written, then 10 over 13), the last one at the end."""
    import pipeline.job as job_module
    from pipeline.job import run_job

    image_folder(tmp_path / "in", 12)
    (tmp_path / "in" / "junk.png").write_bytes(b"not an image")  # a reject: the bar counts those too
    out, gate = tmp_path / "out", tmp_path / "gate"
    gate.mkdir()
    gate_dir = str(gate)

    def write_in_turn(batch, output, storage_options, **kwargs):  # run by Ray's workers (pickled by value)
        turn = 0
        while True:  # this write's turn: the first free number
            try:
                os.close(os.open(os.path.join(gate_dir, f"turn-{turn}"), os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                turn += 1
        deadline = time.monotonic() + GATE_S
        while sum(name.startswith("shown-") for name in os.listdir(gate_dir)) < turn and time.monotonic() < deadline:
            time.sleep(0.05)
        return write_stage(batch, output, storage_options, **kwargs)

    terminal, updates, real_bar = Terminal(), [], job_module.progress_bar

    class Watched:
        """The job's own bar, drawn on `terminal`; each update notes what it counts, what is drawn, what is on disk."""

        def __init__(self, *args, **kwargs) -> None:
            self.bar = real_bar(*args, **kwargs)

        def update(self, n: int = 1) -> None:
            self.bar.update(n)
            updates.append((self.bar.n, rows_written(out), drawn(terminal)))
            (gate / f"shown-{len(updates)}").touch()  # the next batch may now be written

        def __getattr__(self, name: str):
            return getattr(self.bar, name)

    monkeypatch.setattr(job_module, "write_stage", write_in_turn)
    monkeypatch.setattr(job_module, "progress_bar", Watched)
    monkeypatch.setattr(sys, "stderr", terminal)
    summary = run_job(small_job_config(tmp_path, tiny_model_file(tmp_path), progress=True, files_per_unit=3,
                                       tile_batch=3, batch_size=3, write_batch=3))

    assert len([n for n, _, _ in updates if n > 0]) >= 2, updates  # several batches, or the test shows nothing
    assert [(n, on_disk) for n, on_disk, _ in updates] == [(n, n) for n, _, _ in updates], updates
    assert all(f"| {n}/13 [" in shown for n, _, shown in updates), updates  # drawn at once, not at the next update
    # the last count is the summary's
    this_run = summary["this_run"]
    assert (this_run["purified"], this_run["rejected"]) == (12, 1)
    assert updates[-1][0] == 13 == rows_written(out)
    assert "| 13/13 [" in drawn(terminal) and "rejected=1" in drawn(terminal)


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


def test_a_count_past_its_total_shows_no_total_in_a_log_as_on_a_terminal() -> None:
    # A total counted before the run (a TFRecord file's records) and a file grown since: tqdm's bar drops the total
    # once the count passes it; the log's line said "images: 5/3 (166 %)", more done than all there was
    terminal = Terminal()
    bar = progress_bar(3, "images", "img", terminal, each_update=True)
    bar.update(5)
    bar.close()
    assert "5/3" not in terminal.getvalue() and "images: 5img" in terminal.getvalue(), terminal.getvalue()
    log = io.StringIO()
    bar = progress_bar(3, "images", "img", log, each_update=True)
    bar.update(2)
    bar.update(3)
    bar.close()
    (line,) = log.getvalue().splitlines()
    assert line.startswith("images: 5 in ") and "%" not in line and "ETA" not in line, line
