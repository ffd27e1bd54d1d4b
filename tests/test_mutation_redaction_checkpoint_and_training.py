"""A mutation audit of review 2's changes (Dec 3: cba808f..5108b14): each test kills hand-made mutants of
pipeline/redaction.py, pipeline/checkpoint.py, jobs/train_prior.py, pipeline/cli.py, jobs/target_table.py and the
evaluation runner's noise schedule that the earlier tests let through (named in each test). Tests marked BUG guard
fixes made with them: a bundle whose flags build no model, a safetensors file cut short, and numbers too large for a
float in target_table's input; they fail on the code before. All run in seconds."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from pipeline import cli, training_loop
from pipeline.checkpoint import CheckpointError, load_checkpoint, save_bundle
from pipeline.errors import JobError, JobFailed, JobInterrupted
from pipeline.model import UNetConfig, build_unet
from pipeline.redaction import redact_uri, redact_uri_secrets
from tests.jobutil import TINY_FLAGS, TRAIN_TINY_ARGS, load_job_script, run_main, tiny_model_file, train_prior_on_noise

ROOT = Path(__file__).resolve().parents[1]

TINY = TRAIN_TINY_ARGS


# --- pipeline/redaction.py ---

@pytest.mark.parametrize("key", ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "X-Goog-Signature",
                                 "sig", "api_key", "auth"])
def test_a_credential_query_parameter_is_hidden_whatever_the_scheme(key: str) -> None:
    # Outside http(s) only the named parameters are hidden: each name of SECRET_QUERY_KEYS counts (mutants: "sig" or
    # "credential" dropped, only SECRET_KEYS checked).
    uri = f"s3://bucket/m.pt?versionId=3&{key}=LONG-SECRET-VALUE"
    assert redact_uri(uri) == f"s3://bucket/m.pt?versionId=3&{key}=***"


def test_every_query_value_of_an_http_url_is_hidden_but_its_keys_stay() -> None:
    # A CloudFront signed URL's policy, an Azure SAS's expiry: no secret-like name, yet part of the credential (mutant:
    # http(s) treated like any scheme). A bare key has no value to hide and stays as typed (mutant: 'download=***').
    url = "https://d111.cloudfront.net/m.pt?Expires=1767225600&Policy=eyJTdGF0ZW1lbnQi&download"
    assert redact_uri(url) == "https://d111.cloudfront.net/m.pt?Expires=***&Policy=***&download"


def test_a_password_holding_an_at_sign_is_hidden_whole() -> None:
    # the host is after the last '@' (mutant: split at the first, which left 'ssw0rd-long@' in the record)
    assert redact_uri("https://user:p@ssw0rd-long@host/m.pt") == "https://user:***@host/m.pt"


@pytest.mark.parametrize("uri", ["S3://bucket/m.pt", "s3://bucket/m.pt?", "s3://bucket/m.pt?versionId=3#part"])
def test_a_uri_without_credentials_is_written_as_typed(uri: str) -> None:
    # urlunsplit would lower-case the scheme and drop an empty query (mutant: no early return)
    assert redact_uri(uri) == uri


def test_an_error_quoting_a_credential_otherwise_than_in_the_uri_keeps_none_of_it() -> None:
    # fsspec and botocore quote a URI's path with its query percent-encoded, or decoded, or a login as user:password
    url = "https://alice:hunter2pass@host/m.pt?X-Amz-Credential=AKIA%2F2026%2Fus-east-1&sig=8charsXY"
    text = redact_uri_secrets("GET host/m.pt?X-Amz-Credential=AKIA%2F2026%2Fus-east-1 (AKIA/2026/us-east-1) as "
                              "alice:hunter2pass: bad sig 8charsXY", url)
    # mutants: raw values not collected, the password not collected, an 8-character value taken for a common word
    for secret in ("AKIA%2F2026", "AKIA/2026", "hunter2pass", "8charsXY"):
        assert secret not in text, text
    assert "host/m.pt" in text and "alice" in text


def test_a_secret_that_begins_another_is_hidden_with_the_longer_one() -> None:
    # replaced longest first: the shorter first would leave the longer one's tail ('34567') in the message
    uri = "s3://b/m.pt?token=abcdefgh12&X-Amz-Signature=abcdefgh1234567"
    assert redact_uri_secrets("signed abcdefgh1234567 with abcdefgh12", uri) == "signed *** with ***"


# --- pipeline/checkpoint.py ---

def _bundle_with(tmp_path: Path, **changes: Any) -> str:
    bundle = torch.load(tiny_model_file(tmp_path), weights_only=True)
    for key, value in changes.items():
        if value is _DELETE:
            del bundle[key]
        else:
            bundle[key] = value
    torch.save(bundle, tmp_path / "changed.pt")
    return str(tmp_path / "changed.pt")


_DELETE = object()


def test_a_bundle_without_flags_is_named_not_taken_for_a_bare_state_dict(tmp_path: Path) -> None:
    # mutant: only 'state_dict' required, so the loader went on to guess a preset from the shapes
    with pytest.raises(CheckpointError, match="it has no 'flags'"):
        load_checkpoint(_bundle_with(tmp_path, flags=_DELETE))


def test_a_prior_trained_up_to_timestep_0_loads(tmp_path: Path) -> None:
    # max_timestep is a whole number >= 0 (mutant: 0 refused)
    bundle = torch.load(tiny_model_file(tmp_path), weights_only=True)
    assert load_checkpoint(_bundle_with(tmp_path, meta={**bundle["meta"], "max_timestep": 0})).meta["max_timestep"] == 0


def test_a_model_and_ema_pair_is_refused_with_the_ema_as_the_example(tmp_path: Path) -> None:
    # the advice saves the better prior (mutant: the first candidate, 'model'); a train_prior-like save whose flags
    # are not a dict is such a pair too, not a resume state (mutant: taken as one, failing on its flags)
    model = build_unet(UNetConfig.from_flags(TINY_FLAGS)).state_dict()
    path = tmp_path / "pair.pt"
    torch.save({"model": model, "ema": model, "opt": {}, "step": 3, "flags": None}, path)
    with pytest.raises(CheckpointError, match=r"2 state dicts .*torch\.save\(ckpt\['ema'\]"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("flag, value", [("num_heads", 0), ("num_head_channels", 0), ("channel_mult", "1,nan"),
                                         ("channel_mult", "1,2.5")])
def test_flags_no_model_can_be_built_from_are_a_checkpoint_error(tmp_path: Path, flag: str, value: Any) -> None:
    # BUG (fixed here): UNetConfig.from_flags takes these, build_unet then raised ZeroDivisionError / ValueError: a
    # traceback from purify.py, evaluate.py and train_prior.py --init-from instead of their one-line refusal
    bundle = torch.load(tiny_model_file(tmp_path), weights_only=True)
    with pytest.raises(CheckpointError, match="cannot build the model of checkpoint .* own flags: .*"):
        load_checkpoint(_bundle_with(tmp_path, flags={**bundle["flags"], flag: value}))
    with pytest.raises(CheckpointError, match="from the given flags"):
        load_checkpoint(tiny_model_file(tmp_path), flags={**TINY_FLAGS, flag: value})


def test_a_safetensors_file_cut_short_is_said_to_be_one(tmp_path: Path) -> None:
    # BUG (fixed here): a download cut inside the safetensors header (its first ~10 KB here) was "not a torch file:
    # expected ... a .safetensors file", about a .safetensors file (mutant of the test's fix: the header bounded by
    # the file's length again)
    from safetensors.torch import save as save_safetensors

    model = build_unet(UNetConfig.from_flags(TINY_FLAGS))
    data = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    for cut in (100, len(data) // 2):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"is not a valid safetensors file \(truncated or corrupt\?\)"):
            load_checkpoint(str(tmp_path / "cut.safetensors"), flags=TINY_FLAGS)


# --- jobs/train_prior.py ---

@pytest.fixture()
def train_prior(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return train_prior_on_noise(monkeypatch, "train_prior_mutation_review_dec3")


def test_an_export_uri_into_a_folder_not_made_yet_is_written(train_prior: ModuleType, tmp_path: Path) -> None:
    # file:// (or any file system with folders): the parent is made, as for a local --export (mutant: it is not)
    target = tmp_path / "priors" / "new" / "prior.pt"
    assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "run"), "--export", f"file://{target}", *TINY]) == 0
    assert load_checkpoint(str(target)).meta["steps"] == 1


def test_a_failed_export_is_exit_1_until_a_later_save_writes_it(train_prior: ModuleType, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    real, calls = training_loop.write_export, []  # where Saves looks it up

    def fail_first(*args, **kwargs) -> None:
        calls.append(args[0])
        if len(calls) == 1:
            raise OSError("upload refused")
        real(*args, **kwargs)

    monkeypatch.setattr(training_loop, "write_export", fail_first)
    argv = ["--out", str(tmp_path), *TINY]
    # saves after each step and at the end: the first export fails, the next ones write it (mutant: the old failure
    # still decides the exit status)
    assert train_prior.cli(["--max-steps", "2", "--save-every-min", "0", *argv]) == 0
    assert len(calls) >= 2 and load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 2
    capsys.readouterr()
    # a run whose only save (at its end) fails: exit 1 (mutant: 0), last.pt kept; the same command again writes it
    calls.clear()
    assert train_prior.cli(["--max-steps", "3", *argv]) == 1
    assert "rerun the same command" in capsys.readouterr().err
    assert load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 2
    assert train_prior.cli(["--max-steps", "3", *argv]) == 0
    assert load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 3


def test_the_same_init_from_weights_at_another_path_resume(train_prior: ModuleType, tmp_path: Path) -> None:
    # "the same weights" are known by their sha256, not by the path (mutant: the provenance notes compared as text)
    assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "first"), *TINY]) == 0
    copy = tmp_path / "copied" / "prior.pt"
    copy.parent.mkdir()
    shutil.copy(tmp_path / "first" / "prior.pt", copy)
    out = str(tmp_path / "ft")
    assert train_prior.cli(["--max-steps", "1", "--out", out, "--init-from", str(tmp_path / "first" / "prior.pt"),
                            *TINY]) == 0
    assert train_prior.cli(["--max-steps", "2", "--out", out, "--init-from", str(copy), *TINY]) == 0
    assert load_checkpoint(out + "/prior.pt").meta["steps"] == 2


def test_a_last_pt_that_does_not_record_its_start_resumes_with_a_note(train_prior: ModuleType, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # a state written before 'initialised_from' was recorded: resumed, saying the --init-from is not used (mutant:
    # refused like one that records another start)
    assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "first"), *TINY]) == 0
    out = tmp_path / "ft"
    init = ["--init-from", str(tmp_path / "first" / "prior.pt")]
    assert train_prior.cli(["--max-steps", "1", "--out", str(out), *init, *TINY]) == 0
    state = torch.load(out / "last.pt", weights_only=False)
    del state["initialised_from"]
    torch.save(state, out / "last.pt")
    capsys.readouterr()
    assert train_prior.cli(["--max-steps", "2", "--out", str(out), *init, *TINY]) == 0
    assert "does not record what it started from" in capsys.readouterr().err
    assert load_checkpoint(str(out / "prior.pt")).meta["steps"] == 2


def test_an_export_uri_whose_file_system_is_unknown_stops_before_training(train_prior: ModuleType, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # said at once as a usage error, not after the whole training budget as a failed upload (mutant: the URI checked
    # as a local path)
    assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path), "--export", "nosuchfs://b/prior.pt", *TINY]) == 2
    assert "--export nosuchfs://b/prior.pt" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()


# --- pipeline/cli.py ---

@pytest.mark.parametrize("error, status, prefix", [
    (JobFailed, 1, "error: "), (lambda message: JobInterrupted(message, 2), 130, "interrupted: "), (JobError, 2, "error: "),
])
def test_every_error_line_hides_the_credentials_of_each_uri_the_run_was_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Any, status: int,
        prefix: str) -> None:
    # the checkpoint's, the input's and the output's, on each of main's error lines (mutants: the input and output
    # not redacted; a failed or an interrupted run's line printed as raised)
    uris = {"--input": "https://data.example/in.tar?X-Amz-Signature=INPUT-SECRET-1",
            "--output": "s3://bucket/out?token=OUTPUT-SECRET-2",
            "--checkpoint": "https://host/prior.pt?sig=CHECKPOINT-SECRET-3"}

    def failing_run(config: Any, **options) -> None:
        raise error(f"could not read {config.input} or {config.checkpoint}, nor write {config.output}")

    monkeypatch.setattr(cli, "run_job", failing_run)
    assert cli.main([arg for pair in uris.items() for arg in pair]) == status
    err = capsys.readouterr().err
    assert err.startswith(prefix) and "in.tar?X-Amz-Signature=***" in err and "out?token=***" in err, err
    assert "SECRET" not in err, err


def test_an_empty_operators_list_in_a_config_file_is_refused_as_such(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # mutant: [] joined to the text '', which is no operator
    path = tmp_path / "job.yaml"
    path.write_text("operators: []\n")
    assert cli.main(["--config", str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 2
    assert "operators must be text or a list of operator names (pool, gray, gray+pool), got []" in capsys.readouterr().err


# --- jobs/target_table.py ---

@pytest.mark.parametrize("damage", [
    {"zip": True, "difference": True},  # JSON true is no figure (mutant: shown as 1)
    {"zip": float("nan"), "difference": float("inf")},  # json writes NaN / Infinity (mutant: shown as nan, inf)
    {"interval": [0.5, 1.0, 2.0]},  # three bounds (mutant: any list of numbers)
    {"met": "yes"},  # met is true or false (mutant: anything)
    # BUG (fixed here): a JSON integer too large for a float stopped the table with an OverflowError traceback
    {"zip": 10**400, "difference": 10**400}, {"interval": [0.5, 10**400]},
])
def test_target_table_skips_a_check_row_whose_figures_or_verdict_are_malformed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: dict[str, Any]) -> None:
    good = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    bad = copy.deepcopy(good)
    bad["target"]["checks"]["zip"][0].update(damage)
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    job = load_job_script("target_table.py", "target_table_mutation_review_dec3")
    assert run_main(job, [str(tmp_path / "good.json"), str(tmp_path / "bad.json")]) == 0
    out, err = capsys.readouterr()
    assert "| good |" in out and "| bad |" not in out
    assert "bad.json: its stored target check of zip is malformed: row 0" in err


# --- jobs/evaluate.py / pipeline/evaluation/runner.py ---

def test_the_zip_defenses_sample_with_the_schedule_preflight_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # preflight resolving cosine is not enough: the defenses evaluate_dataset builds must get it (mutant: they got
    # the configuration's schedule, None, so linear, and sampled a cosine prior at the wrong noise levels)
    from pipeline.evaluation import runner
    from pipeline.evaluation.datasets import LabelledImages
    from pipeline.evaluation.preflight import preflight

    prior = tmp_path / "cosine.pt"
    save_bundle(prior, build_unet(UNetConfig.from_flags(TINY_FLAGS)), meta={"schedule": "cosine"})
    config = runner.EvalConfig("cifar10", attacks=["badnet"], defenses=["none", "zip"], checkpoint=str(prior), subset=10,
                               out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    checked = preflight(config, loader=lambda name, split: None)
    assert checked.schedule == "cosine"
    rng = np.random.default_rng(0)

    def loader(name: str, split: str) -> LabelledImages:
        return LabelledImages(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10, 10)

    built: dict[str, Any] = {}

    class Built(Exception):
        pass

    def make_defense(name: str, **kwargs: Any) -> None:
        built[name] = kwargs["zip_overrides"]
        if name == "zip":  # stop before anything is trained or purified
            raise Built

    monkeypatch.setattr(runner, "make_defense", make_defense)
    with pytest.raises(Built):
        runner.evaluate_dataset(config, loader, checked=checked)
    assert built["zip"].get("schedule") == "cosine", built


def _table_of(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, Any]) -> tuple[int, str, str]:
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    job = load_job_script("target_table.py", "target_table_mutation_review_dec3_averages")
    rc = run_main(job, [str(ROOT / "docs" / "cifar10.json"), str(tmp_path / "bad.json")])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("value, said", [
    # point_check names a value that is no finite number (tests/test_validation_user_errors.py); before, target_summary's own
    # failure (decimal.InvalidOperation) cost that report's row only
    pytest.param(float("inf"), "no target check for zip: the report's average CA for zip is Infinity", id="infinite"),
    # BUG (fixed here): an OverflowError traceback that lost every report's row
    pytest.param(10**400, "no target check for zip: the report's average CA for zip is a number too large for a float",
                 id="int-too-large-for-a-float"),
])
def test_target_table_skips_a_report_whose_averages_it_cannot_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    value: Any, said: str) -> None:
    # an older report (no stored check) is judged on its averages; one of them no finite number: that report is
    # skipped, the others shown (mutants: the table tried on all reports at once, only a KeyError caught)
    bad = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    del bad["target"]
    bad["average"]["zip"]["ca"] = value
    rc, out, err = _table_of(tmp_path, capsys, bad)
    assert rc == 0 and "| cifar10 |" in out and "| bad |" not in out, out
    assert said in err and "Traceback" not in err, err


def test_target_table_says_stored_check_rows_that_are_no_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # mutant: an object taken for the rows, and its first key reported as "row 0"
    bad = json.loads((ROOT / "docs" / "cifar10.json").read_text())
    bad["target"]["checks"]["zip"] = {"ca": bad["target"]["checks"]["zip"][0]}
    rc, out, err = _table_of(tmp_path, capsys, bad)
    assert rc == 0 and "| bad |" not in out
    assert "its stored target check of zip is malformed: holds an object, not a list of check rows" in err, err
