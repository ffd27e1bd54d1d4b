"""A tar shard whose archive ends early, holds a damaged header or is several archives end to end: tarfile stopped at
the first such place as if the archive were whole, so every member after it vanished with no reject while the run
said complete. Now every member that can be read is, and damage is the shard's reject."""

from __future__ import annotations

import pytest

from pipeline.sources import discover, read_unit
from tests.jobutil import image_bytes, tar_bytes

FETCHED, STREAMED = 2**30, 0  # in_memory_bytes: the shard read from memory, or streamed from storage twice


def _three_members() -> bytes:
    # each member: a 512-byte header, then its 8x8 PNG padded to 512 bytes; then two zero blocks, padded to 10 KiB
    data = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(3)})
    assert all(len(image_bytes(8, 8, k)) <= 512 for k in range(3))
    return data


def _flip_checksum_of_second_header(data: bytes) -> bytes:
    at = 1024 + 150  # the second header's checksum field
    return data[:at] + (b"9" if data[at:at + 1] != b"9" else b"8") + data[at + 1:]


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
@pytest.mark.parametrize("damage, kept, reason", [
    # read on past the bad header to the next good one (GNU tar --ignore-zeros): only the damaged member is lost
    (_flip_checksum_of_second_header, ["s.tar/0", "s.tar/2"], "a member's header cannot be read (invalid header)"),
    (lambda data: data[:1200], ["s.tar/0"], "a member's header cannot be read (truncated header)"),
    (lambda data: data[:3 * 1024], ["s.tar/0", "s.tar/1", "s.tar/2"], "ends without tar's end-of-archive blocks"),
])
def test_a_shard_that_ends_early_is_a_reject_not_a_shorter_shard(tmp_path, in_memory_bytes, damage, kept,
                                                                    reason) -> None:
    (tmp_path / "s.tar").write_bytes(damage(_three_members()))
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit, in_memory_bytes=in_memory_bytes))
    assert [r["id"] for r in records if r["kind"] == "image"] == kept
    (reject,) = [r for r in records if r["kind"] == "reject"]
    assert reject["id"] == "s.tar#unreadable" and reason in reject["error"]
    assert records[-1]["n"] == len(kept) + 1 and "container" not in records[-1]  # never recorded as read whole


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_a_whole_shard_has_no_reject(tmp_path, in_memory_bytes) -> None:
    data = _three_members()
    (tmp_path / "s.tar").write_bytes(data)
    (tmp_path / "t.tar").write_bytes(data[:3 * 1024 + 512])  # one zero block: tarfile and GNU tar read it as the end
    for unit in discover(str(tmp_path)):
        records = list(read_unit(unit, in_memory_bytes=in_memory_bytes))
        assert [r["kind"] for r in records] == ["image"] * 3 + ["count"]


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_archives_concatenated_into_one_shard_are_read_whole(tmp_path, in_memory_bytes) -> None:
    # `cat a.tar b.tar > s.tar`: tarfile alone stops at a.tar's end-of-archive blocks, so b.tar's members vanished
    more = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(5, 7)})
    (tmp_path / "s.tar").write_bytes(_three_members() + more)
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit, in_memory_bytes=in_memory_bytes))
    assert [r["id"] for r in records if r["kind"] == "image"] == [f"s.tar/{k}" for k in (0, 1, 2, 5, 6)]
    assert records[-1]["n"] == 5 and "container" in records[-1]  # nothing wrong: read whole, no reject


def test_data_after_the_end_of_the_archive_is_the_shards_reject(tmp_path) -> None:
    (tmp_path / "s.tar").write_bytes(_three_members() + b"junk" * 200)  # not zeros, not a header
    (unit,) = discover(str(tmp_path))
    records = list(read_unit(unit))
    assert [r["id"] for r in records if r["kind"] != "count"] == ["s.tar/0", "s.tar/1", "s.tar/2", "s.tar#unreadable"]

