"""jobs/evaluate.py as a user meets it: a bad --out or --cache-dir, missing or damaged data, a subset the test split
cannot fill and Ctrl-C are one line on stderr (exit 2, or 130 for an interruption), found before the work where
they can be, never a traceback after it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from pipeline.checkpoint import load_checkpoint, save_bundle
from pipeline.evaluation import datasets, runner, victims
from pipeline.evaluation.datasets import LabelledImages
from pipeline.evaluation.preflight import EvaluationError
from tests.jobutil import cifar10_archive_stand_ins, load_evaluate_job, run_main, tiny_model_file

CHEAP = ["--attacks", "none", "--defenses", "none", "--subset", "20"]


def _load_job() -> ModuleType:
    return load_evaluate_job("evaluate_job_ux")


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The job with the evaluation replaced: it records the configurations that passed every check."""
    module = _load_job()
    module.started = []
    monkeypatch.setattr(module, "evaluate_dataset", lambda config, **_: module.started.append(config))
    return module


_run = run_main


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shared folder holding only CIFAR-10's archives (stand-ins: only their presence is checked) and no decoded
    copies."""
    return cifar10_archive_stand_ins(tmp_path, monkeypatch)


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_a_file_for_a_folder_is_refused_before_any_work(job: ModuleType, tmp_path: Path, shared: Path,
                                                        capsys: pytest.CaptureFixture[str], flag: str) -> None:
    """Before: a file given as --out ended a finished run in FileExistsError when the report was written."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    folders = {"--out": str(tmp_path / "out"), "--cache-dir": str(tmp_path / "cache"), flag: str(a_file)}
    argv = ["--datasets", "cifar10", *CHEAP, *(x for kv in folders.items() for x in kv)]
    assert _run(job, argv) == 2
    assert f"error: {flag} {a_file} is a file" in _one_error_line(capsys)
    folders[flag] = str(a_file / "below")
    assert _run(job, ["--datasets", "cifar10", *CHEAP, *(x for kv in folders.items() for x in kv)]) == 2
    assert "which is a file" in _one_error_line(capsys)
    assert job.started == []


