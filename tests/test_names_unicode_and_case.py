"""Names that look alike but differ in their bytes: an image-folder metadata row names its image in one Unicode
normalization (NFC, 'é' composed, as a CSV typed on Linux or Windows holds it) where the file, zip member or tar
member is named in the other (NFD, 'e' and a combining accent, as macOS writes names); and output columns whose names
differ only in case, which case-blind readers (DuckDB, Spark, Hive, Athena, BigQuery) take for one."""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.job import run_job
from pipeline.plan import plan_job
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes, zip_bytes

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")


@pytest.mark.usefixtures("ray_local")
def test_a_metadata_row_names_its_image_whichever_normalization_either_is_written_in(tmp_path, model) -> None:
    # both ways round in one run, each under a folder of its own: the image named in NFD and its row in NFC (nfd/),
    # and the other way (nfc/)
    spellings = {"nfd": (NFD, NFC), "nfc": (NFC, NFD)}
    for n, (top, (on_disk, in_csv)) in enumerate(spellings.items()):
        inp = tmp_path / "in" / top
        (inp / "folder").mkdir(parents=True)
        (inp / "folder" / on_disk).write_bytes(image_bytes(16, 16, 3 * n))
        (inp / "folder" / "metadata.csv").write_text(f"file_name,label\n{in_csv},3\n", encoding="utf-8")
        # a zip made on macOS, and a tarred image folder, each with a metadata file written elsewhere
        (inp / "d.zip").write_bytes(zip_bytes({f"train/{on_disk}": image_bytes(16, 16, 3 * n + 1), "train/metadata.jsonl":
                                               f'{{"file_name": "{in_csv}", "label": 4}}\n'.encode()}))
        (inp / "d.tar").write_bytes(tar_bytes({f"train/{on_disk}": image_bytes(16, 16, 3 * n + 2),
                                               "train/metadata.csv": f"file_name,label\n{in_csv},5\n".encode()}))
    run = run_job(small_job_config(tmp_path, model))["this_run"]
    assert (run["purified"], run["rejected"]) == (6, 0)
    assert run["folder_metadata"]["rows_without_image_file"] == 0
    data, _ = read_output(str(tmp_path / "out"))
    rows = sorted(zip(data["id"], data["label"], data["file_name"], strict=True))
    for top, (on_disk, in_csv) in spellings.items():
        # the ids keep the names as stored, file_name as the metadata file wrote it: only the matching looks past the
        # bytes
        key = on_disk.removesuffix(".png")
        assert [row for row in rows if row[0].startswith(f"{top}/")] == [
            (f"{top}/d.tar/train/{key}", 5, in_csv), (f"{top}/d.zip/train/{on_disk}", 4, in_csv),
            (f"{top}/folder/{on_disk}", 3, in_csv)]
    assert len(rows) == 6


