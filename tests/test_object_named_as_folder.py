"""An object store may hold an object 'data' beside objects 'data/...' (a folder marker written without its '/', a
file copied to the wrong key). Only S3 was asked (tests/test_s3.py): on another store (Google Cloud Storage, Azure
Blob, memory://) the input 'data' was read as that one object, and with the memory store 'data/' too, the folder's
files left out unseen and the run called complete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from pipeline.sources import discover, input_location, read_unit
from tests.jobutil import image_bytes


@pytest.fixture
def memory() -> Iterator[tuple[MemoryFileSystem, str]]:
    fs = MemoryFileSystem()
    root = f"twins-{os.getpid()}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _twins(fs: MemoryFileSystem, root: str) -> None:
    """The object root/data beside root/data/a.png and root/data/sub/b.png (the object last: memory:// refuses a key
    under an object's name)."""
    for name in ("a.png", "sub/b.png"):
        fs.pipe(f"{root}/data/{name}", image_bytes(8, 8, 0))
    fs.pipe(f"{root}/data", b"")


def test_on_the_memory_store_an_object_named_as_the_input_folder_stops_the_run(memory) -> None:
    """memory:// says 'directory' for the name and lists the object in place of the folder's files, with or without the
    '/': each way, the object alone was the input."""
    fs, root = memory
    _twins(fs, root)
    for given in (f"memory://{root}/data", f"memory://{root}/data/"):
        for ask in (discover, input_location):
            with pytest.raises(ValueError, match="both an object and a folder holding objects") as err:
                ask(given, {})
            assert "move the object away" in str(err.value)


def test_on_the_memory_store_a_folder_alone_or_an_object_alone_is_read_as_before(memory) -> None:
    fs, root = memory
    for name in ("a.png", "sub/b.png"):
        fs.pipe(f"{root}/folder/{name}", image_bytes(8, 8, 0))
    fs.pipe(f"{root}/one.png", image_bytes(8, 8, 1))
    for given in (f"memory://{root}/folder", f"memory://{root}/folder/"):
        (unit,) = discover(given, {})
        assert [r["id"] for r in read_unit(unit, {}) if r["kind"] == "image"] == ["a.png", "sub/b.png"]
    (unit,) = discover(f"memory://{root}/one.png", {})
    assert unit.paths == (f"memory:///{root}/one.png",)
    assert input_location(f"memory://{root}/one.png", {}) == f"memory:///{root}"


class _ObjectFirst(MemoryFileSystem):
    """A store that answers as gcsfs does: the object when the name has one (its info), and a listing of the name gives
    the keys under 'name/', or the object alone when there are none (so does a find, walking those listings)."""

    protocol = ("objectfirst", "gs")  # one of Google Cloud Storage's names: a store of keys
    find = AbstractFileSystem.find  # memory://'s own gives the object alone

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("objectfirst://"))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path in self.store:
            return {"name": path, "size": self.store[path].size, "type": "file"}
        return super().info(path, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        children: dict[str, dict[str, Any]] = {}
        for key, value in self.store.items():
            if key.startswith(path + "/"):
                head, sep, _ = key[len(path) + 1 :].partition("/")
                name = f"{path}/{head}"
                children[name] = {"name": name, "size": 0 if sep else value.size, "type": "directory" if sep else "file"}
        if not children:
            return super().ls(path, detail=detail, **kwargs)
        return sorted(children.values(), key=lambda e: e["name"]) if detail else sorted(children)


@pytest.fixture
def object_first() -> Iterator[tuple[_ObjectFirst, str]]:
    fsspec.register_implementation("objectfirst", _ObjectFirst, clobber=True)
    fs = _ObjectFirst()
    root = f"twins-gcs-{os.getpid()}"
    yield fs, root
    plain = MemoryFileSystem()  # the same store, memory://'s own calls
    if plain.exists(root):
        plain.rm(root, recursive=True)


def test_on_a_store_that_answers_as_gcs_does_the_folder_is_read_with_its_slash_and_the_name_alone_stops_the_run(
        object_first) -> None:
    fs, root = object_first
    _twins(fs, root)
    with pytest.raises(ValueError, match="both an object and a folder") as err:
        discover(f"objectfirst://{root}/data", {})
    assert f"give objectfirst://{root}/data/ to read the folder" in str(err.value)
    with pytest.raises(ValueError, match="both an object and a folder"):
        input_location(f"objectfirst://{root}/data", {})
    (unit,) = discover(f"objectfirst://{root}/data/", {})  # the folder, as the '/' says
    assert [r["id"] for r in read_unit(unit, {}) if r["kind"] == "image"] == ["a.png", "sub/b.png"]
    assert input_location(f"objectfirst://{root}/data/", {}) == f"objectfirst:///{root}/data"
    (unit,) = discover(f"objectfirst://{root}/data/a.png", {})  # an object with nothing under it is one file
    assert unit.paths == (f"objectfirst:///{root}/data/a.png",)


class _PrefixListing(_ObjectFirst):
    """A store whose listing of a name gives every key that starts with it: the object itself and its siblings
    ('data-2/...', 'data.csv') as well as the keys under 'data/'."""

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        names = sorted(key for key in self.store if key.startswith(path))
        return [{"name": n, "size": self.store[n].size, "type": "file"} for n in names] if detail else names


def test_an_object_whose_siblings_share_its_name_is_one_file(object_first) -> None:
    """Only keys under 'name/' make the name a folder too: a store that lists the object with its siblings ('lone-2/',
    'lone.csv') must not have a plain object refused."""
    fs, root = object_first
    fsspec.register_implementation("objectfirst", _PrefixListing, clobber=True)
    fs = _PrefixListing()
    fs.pipe(f"{root}/lone-2/x.png", image_bytes(8, 8, 0))
    fs.pipe(f"{root}/lone.csv", b"a,b")
    fs.pipe(f"{root}/lone", image_bytes(8, 8, 1))
    (unit,) = discover(f"objectfirst://{root}/lone", {})
    assert unit.paths == (f"objectfirst:///{root}/lone",)
    _twins(fs, root)
    with pytest.raises(ValueError, match="both an object and a folder"):
        discover(f"objectfirst://{root}/data", {})


class _GetWithoutList(_ObjectFirst):
    """A store whose credentials may read an object but not list (Google Cloud Storage's storage.objects.get without
    storage.objects.list): gcsfs answers a listing's HTTP 403 with a plain OSError('Forbidden: ...'), not the
    PermissionError s3fs gives."""

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        raise OSError(f"Forbidden: https://storage.googleapis.com/storage/v1/b/{path}/o\n"
                      "reader@project.iam.gserviceaccount.com does not have storage.objects.list access")


def test_an_object_that_may_be_read_but_not_listed_beside_is_read_as_one_file(object_first) -> None:
    """The check for keys under 'name/' lists them; where the credentials may not list, nothing is seen there, as on
    S3 (GetObject without ListBucket): the one object given was refused with gcsfs's 'Forbidden', where it was read
    before the check covered other stores than S3."""
    fs, root = object_first
    fsspec.register_implementation("objectfirst", _GetWithoutList, clobber=True)
    fs = _GetWithoutList()
    fs.pipe(f"{root}/one.png", image_bytes(8, 8, 1))
    (unit,) = discover(f"objectfirst://{root}/one.png", {})
    assert unit.paths == (f"objectfirst:///{root}/one.png",)
    assert [r["id"] for r in read_unit(unit, {}) if r["kind"] == "image"] == ["one.png"]
    assert input_location(f"objectfirst://{root}/one.png", {}) == f"objectfirst:///{root}"
