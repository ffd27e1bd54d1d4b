"""Mutation-audit gaps in decoding, ids and the tar/zip readers: a bad image is a reject whose reason is one bounded
line naming what went wrong (never a raise that stops the batch), the JPEG limits hold at their exact counts, and what
the old tests left unchecked in the ids and in reading members of tar shards and zip archives."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import Decoded, decode_image
from pipeline.sources import discover, read_unit, tar_members
from pipeline.sources.ids import (
    ids_key,
    path_of_id,
    relative_id,
    shown_source,
    terminal_text,
    text_value,
    unescaped,
    without_signed_query,
)
from tests.jobutil import image_bytes, tar_bytes
from tests.test_decodefuzz_findings import _markers, _noise, _save
from tests.test_hidden_and_zip_names import _zip_with_raw_names
from tests.test_silent_drops import PNG, PNG2, _link, _zip
from tests.test_silent_drops import _records as _zip_records
from tests.test_sources import _DropsOnce, _entry, _tar_with_links
from tests.test_tar_ends import FETCHED, STREAMED, _three_members

# --- decoding: reasons, and the JPEG limits at their exact counts -----------------------------------------------------


def test_a_value_that_is_not_bytes_is_a_reject_naming_its_type() -> None:
    """A Parquet image cell holding text or nothing: the reason says what it held, so the user can find the column."""
    assert decode_image("cat.png") == "expected bytes, got str"  # type: ignore[arg-type]
    assert decode_image(None) == "expected bytes, got NoneType"  # type: ignore[arg-type]
    assert isinstance(decode_image(memoryview(image_bytes(4, 4, 0))), Decoded)  # type: ignore[arg-type]


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_an_orientation_tag_holding_garbage_leaves_the_image_as_stored() -> None:
    """EXIF orientation stored as a FLOAT infinity (a broken camera or editor): int() of it raises OverflowError, and
    the photo is decoded as stored, not rejected for its metadata."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHI", 0x0112, 11, 1) + b"\x7f\x80\x00\x00" + struct.pack(">I", 0)
    data = _with_app1(image_bytes(4, 6, 0, "JPEG"), b"Exif\x00\x00" + tiff)
    decoded = decode_image(data)
    assert isinstance(decoded, Decoded), decoded
    assert decoded.pixels.shape == (4, 6, 3)


def test_any_error_pillow_raises_is_a_one_line_bounded_reason(monkeypatch) -> None:
    """Whatever Pillow raises on hostile data (here a long, multi-line IndexError, as a cut-off animated GIF gives),
    decode_image returns a reason: one line (it goes into a reject record and onto the terminal) of at most 300
    characters, naming the error's type, and the run goes on."""

    def broken_open(*args, **kwargs):
        raise IndexError("index out of range\n" + "frame table: " + "x" * 1000)

    monkeypatch.setattr(Image, "open", broken_open)
    reason = decode_image(image_bytes(4, 4, 0))
    assert isinstance(reason, str)
    assert reason.startswith("cannot decode image: IndexError: index out of range frame table: xxx")
    assert "\n" not in reason and len(reason) <= 300 and reason.endswith("...")


