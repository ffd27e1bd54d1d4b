"""jobs/train_prior.py after review 2 (Dec 3): --export takes URIs, --out refuses them, --seed has the purify job's range,
and an --init-from that a resume would ignore is refused while the same command still resumes. All run in seconds on a
16-image stand-in training set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import fsspec
import pytest

from pipeline.checkpoint import load_checkpoint
from tests.jobutil import TRAIN_TINY_ARGS, train_prior_on_noise
from tests.netutil import refused_port
from tests.s3util import moto_s3, without_aws_credentials

TINY = TRAIN_TINY_ARGS


@pytest.fixture()
def train_prior(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return train_prior_on_noise(monkeypatch, "train_prior_mends_dec3")


def test_an_export_uri_is_uploaded_and_loads(train_prior: ModuleType, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = "memory://mends-dec3/models/prior.pt"  # fsspec's in-process store: an upload without a network
    try:
        assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "run"), "--export", uri, *TINY]) == 0
        loaded = load_checkpoint(uri)  # as purify.py --checkpoint URI reads it
        assert loaded.meta["steps"] == 1 and loaded.config.num_channels == 32
        assert not (tmp_path / "memory:").exists() and not (tmp_path / "run" / "prior.pt").exists()
    finally:
        fsspec.filesystem("memory").rm("/mends-dec3", recursive=True)


def test_an_out_uri_is_a_usage_error(train_prior: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_prior.cli(["--max-steps", "1", "--out", "s3://bucket/runs/prior", *TINY]) == 2
    assert "--export s3://bucket/runs/prior/prior.pt" in capsys.readouterr().err  # what to give instead
    assert list(tmp_path.iterdir()) == []  # nothing written, no ./s3: folder


@pytest.mark.parametrize("seed, rc", [(2**32 - 1, 0), (2**32, 2), (-1, 2)])
def test_the_seed_range_is_the_purify_jobs(train_prior: ModuleType, tmp_path: Path, seed: int, rc: int) -> None:
    argv = ["--out", str(tmp_path), "--seed", str(seed), *TINY]
    assert train_prior.cli(["--max-steps", "1", *argv]) == rc
    if rc == 0:  # the largest seed also resumes
        assert train_prior.cli(["--max-steps", "2", *argv]) == 0
        assert load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 2
    else:
        assert not (tmp_path / "last.pt").exists()


def test_the_same_init_from_command_resumes_and_another_init_from_is_refused(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_prior.cli(["--max-steps", "1", "--out", str(first), "--seed", "1", *TINY]) == 0
    assert train_prior.cli(["--max-steps", "1", "--out", str(second), "--seed", "2", *TINY]) == 0
    out = str(tmp_path / "ft")
    fine_tune = ["--out", out, "--init-from", str(first / "prior.pt"), *TINY]
    assert train_prior.cli(["--max-steps", "1", *fine_tune]) == 0
    # The README's resume: the same command again (it names the same --init-from) continues the run.
    assert train_prior.cli(["--max-steps", "2", *fine_tune]) == 0
    assert load_checkpoint(out + "/prior.pt").meta["steps"] == 2
    capsys.readouterr()
    # Another prior into the same folder would be ignored by the resume: refused, with the way to do it.
    other = ["--out", out, "--init-from", str(second / "prior.pt"), *TINY]
    assert train_prior.cli(["--max-steps", "3", *other]) == 2
    err = capsys.readouterr().err
    assert "--fresh" in err and str(first / "prior.pt") in err
    assert load_checkpoint(out + "/prior.pt").meta["steps"] == 2  # untouched
    assert train_prior.cli(["--max-steps", "1", "--fresh", *other]) == 0
    assert str(second / "prior.pt") in load_checkpoint(out + "/prior.pt").meta["initialised_from"]


@pytest.mark.parametrize("same", ["path", "spelled-otherwise", "file-uri"])
def test_an_export_onto_the_init_from_prior_is_refused_before_training(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], same: str) -> None:
    # BUG (fixed here): --export naming the --init-from prior overwrote it at the first save, and then the same command,
    # which the README and the "interrupted" line say resumes the run, was refused: the prior it started from had
    # other weights now ("resuming it would ignore --init-from"), and --fresh would restart from the overwritten ones.
    assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "first"), *TINY]) == 0
    prior = tmp_path / "first" / "prior.pt"
    before = prior.read_bytes()
    export = {"path": str(prior), "spelled-otherwise": str(tmp_path / "first" / ".." / "first" / "prior.pt"),
              "file-uri": prior.as_uri()}[same]
    argv = ["--max-steps", "1", "--out", str(tmp_path / "ft"), "--init-from", str(prior), "--export", export, *TINY]
    assert train_prior.cli(argv) == 2
    assert f"--export {export} would overwrite the --init-from prior" in capsys.readouterr().err
    assert prior.read_bytes() == before and not (tmp_path / "ft").exists()
    # without --export the run exports to OUT/prior.pt: the same when --init-from is that file
    assert train_prior.cli(["--max-steps", "2", "--fresh", "--out", str(tmp_path / "first"), "--init-from", str(prior),
                            *TINY]) == 2
    assert f"--export {prior} would overwrite the --init-from prior" in capsys.readouterr().err
    assert prior.read_bytes() == before
    # and the run's own last.pt, which every save rewrites
    last = tmp_path / "first" / "last.pt"
    state = last.read_bytes()
    assert train_prior.cli(["--max-steps", "2", "--fresh", "--out", str(tmp_path / "first"), "--init-from", str(last),
                            *TINY]) == 2
    assert f"--init-from {last} is the run's own last.pt" in capsys.readouterr().err
    assert last.read_bytes() == state


@pytest.mark.parametrize(("init_from", "export"), [("~/first/prior.pt", "file://~/first/prior.pt"),
                                                   ("file://~/first/prior.pt", "~/first/prior.pt")])
def test_an_export_onto_the_init_from_prior_through_home_is_refused(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        init_from: str, export: str) -> None:
    # BUG (fixed here): a '~' in a file:// URI was a folder named '~' to the check, but the home folder to fsspec, which
    # writes the export: the prior the run started from was overwritten at the first save
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "first"), *TINY]) == 0
    prior = tmp_path / "first" / "prior.pt"
    before = prior.read_bytes()
    argv = ["--max-steps", "1", "--out", str(tmp_path / "ft"), "--init-from", init_from, "--export", export, *TINY]
    assert train_prior.cli(argv) == 2
    assert "would overwrite the --init-from prior" in capsys.readouterr().err
    assert prior.read_bytes() == before and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("name", ["last.pt", "train_log.jsonl", ".lock"])
@pytest.mark.parametrize("as_uri", [False, True])
def test_an_export_onto_a_file_of_the_run_folder_is_refused_before_training(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, as_uri: bool) -> None:
    # BUG (fixed here): --export OUT/.lock, and any of the run's own files given as a file:// URI, were accepted; the
    # first save then replaced the lock file (or the resume state, or the log) with the prior.
    out = tmp_path / "run"
    export = (out / name).as_uri() if as_uri else str(out / name)
    assert train_prior.cli(["--max-steps", "1", "--out", str(out), "--export", export, *TINY]) == 2
    assert f"--export {export} would overwrite the run's own {name}" in capsys.readouterr().err
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("export", ["https://models.example.com/prior.pt", "HTTP://127.0.0.1:1/prior.pt"])
def test_a_web_address_as_export_is_refused_before_training(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], export: str) -> None:
    # BUG (fixed here): a web address was accepted; fsspec's HTTP file system cannot write, so every save warned,
    # the run ended with exit status 1 after its whole --minutes, and the prior was never written. The purify job
    # refuses a web --output before any work; so is a web --export now.
    out = tmp_path / "run"
    assert train_prior.cli(["--max-steps", "1", "--out", str(out), "--export", export, *TINY]) == 2
    err = capsys.readouterr().err
    assert f"--export {export}: " in err and "read-only" in err
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("options", [["--batch", "0"], ["--batch", "x"], ["--minutez", "2"]])
def test_a_bad_option_is_one_error_line_with_a_pointer_to_help(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]) -> None:
    # argparse's usage of every option (eleven lines) came above the error, as the purify job's no longer does
    with pytest.raises(SystemExit) as stopped:
        train_prior.main(["--max-steps", "1", "--out", str(tmp_path / "run"), *TINY, *options])
    err = capsys.readouterr().err.splitlines()
    assert stopped.value.code == 2 and len(err) == 2 and ": error: " in err[0], err
    assert err[1].endswith("--help for the options)")


def test_a_refused_fine_tune_resume_points_to_the_init_from_it_started_from(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # BUG (fixed here): another --init-from was refused with "to resume the run, leave out --init-from"; but without it
    # the width options' defaults (and the linear schedule over every timestep) described another model than the prior
    # the run started from, so that resume was refused too, with --fresh (discarding the run) as the way on.
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_prior.cli(["--max-steps", "1", "--out", str(first), "--max-timestep", "499", *TINY]) == 0
    assert train_prior.cli(["--max-steps", "1", "--out", str(second), "--max-timestep", "499", "--seed", "2", *TINY]) == 0
    started = str(first / "prior.pt")
    out = str(tmp_path / "ft")
    options = ["--out", out, "--batch", "4", "--threads", "1"]  # the architecture is the --init-from prior's
    assert train_prior.cli(["--max-steps", "1", "--init-from", started, *options]) == 0
    capsys.readouterr()
    assert train_prior.cli(["--max-steps", "2", "--init-from", str(second / "prior.pt"), *options]) == 2
    err = capsys.readouterr().err
    assert "leave out --init-from" not in err and f"to resume the run, give --init-from {started}" in err, err
    assert train_prior.cli(["--max-steps", "2", *options]) == 2  # leaving it out: another model than the run's
    err = capsys.readouterr().err
    assert f"to resume it, give --init-from {started}" in err, err
    assert train_prior.cli(["--max-steps", "2", "--init-from", started, *options]) == 0  # the advice resumes it
    assert load_checkpoint(out + "/prior.pt").meta["steps"] == 2
    # The same name holding other weights (the prior there was replaced): the way on is to put the old one back.
    (first / "prior.pt").write_bytes((second / "prior.pt").read_bytes())
    capsys.readouterr()
    assert train_prior.cli(["--max-steps", "3", "--init-from", started, *options]) == 2
    err = capsys.readouterr().err
    assert "to resume the run, put the prior it started from (sha256 " in err and f"back at {started}" in err, err


@pytest.fixture()
def s3_from_environment() -> Iterator[None]:
    """--export builds its S3 file system from the environment (no storage options), and fsspec keeps that instance
    for the process: each test's moto server and variables get a new one."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("problem", ["missing-bucket", "no-credentials"])
