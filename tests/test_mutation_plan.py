"""Mutation-audit gaps in the planning of a run (pipeline/plan.py): the output's state and its refusals, the settings
an earlier run recorded, what is left to read, and the dry run's counts. Each test here kills a hand-made mutant that
every earlier fast test let through. No Ray: the planning is called directly (`plan_job(..., dry_run=True)` mostly),
over outputs built by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.output import JOB_FILE, SUMMARY_FILE
from pipeline.plan import JobPlan, plan_job
from tests.jobutil import image_bytes, small_job_config


def _images(folder: Path, names: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        (folder / name).write_bytes(image_bytes(8, 8, k + 1))
    return folder


def _part(out: Path, folder: str, ids: list[str], name: str = "0") -> None:
    (out / folder).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids}), out / folder / f"part-{name}.parquet")


def _output(out: Path, record: dict | None, data: Sequence[str] = (), rejects: Sequence[str] = (),
            status: str | None = "complete") -> Path:
    """What a run that wrote these rows left in `out` (built by hand: no Ray)."""
    out.mkdir(parents=True, exist_ok=True)
    if data:
        _part(out, "data", list(data))
    if rejects:
        _part(out, "rejects", list(rejects))
    if record is not None:
        (out / JOB_FILE).write_text(json.dumps(record))
    if status is not None:
        (out / SUMMARY_FILE).write_text(json.dumps({"status": status}))
    return out


def _to_read(plan: JobPlan) -> list[str]:
    return sorted(Path(p).name for u in plan.units if u.kind == "files" for p in u.paths)


def _record(tmp_path: Path, model: str, **kw) -> dict:
    return plan_job(small_job_config(tmp_path, model, **kw), dry_run=True).job_record


# --- the output's state ---

@pytest.mark.parametrize("folder", ["data", "rejects"])
def test_part_files_without_a_job_record_are_not_taken_for_a_new_output(tmp_path, model, folder) -> None:
    _images(tmp_path / "in")
    _output(tmp_path / "out", None, **{folder: ["a.png"]}, status=None)
    with pytest.raises(JobError, match=r"holds part files but no _job\.json: not an output of this job"):
        plan_job(small_job_config(tmp_path, model), dry_run=True)


def test_an_output_whose_only_rows_are_rejects_keeps_its_settings(tmp_path, model) -> None:
    # a run whose every input was rejected wrote rows all the same: its settings are not replaced by the next run's
    _images(tmp_path / "in")
    _output(tmp_path / "out", _record(tmp_path, model, steps=2), rejects=["a.png"], status="failed")
    with pytest.raises(JobError, match=r"written with other settings: steps 2 \(now 1\)"):
        plan_job(small_job_config(tmp_path, model), dry_run=True)


def test_overwrite_refuses_to_delete_the_users_files_in_rejects(tmp_path, model) -> None:
    _images(tmp_path / "in")
    out = _output(tmp_path / "out", _record(tmp_path, model), data=["a.png"])
    (out / "rejects").mkdir()
    (out / "rejects" / "mine.png").write_bytes(b"the user's")
    with pytest.raises(JobError, match=r"--overwrite would delete .*/rejects/, which holds 1 file\(s\)"):
        plan_job(small_job_config(tmp_path, model, overwrite=True), dry_run=True)
    assert (out / "rejects" / "mine.png").exists()


# --- an older version's record ---

@pytest.mark.parametrize("group, fields", [("settings", ("large_images", "clip_denoised")),
                                           ("decoding", ("exif_transpose",)),
                                           ("model_flags", ("use_new_attention_order", "resblock_updown"))])
def test_a_record_without_fields_added_since_takes_their_defaults(tmp_path, model, group, fields) -> None:
    # an output an older version wrote: each field added since is missing from its record, and that version did what
    # the field's default does; refused, a scheduled --incremental run stopped at the upgrade
    _images(tmp_path / "in")
    record = _record(tmp_path, model)
    for name in fields:
        del record[group][name]
    _output(tmp_path / "out", record, data=["a.png"])
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert (plan.output_state, _to_read(plan)) == ("incremental", ["b.png"])


# --- an output made otherwise ---

def test_an_output_made_with_another_checkpoint_is_refused(tmp_path, model) -> None:
    _images(tmp_path / "in")
    record = _record(tmp_path, model)
    record["checkpoint_sha256"] = "0" * 64  # another model's weights (the same flags and canvas)
    _output(tmp_path / "out", record, data=["a.png"])
    with pytest.raises(JobError, match=r"written with other checkpoint_sha256: checkpoint_sha256 '0{64}' "
                                       r"\(now '[0-9a-f]{64}'\)"):
        plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)


def test_the_refusal_names_only_the_settings_that_differ(tmp_path, model) -> None:
    _images(tmp_path / "in")
    _output(tmp_path / "out", _record(tmp_path, model, steps=3, seed=5), data=["a.png"])
    with pytest.raises(JobError) as refused:
        plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert "written with other settings: seed 5 (now 0), steps 3 (now 1); use another output" in str(refused.value)


# --- resume or incremental ---

@pytest.mark.parametrize("status, state", [("running", "resume"), ("interrupted", "resume"), ("failed", "resume"),
                                           ("inconsistent", "resume"), (None, "resume")])
def test_an_unfinished_output_is_resumed_without_a_flag(tmp_path, model, status, state) -> None:
    _images(tmp_path / "in")
    _output(tmp_path / "out", _record(tmp_path, model), data=["a.png"], status=status)
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    assert (plan.output_state, _to_read(plan)) == (state, ["b.png"])


@pytest.mark.parametrize("flag", ["incremental", "retry_rejects", "refresh_changed"])
def test_a_complete_output_is_added_to_with_each_flag_that_asks_for_it(tmp_path, model, flag) -> None:
    _images(tmp_path / "in")
    _output(tmp_path / "out", _record(tmp_path, model), data=["a.png"])
    with pytest.raises(JobError, match="already holds a complete run; pass --incremental"):
        plan_job(small_job_config(tmp_path, model), dry_run=True)
    plan = plan_job(small_job_config(tmp_path, model, **{flag: True}), dry_run=True)
    assert (plan.output_state, _to_read(plan)) == ("incremental", ["b.png"])


def test_an_output_storage_cannot_read_stops_the_planning_with_a_job_error(tmp_path, model, monkeypatch) -> None:
    import pipeline.plan as plan_module

    _images(tmp_path / "in")
    _output(tmp_path / "out", _record(tmp_path, model), data=["a.png"], status="running")

    def failing(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plan_module, "output_index", failing)
    with pytest.raises(JobError, match=r"cannot use output .*out: .*Permission denied"):
        plan_job(small_job_config(tmp_path, model), dry_run=True)


# --- canvases ---

def test_a_canvas_smaller_than_one_multiple_is_offered_the_smallest_size_that_works(tmp_path, model) -> None:
    _images(tmp_path / "in")
    with pytest.raises(JobError) as refused:
        plan_job(small_job_config(tmp_path, model, canvas_size=2), dry_run=True)
    message = str(refused.value)
    assert message.startswith("--canvas-size 2 cannot be used: canvases must be multiples of 4 (the model halves its "
                              "input 1 times: multiples of 2; --pool 4: multiples of 4); use 4"), message
    assert message.endswith("use 4"), message


def test_a_pool_that_does_not_divide_the_models_own_canvas_names_the_pool(tmp_path, model) -> None:
    _images(tmp_path / "in")
    with pytest.raises(JobError, match=r"^pool factor 3 does not divide the model's canvas size 32: give a --pool that "
                                       r"divides it, or --canvas-size 30 or 36$"):
        plan_job(small_job_config(tmp_path, model, canvas_size=None, pool=3), dry_run=True)


# --- the dry run's counts ---

def test_an_image_file_of_exactly_max_image_mb_is_not_counted_over_it(tmp_path, model) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "exact.png").write_bytes(b"\0" * 2**20)
    (folder / "over.png").write_bytes(b"\0" * (2**20 + 1))
    described = plan_job(small_job_config(tmp_path, model, max_image_mb=1), dry_run=True).describe()["input"]
    assert (described["image_files_over_max_image_mb"], described["max_image_mb"]) == (1, 1)


def test_a_shard_of_exactly_in_memory_mb_is_held_in_memory_not_streamed(tmp_path, model) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "exact.tar").write_bytes(b"\0" * 2**20)
    (folder / "over.tar").write_bytes(b"\0" * (2**20 + 1))
    (folder / "unsized.tar").write_bytes(b"\0" * 10)
    plan = plan_job(small_job_config(tmp_path, model, in_memory_mb=1), dry_run=True)
    described = plan.describe()["input"]
    assert (described["tar_shards"], described["streamed"], described["in_memory_mb"]) == (3, 1, 1)
    assert (described["bytes"], described["unsized"]) == (2 * 2**20 + 11, 0)


def test_the_dry_run_counts_unsized_inputs_and_names_the_parquet_files_with_most_null_images(tmp_path, model) -> None:
    from dataclasses import replace

    from pipeline.sources import ReadUnit

    _images(tmp_path / "in")
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    root = str(tmp_path / "in")
    files = {name: f"{root}/{name}.parquet" for name in ("few", "most", "some", "none")}
    units = [ReadUnit("parquet", (path,), root, (None if name == "none" else 100,)) for name, path in files.items()]
    plan = replace(plan, units=units, rows_without_image={files["few"]: 1, files["most"]: 9, files["some"]: 4})
    described = plan.describe()["input"]
    assert (described["parquet_files"], described["bytes"], described["unsized"]) == (4, 300, 1)
    assert described["parquet_rows_without_image"] == {
        "rows": 14, "files": 3, "arrow_files": 0,
        "examples": [["most.parquet", 9], ["some.parquet", 4], ["few.parquet", 1]]}


@pytest.mark.parametrize("made_with, now, hint", [
    ("paper", "fast", "(the output's sampler settings are those of --recipe paper, the default)"),
    ("fast", "paper", "(the output's sampler settings are those of --recipe fast)"),
])
def test_the_recipe_hint_says_which_recipe_is_the_default(tmp_path, model, made_with, now, hint) -> None:
    from pipeline.settings import ZipSettings

    _images(tmp_path / "in")
    record = _record(tmp_path, model)
    record["settings"] = ZipSettings.recipe(made_with).for_prior({}).to_dict()  # a recipe as recorded: no flag besides
    _output(tmp_path / "out", record, data=["a.png"])
    config = JobConfig.from_recipe(now, input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model,
                                   canvas_size=32, incremental=True)
    with pytest.raises(JobError) as refused:
        plan_job(config, dry_run=True)
    assert f"{hint}; use another output" in str(refused.value), refused.value


def test_the_reading_refusal_says_to_leave_out_an_option_the_output_was_made_without(tmp_path, model) -> None:
    _images(tmp_path / "in")
    _output(tmp_path / "out", _record(tmp_path, model), data=["a.png"])
    with pytest.raises(JobError) as refused:
        plan_job(small_job_config(tmp_path, model, image_column="picture", incremental=True), dry_run=True)
    assert "image_column None (now 'picture')" in str(refused.value)
    assert "give no --image-column as its runs did, or use another output" in str(refused.value), refused.value


# --- what is left to read ---

def test_the_files_already_done_are_counted_and_an_input_all_done_leaves_no_read_task(tmp_path, model) -> None:
    _images(tmp_path / "in", ("a.png", "b.png", "c.png"))
    out = _output(tmp_path / "out", _record(tmp_path, model), data=["a.png"], rejects=["c.png"], status="running")
    described = plan_job(small_job_config(tmp_path, model), dry_run=True).describe()
    assert (described["output"]["purified"], described["output"]["rejected"]) == (1, 1)
    assert (described["input"]["image_files_to_read"], described["input"]["image_files_already_done"],
            described["input"]["read_tasks"]) == (1, 2, 1)
    _part(out, "data", ["b.png"], name="1")
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)  # a run with nothing to read starts no Ray
    assert (plan.units, plan.skipped_files, plan.describe()["input"]["read_tasks"]) == ([], 3, 0)


def test_a_named_prior_missing_from_the_installation_is_refused_not_replaced_by_random_weights(tmp_path,
                                                                                                 monkeypatch) -> None:
    import pipeline.plan as plan_module

    _images(tmp_path / "in")
    monkeypatch.setattr(plan_module, "shipped_prior_path", lambda name: tmp_path / "assets" / f"{name}_prior.pt")
    with pytest.raises(JobError, match=r"shipped prior 'gtsrb' is missing from this installation \(.*gtsrb_prior\.pt\)"):
        plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), prior="gtsrb"), dry_run=True)


@pytest.mark.parametrize("flag, done", [("incremental", ["s.tar/0.png", "s.tar#unreadable"]),
                                        ("retry_rejects", ["s.tar/0.png"])])
def test_a_shard_read_again_for_its_unreadable_reject_is_told_that_the_reject_is_done(tmp_path, model, flag,
                                                                                       done) -> None:
    # A shard that broke off is read again by every run; still broken, it gives its '#unreadable' reject again, which
    # a run must not write twice (the output would hold it twice: inconsistent). --retry-rejects replaces it instead.
    from tests.jobutil import tar_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "s.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(2)}))
    _output(tmp_path / "out", _record(tmp_path, model), data=["s.tar/0.png"], rejects=["s.tar#unreadable"])
    plan = plan_job(small_job_config(tmp_path, model, **{flag: True}), dry_run=True)
    (unit,) = plan.units
    assert plan.container_done == {unit.paths[0]: done}


# --- the model ---

def test_a_checkpoint_and_a_shipped_prior_together_are_refused(tmp_path, model) -> None:
    # the command line refuses both before the planning does; a program calling the API meets the planning's refusal
    _images(tmp_path / "in")
    with pytest.raises(JobError, match=r"give a checkpoint or a shipped prior, not both \(checkpoint '.*tiny\.pt', "
                                       r"prior 'gtsrb'\)"):
        plan_job(small_job_config(tmp_path, model, prior="gtsrb"), dry_run=True)


def test_a_prior_trained_on_early_timesteps_only_refuses_a_run_starting_beyond_them(tmp_path) -> None:
    import torch

    from pipeline.checkpoint import save_bundle
    from pipeline.model import UNetConfig, build_unet
    from tests.jobutil import TINY_FLAGS

    torch.manual_seed(0)
    path = tmp_path / "early.pt"
    save_bundle(path, build_unet(UNetConfig.from_flags(TINY_FLAGS)), meta={"max_timestep": 500})
    _images(tmp_path / "in")
    with pytest.raises(JobError, match=r"trained only on timesteps 0\.\.500 .* use start ≤ 0\.5"):
        plan_job(small_job_config(tmp_path, str(path), steps=20, start=1.0), dry_run=True)  # given: 1.0 is not moved
    assert plan_job(small_job_config(tmp_path, str(path), steps=20, start=0.5), dry_run=True).output_state == "new"


def test_the_model_flags_recorded_spell_out_the_upsampling_heads_a_default_leaves_to_num_heads() -> None:
    from pipeline.model import UNetConfig
    from pipeline.plan import model_architecture
    from tests.jobutil import TINY_FLAGS

    flags = {**TINY_FLAGS, "attention_resolutions": "16", "num_heads": 2}
    left = model_architecture(UNetConfig.from_flags({**flags, "num_heads_upsample": -1}))
    assert left == model_architecture(UNetConfig.from_flags({**flags, "num_heads_upsample": 2}))
    assert left["num_heads_upsample"] == 2


def test_a_dry_retry_counts_a_listed_shards_unreadable_reject_among_the_rejects_in_containers(tmp_path, model) -> None:
    from tests.jobutil import tar_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "s.tar").write_bytes(tar_bytes({f"{k}.png": image_bytes(8, 8, k) for k in range(2)}))
    _output(tmp_path / "out", _record(tmp_path, model), data=["s.tar/0.png"],
            rejects=["s.tar#unreadable", "s.tar/1.png", "gone.tar#unreadable"])
    output = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True).describe()["output"]
    assert (output["rejects_to_retry"], output["rejects_to_retry_image_files"],
            output["rejects_to_retry_in_containers"]) == (3, 0, 2)


def test_a_parquet_file_skipped_unread_is_not_warned_of_for_its_null_images(tmp_path, model) -> None:
    # the dry run warns of the rows whose image cell is null in the Parquet files the run will read; an unchanged one
    # an earlier complete run read whole is not read again, and its nulls are rejects already
    from pipeline.ledger import ContainerRead, write_ledger
    from pipeline.sources import discover, read_unit

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("old", "new"):
        pq.write_table(pa.table({"image": pa.array([image_bytes(8, 8, 1), None], pa.binary())}),
                       folder / f"{name}.parquet")
    (old,) = [u for u in discover(str(folder)) if u.paths[0].endswith("old.parquet")]
    records = list(read_unit(old))
    whole = records[-1]["container"]
    out = _output(tmp_path / "out", _record(tmp_path, model), data=["old.parquet#0"], rejects=["old.parquet#1"])
    write_ledger(str(out), {}, {old.paths[0]: ContainerRead(old.paths[0], old.sizes[0], old.stamps[0],
                                                            whole["records"], whole["ids_sha256"])})
    plan = plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    assert plan.skipped_containers == 1 and [Path(u.paths[0]).name for u in plan.units] == ["new.parquet"]
    assert plan.describe()["input"]["parquet_rows_without_image"] == {"rows": 1, "files": 1, "arrow_files": 0,
                                                                      "examples": [["new.parquet", 1]]}


# --- a --refresh-changed run stopped before its end (its journal) ---

def _stopped_refresh(tmp_path: Path, model: str, old: str, new: str) -> None:
    """An output whose --refresh-changed run wrote a.png's new row (in `new`: 'data' or 'rejects') and stopped before it
    removed the old one (in `old`), with the journal that says which row goes; b.png is done, its row untouched."""
    from pipeline.refresh import Journal, write_journal

    _images(tmp_path / "in", ("a.png", "b.png", "c.png"))
    out = _output(tmp_path / "out", _record(tmp_path, model), data=["b.png"], status="failed")
    _part(out, old, ["a.png"], name="1")
    _part(out, new, ["a.png"], name="2")
    write_journal(str(out), {}, Journal({"a.png": [f"{old}/part-1.parquet"]}, salt="5a1t"))


@pytest.mark.parametrize("old, new", [("data", "rejects"), ("rejects", "data")])
def test_an_id_a_stopped_refresh_gave_a_new_row_is_counted_where_its_new_row_is(tmp_path, model, old, new) -> None:
    _stopped_refresh(tmp_path, model, old, new)
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    counts = (plan.done_purified, plan.done_rejected)
    assert counts == ((1, 1) if new == "rejects" else (2, 0)) and _to_read(plan) == ["c.png"]


@pytest.mark.parametrize("old, new", [("data", "rejects"), ("rejects", "data")])
def test_retry_rejects_after_a_stopped_refresh_reads_again_the_ids_whose_new_row_is_a_reject(tmp_path, model, old,
                                                                                           new) -> None:
    _stopped_refresh(tmp_path, model, old, new)
    plan = plan_job(small_job_config(tmp_path, model, retry_rejects=True), dry_run=True)
    if new == "rejects":  # its reject is read again; the old purified row goes at the run's start
        assert (plan.retry, _to_read(plan)) == ({"a.png"}, ["a.png", "c.png"])
    else:  # purified now: its old reject is no reject to read again
        assert (plan.retry, _to_read(plan)) == (frozenset(), ["c.png"])
    assert plan.describe()["output"]["rejects_to_retry"] == len(plan.retry)


# --- an output inside its input: its own files are not the input's ---

def test_image_column_is_checked_on_the_inputs_parquet_not_on_the_outputs_own_part_file(tmp_path, model) -> None:
    # BUG (fixed here): the check of --image-column took the listing's first Parquet file before the output's own files
    # were left out of it; with the output inside the input ('in/clean' before 'in/train.parquet'), every run after the
    # first was refused: "--image-column picture: image column 'picture' not in Parquet columns ['id', 'image'] of
    # in/clean/data/part-0.parquet", a file the job wrote
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"picture": [image_bytes(8, 8, 1), image_bytes(8, 8, 2)]}), folder / "train.parquet")
    config = small_job_config(tmp_path, model, output=str(folder / "clean"), image_column="picture")
    _output(folder / "clean", plan_job(config, dry_run=True).job_record, data=["train.parquet#0"], status="running")
    plan = plan_job(config, dry_run=True)
    assert plan.output_state == "resume"
    assert [Path(u.paths[0]).name for u in plan.units] == ["train.parquet"]
    assert plan.describe()["input"]["excluded_output_files"] == 1


def test_the_partition_report_counts_the_inputs_files_not_the_outputs_own(tmp_path, model) -> None:
    # BUG (fixed here): the dry run's partition keys were counted over the listing before the output's own files were
    # left out of it: with the output inside the input, its part files were counted as input files in no key=value
    # folder ("1 of the 3 input files lies in no key=value folder")
    folder = tmp_path / "in"
    _images(folder / "year=2025", ("a.png",))
    _images(folder / "year=2026", ("b.png",))
    config = small_job_config(tmp_path, model, output=str(folder / "clean"), partitioning="hive")
    _output(folder / "clean", plan_job(config, dry_run=True).job_record, data=["year=2025/a.png"], status="running")
    plan = plan_job(config, dry_run=True)
    assert _to_read(plan) == ["b.png"]
    assert plan.partitions == {"keys": {"year": 2}, "files": 2, "files_outside": 0}


def test_refresh_changed_reads_again_an_image_file_rewritten_since_its_row(tmp_path, model) -> None:
    # its id is in data/, so done; --refresh-changed takes the ids of the inputs changed since out of those done
    import hashlib

    from pipeline.changes import write_record
    from tests.jobutil import rewritten_in_place

    folder = _images(tmp_path / "in")
    out = _output(tmp_path / "out", _record(tmp_path, model), status="complete")
    (out / "data").mkdir()
    pq.write_table(pa.table({"id": ["a.png", "b.png"], "source_sha256": [
        hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("a.png", "b.png")]}),
        out / "data" / "part-0.parquet")
    write_record(str(out), {}, plan_job(small_job_config(tmp_path, model, incremental=True)).input_record)
    rewritten_in_place(folder / "a.png", image_bytes(8, 8, 9))
    assert _to_read(plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)) == []
    plan = plan_job(small_job_config(tmp_path, model, refresh_changed=True), dry_run=True)
    assert (_to_read(plan), plan.skipped_files) == (["a.png"], 1)
