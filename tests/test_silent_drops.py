"""Inputs that ended up in neither data/ nor rejects/ while the run said complete, two inputs given one id, a read
that never ended, and rejects whose reason was wrong (hunt of Dec 3).

- zip: a member with a '..' folder ('../evil.png', 'a/../b.png') was skipped as a hidden name, unread and
  uncounted; a member named 'a.png\\0x' (zipfile cuts names at a NUL) replaced an earlier 'a.png' unread; a symbolic
  link was read as its target's path ("not a recognised image format"), where a tar shard's links are followed; a
  folder entry stored without its '/' was an "empty file" reject; a member compressed with a method zipfile cannot
  read was called corrupt.
- a FIFO (or a link to a device) among the input files: reading it waited for a writer forever, and the run with it.
- object store keys that differ only in empty, '.' or '..' folders ('a//b.png' beside 'a/b.png') gave one id; a
  shard under a shard ('d.tar/x.parquet' beside 'd.tar') gave ids inside the other's; a key ending in '/' that holds
  bytes was a reject saying the key does not exist.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
import zipfile

import pytest

from pipeline.job import run_job
from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, read_output, small_job_config, tiny_model_file
from tests.s3util import moto_s3

PNG, PNG2 = image_bytes(8, 8, 1), image_bytes(8, 8, 2)


def _zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in entries:
            archive.writestr(name, data)
    return buf.getvalue()


def _link(name: str, mode: int = stat.S_IFLNK | 0o777) -> zipfile.ZipInfo:
    """A zip entry as Info-ZIP stores a symbolic link (or, with another mode, a folder): the Unix mode in the high bits."""
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, mode << 16
    return info


def _records(folder) -> dict[str, dict]:
    """id -> record, of every unit under `folder`; the count records' totals under 'count'."""
    out: dict[str, dict] = {"count": {"n": 0}}
    for unit in discover(str(folder)):
        for r in read_unit(unit):
            if r["kind"] == "count":
                out["count"]["n"] += r["n"]
            else:
                assert r["id"] not in out, f"{r['id']} given twice"
                out[r["id"]] = r
    return out


# --- zip archives ---

def test_zip_members_with_a_dotdot_folder_are_rejects_not_dropped(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip([("../evil.png", PNG), ("a/../b.png", PNG), ("ok.png", PNG),
                                           ("../.hidden.png", PNG)]))  # hidden wherever it lies: skipped, as before
    records = _records(tmp_path)
    # was: only ok.png, count 1; the two others gone without a row or a count, and the run "complete"
    assert records["count"]["n"] == 3 and records["d.zip/ok.png"]["kind"] == "image"
    for id_ in ("d.zip/../evil.png", "d.zip/a/../b.png"):
        assert records[id_]["kind"] == "reject" and "'..' folder in its path" in records[id_]["error"]


def test_a_zip_member_named_with_a_nul_does_not_replace_the_member_it_is_cut_to(tmp_path) -> None:
    raw = _zip([("a.png", PNG), ("a.pngXevil.png", PNG2)]).replace(b"a.pngXevil.png", b"a.png\x00evil.png")
    (tmp_path / "d.zip").write_bytes(raw)
    records = _records(tmp_path)
    # was: one image, a.png with the bytes of 'a.png\0evil.png', the real a.png lost unread
    assert records["count"]["n"] == 1 and records["d.zip/a.png"]["kind"] == "reject"
    assert "'a.png' and 'a.png\\x00evil.png'" in records["d.zip/a.png"]["error"]


def test_zip_symbolic_links_are_read_as_the_member_they_point_to(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip([
        ("all/1.png", PNG), (_link("cat/1.png"), b"../all/1.png"), (_link("cat/2.png"), b"1.png"),  # a link to a link
        (_link("gone.png"), b"missing.png"), (_link("out.png"), b"../../etc/passwd"), (_link("abs.png"), b"/etc/passwd"),
        (_link("loop1.png"), b"loop2.png"), (_link("loop2.png"), b"loop1.png")]))
    records = _records(tmp_path)
    assert records["count"]["n"] == 8
    # was: each link an image record of its target's path (b'../all/1.png'), then "not a recognised image format"
    assert records["d.zip/cat/1.png"]["data"] == PNG and records["d.zip/cat/2.png"]["data"] == PNG
    reasons = {id_.removeprefix("d.zip/"): r["error"] for id_, r in records.items() if r.get("kind") == "reject"}
    assert "target missing.png is not a file in the archive" in reasons["gone.png"]
    assert "points outside the archive" in reasons["out.png"] and "points outside the archive" in reasons["abs.png"]
    assert "the links loop: loop1.png -> loop2.png -> loop1.png" in reasons["loop1.png"]


