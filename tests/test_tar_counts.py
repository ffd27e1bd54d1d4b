"""Tar shards' keys counted before the run from their members' headers (`pipeline.sources.tar_count`): the dry run
said of a WebDataset input only "2 tar shards", with no image count, and the run's progress had no total. A tar has no
index, so the count walks its headers, bounded as the TFRecord counts are; where it cannot be known before the shards
are read (damaged, past the budget), the dry run says so and why."""

from __future__ import annotations

import io
import re
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from pipeline.job import progress_total
from pipeline.plan import JobPlan, plan_job
from pipeline.sources import tar_count
from pipeline.sources.read_budget import MAX_READS, ReadBudget
from pipeline.sources.reading import read_unit
from pipeline.sources.tar_count import count_keys, count_shard, shard_keys
from pipeline.sources.tfrecord_count import CountProblem
from pipeline.sources.units import ReadUnit
from tests.jobutil import dry_run_input_line, image_bytes, small_job_config, tar_bytes


def _shard(first: int, keys: int) -> bytes:
    members: dict[str, bytes] = {}
    for k in range(first, first + keys):
        members |= {f"{k:04d}.png": image_bytes(8, 8, k), f"{k:04d}.cls": str(k % 3).encode(), f"{k:04d}.json": b"{}"}
    return tar_bytes(members)


def _webdataset(tmp_path: Path, names: tuple[str, str] = ("shard-0000.tar", "shard-0001.tar"),
                compress: tuple[Callable[[bytes], bytes], ...] = (bytes, bytes)) -> Path:
    """Two shards of 4 and 3 keys, named `names`, each written through its function of `compress`."""
    root = tmp_path / "in"
    root.mkdir()
    for name, (first, keys), squeeze in zip(names, ((0, 4), (4, 3)), compress, strict=True):
        (root / name).write_bytes(squeeze(_shard(first, keys)))
    return root


def dry_run_counts_seven(tmp_path: Path, model: str, capsys: Any, root: Path) -> JobPlan:
    """`_webdataset`'s 7 keys as the dry run says them, its JSON report has them and a run's progress total counts
    them; the dry run's plan, for its caller to mark keys done."""
    size = sum(p.stat().st_size for p in root.iterdir())
    line = dry_run_input_line(tmp_path, model, capsys)
    assert f"2 tar shards ({size / 1024:.1f} KiB; 7 images to read), " in line, line
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    assert plan.describe()["input"]["tar_keys"] == {"to_read": 7, "already_done": 0, "unknown_why": None}
    assert progress_total(plan, {}) == 7  # the run's progress has a total too
    return plan




def test_the_dry_run_counts_a_webdatasets_images_from_the_shards_headers(tmp_path, model, capsys) -> None:
    root = _webdataset(tmp_path)
    plan = dry_run_counts_seven(tmp_path, model, capsys, root)
    plan.container_done[str(root / "shard-0000.tar")] = ["shard-0000.tar/0001", "shard-0000.tar/0003",
                                                         "shard-0000.tar/gone", "shard-0000.tar#unreadable"]
    assert progress_total(plan, {}) == 5  # less the keys done (an id the shard no longer gives is none of them)


def test_the_dry_run_says_keys_done_by_an_earlier_run(tmp_path, model, capsys) -> None:
    from pipeline.job import run_job

    root = _webdataset(tmp_path)
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    (root / "shard-0001.tar").write_bytes(_shard(4, 5))  # two keys added to a shard read before
    line = dry_run_input_line(tmp_path, model, capsys, "--incremental")
    assert "1 tar shard (" in line and "; 2 images to read, 3 already done, skipped), " in line, line


def others_after_the_first_gives_up(monkeypatch: pytest.MonkeyPatch, first: str) -> threading.Event:
    """The count of every shard but `first` begins once a shard could not be counted (`Pace.give_up`), whatever the
    threads' schedule: left to chance, the walk's other threads may walk many shards while `first`'s waits for a core.
    The event returned is set at the give-up."""
    given_up = threading.Event()
    give_up, count = tar_count.Pace.give_up, tar_count.count_shard

    def after_the_first(unit: ReadUnit, *args: Any, **kwargs: Any) -> Any:
        if not unit.paths[0].endswith(first):
            given_up.wait(60)
        return count(unit, *args, **kwargs)

    monkeypatch.setattr(tar_count.Pace, "give_up", lambda self: give_up(self) or given_up.set())
    monkeypatch.setattr(tar_count, "count_shard", after_the_first)
    return given_up


