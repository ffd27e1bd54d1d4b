"""Mutation audit of the dry run's warning of input columns differing only in case (`plan.known_columns`,
`column_case_twins`): what it names that no test held."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobConfig
from pipeline.plan import plan_job
from tests.jobutil import image_bytes


def _twins(inp: Path, model: str, **options: object) -> list[dict]:
    config = JobConfig(input=str(inp), output=str(inp.parent / "out"), checkpoint=model, **options)
    return plan_job(config, dry_run=True).describe()["input"]["columns_differing_in_case"]


def test_a_zip_archives_folder_label_is_warned_of_beside_another_inputs_label_in_another_case(tmp_path: Path,
                                                                                             model: str) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    members = io.BytesIO()
    with zipfile.ZipFile(members, "w") as archive:
        archive.writestr("cat/0.png", image_bytes(16, 16, 1))
    (inp / "a.zip").write_bytes(members.getvalue())
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 2)], "Label": ["x"]}), inp / "t.parquet")
    assert _twins(inp, model, labels_from_folders=True) == [{"columns": ["Label", "label"],
                                                             "files": ["t.parquet", "a.zip"]}]
    assert _twins(inp, model) == []


def test_a_zip_archives_metadata_label_beside_its_folder_label_is_no_pair(tmp_path: Path, model: str) -> None:
    # the read writes the row's Label as metadata_Label beside the folder's label (`folder_metadata.with_row`): the
    # output holds no pair, and the dry run warns of none
    inp = tmp_path / "in"
    inp.mkdir()
    members = io.BytesIO()
    with zipfile.ZipFile(members, "w") as archive:
        archive.writestr("cat/0.png", image_bytes(16, 16, 1))
        archive.writestr("metadata.jsonl", '{"file_name": "cat/0.png", "Label": "tabby"}\n')
    (inp / "a.zip").write_bytes(members.getvalue())
    assert _twins(inp, model, labels_from_folders=True) == []


def test_a_metadata_rows_columns_count_for_its_image_whatever_the_files_before_it_in_its_folder(tmp_path: Path,
                                                                                              model: str) -> None:
    # 0.png has no row, 1.png has one: a folder's files without a row share their names, not those with one
    inp = tmp_path / "in"
    for folder in ("a", "b"):
        (inp / folder).mkdir(parents=True)
        for i in range(2):
            (inp / folder / f"{i}.png").write_bytes(image_bytes(16, 16, i))
    (inp / "a" / "metadata.csv").write_text("file_name,Caption\n1.png,a cat\n")
    (inp / "b" / "metadata.csv").write_text("file_name,caption\n0.png,a dog\n")
    assert _twins(inp, model) == [{"columns": ["Caption", "caption"], "files": ["a/1.png", "b/0.png"]}]


def test_each_spelling_is_named_with_the_first_file_by_path_holding_it(tmp_path: Path, model: str) -> None:
    # the same file named in every dry run whatever order the inputs are planned in: a/0.png before b.parquet
    inp = tmp_path / "in"
    (inp / "a").mkdir(parents=True)
    (inp / "a" / "0.png").write_bytes(image_bytes(16, 16, 0))
    (inp / "a" / "metadata.csv").write_text("file_name,Label\n0.png,x\n")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 1)], "Label": ["y"]}), inp / "b.parquet")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 2)], "label": ["z"]}), inp / "c.parquet")
    assert _twins(inp, model) == [{"columns": ["Label", "label"], "files": ["a/0.png", "c.parquet"]}]
