"""Peak memory and time of the job's zip reader over archives whose central directory (the list of members) is large.

    python bench/zip_directory_bench.py                          # the three cases at their default sizes
    python bench/zip_directory_bench.py --members 1280000        # an ImageNet-sized archive

- many: `--members` members of 1 byte, named like ImageNet's (`train/n00000001/n00000001_1234.JPEG`);
- hostile: `--hostile` directory entries of 47 bytes (a 1-byte name), all for one member;
- distinct: `--hostile` entries of 53 bytes, each a distinct 7-byte name (the most index a directory of that many
  entries can make the reader keep).
Each case is read in a fresh process (its peak RSS, VmHWM, is its own; `base`: after the imports). Nothing here is asserted;
tests/test_hostile_inputs.py checks what these archives give.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.sources.zip_archives import MAX_ZIP_MEMBERS  # noqa: E402 - after the path is set

MEASURE = """
import sys, time
sys.path.insert(0, {root!r})
def peak_mb():  # this process's own peak (VmHWM): ru_maxrss keeps the parent's across exec
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
from pipeline.sources import read_unit
from pipeline.sources.units import ReadUnit
base = peak_mb()
unit = ReadUnit("zip", ("file://" + {path!r},), "file://" + {folder!r}, ({size},))
started, kinds = time.perf_counter(), {{}}
for record in read_unit(unit):
    kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
print(f"{{time.perf_counter() - started:.1f}} s, peak RSS {{peak_mb():.0f}} MB (base {{base:.0f}}), {{kinds}}")
"""


def many(path: Path, members: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(members):
            archive.writestr(f"train/n{i // 1300:08d}/n{i // 1300:08d}_{i}.JPEG", b"x")


def hostile(path: Path, entries: int, distinct: bool) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.png", b"x")
    raw = path.read_bytes()
    end = raw.rfind(b"PK\x05\x06")
    at = struct.unpack("<I", raw[end + 16 : end + 20])[0]
    fixed = bytearray(raw[at : at + 46])
    struct.pack_into("<H", fixed, 28, 7 if distinct else 1)
    directory = b"".join(bytes(fixed) + b"%07d" % i for i in range(entries)) if distinct else \
        (bytes(fixed) + b"a") * entries
    path.write_bytes(raw[:at] + directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF,
                                                                        len(directory), at, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=200_000, help="members of the archive of many")
    parser.add_argument("--hostile", type=int, default=2_000_000,
                        help=f"entries of the hostile directories (the reader refuses over {MAX_ZIP_MEMBERS:,})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        for name, make in (("many", lambda p: many(p, args.members)),
                           ("hostile", lambda p: hostile(p, args.hostile, distinct=False)),
                           ("distinct", lambda p: hostile(p, args.hostile, distinct=True))):
            path = Path(folder) / f"{name}.zip"
            make(path)
            size = os.path.getsize(path)
            script = MEASURE.format(root=str(ROOT), path=str(path), folder=folder, size=size)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            print(f"{name} ({size / 2**20:.0f} MB): {out.strip()}")
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
