"""The package's public names, and what importing the job's CPU stages loads: not torch, which cost each Ray worker
that reads, decodes, tiles or writes about 3 s and 290 MB of its own memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_is_the_one_its_module_defines() -> None:
    import importlib

    assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)
    for name, module in pipeline._EXPORTS.items():
        assert getattr(pipeline, name) is getattr(importlib.import_module(module), name)
    assert set(pipeline.__all__) <= set(dir(pipeline))
    with pytest.raises(AttributeError, match="no attribute 'Purifer'"):
        pipeline.Purifer  # noqa: B018 - a typo says so, as a module does


def test_the_cpu_stages_and_readers_import_without_torch() -> None:
    code = ("import sys; import pipeline, pipeline.stages, pipeline.sources, pipeline.output, pipeline.decode; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
