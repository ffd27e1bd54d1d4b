"""The dry run's words on the one budget of header requests (`read_budget`) name the files it left uncounted: a
budget spent on TFRecord files' headers says their records are counted when read, not that Arrow IPC files' null
image counts are unknown (there may be none)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import cli
from pipeline.sources import read_budget
from tests.test_ipc_header_budget import _ipc, _small
from tests.test_tfrecord_inputs import labelled, shard


@pytest.fixture(autouse=True)
def _memory_store_emptied() -> Iterator[None]:
    yield
    if MemoryFileSystem().exists("/review-budget"):
        MemoryFileSystem().rm("/review-budget", recursive=True)


def _dry_run(tmp_path, capsys) -> str:
    args = ["--input", "memory://review-budget", "--output", str(tmp_path / "out"), "--dry-run"]
    assert cli.main(args) == 0
    return " ".join(capsys.readouterr().out.split())


def test_a_budget_spent_on_tfrecord_headers_says_nothing_of_arrow_ipc_files(tmp_path, monkeypatch, capsys) -> None:
    MemoryFileSystem().pipe({"/review-budget/a.tfrecord": shard(labelled(3)),
                             "/review-budget/b.tfrecord": shard(labelled(2))})
    assert "2 TFRecord files (5 records)," in _dry_run(tmp_path, capsys)
    monkeypatch.setattr(read_budget, "MAX_READS", 1)  # one request: the second file is left uncounted
    said = _dry_run(tmp_path, capsys)
    assert "2 TFRecord files (records counted when read)," in said
    assert "Arrow IPC" not in said  # before: "the rows without an image of some Arrow IPC files are unknown"


def test_arrow_ipc_files_counted_within_the_budget_are_not_said_unknown(tmp_path, monkeypatch, capsys) -> None:
    # the Arrow IPC file's headers take one request, then the TFRecord file finds the budget spent
    MemoryFileSystem().pipe({"/review-budget/a.arrow": _ipc(_small(20), "file", 1),
                             "/review-budget/b.tfrecord": shard(labelled(2))})
    monkeypatch.setattr(read_budget, "MAX_READS", 1)
    said = _dry_run(tmp_path, capsys)
    assert "1 TFRecord file (records counted when read)," in said
    assert "of some Arrow IPC files are unknown" not in said
    assert "1 Arrow IPC file has no image" in said or "Arrow IPC file have no image" in said
