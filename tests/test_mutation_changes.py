"""What pipeline.changes says and records about inputs changed or gone since their rows were written, pinned where a
mutation audit found no test that would notice it change: the summary's counts and the notes' wording, the edges of
`find_changes` (no stamp listed, the ledger of an older output, retried rejects, every input gone), `same_bytes` and
`same_members` compared with rows as a run writes them, and `file_sha256`. No Ray: each test runs in well under a
second."""

from __future__ import annotations

import hashlib
import os
import threading

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

import pipeline.changes as changes_module
from pipeline.changes import (
    DIFFERS,
    ChangedInputs,
    InputRecord,
    changed_warning,
    compared_note,
    file_sha256,
    find_changes,
    gone_note,
    refreshed_note,
    same_bytes,
    same_members,
    updated_record,
)
from pipeline.ledger import ContainerRead
from pipeline.output import output_index
from pipeline.sources import ReadUnit, read_unit
from tests.jobutil import image_bytes, tar_bytes
from tests.test_changed_inputs import _counting_hashes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: str, *pairs: tuple[str, str | None]) -> ReadUnit:
    return ReadUnit("files", tuple(f"{root}/{name}" for name, _ in pairs), root, (), (), tuple(s for _, s in pairs))


def _tar(root: str, name: str, stamp: str | None, size: int = 10, version: str | None = "l2") -> ReadUnit:
    return ReadUnit("tar", (f"{root}/{name}",), root, (size,), (version,), (stamp,))


# --- the summary and the command line's notes -----------------------------------------------------------------------


def test_the_summary_counts_rows_and_names_examples_of_every_kind_in_its_own_field() -> None:
    changes = ChangedInputs(purified=["b.png"], rejected=["r.png"], containers={"s.tar": 3, "p.parquet": 2},
                            gone_files=["g.png"], gone_containers={"old.zip": 4, "o.tar": 1},
                            refreshed={"a.png": ["a.png"], "t.tar": ["t.tar/0", "t.tar/1"]},
                            metadata_rows=["a.png", "b.png", "c.png"],
                            same_bytes=2, same_members=1, compared_files=5, compared_containers=3)
    assert changes.summary() == {
        "image_files_purified": 1, "image_files_rejected": 1, "containers": 2, "container_rows": 5,
        "examples": ["b.png", "p.parquet", "r.png", "s.tar"], "image_files_metadata_changed": 3,
        "gone_image_files": 1, "gone_containers": 2, "gone_container_rows": 5,
        "gone_examples": ["g.png", "o.tar", "old.zip"],
        "refreshed_inputs": 2, "refreshed_rows": 3, "refreshed_examples": ["a.png", "t.tar"],
        "image_files_same_bytes": 2, "containers_same_members": 1,
        "image_files_compared": 5, "containers_compared": 3}
    assert changes.refreshed_rows() == {"a.png", "t.tar/0", "t.tar/1"}  # the rows a --refresh-changed run replaces


def test_the_warning_says_each_count_where_it_belongs_and_the_retry_remedy_only_for_rejects() -> None:
    changed = {"image_files_purified": 2, "image_files_rejected": 1, "containers": 1, "container_rows": 4,
               "examples": ["a.png", "r.png", "s.tar"]}
    warning = changed_warning(changed)
    assert warning is not None
    assert warning.startswith("warning: 2 image file(s) purified earlier (data/ holds their earlier version, purified); "
                              "1 image file(s) rejected earlier (the reject is about their earlier version); "
                              "1 tar/Parquet/zip file(s) replaced since"), warning
    assert "(of their 4 rows, those written before" in warning
    assert "the output kept those rows (e.g. a.png, r.png, s.tar)" in warning
    assert "--retry-rejects reads the rejected ones again; --overwrite" in warning
    assert "the output would keep those rows" in str(changed_warning(changed, dry_run=True))
    purified_only = changed_warning({"image_files_purified": 1, "examples": ["a.png"]})
    assert purified_only is not None and "--retry-rejects" not in purified_only, purified_only
    assert changed_warning({"image_files_purified": 0, "containers": 0, "gone_image_files": 3}) is None


