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
from tests.jobutil import load_evaluate_job, run_main
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
    ({"max_timestep": 100}, {}, "zip with the prior {}: this prior was trained only on timesteps 0..100"),
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
