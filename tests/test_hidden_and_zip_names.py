"""A zip member whose name is flagged UTF-8 but is not costs only itself, never the archive; hidden entries skipped
(files, zip members) are counted in the run's summary and said by the command line."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import pytest

from pipeline.sources import discover, read_unit
from pipeline.stages import batch_of, write_stage
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


def test_the_listing_counts_the_hidden_files_it_skips_and_reads_the_rest_as_before(tmp_path) -> None:
    from pipeline.sources import HiddenSkipped

    for name in ("_train/1.png", "_train/2.png", ".DS_Store", "ok.png", "sub/.x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(image_bytes(8, 8, 0))
    hidden = HiddenSkipped()
    units = discover(str(tmp_path), hidden=hidden)
    assert units == discover(str(tmp_path))  # the same units with or without counting
    assert [p.rsplit("/", 1)[-1] for u in units for p in u.paths] == ["ok.png"]
    assert hidden.count == 4 and hidden.examples == [".DS_Store", "_train/1.png", "_train/2.png", "sub/.x.png"]


def test_a_zips_hidden_members_are_counted_in_its_count_record_and_by_the_writer(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("cat/1.png", image_bytes(8, 8, 1))
        archive.writestr("__MACOSX/cat/._1.png", b"resource fork")
        archive.writestr("_val/2.png", image_bytes(8, 8, 2))
    (tmp_path / "d.zip").write_bytes(buf.getvalue())
    records = _records(tmp_path)
    count = records[-1]
    assert (count["n"], count["hidden"]) == (1, 2)  # the image read; the two hidden members counted, not read
    assert count["hidden_examples"] == ["d.zip/__MACOSX/cat/._1.png", "d.zip/_val/2.png"]
    assert count["container"]["records"] == 1  # what the ledger keeps is as before
    manifest = write_stage(batch_of([count]), str(tmp_path / "out"), {})  # the count record, as a read task hands it on
    assert int(manifest["hidden"][0]) == 2 and int(manifest["read"][0]) == 1
    assert json.loads(manifest["hidden_examples"][0]) == ["d.zip/__MACOSX/cat/._1.png", "d.zip/_val/2.png"]


@pytest.mark.usefixtures("ray_local")
def test_a_run_over_only_hidden_inputs_says_how_many_it_skipped(tmp_path, model, capsys) -> None:
    from pipeline.cli import main

    root = tmp_path / "in"
    (root / "_train").mkdir(parents=True)
    for i in range(3):  # a folder mislabelled hidden: 0 images read, which the run said with no hint why
        (root / "_train" / f"{i}.png").write_bytes(image_bytes(16, 16, i))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("_val/a.png", image_bytes(16, 16, 7))
        archive.writestr("ok.png", image_bytes(16, 16, 8))
    (root / "d.zip").write_bytes(buf.getvalue())
    code = main(["--input", str(root), "--output", str(tmp_path / "out"), "--checkpoint", model, "--steps", "1",
                 "--canvas-size", "32", "--no-progress"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    run = summary["this_run"]
    assert code == 0 and summary["status"] == "complete"  # hidden entries are no part of read = purified + rejected
    assert (run["read"], run["purified"], run["hidden_skipped"]) == (1, 1, 4)
    assert run["hidden_skipped_examples"] == ["_train/0.png", "_train/1.png", "_train/2.png", "d.zip/_val/a.png"]
    assert "4 hidden entries (names starting with . or _) skipped, not read: _train/0.png, _train/1.png" in out


def test_the_dry_run_says_how_many_hidden_files_it_skips(tmp_path, model, capsys) -> None:
    from pipeline.cli import main

    (tmp_path / "in" / "_train").mkdir(parents=True)
    (tmp_path / "in" / "_train" / "0.png").write_bytes(image_bytes(16, 16, 0))
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model,
                 "--steps", "1", "--canvas-size", "32", "--dry-run"]) == 0
    assert "1 hidden entry (names starting with . or _) skipped, not read: _train/0.png" in capsys.readouterr().out
