"""The job's fixes for the Dec 3 review: an output remembers the input it was made from (its ids are relative to it),
a checkpoint URL's credentials are not written down, a canvas the model cannot take stops the run before anything is
written, and an output whose first run wrote no row does not lock the corrected command out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.job as job
import pipeline.plan as plan_module
import pipeline.redaction as redaction
from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.job import run_job
from pipeline.output import JOB_FILE, SUMMARY_FILE
from pipeline.plan import plan_job
from tests.jobutil import image_bytes, small_job_config

SECRET = "c2VjcmV0LXNpZ25hdHVyZQ"  # what a presigned URL's signature stands for here


def _images(folder: Path, names: tuple[str, ...] = ("a.png", "b.png"), seed: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        (folder / name).write_bytes(image_bytes(8, 8, seed + k))


def _finished_output(out: Path, record: dict, ids: list[str], status: str = "complete") -> None:
    """What a run that purified `ids` left in `out` (built by hand: no Ray)."""
    if ids:
        (out / "data").mkdir(parents=True)
        pq.write_table(pa.table({"id": ids}), out / "data" / "part-0.parquet")
    out.mkdir(parents=True, exist_ok=True)
    (out / JOB_FILE).write_text(json.dumps(record))
    (out / SUMMARY_FILE).write_text(json.dumps({"status": status}))


def _files_to_read(plan: job.JobPlan) -> list[str]:
    return sorted(Path(p).name for u in plan.units if u.kind == "files" for p in u.paths)


# --- an output's input ---

def test_an_output_refuses_another_input_whose_same_named_files_it_would_skip(tmp_path, model) -> None:
    # The output of incoming/2026-12-01/; the next day's run pointed at incoming/2026-12-02/ (same file names, other
    # images) skipped every one of them as done: the day's images were lost without a word.
    day1, day2, out = tmp_path / "incoming" / "2026-12-01", tmp_path / "incoming" / "2026-12-02", tmp_path / "out"
    _images(day1)
    _images(day2, seed=7)
    record = plan_job(small_job_config(tmp_path, model, input=str(day1)), dry_run=True).job_record
    _finished_output(out, record, ["a.png", "b.png"])
    with pytest.raises(JobError) as err:
        plan_job(small_job_config(tmp_path, model, input=str(day2), incremental=True), dry_run=True)
    message = str(err.value)
    assert str(day1) in message and str(day2) in message  # what the output was made from, and what this run reads
    assert "relative" in message and "skipped" in message  # why: same-named files would be taken as done
    assert "another output" in message and "--input-moved" in message  # what to do


def test_the_same_input_written_another_way_is_the_same_input(tmp_path, model, monkeypatch) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _images(root)
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record
    _finished_output(out, record, ["a.png"])
    monkeypatch.chdir(tmp_path)
    for spelling in (f"file://{root}", f"{root}/", "./in", "in/", str(root / "a.png")):  # a file: ids relative to in/
        plan = plan_job(small_job_config(tmp_path, model, input=spelling, incremental=True), dry_run=True)
        assert plan.skipped_files == 1, spelling


def test_a_latest_link_moved_to_another_days_folder_is_another_input(tmp_path, model) -> None:
    # a scheduled job reading incoming/latest, a link the upload moves to each day's folder
    day1, day2, out = tmp_path / "2026-12-01", tmp_path / "2026-12-02", tmp_path / "out"
    _images(day1)
    _images(day2, seed=7)
    latest = tmp_path / "latest"
    latest.symlink_to(day1)
    record = plan_job(small_job_config(tmp_path, model, input=str(latest)), dry_run=True).job_record
    _finished_output(out, record, ["a.png", "b.png"])
    latest.unlink()
    latest.symlink_to(day2)
    with pytest.raises(JobError, match="relative"):
        plan_job(small_job_config(tmp_path, model, input=str(latest), incremental=True), dry_run=True)


def test_input_moved_lets_an_output_follow_its_input_to_a_new_place(tmp_path, model) -> None:
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    _images(old)
    record = plan_job(small_job_config(tmp_path, model, input=str(old)), dry_run=True).job_record
    _finished_output(out, record, ["a.png"])
    os.rename(old, new)
    _images(new, ("c.png",), seed=5)
    plan = plan_job(small_job_config(tmp_path, model, input=str(new), incremental=True, input_moved=True), dry_run=True)
    assert _files_to_read(plan) == ["b.png", "c.png"]  # the moved a.png stays done
    assert plan.job_record["input"]["location"] == str(new)  # the output's input from now on
    with pytest.raises(JobError, match="--input-moved must be true or false"):
        JobConfig(input_moved="yes").check()


def test_an_output_recorded_without_its_input_takes_any_input(tmp_path, model) -> None:
    # an output an older version made: its record has no input, and its scheduled runs must go on
    day1, day2, out = tmp_path / "d1", tmp_path / "d2", tmp_path / "out"
    _images(day1)
    _images(day2, ("c.png",))
    record = plan_job(small_job_config(tmp_path, model, input=str(day1)), dry_run=True).job_record
    record.pop("input", None)  # (this version records it)
    _finished_output(out, record, ["a.png", "b.png"])
    plan = plan_job(small_job_config(tmp_path, model, input=str(day2), incremental=True), dry_run=True)
    assert _files_to_read(plan) == ["c.png"]


# --- an output's input-reading options ---

def test_an_output_refuses_other_input_reading_options_but_not_an_older_record_without_them(tmp_path, model) -> None:
    out = tmp_path / "out"
    _images(tmp_path / "in")
    record = plan_job(small_job_config(tmp_path, model, image_column="picture"), dry_run=True).job_record
    _finished_output(out, record, ["a.png"])
    with pytest.raises(JobError, match='give --image-column "picture"'):  # the Parquet rows' image column differs
        plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)
    record.pop("reading", None)  # an older version's record: its scheduled runs go on
    (out / JOB_FILE).write_text(json.dumps(record))
    assert _files_to_read(plan_job(small_job_config(tmp_path, model, incremental=True), dry_run=True)) == ["b.png"]


def test_an_output_made_with_join_metadata_refuses_a_run_without_it_naming_the_sidecar_columns(tmp_path, model) -> None:
    out = tmp_path / "out"
    _images(tmp_path / "in")
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record
    _finished_output(out, record, ["a.png"])
    # the refusal says which columns the option sets: an img2dataset folder's captions and .json keys among them
    with pytest.raises(JobError, match=r"join_metadata True \(now False\); they set its rows' columns \(.*the metadata "
                                       r"and sidecar files' columns\).*give --join-metadata true"):
        plan_job(small_job_config(tmp_path, model, join_metadata=False, incremental=True), dry_run=True)


# --- an output's model architecture ---

def test_an_output_refuses_other_model_flags_that_fit_the_same_weights(tmp_path, model) -> None:
    # BUG (fixed here): the record held the checkpoint's sha256, not the flags its weights were read with, and flags
    # that fit the same file can make another model (the attention heads' channels split otherwise): a resumed or
    # --incremental run with them mixed two models' rows in one output
    from tests.jobutil import TINY_FLAGS

    out = tmp_path / "out"
    _images(tmp_path / "in")
    record = plan_job(small_job_config(tmp_path, model), dry_run=True).job_record
    _finished_output(out, record, ["a.png"])
    other = {**TINY_FLAGS, "use_new_attention_order": True}
    with pytest.raises(JobError, match=r"other model_flags: use_new_attention_order False \(now True\)"):
        plan_job(small_job_config(tmp_path, model, flags=other, incremental=True), dry_run=True)
    # the same model, spelt otherwise (its default channel_mult written out, a dropout, which sampling leaves off)
    same = {**TINY_FLAGS, "channel_mult": "1,2", "dropout": 0.1}
    assert _files_to_read(plan_job(small_job_config(tmp_path, model, flags=same, incremental=True), dry_run=True)) == [
        "b.png"]
    from pipeline.model import UNetConfig
    from pipeline.plan import model_architecture
    from pipeline.presets import PRESETS, preset_config

    by_hand = {**PRESETS["256x256_diffusion_uncond"], "channel_mult": "1,1,2,2,4,4", "num_heads": 8}  # heads: 64 ch
    assert model_architecture(UNetConfig.from_flags(by_hand)) == model_architecture(
        preset_config("256x256_diffusion_uncond"))
    record.pop("model_flags")  # an older version's record: its scheduled runs go on
    (out / JOB_FILE).write_text(json.dumps(record))
    assert _files_to_read(plan_job(small_job_config(tmp_path, model, flags=other, incremental=True),
                                   dry_run=True)) == ["b.png"]


# --- an output whose first run wrote no row ---

def test_an_output_without_rows_takes_the_corrected_settings(tmp_path, model) -> None:
    # A first run failed before its first batch (a canvas the model could not take, in an older version) and left
    # _job.json and a "failed" summary: its settings purified nothing, and the corrected command must run.
    out = tmp_path / "out"
    _images(tmp_path / "in")
    record = plan_job(small_job_config(tmp_path, model, canvas_size=64), dry_run=True).job_record
    _finished_output(out, record, [], status="failed")
    plan = plan_job(small_job_config(tmp_path, model), dry_run=True)
    assert plan.canvas_size == 32 and _files_to_read(plan) == ["a.png", "b.png"]
    # ... but once a row is written with them, the settings hold
    _finished_output(tmp_path / "out2", record, ["a.png"], status="failed")
    with pytest.raises(JobError, match="written with other canvas_size"):
        plan_job(small_job_config(tmp_path, model, output=str(tmp_path / "out2")), dry_run=True)


def test_a_canvas_the_model_cannot_take_stops_the_run_before_anything_is_written(tmp_path, model) -> None:
    # the tiny model halves its input once: canvases of an odd size fail in its actors
    _images(tmp_path / "in")
    with pytest.raises(JobError, match=r"--canvas-size 33 .*multiples of 2.*use 32 or 34"):
        run_job(small_job_config(tmp_path, model, pool=1, canvas_size=33))
    assert not (tmp_path / "out").exists()


# --- a checkpoint's credentials ---

def test_redact_uri_hides_a_presigned_urls_signature_and_a_password() -> None:
    redact_uri = redaction.redact_uri
    url = ("https://bucket.s3.amazonaws.com/priors/cifar10.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           f"&X-Amz-Credential=AKIAEXAMPLE%2F20261202&X-Amz-Security-Token=tok&X-Amz-Signature={SECRET}")
    redacted = redact_uri(url)
    assert SECRET not in redacted and "AKIAEXAMPLE" not in redacted and "tok&" not in redacted
    assert redacted.startswith("https://bucket.s3.amazonaws.com/priors/cifar10.pt?") and "X-Amz-Signature=***" in redacted
    assert redact_uri(f"https://user:{SECRET}@host/m.pt") == "https://user:***@host/m.pt"
    assert redact_uri(f"https://{SECRET}@host/m.pt") == "https://***@host/m.pt"  # a token as the user
    assert redact_uri(f"s3://b/m.pt?versionId=3&token={SECRET}") == "s3://b/m.pt?versionId=3&token=***"
    for plain in ("s3://bucket/priors/m.pt", "/data/m.pt", "./m.pt", "gs://b/m.pt"):
        assert redact_uri(plain) == plain
    # an error message quoting the URL, or its path with the query decoded, keeps neither signature nor key
    message = redaction.redact_uri_secrets(f"cannot read {url}; /priors/cifar10.pt?X-Amz-Credential=AKIAEXAMPLE/20261202", url)
    assert SECRET not in message and "AKIAEXAMPLE" not in message and "cifar10.pt" in message


def test_a_presigned_checkpoint_url_is_not_written_or_printed(tmp_path, model, monkeypatch) -> None:
    # --checkpoint 'https://...?X-Amz-Signature=...': _job.json, _summary.json (config and model) and the dry run's
    # report carried the signature, readable by everyone who can read the output
    url = f"https://bucket.s3.amazonaws.com/tiny.pt?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SECRET}"
    real = plan_module.load_checkpoint
    monkeypatch.setattr(plan_module, "load_checkpoint", lambda uri, *a, **kw: real(model if uri == url else uri, *a, **kw))
    _images(tmp_path / "in")
    config = small_job_config(tmp_path, model, checkpoint=url)
    plan = plan_job(config, dry_run=True)
    assert plan.checkpoint_uri == url  # the actors still load the real URL
    written = json.dumps([plan.job_record, plan.describe(), config.public()])
    assert SECRET not in written and "AKIAEXAMPLE" not in written
    assert "tiny.pt?X-Amz-Credential=***&X-Amz-Signature=***" in plan.describe()["model"]["checkpoint"]


@pytest.mark.usefixtures("ray_local")
def test_a_run_records_its_input_and_no_checkpoint_secret(tmp_path, model) -> None:
    # a checkpoint URL with a signature in its query (file://, so that the actors can load it here)
    signed = tmp_path / "ckpt" / f"tiny.pt?X-Amz-Signature={SECRET}"
    signed.parent.mkdir()
    signed.write_bytes(Path(model).read_bytes())
    _images(tmp_path / "in", ("a.png",))
    summary = run_job(small_job_config(tmp_path, model, checkpoint=f"file://{signed}"))
    assert summary["status"] == "complete"
    for name in (JOB_FILE, SUMMARY_FILE):
        assert SECRET not in (tmp_path / "out" / name).read_text(), name
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text())["input"]["location"] == str(tmp_path / "in")
    _images(tmp_path / "other", ("a.png", "b.png"), seed=9)
    with pytest.raises(JobError, match="relative"):  # the next run over another folder: refused, nothing skipped
        run_job(small_job_config(tmp_path, model, input=str(tmp_path / "other"), checkpoint=f"file://{signed}",
                                 incremental=True))


@pytest.mark.usefixtures("ray_local")
def test_a_failed_runs_summary_does_not_quote_the_checkpoints_secret(tmp_path, model, monkeypatch) -> None:
    # the actors could not read the checkpoint (gone after planning): the summary's error names it, less the signature
    signed = tmp_path / "ckpt" / f"tiny.pt?X-Amz-Signature={SECRET}"
    signed.parent.mkdir()
    signed.write_bytes(Path(model).read_bytes())
    _images(tmp_path / "in", ("a.png",))
    plan = job.plan_job

    def plan_then_lose_the_checkpoint(config: JobConfig, dry_run: bool = False) -> job.JobPlan:
        planned = plan(config, dry_run)
        signed.unlink()
        return planned

    monkeypatch.setattr(job, "plan_job", plan_then_lose_the_checkpoint)
    with pytest.raises(job.JobFailed):
        run_job(small_job_config(tmp_path, model, checkpoint=f"file://{signed}"))
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and "tiny.pt?X-Amz-Signature=***" in summary["error"]
    assert SECRET not in json.dumps(summary)
