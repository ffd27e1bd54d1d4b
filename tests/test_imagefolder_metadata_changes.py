"""An image folder's metadata row edited, added or removed after its image was purified is a change of that image's
input (its stamp holds the row's digest: `sources.with_metadata_row`): the changed-input report names it and
--refresh-changed rewrites its row with the metadata as it is now. A reject holds no metadata columns, so its row is
no part of it; an output whose record an older version wrote takes the rows as they are, none said changed for it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.changes import (
    InputRecord,
    find_changes,
    read_record,
    record_path,
    rows_as_recorded,
    with_metadata_rows,
    write_record,
)
from pipeline.job import run_job
from pipeline.plan import plan_job
from pipeline.sources import discover
from pipeline.sources.folder_metadata import FolderMetadata
from pipeline.sources.units import METADATA_ROW
from tests.changeutil import SavedRun, rewritten
from tests.jobutil import image_folder, small_job_argv, small_job_config


def _stamps(root: Path) -> dict[str, str | None]:
    """Each image file's content stamp as the listing gives it, by id."""
    units = discover(str(root), {}, 64, metadata=FolderMetadata())
    return {path.rsplit("/", 1)[-1]: content for u in units for path, content in zip(u.paths, u.contents, strict=True)}


def test_an_image_files_stamp_holds_its_metadata_rows_digest(tmp_path) -> None:
    root = image_folder(tmp_path / "in", 3)
    (root / "metadata.csv").write_text("file_name,label\n0.png,3\n1.png,5\n")
    first = _stamps(root)
    assert METADATA_ROW in first["0.png"] and METADATA_ROW in first["1.png"] and METADATA_ROW not in first["2.png"]
    assert first["0.png"] != first["1.png"]
    (root / "metadata.csv").write_text("file_name,label\n0.png,4\n1.png,5\n")  # one label fixed
    second = _stamps(root)
    assert second["0.png"] != first["0.png"] and second["1.png"] == first["1.png"] and second["2.png"] == first["2.png"]
    (root / "metadata.csv").unlink()
    assert METADATA_ROW not in _stamps(root)["0.png"]
    # --join-metadata false: the image's bytes alone, as before
    (root / "metadata.csv").write_text("file_name,label\n0.png,3\n")
    assert all(METADATA_ROW not in content for content in
               (c for u in discover(str(root), {}, 64) for c in u.contents))


def test_a_rejects_metadata_row_is_no_change_and_an_older_record_takes_the_rows_as_they_are() -> None:
    def unit(*pairs: tuple[str, str]) -> list:
        from pipeline.sources import ReadUnit

        return [ReadUnit("files", tuple(f"/in/{n}" for n, _ in pairs), "/in", (), (), tuple(s for _, s in pairs))]

    listed = unit(("a.png", f"aaa{METADATA_ROW}new"), ("bad.png", f"bbb{METADATA_ROW}new"),
                  ("c.png", f"ccc{METADATA_ROW}row"), ("d.png", f"ddd{METADATA_ROW}row"))
    record = InputRecord("/in", {"a.png": ("files", f"aaa{METADATA_ROW}old"), "bad.png": ("files", f"bbb{METADATA_ROW}old"),
                                 "c.png": ("files", "ccc"), "d.png": ("files", "xxx>ddd")})
    changes = find_changes(listed, {"a.png", "c.png", "d.png"}, {"bad.png"}, frozenset(), record, {}, "/in")
    # c.png, d.png: a row added since (this version's record: no digest was none joined)
    assert (changes.purified, changes.rejected, changes.metadata_rows) == (["a.png", "c.png", "d.png"], [],
                                                                          ["a.png", "c.png", "d.png"])
    # an older version's record: its stamps take the rows' digests as they are now; only the bytes are told
    older = with_metadata_rows(InputRecord("/in", record.stamps, metadata_rows=False), listed)
    assert older.stamps["c.png"] == ("files", f"ccc{METADATA_ROW}row")
    assert older.stamps["d.png"] == ("files", f"xxx{METADATA_ROW}row>ddd{METADATA_ROW}row")  # its bytes still differ
    changes = find_changes(listed, {"a.png", "c.png", "d.png"}, {"bad.png"}, frozenset(), older, {}, "/in")
    assert (changes.purified, changes.metadata_rows) == (["a.png", "d.png"], ["a.png"])


def _label(out: Path) -> dict[str, object]:
    return {r["id"]: r["label"] for r in pq.read_table(out / "data").to_pylist()}


def _rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}


