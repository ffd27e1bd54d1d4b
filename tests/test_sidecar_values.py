"""Tar sidecar values that must never fail a run: each reaches a part file (its value kept, as its JSON or escaped text
where no column type holds it), and the end-of-run check gives every part file the same columns. A .json sidecar
holding {} (a struct with no fields, which Parquet cannot write) failed every run, every retry and every rerun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output import unify_output_types
from pipeline.sources.webdataset_keys import _tar_key_record
from pipeline.stages import batch_of, write_stage


def _record(key: str, parts: dict[str, bytes]) -> dict[str, Any]:
    """The record the reader makes of tar key `key` with members {ext: bytes} beside its image."""
    members = {ext: (f"{key}.{ext}", data) for ext, data in {"png": b"png", **parts}.items()}
    return _tar_key_record("s.tar", f"s.tar/{key}", key, members, None)


def _write_parts(out: Path, parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each list of image records written as one part file (the input bytes as the PNG), the run's end-of-run check
    done, and the data folder read back as one data set."""
    for records in parts:
        images = [{**{k: v for k, v in r.items() if k != "data"}, "png": r["data"], "width": 8, "height": 8}
                  for r in records]
        write_stage(batch_of(images), str(out), {})
    unify_output_types(str(out), {})
    return pq.read_table(out / "data").to_pylist()


def _written(tmp_path: Path, *sidecars: bytes) -> dict[str, dict[str, Any]]:
    """Rows by key of one part file of keys 0, 1, ... with these .json sidecars."""
    records = [_record(str(i), {"json": data}) for i, data in enumerate(sidecars)]
    assert all(r["kind"] == "image" for r in records), records
    return {row["id"].split("/")[-1]: row for row in _write_parts(tmp_path / "out", [records])}


def test_a_json_sidecar_holding_an_empty_object_is_kept_as_text(tmp_path) -> None:
    # {"k": {}} made a struct column with no fields: ArrowNotImplementedError at each write, the run failed
    rows = _written(tmp_path, b'{"k": {}, "n": 1}', b'{"k": [{}]}', b'{"k": {"a": {}}}', b'{"k": [[], {}]}', b"{}")
    assert json.loads(rows["0"]["json"]) == {"k": {}, "n": 1} and json.loads(rows["1"]["json"]) == {"k": [{}]}
    assert json.loads(rows["2"]["json"]) == {"k": {"a": {}}} and json.loads(rows["3"]["json"]) == {"k": [[], {}]}
    assert rows["4"]["json"] is None


def test_an_empty_object_beside_a_full_one_is_not_read_back_as_nulls(tmp_path) -> None:
    # Arrow gave {} the other rows' fields: it was read back as {"a": None}, a value the sidecar did not hold
    rows = _written(tmp_path, b'{"k": {}}', b'{"k": {"a": 1}}', b'{"l": [{}, {"a": 1}]}')
    assert json.loads(rows["0"]["json"]) == {"k": {}} and rows["1"]["k"] == {"a": 1}
    assert json.loads(rows["2"]["json"]) == {"l": [{}, {"a": 1}]}


def test_an_empty_object_given_to_the_writer_is_written_as_its_json_text(tmp_path) -> None:
    # the writer itself never fails on one, whatever made it
    rows = _write_parts(tmp_path / "out", [[{"kind": "image", "id": "a", "source": "a", "source_sha256": "0" * 64,
                                             "data": b"png", "meta": {"k": {}, "l": [{"a": {}}], "m": {"a": 1}}}]])
    assert rows[0]["k"] == "{}" and rows[0]["l"] == '[{"a": {}}]' and rows[0]["m"] == {"a": 1}


def test_a_key_that_is_an_object_in_one_part_file_and_empty_or_scalar_in_others_is_kept(tmp_path) -> None:
    parts = [[_record("0", {"json": b'{"k": {"a": 1}}'})], [_record("1", {"json": b'{"k": {}}'})],
             [_record("2", {"json": b'{"k": 3}'})], [_record("3", {"json": b'{"k": [{"b": "x"}]}'})]]
    rows = {row["id"]: row for row in _write_parts(tmp_path / "out", parts)}
    assert json.loads(rows["s.tar/0"]["k"]) == {"a": 1} and json.loads(rows["s.tar/1"]["json"]) == {"k": {}}
    assert rows["s.tar/2"]["k"] == "3" and json.loads(rows["s.tar/3"]["k"]) == [{"b": "x"}]


def test_a_key_null_wherever_it_is_given_is_a_column_of_every_part_file(tmp_path) -> None:
    # the end-of-run check gave no type to a column all null where held, so files lacking it kept lacking it, and a
    # reader of the folder (it takes the first file's columns) dropped the column, or kept it, by the files' order
    parts = [[_record("0", {"json": b'{"a": 1}'})], [_record("1", {"json": b'{"k": null, "a": 2}'})]]
    rows = _write_parts(tmp_path / "out", parts)
    assert all(pq.read_schema(part).field("k").type == pa.null() for part in (tmp_path / "out" / "data").iterdir())
    assert sorted((row["id"], row["k"], row["a"]) for row in rows) == [("s.tar/0", None, 1), ("s.tar/1", None, 2)]


def test_cls_labels_that_are_not_utf8_leave_the_label_column_text_with_their_bytes_escaped(tmp_path) -> None:
    # "cat" and a latin-1 "café" in one shard: the café label was bytes, and the part file's label column binary
    records = [_record("0", {"cls": b"cat"}), _record("1", {"cls": "caf\u00e9".encode("latin-1")}),
               _record("2", {"cls": b"\\\xff"}), _record("3", {"cls": b"3"})]
    assert records[1]["meta"] == {"label": "caf\\xe9"} and records[2]["meta"] == {"label": "\\\\\\xff"}
    out = tmp_path / "out"
    write_stage(batch_of([{**r, "png": r["data"], "width": 8, "height": 8} for r in records[:3]]), str(out), {})
    (part,) = (out / "data").iterdir()
    assert pq.read_schema(part).field("label").type == pa.string()
    labels = {row["id"]: row["label"] for row in pq.read_table(part).to_pylist()}
    assert labels == {"s.tar/0": "cat", "s.tar/1": "caf\\xe9", "s.tar/2": "\\\\\\xff"}
    assert records[3]["meta"] == {"label": 3}  # a number is still a number
