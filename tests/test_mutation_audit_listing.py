"""Mutation audit of the input listing (pipeline/sources/listing.py, walk.py): tests for the behaviours that hand-made
mutants of those modules showed no other test to hold."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.sources import HiddenSkipped, discover, input_location, walk
from pipeline.sources.listing import InputNotFound, _refuse_colliding_ids, _refuse_escaped_twins
from pipeline.sources.units import ReadUnit
from tests.s3util import moto_s3
from tests.test_http_inputs import _index
from tests.test_object_named_as_folder import _ObjectFirst


def test_a_web_subfolders_sort_links_are_that_folder_not_files(web) -> None:
    """Apache's index page of every folder links its sort views ('?C=N;O=D'): in the input folder they were left out,
    in a subfolder each was listed as a file, read as an image and written as a reject of the index page."""
    folder, url = web
    _index(folder / "data", '"sub/"', '"?C=N;O=D"', '"a.png"')
    _index(folder / "data" / "sub", '"?C=N;O=D"', '"?C=M;O=A"', '"in.png"', '"/data/"')
    units = discover(url + "data/", {})
    assert sorted(p for u in units for p in u.paths) == [url + "data/a.png", url + "data/sub/in.png"]


@pytest.mark.parametrize(("name", "kind"), [("S.TAR", "tar"), ("s.tbz", "tar"), ("s.TGZ", "tar"), ("t.pq", "parquet"),
                                            ("t.PARQUET", "parquet"), ("z.ZIP", "zip"), ("i.tar.png", "files")])
def test_a_containers_kind_is_its_suffix_in_any_case(tmp_path: Path, name: str, kind: str) -> None:
    """A shard named 'S.TAR' (a camera's or Windows tool's upper case) or 't.pq' was read as one image file: a reject."""
    (tmp_path / name).write_bytes(b"x")
    assert [u.kind for u in discover(str(tmp_path))] == [kind]


def test_an_inputs_location_is_its_folder_with_links_resolved(tmp_path: Path) -> None:
    """'incoming/latest' moved to another day's folder is another input (its ledger is not the old one's)."""
    for day in ("d1", "d2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "a.png").write_bytes(b"x")
    (tmp_path / "latest").symlink_to(tmp_path / "d1")
    before = input_location(str(tmp_path / "latest"), {})
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").symlink_to(tmp_path / "d2")
    assert (before, input_location(str(tmp_path / "latest"), {})) == (str(tmp_path / "d1"), str(tmp_path / "d2"))


class _MarkerBeside(_ObjectFirst):
    """A store whose listing of an object's name gives that name's folder marker alone ('one.png/', zero bytes)."""

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        return [{"name": path + "/", "size": 0, "type": "directory"}] if detail else [path + "/"]


def test_an_object_beside_only_its_own_empty_folder_marker_is_one_file() -> None:
    """A folder marker holds no file: the object is no folder too, and is read, not refused as ambiguous."""
    fsspec.register_implementation("objectfirst", _MarkerBeside, clobber=True)
    fs, root = _MarkerBeside(), f"marker-{os.getpid()}"
    fs.pipe(f"{root}/one.png", b"x")
    try:
        (unit,) = discover(f"objectfirst://{root}/one.png", {})
        assert unit.paths == (f"objectfirst:///{root}/one.png",)
    finally:
        MemoryFileSystem().rm(root, recursive=True)  # memory://'s own calls: this store's listing is made up


class _HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


@pytest.mark.parametrize("status", [401, 403, 500])
def test_a_store_refusing_a_listing_beside_an_object_reads_it_and_any_other_error_stops(status: int) -> None:
    """Azure's HttpResponseError carries the status: 401/403 (read but not list) is none seen beside the object; any
    other failure of the check must stop the run, not call a maybe-folder one file (its files left out unseen)."""

    class ListFails(_ObjectFirst):
        def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
            raise _HttpError(status)

    fsspec.register_implementation("objectfirst", ListFails, clobber=True)
    fs, root = ListFails(), f"denied-{os.getpid()}"
    fs.pipe(f"{root}/one.png", b"x")
    try:
        if status == 500:
            with pytest.raises(_HttpError):
                discover(f"objectfirst://{root}/one.png", {})
        else:
            (unit,) = discover(f"objectfirst://{root}/one.png", {})
            assert unit.paths == (f"objectfirst:///{root}/one.png",)
    finally:
        MemoryFileSystem().rm(root, recursive=True)


def test_a_listing_made_twice_counts_its_hidden_files_once(tmp_path: Path) -> None:
    """A listing retried after a transient error fills the same count: the summary must not say twice as many."""
    for name in (".a.png", "_b/c.png", "d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    hidden = HiddenSkipped()
    discover(str(tmp_path), hidden=hidden)
    discover(str(tmp_path), hidden=hidden)
    assert (hidden.count, hidden.examples) == (2, [".a.png", "_b/c.png"])


def test_folders_that_cannot_be_listed_are_named_with_how_many_more(tmp_path: Path, monkeypatch) -> None:
    for name in ("a.png", "l1/b.png", "l2/c.png", "l3/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    ls = LocalFileSystem.ls

    def denied(self, path, detail=False, **kwargs):
        if "/l" in path.rstrip("/")[len(str(tmp_path)):]:
            raise PermissionError(13, "Permission denied", path)
        return ls(self, path, detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", denied)
    with pytest.raises(PermissionError, match=r"input folder .*/l1 \(and 2 more\) cannot be listed"):
        discover(str(tmp_path))


def test_a_missing_input_written_with_a_bracket_says_wildcards_are_not_expanded(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match=r"does not exist \(wildcards are not expanded"):
        discover(f"{tmp_path}/img[0-9].png")
    with pytest.raises(InputNotFound) as err:
        discover(f"{tmp_path}/plain.png")
    assert "wildcards" not in str(err.value)


def test_on_s3_only_a_key_holding_something_under_an_objects_name_makes_it_a_folder_too() -> None:
    """An empty folder marker 'm/' beside the object 'm' is no folder (the object is read); a key 'n/' that holds bytes
    is (refused as ambiguous: it would be left out); and a folder listed before the object of its name came is asked
    again, not answered from the listing cache as a folder (the object left out unseen)."""
    with moto_s3("listing-in") as (client, options):
        client.put_object(Bucket="listing-in", Key="m", Body=b"x")
        client.put_object(Bucket="listing-in", Key="m/", Body=b"")
        assert [u.paths for u in discover("s3://listing-in/m", options)] == [("s3://listing-in/m",)]
        client.put_object(Bucket="listing-in", Key="n", Body=b"x")
        client.put_object(Bucket="listing-in", Key="n/", Body=b"bytes")
        with pytest.raises(ValueError, match="both an object and a folder"):
            discover("s3://listing-in/n", options)
        client.put_object(Bucket="listing-in", Key="c/a.png", Body=b"x")
        assert [u.paths for u in discover("s3://listing-in/c", options)] == [("s3://listing-in/c/a.png",)]
        client.put_object(Bucket="listing-in", Key="c", Body=b"x")
        with pytest.raises(ValueError, match="both an object and a folder"):
            discover("s3://listing-in/c", options)


def test_a_link_to_the_disks_root_is_a_loop_not_the_whole_disk(tmp_path: Path, monkeypatch) -> None:
    """A link to '/' holds the input folder, as a link to any folder above it does: it was followed, every file on the
    disk (the input again among them) listed as an input. Here the walk through it is stopped at once if tried."""
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "everything").symlink_to("/")
    real = walk._local_find

    def no_walk_through_the_link(fs: LocalFileSystem, root: str) -> dict:
        assert not root.rstrip("/").endswith("/everything"), "the link to '/' was followed"
        return real(fs, root)

    monkeypatch.setattr(walk, "_local_find", no_walk_through_the_link)
    assert [p for u in discover(str(tmp_path)) for p in u.paths] == [str(tmp_path / "a.png"), str(tmp_path / "everything")]


def test_an_input_folder_that_cannot_be_listed_itself_stops_the_run(tmp_path: Path, monkeypatch) -> None:
    """Named '_in' too (a hidden-looking name the user gave): its files are not a hidden folder's to skip unsaid."""
    root = tmp_path / "_in"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    ls = LocalFileSystem.ls

    def denied(self, path, detail=False, **kwargs):
        if path.rstrip("/") == str(root):
            raise PermissionError(13, "Permission denied", path)
        return ls(self, path, detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", denied)
    with pytest.raises(PermissionError, match=r"input folder .*/_in cannot be listed"):
        discover(str(root))


@pytest.mark.parametrize(("container", "image", "clash"), [
    ("x.tar", "x.tar#unreadable", True),  # a shard's reject
    ("a#1/t.parquet", "a#1/t.parquet#0", True),  # a row of a Parquet file in a folder with a '#' in its name
    ("d/x.tar", "d/x.tar/k.png", True),  # a member of a shard in a subfolder
    ("x.zip", "x.zip/a.jpg", True),  # a zip archive's member
    ("x.tar", "x.tar#lookalike/k.png", True),  # a shard's look-alike rejects
    ("t.parquet", "t.parquet#lookalike/k.png", False),  # a Parquet file has no look-alike rejects
    ("x.tar", "x.tar#note", False),
])
def test_an_image_file_whose_id_a_container_can_give_stops_the_listing(container: str, image: str, clash: bool) -> None:
    """On an object store such keys can lie beside a container (no disk lets 'x.tar' be a file and a folder)."""
    kind = "parquet" if container.endswith(".parquet") else container.rsplit(".", 1)[-1]
    unit = ReadUnit(kind, (f"s3://b/in/{container}",), "s3://b/in", (1,))
    if clash:
        with pytest.raises(ValueError, match=re.escape(f"s3://b/in/{image} (beside s3://b/in/{container})")):
            _refuse_colliding_ids([unit], [f"s3://b/in/{image}"], "s3://b/in")
    else:
        _refuse_colliding_ids([unit], [f"s3://b/in/{image}"], "s3://b/in")


def test_a_web_folders_limits_hold_exactly_at_their_values(web, monkeypatch) -> None:
    """As many folders, as deep and as long a page as the limits say are listed; one more stops the listing."""
    folder, url = web
    monkeypatch.setattr(walk, "MAX_WEB_DEPTH", 2)
    monkeypatch.setattr(walk, "MAX_WEB_FOLDERS", 4)
    monkeypatch.setattr(walk, "MAX_WEB_PAGE_BYTES", 2000)
    monkeypatch.setattr(walk, "_WEB_PAGE_CHUNK", 256)
    _index(folder / "d", '"a/"', '"b/"')
    _index(folder / "d" / "a", '"x/"')
    _index(folder / "d" / "a" / "x", '"in.png"')  # two below d/, and d/ with its three folders: four
    page = '<html><a href="b.png">b</a></html>'
    (folder / "d" / "b").mkdir()
    (folder / "d" / "b" / "index.html").write_text(page + " " * (2000 - len(page)))
    assert [p for u in discover(url + "d/", {}) for p in u.paths] == [url + "d/a/x/in.png", url + "d/b/b.png"]
    (folder / "d" / "b" / "index.html").write_text(page + " " * (2001 - len(page)))
    with pytest.raises(walk.WebFolderTooLarge, match="longer than"):
        discover(url + "d/", {})
    (folder / "d" / "b" / "index.html").write_text(page)
    _index(folder / "d" / "a" / "x", '"in.png"', '"deep/"')
    with pytest.raises(walk.WebFolderTooLarge, match="more than 2 deep"):
        discover(url + "d/", {})
    _index(folder / "d" / "a" / "x", '"in.png"')
    _index(folder / "d", '"a/"', '"b/"', '"c/"')
    _index(folder / "d" / "c")
    with pytest.raises(walk.WebFolderTooLarge, match="more than 4 folders"):
        discover(url + "d/", {})


def test_a_file_removed_while_its_folder_is_listed_leaves_the_others_listed(tmp_path: Path, monkeypatch) -> None:
    """A file gone between the folder's listing and its entry's look-up is no input; its folder's other files are
    (the folder was left out whole: every file in it lost without a word)."""
    for name in ("a.png", "gone.png", "z.png"):
        (tmp_path / name).write_bytes(b"x")
    real = os.scandir

    class Listing:
        def __init__(self, path: str) -> None:
            with real(path) as it:
                self.entries = list(it)
            if os.fspath(path) == str(tmp_path):
                (tmp_path / "gone.png").unlink()

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(walk.os, "scandir", Listing)
    assert [p for u in discover(str(tmp_path)) for p in u.paths] == [str(tmp_path / "a.png"), str(tmp_path / "z.png")]


def test_a_web_link_to_the_same_server_by_https_or_http_is_in_the_folder() -> None:
    """One server answering both schemes: an index page may link its files with either."""
    assert walk._inside_web_folder("https://h.example/data/a.png", "http://h.example/data/") == \
        "https://h.example/data/a.png"
    assert walk._inside_web_folder("https://other.example/data/a.png", "http://h.example/data/") is None


@pytest.mark.parametrize("keys", [("a/./b.png", "a/b.png"), ("c.png", "c.png/"), ("x/../d.png", "d.png")])
def test_object_keys_that_differ_only_in_dot_folders_or_a_trailing_slash_stop_the_listing(keys: tuple[str, str]) -> None:
    """Their ids are one ('a/b.png'), so the output would keep one of the two: both are named."""
    with pytest.raises(ValueError, match=r"1 pair\(s\) of input files have one id") as err:
        _refuse_escaped_twins(sorted(f"b/in/{k}" for k in keys), "b/in")
    assert all(f"b/in/{k}" in str(err.value) for k in keys)


def test_a_link_to_a_folder_whose_name_begins_the_inputs_is_followed(tmp_path: Path) -> None:
    """'photos' is not above 'photos-2': a link to it from inside 'photos-2' is no loop, and its files are inputs."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    (tmp_path / "photos-2").mkdir()
    (tmp_path / "photos-2" / "old").symlink_to(tmp_path / "photos")
    assert [p for u in discover(str(tmp_path / "photos-2")) for p in u.paths] == [str(tmp_path / "photos-2/old/a.png")]


def test_a_web_folders_links_out_of_it_are_not_inputs(web) -> None:
    """A page links files above the folder or on another server: the user named only the folder."""
    folder, url = web
    _index(folder / "data", '"../secret.png"', '"%2e%2e/secret.png"', '"http://other.example/x.png"', '"in.png"')
    (folder / "secret.png").write_bytes(b"x")
    hidden = HiddenSkipped()  # nor hidden files skipped: the run would say it left out entries it never had
    assert [p for u in discover(url + "data/", {}, hidden=hidden) for p in u.paths] == [url + "data/in.png"]
    assert hidden.count == 0
