"""Mutation audit of the tar shards' key count (`pipeline.sources.tar_count`): what the dry run and the progress total
depend on that no test held. A hard link is a key as the read gives it; every compressed kind the reader takes is
counted within the bound of bytes decompressed, and said compressed past it; a shard shorter than listed is said so
without spending the budget; the early give-up judges the pace at the documented 64 reads, counts a walk that fits
the budget, and holds with shards whose size is not listed or that end within their first read; a shard that cannot
be counted stops the walks under way, and the reason names it alone."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import threading
import tracemalloc
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.sources import tar_count
from pipeline.sources.read_budget import MAX_READS, ReadBudget
from pipeline.sources.reading import read_unit
from pipeline.sources.tar_count import count_keys
from pipeline.sources.units import ReadUnit
from tests.jobutil import image_bytes, tar_bytes

LARGE = 66_000  # a member past a read's 64 KiB: the next header costs a read of its own


def _unit(path: Path) -> ReadUnit:
    return ReadUnit("tar", (str(path),), str(path.parent), (path.stat().st_size,))


def _large_shards(folder: Path, shards: int, members: int) -> list[ReadUnit]:
    units = []
    for s in range(shards):
        path = folder / f"s{s:02d}.tar"
        path.write_bytes(tar_bytes({f"{k:03d}.png": bytes(LARGE) for k in range(members)}))
        units.append(_unit(path))
    return units


def test_hard_links_are_counted_as_the_read_gives_them(tmp_path: Path) -> None:
    # GNU tar stores a second name of a file as a hard link: the read gives it an image of its own
    path = tmp_path / "s.tar"
    path.write_bytes(tar_bytes({"0001.png": image_bytes(8, 8, 1), "0001.cls": b"1"},
                               hard_links={"0002.png": "0001.png", "0003.png": "0001.png"}))
    records = [r for r in read_unit(_unit(path), {}) if r["kind"] in ("image", "reject")]
    assert len(records) == 3, records
    assert count_keys([_unit(path)], {}, {}, join_metadata=False).left == 3


@pytest.mark.parametrize(("suffix", "compress"), [(".tar.gz", gzip.compress), (".tar.bz2", bz2.compress),
                                                  (".tar.xz", lzma.compress)])
def test_every_compressed_kind_the_reader_takes_is_counted_and_said_compressed_past_the_bound(
        tmp_path: Path, monkeypatch, suffix, compress) -> None:
    path = tmp_path / f"s{suffix}"
    path.write_bytes(compress(tar_bytes({"0.png": image_bytes(8, 8, 0)})))
    assert count_keys([_unit(path)], {}, {}, join_metadata=False) == tar_count.ShardKeys(1)
    monkeypatch.setattr(tar_count, "COMPRESSED_BYTES_LOCAL", 16)
    size = path.stat().st_size
    counted = count_keys([_unit(path)], {}, {}, join_metadata=False)
    assert counted == tar_count.ShardKeys(None, why=f"s{suffix}: {tar_count.past_bound(size, size, True)}"), counted
    assert "it is compressed" in counted.why


def test_a_shard_s_walk_keeps_no_member_it_went_past(tmp_path: Path) -> None:
    # tarfile keeps every member it reads, for an extraction this walk does not do: a shard of a million members
    # would hold them all in the driver. 10,000 members kept take about 4 MiB; the walk holds its block and its keys
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(10_000):
            info = tarfile.TarInfo(f"{k:05d}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    path = tmp_path / "s.tar"
    path.write_bytes(buf.getvalue())
    tracemalloc.start()
    try:
        assert count_keys([_unit(path)], {}, {}, join_metadata=False).left == 10_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, peak


def test_an_empty_shard_is_said_empty(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    path.write_bytes(b"")
    assert count_keys([_unit(path)], {}, {}, join_metadata=False).why == "s.tar: it is empty"


def test_a_shard_shorter_than_listed_is_said_so_without_spending_the_budget() -> None:
    # rewritten smaller since it was listed: its reads past the end get nothing, which is no reason to read again
    fs = fsspec.filesystem("memory")
    data = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(3)})
    fs.pipe("/mutaudit4-short/s.tar", data)
    unit = ReadUnit("tar", ("memory:///mutaudit4-short/s.tar",), "memory:///mutaudit4-short", (len(data) + 2**17,))
    budget = ReadBudget()
    counted = count_keys([unit], {}, {}, join_metadata=False, budget=budget)
    assert counted.left is None and counted.why.startswith("s.tar: it is shorter than listed ("), counted
    assert MAX_READS - budget.left < 10, MAX_READS - budget.left


def test_the_pace_is_judged_at_its_first_64_reads_and_leaves_the_budget(tmp_path: Path) -> None:
    # one shard of 300 large members (a read each) against a budget of 250: given up at the 64th read, as docs/job.md
    # says, not after more of the budget is spent (one shard: one thread, the same reads every time)
    (unit,) = _large_shards(tmp_path, 1, 300)
    budget = ReadBudget(250)
    counted = count_keys([unit], {}, {}, join_metadata=False, budget=budget)
    assert counted.left is None and counted.why.startswith("s00.tar: at the pace of the first 64 reads, the shards' "
                                                           "headers would take about "), counted
    assert budget.left == 250 - 63, budget.left  # the 64th read, judged before it is made, is not made


def test_shards_that_fit_the_budget_are_counted_not_given_up(tmp_path: Path) -> None:
    # one shard of 110 large members: 111 reads, within a budget of 140, which the pace must not misjudge
    (unit,) = _large_shards(tmp_path, 1, 110)
    budget = ReadBudget(140)
    assert count_keys([unit], {}, {}, join_metadata=False, budget=budget) == tar_count.ShardKeys(110)
    assert not budget.spent


def test_shards_of_unlisted_size_are_counted_past_the_pace_s_sample() -> None:
    # a store that listed the size of one shard alone: the budget alone bounds the walk, judged by no pace
    fs = fsspec.filesystem("memory")
    units = []
    for s in range(3):
        data = tar_bytes({f"{k:03d}.png": bytes(LARGE) for k in range(30)})
        fs.pipe(f"/mutaudit4-unsized/s{s}.tar", data)
        units.append(ReadUnit("tar", (f"memory:///mutaudit4-unsized/s{s}.tar",), "memory:///mutaudit4-unsized",
                              (len(data) if s == 0 else None,)))
    budget = ReadBudget()
    assert count_keys(units, {}, {}, join_metadata=False, budget=budget) == tar_count.ShardKeys(90)
    assert MAX_READS - budget.left > tar_count.Pace.SAMPLE


def test_shards_read_in_one_block_count_toward_the_pace(tmp_path: Path) -> None:
    # 250 shards each read in its one first block and one of two large members: every shard is walked to its end at
    # once, which the pace must count (a walk judged by the read positions alone saw 12 MiB to go for 3 reads done)
    units = []
    for s in range(250):
        path = tmp_path / f"small{s:03d}.tar"
        path.write_bytes(tar_bytes({"0.png": bytes(58_000)}))
        units.append(_unit(path))
    big = tmp_path / "big.tar"
    big.write_bytes(tar_bytes({"0.png": bytes(LARGE), "1.png": bytes(LARGE)}))
    budget = ReadBudget()
    assert count_keys([_unit(big), *units], {}, {}, join_metadata=False, budget=budget) == tar_count.ShardKeys(252)


class _Gated(MemoryFileSystem):
    """A store whose reads of the good shards past their first block wait until the walk has given up, so that the
    walks of those shards are under way when the bad one is found."""

    protocol = ("mutaudit4gated",)
    gate = threading.Event()
    reads: Counter[str] = Counter()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("mutaudit4gated://"))

    started = threading.Semaphore(0)  # a release for each good shard's first read

    def cat_file(self, path, start=None, end=None, **kwargs):
        type(self).reads[path] += 1
        if "good" in path and not start:
            type(self).started.release()
        elif "good" in path:
            assert type(self).gate.wait(30), "the walk never gave up"
        else:  # the bad shard is found once the good ones' walks are under way
            for _ in range(3):
                assert type(self).started.acquire(timeout=30), "the good shards' walks never began"
        return super().cat_file(path, start=start, end=end, **kwargs)


def test_a_shard_that_cannot_be_counted_stops_the_walks_under_way(monkeypatch) -> None:
    fsspec.register_implementation("mutaudit4gated", _Gated, clobber=True)
    _Gated.gate.clear()
    _Gated.reads.clear()
    _Gated.started = threading.Semaphore(0)
    give_up = tar_count.Pace.give_up

    def giving_up(self) -> None:
        give_up(self)
        _Gated.gate.set()

    monkeypatch.setattr(tar_count.Pace, "give_up", giving_up)
    fs = _Gated()
    names = ["bad.tar", "good0.tar", "good1.tar", "good2.tar"]
    for name in names:
        data = tar_bytes({f"{k:03d}.png": bytes(LARGE) for k in range(20)})
        # the bad shard is no tar at all: found so at its first block (a compressed one is counted now)
        fs.pipe(f"/mutaudit4-gated/{name}", b"not a tar " * 200 if name == "bad.tar" else data)
    units = [ReadUnit("tar", (f"mutaudit4gated:///mutaudit4-gated/{name}",), "mutaudit4gated:///mutaudit4-gated",
                      (fs.size(f"/mutaudit4-gated/{name}"),)) for name in names]
    counted = count_keys(units, {}, {}, join_metadata=False)
    # the one shard that could not be counted, and no other (the walks it stopped are not "more" of them)
    assert counted == tar_count.ShardKeys(None, why="bad.tar: it is damaged: a member's header cannot be read "
                                                    "(invalid header)"), counted
    good = sum(n for path, n in _Gated.reads.items() if "good" in path)
    assert good <= 2 * 3, _Gated.reads  # each walk under way stopped at its next read, not after its 21


class _Sizeless(MemoryFileSystem):
    """A store that gives no file's size, as a web server that sends no Content-Length."""

    protocol = ("mutaudit4sizeless",)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("mutaudit4sizeless://"))

    def size(self, path):  # noqa: ANN001 - fsspec's signature
        return None


