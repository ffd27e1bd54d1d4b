"""Tar sidecar values that must never fail a run: each reaches a part file (its value kept, as its JSON or escaped text
where no column type holds it), and the end-of-run check gives every part file the same columns. A .json sidecar
holding {} (a struct with no fields, which Parquet cannot write) failed every run, every retry and every rerun.

A fuzz test pushes random JSON sidecars and .cls labels (fixed seed) through the reader's key record
(`tar_key_record`), the writer (`write_stage`) and the end-of-run check (`unify_output_types`); the shapes it found
are named tests here too."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output import unify_output_types
from pipeline.sources.ids import text_name, text_value, unescaped
from pipeline.sources.webdataset_keys import MAX_JSON_KEY_LENGTH, tar_key_record
from pipeline.stages import batch_of, write_stage


def _record(key: str, parts: dict[str, bytes]) -> dict[str, Any]:
    """The record the reader makes of tar key `key` with members {ext: bytes} beside its image."""
    members = {ext: (f"{key}.{ext}", data) for ext, data in {"png": b"png", **parts}.items()}
    return tar_key_record("s.tar", f"s.tar/{key}", key, members, None)


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


def test_a_json_sidecar_that_is_not_utf8_is_kept_as_text_with_its_bytes_escaped(tmp_path) -> None:
    # a latin-1 .json is not JSON Python reads: its text was kept with each odd byte replaced by U+FFFD, lost
    rows = _written(tmp_path, '{"c": "caf\u00e9 \\\\"}'.encode("latin-1"), b"\xff[", b'{"c": "caf\xc3\xa9"}')
    assert rows["0"]["json"] == '{"c": "caf\\xe9 \\\\\\\\"}' and rows["1"]["json"] == "\\xff["
    assert _unescape(rows["0"]["json"]) == '{"c": "caf\u00e9 \\\\"}'.encode("latin-1")
    assert rows["2"]["c"] == "caf\u00e9" and rows["2"]["json"] is None  # UTF-8 JSON: its keys are columns


def _unescape(text: str) -> bytes:
    """The bytes a `text_name` stands for (\\xNN: that byte; \\\\: a backslash)."""
    return re.sub(rb"\\(x[0-9a-f]{2}|\\)", lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1][1:], 16)]),
                  text.encode())


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


# --- fuzz -------------------------------------------------------------------------------------------------------------

# keys that collide: a job column's name, one taken by a sidecar's column (label, json), the empty key, one that is not
# ASCII, a lone surrogate (JSON's "\ud800") and its escaped spelling, which text_name makes the same column name
_KEYS = ["k", "id", "image", "label", "json", "", "\u00e9", "\ud800", "\\ud800", "input_id", "a.b", "k"]  # k: twice as often
# beyond int64 and uint64, a double's extremes, 1e400 (read as inf), and NaN: not JSON, but Python's json writes it
_NUMBERS = ["0", "-1", "1.5", "-0.0", "1e308", "-1e308", "5e-324", "1e400", "9223372036854775807", "9223372036854775808",
            "-9223372036854775809", "18446744073709551616", "123456789012345678901234567890", "1E2", "2.5e-3", "NaN",
            "-Infinity"]
_STRINGS = ["", "x", "caf\u00e9", "\\", "\ud800", "\U0001f600", "{}", "null", "3"]


def _json_text(rng: random.Random, depth: int = 0) -> str:
    """A random JSON value as text: objects may repeat a key (the last one counts), lists mix types."""
    roll = rng.random()
    if depth < 4 and roll < 0.25:
        pairs = [f"{json.dumps(rng.choice(_KEYS))}: {_json_text(rng, depth + 1)}" for _ in range(rng.choice([0, 0, 1, 2, 3]))]
        return "{" + ", ".join(pairs) + "}"
    if depth < 4 and roll < 0.45:
        if rng.random() < 0.5:  # a list of objects, with keys that differ or none
            items = [_object_text(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        else:
            items = [_json_text(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return "[" + ", ".join(items) + "]"
    scalar = rng.choice(["null", "true", "false", "number", "number", "string"])
    if scalar == "number":
        return rng.choice(_NUMBERS)
    return json.dumps(rng.choice(_STRINGS)) if scalar == "string" else scalar


def _object_text(rng: random.Random, depth: int) -> str:
    pairs = [f"{json.dumps(rng.choice(_KEYS[:3]))}: {_json_text(rng, depth + 1)}" for _ in range(rng.randint(0, 2))]
    return "{" + ", ".join(pairs) + "}"


def _sidecar(rng: random.Random) -> bytes:
    pairs = [f"{json.dumps(rng.choice(_KEYS))}: {_json_text(rng, 1)}" for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.05:  # not UTF-8: kept as text
        return rng.choice(['{"c": "caf\u00e9"}'.encode("latin-1"), b"\xff\\"])
    return ("{" + ", ".join(pairs) + "}" if rng.random() < 0.9 else _json_text(rng)).encode()


# other sidecars, whose columns a .json key can share: a caption, a mask's bytes, one named like a job column (input_id)
_OTHERS = {"cls": [b"3", b"-7", b"cat", "caf\u00e9".encode("latin-1"), b"\xff", b"a\\b\xe9", b"", b"99999999999999999999"],
           "txt": [b"a cat", "caf\u00e9".encode("latin-1")], "seg.png": [b"\x89PNG\xff", b"ok"], "id": [b"7", b"\xff"],
           "label": [b"x"]}


def _without_nulls(value: Any) -> Any:
    """`value` with null object members left out: Arrow gives each object of a column every key of the others."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return "NaN" if isinstance(value, float) and value != value else value


