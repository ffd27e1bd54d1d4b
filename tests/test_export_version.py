"""`zip-purify-export --version` printed its own version alone, where `zip-purify --version` names torch's, Ray's and
Python's too: a bug report about an export had no word of the libraries that read and wrote its files. It names those
the export runs with (it loads neither torch nor Ray, and its --version must not load them just to name them)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import pipeline
from pipeline.export_cli import build_parser, main


def test_the_export_version_names_the_libraries_it_reads_and_writes_with(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"zip-purify-export {pipeline.__version__} (pyarrow {metadata.version('pyarrow')}, fsspec "
        f"{metadata.version('fsspec')}, Pillow {metadata.version('pillow')}, Python {platform.python_version()})")


def test_the_export_help_says_what_version_prints() -> None:
    assert "with those of pyarrow, fsspec, Pillow and Python" in " ".join(build_parser().format_help().split())


def test_the_export_version_loads_neither_torch_nor_ray() -> None:
    code = ("import sys\nfrom pipeline.export_cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[0].startswith("zip-purify-export ") and done.stdout.splitlines()[-1] == "[]"
