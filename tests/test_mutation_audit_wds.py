"""Mutation audit of the WebDataset keys (`pipeline.sources.webdataset_keys`) and of reading an input's bytes
(`pipeline.sources.file_bytes`): each test here failed on a small plausible bug the rest of the suite let through.
A sidecar (.cls, .txt, .json, a mask) goes with its own image and no other, and each size limit holds at its exact
value: at the limit is read, one byte over is a reject, and nothing is cut short."""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

import pytest

import pipeline.sources.file_bytes as file_bytes
from pipeline.sources.file_bytes import (
    SPOOL_PREFIX,
    ImageTooLarge,
    _remove_dead_copies,
    _spool_prefix,
    file_opener,
    read_bytes,
    too_large,
)
from pipeline.sources.ids import unescaped
from pipeline.sources.webdataset_keys import JsonColumns, _json_sidecar
from tests.jobutil import image_bytes
from tests.test_sidecar_values import _record
from tests.test_tar_dotted_names import _images, _read

JPG, PNG = image_bytes(8, 8, 1, "JPEG"), image_bytes(8, 8, 2)

# the limits as docs/job.md gives them (a test that read the module's constants would follow a changed one)
MAX_JSON_DEPTH, MAX_JSON_FIELDS, MAX_JSON_KEY_LENGTH, MAX_SHARD_JSON_COLUMNS = 32, 10_000, 256, 1_000


def _by_id(records: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records if r["kind"] == kind}


# --- WebDataset keys: which members are one sample, and which sidecar goes with which image ---


def test_each_sidecar_goes_with_its_own_image_and_a_mask_with_its_image(tmp_path) -> None:
    records = _read(tmp_path, {
        "a/0001.jpg": JPG, "a/0001.cls": b"3\n", "a/0001.seg.png": PNG, "a/0001.txt": b"a cat\n",
        "b/0001.jpg": JPG, "b/0001.cls": b"dog", "0002.left.png": PNG, "0002.cls": b"7",
    })
    images = _images(records)
    assert set(images) == {"s.tar/a/0001", "s.tar/b/0001", "s.tar/0002"}, records
    a, b, lone = images["s.tar/a/0001"], images["s.tar/b/0001"], images["s.tar/0002"]
    assert a["data"] == JPG and a["meta"] == {"label": 3, "seg_png": PNG, "txt": "a cat"}
    assert a["source"].endswith("s.tar:a/0001.jpg")
    assert b["meta"] == {"label": "dog"}
    # a key whose only image has a compound extension (a left view, a mask) is that image, not a reject
    assert lone["data"] == PNG and lone["meta"] == {"label": 7}


def test_a_keys_extensions_are_read_whatever_their_case(tmp_path) -> None:
    images = _images(_read(tmp_path, {"0001.JPG": JPG, "0001.CLS": b"5", "0001.Json": b'{"w": 1}'}))
    assert images["s.tar/0001"]["meta"] == {"label": 5, "w": 1}


def test_a_name_numbered_with_a_word_is_one_key_and_a_reject() -> None:
    # 'cat.a.jpg' and 'cat.b.jpg' are one WebDataset key ('cat') with two images, not two images of their own
    from pipeline.sources.webdataset_keys import tar_key

    assert tar_key("cat.a.jpg") == ("cat", "a.jpg") and tar_key("cat.0.jpg") == ("cat.0", "jpg")
    assert tar_key("cat.٣.jpg") == ("cat", "٣.jpg")  # a digit of another script is no number of a name
    assert tar_key("d/cat.12.seg.png") == ("d/cat.12", "seg.png")
    assert tar_key("cat.0.") == ("cat", "0.")  # no extension after the number: not numbered


@pytest.mark.parametrize(("ext", "data", "column", "value"), [
    ("txt", b"a cat on a mat\n", "txt", "a cat on a mat"),
    ("txt", b"caf\xe9\n", "txt", "caf\\xe9"),  # latin-1: text all the same, the byte escaped
    ("cls", b"cat\n", "label", "cat"),
    ("cls", b" 12\n", "label", 12),
    ("cls", b"-3", "label", -3),
    ("cls", b"1_0", "label", "1_0"),  # not a number as written: int() read it as 10, another class's label
    ("cls", "٣".encode(), "label", "٣"),  # an Arabic-Indic digit: int() read it as 3
    ("cls", b"caf\xe9\n", "label", "caf\\xe9"),
    ("en.txt", b"hello \n", "en_txt", "hello"),
    ("csv", b"a,b\n", "csv", "a,b\n"),  # not a caption: its bytes kept exactly
    ("npy", b"\x93NUMPY\xff", "npy", b"\x93NUMPY\xff"),  # not UTF-8 and no caption: bytes
])
def test_a_sidecars_value_is_its_caption_label_text_or_bytes(ext: str, data: bytes, column: str, value: Any) -> None:
    record = _record("0", {ext: data})
    assert record["kind"] == "image" and record["meta"] == {column: value}


