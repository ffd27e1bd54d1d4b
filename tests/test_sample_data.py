"""`python -m pipeline.sample_data`, the embedded sample's generator, as its docstring runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.sample_data as sample_data
from tests.jobutil import run_main

PACKAGE_SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "sample"


def test_help_explains_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    # every argument was the folder: --help wrote the sample into a folder named '--help'
    monkeypatch.chdir(tmp_path)
    assert run_main(sample_data, ["--help"]) == 0
    assert "positional arguments" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_without_a_folder_it_regenerates_the_packages_own_wherever_it_is_run(tmp_path: Path, monkeypatch) -> None:
    # it wrote pipeline/assets/sample under the current folder, wherever that was
    monkeypatch.chdir(tmp_path)
    written = []
    monkeypatch.setattr(sample_data, "write_sample", written.append)
    assert run_main(sample_data, []) == 0
    assert written == [PACKAGE_SAMPLE] and list(tmp_path.iterdir()) == []


def test_a_folder_gets_the_shipped_samples_bytes_and_a_file_is_refused(tmp_path: Path, capsys) -> None:
    assert run_main(sample_data, [str(tmp_path / "s")]) == 0
    for name in ("sample-00.tar", "sample-01.tar"):
        assert (tmp_path / "s" / name).read_bytes() == (PACKAGE_SAMPLE / name).read_bytes()
    capsys.readouterr()
    (tmp_path / "a-file").write_text("x")
    assert run_main(sample_data, [str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert "a-file is a file; give a folder" in err and "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "x"


@pytest.mark.parametrize("argv", [["--count", "3"], ["a", "b"]])
def test_an_unknown_option_or_a_second_folder_is_a_usage_error(tmp_path: Path, monkeypatch, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(sample_data, argv) == 2
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_refused_not_taken_as_the_current_one(tmp_path: Path, monkeypatch, capsys) -> None:
    # `python -m pipeline.sample_data "$DIR"` with DIR unset wrote the two shards into whatever folder it ran in
    monkeypatch.chdir(tmp_path)
    assert run_main(sample_data, [""]) == 2
    assert "the folder is empty" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
