"""Review of the changes since 75b7a7f (--retry-rejects, the end-of-run check, tar shards of Kaggle-style dotted names,
the ledger's container_ids, the lease watch, stages._png_name): one test per bug found (each failed before its fix),
and tests for the edge cases checked that worked."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.lease as output_lease
from pipeline.errors import JobError
from pipeline.job import run_job, run_status
from pipeline.lease import LEASE_FILE, OutputLease
from pipeline.ledger import ContainerRead, container_ids, write_ledger
from pipeline.output import deduplicate_output
from pipeline.plan import plan_job
from pipeline.sources import ReadUnit, discover, read_unit
from pipeline.sources.listing import _refuse_colliding_ids
from pipeline.stages import _png_name
from tests.jobutil import image_bytes, read_output, small_job_config, tar_bytes


def _shard_records(folder: Path, members: dict[str, bytes], skip: frozenset[str] = frozenset()) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s.tar").write_bytes(tar_bytes(members))
    (unit,) = discover(str(folder))
    return [r for r in read_unit(unit, skip_ids=skip) if r["kind"] in ("image", "reject")]


def _jpeg(seed: int) -> bytes:
    return image_bytes(8, 8, seed, "JPEG")


# --- tar shards of dotted names ---

def test_a_shard_gaining_a_second_image_of_a_name_does_not_give_its_first_again(tmp_path) -> None:
    # `tar rf s.tar dog.1.jpg` (or a shard re-cut with one more image) changes the id of the image already done
    first = {**{f"cat.{i}.jpg": _jpeg(i) for i in range(3)}, "dog.0.jpg": _jpeg(50)}
    done = frozenset(r["id"] for r in _shard_records(tmp_path / "v1", first))
    again = _shard_records(tmp_path / "v2", {**first, "dog.1.jpg": _jpeg(51)}, skip=done)
    assert [r["id"] for r in again if r.get("data") == _jpeg(50)] == []  # dog.0 was done: not read again


def test_the_label_of_a_name_with_one_image_in_its_shard_is_its_label(tmp_path) -> None:
    # a shard boundary of a sorted Kaggle tar can leave one image of a class in a shard
    records = _shard_records(tmp_path, {"cat.0.jpg": _jpeg(0), "cat.0.cls": b"0", "cat.1.jpg": _jpeg(1),
                                        "cat.1.cls": b"0", "dog.0.jpg": _jpeg(2), "dog.0.cls": b"1"})
    by_id = {r["id"]: r for r in records}
    assert by_id["s.tar/cat.0"]["meta"] == {"label": 0}
    assert by_id["s.tar/dog.0"]["meta"] == {"label": 1}


def test_a_mask_of_a_dotted_name_is_its_images_sidecar(tmp_path) -> None:
    records = _shard_records(tmp_path, {"cat.0.jpg": _jpeg(0), "cat.0.seg.png": image_bytes(8, 8, 1),
                                        "cat.1.jpg": _jpeg(2), "cat.1.seg.png": image_bytes(8, 8, 3)})
    assert sorted(r["id"] for r in records) == ["s.tar/cat.0", "s.tar/cat.1"]
    assert all("seg_png" in r["meta"] for r in records)


def test_a_webdataset_sample_without_a_plain_image_stays_one_reject(tmp_path) -> None:
    records = _shard_records(tmp_path, {"0001.seg.png": image_bytes(8, 8, 1), "0001.depth.png": image_bytes(8, 8, 2),
                                        "0001.cls": b"3"})
    assert [(r["id"], r["kind"]) for r in records] == [("s.tar/0001", "reject")]  # one sample, one row (as before)


def test_a_dotted_key_and_an_old_shape_skip_id_are_different_ids(tmp_path) -> None:
    # an output of the old version holds reject 's.tar/cat' for the whole shard; the new keys are not skipped by it
    records = _shard_records(tmp_path, {"cat.0.jpg": _jpeg(0), "cat.1.jpg": _jpeg(1)}, skip=frozenset({"s.tar/cat"}))
    assert sorted(r["id"] for r in records) == ["s.tar/cat.0", "s.tar/cat.1"]


# --- ids holding '#' ---

@pytest.mark.parametrize(("container", "loose"), [("parquet", "a#b/t.parquet#0"), ("tar", "a#b/s.tar#unreadable")])
def test_a_file_named_as_a_container_row_is_refused_in_a_folder_with_a_hash(container, loose) -> None:
    path = "/r/a#b/t.parquet" if container == "parquet" else "/r/a#b/s.tar"
    with pytest.raises(ValueError, match="rename them"):
        _refuse_colliding_ids([ReadUnit(container, (path,), "/r", (1,), ("x",))], [f"/r/{loose}"], "/r")


def test_container_ids_take_dotted_keys_and_hashes_inside_keys() -> None:
    units = [ReadUnit("tar", ("/r/a#1/s.tar",), "/r", (1,), ("x",)), ReadUnit("parquet", ("/r/t.parquet",), "/r")]
    done = ["a#1/s.tar/cat.0", "a#1/s.tar/k#7", "a#1/s.tar#unreadable", "t.parquet#3", "t.parquet#unreadable", "x.png"]
    assert container_ids(done, units) == {"/r/a#1/s.tar": ["a#1/s.tar/cat.0", "a#1/s.tar/k#7"],
                                          "/r/t.parquet": ["t.parquet#3"]}


# --- planning over an output a complete run left (built by hand: no Ray) ---

def _finished_output(tmp_path: Path, model: str, inputs: dict[str, bytes], rejected: set[str],
                     extra_rejects: tuple[str, ...] = ()) -> None:
    """tmp_path/in holds `inputs`; tmp_path/out is what a complete run over it left: every id in data/ but those in
    `rejected` (and `extra_rejects`, ids no input gives now) in rejects/, and each container in the ledger."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir(parents=True, exist_ok=True)
    for name, data in inputs.items():
        (root / name).write_bytes(data)
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record
    ids, ledger = [], {}
    for unit in discover(str(root)):
        records = list(read_unit(unit))
        ids += [r["id"] for r in records if r["kind"] in ("image", "reject")]
        if unit.kind != "files":
            whole = records[-1]["container"]
            ledger[unit.paths[0]] = ContainerRead(unit.paths[0], unit.sizes[0], unit.stamps[0], whole["records"],
                                                  whole["ids_sha256"])
    for folder, part in (("data", [i for i in ids if i not in rejected]),
                         ("rejects", [i for i in ids if i in rejected] + list(extra_rejects))):
        (out / folder).mkdir(parents=True)
        pq.write_table(pa.table({"id": part, "error": ["an earlier run's"] * len(part)}), out / folder / "part-0.parquet")
    (out / "_job.json").write_text(json.dumps(record))
    (out / "_summary.json").write_text(json.dumps({"status": "complete"}))
    write_ledger(str(out), {}, ledger)


