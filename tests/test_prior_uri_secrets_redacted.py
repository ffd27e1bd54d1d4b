"""jobs/evaluate.py and jobs/train_prior.py never print or write the password of a prior's URI, as the purify job does not
(`pipeline.redaction`): ftp://user:password@host/prior.pt is shown as ftp://user:***@host/prior.pt.

BUG (fixed here): the evaluation's prior errors ("diffusion prior: ..."), its log line "loading diffusion prior ..." and
its report (<dataset>.json's config.checkpoint) named --checkpoint as typed, password included. train_prior.py kept the
--init-from URI, password included, in `initialised_from` of last.pt and of the exported prior (a file users share),
and its `command`, with --export's URI too; its console lines (the export it announces, the notes and refusals that
quote --init-from or --export) printed them as well. A resume still works: what a run started from is compared by the
prior's sha256 (the URI stored is the redacted one; two URIs that differ only in their password name the same file).

Tested with an in-memory stand-in for such a server, which reads and writes only with the password in the URI.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
from fsspec.utils import infer_storage_options

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_bundle
from pipeline.evaluation import datasets, runner
from pipeline.evaluation.datasets import LabelledImages
from pipeline.evaluation.preflight import EvaluationError, preflight
from pipeline.model import UNetConfig, build_unet
from tests.jobutil import TRAIN_TINY_ARGS, load_evaluate_job, run_main, train_prior_on_noise
from tests.test_url_connection_options import ServerMemoryFS

SECRET = "pa55word-secret"
ROTATED = "r0tated-pa55word"  # the same account's next password: the same files
ROOT = "/prior-uri-secrets-test"  # a folder of our own in fsspec's per-process memory store
SERVER = "pwserver://etl:{password}@files.example" + ROOT
SHOWN = "pwserver://etl:***@files.example" + ROOT


class PasswordServerFS(ServerMemoryFS):
    """A server whose URLs carry its user and password (ftp://user:password@host/...), as FTP's do: it answers only
    with a right password, so a URI that reaches its files has the password in it."""

    protocol = "pwserver"

    def __init__(self, host: str, port: int | None = None, username: str | None = None, password: str | None = None,
                 **kwargs: Any) -> None:
        if password not in (SECRET, ROTATED):
            raise PermissionError("530 Login incorrect.")
        super().__init__(host, port, **kwargs)

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        options = infer_storage_options(path)
        return {key: options[key] for key in ("host", "port", "username", "password") if key in options}


def uri(name: str, password: str = SECRET) -> str:
    return f"{SERVER.format(password=password)}/{name}"


def shown(name: str) -> str:
    return f"{SHOWN}/{name}"


@pytest.fixture
def server() -> Iterator[PasswordServerFS]:
    fsspec.register_implementation("pwserver", PasswordServerFS, clobber=True)
    fs = PasswordServerFS(host="files.example", password=SECRET)
    if fs.exists(ROOT):
        fs.rm(ROOT, recursive=True)
    yield fs
    if fs.exists(ROOT):
        fs.rm(ROOT, recursive=True)


def _tiny_prior(tmp_path: Path, name: str, meta: dict[str, Any] | None = None, seed: int = 0) -> bytes:
    """A tiny 32 px ε-prediction prior's bytes (its sha256 is what a resume compares)."""
    torch.manual_seed(seed)
    config = UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="",
                        num_head_channels=32, learn_sigma=False)
    path = tmp_path / name
    save_bundle(path, build_unet(config), meta=meta, dtype=torch.float32)
    return path.read_bytes()


def _no_secret(*texts: str | bytes) -> None:
    for text in texts:
        found = SECRET in text if isinstance(text, str) else SECRET.encode() in text
        assert not found, text if isinstance(text, str) else "the password is in a file"


# --- jobs/evaluate.py ----------------------------------------------------------------------------------------------


def _synthetic(n: int, seed: int) -> LabelledImages:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    images = np.clip(np.where(labels == 1, 190, 60)[:, None, None, None] + rng.integers(-40, 41, (n, 32, 32, 3)),
                     0, 255).astype(np.uint8)
    return LabelledImages(images, labels, 2)


def _loader(name: str, split: str) -> LabelledImages:
    return _synthetic(48, 1) if split == "train" else _synthetic(24, 2)