def test_the_dry_runs_notes_say_what_would_be_refreshed_and_what_the_planning_read() -> None:
    assert refreshed_note({"refreshed_inputs": 2, "refreshed_rows": 5, "refreshed_examples": ["a.png", "s.tar"]}) == (
        "note: --refresh-changed: would purify 2 changed input(s) again, replacing their 5 row(s) (e.g. a.png, s.tar)")
    assert refreshed_note({"refreshed_inputs": 0, "refreshed_rows": 0}) is None
    containers = compared_note({"image_files_compared": 0, "image_files_same_bytes": 0, "containers_compared": 2,
                                "containers_same_members": 1})
    assert containers is not None and containers.startswith(
        "note: the planning read 2 tar/Parquet/zip file(s) (1 giving every member of their rows as it was) whose "
        "listing changed"), containers
    both = compared_note({"image_files_compared": 3, "image_files_same_bytes": 2, "containers_compared": 1,
                          "containers_same_members": 0})
    assert both is not None and both.startswith(
        "note: the planning read 3 image file(s) (2 with the bytes their rows were made from) and 1 tar/Parquet/zip "
        "file(s) (0 giving every member"), both
    assert compared_note({"image_files_compared": 0, "containers_compared": 0}) is None
    files = gone_note({"gone_image_files": 2, "gone_containers": 0, "gone_examples": ["a.png", "b.png"]})
    assert files == ("note: 2 image file(s) with rows in the output are no longer in the input (deleted or renamed; "
                     "e.g. a.png, b.png): their rows are kept; --overwrite drops them")


# --- find_changes and the record ------------------------------------------------------------------------------------


def test_an_input_whose_listing_gives_no_stamp_is_neither_changed_nor_recorded() -> None:
    # "An input whose listing gives no stamp is left out (its changes cannot be seen)"
    record = InputRecord("/in", {"a.png": ("files", "v1"), "s.tar": ("tar", "v1")})
    listed = [_files("/in", ("a.png", None)), _tar("/in", "s.tar", None)]
    changes = find_changes(listed, {"a.png", "s.tar/0"}, set(), frozenset(), record, {}, "/in")
    assert (changes.purified, changes.containers, changes.gone_files, changes.gone_containers) == ([], {}, [], {})
    assert updated_record(record, "/in", listed, changes).stamps == {}


def test_a_container_of_an_older_output_is_judged_by_its_ledger_entrys_size_too_and_not_without_a_version() -> None:
    ledger = {"/in/s.tar": ContainerRead("/in/s.tar", 10, "l1", 1, "x")}
    grown = _tar("/in", "s.tar", "c2", size=12, version="l1")  # the same version as listed, another size
    assert find_changes([grown], {"s.tar/0"}, set(), frozenset(), None, ledger, "/in").containers == {"s.tar": 1}
    unversioned = _tar("/in", "s.tar", "c2", version=None)  # a store that gives no version: no change can be seen
    assert find_changes([unversioned], {"s.tar/0"}, set(), frozenset(), None, ledger, "/in").containers == {}


def test_a_changed_containers_rejects_read_again_are_not_kept_rows_and_not_refreshed() -> None:
    record = InputRecord("/in", {"s.tar": ("tar", "v1"), "t.tar": ("tar", "v1")})
    listed = [_tar("/in", "s.tar", "v2"), _tar("/in", "t.tar", "v2")]
    purified, rejected = {"s.tar/0"}, {"s.tar/1", "t.tar/0"}
    retry = frozenset(rejected)
    plain = find_changes(listed, purified, rejected, retry, record, {}, "/in")
    # s.tar keeps one row of its earlier version (1 is read again); t.tar's only row is read again: pending
    assert (plain.containers, plain.pending) == ({"s.tar": 1}, {"t.tar": ("tar", "v1")})
    refreshed = find_changes(listed, purified, rejected, retry, record, {}, "/in", refresh=True)
    assert refreshed.refreshed == {"s.tar": ["s.tar/0"]}  # t.tar: no row of it is refreshed
    assert refreshed.pending == {"s.tar": ("tar", "v1"), "t.tar": ("tar", "v1")}
    assert refreshed.summary()["refreshed_inputs"] == 1


