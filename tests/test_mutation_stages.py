"""Mutation-audit gaps in the job's stages: every row reaches the output exactly once however the writer splits it,
the job's --seed reaches each canvas's noise, and a record no stage handled stops the writer instead of vanishing."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.sources import reject_record
from pipeline.stages import batch_of, canvas_seed, write_stage


def _image(i: int) -> dict:
    return {"kind": "image", "id": f"img/{i:03d}.png", "source": f"img/{i:03d}.png", "source_sha256": "0" * 64,
            "png": b"png", "width": 4, "height": 4, "meta": {}}


@pytest.mark.parametrize("n_images,n_rejects,max_rows", [(5, 3, 2), (4, 2, 2), (7, 1, 3), (3, 0, 1)])
def test_the_writer_puts_every_row_in_exactly_one_file_of_at_most_max_rows(tmp_path, n_images, n_rejects,
                                                                          max_rows) -> None:
    records = [_image(i) for i in range(n_images)]
    records += [reject_record(f"bad/{i}.png", f"bad/{i}.png", "not a recognised image format", "decode", "1" * 64)
                for i in range(n_rejects)]
    manifest = write_stage(batch_of(records), str(tmp_path), {}, max_rows_per_file=max_rows)
    assert int(manifest["purified"][0]) == n_images and int(manifest["rejected"][0]) == n_rejects
    files = json.loads(manifest["files"][0])
    ids = {"data": [], "rejects": []}
    for name in files:
        table = pq.read_table(tmp_path / name)
        assert 1 <= table.num_rows <= max_rows
        ids[name.split("/")[0]] += table.column("id").to_pylist()
    assert sorted(ids["data"]) == [f"img/{i:03d}.png" for i in range(n_images)]
    assert sorted(ids["rejects"]) == [f"bad/{i}.png" for i in range(n_rejects)]


def test_a_record_no_stage_handled_stops_the_writer(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="canvas"):
        write_stage(batch_of([_image(0), {"kind": "canvas", "id": "x", "canvas": None, "members": [], "seed": 0,
                                          "source": "", "source_sha256": "", "png": b"", "width": 0, "height": 0,
                                          "meta": {}}]), str(tmp_path), {})
    assert not list(tmp_path.rglob("*.parquet"))


def test_the_job_seed_changes_each_canvas_noise_seed() -> None:
    ids = ["a/0.png", "a/1.png"]
    seeds = {canvas_seed(s, ids) for s in range(8)}
    assert len(seeds) == 8  # --seed 0..7 give 8 different canvas seeds
    assert canvas_seed(3, ids) == canvas_seed(3, list(ids))  # and the same seed is reproducible
    assert all(0 <= s < 2**31 for s in seeds)


def test_each_output_image_is_named_after_its_own_id(tmp_path) -> None:
    # image.path is the file name tools such as Hugging Face datasets give the image; tar keys cut at their last dot
    # ('cat.0', 'cat.1') and Parquet rows were all named after their common stem ('cat.png', 't.png')
    ids = ["s.tar/train/cat.0", "s.tar/train/cat.1", "t.parquet#3", "t.parquet#4", "a/b.JPG", "s.tar/0001",
           "d.zip/x/1.jpeg", "scan.raw"]
    records = [{**_image(0), "id": i, "source": i} for i in ids]
    files = json.loads(write_stage(batch_of(records), str(tmp_path), {}, max_rows_per_file=100)["files"][0])
    table = pq.read_table(tmp_path / files[0])
    names = dict(zip(table.column("id").to_pylist(), (cell["path"] for cell in table.column("image").to_pylist()),
                     strict=True))
    assert names == {"s.tar/train/cat.0": "cat.0.png", "s.tar/train/cat.1": "cat.1.png", "t.parquet#3": "t.parquet_3.png",
                     "t.parquet#4": "t.parquet_4.png", "a/b.JPG": "b.png", "s.tar/0001": "0001.png",
                     "d.zip/x/1.jpeg": "1.png", "scan.raw": "scan.raw.png"}