def _eval_config(tmp_path: Path, checkpoint: str, **kwargs: Any) -> runner.EvalConfig:
    return runner.EvalConfig(dataset="synthetic", attacks=["none"], defenses=["none", "zip"], checkpoint=checkpoint,
                             steps=2, pool=4, subset=4, epochs=1, threads=1, cache_dir=tmp_path / "cache",
                             out_dir=tmp_path / "out", examples=1, bootstrap=0,
                             train_options={"depth": 8, "batch_size": 16}, **kwargs)


def test_an_unreadable_prior_is_one_error_line_without_the_password(
        server: PasswordServerFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"  # CIFAR-10's archives (stand-ins: the checks before the prior's see they are there)
    (shared / "data" / "cifar10").mkdir(parents=True)
    for split in ("train", "test"):
        (shared / "data" / "cifar10" / f"cifar10-{split}.tar.gz").write_bytes(b"")
    monkeypatch.setattr(datasets, "SHARED_DIR", shared)
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "decoded")
    job: ModuleType = load_evaluate_job("evaluate_prior_secrets")
    monkeypatch.setattr(job, "evaluate_dataset", lambda config, **_: pytest.fail("the checks should stop the run"))
    argv = ["--datasets", "cifar10", "--attacks", "none", "--defenses", "none,zip", "--subset", "10", "--steps", "2",
            "--checkpoint", uri("missing.pt"), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(job, argv) == 2
    err = capsys.readouterr().err
    assert f"error: diffusion prior: checkpoint not found: {shown('missing.pt')} (train one" in err, err
    _no_secret(err)


@pytest.mark.parametrize("meta, options, says", [
    ({"max_timestep": 100}, {"start": 1.0}, "zip with the prior {}: this prior was trained only on timesteps 0..100"),
    ({"schedule": "cosine"}, {"schedule": "linear"}, "zip with the prior {}: it was trained with the cosine noise"),
    ({}, {"canvas_size": 33}, "canvas size 33 must be a multiple of 2 for the prior {}"),
])
def test_a_prior_that_cannot_run_the_settings_is_named_without_the_password(
        server: PasswordServerFS, tmp_path: Path, meta: dict, options: dict, says: str) -> None:
    server.pipe(f"{ROOT}/prior.pt", _tiny_prior(tmp_path, "prior.pt", meta))
    with pytest.raises(EvaluationError) as refused:
        preflight(_eval_config(tmp_path, uri("prior.pt"), **options), _loader)
    assert says.format(shown("prior.pt")) in str(refused.value), refused.value
    _no_secret(str(refused.value))


def test_the_log_and_the_report_name_the_prior_without_the_password(
        server: PasswordServerFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner, "write_examples", lambda *a, **k: False)  # matplotlib's import alone takes seconds
    data = _tiny_prior(tmp_path, "prior.pt")
    server.pipe(f"{ROOT}/prior.pt", data)
    report = runner.evaluate_dataset(_eval_config(tmp_path, uri("prior.pt")), loader=_loader)
    err = capsys.readouterr().err
    assert f"loading diffusion prior {shown('prior.pt')} for zip" in err, err
    assert report["config"]["checkpoint"] == shown("prior.pt")
    assert report["config"]["checkpoint_sha256"] == load_checkpoint(str(tmp_path / "prior.pt")).sha256
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["synthetic.json", "synthetic.md"]
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    _no_secret(err, *(p.read_bytes() for p in [*written, *cached]))
    # the prior is still the one the URI names, password and all: a rerun reuses the report's configuration
    assert runner.evaluate_dataset(_eval_config(tmp_path, uri("prior.pt")), loader=_loader)["results"] == report["results"]


def test_a_prior_changed_after_the_checks_is_named_without_the_password(
        server: PasswordServerFS, tmp_path: Path) -> None:
    server.pipe(f"{ROOT}/prior.pt", _tiny_prior(tmp_path, "prior.pt"))
    config = _eval_config(tmp_path, uri("prior.pt"))
    checked = preflight(config, _loader)
    server.pipe(f"{ROOT}/prior.pt", _tiny_prior(tmp_path, "other.pt", seed=1))  # other weights, other sha256
    with pytest.raises(CheckpointError) as changed:
        runner.evaluate_dataset(config, loader=_loader, checked=checked)
    assert f"diffusion prior {shown('prior.pt')} changed after the run checked it" in str(changed.value)
    _no_secret(str(changed.value))


# --- jobs/train_prior.py -------------------------------------------------------------------------------------------


@pytest.fixture
def train_prior(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return train_prior_on_noise(monkeypatch, "train_prior_uri_secrets")


def _run(train_prior: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = train_prior.cli(argv)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_a_fine_tune_from_and_to_a_server_keeps_its_password_out_of_every_file_and_line(
        server: PasswordServerFS, train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = _tiny_prior(tmp_path, "start.pt", {"schedule": "cosine"})  # a recorded schedule: the note quoting --init-from
    server.pipe(f"{ROOT}/start.pt", start)
    sha = load_checkpoint(str(tmp_path / "start.pt")).sha256
    run = tmp_path / "run"
    argv = ["--out", str(run), "--init-from", uri("start.pt"), "--export", uri("out/prior.pt"), "--batch", "4",
            "--threads", "1", "--log-every", "1"]
    rc, said = _run(train_prior, capsys, ["--max-steps", "1", *argv])
    assert rc == 0, said
    assert f"that --init-from {shown('start.pt')} was trained with" in said  # the schedule's note
    assert f"export {shown('out/prior.pt')} about" in said and f"EMA prior at {shown('out/prior.pt')}" in said, said
    exported = server.cat(f"{ROOT}/out/prior.pt")
    _no_secret(said, exported, *(p.read_bytes() for p in run.iterdir() if p.is_file()))
    meta = load_checkpoint(uri("out/prior.pt")).meta
    assert meta["initialised_from"] == f"{shown('start.pt')} (sha256 {sha[:12]})"
    words = shlex.split(meta["command"])
    assert [words[words.index(flag) + 1] for flag in ("--init-from", "--export")] == [shown("start.pt"),
                                                                                     shown("out/prior.pt")], words
    assert torch.load(run / "last.pt", weights_only=True)["initialised_from"] == meta["initialised_from"]

    # The same command resumes (the prior it started from is the same file, by its sha256), and so does it with the
    # account's next password: a URI that differs only in its password names the same file.
    rc, said = _run(train_prior, capsys, ["--max-steps", "2", *argv])
    assert rc == 0 and "resumed from" in said, said
    rotated = [a.replace(SECRET, ROTATED) for a in argv]
    rc, said = _run(train_prior, capsys, ["--max-steps", "3", *rotated])
    assert rc == 0 and "resumed from" in said, said
    assert load_checkpoint(uri("out/prior.pt")).meta["steps"] == 3
    _no_secret(said, server.cat(f"{ROOT}/out/prior.pt"), (run / "last.pt").read_bytes())

    # The prior at that URI replaced: the refusal says to put the old one back there, without the password.
    server.pipe(f"{ROOT}/start.pt", _tiny_prior(tmp_path, "other.pt", {"schedule": "cosine"}, seed=1))
    rc, said = _run(train_prior, capsys, ["--max-steps", "4", *argv])
    assert rc == 2, said
    assert f"--init-from {shown('start.pt')}: {run / 'last.pt'} holds a run to resume that started from " \
           f"{shown('start.pt')} (sha256 {sha[:12]})" in said, said
    assert f"put the prior it started from (sha256 {sha[:12]}...) back at {shown('start.pt')}" in said, said
    _no_secret(said)
    # Left out, the refusal names the --init-from to give (its password is the user's to add back).
    rc, said = _run(train_prior, capsys, ["--max-steps", "4", "--out", str(run), "--batch", "4", "--threads", "1",
                                          "--schedule", "cosine"])
    assert rc == 2 and f"to resume it, give --init-from {shown('start.pt')} (the prior" in said, said
    _no_secret(said)


def test_a_state_that_recorded_the_password_no_longer_keeps_it_once_resumed(
        server: PasswordServerFS, train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # last.pt of an earlier version, which stored --init-from as typed
    server.pipe(f"{ROOT}/start.pt", _tiny_prior(tmp_path, "start.pt"))
    run = tmp_path / "run"
    argv = ["--out", str(run), "--init-from", uri("start.pt"), "--batch", "4", "--threads", "1"]
    assert _run(train_prior, capsys, ["--max-steps", "1", *argv])[0] == 0
    state = torch.load(run / "last.pt", weights_only=True)
    note = state["initialised_from"].replace(shown("start.pt"), uri("start.pt"))
    assert SECRET in note
    torch.save({**state, "initialised_from": note}, run / "last.pt")
    rc, said = _run(train_prior, capsys, ["--max-steps", "2", *argv])
    assert rc == 0 and "resumed from" in said, said
    _no_secret(said, (run / "last.pt").read_bytes(), (run / "prior.pt").read_bytes())
    assert load_checkpoint(str(run / "prior.pt")).meta["initialised_from"] == note.replace(uri("start.pt"),
                                                                                           shown("start.pt"))
    # and its refusal of another --init-from names it without the password
    server.pipe(f"{ROOT}/second.pt", _tiny_prior(tmp_path, "second.pt", seed=1))
    torch.save({**state, "initialised_from": note}, run / "last.pt")
    rc, said = _run(train_prior, capsys, ["--max-steps", "3", *argv[:2], "--init-from", uri("second.pt"), *argv[4:]])
    assert rc == 2 and f"to resume the run, give --init-from {shown('start.pt')}" in said, said
    _no_secret(said)


@pytest.mark.parametrize("options, says", [
    (["--out", uri("run")], "--out {}: give a local folder"),
    (["--export", "https://etl:" + SECRET + "@files.example/prior.pt"],
     "--export https://etl:***@files.example/prior.pt: a web address is read-only here"),
    (["--init-from", uri("start.pt"), "--export", uri("start.pt")], "--export {} would overwrite the --init-from prior"),
])
def test_an_option_refused_before_training_is_named_without_the_password(
        server: PasswordServerFS, train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, options: list[str], says: str) -> None:
    monkeypatch.chdir(tmp_path)
    rc, said = _run(train_prior, capsys, ["--max-steps", "1", *options, *TRAIN_TINY_ARGS])
    assert rc == 2 and says.format(shown("run" if "--out" in options else "start.pt")) in said, said
    _no_secret(said)


def test_a_prior_it_cannot_train_is_named_without_the_password(
        server: PasswordServerFS, train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    sigma = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                                  attention_resolutions="", num_head_channels=32, learn_sigma=True))
    save_bundle(tmp_path / "sigma.pt", sigma)
    server.pipe(f"{ROOT}/sigma.pt", (tmp_path / "sigma.pt").read_bytes())
    rc, said = _run(train_prior, capsys, ["--max-steps", "1", "--out", str(tmp_path / "run"), "--init-from",
                                          uri("sigma.pt"), *TRAIN_TINY_ARGS])
    assert rc == 2 and f"error: --init-from {shown('sigma.pt')}: need an unconditional 32 px" in said, said
    _no_secret(said)


def test_an_export_that_fails_is_named_without_the_password(
        server: PasswordServerFS, train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.training_loop as training_loop

    def refused(export: str, model: Any, meta: dict) -> None:  # a server's answer that quotes the URL it was given
        raise PermissionError(f"550 {export}: quota exceeded")

    monkeypatch.setattr(training_loop, "write_export", refused)
    rc, said = _run(train_prior, capsys, ["--max-steps", "1", "--out", str(tmp_path / "run"), "--export",
                                          uri("out/prior.pt"), *TRAIN_TINY_ARGS])
    assert rc == 1, said
    assert f"warning: could not write the prior to {shown('out/prior.pt')} (PermissionError: 550 " in said, said
    assert f"error: the prior could not be written to {shown('out/prior.pt')}" in said, said
    _no_secret(said)


def test_the_recorded_command_hides_a_password_given_either_way() -> None:
    from pipeline.training_loop import shown_command

    argv = [f"--init-from={uri('start.pt')}", "--export", uri("prior.pt"), "--attention", "", "--seed", "-1"]
    assert shlex.split(shown_command(argv)) == ["python", "jobs/train_prior.py", f"--init-from={shown('start.pt')}",
                                                "--export", shown("prior.pt"), "--attention", "", "--seed", "-1"]
