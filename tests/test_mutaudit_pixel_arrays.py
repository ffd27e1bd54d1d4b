"""Parquet pixel-array cells (`pipeline.sources.pixel_arrays`) as the reading hands them on: the PNG each accepted cell
becomes, its source_sha256 and original_mode, and each cell that is no image its own reject, saying why, the rows
beside it read. Read here without a run, so each case is quick. Each test kills mutants of that module that the
pixel-array tests let live (a mutation audit)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray, ArrowVariableShapedTensorArray

from pipeline.sources import discover, read_unit


def _read(tmp_path, name: str, column: pa.Array, **kw) -> list[dict]:
    folder = tmp_path / name.split(".")[0]
    folder.mkdir()
    pq.write_table(pa.table({"image": column}), folder / name)
    return [r for r in read_unit(discover(str(folder))[0], **kw) if r["kind"] in ("image", "reject")]


def _png(record: dict) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(record["data"])) as im:
        return im.mode, np.asarray(im)


def test_accepted_cells_become_the_png_of_their_pixels_with_their_source_hash_and_mode(tmp_path) -> None:
    rng = np.random.default_rng(0)
    grey1 = rng.integers(0, 256, (1, 4, 6, 1), dtype=np.uint8)
    ends = np.array([[0, 255, 7], [255, 0, 128]], np.int64)  # Python ints: the ends of 0..255 are pixels
    wide = rng.integers(0, 65536, (1, 4, 6, 3), dtype=np.uint16)
    grey16 = rng.integers(0, 65536, (1, 4, 3), dtype=np.uint16)  # 3 wide: no RGB;16 for all that
    (single,) = _read(tmp_path, "one.parquet", pa.FixedShapeTensorArray.from_numpy_ndarray(grey1))
    mode, pixels = _png(single)
    assert mode == "L" and np.array_equal(pixels, grey1[0, :, :, 0])  # (H, W, 1): grey
    assert single["source_sha256"] == hashlib.sha256(b"4x6x1\n" + grey1[0].tobytes()).hexdigest()
    (ints,) = _read(tmp_path, "ints.parquet", pa.array([ends.tolist()]))
    mode, pixels = _png(ints)
    assert mode == "L" and pixels.tolist() == ends.tolist()
    (rgb16,) = _read(tmp_path, "rgb16.parquet", ArrowTensorArray.from_numpy(wide))
    mode, pixels = _png(rgb16)
    assert mode == "RGB" and np.array_equal(pixels, (wide[0] >> 8).astype(np.uint8))  # the high byte of each value
    assert rgb16["original_mode"] == "RGB;16"
    assert rgb16["source_sha256"] == hashlib.sha256(b"4x6x3 uint16\n" + wide[0].astype("<u2").tobytes()).hexdigest()
    (g16,) = _read(tmp_path, "grey16.parquet", ArrowTensorArray.from_numpy(grey16))
    mode, pixels = _png(g16)
    assert mode == "I;16" and np.array_equal(pixels, grey16[0])  # left 16-bit, for the decoder to scale
    assert "original_mode" not in g16
    # a numpy array not in C order: Arrow's tensor holds it as it lies, with a permutation that the pixels follow
    x = rng.integers(0, 256, (1, 4, 6, 3), dtype=np.uint8)
    (permuted,) = _read(tmp_path, "permuted.parquet", pa.FixedShapeTensorArray.from_numpy_ndarray(
        np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)))
    mode, pixels = _png(permuted)
    assert mode == "RGB" and np.array_equal(pixels, x[0])  # pyarrow's to_numpy of the cell failed: every row a reject
    # as the format defines it: the values in a physical (W, C, H) order, logical dimension i its dimension
    # permutation[i] (a permutation that is not its own inverse, so that one applied backwards is seen)
    cycled = pa.fixed_shape_tensor(pa.uint8(), [6, 3, 4], permutation=[2, 0, 1])
    physical = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    (spec,) = _read(tmp_path, "cycled.parquet", pa.ExtensionArray.from_storage(
        cycled, pa.FixedSizeListArray.from_arrays(pa.array(physical.ravel()), physical[0].size)))
    assert np.array_equal(_png(spec)[1], x[0])
    # nested fixed-size lists (as a list<uint8>[6] of 4 rows) are nested lists too
    (fixed,) = _read(tmp_path, "fixed.parquet", pa.array([ends.tolist()], pa.list_(pa.list_(pa.uint8(), 3), 2)))
    assert _png(fixed)[1].tolist() == ends.tolist()


def test_a_cell_that_is_no_image_is_its_own_reject_saying_why_and_the_rows_beside_it_are_read(tmp_path) -> None:
    good = np.full((4, 6, 3), 9, np.uint8)
    cases = {  # name -> (the column: a good cell, the bad one, a good one), what the bad one's reject says
        "empty.parquet": (ArrowVariableShapedTensorArray.from_numpy([good, np.zeros((0, 6, 3), np.uint8), good]),
                          "a uint8 array of shape (0, 6, 3), where only"),
        "negative.parquet": (pa.array([good[:, :, 0].tolist(), [[-1, 3], [4, 5]], good[:, :, 0].tolist()]),
                             "an int64 array of shape (2, 2) with values -1..5, outside 0..255"),
        "ragged.parquet": (pa.array([good[:, :, 0].tolist(), [[1, 2], [3]], good[:, :, 0].tolist()]),
                           "nested lists whose rows differ in length"),
        "null_row.parquet": (pa.array([good[:, :, 0].tolist(), [[1, 2], None], good[:, :, 0].tolist()]),
                             "a nested list with a null row"),
        "null_value.parquet": (pa.array([good[:, :, 0].tolist(), [[1, None], [3, 4]], good[:, :, 0].tolist()]),
                               "an array of shape (2, 2) with 1 null value(s)"),
        "bools.parquet": (ArrowTensorArray.from_numpy(np.array([good > 0, good > 0, good > 0])[:, :, :, 0]),
                          None),
        "null.parquet": (pa.array([good.tolist(), None, good.tolist()]), "no pixel array (null)"),
        "floats.parquet": (ArrowTensorArray.from_numpy(np.zeros((3, 3, 6, 4), np.float32)),
                           "a float32 array of shape (3, 6, 4) (scale it to 0..255 and cast it to uint8), where"),
    }
    for name, (column, said) in cases.items():
        if name in ("bools.parquet", "floats.parquet"):  # a tensor of bools or floats: every cell of it no pixels
            out = _read(tmp_path, name, column)
            assert [r["kind"] for r in out] == ["reject"] * 3, name
            assert (said or "holds a bool array of shape (4, 6)") in out[0]["error"], out[0]["error"]
            continue
        out = _read(tmp_path, name, column)
        assert [(r["id"], r["kind"]) for r in out] == [
            (f"{name}#0", "image"), (f"{name}#1", "reject"), (f"{name}#2", "image")], name
        assert f"row 1: image column 'image' holds {said}" in out[1]["error"], out[1]["error"]


def test_the_size_limit_counts_each_values_bytes(tmp_path) -> None:
    # --max-image-mb limits a cell's raw pixels: a uint16 value is two bytes
    wide = np.zeros((2, 8, 8, 3), np.uint16)  # 384 bytes a cell
    out = _read(tmp_path, "wide.parquet", ArrowTensorArray.from_numpy(wide), max_image_bytes=300)
    assert [r["kind"] for r in out] == ["reject", "reject"] and "384" in out[0]["error"]
    assert [r["kind"] for r in _read(tmp_path, "fits.parquet", ArrowTensorArray.from_numpy(wide),
                                     max_image_bytes=384)] == ["image", "image"]


def test_lists_of_four_levels_or_of_floats_are_no_pixel_array_column(tmp_path) -> None:
    # lists of lists (of lists) of integers are pixels; others in an image-named column make no image column
    for name, column in {"deep.parquet": pa.array([[[[[1]]]]]), "floats.parquet": pa.array([[[0.5, 1.0]]])}.items():
        (unreadable,) = _read(tmp_path, name, column)
        assert unreadable["id"] == f"{name}#unreadable" and "no image column" in unreadable["error"], unreadable
