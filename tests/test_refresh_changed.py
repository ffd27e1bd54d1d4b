"""--refresh-changed: inputs changed in place since their rows were written are purified again and their old rows
replaced, each id once in the output, with a journal that makes a kill at any point safe (pipeline.refresh)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.changes import InputRecord, find_changes
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.ledger import ContainerRead, read_ledger
from pipeline.output import deduplicate_output, drop_superseded_rows, part_files_holding
from pipeline.refresh import Journal, journal_path, read_journal, write_journal
from pipeline.sources import ReadUnit
from tests.changeutil import SavedRun, rewritten
from tests.jobutil import (
    image_bytes,
    image_folder,
    no_ray_from_here_on,
    rewritten_in_place,
    run_stopped_at,
    shard_refresh_stopped_after_its_last_batch,
    small_job_argv,
    small_job_config,
    tar_bytes,
)


def _rows(tmp_path, folder: str) -> dict[str, list[str | None]]:
    """id -> the source_sha256 of each of its rows in OUTPUT/folder (several when the id is there more than once)."""
    path = tmp_path / "out" / folder
    if not path.exists() or not list(path.glob("part-*.parquet")):
        return {}
    found: dict[str, list[str | None]] = {}
    for part in sorted(path.glob("part-*.parquet")):
        table = pq.read_table(part, columns=["id", "source_sha256"])
        for id_, sha in zip(table.column("id").to_pylist(), table.column("source_sha256").to_pylist(), strict=True):
            found.setdefault(id_, []).append(sha)
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _each_id_once(tmp_path) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """The output's rows, data/ then rejects/, as id -> source_sha256, checked to hold each id once in all."""
    data, rejects = _rows(tmp_path, "data"), _rows(tmp_path, "rejects")
    counts = Counter([*(i for i, shas in data.items() for _ in shas), *(i for i, shas in rejects.items() for _ in shas)])
    assert [i for i, n in counts.items() if n > 1] == []
    return {i: s[0] for i, s in data.items()}, {i: s[0] for i, s in rejects.items()}


# First runs (and runs stopped after them) that several tests go on from, made once for the module (tests.changeutil):
# a test restores the folder (`restore()`, its `tmp_path` from there on) and changes an input by replacing it.

@pytest.fixture(scope="module")
def two_images_done(tmp_path_factory, model, ray_local) -> SavedRun:
    """in/: 0.png and 1.png (tests.jobutil.image_folder), purified by a first run."""
    folder = tmp_path_factory.mktemp("two_images")
    image_folder(folder / "in", 2)
    assert run_job(small_job_config(folder, model))["status"] == "complete"
    return SavedRun(folder)


SHARD_OF_THREE = {f"{k}.png": image_bytes(16, 16, 10 + k) for k in range(3)}


@pytest.fixture(scope="module")
def shard_of_three_done(tmp_path_factory, model, ray_local) -> SavedRun:
    """in/s.tar of `SHARD_OF_THREE`, purified by a first run."""
    folder = tmp_path_factory.mktemp("shard_of_three")
    (folder / "in").mkdir()
    (folder / "in" / "s.tar").write_bytes(tar_bytes(SHARD_OF_THREE))
    assert run_job(small_job_config(folder, model))["status"] == "complete"
    return SavedRun(folder)


