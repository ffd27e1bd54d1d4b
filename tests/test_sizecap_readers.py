"""--max-image-mb: an image file, tar member or Parquet cell over the limit is a reject naming its size and the limit,
decided before its bytes are copied, and the other images of the same folder, shard or file go on.

"Not read" is checked with tracemalloc, which sees every Python bytes object: reading an oversized input into memory
(what the readers did before, and what a huge or garbage file on a cluster turned into an OOM-killed read task)
would put a peak of its size there."""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.decode import DecodePolicy
from pipeline.sources import MAX_IMAGE_BYTES, ReadUnit, discover, read_unit
from pipeline.stages import read_stage, records_of
from tests.jobutil import image_bytes

MiB = 2**20
LIMIT = 1 * MiB  # --max-image-mb 1
FETCHED, STREAMED = 2**30, 0  # a tar/Parquet file fetched whole into memory, or streamed from storage


def _read(root: Path, **kw: Any) -> tuple[dict[str, dict[str, Any]], int]:
    """Records of every unit under `root` by id, and the peak of Python memory while reading them."""
    units = discover(str(root))
    tracemalloc.start()
    try:
        records = [r for unit in units for r in read_unit(unit, max_image_bytes=LIMIT, **kw) if r["kind"] != "count"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {r["id"]: r for r in records}, peak


def _assert_too_large(record: dict[str, Any], what: str, size: int) -> None:
    assert record["kind"] == "reject" and record["stage"] == "read" and record["source_sha256"] is None
    assert record["error"] == (f"{what} is {size / MiB:.1f} MiB ({size:,} bytes), over --max-image-mb 1, so it was not "
                               "read; to purify it, run again with a larger --max-image-mb and --retry-rejects")


def test_an_image_file_over_the_limit_is_a_reject_and_is_not_read(tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(16 * MiB)  # sparse: 16 MiB to read, no disk used (garbage named .jpg, as a broken upload is)
    (root / "ok.png").write_bytes(image_bytes(8, 8, 0))
    (root / "at_limit.bin").write_bytes(b"\1" * LIMIT)  # exactly the limit: read (it is the decoder's to refuse)
    records, peak = _read(root)
    _assert_too_large(records["huge.jpg"], "image file", 16 * MiB)
    assert records["ok.png"]["kind"] == "image" and records["ok.png"]["data"] == image_bytes(8, 8, 0)
    assert records["at_limit.bin"]["kind"] == "image" and len(records["at_limit.bin"]["data"]) == LIMIT
    assert peak < 4 * MiB  # the 1 MiB file was read; the 16 MiB one never was


def _shard(path: Path, oversized: bytes) -> None:
    """a.png, a big.jpg over the limit with its .cls sidecar, a hard link to big.jpg, and b.png after them."""
    with tarfile.open(path, "w") as tar:
        for name, data in (("a.png", image_bytes(8, 8, 1)), ("big.jpg", oversized), ("big.cls", b"3"),
                           ("b.png", image_bytes(8, 8, 2))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if name == "big.cls":
                link = tarfile.TarInfo("copy.jpg")
                link.type, link.linkname = tarfile.LNKTYPE, "big.jpg"
                tar.addfile(link)


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_a_tar_member_over_the_limit_makes_its_key_a_reject_and_the_shard_goes_on(tmp_path, in_memory_bytes) -> None:
    root = tmp_path / "in"
    root.mkdir()
    # not an image: read, it would have been an image record here and a decode reject later
    _shard(root / "s.tar", os.urandom(4 * MiB))
    records, peak = _read(root, in_memory_bytes=in_memory_bytes)
    assert sorted(records) == ["s.tar/a", "s.tar/b", "s.tar/big", "s.tar/copy"]
    _assert_too_large(records["s.tar/big"], "tar member big.jpg", 4 * MiB)
    _assert_too_large(records["s.tar/copy"], "tar member big.jpg", 4 * MiB)  # a link reads its target: refused too
    assert records["s.tar/a"]["data"] == image_bytes(8, 8, 1) and records["s.tar/b"]["data"] == image_bytes(8, 8, 2)
    if in_memory_bytes == STREAMED:  # (a fetched shard is in memory whole, by design: it is at most --in-memory-mb)
        assert peak < 2 * MiB


@pytest.mark.parametrize("layout", ["binary", "large_binary", "binary_view", "struct", "list_uint8", "dictionary"])
def test_a_parquet_cell_over_the_limit_is_a_reject_and_is_not_copied(tmp_path, layout) -> None:
    root = tmp_path / "in"
    root.mkdir()
    cells = [image_bytes(8, 8, 3), b"\0" * (2 * MiB), image_bytes(8, 8, 4)]
    if layout == "struct":
        column = pa.array([{"bytes": c, "path": f"p{i}.png"} for i, c in enumerate(cells)])
    elif layout == "list_uint8":
        column = pa.array([list(c) for c in cells], pa.list_(pa.uint8()))
    elif layout == "dictionary":
        column = pa.array(cells).dictionary_encode()
    else:
        column = pa.array(cells, getattr(pa, layout)())
    pq.write_table(pa.table({"image": column, "label": [0, 1, 2]}), root / "t.parquet", compression="zstd")
    del cells, column
    records, peak = _read(root, in_memory_bytes=STREAMED)
    assert sorted(records) == ["t.parquet#0", "t.parquet#1", "t.parquet#2"]
    _assert_too_large(records["t.parquet#1"], "row 1: image column 'image'", 2 * MiB)
    for i in (0, 2):  # the rows around it are read as before, with their columns
        assert records[f"t.parquet#{i}"]["data"] == image_bytes(8, 8, 3 + i // 2)
        assert records[f"t.parquet#{i}"]["meta"]["label"] == i
    if layout == "struct":
        assert records["t.parquet#2"]["meta"]["original_path"] == "p2.png"
    # Arrow holds the cell with its row group (outside Python's memory); no Python copy of it was made
    assert peak < 1 * MiB


class _SizelessFileSystem(MemoryFileSystem):
    """A store whose open files report no size (as an HTTP server that sends no Content-Length)."""

    protocol = "sizeless"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("sizeless://"))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return io.BytesIO(self.cat_file(path)) if mode == "rb" else super()._open(path, mode, **kwargs)


@pytest.fixture
def sizeless() -> Iterator[str]:
    fsspec.register_implementation("sizeless", _SizelessFileSystem, clobber=True)
    root = f"sizeless:///sizecap-{os.getpid()}"
    yield root
    _SizelessFileSystem().rm(root, recursive=True)


def test_a_file_of_unknown_size_is_read_only_up_to_the_limit(sizeless) -> None:
    fs = _SizelessFileSystem()
    fs.pipe(f"{sizeless}/big.png", b"\1" * (LIMIT + 1))
    fs.pipe(f"{sizeless}/ok.png", image_bytes(8, 8, 5))
    unit = ReadUnit("files", (f"{sizeless}/big.png", f"{sizeless}/ok.png"), sizeless)
    big, ok, count = read_unit(unit, max_image_bytes=LIMIT)
    assert (big["kind"], big["id"], big["stage"]) == ("reject", "big.png", "read")
    assert big["error"].startswith("image file holds more than 1,048,576 bytes, over --max-image-mb 1, so it was not "
                                   "read; to purify it")
    assert (ok["kind"], ok["data"]) == ("image", image_bytes(8, 8, 5))
    assert count == {"kind": "count", "n": 2, "skipped": 0}


def test_the_default_limit_holds_any_image_the_decoder_accepts_by_default() -> None:
    # Every image within the default --max-pixels fits, even 16-bit RGBA stored uncompressed (8 bytes a pixel): the
    # byte limit must not refuse what the pixel limit lets through (a raised default --max-pixels needs a raised cap).
    assert MAX_IMAGE_BYTES == 512 * MiB >= DecodePolicy().max_pixels * 8


def test_the_read_stage_hands_large_images_on_before_max_records_pile_up(tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.jpg").write_bytes(bytes([i]) * (MiB // 2 + 1))
    (unit,) = discover(str(root))
    row = {k: [v] for k, v in unit.to_row().items()}
    batches = [records_of(b) for b in read_stage(row, {}, False, None, frozenset(), max_records=256, max_bytes=MiB)]
    # two images pass 1 MiB: each batch is handed on then, not after 256 of them
    assert [len(b) for b in batches] == [2, 2, 2]
    assert [r["id"] for b in batches for r in b if r["kind"] == "image"] == [f"{i}.jpg" for i in range(5)]
    assert batches[-1][-1] == {"kind": "count", "n": 5, "skipped": 0}
