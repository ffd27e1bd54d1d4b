"""Mutation audit of pipeline/cli.py: --config files as YAML reads them, errors that name what is wrong and the fix,
the dry run's and the run's lines, and the end of a run (signals, Ray's shutdown).

The first tests failed on bugs the audit found; each of the others failed on a hand-made mutant of cli.py that the
other CLI tests let through (a file's `anon:` with no value taken as not anonymous, 1024 bytes said as "1024 bytes",
the dry run's stale-lease or hidden-files line dropped, an error line left with a password or a line break, ...)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import cli
from pipeline.cli import config_from_args, main
from pipeline.cli_common import ConfigError
from pipeline.errors import JobError
from pipeline.plan import plan_job
from pipeline.stopped_run import StoppedWhileLoading
from tests.jobutil import image_folder


def test_a_config_files_yaml_merge_key_is_read_as_yaml_reads_it(tmp_path: Path) -> None:
    # `<<: *defaults` is YAML's merge key, which PyYAML's safe loader reads; the job's loader (refusing a key given
    # twice) refused the file as "not valid YAML: could not determine a constructor for the tag ...merge"
    path = tmp_path / "job.yaml"
    path.write_text("flags: &small {num_channels: 32, num_res_blocks: 1}\n"
                    "<<: {steps: 7, pool: 2}\n"
                    "steps: 9\n")
    config = config_from_args(["--config", str(path)])
    assert (config.steps, config.pool) == (9, 2)  # the mapping's own key wins over a merged one, as YAML says
    assert config.flags == {"num_channels": 32, "num_res_blocks": 1}


def test_a_key_given_twice_beside_a_merge_key_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("<<: {pool: 2}\nsteps: 7\nsteps: 9\n")
    with pytest.raises(ConfigError, match="key 'steps' is given twice"):
        config_from_args(["--config", str(path)])


def test_a_bad_port_in_the_input_is_not_blamed_on_the_config_files_recipe(tmp_path: Path, capsys) -> None:
    # a ValueError made while the options became a JobConfig was said as the file's recipe's, of a file with none
    path = tmp_path / "job.yaml"
    path.write_text("steps: 10\n")
    argv = ["--input", "hdfs://namenode:80a0/in", "--output", str(tmp_path / "out"), "--dry-run"]
    assert main(argv) == 2
    alone = capsys.readouterr().err
    assert main(["--config", str(path), *argv]) == 2
    with_file = capsys.readouterr().err
    assert "80a0" in with_file and "recipe" not in with_file, with_file
    assert with_file == alone


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())  # argparse and long lines wrap at any space


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *flags: str) -> str:
    """The one error line of a dry run with a --config file holding `text` (exit status 2, nothing written)."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "--output", str(tmp_path / "out"), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and not (tmp_path / "out").exists(), err
    return err


def test_a_flags_json_error_points_at_the_character_counted_from_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--flags", '{"num_channels": 64,}', "--dry-run"])
    # the stray comma is the 20th character; the closing brace, where JSON finds the name missing, the 21st
    assert exit_.value.code == 2 and "at character 21" in _err(capsys)


def test_a_config_file_that_cannot_be_read_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "jobs" / "nightly.yaml"
    assert main(["--config", str(missing), "--dry-run"]) == 2
    assert f"cannot read --config {missing}: No such file or directory" in _err(capsys)


def test_a_flags_error_is_not_blamed_on_a_files_whole_number_for_a_fractional_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lam: 0 and start: 1 are numbers as YAML writes them (ints): the error is --steps's alone
    err = _refused(tmp_path, capsys, "lam: 0\nstart: 1\n", "--steps", "0")
    assert "--steps" in err and "--config" not in err and "lam" not in err, err


@pytest.mark.parametrize(("text", "said"), [
    ("anon:\n", "anon has no value; give true or false or leave the key out"),  # not taken as "not anonymous"
    ('anon: "no"\n', "anon must be true or false, got 'no' (text: write true or false without quotes)"),
    ("lam: 1E-3\n", "lam; read as text: write it with a dot before the exponent (1.0e-3)"),
    ("seed: 1e3\n", "seed; read as text: write the whole number out, without an exponent"),
    ("dry_run: true\n", "unknown option 'dry_run'; dry_run is command-line only"),
    ("config: other.yaml\n", "unknown option 'config'; config is command-line only"),
    ("operators: []\n", "operators must be text or a list of operator names (pool, gray, gray+pool), got []"),
    ("operators: [gray, 5]\n", "operators must be text or a list of operator names"),
    ("recipe: fastest\n", "paper, fast, low-asr, authors-code"),  # the recipes there are
])
def test_a_config_files_mistake_is_said_with_the_file_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 text: str, said: str) -> None:
    err = _refused(tmp_path, capsys, text)
    assert str(tmp_path / "job.yaml") in err and said in " ".join(err.split()), err