def _tricky_shard() -> bytes:
    """Members whose keys the reader counts otherwise than one a member: sidecars, a key without an image (a reject),
    numbered names keyed apart, a link, a folder entry, macOS metadata (no key), a name past tar's 100 bytes, an
    image folder's metadata file (a key of its own without --join-metadata), names not UTF-8 and their escapes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("d", kind=tarfile.DIRTYPE)
        add("d/0001.png", image_bytes(8, 8, 1))
        add("d/0001.cls", b"1")
        add("d/0002.cls", b"2")  # no image: a reject
        add("cat.0.jpg", image_bytes(8, 8, 2, "JPEG"))
        add("cat.1.jpg", image_bytes(8, 8, 3, "JPEG"))
        add("d/0003.png", kind=tarfile.SYMTYPE, link="0001.png")
        add("d/._0001.png", b"\0\5\x16\7")
        add("__MACOSX/d/._0002.cls", b"\0")
        add("long/" + "n" * 120 + ".png", image_bytes(8, 8, 4))
        add("metadata.csv", b"file_name,caption\nd/0001.png,a\n")
        add("caf\udce9.png", image_bytes(8, 8, 5))  # a latin-1 name and the one named with its escape: one reject
        add("caf\\xe9.png", image_bytes(8, 8, 6))
    return buf.getvalue()


def test_a_shards_count_is_the_records_its_read_gives(tmp_path) -> None:
    path = tmp_path / "s.tar"
    path.write_bytes(_tricky_shard())
    unit = ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,))
    records = [r for r in read_unit(unit, {}) if r["kind"] in ("image", "reject")]
    assert len(records) == 8, records  # 0001, 0002, cat.0, cat.1, 0003, the long name, metadata, the two cafés
    assert sum(count_shard(unit, {}, ReadBudget(), join_metadata=False).values()) == 9  # keys: the cafés apart
    assert count_keys([unit], {}, {}, join_metadata=False).left == len(records)


def test_with_join_metadata_a_shard_holding_a_metadata_file_is_counted_when_read(tmp_path) -> None:
    path = tmp_path / "s.tar"
    path.write_bytes(_tricky_shard())
    unit = ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,))
    counted = count_keys([unit], {}, {}, join_metadata=True)
    assert counted.left is None and counted.why == "s.tar: its image-folder metadata member metadata.csv is joined or " \
                                                   "rejected as it is read", counted


def _without_end_blocks(data: bytes) -> bytes:
    kept = data.rstrip(b"\0")
    return kept + b"\0" * (-len(kept) % 512)


@pytest.mark.parametrize(("damage", "why"), [
    (_without_end_blocks, "it is damaged: it ends without tar's end-of-archive blocks (cut short?)"),
    (lambda data: data[:-1500], "it is cut short or not a tar (ReadError: unexpected end of data)"),  # in a member
    (lambda data: b"x" * 600, "it is damaged: a member's header cannot be read")])
def test_a_damaged_shard_is_not_counted(tmp_path, damage, why) -> None:
    path = tmp_path / "s.tar"
    path.write_bytes(damage(_shard(0, 3)))
    unit = ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,))
    counted = count_keys([unit], {}, {}, join_metadata=False)
    assert counted.left is None and counted.why.startswith(f"s.tar: {why}"), counted


def test_on_an_object_store_each_block_is_a_request_from_the_runs_budget(monkeypatch) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/tarcount/s.tar", _shard(0, 40))
    unit = ReadUnit("tar", ("memory:///tarcount/s.tar",), "memory:///tarcount", (len(_shard(0, 40)),))
    requests: list[tuple[int, int]] = []
    cat_file = type(fs).cat_file
    monkeypatch.setattr(type(fs), "cat_file", lambda self, path, start=None, end=None, **kw: requests.append(
        (start, end)) or cat_file(self, path, start, end, **kw))
    budget = ReadBudget()
    assert count_keys([unit], {}, {}, join_metadata=False, budget=budget).left == 40
    # a shard of small members: its headers in a few 64 KiB blocks, not a request a member
    assert 0 < len(requests) == MAX_READS - budget.left < 120 // 5, requests
    spent = count_keys([unit], {}, {}, join_metadata=False, budget=ReadBudget(2))
    assert spent.left is None and "would take more than the 10,000 requests allowed" in spent.why, spent


def test_a_store_that_ignores_byte_ranges_is_not_counted() -> None:
    # a web server that answers a Range request with the whole shard: each block would be the whole shard again
    data = _shard(0, 60)
    assert len(data) > 64 * 2**10
    with pytest.raises(CountProblem, match="its storage does not serve byte ranges"):
        shard_keys(lambda offset, length: data, len(data), ReadBudget(), join_metadata=False)
    assert sum(shard_keys(lambda offset, length: data[offset:offset + length], len(data), ReadBudget(),
                          join_metadata=False).values()) == 180


def test_shards_whose_headers_would_outrun_the_budget_are_given_up_early(tmp_path) -> None:
    # members larger than a read's 64 KiB take a read each: at the pace of the first reads, the shards would take more
    # than the budget, which is left unspent (it was spent whole, every run, for no count)
    units = []
    for s in range(10):
        path = tmp_path / f"s{s}.tar"
        path.write_bytes(tar_bytes({f"{k:03d}.png": bytes(66_000) for k in range(30)}))
        units.append(ReadUnit("tar", (str(path),), str(tmp_path), (path.stat().st_size,)))
    budget = ReadBudget(150)
    counted = count_keys(units, {}, {}, join_metadata=False, budget=budget)
    assert counted.left is None and re.search(r"^s\d\.tar: at the pace of the first \d+ reads, the shards' headers "
                                              r"would take about \d+ more, past the \d+ left", counted.why), counted
    assert not budget.spent and budget.left >= 150 - 64 - 16, budget.left  # a read or so more for each thread
    assert count_keys(units, {}, {}, join_metadata=False).left == 300  # within the whole budget: counted
