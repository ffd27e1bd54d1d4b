"""A tar shard, Parquet file or zip archive whose listing changed is a change only when a member its rows were made
from is gone or other now (pipeline.changes.same_members): one grown by appended members, copied over or rewritten
with its members in another order is no change, its new members purified, and later runs are quiet."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.changes as changes_module
from pipeline import cli
from pipeline.changes import DIFFERS, InputRecord, same_members
from pipeline.job import run_job
from pipeline.ledger import ContainerRead, read_ledger
from pipeline.output import part_files_holding
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover
from tests.changeutil import SavedRun, rewritten
from tests.jobutil import (
    image_bytes,
    no_ray_from_here_on,
    part_files_read,
    rewritten_in_place,
    run_stopped_at,
    small_job_argv,
    small_job_config,
    tar_bytes,
    zip_bytes,
)


def _parquet(images: list[bytes], labels: list[int]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [{"bytes": data, "path": None} for data in images], "label": labels}), buf)
    return buf.getvalue()


def _counting_reads(monkeypatch) -> list[str]:
    """The names of the containers the planning reads to compare their members with their rows, as it reads them."""
    read: list[str] = []
    real = changes_module.read_unit

    def counted(unit, *args, **kwargs):
        read.append(os.path.basename(unit.paths[0]))
        return real(unit, *args, **kwargs)

    monkeypatch.setattr(changes_module, "read_unit", counted)
    return read


IMG = {k: image_bytes(16, 16, k) for k in range(12)}
GROWN = {"0.png": IMG[0], "0.cls": b"3", "1.png": IMG[1], "1.cls": b"5"}


@pytest.fixture(scope="module")
def containers_done(tmp_path_factory, model, ray_local) -> SavedRun:
    """in/: grown.tar (`GROWN`: two samples with labels), order.tar (two members), copied.tar (one), p.parquet (two
    rows) and a stored z.zip (two members, one in a folder), purified by a first run that wrote a part file a row. A test
    restores it (`restore()`, its `tmp_path` from there on) and changes an input by replacing it (tests.changeutil)."""
    folder = tmp_path_factory.mktemp("containers")
    root = folder / "in"
    root.mkdir()
    (root / "grown.tar").write_bytes(tar_bytes(GROWN))
    (root / "order.tar").write_bytes(tar_bytes({"a.png": IMG[2], "b.png": IMG[3]}))
    (root / "copied.tar").write_bytes(tar_bytes({"c.png": IMG[4]}))
    (root / "p.parquet").write_bytes(_parquet([IMG[5], IMG[6]], [1, 2]))
    (root / "z.zip").write_bytes(zip_bytes({"d/x.png": IMG[7], "y.png": IMG[8]}, zipfile.ZIP_STORED))
    assert run_job(small_job_config(folder, model, write_batch=1))["this_run"]["purified"] == 9
    assert len(list((folder / "out" / "data").glob("part-*.parquet"))) == 9  # a row a file
    return SavedRun(folder)


@pytest.mark.usefixtures("ray_local")
def test_containers_grown_copied_or_repacked_with_the_same_members_are_no_change_and_their_new_members_purified(
        containers_done, model, monkeypatch, capsys) -> None:
    tmp_path, img, shard = containers_done.restore(), IMG, GROWN
    root = tmp_path / "in"
    before = {row["id"]: row for row in pq.read_table(tmp_path / "out" / "data").to_pylist()}

    # a WebDataset shard grown by appended samples; one rewritten with its members in another order; one copied over
    # (a new inode); a Parquet file rewritten with the same rows and one more; a zip packed again, otherwise
    rewritten(root / "grown.tar", tar_bytes({**shard, "2.png": img[9], "2.cls": b"7"}))
    rewritten(root / "order.tar", tar_bytes({"b.png": img[3], "a.png": img[2]}))
    (tmp_path / "copy.tar").write_bytes((root / "copied.tar").read_bytes())
    os.replace(tmp_path / "copy.tar", root / "copied.tar")
    rewritten(root / "p.parquet", _parquet([img[5], img[6], img[10]], [1, 2, 3]))
    rewritten(root / "z.zip", zip_bytes({"y.png": img[8], "d/x.png": img[7], "d/new.png": img[11]}))
    read = _counting_reads(monkeypatch)
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (dry["containers"], dry["examples"]) == (0, [])
    assert (dry["containers_same_members"], dry["containers_compared"]) == (5, 5)
    # the command line's dry run says what its planning read, and how many are no change (it said nothing was read)
    capsys.readouterr()
    assert cli.main([*small_job_argv(tmp_path, model, "--incremental"), "--dry-run"]) == 0
    said = capsys.readouterr()
    assert ("note: the planning read 5 tar/Parquet/zip file(s) (5 giving every member of their rows as it was) whose "
            "listing changed since their rows were written") in said.err
    assert "dry run: nothing was purified or written, and nothing read but the inputs whose listing changed" in said.out
    assert "nothing was read," not in said.out

    read.clear()  # --refresh-changed purifies none of them again: their rows stay as they were
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    changed = summary["changed_inputs"]
    assert (changed["containers"], changed["examples"], changed["containers_same_members"]) == (0, [], 5)
    assert (summary["this_run"]["refreshed"]["inputs"], summary["this_run"]["purified"]) == (0, 3)  # the members added
    data = pq.read_table(tmp_path / "out" / "data").to_pylist()
    by_id = {row["id"]: row for row in data}
    assert len(data) == len(by_id) == 12
    assert all(by_id[id_] == row for id_, row in before.items())
    assert (by_id["grown.tar/2"]["label"], by_id["p.parquet#2"]["label"]) == (7, 3)
    assert "z.zip/d/new.png" in by_id
    assert sorted(read) == ["copied.tar", "grown.tar", "order.tar", "p.parquet", "z.zip"]  # the dry runs recorded nothing

    read.clear()
    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (later["changed_inputs"]["containers"], later["changed_inputs"]["containers_same_members"]) == (0, 0)
    assert (later["this_run"]["read"], read) == (0, [])  # their new stamps were recorded: not read again


def test_a_container_with_a_member_or_a_column_of_a_row_changed_or_gone_is_still_a_change_and_refreshed(
        containers_done, model, monkeypatch) -> None:
    tmp_path, img = containers_done.restore(), IMG
    root = tmp_path / "in"
    # the same images, one label fixed; a sample removed (another added); a Parquet row's label fixed; a member's bytes
    # (copied.tar left as it was)
    rewritten(root / "grown.tar", tar_bytes({**GROWN, "1.cls": b"9"}))
    rewritten(root / "order.tar", tar_bytes({"a.png": img[2], "c.png": img[9]}))
    rewritten(root / "p.parquet", _parquet([img[5], img[6]], [1, 20]))
    rewritten(root / "z.zip", zip_bytes({"d/x.png": img[7], "y.png": image_bytes(16, 16, 60)}, zipfile.ZIP_STORED))
    read = _counting_reads(monkeypatch)
    summary = run_job(small_job_config(tmp_path, model, incremental=True))
    changed = summary["changed_inputs"]
    assert (changed["containers"], changed["container_rows"], changed["containers_same_members"]) == (4, 8, 0)
    assert changed["examples"] == ["grown.tar", "order.tar", "p.parquet", "z.zip"]
    assert sorted(read) == ["grown.tar", "order.tar", "p.parquet", "z.zip"]

    read.clear()  # still changed (and refreshed), but not read again while their listing stays
    refreshed = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert read == []
    # every done row of each (order.tar/c too, purified by the last run) read again; order.tar/b has no member now
    assert refreshed["this_run"]["refreshed"] == {"inputs": 4, "rows_replaced": 8, "rows_kept": 1}
    labels = {row["id"]: row["label"] for row in pq.read_table(tmp_path / "out" / "data").to_pylist()}
    assert (labels["grown.tar/1"], labels["p.parquet#1"]) == (9, 20)
    assert run_job(small_job_config(tmp_path, model, incremental=True))["changed_inputs"]["containers"] == 0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_container_that_cannot_be_read_or_whose_rows_cannot_be_compared_stays_changed_and_is_read_again(
        tmp_path, monkeypatch, capsys) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    a, b = image_bytes(8, 8, 1), image_bytes(8, 8, 2)
    names = ("same.tar", "differs.tar", "broken.tar", "norow.tar", "ledger.tar")
    for name in names:
        (inp / name).write_bytes(tar_bytes({"0.png": a, "1.png": b}))
    (inp / "differs.tar").write_bytes(tar_bytes({"0.png": a, "1.png": a}))
    (inp / "broken.tar").write_bytes(b"not a tar any more" * 40)
    ids = [f"{name}/{k}" for name in names for k in range(2) if f"{name}/{k}" != "norow.tar/1"]
    pq.write_table(pa.table({"id": ids, "source": [f"{inp / i.split('/')[0]}:{i.split('/')[1]}.png" for i in ids],
                             "source_sha256": [_sha(a if i.endswith("0") else b) for i in ids]}),
                   out / "data" / "part-a.parquet")
    record = InputRecord(str(inp), {name: ("tar", "v1") for name in names if name != "ledger.tar"})
    units = [ReadUnit("tar", (str(inp / name),), str(inp), (os.path.getsize(inp / name),), ("l2",), ("v2",))
             for name in names]
    # norow.tar/1's row is not found (as a part file deleted by hand): the shard holds ids not compared
    ledger = {str(inp / "ledger.tar"): ContainerRead(str(inp / "ledger.tar"), 1, "l1", 2, "x")}
    done = {*ids, "norow.tar/1"}
    read = _counting_reads(monkeypatch)
    assert same_members(units, done, set(), frozenset(), record, ledger, str(out), {}) == (
        {"same.tar": ("tar", "v2"), "differs.tar": ("tar", f"v1{DIFFERS}v2"), "ledger.tar": ("tar", "v2")}, 2)
    assert sorted(read) == ["broken.tar", "differs.tar", "ledger.tar", "same.tar"]  # norow.tar: not read
    # differs.tar was read at this stamp: not read again while it stays; the others as before
    marked = InputRecord(str(inp), {**record.stamps, "differs.tar": ("tar", f"v1{DIFFERS}v2")})
    read.clear()
    assert same_members(units, done, set(), frozenset(), marked, ledger, str(out), {})[1] == 2
    assert sorted(read) == ["broken.tar", "ledger.tar", "same.tar"]
    # a part file that cannot be read leaves every one said changed
    (out / "data" / "part-b.parquet").write_bytes(b"cut short")
    assert same_members(units, done, set(), frozenset(), record, ledger, str(out), {}) == ({}, 0)
    assert "could not read the source_sha256" in capsys.readouterr().err


def test_a_container_copied_over_or_packed_again_with_every_id_done_is_skipped_unread_by_the_run_that_finds_it_so(
        containers_done, model, monkeypatch) -> None:
    """The planning reads a container whose listing changed to the end to compare it with its rows: found as it was,
    its `_containers/` entry is made current, so that the run does not read it again only to skip each of its ids
    (and, with nothing else to read, starts no Ray). It read every one again, and started Ray to do it."""
    tmp_path, img = containers_done.restore(), IMG
    root, out = tmp_path / "in", tmp_path / "out"
    (tmp_path / "copy.tar").write_bytes((root / "copied.tar").read_bytes())
    os.replace(tmp_path / "copy.tar", root / "copied.tar")  # copied over: a new inode, the same bytes
    rewritten(root / "p.parquet", _parquet([img[5], img[6]], [1, 2]))
    rewritten(root / "z.zip", zip_bytes({"y.png": img[8], "d/x.png": img[7]}))  # packed again, otherwise
    rewritten(root / "grown.tar", tar_bytes({**GROWN, "2.png": img[9]}))
    config = small_job_config(tmp_path, model, incremental=True)
    plan = plan_job(config, dry_run=True)
    assert plan.changes.same_members == 4
    # the one grown is read for its member added; the others hold nothing new (order.tar, left as it was, as before)
    assert [os.path.basename(u.paths[0]) for u in plan.units] == ["grown.tar"]
    assert plan.describe()["input"]["containers_already_done"] == 3 + 1

    rewritten(root / "grown.tar", tar_bytes(GROWN))  # as it was: nothing is left to read
    read = _counting_reads(monkeypatch)
    no_ray_from_here_on(monkeypatch)
    summary = run_job(config)
    run = summary["this_run"]
    assert (summary["status"], summary["changed_inputs"]["containers_same_members"]) == ("complete", 4)
    # the four found as they were are recorded anew; order.tar's entry stands
    assert (run["read"], run["containers_skipped_unread"], run["containers_recorded"]) == (0, 4 + 1, 4)
    assert sorted(read) == ["copied.tar", "grown.tar", "p.parquet", "z.zip"]  # by the planning, once
    ledger = read_ledger(str(out), {})
    listed = {u.paths[0]: u.stamps[0] for u in discover(str(root))}
    assert {path: entry.stamp for path, entry in ledger.items()} == listed

    read.clear()
    later = run_job(config)["this_run"]
    assert (later["read"], later["containers_skipped_unread"], read) == (0, 4 + 1, [])


class _CountedReads:
    """A file system whose opened files count the bytes read from them, by file name."""

    def __init__(self, fs) -> None:
        self.fs, self.read = fs, {}

    def open(self, path, mode="rb", **kwargs):
        return _CountedFile(self.fs.open(path, mode, **kwargs), self.read, os.path.basename(path))

    def __getattr__(self, name):
        return getattr(self.fs, name)


class _CountedFile(io.RawIOBase):
    def __init__(self, f, counts: dict[str, int], name: str) -> None:
        super().__init__()
        self.f, self.counts, self.name = f, counts, name
        counts.setdefault(name, 0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, buffer) -> int:
        data = self.f.read(len(buffer))
        buffer[: len(data)] = data
        self.counts[self.name] += len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def test_comparing_a_containers_rows_reads_of_the_outputs_part_files_only_the_rows_of_its_ids(
        tmp_path, monkeypatch) -> None:
    """The rows' pass-through columns are compared, and they may be large (a shard's masks, a Parquet data set's
    second image): every part file of the output was read whole but for its images, 16 at a time, to compare the rows
    of one container whose listing changed. Now a part file holding none of its ids gives its id column only."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    a = image_bytes(8, 8, 1)
    (inp / "s.tar").write_bytes(tar_bytes({"0.png": a}))
    pq.write_table(pa.table({"id": ["s.tar/0"], "source": [f"{inp / 's.tar'}:0.png"], "source_sha256": [_sha(a)],
                             "mask": pa.array([None], pa.binary())}), out / "data" / "part-s.parquet")
    masks = [os.urandom(256 * 2**10) for _ in range(64)]  # 16 MiB of another shard's masks, none of s.tar's rows
    pq.write_table(pa.table({"id": [f"other.tar/{k}" for k in range(64)], "source": ["x"] * 64,
                             "source_sha256": ["0" * 64] * 64, "mask": masks}), out / "data" / "part-other.parquet")
    counted: list[_CountedReads] = []
    real = changes_module.storage_path

    def storage_path(uri, options):
        fs, path = real(uri, options)
        counted.append(_CountedReads(fs))
        return counted[-1], path

    monkeypatch.setattr(changes_module, "storage_path", storage_path)
    units = [ReadUnit("tar", (str(inp / "s.tar"),), str(inp), (os.path.getsize(inp / "s.tar"),), ("l2",), ("v2",))]
    record = InputRecord(str(inp), {"s.tar": ("tar", "v1")})
    assert same_members(units, {"s.tar/0"}, set(), frozenset(), record, {}, str(out), {}) == ({"s.tar": ("tar", "v2")}, 1)
    read = {name: n for fs in counted for name, n in fs.read.items()}
    assert read["part-s.parquet"] > 0
    assert read["part-other.parquet"] < 2**20  # its footer and id column, not its 16 MiB of masks


