"""Mutation-audit gaps in the job's stages (pipeline.stages), tested on the stage functions directly, without Ray:
every image tiled in chunks comes back once at its own size, the last untiled batch is handed on, non-square images
keep their height and width, the job's --seed reaches each canvas, the writer's manifest row counts what the driver
reports, and a decode reject keeps its reason, stage and input hash."""

from __future__ import annotations

import io
import json
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.decode import DecodePolicy
from pipeline.sources import discover
from pipeline.stages import (
    batch_of,
    canvas_seed,
    cell_psnr,
    decode_stage,
    encode_stage,
    part_name,
    read_stage,
    records_of,
    tile_stage,
    untile_stage,
    write_stage,
)
from pipeline.tiling import Placement
from tests.jobutil import image_bytes, tar_bytes
from tests.test_mutation_stages import _image

# (height, width) of the inputs: non-square ones both ways, and one larger than the 32 px canvas (shrunk 2.5-fold)
SIZES = [(20, 12), (12, 20), (8, 8), (80, 40), (5, 30), (30, 5), (16, 16)]


def _pixel_records() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"kind": "image", "id": f"in/{i}.png", "source": f"in/{i}.png", "source_sha256": "0" * 64, "meta": {},
             "pixels": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)} for i, (h, w) in enumerate(SIZES)]


def test_images_tiled_a_few_at_a_time_all_come_back_once_at_their_own_size() -> None:
    count = {"kind": "count", "n": len(SIZES), "skipped": 0}
    tiled = tile_stage(batch_of([*_pixel_records(), count]), 32, 4, "fit", seed=0, max_images=3)
    untiled = [r for b in untile_stage(tiled, 32, 4) for r in records_of(b)]  # default bound: one batch, at the end
    images = [r for r in untiled if r["kind"] == "image"]
    assert Counter(r["id"] for r in images) == Counter(f"in/{i}.png" for i in range(len(SIZES)))  # each once
    shapes = {r["id"]: r["pixels"].shape for r in images}
    assert shapes == {f"in/{i}.png": (h, w, 3) for i, (h, w) in enumerate(SIZES)}
    factors = {r["id"]: r["downscale_factor"] for r in images}
    assert factors == {f"in/{i}.png": 2.5 if i == 3 else 1.0 for i in range(len(SIZES))}
    assert [r for r in untiled if r["kind"] == "count"] == [count]  # passed through, once


def test_the_jobs_seed_reaches_every_canvas_and_reruns_repeat_it() -> None:
    def seeds(seed: int) -> list[int]:
        tiled = records_of(tile_stage(batch_of(_pixel_records()), 32, 4, "fit", seed=seed, max_images=3))
        return [r["seed"] for r in tiled if r["kind"] == "canvas"]

    tiled = records_of(tile_stage(batch_of(_pixel_records()), 32, 4, "fit", seed=7, max_images=3))
    assert seeds(7) == [canvas_seed(7, [m["id"] for m in r["members"]]) for r in tiled] == seeds(7)
    assert all(a != b for a, b in zip(seeds(7), seeds(8), strict=True))  # --seed 8: other noise on every canvas


def test_a_non_square_image_is_written_with_its_own_height_and_width(tmp_path) -> None:
    pixels = np.zeros((5, 9, 3), dtype=np.uint8)
    (record,) = records_of(encode_stage(batch_of([{**_image(0), "pixels": pixels}])))
    assert (record["height"], record["width"]) == (5, 9)
    assert Image.open(io.BytesIO(record["png"])).size == (9, 5)  # PIL: (width, height)
    files = json.loads(write_stage(batch_of([record]), str(tmp_path), {})["files"][0])
    row = pq.read_table(tmp_path / files[0]).to_pylist()[0]
    assert (row["height"], row["width"]) == (5, 9)


def test_an_images_change_is_measured_over_its_own_non_square_cell_only() -> None:
    before = np.zeros((64, 64, 3), dtype=np.uint8)
    after = before.copy()
    after[20:40, 0:10] = 255  # below a 16 px tall, 48 px wide cell: inside it were its height and width swapped
    assert cell_psnr(before, after, Placement(0, 0, 0, 16, 48, 16, 48)) == math.inf
    after[0:16, 40:48] = 255  # now inside the cell
    assert math.isfinite(cell_psnr(before, after, Placement(0, 0, 0, 16, 48, 16, 48)))