@pytest.mark.usefixtures("ray_local")
def test_a_row_written_since_in_the_other_spelling_is_said_changed_and_a_row_as_written_wins_over_a_nearer_one(
        tmp_path, model) -> None:
    """One pair of runs, two folders. train/: as an earlier version left it, the image purified without a row, its
    NFC row naming nothing; the row written since is said changed and refreshed.
    wins/: the root's metadata file names wins/café.png as macOS wrote it; wins/'s own, typed elsewhere, in NFC. Before
    NFC matching the image took the root's row (wins/'s named no file); the nearer file's NFC row took it from then
    on, so an output made before said the image changed for its row, and a scheduled --refresh-changed wrote it again
    with another label."""
    folder, wins = tmp_path / "in" / "train", tmp_path / "in" / "wins"
    for made in (folder, wins):
        made.mkdir(parents=True)
    (folder / NFD).write_bytes(image_bytes(16, 16, 0))
    (folder / "metadata.csv").write_text("file_name,label\nother.png,3\n", encoding="utf-8")
    (wins / NFD).write_bytes(image_bytes(16, 16, 1))
    (tmp_path / "in" / "metadata.csv").write_text(f"file_name,label\nwins/{NFD},1\n", encoding="utf-8")
    (wins / "metadata.csv").write_text(f"file_name,label\n{NFC},2\n", encoding="utf-8")
    assert run_job(small_job_config(tmp_path, model))["this_run"]["purified"] == 2
    data, _ = read_output(str(tmp_path / "out"))
    assert dict(zip(data["id"], data["label"], strict=True))[f"wins/{NFD}"] == 1

    (folder / "metadata.csv").write_text(f"file_name,label\n{NFC},3\n", encoding="utf-8")
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (dry["image_files_metadata_changed"], dry["examples"]) == (1, [f"train/{NFD}"])
    # and the other way round: the nearer file naming it as written wins, as a nearer file's row always does
    (tmp_path / "in" / "metadata.csv").write_text(f"file_name,label\nwins/{NFC},1\n", encoding="utf-8")
    (wins / "metadata.csv").write_text(f"file_name,label\n{NFD},2\n", encoding="utf-8")
    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert summary["this_run"]["refreshed"]["rows_replaced"] == 2
    data, _ = read_output(str(tmp_path / "out"))
    assert list(zip(data["id"], data["label"], strict=True)) == [(f"train/{NFD}", 3), (f"wins/{NFD}", 2)]


def test_a_row_that_would_name_two_images_or_an_image_another_row_names_is_joined_to_none_and_said(tmp_path,
                                                                                                     model) -> None:
    # 'ẹ́' has three spellings: composed (NFC), decomposed (NFD), and 'é' with the dot below after it (neither)
    composed, decomposed = unicodedata.normalize("NFC", "\u1eb9\u0301.png"), unicodedata.normalize("NFD", "\u1eb9\u0301.png")
    third = "\u00e9\u0323.png"
    assert len({composed, decomposed, third}) == 3 and unicodedata.normalize("NFC", third) == composed
    folder = tmp_path / "in" / "train"
    folder.mkdir(parents=True)
    for n, name in enumerate([composed, decomposed, NFD, "x.png"]):
        (folder / name).write_bytes(image_bytes(16, 16, n))
    # the third spelling names both files; NFC's café names the NFD file, which the next row names as it is written
    (folder / "metadata.csv").write_text(f"file_name,label\n{third},1\n{NFC},2\n{NFD},3\nx.png,4\n", encoding="utf-8")
    report = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]["folder_metadata"]
    assert (report["image_files_joined"], report["rows_without_image_file"]) == (2, 2)
    assert report["rows_without_image_file_examples"] == [
        f"train/metadata.csv: {third} (2 image files have this name in other Unicode normalizations, so it is joined "
        r"to none: train/e\u0323\u0301.png, train/\u1eb9\u0301.png)",
        f"train/metadata.csv: {NFC} (names train/cafe\\u0301.png in another Unicode normalization, as another row "
        "does: each image takes one row)"]


@pytest.mark.usefixtures("ray_local")
def test_a_column_named_in_another_case_beside_a_rows_own_is_renamed_as_one_of_the_same_name(tmp_path, model) -> None:
    inp = tmp_path / "in"
    # a tar key's .cls gives `label` and its .json `note`: the .json's `Label` and a metadata row's `NOTE` are kept
    (inp / "Label=x").mkdir(parents=True)
    (inp / "s.tar").write_bytes(tar_bytes({"0.png": image_bytes(16, 16, 0), "0.cls": b"7",
                                           "0.json": b'{"Label": "cat", "note": "n"}',
                                           "metadata.csv": b"file_name,NOTE\n0.png,9\n"}))
    # --labels-from-folders gives `label`: a metadata row's `Label` and a partition folder's `Label=x` are kept too
    (inp / "Label=x" / "cats").mkdir()
    (inp / "Label=x" / "cats" / "0.png").write_bytes(image_bytes(16, 16, 1))
    (inp / "Label=x" / "cats" / "metadata.csv").write_text("file_name,Label\n0.png,tabby\n")
    run = run_job(small_job_config(tmp_path, model, labels_from_folders=True, partitioning="hive"))["this_run"]
    assert (run["purified"], run["rejected"]) == (2, 0)
    table = pq.read_table(str(tmp_path / "out" / "data"))
    rows = {r["id"]: {k: v for k, v in r.items() if k in ("label", "json_Label", "note", "metadata_NOTE",
                                                             "metadata_Label", "partition_Label") and v is not None}
            for r in table.to_pylist()}
    # `label` is text: the tar's 7 and the folder's `cats` share no other type
    assert rows == {"s.tar/0": {"label": "7", "json_Label": "cat", "note": "n", "metadata_NOTE": 9},
                    "Label=x/cats/0.png": {"label": "cats", "metadata_Label": "tabby", "partition_Label": "x"}}
    assert len({name.lower() for name in table.column_names}) == len(table.column_names)
    assert run["columns_differing_in_case"] == []


