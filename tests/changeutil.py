"""Job runs saved once per test module, for the tests of inputs changed after a run: the first run(s) of a scenario
are made by a module-scoped fixture and put back in place for each test that changes the inputs after them."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def _versions(folder: Path) -> dict[str, tuple[str, int]]:
    """Each file's digest and mtime: what a test that wrote into a saved file (or touched it) changed."""
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


class SavedRun:
    """`folder`/in (an input) and `folder`/out (the output job runs made of it) as they are now, saved to be put back in
    place by `restore` for each test that goes on from them.

    The output records its input's path and each input file's inode and mtime (pipeline.sources.units.listing_stamp), so
    both come back at the same path: out/ as a copy, in/ as hard links to the saved files, so that an input file a test
    leaves alone reads as unchanged (its inode and mtime are the ones recorded). A test must therefore change an input
    file by replacing it (`replace`, `rewritten`), never by writing into it, which would change the saved file too:
    `restore` checks the saved files' bytes and mtimes and says so."""

    def __init__(self, folder: Path, name: str = "saved") -> None:
        """`name`: the saved copy's folder beside in/ and out/ (another name saves another state of the same folder)."""
        self.folder = folder
        self._saved = folder / name
        shutil.rmtree(self._saved, ignore_errors=True)
        shutil.copytree(folder / "in", self._saved / "in", copy_function=os.link, symlinks=True)
        shutil.copytree(folder / "out", self._saved / "out", symlinks=True)
        self._input_versions = _versions(self._saved / "in")

    def restore(self) -> Path:
        """Put in/ and out/ back as saved; returns the folder (the tests' `tmp_path` for tests.jobutil's helpers)."""
        if _versions(self._saved / "in") != self._input_versions:
            raise AssertionError(f"a test wrote into (or touched) a saved input file under {self.folder / 'in'} instead "
                                 "of replacing it (tests.changeutil.replace): the saved run is spoilt for the tests after it")
        for name in ("in", "out"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        shutil.copytree(self._saved / "in", self.folder / "in", copy_function=os.link, symlinks=True)
        shutil.copytree(self._saved / "out", self.folder / "out", symlinks=True)
        return self.folder


def replace(path: Path, data: bytes) -> None:
    """A new file of `data` under `path`'s name (a new inode, so a file `SavedRun` links to is left as it was)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def rewritten(path: Path, data: bytes) -> None:
    """New bytes under the same name, as a new file (`replace`), with an mtime that surely differs from the old file's
    (as tests.jobutil.rewritten_in_place: a coarse file system clock, an inode number used again)."""
    before = os.stat(path).st_mtime_ns
    replace(path, data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))