@pytest.mark.usefixtures("ray_local")
def test_an_edited_metadata_row_is_said_changed_and_refresh_changed_writes_it(tmp_path, model, capsys) -> None:
    train = image_folder(tmp_path / "in" / "train", 3)
    (train / "bad.png").write_bytes(b"not an image")
    (train / "metadata.csv").write_text("file_name,label\n0.png,3\n1.png,5\nbad.png,1\n")
    out = tmp_path / "out"
    assert run_job(small_job_config(tmp_path, model))["this_run"]["rejected"] == 1
    assert _label(out) == {"train/0.png": 3, "train/1.png": 5, "train/2.png": None}
    kept = _rows(out)["train/1.png"]

    # a label fixed, a row added for an image purified without one; the reject's row edited: no part of a reject
    (train / "metadata.csv").write_text("file_name,label\n0.png,4\n1.png,5\nbad.png,2\n2.png,7\n")
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (dry["image_files_purified"], dry["image_files_rejected"], dry["examples"]) == (
        2, 0, ["train/0.png", "train/2.png"])
    assert (dry["image_files_metadata_changed"], dry["image_files_compared"]) == (2, 0)  # no image read to tell

    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental")) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert ("2 image file(s) purified earlier (data/ holds their earlier version, purified; 2 of them for their row of "
            "an image-folder metadata file or their sidecar files (x.txt, x.json beside x.jpg), edited, added or removed "
            "since, which data/ holds as they were") in said
    assert "--refresh-changed purifies these inputs again" in said
    assert _label(out)["train/0.png"] == 3  # kept, and said

    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert summary["this_run"]["refreshed"] == {"inputs": 2, "rows_replaced": 2, "rows_kept": 0}
    assert summary["changed_inputs"]["image_files_metadata_changed"] == 2
    assert _label(out) == {"train/0.png": 4, "train/1.png": 5, "train/2.png": 7}
    assert _rows(out)["train/1.png"] == kept  # not purified again

    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (later["changed_inputs"]["image_files_purified"], later["this_run"]["read"]) == (0, 0)

    # the metadata file removed: its rows' columns are no longer the input's
    (train / "metadata.csv").unlink()
    gone = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (gone["image_files_purified"], gone["image_files_metadata_changed"]) == (3, 3)


LABELLED_3_AND_5 = b'{"file_name": "0.png", "label": 3}\n{"file_name": "1.png", "label": 5}\n'


@pytest.fixture(scope="module")
def two_labelled_images_done(tmp_path_factory, model, ray_local) -> SavedRun:
    """in/train: 0.png and 1.png, metadata.jsonl labelling them 3 and 5, purified by a first run (tests.changeutil:
    each test restores it, and changes an input file by replacing it)."""
    folder = tmp_path_factory.mktemp("two_labelled")
    train = image_folder(folder / "in" / "train", 2)
    (train / "metadata.jsonl").write_bytes(LABELLED_3_AND_5)
    assert run_job(small_job_config(folder, model))["status"] == "complete"
    return SavedRun(folder)


def test_an_output_whose_record_an_older_version_wrote_is_not_said_changed_for_its_metadata(two_labelled_images_done,
                                                                                           model) -> None:
    tmp_path = two_labelled_images_done.restore()
    train, out = tmp_path / "in" / "train", tmp_path / "out"
    # the record as a version before this one wrote it: each image's stamp its bytes' alone, no mark
    table = pq.read_table(record_path(str(out)))
    location = table.schema.metadata[b"location"].decode()
    stamps = [s.partition(METADATA_ROW)[0] for s in table.column("stamp").to_pylist()]
    pq.write_table(table.set_column(2, "stamp", pa.array(stamps, pa.string())).replace_schema_metadata(
        {"location": location}), record_path(str(out)))
    assert read_record(str(out), {}, location).metadata_rows is False
    rewritten(train / "1.png", (train / "1.png").read_bytes())  # touched: the same bytes, compared as before

    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    changed = summary["changed_inputs"]
    assert (changed["image_files_purified"], changed["image_files_same_bytes"]) == (0, 1)
    record = read_record(str(out), {}, location)
    assert record.metadata_rows is True and all(METADATA_ROW in s for _, s in record.stamps.values())

    # from now on, an edited row is seen
    rewritten(train / "metadata.jsonl", b'{"file_name": "0.png", "label": 3}\n{"file_name": "1.png", "label": 6}\n')
    changed = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (changed["examples"], changed["image_files_metadata_changed"]) == (["train/1.png"], 1)


