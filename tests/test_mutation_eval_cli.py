"""Mutation audit of the evaluation's command lines: jobs/evaluate.py (every flag reaches its own EvalConfig field with
its documented default and type; the checks' exit statuses) and jobs/target_table.py (the side-by-side target table
of docs/results.md, rebuilt from the report JSON files)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.evaluation import datasets, runner
from pipeline.evaluation.datasets import DataError
from pipeline.evaluation.preflight import EvaluationError
from tests.jobutil import load_evaluate_job, load_job_script, run_main

ROOT = Path(__file__).parents[1]


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The job with its checks and the evaluation replaced: `main` records what each data set's evaluation got."""
    module = load_evaluate_job("evaluate_job_cli_mutation")
    module.checked, module.started = [], []

    def preflight(config: runner.EvalConfig) -> str:
        module.checked.append(config)
        return f"checked {config.dataset}"

    monkeypatch.setattr(module, "preflight", preflight)
    monkeypatch.setattr(module, "evaluate_dataset", lambda config, **kw: module.started.append((config, kw)))
    return module


def _config(job: ModuleType, argv: list[str], dataset: str = "cifar10") -> runner.EvalConfig:
    return job.make_config(job.parse_args(argv), dataset)


def test_defaults_are_the_documented_ones(job: ModuleType) -> None:
    """The defaults the help text, the module's docstring and README's commands rely on."""
    args = job.parse_args(["--device", "cpu"])
    assert args.datasets == ["cifar10", "gtsrb"]
    config = job.make_config(args, "cifar10")
    assert list(config.attacks) == ["badnet", "blended", "physicalba", "wanet", "none"]  # with Table 1's clean row
    assert list(config.defenses) == ["none", "shrinkpad", "naive", "zip", "zip-authors"]
    assert config.checkpoint == runner.DEFAULT_PRIOR
    assert (config.steps, config.pool, config.subset, config.seed, config.sampler_seed) == (20, 4, 500, 0, 0)
    # start: None, the prior's range (1 for a prior trained on every timestep, resolved by preflight)
    assert config.sampler == "ddim" and config.start is None
    assert config.epochs == 10 and config.threads is None  # 0: torch's own thread count, left alone
    assert config.cache_dir == datasets.CACHE_DIR and config.out_dir == Path("results")
    assert (config.canvas_size, config.batch_size, config.examples, config.bootstrap) == (None, None, 6, 2000)
    assert config.train_options == {} and config.overwrite is False and config.device == "cpu"


def test_every_flag_reaches_its_own_field(job: ModuleType, tmp_path: Path) -> None:
    """Distinct values for every option, so that a flag dropped, or reaching a neighbour's field, shows."""
    argv = ["--datasets", "gtsrb,cifar10", "--attacks", "wanet,none", "--defenses", "zip,naive", "--checkpoint", "p.pt",
            "--steps", "7", "--pool", "2", "--subset", "123", "--seed", "5", "--sampler", "ddpm", "--start", "0.3",
            "--sampler-seed", "9", "--epochs", "3", "--crop-pad", "1", "--threads", "2", "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "o"), "--overwrite", "--device", "cpu", "--canvas-size", "16", "--batch-size", "8",
            "--examples", "11", "--bootstrap", "50"]
    config = _config(job, argv, "gtsrb")
    assert (config.dataset, list(config.attacks), list(config.defenses)) == ("gtsrb", ["wanet", "none"], ["zip", "naive"])
    assert config.checkpoint == "p.pt"
    assert (config.steps, config.pool, config.subset, config.seed, config.sampler_seed) == (7, 2, 123, 5, 9)
    assert (config.sampler, config.start, config.epochs, config.threads) == ("ddpm", 0.3, 3, 2)
    assert (config.cache_dir, config.out_dir, config.overwrite, config.device) == (tmp_path / "c", tmp_path / "o", True, "cpu")
    assert (config.canvas_size, config.batch_size, config.examples, config.bootstrap) == (16, 8, 11, 50)
    assert config.train_options == {"crop_pad": 1}
    # and main runs the data sets in the order given, each checked before the first is evaluated
    assert run_main(job, argv) == 0
    assert [c.dataset for c in job.checked] == ["gtsrb", "cifar10"]
    assert [(c.dataset, kw["checked"]) for c, kw in job.started] == [("gtsrb", "checked gtsrb"), ("cifar10", "checked cifar10")]


