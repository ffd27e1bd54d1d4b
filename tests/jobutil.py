"""Helpers for job tests: a tiny model, generated inputs, output readers."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.checkpoint import save_bundle
from pipeline.model import UNetConfig, build_unet

TINY_FLAGS = dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="")


def tiny_model_file(folder: Path) -> str:
    torch.manual_seed(0)
    model = build_unet(UNetConfig.from_flags(TINY_FLAGS))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = folder / "tiny.pt"
    save_bundle(path, model, meta={"test": True})
    return str(path)


def png_inputs(folder: Path, n: int, size: int = 32) -> None:
    """`n` random PNGs of size x size, 000.png ..., in `folder` (made)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(image_bytes(size, size, i))


def image_folder(folder: Path, n: int, size: int = 16) -> Path:
    """`folder` (made) with `n` random PNGs of size x size named 0.png, 1.png, ...; returned."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(image_bytes(size, size, i))
    return folder


def rewritten_in_place(path: Path, data: bytes) -> None:
    """New bytes under the same name, with an mtime that surely differs (a coarse file system clock)."""
    before = os.stat(path).st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def refresh_after_touching(tmp_path: Path, model: str, paths: list[Path]) -> dict:
    """`paths` touched with the same bytes (a sync that does not keep times), then a scheduled `--incremental
    --refresh-changed` run of `small_job_config`: its summary (a file found the same purifies nothing again)."""
    from pipeline.job import run_job

    for path in paths:
        before = os.stat(path).st_mtime_ns
        os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))
    return run_job(small_job_config(tmp_path, model, incremental=True, refresh_changed=True))


def no_ray_from_here_on(monkeypatch) -> None:
    """From here on, a run that starts or joins Ray, places actors or builds the pipeline fails the test (a run with
    nothing to read starts none of them)."""
    import pipeline.job as job_module

    def started(*args, **kwargs):
        raise AssertionError("a run with nothing to read started Ray or its pipeline")

    for name in ("init_ray", "default_actors_and_gpus", "build_pipeline"):
        monkeypatch.setattr(job_module, name, started)


def part_files_read(monkeypatch) -> list[str]:
    """The output's part files ('data/part-....parquet') whose rows the planning reads to compare inputs whose listing
    changed with their rows (`changes._part_rows`), as it reads them."""
    import pipeline.changes as changes_module

    read: list[str] = []
    real = changes_module._part_rows

    def counted(fs, path: str, *args, **kwargs):
        read.append(f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}")
        return real(fs, path, *args, **kwargs)

    monkeypatch.setattr(changes_module, "_part_rows", counted)
    return read


def small_job_config(tmp_path: Path, model: str, **kw):
    """A JobConfig for a quick whole run: tmp_path/in -> tmp_path/out, the tiny model, 1 step, 32 px canvases."""
    from pipeline.config import JobConfig

    base = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=model, steps=1, pool=4,
                progress=False, write_batch=8, canvas_size=32)
    return JobConfig(**{**base, **kw})


def small_job_argv(tmp_path: Path, model: str, *more: str) -> list[str]:
    """The command line of `small_job_config`'s run (tmp_path/in -> tmp_path/out), with `more` after it."""
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", model, "--steps", "1",
            "--pool", "4", "--canvas-size", "32", "--no-progress", *more]


def dry_run_input_line(tmp_path: Path, model: str, capsys: Any, *more: str, input_uri: str | None = None) -> str:
    """The 'input: ' line of `small_job_argv`'s dry run (with `more`), over `input_uri` where given (a web server's
    address) instead of tmp_path/in."""
    from pipeline import cli

    argv = small_job_argv(tmp_path, model, "--dry-run", *more)
    if input_uri is not None:
        argv[argv.index("--input") + 1] = input_uri
    assert cli.main(argv) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("input: "))


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (a path under `root` -> its bytes) under `root`, making their folders; returns `root`."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def image_bytes(h: int, w: int, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], hard_links: dict[str, str] | None = None, encoding: str | None = None) -> bytes:
    """A tar of `members` (name -> bytes), then `hard_links` (name -> the member it links to). With `encoding`
    ('latin-1'), names are written as that encoding's bytes (GNU format: no PAX header turns them into UTF-8)."""
    buf = io.BytesIO()
    named = {"format": tarfile.GNU_FORMAT, "encoding": encoding} if encoding else {}
    with tarfile.open(fileobj=buf, mode="w", **named) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (hard_links or {}).items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.LNKTYPE, target
            tar.addfile(link)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of `members` (name -> bytes; a name ending in '/' is a folder entry), in that order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as archive:
        for name, data in members.items():
            if name.endswith("/"):
                archive.mkdir(name.rstrip("/"))
            else:
                archive.writestr(name, data)
    return buf.getvalue()


