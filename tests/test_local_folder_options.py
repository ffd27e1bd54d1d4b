"""The options that must name a local folder, as a user meets them: jobs/evaluate.py's --out and --cache-dir and
jobs/train_prior.py's --out. A URI is refused by name (its password not shown), a file:// URI is its path, a '~' the
shell left is the home folder, and a folder that cannot be made (a link that leads nowhere, a name too long, a '~user'
of no user) is one error line before any work, not a traceback or a failure once the work is done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.evaluation import datasets
from tests.jobutil import (
    cifar10_archive_stand_ins,
    evaluate_job_without_evaluation,
    load_job_script,
    run_main,
    train_prior_parsed,
)

CHEAP = ["--datasets", "cifar10", "--attacks", "none", "--defenses", "none", "--subset", "20"]
SECRET = "s3cr3t-pw"
URIS = [f"ftp://user:{SECRET}@host/x", "s3://bucket/results", "simplecache::s3://bucket/x", "memory::results",
        f"zip://a::ftp://user:{SECRET}@host/x.zip"]


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return evaluate_job_without_evaluation(monkeypatch, "evaluate_job_local_folders")


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shared folder with CIFAR-10's archives (stand-ins: only their presence is checked); the current folder is
    tmp_path, so that a folder made there is seen."""
    root = cifar10_archive_stand_ins(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    return root


def _argv(tmp_path: Path, flag: str, value: str) -> list[str]:
    folders = {"--out": str(tmp_path / "out"), "--cache-dir": str(tmp_path / "cache"), flag: value}
    return [*CHEAP, *(x for kv in folders.items() for x in kv)]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and SECRET not in err, err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
@pytest.mark.parametrize("uri", URIS)
def test_evaluate_refuses_a_uri_for_a_local_folder(job: ModuleType, tmp_path: Path, shared: Path, flag: str, uri: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the URI was taken as a path, and a local folder 'ftp:/user:s3cr3t-pw@host/x' was made for the reports (or
    the caches), its password in its name."""
    assert run_main(job, _argv(tmp_path, flag, uri)) == 2
    line = _one_error_line(capsys)
    assert f"error: {flag} " in line and "must be a local folder, not a URI" in line, line
    assert job.started == [] and sorted(tmp_path.iterdir()) == [shared]


@pytest.mark.parametrize("flag, name", [("--out", "out_dir"), ("--cache-dir", "cache_dir")])
def test_evaluate_takes_a_file_uri_as_its_local_folder(job: ModuleType, tmp_path: Path, shared: Path, flag: str,
                                                       name: str) -> None:
    """Before: file:///x/out was the folder 'file:/x/out' in the current one."""
    assert run_main(job, _argv(tmp_path, flag, f"file://{tmp_path}/mine")) == 0
    assert Path(getattr(job.started[0], name)) == tmp_path / "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


@pytest.mark.parametrize("flag, name", [("--out", "out_dir"), ("--cache-dir", "cache_dir")])
def test_evaluate_expands_a_tilde_in_a_folder_and_names_an_unknown_user(
        job: ModuleType, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], flag: str, name: str) -> None:
    """Before: a '~user' of no known user ended in pathlib's RuntimeError traceback ('Could not determine home
    directory')."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert run_main(job, _argv(tmp_path, flag, "~/mine")) == 0
    assert Path(getattr(job.started[0], name)) == tmp_path / "home" / "mine"
    assert run_main(job, _argv(tmp_path, flag, "~no-such-user-here/mine")) == 2
    line = _one_error_line(capsys)
    assert f"error: {flag} ~no-such-user-here/mine: no home folder" in line, line
    assert len(job.started) == 1


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_evaluate_refuses_a_link_that_leads_nowhere(job: ModuleType, tmp_path: Path, shared: Path, flag: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a link to a folder that is not there passed the checks, and the reports' mkdir failed with 'File exists'
    once the hours of work were done (the caches' at the first classifier)."""
    (tmp_path / "link").symlink_to(tmp_path / "gone" / "folder")
    for value in (tmp_path / "link", tmp_path / "link" / "below"):
        assert run_main(job, _argv(tmp_path, flag, str(value))) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"error: {flag} {value}: {tmp_path / 'link'} is a link to ") and "leads nowhere" in line
    assert job.started == []


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_evaluate_names_a_folder_name_the_system_refuses(job: ModuleType, tmp_path: Path, shared: Path, flag: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a name too long for the file system was an OSError traceback out of the checks."""
    assert run_main(job, _argv(tmp_path, flag, "a" * 300)) == 2
    assert _one_error_line(capsys).startswith(f"error: {flag} {'a' * 300}: ")
    assert job.started == []


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_evaluate_says_why_a_folder_is_not_writable(job: ModuleType, tmp_path: Path, shared: Path, flag: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only parent (stubbed: this test may run as root, whom only a read-only mount refuses) is named with the
    two reasons it may have, as the purify job names it."""
    locked, real = tmp_path / "locked", os.access
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: (os.path.abspath(path) != str(locked)
                                                                   and real(path, mode, *a, **k)))
    assert run_main(job, _argv(tmp_path, flag, str(locked / "new"))) == 2
    assert _one_error_line(capsys) == (f"error: {flag} {locked / 'new'}: {locked} is not writable by this user (no "
                                       "permission, or a read-only file system)")


