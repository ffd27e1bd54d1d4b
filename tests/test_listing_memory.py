"""The input listing keeps only the fields its callers read (`find_following_links`): fsspec's full info per local
file (~830 bytes) made listing 10^6 files cost ~830 MB of driver memory. What it lists must not change: the same
paths in the same order, the same sizes, types and version stamps, links to folders followed, a loop one entry, a
folder that cannot be listed reported. These compare it with the function as it was before (a copy below)."""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.sources import VERSION_FIELDS, discover, listing, listing_stamp
from pipeline.sources.walk import find_following_links

# What any caller of the listing reads of an entry (discover: size, type, the version stamp; the walk: islink).
READ_FIELDS = ("size", "type", "islink", *VERSION_FIELDS)


def _old_find_following_links(fs: fsspec.AbstractFileSystem, root: str, _inside: tuple[str, ...] = (),
                              unlistable: list[tuple[str, OSError]] | None = None) -> dict[str, dict[str, Any]]:
    """The function before this change (fsspec's find with full infos), verbatim."""
    local = isinstance(fs, LocalFileSystem)
    listed: dict[str, dict[str, Any]] = {}
    found = fs.find(root, detail=True, withdirs=local)
    if local and unlistable is not None:
        holding = {posixpath.dirname(p) for p in found}
        for folder in (p for p, info in found.items() if info.get("type") == "directory" and p not in holding):
            try:
                fs.ls(folder)
            except OSError as err:
                unlistable.append((folder, err))
    for path, info in found.items():
        if local and info.get("type") == "directory":
            continue
        if info.get("islink") and fs.isdir(path):
            inside = _inside or (os.path.realpath(root),)
            target = os.path.realpath(path)
            if not any(target == folder or folder.startswith(target + os.sep) for folder in inside):
                listed.update(_old_find_following_links(fs, path, (*inside, target), unlistable))
                continue
        listed[path] = info
    return listed


def _read(listing: dict[str, dict[str, Any]]) -> list[tuple[str, Any, Any, Any, str | None]]:
    """Each entry as its callers see it, in listing order."""
    return [(p, info.get("size"), info.get("type"), info.get("islink"), listing_stamp(info))
            for p, info in listing.items()]


@pytest.fixture
def tree(tmp_path):
    """Nested folders, links to folders (one outside the input, one a loop), a link to a file, a dangling link,
    hidden files and folders, an empty folder, files of several sizes."""
    real, root = tmp_path / "real", tmp_path / "in"
    (real / "sub").mkdir(parents=True)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    (root / "_skipped").mkdir()
    (real / "r.png").write_bytes(b"r" * 7)
    (real / "sub" / "s.png").write_bytes(b"s" * 3)
    (real / "sub" / "up").symlink_to(real, target_is_directory=True)  # a loop inside the linked folder
    (root / "top.png").write_bytes(b"t" * 11)
    (root / "a" / "x.tar").write_bytes(b"x" * 5)
    (root / "a" / "b" / "y.jpg").write_bytes(b"")
    (root / "a" / "b" / "c" / "z.parquet").write_bytes(b"z" * 2)
    (root / ".dot.png").write_bytes(b"d")
    (root / ".hidden" / "h.png").write_bytes(b"h")
    (root / "_skipped" / "k.png").write_bytes(b"k")
    (root / "linked").symlink_to(real, target_is_directory=True)
    (root / "a" / "back").symlink_to(root, target_is_directory=True)  # a loop to the input itself
    (root / "file-link.png").symlink_to(root / "top.png")
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    return root