def test_the_manifest_row_counts_what_the_driver_reports(tmp_path) -> None:
    images = [{**_image(0), "psnr_vs_input_db": 30.0, "downscale_factor": 1.0},
              {**_image(1), "psnr_vs_input_db": math.inf, "downscale_factor": 2.5},
              {**_image(2), "psnr_vs_input_db": 20.0, "downscale_factor": 1.0}]
    counts = [{"kind": "count", "n": 5, "skipped": 2, "hidden": 1, "hidden_examples": ["__MACOSX/._a.png"],
               "container": "in/a.tar"},
              {"kind": "count", "n": 3, "skipped": 0}]
    row = write_stage(batch_of([*images, *counts]), str(tmp_path), {}, max_rows_per_file=2)
    got = {k: json.loads(v[0]) if isinstance(v[0], str) else v[0].item() for k, v in row.items() if k != "written_at"}
    assert got["read"] == 8 and got["skipped"] == 2 and got["hidden"] == 1 and got["units_read"] == 2
    assert got["hidden_examples"] == ["__MACOSX/._a.png"] and got["containers"] == ["in/a.tar"]
    assert (got["psnr_sum"], got["psnr_count"], got["psnr_min"], got["unchanged"]) == (50.0, 2, 20.0, 1)
    assert (got["downscaled"], got["downscale_max"]) == (1, 2.5)
    assert got["file_rows"] == {name: pq.read_metadata(tmp_path / name).num_rows for name in got["files"]}
    assert sorted(got["file_rows"].values()) == [1, 2]


def test_an_undecodable_image_is_a_reject_with_its_reason_stage_and_hash(tmp_path) -> None:
    good = {**_image(0), "data": image_bytes(6, 10, 0)}
    bad = {**_image(1), "data": b"not an image at all", "source_sha256": "ab" * 32}
    for r in (good, bad):
        del r["png"], r["width"], r["height"]
    decoded = records_of(decode_stage(batch_of([good, bad]), DecodePolicy()))
    assert decoded[0]["pixels"].shape == (6, 10, 3)
    assert (decoded[0]["original_mode"], decoded[0]["original_format"], decoded[0]["original_frames"]) == ("RGB", "PNG", 1)
    files = json.loads(write_stage(batch_of([decoded[1]]), str(tmp_path), {})["files"][0])
    (reject,) = pq.read_table(tmp_path / files[0]).to_pylist()
    assert files[0].startswith("rejects/")
    assert (reject["id"], reject["stage"], reject["source_sha256"]) == ("img/001.png", "decode", "ab" * 32)
    assert reject["error"] and reject["rejected_at"] is not None


def test_a_pass_through_value_under_a_job_columns_name_stops_the_writer_instead_of_replacing_the_id(tmp_path) -> None:
    # the readers rename an input's own `id` to input_id; one that reached the writer as `id` would have replaced the
    # row's id (and a later run's resume would skip or repeat images by the input's value)
    with pytest.raises(RuntimeError, match=r"\['id'\]"):
        write_stage(batch_of([{**_image(0), "meta": {"id": "another"}}]), str(tmp_path), {})
    assert not list(tmp_path.rglob("*.parquet"))


def test_text_that_is_not_utf8_in_a_mixed_column_is_written_escaped(tmp_path) -> None:
    # a .cls label 3 beside a name-like caption with an undecodable byte (surrogateescape) and a JSON sidecar's lone
    # "\ud800": one text column, each written as its escape, and the write does not fail
    records = [{**_image(i), "meta": {"label": v}} for i, v in enumerate([3, "caf\udce9", "\ud800", "café"])]
    files = json.loads(write_stage(batch_of(records), str(tmp_path), {})["files"][0])
    assert pq.read_table(tmp_path / files[0]).column("label").to_pylist() == ["3", "caf\\xe9", "\\ud800", "café"]


def test_a_refresh_runs_salt_gives_its_rows_files_of_their_own(tmp_path) -> None:
    # --refresh-changed tells a new row by its file (pipeline.refresh): an old row's file name must not be reused
    ids = ["in/0.png", "in/1.png"]
    assert part_name(ids, "refresh-1") not in (part_name(ids), part_name(ids, "refresh-2"))
    assert part_name(ids, "refresh-1") == part_name(list(reversed(ids)), "refresh-1")  # a retried write: the same
    records = [_image(0), _image(1)]
    (plain,) = json.loads(write_stage(batch_of(records), str(tmp_path), {})["files"][0])
    (salted,) = json.loads(write_stage(batch_of(records), str(tmp_path), {}, name_salt="refresh-1")["files"][0])
    assert plain != salted and (tmp_path / plain).exists() and (tmp_path / salted).exists()


def test_a_read_task_skips_the_done_ids_its_unit_row_carries(tmp_path) -> None:
    # a resumed run hands each tar its own done ids in the unit's row ("skip"): read again, they would be purified twice
    (tmp_path / "s.tar").write_bytes(tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(3)}))
    (unit,) = discover(str(tmp_path))
    row = {**{k: [v] for k, v in unit.to_row().items()}, "skip": [["s.tar/0"]]}
    records = [r for b in read_stage(row, {}, False, None, frozenset()) for r in records_of(b)]
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/1", "s.tar/2"]
    assert [r["skipped"] for r in records if r["kind"] == "count"] == [1]