def _kept(value: Any, written: Any) -> bool:
    """Whether `written` holds `value`: equal, or its text (JSON text for what is not a string or bytes; a string as
    text_name writes it; bytes beside text, which make the column text, as text_value writes them, read back by
    unescaped)."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "surrogateescape")
        return written == value or (written == text_value(text) and unescaped(written) == text)
    if isinstance(value, str):
        return written == value or written == text_name(value)
    if _without_nulls(written) == _without_nulls(value):
        return True
    return isinstance(written, str) and _without_nulls(json.loads(written)) == _without_nulls(value)


def test_fuzzed_sidecars_are_written_and_read_back_as_one_data_set(tmp_path) -> None:
    rng = random.Random(20261204)
    lost = []
    for trial in range(100):
        parts, n = [], 0
        for _ in range(rng.randint(1, 4)):  # part files, as batches of one or more shards
            keys = []
            for _ in range(rng.randint(1, 4)):
                sidecars = {"json": _sidecar(rng)} | {ext: rng.choice(data) for ext, data in _OTHERS.items()
                                                       if rng.random() < 0.2}
                keys.append((str(n), sidecars))
                n += 1
            parts.append(keys)
        made = [[_record(key, sidecars) for key, sidecars in keys] for keys in parts]
        # a .cls and a .label both give column label: that key is a reject, as documented; every other key is a row
        assert all("both give column 'label'" in r["error"] for p in made for r in p if r["kind"] != "image")
        records = [images for images in ([r for r in p if r["kind"] == "image"] for p in made) if images]
        if not records:
            continue
        try:
            rows = {row["id"]: row for row in _write_parts(tmp_path / str(trial), records)}
        except Exception as err:  # every failing case is named below, not only the first
            lost.append((trial, parts, repr(err)[:300]))
            continue
        for record in (r for p in records for r in p):
            row = rows[record["id"]]
            for column, value in record["meta"].items():
                if column not in row or not _kept(value, row[column]):
                    lost.append((trial, record["id"], column, value, row.get(column, "<no column>")))
    assert not lost, f"{len(lost)} lost: " + "\n".join(map(repr, lost[:30]))


def test_bytes_escaped_in_one_part_file_and_binary_in_another(tmp_path) -> None:
    # part file 1: a mask's bytes beside a .json key of that name holding a number, so text, the bytes escaped (\\xff);
    # part file 2: masks only, binary. The end of the run made the column binary, and file 1's escape stayed in it
    # (b"\\xff", four bytes): a column text in one part file and binary in another is text, its bytes escaped.
    parts = [[_record("0", {"seg.png": b"\xff"}), _record("1", {"json": b'{"seg_png": 3}'})],
             [_record("2", {"seg.png": b"\x89PNG"})]]
    rows = {row["id"]: row for row in _write_parts(tmp_path / "out", parts)}
    assert rows["s.tar/0"]["seg_png"] in (b"\xff", "\\xff")
    assert [rows[f"s.tar/{k}"]["seg_png"] for k in "012"] == ["\\xff", "3", "\\x89PNG"]
    assert unescaped(rows["s.tar/2"]["seg_png"]).encode("utf-8", "surrogateescape") == b"\x89PNG"
    schemas = {pq.read_schema(part).field("seg_png").type for part in (tmp_path / "out" / "data").iterdir()}
    assert schemas == {pa.string()}


def test_escaped_text_and_bytes_in_one_part_file_make_a_text_column(tmp_path) -> None:
    # a latin-1 .cls label (escaped text) and a .label sidecar's bytes in one part file: Arrow made the column binary,
    # the label's escape (b"caf\\xe9") left among the bytes as if it were the label's bytes
    records = [_record("0", {"cls": "caf\u00e9".encode("latin-1")}), _record("1", {"label": b"\xff\\"})]
    rows = {row["id"]: row for row in _write_parts(tmp_path / "out", [records])}
    assert rows["s.tar/0"]["label"] == "caf\\xe9" and rows["s.tar/1"]["label"] == "\\xff\\\\"
    assert unescaped(rows["s.tar/1"]["label"]).encode("utf-8", "surrogateescape") == b"\xff\\"


def test_a_caption_holding_a_backslash_escape_literally_reads_back_exactly(tmp_path) -> None:
    # 'caf\\xe9' typed so in a UTF-8 caption was written as it came, the same text as a latin-1 'café' caption's
    # escape: which one a row held could not be told, and unescaping gave the typed caption the byte e9
    typed, latin1, plain = b"caf\\xe9 \\\\ \\ud800", "caf\u00e9".encode("latin-1"), b"C:\\dir\\x.png"
    rows = _write_parts(tmp_path / "out", [[_record(str(k), {"txt": data, "json": b'{"t": "caf\\\\xe9"}'})
                                            for k, data in enumerate([typed, latin1, plain])]])
    captions = {row["id"]: row["txt"] for row in rows}
    assert captions == {"s.tar/0": "caf\\\\xe9 \\\\\\\\ \\\\ud800", "s.tar/1": "caf\\xe9", "s.tar/2": "C:\\dir\\x.png"}
    for k, data in enumerate([typed, latin1, plain]):
        assert unescaped(captions[f"s.tar/{k}"]).encode("utf-8", "surrogateescape") == data
    assert all(unescaped(row["t"]) == "caf\\xe9" and row["t"] == "caf\\\\xe9" for row in rows)  # a .json string too


def test_a_sidecar_that_is_not_a_caption_or_label_keeps_its_whitespace(tmp_path) -> None:
    # any UTF-8 sidecar had its surrounding whitespace stripped, so a .csv's last newline or an ASCII mask's leading
    # spaces were lost; a caption's or label's trailing newline is still not part of it
    csv, mask = b"x,y\n1,2\n", b"  \t ##  \n"
    (record,) = [_record("0", {"csv": csv, "mask": mask, "txt": b" a cat\n", "cls": b"3\n"})]
    assert record["meta"] == {"csv": "x,y\n1,2\n", "mask": "  \t ##  \n", "txt": "a cat", "label": 3}
    (row,) = _write_parts(tmp_path / "out", [[record]])
    assert unescaped(row["csv"]).encode() == csv and unescaped(row["mask"]).encode() == mask


def test_a_json_key_longer_than_the_limit_is_kept_in_the_json_column_not_named_in_the_footer(tmp_path) -> None:
    # a sidecar with a 1 MB key made a column of a 1 MB name, in the footer of every part file at the end of the run
    huge, over, fits = "k" * 1_000_000, "o" * (MAX_JSON_KEY_LENGTH + 1), "f" * MAX_JSON_KEY_LENGTH
    sidecar = {huge: 1, fits: 2, "n": {over: "x"}, "m": [{"a": 1}, {over: 2}], "l": [{"a": 1}], "s": "\\xe9"}
    rows = _written(tmp_path, json.dumps(sidecar).encode(), b'{"a": 3}')
    assert rows["0"][fits] == 2 and rows["0"]["l"] == [{"a": 1}] and rows["0"]["s"] == "\\\\xe9"
    assert json.loads(rows["0"]["json"]) == {huge: 1, "n": {over: "x"}, "m": [{"a": 1}, {over: 2}]}
    assert rows["1"]["a"] == 3 and rows["1"]["json"] is None
    for part in (tmp_path / "out" / "data").iterdir():
        schema = pq.read_schema(part)
        assert max(len(f.name) for f in schema) == MAX_JSON_KEY_LENGTH and len(schema.to_string()) < 10_000


def test_fields_with_a_lone_surrogate_kept_in_the_json_column_are_json_that_parses(tmp_path) -> None:
    # the JSON text of fields past a limit, holding a lone surrogate, had every backslash doubled (text_name): a '"'
    # in a value became '\\"' and the text no longer parsed as JSON
    long = "\ud800" + "o" * MAX_JSON_KEY_LENGTH
    sidecar = {long: 'say "hi" \\ caf\u00e9', "a": "\ud800"}
    rows = _written(tmp_path, json.dumps(sidecar).encode())
    assert json.loads(rows["0"]["json"]) == {long: 'say "hi" \\ caf\u00e9'} and rows["0"]["a"] == "\\ud800"
