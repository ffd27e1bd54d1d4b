"""Names that look alike (Unicode normalizations) and columns whose names differ only in case, as the mutation audit of
last session's matching and renaming found untested: two rows naming one image in other spellings, two metadata files
each naming an image in another spelling than its own, a name whose NFC form is ASCII; two .json keys of one tar key
differing in case; and the dry run's names of Parquet and Arrow IPC columns differing in case (as the output names
them, with the first file holding each)."""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from pipeline.plan import plan_job
from pipeline.sources import discover, read_unit
from pipeline.sources.folder_metadata import FolderMetadata, join_folder_metadata
from tests.jobutil import image_bytes, small_job_config, tar_bytes

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")


def _joined(images: list[str], metadata: dict[str, str]) -> FolderMetadata:
    """`join_folder_metadata` of image ids `images` (each listed at '/in/<id>') and metadata files (id -> text)."""
    found = FolderMetadata()
    join_folder_metadata({i: f"/in/{i}" for i in images}, {i: f"/in/{i}" for i in metadata},
                         lambda path: metadata[path.removeprefix("/in/")].encode(), found)
    return found


def test_two_rows_naming_one_image_in_two_other_spellings_are_each_joined_to_none_and_said() -> None:
    """'ẹ́' composed and written 'é' then the dot below are both the decomposed file's name under NFC: neither row names
    it as written, so which row is its own is not clear; neither is joined, rather than the last one by chance."""
    decomposed = unicodedata.normalize("NFD", "\u1eb9\u0301.png")
    composed, third = unicodedata.normalize("NFC", decomposed), "\u00e9\u0323.png"
    found = _joined([f"train/{decomposed}", "train/x.png"],
                    {"train/metadata.csv": f"file_name,label\n{composed},1\n{third},2\nx.png,3\n"})
    assert found.rows == {"/in/train/x.png": {"file_name": "x.png", "label": 3}}
    assert found.unmatched == 2
    assert all("in another Unicode normalization, as another row does" in e for e in found.unmatched_examples)


def test_of_two_metadata_files_each_naming_an_image_in_another_spelling_the_nearer_wins() -> None:
    """Neither row names train/café.png as written: the nearest file's row is its own, as for any image."""
    found = _joined([f"train/{NFD}"], {"metadata.csv": f"file_name,label\ntrain/{NFC},1\n",
                                       "train/metadata.csv": f"file_name,label\n{NFC},2\n"})
    assert found.rows[f"/in/train/{NFD}"]["label"] == 2
    assert found.unmatched == 0


def test_a_row_whose_name_is_an_ascii_files_under_nfc_names_it() -> None:
    """The Kelvin sign (U+212A) is 'K' under NFC, as macOS stores a name typed with it: the row names K.png."""
    found = _joined(["K.png"], {"metadata.csv": "file_name,label\n\u212a.png,1\n"})
    assert found.rows == {"/in/K.png": {"file_name": "\u212a.png", "label": 1}}


def test_two_json_keys_differing_in_case_beside_a_sidecars_column_keep_names_no_two_alike_in_case(tmp_path) -> None:
    """A .cls `label` and .json keys `Label`, `LABEL`: each .json one is renamed, and so apart from the other that
    case-blind readers (DuckDB, Spark) would take json_Label and json_LABEL for one column; `Note` beside `note`, of
    one .json alone, likewise."""
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({"0.png": image_bytes(16, 16, 0), "0.cls": b"7",
                                 "0.json": b'{"Label": "a", "LABEL": "b", "Note": "c", "note": "d"}'}))
    (unit,) = discover(str(shard), {})
    (record,) = [r for r in read_unit(unit, {}) if r["kind"] == "image"]
    meta = record["meta"]
    assert len({name.lower() for name in meta}) == len(meta), sorted(meta)
    assert sorted(meta.values(), key=str) == sorted([7, "a", "b", "c", "d"], key=str)  # every value kept
    assert meta["label"] == 7 and meta["json_Label"] == "a" and meta["Note"] == "c"


def test_the_dry_run_names_columns_differing_in_case_as_the_output_does_with_the_first_file_of_each(tmp_path,
                                                                                                  model) -> None:
    """Parquet and Arrow IPC files alike; a name a job column takes (`ID` beside the job's `id`) by its output name,
    input_ID; and of a name in several files, the first by name. A column of one spelling alone is none of them."""
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 0)], "Score": [1], "ID": ["x"], "caption": ["c"]}),
                   inp / "a.parquet")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 1)], "score": [2], "iD": ["y"]}), inp / "b.parquet")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 2)], "Score": [3]}), inp / "c.parquet")
    feather.write_feather(pa.table({"image": [image_bytes(16, 16, 3)], "Tag": ["t"], "TAG": ["u"]}), str(inp / "d.arrow"))
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()
    assert described["input"]["columns_differing_in_case"] == [
        {"columns": ["Score", "score"], "files": ["a.parquet", "b.parquet"]},
        {"columns": ["TAG", "Tag"], "files": ["d.arrow", "d.arrow"]},
        {"columns": ["input_ID", "input_iD"], "files": ["a.parquet", "b.parquet"]}]


def test_a_metadata_row_and_a_partition_folder_named_in_lower_case_beside_a_column_in_upper_case_are_renamed(
        tmp_path) -> None:
    """A tar key's .json `Note` and a metadata row's `note`; a row's own `Label` and a partition folder `label=x`: the
    second of each is renamed, whichever of the two is in upper case."""
    from pipeline.sources.partitions import add_partitions

    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({"0.png": image_bytes(16, 16, 0), "0.json": b'{"Note": "n"}',
                                 "metadata.csv": b"file_name,note\n0.png,9\n"}))
    (unit,) = discover(str(shard), {})
    (record,) = [r for r in read_unit(unit, {}, join_metadata=True) if r["kind"] == "image"]
    assert {k: v for k, v in record["meta"].items() if k.lower().endswith("note")} == {"Note": "n", "metadata_note": 9}
    record = {"meta": {"Label": "cat"}}
    add_partitions(record, {"label": "x"})
    assert record["meta"] == {"Label": "cat", "partition_label": "x"}
