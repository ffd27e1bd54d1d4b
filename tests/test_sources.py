"""Readers: every input becomes exactly one record, large units come out a batch at a time."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import discover, file_bytes, ids_digest, read_unit, tar_members
from pipeline.sources.tar_shards import _MembersPass
from pipeline.stages import read_stage, records_of
from tests.jobutil import image_bytes, tar_bytes


def _records(path: Path, **kw) -> list[dict]:
    (unit,) = discover(str(path.parent))
    return list(read_unit(unit, **kw))


# A shard fetched whole into memory, and one streamed from storage (any shard larger than in_memory_bytes).
FETCHED, STREAMED = 2**30, 0


def test_read_stage_yields_a_large_shard_in_bounded_batches(tmp_path) -> None:
    (tmp_path / "big.tar").write_bytes(tar_bytes({f"{i:03d}.png": image_bytes(8, 8, i) for i in range(10)}))
    (unit,) = discover(str(tmp_path))
    row = {k: [v] for k, v in unit.to_row().items()}
    batches = [records_of(b) for b in read_stage(row, {}, False, None, frozenset(), max_records=4)]
    assert [len(b) for b in batches] == [4, 4, 3]  # 10 images, then the unit's count record
    records = [r for b in batches for r in b]
    assert [r["id"] for r in records[:-1]] == [f"big.tar/{i:03d}" for i in range(10)]
    ids = [f"big.tar/{i:03d}" for i in range(10)]  # read to its end: named, for the record of containers read whole
    assert records[-1] == {"kind": "count", "n": 10, "skipped": 0,
                           "container": {"path": unit.paths[0], "records": 10, "ids_sha256": ids_digest(ids)}}


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_tar_sidecars_join_their_image_even_when_not_adjacent(tmp_path, in_memory_bytes) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes({"a.png": image_bytes(8, 8, 0), "b.png": image_bytes(8, 8, 1), "a.cls": b"3",
                                 "b.json": b'{"caption": "x"}', "c.cls": b"5"}))
    records = _records(shard, in_memory_bytes=in_memory_bytes)
    assert len(records) == 4 and records[-1]["n"] == 3
    by_id = {r["id"]: r for r in records if r["kind"] != "count"}
    assert by_id["s.tar/a"]["meta"] == {"label": 3} and by_id["s.tar/b"]["meta"] == {"caption": "x"}
    assert by_id["s.tar/c"]["kind"] == "reject" and "found c.cls" in by_id["s.tar/c"]["error"]
    assert by_id["s.tar/a"]["data"] == image_bytes(8, 8, 0)


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_truncated_shard_keeps_the_keys_before_the_damage_and_rejects_the_rest(tmp_path, in_memory_bytes) -> None:
    data = gzip.compress(tar_bytes({f"{i}.png": image_bytes(16, 16, i) for i in range(6)}))
    shard = tmp_path / "s.tar.gz"
    shard.write_bytes(data[: len(data) * 2 // 3])
    records = _records(shard, in_memory_bytes=in_memory_bytes)
    images = [r for r in records if r["kind"] == "image"]
    *damaged, unreadable = [r for r in records if r["kind"] == "reject"]
    assert 1 <= len(images) < 6 and [r["id"] for r in images] == [f"s.tar.gz/{i}" for i in range(len(images))]
    # a key whose header was read but whose data was cut off is its own reject
    assert all("corrupt tar member" in r["error"] for r in damaged) and len(damaged) <= 1
    keys = len(images) + len(damaged)
    assert unreadable["id"] == "s.tar.gz#unreadable" and f"after {keys} keys" in unreadable["error"]
    assert records[-1] == {"kind": "count", "n": keys + 1, "skipped": 0}


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_parquet_rows_are_read_in_chunks_with_their_columns(tmp_path, in_memory_bytes) -> None:
    n = 600  # more than one chunk of rows, in several row groups
    table = pa.table({"image": [{"bytes": image_bytes(4, 4, i % 7), "path": f"{i}.png"} for i in range(n)],
                      "label": list(range(n))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=250)
    records = _records(tmp_path / "t.parquet", in_memory_bytes=in_memory_bytes)
    assert [r["id"] for r in records[:-1]] == [f"t.parquet#{i}" for i in range(n)]
    assert all(r["meta"] == {"label": i, "original_path": f"{i}.png"} for i, r in enumerate(records[:-1]))
    assert records[-1]["n"] == n


def _shard_of(n: int) -> dict[str, bytes]:
    members = {}
    for i in range(n):
        members[f"{i:03d}.png"] = image_bytes(16, 16, i)
        members[f"{i:03d}.cls"] = str(i % 10).encode()
    return members


def test_a_shard_over_the_memory_limit_is_streamed_never_fetched_whole(tmp_path, monkeypatch) -> None:
    shard = tmp_path / "big.tar"
    shard.write_bytes(tar_bytes(_shard_of(20)))

    def no_whole_reads(path, *args, **kwargs):  # read_bytes' limits too: a whole read says so, not TypeError
        raise AssertionError(f"{path} was fetched whole")

    monkeypatch.setattr(file_bytes, "read_bytes", no_whole_reads)
    records = _records(shard, in_memory_bytes=shard.stat().st_size - 1)
    assert [r["id"] for r in records[:-1]] == [f"big.tar/{i:03d}" for i in range(20)]
    assert [r["meta"]["label"] for r in records[:-1]] == [i % 10 for i in range(20)]
    assert records[3]["data"] == image_bytes(16, 16, 3) and records[-1]["n"] == 20


class _DropsOnce:
    """A file that raises a connection error part-way through the first time the shard is read."""

    opened = 0

    def __init__(self, raw: bytes, cut: int) -> None:
        type(self).opened += 1
        self._buf, self._cut = io.BytesIO(raw), cut if type(self).opened == 2 else None

    def read(self, n: int = -1) -> bytes:
        if self._cut is not None and self._buf.tell() + (n if n >= 0 else 1 << 40) > self._cut:
            raise ConnectionError("Connection reset by peer")
        return self._buf.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass


def _streams_drop_once(monkeypatch, raw: bytes) -> None:
    """Storage whose streams serve `raw` and drop the connection half-way through the second one."""
    storage_path = file_bytes.storage_path

    def dropping(path, options):
        fs, fs_path = storage_path(path, options)
        return type("FS", (), {"__getattr__": lambda self, name: getattr(fs, name),
                               "open": lambda self, p, mode: _DropsOnce(raw, cut=len(raw) // 2)})(), fs_path

    monkeypatch.setattr(file_bytes, "storage_path", dropping)


def test_a_dropped_connection_mid_stream_restarts_the_pass_without_duplicates(tmp_path, monkeypatch) -> None:
    shard = tmp_path / "big.tar"
    raw = tar_bytes(_shard_of(12))
    shard.write_bytes(raw)
    _DropsOnce.opened = 0
    _streams_drop_once(monkeypatch, raw)
    monkeypatch.setattr(tar_members, "backoff", lambda attempt: None)
    records = _records(shard, in_memory_bytes=0)
    assert _DropsOnce.opened == 3  # the index pass, the data pass that broke off half-way, its restart
    assert [r["id"] for r in records[:-1]] == [f"big.tar/{i:03d}" for i in range(12)]
    assert all(r["kind"] == "image" for r in records[:-1]) and records[-1]["n"] == 12


def test_a_key_half_gathered_when_the_members_pass_restarts_is_gathered_afresh() -> None:
    """A pass restarted after a transient error (`member_pass` yields None) forgets the members it had gathered: the
    key's member seen before the restart is neither counted twice (the key would never be whole) nor counted as gone
    by (the key would be emitted without its label)."""
    members = _MembersPass("s.tar", {"a": Counter({"a.png": 1, "a.cls": 1})}, set(), {}, [], set(),
                           lambda key: f"s.tar/{key}")
    png = image_bytes(8, 8, 1)
    assert members.went_by(None) == [] and members.went_by((0, tarfile.TarInfo("a.png"), png)) == []
    assert members.went_by(None) == []  # the connection dropped: the pass starts again from the first member
    assert members.went_by((0, tarfile.TarInfo("a.png"), png)) == []
    (record,) = members.went_by((1, tarfile.TarInfo("a.cls"), b"3"))
    assert (record["kind"], record["id"], record["data"], record["meta"]) == ("image", "s.tar/a", png, {"label": 3})
    assert list(members.broken_off()) == []


def test_streamed_tar_from_fsspec_memory_filesystem(tmp_path) -> None:
    """The streamed path through a real fsspec backend other than local files."""
    fs = fsspec.filesystem("memory")
    fs.pipe("/in/s.tar.gz", gzip.compress(tar_bytes(_shard_of(5))))
    (unit,) = discover("memory://in")
    records = list(read_unit(unit, in_memory_bytes=0))
    assert [r["id"] for r in records[:-1]] == [f"s.tar.gz/{i:03d}" for i in range(5)]
    assert [r["meta"] for r in records[:-1]] == [{"label": i} for i in range(5)]


def _entry(name: str, type_: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A member without data: a hard link (tarfile.LNKTYPE), a symlink (SYMTYPE) or a folder (DIRTYPE)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info


def _tar_with_links(*members: tuple[str, bytes] | tarfile.TarInfo) -> bytes:
    """Members in order: (name, bytes) a regular file, or an `_entry`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            info = tarfile.TarInfo(member[0])
            info.size = len(member[1])
            tar.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_linked_tar_members_are_read_with_their_targets_bytes(tmp_path, in_memory_bytes) -> None:
    shard = tmp_path / "links.tar"
    shard.write_bytes(_tar_with_links(
        ("0001.png", image_bytes(8, 8, 1)), ("0001.cls", b"7"),
        _entry("0002.png", tarfile.LNKTYPE, "0001.png"),  # a hard link, as GNU tar stores a second name of a file
        _entry("0003.png", tarfile.SYMTYPE, "0001.png"),
        _entry("sub", tarfile.DIRTYPE),  # not data: ignored
        _entry("sub/0004.png", tarfile.SYMTYPE, "../0005.png"),  # relative to its folder, to a member further on
        ("0005.png", image_bytes(8, 8, 5)),
        _entry("0006.png", tarfile.SYMTYPE, "0003.png"),  # a link to a link
        _entry("0002.cls", tarfile.LNKTYPE, "0001.cls"),  # the last member of key 0002: its record waits for it
    ))
    records = _records(shard, in_memory_bytes=in_memory_bytes)
    by_id = {r["id"]: r for r in records[:-1]}
    assert sorted(by_id) == [f"links.tar/{k}" for k in ("0001", "0002", "0003", "0005", "0006", "sub/0004")]
    assert all(r["kind"] == "image" for r in by_id.values()) and records[-1]["n"] == 6
    for key in ("0001", "0002", "0003", "0006"):
        assert by_id[f"links.tar/{key}"]["data"] == image_bytes(8, 8, 1), key
    assert by_id["links.tar/sub/0004"]["data"] == image_bytes(8, 8, 5)
    assert by_id["links.tar/0002"]["meta"] == {"label": 7} and by_id["links.tar/0001"]["meta"] == {"label": 7}
    assert by_id["links.tar/0003"]["meta"] == {}