def test_a_typed_escape_in_a_caption_reads_back_as_typed() -> None:
    record = _record("0", {"txt": b"caf\\xe9"})
    assert unescaped(record["meta"]["txt"]) == "caf\\xe9"


def test_a_json_sidecar_is_columns_not_also_a_json_column() -> None:
    assert _record("0", {"json": b'{"a": 1, "b": "x"}'})["meta"] == {"a": 1, "b": "x"}


def test_two_plain_images_of_one_key_are_a_reject_not_one_of_them_with_the_others_sidecars() -> None:
    record = _record("0001", {"jpg": JPG, "cls": b"3"})
    assert record["kind"] == "reject" and "exactly one image member for key 0001" in record["error"]
    assert "jpg" in record["error"] and "png" in record["error"]


def test_two_sidecars_that_give_one_column_are_a_reject_naming_both() -> None:
    record = _record("0001", {"cls": b"3", "label": b"4"})
    assert record["kind"] == "reject" and "0001.cls" in record["error"] and "0001.label" in record["error"]


def test_json_keys_named_like_a_sidecars_column_keep_every_value() -> None:
    record = _record("0", {"cls": b"3", "json": b'{"label": "cat", "json_label": "dog", "id": 42}'})
    assert record["meta"] == {"label": 3, "json_label": "dog", "json_json_label": "cat", "input_id": 42}


def test_a_sidecar_named_like_a_job_column_gets_input_before_it() -> None:
    assert _record("0", {"id": b"x7"})["meta"] == {"input_id": "x7"}


def test_a_json_strings_typed_escape_reads_back_as_typed() -> None:
    meta = _record("0", {"json": json.dumps({"s": "caf\\xe9"}).encode()})["meta"]
    assert unescaped(meta["s"]) == "caf\\xe9"