def test_comparing_changed_containers_with_their_rows_reads_only_the_part_files_holding_those_rows(
        containers_done, model, monkeypatch) -> None:
    """To compare the containers whose listing changed with their rows, the planning read the id column of every part
    file of the output (and the rest of those holding their rows): at 10^6 rows, thousands of part files for one
    shard repacked. Now it reads only those holding their rows, as its own reading of the output's ids
    (`output.OutputIndex`) names them, and finds the same."""
    tmp_path = containers_done.restore()  # a part file a row: 9
    root, out = tmp_path / "in", tmp_path / "out"
    rewritten(root / "order.tar", tar_bytes({"b.png": IMG[3], "a.png": IMG[2]}))  # its members in another order
    rewritten(root / "grown.tar", tar_bytes({**GROWN, "1.png": image_bytes(16, 16, 60)}))  # one other
    read = part_files_read(monkeypatch)
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).describe()["changed_inputs"]
    assert (dry["containers_compared"], dry["containers_same_members"]) == (2, 1)
    assert (dry["containers"], dry["examples"]) == (1, ["grown.tar"])
    holding = part_files_holding(str(out), {}, {"order.tar/a", "order.tar/b", "grown.tar/0", "grown.tar/1"})
    assert len(read) == 4
    assert sorted(read) == sorted(name for names in holding.values() for name in names)


