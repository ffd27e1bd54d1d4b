"""Names that look alike but differ in their bytes: an image-folder metadata row names its image in one Unicode
normalization (NFC, 'é' composed, as a CSV typed on Linux or Windows holds it) where the file, zip member or tar
member is named in the other (NFD, 'e' and a combining accent, as macOS writes names); and output columns whose names
differ only in case, which case-blind readers (DuckDB, Spark, Hive, Athena, BigQuery) take for one."""

from __future__ import annotations

import unicodedata

import pytest

from pipeline.job import run_job
from pipeline.plan import plan_job
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes, zip_bytes

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(("on_disk", "in_csv"), [(NFD, NFC), (NFC, NFD)])
def test_a_metadata_row_names_its_image_whichever_normalization_either_is_written_in(tmp_path, model, on_disk: str,
                                                                                    in_csv: str) -> None:
    inp = tmp_path / "in"
    (inp / "folder").mkdir(parents=True)
    (inp / "folder" / on_disk).write_bytes(image_bytes(16, 16, 0))
    (inp / "folder" / "metadata.csv").write_text(f"file_name,label\n{in_csv},3\n", encoding="utf-8")
    # a zip made on macOS, and a tarred image folder, each with a metadata file written elsewhere
    (inp / "d.zip").write_bytes(zip_bytes({f"train/{on_disk}": image_bytes(16, 16, 1),
                                           "train/metadata.jsonl": f'{{"file_name": "{in_csv}", "label": 4}}\n'.encode()}))
    (inp / "d.tar").write_bytes(tar_bytes({f"train/{on_disk}": image_bytes(16, 16, 2),
                                           "train/metadata.csv": f"file_name,label\n{in_csv},5\n".encode()}))
    run = run_job(small_job_config(tmp_path, model))["this_run"]
    assert (run["purified"], run["rejected"]) == (3, 0)
    assert run["folder_metadata"]["rows_without_image_file"] == 0
    data, _ = read_output(str(tmp_path / "out"))
    # the ids keep the names as stored, file_name as the metadata file wrote it: only the matching looks past the bytes
    key = on_disk.removesuffix(".png")
    assert sorted(zip(data["id"], data["label"], data["file_name"], strict=True)) == [
        (f"d.tar/train/{key}", 5, in_csv), (f"d.zip/train/{on_disk}", 4, in_csv), (f"folder/{on_disk}", 3, in_csv)]


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

