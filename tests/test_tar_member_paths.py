"""A tar shard made with `tar -C folder -cf s.tar .` names its members './b.jpg', './cat/a.jpg': their ids are those of
the members' paths, 's.tar/b' and 's.tar/cat/a' (as `tar -xf` extracts them, and as a zip of the same folder gives its
members' ids), not 's.tar/./b' as before, in the rows, the rejects, the folder labels, the metadata joins and the dry
run's count alike. An output made before keeps its ids: a run over it skips, retries or replaces the rows of those
ids, and never writes a second row of a member under its new id."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.job import run_job
from pipeline.ledger import ledger_path, read_ledger, write_ledger
from pipeline.plan import plan_job
from pipeline.sources import discover, ids_digest, read_unit
from pipeline.sources.tar_count import count_keys
from pipeline.stages import part_name
from tests.jobutil import image_bytes, read_output, rewritten_in_place, small_job_config

A, B, C = image_bytes(8, 8, 1), image_bytes(8, 8, 2), image_bytes(8, 8, 3)


def _tar(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of `members` in that order (name, bytes; None: a folder's entry), as `tar -C folder -cf s.tar .` writes
    it: './' first, then each folder's entry before its files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _shard(folder: Path, members: list[tuple[str, bytes | None]]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "s.tar").write_bytes(_tar(members))


@pytest.mark.parametrize(("name", "path"), [
    ("./b.jpg", "b.jpg"), ("./cat/a.jpg", "cat/a.jpg"), (".//x.png", "x.png"), ("cat/./a.jpg", "cat/a.jpg"),
    ("cat//a.jpg", "cat/a.jpg"), ("/abs.png", "abs.png"), ("b.jpg", "b.jpg"), ("../up.png", "../up.png"),
    ("./", "./"), (".", ".")])
def test_a_members_path_drops_its_empty_and_dot_folders(name, path) -> None:
    from pipeline.sources.webdataset_keys import member_path

    # '..' leads elsewhere and stays; a name with nothing left ('./', a folder's entry) stays as it is
    assert member_path(name) == path


def test_a_shard_made_with_tar_C_gives_the_ids_labels_and_counts_of_its_paths(tmp_path) -> None:
    _shard(tmp_path / "in", [("./", None), ("./b.jpg", image_bytes(8, 8, 4, "JPEG")), ("./b.cls", b"3"),
                             ("./cat/", None), ("./cat/a.png", A), (".//x.png", B), ("cat/./y.png", C),
                             ("./0001.png", A), ("0001.json", b'{"caption": "one"}')])
    (unit,) = discover(str(tmp_path / "in"))
    *records, count = read_unit(unit, labels_from_folders=True)
    found = {r["id"]: r["meta"] for r in records}
    assert all(r["kind"] == "image" for r in records)
    # './b.jpg' and './b.cls' are one key, as are './0001.png' and '0001.json': the sidecars are columns of the image
    assert found == {"s.tar/b": {"label": 3}, "s.tar/cat/a": {"label": "cat"}, "s.tar/x": {"label": None},
                     "s.tar/cat/y": {"label": "cat"}, "s.tar/0001": {"caption": "one", "label": None}}
    assert [r["source"].rsplit(":", 1)[1] for r in records][:2] == ["./b.jpg", "./cat/a.png"]  # the member's own name
    # the dry run's and the progress's count: the same keys, those done by the new ids
    assert count_keys([unit], {}, {}, False).left == count["n"] == 5
    keys = count_keys([unit], {}, {unit.paths[0]: ["s.tar/b", "s.tar/cat/y"]}, False)
    assert (keys.left, keys.done) == (3, 2)


def test_two_names_of_one_path_are_one_member_the_later_read_as_tar_extracts_it(tmp_path) -> None:
    # './b.png' then 'b.png' (a member appended with `tar -rf s.tar b.png`): one file once extracted, the later bytes
    _shard(tmp_path / "in", [("./b.png", A), ("b.png", B)])
    (unit,) = discover(str(tmp_path / "in"))
    *records, count = read_unit(unit)
    assert [(r["kind"], r["id"], r["data"]) for r in records] == [("image", "s.tar/b", B)]
    assert count_keys([unit], {}, {}, False).left == count["n"] == 1


def test_a_file_named_dot_slash_is_a_reject_of_its_own_not_lost(tmp_path) -> None:
    # './' is the folder's own entry in a `tar -C folder .` shard (no input); written as a regular file, it has no
    # path to take ('./' is kept as its name): a reject naming it, beside the shard's images
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("./", b"data"), ("./a.png", A)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(buf.getvalue())
    (unit,) = discover(str(tmp_path / "in"))
    *records, count = read_unit(unit)
    assert sorted((r["kind"], r["id"]) for r in records) == [("image", "s.tar/a"), ("reject", "s.tar/./")]
    assert count_keys([unit], {}, {}, False).left == count["n"] == 2


def test_a_tarred_image_folders_metadata_joins_and_reports_by_the_members_paths(tmp_path) -> None:
    _shard(tmp_path / "in", [("./train/0.png", A), ("./train/metadata.csv", b"file_name,label\n0.png,3\n7.png,4\n")])
    (unit,) = discover(str(tmp_path / "in"))
    records = list(read_unit(unit, join_metadata=True))
    assert [(r["id"], r["meta"]) for r in records if r["kind"] == "image"] == [
        ("s.tar/train/0", {"file_name": "0.png", "label": 3})]
    assert records[-1]["metadata_unmatched_examples"] == ["s.tar/train/metadata.csv: 7.png"]
    assert records[-1]["container"]["metadata"] == ["s.tar/train/metadata.csv"]


def test_an_earlier_versions_ids_are_kept_where_the_output_holds_them(tmp_path) -> None:
    """Done ('s.tar/./b' skipped), a reject --retry-rejects reads again or a row --refresh-changed replaces (told as
    `named_ids`): the key keeps the id its row has; the others take their paths'."""
    _shard(tmp_path / "in", [("./b.png", A), ("./cat/a.png", B), ("./c.png", C)])
    (unit,) = discover(str(tmp_path / "in"))
    *records, count = read_unit(unit, skip_ids={"s.tar/./b"}, named_ids={"s.tar/./cat/a"})
    assert [r["id"] for r in records] == ["s.tar/./cat/a", "s.tar/c"] and count["skipped"] == 1
    keys = count_keys([unit], {}, {unit.paths[0]: ["s.tar/./b"]}, False)
    assert (keys.left, keys.done) == (2, 1)
    # an output holding the new id too (both ids, made by two versions): the new one wins, and the key is skipped
    *records, count = read_unit(unit, skip_ids={"s.tar/./b", "s.tar/b"})
    assert [r["id"] for r in records] == ["s.tar/cat/a", "s.tar/c"] and count["skipped"] == 1


