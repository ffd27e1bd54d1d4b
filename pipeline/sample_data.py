"""The embedded sample: CIFAR-sized images made by our own code, a quarter carrying a patch trigger.

    python -m pipeline.sample_data                 # regenerate the package's own (deterministic)
    python -m pipeline.sample_data FOLDER          # the same images in another folder

Images are procedural scenes (sky/ground gradients, a few coloured shapes, mild noise) so the
job has something image-like to purify without shipping anyone's data. Every 4th image gets the
BadNet-style trigger: a 3x3 white patch in the bottom-right corner. Stored as two WebDataset-style
tar shards: KEY.png + KEY.cls (a made-up shape class) + KEY.json ({"has_trigger": ...}).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32


def scene(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    base = (top * (1 - t) + bottom * t) * np.ones((1, SIZE, 1))
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    shape = int(rng.integers(0, 3))
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.integers(0, SIZE - 8, 2)
        w, h = rng.integers(6, 20, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(min(SIZE - 1, x0 + w)), int(min(SIZE - 1, y0 + h))]
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=colour)
    pixels = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (SIZE, SIZE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), shape


def add_patch_trigger(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[-3:, -3:] = 255
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def write_sample(folder: Path, count: int = 256, shards: int = 2, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = count // shards
    for s in range(shards):
        with tarfile.open(folder / f"sample-{s:02d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                image, label = scene(rng)
                triggered = i % 4 == 3
                if triggered:
                    image = add_patch_trigger(image)
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                key = f"{i:06d}"
                _add(tar, f"{key}.png", buf.getvalue())
                _add(tar, f"{key}.cls", str(label).encode())
                _add(tar, f"{key}.json", json.dumps({"has_trigger": triggered}).encode())


# The package's own sample, the job's embedded default input (pipeline.config.DEFAULT_INPUT)
SAMPLE_DIR = Path(__file__).resolve().parent / "assets" / "sample"


def main(argv: list[str] | None = None) -> int:
    """The command line: write the sample to FOLDER (default: the package's own). Before, every argument was taken as
    the folder (`--help` wrote the sample into a folder named '--help'), and without one it was written to
    pipeline/assets/sample under the current folder, wherever that was."""
    from pipeline.cli_common import Parser

    p = Parser(prog="python -m pipeline.sample_data",
               description="Write the embedded sample: 256 CIFAR-sized procedural images (every 4th with a 3x3 white "
                           "patch trigger) as two WebDataset tar shards, sample-00.tar and sample-01.tar. The same "
                           "bytes every time.")
    p.add_argument("folder", nargs="?", default=str(SAMPLE_DIR),
                   help=f"where to write the shards (made when missing). Default: the package's own, {SAMPLE_DIR}")
    args = p.parse_args(argv)
    if not args.folder:  # `"$DIR"` with the variable unset: Path('') is the current folder, whatever it is
        p.error("the folder is empty; give a folder, or leave it out for the package's own")
    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        p.error(f"{args.folder} is a file; give a folder (it is made when missing)")
    try:
        write_sample(folder)
    except OSError as err:  # a read-only installation's own folder, a folder under a file: a line, not a traceback
        print(f"error: cannot write the sample to {folder}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote sample-00.tar and sample-01.tar (256 images) to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