def test_the_record_says_its_stamps_hold_metadata_rows(tmp_path) -> None:
    write_record(str(tmp_path), {}, InputRecord("/in", {"a.png": ("files", "x")}))
    assert pq.read_schema(record_path(str(tmp_path))).metadata[b"metadata_rows"] == b"1"
    assert read_record(str(tmp_path), {}, "/in").metadata_rows is True


@pytest.mark.usefixtures("ray_local")
def test_a_metadata_file_fixed_after_it_was_a_reject_has_its_reject_removed_not_said_gone(tmp_path, model,
                                                                                           capsys) -> None:
    train = image_folder(tmp_path / "in" / "train", 2)
    (train / "metadata.csv").write_text("file_name,label\n0.png,1\n0.png,2\n")  # 0.png named twice: a reject
    out = tmp_path / "out"
    assert run_job(small_job_config(tmp_path, model))["this_run"]["rejected"] == 1
    assert [r["id"] for r in pq.read_table(out / "rejects").to_pylist()] == ["train/metadata.csv"]

    (train / "metadata.csv").write_text("file_name,label\n0.png,1\n1.png,2\n")  # fixed
    plan = plan_job(small_job_config(tmp_path, model, incremental=True, retry_rejects=True), dry_run=True)
    assert plan.retry == frozenset()  # not an input to read again: it is joined
    described = plan.describe()
    assert described["input"]["folder_metadata"]["earlier_rejects_removed"] == 1
    changed = described["changed_inputs"]
    # its images were purified without its columns: changed, for --refresh-changed to write them with them
    assert (changed["gone_image_files"], changed["image_files_metadata_changed"]) == (0, 2)
    capsys.readouterr()
    cli.print_plan(described)
    assert "1 earlier reject of such a file (fixed since) would go from rejects/" in " ".join(
        capsys.readouterr().out.split())

    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    run = summary["this_run"]
    assert (run["stale_rejects_removed"], summary["output_totals"]["rejected"]) == (1, 0)
    assert (summary["changed_inputs"]["gone_image_files"], run["refreshed"]["rows_replaced"]) == (0, 2)
    assert not (out / "rejects").exists()  # its one reject gone, and the folder with it
    assert _label(out) == {"train/0.png": 1, "train/1.png": 2}
    recorded = pq.read_table(record_path(str(out))).column("id").to_pylist()
    assert "train/metadata.csv" not in recorded and "train/0.png" in recorded

    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental")) == 0
    err = capsys.readouterr().err
    assert "no longer in the input" not in err and "changed under the same name" not in err


def test_a_metadata_file_broken_by_an_edit_leaves_its_images_rows_and_columns_until_it_is_fixed(
        two_labelled_images_done, model) -> None:
    tmp_path = two_labelled_images_done.restore()
    train, out = tmp_path / "in" / "train", tmp_path / "out"

    rewritten(train / "metadata.jsonl", LABELLED_3_AND_5 + b'{"file_name": "0.png", "label": 4}\n')  # 0.png named twice
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (dry["image_files_purified"], dry["image_files_metadata_changed"]) == (0, 0)  # its rows are not known
    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert (summary["this_run"]["refreshed"]["inputs"], summary["this_run"]["rejected"]) == (0, 1)  # the file's reject
    assert _label(out) == {"train/0.png": 3, "train/1.png": 5}  # no column dropped for a typo

    # fixed, one label changed
    rewritten(train / "metadata.jsonl", b'{"file_name": "0.png", "label": 4}\n{"file_name": "1.png", "label": 5}\n')
    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert (summary["this_run"]["refreshed"]["inputs"], summary["this_run"]["stale_rejects_removed"]) == (1, 1)
    assert _label(out) == {"train/0.png": 4, "train/1.png": 5}


def test_an_image_a_metadata_file_that_cannot_be_joined_may_name_has_its_row_unknown(tmp_path) -> None:
    image_folder(tmp_path / "in" / "a" / "b", 2)
    (tmp_path / "in" / "metadata.csv").write_text("file_name,x\nbroken\n")  # no file_name: a reject
    (tmp_path / "in" / "a" / "b" / "metadata.csv").write_text("file_name,x\n0.png,1\n")  # nearer: 0.png known
    found = FolderMetadata()
    units = discover(str(tmp_path / "in"), {}, 64, metadata=found)
    stamps = {p.rsplit("/", 1)[-1]: c for u in units for p, c in zip(u.paths, u.contents, strict=True)}
    assert stamps["0.png"].count(METADATA_ROW) == 1 and not stamps["0.png"].endswith("?")
    assert stamps["1.png"].endswith(f"{METADATA_ROW}?")  # the root's file may name it
    listed = [u for u in units if u.kind == "files"]
    record = InputRecord("/x", {"a/b/1.png": ("files", f"{stamps['1.png'][:-2]}{METADATA_ROW}old")})
    [unit] = rows_as_recorded(listed, record)
    assert dict(zip([p.rsplit("/", 1)[-1] for p in unit.paths], unit.contents, strict=True))["1.png"].endswith(
        f"{METADATA_ROW}old")


