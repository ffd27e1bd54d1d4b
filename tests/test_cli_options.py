"""The command line as its user meets it: --help, --config files, flag errors and exit statuses (no Ray started)."""

from __future__ import annotations

import os
import re
import signal
from dataclasses import fields
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.cli import build_parser, config_from_args, main
from pipeline.config import JobConfig
from pipeline.errors import JobError, JobFailed, JobInterrupted
from pipeline.export_cli import build_parser as export_parser
from pipeline.plan import check_output_state, plan_job
from pipeline.stopped_run import record_stopped_run
from tests.jobutil import image_bytes, image_folder
from tests.netutil import refused_port
from tests.s3util import without_aws_credentials


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_help_says_what_the_defaults_and_the_exit_statuses_are() -> None:
    text = " ".join(build_parser().format_help().split())  # argparse wraps help text at any space
    assert "exit status:" in text and " 130 " in text and " 143 " in text and "resumes" in text
    d = JobConfig()
    for shown in (f"(default {d.sampler})", f"(default {d.precision})", f"(default {d.alpha})",
                  f"default {d.seed})", f"default {d.large_images})", f"(default {d.operators})",
                  f"(default {d.steps})", f"(default {d.pool})", f"(default {d.tile_batch})"):
        assert shown in text, shown
    assert "not with --overwrite" in text and "not with --incremental" in text
    # every option of JobConfig can be given on the command line (storage_options through the storage flags)
    dests = {a.dest for a in build_parser()._actions}
    assert {f.name for f in fields(JobConfig)} - dests == {"storage_options"}


@pytest.mark.parametrize("parser", [build_parser, export_parser], ids=["zip-purify", "zip-purify-export"])
def test_every_option_that_takes_a_value_says_what_it_is_when_not_given(parser) -> None:
    # --checkpoint-sha256, --flags, --s3-endpoint and --storage-option said what they do but not what a run does
    # without them (no pin? the flags from where? AWS's endpoint?): a reader of --help had to guess
    silent = [action.option_strings[0] for action in parser()._actions
              if action.option_strings and action.nargs != 0 and not action.required
              and not re.search(r"\bdefault\b", action.help or "", re.I)]
    assert silent == [], silent


@pytest.mark.parametrize("script", ["train_prior.py", "evaluate.py"])
def test_every_option_of_the_training_and_evaluation_scripts_says_what_it_is_when_not_given(script, monkeypatch) -> None:
    # train_prior.py's --init-from said what it does, not that without it training starts from random weights
    import argparse

    from tests.jobutil import load_job_script

    class _Built(Exception):
        pass

    def stop(self, args=None, namespace=None):
        raise _Built(self)

    module = load_job_script(script, f"help_defaults_{script[:-3]}")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Built) as built:
        module.parse_args([])
    parser = built.value.args[0]
    formatter = parser._get_formatter()  # the text --help shows, the defaults its formatter adds included
    silent = [action.option_strings[0] for action in parser._actions
              if action.option_strings and action.nargs != 0
              and not re.search(r"\bdefault\b", formatter._get_help_string(action) or "", re.I)]  # not "the defaults of"
    assert silent == [], silent


def _write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "job.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(("text", "message"), [
    ("steps: [1\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("steps: 20\nsteps: 30\n", "key 'steps' is given twice (line 2, column 1)"),
    ("", "is empty"),
    ("- steps\n", "must hold a mapping of option: value, got a list"),
    ("steeps: 20\n", "unknown option 'steeps'; did you mean steps?"),
    ("no_progress: true\n", "unknown option 'no_progress'; write progress: false"),
    ('steps: "20"\n', "--steps: steps must be an integer in [1, 1000], got '20' (set in --config"),
    ('eta: "1"\n', "--eta: eta must be a number, got '1' (set in --config"),
    ('eta: "1"\n', ": eta; read as text: write the number without quotes)"),
    ("lam: 1e-3\n", "--lam: lam must be a number, got '1e-3' (set in --config"),
    ("lam: 1e-3\n", ": lam; read as text: write it with a dot before the exponent (1.0e-3))"),
    ("pool: 4.0\n", "--pool: pool factor must be a positive integer, got 4.0 (set in --config"),
    ('overwrite: "yes"\n', "--overwrite must be true or false, got 'yes' (set in --config"),
    ('anon: "no"\n', "anon must be true or false, got 'no'"),  # was read as true: anonymous access
    ("s3_endpoint: 5\n", "s3_endpoint must be text, got 5"),
    ("operators: 5\n", "--operators: operators must be text such as 'pool' or 'gray,pool' (or a list of operator names), "
                        "got 5 (set in --config"),
    ("storage_options: [key=x]\n", "storage_options in"),
    ("tile-batch: 8\ntile_batch: 9\n", "tile_batch is given twice"),
    (b"\xff\xfe", "is not UTF-8 text"),
    ("steps: 0\n", "--steps: steps must be an integer in [1, 1000], got 0 (set in --config"),
    ("incremental: true\noverwrite: true\n", "--incremental and --overwrite contradict each other"),
])
def test_a_bad_config_file_is_one_error_line_naming_the_file_and_key(tmp_path, capsys, text, message) -> None:
    path = _write(tmp_path, text)
    assert main(["--config", path, "--dry-run", "--output", str(tmp_path / "out")]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and path in err[0] and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["missing.yaml", "."])