def _summary(output_totals: dict | None = None, **this_run: object) -> dict:
    """A finished run's summary, as run_job returns it: 4 read and purified unless `this_run` says otherwise."""
    run = {"read": 4, "purified": 4, "rejected": 0, "skipped_already_done": 0, "wall_s": 2.0, "images_per_s": 2.0,
           "psnr_vs_input_db": {"mean": None}, "downscaled": {"images": 0}, **this_run}
    return {"status": "complete", "output_totals": output_totals or {"purified": 4, "rejected": 0},
            "model": {"note": "tiny", "canvas_size": 32}, "this_run": run}


def _ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], summary: dict,
         *flags: str) -> tuple[str, str]:
    """(stdout, stderr) of a run whose run_job returns `summary`, each joined into one line of words."""
    monkeypatch.setattr(cli, "run_job", lambda config, **options: summary)
    assert main(["--output", str(tmp_path / "out"), *flags]) == 0
    captured = capsys.readouterr()
    return " ".join(captured.out.split()), " ".join(captured.err.split())


def test_a_run_says_the_change_it_made_and_its_lowest_psnr(tmp_path, monkeypatch, capsys) -> None:
    out, _ = _ran(tmp_path, monkeypatch, capsys, _summary(psnr_vs_input_db={"mean": 31.5, "min": 18.25}))
    assert "PSNR mean 31.5 dB, lowest 18.25 dB" in out, out


def test_a_run_warns_of_shrunk_images_and_of_images_copied_unpurified(tmp_path, monkeypatch, capsys) -> None:
    summary = _summary(downscaled={"images": 3, "max_factor": 2.5},
                       unpurified_image_columns={"thumbnail": 4, "mask": 1})
    _, err = _ran(tmp_path, monkeypatch, capsys, summary)
    assert "warning: 3 image(s) were larger than the model's 32 px canvas" in err and "(up to 2.5x)" in err, err
    assert "warning: column(s) thumbnail (4 rows), mask (1 row) hold images that were copied as they came, " \
           "NOT purified" in err, err


def test_a_run_says_the_hidden_files_it_skipped(tmp_path, monkeypatch, capsys) -> None:
    out, _ = _ran(tmp_path, monkeypatch, capsys,
                  _summary(hidden_skipped=2, hidden_skipped_examples=["in/.DS_Store", "in/_tmp.png"]))
    assert "2 hidden entries (names starting with . or _) skipped, not read: in/.DS_Store" in out, out


def test_a_refresh_says_the_rows_it_kept(tmp_path, monkeypatch, capsys) -> None:
    summary = _summary(refreshed={"inputs": 2, "rows_replaced": 5, "rows_kept": 1})
    out, _ = _ran(tmp_path, monkeypatch, capsys, summary, "--refresh-changed")
    assert "refreshed 2 input(s) changed in place (--refresh-changed): 5 old row(s) replaced by new ones, 1 kept " \
           "(their tar/Parquet/zip file, read again, gave no new row of them)" in out, out


def test_a_retry_counts_the_superseded_rejects_apart_from_those_not_found(tmp_path, monkeypatch, capsys) -> None:
    retried = {"earlier_rejects": 5, "purified_now": 1, "rejected_again": 0, "superseded": 3}
    out, _ = _ran(tmp_path, monkeypatch, capsys, _summary(rejects_retried=retried), "--retry-rejects")
    assert "3 an older version's rejects of a tar shard's keys" in out and "1 not found in the input" in out, out


def test_a_run_warns_of_inputs_changed_since_their_rows_on_one_line(tmp_path, monkeypatch, capsys) -> None:
    # an input's name may hold a line break: the warning quoting it stays one line
    changed = {"image_files_purified": 2, "examples": ["in/a.png", "in/b\nerror: fake.png"]}
    monkeypatch.setattr(cli, "run_job", lambda config, **options: {**_summary(), "changed_inputs": changed})
    assert main(["--output", str(tmp_path / "out")]) == 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: 2 image file(s) purified earlier") and "in/a.png" in line, line