@pytest.mark.usefixtures("ray_local")
def test_parquet_columns_differing_only_in_case_are_said_before_and_after_and_a_metadata_file_holding_both_is_a_reject(
        tmp_path, model, capsys) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 0)], "Score": [1], "Note": ["x"], "note": ["y"]}),
                   inp / "a.parquet")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 1)], "score": [2]}), inp / "b.parquet")
    (inp / "imgs").mkdir()
    (inp / "imgs" / "0.png").write_bytes(image_bytes(16, 16, 2))
    (inp / "imgs" / "metadata.jsonl").write_text('{"file_name": "0.png", "Caption": "a"}\n{"file_name": "1.png", '
                                                 '"caption": "b"}\n')
    config = small_job_config(tmp_path, model)
    # the dry run reads the Parquet footers anyway: it names them before any work
    described = plan_job(config, dry_run=True).describe()
    assert described["input"]["columns_differing_in_case"] == [
        {"columns": ["Note", "note"], "files": ["a.parquet", "a.parquet"]},
        {"columns": ["Score", "score"], "files": ["a.parquet", "b.parquet"]}]
    cli.print_plan(described)
    said = " ".join(capsys.readouterr().out.split())
    assert "warning: columns Score (a.parquet) and score (b.parquet) differ only in case: the output keeps both" in said
    summary = run_job(config)
    run = summary["this_run"]
    assert (run["purified"], run["rejected"]) == (3, 1)
    # kept as the inputs name them (each is that input's own), and said: the end of the run and the summary name them
    assert run["columns_differing_in_case"] == [["Note", "note"], ["Score", "score"]]
    data, rejects = read_output(str(tmp_path / "out"))
    assert {"Score", "score"} <= set(data.columns) and "Caption" not in data.columns
    assert list(rejects["id"]) == ["imgs/metadata.jsonl"]
    assert rejects["error"][0].endswith("line 2: columns Caption and caption differ only in case, which readers that "
                                        "ignore case (DuckDB, Spark, Hive, Athena) take for one column: rename one")
    cli._print_run_summary(config, summary)
    said = " ".join(capsys.readouterr().err.split())
    assert "warning: data/ holds columns whose names differ only in case: Note and note; Score and score. DuckDB" in said


@pytest.mark.parametrize(("name", "text", "said"), [
    ("metadata.csv", "file_name,Label,label\n0.png,1,2\n", "line 1: columns Label and label differ only in case"),
    ("metadata.jsonl", '{"file_name": "0.png", "label": 1}\n\n{"file_name": "1.png", "LABEL": 2}\n',
     "line 3: columns label and LABEL differ only in case"),
])
def test_a_metadata_file_with_columns_differing_only_in_case_cannot_be_joined(name: str, text: str, said: str) -> None:
    from pipeline.sources.folder_metadata import MetadataProblem, parse_metadata

    with pytest.raises(MetadataProblem, match=said):
        parse_metadata(name, text.encode())