@pytest.fixture(scope="module")
def unreadable_shard_done(tmp_path_factory, model, ray_local) -> SavedRun:
    """in/s.tar of two members purified by a first run, then rewritten as no tar (its members may well be there: it
    cannot be read now)."""
    folder = tmp_path_factory.mktemp("unreadable_shard")
    (folder / "in").mkdir()
    (folder / "in" / "s.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(16, 16, 30 + k) for k in range(2)}))
    assert run_job(small_job_config(folder, model))["status"] == "complete"
    rewritten_in_place(folder / "in" / "s.tar", b"not a tar any more" * 40)
    return SavedRun(folder)


def test_find_changes_with_refresh_reads_changed_inputs_again_and_keeps_their_earlier_stamps_until_the_end() -> None:
    record = InputRecord("/in", {"a.png": ("files", "v1"), "r.png": ("files", "v1"), "s.tar": ("tar", "v1")})
    listed = [ReadUnit("files", ("/in/a.png", "/in/r.png"), "/in", (), (), ("v2", "v2")),
              ReadUnit("tar", ("/in/s.tar",), "/in", (10,), ("l2",), ("v2",))]
    purified, rejected = {"a.png", "s.tar/0", "s.tar/1"}, {"r.png", "s.tar#unreadable"}
    plain = find_changes(listed, purified, rejected, frozenset(), record, {}, "/in")
    assert (plain.purified, plain.rejected, plain.containers, plain.refreshed) == (["a.png"], ["r.png"], {"s.tar": 2}, {})
    changes = find_changes(listed, purified, rejected, frozenset(), record, {}, "/in", refresh=True)
    assert (changes.purified, changes.rejected, changes.containers) == ([], [], {})  # none kept: not said changed
    assert changes.refreshed == {"a.png": ["a.png"], "r.png": ["r.png"], "s.tar": ["s.tar/0", "s.tar/1"]}
    assert changes.pending == {"a.png": ("files", "v1"), "r.png": ("files", "v1"), "s.tar": ("tar", "v1")}
    assert changes.summary()["refreshed_inputs"] == 3 and changes.summary()["refreshed_rows"] == 4
    # with --retry-rejects as well, a changed reject is retried (its old row replaced by that rule), not refreshed
    both = find_changes(listed, purified, rejected, frozenset({"r.png"}), record, {}, "/in", refresh=True)
    assert "r.png" not in both.refreshed and both.pending["r.png"] == ("files", "v1")


def test_the_journal_rule_removes_old_rows_only_of_ids_another_file_holds_a_row_of(tmp_path) -> None:
    out = tmp_path / "out"
    for folder, name, ids in (("data", "part-old.parquet", ["a", "b", "c"]), ("data", "part-new.parquet", ["a"]),
                              ("rejects", "part-new.parquet", ["b"]), ("rejects", "part-r.parquet", ["d"])):
        (out / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "n": list(range(len(ids)))}), out / folder / name)
    rows = {"a": ["data/part-old.parquet"], "b": ["data/part-old.parquet"], "c": ["data/part-old.parquet"],
            "d": ["rejects/part-r.parquet"]}
    journal = Journal(rows, {"s.tar": ("tar", "v2", ["a", "c"]), "b": ("files", "v2", ["b"])}, "salt")
    write_journal(str(out), {}, journal)
    assert read_journal(str(out), {}) == journal
    holders = part_files_holding(str(out), {}, set(rows))
    assert journal.settled(holders) == {"a", "b"}  # c and d: no row outside their old files
    assert journal.new_stamps({"a", "b"}) == {"b": ("files", "v2")}  # s.tar's c has no new row: still changed
    assert drop_superseded_rows(str(out), {}, rows) == 2
    assert pq.read_table(out / "data" / "part-old.parquet").column("id").to_pylist() == ["c"]
    assert pq.read_table(out / "data" / "part-new.parquet").column("id").to_pylist() == ["a"]
    assert pq.read_table(out / "rejects" / "part-new.parquet").column("id").to_pylist() == ["b"]
    assert pq.read_table(out / "rejects" / "part-r.parquet").column("id").to_pylist() == ["d"]
    assert drop_superseded_rows(str(out), {}, rows) == 0  # applied again (a kill before the journal went): nothing
    (out / "_refresh" / "journal.json").write_text("{not json")
    with pytest.raises(JobError, match="--refresh-changed"):
        read_journal(str(out), {})


@pytest.mark.usefixtures("ray_local")
def test_changed_image_files_are_purified_again_and_their_old_rows_replaced(tmp_path, model) -> None:
    root = image_folder(tmp_path / "in", 3)
    (root / "bad.png").write_bytes(b"half an upload")
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    new0, fixed = image_bytes(24, 20, 99), image_bytes(16, 16, 98)
    rewritten_in_place(root / "0.png", new0)  # re-uploaded with new bytes (another size)
    rewritten_in_place(root / "bad.png", fixed)  # a reject whose input was fixed: purified now
    rewritten_in_place(root / "1.png", b"now broken")  # purified before, a reject now
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert summary["status"] == "complete"
    assert summary["this_run"]["refreshed"] == {"inputs": 3, "rows_replaced": 3, "rows_kept": 0}
    assert (summary["this_run"]["read"], summary["this_run"]["duplicates_removed"]) == (3, 0)
    assert summary["changed_inputs"]["image_files_purified"] + summary["changed_inputs"]["image_files_rejected"] == 0
    assert summary["output_totals"] == {"purified": 3, "rejected": 1,
                                        "before_this_run": {"purified": 3, "rejected": 1}}
    data, rejects = _each_id_once(tmp_path)
    assert set(data) == {"0.png", "2.png", "bad.png"} and set(rejects) == {"1.png"}
    assert (data["0.png"], data["bad.png"]) == (_sha(new0), _sha(fixed))
    table = pq.read_table(tmp_path / "out" / "data", columns=["id", "width", "height"]).to_pylist()
    assert {"id": "0.png", "width": 20, "height": 24} in table
    assert not (tmp_path / "out" / "_refresh").exists()  # the journal gone, and no empty folder left beside data/
    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert later["this_run"]["read"] == 0 and later["changed_inputs"]["examples"] == []


@pytest.mark.usefixtures("ray_local")
def test_a_changed_tar_shard_or_parquet_file_is_read_whole_again_and_a_member_it_no_longer_holds_keeps_its_row(
        tmp_path, model) -> None:
    root = tmp_path / "in"
    root.mkdir()
    members = {f"{k}.png": image_bytes(16, 16, 10 + k) for k in range(3)}
    (root / "s.tar").write_bytes(tar_bytes(members))
    pq.write_table(pa.table({"image": [{"bytes": image_bytes(16, 16, 20), "path": None}]}), root / "t.parquet")
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    changed = {"0.png": image_bytes(16, 16, 60), "1.png": members["1.png"], "3.png": image_bytes(16, 16, 63)}
    rewritten_in_place(root / "s.tar", tar_bytes(changed))  # 0 changed, 1 the same, 2 gone, 3 added
    row = image_bytes(16, 16, 21)
    before = os.stat(root / "t.parquet").st_mtime_ns
    pq.write_table(pa.table({"image": [{"bytes": row, "path": None}]}), root / "t.parquet")
    os.utime(root / "t.parquet", ns=(before + 2_000_000_000, before + 2_000_000_000))
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert summary["status"] == "complete"
    assert summary["this_run"]["refreshed"] == {"inputs": 2, "rows_replaced": 3, "rows_kept": 1}
    assert summary["this_run"]["read"] == 4
    data, rejects = _each_id_once(tmp_path)
    assert set(data) == {"s.tar/0", "s.tar/1", "s.tar/2", "s.tar/3", "t.parquet#0"} and rejects == {}
    assert (data["s.tar/0"], data["s.tar/2"]) == (_sha(changed["0.png"]), _sha(members["2.png"]))
    assert data["t.parquet#0"] == _sha(row)
    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert later["changed_inputs"]["containers"] == 0
    assert later["this_run"]["containers_skipped_unread"] == 2  # the member it no longer holds is left over, recorded


