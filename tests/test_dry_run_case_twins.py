"""The dry run's warning of input columns whose names differ only in case (`input.columns_differing_in_case`), which
DuckDB, Spark, Hive, Athena and BigQuery take for one: it named those of Parquet and Arrow IPC files alone, though
partition folders (`Label=x/` beside `label=y/`), image folders' metadata files, zip archives' metadata members and
--labels-from-folders bring such pairs too, all known to the dry run without reading more (the listing's paths, the
metadata files the planning joins, the members its dry run reads). The run's summary named them only at its end."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.plan import plan_job
from tests.jobutil import image_bytes, tar_bytes


def _dry_run(capsys, inp: Path, model: str, **options: object) -> tuple[list[dict], str]:
    """The dry run's `input.columns_differing_in_case` (`plan_job(..., dry_run=True).describe()`) and what
    `--dry-run` prints, on one line; `options` as JobConfig's fields, given as the flags of the same names."""
    config = JobConfig(input=str(inp), output=str(inp.parent / "out"), checkpoint=model, **options)
    twins = plan_job(config, dry_run=True).describe()["input"]["columns_differing_in_case"]
    flags = [part for name, value in options.items()
             for part in (f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else value)]
    argv = ["--input", str(inp), "--output", str(inp.parent / "out"), "--checkpoint", model, "--dry-run", *flags]
    assert cli.main(argv) == 0
    return twins, " ".join(capsys.readouterr().out.split())


def test_partition_folders_whose_keys_differ_only_in_case_are_warned_of(tmp_path: Path, model: str, capsys) -> None:
    inp = tmp_path / "in"
    for folder, seed in (("Label=cat", 1), ("label=dog", 2)):
        (inp / folder).mkdir(parents=True)
        (inp / folder / "a.png").write_bytes(image_bytes(16, 16, seed))
    # a partition key the file's own column names in another case goes to partition_Split: no pair
    (inp / "Split=train").mkdir()
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 3)], "split": ["x"]}), inp / "Split=train" / "t.parquet")
    twins, said = _dry_run(capsys, inp, model, partitioning="hive")
    assert twins == [{"columns": ["Label", "label"], "files": ["Label=cat/a.png", "label=dog/a.png"]}]
    assert "warning: columns Label (Label=cat/a.png) and label (label=dog/a.png) differ only in case" in said
    assert not [t for t in twins if "split" in [c.lower() for c in t["columns"]]]
    # without --partitioning hive the folders give no columns
    assert _dry_run(capsys, inp, model)[0] == []


def test_metadata_files_and_labels_from_folders_whose_columns_differ_only_in_case_are_warned_of(
        tmp_path: Path, model: str, capsys) -> None:
    inp = tmp_path / "in"
    for folder, column in (("a", "Caption"), ("b", "caption")):
        (inp / folder).mkdir(parents=True)
        (inp / folder / "0.png").write_bytes(image_bytes(16, 16, 1))
        (inp / folder / "metadata.csv").write_text(f"file_name,{column},Label\n0.png,x,1\n")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 2)], "LABEL": [3]}), inp / "t.parquet")
    members = io.BytesIO()
    with zipfile.ZipFile(members, "w") as archive:
        archive.writestr("0.png", image_bytes(16, 16, 4))
        archive.writestr("metadata.jsonl", '{"file_name": "0.png", "CAPTION": "y"}\n')
    (inp / "z.zip").write_bytes(members.getvalue())
    twins, said = _dry_run(capsys, inp, model)
    assert twins == [{"columns": ["CAPTION", "Caption", "caption"], "files": ["z.zip", "a/0.png", "b/0.png"]},
                     {"columns": ["LABEL", "Label"], "files": ["t.parquet", "a/0.png"]}]
    assert "warning: columns Caption (a/0.png) and caption (b/0.png) differ only in case" not in said  # three of them
    assert "warning: columns CAPTION (z.zip) and Caption (a/0.png) and caption (b/0.png) differ only in case" in said
    # with --labels-from-folders the folder's label is the row's own: the metadata's Label goes to metadata_Label, and
    # the image files' label pairs with the Parquet file's LABEL
    twins, _ = _dry_run(capsys, inp, model, labels_from_folders=True)
    assert {"columns": ["LABEL", "label"], "files": ["t.parquet", "a/0.png"]} in twins
    assert not [t for t in twins if "Label" in t["columns"] or "metadata_Label" in t["columns"]]


def test_the_folder_label_a_tar_shard_gets_is_warned_of_beside_another_inputs_label_in_another_case(
        tmp_path: Path, model: str, capsys) -> None:
    """--labels-from-folders labels a tar shard's keys too (`tar_key_record`), from their folders inside it (or their
    `.cls`, a `label` as well): known before the shard is read, as a zip member's is, yet the dry run left it out."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "s.tar").write_bytes(tar_bytes({"test/cat/0.png": image_bytes(16, 16, 1), "dog.png": image_bytes(16, 16, 2)}))
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 3)], "Label": ["x"]}), inp / "t.parquet")
    twins, said = _dry_run(capsys, inp, model, labels_from_folders=True)
    assert twins == [{"columns": ["Label", "label"], "files": ["t.parquet", "s.tar"]}]
    assert "warning: columns Label (t.parquet) and label (s.tar) differ only in case" in said
    assert _dry_run(capsys, inp, model)[0] == []  # without the flag the shard gives no label
