"""The versions a run is made with: zip-purify's own, and those of the libraries whose changes can move its pixels or
its reading (torch, Ray). A run's summary records them, and `--version` prints them, for a bug report or a schedule
that pins them. Read from the installed packages' metadata, and torch's from torch itself. The export tool's
`--version` names its own libraries instead (`export_version_line`)."""

from __future__ import annotations

import platform
from importlib import metadata


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # a checkout used without `pip install -e .`
        return "not installed"


__version__ = installed_version("zip-purify")


def versions() -> dict[str, str]:
    import torch  # already loaded by the package; its own version names the build (+cpu, +cu130), which the metadata's
    # does not, and a GPU build draws other noise than a CPU one

    return {"zip_purify": __version__, "torch": torch.__version__, "ray": installed_version("ray"),
            "python": platform.python_version()}


def version_line() -> str:
    v = versions()
    return f"zip-purify {v['zip_purify']} (torch {v['torch']}, ray {v['ray']}, Python {v['python']})"


def export_version_line() -> str:
    """What `zip-purify-export --version` prints: the libraries the export runs with, for a bug report as the job's
    line is. It loads neither torch nor Ray, so names those it does use: pyarrow reads the output's Parquet files,
    fsspec reaches its storage and Pillow re-encodes images (--format input). Read from metadata: nothing imported."""
    return (f"zip-purify-export {__version__} (pyarrow {installed_version('pyarrow')}, fsspec "
            f"{installed_version('fsspec')}, Pillow {installed_version('pillow')}, Python {platform.python_version()})")
