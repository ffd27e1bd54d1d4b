"""A Parquet data set whose images are pixel arrays, as `ray.data.read_images(...).write_parquet(...)` writes them (Ray's
tensor types), or as pyarrow's fixed_shape_tensor or nested lists hold them: each uint8 (H, W), (H, W, 1), (H, W, 3)
or (H, W, 4) cell is purified like an image file. Such a file was one '#unreadable' reject, "no image column
(struct<bytes, path> or binary)", none of its images purified (pipeline.sources.pixel_arrays)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray, ArrowVariableShapedTensorArray

from pipeline.export import export_images
from pipeline.job import run_job
from pipeline.sources import discover
from pipeline.sources.reading import read_unit
from tests.jobutil import read_output, refresh_after_touching, small_job_config

ACCEPTED = ("only pixel arrays of shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4), of uint8 or uint16 "
            "values (or other integers within 0..255), are read")


def _pixels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write(folder, name: str, columns: dict) -> None:
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table(columns), folder / name)


def _by_id(frame) -> dict:
    return {row["id"]: row for row in frame.to_dict("records")}


def _mode_and_size(cell: dict) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(cell["bytes"])) as im:
        return im.mode, im.width, im.height


def test_ray_and_arrow_pixel_arrays_are_purified_a_cell_they_cannot_take_is_its_rows_reject_and_a_touched_file_is_no_change(
        tmp_path, model) -> None:
    # One run over both kinds of file (a run each cost a job run more; each file's rows are its own)
    folder = tmp_path / "in"
    rgb = _pixels((2, 32, 32, 3), 0)
    _write(folder, "fixed.parquet", {"image": ArrowTensorArray.from_numpy(rgb), "label": [1, 2]})
    sizes = [(24, 40, 3), (16, 16, 4), (20, 12, 1)]  # RGB, RGBA and grey of one variable-shaped column
    _write(folder, "var.parquet", {"image": ArrowVariableShapedTensorArray.from_numpy(
        [_pixels(s, i) for i, s in enumerate(sizes)])})
    grey = _pixels((2, 8, 10), 5)
    _write(folder, "arrow.parquet", {"img": pa.FixedShapeTensorArray.from_numpy_ndarray(grey)})
    _write(folder, "lists.parquet", {"image": pa.array([_pixels((6, 4, 3), 6).tolist()],
                                                       pa.list_(pa.list_(pa.list_(pa.uint8()))))})
    readable = sorted(folder.iterdir())
    # cells of another shape or dtype, or over the size limit: each its row's reject
    cells = [_pixels((32, 32, 3), 0), _pixels((3, 32, 32), 1), _pixels((32, 32, 5), 2)]
    _write(folder, "shapes.parquet", {"image": ArrowVariableShapedTensorArray.from_numpy(cells)})
    _write(folder, "floats.parquet", {"image": ArrowTensorArray.from_numpy(np.zeros((1, 8, 8, 3), np.float32))})
    _write(folder, "vector.parquet", {"image": ArrowTensorArray.from_numpy(np.zeros((1, 12), np.uint8))})
    _write(folder, "ints.parquet", {"image": [[[0, 256], [-1, 0]]]})  # Python's ints (list<list<int64>>) past 0..255
    # 600 x 600 x 3 zeros: a PNG of a few KB, but 1.08 MB of pixels, over --max-image-mb 1
    _write(folder, "large.parquet", {"image": ArrowVariableShapedTensorArray.from_numpy(
        [np.zeros((600, 600, 3), np.uint8), _pixels((16, 16, 3), 3)])})
    summary = run_job(small_job_config(tmp_path, model, max_image_mb=1))
    assert (summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (8 + 2, 6)
    data, rejects = read_output(str(tmp_path / "out"))
    rows = _by_id(data)
    expected = {"fixed.parquet#0": (32, 32, "RGB"), "fixed.parquet#1": (32, 32, "RGB"),
                "var.parquet#0": (24, 40, "RGB"), "var.parquet#1": (16, 16, "RGBA"), "var.parquet#2": (20, 12, "L"),
                "arrow.parquet#0": (8, 10, "L"), "arrow.parquet#1": (8, 10, "L"), "lists.parquet#0": (6, 4, "RGB")}
    assert sorted(rows) == sorted([*expected, "large.parquet#1", "shapes.parquet#0"])
    for id_, (h, w, mode) in expected.items():
        row = rows[id_]
        assert (row["height"], row["width"], row["original_mode"], row["original_format"]) == (h, w, mode, "tensor")
        assert _mode_and_size(row["image"]) == ("RGB", w, h)  # purified as any image: 8-bit RGB at its own size
    assert (rows["fixed.parquet#0"]["label"], rows["fixed.parquet#1"]["label"]) == (1, 2)
    # source_sha256: of the shape as text and a newline, then the pixels
    assert rows["fixed.parquet#1"]["source_sha256"] == hashlib.sha256(b"32x32x3\n" + rgb[1].tobytes()).hexdigest()
    assert rows["arrow.parquet#0"]["source_sha256"] == hashlib.sha256(b"8x10x1\n" + grey[0].tobytes()).hexdigest()

    errors = {row["id"]: row["error"] for row in rejects.to_dict("records")}
    assert set(errors) == {"shapes.parquet#1", "shapes.parquet#2", "floats.parquet#0", "vector.parquet#0",
                           "ints.parquet#0", "large.parquet#0"}
    assert errors["shapes.parquet#1"] == (
        "row 1: image column 'image' holds a uint8 array of shape (3, 32, 32) (channels first: transpose it to "
        f"(H, W, C)), where {ACCEPTED}")
    assert errors["shapes.parquet#2"] == (
        f"row 2: image column 'image' holds a uint8 array of shape (32, 32, 5), where {ACCEPTED}")
    assert errors["floats.parquet#0"].startswith("row 0: image column 'image' holds a float32 array of shape (8, 8, 3)")
    assert errors["vector.parquet#0"] == f"row 0: image column 'image' holds a uint8 array of shape (12,), where {ACCEPTED}"
    assert errors["ints.parquet#0"] == (
        "row 0: image column 'image' holds an int64 array of shape (2, 2) with values -1..256, outside 0..255 (write "
        f"8-bit pixels as 0..255, 16-bit ones as uint16), where {ACCEPTED}")
    assert "image column 'image'" in errors["large.parquet#0"] and "1080000" in errors["large.parquet#0"].replace(",", "")

    export_images(tmp_path / "out", tmp_path / "files", image_format="input", manifest="none")
    assert (tmp_path / "files" / "fixed.parquet" / "0.png").is_file()  # a tensor's format: written as PNG

    again = refresh_after_touching(tmp_path, model, readable)  # the same pixels: no change
    changed = again["changed_inputs"]
    assert again["this_run"]["purified"] == 0
    assert (changed["containers"], changed["refreshed_inputs"], changed["containers_same_members"]) == (0, 0, 4)


def test_image_column_names_a_pixel_array_column_that_is_not_named_like_one(tmp_path, model) -> None:
    folder = tmp_path / "in"
    pixels = _pixels((2, 32, 32, 3), 0)
    _write(folder, "t.parquet", {"frame": ArrowTensorArray.from_numpy(pixels), "mask": ArrowTensorArray.from_numpy(
        np.zeros((2, 32, 32), np.uint8)), "label": [0, 1]})
    # found only by name: a tensor column of another name (here a mask) is not taken for the images
    (unreadable, _count) = list(read_unit(discover(str(folder))[0]))
    assert unreadable["id"] == "t.parquet#unreadable" and "no image column" in unreadable["error"]
    summary = run_job(small_job_config(tmp_path, model, image_column="frame"))
    assert summary["this_run"]["purified"] == 2
    data, _ = read_output(str(tmp_path / "out"))
    rows = _by_id(data)
    assert sorted(rows) == ["t.parquet#0", "t.parquet#1"]
    assert [_mode_and_size(rows[f"t.parquet#{i}"]["image"]) for i in range(2)] == [("RGB", 32, 32)] * 2
    assert np.array_equal(np.asarray(rows["t.parquet#1"]["mask"]).tolist(), np.zeros((32, 32), np.uint8))  # passed through


# Read where Ray's types are not registered (a process that has not imported ray.data): the column's type is then its
# storage, a large_list<uint8>, named a tensor in its field's metadata alone.
UNREGISTERED = """
import io, json, sys
import numpy as np
from PIL import Image
from pipeline.sources import discover
from pipeline.sources.reading import read_unit
assert "ray.data" not in sys.modules
found = [r for option in (None, "image") for r in read_unit(discover(sys.argv[1])[0], image_column=option)
         if r["kind"] != "count"]