NEW0 = image_bytes(20, 20, 70)


@pytest.fixture(scope="module")
def refresh_stopped_before_old_rows_go(tmp_path_factory, model, ray_local) -> SavedRun:
    """Three images purified; then 0.png rewritten (as `NEW0`) and 1.png broken, and a --refresh-changed run stopped
    after writing their new rows, before it removed the old ones."""
    folder = tmp_path_factory.mktemp("refresh_stopped_before_old_rows_go")
    root = image_folder(folder / "in", 3)
    assert run_job(small_job_config(folder, model))["status"] == "complete"
    rewritten_in_place(root / "0.png", NEW0)
    rewritten_in_place(root / "1.png", b"broken now")
    with pytest.MonkeyPatch.context() as patched:
        run_stopped_at("deduplicate_output", folder, model, patched, refresh_changed=True)
    return SavedRun(folder)


@pytest.mark.parametrize("then", ["plain", "refresh"])
def test_a_refresh_stopped_between_its_new_rows_and_the_old_rows_removal_is_finished_by_the_next_run(
        refresh_stopped_before_old_rows_go, model, then: str) -> None:
    tmp_path, new0 = refresh_stopped_before_old_rows_go.restore(), NEW0
    stopped = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert (stopped["status"], stopped["output_totals"]["purified"], stopped["output_totals"]["rejected"]) == (
        "failed", 2, 1)  # the old rows its new ones replace are not counted as held
    # both rows of each refreshed id are there, with the journal that says which is kept
    assert sorted(_rows(tmp_path, "data")["0.png"]) == sorted([_sha(image_bytes(16, 16, 0)), _sha(new0)])
    assert "1.png" in _rows(tmp_path, "data") and "1.png" in _rows(tmp_path, "rejects")
    assert set(read_journal(str(tmp_path / "out"), {}).rows) == {"0.png", "1.png"}
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=then == "refresh"))
    assert summary["status"] == "complete"
    # the stopped run's new rows stand: not said changed, not purified a third time, counted where they now are
    assert (summary["this_run"]["read"], summary["changed_inputs"]["examples"]) == (0, [])
    assert summary["output_totals"] == {"purified": 2, "rejected": 1,
                                        "before_this_run": {"purified": 2, "rejected": 1}}
    data, rejects = _each_id_once(tmp_path)
    assert set(data) == {"0.png", "2.png"} and set(rejects) == {"1.png"}
    assert data["0.png"] == _sha(new0)
    assert not os.path.exists(journal_path(str(tmp_path / "out")))


def test_a_refresh_stopped_before_its_first_row_keeps_the_old_row_and_says_it_changed(two_images_done, model,
                                                                                     monkeypatch) -> None:
    tmp_path = two_images_done.restore()
    rewritten(tmp_path / "in" / "0.png", image_bytes(16, 16, 80))
    run_stopped_at("build_pipeline", tmp_path, model, monkeypatch, refresh_changed=True)
    assert os.path.exists(journal_path(str(tmp_path / "out")))  # written before any row
    resumed = run_job(small_job_config(tmp_path, model))
    assert resumed["status"] == "complete" and resumed["changed_inputs"]["examples"] == ["0.png"]
    data, _ = _each_id_once(tmp_path)
    assert data["0.png"] == _sha(image_bytes(16, 16, 0))  # the old row, kept: no new one was written
    refreshed = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert refreshed["this_run"]["refreshed"]["rows_replaced"] == 1
    assert _each_id_once(tmp_path)[0]["0.png"] == _sha(image_bytes(16, 16, 80))


def test_the_warning_names_the_flag_and_a_dry_run_says_how_many_would_be_refreshed(two_images_done, model,
                                                                                 capsys) -> None:
    tmp_path = two_images_done.restore()
    rewritten(tmp_path / "in" / "1.png", image_bytes(16, 16, 90))
    capsys.readouterr()
    assert cli.main(small_job_argv(tmp_path, model, "--incremental", "--dry-run")) == 0
    assert "--refresh-changed purifies these inputs again" in capsys.readouterr().err
    assert cli.main(small_job_argv(tmp_path, model, "--refresh-changed", "--dry-run")) == 0
    out, err = capsys.readouterr()
    assert "would purify 1 changed input(s) again, replacing their 1 row(s) (e.g. 1.png)" in err
    assert "changed under the same name" not in err and "1 image file to read" in out
    assert not os.path.exists(journal_path(str(tmp_path / "out")))  # a dry run writes nothing
    assert json.loads((tmp_path / "out" / "_summary.json").read_text())["this_run"]["read"] == 2
    assert cli.main(small_job_argv(tmp_path, model, "--refresh-changed")) == 0
    out, err = capsys.readouterr()
    assert "refreshed 1 input(s) changed in place (--refresh-changed): 1 old row(s) replaced by new ones" in out
    assert "changed under the same name" not in err