def test_a_zip_folder_entry_without_its_slash_is_no_input(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip([(_link("cat", stat.S_IFDIR | 0o755), b""), ("cat/1.png", PNG),
                                           ("empty.png", b"")]))  # an empty file is still a file: its reject
    records = _records(tmp_path)
    # was: 'd.zip/cat' an "empty file" reject for a folder
    assert sorted(records) == ["count", "d.zip/cat/1.png", "d.zip/empty.png"] and records["count"]["n"] == 2


def test_a_zip_member_compressed_with_an_unknown_method_is_not_called_corrupt(tmp_path) -> None:
    raw = bytearray(_zip([("m.png", PNG)]))
    raw[8:10] = (98).to_bytes(2, "little")  # PPMd, in the local header and the central directory
    at = raw.find(b"PK\x01\x02")
    raw[at + 10 : at + 12] = (98).to_bytes(2, "little")
    (tmp_path / "d.zip").write_bytes(bytes(raw))
    error = _records(tmp_path)["d.zip/m.png"]["error"]
    assert "compressed with method 98 (ppmd), which cannot be read" in error and "corrupt" not in error


def test_an_archive_or_heif_photo_inside_a_zip_is_a_reject_that_says_what_it_is(tmp_path) -> None:
    from pipeline.decode import decode_image
    from tests.jobutil import tar_bytes

    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    (tmp_path / "outer.zip").write_bytes(_zip([("inner.zip", _zip([("x.png", PNG)])), ("s.tar", tar_bytes({"k.png": PNG})),
                                               ("IMG_0001.HEIC", heic), ("notes.txt", b"just text")]))
    reasons = {id_: decode_image(r["data"]) for id_, r in _records(tmp_path).items() if id_ != "count"}
    # was: "not a recognised image format" alone, for each
    assert reasons["outer.zip/inner.zip"].startswith("not a recognised image format (it is a zip archive: ")
    assert reasons["outer.zip/s.tar"].startswith("not a recognised image format (it is a tar archive: ")
    assert "never inside another archive" in reasons["outer.zip/s.tar"]
    assert reasons["outer.zip/IMG_0001.HEIC"] == ("not a recognised image format (HEIF/AVIF, brand heic, which is not "
                                                   "read: convert it to PNG or JPEG)")
    assert reasons["outer.zip/notes.txt"] == "not a recognised image format"


def test_a_zstd_shard_or_a_7z_or_rar_archive_is_a_reject_that_says_it_is_not_read(tmp_path) -> None:
    """A WebDataset shard compressed with zstd (`shard.tar.zst`), lz4, a 7z or RAR archive: none is read anywhere, and
    each was the reject 'not a recognised image format', as if it were a damaged image."""
    import zlib

    from pipeline.decode import decode_image
    from tests.jobutil import tar_bytes

    zstd_frame = bytes.fromhex("28b52ffd") + zlib.compress(tar_bytes({"k.png": PNG}))  # its magic is what tells it
    inputs = {"shard-0001.tar.zst": zstd_frame, "s.tar.lz4": bytes.fromhex("04224d18") + bytes(32),
              "photos.7z": b"7z\xbc\xaf\x27\x1c" + bytes(32), "photos.rar": b"Rar!\x1a\x07\x01\x00" + bytes(32)}
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    reasons = {id_: decode_image(r["data"]) for id_, r in _records(tmp_path).items() if id_ != "count"}
    assert set(reasons) == set(inputs)  # each one a reject, none dropped
    said = {"shard-0001.tar.zst": "zstd-compressed data (a .tar.zst shard?)", "s.tar.lz4": "lz4-compressed data",
            "photos.7z": "a 7z archive", "photos.rar": "a RAR archive"}
    for name, kind in said.items():
        assert reasons[name] == (f"not a recognised image format (it is {kind}, a format the job does not read: "
                                 "decompress or extract it, or repack it as .tar, .tar.gz, .tar.xz, .tar.bz2 or .zip)")