def test_a_shard_whose_storage_gives_no_size_is_said_so() -> None:
    # where its last header lies is unknown: not a count of part of it, nor a TypeError for a reason
    fsspec.register_implementation("mutaudit4sizeless", _Sizeless, clobber=True)
    _Sizeless().pipe("/mutaudit4-sizeless/s.tar", tar_bytes({"0.png": image_bytes(8, 8, 0)}))
    unit = ReadUnit("tar", ("mutaudit4sizeless:///mutaudit4-sizeless/s.tar",), "mutaudit4sizeless:///mutaudit4-sizeless",
                    (None,))
    assert count_keys([unit], {}, {}, join_metadata=False) == tar_count.ShardKeys(None, why="s.tar: its storage gives "
                                                                                          "no size")


def test_a_tarred_image_folder_is_left_uncounted_by_the_dry_run_and_the_progress(tmp_path: Path, model, capsys) -> None:
    # --join-metadata (the default) joins its metadata member to the images it names, not an image: a count of its
    # keys would be one too many
    from pipeline.job import progress_total
    from pipeline.plan import plan_job
    from tests.jobutil import dry_run_input_line, small_job_config

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(tar_bytes({"a.png": image_bytes(8, 8, 0), "b.png": image_bytes(8, 8, 1),
                                                       "metadata.csv": b"file_name,caption\na.png,a cat\n"}))
    line = dry_run_input_line(tmp_path, model, capsys)
    assert "images counted when read: s.tar: its image-folder metadata member metadata.csv is joined or rejected as " \
           "it is read)" in line, line
    assert progress_total(plan_job(small_job_config(tmp_path, model), dry_run=False), {}) is None
    # with --join-metadata false, the metadata member is a key of its own, as its read gives it
    assert progress_total(plan_job(small_job_config(tmp_path, model, join_metadata=False), dry_run=False), {}) == 3