def read_output(path: str, storage_options: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipeline.storage import storage_path

    fs, root = storage_path(path, storage_options or {})
    frames = []
    for folder in ("data", "rejects"):
        files = sorted(f for f in (fs.ls(f"{root}/{folder}", detail=False) if fs.exists(f"{root}/{folder}") else [])
                       if f.rsplit("/", 1)[-1].startswith("part-"))
        tables = [pq.read_table(io.BytesIO(fs.cat_file(f))).to_pandas() for f in files]
        frames.append(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["id"]))
    return frames[0], frames[1]


def decoded_size(image_cell: dict) -> tuple[int, int]:
    with Image.open(io.BytesIO(image_cell["bytes"])) as im:
        assert im.format == "PNG"
        return im.height, im.width


def load_evaluate_job(name: str) -> ModuleType:
    """jobs/evaluate.py as a module (it is a script, not part of the package)."""
    return load_job_script("evaluate.py", name)


def evaluate_job_without_evaluation(monkeypatch, name: str) -> ModuleType:
    """jobs/evaluate.py with its real checks (preflight included) and the evaluation itself replaced: the configs
    that reach it are kept in `started`."""
    module = load_evaluate_job(name)
    module.started = []
    monkeypatch.setattr(module, "evaluate_dataset", lambda config, **_: module.started.append(config))
    return module


def load_job_script(script: str, name: str, folder: str = "jobs") -> ModuleType:
    """<folder>/<script> (jobs/ or bench/) as a module named `name` (they are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / folder / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN_TINY_ARGS = ["--channels", "32", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "",
                   "--head-channels", "32", "--batch", "4", "--threads", "1", "--log-every", "1"]


def train_prior_on_noise(monkeypatch, name: str) -> ModuleType:
    """jobs/train_prior.py as a module whose data set is 16 seeded noise images, so no ../shared is needed."""
    module = load_job_script("train_prior.py", name)

    def fake_load(dataset: str, split: str):
        from pipeline.evaluation.datasets import LabelledImages

        rng = np.random.default_rng(0)
        return LabelledImages(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.zeros(16, np.int64), 1)

    monkeypatch.setattr(module, "load_dataset", fake_load)
    return module


def run_main(job: ModuleType, argv: list[str]) -> int:
    """A job's exit status from main(argv), argparse's SystemExit included."""
    try:
        return job.main(argv)
    except SystemExit as stop:
        return int(stop.code)


def spy_on_extraction(monkeypatch) -> list[str]:
    """The names of the tar members read from here on (tarfile's extractfile), in order."""
    import tarfile

    extracted: list[str] = []
    original = tarfile.TarFile.extractfile

    def spy(self, member):
        extracted.append(member.name if isinstance(member, tarfile.TarInfo) else member)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    return extracted


# A line of Ray's own logging in the driver: "2026-12-03 18:58:11,643\tINFO streaming_executor.py:371 -- ...".
RAY_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING)\s")


def last_job_line(stderr: str) -> str:
    """The job's own last line on stderr, lines of Ray's Python logging left out. Ray Data logged "Dataset ... execution
    finished" when its executor was shut down, which after a Ctrl-C could come on the garbage collector's time, after
    the job's line; the job now shuts it down before (tests/test_interrupt_counts.py checks a whole stderr for it)."""
    return [line for line in stderr.splitlines() if line.strip() and not RAY_LOG_LINE.match(line)][-1]