def test_a_local_listing_is_the_old_ones_with_only_the_fields_read(tree) -> None:
    fs = fsspec.filesystem("file")
    old_unlistable: list = []
    new_unlistable: list = []
    old = _old_find_following_links(fs, str(tree), unlistable=old_unlistable)
    new = find_following_links(fs, str(tree), unlistable=new_unlistable)
    assert list(new) == list(old)  # the same paths in the same order
    assert _read(new) == _read(old)
    assert old_unlistable == new_unlistable == []
    for info in new.values():  # no more the ~13 fields of fsspec's info: what makes 10^6 files cost ~830 MB
        assert set(info) <= set(READ_FIELDS)
    # and what that listing is, spelled out: links to folders followed under the link's path, each loop one entry
    rel = [p[len(str(tree)) + 1:] for p in new]
    assert rel == [".dot.png", ".hidden/h.png", "_skipped/k.png", "a/b/c/z.parquet", "a/b/y.jpg", "a/back",
                   "a/x.tar", "dangling.png", "file-link.png", "linked/r.png", "linked/sub/s.png", "linked/sub/up",
                   "top.png"]
    assert new[f"{tree}/top.png"]["size"] == 11 and new[f"{tree}/linked/r.png"]["size"] == 7
    assert new[f"{tree}/file-link.png"]["size"] == 11 and new[f"{tree}/dangling.png"]["size"] == 0
    assert listing_stamp(new[f"{tree}/a/x.tar"]) is not None  # mtime and inode: a replaced shard is read again


@pytest.mark.parametrize("through_link", [False, True])
def test_discover_gives_the_same_units_as_with_the_old_listing(tree, monkeypatch, through_link) -> None:
    root = tree
    if through_link:  # the input given as a link to its folder
        root = tree.parent / "in-link"
        root.symlink_to(tree, target_is_directory=True)
    new = discover(str(root), files_per_unit=3)
    monkeypatch.setattr(listing, "find_following_links", _old_find_following_links)
    assert new == discover(str(root), files_per_unit=3)
    assert {p for u in new for p in u.paths} == {
        f"{root}/{p}" for p in ("a/b/c/z.parquet", "a/b/y.jpg", "a/back", "a/x.tar", "dangling.png", "file-link.png",
                                "linked/r.png", "linked/sub/s.png", "linked/sub/up", "top.png")}


def test_a_local_file_system_with_its_own_ls_is_listed_through_it(tree) -> None:
    class Hiding(LocalFileSystem):  # a subclass that leaves out .tar files
        def ls(self, path, detail=False, **kwargs):
            found = super().ls(path, detail=detail, **kwargs)
            return [f for f in found if not (f["name"] if detail else f).endswith(".tar")]

    fs = Hiding(skip_instance_cache=True)
    new = find_following_links(fs, str(tree))
    assert _read(new) == _read(_old_find_following_links(fs, str(tree)))
    assert f"{tree}/a/x.tar" not in new and f"{tree}/a/b/y.jpg" in new


def test_a_folder_that_cannot_be_listed_is_reported_as_before(tree, monkeypatch) -> None:
    # chmod does not stop root, so the listing of two folders (one reached through a link) fails at scandir
    failing = {str(tree / "a" / "b"), str(tree / "linked" / "sub")}
    scandir = os.scandir

    def refusing(path: Any = ".") -> Any:
        if os.fspath(path) in failing:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    fs = fsspec.filesystem("file")
    old_unlistable: list = []
    new_unlistable: list = []
    old = _old_find_following_links(fs, str(tree), unlistable=old_unlistable)
    new = find_following_links(fs, str(tree), unlistable=new_unlistable)
    assert _read(new) == _read(old)
    assert f"{tree}/a/b/y.jpg" not in new and f"{tree}/linked/r.png" in new
    assert [(p, type(e), e.errno) for p, e in new_unlistable] == [(p, type(e), e.errno) for p, e in old_unlistable]
    assert sorted(p for p, _ in new_unlistable) == sorted(failing)
    with pytest.raises(OSError, match="cannot be listed"):
        discover(str(tree))


def test_an_object_store_listing_is_unchanged(tmp_path) -> None:
    """memory:// (and s3fs) keep their file system's own entries: s3fs builds and caches the whole listing itself."""
    fs = fsspec.filesystem("memory")
    root = f"/listing-{tmp_path.name}"
    try:
        for name, data in {"a.png": b"a", "d/b.tar": b"bb", "d/e/c.png": b"", "_x/h.png": b"h"}.items():
            fs.pipe(f"{root}/{name}", data)
        new = find_following_links(fs, root)
        assert new == _old_find_following_links(fs, root)
        assert list(new) == [f"{root}/{p}" for p in ("_x/h.png", "a.png", "d/b.tar", "d/e/c.png")]
    finally:
        fs.rm(root, recursive=True)
