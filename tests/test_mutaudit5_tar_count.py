"""Mutation audit of the compressed tar shards' count (`pipeline.sources.tar_count`): what the dry run and the progress
total depend on that no test held. Shards of exactly the bound are counted ("up to 64 MiB"); the walks' 30 s are in
all, not each; a walk under way stops once another shard cannot be counted; one shard past the bound is said alone."""

from __future__ import annotations

import gzip
import random
import threading
import types
from pathlib import Path

import fsspec
import pytest

from pipeline.sources import tar_count
from pipeline.sources.read_budget import ReadBudget
from pipeline.sources.tar_count import count_keys
from pipeline.sources.units import ReadUnit
from tests.jobutil import dry_run_input_line, image_bytes, tar_bytes


def _shard(first: int, keys: int) -> bytes:
    return tar_bytes({f"{k:04d}.png": image_bytes(8, 8, k) for k in range(first, first + keys)})


def _units(folder: Path, shards: dict[str, bytes]) -> list[ReadUnit]:
    units = []
    for name, data in shards.items():
        (folder / name).write_bytes(data)
        units.append(ReadUnit("tar", (str(folder / name),), str(folder), (len(data),)))
    return units


def test_compressed_shards_of_exactly_the_bound_are_counted(tmp_path: Path, monkeypatch) -> None:
    # "up to 64 MiB in all": the bound is the bytes a run may decompress, not the first byte past them, as they are
    # decompressed and by the names alone (.tar.gz: given up before any is read) alike
    units = _units(tmp_path, {"s0.tar.gz": gzip.compress(_shard(0, 3)), "s1.tar.gz": gzip.compress(_shard(3, 2))})
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", units[0].sizes[0] + units[1].sizes[0])
    assert count_keys(units, {}, {}, join_metadata=False).left == 5
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", units[0].sizes[0] + units[1].sizes[0] - 1)
    assert count_keys(units, {}, {}, join_metadata=False).left is None