def test_a_refreshed_shards_lookalike_reject_is_not_a_row_it_replaces() -> None:
    record = InputRecord("/in", {"s.tar": ("tar", "v1")})
    rejected = {"s.tar#lookalike/cat"}
    changes = find_changes([_tar("/in", "s.tar", "v2")], {"s.tar/0"}, rejected, frozenset(), record, {}, "/in",
                           refresh=True)
    assert changes.refreshed == {"s.tar": ["s.tar/0"]}


def test_an_image_file_with_a_row_in_data_and_an_old_reject_is_said_changed_as_purified() -> None:
    # a retry stopped between writing an id's new row and removing its old reject leaves both: the id is purified, not
    # read again by --retry-rejects, so its row is kept and said to be of an earlier version
    record = InputRecord("/in", {"a.png": ("files", "v1")})
    changes = find_changes([_files("/in", ("a.png", "v2"))], {"a.png"}, {"a.png"}, frozenset({"a.png"}), record, {},
                           "/in")
    assert (changes.purified, changes.rejected, changes.pending) == (["a.png"], [], {})


def test_a_gone_reject_is_said_and_a_gone_container_without_rows_is_not() -> None:
    record = InputRecord("/in", {"r.png": ("files", "v1"), "empty.tar": ("tar", "v1"), "kept.png": ("files", "v1")})
    changes = find_changes([_files("/in", ("kept.png", "v1"))], {"kept.png"}, {"r.png"}, frozenset(), record, {},
                           "/in")
    assert (changes.gone_files, changes.gone_containers) == (["r.png"], {})


def test_inputs_all_gone_are_said_gone_and_stay_recorded() -> None:
    """Every input deleted (an emptied incoming folder): the listing gives no unit, so the planning knows no root, and
    no input was said gone; the record a complete run left then held no stamp at all, so a file put back later with
    other bytes was taken as done and its old row kept without a word. Deleting all but one input said each gone."""
    record = InputRecord("/in", {"a.png": ("files", "v1"), "r.png": ("files", "v1"), "s.tar": ("tar", "v1")})
    purified, rejected = {"a.png", "s.tar/0", "s.tar/1"}, {"r.png"}
    changes = find_changes([], purified, rejected, frozenset(), record, {}, None)
    assert (changes.gone_files, changes.gone_containers) == (["a.png", "r.png"], {"s.tar": 2})
    final = updated_record(record, "/in", [], changes)
    assert final.stamps == record.stamps
    back = find_changes([_files("/in", ("a.png", "v2"))], purified, rejected, frozenset(), final, {}, "/in")
    assert back.purified == ["a.png"]  # put back with other bytes: said changed, as any file rewritten in place


# --- same_bytes -----------------------------------------------------------------------------------------------------