def test_a_config_path_that_is_not_a_file(tmp_path, capsys, where) -> None:
    assert main(["--config", str(tmp_path / where), "--dry-run"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: cannot read --config"), err


def test_config_keys_as_spelled_on_the_command_line_and_one_storage_option(tmp_path) -> None:
    path = _write(tmp_path, "tile-batch: 8\nlabels-from-folders: true\nstorage_option: region=eu\nanon: false\n")
    config = config_from_args(["--config", path])
    assert (config.tile_batch, config.labels_from_folders) == (8, True)
    assert config.storage_options == {"region": "eu"}  # one KEY=VALUE, not one option per character


def test_an_empty_s3_endpoint_is_refused_naming_where_it_was_given(tmp_path, capsys) -> None:
    """`--s3-endpoint "$S3_ENDPOINT"` with the variable unset was taken as not given: the run (or export) went to
    AWS's S3 with the credentials meant for MinIO, to a bucket of the same name there if one exists."""
    from pipeline import export_cli

    with pytest.raises(cli.ConfigError, match=r"^--s3-endpoint is empty; give the endpoint's URL"):
        config_from_args(["--input", "s3://b/in", "--output", "s3://b/out", "--s3-endpoint", ""])
    with pytest.raises(cli.ConfigError, match=r"^--s3-endpoint is empty; give the endpoint's URL"):  # spaces alone
        config_from_args(["--input", "s3://b/in", "--output", "s3://b/out", "--s3-endpoint", "  "])
    path = _write(tmp_path, 's3_endpoint: " "\n')
    with pytest.raises(cli.ConfigError, match=rf"^s3_endpoint in {path} is empty"):
        config_from_args(["--input", "s3://b/in", "--output", "s3://b/out", "--config", path])
    path = _write(tmp_path, 's3_endpoint: ""\n')
    with pytest.raises(cli.ConfigError, match=rf"^s3_endpoint in {path} is empty"):
        config_from_args(["--input", "s3://b/in", "--output", "s3://b/out", "--config", path])
    assert export_cli.main(["--output", "s3://b/out", "--to", str(tmp_path / "to"), "--s3-endpoint", ""]) == 2
    assert _errors(capsys) == ["error: --s3-endpoint is empty; give the endpoint's URL (http://host:9000), or leave it "
                               "out for AWS's"]
    assert not (tmp_path / "to").exists()


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(("text", "message"), [
    # the list form under the mapping's name, and the other way round: both forms are documented, so easily swapped
    (f"storage_options: [key=AKIAEXAMPLE, secret={SECRET}]\n", "storage_options in"),
    (f"storage_options: key=AKIAEXAMPLE,secret={SECRET}\n", "storage_options in"),
    (f"storage_option:\n  key: AKIAEXAMPLE\n  secret: {SECRET}\n", "storage_option must be a list or text"),
    (f'storage_option: ["secret: {SECRET}"]\n', "expects KEY=VALUE, got 'secret: ***'"),
])
def test_a_misplaced_storage_option_is_refused_without_printing_its_credentials(tmp_path, capsys, text,
                                                                                message) -> None:
    """The error quoted the file's value whole: a secret key on stderr, which ends up in CI logs and schedulers'
    job histories (secrets are written as ***, and the job never logs its configuration)."""
    path = _write(tmp_path, text)
    assert main(["--config", path, "--dry-run", "--output", str(tmp_path / "out")]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and path in err[0] and message in err[0], err
    assert SECRET not in err[0], err


def test_a_storage_option_value_meant_as_json_but_not_valid_is_refused_before_any_work(capsys) -> None:
    """client_kwargs={bad was kept as text and failed once fsspec used it ('str' object has no attribute 'copy')."""
    assert main(["--storage-option", "client_kwargs={bad", "--dry-run"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: storage option client_kwargs: its value is not valid JSON"), err
    # text that is not meant as JSON stays text, as before
    assert config_from_args(["--storage-option", "region=eu-west-1"]).storage_options == {"region": "eu-west-1"}


def test_a_misspelt_flag_gets_a_suggestion_and_a_short_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--stpes", "20", "--dry-run"])
    assert exit_.value.code == 2
    err = _errors(capsys)
    assert len(err) <= 2 and "did you mean --steps?" in err[0] and "--help" in err[-1], err
    assert "--input IN" not in err[0]  # 20 is the misspelt flag's value, not a positional input


@pytest.mark.parametrize(("command", "named"), [
    (["-m", "pipeline.cli", "--stpes", "20"], "python -m pipeline.cli"),
    # each script in jobs/, named as it was run, is test_a_flag_errors_hint_runs_as_printed_from_a_folder_with_a_space
])
def test_a_flag_error_names_the_command_the_user_ran(command: list[str], named: str) -> None:
    # "zip-purify: error: ... (run zip-purify --help for the options)" after `python jobs/purify.py --stpes 20`: a
    # command the README's set-up (a checkout's scripts, a cluster's working dir) may not have on PATH, or one that
    # runs another installed copy
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, *command], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert err[0].startswith(f"{named}: error: unrecognized arguments: "), err
    assert err[-1] == f"(run {named} --help for the options)", err


@pytest.mark.parametrize(("script", "flags"), [
    ("purify.py", ["--stpes", "20"]),
    ("export.py", ["--output", "o", "--to", "d", "--wokers", "2"]),
    # the training, evaluation and report scripts said "(run train_prior.py --help ...)": not a command that runs
    ("train_prior.py", ["--minuts", "1"]),
    ("evaluate.py", ["--subst", "10"]),
    ("target_table.py", ["--atacks", "badnet", "docs/cifar10.json"]),
])
def test_a_flag_errors_hint_runs_as_printed_from_a_folder_with_a_space(tmp_path, script: str, flags: list[str]) -> None:
    # "zip-purify: error: ... (run zip-purify --help for the options)" after `python jobs/purify.py --stpes 20`: a
    # command the README's set-up (a checkout's scripts, a cluster's working dir) may not have on PATH. And
    # "(run python /home/me/My Projects/zip/jobs/purify.py --help for the options)": pasted, the shell runs
    # /home/me/My with the rest as its arguments. The script is named as it was run (here a relative path through a
    # link, neither made absolute nor resolved) and quoted as the shell needs it: one process a script shows both.
    import shlex
    import subprocess
    import sys

    folder = tmp_path / "My Projects"
    folder.mkdir()
    (folder / script).symlink_to(Path(__file__).resolve().parents[1] / "jobs" / script)
    as_run = f"My Projects/{script}"
    done = subprocess.run([sys.executable, as_run, *flags], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    err = [line for line in done.stderr.splitlines() if line.strip()]
    named = f"python '{as_run}'"
    assert err[0].startswith(f"{named}: error: unrecognized arguments: "), err
    assert err[-1] == f"(run {named} --help for the options)", err
    assert shlex.split(err[-1].removeprefix("(run ").removesuffix(" --help for the options)")) == ["python", as_run]


def test_an_abbreviated_flag_is_refused_not_guessed(capsys) -> None:
    """argparse took --over for --overwrite: a scheduled command's meaning would change the day a second flag
    starting --over were added."""
    with pytest.raises(SystemExit) as exit_:
        main(["--over", "--dry-run"])
    assert exit_.value.code == 2 and "--over" in _errors(capsys)[0]


def test_a_ray_address_nobody_answers_stops_at_once_with_the_address(tmp_path, capsys, monkeypatch) -> None:
    """ray.init retried an address nobody answered for minutes, printing nothing a user could act on."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh CLI process, whatever the suite started
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    with refused_port() as port:  # a port nothing listens on
        code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--ray-address",
                     f"127.0.0.1:{port}", "--no-progress"])
    assert code == 2
    assert f"--ray-address 127.0.0.1:{port}: nothing answers" in _errors(capsys)[0]
    assert not (tmp_path / "out").exists()  # stopped before the output was started


@pytest.mark.parametrize("auth_mode", [None, "token"])
def test_a_head_that_answers_but_refuses_the_join_names_ray_auth_mode(tmp_path, capsys, monkeypatch,
                                                                      auth_mode) -> None:
    """README's one-machine `ray job submit` path: a head `ray start` started where ~/.ray/auth_token exists has token
    authentication on, and `--ray-address 127.0.0.1:6379` without RAY_AUTH_MODE=token stopped with only Ray's
    'Failed to connect to Ray cluster' (and Ray's guess that an earlier Ray crashed): nothing named the remedy."""
    import ray

    from pipeline import placement

    def refused(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if auth_mode:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    else:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(placement, "unreachable_ray_address", lambda address: None)  # the head's port answers
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--ray-address",
                 "127.0.0.1:6379", "--no-progress"])
    [line] = _errors(capsys)
    assert code == 2 and "could not join the Ray cluster at 127.0.0.1:6379" in line
    assert ("export RAY_AUTH_MODE=token" in line) == (auth_mode is None)  # set already: not the cause


def test_incremental_and_overwrite_together_are_refused(capsys) -> None:
    assert main(["--incremental", "--overwrite", "--dry-run"]) == 2
    assert "contradict each other" in _errors(capsys)[0]


def test_overwrite_never_deletes_files_the_job_did_not_write(tmp_path) -> None:
    out = tmp_path / "dataset"
    (out / "data").mkdir(parents=True)
    (out / "data" / "cat.png").write_bytes(image_bytes(8, 8, 0))
    config = JobConfig(input=str(tmp_path / "in"), output=str(out), overwrite=True)
    with pytest.raises(JobError, match=r"--overwrite would delete .*holds 1 file\(s\) this job did not write"):
        check_output_state(config, {}, dry_run=False)
    assert (out / "data" / "cat.png").exists()
    (out / "data" / "cat.png").unlink()
    (out / "data" / "part-0.parquet").write_bytes(b"")  # the job's own files are deleted as before
    assert check_output_state(config, {}, dry_run=False) == "overwrite" and not (out / "data").exists()


@pytest.mark.parametrize("folder", ["data", "rejects"])
def test_a_new_output_whose_data_or_rejects_folder_holds_the_users_files_is_refused(tmp_path, capsys, folder) -> None:
    # a data set's own folder given as --output (a Hugging Face data set's data/train-*.parquet): the run wrote its
    # _job.json there and called it a new output, its part files landing among the user's, which
    # pd.read_parquet(OUTPUT/data) then read as rows of the output
    (tmp_path / "in").mkdir()
    out = tmp_path / "dataset"
    (out / folder).mkdir(parents=True)
    (out / folder / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    code = main(["--input", str(tmp_path / "in"), "--output", str(out), "--no-progress"])
    [line] = _errors(capsys)
    assert code == 2 and f"{folder}/ holds 1 file(s) this job did not write" in line and "choose another output" in line
    assert sorted(p.name for p in out.iterdir()) == [folder]  # nothing written beside the user's files
    (out / folder / "train-00000-of-00001.parquet").unlink()
    (out / folder / ".DS_Store").write_bytes(b"")  # a hidden file is no one's rows: the output is new
    assert main(["--input", str(tmp_path / "in"), "--output", str(out), "--no-progress", "--dry-run"]) == 0


def test_inputs_in_the_folders_the_job_writes_are_refused_not_skipped(tmp_path) -> None:
    root = tmp_path / "set"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.png").write_bytes(image_bytes(32, 32, 0))
    # the output as the input folder itself: the user's data/a.png would be taken for an output file and never read
    # (refused as a new output whose data/ holds files the job did not write; with a record, as an input in data/)
    with pytest.raises(JobError, match="data/ holds 1 file\\(s\\) this job did not write"):
        plan_job(JobConfig(input=str(root), output=str(root)), dry_run=True)
    # an input inside the output's data/: the job would read its own part files back
    with pytest.raises(JobError, match="lies inside the data/ folder the job writes"):
        plan_job(JobConfig(input=str(root / "data"), output=str(root)), dry_run=True)


def test_an_output_inside_another_outputs_data_or_rejects_folder_is_refused(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(32, 32, 0))
    first = tmp_path / "out1"
    (first / "data").mkdir(parents=True)
    (first / "_job.json").write_text("{}")
    # pd.read_parquet(out1/data) reads subfolders too: this run's rows would join that data set
    for nested, folder in ((first / "data", "data"), (first / "rejects" / "x", "rejects")):
        with pytest.raises(JobError, match=f"lies inside the {folder}/ folder of another run's output \\({first}\\)"):
            plan_job(JobConfig(input=str(tmp_path / "in"), output=str(nested)), dry_run=True)
    # a data/ folder that is not a job output's, and a folder beside the data/ folder, are fine
    (tmp_path / "project" / "data").mkdir(parents=True)
    for fine in (tmp_path / "project" / "data" / "clean", first / "more"):
        assert plan_job(JobConfig(input=str(tmp_path / "in"), output=str(fine)), dry_run=True).output_state == "new"


@pytest.mark.parametrize(("name", "said"), [
    ("photoz", "does not exist"),
    ("photos/*.png", "does not exist (wildcards are not expanded: give a folder, a prefix or one file)"),
])
def test_a_missing_input_is_said_once(tmp_path, capsys, name: str, said: str) -> None:
    # it said "error: input X not found: FileNotFoundError: input X does not exist": the same fact twice, with a
    # Python class name in between
    missing = str(tmp_path / name)
    assert main(["--input", missing, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    assert _errors(capsys) == [f"error: input {missing} {said}"]
    assert not (tmp_path / "out").exists()


def test_the_dry_runs_help_says_which_images_it_reads() -> None:
    # it said "without reading an image", where a dry run reads the inputs whose listing changed since their rows were
    # written, to compare them (its own last line says so then: "nothing read but the inputs whose listing changed")
    text = " ".join(build_parser().format_help().split())
    assert "without reading an image" not in text
    assert "it reads no image but those of inputs whose listing changed since their rows were written" in text


def test_a_dry_run_names_what_it_would_read_and_where_it_would_write(tmp_path, capsys) -> None:
    # `python jobs/purify.py --dry-run` said "output: new output; already holds 0 purified, 0 rejected" and "input: 0
    # image files to read ..., 2 tar shards": neither the sample it would read nor ./purified, and a new output that
    # "already" held nothing
    image_folder(tmp_path / "in", 1)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"output: {tmp_path / 'out'}: a new output" in out, out
    assert any(line.startswith(f"input: {tmp_path / 'in'}: 1 image file to read (0 already done") for line in out), out
    assert not any("already holds" in line for line in out), out
    # a URL's credentials are not printed (a presigned or SAS URL is one)
    report = plan_job(config_from_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2")]),
                      dry_run=True).describe()
    cli.print_plan(report, "https://user:pa55@host/in/?sig=s3cret", str(tmp_path / "o2"))
    printed = capsys.readouterr().out
    assert "input: https://user:***@host/in/?sig=***: 1 image file" in printed, printed
    assert "pa55" not in printed and "s3cret" not in printed, printed


def test_the_dry_run_does_not_say_a_shard_read_whole_has_all_its_images_in_the_output_when_some_are_rejects(
        tmp_path, capsys, model) -> None:
    """A tar shard read whole by an earlier run, one of its members rejected (a row in rejects/, no image in data/):
    the dry run of an --incremental run said it was skipped "with all its images in the output"."""
    from pipeline.ledger import ContainerRead, write_ledger
    from pipeline.output import JOB_FILE, SUMMARY_FILE, write_json
    from pipeline.sources import discover, ids_digest, reject_record
    from pipeline.stages import _data_table, _rejects_table, part_name, write_parquet_atomic
    from tests.jobutil import small_job_argv, small_job_config, tar_bytes

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(tar_bytes({"0.png": image_bytes(8, 8, 0), "1.png": b"not an image"}))
    out = str(tmp_path / "out")  # as a complete run leaves it: a.tar/0 purified, a.tar/1 rejected, a.tar recorded
    write_json(f"{out}/{JOB_FILE}", plan_job(small_job_config(tmp_path, model), dry_run=True).job_record, {})
    purified = {"id": "a.tar/0", "png": b"png", "width": 8, "height": 8, "meta": {}, "source": "a.tar/0",
                "source_sha256": "0" * 64, "psnr_vs_input_db": 30.0, "downscale_factor": 1.0, "original_mode": "RGB",
                "original_format": "PNG", "original_frames": 1}
    write_parquet_atomic(_data_table([purified]), f"{out}/data/{part_name(['a.tar/0'])}", {})
    rejected = reject_record("a.tar/1", "a.tar/1", "not an image", "decode")
    write_parquet_atomic(_rejects_table([rejected]), f"{out}/rejects/{part_name(['a.tar/1'])}", {})
    write_json(f"{out}/{SUMMARY_FILE}", {"status": "complete"}, {})
    [unit] = discover(str(tmp_path / "in"))
    ids = ["a.tar/0", "a.tar/1"]
    write_ledger(out, {}, {unit.paths[0]: ContainerRead(unit.paths[0], unit.sizes[0], unit.stamps[0], 2, ids_digest(ids))})
    assert main(small_job_argv(tmp_path, model, "--incremental", "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "holds 1 purified, 1 rejected" in printed, printed
    [line] = [x for x in printed.splitlines() if "read whole by an earlier run" in x]
    assert "images in the output" not in line and "all its images done (purified or rejected): not read" in line, line


@pytest.mark.parametrize(("n", "lines"), [
    (1, ["1 tar shard / Parquet / zip file was read whole by an earlier run and is unchanged, with all its images done "
         "(purified or rejected): not read",
         "1 file of the output itself lies inside the input and is not read",
         "(1 file of unknown size not counted); 1 tar/Parquet file over --in-memory-mb",
         "1 image file is over --max-image-mb", "warning: 1 row of 1 Parquet file has no image",
         "partitions (--partitioning hive): the one input file lies in no key=value folder"]),
    (2, ["2 tar shards / Parquet / zip files were read whole by an earlier run and are unchanged, with all their images "
         "done (purified or rejected): not read",
         "2 files of the output itself lie inside the input and are not read",
         "(2 files of unknown size not counted); 2 tar/Parquet files over --in-memory-mb",
         "2 image files are over --max-image-mb", "warning: 2 rows of 2 Parquet files have no image",
         "partitions (--partitioning hive): none of the 2 input files lies in a key=value folder"]),
])
def test_the_dry_runs_counts_of_one_are_singular(tmp_path, capsys, n: int, lines: list[str]) -> None:
    # it printed "1 files of the output itself lie inside the input", "(1 files of unknown size not counted)", ...
    image_folder(tmp_path / "in", 1)
    report = plan_job(config_from_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]),
                      dry_run=True).describe()
    report["input"].update(containers_already_done=n, excluded_output_files=n, unsized=n, streamed=n,
                           image_files_over_max_image_mb=n, max_image_mb=1,
                           parquet_rows_without_image={"rows": n, "files": n, "examples": []},
                           partitions={"keys": {}, "files": n, "files_outside": n})
    cli.print_plan(report)
    printed = " ".join(capsys.readouterr().out.split())
    for line in lines:
        assert line in printed, printed
    if n == 1:
        assert "1 files" not in printed and "1 rows" not in printed, printed


def test_the_retry_lines_counts_of_one_are_singular() -> None:
    one = {"earlier_rejects": 3, "purified_now": 0, "rejected_again": 0, "containers_now_read_whole": 1,
           "lookalikes_renamed": 1}
    assert cli._retried_line(one) == ("retried 3 earlier rejects: 0 purified now, 0 rejected again, 1 tar/Parquet/zip "
                                      "file read to its end now, 1 tar look-alike reject gone (their members no "
                                      "longer share an id), 1 not found in the input (their reject rows are kept)")
    two = {"earlier_rejects": 1, "purified_now": 1, "rejected_again": 0, "containers_now_read_whole": 2,
           "lookalikes_renamed": 2}
    assert cli._retried_line(two).startswith("retried 1 earlier reject: 1 purified now, 0 rejected again, 2 "
                                             "tar/Parquet/zip files read to their end now, 2 tar look-alike rejects gone")


@pytest.mark.parametrize("side", ["input", "output", "checkpoint"])  # README's first job: --checkpoint s3://... (a traceback)
def test_no_s3_credentials_says_where_they_are_read_from(tmp_path, capsys, monkeypatch, side: str) -> None:
    # it said only "NoCredentialsError: Unable to locate credentials", naming none of the ways to give them
    without_aws_credentials(monkeypatch, tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 0))
    where = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "checkpoint": "cifar10"}
    where[side] = f"s3://no-credentials-{side}/x/" if side != "checkpoint" else "s3://no-credentials/m.pt"
    model = ["--checkpoint", where["checkpoint"]] if side == "checkpoint" else []
    # nothing listens on port 9: botocore signs a request, and finds no credentials, before it connects
    assert main(["--input", where["input"], "--output", where["output"], *model, "--s3-endpoint", "http://127.0.0.1:9",
                 "--dry-run"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "Unable to locate credentials" in err[0], err
    assert err[0].endswith(cli.NO_CREDENTIALS_ADVICE) and "AWS_ACCESS_KEY_ID" in err[0] and "--anon" in err[0], err


@pytest.mark.parametrize(("raised", "code", "line"), [
    (JobFailed("the run failed: boom"), 1, "error: the run failed: boom"),
    (JobInterrupted("stopped by SIGINT", signal.SIGINT), 130, "interrupted: stopped by SIGINT"),
    (JobInterrupted("stopped by SIGTERM", signal.SIGTERM), 143, "interrupted: stopped by SIGTERM"),
    (KeyboardInterrupt(), 130, "interrupted: "),
    (JobError("input x not found"), 2, "error: input x not found"),
])
def test_exit_statuses(tmp_path, capsys, monkeypatch, raised, code, line) -> None:
    def run_job(config: JobConfig, **options) -> dict:
        raise raised

    monkeypatch.setattr(cli, "run_job", run_job)
    assert main(["--output", str(tmp_path / "out")]) == code
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith(line), err


def test_a_stopped_run_is_recorded_and_the_signal_handlers_put_back() -> None:
    recorded = []

    def record(status: str, details: dict) -> str:
        recorded.append((status, details))
        return "3 purified"

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(JobInterrupted, match="stopped by SIGTERM; 3 purified") as stopped:
        with record_stopped_run(record, "/out"):
            os.kill(os.getpid(), signal.SIGTERM)  # what `ray job stop`, Kubernetes or systemd send
    assert stopped.value.signum == signal.SIGTERM and recorded == [("interrupted", {"signal": "SIGTERM"})]
    with pytest.raises(JobInterrupted) as stopped:
        with record_stopped_run(record, "/out"):
            raise KeyboardInterrupt
    assert stopped.value.signum == signal.SIGINT
    with pytest.raises(JobFailed, match="the run failed: RuntimeError: boom; 3 purified"):
        with record_stopped_run(record, "/out"):
            raise RuntimeError("boom\nmore lines of a remote traceback")
    assert recorded[-1] == ("failed", {"error": "RuntimeError: boom"})
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_progress_in_a_log_is_lines_not_a_redrawn_bar() -> None:
    import io

    from pipeline.progress import LogProgress, progress_bar

    log = io.StringIO()  # not a terminal: ray job logs, a scheduler's log, `2> file`
    bar = progress_bar(10, "images", "img", log)  # as the job's driver makes it
    assert isinstance(bar, LogProgress)
    bar.every = 0
    bar.update(4)
    bar.set_postfix(rejected=1)
    bar.update(6)
    bar.close()
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2, lines  # close() adds nothing the last line did not say
    assert lines[-1].startswith("images: 10/10 (100 %) in ") and lines[-1].endswith(", rejected 1"), lines


@pytest.mark.parametrize(("rejected", "where"), [
    (3, "; the purified images in data/, each reject with its reason in rejects/)"),
    (0, "; the purified images in data/)"),  # no rejects/ folder to send anyone to
])
def test_the_last_line_says_what_the_output_holds(tmp_path, capsys, monkeypatch, rejected: int, where: str) -> None:
    # it named _summary.json only: where the images went, and why 3 inputs were rejected, was for the docs to tell
    summary = {"status": "complete", "output_totals": {"purified": 256, "rejected": rejected},
               "model": {"note": "tiny", "canvas_size": 32},
               "this_run": {"read": 131, "purified": 128, "rejected": 3, "skipped_already_done": 128, "wall_s": 1.0,
                            "images_per_s": 131.0, "psnr_vs_input_db": {"mean": None}, "downscaled": {"images": 0}}}
    monkeypatch.setattr(cli, "run_job", lambda config, **options: summary)
    assert main(["--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("read 131, purified 128, rejected 3, skipped (already done) 128")
    assert out[-1] == (f"output: {tmp_path / 'out'} holds 256 purified and {rejected} rejected in all (status complete; "
                       f"summary in _summary.json{where}")


def test_a_runs_lines_name_its_input_and_output_without_their_credentials(capsys, monkeypatch) -> None:
    # The dry run's new lines redact a URL's credentials; a run's own last line printed --output as given ("output:
    # ftp://user:<password>@host/out holds ..."), and its no-input warning --input, on every run, into CI logs.
    summary = {"status": "complete", "output_totals": {"purified": 0, "rejected": 0},
               "model": {"note": "tiny", "canvas_size": 32}, "ray": {"note": "no Ray was started"},
               "this_run": {"read": 0, "purified": 0, "rejected": 0, "skipped_already_done": 0, "wall_s": 1.0,
                            "images_per_s": 0.0, "psnr_vs_input_db": {"mean": None}, "downscaled": {"images": 0}}}
    monkeypatch.setattr(cli, "run_job", lambda config, **options: summary)
    assert main(["--input", "https://reader:in-pa55word@host/in/?sig=in-s1gnature",
                 "--output", "ftp://writer:out-pa55word@host/out"]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "in-pa55word" not in printed and "in-s1gnature" not in printed and "out-pa55word" not in printed, printed
    assert "warning: found no inputs under https://reader:***@host/in/?sig=*** (hidden" in captured.err, captured.err
    assert captured.out.splitlines()[-1].startswith("output: ftp://writer:***@host/out holds 0 purified"), captured.out


def test_the_counts_line_says_its_rate_is_the_whole_runs(tmp_path, capsys, monkeypatch) -> None:
    # The progress's last line times the pipeline alone ("images: 256 in 129 s, 1.98 img/s"); the counts line below
    # it timed the whole run, planning and Ray's start included ("in 138.96 s (1.842 images/s)"): two rates for one
    # run, with nothing to say why they differ.
    summary = {"status": "complete", "output_totals": {"purified": 256, "rejected": 0},
               "model": {"note": "tiny", "canvas_size": 32},
               "this_run": {"read": 256, "purified": 256, "rejected": 0, "skipped_already_done": 0, "wall_s": 138.96,
                            "images_per_s": 1.842, "psnr_vs_input_db": {"mean": None}, "downscaled": {"images": 0}}}
    monkeypatch.setattr(cli, "run_job", lambda config, **options: summary)
    assert main(["--output", str(tmp_path / "out")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "in 138.96 s (1.842 images/s over the whole run); model: tiny" in first, first


@pytest.mark.parametrize(("again", "said"), [(0, False), (1, True)])
def test_a_retry_line_points_at_rejects_only_when_it_holds_todays_reasons(tmp_path, capsys, monkeypatch, again: int,
                                                                           said: bool) -> None:
    # every earlier reject purified now: rejects/ is removed (7374806), so "rejects/ has today's reason" named a folder
    # that was gone
    summary = {"status": "complete", "output_totals": {"purified": 3, "rejected": again},
               "model": {"note": "tiny", "canvas_size": 32},
               "this_run": {"read": 1, "purified": 1 - again, "rejected": again, "skipped_already_done": 2,
                            "wall_s": 1.0, "images_per_s": 1.0, "psnr_vs_input_db": {"mean": None},
                            "downscaled": {"images": 0},
                            "rejects_retried": {"earlier_rejects": 1, "purified_now": 1 - again, "rejected_again": again}}}
    monkeypatch.setattr(cli, "run_job", lambda config, **options: summary)
    assert main(["--output", str(tmp_path / "out"), "--retry-rejects"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("retried 1 earlier reject: "))
    assert line.startswith(f"retried 1 earlier reject: {1 - again} purified now, {again} rejected again"), line
    assert ("rejects/ has today's reason" in line) is said, line


def test_bad_json_flags_say_what_is_wrong(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--flags", "{bad", "--dry-run"])
    assert exit_.value.code == 2
    assert "--flags: not valid JSON (Expecting property name" in _errors(capsys)[0]


def test_null_flags_are_refused_not_taken_for_no_flags(capsys) -> None:
    """`--flags null` (a template's empty value): taken as not given, the run used --preset's model without a word."""
    with pytest.raises(SystemExit) as exit_:
        main(["--flags", "null", "--dry-run"])
    assert exit_.value.code == 2
    assert "--flags: null is not a JSON object of flags" in _errors(capsys)[0]


def test_ctrl_c_in_a_dry_run(capsys, monkeypatch) -> None:
    def plan_job(config: JobConfig, dry_run: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "plan_job", plan_job)
    assert main(["--dry-run"]) == 130
    assert _errors(capsys) == ["interrupted: the dry run stopped; nothing was written"]


def test_a_failed_batch_is_reported_by_the_workers_own_exception() -> None:
    from pipeline.stopped_run import failure_reason

    # str() of the RayTaskError(UserCodeException) a failed purify batch raises in the driver (abridged)
    remote = ("\x1b[36mray::MapWorker(MapBatches(PurifyStage)).submit()\x1b[39m (pid=8131, ip=192.0.2.2)\n"
              '  File "/work/main/pipeline/stages.py", line 164, in _maybe_inject_fault\n'
              "    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
              "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/m'\n\n"
              "The above exception was the direct cause of the following exception:\n\n"
              "\x1b[36mray::MapWorker(MapBatches(PurifyStage)).submit()\x1b[39m (pid=8131, ip=192.0.2.2)\n"
              "ray.exceptions.UserCodeException: UDF failed to process a data block.\n")
    assert failure_reason(RuntimeError(remote)) == "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/m'"
    assert failure_reason(RuntimeError("boom\nmore")) == "RuntimeError: boom"


def test_a_purifier_actor_whose_process_died_is_named_with_how_often_and_the_usual_cause() -> None:
    """Ray's ActorDiedError said only "The actor died unexpectedly before finishing this task."; an actor whose
    constructor raised keeps its own exception as the reason."""
    from ray.exceptions import ActorDiedError

    from pipeline.stopped_run import failure_reason

    died = failure_reason(ActorDiedError())
    assert died == ("ActorDiedError: The actor died unexpectedly before finishing this task. (the purifier actor's "
                    "process died 4 times, its 3 restarts spent: out of memory, most often; a smaller --batch-size "
                    "needs less)")
    raised = ("The actor died because of an error raised in its creation task, \x1b[36mray::A.__init__()\x1b[39m "
              "(pid=693, ip=192.0.2.2)\n  File \"<string>\", line 7, in __init__\nRuntimeError: bad checkpoint")
    assert failure_reason(RuntimeError(raised)) == "RuntimeError: bad checkpoint"


def test_a_long_reason_is_cut_at_a_word_and_says_so() -> None:
    # Reasons are kept to 300 characters; a Ray error cut mid-sentence read "...The task may ; this run wrote ...".
    from pipeline.stopped_run import failure_reason
    from pipeline.storage import describe

    said = " ".join(["The actor is unavailable: its node may be lost, and the task may be retried."] * 8)
    long = "ActorUnavailableError: " + said
    for reason, whole in ((failure_reason(RuntimeError(long)), long),
                          (describe(RuntimeError(said)), "RuntimeError: " + said)):
        kept = reason.removesuffix("…")
        assert len(reason) <= 300 and kept != reason, reason
        assert whole.startswith(kept) and whole[len(kept)] == " "  # cut between words
    assert describe(RuntimeError("short")) == "RuntimeError: short"


def test_positional_input_and_output_are_pointed_at_their_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["in/", "out/"])
    err = _errors(capsys)
    assert "unrecognized arguments: in/ out/ (the input and output are named: --input IN --output OUT)" in err[0], err


def test_an_ignored_interrupt_stays_ignored_during_a_run() -> None:
    """A shell starts background jobs (cmd &) with SIGINT ignored; the run's handler replaced that, so the terminal's
    Ctrl-C stopped a job its user had sent to the background."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with record_stopped_run(lambda status, details: "", "/out"):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the run still records a SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_version_names_the_code_and_the_libraries_that_move_its_pixels(capsys: pytest.CaptureFixture[str]) -> None:
    import platform
    import tomllib
    from importlib import metadata

    import torch

    import pipeline

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pipeline.__version__ == pyproject["project"]["version"]  # the installed package is this checkout's
    assert capsys.readouterr().out.strip() == (f"zip-purify {pipeline.__version__} (torch {torch.__version__}, ray "
                                               f"{metadata.version('ray')}, Python {platform.python_version()})")


@pytest.mark.parametrize(("made_with", "now", "hint"), [
    ("low-asr", {}, "--recipe low-asr"),          # a scheduled command that lost its --recipe
    ("authors-code", {"recipe": "fast"}, "--recipe authors-code"),  # another recipe than the output's
    ("paper", {"recipe": "fast"}, "--recipe paper"),  # made without a recipe, run with one
])
def test_an_output_made_with_a_recipe_names_it_when_a_run_differs(tmp_path, made_with, now, hint) -> None:
    # before: "./clean was written with other settings: sampler 'ddpm' (now 'ddim'), start 0.3 (now 1.0), steps 50
    # (now 20)", which left the user to work out that these were --recipe low-asr's
    import json

    from pipeline.settings import ZipSettings

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "part-0.parquet").write_bytes(b"")
    (out / "_job.json").write_text(json.dumps({"settings": ZipSettings.recipe(made_with).for_prior({}).to_dict()}))
    config = JobConfig.from_recipe(now["recipe"], input=str(tmp_path), output=str(out)) if now else \
        JobConfig(input=str(tmp_path), output=str(out))
    with pytest.raises(JobError) as refused:
        check_output_state(config, {"settings": config.settings().to_dict()}, dry_run=True)
    assert "other settings" in str(refused.value) and hint in str(refused.value), refused.value


def test_settings_no_recipe_makes_are_not_said_to_be_one(tmp_path) -> None:
    import json

    from pipeline.settings import ZipSettings

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "part-0.parquet").write_bytes(b"")
    (out / "_job.json").write_text(json.dumps({"settings": ZipSettings.recipe("low-asr", steps=30).to_dict()}))
    config = JobConfig(input=str(tmp_path), output=str(out))
    with pytest.raises(JobError) as refused:
        check_output_state(config, {"settings": config.settings().to_dict()}, dry_run=True)
    assert "steps 30 (now 20)" in str(refused.value) and "--recipe" not in str(refused.value), refused.value


@pytest.mark.parametrize("flag, said", [("--checkpoint", "--checkpoint is empty; give a path or URI"),
                                        ("--image-column", "--image-column is empty; name the column"),
                                        ("--config", "--config is empty; give the YAML or JSON file"),
                                        ("--ray-address", "--ray-address is empty; give the cluster's host:port")])
def test_an_empty_value_from_an_unset_variable_is_refused_not_taken_as_not_given(tmp_path, capsys, flag: str,
                                                                                said: str) -> None:
    # `--checkpoint "$CKPT"` with CKPT unset purified with the shipped cifar10 prior, `--config "$CFG"` ran with every
    # default (the embedded sample), and an empty --image-column was left to the column search, each without a word
    image_folder(tmp_path / "in", 1)
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), flag, "", "--dry-run"])
    [line] = _errors(capsys)
    assert code == 2 and said in line


@pytest.mark.parametrize("field", ["checkpoint", "prior", "image_column", "ray_address"])
def test_an_empty_text_option_of_the_api_is_refused_by_name(tmp_path, field: str) -> None:
    image_folder(tmp_path / "in", 1)
    with pytest.raises(JobError, match=f"--{field.replace('_', '-')} is empty"):
        plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **{field: ""}), dry_run=True)