@pytest.mark.parametrize("flag", ["incremental", "retry_rejects"])
def test_a_container_whose_unreadable_reject_is_in_the_output_is_read_again(tmp_path, model, flag) -> None:
    shard = tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(3)})
    _finished_output(tmp_path, model, {"s.tar": shard}, rejected=set(), extra_rejects=("s.tar#unreadable",))
    plan = plan_job(small_job_config(tmp_path, model, **{flag: True}), dry_run=True)
    # README: "one that could not be read to its end, with an #unreadable reject, is read again by each run"
    assert plan.skipped_containers == 0 and [u.kind for u in plan.units] == ["tar"]


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _parquet(rows: list[bytes]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(rows, pa.binary())}), buf)
    return buf.getvalue()


def test_retry_rejects_reads_again_the_containers_with_rejects_and_only_those(tmp_path, model) -> None:
    inputs = {"t.parquet": _parquet([image_bytes(8, 8, k) for k in range(3)]),
              "d.zip": _zip({"a.png": image_bytes(8, 8, 5), "b.png": b"junk"}),
              "u.tar": tar_bytes({"0.png": image_bytes(8, 8, 6)})}
    _finished_output(tmp_path, model, inputs, rejected={"t.parquet#1", "d.zip/b.png"})
    plain = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert plain.skipped_containers == 3 and plain.units == []
    retry = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True)
    assert retry.retry == {"t.parquet#1", "d.zip/b.png"}
    assert retry.skipped_containers == 1 and sorted(u.kind for u in retry.units) == ["parquet", "zip"]
    # each is read with its purified ids skipped, its rejects not
    done = {Path(path).name: sorted(ids) for path, ids in retry.container_done.items()}
    assert done == {"t.parquet": ["t.parquet#0", "t.parquet#2"], "d.zip": ["d.zip/a.png"]}
    assert retry.describe()["output"] == {"state": "incremental", "purified": 4, "rejected": 2, "rejects_to_retry": 2,
                                          "rejects_to_retry_image_files": 0, "rejects_to_retry_in_containers": 2}


