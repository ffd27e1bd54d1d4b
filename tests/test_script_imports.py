"""The scripts users run (jobs/, bench/) import from the package, often inside a function so that `--help` stays fast.
A name renamed or moved in the package then breaks a script only when that function runs, which no other test
does for the benchmarks: every `from pipeline... import name` in them must resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*(ROOT / "jobs").glob("*.py"), *(ROOT / "bench").glob("*.py")])


def package_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `from pipeline[.x] import name` in a script, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "pipeline" or node.module.startswith("pipeline.")):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def missing_names(path: Path) -> list[str]:
    missing = []
    for line, module, name in package_imports(path):
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"line {line}: {module}: {err}")
            continue
        if not hasattr(imported, name):
            try:  # a submodule imported by name: from pipeline.sources import ids
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module} has no {name}")
    return missing


def test_a_name_the_package_lacks_is_found(tmp_path: Path) -> None:
    script = tmp_path / "bench_like.py"
    script.write_text("def later():\n    from pipeline.output import output_ids, no_such_helper\n")
    assert missing_names(script) == ["line 2: pipeline.output has no no_such_helper"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_import_of_a_script_resolves(script: Path) -> None:
    assert package_imports(script), f"{script.name} imports nothing from the package"
    assert missing_names(script) == []
