"""Compressed tar shards (.tar.gz, .tar.xz, .tar.bz2) counted before the run by decompressing them as a stream
(`pipeline.sources.tar_count`): the dry run said "images counted when read: ... it is compressed", and the run showed
no total and no ETA, for the most common way a data set arrives (CIFAR-10's, GTSRB's, Imagenette's archives). Bounded:
past the compressed bytes a run decompresses (or downloads) to count, the count stays unknown and says why."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import threading
from pathlib import Path

import fsspec
import pytest

from pipeline import cli
from pipeline.job import progress_total
from pipeline.plan import plan_job
from pipeline.sources import tar_count
from pipeline.sources.read_budget import MAX_READS, ReadBudget
from pipeline.sources.reading import read_unit
from pipeline.sources.tar_count import count_keys
from pipeline.sources.units import ReadUnit
from tests.jobutil import dry_run_input_line, image_bytes, small_job_argv, small_job_config, tar_bytes
from tests.test_tar_counts import _shard, _tricky_shard, dry_run_counts_seven, others_after_the_first_gives_up
from tests.test_tar_counts import _webdataset as plain_webdataset

COMPRESS = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}


def _webdataset(tmp_path: Path) -> Path:
    return plain_webdataset(tmp_path, ("shard-0000.tar.gz", "shard-0001.tar.xz"), (gzip.compress, lzma.compress))


def test_the_dry_run_counts_compressed_shards(tmp_path, model, capsys) -> None:
    root = _webdataset(tmp_path)
    plan = dry_run_counts_seven(tmp_path, model, capsys, root)
    # --resume after a stop: the keys its output holds are not counted again
    plan.container_done[str(root / "shard-0000.tar.gz")] = ["shard-0000.tar.gz/0001", "shard-0000.tar.gz/0003",
                                                            "shard-0000.tar.gz#unreadable"]
    plan.container_done[str(root / "shard-0001.tar.xz")] = ["shard-0001.tar.xz/0004"]
    assert progress_total(plan, {}) == 4


def test_a_runs_progress_has_the_compressed_shards_total_and_a_later_dry_run_the_keys_done(tmp_path, model, capsys,
                                                                                           monkeypatch) -> None:
    from pipeline import job

    root = _webdataset(tmp_path)
    counting, seen = threading.Event(), []
    total, init_ray = job.progress_total, job.init_ray
    monkeypatch.setattr(job, "progress_total", lambda *a: counting.set() or total(*a))
    # the total is counted while Ray starts (decompressing GTSRB's test .tar.xz took 1.8 s), not after
    monkeypatch.setattr(job, "init_ray", lambda *a: seen.append(counting.wait(60)) or init_ray(*a))
    argv = [a for a in small_job_argv(tmp_path, model) if a != "--no-progress"]
    assert cli.main(argv) == 0
    assert seen == [True], seen
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("images: ")]
    assert progress and progress[-1].startswith("images: 7/7 (100 %)"), progress  # a total, not "images: 7 in"
    (root / "shard-0001.tar.xz").write_bytes(lzma.compress(_shard(4, 5)))  # two keys added to a shard read before
    line = dry_run_input_line(tmp_path, model, capsys, "--incremental")
    assert "1 tar shard (" in line and "; 2 images to read, 3 already done, skipped), " in line, line


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2"])
@pytest.mark.parametrize("join_metadata", [False, True])
def test_a_compressed_shards_count_is_the_records_its_read_gives(tmp_path, kind, join_metadata) -> None:
    path = tmp_path / f"s.tar.{kind}"
    path.write_bytes(COMPRESS[kind](_tricky_shard()))  # sidecars, links, macOS metadata, names not UTF-8...
    unit = ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,))
    counted = count_keys([unit], {}, {}, join_metadata=join_metadata)
    if join_metadata:  # its metadata.csv is joined, or a reject of its own: only its read tells
        assert counted.left is None and counted.why == f"s.tar.{kind}: its image-folder metadata member metadata.csv " \
                                                       "is joined or rejected as it is read", counted
    else:
        records = [r for r in read_unit(unit, {}) if r["kind"] in ("image", "reject")]
        assert counted.left == len(records) == 8, (counted, records)


@pytest.mark.parametrize(("damage", "why"), [
    (lambda data: gzip.compress(data[:-1500]), "it is cut short or not a tar (ReadError: unexpected end of data)"),
    (lambda data: gzip.compress(data.rstrip(b"\0") + b"\0" * (-len(data.rstrip(b"\0")) % 512)),
     "it is damaged: it ends without tar's end-of-archive blocks"),
    (lambda data: gzip.compress(data)[:-900], "it is cut short or not a tar (ReadError: "),  # the stream cut short
    (lambda data: gzip.compress(data)[:30], "it is cut short or not a tar (ReadError: "),
    (lambda data: gzip.compress(data)[:200] + b"x" * 200, "it is cut short or not a tar (ReadError: ")])
def test_a_damaged_compressed_shard_is_not_counted_and_its_read_rejects_it(tmp_path, damage, why) -> None:
    path = tmp_path / "s.tar.gz"
    path.write_bytes(damage(_shard(0, 3)))
    unit = ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,))
    counted = count_keys([unit], {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith(f"s.tar.gz: {why}"), counted
    assert any(r["kind"] == "reject" and r["id"] == "s.tar.gz#unreadable" for r in read_unit(unit, {}))


def test_compressed_shards_past_the_bound_are_not_counted_and_the_dry_run_says_what_is_known(tmp_path, model, capsys,
                                                                                          monkeypatch) -> None:
    # It said only why the count gave up, naming one shard: not how many shards were left uncounted, their sizes, nor
    # the images of the shards it could count
    root = _webdataset(tmp_path)
    first, second = ((root / name).stat().st_size for name in ("shard-0000.tar.gz", "shard-0001.tar.xz"))
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", first + 10)  # the first alone fits, not both
    line = dry_run_input_line(tmp_path, model, capsys)
    assert (f"2 tar shards ({(first + second) / 1024:.1f} KiB; 4 images to read in 1 shard counted; 1 compressed shard "
            f"too large to count before the run, its images counted when read (shard-0001.tar.xz {second / 1024:.1f} "
            f"KiB; {second / 1024:.1f} KiB in all): past the {(first + 10) / 1024:.1f} KiB of compressed shards "
            "decompressed on a local disk to count a run's images, its headers found only by decompressing it "
            "whole), ") in line, line
    keys = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]["tar_keys"]
    assert keys["to_read"] is None  # the total stays unknown: a run's progress shows none rather than one too small
    assert keys["counted_shards"] == {"shards": 1, "to_read": 4, "already_done": 0}
    assert keys["uncounted_compressed_shards"] == [{"shard": "shard-0001.tar.xz", "bytes": second}]
    # the run's progress total is not counted at all: no shard decompressed for a total it cannot give
    walked = []
    monkeypatch.setattr(tar_count, "count_shard", lambda unit, *args: walked.append(unit) or {})
    assert progress_total(plan_job(small_job_config(tmp_path, model)), {}) is None and walked == []

    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", 10)  # neither fits
    line = dry_run_input_line(tmp_path, model, capsys)
    assert (f"2 tar shards ({(first + second) / 1024:.1f} KiB; 2 compressed shards too large to count before the run, "
            f"their images counted when read (shard-0000.tar.gz {first / 1024:.1f} KiB, shard-0001.tar.xz ") in line, line


def test_past_the_bound_by_content_when_names_do_not_say_so(tmp_path, monkeypatch) -> None:
    # named .tar, compressed all the same (the read goes by content): the bound is met as they are decompressed
    units = []
    for i in range(3):
        path = tmp_path / f"s{i}.tar"
        path.write_bytes(gzip.compress(_shard(3 * i, 3)))
        units.append(ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,)))
    assert count_keys(units, {}, {}, join_metadata=False).left == 9
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", units[0].sizes[0] * 2 + 1)
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and re.match(r"s\d\.tar: it is compressed .* past the \d\.\d KiB", counted.why), counted


def test_a_compressed_shard_on_an_object_store_is_fetched_once_within_its_bound(monkeypatch) -> None:
    fs = fsspec.filesystem("memory")
    data = gzip.compress(_shard(0, 40))
    fs.pipe("/tarcountgz/s.tar.gz", data)
    unit = ReadUnit("tar", ("memory:///tarcountgz/s.tar.gz",), "memory:///tarcountgz", (len(data),))
    requests: list[tuple[int | None, int | None]] = []
    cat_file = type(fs).cat_file
    monkeypatch.setattr(type(fs), "cat_file", lambda self, path, start=None, end=None, **kw: requests.append(
        (start, end)) or cat_file(self, path, start, end, **kw))
    budget = ReadBudget()
    assert count_keys([unit], {}, {}, join_metadata=False, budget=budget).left == 40
    assert requests == [(0, min(len(data), 64 * 2**10)), (None, None)], requests  # its first block, then the whole
    assert MAX_READS - budget.left == 1
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_REMOTE", len(data) - 1)
    requests.clear()
    counted = count_keys([unit], {}, {}, join_metadata=False)
    assert counted.left is None and "decompressed on remote storage" in counted.why, counted
    assert requests == [], requests  # named .tar.gz past the bound: not a byte read


def test_a_shard_that_cannot_be_counted_stops_the_compressed_shards_walks(tmp_path, monkeypatch) -> None:
    units, opened = [], []
    for i in range(40):
        path = tmp_path / f"s{i:03d}.tar"
        data = tar_bytes({f"{k:04d}.png": image_bytes(8, 8, k) for k in range(3)})
        # the first is cut short: the total is unknown, the others are not decompressed for nothing
        path.write_bytes(data[:-1500] if i == 0 else gzip.compress(data))
        units.append(ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,)))
    given_up = others_after_the_first_gives_up(monkeypatch, "s000.tar")
    stream_keys = tar_count.stream_keys
    monkeypatch.setattr(tar_count, "stream_keys", lambda *args: opened.append(1) or stream_keys(*args))
    counted = count_keys(units, {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith("s000.tar: it is "), counted
    assert given_up.is_set() and opened == [], len(opened)  # not one decompressed for a total already unknown


def test_a_compressed_shard_on_a_web_server_that_ignores_range_is_counted(tmp_path: Path, model, capsys) -> None:
    from tests.webutil import QuietHandler, serving

    site = tmp_path / "site"
    site.mkdir()
    # like http.server, it answers every GET with the whole file: the shard is fetched whole once, which is all it needs
    (site / "s.tar.gz").write_bytes(gzip.compress(_shard(0, 30) + tar_bytes({"big.png": bytes(2**17)})))
    with serving(site, QuietHandler) as url:
        line = dry_run_input_line(tmp_path, model, capsys, input_uri=url + "s.tar.gz")
    assert "; 31 images to read), " in line, line


def test_compressed_shards_whose_walks_take_too_long_are_not_counted(tmp_path, monkeypatch) -> None:
    # a gzip that inflates a thousandfold (zeros) is within the bytes' bound and takes minutes: the walks are timed too
    path = tmp_path / "s.tar.gz"
    path.write_bytes(gzip.compress(_shard(0, 3)))
    unit = ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,))
    monkeypatch.setattr(tar_count, "COMPRESSED_SECONDS", -1.0)
    counted = count_keys([unit], {}, {}, join_metadata=False)
    assert counted.left is None and counted.why == "s.tar.gz: it is compressed, and its headers are found only by " \
        "decompressing it whole: the compressed shards' walks took over -1 s, the time allowed to count a run's " \
        "images before it starts", counted


def test_a_dry_run_over_many_compressed_shards_too_large_to_count_looks_each_up_once(monkeypatch) -> None:
    # each shard was looked for in the list of those left uncounted, compared with each of them: 8,000 shards took 13 s
    # and 20,000 over a minute before the dry run said anything; a shard is compared with none of the others now
    units = [ReadUnit("tar", (f"/in/shard-{i:05d}.tar.gz",), "/in", (2**30,), ("stamp",)) for i in range(2_000)]
    compared = []
    monkeypatch.setattr(ReadUnit, "__eq__", lambda self, other: compared.append(other) or self is other)
    keys = count_keys(units, {}, {}, False, partial=True)
    assert (keys.left, keys.counted) == (None, (0, 0, 0))
    assert [name for name, _ in keys.uncounted] == [f"shard-{i:05d}.tar.gz" for i in range(2_000)]
    assert len(compared) <= len(units)