@pytest.fixture
def train_prior() -> ModuleType:
    return load_job_script("train_prior.py", "train_prior_local_folders")


def test_train_prior_takes_a_file_uri_or_a_tilde_as_a_local_folder(train_prior: ModuleType, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: --out file:///x/run was refused as not local, and --out=~/run (a '~' zsh leaves after '=') was a folder
    named '~' in the current one (likewise a local --export and --init-from)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args = train_prior_parsed(train_prior, "--out", f"file://{tmp_path}/run")
    assert Path(args.out) == tmp_path / "run"
    args = train_prior_parsed(train_prior, "--out=~/run", "--export=~/p.pt", "--init-from=~/start.pt")
    home = tmp_path / "home"
    assert (Path(args.out), Path(args.export), Path(args.init_from)) == (home / "run", home / "p.pt", home / "start.pt")


@pytest.mark.parametrize("value, says", [
    ("memory::run", "give a local folder"),
    ("simplecache::file:///tmp/run", "give a local folder"),
    ("~no-such-user-here/run", "no home folder"),
    ("a" * 300, ""),
    ("link/below", "leads nowhere"),
    ("file://", "a file:// URI without a path"),
    ("a-file", "a-file is a file, not a folder"),
])
def test_train_prior_refuses_an_out_it_cannot_make_in_one_line(train_prior: ModuleType, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str], value: str,
                                                               says: str) -> None:
    """Before: a chain was taken as a local folder 'memory::run', a '~user' of no user as a folder named so, a name too
    long was an OSError traceback, and a link that leads nowhere passed the checks (the run's mkdir then failed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    (tmp_path / "a-file").write_text("")
    assert train_prior_parsed(train_prior, "--out", value) == 2
    err = capsys.readouterr().err
    assert f"error: --out {value}" in err and says in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "link"]


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_evaluate_refuses_a_file_uri_without_a_path(job: ModuleType, tmp_path: Path, shared: Path, flag: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 'file://' was the folder 'file:' in the current one."""
    assert run_main(job, _argv(tmp_path, flag, "file://")) == 2
    assert f"error: {flag} file://: a file:// URI without a path" in _one_error_line(capsys)
    assert job.started == [] and sorted(tmp_path.iterdir()) == [shared]


@pytest.mark.parametrize("variable", ["ZIP_SHARED_DIR", "ZIP_CACHE_DIR"])
def test_a_uri_in_a_folder_variable_is_refused_without_its_password(
        job: ModuleType, train_prior: ModuleType, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], variable: str) -> None:
    """Before: $ZIP_SHARED_DIR ftp://user:password@host/x was read as a local folder 'ftp:/user:password@host/x', and
    its "not found" line showed the password; $ZIP_CACHE_DIR made a folder of that name for the decoded copies."""
    monkeypatch.setenv(variable, f"ftp://user:{SECRET}@host/data")
    assert run_main(job, _argv(tmp_path, "--out", str(tmp_path / "out"))) == 2
    assert f"error: ${variable} ftp://user:***@host/data: must be a local folder" in _one_error_line(capsys)
    assert train_prior_parsed(train_prior, "--out", str(tmp_path / "run")) == 2
    assert f"error: ${variable} ftp://user:***@host/data: must be a local folder" in _one_error_line(capsys)
    assert job.started == [] and sorted(tmp_path.iterdir()) == [shared]