def test_a_dry_retry_of_a_complete_output_whose_input_folder_is_now_empty(tmp_path, model, capsys) -> None:
    from pipeline.cli import print_plan

    _finished_output(tmp_path, model, {"a.png": image_bytes(8, 8, 1), "b.png": b"junk"}, rejected={"b.png"})
    for name in ("a.png", "b.png"):
        (tmp_path / "in" / name).unlink()
    plan = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True)
    assert plan.units == [] and plan.retry == {"b.png"}
    print_plan(plan.describe())
    printed = capsys.readouterr().out
    # it said "1 rejected input will be read again", of an input the folder no longer holds
    assert ("--retry-rejects: 0 of the output's 1 reject would be read again from the input; 1 is not in the input and "
            "keeps its reject row") in printed and "0 image files to read" in printed


def test_a_dry_retry_says_how_many_rejects_the_input_still_gives_and_where(tmp_path, model, capsys) -> None:
    from pipeline.cli import print_plan

    # it said "6 rejected inputs will be read again" of 6 rejects of which the input gives 2: the run retried 2 and
    # said "4 not found in the input"
    _finished_output(tmp_path, model, {"a.png": image_bytes(8, 8, 1), "b.png": b"junk", "c.png": b"junk too",
                                       "s.tar": tar_bytes({"0.png": image_bytes(8, 8, 2), "1.png": b"junk"})},
                     rejected={"b.png", "c.png", "s.tar/1"}, extra_rejects=("gone.png", "old.tar/3", "u.tar#unreadable"))
    (tmp_path / "in" / "c.png").unlink()
    report = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True).describe()
    assert {k: v for k, v in report["output"].items() if k.startswith("rejects_to_retry")} == {
        "rejects_to_retry": 6, "rejects_to_retry_image_files": 1, "rejects_to_retry_in_containers": 1}
    print_plan(report)
    assert ("  --retry-rejects: 2 of the output's 6 rejects would be read again from the input (1 image file, 1 in "
            "tar/Parquet/zip files, each found or not as its file is read; counted below as inputs to read); 4 are not "
            "in the input and keep their reject rows\n") in capsys.readouterr().out


# --- the end-of-run check ---

def _part(folder: Path, name: str, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids}), folder / f"part-{name}.parquet")


def test_the_end_of_run_check_of_an_empty_or_missing_output(tmp_path) -> None:
    rows = deduplicate_output(str(tmp_path / "out"), {}, retried={"x"}, resolved={"s.tar#unreadable"})
    assert (rows.purified, rows.rejected, rows.duplicates_removed, rows.retried_purified, rows.retried_rejected,
            rows.stale_rejects_removed) == (0, 0, 0, 0, 0, 0)


def test_an_output_of_only_rejects_all_retried_and_all_purified_now(tmp_path) -> None:
    out = tmp_path / "out"
    _part(out / "rejects", "a", ["x", "y", "s.tar#unreadable"])  # an earlier run's, all rejects
    _part(out / "data", "z", ["x", "y"])  # this run's; its name sorts last
    rows = deduplicate_output(str(out), {}, written=["data/part-z.parquet"], retried={"x", "y", "s.tar#unreadable"},
                              resolved={"s.tar#unreadable"})
    assert (rows.purified, rows.rejected, rows.duplicates_removed) == (2, 0, 0)
    assert (rows.retried_purified, rows.retried_rejected, rows.stale_rejects_removed) == (2, 0, 1)
    replaced = rows.retried_purified + rows.retried_rejected + rows.stale_rejects_removed
    assert run_status(2, 2, 0, 3, rows.purified + rows.rejected, replaced) == "complete"
    assert not (out / "rejects" / "part-a.parquet").exists()  # every row of it went: the file too