@pytest.mark.parametrize(("other", "said"), [("--overwrite", "--refresh-changed and --overwrite contradict"),
                                             ("--input-moved", "--refresh-changed cannot be given with --input-moved")])
def test_refresh_changed_with_a_flag_it_cannot_go_with_is_refused(tmp_path, capsys, other: str, said: str) -> None:
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--refresh-changed", other]
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_new_row_never_lands_in_the_old_rows_file_so_a_stopped_refresh_of_a_lone_file_is_told_done(
        tmp_path, model, monkeypatch) -> None:
    """A part file's name is a hash of its ids: the one new row of a file purified alone before would be written over
    its old file, and after a stop no run could tell it new. A refresh run salts its names."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "0.png").write_bytes(image_bytes(16, 16, 0))
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    old_files = sorted(p.name for p in (tmp_path / "out" / "data").iterdir())
    rewritten_in_place(root / "0.png", image_bytes(16, 16, 40))
    run_stopped_at("deduplicate_output", tmp_path, model, monkeypatch, refresh_changed=True)
    assert len(list((tmp_path / "out" / "data").glob("part-*.parquet"))) == 2
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir() if p.name in old_files) == old_files
    resumed = run_job(small_job_config(tmp_path, model))
    assert (resumed["this_run"]["read"], resumed["changed_inputs"]["examples"]) == (0, [])
    assert _each_id_once(tmp_path)[0] == {"0.png": _sha(image_bytes(16, 16, 40))}


def test_a_changed_shard_that_cannot_be_read_now_keeps_its_rows_and_stays_said_changed(unreadable_shard_done,
                                                                                      model) -> None:
    tmp_path = unreadable_shard_done.restore()
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert summary["status"] == "complete"
    assert summary["this_run"]["refreshed"] == {"inputs": 1, "rows_replaced": 0, "rows_kept": 2}
    data, rejects = _each_id_once(tmp_path)
    assert set(data) == {"s.tar/0", "s.tar/1"} and set(rejects) == {"s.tar#unreadable"}
    later = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (later["changed_inputs"]["containers"], later["changed_inputs"]["container_rows"]) == (1, 2)


@pytest.mark.parametrize("step", ["unify_output_types", "_record_inputs_read_again"])
def test_a_refresh_stopped_after_its_old_rows_went_but_before_its_record_took_the_new_stamps_is_told_done(
        two_images_done, model, monkeypatch, step: str) -> None:
    """The journal is what tells a later run the new stamps of the inputs whose rows a stopped refresh replaced: gone
    before the record holds them, the next run said those inputs changed and a refresh purified them a third time."""
    tmp_path = two_images_done.restore()
    new0 = image_bytes(16, 16, 50)
    rewritten(tmp_path / "in" / "0.png", new0)
    run_stopped_at(step, tmp_path, model, monkeypatch, refresh_changed=True)
    assert _each_id_once(tmp_path)[0]["0.png"] == _sha(new0)  # the old row is gone already
    resumed = run_job(small_job_config(tmp_path, model))
    assert resumed["status"] == "complete"
    assert (resumed["this_run"]["read"], resumed["changed_inputs"]["examples"]) == (0, [])
    assert not os.path.exists(journal_path(str(tmp_path / "out")))
    later = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert (later["this_run"]["read"], later["this_run"]["refreshed"]["inputs"]) == (0, 0)


@pytest.mark.parametrize("step", ["deduplicate_output", "_record_inputs_read_again"])
def test_a_refresh_stopped_after_its_pipeline_leaves_a_shard_that_lost_a_member_done_as_a_complete_one_does(
        shard_of_three_done, model, monkeypatch, step: str) -> None:
    """A refreshed shard that no longer holds a member of its rows gives that id no new row (its old row stays). Stopped
    after its pipeline, the journal said the shard was not done (an id without its new row): every later run said it
    changed, for good, and the next --refresh-changed purified all its members again. The journal now notes the
    containers the run read to their end."""
    tmp_path, members = shard_of_three_done.restore(), SHARD_OF_THREE
    changed = {"0.png": image_bytes(16, 16, 60), "1.png": members["1.png"]}
    rewritten(tmp_path / "in" / "s.tar", tar_bytes(changed))  # 0 changed, 1 the same, 2 gone
    run_stopped_at(step, tmp_path, model, monkeypatch, refresh_changed=True)
    assert read_journal(str(tmp_path / "out"), {}).whole == {"s.tar"}
    resumed = run_job(small_job_config(tmp_path, model))
    assert (resumed["status"], resumed["this_run"]["read"], resumed["changed_inputs"]["containers"]) == ("complete", 0, 0)
    data, _ = _each_id_once(tmp_path)
    assert (data["s.tar/0"], data["s.tar/1"]) == (_sha(changed["0.png"]), _sha(members["1.png"]))
    assert data["s.tar/2"] == _sha(members["2.png"])  # the member it no longer holds keeps its row
    later = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert later["changed_inputs"]["containers"] == 0 and later["this_run"]["refreshed"]["inputs"] == 0
    assert (later["this_run"]["read"], later["this_run"]["containers_skipped_unread"]) == (0, 1)


SHARD_CHANGED = {"0.png": image_bytes(16, 16, 64), "1.png": SHARD_OF_THREE["1.png"], "3.png": image_bytes(16, 16, 65)}


@pytest.fixture(scope="module")
def shard_refresh_stopped_after_its_pipeline(shard_of_three_done, model) -> SavedRun:
    """`shard_of_three_done`'s shard rewritten as `SHARD_CHANGED` (0 changed, 1 the same, 2 gone, 3 added) and a
    --refresh-changed run stopped after its pipeline, in its end-of-run check."""
    folder = shard_of_three_done.restore()
    rewritten(folder / "in" / "s.tar", tar_bytes(SHARD_CHANGED))
    with pytest.MonkeyPatch.context() as patched:
        run_stopped_at("deduplicate_output", folder, model, patched, refresh_changed=True)
    return SavedRun(folder, "saved_stopped_after_its_pipeline")


def _next_incremental_run_records_the_shard_unread(tmp_path, model, monkeypatch) -> tuple[dict, dict]:
    """The --incremental run after a stopped refresh: complete, with no Ray, nothing read and the shard recorded from
    the journal's note of its read; the output's (data, rejects) by id, each id once."""
    no_ray_from_here_on(monkeypatch)
    resumed = run_job(small_job_config(tmp_path, model, incremental=True))
    run = resumed["this_run"]
    assert (resumed["status"], resumed["changed_inputs"]["containers"]) == ("complete", 0)
    assert (run["read"], run["containers_skipped_unread"], run["containers_recorded"]) == (0, 1, 1)
    return _each_id_once(tmp_path)


def test_a_shard_a_stopped_refresh_read_to_its_end_is_recorded_by_the_next_run_without_reading_it(
        shard_refresh_stopped_after_its_pipeline, model, monkeypatch) -> None:
    """The run after a refresh stopped in its end-of-run check took the shard's new stamp from the journal, but the
    `_containers/` ledger still held the shard's earlier version: that run started Ray and read the shard whole, every
    id of it skipped, only to record it. The journal now notes what the stopped run's read gave."""
    tmp_path, changed = shard_refresh_stopped_after_its_pipeline.restore(), SHARD_CHANGED
    data, rejects = _next_incremental_run_records_the_shard_unread(tmp_path, model, monkeypatch)
    assert rejects == {} and set(data) == {"s.tar/0", "s.tar/1", "s.tar/2", "s.tar/3"}
    assert (data["s.tar/0"], data["s.tar/3"]) == (_sha(changed["0.png"]), _sha(changed["3.png"]))
    (entry,) = read_ledger(str(tmp_path / "out"), {}).values()
    assert (entry.records, entry.leftover) == (3, ("s.tar/2",))  # the member it no longer gives keeps its old row
    later = run_job(small_job_config(tmp_path, model, refresh_changed=True))["this_run"]
    assert (later["read"], later["containers_skipped_unread"], later["refreshed"]["inputs"]) == (0, 1, 0)