def test_same_bytes_compares_each_touched_file_with_its_own_rows_and_nothing_else(tmp_path, monkeypatch,
                                                                                   capsys) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    (out / "rejects").mkdir()
    x, y = b"x-bytes", b"y-bytes"
    touched = [f"n{k:03d}.png" for k in range(70)]  # more than one batch of reads at one reader (64 a batch)
    for name in [*touched, "kept.png", "bad.png", "retried.png", "refreshed.png"]:
        (inp / name).write_bytes(x)
    (inp / "other.png").write_bytes(y)
    # the rows of the touched files lie past the first row group of their part file (100 rows), and past the first
    # batch of rows read of the group (64 rows)
    fillers = [f"f{k:03d}.png" for k in range(164)]
    pq.write_table(pa.table({"id": [*fillers, *touched, "kept.png", "other.png"],
                             "source_sha256": [_sha(b"z")] * len(fillers) + [_sha(x)] * 72}),
                   out / "data" / "part-a.parquet", row_group_size=100)
    # refreshed.png: its old row (of other bytes) is one a stopped --refresh-changed run replaced; its new row is of x
    pq.write_table(pa.table({"id": ["refreshed.png"], "source_sha256": [_sha(b"old")]}), out / "data" / "part-o.parquet")
    pq.write_table(pa.table({"id": ["refreshed.png"], "source_sha256": [_sha(x)]}), out / "data" / "part-n.parquet")
    pq.write_table(pa.table({"id": ["bad.png", "retried.png"], "source_sha256": [_sha(x), _sha(x)],
                             "stage": ["decode", "decode"], "error": ["e", "e"]}), out / "rejects" / "part-r.parquet")
    names = [*touched, "kept.png", "bad.png", "retried.png", "refreshed.png", "other.png"]
    stamps = {name: ("files", "v1") for name in names}
    stamps["other.png"] = ("files", f"v1{DIFFERS}v2")  # found other at v2 by an earlier run
    record = InputRecord(str(inp), stamps)
    now = {name: "v2" for name in names}
    now["kept.png"], now["other.png"] = "v1", "v3"
    unit = ReadUnit("files", tuple(str(inp / n) for n in names), str(inp), tuple(len(x) for _ in names), (),
                    tuple(now[n] for n in names))
    purified = {*touched, "kept.png", "refreshed.png", "other.png"}
    monkeypatch.setattr(changes_module, "HASH_READERS", 1)
    monkeypatch.setattr(changes_module, "MANY_TO_HASH", len(touched) + 3)  # "from 1,000 on": from this many on
    hashed = _counting_hashes(monkeypatch)
    found, same = same_bytes([unit], purified, {"bad.png", "retried.png"}, frozenset({"retried.png"}), record,
                             str(out), {}, superseded={"data/part-o.parquet": {"refreshed.png"}})
    assert found == {**{n: ("files", "v2") for n in [*touched, "bad.png", "refreshed.png"]},
                     "other.png": ("files", f"v1{DIFFERS}v3")}  # the stamp its rows were made at, then the one read
    assert same == len(touched) + 2
    # kept.png: its stamp is as recorded; retried.png: --retry-rejects reads it anyway
    assert sorted(hashed) == sorted([*touched, "bad.png", "refreshed.png", "other.png"])
    assert f"reading {len(touched) + 3} image file(s) whose listing changed" in capsys.readouterr().err
    # the same, reading only the part files that the planning's index of the output's ids names for their rows
    indexed = same_bytes([unit], purified, {"bad.png", "retried.png"}, frozenset({"retried.png"}), record, str(out),
                         {}, output_index(str(out), {}), {"data/part-o.parquet": {"refreshed.png"}})
    assert indexed == (found, same)


def test_file_sha256_gives_none_for_a_fifo_without_waiting_for_a_writer(tmp_path) -> None:
    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)  # no process writes it: opening it to read would wait for one, forever
    got: list[str | None] = []
    reader = threading.Thread(target=lambda: got.append(file_sha256(str(fifo), {}, 1)), daemon=True)
    reader.start()
    reader.join(20)
    waited = reader.is_alive()
    if waited:  # a writer that opens and closes it lets the reader see its end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(20)
    assert not waited and got == [None]


def test_file_sha256_on_an_object_store_tells_an_object_grown_or_shrunk_since_its_listing() -> None:
    fs = fsspec.filesystem("memory")
    path = "memory://sha-test/a.png"
    fs.pipe(path, b"abc")
    try:
        assert file_sha256(path, {}, 3) == _sha(b"abc")
        assert file_sha256(path, {}, None) == _sha(b"abc")  # a listing that gave no size: read to its end
        assert file_sha256(path, {}, 2) is None  # grown since it was listed
        assert file_sha256(path, {}, 4) is None  # cut short since it was listed
    finally:
        fs.rm("memory://sha-test", recursive=True)


