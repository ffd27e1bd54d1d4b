"""Bad inputs never crash the job and never vanish; nothing escapes the output prefix."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import JobConfig
from pipeline.job import run_job
from tests.reliability.corpus import folder_corpus
from tests.reliability.scenario import check

pytestmark = pytest.mark.usefixtures("ray_local")


def test_hostile_corpus_every_input_exactly_once(tmp_path, tiny_model) -> None:
    expected = folder_corpus(tmp_path / "in")
    out = tmp_path / "out"
    summary = run_job(JobConfig(input=str(tmp_path / "in"), output=str(out), checkpoint=tiny_model, steps=2,
                                pool=4, progress=False, max_pixels=50_000_000))
    data, rejects = check("bad inputs (folder, tar, parquet)", str(out), set(expected))
    run = summary["this_run"]
    assert run["read"] == len(expected) == run["purified"] + run["rejected"]
    should_purify = {k for k, v in expected.items() if v == "purified"}
    assert set(data["id"]) == should_purify, set(data["id"]) ^ should_purify
    reasons = dict(zip(rejects["id"], rejects["error"], strict=True))
    assert "empty" in reasons["zero-byte.png"].lower()
    assert "too large" in reasons["bomb.png"].lower()
    assert "truncated" in reasons["truncated.png"].lower() or "truncated" in reasons["truncated.png"].lower()
    # Sizes and policies: EXIF rotation applied (16x32 stored, shown 32x16), first GIF frame, 1xN kept.
    sizes = {r["id"]: (r["height"], r["width"]) for _, r in data.iterrows()}
    assert sizes["exif-rotated.jpg"] == (32, 16)
    assert sizes["one-by-seven.png"] == (1, 7) and sizes["one-pixel.png"] == (1, 1)
    modes = dict(zip(data["id"], data["original_mode"], strict=True))
    assert modes["cmyk.jpg"] == "CMYK" and modes["sixteen-bit.png"].startswith("I")
    frames = dict(zip(data["id"], data["original_frames"], strict=True))  # only the first frame was purified
    assert frames["animated.gif"] == 3 and frames["cmyk.jpg"] == 1
    for _, row in data.iterrows():
        with Image.open(io.BytesIO(row["image"]["bytes"])) as im:
            assert im.size == (row["width"], row["height"]) and im.mode == "RGB"
    # Nothing was written outside the output prefix, whatever the member names said.
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(p.is_relative_to(out) or p.is_relative_to(tmp_path / "in") for p in written)
    assert not any(Path("/abs").glob("*")) if Path("/abs").exists() else True
    assert all("/" not in name and ".." not in name for name in data["image"].map(lambda c: c["path"]))