def _as_an_earlier_version_made_it(out: Path) -> None:
    """The output's tar ids as versions before this one wrote them for members named './x' ('s.tar/./x'), with the
    record of containers read whole to match (the ids' digest), as such a version's complete run left it."""
    renamed: list[str] = []
    for folder in ("data", "rejects"):
        for part in sorted((out / folder).glob("part-*.parquet")) if (out / folder).exists() else []:
            table = pq.read_table(part)
            ids = [i.replace("s.tar/", "s.tar/./", 1) for i in table.column("id").to_pylist()]
            renamed += ids
            table = table.set_column(table.schema.get_field_index("id"), "id", [ids])
            pq.write_table(table, part.with_name(part_name(ids)))
            part.unlink()
    entries = read_ledger(str(out), {})
    for path, entry in entries.items():
        entries[path] = type(entry)(**{**entry.__dict__, "ids_sha256": ids_digest(renamed)})
    write_ledger(str(out), {}, entries)
    assert Path(ledger_path(str(out))).exists()


@pytest.mark.usefixtures("ray_local")
def test_an_incremental_run_over_an_earlier_versions_output_adds_no_second_row(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _shard(root, [("./", None), ("./a.png", A), ("./cat/", None), ("./cat/b.png", B)])
    assert run_job(small_job_config(tmp_path, model))["output_totals"]["purified"] == 2
    _as_an_earlier_version_made_it(out)
    # the shard grows (a WebDataset shard appended to): read again, its done members skipped
    _shard(root, [("./", None), ("./a.png", A), ("./cat/", None), ("./cat/b.png", B), ("./c.png", C)])
    keys = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["input"]["tar_keys"]
    assert (keys["to_read"], keys["already_done"]) == (1, 2)
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    assert summary["status"] == "complete"
    assert (summary["this_run"]["purified"], summary["output_totals"]["purified"]) == (1, 3)  # was (3, 5)
    changed = summary["changed_inputs"]  # its rows' members are all there as they were: grown, not changed
    assert (changed["containers"], changed["containers_same_members"]) == (0, 1)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["s.tar/./a", "s.tar/./cat/b", "s.tar/c"] and rejects.empty
    # and the run after skips the shard unread: the output holds exactly the ids its read gave
    again = run_job(small_job_config(tmp_path, model, incremental=True))
    assert again["this_run"]["containers_skipped_unread"] == 1 and again["output_totals"]["purified"] == 3


@pytest.mark.usefixtures("ray_local")
def test_retry_rejects_replaces_an_earlier_versions_reject_under_its_id(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _shard(root, [("./a.png", A), ("./bad.png", b"not an image")])
    first = run_job(small_job_config(tmp_path, model))
    assert (first["output_totals"]["purified"], first["output_totals"]["rejected"]) == (1, 1)
    _as_an_earlier_version_made_it(out)
    _shard(root, [("./a.png", A), ("./bad.png", B)])  # the member mended
    summary = run_job(small_job_config(tmp_path, model, incremental=True, retry_rejects=True))
    assert summary["status"] == "complete"
    assert (summary["output_totals"]["purified"], summary["output_totals"]["rejected"]) == (2, 0)
    data, rejects = read_output(str(out))
    assert sorted(data["id"]) == ["s.tar/./a", "s.tar/./bad"] and rejects.empty
    assert json.loads((out / "_summary.json").read_text())["this_run"]["purified"] == 1


@pytest.mark.usefixtures("ray_local")
def test_refresh_changed_replaces_an_earlier_versions_rows_under_their_ids(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _shard(root, [("./a.png", A), ("./b.png", B)])
    assert run_job(small_job_config(tmp_path, model))["output_totals"]["purified"] == 2
    _as_an_earlier_version_made_it(out)
    rewritten_in_place(root / "s.tar", _tar([("./a.png", C), ("./b.png", B)]))  # a member changed in place
    summary = run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))
    assert summary["status"] == "complete" and summary["output_totals"]["purified"] == 2  # was 4
    data, _ = read_output(str(out))
    assert sorted(data["id"]) == ["s.tar/./a", "s.tar/./b"]
    assert data.set_index("id").loc["s.tar/./a", "source_sha256"] == hashlib.sha256(C).hexdigest()
