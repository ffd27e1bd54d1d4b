"""A container refused whole for what its own bytes say (not a file of its kind, a Feather version 1 file, an encrypted
Parquet file or zip directory, a column named twice, no column --image-column names) is refused again each time it is
read unchanged: its one reject is lasting, recorded with it in _containers/, and a scheduled --incremental run skips it
unread (with nothing else new, it starts no Ray), as it skips a table without an image column
(tests/test_tables_without_images.py). A read that a storage error broke off, or that found the file cut short or
damaged, is read again."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import print_plan
from pipeline.config import JobConfig
from pipeline.job import run_job
from pipeline.ledger import LEDGER_DIR
from pipeline.plan import plan_job
from pipeline.sources import discover, ids_digest, read_unit
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes, zip_bytes
from tests.test_tfrecord_inputs import example, shard

TWICE = pa.Table.from_arrays([pa.array([image_bytes(8, 8, 0)]), pa.array([1]), pa.array([2])],
                             names=["image", "label", "label"])
NOT_A_FILE_OF_ITS_KIND = b"an HTML error page saved under the shard's name, say\n" * 20


def _columns_encrypted(path) -> None:
    """A Parquet file of images whose image column is encrypted under a plain footer (Parquet modular encryption)."""
    encryption = pytest.importorskip("pyarrow.parquet.encryption")

    class Kms(encryption.KmsClient):  # keys kept in the file, as a test's in-memory KMS does
        def __init__(self, config) -> None:
            super().__init__()

        def wrap_key(self, key, master) -> bytes:
            return base64.b64encode(key)

        def unwrap_key(self, wrapped, master) -> bytes:
            return base64.b64decode(wrapped)

    config = encryption.EncryptionConfiguration(footer_key="f", column_keys={"c": ["image"]}, plaintext_footer=True,
                                                double_wrapping=False)
    properties = encryption.CryptoFactory(Kms).file_encryption_properties(encryption.KmsConnectionConfig(), config)
    table = pa.table({"image": [image_bytes(8, 8, i) for i in range(3)], "label": [1, 2, 3]})
    with pq.ParquetWriter(path, table.schema, encryption_properties=properties) as writer:
        writer.write_table(table)


def _zip_directory_encrypted() -> bytes:
    """A zip archive as PKWARE's central directory encryption leaves it: each local header flagged (bit 13: its values
    masked; bit 0: encrypted), the directory's bytes unreadable without the password."""
    data = bytearray(zip_bytes({"a.jpg": image_bytes(8, 8, 0, "JPEG"), "b.jpg": image_bytes(8, 8, 1, "JPEG")}))
    at = -1
    while (at := data.find(b"PK\x03\x04", at + 1)) >= 0:
        data[at + 6] |= 0x01
        data[at + 7] |= 0x20
    start, end = data.find(b"PK\x01\x02"), data.rfind(b"PK\x05\x06")
    data[start:end] = bytes((i * 97 + 13) % 256 for i in range(end - start))
    return bytes(data)


def _bad_containers(root) -> dict[str, str]:
    """Containers that reading can only refuse while they are unchanged, by file name: the start of each one's reason."""
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(TWICE, root / "twice.parquet")
    for name in ("not.parquet", "not.zip", "not.tar", "not.tfrecord"):
        (root / name).write_bytes(NOT_A_FILE_OF_ITS_KIND)
    _columns_encrypted(root / "columns.parquet")
    (root / "locked.zip").write_bytes(_zip_directory_encrypted())
    (root / "png.arrow").write_bytes(image_bytes(8, 8, 0))  # an image saved under a table's name
    (root / "old.feather").write_bytes(b"FEA1" + NOT_A_FILE_OF_ITS_KIND)
    # Parquet modular encryption's encrypted footer ends the file with 'PARE'
    (root / "secret.parquet").write_bytes(b"PAR1" + NOT_A_FILE_OF_ITS_KIND + b"\x10\x00\x00\x00PARE")
    return {"twice.parquet": "unreadable Parquet file: ValueError: columns named more than once ('label')",
            "not.parquet": "unreadable Parquet file: neither a Parquet nor an Arrow IPC file (ArrowInvalid: Parquet "
                           "magic bytes not found",
            "old.feather": "unreadable Arrow IPC file: a Feather version 1 file, which is not read",
            "secret.parquet": "unreadable Parquet file: an encrypted Parquet file (its footer encrypted: Parquet "
                              "modular encryption), which the job is given no keys to read",
            "columns.parquet": "unreadable Parquet file: an encrypted Parquet file (its columns encrypted, its footer "
                               "plain: Parquet modular encryption), which the job is given no keys to read",
            "png.arrow": "unreadable Arrow IPC file: not an Arrow IPC file: it starts with neither ARROW1 (a file's, "
                         "Feather version 2's), a stream's marker, nor the length of a first message that fits in it "
                         "(its first bytes: 89 50 4e 47 0d 0a 1a 0a)",
            "not.zip": "unreadable zip file: not a zip file: no end of a zip's central directory in its last 64 KiB",
            "locked.zip": "unreadable zip file: a zip archive whose central directory (the list of its members) is "
                          "encrypted (PKWARE's central directory encryption), which the job is given no password",
            "not.tar": "tar shard unreadable: not a tar file: its first block is no tar header",
            "not.tfrecord": "TFRecord file unreadable after 0 records: record 0's length does not match its CRC"}