print(json.dumps([[r.get("decode_note"), r.get("original_format"), r["source_sha256"],
                   np.array(Image.open(io.BytesIO(r["data"]))).tolist() if r.get("original_format") else None]
                  for r in found]))
"""


def test_a_file_with_image_bytes_reads_them_and_names_the_pixel_array_column_beside(tmp_path) -> None:
    # A binary column is the image column as before; a row whose bytes are no image names the pixel-array column as
    # the one --image-column can pick, which then reads the pixels. Alike where Ray's types are not registered.
    pixels = _pixels((1, 4, 4, 3), 0)
    _write(tmp_path, "t.parquet", {"sha": [b"\x01" * 32], "image": ArrowTensorArray.from_numpy(pixels)})
    (record, _count) = list(read_unit(discover(str(tmp_path))[0]))
    assert record["data"] == b"\x01" * 32
    assert "--image-column picks another: 'image'" in record["decode_note"]
    (chosen, _count) = list(read_unit(discover(str(tmp_path))[0], image_column="image"))
    assert chosen["original_format"] == "tensor"
    assert np.array_equal(np.array(Image.open(io.BytesIO(chosen["data"]))), pixels[0])

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", UNREGISTERED, str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    (bytes_row, array_row) = json.loads(done.stdout)
    assert bytes_row[:2] == [record["decode_note"], None]
    assert array_row == [None, "tensor", chosen["source_sha256"], pixels[0].tolist()]


def _png(pixels: np.ndarray) -> bytes:
    """The PNG file of `pixels` as a camera or a library writes it: 8-bit as Pillow writes it, and 16-bit grey too;
    16-bit grey with alpha, RGB and RGBA, which Pillow cannot write, by hand (PNG's own layout: big-endian values)."""
    if pixels.dtype == np.uint8 or pixels.ndim == 2:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()
    h, w, channels = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour = {2: 4, 3: 2, 4: 6}[channels]  # grey with alpha, RGB, RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_integer_16_bit_and_grey_alpha_arrays_purify_as_the_png_files_of_their_pixels(tmp_path, model) -> None:
    # What users write: Python lists (int64), numpy ints of another width, 16-bit camera frames, grey with alpha. Each
    # purifies as the PNG file of its pixels does: the same file names in a second input, each a binary column holding
    # that PNG, give the same ids, so the same noise, and must give the same output.
    rgb = _pixels((8, 8, 3), 1)
    grey = _pixels((8, 8), 2)
    wide = np.random.default_rng(3).integers(0, 65536, (4, 8, 8, 4), dtype=np.uint16)
    wide[0, 0, :3, 0] = (0, 65535, 129)  # grey: the range's ends, and 129, scaled to 1 where its high byte is 0
    grey_alpha = _pixels((8, 8, 2), 4)
    cells = {  # file -> (its image column, the pixels of its PNG, the original_mode it reports)
        "ints.parquet": (pa.array([rgb.tolist()]), rgb, "RGB"),  # list<list<list<int64>>>
        "int16.parquet": (pa.FixedShapeTensorArray.from_numpy_ndarray(grey[None].astype(np.int16)), grey, "L"),
        "grey16.parquet": (ArrowTensorArray.from_numpy(wide[:1, :, :, 0]), wide[0, :, :, 0], "I;16"),
        "rgb16.parquet": (pa.array([wide[1, :, :, :3].tolist()], pa.list_(pa.list_(pa.list_(pa.uint16())))),
                          wide[1, :, :, :3], "RGB;16"),
        "rgba16.parquet": (ArrowTensorArray.from_numpy(wide[2:3]), wide[2], "RGBA;16"),
        "la.parquet": (ArrowTensorArray.from_numpy(grey_alpha[None]), grey_alpha, "LA"),
        "la16.parquet": (ArrowVariableShapedTensorArray.from_numpy([wide[3, :, :, :2]]), wide[3, :, :, :2], "LA;16"),
    }
    for name, (column, pixels, _mode) in cells.items():
        _write(tmp_path / "in", name, {"image": column})
        _write(tmp_path / "files", name, {"image": pa.array([_png(pixels)], pa.binary())})
    # batch_size 1: each canvas purified alone, so that no float differs with the order the files' canvases arrive in
    summary = run_job(small_job_config(tmp_path, model, batch_size=1))
    assert (summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (7, 0)
    files = run_job(small_job_config(tmp_path, model, batch_size=1, input=str(tmp_path / "files"),
                                     output=str(tmp_path / "out2")))
    assert (files["this_run"]["purified"], files["this_run"]["rejected"]) == (7, 0)
    arrays, as_files = _by_id(read_output(str(tmp_path / "out"))[0]), _by_id(read_output(str(tmp_path / "out2"))[0])
    for name, (_column, _image, mode) in cells.items():
        row, file_row = arrays[f"{name}#0"], as_files[f"{name}#0"]
        assert (row["original_mode"], row["original_format"]) == (mode, "tensor"), name
        assert (row["width"], row["height"]) == (8, 8)
        assert row["image"]["bytes"] == file_row["image"]["bytes"], name  # purified alike, to the byte
        assert row["psnr_vs_input_db"] == file_row["psnr_vs_input_db"], name
    # source_sha256: int64 pixels within 0..255 are the 8-bit image of those values; 16-bit ones say their dtype, and
    # are not the source the uint8 cell of their 8-bit values is
    assert arrays["ints.parquet#0"]["source_sha256"] == hashlib.sha256(b"8x8x3\n" + rgb.tobytes()).hexdigest()
    assert arrays["grey16.parquet#0"]["source_sha256"] == hashlib.sha256(
        b"8x8x1 uint16\n" + wide[0, :, :, 0].astype("<u2").tobytes()).hexdigest()
    assert arrays["rgb16.parquet#0"]["source_sha256"] != hashlib.sha256(
        b"8x8x3\n" + (wide[1, :, :, :3] >> 8).astype(np.uint8).tobytes()).hexdigest()