def test_an_animated_gif_cut_anywhere_is_a_reject_or_its_first_frame_never_a_raise() -> None:
    """Cut inside its later frames, Pillow raises IndexError or struct.error (no OSError): each is that image's
    reject, saying the GIF is truncated, never an exception that would stop the batch and lose the images beside it."""
    frames = [Image.fromarray(_noise(8, 8, seed)) for seed in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    results = [decode_image(data[:n]) for n in range(1, len(data) + 1)]
    assert all(isinstance(r, str | Decoded) for r in results)
    assert any(isinstance(r, str) and r.startswith("truncated GIF: the file ends inside frame ") for r in results)
    assert isinstance(results[-1], Decoded) and results[-1].frames == 3


def test_a_jpeg_of_exactly_100_scans_decodes_and_one_of_101_is_a_reject() -> None:
    base = _save(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    sos, eoi = _markers(base, 0xDA), base.rfind(b"\xff\xd9")
    scan = base[sos[1] : sos[2]]
    at_limit = base[:eoi] + scan * (100 - len(sos)) + b"\xff\xd9"
    assert isinstance(decode_image(at_limit), Decoded)
    reason = decode_image(base[:eoi] + scan * (101 - len(sos)) + b"\xff\xd9")
    assert isinstance(reason, str) and "more than 100 scans" in reason


def _segments_to_first_scan(jpeg: bytes) -> int:
    """Marker segments from the start of a JPEG to its first scan, that scan's header included."""
    pos, n = 2, 0
    while True:
        n += 1
        if jpeg[pos + 1] == 0xDA:
            return n
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]


def test_a_jpeg_of_exactly_10000_marker_segments_decodes_and_one_more_is_a_reject() -> None:
    good = _save(Image.fromarray(_noise(8, 8)), "JPEG")  # baseline: one scan, then the end marker
    comments = 10_000 - _segments_to_first_scan(good)
    assert isinstance(decode_image(good[:2] + b"\xff\xfe\x00\x02" * comments + good[2:]), Decoded)
    reason = decode_image(good[:2] + b"\xff\xfe\x00\x02" * (comments + 1) + good[2:])
    assert isinstance(reason, str) and "more than 10,000 marker segments" in reason


def _grey_tiff_with_directory_last(next_page: bytes) -> bytes:
    """An 8x8 grey TIFF laid out pixels first and its one page's directory last, followed by `next_page` (the 4-byte
    pointer to a next page, or less of it)."""
    pixels = bytes(range(0, 256, 4))
    entries = [(256, 8), (257, 8), (258, 8), (259, 1), (262, 1), (273, 8), (277, 1), (278, 8), (279, 64)]
    directory = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, 4, 1, value)
                                                           for tag, value in entries)
    return b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + directory + next_page


def test_a_tiff_cut_inside_its_next_page_pointer_decodes_its_one_page() -> None:
    """The pages are counted by the chain of next-page pointers; a file that ends before its first pointer is whole
    (Pillow opens it) still has its page, counted once, not a reject for a page count it cannot read."""
    for next_page in (b"\0\0\0\0", b"\0\0", b""):
        out = decode_image(_grey_tiff_with_directory_last(next_page))
        assert isinstance(out, Decoded), (next_page, out)
        assert out.frames == 1 and out.pixels[0, :3, 0].tolist() == [0, 4, 8]


def test_a_16_bit_pgm_reaching_full_white_is_scaled_not_stretched() -> None:
    """A 16-bit PGM (mode I) holding 1000..65535: 65535 is 16-bit white, so the image is scaled as 16-bit (1000 is 4,
    a dark grey), not stretched from its own darkest value to black."""
    values = np.array([[1000, 32768, 65535]], dtype=np.uint16)
    pgm = decode_image(_save(Image.fromarray(values).convert("I"), "PPM"))
    assert isinstance(pgm, Decoded) and pgm.mode == "I"
    assert pgm.pixels[0, :, 0].tolist() == [4, 128, 255]


def test_a_flat_32_bit_or_float_image_decodes_black_not_as_a_reject() -> None:
    """An image of one value outside the ranges that are scaled (a float TIFF all 5.0, a 32-bit one all 70000, as a
    blank depth map or mask is): stretching it from its own range would divide by zero; it is black."""
    for array in (np.full((3, 4), 5.0, dtype=np.float32), np.full((3, 4), 70_000, dtype=np.int32)):
        out = decode_image(_save(Image.fromarray(array), "TIFF"))
        assert isinstance(out, Decoded), out
        assert out.pixels.shape == (3, 4, 3) and not out.pixels.any()


# --- ids ---------------------------------------------------------------------------------------------------------------


def test_a_name_with_an_undecodable_byte_prints_as_its_escape() -> None:
    """A latin-1 file name reaches Python as a lone surrogate ('caf\\udce9.png'): printed as it is, writing the line to
    a UTF-8 terminal or log raises UnicodeEncodeError, so the CLI would crash on the name instead of reporting it."""
    line = terminal_text("skipped caf\udce9.png")
    assert line == "skipped caf\\udce9.png"
    line.encode("utf-8")  # printable


def test_a_caption_holding_an_ascii_byte_escape_is_written_as_typed() -> None:
    """Only \\x80 to \\xff are escapes text_name writes (a byte that is not UTF-8); a caption holding '\\x41' or a
    Windows path 'C:\\x20files' is written as typed and read back as typed, its backslashes not doubled."""
    for caption in ("byte \\x41 here", "C:\\x20files\\x7f"):
        assert text_value(caption) == caption
        assert unescaped(caption) == caption