def test_a_shard_a_stopped_refresh_read_to_its_end_is_read_again_when_the_output_lacks_a_row_of_it(
        shard_refresh_stopped_after_its_pipeline, model) -> None:
    """The journal's note of the read is taken only where the output holds exactly the ids it gave: a member
    without a row (here its row taken out after the stop) is read and purified, never skipped."""
    tmp_path, changed = shard_refresh_stopped_after_its_pipeline.restore(), SHARD_CHANGED
    (part,) = [p for p in (tmp_path / "out" / "data").glob("part-*.parquet")
               if "s.tar/3" in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    table = pq.read_table(part)
    pq.write_table(table.filter(pc.not_equal(table.column("id"), "s.tar/3")), part)
    resumed = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (resumed["status"], resumed["this_run"]["read"], resumed["this_run"]["purified"]) == ("complete", 1, 1)
    assert resumed["this_run"]["containers_skipped_unread"] == 0
    data, _ = _each_id_once(tmp_path)
    assert set(data) == {"s.tar/0", "s.tar/1", "s.tar/2", "s.tar/3"}
    assert data["s.tar/3"] == _sha(changed["3.png"])


@pytest.fixture(scope="module")
def shard_refresh_stopped_in_its_pipeline(tmp_path_factory, model, ray_local) -> tuple[SavedRun, dict[str, bytes]]:
    """A shard of three members purified; then rewritten (0 changed, 1 and 2 the same, 3 added: its members returned)
    and a --refresh-changed run stopped in its pipeline after its last batch (a failure recorded there, as a Ctrl-C's
    is), before it noted the shard read whole."""
    folder = tmp_path_factory.mktemp("shard_refresh_stopped_in_its_pipeline")
    with pytest.MonkeyPatch.context() as patched:
        changed = shard_refresh_stopped_after_its_last_batch(folder, model, patched)
    journal = read_journal(str(folder / "out"), {})
    assert journal.whole == frozenset() and set(journal.read) == {"s.tar"}
    return SavedRun(folder), changed


def test_a_shard_a_refresh_stopped_in_its_pipeline_read_to_its_end_is_recorded_without_reading_it_when_all_its_rows_are(
        shard_refresh_stopped_in_its_pipeline, model, monkeypatch) -> None:
    saved, changed = shard_refresh_stopped_in_its_pipeline
    tmp_path = saved.restore()
    data, _ = _next_incremental_run_records_the_shard_unread(tmp_path, model, monkeypatch)
    assert data == {f"s.tar/{k}": _sha(changed[f"{k}.png"]) for k in range(4)}


def test_a_shard_a_refresh_stopped_in_its_pipeline_left_with_an_old_row_stays_said_changed_until_refreshed(
        shard_refresh_stopped_in_its_pipeline, model) -> None:
    """A member whose new row was not written (its row taken out here after the stop) keeps its old row: the shard
    keeps its earlier stamp, said changed, as when the next run read it whole only to skip each of its done ids, and
    the next --refresh-changed reads it and replaces that row."""
    saved, changed = shard_refresh_stopped_in_its_pipeline
    tmp_path = saved.restore()
    old_files = read_journal(str(tmp_path / "out"), {}).rows["s.tar/0"]
    (part,) = [p for p in (tmp_path / "out" / "data").glob("part-*.parquet") if f"data/{p.name}" not in old_files
               and "s.tar/0" in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    table = pq.read_table(part)
    pq.write_table(table.filter(pc.not_equal(table.column("id"), "s.tar/0")), part)
    resumed = run_job(small_job_config(tmp_path, model, incremental=True))
    assert (resumed["status"], resumed["changed_inputs"]["containers"]) == ("complete", 1)
    assert _each_id_once(tmp_path)[0]["s.tar/0"] == _sha(image_bytes(16, 16, 10))  # the old row, kept
    refreshed = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert (refreshed["status"], refreshed["this_run"]["refreshed"]["inputs"]) == ("complete", 1)
    data, _ = _each_id_once(tmp_path)
    assert data == {f"s.tar/{k}": _sha(changed[f"{k}.png"]) for k in range(4)}


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("kind", ["file", "shard"])
def test_an_input_touched_after_a_stopped_refresh_is_compared_with_its_new_row_not_the_old_one_going(
        tmp_path, model, monkeypatch, kind: str) -> None:
    """After a refresh stopped before its end-of-run check, an id has its old row and its new one until the next run's
    start applies the journal. That run's planning compares an input whose listing changed (touched, copied over) with
    its rows: it read both, found them unlike, and said the input changed (and --refresh-changed purified it again),
    though its bytes are those of its new row."""
    root = tmp_path / "in"
    root.mkdir()
    name, old = ("0.png", image_bytes(16, 16, 0)) if kind == "file" else ("s.tar", tar_bytes({"0.png": image_bytes(
        16, 16, 1), "1.png": image_bytes(16, 16, 2)}))
    (root / name).write_bytes(old)
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    new = image_bytes(16, 16, 50) if kind == "file" else tar_bytes({"0.png": image_bytes(16, 16, 51),
                                                                   "1.png": image_bytes(16, 16, 2)})
    rewritten_in_place(root / name, new)
    run_stopped_at("deduplicate_output", tmp_path, model, monkeypatch, refresh_changed=True)
    rewritten_in_place(root / name, new)  # touched (copied over, uploaded again): the same bytes, another stamp
    summary = run_job(small_job_config(tmp_path, model, refresh_changed=True))
    assert summary["status"] == "complete"
    assert (summary["this_run"]["read"], summary["this_run"]["refreshed"]["inputs"]) == (0, 0)
    assert summary["changed_inputs"]["examples"] == []
    data, _ = _each_id_once(tmp_path)
    if kind == "file":
        assert data == {"0.png": _sha(new)}
    else:
        assert data["s.tar/0"] == _sha(image_bytes(16, 16, 51))


def test_the_journal_says_which_containers_its_run_read_to_their_end(tmp_path) -> None:
    rows = {"s.tar/0": ["data/part-a.parquet"], "s.tar/2": ["data/part-a.parquet"], "t.tar/0": ["data/part-a.parquet"]}
    inputs = {"s.tar": ("tar", "v2", ["s.tar/0", "s.tar/2"]), "t.tar": ("tar", "v2", ["t.tar/0"])}
    read = {"s.tar": ContainerRead("/in/s.tar", 3072, "1.5:7", 2, "ab" * 32, leftover=("s.tar/9",))}
    journal = Journal(rows, inputs, "salt", frozenset({"s.tar"}), read)
    write_journal(str(tmp_path), {}, journal)
    assert read_journal(str(tmp_path), {}) == journal
    # the note of a read is not needed to apply the journal: one that cannot be read is left out, the journal read
    payload = json.loads(open(journal_path(str(tmp_path))).read())
    payload["read"]["s.tar"]["records"] = "many"
    open(journal_path(str(tmp_path)), "w").write(json.dumps(payload))
    assert read_journal(str(tmp_path), {}) == Journal(rows, inputs, "salt", frozenset({"s.tar"}))
    # s.tar/2 has no new row (a member s.tar no longer gives), t.tar/0 neither: s.tar was read to its end, t.tar not
    assert journal.new_stamps({"s.tar/0"}) == {"s.tar": ("tar", "v2")}
    assert Journal(rows, inputs, "salt").new_stamps({"s.tar/0"}) == {}


def test_the_command_line_does_not_say_rows_kept_of_a_shard_that_cannot_be_read_are_gone_from_it(
        unreadable_shard_done, model, capsys) -> None:
    tmp_path = unreadable_shard_done.restore()
    assert cli.main(small_job_argv(tmp_path, model, "--refresh-changed")) == 0
    out = capsys.readouterr().out
    assert "0 old row(s) replaced by new ones, 2 kept (their tar/Parquet/zip file, read again, gave no new row" in out
    assert "no longer in their" not in out


def test_a_stopped_refresh_whose_count_is_cut_short_says_no_more_than_the_output_can_hold(two_images_done, model,
                                                                                         monkeypatch) -> None:
    """A count cut short gives the least the output holds ("at least"): the old rows the new ones may replace are
    taken out too, as for the rejects --retry-rejects reads again, not left in."""
    import pipeline.stopped_run as stopped_run_module

    tmp_path = two_images_done.restore()
    rewritten(tmp_path / "in" / "0.png", image_bytes(16, 16, 55))

    def unlisted(*args, **kwargs):
        raise OSError("listing refused")

    monkeypatch.setattr(stopped_run_module, "part_names", unlisted)  # the stop's count only: the job's is its own
    run_stopped_at("deduplicate_output", tmp_path, model, monkeypatch, refresh_changed=True)
    monkeypatch.undo()
    stopped = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert (stopped["output_totals"]["purified"], stopped["output_totals"]["rejected"]) == (2, 0)
    resumed = run_job(small_job_config(tmp_path, model))
    assert resumed["output_totals"]["purified"] == 2


def test_an_older_versions_superseded_reject_of_a_refreshed_shard_is_removed_not_counted_as_kept(tmp_path) -> None:
    """A refreshed shard's rows include an older version's one reject for its numbered names ('s.tar/cat' for
    cat.0.png): the shard's new read gives no row of it and says it superseded, and the end-of-run check removes it.
    It is not a row kept (this_run.refreshed.rows_kept, the ledger's leftover)."""
    from pipeline.sources import reject_record
    from pipeline.stages import _rejects_table

    out = tmp_path / "out"
    (out / "rejects").mkdir(parents=True)
    pq.write_table(_rejects_table([reject_record("s.tar/cat", "s.tar", "cannot decode", "decode")]),
                   out / "rejects" / "part-old.parquet")
    (out / "data").mkdir()
    pq.write_table(pa.table({"id": ["s.tar/cat.0"]}), out / "data" / "part-new.parquet")
    rows = deduplicate_output(str(out), {}, written=["data/part-new.parquet"], resolved={"s.tar/cat"},
                              journal={"s.tar/cat": ["rejects/part-old.parquet"]})
    assert (rows.stale_rejects_removed, rows.rejected, rows.purified) == (1, 0, 1)
    assert (rows.refreshed, rows.refresh_left) == (0, frozenset())


def test_the_journal_names_each_part_file_once_and_reads_back_as_written(tmp_path) -> None:
    """The journal groups the ids by the part file holding their old rows: one entry per id naming its files made a
    journal of 10^6 ids (one changed Parquet file) 96 MB, seconds to write and read."""
    names = [f"data/part-{k:020d}.parquet" for k in range(4)]
    rows = {f"big.parquet#{i}": [names[i % 4]] for i in range(1000)}
    rows.update({"a.png": [names[0], "rejects/part-r.parquet"], "lone": []})  # in two files; in none
    inputs = {"big.parquet": ("parquet", "v2", sorted(i for i in rows if i.startswith("big"))),
              "a.png": ("files", "v2", ["a.png"]), "gone.tar": ("tar", "v3", [])}
    journal = Journal(rows, inputs, "salt")
    write_journal(str(tmp_path), {}, journal)
    text = (tmp_path / "_refresh" / "journal.json").read_text()
    assert [text.count(name) for name in names] == [1, 1, 1, 1]
    assert read_journal(str(tmp_path), {}) == journal


# What the previous version (journal format 1) wrote: each id with its part files, indented.
FORMAT_1 = """{
 "format": 1,
 "rows": {
  "0.png": [
   "data/part-old.parquet"
  ],
  "s.tar/1": [
   "data/part-old.parquet",
   "rejects/part-r.parquet"
  ]
 },
 "inputs": {
  "0.png": [
   "files",
   "v2",
   [
    "0.png"
   ]
  ]
 },
 "salt": "abc"
}"""


def test_a_journal_the_previous_version_wrote_is_read(tmp_path) -> None:
    (tmp_path / "_refresh").mkdir()
    (tmp_path / "_refresh" / "journal.json").write_text(FORMAT_1)
    assert read_journal(str(tmp_path), {}) == Journal(
        {"0.png": ["data/part-old.parquet"], "s.tar/1": ["data/part-old.parquet", "rejects/part-r.parquet"]},
        {"0.png": ("files", "v2", ["0.png"])}, "abc")
    (tmp_path / "_refresh" / "journal.json").write_text(json.dumps({"format": 3, "parts": []}))
    with pytest.raises(JobError, match="not a journal this version reads"):
        read_journal(str(tmp_path), {})


def _as_format_1(journal: Journal) -> str:
    """`journal` as the previous version wrote it (`FORMAT_1`)."""
    return json.dumps({"format": 1, "rows": {i: sorted(names) for i, names in sorted(journal.rows.items())},
                       "inputs": {i: [kind, stamp, sorted(ids)] for i, (kind, stamp, ids) in sorted(journal.inputs.items())},
                       "salt": journal.salt}, indent=1)


def test_an_output_left_mid_refresh_by_the_previous_version_is_completed(refresh_stopped_before_old_rows_go,
                                                                         model) -> None:
    tmp_path, new0 = refresh_stopped_before_old_rows_go.restore(), NEW0
    path = tmp_path / "out" / "_refresh" / "journal.json"
    path.write_text(_as_format_1(read_journal(str(tmp_path / "out"), {})))
    assert json.loads(path.read_text())["format"] == 1
    summary = run_job(small_job_config(tmp_path, model))
    assert summary["status"] == "complete"
    assert (summary["this_run"]["read"], summary["changed_inputs"]["examples"]) == (0, [])
    data, rejects = _each_id_once(tmp_path)
    assert set(data) == {"0.png", "2.png"} and set(rejects) == {"1.png"}
    assert data["0.png"] == _sha(new0)
    assert not path.exists()


@pytest.mark.usefixtures("ray_local")
def test_planning_a_refresh_reads_each_part_files_ids_and_the_ledger_once(tmp_path, model, monkeypatch) -> None:
    """The done ids, the files holding the rows a stopped refresh replaced, and those holding the rows this one
    replaces are all found in one reading of the part files' id columns, and the units left to read are worked out
    once: each reading is seconds at 10^6 rows, and a few requests a part file on an object store."""
    import pipeline.output as output_module
    import pipeline.plan as plan_module

    root = image_folder(tmp_path / "in", 4)
    (root / "s.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(16, 16, 40 + k) for k in range(2)}))
    assert run_job(small_job_config(tmp_path, model, write_batch=2))["status"] == "complete"
    rewritten_in_place(root / "0.png", image_bytes(16, 16, 72))
    run_stopped_at("deduplicate_output", tmp_path, model, monkeypatch, refresh_changed=True, write_batch=2)
    rewritten_in_place(root / "3.png", image_bytes(16, 16, 73))
    rewritten_in_place(root / "s.tar", tar_bytes({f"{k}.png": image_bytes(16, 16, 50 + k) for k in range(2)}))
    reads: Counter[str] = Counter()
    part_index, read_ledger = output_module._part_index, plan_module.read_ledger

    def counted(fs, path):
        reads[path] += 1
        return part_index(fs, path)

    def ledger_counted(*args):
        reads["ledger"] += 1
        return read_ledger(*args)

    monkeypatch.setattr(output_module, "_part_index", counted)
    monkeypatch.setattr(plan_module, "read_ledger", ledger_counted)
    plan = plan_module.plan_job(small_job_config(tmp_path, model, refresh_changed=True, write_batch=2))
    assert set(plan.refresh.rows) == {"3.png", "s.tar/0", "s.tar/1"}
    parts = {str(p) for p in (tmp_path / "out").glob("*/part-*.parquet")}
    assert len(parts) >= 4 and set(reads) == parts | {"ledger"}  # 3 files of 2 rows, the stopped run's new one
    assert set(reads.values()) == {1}
    assert "0.png" in plan.done and "3.png" not in plan.done  # the stopped run's new row stands; 3.png is read again
    assert [u.kind for u in plan.units].count("tar") == 1


def test_the_journal_rule_goes_over_the_journal_a_fixed_number_of_times_not_once_a_part_file(tmp_path) -> None:
    """Each part file's ids are looked up in the journal, not the journal walked for each part file: that was
    8 CPU seconds for a journal of 10^5 ids over 4,000 part files (bench/scale_bench.py start-refresh), minutes
    for a refresh of one Parquet file of 10^6 rows."""
    class Walked(dict):
        ids = 0

        def __iter__(self):
            Walked.ids += len(self)
            return super().__iter__()

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    for k in range(20):
        pq.write_table(pa.table({"id": [f"{k}-{i}" for i in range(5)]}), out / "data" / f"part-{k:02d}.parquet")
    pq.write_table(pa.table({"id": [f"{k}-0" for k in range(20)]}), out / "data" / "part-new.parquet")
    journal = Walked({f"{k}-{i}": [f"data/part-{k:02d}.parquet"] for k in range(20) for i in range(5)})
    rows = deduplicate_output(str(out), {}, written=["data/part-new.parquet"], journal=journal)
    assert (rows.refreshed, rows.purified, len(rows.refresh_left)) == (20, 100, 80)
    assert Walked.ids <= 3 * len(journal)
    Walked.ids = 0
    assert drop_superseded_rows(str(out), {}, journal) == 0  # applied already: nothing left to remove
    assert Walked.ids <= 3 * len(journal)
