"""Mutation audit of --labels-from-folders over tar shards (`webdataset_keys.tar_key_record`, `_folder_label`) and of
the reject note of a table of labels (`folder_metadata.table_note`): what a user's labels and rejects depend on that no
test held. A key at the top of an absolute-path tar has no label (null, not ''), nor one under '..'; a metadata row's
`Label` beside the folder's `label` is kept as metadata_Label, as in a folder; tables of each kind get the note."""

from __future__ import annotations

from pathlib import Path

from pipeline.sources import discover, read_unit
from pipeline.sources.folder_metadata import table_note
from tests.jobutil import image_bytes, tar_bytes


def _images(path: Path, members: dict[str, bytes], **options) -> dict[str, dict]:
    path.write_bytes(tar_bytes(members))
    (unit,) = discover(str(path))
    return {r["id"]: r["meta"] for r in read_unit(unit, labels_from_folders=True, **options) if r["kind"] == "image"}


def test_a_key_at_the_top_of_an_absolute_path_tar_has_no_label_not_an_empty_one(tmp_path: Path) -> None:
    # tar -P keeps the leading '/': '/x.png' lies at the shard's top, as 'x.png' and './x.png' do (and is named so)
    metas = _images(tmp_path / "abs.tar", {"/top.png": image_bytes(8, 8, 1), "/cat/0.png": image_bytes(8, 8, 2),
                                           "//dog/1.png": image_bytes(8, 8, 3)})
    assert {id_: meta["label"] for id_, meta in metas.items()} == {
        "abs.tar/top": None, "abs.tar/cat/0": "cat", "abs.tar/dog/1": "dog"}, metas


def test_a_key_whose_folder_leads_out_of_the_shard_has_no_label(tmp_path: Path) -> None:
    # '..' names no folder of the data set: not a class called '..'
    metas = _images(tmp_path / "s.tar", {"../x.png": image_bytes(8, 8, 1), "cat/../y.png": image_bytes(8, 8, 2),
                                         "cat/./z.png": image_bytes(8, 8, 3)})
    assert {id_: meta["label"] for id_, meta in metas.items()} == {
        "s.tar/../x": None, "s.tar/cat/../y": None, "s.tar/cat/z": "cat"}, metas


def test_a_metadata_rows_label_in_another_case_is_kept_beside_the_folders_as_metadata_label(tmp_path: Path) -> None:
    # as an image file's row is joined (`folder_metadata.with_row`): 'Label' and 'label' would be one column to
    # DuckDB, Spark, Hive, Athena and BigQuery
    metas = _images(tmp_path / "s.tar", {"train/cat/0.png": image_bytes(8, 8, 1),
                                         "train/metadata.csv": b"file_name,Label\ncat/0.png,tabby\n"},
                    join_metadata=True)
    assert metas == {"s.tar/train/cat/0": {"label": "cat", "file_name": "cat/0.png", "metadata_Label": "tabby"}}, metas


def test_each_kind_of_table_of_labels_gets_the_note_and_other_names_do_not() -> None:
    for name in ("GT-final_test.csv", "labels.TSV", "annotations.jsonl", "Final_Test/classes.json"):
        assert table_note(name).startswith(f"a .{name.rpartition('.')[2].lower()} table, not an image: labels or "), name
    for name in ("metadata.csv", "train/METADATA.JSONL", "csv", "folder.csv/readme", "x.png", "notes.txt"):
        assert table_note(name) == "", name


def test_a_folder_named_in_bytes_that_are_not_utf8_is_labelled_as_the_id_writes_it(tmp_path: Path) -> None:
    # a Latin-1 'café' in a GNU tar: the label is text Parquet can hold, the folder's name as the row's id says it
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes({"caf\u00e9/0.png": image_bytes(8, 8, 1)}, encoding="latin-1"))
    (unit,) = discover(str(path))
    (record,) = [r for r in read_unit(unit, labels_from_folders=True) if r["kind"] == "image"]
    assert record["id"] == "s.tar/caf\\xe9/0" and record["meta"] == {"label": "caf\\xe9"}, record
    record["meta"]["label"].encode("utf-8")  # no lone surrogate left in it


def test_a_tar_key_of_a_table_and_another_file_gets_no_table_note(tmp_path: Path) -> None:
    # the note says what the key's members are: where one of them is something else, it would say so of that one too
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes({"train/metadata.csv": b"file_name,label\n", "train/metadata.txt": b"notes",
                                "GT/labels.csv": b"Filename;ClassId\n", "GT/labels.txt": b"notes",
                                "GT/only.csv": b"Filename;ClassId\n", "0003.JSON": b'{"caption": "its image is missing"}'}))
    (unit,) = discover(str(path))
    errors = {r["id"]: r["error"] for r in read_unit(unit, join_metadata=False) if r["kind"] == "reject"}
    assert errors["s.tar/train/metadata"] == ("expected exactly one image member for key train/metadata, found "
                                              "metadata.csv, metadata.txt")
    assert errors["s.tar/GT/labels"] == "expected exactly one image member for key GT/labels, found labels.csv, labels.txt"
    assert errors["s.tar/0003"] == "expected exactly one image member for key 0003, found 0003.JSON"  # a sample's own
    assert errors["s.tar/GT/only"].startswith("expected exactly one image member for key GT/only, found only.csv: a .csv "
                                              "table, not an image"), errors


def test_a_tar_member_named_in_bytes_that_are_not_utf8_is_named_in_its_keys_reject_as_its_id_writes_it(
        tmp_path: Path) -> None:
    # a Latin-1 'café.csv': the reject's reason is made text once, whole; the member's name, made text before, was
    # escaped twice ('found caf\\\\xe9.csv' beside the key's 'caf\\xe9'), naming no file the user has
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes({"caf\u00e9.csv": b"Filename;ClassId\n"}, encoding="latin-1"))
    (unit,) = discover(str(path))
    (reject,) = [r for r in read_unit(unit) if r["kind"] == "reject"]
    assert reject["error"].startswith("expected exactly one image member for key caf\\xe9, found caf\\xe9.csv: "), reject
    reject["error"].encode("utf-8")  # no lone surrogate left in it, for the rejects' Parquet file