# --- Parquet cells ---

def test_a_parquet_image_cell_that_holds_something_else_says_what(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array([list(PNG), [1, None, 2], None], pa.list_(pa.uint8()))}), tmp_path / "l.parquet")
    text = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": "iVBORw0KGgo=", "path": None}], text)}), tmp_path / "s.parquet")
    records = _records(tmp_path)
    assert records["l.parquet#0"]["data"] == PNG and records["count"]["n"] == 4
    # was: "holds no bytes" for all three
    assert records["l.parquet#1"]["error"] == "row 1: image column 'image' holds a list with 1 null item(s), not bytes"
    assert records["l.parquet#2"]["error"] == "row 2: image column 'image' holds no bytes"
    assert records["s.parquet#0"]["error"].startswith("row 0: image column 'image' holds text in its 'bytes' field, not bytes")


def test_a_parquet_file_with_a_column_name_twice_is_one_reject_saying_so(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_arrays([pa.array([PNG, PNG2]), pa.array([1, 2]), pa.array(["a", "b"])],
                                        names=["image", "label", "label"]), tmp_path / "t.parquet")
    records = _records(tmp_path)
    # was: each row a reject "row group 0 of the Parquet file cannot be read: KeyError: Field "label" exists 2 times"
    assert sorted(records) == ["count", "t.parquet#unreadable"]
    assert records["t.parquet#unreadable"]["error"] == (
        "unreadable Parquet file: ValueError: columns named more than once ('label'), whose values could not be told "
        "apart in the output: rename them")


def test_rows_a_parquet_footer_gives_a_row_group_that_its_data_lacks_are_rejects(tmp_path) -> None:
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [image_bytes(4, 4, i) for i in range(37)]}), tmp_path / "t.parquet")
    raw = bytearray((tmp_path / "t.parquet").read_bytes())
    footer = len(raw) - 8 - struct.unpack("<I", raw[-8:-4])[0]
    # the row group's num_rows (Thrift compact: field 3 after field 2, i64, zigzag 37 = 0x4a) made 40, as a writer's bug
    # or a damaged footer could; its file-level count stays 37
    hits = [i for i in range(footer, len(raw) - 9) if raw[i : i + 2] == b"\x16\x4a"]
    for i in hits:
        raw[i + 1] = 0x50
        (tmp_path / "t.parquet").write_bytes(bytes(raw))
        if pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).num_rows == 40:
            break
        raw[i + 1] = 0x4A
    else:
        pytest.skip("no row-group count found to change in this pyarrow's footer")
    records = _records(tmp_path)
    # was: 37 images, no reject, and the file counted as read whole
    assert sum(r.get("kind") == "image" for r in records.values()) == 37 and records["count"]["n"] == 40
    assert [records[f"t.parquet#{j}"]["error"] for j in (37, 39)] == [
        f"row {j}: row group 0 of the Parquet file cannot be read: ValueError: its data ends after 37 of the 40 rows "
        "the file's footer gives it" for j in (37, 39)]


# --- special files among the input files ---