def test_lists_ignore_case_and_spaces_and_an_empty_one_is_refused(job: ModuleType,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert job.parse_args(["--datasets", " CIFAR10 , gtsrb", "--defenses", "ZIP"]).datasets == ["cifar10", "gtsrb"]
    assert run_main(job, ["--attacks", ","]) == 2
    assert "unknown attack (empty)" in capsys.readouterr().err


@pytest.mark.parametrize("available, device", [(True, "cuda"), (False, "cpu")])
def test_device_auto_is_cuda_when_there_is_one(job: ModuleType, monkeypatch: pytest.MonkeyPatch, available: bool,
                                                device: str) -> None:
    monkeypatch.setattr(job.torch.cuda, "is_available", lambda: available)
    assert _config(job, []).device == device


@pytest.mark.parametrize("options, message", [
    (["--subset", "0"], "--subset must be positive"),
    (["--steps", "0"], "--steps must be positive"),
    (["--pool", "0"], "--pool must be positive"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--examples", "0"], "--examples must be positive"),
    (["--canvas-size", "0"], "--canvas-size must be positive"),
    (["--sampler-seed", "-1"], "--sampler-seed must be 0 or more"),
    (["--bootstrap", "-1"], "--bootstrap must be 0 or more"),
    (["--crop-pad", "-1"], "--crop-pad must be 0 or more"),
    (["--start", "0.5"], None),  # a fraction: not an integer option
    (["--device", "cuda:"], "--device must be cpu, cuda, cuda:N or auto"),
])
def test_option_checks(job: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str],
                       message: str | None) -> None:
    code = run_main(job, ["--datasets", "cifar10", "--out", str(tmp_path), *options])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and job.started[0][0].start == 0.5
        return
    assert code == 2 and message in err and "Traceback" not in err and job.checked == [] and job.started == []


def test_exit_statuses(job: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """2 with one `error:` line for a failed check (before any evaluation) or for bad data found once loaded."""
    argv = ["--datasets", "cifar10,gtsrb", "--out", str(tmp_path)]

    def refused(config: runner.EvalConfig) -> None:
        if config.dataset == "gtsrb":
            raise EvaluationError("gtsrb is refused")

    monkeypatch.setattr(job, "preflight", refused)
    assert run_main(job, argv) == 2
    assert capsys.readouterr().err == "error: gtsrb is refused\n" and job.started == []

    def damaged(config: runner.EvalConfig, **_: object) -> None:
        raise DataError("cifar10/test: archive x could not be read")

    monkeypatch.setattr(job, "preflight", lambda config: None)
    monkeypatch.setattr(job, "evaluate_dataset", damaged)
    assert run_main(job, argv) == 2
    assert capsys.readouterr().err == "error: cifar10/test: archive x could not be read\n"


# --- jobs/target_table.py -------------------------------------------------------------------------------------------


@pytest.fixture
def target_table() -> ModuleType:
    return load_job_script("target_table.py", "target_table_cli_mutation")


def _cells(out: str, label: str) -> list[str]:
    row = next(line for line in out.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


HEADER = "| Evaluation | k | CA − ShrinkPad | CA − A⁺A x | PA − ShrinkPad | PA − A⁺A x | ASR (≤ 5) | all met |"


def _averages(zip_ca: float, authors_ca: float) -> dict:
    return {"zip": {"ca": zip_ca, "asr": 4.0, "pa": 31.0}, "zip-authors": {"ca": authors_ca, "asr": 9.0, "pa": 20.0},
            "shrinkpad": {"ca": 60.0, "asr": 40.0, "pa": 30.0}, "naive": {"ca": 50.0, "asr": 2.0, "pa": 35.0}}


def test_point_check_cells_are_zip_minus_the_baseline_in_their_columns(target_table: ModuleType, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """ZIP CA 70 (ShrinkPad 60, A⁺A x 50), PA 31 (30, 35), ASR 4: each column its own criterion, signed, ZIP minus
    baseline; k is the pool factor, not the steps; all met only when all five are."""
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"config": {"pool": 2, "steps": 20}, "average": _averages(70.0, 10.0)}))
    assert target_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == HEADER
    assert _cells(out, "a") == ["2", "+10.0 yes, no interval", "+20.0 yes, no interval", "+1.0 yes, no interval",
                                "-4.0 no, no interval", "4.0 yes, no interval", "no"]
    better = _averages(70.0, 10.0)
    better["zip"]["pa"] = 36.0
    path.write_text(json.dumps({"config": {"pool": 2}, "average": better}))
    assert target_table.main([str(path)]) == 0
    assert _cells(capsys.readouterr().out, "a")[-1] == "yes"


def test_zip_option_picks_the_defense_and_rows_follow_the_files(target_table: ModuleType, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    paths = [tmp_path / "second.json", tmp_path / "first.json"]
    for path, ca in zip(paths, (70.0, 65.0), strict=True):
        path.write_text(json.dumps({"config": {"pool": 4}, "average": _averages(ca, ca - 30)}))
    assert target_table.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert [line.split("|")[1].strip() for line in out.splitlines()[2:]] == ["second", "first"]
    assert _cells(out, "second")[1] == "+10.0 yes, no interval" and _cells(out, "first")[1] == "+5.0 yes, no interval"
    assert target_table.main(["--zip", "zip-authors", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert _cells(out, "second")[1] == "-20.0 no, no interval" and _cells(out, "first")[1] == "-25.0 no, no interval"
    assert _cells(out, "second")[5] == "9.0 no, no interval"


def test_a_stored_check_is_shown_with_its_interval_and_within_noise(target_table: ModuleType, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A report's own check (its bootstrap intervals) is used, not the point check of its averages; and its
    `--zip zip-authors` check when asked for."""
    from pipeline.evaluation.target import _row

    def rows(ca: float) -> list[dict]:
        made = [_row(m, b, ca if m == "ca" else 31.0, {"shrinkpad": 30.0, "naive": 29.0}[b], [-1.0, 2.5], 5.0)
                for m in ("ca", "pa") for b in ("shrinkpad", "naive")]
        return [*made, _row("asr", None, 4.5, 5.0, [3.0, 6.0], 5.0)]

    report = {"config": {"pool": 4}, "average": _averages(10.0, 10.0),
              "target": {"checks": {"zip": rows(30.5), "zip-authors": rows(29.5)}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert target_table.main([str(path)]) == 0
    captured = capsys.readouterr()
    assert _cells(captured.out, "r") == ["4", "+0.5 [-1.0, +2.5] yes, within noise", "+1.5 [-1.0, +2.5] yes, within noise",
                                         "+1.0 [-1.0, +2.5] yes, within noise", "+2.0 [-1.0, +2.5] yes, within noise",
                                         "4.5 [3.0, 6.0] yes, within noise", "yes"]
    assert "no per-image predictions" not in captured.err
    assert target_table.main(["--zip", "zip-authors", str(path)]) == 0
    assert _cells(capsys.readouterr().out, "r")[1] == "-0.5 [-1.0, +2.5] no, within noise"


def test_a_list_or_a_config_without_pool_is_no_report(target_table: ModuleType, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    listed, no_pool = tmp_path / "listed.json", tmp_path / "nopool.json"
    listed.write_text("[1, 2]")
    no_pool.write_text(json.dumps({"config": {"steps": 20}, "average": _averages(70.0, 10.0)}))
    assert target_table.main([str(listed), str(no_pool)]) == 2
    err = capsys.readouterr().err
    assert "listed.json: holds an array, not a report" in err and "nopool.json: no config with the pool factor" in err


THREE_ATTACKS = "### On the paper's three attacks (without WaNet)"


def _published_tables() -> list[list[str]]:
    """The rows of docs/results.md's two tables under "The target, with 95 % intervals" (its subsection on the paper's
    three attacks has its own test)."""
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    section = text.split("## The target, with 95 % intervals", 1)[1].split("\n## ", 1)[0].split(THREE_ATTACKS, 1)[0]
    tables = re.findall(r"((?:^\| .*\|\n)+)", section, flags=re.M)
    return [t.splitlines() for t in tables if t.startswith("| Evaluation | k |")]


def test_the_published_target_tables_are_what_the_command_prints(target_table: ModuleType,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """docs/results.md's target tables, rebuilt from the docs/*.json files their rows name."""
    tables = _published_tables()
    assert len(tables) == 2
    for table in tables:
        files = [ROOT / "docs" / f"{line.split('|')[1].strip()}.json" for line in table[2:]]
        assert target_table.main([str(f) for f in files]) == 0
        assert capsys.readouterr().out.splitlines() == table


def test_the_published_three_attack_table_is_what_its_command_prints(target_table: ModuleType,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """docs/results.md's table over BadNet, Blended and PhysicalBA: its command (the one printed above it, run from the
    repository root) prints it line for line."""
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    section = text.split(THREE_ATTACKS, 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ").split()
    assert command[:4] == ["python", "jobs/target_table.py", "--attacks", "badnet,blended,physicalba"]
    table = re.search(r"((?:^\| .*\|\n)+)", section, flags=re.M).group(1).splitlines()
    argv = [str(ROOT / a) if a.startswith("docs/") else a for a in command[2:]]
    assert target_table.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == table


def test_a_name_given_twice_counts_once(job: ModuleType, tmp_path: Path) -> None:
    """Before: --attacks badnet,badnet,wanet reached the runner as given, and the report's Average row counted
    BadNet twice (PA 41.7 where BadNet's 25 and WaNet's 75 average 50); --datasets cifar10,cifar10 ran twice."""
    args = job.parse_args(["--datasets", "cifar10,CIFAR10", "--attacks", "badnet,badnet,wanet,Badnet",
                           "--defenses", "zip,naive,zip"])
    assert (args.datasets, args.attacks, args.defenses) == (["cifar10"], ["badnet", "wanet"], ["zip", "naive"])
    assert run_main(job, ["--datasets", "gtsrb,cifar10,gtsrb", "--out", str(tmp_path)]) == 0
    assert [c.dataset for c, _ in job.started] == ["gtsrb", "cifar10"]


def test_a_report_run_with_bootstrap_0_is_not_said_to_lack_predictions(target_table: ModuleType, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a --bootstrap 0 report (predictions kept, no check) was said to have no per-image predictions, and
    "rerun jobs/evaluate.py" would have refused (another configuration) or, with the same command, given none again."""
    averages = _averages(70.0, 10.0)
    with_predictions, old = tmp_path / "boot0.json", tmp_path / "old.json"
    with_predictions.write_text(json.dumps({"config": {"pool": 4, "bootstrap": 0}, "average": averages, "target": None,
                                            "predictions": {"labels": "0 1", "attacks": {}}}))
    old.write_text(json.dumps({"config": {"pool": 4}, "average": averages}))
    assert target_table.main([str(with_predictions), str(old)]) == 0
    captured = capsys.readouterr()
    assert _cells(captured.out, "boot0") == _cells(captured.out, "old")
    assert f"{with_predictions}: run with --bootstrap 0, so no intervals" in captured.err
    assert "--bootstrap 2000 --overwrite" in captured.err
    assert f"{old}: no per-image predictions, so no intervals" in captured.err


def test_within_noise_at_the_bounds() -> None:
    """A tie is no win, so an interval reaching down to exactly 0 holds a miss; an ASR interval from exactly the
    limit holds a pass. Both are within noise; [-3, 0] and an ASR's [3, 5] are clear."""
    from pipeline.evaluation.target import _row

    def verdict(baseline: str | None, ours: float, other: float, interval: list[float]) -> str:
        return _row("asr" if baseline is None else "ca", baseline, ours, other, interval, 5.0)["verdict"]

    assert verdict("shrinkpad", 31.0, 30.0, [0.0, 2.5]) == "yes, within noise"
    assert verdict("shrinkpad", 29.0, 30.0, [-3.0, 0.0]) == "no"
    assert verdict(None, 5.0, 5.0, [5.0, 6.0]) == "yes, within noise"
    assert verdict(None, 4.0, 5.0, [3.0, 5.0]) == "yes"
