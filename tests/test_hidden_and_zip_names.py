"""A zip member whose name is flagged UTF-8 but is not costs only itself, never the archive."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the archive fetched whole, or read through ranges of it
UTF8 = 0x800  # the general purpose flag saying a member's name is UTF-8


def _zip_with_raw_names(members: list[tuple[bytes, bytes, bool]]) -> bytes:
    """A zip of (name as stored, data, flagged UTF-8): zipfile writes only valid names, so each name is written as a
    placeholder of its length and then replaced, with its flag, in the local header and the central directory."""
    buf = io.BytesIO()
    placeholders = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for i, (name, data, _) in enumerate(members):
            placeholder = f"{i:03d}".encode() + b"~" * (len(name) - 3)
            placeholders.append(placeholder)
            archive.writestr(placeholder.decode(), data)
    out = bytearray(buf.getvalue())
    for (name, _, flagged), placeholder in zip(members, placeholders, strict=True):
        for signature, flags_at, name_len_at, name_at in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
            at = 0
            while (at := out.find(signature, at)) >= 0:
                (length,) = struct.unpack("<H", out[at + name_len_at : at + name_len_at + 2])
                if out[at + name_at : at + name_at + length] == placeholder:
                    out[at + name_at : at + name_at + length] = name
                    (flags,) = struct.unpack("<H", out[at + flags_at : at + flags_at + 2])
                    out[at + flags_at : at + flags_at + 2] = struct.pack("<H", flags | UTF8 if flagged else flags & ~UTF8)
                at += 4
    return bytes(out)


def _records(folder, in_memory_bytes: int = FETCHED) -> list[dict]:
    return [r for unit in discover(str(folder)) for r in read_unit(unit, in_memory_bytes=in_memory_bytes)]


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_a_member_flagged_utf8_whose_name_is_not_costs_only_its_name_not_the_archive(tmp_path, in_memory_bytes) -> None:
    # zipfile fails on the whole archive (UnicodeDecodeError): all of it was one 'd.zip#unreadable' reject
    (tmp_path / "d.zip").write_bytes(_zip_with_raw_names([
        (b"ok.png", image_bytes(8, 8, 1), False),
        (b"caf\xe9.png", image_bytes(8, 8, 2), True),  # latin-1 bytes under the UTF-8 flag
        (b"sub/two.png", image_bytes(8, 8, 3), True),
        (b"\x82t\x82.png", image_bytes(8, 8, 4), False),  # not flagged: cp437, as zipfile always read it ('été.png')
        ("d\u00e9j\u00e0.png".encode(), image_bytes(8, 8, 5), True),  # valid UTF-8 under the flag
    ]))
    records = _records(tmp_path, in_memory_bytes)
    images = {r["id"]: r for r in records if r["kind"] == "image"}
    # the valid names keep the ids zipfile gives them; the bad one is read with its byte written as \xe9, as for tar
    assert sorted(images) == sorted(["d.zip/ok.png", "d.zip/caf\\xe9.png", "d.zip/sub/two.png", "d.zip/\u00e9t\u00e9.png",
                                     "d.zip/d\u00e9j\u00e0.png"])
    assert images["d.zip/caf\\xe9.png"]["data"] == image_bytes(8, 8, 2)
    assert images["d.zip/ok.png"]["data"] == image_bytes(8, 8, 1)
    assert images["d.zip/sub/two.png"]["data"] == image_bytes(8, 8, 3)
    assert not [r for r in records if r["kind"] == "reject"]
    count = records[-1]
    assert count["n"] == 5 and count["container"]["records"] == 5  # read whole: no '#unreadable'


def test_a_bad_name_and_a_name_holding_its_escapes_keep_ids_of_their_own(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip_with_raw_names([
        (b"caf\xe9.png", image_bytes(8, 8, 1), True),
        (b"caf\\xe9.png", image_bytes(8, 8, 2), False),  # named, literally, as the other's id says it
    ]))
    images = {r["id"]: r["data"] for r in _records(tmp_path) if r["kind"] == "image"}
    # a zip member's '\\' is a folder ('caf/xe9.png'), so no other name can give an escaped name's id
    assert images == {"d.zip/caf\\xe9.png": image_bytes(8, 8, 1), "d.zip/caf/xe9.png": image_bytes(8, 8, 2)}