@pytest.mark.parametrize("param", ["X-Amz-Security-Token", "access_token", "api-key", "x-api-key", "API_KEY", "apikey",
                                   "subscription-key", "Ocp-Apim-Subscription-Key", "access_key", "auth",
                                   "sessionid", "PHPSESSID", "session_id", "session", "sid", "pwd", "passwd"])
def test_a_query_parameter_holding_a_credential_stays_out_of_ids_and_sources(param) -> None:
    """A web shard given with its credential in the query ('s.tar?api-key=...'): the id is the shard's name alone (so
    it is read as a tar and keeps its id when the key changes), and the source column shows the key as '***'.
    'api-key' was not taken for one: the shard was read as one image, its key written into every row's id and source."""
    url = f"https://h/d/s.tar?{param}=SECRET-VALUE"
    assert without_signed_query(url) == "https://h/d/s.tar"
    assert relative_id(url, url) == "s.tar"
    assert shown_source(f"{url}&x-id=GetObject:0001") == f"https://h/d/s.tar?{param}=***&x-id=GetObject:0001"
    assert without_signed_query("https://h/d/get?id=3&key=cats/1.png") == "https://h/d/get?id=3&key=cats/1.png"


def test_an_object_key_holding_a_question_mark_keeps_its_whole_name() -> None:
    """Only a web address has a query: an object store key or a file may be named 's.tar?token=1', and that is its
    name (its id), not a signed request."""
    for path in ("s3://b/d/s.tar?token=1", "/data/d/s.tar?sig=1"):
        assert without_signed_query(path) == path
        assert relative_id(path, path.rsplit("/", 1)[0]) == path.rsplit("/", 1)[1]


def test_web_names_that_differ_in_a_byte_that_is_not_utf8_keep_ids_of_their_own() -> None:
    """'caf%E9.png' and 'caf%E8.png' (latin-1 names on a web server) are two files: decoded with their bytes kept, their
    ids differ ('caf\\xe9.png', 'caf\\xe8.png'), as the same files' ids on a disk do; not both 'caf\ufffd.png'."""
    root = "https://h/d"
    assert relative_id(f"{root}/caf%E9.png", root) == "caf\\xe9.png"
    assert relative_id(f"{root}/caf%E8.png", root) == "caf\\xe8.png"


def test_the_address_of_a_web_id_that_holds_a_percent_gives_that_id_back() -> None:
    """An input gone from a web listing is asked for by the address its id gives: a file named 'a%20b.zip' is at
    'a%2520b.zip' (asked at 'a%20b.zip', the server would send the file 'a b.zip')."""
    root = "https://h/d/"
    for id_ in ("a%20b.zip", "road signs/caf\u00e9.png", "x.png"):
        assert relative_id(path_of_id(id_, root), root) == id_
    assert path_of_id("a%20b.zip", root) == "https://h/d/a%2520b.zip"
    assert path_of_id("a%20b.zip", "s3://b/d") == "s3://b/d/a%20b.zip"


def test_id_sets_hash_apart_whatever_their_ids_hold() -> None:
    """ids_key names part files: two sets of ids must never hash alike, or one write batch replaces another's part."""
    assert ids_key(["a.png", "b.png"]) == ids_key(["b.png", "a.png"])
    assert ids_key(["a.png\nb.png"]) != ids_key(["a.png", "b.png"])
    nul = "\0" + json.dumps(["a\nb"])  # an id spelling out the JSON form that the set {'a\nb'} is hashed by
    assert ids_key([nul]) != ids_key(["a\nb"])
    assert ids_key(["caf\udce9.png"]) != ids_key(["caf\udce8.png"])  # names that are not valid text


# --- tar shards ----------------------------------------------------------------------------------------------------


def _read(folder) -> list[dict]:
    (unit,) = discover(str(folder))
    return list(read_unit(unit))


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_a_second_archive_cut_short_in_a_concatenated_shard_is_the_shards_reject(tmp_path, in_memory_bytes) -> None:
    """`cat a.tar b.tar` where b.tar's upload stopped between two members (no end-of-archive blocks): a.tar's end
    blocks must not make b.tar's missing end look like a whole archive, or its lost members would go unreported and
    the shard be recorded as read whole."""
    more = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(5, 8)})
    (tmp_path / "s.tar").write_bytes(_three_members() + more[: 2 * 1024])  # b.tar's first two members, then nothing
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit, in_memory_bytes=in_memory_bytes))
    assert [r["id"] for r in records if r["kind"] == "image"] == [f"s.tar/{k}" for k in (0, 1, 2, 5, 6)]
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == "s.tar#unreadable" and "ends without tar's end-of-archive blocks" in reject["error"]
    assert "container" not in records[-1]