def run_stopped_at(step: str, tmp_path: Path, model: str, monkeypatch, **options) -> None:
    """A run of the small job (`small_job_config` with `options`) that stops where the job calls `step`, one of
    pipeline.job's names (a kill there leaves the same files)."""
    import pytest

    import pipeline.job as job_module

    def stop(*args, **kwargs):
        raise RuntimeError(f"stopped at {step}")

    with monkeypatch.context() as patched:
        patched.setattr(job_module, step, stop)
        with pytest.raises(RuntimeError, match=f"stopped at {step}"):
            job_module.run_job(small_job_config(tmp_path, model, **options))


def shard_refresh_stopped_after_its_last_batch(tmp_path: Path, model: str, monkeypatch, at_stop=None) -> dict[str, bytes]:
    """A shard `in/s.tar` of three members purified; then rewritten in place (0 changed, 1 and 2 the same, 3 added) and
    a --refresh-changed run stopped (a failure, as a Ctrl-C's is recorded) once its pipeline had reported its last
    batch, before it noted the shard read whole; `at_stop()` is called at that moment. The new members, by name."""
    import pytest

    import pipeline.job as job_module

    root = tmp_path / "in"
    root.mkdir()
    members = {f"{k}.png": image_bytes(16, 16, 10 + k) for k in range(3)}
    (root / "s.tar").write_bytes(tar_bytes(members))
    assert job_module.run_job(small_job_config(tmp_path, model))["status"] == "complete"
    changed = {**members, "0.png": image_bytes(16, 16, 66), "3.png": image_bytes(16, 16, 67)}
    rewritten_in_place(root / "s.tar", tar_bytes(changed))
    tally = job_module._tally_written_batches

    def then_stop(*args, **kwargs) -> None:
        tally(*args, **kwargs)
        if at_stop is not None:
            at_stop()
        raise RuntimeError("stopped after the pipeline's last batch")

    with monkeypatch.context() as patched:
        patched.setattr(job_module, "_tally_written_batches", then_stop)
        with pytest.raises(RuntimeError, match="stopped after the pipeline's last batch"):
            job_module.run_job(small_job_config(tmp_path, model, refresh_changed=True))
    return changed


def cifar10_archive_stand_ins(tmp_path: Path, monkeypatch) -> Path:
    """A shared folder (returned) holding only CIFAR-10's archives, empty stand-ins (the evaluation's checks look only at
    their presence), with `pipeline.evaluation.datasets` pointed at it and at a decoded cache under tmp_path."""
    from pipeline.evaluation import datasets

    root = tmp_path / "shared"
    (root / "data" / "cifar10").mkdir(parents=True)
    for split in ("train", "test"):
        (root / "data" / "cifar10" / f"cifar10-{split}.tar.gz").write_bytes(b"")
    monkeypatch.setattr(datasets, "SHARED_DIR", root)
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "decoded")
    return root


def train_prior_parsed(train_prior: ModuleType, *argv: str) -> object:
    """jobs/train_prior.py's parse_args answer for `argv` with a small architecture (its checks write nothing), or the
    exit status of a refusal."""
    try:
        return train_prior.parse_args([*argv, "--channel-mult", "1,2", "--attention", ""])
    except SystemExit as stop:
        return stop.code


def stage_records() -> list[dict]:
    """A batch's records for the write stage: one image, one reject, the read's count."""
    from pipeline.sources import reject_record

    image = {"kind": "image", "id": "a.png", "source": "a.png", "source_sha256": "0" * 64, "png": b"png", "width": 4,
             "height": 4, "meta": {}}
    return [image, reject_record("b.png", "b.png", "not a recognised image format", "decode", "1" * 64),
            {"kind": "count", "n": 2, "skipped": 0}]


def started_output(folder: Path) -> Path:
    """An output folder as the driver leaves it at a run's start: its run history summary written; that file."""
    from pipeline.output import RUNS_DIR

    (folder / RUNS_DIR).mkdir(parents=True)
    start = folder / RUNS_DIR / "20261205T110000.000000Z-abcd1234.json"
    start.write_text('{"status": "running"}')
    return start