def test_one_compressed_shard_past_the_bound_is_said_alone(tmp_path: Path, monkeypatch) -> None:
    (unit,) = _units(tmp_path, {"s.tar": gzip.compress(_shard(0, 3))})  # by content: met as it is decompressed
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", unit.sizes[0] - 1)
    counted = count_keys([unit], {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith("s.tar: it is compressed ("), counted
    assert "with the other compressed shards" not in counted.why, counted.why


def test_the_compressed_shards_walks_have_their_seconds_in_all_not_each(tmp_path: Path, monkeypatch) -> None:
    """30 s for the walks of all the compressed shards, counted from the first: two shards of 20 s each are past it,
    where 30 s each would let a bucket of them delay the run's start by minutes."""
    units = _units(tmp_path, {"s0.tar.gz": gzip.compress(_shard(0, 2)), "s1.tar.gz": gzip.compress(_shard(2, 2))})
    now = [1000.0]
    monkeypatch.setattr(tar_count, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tar_count, "concurrent_reads", lambda uri, wanted: 1)  # one after the other
    stream_keys = tar_count.stream_keys

    def twenty_seconds_each(stream, join_metadata, named=None):
        now[0] += 20.0
        return stream_keys(stream, join_metadata, named)

    monkeypatch.setattr(tar_count, "stream_keys", twenty_seconds_each)
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith("s1.tar.gz: it is compressed, and its headers are found only "
                                                           "by decompressing it whole: the compressed shards' walks took "
                                                           "over 30 s"), counted
    now[0] = 1000.0
    assert count_keys(units[:1], {}, {}, join_metadata=False).left == 2  # one shard's 20 s are within them


def test_a_shard_that_cannot_be_counted_stops_a_compressed_walk_under_way(tmp_path: Path, monkeypatch) -> None:
    """A compressed shard's walk already decompressing stops at its next read once another shard cannot be counted
    (the total is unknown whatever it holds), not only the walks not yet begun."""
    noise = random.Random(0).randbytes(400_000)  # incompressible: about 40 reads of its stream
    big = gzip.compress(tar_bytes({"0000.png": image_bytes(8, 8, 0), "0000.bin": noise}))
    units = _units(tmp_path, {"a.tar.gz": big, "b.tar": _shard(0, 3)[:-1500]})  # b is cut short
    reading, given_up, reads = threading.Event(), threading.Event(), []
    give_up, stream_keys, count_shard = tar_count.Pace.give_up, tar_count.stream_keys, tar_count.count_shard

    class Slowed:
        """a.tar.gz's stream: its walk goes on once b.tar has been given up."""

        def __init__(self, stream) -> None:
            self.stream = stream

        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            if len(reads) == 2:
                reading.set()
                given_up.wait(10)
            return self.stream.read(n)

    def b_after_a_began(unit, *args):
        if unit.paths[0].endswith("b.tar"):
            reading.wait(10)
        return count_shard(unit, *args)

    monkeypatch.setattr(tar_count.Pace, "give_up", lambda self: give_up(self) or given_up.set())
    monkeypatch.setattr(tar_count, "stream_keys", lambda stream, join, named=None: stream_keys(Slowed(stream), join, named))
    monkeypatch.setattr(tar_count, "count_shard", b_after_a_began)
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith("b.tar: it is damaged"), counted
    assert given_up.is_set() and len(reads) <= 3, len(reads)  # the read after b.tar was given up was refused


def test_sizes_of_a_mib_and_more_are_said_in_mib() -> None:
    said = tar_count.past_bound(2**20, 3 * 2**20, local=False)
    assert said.startswith("it is compressed (1.0 MiB), and ") and ", 3.0 MiB, past the 16.0 MiB " in said, said
    assert tar_count.past_bound(2**20 - 2**10, 2**20 - 2**10, local=True).startswith("it is compressed (1023.0 KiB), ")


def test_compressed_shards_on_remote_storage_have_the_remote_bound_as_they_are_decompressed(monkeypatch) -> None:
    # named .tar, compressed all the same: met by content, each fetched whole, so within the remote bound (16 MiB)
    fs = fsspec.filesystem("memory")
    units = []
    for i in range(2):
        data = gzip.compress(_shard(3 * i, 3))
        fs.pipe(f"/mutaudit5-remote/s{i}.tar", data)
        units.append(ReadUnit("tar", (f"memory:///mutaudit5-remote/s{i}.tar",), "memory:///mutaudit5-remote",
                              (len(data),)))
    assert count_keys(units, {}, {}, join_metadata=False).left == 6
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_REMOTE", units[0].sizes[0] + units[1].sizes[0] - 1)
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and "decompressed on remote storage" in counted.why, counted


@pytest.mark.parametrize("remote", [False, True])
def test_a_large_compressed_shard_is_no_reason_to_give_up_the_plain_shards_walk(tmp_path: Path, monkeypatch,
                                                                                remote: bool) -> None:
    """The pace of the plain shards' reads is judged by the bytes walked: a compressed shard's, decompressed without a
    ranged request, are walked too. Left out, 10 MiB of .tar.gz beside a shard of large images looked like 10 MiB of
    headers still to read, and the count gave up with the budget well able to take it."""
    noise = random.Random(1).randbytes(10 * 2**20)
    shards = {"a.tar.gz": gzip.compress(tar_bytes({"0000.png": image_bytes(8, 8, 0), "0000.bin": noise})),
              "b.tar": tar_bytes({f"{k:03d}.png": bytes(66_000) for k in range(70)})}  # a read for each member
    if remote:
        fs = fsspec.filesystem("memory")
        for name, data in shards.items():
            fs.pipe(f"/mutaudit5-pace/{name}", data)
        units = [ReadUnit("tar", (f"memory:///mutaudit5-pace/{name}",), "memory:///mutaudit5-pace", (len(data),))
                 for name, data in shards.items()]
    else:
        units = _units(tmp_path, shards)
    monkeypatch.setattr(tar_count, "concurrent_reads", lambda uri, wanted: 1)  # a.tar.gz first, then b.tar
    budget = ReadBudget(200)  # what a budget shared with other files' counts may have left
    counted = count_keys(units, {}, {}, join_metadata=False, budget=budget)
    assert counted == tar_count.ShardKeys(71), counted


def test_a_dry_run_over_a_web_folder_that_gives_no_lengths_says_its_compressed_shard_uncounted(tmp_path: Path, model,
                                                                                               capsys) -> None:
    """A web server that sends no Content-Length (a dynamic page, a chunked answer) lists its files without sizes: the
    dry run over a .tar.gz there ended in a traceback (TypeError: unsupported operand type(s) for +: 'int' and
    'NoneType'), the compressed shards' bound adding up sizes it did not have."""
    from tests.webutil import QuietHandler, serving

    class NoLength(QuietHandler):
        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() != "content-length":
                super().send_header(keyword, value)

    site = tmp_path / "site"
    site.mkdir()
    (site / "s.tar.gz").write_bytes(gzip.compress(_shard(0, 2)))
    with serving(site, NoLength) as url:
        line = dry_run_input_line(tmp_path, model, capsys, input_uri=url)
    assert "1 tar shard (size unknown; images counted when read: s.tar.gz: its storage gives no size), " in line, line


def test_shards_not_yet_begun_when_one_cannot_be_counted_are_not_asked_of_the_store(monkeypatch) -> None:
    """Once a shard cannot be counted the total is unknown: the shards after it cost no request, where a bucket of
    10,000 shards listed without sizes was asked the size of each (a request each) for a count already given up."""
    fs = fsspec.filesystem("memory")
    units = []
    for i in range(30):
        data = _shard(i, 1)
        fs.pipe(f"/mutaudit5-given-up/s{i:02d}.tar", data[:-1500] if i == 0 else data)  # the first is cut short
        units.append(ReadUnit("tar", (f"memory:///mutaudit5-given-up/s{i:02d}.tar",), "memory:///mutaudit5-given-up",
                              (None,)))
    asked: list[str] = []
    size = type(fs).size
    monkeypatch.setattr(type(fs), "size", lambda self, path: asked.append(path) or size(self, path))
    monkeypatch.setattr(tar_count, "concurrent_reads", lambda uri, wanted: 1)  # s00 first
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith("s00.tar: it is "), counted
    assert asked == ["/mutaudit5-given-up/s00.tar"], asked


def test_a_compressed_walk_on_remote_storage_is_timed_too(monkeypatch) -> None:
    # fetched whole, then decompressed as a local one is: a shard that inflates a thousandfold takes as long
    fs = fsspec.filesystem("memory")
    data = gzip.compress(_shard(0, 3))
    fs.pipe("/mutaudit5-timed/s.tar", data)
    unit = ReadUnit("tar", ("memory:///mutaudit5-timed/s.tar",), "memory:///mutaudit5-timed", (len(data),))
    monkeypatch.setattr(tar_count, "COMPRESSED_SECONDS", -1.0)
    counted = count_keys([unit], {}, {}, join_metadata=False)
    assert counted.left is None and "the compressed shards' walks took over -1 s" in counted.why, counted


def test_shards_named_compressed_in_capitals_past_the_bound_are_given_up_before_any_is_decompressed(
        tmp_path: Path, monkeypatch) -> None:
    units = _units(tmp_path, {"S0.TAR.GZ": gzip.compress(_shard(0, 3)), "S1.TGZ": gzip.compress(_shard(3, 3))})
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", units[0].sizes[0] + units[1].sizes[0] - 1)
    walked: list[object] = []
    stream_keys = tar_count.stream_keys
    monkeypatch.setattr(tar_count, "stream_keys",
                        lambda stream, join, named=None: walked.append(stream) or stream_keys(stream, join, named))
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith("S1.TGZ: it is compressed ("), counted
    assert walked == []