def test_an_empty_folder_variable_is_unset_and_a_tilde_in_one_is_the_home_folder(tmp_path: Path) -> None:
    """Before: ZIP_SHARED_DIR= (empty, as a compose file or a script's unset variable passes it on) was the current
    folder, and ZIP_CACHE_DIR="~/cache" (quoted, so no shell expanded it) a folder named '~' in the current one for the
    decoded data sets, while --cache-dir's default read it as the home folder's."""
    code = "from pipeline.evaluation import datasets as d; print(d.SHARED_DIR); print(d.CACHE_DIR)"
    env = {**os.environ, "HOME": str(tmp_path / "home"), "ZIP_SHARED_DIR": "", "ZIP_CACHE_DIR": "~/cache",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    said = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    assert said == [str(Path(datasets.__file__).resolve().parents[3] / "shared"), str(tmp_path / "home" / "cache")]


def test_a_local_folder_whose_name_holds_two_colons_is_still_one(job: ModuleType, train_prior: ModuleType,
                                                                  tmp_path: Path, shared: Path) -> None:
    """Before today's local-folder checks, and again: 'runs::v2' (no file system's name before the '::', no URI after
    it) is a folder of the current one, as pathlib writes it; it was refused as an fsspec chain."""
    assert run_main(job, _argv(tmp_path, "--out", "runs::v2")) == 0
    assert Path(job.started[0].out_dir) == Path("runs::v2")
    assert run_main(job, _argv(tmp_path, "--cache-dir", "cache::v2")) == 0
    assert Path(job.started[1].cache_dir) == Path("cache::v2")
    assert Path(train_prior_parsed(train_prior, "--out", "runs::v2").out) == Path("runs::v2")


def test_a_file_uri_of_a_folder_whose_name_holds_two_colons_names_that_folder(job: ModuleType, train_prior: ModuleType,
                                                                             tmp_path: Path, shared: Path) -> None:
    """file:///x/runs::v2 is the folder /x/runs::v2, as /x/runs::v2 is and as the purify job's --output writes it; it
    was refused as an fsspec chain ('give a local folder'), since any '::' after a file:// counted as one. A link that
    is a URI or a file system's name still makes it a chain (tests/test_mutation_cluster_paths.py)."""
    out, cache = tmp_path / "runs::v2", tmp_path / "cache::v2"
    assert run_main(job, _argv(tmp_path, "--out", f"file://{out}")) == 0
    assert Path(job.started[0].out_dir) == out
    assert run_main(job, _argv(tmp_path, "--cache-dir", f"file://{cache}")) == 0
    assert Path(job.started[1].cache_dir) == cache
    assert Path(train_prior_parsed(train_prior, "--out", f"file://{out}").out) == out
    assert train_prior_parsed(train_prior, "--out", f"file://{out}::memory::x") == 2  # a chain onto memory://


def test_a_file_uri_with_one_slash_is_its_path_as_the_purify_job_reads_it(train_prior: ModuleType, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """BUG (fixed here): file:/x/run (the form Hadoop, Spark and Java's File.toURI write) was the folder 'file:/x/run'
    in the current one, while the purify job's --output, and this job's own --export and --init-from, read it as
    /x/run."""
    monkeypatch.chdir(tmp_path)
    for value in (f"file:{tmp_path}/run", f"local:{tmp_path}/run"):
        assert Path(train_prior_parsed(train_prior, "--out", value).out) == tmp_path / "run", value
    assert list(tmp_path.iterdir()) == []
    # chained onto a server, as file:///x/run::ftp://... is: refused, its password not shown nor made a folder's name
    assert train_prior_parsed(train_prior, "--out", f"file:{tmp_path}/run::ftp://user:{SECRET}@host/x") == 2
    err = capsys.readouterr().err
    assert "give a local folder" in err and SECRET not in err, err
    assert list(tmp_path.iterdir()) == []

