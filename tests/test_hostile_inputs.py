"""Inputs from senders who may be hostile, and what each may cost: a .json sidecar nested thousands deep broke off its
whole tar shard (its own key lost, every other key rejected), and one nested 40 deep wrote a part file no Parquet
reader opens, so the run failed and every later run stopped on it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.sources import discover, read_unit
from pipeline.sources.webdataset_keys import MAX_JSON_DEPTH
from pipeline.stages import batch_of, write_stage
from tests.jobutil import image_bytes, tar_bytes
from tests.webutil import QuietHandler, serving


def _records(folder: Path) -> list[dict]:
    return [r for unit in discover(str(folder)) for r in read_unit(unit) if r["kind"] in ("image", "reject")]


def _written(tmp_path: Path, records: list[dict]) -> list[dict]:
    """The rows write_stage writes of image records (the input bytes as the PNG), read back as a reader would."""
    images = [{**{k: v for k, v in r.items() if k != "data"}, "png": r["data"], "width": 8, "height": 8}
              for r in records if r["kind"] == "image"]
    manifest = write_stage(batch_of(images), str(tmp_path / "out"), {})
    (name,) = json.loads(manifest["files"][0])
    return pq.read_table(tmp_path / "out" / name).to_pylist()


def _nested_object(depth: int, inner: str = "object") -> dict:
    """An object `depth` levels deep: objects (or lists) within it."""
    value: object = 1
    for _ in range(depth - 1):
        value = {"a": value} if inner == "object" else [value]
    return {"d": value}


def test_a_json_sidecar_nested_too_deep_to_parse_costs_neither_its_key_nor_the_shard(tmp_path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # valid JSON; Python's parser gives up with RecursionError
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.json": deep,
                                                "0002.png": image_bytes(8, 8, 2), "0002.json": b'{"caption": "ok"}'}))
    records = _records(tmp_path)
    assert [(r["kind"], r["id"]) for r in records] == [("image", "s.tar/0001"), ("image", "s.tar/0002")]
    assert records[0]["meta"] == {"json": deep.decode()}  # kept as text, as JSON that is not an object is
    assert records[1]["meta"] == {"caption": "ok"}


def test_a_json_sidecar_nested_deeper_than_parquet_readers_open_is_kept_as_text(tmp_path) -> None:
    # 60 lists within each other are 120 Parquet schema levels: pyarrow opens at most 100
    too_deep, deepest = {"deep": _nested_object(60, inner="list")["d"]}, _nested_object(MAX_JSON_DEPTH)
    (tmp_path / "s.tar").write_bytes(tar_bytes({
        "0001.png": image_bytes(8, 8, 1), "0001.json": json.dumps(too_deep).encode(),
        "0002.png": image_bytes(8, 8, 2), "0002.json": json.dumps({"l": [[[[1]]]] * 2, **deepest}).encode()}))
    rows = {r["id"]: r for r in _written(tmp_path, _records(tmp_path))}  # read back: the file opens
    assert json.loads(rows["s.tar/0001"]["json"]) == too_deep
    assert rows["s.tar/0002"]["d"] == deepest["d"] and rows["s.tar/0002"]["l"] == [[[[1]]]] * 2
    assert rows["s.tar/0002"]["json"] is None


# --- names printed to the terminal or a log ---

# \u2028 (LINE SEPARATOR): a line break to Python's splitlines() and to log viewers that read a log so
FORGED = "_x\x1b[2J\x1b[31m\nerror: forged by a file name\u202egnp.exe\u2028error: forged again"


def _one_safe_line(text: str) -> None:
    assert "\x1b" not in text and "\n" not in text and "\u202e" not in text and "\u2028" not in text
    assert "\\x1b[2J\\x1b[31m" in text  # still told, escaped


def test_a_hidden_files_name_is_printed_escaped_not_as_terminal_codes_or_a_line_of_its_own(tmp_path, capsys) -> None:
    from pipeline.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    (tmp_path / "in" / FORGED).write_bytes(b"x")
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    # the dry run names its input and output too, whose folder (this test's) has "hidden" in its name
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "hidden" in line.replace(str(tmp_path), "")]
    _one_safe_line(line)
    assert "\\nerror: forged by a file name\\u202egnp.exe\\u2028error: forged again" in line


def test_an_error_naming_an_input_is_printed_as_one_escaped_line(tmp_path, capsys) -> None:
    from pipeline.cli import main

    folder = tmp_path / "in" / FORGED[1:]
    folder.mkdir(parents=True)
    (folder / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1)}))
    (folder / "s.tar#unreadable").write_bytes(b"x")  # a file whose id the shard's reject could equal: the run stops
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: ")
    _one_safe_line(line)


# --- web folders: the index page is the sender's too ---



def _page(folder: Path, *links: str) -> None:
    (folder / "index.html").write_text("<html>" + "".join(f'<a href="{link}">{link}</a>' for link in links) + "</html>")


def test_a_web_folders_links_out_of_it_are_not_followed(web) -> None:
    folder, url = web
    (folder / "data" / "sub").mkdir(parents=True)
    for name in ("secret.png", "data/ok.png", "data/sub/in.png"):
        (folder / name).write_bytes(image_bytes(8, 8, 1))
    _page(folder / "data", "ok.png", "../secret.png", "%2e%2e/secret.png", "sub/../../secret.png", f"{url}secret.png",
          "sub/")
    _page(folder / "data" / "sub", "in.png", "../../secret.png")
    units = discover(url + "data/")
    assert [p for u in units for p in u.paths] == [url + "data/ok.png", url + "data/sub/in.png"]


def test_a_web_folder_linking_back_above_itself_is_listed_once(web) -> None:
    folder, url = web
    (folder / "data" / "sub").mkdir(parents=True)
    (folder / "data" / "sub" / "in.png").write_bytes(image_bytes(8, 8, 1))
    _page(folder / "data", "sub/")
    _page(folder / "data" / "sub", "in.png", "../../data/", "../", "./")  # each a way back: fsspec walked them forever
    units = discover(url + "data/")
    assert [p for u in units for p in u.paths] == [url + "data/sub/in.png"]


class _MadeUpFolders(QuietHandler):
    """A server whose every page links made-up subfolders: `a/` (deep: /a/, /a/a/, ... for ever) or 1,000 new ones."""

    wide = False
    pages: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        type(self).pages.append(self.path)
        links = [f"d{i}/" for i in range(1000)] if self.wide else ["a/", "x.png"]
        body = "".join(f'<a href="{link}">{link}</a>' for link in links).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_web_folder_whose_pages_link_endless_subfolders_stops_the_listing_at_a_depth_naming_it(tmp_path) -> None:
    import pytest

    from pipeline.sources.walk import MAX_WEB_DEPTH, WebFolderTooLarge

    class Deep(_MadeUpFolders):
        pages: list[str] = []

    with serving(tmp_path, Deep) as url, pytest.raises(WebFolderTooLarge) as err:
        discover(url)  # listed until memory ran out: 16,000 pages and 1.6 GB in 30 s
    assert f"links subfolders more than {MAX_WEB_DEPTH} deep" in str(err.value) and "/a/a/a/" in str(err.value)
    assert len(Deep.pages) == MAX_WEB_DEPTH + 1  # the input's page and one a level


def test_a_web_folder_linking_more_folders_than_the_limit_stops_the_run_before_any_work(tmp_path, capsys) -> None:
    from pipeline.cli import main
    from pipeline.sources.walk import MAX_WEB_FOLDERS

    class Wide(_MadeUpFolders):
        wide, pages = True, []

    with serving(tmp_path, Wide) as url:
        assert main(["--input", url, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and f"links more than {MAX_WEB_FOLDERS:,} folders" in line
    assert len(Wide.pages) <= MAX_WEB_FOLDERS // 1000 + 1  # 850 pages of 1,000 each took 3.9 GB, and went on
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("length", [None, "true"], ids=["no-content-length", "content-length"])
def test_a_web_folders_index_page_longer_than_the_limit_stops_the_run_before_any_work(tmp_path, capsys, length) -> None:
    from pipeline.cli import main
    from pipeline.sources.walk import MAX_WEB_PAGE_BYTES

    class Endless(QuietHandler):
        """A page of links, then filler: one byte more than the limit (a server with no end to it was read until the
        memory ran out), then the connection closed, so that a listing that reads it whole ends too."""

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            head = b'<html><a href="x.png">x.png</a>'
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            if length:
                self.send_header("Content-Length", str(MAX_WEB_PAGE_BYTES + 1))
            self.end_headers()
            self.wfile.write(head)
            left, chunk = MAX_WEB_PAGE_BYTES + 1 - len(head), b" " * 2**20
            try:
                while left > 0:
                    self.wfile.write(chunk[:left])
                    left -= len(chunk)
            except OSError:  # the listing stopped reading
                pass

    with serving(tmp_path, Endless) as url:
        assert main(["--input", url, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and f"has an index page ({url}) longer than {MAX_WEB_PAGE_BYTES // 2**20} MiB" in line
    assert not (tmp_path / "out").exists()

# --- wide inputs: a .json sidecar's keys are columns, as many as it holds ---

def test_the_end_of_run_check_gives_thousands_of_columns_to_every_part_file(tmp_path) -> None:
    # (its time, linear in the columns since e5a6a66, is a benchmark's matter: 17 s before, about 1 s after, here)
    import pyarrow as pa

    from pipeline.output import unify_output_types

    (tmp_path / "data").mkdir()
    n = 3000  # two files of 3,000 columns each took 17 s (2,000: 7.7 s; 20,000 in one file: 264 s); now about 1 s
    for f in "ab":
        columns = {"id": pa.array([f]), **{f"{f}{i}": pa.array([i]) for i in range(n)}}
        pq.write_table(pa.table(columns), tmp_path / "data" / f"part-{f}.parquet")
    given = unify_output_types(str(tmp_path), {})
    assert len(given) == 2 * n
    for f in "ab":
        table = pq.read_table(tmp_path / "data" / f"part-{f}.parquet")
        assert table.num_columns == 2 * n + 1 and set(table.schema.types) == {pa.string(), pa.int64()}
        assert table.column(f"{f}7").to_pylist() == [7] and table.column(f"{'ba'[f == 'b']}7").to_pylist() == [None]


# --- a tar key's members together ---

def test_a_tar_key_whose_sidecars_together_are_over_max_image_mb_is_a_reject_naming_it(tmp_path) -> None:
    png = image_bytes(8, 8, 1)
    limit = len(png) + 1000  # each member is under it; 0001's together are not
    (tmp_path / "s.tar").write_bytes(tar_bytes({
        "0001.png": png, "0001.a": b"a" * 900, "0001.b": b"b" * 900, "0001.c": b"c" * 900,
        "0002.png": image_bytes(8, 8, 2), "0002.a": b"a" * 900}))
    (unit,) = discover(str(tmp_path))
    records = {r["id"]: r for r in read_unit(unit, max_image_bytes=limit) if r["kind"] in ("image", "reject")}
    assert records["s.tar/0002"]["kind"] == "image" and records["s.tar/0002"]["meta"] == {"a": "a" * 900}
    assert records["s.tar/0001"]["kind"] == "reject"
    assert records["s.tar/0001"]["error"].startswith("tar key 0001 (its members together) is ")
    assert "over --max-image-mb" in records["s.tar/0001"]["error"]


def test_a_parquet_row_whose_other_columns_hold_more_than_max_image_mb_is_a_reject_naming_it(tmp_path) -> None:
    import pyarrow as pa

    png = image_bytes(8, 8, 1)
    limit = len(png) + 1000  # each image is under it; row 1's caption and blob take it over
    pq.write_table(pa.table({"image": [png, png, png], "caption": ["short", "z" * 600, "ok"],
                             "blob": pa.array([b"", b"\0" * 600, None]),
                             "kind": pa.array(["a", "b", "a"]).dictionary_encode()}), tmp_path / "t.parquet")
    (unit,) = discover(str(tmp_path))
    records = {r["id"]: r for r in read_unit(unit, max_image_bytes=limit) if r["kind"] in ("image", "reject")}
    assert [records[f"t.parquet#{i}"]["kind"] for i in range(3)] == ["image", "reject", "image"]
    assert records["t.parquet#1"]["error"].startswith(
        f"row 1: its image and its other columns' text and bytes together is {(len(png) + 1201) / 2**20:.1f} MiB "
        f"({len(png) + 1201:,} bytes), over --max-image-mb")  # 600 + 600 + 1 (kind b)
    assert records["t.parquet#2"]["meta"] == {"caption": "ok", "blob": None, "kind": "a"}


# --- a tar.gz of zeros: 1,000 times its size to inflate, and tarfile's zero blocks were read one at a time ---

def _zeros_after(archive: bytes, mib: int, then: bytes = b"") -> bytes:
    import gzip

    return gzip.compress(archive + b"\0" * (mib * 2**20) + then, compresslevel=9)


def test_a_tar_gz_inflating_to_megabytes_of_zeros_after_its_end_gives_its_images_and_no_reject(tmp_path) -> None:
    # (the zero blocks are now checked a MiB at a time: 40 MiB took about 19 s block by block, 1.5 s now; a benchmark's
    # matter, not this test's)
    (tmp_path / "z.tar.gz").write_bytes(_zeros_after(tar_bytes({"0001.png": image_bytes(8, 8, 1)}), 40))  # 40 KB
    (unit,) = discover(str(tmp_path))
    records = [r for r in read_unit(unit) if r["kind"] in ("image", "reject")]
    assert [(r["kind"], r["id"]) for r in records] == [("image", "z.tar.gz/0001")]


def test_data_after_a_megabyte_of_zero_blocks_is_the_shards_reject_not_read_and_not_lost_unsaid(tmp_path) -> None:
    from pipeline.sources.tar_members import MAX_ZERO_BLOCKS

    gap = MAX_ZERO_BLOCKS * 512 // 2**20 + 1
    (tmp_path / "z.tar.gz").write_bytes(_zeros_after(tar_bytes({"0001.png": image_bytes(8, 8, 1)}), gap,
                                                     then=tar_bytes({"0002.png": image_bytes(8, 8, 2)})))
    (unit,) = discover(str(tmp_path))
    records = {r["id"]: r for r in read_unit(unit) if r["kind"] in ("image", "reject")}
    assert records["z.tar.gz/0001"]["kind"] == "image" and "z.tar.gz/0002" not in records
    assert "data follows more than 1 MiB of zero blocks after an archive's end" in (
        records["z.tar.gz#unreadable"]["error"])


def test_a_json_sidecar_with_more_keys_than_max_json_fields_is_kept_as_text(tmp_path) -> None:
    from pipeline.sources.webdataset_keys import MAX_JSON_FIELDS, _json_sidecar

    many = {f"k{i}": i for i in range(MAX_JSON_FIELDS + 1)}
    (tmp_path / "s.tar").write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.json": json.dumps(many).encode()}))
    (record,) = _records(tmp_path)
    assert record["kind"] == "image" and list(record["meta"]) == ["json"] and json.loads(record["meta"]["json"]) == many
    fits = {f"k{i}": i for i in range(MAX_JSON_FIELDS - 4)} | {"boxes": [{"x": 1, "y": 2}, {"x": 3, "w": 4}] * 500}
    assert _json_sidecar(json.dumps(fits).encode()) == fits  # MAX_JSON_FIELDS: boxes, and x, y, w counted once
    assert "json" in _json_sidecar(json.dumps({"nested": many}).encode())


# --- a zip archive's central directory: every entry was a ZipInfo, all kept while the archive was read ---

def _zip_of(path: Path, count: int) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            archive.writestr(f"d/{i}.png", image_bytes(8, 8, i))


def test_a_zip_whose_directory_holds_more_entries_than_the_limit_is_one_reject_naming_it(tmp_path, monkeypatch) -> None:
    import pipeline.sources.zip_archives as zips

    monkeypatch.setattr(zips, "MAX_ZIP_MEMBERS", 3)  # 3,000,000: a hostile directory of 2 M entries took 1 GB
    _zip_of(tmp_path / "ok.zip", 3)
    _zip_of(tmp_path / "z.zip", 4)
    records = _records(tmp_path)
    assert [(r["kind"], r["id"]) for r in records] == [("image", f"ok.zip/d/{i}.png") for i in range(3)] + [
        ("reject", "z.zip#unreadable")]
    assert "its central directory holds more than 3 entries, the most the job reads of one archive" in (
        records[-1]["error"])


def test_a_zip_whose_directory_is_over_the_byte_limit_is_one_reject_naming_it(tmp_path, monkeypatch) -> None:
    import pipeline.sources.zip_archives as zips

    monkeypatch.setattr(zips, "MAX_ZIP_DIRECTORY_BYTES", 2**10)
    _zip_of(tmp_path / "z.zip", 40)  # 40 entries of 54 bytes
    (record,) = _records(tmp_path)
    assert record["id"] == "z.zip#unreadable"
    assert "its central directory (the list of its members) is 2,150 bytes, over the 1,024 bytes (0.000976562 MiB) the " \
        "job reads of one, so none of it was read: split it into smaller archives" in record["error"]


def test_a_zip_directory_keeps_where_each_entry_lies_not_a_zipinfo_each(tmp_path) -> None:
    import io
    import zipfile

    import pytest

    from pipeline.sources.zip_archives import _open_zip

    _zip_of(tmp_path / "z.zip", 5)
    with zipfile.ZipFile(tmp_path / "z.zip", "a") as archive:
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("d/1.png", b"later")  # a name stored twice is the later entry
    _, directory = _open_zip(io.BytesIO((tmp_path / "z.zip").read_bytes()))
    assert list(directory.files) == ["d/0.png", "d/2.png", "d/3.png", "d/4.png", "d/1.png"]
    assert all(type(at) is int for at in directory.files.values())
    assert directory.info("d/1.png").file_size == len(b"later")


# --- .json sidecars of one shard, each with fields of its own: every field was a column of every part file ---

def test_a_shards_json_fields_past_the_column_limit_go_to_its_json_column_as_text(tmp_path, monkeypatch) -> None:
    import pipeline.sources.webdataset_keys as keys

    monkeypatch.setattr(keys, "MAX_SHARD_JSON_COLUMNS", 4)  # 1,000: 5,000 keys of one field each gave 5,013 columns
    sidecars = [{"caption": "a", "f0": 0}, {"caption": "b", "f1": 1}, {"caption": "c", "f2": 2, "f0": 7},
                {"caption": "d", "f3": 3, "f1": 8, "json": "own"}]
    members = {}
    for i, sidecar in enumerate(sidecars):
        members |= {f"{i:04d}.png": image_bytes(8, 8, i), f"{i:04d}.json": json.dumps(sidecar).encode()}
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    metas = [r["meta"] for r in _records(tmp_path)]
    # 'json' and 3 fields are columns (caption, f0, f1); f2 and f3 come after the limit: JSON text, nothing lost
    assert metas == [{"caption": "a", "f0": 0}, {"caption": "b", "f1": 1},
                     {"caption": "c", "f0": 7, "json": '{"f2": 2}'},
                     {"caption": "d", "f1": 8, "json": "own", "json_json": '{"f3": 3}'}]
    rows = {r["id"]: r for r in _written(tmp_path, _records(tmp_path))}
    assert len(rows["s.tar/0000"]) == len(rows["s.tar/0003"])  # one file: the union of the columns
    assert {"f2", "f3"}.isdisjoint(rows["s.tar/0000"]) and json.loads(rows["s.tar/0002"]["json"]) == {"f2": 2}
