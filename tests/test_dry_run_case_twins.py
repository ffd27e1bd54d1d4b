"""The dry run's warning of input columns whose names differ only in case (`input.columns_differing_in_case`), which
DuckDB, Spark, Hive, Athena and BigQuery take for one: it named those of Parquet and Arrow IPC files alone, though
partition folders (`Label=x/` beside `label=y/`), image folders' metadata files, zip archives' metadata members and
--labels-from-folders bring such pairs too, all known to the dry run without reading more (the listing's paths, the
metadata files the planning joins, the members its dry run reads). The run's summary named them only at its end."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.plan import plan_job
from pipeline.sources.sidecar_files import JSON_SAMPLE
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


def test_a_folders_json_sidecar_keys_are_read_from_a_sample_and_warned_of(tmp_path: Path, model: str, capsys,
                                                                           monkeypatch) -> None:
    """img2dataset's `00000/000000.json` gives its image's row a column of each key (`status`, ...): beside a table's
    `Status` that is a pair, which the dry run, reading no sidecar, did not see. It reads the first image's .json of
    each folder, up to JSON_SAMPLE files: not every image's."""
    inp = tmp_path / "in"
    for folder in range(JSON_SAMPLE + 4):
        for key in range(2):
            (inp / f"{folder:05d}").mkdir(parents=True, exist_ok=True)
            (inp / f"{folder:05d}" / f"00000{key}.jpg").write_bytes(image_bytes(16, 16, key, "JPEG"))
            (inp / f"{folder:05d}" / f"00000{key}.json").write_text(json.dumps({"status": "success", "key": key}))
            (inp / f"{folder:05d}" / f"00000{key}.txt").write_text("a caption")
    pq.write_table(pa.table({"image": [image_bytes(16, 16, 3)], "Status": ["ok"], "TXT": ["x"]}), inp / "t.parquet")
    import pipeline.sources.file_bytes as file_bytes

    read, real = [], file_bytes.read_bytes
    monkeypatch.setattr(file_bytes, "read_bytes", lambda path, *a, **k: read.append(path) or real(path, *a, **k))
    twins, said = _dry_run(capsys, inp, model)
    # the .txt's column by its name alone; the .json's keys from the first image's sidecar of each folder read
    assert twins == [{"columns": ["Status", "status"], "files": ["t.parquet", "00000/000000.jpg"]},
                     {"columns": ["TXT", "txt"], "files": ["t.parquet", "00000/000000.jpg"]}]
    assert "warning: columns Status (t.parquet) and status (00000/000000.jpg) differ only in case" in said
    assert len(read) == 2 * JSON_SAMPLE  # (the plan's and the command line's dry runs)
    assert {Path(p).name for p in read} == {"000000.json"}


def test_a_metadata_row_beside_a_json_sidecar_is_named_as_the_run_names_it(tmp_path: Path, model: str, capsys) -> None:
    """A metadata row's `Status` beside a .json sidecar's `status` is `metadata_Status` in the image's row: no pair, in
    the image read for its sidecar nor in one whose sidecar was not read (its columns are left out)."""
    inp = tmp_path / "in"
    inp.mkdir()
    for key in range(2):
        (inp / f"{key}.jpg").write_bytes(image_bytes(16, 16, key, "JPEG"))
        (inp / f"{key}.json").write_text(json.dumps({"status": "success"}))
    (inp / "metadata.csv").write_text("file_name,Status\n0.jpg,a\n1.jpg,b\n")
    assert _dry_run(capsys, inp, model)[0] == []