def _random_members(n: int, size: int = 30_000) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    return {f"{k:03d}.bin": rng.integers(0, 256, size, dtype=np.uint8).tobytes() for k in range(n)}


def test_a_connection_dropped_inside_a_members_bytes_restarts_the_pass_instead_of_losing_the_member(
        monkeypatch) -> None:
    """A transient error while a member's bytes stream in is the pass's (it restarts from the first member, after
    None), never that member's damage: as a member's error it would make a good image a reject for a dropped
    connection."""
    monkeypatch.setattr(tar_members, "backoff", lambda attempt: None)
    members = _random_members(3)
    raw = tar_bytes(members)
    _DropsOnce.opened = 1  # the next stream opened is the one that drops
    items = list(tar_members.member_pass(lambda: _DropsOnce(raw, cut=512 + 20_000), lambda position, member: True))
    assert _DropsOnce.opened == 3 and items.count(None) == 2  # dropped inside 000.bin's bytes, then read whole
    assert not [item for item in items if item is not None and isinstance(item[2], Exception)]
    last = items[len(items) - 1 - items[::-1].index(None) + 1 :]
    assert [(position, member.name, data) for position, member, data in last] == [
        (k, name, data) for k, (name, data) in enumerate(members.items())]


def test_a_shard_whose_every_read_drops_raises_after_the_last_attempt(monkeypatch) -> None:
    """When every attempt fails, the pass raises (the shard's reject names the error): it never ends quietly as if
    the shard had no more members."""
    monkeypatch.setattr(tar_members, "backoff", lambda attempt: None)
    opened = []

    def dropping():
        opened.append(1)
        raise ConnectionError("Connection reset by peer")

    with pytest.raises(ConnectionError):
        list(tar_members.member_pass(dropping, lambda position, member: True, attempts=3))
    assert len(opened) == 3


def test_the_index_pass_restarted_counts_each_member_once(monkeypatch) -> None:
    """Pass 1 restarted after a dropped connection forgets what it had counted: a member counted twice would make its
    key one that repeats a name (a reject), or wait for a member that never comes."""
    monkeypatch.setattr(tar_members, "backoff", lambda attempt: None)
    raw = tar_bytes({**_random_members(3), "000.cls": b"1"})
    _DropsOnce.opened = 1
    members_of, _, _, error, _ = tar_members.index_tar(lambda: _DropsOnce(raw, cut=len(raw) - 3000))
    assert error is None and _DropsOnce.opened == 3
    assert members_of == {"000": Counter({"000.bin": 1, "000.cls": 1}), "001": Counter({"001.bin": 1}),
                          "002": Counter({"002.bin": 1})}


def _trimmed(archive: bytes) -> bytes:
    """A tar without its end-of-archive blocks and padding: up to the end of its last member's data."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        last = tar.getmembers()[-1]
    return archive[: last.offset_data + -(-last.size // 512) * 512]


@pytest.mark.parametrize("zero_blocks, read_all", [(tar_members.MAX_ZERO_BLOCKS, True),
                                                   (tar_members.MAX_ZERO_BLOCKS + 1, False)])
def test_zero_blocks_between_archives_are_read_past_up_to_the_limit(tmp_path, zero_blocks, read_all) -> None:
    """Archives joined with a gap of zero blocks are read whole up to MAX_ZERO_BLOCKS blocks of zeros; past it the
    rest is not read as members, and the shard's reject says so."""
    first = _trimmed(tar_bytes({"0.png": image_bytes(8, 8, 0)}))
    (tmp_path / "s.tar").write_bytes(first + b"\0" * 512 * zero_blocks + tar_bytes({"1.png": image_bytes(8, 8, 1)}))
    records = _read(tmp_path)
    assert [r["id"] for r in records if r["kind"] == "image"] == (["s.tar/0", "s.tar/1"] if read_all else ["s.tar/0"])
    rejects = [r["error"] for r in records if r["kind"] == "reject"]
    assert rejects == ([] if read_all else [rejects[0]])
    assert read_all or "data follows more than 1 MiB of zero blocks" in rejects[0]


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_a_tar_member_of_exactly_the_size_limit_is_read(tmp_path, in_memory_bytes) -> None:
    png = image_bytes(8, 8, 3)
    (tmp_path / "s.tar").write_bytes(tar_bytes({"a.png": png}))
    (unit,) = discover(str(tmp_path))
    image, _ = read_unit(unit, max_image_bytes=len(png), in_memory_bytes=in_memory_bytes)
    assert image["kind"] == "image" and image["data"] == png
    reject, _ = read_unit(unit, max_image_bytes=len(png) - 1, in_memory_bytes=in_memory_bytes)
    assert reject["kind"] == "reject" and "tar member a.png" in reject["error"] and "over --max-image-mb" in reject["error"]