@pytest.mark.usefixtures("ray_local")
def test_a_retry_stopped_before_it_read_a_containers_rejects_leaves_the_container_said_changed(
        tmp_path, model, monkeypatch) -> None:
    """--retry-rejects reads a container's rejects again, so they are not compared with its members; found as it was
    otherwise, the container took its new stamp when the run started, and a retry stopped before it read them left a
    reject about an earlier version of its member said nowhere: later runs found the container unchanged."""
    root = tmp_path / "in"
    root.mkdir()
    good = image_bytes(16, 16, 1)
    (root / "s.tar").write_bytes(tar_bytes({"0.png": good, "1.png": b"not an image"}))
    first = run_job(small_job_config(tmp_path, model))["this_run"]
    assert (first["purified"], first["rejected"]) == (1, 1)
    rewritten_in_place(root / "s.tar", tar_bytes({"0.png": good, "1.png": image_bytes(16, 16, 2)}))  # 1.png fixed

    run_stopped_at("_purify", tmp_path, model, monkeypatch, retry_rejects=True)  # before it read anything
    dry = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).changes
    assert (dry.containers, dry.same_members) == ({"s.tar": 2}, 0)  # the reject is of the earlier 1.png

    retried = run_job(small_job_config(tmp_path, model, retry_rejects=True))
    assert (retried["this_run"]["rejects_retried"]["purified_now"], retried["output_totals"]["rejected"]) == (1, 0)
    assert plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True).changes.containers == {}