def test_json_nesting_and_field_limits_hold_at_their_exact_values() -> None:
    def nested(depth: int) -> bytes:
        return ("{\"k\": " * depth + "1" + "}" * depth).encode()

    assert "json" not in _json_sidecar(nested(MAX_JSON_DEPTH))
    assert set(_json_sidecar(nested(MAX_JSON_DEPTH + 1))) == {"json"}
    fields = {f"f{i}": i for i in range(MAX_JSON_FIELDS)}
    assert _json_sidecar(json.dumps(fields).encode()) == fields
    assert set(_json_sidecar(json.dumps({**fields, "one_more": 1}).encode())) == {"json"}
    # a list's objects are one struct: their keys count once, however many objects the list holds
    rows = {"rows": [{f"f{i}": i for i in range(10)} for _ in range(MAX_JSON_FIELDS // 10)]}
    assert _json_sidecar(json.dumps(rows).encode()) == rows


def test_json_key_length_limit_holds_at_its_exact_value_and_within_values() -> None:
    at, over = "k" * MAX_JSON_KEY_LENGTH, "k" * (MAX_JSON_KEY_LENGTH + 1)
    sidecar = {at: 1, "json": 2, "deep": {"x": [{over: 3}]}, over: 4}
    meta = _record("0", {"json": json.dumps(sidecar).encode()})["meta"]
    # the fields whose key (or a key within) is too long are kept as one JSON text, beside the sidecar's own "json"
    assert meta[at] == 1 and meta["json"] == 2
    assert json.loads(meta["json_json"]) == {"deep": {"x": [{over: 3}]}, over: 4}


def test_a_shards_json_columns_stop_at_the_limit_and_columns_given_stay_columns() -> None:
    columns = JsonColumns()
    for i in range(MAX_SHARD_JSON_COLUMNS - 1):  # 'json' itself is one of the shard's columns
        assert columns.split({f"f{i}": i}) == ({f"f{i}": i}, {})
    assert columns.split({"new": 1, "f0": 2}) == ({"f0": 2}, {"new": 1})


# --- reading an input's bytes: the limits at their exact values ---


class _NoSizeFS:
    """A storage that gives no size (a web server that sends no Content-Length): opened files are plain streams."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, path: str, mode: str = "rb") -> io.BytesIO:
        return io.BytesIO(self.data)

    def size(self, path: str) -> None:
        return None


def _no_size_storage(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(file_bytes, "storage_path", lambda path, opts: (_NoSizeFS(data), path))


@pytest.mark.parametrize("how", ["local", "listed", "no size"])
def test_an_image_at_the_byte_limit_is_read_whole_and_one_byte_over_is_too_large(tmp_path, monkeypatch, how) -> None:
    limit = 3000
    for size in (limit, limit + 1):
        data = os.urandom(size)
        path = tmp_path / f"{size}.png"
        path.write_bytes(data)
        if how == "listed":  # an object store's ranged GET, its size from the listing
            import fsspec

            fsspec.filesystem("memory").pipe(f"/wds-audit/{size}.png", data)
            uri, listed = f"memory://wds-audit/{size}.png", size
        else:
            uri, listed = str(path), None
            if how == "no size":
                _no_size_storage(monkeypatch, data)
        if size == limit:
            assert read_bytes(uri, {}, limit, listed) == data
        else:
            with pytest.raises(ImageTooLarge):
                read_bytes(uri, {}, limit, listed)


def test_an_object_grown_since_it_was_listed_is_too_large_not_cut_short() -> None:
    import fsspec

    fsspec.filesystem("memory").pipe("/wds-audit/grown.png", b"x" * 5000)
    with pytest.raises(ImageTooLarge):
        read_bytes("memory://wds-audit/grown.png", {}, 3000, listed_size=100)


def test_too_large_names_the_size_the_limit_and_how_to_read_it() -> None:
    reason = too_large("image file", 1_500_000, 2**20)
    assert "1,500,000 bytes" in reason and "--max-image-mb 1" in reason and "--retry-rejects" in reason


def test_a_container_at_in_memory_bytes_is_fetched_once_and_a_larger_one_streamed(tmp_path) -> None:
    path = tmp_path / "s.tar"
    path.write_bytes(b"t" * 1000)
    assert isinstance(file_opener(str(path), {}, 1000)(), io.BytesIO)
    with contextlib.closing(file_opener(str(path), {}, 999)()) as f:
        assert not isinstance(f, io.BytesIO) and f.read() == b"t" * 1000


@pytest.mark.parametrize("extra", [0, 1, 5000])
def test_an_unsized_container_over_in_memory_bytes_is_copied_whole_and_the_copy_deleted(
        tmp_path, monkeypatch, extra) -> None:
    limit, data = 1000, os.urandom(1000 + extra)
    _no_size_storage(monkeypatch, data)
    monkeypatch.setattr(file_bytes.tempfile, "tempdir", str(tmp_path))
    with contextlib.ExitStack() as spool:
        open_ = file_opener("web/s.tar", {}, limit, spool=spool)
        for _ in range(2):  # a tar's two passes
            with contextlib.closing(open_()) as f:
                assert f.read() == data
        assert len(list(tmp_path.iterdir())) == (1 if extra else 0)
    assert not list(tmp_path.iterdir())


def test_a_copy_whose_download_fails_midway_is_deleted_at_once(tmp_path, monkeypatch) -> None:
    class Broken(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() >= 1500:
                raise ValueError("connection reset, not retried")
            return super().read(n)

    monkeypatch.setattr(file_bytes, "storage_path", lambda path, opts: (_BrokenFS(Broken(b"x" * 4000)), path))
    monkeypatch.setattr(file_bytes, "SPOOL_CHUNK_BYTES", 500)
    monkeypatch.setattr(file_bytes.tempfile, "tempdir", str(tmp_path))
    spool = contextlib.ExitStack()
    with pytest.raises(ValueError, match="connection reset"):
        file_opener("web/s.tar", {}, 1000, spool=spool)
    assert not list(tmp_path.iterdir())  # deleted at once, before the spool closes
    spool.close()


class _BrokenFS(_NoSizeFS):
    def __init__(self, stream: io.BytesIO) -> None:
        self.stream = stream

    def open(self, path: str, mode: str = "rb") -> io.BytesIO:
        return self.stream


def test_a_dead_processs_copy_is_deleted_but_another_hosts_is_kept(tmp_path) -> None:
    dead = 2**22 + 4321  # over Linux's highest process id: no such process
    mine, other = tmp_path / (_spool_prefix(dead) + "abc"), tmp_path / (_spool_prefix(dead, "otherhost") + "abc")
    kept = tmp_path / f"{SPOOL_PREFIX}notapid.abc"
    for f in (mine, other, kept):
        f.write_bytes(b"copy")
    _remove_dead_copies(str(tmp_path))
    assert not mine.exists() and other.exists() and kept.exists()


def test_a_container_rewritten_in_place_at_its_size_between_two_reads_is_said_changed(tmp_path) -> None:
    path = tmp_path / "s.tar"
    path.write_bytes(b"a" * 1000)
    open_ = file_opener(str(path), {}, 10)  # over in_memory_bytes: opened on storage at each read
    with contextlib.closing(open_()):
        pass
    with path.open("r+b") as f:  # same inode, same size: only its modification time tells
        f.write(b"b" * 1000)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(file_bytes.InputChangedWhileRead, match="s.tar was replaced"):
        open_()
