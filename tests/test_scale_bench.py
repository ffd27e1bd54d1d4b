"""bench/scale_bench.py at small sizes: a size it takes builds every fixture and runs every function, and a size too
small for its fixtures is refused with one line saying why (refresh-few's fixture divided by zero under N = 60, and
the command line only said that a child process failed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("scale_bench_under_test", ROOT / "bench" / "scale_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_function_runs_at_the_smallest_size_it_takes(bench, tmp_path: Path) -> None:
    from pipeline.changes import read_record
    from pipeline.output import JOB_FILE, output_ids, read_json

    n = bench.MIN_SIZE
    bench.build(n, tmp_path, 256)
    bench.build_nest(n, tmp_path)
    bench.build_refresh(n, tmp_path, 256)
    root = tmp_path / str(n)
    # refresh-few: FEW_CHANGED inputs changed in place since their rows, each of them purified (in data/)
    location = read_json(f"{root / 'refresh-few'}/{JOB_FILE}", {})["input"]["location"]
    record = read_record(str(root / "refresh-few"), {}, location)
    assert record is not None
    stamps = record.stamps
    changed = {id_ for id_, (_, content) in stamps.items() if content.startswith("earlier-")}
    purified, _ = output_ids(str(root / "refresh-few"), {})
    assert len(changed) == bench.FEW_CHANGED
    assert changed <= purified
    for fn in bench.FUNCTIONS:
        bench._setup(fn, n, root)()


@pytest.mark.parametrize("only", [None, "plan-refresh-few"])
def test_a_size_too_small_for_the_fixtures_is_refused_naming_the_least(bench, only, monkeypatch, capsys,
                                                                        tmp_path: Path) -> None:
    argv = ["scale_bench.py", "--sizes", f"{bench.MIN_SIZE - 1}", "--work", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv + (["--only", only] if only else []))
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--sizes: {bench.MIN_SIZE - 1} is too small" in error
    assert f"at least {bench.MIN_SIZE}" in error
    assert list(tmp_path.iterdir()) == []  # nothing built


@pytest.mark.parametrize("n", [61, 160, 10_000, 100_050])
def test_refresh_few_changes_purified_files_only(bench, n) -> None:
    """At N = 160 the old spacing (every 11th done file from the second) took the 100th, a reject."""
    done = [bench._file_id(i) for i in range(n - bench.NEW_FILES)]
    changed = bench._few_changed(done)
    assert len(set(changed)) == bench.FEW_CHANGED
    assert set(changed) <= set(bench._purified(done))
    assert not set(changed) & set(done[:: bench.REJECTED_EVERY])
