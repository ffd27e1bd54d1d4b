"""A run over an export folder (jobs/export.py's DIR: the images, and the manifest.csv or manifest.jsonl listing them),
to purify it again or to check it: the manifest is no input. It was a reject, 'not a recognised image format (a .csv
table, not an image ...)'; it is skipped as a data set's metadata files are, named in the dry run and the run's summary
with the hidden entries. Told by its header, not by its name alone: a user's own manifest.csv stays an input."""

from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.export import MANIFEST_NAME, MANIFESTS, export_images
from pipeline.job import run_job
from pipeline.sources import HiddenSkipped, discover, hidden_note
from pipeline.sources.export_manifests import EXPORT_MANIFESTS
from tests.jobutil import image_bytes, read_output, small_job_argv, small_job_config

HEADER = ["id", "path", "width", "height", "source", "source_sha256", "original_mode", "label"]


def _listed(root) -> tuple[list[str], HiddenSkipped]:
    hidden = HiddenSkipped()
    units = discover(str(root), hidden=hidden)
    return sorted(p.rsplit(str(root) + "/", 1)[-1] for u in units for p in u.paths), hidden


def test_the_names_are_those_the_export_writes() -> None:
    assert EXPORT_MANIFESTS == tuple(f"{MANIFEST_NAME}.{kind}" for kind in MANIFESTS if kind != "none")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_an_export_manifest_is_skipped_as_metadata_and_named(tmp_path, kind) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "0.png").write_bytes(image_bytes(8, 8, 0))
    row = ["cats/0.jpg", "cats/0.png", 8, 8, "/in/cats/0.jpg", "ab" * 32, "RGB", "cat"]
    lines = ([",".join(HEADER), ",".join(map(str, row))] if kind == "csv" else
             [json.dumps(dict(zip(HEADER, row, strict=True)))])
    (tmp_path / f"manifest.{kind}").write_text("\n".join(lines) + "\n")
    # an export written into a folder of the input: its manifest there too
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / f"manifest.{kind}").write_text("\r\n".join(lines) + "\r\n")
    listed, hidden = _listed(tmp_path)
    assert listed == ["cats/0.png"]
    assert (hidden.count, sorted(hidden.examples)) == (2, [f"exported/manifest.{kind}", f"manifest.{kind}"])
    note = hidden_note(hidden.count, hidden.examples)
    assert "an export's manifest.csv / manifest.jsonl (jobs/export.py), which lists the images beside it" in note
    assert "Hugging Face" not in note


@pytest.mark.parametrize(("name", "text"), [
    ("manifest.csv", "file,label\na.png,cat\n"),  # a user's own table of that name
    ("manifest.csv", "id,path\na,b\n"),  # not the output's columns
    ("manifest.jsonl", '{"path": "a.png", "id": 1, "width": 1, "height": 1, "source": "s", "source_sha256": "x"}\n'),
    ("manifest.jsonl", "[1, 2]\n"),
    ("manifest.csv", ""),
    ("MANIFEST.csv", ",".join(HEADER) + "\n"),  # the export writes the name in lower case
])
def test_a_file_that_is_no_export_manifest_stays_an_input(tmp_path, name, text) -> None:
    (tmp_path / name).write_text(text)
    listed, hidden = _listed(tmp_path)
    assert listed == [name] and hidden.count == 0


@pytest.mark.usefixtures("ray_local")
def test_a_run_over_an_export_folder_purifies_its_images_and_skips_its_manifest(tmp_path, model, capsys) -> None:
    (tmp_path / "in" / "cats").mkdir(parents=True)
    for i in range(2):
        (tmp_path / "in" / "cats" / f"{i}.jpg").write_bytes(image_bytes(8, 8, i, "JPEG"))
    run_job(small_job_config(tmp_path, model))
    export_images(str(tmp_path / "out"), str(tmp_path / "dir"))
    assert (tmp_path / "dir" / "manifest.csv").is_file()

    again = small_job_config(tmp_path, model, input=str(tmp_path / "dir"), output=str(tmp_path / "again"))
    capsys.readouterr()
    argv = ["--input", str(tmp_path / "dir"), "--output", str(tmp_path / "again"), *small_job_argv(tmp_path, model)[4:]]
    assert cli.main([*argv, "--dry-run"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "2 image files to read" in said
    assert "1 hidden entry (names starting with . or _; an export's manifest.csv / manifest.jsonl" in said
    summary = run_job(again)
    assert (summary["this_run"]["read"], summary["this_run"]["purified"], summary["this_run"]["rejected"]) == (2, 2, 0)
    assert (summary["this_run"]["hidden_skipped"], summary["this_run"]["hidden_skipped_examples"]) == (1, ["manifest.csv"])
    data, rejected = read_output(str(tmp_path / "again"))
    assert sorted(data["id"]) == ["cats/0.png", "cats/1.png"] and rejected.empty
