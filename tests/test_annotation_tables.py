"""A table of labels shipped beside the images under its own name (GTSRB's `Final_Test/GT-final_test.csv`, `;`-separated,
`Filename` ... `ClassId`) is a reject, as any file that is no image: its reason names the file and says how the job
would join such a table's columns. Before (found running the job on `gtsrb-test.tar.xz`, Dec 7) the tar's said
`expected exactly one image member for key Final_Test/GT-final_test, found csv`, and a folder's `not a recognised
image format`: a user could not tell which file was meant, nor that the labels could be kept."""

from __future__ import annotations

import pytest

from tests.jobutil import image_bytes, read_output, small_job_argv, tar_bytes

GT_CSV = b"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000.ppm;53;54;6;5;48;49;16\n"


def _cli(argv: list[str]) -> int:
    from pipeline.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


@pytest.mark.usefixtures("ray_local")
def test_a_csv_of_labels_beside_the_images_is_a_reject_that_names_it_and_says_how_to_join_one(tmp_path, model) -> None:
    folder = tmp_path / "in" / "Final_Test"
    (folder / "Images").mkdir(parents=True)
    (folder / "Images" / "00000.ppm").write_bytes(image_bytes(8, 8, 1, "PPM"))
    (folder / "GT-final_test.csv").write_bytes(GT_CSV)
    (tmp_path / "in" / "gtsrb.tar").write_bytes(tar_bytes({
        "Final_Test/GT-final_test.csv": GT_CSV, "Final_Test/Images/00000.ppm": image_bytes(8, 8, 1, "PPM"),
        "Final_Test/Images/GT-final_test.test.csv": GT_CSV, "train/metadata.csv": b"file_name,label\n",
        "0002.json": b'{"caption": "a sample whose image is missing"}'}))
    assert _cli(small_job_argv(tmp_path, model, "--join-metadata", "false")) == 0
    data, rejects = read_output(str(tmp_path / "out"))
    assert sorted(data["id"]) == ["Final_Test/Images/00000.ppm", "gtsrb.tar/Final_Test/Images/00000"]
    errors = dict(zip(rejects["id"], rejects["error"], strict=True))
    how = ("not an image: labels or annotations? the job joins one named metadata.csv or metadata.jsonl, with a "
           "file_name column naming each image relative to its folder, to those images' rows (docs/job.md, Inputs); "
           "this one is not joined")
    assert errors["Final_Test/GT-final_test.csv"] == f"not a recognised image format (a .csv table, {how})"
    assert errors["gtsrb.tar/Final_Test/GT-final_test"] == (
        f"expected exactly one image member for key Final_Test/GT-final_test, found GT-final_test.csv: a .csv table, {how}")
    assert errors["gtsrb.tar/Final_Test/Images/GT-final_test"].startswith(
        "expected exactly one image member for key Final_Test/Images/GT-final_test, found GT-final_test.test.csv: a .csv "
        "table, not an image")
    # a metadata file the run was told not to join says so, not that it would be joined
    assert errors["gtsrb.tar/train/metadata"] == ("expected exactly one image member for key train/metadata, found "
                                                  "metadata.csv: an image folder's metadata file, not joined to the "
                                                  "images with --join-metadata false")
    # a WebDataset sample's .json sidecar without its image is that: no table
    assert errors["gtsrb.tar/0002"] == "expected exactly one image member for key 0002, found 0002.json"
    assert len(errors) == 5