def test_an_out_folder_given_with_a_tilde_is_the_one_checked_and_written(
        job: ModuleType, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BUG (fixed here): `--out=~/results` (a tilde the shell leaves, as zsh does after '=') was checked as the home
    folder's results/, but the reports went to a folder named '~' in the current one (--cache-dir was expanded)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert _run(job, ["--datasets", "cifar10", *CHEAP, "--out", "~/eval", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert Path(job.started[0].out_dir) == home / "eval"


def test_a_missing_archive_of_a_later_data_set_stops_the_run_before_the_first(
        job: ModuleType, tmp_path: Path, shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: GTSRB's missing archive was a traceback once CIFAR-10's whole evaluation had run."""
    argv = ["--datasets", "cifar10,gtsrb", "--attacks", "none", "--defenses", "none", "--subset", "43",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert _run(job, argv) == 2
    line = _one_error_line(capsys)
    assert "gtsrb/train: archive" in line and "gtsrb-train.tar.xz not found" in line
    assert job.started == []


def test_no_shared_folder_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Before: FileNotFoundError's traceback from the data loader."""
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "decoded")
    job = _load_job()
    argv = ["--datasets", "cifar10", *CHEAP, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert _run(job, argv) == 2
    line = _one_error_line(capsys)
    assert f"shared data folder {tmp_path / 'nowhere'} not found" in line and "ZIP_SHARED_DIR" in line


def test_a_damaged_archive_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: tarfile's ReadError or EOFError from deep inside the reader, without the file's name."""
    archive = tmp_path / "data" / "cifar10" / "cifar10-test.tar.gz"
    archive.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = np.random.default_rng(0).bytes(20000)
        info = tarfile.TarInfo("test/cat/0.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(buffer.getvalue()[:2000])  # cut short, as by an interrupted copy
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path)
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "decoded")
    with pytest.raises(datasets.DataError, match=f"cifar10/test: archive {archive} could not be read"):
        datasets.load_dataset("cifar10", "test")


@pytest.mark.parametrize(("name", "archive", "mode"), [("cifar10", "cifar10/cifar10-train.tar.gz", "w:gz"),
                                                      ("imagenette", "imagenette/imagenette-val.tar.gz", "w:gz")])
def test_an_archive_without_images_is_named_and_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                        archive: str, mode: str) -> None:
    """Before: 'could not be read (ValueError: need at least one array to stack)', numpy's words for an archive that
    reads fine but holds no <split>/<class>/<image> file (an empty or wrongly laid out copy)."""
    path = tmp_path / "data" / archive
    path.parent.mkdir(parents=True)
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("README.txt")  # a file, but not at <split>/<class>/<image>
        tar.addfile(info, io.BytesIO(b""))
    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path)
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "decoded")
    split = archive.rsplit("-", 1)[1].split(".")[0]
    with pytest.raises(datasets.DataError, match=f"archive {path} could not be read .*holds no image") as err:
        datasets.load_dataset(name, split)
    assert "need at least one array" not in str(err.value)


def _synthetic(n: int) -> LabelledImages:
    labels = np.arange(n, dtype=np.int64) % 2
    images = np.where(labels == 1, 190, 60)[:, None, None, None].repeat(32, 1).repeat(32, 2).repeat(3, 3)
    return LabelledImages(images.astype(np.uint8), labels, 2)


def test_a_subset_larger_than_the_test_split_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: --subset 100 of a 24-image test split silently ran on 24 images, while the report's "subset" and the
    purified cache's folder name (n100) said 100."""
    monkeypatch.setattr(victims, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    config = runner.EvalConfig(dataset="synthetic", attacks=["none"], defenses=["none"], subset=100, epochs=1,
                               cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", bootstrap=0)
    with pytest.raises(EvaluationError, match=r"--subset 100 is larger .* at most 24 .*--subset 24 or less"):
        runner.evaluate_dataset(config, loader=lambda name, split: _synthetic(48 if split == "train" else 24))
    assert not (tmp_path / "out").exists()


def test_a_subset_larger_than_a_decoded_test_split_is_refused_before_any_work(
        job: ModuleType, tmp_path: Path, shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the test split decoded once, its size is known before anything is loaded."""
    datasets.CACHE_DIR.mkdir()
    labels = np.repeat(np.arange(10), [30] * 9 + [25])
    np.savez(datasets.CACHE_DIR / "cifar10-test.npz", images=np.zeros((len(labels), 1, 1, 3), np.uint8), labels=labels,
             source=np.array(datasets._source_stamp("cifar10", "test")))
    base = ["--datasets", "cifar10", "--attacks", "none", "--defenses", "none", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache")]
    assert _run(job, [*base, "--subset", "260"]) == 2
    assert "at most 250 (10 classes x 25); give --subset 250 or less" in _one_error_line(capsys)
    assert _run(job, [*base, "--subset", "250"]) == 0
    assert [c.subset for c in job.started] == [250]


def test_ctrl_c_says_how_to_resume(job: ModuleType, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a page of torch frames ending in KeyboardInterrupt."""

    def interrupted(config: runner.EvalConfig, **_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "evaluate_dataset", interrupted)
    cache = tmp_path / "cache"
    assert _run(job, ["--datasets", "cifar10", *CHEAP, "--out", str(tmp_path / "out"), "--cache-dir", str(cache)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"interrupted: rerun the same command to resume from the caches in {cache}" in err


def test_a_prior_changed_after_the_checks_is_one_error_line(job: ModuleType, tmp_path: Path, shared: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """BUG (fixed here): a prior replaced while the run went on (a jobs/train_prior.py run still saving OUT/prior.pt,
    or one no longer readable by the time a later data set loads it) ended the run in a CheckpointError traceback
    ("... was pinned; refusing to run", though the user pinned nothing)."""
    prior = Path(tiny_model_file(tmp_path))

    def prior_replaced(config: runner.EvalConfig, **kwargs: object) -> None:
        save_bundle(prior, load_checkpoint(str(prior)).model, meta={"saved": "again"})  # other bytes, other sha256
        rng = np.random.default_rng(0)

        def loader(name: str, split: str) -> LabelledImages:
            return LabelledImages(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10, 10)

        runner.evaluate_dataset(config, loader=loader, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(job, "evaluate_dataset", prior_replaced)
    argv = ["--datasets", "cifar10", "--attacks", "none", "--defenses", "none,zip", "--subset", "10", "--steps", "2",
            "--checkpoint", str(prior), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert _run(job, argv) == 2
    line = _one_error_line(capsys)
    assert f"diffusion prior {prior} changed after the run checked it" in line and "rerun" in line


def test_help_says_time_caches_and_how_to_clear_them(job: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(job, ["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("Time on a 2-core CPU", "11-30 min", "ETA", "$ZIP_CACHE_DIR", "To clear", "<cache-dir>/purified",
                   "resumes from its last finished epoch", "$ZIP_SHARED_DIR"):
        assert needle in text, needle
    assert job.parse_args([]).cache_dir == datasets.CACHE_DIR  # one variable moves every cache


def test_the_log_says_where_the_run_is_in_its_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Before: each image set had its own progress bar, but nothing said how many sets were still to come."""
    monkeypatch.setattr(runner, "write_examples", lambda *a, **k: False)  # matplotlib's import alone takes seconds
    config = runner.EvalConfig(dataset="synthetic", attacks=["badnet"], defenses=["none", "naive"], subset=4,
                               epochs=1, threads=1, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                               examples=1, bootstrap=0, train_options={"depth": 8, "batch_size": 16})
    runner.evaluate_dataset(config, loader=lambda name, split: _synthetic(48 if split == "train" else 24))
    err = capsys.readouterr().err
    assert [f"(image set {i} of 4)" in err for i in range(1, 6)] == [True] * 4 + [False]


@pytest.mark.parametrize("options", [["--subset", "0"], ["--subset", "x"], ["--stepz", "2"]])
def test_a_bad_option_is_one_error_line_with_a_pointer_to_help(job: ModuleType, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              options: list[str]) -> None:
    """--help promises "exit status 2 and one error line"; a bad option printed argparse's usage of every option
    (nine lines) above it, as the purify job and the export no longer do."""
    assert _run(job, [*CHEAP, "--out", str(tmp_path), *options]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and ": error: " in err[0] and err[1].endswith("--help for the options)"), err
    assert job.started == []


@pytest.mark.parametrize("flag", ["--out", "--cache-dir", "--checkpoint"])
def test_an_empty_path_from_an_unset_variable_is_refused(job: ModuleType, tmp_path: Path, shared: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], flag: str) -> None:
    """`--out "$OUT"` with OUT unset was the current folder (reports there, or hours of cached classifiers for
    --cache-dir); an empty --checkpoint was refused only as a checkpoint that could not be read."""
    monkeypatch.chdir(tmp_path)
    folders = {"--out": str(tmp_path / "out"), "--cache-dir": str(tmp_path / "cache"), flag: ""}
    argv = ["--datasets", "cifar10", *CHEAP, "--defenses", "none,zip", *(x for kv in folders.items() for x in kv)]
    assert _run(job, argv) == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: empty; give a path" in err and "Traceback" not in err and job.started == []
    assert list(tmp_path.iterdir()) == [shared]