@pytest.mark.parametrize("in_memory_bytes", [FETCHED, STREAMED])
def test_links_that_cannot_be_read_are_their_keys_rejects(tmp_path, in_memory_bytes) -> None:
    shard = tmp_path / "links.tar"
    shard.write_bytes(_tar_with_links(
        ("0001.png", image_bytes(8, 8, 1)),
        _entry("0002.png", tarfile.SYMTYPE, "missing.png"),
        _entry("0003.png", tarfile.SYMTYPE, "/etc/hosts"),
        _entry("0004.png", tarfile.SYMTYPE, "../0001.png"),  # outside the shard, though a file of that name is in it
        _entry("0005.png", tarfile.SYMTYPE, "0006.png"), _entry("0006.png", tarfile.SYMTYPE, "0005.png"),
        _entry("0007.png", tarfile.LNKTYPE, "0008.png"), ("0008.png", image_bytes(8, 8, 8)),  # a hard link before its target
        _entry("sub", tarfile.DIRTYPE), _entry("0009.png", tarfile.SYMTYPE, "sub"),
        ("0010.png", image_bytes(8, 8, 10)), _entry("0010.cls", tarfile.SYMTYPE, "0099.cls"),
    ))
    records = _records(shard, in_memory_bytes=in_memory_bytes)
    by_id = {r["id"].removeprefix("links.tar/"): r for r in records[:-1]}
    assert records[-1]["n"] == 10 == len(by_id)
    assert [k for k, r in by_id.items() if r["kind"] == "image"] == ["0001", "0008"]
    errors = {k: r["error"] for k, r in by_id.items() if r["kind"] == "reject"}
    assert errors == {
        "0002": "tar link 0002.png -> missing.png cannot be read: target missing.png is not a file in the shard",
        "0003": "tar link 0003.png -> /etc/hosts cannot be read: 0003.png -> /etc/hosts points outside the shard",
        "0004": "tar link 0004.png -> ../0001.png cannot be read: 0004.png -> ../0001.png points outside the shard",
        "0005": "tar link 0005.png -> 0006.png cannot be read: the links loop: 0005.png -> 0006.png -> 0005.png",
        "0006": "tar link 0006.png -> 0005.png cannot be read: the links loop: 0006.png -> 0005.png -> 0006.png",
        "0007": "tar link 0007.png -> 0008.png cannot be read: target 0008.png is not a file in the shard before it",
        "0009": "tar link 0009.png -> sub cannot be read: target sub is not a file in the shard",
        "0010": "tar link 0010.cls -> 0099.cls cannot be read: target 0099.cls is not a file in the shard",
    }
    assert all(r["stage"] == "read" for r in by_id.values() if r["kind"] == "reject")


def test_a_link_target_is_read_again_after_a_dropped_connection(tmp_path, monkeypatch) -> None:
    """The restarted pass reads a target again for a link still to come, though the target's own key is emitted."""
    members = [*_shard_of(12).items(), _entry("999.png", tarfile.LNKTYPE, "000.png")]
    raw = _tar_with_links(*members)
    (tmp_path / "big.tar").write_bytes(raw)
    _DropsOnce.opened = 0
    _streams_drop_once(monkeypatch, raw)
    monkeypatch.setattr(tar_members, "backoff", lambda attempt: None)
    records = _records(tmp_path / "big.tar", in_memory_bytes=0)
    assert _DropsOnce.opened == 3
    assert [r["id"] for r in records[:-1]] == [f"big.tar/{i:03d}" for i in range(12)] + ["big.tar/999"]
    assert all(r["kind"] == "image" for r in records[:-1]) and records[-1]["n"] == 13
    assert records[-2]["data"] == image_bytes(16, 16, 0) and records[-2]["meta"] == {}