def test_the_dry_run_of_an_input_without_tar_shards_says_no_tar_keys(tmp_path: Path, model) -> None:
    from pipeline.plan import plan_job
    from tests.jobutil import small_job_config

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 0))
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()["input"]
    assert described["tar_shards"] == 0 and "tar_keys" not in described, described


def test_tar_shards_draw_on_the_one_budget_the_tfrecord_files_drew_on(tmp_path: Path, model, monkeypatch) -> None:
    # one budget of requests for all of a run's counts: a TFRecord file's read (1) and a shard's (4) fit a budget of 5,
    # not one of 4, in the dry run as in the progress total
    from pipeline.job import progress_total
    from pipeline.plan import plan_job
    from pipeline.sources import read_budget
    from tests.jobutil import small_job_config
    from tests.test_tfrecord_inputs import labelled, shard

    fs = fsspec.filesystem("memory")
    fs.pipe("/mutaudit4-budget/in/r.tfrecord", shard(labelled(3, 0)))
    fs.pipe("/mutaudit4-budget/in/s.tar", tar_bytes({f"{k}.png": bytes(LARGE) for k in range(3)}))
    config = small_job_config(tmp_path, model, input="memory:///mutaudit4-budget/in/")
    for reads, known in ((5, True), (4, False)):
        monkeypatch.setattr(read_budget, "MAX_READS", reads)
        keys = plan_job(config, dry_run=True).describe()["input"]["tar_keys"]
        assert (keys["to_read"] == 3) if known else (keys["to_read"] is None and "would take more" in keys["unknown_why"])
        assert progress_total(plan_job(config, dry_run=False), {}) == (6 if known else None)
    fs.rm("/mutaudit4-budget", recursive=True)
