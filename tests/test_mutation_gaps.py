"""Gaps that earlier mutation audits (of the Parquet and tar readers, of the read stage, of the web listing) left
alive: each test fails on a small plausible bug the rest of the suite let through. Two reasons that said the wrong
thing, found on the way, are here too: a Parquet cell whose 'bytes' are text, an animated GIF cut short. No Ray."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.decode import Decoded, decode_image
from pipeline.sources import discover, read_unit, tar_shards
from pipeline.sources.ids import LOOKALIKE
from pipeline.sources.tar_shards import _MembersPass
from pipeline.stages import read_stage, records_of
from tests.jobutil import image_bytes, spy_on_extraction, tar_bytes
from tests.test_sources import _entry, _tar_with_links
from tests.webutil import QuietHandler, serving


def _records(root: Path, **kw) -> list[dict]:
    return [r for unit in discover(str(root)) for r in read_unit(unit, **kw)]


# --- Parquet ---

def test_a_struct_cell_whose_bytes_field_is_text_says_so_and_not_that_it_holds_only_a_path(tmp_path) -> None:
    """{"bytes": <base64 text>, "path": "x.png"} (a 'bytes' field written as a string): the reject names the text, and
    does not tell the user that the image lies outside the file, which was said because the cell had a path."""
    text = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": "iVBORw0KGgo=", "path": "x.png"},
                                                {"bytes": None, "path": "/data/y.png"}], text)}), tmp_path / "t.parquet")
    text_cell, path_only, _count = _records(tmp_path)
    assert text_cell["error"] == (
        "row 0: image column 'image' holds text in its 'bytes' field, not bytes: the field is a string, where an image "
        "needs binary (text such as base64 must be decoded into the image's bytes when the file is written)")
    assert "only a path (/data/y.png) to an image outside the Parquet file" in path_only["error"]  # as before


# --- tar shards ---

def test_a_tar_key_whose_record_cannot_be_made_is_its_own_reject_and_the_shard_reads_on(tmp_path, monkeypatch) -> None:
    """Whatever fails while a key's record is made, that key leaves a reject with the reason (it was counted as read)
    and the keys after it are read: none is lost, none rejected for it."""
    (tmp_path / "s.tar").write_bytes(tar_bytes({f"{i}.png": image_bytes(8, 8, i) for i in range(3)}))
    make = tar_shards.tar_key_record

    def failing_for_key_1(path, id_, key, *args, **kwargs):
        if key == "1":
            raise ValueError("no record for this key")
        return make(path, id_, key, *args, **kwargs)

    monkeypatch.setattr(tar_shards, "tar_key_record", failing_for_key_1)
    records = _records(tmp_path)
    assert [(r["kind"], r["id"]) for r in records[:-1]] == [("image", "s.tar/0"), ("reject", "s.tar/1"),
                                                            ("image", "s.tar/2")]
    assert records[1]["error"] == "cannot read tar key 1: ValueError: no record for this key"
    assert records[-1]["n"] == 3


def _pass(members_of: dict[str, Counter]) -> _MembersPass:
    return _MembersPass("s.tar", members_of, set(), {}, [], set(), lambda key: f"s.tar/{key}")


def test_a_key_left_incomplete_when_the_shard_broke_off_names_the_member_it_lacks() -> None:
    """A shard that broke off (a connection lost for good) after a's image: a's reject names its label file, the
    member that never came, and b's its image; not just the key."""
    members = _pass({"a": Counter({"a.png": 1, "a.cls": 1}), "b": Counter({"b.png": 1})})
    assert members.went_by((0, tarfile.TarInfo("a.png"), image_bytes(8, 8, 1))) == []
    rejects = {r["id"]: r["error"] for r in members.broken_off()}
    assert rejects == {"s.tar/a": "corrupt tar member a.cls: the shard broke off before it could be read",
                       "s.tar/b": "corrupt tar member b.png: the shard broke off before it could be read"}


def test_a_key_with_a_member_more_than_the_index_counted_is_a_reject_not_an_image() -> None:
    """Pass 2 meets a.png twice where pass 1 counted it once (the shard was rewritten between the passes, keeping its
    size and time): a's members are not those indexed, so a is not read as an image of whichever version."""
    members = _pass({"a": Counter({"a.png": 1, "a.cls": 1})})
    for position, name, data in ((0, "a.png", image_bytes(8, 8, 1)), (1, "a.png", image_bytes(8, 8, 2)),
                                 (2, "a.cls", b"3")):
        assert members.went_by((position, tarfile.TarInfo(name), data)) == []
    (reject,) = members.broken_off()
    assert (reject["kind"], reject["id"]) == ("reject", "s.tar/a")
    # the shard changed: the reject says so and how to read it as it is now, not that it broke off
    assert reject["error"].startswith("tar key a has more members (a.png) than the first pass over the shard found: "
                                      "s.tar was replaced while this run read it (its members changed")
    assert "--retry-rejects" in reject["error"] and "broke off" not in reject["error"]


# --- the read stage ---

def test_a_read_task_tells_a_twin_added_beside_a_purified_key_by_its_units_purified_ids(tmp_path) -> None:
    """A resumed run hands each tar its done ids ("skip") and those of them purified into data/ ("purified"): a
    latin-1 'caf\\xe9.png' added beside the purified 'caf\\\\xe9.png' (one id for both) gets a reject of its own,
    instead of being skipped as done and never purified."""
    members = {"caf\u00e9.png": image_bytes(8, 8, 1), "caf\\xe9.png": image_bytes(8, 8, 2)}
    (tmp_path / "s.tar").write_bytes(tar_bytes(members, encoding="latin-1"))
    (unit,) = discover(str(tmp_path))
    done = "s.tar/caf\\xe9"
    row = {**{k: [v] for k, v in unit.to_row().items()}, "skip": [[done]], "purified": [[done]]}
    records = [r for b in read_stage(row, {}, False, None, frozenset()) for r in records_of(b)]
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == f"s.tar{LOOKALIKE}caf\\xe9"
    assert f"an earlier run purified one of them under {done}" in reject["error"]


