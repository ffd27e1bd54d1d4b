"""Mutation-audit gaps in pipeline/storage.py: error classification edges, the conditional create of the output's
lease, retry counts, and the clean-up of temporary files."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error

from pipeline import storage


@pytest.fixture
def no_waiting(monkeypatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(storage, "backoff", lambda attempt, *a, **k: waits.append(attempt) or 0.0)
    return waits


def _s3_error(code: str, status: int | None, message: str = "refused", op: str = "PutObject") -> OSError:
    """An S3 error answer as s3fs raises it: translated from botocore's ClientError, which is kept as its cause."""
    answer: dict = {"Error": {"Code": code, "Message": message}}
    if status is not None:
        answer["ResponseMetadata"] = {"HTTPStatusCode": status}
    return translate_boto_error(ClientError(answer, op))


class _Store:
    """An object store (no rename) whose conditional PUTs get `answers` in turn (an error to raise, or None to land)
    while `existing` decides whether a later one is refused with 412."""

    protocol = ("s3", "s3a")

    def __init__(self, *answers: BaseException | None) -> None:
        self.answers, self.files, self.puts = list(answers), {}, []

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
        self.puts.append(mode)
        if mode == "create" and self.answers:
            answer = self.answers.pop(0)
            if answer is not None:
                raise answer
        self.files[path] = data


def test_a_conditional_put_that_conflicts_with_another_write_is_retried_and_names_the_holder(no_waiting) -> None:
    # AWS S3: two conditional PUTs of one key at once, the slower may get 409 ConditionalRequestConflict ("retry");
    # its retry finds the other run's lease there (412)
    store = _Store(_s3_error("ConditionalRequestConflict", 409),
                   _s3_error("PreconditionFailed", 412))
    assert storage.create_if_absent(store, "out/_lease.json", b"mine", "write") is False
    assert store.puts == ["create", "create"] and store.files == {}


def test_a_conditional_put_that_conflicts_with_a_delete_is_retried_and_creates(no_waiting) -> None:
    # the 409 also answers a conditional PUT racing a delete of the key (a run releasing its lease): the retry lands
    store = _Store(_s3_error("ConditionalRequestConflict", 409), None)
    assert storage.create_if_absent(store, "out/_lease.json", b"mine", "write") is None
    assert store.files == {"out/_lease.json": b"mine"}
