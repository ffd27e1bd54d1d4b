"""A generated corpus of hostile and unusual inputs (our own code; nothing downloaded)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.jobutil import image_bytes, tar_bytes


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a decompression bomb's header)."""
    data = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _exif_rotated_jpeg() -> bytes:
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    return _save(im, "JPEG", exif=exif.tobytes())


def folder_corpus(root: Path) -> dict[str, str]:
    """Write the corpus; returns {id: "purified" | "rejected"} — what the job must do with each."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    png = _save(rgb, "PNG")
    jpeg = _save(rgb, "JPEG")
    gif_frames = [Image.new("RGB", (8, 8), (80 * i, 0, 0)) for i in range(3)]  # distinct, or PIL merges them
    gif_buf = io.BytesIO()
    gif_frames[0].save(gif_buf, format="GIF", save_all=True, append_images=gif_frames[1:])
    files = {
        "zero-byte.png": (b"", "rejected"),
        "truncated.png": (png[: len(png) // 2], "rejected"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "rejected"),
        "random-bytes.jpg": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "rejected"),
        "text.png": (b"hello, I am not an image\n", "rejected"),
        "readme.txt": (b"a text file beside the images\n", "rejected"),
        "png-named.jpg": (png, "purified"),
        "gray-L.png": (_save(rgb.convert("L"), "PNG"), "purified"),
        "gray-alpha-LA.png": (_save(rgb.convert("LA"), "PNG"), "purified"),
        "rgba.png": (_save(rgb.convert("RGBA"), "PNG"), "purified"),
        "palette-P.png": (_save(rgb.convert("P"), "PNG"), "purified"),
        "sixteen-bit.png": (_save(Image.fromarray((rng.integers(0, 65535, (8, 8))).astype(np.uint16)), "PNG"),
                            "purified"),
        "cmyk.jpg": (_save(rgb.convert("CMYK"), "JPEG"), "purified"),
        "one-pixel.png": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "purified"),
        "one-by-seven.png": (_save(Image.new("RGB", (7, 1), (9, 9, 9)), "PNG"), "purified"),
        "bomb.png": (_png_with_header_size(100_000, 100_000), "rejected"),
        "animated.gif": (gif_buf.getvalue(), "purified"),
        "exif-rotated.jpg": (_exif_rotated_jpeg(), "purified"),
        "name with spaces ünï 图.png": (png, "purified"),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    expected = {name: outcome for name, (_, outcome) in files.items()}
    # A tar shard with a good member, a corrupt (undecodable) member and a member escaping upwards.
    (root / "shard.tar").write_bytes(tar_bytes({
        "k/good.png": image_bytes(32, 32, 1), "k/bad.png": b"\x89PNG\r\n\x1a\nbroken",
        "../../escape.png": image_bytes(8, 8, 2), "/abs/olute.png": image_bytes(8, 8, 3)}))
    expected.update({"shard.tar/k/good": "purified", "shard.tar/k/bad": "rejected",
                     "shard.tar/../../escape": "purified", "shard.tar/abs/olute": "purified"})
    # A Parquet file with a good row, a corrupt row and a null row.
    pq.write_table(pa.table({"image": [{"bytes": image_bytes(16, 16, 4), "path": "a.png"},
                                       {"bytes": b"corrupt", "path": "b.png"}, None]}), root / "table.parquet")
    expected.update({"table.parquet#0": "purified", "table.parquet#1": "rejected", "table.parquet#2": "rejected"})
    # A file that claims to be Parquet but is not.
    (root / "broken.parquet").write_bytes(b"PAR1 not really")
    expected["broken.parquet#unreadable"] = "rejected"
    return expected
