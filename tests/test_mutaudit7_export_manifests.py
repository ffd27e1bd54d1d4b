"""Mutation audit of pipeline/sources/export_manifests.py: an export's manifest.csv / manifest.jsonl is told by its name
and its header, exactly; any other file so named (or any file with that header under another name) stays an input,
and one that cannot be read does not stop the listing."""

from __future__ import annotations

import io
import json

import pytest

from pipeline.sources.export_manifests import FIRST_LINE_BYTES, export_manifests
from tests.test_export_manifest_input import HEADER, _listed


@pytest.mark.parametrize(("name", "text"), [
    # the output's columns but one (an export always has source_sha256, width, ...)
    ("manifest.csv", "id,path,width,height,source\na,b,1,1,s\n"),
    ("manifest.csv", "id,path,height,source,source_sha256\na,b,1,s,x\n"),
    # id and path, but not first, or not both
    ("manifest.csv", "path,id,width,height,source,source_sha256\n"),
    ("manifest.csv", "id,file,width,height,source,source_sha256\n"),
    # a JSON line that is an array of the header's names, not an object with those keys
    ("manifest.jsonl", json.dumps(HEADER) + "\n"),
    # a table in another encoding: no UTF-8 header
    ("manifest.csv", "id,path,width,height,source,source_sha256,l\xe9gende\n"),
])
def test_a_file_named_as_the_manifest_without_its_header_stays_an_input(tmp_path, name, text) -> None:
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    listed, hidden = _listed(tmp_path)
    assert listed == [name] and hidden.count == 0


def test_a_file_with_the_manifests_header_under_another_name_stays_an_input(tmp_path) -> None:
    # told by its name too: a user's copy of it (or a table of theirs that happens to have those columns) is theirs
    for name in ("labels.csv", "manifest.txt", "manifest.json"):
        (tmp_path / name).write_text(",".join(HEADER) + "\n")
    listed, hidden = _listed(tmp_path)
    assert listed == ["labels.csv", "manifest.json", "manifest.txt"] and hidden.count == 0


class RefusingStore:
    """A store that lists a manifest.csv but refuses to open it (a permission, a server error)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def open(self, path: str, mode: str = "rb"):
        self.opened.append(path)
        raise PermissionError(f"403 Forbidden: {path}")


def test_a_manifest_that_cannot_be_read_stays_an_input_and_only_files_so_named_are_opened() -> None:
    store = RefusingStore()
    paths = ["/in/manifest.csv", "/in/a.png", "/in/labels.csv", "/in/sub/manifest.jsonl"]
    assert export_manifests(store, paths) == []  # its read task rejects it, saying why
    assert store.opened == ["/in/manifest.csv", "/in/sub/manifest.jsonl"]


class CountingStore:
    """The local disk, counting the bytes each file opened gives."""

    def __init__(self) -> None:
        self.read: dict[str, int] = {}

    def open(self, path: str, mode: str = "rb"):
        store = self

        class Counted(io.FileIO):
            def read(self, size: int = -1) -> bytes:
                data = super().read(size)
                store.read[path] = store.read.get(path, 0) + len(data)
                return data

        return Counted(path, "r")


def test_a_manifest_is_told_by_a_small_read_of_its_start_whatever_its_size(tmp_path) -> None:
    # an export of millions of images has a manifest of hundreds of MB: its header is read, not the file; a file so
    # named with no line end (a huge one-line file) is read no further than a header can be long
    big = tmp_path / "manifest.csv"
    row = ",".join(["cats/0.jpg", "cats/0.png", "8", "8", "/in/cats/0.jpg", "ab" * 32, "RGB", "cat"])
    big.write_text(",".join(HEADER) + "\n" + "\n".join([row] * 30_000) + "\n")
    one_line = tmp_path / "sub" / "manifest.jsonl"
    one_line.parent.mkdir()
    one_line.write_bytes(b"x" * (3 * FIRST_LINE_BYTES))
    store = CountingStore()
    assert export_manifests(store, [str(big), str(one_line)]) == [str(big)]
    assert store.read[str(big)] <= 2**16 < big.stat().st_size
    assert store.read[str(one_line)] <= FIRST_LINE_BYTES + 2**16