def test_an_interrupt_while_containers_are_compared_stops_each_one_being_read_at_its_next_member(
        tmp_path, monkeypatch) -> None:
    """Ctrl-C while the planning compared containers with their rows waited for each one being read (4 at a time,
    each to its end: a shard of GBs from storage) before the run could stop."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    a = image_bytes(8, 8, 1)
    for name in ("a.tar", "b.tar"):
        (inp / name).write_bytes(tar_bytes({"0.png": a}))
    pq.write_table(pa.table({"id": ["a.tar/0", "b.tar/0"], "source": [f"{inp / n}:0.png" for n in ("a.tar", "b.tar")],
                             "source_sha256": [_sha(a)] * 2}), out / "data" / "part-a.parquet")
    began, given = threading.Event(), []

    def read_unit(unit, *args, **kwargs):
        if unit.paths[0].endswith("a.tar"):  # Ctrl-C, once b.tar is being read
            began.wait(30)
            raise KeyboardInterrupt

        def members():
            began.set()
            for n in range(2000):  # a large shard: 2,000 more members, 10 s
                given.append(n)
                time.sleep(0.005)
                yield {"kind": "image", "id": f"b.tar/{n + 1}", "source": "", "source_sha256": "", "meta": {}}

        return members()

    monkeypatch.setattr(changes_module, "read_unit", read_unit)
    units = [ReadUnit("tar", (str(inp / n),), str(inp), (os.path.getsize(inp / n),), ("l2",), ("v2",))
             for n in ("a.tar", "b.tar")]
    record = InputRecord(str(inp), {"a.tar": ("tar", "v1"), "b.tar": ("tar", "v1")})
    with pytest.raises(KeyboardInterrupt):
        same_members(units, {"a.tar/0", "b.tar/0"}, set(), frozenset(), record, {}, str(out), {})
    assert 0 < len(given) < 2000  # b.tar's reading stopped, not read to its end


def test_the_planning_says_so_when_the_containers_it_reads_to_compare_are_large(tmp_path, capsys) -> None:
    """Fewer than 20 containers were read in silence however large: three Parquet files of 50 GB each kept the
    planning busy for many minutes with nothing said."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    a = image_bytes(8, 8, 1)
    (inp / "s.tar").write_bytes(tar_bytes({"0.png": a}))
    pq.write_table(pa.table({"id": ["s.tar/0"], "source": [f"{inp / 's.tar'}:0.png"], "source_sha256": [_sha(a)]}),
                   out / "data" / "part-a.parquet")
    listed = ReadUnit("tar", (str(inp / "s.tar"),), str(inp), (os.path.getsize(inp / "s.tar"),), ("l2",), ("v2",))
    record = InputRecord(str(inp), {"s.tar": ("tar", "v1")})
    assert same_members([listed], {"s.tar/0"}, set(), frozenset(), record, {}, str(out), {})[1] == 1
    assert capsys.readouterr().err == ""  # a small one: nothing said
    large = ReadUnit("tar", listed.paths, str(inp), (3 * 2**30,), ("l2",), ("v2",))  # as the listing gives a 3 GiB one
    same_members([large], {"s.tar/0"}, set(), frozenset(), record, {}, str(out), {})
    err = capsys.readouterr().err
    assert "reading 1 tar/Parquet/zip file(s) (3.0 GiB) whose listing changed since their rows were written" in err
    assert "1 of 1 tar/Parquet/zip file(s) whose listing changed hold every member their rows were made from" in err