def _read(root, **options) -> dict[str, list[dict]]:
    return {os.path.basename(unit.paths[0]): list(read_unit(unit, **options)) for unit in discover(str(root))}


def test_a_container_its_bytes_refuse_is_read_to_its_end_with_a_lasting_reject(tmp_path) -> None:
    said = _bad_containers(tmp_path)
    for name, records in _read(tmp_path).items():
        (reject,) = [r for r in records if r["kind"] == "reject"]
        assert (reject["id"], reject["error"][: len(said[name])]) == (f"{name}#unreadable", said[name])
        assert records[-1]["container"] == {"path": str(tmp_path / name), "records": 0, "ids_sha256": ids_digest([]),
                                            "lasting_reject": True}, name
    # --image-column naming a column that holds no image: an option the output keeps (a run with another is refused)
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)], "label": [1]}), tmp_path / "twice.parquet")
    records = _read(tmp_path, image_column="label")["twice.parquet"]
    assert records[0]["error"] == ("unreadable Parquet file: ValueError: column 'label' has type int64, not image bytes "
                                   "or pixel arrays")
    assert records[-1]["container"]["lasting_reject"] is True


def _zip_directory_damaged() -> bytes:
    data = zip_bytes({"a.jpg": image_bytes(8, 8, 0, "JPEG")})
    at = data.rfind(b"PK\x01\x02")  # its central directory's entry
    return data[:at] + b"XXXX" + data[at + 4 :]


@pytest.mark.parametrize(("name", "data", "said"), [
    # its first header cut short (a copy still arriving?), or empty: nothing in it says it is no tar
    ("s.tar", tar_bytes({"a.jpg": image_bytes(8, 8, 0, "JPEG")})[:300], "truncated header"),
    ("s.tar", b"", "ReadError: empty file"),
    # damaged, not another format: the damaged footer or directory of a file of its kind
    ("t.parquet", b"PAR1" + b"x" * 100 + b"\x10\x00\x00\x00PAR1", "unreadable Parquet file: OSError: Couldn't deserialize"),
    ("d.zip", _zip_directory_damaged(), "unreadable zip file: BadZipFile: Bad magic number for central directory"),
    # a stream of Arrow before 0.15 whose first message's length fits in it, damaged; one under 8 bytes, cut short
    ("d.arrow", b"\x10\x00\x00\x00" + b"x" * 16, "unreadable Arrow IPC file: OSError: Invalid flatbuffers message"),
    ("e.arrow", b"\x10\x00\x00\x00abc", "Expected to read 16 metadata bytes, but only read 3"),
], ids=["tar-cut-short", "tar-empty", "parquet-footer-damaged", "zip-directory-damaged", "ipc-stream-damaged",
        "ipc-cut-short"])
def test_a_container_cut_short_or_damaged_is_read_again(tmp_path, name, data, said) -> None:
    (tmp_path / name).write_bytes(data)
    (records,) = _read(tmp_path).values()
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == f"{name}#unreadable" and said in reject["error"]
    assert "container" not in records[-1]


def test_a_tfrecord_file_damaged_after_its_records_and_a_storage_error_are_read_again(tmp_path, monkeypatch) -> None:
    (tmp_path / "d.tfrecord").write_bytes(shard([example(image=image_bytes(8, 8, 0))]) + NOT_A_FILE_OF_ITS_KIND)
    records = _read(tmp_path)["d.tfrecord"]
    assert [r["kind"] for r in records] == ["image", "reject", "count"]
    assert records[1]["error"].startswith("TFRecord file unreadable after 1 records: record 1's length does not match")
    assert "container" not in records[-1]
    (tmp_path / "d.tfrecord").unlink()

    (tmp_path / "a.zip").write_bytes(zip_bytes({"a.jpg": image_bytes(8, 8, 0, "JPEG")}))
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)]}), tmp_path / "t.parquet")
    (tmp_path / "s.tar").write_bytes(tar_bytes({"a.jpg": image_bytes(8, 8, 0, "JPEG")}))

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("connection refused")

    for module in ("zip_archives", "parquet_files", "tar_shards"):
        monkeypatch.setattr(f"pipeline.sources.{module}.file_opener", refused)
    for name, records in _read(tmp_path).items():
        assert [r["id"] for r in records if r["kind"] == "reject"] == [f"{name}#unreadable"], name
        assert "container" not in records[-1], name  # a storage error: read again by the next run


