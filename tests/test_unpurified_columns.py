"""Images in columns the job does not purify (a Parquet data set's thumbnail, a tar shard's mask) are copied as they
came: the run counts them per column and the command line warns, since a trigger there reaches the output too."""

from __future__ import annotations

import io
import json
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config import JobConfig
from pipeline.decode import image_format_of
from pipeline.job import run_job
from pipeline.stages import unpurified_images
from tests.jobutil import image_bytes, read_output, tar_bytes


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, name", [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("WEBP", "WebP"),
                                       ("TIFF", "TIFF"), ("BMP", "BMP")])
def test_image_formats_are_told_by_their_first_bytes(fmt, name) -> None:
    data = _encoded(fmt)
    assert image_format_of(data) == name
    assert image_format_of(bytearray(data)) == name
    assert image_format_of({"bytes": data}) is None  # a struct is unwrapped by the caller


@pytest.mark.parametrize("value", [b"", b"BM", b"BMW 320i, not a bitmap header", b"\x00\x01\x02", b"RIFF\0\0\0\0WAVE",
                                   "\x89PNG\r\n\x1a\n as text", 7, None, [b"\x89PNG\r\n\x1a\n"]])
def test_other_values_are_not_images(value) -> None:
    assert image_format_of(value) is None


def test_rows_are_counted_per_column_bytes_and_image_structs_alike() -> None:
    png = _encoded("PNG")
    records = [{"meta": {"thumb": png, "label": 3, "mask": {"bytes": png, "path": "m.png"}, "note": "text"}},
               {"meta": {"thumb": b"not an image", "label": 4, "mask": {"bytes": None, "path": None}}},
               {"meta": {"thumb": _encoded("JPEG")}}]
    assert unpurified_images(records) == {"thumb": 2, "mask": 1}
    assert unpurified_images([{"meta": {"label": 1}}]) == {}


def _args(tmp_path, model: str) -> list[str]:
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model, "--steps", "1",
            "--canvas-size", "32", "--no-progress"]


def test_a_parquet_thumbnail_column_is_counted_and_warned_about(tmp_path, model, capsys) -> None:
    (tmp_path / "in").mkdir()
    table = pa.table({"image": [{"bytes": image_bytes(8, 8, i), "path": f"{i}.png"} for i in range(3)],
                      "thumb": [image_bytes(4, 4, 10 + i) for i in range(2)] + [b"\x00raw"],
                      "label": [1, 2, 3]})
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    assert main(_args(tmp_path, model)) == 0
    err = capsys.readouterr().err
    assert "warning: column(s) thumb (2 rows) hold images that were copied as they came, NOT purified" in err
    data, _ = read_output(str(tmp_path / "out"))
    assert sorted(data["thumb"].map(len)) == sorted(len(v) for v in table.column("thumb").to_pylist())  # kept as given
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["this_run"]["unpurified_image_columns"] == {"thumb": 2}


def test_a_tar_mask_sidecar_is_counted_and_plain_sidecars_are_not(tmp_path, model) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(tar_bytes({
        "0001.png": image_bytes(8, 8, 1), "0001.seg.png": image_bytes(8, 8, 2), "0001.cls": b"3",
        "0002.png": image_bytes(8, 8, 3), "0002.cls": b"4", "0002.npy": b"\x93NUMPY" + struct.pack("<H", 0),
    }))
    summary = run_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1,
                                progress=False, canvas_size=32))
    assert summary["this_run"]["purified"] == 2
    assert summary["this_run"]["unpurified_image_columns"] == {"seg_png": 1}


def test_a_data_set_without_other_images_has_none(tmp_path, model, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    assert main(_args(tmp_path, model)) == 0
    assert "NOT purified" not in capsys.readouterr().err