# --- stages._png_name ---

@pytest.mark.parametrize(("id_", "name"), [
    ("s.tar/cat.0", "cat.0.png"), ("cats/a.JPG", "a.png"), ("t.parquet#3", "t.parquet_3.png"), ("d.zip/x/b.jpeg", "b.png"),
    ("s.tar/0001", "0001.png"), ("odd.svg", "odd.svg.png"), ("a#b/c.png", "c.png"),
])
def test_an_output_image_is_named_after_its_own_id(id_, name) -> None:
    assert _png_name(id_) == name


# --- the lease watch ---

def _foreign_lease(out: Path, **fields) -> bytes:
    import time

    record = {"run_id": "0ther", "host": "batch-node-7", "pid": 4242, "pid_namespace": output_lease._pid_namespace(),
              "started": time.time() - 4000, "heartbeat": time.time() - 600, **fields}
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_FILE).write_bytes(json.dumps(record).encode())
    return (out / LEASE_FILE).read_bytes()


def test_a_storage_error_while_watching_refuses_and_leaves_the_other_lease(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    theirs = _foreign_lease(out)

    def fetch(*args, **kwargs):
        raise OSError("503 Slow Down")

    monkeypatch.setattr(output_lease, "_fetch_lease", fetch)
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    with pytest.raises(JobError, match="503 Slow Down"):
        OutputLease(str(out), {}).acquire()
    assert (out / LEASE_FILE).read_bytes() == theirs


def test_the_same_run_refreshing_its_lease_during_the_watch_is_not_taken_over(tmp_path, monkeypatch) -> None:
    import time

    out = tmp_path / "out"
    _foreign_lease(out)
    calls = [0]

    def sleep(seconds: float) -> None:  # the holder's heartbeat lands during the watch, still 10 minutes behind ours
        calls[0] += 1
        if calls[0] == 2:
            _foreign_lease(out, heartbeat=time.time() - 599)

    monkeypatch.setattr(output_lease, "_sleep", sleep)
    monkeypatch.setattr(output_lease, "LEASE_SETTLE_S", 0.01)
    with pytest.raises(JobError, match="clocks of this machine and host batch-node-7 disagree"):
        OutputLease(str(out), {}).acquire()
    assert json.loads((out / LEASE_FILE).read_text())["run_id"] == "0ther"


# --- whole runs ---

@pytest.mark.usefixtures("ray_local")
def test_an_old_versions_reject_of_a_dotted_shard_goes_once_retry_reads_the_shard(tmp_path, model) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "x.png").write_bytes(image_bytes(8, 8, 1))
    (root / "junk.png").write_bytes(b"not an image")
    assert run_job(small_job_config(tmp_path, model))["status"] == "complete"
    # what the version before 9d48a82 left for s.tar: one reject for key 'cat', written beside junk.png's
    (part,) = (out / "rejects").glob("part-*.parquet")
    table = pq.read_table(part)
    old = table.to_pylist()[0] | {"id": "s.tar/cat", "source": f"{root}/s.tar:cat",
                                  "error": "expected exactly one image member for key cat, found 0.jpg, 1.jpg"}
    pq.write_table(pa.Table.from_pylist([old], schema=table.schema), out / "rejects" / "part-0ld.parquet")
    (root / "s.tar").write_bytes(tar_bytes({"cat.0.jpg": _jpeg(0), "cat.1.jpg": _jpeg(1)}))

    retried = run_job(small_job_config(tmp_path, model, retry_rejects=True))
    assert retried["status"] == "complete"
    data, rejects = read_output(str(out))
    assert {"s.tar/cat.0", "s.tar/cat.1"} <= set(data["id"])
    assert "s.tar/cat" not in set(rejects["id"])  # its images are purified now, each by its own id
    # and the shard, read whole and unchanged, is skipped by the next scheduled run
    assert run_job(small_job_config(tmp_path, model, incremental=True))["this_run"]["containers_skipped_unread"] == 1