def test_a_run_of_only_rejects_does_not_send_the_user_to_data(tmp_path, monkeypatch, capsys) -> None:
    summary = _summary({"purified": 0, "rejected": 3}, purified=0, rejected=3)
    out, _ = _ran(tmp_path, monkeypatch, capsys, summary)
    assert out.endswith("(status complete; summary in _summary.json; each reject with its reason in rejects/)"), out


def test_a_run_that_found_everything_done_does_not_say_it_found_no_inputs(tmp_path, monkeypatch, capsys) -> None:
    summary = _summary(read=0, purified=0, skipped_already_done=4)
    summary["ray"] = {"note": "no Ray was started"}
    out, err = _ran(tmp_path, monkeypatch, capsys, summary, "--incremental")
    assert "found no inputs" not in err, err
    assert "(nothing to purify: no Ray was started)" in out, out


def _dry_run_report(tmp_path: Path) -> dict:
    """A dry run's report of a one-image folder, as `print_plan` takes it."""
    image_folder(tmp_path / "in", 1)
    config = config_from_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    return plan_job(config, dry_run=True).describe()


def _plan_printed(report: dict, capsys: pytest.CaptureFixture[str]) -> str:
    cli.print_plan(report)
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("size", "said"), [(1023, "1023 bytes"), (1024, "1.0 KiB"), (3 * 2**30, "3.0 GiB"),
                                            (5 * 2**40, "5120.0 GiB")])
def test_the_dry_run_says_the_bytes_to_read_in_the_largest_unit_up_to_gib(tmp_path, capsys, size: int,
                                                                          said: str) -> None:
    report = _dry_run_report(tmp_path)
    report["input"]["bytes"] = size
    assert f" {said} to read" in _plan_printed(report, capsys)


def test_the_dry_run_says_a_stale_lease_is_taken_over(tmp_path, capsys) -> None:
    report = _dry_run_report(tmp_path)
    report["stale_lease"] = "host worker-3, pid 4242"
    assert "its lease is stale (host worker-3, pid 4242): that run stopped without releasing it; the run takes the " \
           "lease over" in _plan_printed(report, capsys)


@pytest.mark.parametrize(("files", "held", "said"), [
    (2, 1, "--retry-rejects: the output's 3 rejects would all be read again from the input (2 image files, 1 in "
           "tar/Parquet/zip files"),
    (1, 1, "--retry-rejects: 2 of the output's 3 rejects would be read again from the input (1 image file, 1 in "
           "tar/Parquet/zip files, each found or not as its file is read; counted below as inputs to read); 1 is not "
           "in the input and keeps its reject row"),
    (0, 0, "--retry-rejects: 0 of the output's 3 rejects would be read again from the input; 3 are not in the input "
           "and keep their reject rows"),
])
def test_the_dry_run_says_which_rejects_a_retry_would_read_again(tmp_path, capsys, files: int, held: int,
                                                                 said: str) -> None:
    report = _dry_run_report(tmp_path)
    report["output"].update(rejects_to_retry=3, rejects_to_retry_image_files=files, rejects_to_retry_in_containers=held)
    assert said in _plan_printed(report, capsys)


def test_the_dry_run_says_the_hidden_files_it_skips(tmp_path, capsys) -> None:
    report = _dry_run_report(tmp_path)
    report["input"].update(hidden_files_skipped=2, hidden_files_examples=["in/.DS_Store", "in/_tmp.png"])
    assert "2 hidden entries (names starting with . or _) skipped, not read: in/.DS_Store" in _plan_printed(report, capsys)


def test_the_dry_run_counts_each_partition_keys_values_and_the_files_outside(tmp_path, capsys) -> None:
    report = _dry_run_report(tmp_path)
    report["input"]["partitions"] = {"keys": {"date": 3, "split": 1}, "files": 5, "files_outside": 1}
    assert "partitions (--partitioning hive): date (3 values), split (1 value), each a string column of its files' " \
           "rows; 1 of the 5 input files lies in no key=value folder" in _plan_printed(report, capsys)


def test_the_dry_run_says_how_many_parquet_files_without_images_it_did_not_name(tmp_path, capsys) -> None:
    report = _dry_run_report(tmp_path)
    report["input"]["parquet_rows_without_image"] = {"rows": 4, "files": 3, "examples": [("in/a.parquet", 2)]}
    assert "will be rejected, one reject each: in/a.parquet (2) and 2 more" in _plan_printed(report, capsys)


@pytest.mark.parametrize("compared", ["image_files_compared", "containers_compared"])
def test_the_dry_run_says_it_read_the_inputs_it_compared(tmp_path, capsys, compared: str) -> None:
    report = _dry_run_report(tmp_path)
    report["changed_inputs"] = {compared: 1}
    assert "dry run: nothing was purified or written, and nothing read but the inputs whose listing changed" \
           in _plan_printed(report, capsys)