@pytest.mark.usefixtures("ray_local")
def test_incremental_runs_skip_containers_their_bytes_refuse_unread_and_start_no_ray(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    said = _bad_containers(root)
    (root / "a.jpg").write_bytes(image_bytes(8, 8, 0, "JPEG"))
    first = run_job(small_job_config(tmp_path, model))["this_run"]
    assert (first["purified"], first["rejected"], first["containers_recorded"]) == (1, 10, 10)
    ledger = json.loads((out / LEDGER_DIR / "containers.json").read_text())
    assert sorted(os.path.basename(p) for p in ledger["lasting_reject"]) == sorted(said)

    incremental = small_job_config(tmp_path, model, incremental=True)
    report = plan_job(incremental, dry_run=True).describe()["input"]
    assert (report["containers_already_done"], report["containers_already_rejected"], report["read_tasks"]) == (10, 10, 0)
    summary = run_job(incremental)
    assert (summary["this_run"]["read"], summary["this_run"]["containers_skipped_unread"]) == (0, 10)
    assert summary["this_run"]["skipped_already_done"] == 10 + 1  # each one's reject, and the image
    assert summary["ray"]["actors"] == 0 and "no Ray" in summary["ray"]["note"]
    data, rejected = read_output(str(out))
    assert sorted(rejected["id"]) == sorted(f"{name}#unreadable" for name in said) and len(data) == 1

    # An output of an earlier version: its record of containers names no lasting reject. Each is read once more, its
    # reject kept once (not written again, not removed as out of date), then skipped as above.
    ledger_file = out / LEDGER_DIR / "containers.json"
    ledger_file.write_text(json.dumps({k: v for k, v in json.loads(ledger_file.read_text()).items()
                                       if k != "lasting_reject"}))
    older = run_job(incremental)["this_run"]
    assert (older["read"], older["rejected"], older["containers_recorded"]) == (0, 0, 10)
    data, rejected = read_output(str(out))
    assert sorted(rejected["id"]) == sorted(f"{name}#unreadable" for name in said) and len(data) == 1
    assert plan_job(incremental, dry_run=True).describe()["input"]["read_tasks"] == 0

    # fixed (a new file there), it is read again, and its rows replace the reject
    (root / "not.zip").write_bytes(zip_bytes({"b.jpg": image_bytes(8, 8, 1, "JPEG")}))
    again = run_job(incremental)["this_run"]
    assert (again["purified"], again["containers_skipped_unread"]) == (1, 9)
    data, rejected = read_output(str(out))
    assert "not.zip#unreadable" not in set(rejected["id"]) and "not.zip/b.jpg" in set(data["id"])


@pytest.mark.parametrize(("done", "rejected", "lines", "absent"), [
    (3, 1, ["2 tar shards / Parquet / zip files were read whole by an earlier run and are unchanged, with all their "
            "images done (purified or rejected): not read",
            "1 file read by an earlier run is unchanged and holds no images, only its one reject, in rejects/ (a table "
            "without an image column, or not a file of its kind): not read again (--retry-rejects reads it)"], []),
    (2, 2, ["2 files read by an earlier run are unchanged and hold no images, only each its one reject"],
     ["images done (purified or rejected)"]),
])
def test_the_dry_run_says_a_skipped_container_without_images_holds_none(tmp_path, capsys, done, rejected, lines,
                                                                         absent) -> None:
    # It said of a table without an image column "with all its images done (purified or rejected)": it holds none
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(image_bytes(8, 8, 0, "JPEG"))
    report = plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out")), dry_run=True).describe()
    report["input"].update(containers_already_done=done, containers_already_rejected=rejected)
    print_plan(report)
    printed = " ".join(capsys.readouterr().out.split())
    for line in lines:
        assert line in printed, printed
    for words in absent:
        assert words not in printed, printed


def test_a_dry_run_over_a_parquet_file_with_encrypted_columns_ends_and_counts_it_a_parquet_file(tmp_path) -> None:
    # Arrow opens such a file, but the dry run's count of rows without an image asked its column chunk's statistics,
    # which ended the whole process ('terminate called after throwing an instance of parquet::ParquetException'). In a
    # process of its own, so that it cannot take the tests' with it
    (tmp_path / "in").mkdir()
    _columns_encrypted(tmp_path / "in" / "columns.parquet")
    code = ("from pipeline.config import JobConfig; from pipeline.plan import plan_job; import sys; "
            "report = plan_job(JobConfig(input=sys.argv[1], output=sys.argv[2]), dry_run=True).describe(); "
            "print(report['input']['parquet_files'], report['input']['parquet_rows_without_image'])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr.strip().splitlines()[-1:] if done.returncode else []) == (0, [])
    assert done.stdout.split()[0] == "1"


def test_a_plain_parquet_files_footer_is_not_walked_and_an_encrypted_ones_is(tmp_path, monkeypatch) -> None:
    # the walk of a footer in Python costs about a second for one of 1,000 row groups of 30 columns: only a footer
    # longer than its metadata (an encrypted file's signature after it) is walked
    from pipeline.sources import parquet_files

    walked = []
    monkeypatch.setattr(parquet_files, "columns_encrypted", lambda footer: walked.append(len(footer)) or False)
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)], "label": [1]}), tmp_path / "plain.parquet")
    assert [r["kind"] for r in _read(tmp_path)["plain.parquet"]] == ["image", "count"] and walked == []
    _columns_encrypted(tmp_path / "columns.parquet")
    _read(tmp_path)
    assert len(walked) == 1