def test_an_export_uri_that_cannot_be_written_is_refused_before_training(
        train_prior: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        problem: str, s3_from_environment: None) -> None:
    # BUG (fixed here): an --export in a bucket that does not exist, or without credentials, was first written at the
    # first save: the run trained its whole --minutes, then ended with exit status 1 and no prior.
    with moto_s3("priors") as (client, options):
        monkeypatch.setenv("AWS_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        if problem == "no-credentials":
            without_aws_credentials(monkeypatch, tmp_path)
            export = "s3://priors/models/prior.pt"
        else:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
            export = "s3://no-such-bucket/models/prior.pt"
        out = tmp_path / "run"
        assert train_prior.cli(["--max-steps", "1", "--out", str(out), "--export", export, *TINY]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and f": error: --export {export}: cannot write there (" in err[0], err  # and --help
        assert not out.exists()
        assert "Contents" not in client.list_objects_v2(Bucket="priors")


def test_a_writable_export_uri_is_checked_without_leaving_a_file(
        train_prior: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_from_environment: None) -> None:
    # the check writes a small hidden file beside the export and deletes it: only the prior is left in the bucket
    with moto_s3("priors") as (client, options):
        monkeypatch.setenv("AWS_ENDPOINT_URL", options["client_kwargs"]["endpoint_url"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
        export = "s3://priors/models/prior.pt"
        assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "run"), "--export", export, *TINY]) == 0
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="priors")["Contents"]]
        assert keys == ["models/prior.pt"], keys


def test_an_export_to_a_server_that_does_not_answer_is_refused_naming_it_without_its_password(
        train_prior: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # an ftp:// export was a traceback ("FTPFileSystem.__init__() missing 1 required positional argument: 'host'":
    # the URL's server was not passed on), and the refusals echoed the password in the URI
    with refused_port() as port:  # a port nothing listens on
        export = f"ftp://etl:pa55word-secret@127.0.0.1:{port}/priors/prior.pt"
        assert train_prior.cli(["--max-steps", "1", "--out", str(tmp_path / "run"), "--export", export, *TINY]) == 2
    err = capsys.readouterr().err
    assert f"error: --export ftp://etl:***@127.0.0.1:{port}/priors/prior.pt: ConnectionRefusedError" in err, err
    assert "pa55word" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