def _dry_run_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], report: dict,
                units: int = 1, skipped_files: int = 0) -> tuple[str, str]:
    """(stdout, stderr) of a dry run whose plan holds `units` read tasks and `skipped_files` files already done."""
    plan = SimpleNamespace(units=[object()] * units, skipped_files=skipped_files, skipped_containers=0,
                           describe=lambda: report)
    monkeypatch.setattr(cli, "plan_job", lambda config, dry_run: plan)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    return " ".join(captured.out.split()), " ".join(captured.err.split())


def test_the_dry_run_notes_what_refresh_changed_would_do_and_what_it_compared(tmp_path, monkeypatch, capsys) -> None:
    report = _dry_run_report(tmp_path)
    report["changed_inputs"] = {"refreshed_inputs": 2, "refreshed_rows": 5, "refreshed_examples": ["in/a.png"],
                                "image_files_compared": 1, "image_files_same_bytes": 1}
    _, err = _dry_run_of(tmp_path, monkeypatch, capsys, report)
    assert "note: --refresh-changed: would purify 2 changed input(s) again, replacing their 5 row(s)" in err, err
    assert "note: the planning read 1 image file(s) (1 with the bytes their rows were made from)" in err, err


def test_a_dry_run_with_every_input_done_does_not_say_it_found_none(tmp_path, monkeypatch, capsys) -> None:
    report = _dry_run_report(tmp_path)
    _, err = _dry_run_of(tmp_path, monkeypatch, capsys, report, units=0, skipped_files=3)
    assert "found no inputs" not in err, err
    _, err = _dry_run_of(tmp_path, monkeypatch, capsys, report, units=0, skipped_files=0)
    assert f"warning: found no inputs under {tmp_path / 'in'}" in err, err


def test_the_end_of_a_run_ignores_sigterm_as_well_as_ctrl_c() -> None:
    # a second `ray job stop` while the outcome is printed replaced exit status 143 with a traceback
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        cli.ignore_stop_signals()
        assert {signum: signal.getsignal(signum) for signum in before} == dict.fromkeys(before, signal.SIG_IGN)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_rays_trouble_shutting_down_does_not_replace_the_runs_outcome(monkeypatch) -> None:
    calls = []

    def shutdown() -> None:
        calls.append("shutdown")
        raise RuntimeError("raylet already gone")

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: True, shutdown=shutdown))
    cli.ray_stopped_before_the_last_lines()
    assert calls == ["shutdown"]


def test_an_error_naming_a_file_with_a_line_break_is_one_line_without_credentials(tmp_path, monkeypatch,
                                                                                   capsys) -> None:
    def run_job(config, **options):
        raise JobError(f"cannot read {config.input}a\nb.png: refused")

    monkeypatch.setattr(cli, "run_job", run_job)
    assert main(["--input", "ftp://reader:pa55word@host/in/", "--output", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: cannot read ftp://reader:***@host/in/a") and "pa55word" not in line, line


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_while_loading_exits_with_its_signals_status(tmp_path, monkeypatch, capsys, signum: int,
                                                                   code: int) -> None:
    def run_job(config, **options):
        raise StoppedWhileLoading(signum)

    monkeypatch.setattr(cli, "run_job", run_job)
    assert main(["--output", str(tmp_path / "out")]) == code
    assert capsys.readouterr().err.startswith("interrupted: the run stopped while loading")


def test_a_config_files_blend_k_none_in_any_case_is_the_hard_switch_as_the_flags(tmp_path: Path) -> None:
    # YAML reads None and OFF-quoted as text, not null or false: the flag takes --blend-k None, so the file does too
    for word in ("None", '"Off"'):
        path = tmp_path / "job.yaml"
        path.write_text(f"recipe: authors-code\nblend_k: {word}\n")
        assert config_from_args(["--config", str(path)]).blend_k is None, word


def test_a_checkpoint_flag_replaces_the_config_files_prior(tmp_path: Path) -> None:
    # the model is one setting given two ways: the flag's checkpoint, not the file's shipped prior, is the one run
    path = tmp_path / "job.yaml"
    path.write_text("prior: gtsrb\n")
    config = config_from_args(["--config", str(path), "--checkpoint", str(tmp_path / "mine.pt")])
    assert (config.checkpoint, config.prior) == (str(tmp_path / "mine.pt"), None)