def test_an_image_file_with_no_version_has_its_metadata_row_edited_added_or_removed_told() -> None:
    import fsspec

    from pipeline.changes import ChangedInputs, updated_record
    from tests.jobutil import image_bytes

    # an in-memory store gives no ETag nor mtime, as a web folder's index page gives none: no version of the bytes
    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe(f"/nover/train/{i}.png", image_bytes(8, 8, i))
    fs.pipe("/nover/other/3.png", image_bytes(8, 8, 3))
    ids = {"train/0.png", "train/1.png", "train/2.png", "other/3.png"}

    def changed(metadata: bytes | None, record: InputRecord) -> tuple[list[str], list[str]]:
        if metadata is None:
            fs.rm("/nover/train/metadata.csv")
        else:
            fs.pipe("/nover/train/metadata.csv", metadata)
        listed = [u for u in discover("memory://nover", {}, 64, metadata=FolderMetadata()) if u.kind == "files"]
        found = find_changes(rows_as_recorded(listed, record), ids, set(), frozenset(), record, {}, listed[0].root)
        return found.purified, found.metadata_rows

    try:
        fs.pipe("/nover/train/metadata.csv", b"file_name,label\n0.png,3\n1.png,5\n")
        listed = [u for u in discover("memory://nover", {}, 64, metadata=FolderMetadata()) if u.kind == "files"]
        stamps = {p.rsplit("/", 1)[-1]: c for u in listed for p, c in zip(u.paths, u.contents, strict=True)}
        # the row's digest alone; '+m' for no row where the metadata file may name it; none elsewhere, as before
        assert stamps["0.png"].startswith(METADATA_ROW) and stamps["2.png"] == METADATA_ROW and stamps["3.png"] is None
        record = updated_record(None, listed[0].root, listed, ChangedInputs())
        assert sorted(record.stamps) == ["train/0.png", "train/1.png", "train/2.png"]

        # 0.png's label edited, a row added for 2.png, 1.png's removed
        assert changed(b"file_name,label\n0.png,4\n2.png,7\n", record) == (
            ["train/0.png", "train/1.png", "train/2.png"],) * 2
        assert changed(b"file_name,label\n0.png,3\n1.png,5\n", record) == ([], [])  # as recorded: no change
        assert changed(None, record) == (["train/0.png", "train/1.png"],) * 2  # the file removed: their rows went
        assert changed(b"file_name,label\n0.png,3\n0.png,4\n", record) == ([], [])  # cannot be joined: as recorded
    finally:
        fs.rm("/nover", recursive=True)


@pytest.mark.usefixtures("ray_local")
def test_a_web_folders_metadata_row_edited_after_its_image_was_purified_is_said_changed_and_refreshed(
        tmp_path, model) -> None:
    from tests.webutil import serving

    train = image_folder(tmp_path / "site" / "train", 2)
    (train / "metadata.csv").write_text("file_name,label\n0.png,3\n")
    out = tmp_path / "out"
    with serving(tmp_path / "site") as url:  # a web folder's index page gives its image files no ETag, no date
        assert run_job(small_job_config(tmp_path, model, input=url))["status"] == "complete"
        assert _label(out) == {"train/0.png": 3, "train/1.png": None}
        (train / "metadata.csv").write_text("file_name,label\n0.png,4\n1.png,5\n")
        changed = plan_job(small_job_config(tmp_path, model, input=url, incremental=True),
                           dry_run=True).describe()["changed_inputs"]
        assert (changed["image_files_metadata_changed"], changed["examples"]) == (2, ["train/0.png", "train/1.png"])
        summary = run_job(small_job_config(tmp_path, model, input=url, incremental=True, refresh_changed=True))
        assert summary["this_run"]["refreshed"]["rows_replaced"] == 2
        assert _label(out) == {"train/0.png": 4, "train/1.png": 5}