def test_file_sha256_gives_none_for_a_file_shorter_than_listed_or_one_storage_refuses(tmp_path, monkeypatch) -> None:
    (tmp_path / "a.png").write_bytes(b"ab")
    assert file_sha256(str(tmp_path / "a.png"), {}, 3) is None

    class Refusing:
        def cat_file(self, *args, **kwargs):
            raise PermissionError("AccessDenied")

        open = cat_file

    monkeypatch.setattr(changes_module, "storage_path", lambda uri, options: (Refusing(), uri))
    assert file_sha256("s3://b/a.png", {}, 3) is None  # listed but not readable: said changed, the planning goes on


# --- same_members ---------------------------------------------------------------------------------------------------


def _rows_of(unit: ReadUnit, out, rejected: set[str], **reading) -> None:
    """The output's rows of `unit` as a run writes them from its records: a data/ row of each image (its pass-through
    columns, and the purified image's own: left out of the comparison), a rejects/ row of each reject and of each id of
    `rejected` (as the decoder rejects an image of those bytes)."""
    data, rejects = [], []
    for record in read_unit(unit, {}, **reading):
        if record["kind"] == "image" and record["id"] not in rejected:
            data.append({"id": record["id"], "source": record["source"], "source_sha256": record["source_sha256"],
                         "image": b"png", "width": 8, "height": 8, "original_mode": "RGB",
                         "psnr_vs_input_db": 30.5, **(record.get("meta") or {})})
        elif record["kind"] in ("image", "reject"):
            rejects.append({"id": record["id"], "source": record["source"], "source_sha256": record["source_sha256"],
                            "stage": record.get("stage", "decode"), "error": record.get("error", "cannot decode")})
    name = os.path.basename(unit.paths[0])
    for folder, rows in (("data", data), ("rejects", rejects)):
        if rows:
            (out / folder).mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(rows)
            if "label" in table.column_names:  # as a column of ints the end of a run made double beside floats
                table = table.set_column(table.column_names.index("label"), "label",
                                         table.column("label").cast(pa.float64()))
            pq.write_table(table, out / folder / f"part-{name}.parquet")


