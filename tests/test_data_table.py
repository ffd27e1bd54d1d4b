"""The writer's data table: pass-through values of any mix of types are written, never a failed write."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stages import batch_of, write_stage


def _image(i: int, meta: dict) -> dict:
    return {"kind": "image", "id": f"s.tar/{i:04d}", "source": f"s.tar:{i:04d}.png", "source_sha256": "0" * 64,
            "png": b"png", "width": 4, "height": 4, "meta": meta}


def _written(tmp_path: Path, metas: list[dict]) -> pa.Table:
    manifest = write_stage(batch_of([_image(i, m) for i, m in enumerate(metas)]), str(tmp_path), {})
    (name,) = json.loads(manifest["files"][0])
    return pq.read_table(tmp_path / name)


def test_a_pass_through_column_of_mixed_types_is_written_as_strings(tmp_path) -> None:
    # .cls sidecars "3" and "cat" (an int and a str), a .json key holding a number, a string, a dict and null
    table = _written(tmp_path, [{"label": 3, "score": 0.5}, {"label": "cat", "score": "high"},
                                {"label": None, "score": {"p": 1}}, {"score": None}])
    assert table.schema.field("label").type == pa.string() and table.schema.field("score").type == pa.string()
    assert table.column("label").to_pylist() == ["3", "cat", None, None]
    assert table.column("score").to_pylist() == ["0.5", "high", '{"p": 1}', None]
    assert table.column("id").to_pylist() == [f"s.tar/{i:04d}" for i in range(4)]
    assert table.schema.field("width").type == pa.int64()


def test_a_sidecar_that_is_not_utf8_among_labels_is_written_as_its_escaped_text(tmp_path) -> None:
    # .cls sidecars "3" (an int), b"\xff" and b"caf\xe9" (bytes, not UTF-8) and b"7\\" (ASCII bytes): no one type,
    # so text, each byte that is not UTF-8 escaped as in a name, never Python's repr "b'\\xff'"
    table = _written(tmp_path, [{"label": 3}, {"label": b"\xff"}, {"label": b"caf\xe9"}, {"label": b"7\\"}])
    assert table.column("label").to_pylist() == ["3", "\\xff", "caf\\xe9", "7\\"]


def test_pass_through_columns_that_agree_on_a_type_keep_it(tmp_path) -> None:
    table = _written(tmp_path, [{"label": 3, "caption": "a", "box": {"x": 1, "y": 2}},
                                {"label": 4, "caption": None, "box": {"x": 3, "y": 4}}])
    assert table.schema.field("label").type == pa.int64() and table.column("label").to_pylist() == [3, 4]
    assert table.schema.field("caption").type == pa.string() and table.column("caption").to_pylist() == ["a", None]
    assert pa.types.is_struct(table.schema.field("box").type)
    assert table.column("box").to_pylist() == [{"x": 1, "y": 2}, {"x": 3, "y": 4}]
    assert table.column_names == ["id", "image", "width", "height", "box", "caption", "label", "source",
                                  "source_sha256", "original_mode", "original_format", "original_frames", "psnr_vs_input_db",
                                  "downscale_factor"]
