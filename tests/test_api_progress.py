"""Progress in a log: plain lines (at most one a minute and one at the end, with counts and ETA), never tqdm's
carriage-return redraws; tqdm's bar on a terminal."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline import progress as progress_module
from pipeline.evaluation.classifier import train_classifier
from pipeline.model import UNetConfig, build_unet
from pipeline.progress import LogProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_at_most_a_minute_apart_and_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    log = io.StringIO()
    bar = progress_bar(100, "purifying", "step", log)
    assert isinstance(bar, LogProgress)
    for _ in range(10):
        clock.now += 5
        bar.update(1)
    assert log.getvalue() == ""  # 50 s: nothing yet
    clock.now += 10
    bar.update(10)
    clock.now += 1
    bar.update(1)
    bar.close()
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines == ["purifying: 20/100 (20 %) in 60 s, 0.333 step/s, ETA 240 s",
                     "purifying: 21/100 (21 %) in 61 s, 0.344 step/s, ETA 229 s"]


def test_resumed_count_rate_excludes_the_earlier_part(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    log = io.StringIO()
    bar = progress_bar(40, "training classifier", "batch", log, initial=20)
    clock.now += 10
    bar.update(10)
    bar.write("epoch 3/4: loss 0.1")
    bar.close()
    assert log.getvalue().splitlines() == [
        "epoch 3/4: loss 0.1", "training classifier: 30/40 (75 %) in 10 s, 1 batch/s, ETA 10 s"]


def test_terminal_keeps_tqdm() -> None:
    from tqdm.auto import tqdm

    bar = progress_bar(3, "purifying", "step", Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_purifier_progress_in_a_log_is_plain_lines(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                                  num_res_blocks=1))
    p = Purifier(model, ZipSettings(steps=2, pool=2))
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    assert np.array_equal(p(images, progress=True)[0], p(images)[0])
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    assert "\r" not in err
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith("purifying: 2/2 (100 %)")]
    assert len(err.splitlines()) == 1


def test_classifier_progress_in_a_log_is_plain_lines(capsys) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(16) % 2
    train_classifier(images, labels, num_classes=2, epochs=2, batch_size=8, depth=8, progress=True, num_threads=1,
                     hflip=False)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2", "training classifier"]
    assert lines[-1].startswith("training classifier: 4/4 (100 %)")


def _lines_of_one_update(monkeypatch: pytest.MonkeyPatch, total: int, label: str, seconds: float) -> list[str]:
    """The log lines of a bar (not a terminal) that does all `total` in one update after `seconds`, then closes."""
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    log = io.StringIO()
    bar = progress_bar(total, label, "img", log)
    clock.now += seconds
    bar.update(total)
    bar.close()
    return log.getvalue().splitlines()


def test_the_last_line_is_not_printed_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The minute's line could fall on the last update, and close() printed the same line again."""
    assert _lines_of_one_update(monkeypatch, 10, "purified", 61) == ["purified: 10/10 (100 %) in 61 s, 0.164 img/s"]


def test_a_fast_rate_is_written_as_a_number_not_in_exponent_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """An export of 256 local files ended "export: 256/256 (100 %) in 0 s, 4.13e+03 img/s"."""
    assert _lines_of_one_update(monkeypatch, 4130, "export", 1) == ["export: 4,130/4,130 (100 %) in 1 s, 4,130 img/s"]


@pytest.mark.parametrize("progress", ["no", "false", 0, None, 1.0])
def test_a_progress_that_is_not_a_bool_is_refused_naming_it(progress, capsys) -> None:
    # BUG (fixed here): progress="no" (a true string) showed a bar; 0 or None hid it by Python's truth, not as documented
    model = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8",
                                  num_res_blocks=1))
    p = Purifier(model, ZipSettings(steps=2, pool=2))
    with pytest.raises(TypeError, match=r"^progress must be True or False, got "):
        p([np.zeros((8, 8, 3), np.uint8)], progress=progress)
    assert capsys.readouterr().err == ""  # refused before any bar or work
    assert len(p([np.zeros((8, 8, 3), np.uint8)], progress=np.bool_(False))) == 1  # numpy's bool is a bool
