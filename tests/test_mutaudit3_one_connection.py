"""A store of one connection (SFTP, FTP) is called from one thread at a time (`storage.concurrent_reads`), as the
mutation audit found untested for the planning's look at each TFRecord folder's features.json: with TFRecord files in
several folders it looked at them several at a time, so that on a real server each thread waits for ever."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from pipeline.sources.tfrecord_files import features_json_notes
from tests.test_one_connection_stores import OneConnection
from tests.test_tfrecord_inputs import labelled, shard


@pytest.fixture
def sftp_stand_in(monkeypatch):
    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "sftp", OneConnection)
    OneConnection.overlaps, OneConnection.calls = [], 0
    OneConnection.clear_instance_cache()
    yield OneConnection
    OneConnection.clear_instance_cache()


def test_the_features_json_of_tfrecord_files_in_several_folders_is_looked_for_one_at_a_time(
        tmp_path: Path, sftp_stand_in) -> None:
    paths = []
    for k in range(6):
        folder = tmp_path / f"split{k}"
        folder.mkdir()
        (folder / "s.tfrecord").write_bytes(shard(labelled(1, k)))
        paths.append(f"sftp://{folder / 's.tfrecord'}")
    assert features_json_notes(paths, {}) == []  # none there: nothing to say
    assert sftp_stand_in.calls >= 6 and sftp_stand_in.overlaps == [], sftp_stand_in.overlaps[:5]


def test_a_scheduled_run_reads_the_row_digests_of_an_sftp_output_one_part_file_at_a_time(tmp_path: Path,
                                                                                       sftp_stand_in) -> None:
    """An --incremental run over inputs whose listing changed compares their bytes with the source_sha256 of their
    rows, read from the output's part files: on an sftp:// output, 16 part files at a time through its one connection."""
    from pipeline.changes import same_bytes
    from tests.test_one_connection_stores import touched_inputs_with_rows

    _, out, names, unit, record = touched_inputs_with_rows(tmp_path, rows_per_part=4)  # five part files
    assert same_bytes([unit], set(names), set(), frozenset(), record, f"sftp://{out}", {})[1] == 20
    assert sftp_stand_in.overlaps == [], sftp_stand_in.overlaps[:5]
