"""Gaps a mutation audit of the Parquet and tar readers (`sources.parquet_files`, `sources.tar_shards`) found: each
test fails on a small plausible bug that the rest of the fast suite let through."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import (
    ReadUnit,
    discover,
    find_image_column,
    image_column_problem,
    parquet_files,
    read_unit,
    rows_without_image,
)
from pipeline.sources.ids import LOOKALIKE
from tests.jobutil import image_bytes, tar_bytes
from tests.test_input_changed_while_read import CHANGED, _replace_after_the_first_pass
from tests.test_sizecap_readers import _SizelessFileSystem
from tests.test_sizecap_readers import sizeless as _sizeless_fixture

sizeless = _sizeless_fixture  # a store whose files report no size (as a server that sends no Content-Length)


def _records(root: Path, **kw) -> list[dict]:
    return [r for unit in discover(str(root)) for r in read_unit(unit, **kw)]


def _write(path: Path, table: pa.Table, **kw) -> None:
    pq.write_table(table, path, **kw)


def test_a_row_larger_than_a_whole_batch_is_still_read(tmp_path) -> None:
    # one row over BATCH_BYTES (16 MB as stored): a batch of at least one row, not of none
    big = b"\0" * (17 * 2**20)
    _write(tmp_path / "t.parquet", pa.table({"image": [big], "label": [7]}), compression="zstd")
    image, count = _records(tmp_path, max_image_bytes=32 * 2**20)
    assert (image["kind"], image["id"], len(image["data"]), image["meta"]) == ("image", "t.parquet#0", len(big), {"label": 7})
    assert count["n"] == 1


def test_a_struct_without_bytes_is_not_taken_for_the_image_column() -> None:
    # 'image' holds only paths: the images are in 'jpg'
    schema = pa.schema([("image", pa.struct([("path", pa.string())])), ("jpg", pa.binary())])
    assert find_image_column(schema) == "jpg"


def _parquet_unit(path: Path) -> ReadUnit:
    return ReadUnit("parquet", (str(path),), str(path.parent), (path.stat().st_size,))


def test_an_image_column_named_twice_is_a_reject_saying_so_and_no_crash_before_the_run(tmp_path) -> None:
    png = image_bytes(8, 8, 1)
    table = pa.Table.from_arrays([pa.array([png]), pa.array([png]), pa.array([1])], names=["image", "image", "n"])
    _write(tmp_path / "t.parquet", table)
    for column in (None, "image"):
        reject, count = _records(tmp_path, image_column=column)
        assert (reject["kind"], reject["id"]) == ("reject", "t.parquet#unreadable")
        assert "columns named more than once ('image')" in reject["error"], reject["error"]
    # the check of --image-column on the first file, before the run, leaves the file to the run (no KeyError)
    assert image_column_problem(_parquet_unit(tmp_path / "t.parquet"), {}, "image") is None
    problem = image_column_problem(_parquet_unit(tmp_path / "t.parquet"), {}, "img")
    assert problem.startswith("--image-column img: image column 'img' not in Parquet columns ['image', 'image', 'n']")
    assert problem.endswith(f", in {tmp_path / 't.parquet'}")  # which file


def test_a_shard_of_unknown_size_is_streamed_when_no_local_copy_can_be_made(sizeless, tmp_path, monkeypatch) -> None:
    members = {f"{i:04d}.png": image_bytes(8, 8, i) for i in range(3)}
    _SizelessFileSystem().pipe(f"{sizeless}/s.tar", tar_bytes(members))
    monkeypatch.setattr(_SizelessFileSystem, "size", lambda self, path: None)  # as a server with no Content-Length
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    unit = ReadUnit("tar", (f"{sizeless}/s.tar",), sizeless)
    records = list(read_unit(unit, in_memory_bytes=100))  # over --in-memory-mb: copied, but the copy cannot be made
    assert [(r["kind"], r["id"]) for r in records[:-1]] == [("image", f"s.tar/{i:04d}") for i in range(3)]
    assert [r["data"] for r in records[:-1]] == list(members.values())



def test_keys_done_before_are_skipped_and_still_counted_as_the_shards_ids(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0002.png": image_bytes(8, 8, 2)}))
    records = _records(tmp_path, skip_ids={"s.tar/0001"})
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/0002"]
    count = records[-1]
    assert (count["n"], count["skipped"], count["container"]["records"]) == (1, 1, 2)


def test_a_shard_keying_numbered_names_apart_supersedes_the_one_key_they_had(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(tar_bytes({"cat.0.png": image_bytes(8, 8, 1), "cat.1.png": image_bytes(8, 8, 2)}))
    records = _records(tmp_path)
    assert [r["id"] for r in records if r["kind"] == "image"] == ["s.tar/cat.0", "s.tar/cat.1"]
    assert records[-1]["container"]["superseded"] == ["s.tar/cat"]


def test_a_latin1_name_and_its_escaped_spelling_are_one_reject_naming_both(tmp_path) -> None:
    members = {"caf\u00e9.png": image_bytes(8, 8, 1), "caf\\xe9.png": image_bytes(8, 8, 2)}
    (tmp_path / "s.tar").write_bytes(tar_bytes(members, encoding="latin-1"))  # 'caf\xe9' as bytes, and as text
    records = _records(tmp_path)
    assert [r["kind"] for r in records[:-1]] == ["reject"]
    (reject,) = records[:-1]
    assert reject["id"] == "s.tar/caf\\xe9"
    assert "have one id" in reject["error"] and "rename one and run again with --retry-rejects" in reject["error"]


def test_an_image_column_named_with_a_type_that_holds_no_bytes_is_refused_naming_the_type() -> None:
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64())])
    with pytest.raises(ValueError, match=r"column 'label' has type int64, not image bytes"):
        find_image_column(schema, "label")


def test_a_shard_replaced_between_its_passes_is_said_to_have_changed_not_to_be_unreadable(tmp_path, monkeypatch) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(2)}))
    _replace_after_the_first_pass(monkeypatch, lambda: shard.write_bytes(tar_bytes({"9.png": image_bytes(8, 8, 9)})))
    (unit,) = discover(str(tmp_path))
    (own,) = [r for r in read_unit(unit, in_memory_bytes=0) if r.get("id") == "s.tar#unreadable"]
    assert own["error"].startswith(CHANGED), own["error"]


def test_a_key_the_shard_still_gives_is_never_called_superseded(tmp_path) -> None:
    # 'cat.png' is key 'cat' of this version: its row (or reject) is not out of date, though 'cat.0', 'cat.1' split off
    members = {"cat.0.png": image_bytes(8, 8, 1), "cat.1.png": image_bytes(8, 8, 2), "cat.png": image_bytes(8, 8, 3)}
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    records = _records(tmp_path)
    assert sorted(r["id"] for r in records if r["kind"] == "image") == ["s.tar/cat", "s.tar/cat.0", "s.tar/cat.1"]
    assert "superseded" not in records[-1]["container"]


def test_no_image_column_names_the_columns_there_are() -> None:
    schema = pa.schema([("caption", pa.string()), ("label", pa.int64())])
    with pytest.raises(ValueError, match=r"among Parquet columns \['caption', 'label'\]"):
        find_image_column(schema)


def test_a_twin_added_after_its_id_was_purified_gets_a_reject_of_its_own_given_once(tmp_path) -> None:
    members = {"caf\u00e9.png": image_bytes(8, 8, 1), "caf\\xe9.png": image_bytes(8, 8, 2)}
    (tmp_path / "s.tar").write_bytes(tar_bytes(members, encoding="latin-1"))
    done = {"s.tar/caf\\xe9"}  # purified under this id by an earlier run, before the other name was added
    records = _records(tmp_path, skip_ids=done, purified_ids=done)
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == f"s.tar{LOOKALIKE}caf\\xe9"
    assert "an earlier run purified one of them under s.tar/caf\\xe9" in reject["error"]
    # a later run, which finds that reject among the done ids, gives it no second time
    again = _records(tmp_path, skip_ids=done | {reject["id"]}, purified_ids=done)
    assert [r for r in again if r["kind"] in ("reject", "image")] == []
    assert again[-1]["skipped"] == 2


def test_a_key_whose_members_together_are_over_the_limit_is_a_reject_and_the_next_key_is_read(tmp_path) -> None:
    limit = 2**20
    members = {"0001.png": image_bytes(8, 8, 1), "0001.a": b"\1" * (limit // 2), "0001.b": b"\2" * (limit // 2),
               "0002.png": image_bytes(8, 8, 2)}
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    records = _records(tmp_path, max_image_bytes=limit)
    assert [(r["kind"], r["id"]) for r in records[:-1]] == [("reject", "s.tar/0001"), ("image", "s.tar/0002")]
    assert "tar key 0001 (its members together)" in records[0]["error"]


def test_a_file_whose_footer_gives_no_null_counts_has_an_unknown_number_of_rows_without_image(tmp_path) -> None:
    _write(tmp_path / "t.parquet", pa.table({"image": [image_bytes(8, 8, 1), None]}), write_statistics=False)
    assert rows_without_image(_parquet_unit(tmp_path / "t.parquet"), {}, None) is None  # not 0: nothing is known
    _write(tmp_path / "t.parquet", pa.table({"image": [image_bytes(8, 8, 1), None]}))
    assert rows_without_image(_parquet_unit(tmp_path / "t.parquet"), {}, None) == 1


def test_rows_of_a_found_image_column_name_the_other_columns_that_could_hold_the_images(tmp_path) -> None:
    png = image_bytes(8, 8, 1)
    _write(tmp_path / "t.parquet", pa.table({"data": [png], "hash": [b"\1" * 32], "label": [3]}))
    (record,) = _records(tmp_path)[:-1]
    assert record["kind"] == "image"
    assert record["decode_note"] == ("Parquet column 'data', found as the image column; --image-column picks another: "
                                     "'hash'")
    (record,) = _records(tmp_path, image_column="hash")[:-1]  # named: no note
    assert "decode_note" not in record
    _write(tmp_path / "t.parquet", pa.table({"data": [png], "label": [3]}))  # nothing else could: no note
    (record,) = _records(tmp_path)[:-1]
    assert "decode_note" not in record


def test_an_empty_image_cell_is_a_reject_saying_it_holds_no_bytes(tmp_path) -> None:
    _write(tmp_path / "t.parquet", pa.table({"image": [b"", image_bytes(8, 8, 1)]}))
    reject, image, _count = _records(tmp_path)
    assert (reject["kind"], reject["id"], image["kind"]) == ("reject", "t.parquet#0", "image")
    assert reject["error"] == "row 0: image column 'image' holds no bytes"


def test_an_input_column_named_as_a_job_column_keeps_its_value_under_input_(tmp_path) -> None:
    _write(tmp_path / "t.parquet", pa.table({"image": [image_bytes(8, 8, 1)], "id": ["mine"], "source": ["web"]}))
    (record,) = _records(tmp_path)[:-1]
    assert (record["id"], record["meta"]) == ("t.parquet#0", {"input_id": "mine", "input_source": "web"})


@pytest.mark.parametrize("done", [False, True])
def test_damage_after_some_rows_of_a_group_rejects_only_the_rows_not_yet_given(tmp_path, monkeypatch, done) -> None:
    """A damaged page rejects the rows it holds, not those read before it. A row an earlier run purified (`done`: in
    skip_ids) is skipped there too, not rejected beside the row the output holds for it."""
    from tests.test_parquet_groups import _file

    _file(tmp_path)  # 6 rows, 3 groups of 2
    monkeypatch.setattr(parquet_files, "batch_rows", lambda group, most: 1)
    original = pq.ParquetFile.iter_batches

    def damaged(self, *args, **kwargs):
        for n, batch in enumerate(original(self, *args, **kwargs)):
            if kwargs.get("row_groups") == [1] and n == 1:
                raise ValueError("a page of row 3 is damaged")
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", damaged)
    records = _records(tmp_path, skip_ids={"t.parquet#3"} if done else set())[:-1]
    assert [(r["kind"], r["id"]) for r in records] == [("image", f"t.parquet#{i}") for i in range(3)] + [
        *([] if done else [("reject", "t.parquet#3")]), ("image", "t.parquet#4"), ("image", "t.parquet#5")]


def test_a_rows_image_at_exactly_the_size_limit_is_read_and_its_other_columns_count_against_it(tmp_path) -> None:
    """--max-image-mb is the most a row may hold: its image at exactly the limit is read, one byte more is a reject;
    and the row's other columns' text and bytes count with its image (a caption of one character over the limit
    together is a reject saying so), so a large text column cannot carry a row past the limit."""
    png = image_bytes(8, 8, 1)
    limit = len(png)
    table = pa.table({"image": pa.array([png, png, png + b"\0"], pa.binary()),
                      "caption": pa.array(["", "x", ""], pa.string()),
                      "extra": pa.array([b"", b"", b""], pa.binary())})
    _write(tmp_path / "t.parquet", table)
    rows = {r["id"]: r for r in _records(tmp_path, max_image_bytes=limit) if r["kind"] != "count"}
    assert rows["t.parquet#0"]["kind"] == "image" and rows["t.parquet#0"]["data"] == png
    assert rows["t.parquet#1"]["kind"] == "reject"
    assert "its image and its other columns' text and bytes together" in rows["t.parquet#1"]["error"]
    assert rows["t.parquet#2"]["kind"] == "reject" and "image column 'image'" in rows["t.parquet#2"]["error"]
    table = table.set_column(1, "caption", pa.array(["", "", ""], pa.string()))
    _write(tmp_path / "t.parquet", table.set_column(2, "extra", pa.array([b"", b"y", b""], pa.binary())))
    rows = {r["id"]: r for r in _records(tmp_path, max_image_bytes=limit) if r["kind"] != "count"}
    assert rows["t.parquet#1"]["kind"] == "reject"  # bytes count as text does


def test_a_tar_member_name_stored_twice_is_read_as_the_later_one(tmp_path) -> None:
    """As extraction does (docs/job.md): a shard appended to with a new version of a member holds both, and the later
    is the image; its label sidecar too."""
    import io
    import tarfile

    first, later = image_bytes(8, 8, 1), image_bytes(8, 8, 2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("0001.png", first), ("0001.cls", b"3"), ("0001.png", later), ("0001.cls", b"4")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    (record,) = [r for r in _records(tmp_path) if r["kind"] != "count"]
    assert record["id"] == "s.tar/0001" and record["data"] == later and record["meta"]["label"] == 4
