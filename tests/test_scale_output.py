"""Reading the output's ids (output_ids at the start of a run, deduplicate_output at its end) over many part files.

The part files' ids are read several at a time (each read waits on storage's latency: one at a time, an output of 400
part files on S3 took 400 x 4 round trips at both ends of every run); these tests pin what must not change with it:
the files are taken in name order (the first file by name keeps a duplicated id), and an unreadable file still stops
the run."""

from __future__ import annotations

import random
import threading
import time

import pytest

import pipeline.output as output
from pipeline.output import deduplicate_output, list_parts, output_ids
from pipeline.stages import DATA_DIR, REJECTS_DIR, _data_table, _rejects_table, write_parquet_atomic


def _write(out, folder: str, name: str, ids: list[str]) -> None:
    if folder == DATA_DIR:
        rows = [{"id": i, "png": b"\x89PNG", "width": 1, "height": 1, "meta": {}, "source": i, "source_sha256": "0"}
                for i in ids]
        table = _data_table(rows)
    else:
        table = _rejects_table([{"id": i, "source": i, "stage": "read", "error": "x"} for i in ids])
    write_parquet_atomic(table, f"{out}/{folder}/part-{name}.parquet", {})


def test_many_part_files_first_by_name_keeps_a_duplicated_id(tmp_path) -> None:
    rng = random.Random(1)
    out = tmp_path / "out"
    files = {}
    for k in range(40):
        files[(DATA_DIR, f"{k:03d}")] = [f"img-{rng.randrange(300)}" for _ in range(12)]
    for k in range(5):
        files[(REJECTS_DIR, f"{k:03d}")] = [f"img-{rng.randrange(400)}" for _ in range(5)]
    for (folder, name), ids in files.items():
        _write(out, folder, name, list(dict.fromkeys(ids)))  # one file never repeats an id
    purified, rejected = output_ids(str(out), {})
    ids = purified | rejected
    assert ids == {i for v in files.values() for i in v}
    # each id counted once, as the end-of-run check leaves it: in data/ if it is there at all
    in_data = {i for (f, _), v in files.items() if f == DATA_DIR for i in v}
    assert (purified, rejected) == (in_data, ids - in_data)
    # Expected: files in name order, data before rejects; an id stays in the first file that has it.
    seen: set[str] = set()
    expected: dict[tuple[str, str], list[str]] = {}
    for folder in (DATA_DIR, REJECTS_DIR):
        for (f, name), v in sorted(files.items()):
            if f == folder:
                expected[(f, name)] = [i for i in dict.fromkeys(v) if i not in seen]
                seen.update(v)
    rows = deduplicate_output(str(out), {})
    assert rows.purified + rows.rejected == len(seen)
    assert rows.duplicates_removed == sum(len(set(v)) for v in files.values()) - len(seen)
    fs = output._fs(str(out), {})[0]
    for folder in (DATA_DIR, REJECTS_DIR):
        left = {p.rsplit("part-", 1)[1][:3]: output._part_ids(fs, p) for p in list_parts(str(out), folder, {})}
        assert left == {name: v for (f, name), v in expected.items() if f == folder and v}
    assert deduplicate_output(str(out), {}).duplicates_removed == 0


def test_part_indexes_come_back_in_order_when_reads_finish_out_of_order(monkeypatch) -> None:
    paths = [f"p{k:02d}" for k in range(40)]
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_index(fs, path):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (len(paths) - int(path[1:])) / len(paths))  # earlier files take longer
        with lock:
            running[0] -= 1
        return [path], None

    monkeypatch.setattr(output, "_part_index", slow_index)
    assert [(p, ids) for p, ids, _ in output._part_indexes(None, paths)] == [(p, [p]) for p in paths]
    assert 1 < most[0] <= output.INDEX_READERS


def test_an_unreadable_part_file_still_stops_output_ids(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    for k in range(6):
        _write(out, DATA_DIR, f"{k:03d}", [f"a{k}"])
    (out / DATA_DIR / "part-003.parquet").write_bytes(b"not parquet")
    monkeypatch.setattr(output, "with_retries", lambda fn, what: fn())  # no backoff waits for a permanent error
    with pytest.raises(Exception, match="Parquet|parquet|magic"):
        output_ids(str(out), {})
