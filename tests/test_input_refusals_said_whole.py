"""Inputs the listing refuses to read as given (two files that would share one id) stop the run naming every file and
the fix, as docs/job.md says ("naming both", "rename one"). The command line said them as a listing that failed,
`error: cannot list input IN: ValueError: ...`, cut to a reject reason's 300 characters: with the paths of a real disk
the second file of a pair and the fix were cut off."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.jobutil import image_bytes


def _deep_input(tmp_path: Path) -> Path:
    folder = tmp_path / "datasets" / "incoming-images-from-the-field" / "2026-12-07"  # a path as long as a real one's
    folder.mkdir(parents=True)
    return folder


def _refusal(folder: Path, tmp_path: Path, capsys) -> str:
    assert main(["--input", str(folder), "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {folder}: ") and err.count("\n") == 1, err
    assert "cannot list" not in err and "ValueError" not in err and "…" not in err, err
    assert not (tmp_path / "out").exists()
    return err


def test_a_name_not_utf8_beside_the_file_named_like_its_escape_names_both_and_the_fix(tmp_path, capsys) -> None:
    folder = _deep_input(tmp_path)
    try:
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:
            f.write(image_bytes(8, 8, 0))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    (folder / "caf\\xe9.png").write_bytes(image_bytes(8, 8, 1))
    err = _refusal(folder, tmp_path, capsys)
    assert "1 pair(s) of input files have one id" in err, err
    assert err.count(" (as bytes: b'") == 2, err  # each named, also by its bytes
    assert "caf\\\\xe9.png'" in err and "caf\\xe9.png'" in err, err
    assert err.rstrip().endswith("; rename one"), err


def test_files_whose_ids_a_parquet_files_rows_would_have_are_all_named_with_the_fix(tmp_path, capsys) -> None:
    folder = _deep_input(tmp_path)
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)]}), folder / "t.parquet")
    for row in range(5):
        (folder / f"t.parquet#{row}").write_bytes(image_bytes(8, 8, row))
    err = _refusal(folder, tmp_path, capsys)
    assert "5 input file(s) have ids that a tar or zip member's or a Parquet row's id could equal" in err, err
    for row in range(5):
        assert f"{folder}/t.parquet#{row} (beside {folder}/t.parquet)" in err, err
    assert err.rstrip().endswith("; rename them"), err


def test_a_web_folder_linking_endless_subfolders_is_said_with_the_limit_and_the_fix(tmp_path, capsys) -> None:
    from pipeline.sources.walk import MAX_WEB_DEPTH
    from tests.test_hostile_inputs import _MadeUpFolders
    from tests.webutil import serving

    class Deep(_MadeUpFolders):  # every page links a/ below it
        pages: list[str] = []

    with serving(tmp_path, Deep) as url:
        assert main(["--input", url, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {url}: web folder {url} links subfolders more than {MAX_WEB_DEPTH} deep"), err
    assert "cannot list" not in err and "WebFolderTooLarge" not in err and "…" not in err, err
    assert err.rstrip().endswith("copy the data to an object store or local disk"), err


def test_an_input_folder_that_cannot_be_listed_is_named_with_the_fix(tmp_path, capsys, monkeypatch) -> None:
    from fsspec.implementations.local import LocalFileSystem

    folder = _deep_input(tmp_path)
    (folder / "a.png").write_bytes(image_bytes(8, 8, 0))
    (folder / "photos-from-the-second-camera" / "locked").mkdir(parents=True)
    (folder / "photos-from-the-second-camera" / "locked" / "b.png").write_bytes(image_bytes(8, 8, 1))
    ls = LocalFileSystem.ls

    def denied(self, path, detail=False, **kwargs):  # as a folder without read permission answers (root reads any)
        if path.rstrip("/").endswith("/locked"):
            raise PermissionError(13, "Permission denied", path)
        return ls(self, path, detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", denied)
    assert main(["--input", str(folder), "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    locked = folder / "photos-from-the-second-camera" / "locked"
    assert err.startswith(f"error: input folder {locked} cannot be listed (PermissionError: [Errno 13] Permission "
                          "denied"), err
    assert "cannot list input" not in err and "…" not in err and err.count("\n") == 1, err
    assert err.rstrip().endswith("make it readable, or move it out of the input (a folder whose name starts with '_' "
                                 "or '.' is skipped)"), err


@pytest.mark.parametrize(("column", "reason"), [("label", "column 'label' has type int64, not image bytes or pixel arrays"),
                                                ("photo", "image column 'photo' not in Parquet columns ['image', 'label']")])
def test_an_image_column_the_first_parquet_file_cannot_give_names_the_file_apart(tmp_path, capsys, column,
                                                                                   reason) -> None:
    # It read "... not image bytes or pixel arrays of /in/t.parquet", as if the pixel arrays were the file's
    folder = _deep_input(tmp_path)
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)], "label": [3]}), folder / "t.parquet")
    assert main(["--input", str(folder), "--output", str(tmp_path / "out"), "--dry-run", "--image-column", column]) == 2
    assert capsys.readouterr().err == f"error: --image-column {column}: {reason}, in {folder / 't.parquet'}\n"
