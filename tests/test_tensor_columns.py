"""A Parquet data set written by Ray Data keeps its numpy columns (boxes, masks, embeddings) through the job: Ray
writes them as its tensor extension types, whose Python values are numpy arrays, and Arrow cannot build those types
back from arrays of two or more dimensions. Such a column was written as the arrays' printed text, which numpy cuts
to "[[0. 0. ... 0.]]" past 1,000 values: the values were lost (pipeline.arrow_values)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray, ArrowVariableShapedTensorArray

from pipeline.export import export_images
from pipeline.job import run_job
from tests.jobutil import image_bytes, refresh_after_touching, small_job_config

MASKS = np.arange(3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40) / 7  # 1,600 values a row: numpy prints "..."
BOXES_A = np.arange(2 * 2 * 4, dtype=np.float64).reshape(2, 2, 4)  # two rows of 2 boxes: Ray's fixed-shape type
BOXES_B = [np.full((3, 4), 0.5)]  # a row of 3 boxes in another file: Ray's variable-shaped type


def _inputs(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    masks = ArrowTensorArray.from_numpy(MASKS)
    pq.write_table(pa.table({"image": [image_bytes(32, 32, i) for i in range(2)], "mask": masks[:2],
                             "boxes": ArrowTensorArray.from_numpy(BOXES_A)}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"image": [image_bytes(32, 32, 2)], "mask": masks[2:],
                             "boxes": ArrowVariableShapedTensorArray.from_numpy(BOXES_B)}), tmp_path / "in" / "b.parquet")


def test_ray_tensor_columns_pass_through_whole(tmp_path, model) -> None:
    _inputs(tmp_path)
    assert run_job(small_job_config(tmp_path, model))["this_run"]["purified"] == 3
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out" / "data").glob("part-*.parquet")))
    table = table.sort_by("id")
    assert table.column("id").to_pylist() == ["a.parquet#0", "a.parquet#1", "b.parquet#0"]
    # The masks share one type: written in it, every value as it was.
    mask = table.column("mask").combine_chunks()
    assert mask.type == ArrowTensorArray.from_numpy(MASKS).type
    assert np.array_equal(np.stack(mask.to_numpy(zero_copy_only=False)), MASKS)
    # The boxes' two types share none: text, each row's boxes in their shape, every value kept.
    boxes = [json.loads(v) for v in table.column("boxes").to_pylist()]
    assert table.schema.field("boxes").type == pa.string()
    assert boxes == [BOXES_A[0].tolist(), BOXES_A[1].tolist(), BOXES_B[0].tolist()]

    export_images(tmp_path / "out", tmp_path / "files", manifest="jsonl")
    lines = [json.loads(line) for line in (tmp_path / "files" / "manifest.jsonl").read_text("utf-8").splitlines()]
    exported = {line["id"]: line["mask"] for line in lines}
    assert [exported[i] for i in ("a.parquet#0", "a.parquet#1", "b.parquet#0")] == MASKS.tolist()

    # Both files touched with the same bytes: their rows still match what the files hold, typed and made text alike.
    again = refresh_after_touching(tmp_path, model, [tmp_path / "in" / "a.parquet", tmp_path / "in" / "b.parquet"])
    changed = again["changed_inputs"]
    assert again["this_run"]["purified"] == 0
    assert (changed["containers"], changed["refreshed_inputs"], changed["containers_same_members"]) == (0, 0, 2)


def test_part_files_whose_tensor_types_differ_are_made_text_with_each_tensor_whole(tmp_path) -> None:
    # Two write batches, one of each file: each part file keeps its own tensor type, and the end of the run makes the
    # column text, each row's boxes in their shape (not the flat storage of the fixed-shape type).
    from pipeline.arrow_values import python_rows
    from pipeline.output import unify_output_types
    from pipeline.stages import batch_of, write_stage

    _inputs(tmp_path)
    for name in ("a.parquet", "b.parquet"):
        table = pq.read_table(tmp_path / "in" / name)
        types = {"boxes": table.schema.field("boxes").type}
        rows = [{"kind": "image", "id": f"{name}#{i}", "source": f"in/{name}#{i}", "source_sha256": "0" * 64,
                 "png": b"png", "width": 4, "height": 4, "meta": {"boxes": row["boxes"]}, "meta_types": types}
                for i, row in enumerate(python_rows(table.select(["boxes"])))]
        write_stage(batch_of(rows), str(tmp_path / "out"), {})
    assert unify_output_types(str(tmp_path / "out"), {}) == {"boxes": "string"}
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out" / "data").glob("part-*.parquet")))
    boxes = dict(zip(table.column("id").to_pylist(), map(json.loads, table.column("boxes").to_pylist()), strict=True))
    assert boxes == {"a.parquet#0": BOXES_A[0].tolist(), "a.parquet#1": BOXES_A[1].tolist(),
                     "b.parquet#0": BOXES_B[0].tolist()}