def test_same_members_compares_a_containers_members_with_rows_as_a_run_writes_them(tmp_path, monkeypatch,
                                                                                    capsys) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    img = {k: image_bytes(8, 8, k) for k in range(6)}
    big = image_bytes(48, 48, 9)
    earlier = {"grown.tar": {"0.png": img[0], "0.cls": b"3"},
               "lost.tar": {"a.png": img[1], "b.png": img[2]},
               "unread.tar": {"a.png": img[3], "big.png": big},
               "retried.tar": {"a.png": img[4], "b.png": b"half an upload"},
               "rejected.tar": {"x.png": b"not an image", "y.png": img[2]}}
    now = {"grown.tar": {"0.png": img[0], "0.cls": b"3", "1.png": img[5]},  # a sample appended
           "lost.tar": {"a.png": img[1]},  # b.png gone: its row is of a member the shard no longer holds
           "unread.tar": {"big.png": big, "a.png": img[3]},  # in another order; big.png still over --max-image-mb
           "retried.tar": {"a.png": img[4], "b.png": img[5]},  # the reject's member fixed; --retry-rejects reads it
           "rejected.tar": {"y.png": img[2], "x.png": b"not an image"}}  # its reject of the same bytes as it was
    reading = {"max_image_bytes": len(big) - 1}
    units = []
    for name, members in earlier.items():
        (inp / name).write_bytes(tar_bytes(members))
        unit = ReadUnit("tar", (str(inp / name),), str(inp), (os.path.getsize(inp / name),), ("l1",), ("v1",))
        _rows_of(unit, out, {"retried.tar/b", "rejected.tar/x"}, **reading)
        (inp / name).write_bytes(tar_bytes(now[name]))
        units.append(ReadUnit("tar", unit.paths, str(inp), (os.path.getsize(inp / name),), ("l3",), ("v3",)))
    purified = {"grown.tar/0", "lost.tar/a", "lost.tar/b", "unread.tar/a", "retried.tar/a", "rejected.tar/y"}
    rejected = {"unread.tar/big", "retried.tar/b", "rejected.tar/x"}
    record = InputRecord(str(inp), {**{name: ("tar", "v1") for name in earlier},
                                    "lost.tar": ("tar", f"v1{DIFFERS}v2")})  # found other at v2 by an earlier run
    given: list[int] = []
    real = changes_module.read_unit

    def reading_unit(unit, *args, **kwargs):
        given.append(kwargs["in_memory_bytes"])
        return real(unit, *args, **kwargs)

    monkeypatch.setattr(changes_module, "read_unit", reading_unit)
    monkeypatch.setattr(changes_module, "MANY_CONTAINERS", 5)  # "from 20 on": from this many on
    whole: dict[str, ContainerRead] = {}
    found, same = same_members(units, purified, rejected, frozenset({"retried.tar/b"}), record, {}, str(out), {},
                               {**reading, "in_memory_bytes": 2**30}, whole)
    assert found == {"grown.tar": ("tar", "v3"), "unread.tar": ("tar", "v3"), "retried.tar": ("tar", "v3"),
                     "rejected.tar": ("tar", "v3"), "lost.tar": ("tar", f"v1{DIFFERS}v3")}
    assert same == 4
    # each read to its end and found as its rows were made is recorded as a complete run would; not one holding a
    # reject --retry-rejects reads again
    assert sorted(os.path.basename(path) for path in whole) == ["grown.tar", "rejected.tar", "unread.tar"]
    assert whole[str(inp / "grown.tar")].stamp == "l3" and whole[str(inp / "grown.tar")].records == 2
    assert given and max(given) <= changes_module.CHECK_IN_MEMORY_BYTES  # "each held in memory up to 16 MiB"
    assert "reading 5 tar/Parquet/zip file(s)" in capsys.readouterr().err


def test_a_container_whose_reading_fails_or_gives_a_lookalike_is_not_taken_as_it_was(tmp_path, monkeypatch) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["s.tar/0"], "source": ["src"], "source_sha256": [_sha(b"x")]}),
                   out / "data" / "part-a.parquet")
    unit = ReadUnit("tar", (str(inp / "s.tar"),), str(inp), (10,), ("l2",), ("v2",))
    record = InputRecord(str(inp), {"s.tar": ("tar", "v1")})
    container = {"path": unit.paths[0], "records": 1, "ids_sha256": "d"}

    def records(**more):
        def read(*args, **kwargs):
            yield {"kind": "image", "id": "s.tar/0", "source": "src", "source_sha256": _sha(b"x"), "meta": {}}
            yield {"kind": "count", "n": 1, "skipped": 0, "container": {**container, **more}}
        return read

    for flag in ({}, {"lookalike": 1}, {"superseded": 1}):
        monkeypatch.setattr(changes_module, "read_unit", records(**flag))
        whole: dict[str, ContainerRead] = {}
        assert same_members([unit], {"s.tar/0"}, set(), frozenset(), record, {}, str(out), {}, None, whole) == (
            {"s.tar": ("tar", "v2")}, 1)
        assert list(whole) == ([] if flag else [unit.paths[0]]), flag  # its reading settles those rejects: read again

    def failing(*args, **kwargs):
        raise ValueError("not a tar file any more")

    monkeypatch.setattr(changes_module, "read_unit", failing)
    assert same_members([unit], {"s.tar/0"}, set(), frozenset(), record, {}, str(out), {}) == ({}, 0)