# --- web folders ---

def _page(*links: str) -> bytes:
    return ("<html>" + "".join(f'<a href="{link}">x</a>' for link in links) + "</html>").encode("utf-8")


def test_a_web_folder_whose_page_has_no_links_is_asked_again_without_its_slash(tmp_path) -> None:
    """A server that answers 'data/' with an empty page and lists the folder at 'data' (as fsspec's own listing
    allowed for): the folder's files are found."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(image_bytes(8, 8, 1))

    class EmptyWithSlash(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            pages = {"/data/": _page(), "/data": _page("a.png")}
            if self.path not in pages:
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(pages[self.path])))
            self.end_headers()
            self.wfile.write(pages[self.path])

    with serving(tmp_path, EmptyWithSlash) as url:
        assert [p for u in discover(url + "data/", {}) for p in u.paths] == [url + "data/a.png"]


def test_a_web_folders_link_written_in_utf8_is_its_files_name(tmp_path) -> None:
    """An index page in UTF-8 linking 'café.png' as it is (not percent-encoded): the input is café.png, read as
    such, not 'cafÃ©.png' (its bytes read one character each), which the server does not have."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "café.png").write_bytes(image_bytes(8, 8, 1))
    (tmp_path / "data" / "index.html").write_bytes(_page("café.png"))
    with serving(tmp_path) as url:
        (unit,) = discover(url + "data/", {})
        assert unit.paths == (url + "data/café.png",)
        image, _count = list(read_unit(unit))
    assert (image["kind"], image["id"]) == ("image", "café.png")


# --- decoding ---

def test_an_animated_gif_cut_inside_a_later_frame_is_a_reject_saying_so_in_words() -> None:
    """A GIF of three frames cut short inside its second or third frame (an interrupted download): the reason says the
    file is truncated and where; it was "cannot decode image: IndexError: index out of range" (or "error: unpack_from
    requires a buffer of at least 2 bytes ...")."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    reasons = {cut: decode_image(data[:cut]) for cut in range(len(data) // 3, len(data))}
    cut_in_frame = {n: [cut for cut, r in reasons.items() if r == (
        f"truncated GIF: the file ends inside frame {n} of its animation (cut short, as by an interrupted download or "
        "copy: copy it again)")] for n in (2, 3)}
    assert cut_in_frame[2] and cut_in_frame[3] and max(cut_in_frame[2]) < min(cut_in_frame[3])
    assert not any(isinstance(r, str) and ("IndexError" in r or "unpack_from" in r) for r in reasons.values())
    assert isinstance(decode_image(data), Decoded) and decode_image(data).frames == 3


# --- what is read and held (memory) ---

def test_a_macos_metadata_member_of_a_keys_folder_is_not_extracted(tmp_path, monkeypatch) -> None:
    """'d/._x.png' (macOS's AppleDouble file, which its tar puts first) shares the key 'd/' with 'd/.png', still to be
    read when it goes by: it is counted as hidden, never read."""
    (tmp_path / "s.tar").write_bytes(tar_bytes({"d/._x.png": b"\0\5\26\7" * 64, "d/.png": image_bytes(8, 8, 0)}))
    extracted = spy_on_extraction(monkeypatch)
    records = _records(tmp_path)
    assert [(r["kind"], r["id"]) for r in records[:-1]] == [("image", "s.tar/d/")] and records[-1]["hidden"] == 1
    assert extracted == ["d/.png"]


def _peak_python_bytes(records) -> int:
    """The most memory Python objects held while `records` were read one by one, each let go of before the next."""
    tracemalloc.start()
    try:
        for _record in records:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_link_targets_bytes_are_let_go_of_once_its_links_keys_are_read(tmp_path) -> None:
    """16 keys of 1 MB, each with a link to its image: a target's bytes are held until its link's key is read, not
    to the end of the shard (docs/job.md: memory does not grow with the shard)."""
    members = [m for i in range(16) for m in ((f"{i:02d}.png", np.random.default_rng(i).bytes(2**20)),
                                               _entry(f"{i:02d}.b", tarfile.LNKTYPE, f"{i:02d}.png"))]
    (tmp_path / "s.tar").write_bytes(_tar_with_links(*members))
    (unit,) = discover(str(tmp_path))
    peak = _peak_python_bytes(read_unit(unit, in_memory_bytes=0))  # streamed: the shard is not one bytes object
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB held"


def test_a_parquet_row_whose_other_column_is_over_the_limit_is_never_made_python_values(tmp_path) -> None:
    """A caption of 16 MB (one digit repeated: a file of a few KB) beside a small image, --max-image-mb 1: the row is a
    reject and its caption stays in Arrow's memory, never copied into a Python string."""
    pq.write_table(pa.table({"image": [image_bytes(8, 8, 0)], "caption": ["0" * (16 * 2**20)]}),
                   tmp_path / "t.parquet", compression="zstd")
    (unit,) = discover(str(tmp_path))
    records = []
    peak = _peak_python_bytes(records.append(r) or r for r in read_unit(unit, max_image_bytes=2**20))
    assert [(r["kind"], r["id"]) for r in records[:-1]] == [("reject", "t.parquet#0")]
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB held"
