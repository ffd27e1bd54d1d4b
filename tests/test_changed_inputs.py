"""Inputs changed in place (same name, new bytes) or gone since their rows were written: a scheduled run keeps their
rows (ids are names), and now says so, in _summary.json's changed_inputs, on stderr and in the dry run, naming the
remedy (pipeline.changes)."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.changes as changes_module
from pipeline import cli
from pipeline.changes import (
    InputRecord,
    changed_warning,
    find_changes,
    gone_note,
    read_record,
    record_path,
    same_bytes,
    starting_record,
    updated_record,
    write_record,
)
from pipeline.job import run_job
from pipeline.ledger import ContainerRead
from pipeline.output import part_files_holding
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, content_stamp
from tests.jobutil import (
    image_bytes,
    image_folder,
    part_files_read,
    rewritten_in_place,
    run_stopped_at,
    small_job_argv,
    small_job_config,
    tar_bytes,
)


def _files(*pairs: tuple[str, str | None]) -> ReadUnit:
    return ReadUnit("files", tuple(f"/in/{name}" for name, _ in pairs), "/in", (), (),
                    tuple(stamp for _, stamp in pairs))


def test_content_stamp_takes_an_objects_etag_before_its_dates_and_a_files_mtime_and_inode() -> None:
    s3 = {"size": 3, "ETag": '"abc"', "LastModified": "2026-12-01"}
    assert content_stamp(s3) == content_stamp({**s3, "LastModified": "2026-12-04"})  # the same bytes uploaded again
    assert content_stamp(s3) != content_stamp({**s3, "ETag": '"abd"'})
    assert content_stamp(s3) != content_stamp({**s3, "size": 4})
    local = {"size": 3, "mtime": 1.5, "ino": 7}
    assert content_stamp(local) != content_stamp({**local, "mtime": 1.6})
    assert content_stamp(local) != content_stamp({**local, "ino": 8})  # replaced by a rename over it
    assert content_stamp({"size": 3, "ino": 7}) is None and content_stamp({"size": 3}) is None  # says nothing


def test_find_changes_sees_done_files_and_containers_changed_since_and_what_went() -> None:
    record = InputRecord("/in", {"a.png": ("files", "v1"), "b.png": ("files", "v1"), "r.png": ("files", "v1"),
                                 "gone.png": ("files", "v1"), "s.tar": ("tar", "v1"), "old.tar": ("tar", "v1"),
                                 "new.png": ("files", "v1")})
    listed = [_files(("a.png", "v2"), ("b.png", "v1"), ("r.png", "v2"), ("new.png", "v2"), ("unknown.png", None)),
              ReadUnit("tar", ("/in/s.tar",), "/in", (10,), ("l2",), ("v2",))]
    purified = {"a.png", "b.png", "gone.png", "s.tar/0", "s.tar/1", "old.tar/0"}
    rejected = {"r.png", "s.tar#unreadable"}
    changes = find_changes(listed, purified, rejected, frozenset(), record, {}, "/in")
    # new.png was to be read by a run that did not get to it: not done, so not a change
    assert (changes.purified, changes.rejected, changes.containers) == (["a.png"], ["r.png"], {"s.tar": 2})
    assert (changes.gone_files, changes.gone_containers, changes.pending) == (["gone.png"], {"old.tar": 1}, {})
    # the new record keeps the earlier stamps of what changed and of what went with rows; this run's of the rest
    final = updated_record(record, "/in", listed, changes)
    assert final.stamps == {"a.png": ("files", "v1"), "b.png": ("files", "v1"), "r.png": ("files", "v1"),
                            "new.png": ("files", "v2"), "s.tar": ("tar", "v1"), "gone.png": ("files", "v1"),
                            "old.tar": ("tar", "v1")}
    assert starting_record(final, changes) == final
    # --retry-rejects reads r.png again: not a kept row, and its earlier stamp is kept until the run ends complete
    retried = find_changes(listed, purified, rejected, frozenset(rejected), record, {}, "/in")
    assert (retried.rejected, retried.pending) == ([], {"r.png": ("files", "v1")})
    final = updated_record(record, "/in", listed, retried)
    assert final.stamps["r.png"] == ("files", "v2")
    assert starting_record(final, retried).stamps["r.png"] == ("files", "v1")


@pytest.mark.parametrize("root", ["http://host/in", "https://host/in/", "/in"])
def test_a_gone_container_whose_name_holds_a_percent_sign_is_named_as_it_was(root: str) -> None:
    # a web folder's file 'a%20b.zip' (linked as 'a%2520b.zip') has the id 'a%20b.zip': once gone, its id was decoded
    # again, to 'a b.zip', which holds no row, so the note left it out (or named it 'a b.zip')
    record = InputRecord(root, {"a%20b.zip": ("zip", "v1"), "caf%C3%A9.tar": ("tar", "v1"), "x y.zip": ("zip", "v1"),
                                "q?r.zip": ("zip", "v1")})
    purified = {"a%20b.zip/m%20n.png", "caf%C3%A9.tar/0", "caf%C3%A9.tar/1", "x y.zip/a.png", "q?r.zip/a.png"}
    changes = find_changes([], purified, set(), frozenset(), record, {}, root)
    assert changes.gone_containers == {"a%20b.zip": 1, "caf%C3%A9.tar": 2, "x y.zip": 1, "q?r.zip": 1}
    note = gone_note(changes.summary())
    assert note is not None and "e.g. a%20b.zip, caf%C3%A9.tar, q?r.zip, x y.zip)" in note, note


def test_the_notes_on_changed_and_gone_containers_count_one_row_as_one() -> None:
    # "1 tar/Parquet/zip file(s) (1 rows)"
    gone = gone_note({"gone_containers": 1, "gone_container_rows": 1, "gone_examples": ["s.tar"]})
    changed = changed_warning({"containers": 1, "container_rows": 1, "examples": ["s.tar"]})
    assert gone is not None and "1 tar/Parquet/zip file(s) (1 row) with rows" in gone, gone
    assert changed is not None and "(of their 1 row, those written before" in changed, changed
    assert "(3 rows) with rows" in str(gone_note({"gone_containers": 2, "gone_container_rows": 3, "gone_examples": []}))


def test_a_container_without_a_record_is_judged_by_the_ledger_of_an_older_versions_output() -> None:
    unit = ReadUnit("tar", ("/in/s.tar",), "/in", (10,), ("l2",), ("v2",))
    ledger = {"/in/s.tar": ContainerRead("/in/s.tar", 10, "l1", 2, "x")}
    changes = find_changes([unit], {"s.tar/0"}, set(), frozenset(), None, ledger, "/in")
    assert changes.containers == {"s.tar": 1}
    assert updated_record(None, "/in", [unit], changes).stamps == {"s.tar": ("tar", "earlier")}
    same = {"/in/s.tar": ContainerRead("/in/s.tar", 10, "l2", 2, "x")}
    assert find_changes([unit], {"s.tar/0"}, set(), frozenset(), None, same, "/in").containers == {}


def test_the_record_is_read_back_and_ignored_for_another_location_or_when_damaged(tmp_path, capsys) -> None:
    out = str(tmp_path / "out")
    write_record(out, {}, InputRecord("/in", {"a.png": ("files", "v1")}))
    assert read_record(out, {}, "/in").stamps == {"a.png": ("files", "v1")}
    assert read_record(out, {}, "/elsewhere") is None  # --input-moved: every stamp differs, start again
    assert read_record(str(tmp_path / "none"), {}, "/in") is None
    with open(record_path(out), "wb") as f:
        f.write(b"not parquet")
    assert read_record(out, {}, "/in") is None
    assert "ignoring" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_local")
def test_a_scheduled_run_says_which_inputs_changed_in_place_until_overwrite(tmp_path, model, capsys) -> None:
    root = image_folder(tmp_path / "in", 3)
    (root / "bad.png").write_bytes(b"not an image")
    (root / "s.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(16, 16, 10 + k) for k in range(2)}))
    assert cli.main(small_job_argv(tmp_path, model)) == 0
    first = json.loads((tmp_path / "out" / "_summary.json").read_text())["changed_inputs"]
    assert (first["image_files_purified"], first["containers"], first["gone_image_files"]) == (0, 0, 0)

    rewritten_in_place(root / "0.png", image_bytes(16, 16, 99))  # re-uploaded with new bytes
    rewritten_in_place(root / "bad.png", image_bytes(16, 16, 98))  # the broken file fixed
    (root / "2.png").unlink()
    rewritten_in_place(root / "s.tar", tar_bytes({f"{k}.png": image_bytes(16, 16, 50 + k) for k in range(3)}))
    (root / "3.png").write_bytes(image_bytes(16, 16, 3))  # a new file: just an input
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental", "--dry-run")) == 0
    err = capsys.readouterr().err
    assert "1 image file(s) purified earlier" in err and "1 image file(s) rejected earlier" in err
    assert "1 tar/Parquet/zip file(s) replaced since" in err and "would keep" in err
    assert "--retry-rejects reads the rejected ones again" in err and "--overwrite" in err
    assert "no longer in the input" in err and "2.png" in err

    for rows in (2, 3):  # said by the run that reads the replaced shard again (2 rows done), and by every later one
        assert cli.main(small_job_argv(tmp_path, model, "--incremental")) == 0
        err = capsys.readouterr().err
        assert "warning: 1 image file(s) purified earlier" in err and "0.png" in err
        changed = json.loads((tmp_path / "out" / "_summary.json").read_text())["changed_inputs"]
        assert (changed["image_files_purified"], changed["image_files_rejected"], changed["containers"],
                changed["container_rows"]) == (1, 1, 1, rows)
        assert (changed["gone_image_files"], changed["gone_examples"]) == (1, ["2.png"])

    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--overwrite")) == 0  # the remedy: purified as the input is now
    assert "changed under the same name" not in capsys.readouterr().err
    changed = json.loads((tmp_path / "out" / "_summary.json").read_text())["changed_inputs"]
    assert changed["image_files_purified"] + changed["containers"] + changed["gone_image_files"] == 0


@pytest.mark.usefixtures("ray_local")
def test_on_s3_a_new_etag_is_a_change_and_the_same_bytes_uploaded_again_are_not(tmp_path, model) -> None:
    from pipeline.config import JobConfig
    from tests.s3util import moto_s3

    with moto_s3("incoming", "clean") as (client, options):
        for i in range(3):
            client.put_object(Bucket="incoming", Key=f"x/{i}.png", Body=image_bytes(16, 16, i))
        parquet = pa.BufferOutputStream()
        pq.write_table(pa.table({"image": [{"bytes": image_bytes(16, 16, 7), "path": None}]}), parquet)
        client.put_object(Bucket="incoming", Key="x/t.parquet", Body=parquet.getvalue().to_pybytes())
        cfg = JobConfig(input="s3://incoming/x/", output="s3://clean/out", checkpoint=model, steps=1, pool=4,
                        canvas_size=32, progress=False, storage_options=options)
        assert run_job(cfg)["status"] == "complete"
        client.put_object(Bucket="incoming", Key="x/0.png", Body=image_bytes(16, 16, 0))  # the same bytes again
        client.put_object(Bucket="incoming", Key="x/1.png", Body=image_bytes(16, 16, 55))  # new bytes
        # the same bytes uploaded in parts (as the AWS CLI does a large file): another ETag, read to tell
        etag = client.head_object(Bucket="incoming", Key="x/2.png")["ETag"]
        upload = client.create_multipart_upload(Bucket="incoming", Key="x/2.png")["UploadId"]
        part = client.upload_part(Bucket="incoming", Key="x/2.png", UploadId=upload, PartNumber=1,
                                  Body=image_bytes(16, 16, 2))
        client.complete_multipart_upload(Bucket="incoming", Key="x/2.png", UploadId=upload, MultipartUpload={
            "Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
        assert client.head_object(Bucket="incoming", Key="x/2.png")["ETag"] != etag
        parquet = pa.BufferOutputStream()
        pq.write_table(pa.table({"image": [{"bytes": image_bytes(16, 16, 8), "path": None}]}), parquet)
        client.put_object(Bucket="incoming", Key="x/t.parquet", Body=parquet.getvalue().to_pybytes())
        summary = run_job(JobConfig(**{**cfg.__dict__, "incremental": True}))
        changed = summary["changed_inputs"]
        assert (changed["image_files_purified"], changed["containers"], changed["examples"]) == (
            1, 1, ["1.png", "t.parquet"])
        assert changed["image_files_same_bytes"] == 1


@pytest.mark.usefixtures("ray_local")
def test_inputs_changed_after_a_stopped_run_are_said_changed_only_where_it_read_them_or_retried_them(
        tmp_path, model, monkeypatch) -> None:
    """The record is written before the first image is read. A file planned by a run that stopped before reading it is
    no change when it changes before the next run; rows a run wrote before it stopped (here: its end-of-run check fails;
    a kill leaves the same files) have stamps, and the resume tells their input's change. --retry-rejects reads a
    changed reject again; a run that stops before it did must not leave the new stamp recorded beside the old reject row
    (the next run would keep that row without a word). One test, one sequence of runs (three tests made six runs, four
    of them purifying)."""
    root = image_folder(tmp_path / "in", 2)
    (root / "bad.png").write_bytes(b"half an upload")
    run_stopped_at("build_pipeline", tmp_path, model, monkeypatch)  # planned, nothing read
    rewritten_in_place(root / "0.png", image_bytes(16, 16, 5))
    # what the next run says of its inputs (as its summary's changed_inputs): 0.png, planned but not read, no change
    dry = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["changed_inputs"]
    assert (dry["image_files_purified"], dry["image_files_rejected"], dry["examples"]) == (0, 0, [])
    run_stopped_at("deduplicate_output", tmp_path, model, monkeypatch)  # after writing its rows, 0.png's of its new bytes
    data = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert sorted(row["id"] for row in data) == ["0.png", "1.png"]  # its rows landed...
    new0 = hashlib.sha256(image_bytes(16, 16, 5)).hexdigest()
    assert next(row["source_sha256"] for row in data if row["id"] == "0.png") == new0
    assert pq.read_table(tmp_path / "out" / "rejects").column("id").to_pylist() == ["bad.png"]

    rewritten_in_place(root / "1.png", image_bytes(16, 16, 77))
    summary = run_job(small_job_config(tmp_path, model))  # the same command resumes
    assert summary["status"] == "complete" and summary["this_run"]["read"] == 0
    # 1.png, read by the stopped run, said changed; 0.png, changed before it was read, is not
    assert (summary["changed_inputs"]["image_files_purified"], summary["changed_inputs"]["examples"]) == (1, ["1.png"])

    rewritten_in_place(root / "bad.png", image_bytes(16, 16, 4))  # the upload finished
    run_stopped_at("build_pipeline", tmp_path, model, monkeypatch, retry_rejects=True)  # before the first batch
    resumed = run_job(small_job_config(tmp_path, model))  # resumed without the flag: the reject row is kept...
    assert resumed["changed_inputs"]["image_files_rejected"] == 1  # ...and said about an earlier version
    retried = run_job(small_job_config(tmp_path, model, retry_rejects=True))
    assert retried["this_run"]["rejects_retried"]["purified_now"] == 1
    assert run_job(small_job_config(tmp_path, model, incremental=True))["changed_inputs"]["image_files_rejected"] == 0


def _touch(path) -> None:
    """The same bytes, with an mtime that surely differs (`touch`, or a sync that copies without keeping times)."""
    before = os.stat(path).st_mtime_ns
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def _counting_hashes(monkeypatch) -> list[str]:
    """The names of the input files the planning reads to hash them (`changes.file_sha256`), as it reads them."""
    hashed: list[str] = []
    real = changes_module.file_sha256

    def counted(path: str, *args, **kwargs):
        hashed.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(changes_module, "file_sha256", counted)
    return hashed


@pytest.mark.usefixtures("ray_local")
def test_image_files_touched_or_copied_over_with_the_same_bytes_are_no_change_read_once_and_not_purified_again(
        tmp_path, model, monkeypatch) -> None:
    """Files whose listing changed but whose bytes did not are no change; telling so reads only the part files holding
    their rows, each file is hashed once (its new stamp recorded), and --refresh-changed leaves their rows as they were.
    One first run for all of it (three tests made a first run each)."""
    root = image_folder(tmp_path / "in", 6)
    (root / "bad.png").write_bytes(b"not an image")
    assert run_job(small_job_config(tmp_path, model, write_batch=1))["this_run"]["rejected"] == 1  # a row a file
    out = tmp_path / "out"
    assert len(list((out / "data").glob("part-*.parquet"))) == 6

    def row(id_: str) -> dict:
        return next(r for r in pq.read_table(out / "data").to_pylist() if r["id"] == id_)

    before = row("0.png")
    inode = os.stat(root / "1.png").st_ino
    _touch(root / "0.png")
    _touch(root / "bad.png")  # a reject whose file was touched: the reject is still about these bytes
    (tmp_path / "copy.png").write_bytes((root / "1.png").read_bytes())  # restored from a backup: a new inode, same bytes
    os.replace(tmp_path / "copy.png", root / "1.png")
    assert os.stat(root / "1.png").st_ino != inode
    rewritten_in_place(root / "4.png", image_bytes(16, 16, 44))  # new bytes: changed, as before
    hashed = _counting_hashes(monkeypatch)
    read = part_files_read(monkeypatch)
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (dry["image_files_purified"], dry["image_files_rejected"], dry["examples"]) == (1, 0, ["4.png"])
    assert (dry["image_files_compared"], dry["image_files_same_bytes"]) == (4, 3)
    assert sorted(hashed) == ["0.png", "1.png", "4.png", "bad.png"]  # 2.png, 3.png, 5.png: their stamps are the same
    # the part files read to compare them with their rows (a row a file): only those holding their rows
    holding = part_files_holding(str(out), {}, {"0.png", "1.png", "4.png", "bad.png"})
    assert len(read) == 4
    assert sorted(read) == sorted(name for names in holding.values() for name in names)

    hashed.clear()
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    changed = summary["changed_inputs"]
    assert (changed["image_files_purified"], changed["image_files_rejected"], changed["examples"]) == (1, 0, ["4.png"])
    assert (changed["image_files_same_bytes"], summary["this_run"]["read"]) == (3, 0)
    assert len(hashed) == 4  # a dry run records nothing: the run reads them again, and records their new stamps

    hashed.clear()
    later = run_job(small_job_config(tmp_path, model, incremental=True))["changed_inputs"]
    assert (later["image_files_purified"], later["examples"], later["image_files_same_bytes"]) == (1, ["4.png"], 0)
    assert hashed == []  # the same ones' new stamps were recorded, and that 4.png's bytes differ at its stamp

    _touch(root / "0.png")  # touched again; 4.png is still said changed
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert summary["this_run"]["refreshed"] == {"inputs": 1, "rows_replaced": 1, "rows_kept": 0}
    assert (summary["this_run"]["read"], summary["changed_inputs"]["image_files_same_bytes"]) == (1, 1)
    assert row("0.png") == before  # not purified again: the same row, not another sample of the same image
    assert row("4.png")["source_sha256"] == hashlib.sha256(image_bytes(16, 16, 44)).hexdigest()


def test_a_part_file_that_cannot_be_read_is_said_without_the_outputs_credentials(tmp_path, capsys) -> None:
    # "zip-purify: could not read the source_sha256 of ftp://writer:<password>@host/out's rows (...)", in a dry run
    # whose own lines redact it. fsspec's memory store takes such a URL as a path: it stands in for the FTP server.
    import fsspec

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(b"x")
    out = "memory://writer:out-pa55word@host/rows-test-out"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{fs._strip_protocol(out)}/data/part-c.parquet", b"cut short")
    record = InputRecord(str(inp), {"a.png": ("files", "v1")})
    unit = ReadUnit("files", (str(inp / "a.png"),), str(inp), (1,), (), ("v2",))
    try:
        assert same_bytes([unit], {"a.png"}, set(), frozenset(), record, out, {}) == ({}, 0)
    finally:
        fs.rm(fs._strip_protocol(out), recursive=True)
    err = capsys.readouterr().err
    assert "could not read the source_sha256 of memory://writer:***@host/rows-test-out's rows" in err, err
    assert "out-pa55word" not in err, err


def test_a_file_that_cannot_be_read_at_planning_or_whose_rows_hold_no_single_digest_stays_changed(tmp_path,
                                                                                               capsys) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    names = ("same.png", "gone.png", "twice.png", "nodigest.png", "grown.png", "differs.png")
    for name in ("same.png", "twice.png", "nodigest.png"):
        (inp / name).write_bytes(b"x")
    (inp / "grown.png").write_bytes(b"xx")  # longer than listed: the listing saw another version
    (inp / "differs.png").write_bytes(b"y")
    x, xx = hashlib.sha256(b"x").hexdigest(), hashlib.sha256(b"xx").hexdigest()
    digests = [x, x, x, None, xx, x, x]  # nodigest.png: as a file rejected unread (over --max-image-mb)
    pq.write_table(pa.table({"id": [*names, "other.png"], "source_sha256": digests}), out / "data" / "part-a.parquet")
    pq.write_table(pa.table({"id": ["twice.png"], "source_sha256": ["0" * 64]}), out / "data" / "part-b.parquet")
    record = InputRecord(str(inp), {name: ("files", "v1") for name in names})
    unit = ReadUnit("files", tuple(str(inp / name) for name in names), str(inp), (1,) * len(names), (),
                    ("v2",) * len(names))
    checked = same_bytes([unit], set(names), set(), frozenset(), record, str(out), {})
    assert checked == ({"same.png": ("files", "v2"), "differs.png": ("files", "v1>v2")}, 1)
    # differs.png's bytes were found other at this stamp: said changed, and not read again while its stamp stays
    marked = InputRecord(str(inp), {**record.stamps, "differs.png": ("files", "v1>v2")})
    assert "differs.png" in find_changes([unit], set(names), set(), frozenset(), marked, {}, str(inp)).purified
    assert same_bytes([unit], set(names), set(), frozenset(), marked, str(out), {}) == (
        {"same.png": ("files", "v2")}, 1)
    (out / "data" / "part-c.parquet").write_bytes(b"cut short")  # planning goes on: every one said changed
    assert same_bytes([unit], set(names), set(), frozenset(), record, str(out), {}) == ({}, 0)
    assert "could not read the source_sha256" in capsys.readouterr().err
