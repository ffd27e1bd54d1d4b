"""A store that takes long to fail (an endpoint that does not answer: Azure's SDK retried a refused connection for 84 s
by itself before each of the job's 6 attempts, so a run with a mistyped endpoint sat silent for minutes) is said on
stderr before each further attempt: what failed, after how long, why, and which attempt comes next. Quick failures
(throttling) are retried without a word. The note hides a URI's password and a signed URL's query, as errors do."""

from __future__ import annotations

import itertools

import pytest

from pipeline import storage


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """time.monotonic on a fake clock that moves by what each attempt takes; sleeps recorded, never slept."""
    now = [0.0]
    monkeypatch.setattr(storage.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    return now


def _failing(clock: list[float], takes: list[float], then: object = "listed"):
    attempts = itertools.count()

    def call() -> object:
        n = next(attempts)
        if n < len(takes):
            clock[0] += takes[n]
            raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.9', 10000)")
        return then

    return call


def test_a_slow_failure_is_said_before_the_next_attempt(clock, capsys) -> None:
    uri = "ftp://alice:pa55word-1@files.example.com/in/"
    got = storage.with_retries(_failing(clock, [84.0, 84.0]), f"list {uri}")
    assert got == "listed"
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 2, notes
    assert notes[0].startswith("zip-purify: note: list ftp://alice:***@files.example.com/in/: failed after 84 s")
    assert "Connect call failed" in notes[0] and notes[0].endswith("trying again, attempt 2 of 6")
    assert notes[1].endswith("trying again, attempt 3 of 6")
    assert "pa55word" not in "\n".join(notes)


def test_quick_failures_are_retried_without_a_word(clock, capsys) -> None:
    assert storage.with_retries(_failing(clock, [0.5, 2.0, 9.9]), "read s3://b/x.png") == "listed"
    assert capsys.readouterr().err == ""


def test_the_last_attempt_raises_instead_of_a_note(clock, capsys) -> None:
    signed = "https://acct.blob.core.windows.net/c/x.png?sv=2024&sig=s3cr3tSignature"
    with pytest.raises(storage.RetriesExhausted, match="gave up after 3 attempts"):
        storage.with_retries(_failing(clock, [30.0, 30.0, 30.0]), f"read {signed}", attempts=3)
    err = capsys.readouterr().err
    assert err.count("zip-purify: note:") == 2 and "attempt 3 of 3" in err and "attempt 4" not in err
    assert "s3cr3tSignature" not in err and "sig=***" in err