def test_a_fifo_among_the_input_files_is_a_reject_not_a_read_that_never_ends(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    os.mkfifo(tmp_path / "p.png")
    os.symlink("/dev/null", tmp_path / "null.png")
    found: list[dict] = []
    reader = threading.Thread(target=lambda: found.extend(_records(tmp_path).values()), daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():  # the old code waits in open() for a writer: be one, so that the thread ends
        os.close(os.open(tmp_path / "p.png", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(20)
        pytest.fail("reading a FIFO among the input files waited for a writer")
    records = {r["id"]: r for r in found if "id" in r}
    assert records["a.png"]["kind"] == "image"
    assert "p.png is a FIFO (named pipe), not a regular file" in records["p.png"]["error"]
    assert "null.png is a character device, not a regular file" in records["null.png"]["error"]


def test_a_folder_that_cannot_be_listed_stops_the_run_instead_of_vanishing(tmp_path, monkeypatch) -> None:
    from fsspec.implementations.local import LocalFileSystem

    for name in ("a.png", "locked/b.png", "_private/c.png", "empty/.keep"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(PNG)
    (tmp_path / "empty" / ".keep").unlink()
    ls = LocalFileSystem.ls

    def denied(self, path, detail=False, **kwargs):  # as a folder without read permission answers (root reads any)
        if path.rstrip("/").endswith(("/locked", "/_private")):
            raise PermissionError(13, "Permission denied", path)
        return ls(self, path, detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", denied)
    # was: a.png alone, and a run "complete" without locked/b.png
    with pytest.raises(PermissionError, match=r"input folder .*/locked cannot be listed .*Permission denied"):
        discover(str(tmp_path))
    (tmp_path / "locked" / "b.png").rename(tmp_path / "b.png")
    (tmp_path / "locked").rename(tmp_path / "open")
    # a hidden folder is skipped whatever it holds, and an empty one is empty: neither stops the run
    assert [u.paths for u in discover(str(tmp_path))] == [(str(tmp_path / "a.png"), str(tmp_path / "b.png"))]


# --- object store keys ---

def test_object_store_keys_that_give_one_id_stop_the_run_naming_both() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    try:
        for key in ("/silent-drops/a/b.png", "/silent-drops/a//b.png", "/silent-drops/x/../c.png",
                    "/silent-drops/c.png"):
            fs.pipe_file(key, PNG)
        # was: ids a/b.png, a/b.png, c.png, c.png, and a run that ended "inconsistent" after purifying all four
        with pytest.raises(ValueError, match="2 pair") as stop:
            discover("memory://silent-drops")
        assert "'/silent-drops/a//b.png' and '/silent-drops/a/b.png' (id a/b.png)" in str(stop.value)
        assert "'/silent-drops/c.png' and '/silent-drops/x/../c.png' (id c.png)" in str(stop.value)
        fs.rm("/silent-drops/a//b.png")
        fs.rm("/silent-drops/c.png")
        units = discover("memory://silent-drops")  # alone, such a key is an input like any other
        assert sorted(r["id"] for u in units for r in read_unit(u) if r["kind"] == "image") == ["a/b.png", "c.png"]
    finally:
        fs.rm("/silent-drops", recursive=True)


@pytest.fixture(scope="module")
def s3():
    with moto_s3("silent-drops") as (client, options):
        yield client, options


def test_a_shard_under_a_shard_stops_the_run(s3) -> None:
    client, options = s3
    client.put_object(Bucket="silent-drops", Key="nest/d.tar", Body=b"x")
    client.put_object(Bucket="silent-drops", Key="nest/d.tar/x.parquet", Body=b"y")
    # was: both read; x.parquet's ids (d.tar/x.parquet#0) lie inside the shard's, where a member can give them too
    with pytest.raises(ValueError, match=r"d.tar/x.parquet \(beside s3://silent-drops/nest/d.tar\)"):
        discover("s3://silent-drops/nest/", options)


def test_a_key_ending_in_a_slash_that_holds_bytes_is_a_reject_saying_so(s3) -> None:
    client, options = s3
    client.put_object(Bucket="silent-drops", Key="slash/c.png/", Body=PNG)
    client.put_object(Bucket="silent-drops", Key="slash/empty/", Body=b"")  # a folder marker: no input
    (unit,) = discover("s3://silent-drops/slash/", options)
    reject, count = read_unit(unit, options)
    # was: "could not read file: FileNotFoundError: The specified key does not exist."
    assert reject["id"] == "c.png" and "key ends in '/' holding 268 bytes" in reject["error"] and count["n"] == 1


# --- the whole job ---

@pytest.mark.usefixtures("ray_local")
def test_a_run_over_such_a_zip_accounts_for_every_member(tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "d.zip").write_bytes(_zip([("../evil.png", PNG), ("all/1.png", PNG), (_link("cat/1.png"), b"../all/1.png"),
                                       (_link("gone.png"), b"missing.png"), ("dup.png", PNG),
                                       ("dup.pngX", PNG2)]).replace(b"dup.pngX", b"dup.png\x00"))
    summary = run_job(small_job_config(tmp_path, tiny_model_file(tmp_path)))
    data, rejects = read_output(str(tmp_path / "out"))
    assert summary["status"] == "complete" and summary["this_run"]["read"] == 5
    assert sorted(data["id"]) == ["d.zip/all/1.png", "d.zip/cat/1.png"]
    assert sorted(rejects["id"]) == ["d.zip/../evil.png", "d.zip/dup.png", "d.zip/gone.png"]