def test_a_tar_link_to_the_folder_above_the_shard_is_said_to_point_outside_it(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(_tar_with_links(
        ("0001.png", image_bytes(8, 8, 1)), _entry("sub/0002.png", tarfile.SYMTYPE, "../.."),
        _entry("0003.png", tarfile.SYMTYPE, "..")))
    records = {r["id"]: r for r in _read(tmp_path) if r["kind"] != "count"}
    assert records["s.tar/0001"]["kind"] == "image"
    for key, link in (("sub/0002", "sub/0002.png -> ../.."), ("0003", "0003.png -> ..")):
        assert records[f"s.tar/{key}"]["kind"] == "reject"
        assert f"{link} points outside the shard" in records[f"s.tar/{key}"]["error"]


def test_links_in_a_shard_packed_from_its_folder_find_their_targets(tmp_path) -> None:
    """`tar -cf s.tar -C folder .` names every member './x': a link's target path is normalised ('./0001.png' and
    '0001.png' are one member), so hard and symbolic links read their target's bytes, not a 'not a file' reject."""
    png = image_bytes(8, 8, 1)
    (tmp_path / "s.tar").write_bytes(_tar_with_links(
        ("./0001.png", png), _entry("./0002.png", tarfile.LNKTYPE, "./0001.png"),
        _entry("./0003.png", tarfile.SYMTYPE, "0001.png")))
    records = [r for r in _read(tmp_path) if r["kind"] != "count"]
    assert [(r["kind"], r["id"], r["data"]) for r in records] == [("image", f"s.tar/000{k}", png) for k in (1, 2, 3)]


# --- zip archives ----------------------------------------------------------------------------------------------------


def _dos_entry(name: str, attributes: int) -> zipfile.ZipInfo:
    """A zip entry as a Windows tool writes it: MS-DOS attributes in the low bits (0x10: a folder)."""
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 0, attributes
    return info


def test_a_windows_folder_entry_is_no_input_but_a_file_marked_so_is_read(tmp_path) -> None:
    """A folder entry without its trailing slash, marked a folder by its MS-DOS attribute alone, is no input (it was
    an 'empty file' reject); an entry marked so that holds bytes is a file all the same, never dropped unread."""
    (tmp_path / "d.zip").write_bytes(_zip([(_dos_entry("cat", 0x10), b""), ("cat/1.png", PNG),
                                           (_dos_entry("odd.png", 0x10), PNG2)]))
    records = _zip_records(tmp_path)
    assert sorted(records) == ["count", "d.zip/cat/1.png", "d.zip/odd.png"] and records["count"]["n"] == 2
    assert records["d.zip/odd.png"]["data"] == PNG2


def test_a_member_marked_a_link_that_holds_more_than_a_path_is_a_reject_saying_so(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip([("1.png", PNG), (_link("big.png"), b"1.png" + b"/" * 5000)]))
    error = _zip_records(tmp_path)["d.zip/big.png"]["error"]
    assert "is marked a symbolic link but holds 5,005 bytes, not a path" in error


def test_a_link_to_a_path_stored_under_two_names_is_a_reject_not_one_of_them(tmp_path) -> None:
    """'a/b.png' and 'a\\b.png' are one path, so neither is read; a link to that path cannot pick one either."""
    (tmp_path / "d.zip").write_bytes(_zip([("a/b.png", PNG), ("a\\b.png", PNG2), (_link("l.png"), b"a/b.png")]))
    records = _zip_records(tmp_path)
    assert records["d.zip/l.png"]["kind"] == "reject"
    assert "its target a/b.png is stored under more than one name" in records["d.zip/l.png"]["error"]
    assert records["d.zip/a/b.png"]["kind"] == "reject"


def _flagged_encrypted(raw: bytes, name: bytes) -> bytes:
    """`raw` with member `name` flagged encrypted (bit 0) in its local header and its central directory entry."""
    data = bytearray(raw)
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.find(signature)
        while data[at + name_at : at + name_at + len(name)] != name:
            at = data.find(signature, at + 1)
        data[at + flags_at] |= 0x1
    return bytes(data)


def test_an_encrypted_member_is_a_reject_that_says_so_not_corrupt(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_flagged_encrypted(_zip([("a.png", PNG), ("s.png", PNG2)]), b"s.png"))
    records = _zip_records(tmp_path)
    assert records["d.zip/a.png"]["data"] == PNG
    assert records["d.zip/s.png"]["error"] == "zip member s.png is encrypted"


def test_a_member_of_exactly_the_size_limit_is_read(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip([("a.png", PNG)]))
    (unit,) = discover(str(tmp_path))
    image, _ = read_unit(unit, max_image_bytes=len(PNG))
    assert image["kind"] == "image" and image["data"] == PNG
    reject, _ = read_unit(unit, max_image_bytes=len(PNG) - 1)
    assert reject["kind"] == "reject" and "over --max-image-mb" in reject["error"]


def test_a_members_label_is_the_folder_it_lies_in_not_the_folder_path(tmp_path) -> None:
    (tmp_path / "d.zip").write_bytes(_zip([("train/cat/1.png", PNG), ("./dog/2.png", PNG2)]))
    (unit,) = discover(str(tmp_path))
    labels = {r["id"]: r["meta"]["label"] for r in read_unit(unit, labels_from_folders=True) if r["kind"] == "image"}
    assert labels == {"d.zip/train/cat/1.png": "cat", "d.zip/dog/2.png": "dog"}  # './' is no folder


def test_a_done_member_whose_name_is_not_utf8_is_not_read_again(tmp_path, monkeypatch) -> None:
    """Its id is text ('caf\\xe9.png'), and that id, in the done set of an incremental run, skips it."""
    (tmp_path / "d.zip").write_bytes(_zip_with_raw_names([(b"caf\xe9.png", PNG, True), (b"ok.png", PNG2, False)]))
    (unit,) = discover(str(tmp_path))
    read = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, info, pwd=None: read.append(info.filename) or original(
        self, info, pwd))
    *records, count = read_unit(unit, skip_ids={"d.zip/caf\\xe9.png"})
    assert [(r["kind"], r["id"]) for r in records] == [("image", "d.zip/ok.png")] and count["skipped"] == 1
    assert read == ["ok.png"]  # the done member's bytes are not read (from storage: a range of the archive each)


def test_a_zip_after_other_bytes_is_read(tmp_path) -> None:
    """A self-extracting archive (a program, then the zip) or a zip appended to another file: the offsets its
    directory gives are from the zip's own start, and every member is read, none a 'corrupt' reject."""
    (tmp_path / "d.zip").write_bytes(b"MZ" + bytes(3000) + _zip([("a.png", PNG), ("b/c.png", PNG2)]))
    records = _zip_records(tmp_path)
    assert records["d.zip/a.png"]["data"] == PNG and records["d.zip/b/c.png"]["data"] == PNG2


def test_a_look_alike_reject_with_a_name_that_is_not_utf8_reads_as_the_others_do(tmp_path) -> None:
    """A latin-1 name flagged UTF-8 and the same name followed by a NUL: one reject naming both, written as for names
    that are UTF-8. The reason held the undecodable byte itself, so the whole reason was escaped again and every
    backslash in it doubled, the rule's and the names' escapes alike."""
    (tmp_path / "d.zip").write_bytes(_zip_with_raw_names([(b"caf\xe9.png", PNG, True),
                                                          (b"caf\xe9.png\x00evil.png", PNG2, True)]))
    records = _zip_records(tmp_path)
    assert records["count"]["n"] == 1
    error = records["d.zip/caf\\xe9.png"]["error"]
    assert error.startswith("zip members 'caf\\\\xe9.png' and 'caf\\\\xe9.png\\x00evil.png' are one path, caf\\xe9.png, "
                            "once '\\' is read as '/', ")
