"""Mutation audit of pipeline/cli.py's wiring: every flag and --config key reaches JobConfig with its documented type and
default, a flag wins over the file and the file over the default, and each outcome has its exit status.

Each test here failed on at least one hand-made mutant of cli.py that the other CLI tests let through (a flag landing in
another field, `--exif-transpose false` read as true, a boolean flag's default hiding the file's value, ...)."""

from __future__ import annotations

import re
import signal
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import cli
from pipeline.cli import build_parser, config_from_args, main
from pipeline.config import JobConfig
from pipeline.errors import JobError, JobFailed, JobInterrupted
from pipeline.placement import DEFAULT_CPUS_PER_ACTOR

ROOT = Path(__file__).resolve().parents[1]

# field: (command-line arguments, the value they give, another value for the same field as a --config file gives it).
# Every value differs from JobConfig's default, and the two values differ from each other.
CASES: dict[str, tuple[list[str], Any, Any]] = {
    "input": (["--input", "s3://b/in/"], "s3://b/in/", "/data/in"),
    "output": (["--output", "s3://b/out/"], "s3://b/out/", "/data/out"),
    "labels_from_folders": (["--labels-from-folders", "true"], True, True),
    "join_metadata": (["--join-metadata", "false"], False, False),
    "image_column": (["--image-column", "img"], "img", "picture"),
    "partitioning": (["--partitioning", "hive"], "hive", "hive"),
    "incremental": (["--incremental"], True, True),
    "retry_rejects": (["--retry-rejects"], True, True),
    "refresh_changed": (["--refresh-changed"], True, True),
    "input_moved": (["--input-moved"], True, True),
    "overwrite": (["--overwrite"], True, True),
    "checkpoint": (["--checkpoint", "s3://b/m.pt"], "s3://b/m.pt", "/models/m.pt"),
    "prior": (["--prior", "gtsrb"], "gtsrb", "gtsrb"),
    "preset": (["--preset", "256x256_diffusion_uncond"], "256x256_diffusion_uncond", "64x64"),
    "flags": (["--flags", '{"num_channels": 64}'], {"num_channels": 64}, {"num_channels": 32}),
    "checkpoint_sha256": (["--checkpoint-sha256", "a" * 64], "a" * 64, "b" * 64),
    "device": (["--device", "cpu"], "cpu", "cpu"),
    "precision": (["--precision", "fp16"], "fp16", "bf16"),
    "steps": (["--steps", "7"], 7, 9),
    "pool": (["--pool", "2"], 2, 8),
    "lam": (["--lam", "0.5"], 0.5, 0.25),
    "eta": (["--eta", "0.25"], 0.25, 0.5),
    "sampler": (["--sampler", "ddpm"], "ddpm", "ddpm"),
    "operators": (["--operators", "gray,pool"], "gray,pool", "gray,pool"),
    "blend_k": (["--blend-k", "2.5"], 2.5, 10.0),
    "clip_denoised": (["--clip-denoised", "false"], False, False),
    "resample": (["--resample", "3"], 3, 2),
    "start": (["--start", "0.3"], 0.3, 0.5),
    "schedule": (["--schedule", "cosine"], "cosine", "cosine"),
    "large_images": (["--large-images", "stretch"], "stretch", "stretch"),
    "seed": (["--seed", "9"], 9, 11),
    "canvas_size": (["--canvas-size", "64"], 64, 128),
    "batch_size": (["--batch-size", "3"], 3, 5),
    "tile_batch": (["--tile-batch", "7"], 7, 17),
    "write_batch": (["--write-batch", "11"], 11, 21),
    "files_per_unit": (["--files-per-unit", "13"], 13, 23),
    "in_memory_mb": (["--in-memory-mb", "0"], 0, 64),
    "actors": (["--actors", "2"], 2, 4),
    "gpus_per_actor": (["--gpus-per-actor", "0.5"], 0.5, 0.25),
    "cpus_per_actor": (["--cpus-per-actor", "1.5"], 1.5, 2.5),
    "cpus_per_task": (["--cpus-per-task", "0.5"], 0.5, 0.75),
    "torch_threads": (["--torch-threads", "3"], 3, 6),
    "ray_address": (["--ray-address", "head:6379"], "head:6379", "other:6379"),
    "progress": (["--no-progress"], False, False),
    "max_pixels": (["--max-pixels", "1000"], 1000, 2000),
    "max_image_mb": (["--max-image-mb", "8"], 8, 16),
    "alpha": (["--alpha", "black"], "black", "drop"),
    "exif_transpose": (["--exif-transpose", "false"], False, False),
}
# values that cannot go together with the defaults of other fields
NEEDS = {"precision": ["--device", "cuda"], "prior": [], "device": []}


def _others_default(config: JobConfig, but: str) -> None:
    """Every field but `but` (and storage_options) holds JobConfig's default: a flag landing in another field fails."""
    default = JobConfig()
    for f in fields(JobConfig):
        if f.name not in (but, "storage_options", "device"):
            assert getattr(config, f.name) == getattr(default, f.name), (but, f.name)


def test_the_cases_cover_every_option() -> None:
    assert set(CASES) == {f.name for f in fields(JobConfig)} - {"storage_options"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_flag_reaches_its_own_field_with_its_type(name: str) -> None:
    argv, value, _ = CASES[name]
    config = config_from_args(argv + NEEDS.get(name, []))
    assert getattr(config, name) == value and type(getattr(config, name)) is type(value), getattr(config, name)
    _others_default(config, name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_config_key_reaches_its_field_and_a_flag_wins_over_it(tmp_path: Path, name: str) -> None:
    argv, flag_value, file_value = CASES[name]
    path = tmp_path / "job.yaml"
    extra = {"device": "cuda"} if name == "precision" else {}
    path.write_text(yaml.safe_dump({name.replace("_", "-"): file_value, **extra}))
    from_file = config_from_args(["--config", str(path)])
    assert getattr(from_file, name) == file_value  # the file wins over the default
    _others_default(from_file, name)
    if flag_value != file_value or isinstance(flag_value, bool):
        both = config_from_args(["--config", str(path), *argv])
        assert getattr(both, name) == flag_value  # the flag wins over the file


@pytest.mark.parametrize(("text", "value"), [("true", True), ("yes", True), ("on", True), ("1", True), ("TRUE", True),
                                             ("false", False), ("no", False), ("off", False), ("0", False)])
def test_boolean_flags_read_their_value(text: str, value: bool) -> None:
    for flag, name in (("--exif-transpose", "exif_transpose"), ("--clip-denoised", "clip_denoised"),
                       ("--labels-from-folders", "labels_from_folders")):
        assert getattr(config_from_args([flag, text]), name) is value, (flag, text)


def test_a_boolean_flag_with_another_word_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        config_from_args(["--exif-transpose", "maybe"])
    assert stop.value.code == 2
    assert "expected true/false, got 'maybe'" in capsys.readouterr().err


def test_a_file_that_turns_a_switch_on_or_progress_off_is_not_undone_by_the_flags_absence(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("progress: false\nanon: true\nincremental: true\n")
    config = config_from_args(["--config", str(path)])
    assert (config.progress, config.incremental, config.storage_options) == (False, True, {"anon": True})
    path.write_text("overwrite: true\n")
    assert config_from_args(["--config", str(path)]).overwrite is True


def test_a_boolean_flag_wins_over_the_files_opposite_value(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("exif_transpose: false\nclip_denoised: false\nlabels_from_folders: true\n")
    config = config_from_args(["--config", str(path), "--exif-transpose", "true", "--clip-denoised", "true",
                               "--labels-from-folders", "false"])
    assert (config.exif_transpose, config.clip_denoised, config.labels_from_folders) == (True, True, False)


def test_storage_options_from_the_file_and_the_flags_add_up(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("storage_options: {client_kwargs: {region_name: eu-west-1}, use_ssl: true}\n")
    config = config_from_args(["--config", str(path), "--s3-endpoint", "http://minio:9000", "--anon", "--storage-option",
                               'config_kwargs={"retries": {"mode": "adaptive", "total_max_attempts": 5}}',
                               "--storage-option", "requester_pays=true", "--storage-option", "profile=dev",
                               "--storage-option", 'client_kwargs={"verify": false}'])
    assert config.storage_options == {
        # added to, not replaced: the file's, --s3-endpoint's and a KEY={...} option's client_kwargs
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000", "verify": False},
        "use_ssl": True, "anon": True,
        "config_kwargs": {"retries": {"mode": "adaptive", "total_max_attempts": 5}},  # JSON values are parsed
        "requester_pays": True, "profile": "dev"}


def test_a_bad_flag_value_is_not_blamed_on_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("steps: 10\n")
    assert main(["--config", str(path), "--steps", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "set in --config" not in err, err


def _fake_run(raised: BaseException):
    def run_job(config: JobConfig, **options) -> dict:
        raise raised
    return run_job


class _SignalInterrupt(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@pytest.mark.parametrize(("raised", "code"), [
    (OSError(13, "Permission denied"), 2),  # storage refusing access before the run: could not start
    (ValueError("bad"), 2),
    (_SignalInterrupt(signal.SIGTERM), 143),  # SIGTERM (ray job stop) before the pipeline started
    (_SignalInterrupt(signal.SIGINT), 130),
    (JobInterrupted("stopped by SIGTERM", signal.SIGTERM), 143),  # ray job stop during the run
    (JobFailed("the run failed: x"), 1),
    (JobError("not found"), 2),
])
def test_exit_status_of_each_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     raised: BaseException, code: int) -> None:
    monkeypatch.setattr(cli, "run_job", _fake_run(raised))
    assert main(["--output", str(tmp_path / "out")]) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("interrupted:" if code > 128 else "error:"), err


def test_a_dry_run_that_finds_nothing_wrong_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Plan:
        units = [object()]
        skipped_files = 0

        def describe(self) -> dict:
            return {}

    monkeypatch.setattr(cli, "plan_job", lambda config, dry_run: Plan())
    monkeypatch.setattr(cli, "print_plan", lambda report, *where: None)
    assert main(["--dry-run", "--output", str(tmp_path / "out")]) == 0


def _help_default(text: str) -> str | None:
    """The value an option's help gives as its default ('default 20', '(default true)'), or None ('default: ...')."""
    match = re.search(r"default (\S+?)[;:,)]?(?:\s|$)", " ".join(text.split()) + " ")
    return match[1].rstrip(";:,)") if match else None


def test_help_states_each_default_as_jobconfig_has_it() -> None:
    default = JobConfig()
    checked = []
    for action in build_parser()._actions:
        field = action.dest
        if field not in {f.name for f in fields(JobConfig)} or not action.help:
            continue
        said = _help_default(action.help)
        value = getattr(default, field)
        if field == "cpus_per_actor":  # None: the default, sized to fit a local Ray of fewer CPUs (pipeline.placement)
            value = DEFAULT_CPUS_PER_ACTOR
        if said is None or value is None:
            continue
        if isinstance(value, bool):
            expected = str(value).lower()
        elif isinstance(value, int) and value >= 10_000:
            expected = f"{value:,}"
        else:
            expected = str(value)
        assert said == expected, (action.option_strings, said, expected)
        checked.append(field)
    # the options whose help gives a plain default: a rewording that hid one from this check would fail here (not
    # --schedule and --start: their defaults are the prior's own)
    assert {"output", "labels_from_folders", "partitioning", "precision", "steps", "pool", "lam", "eta", "sampler", "operators",
            "clip_denoised", "resample", "large_images", "seed", "tile_batch", "write_batch",
            "files_per_unit", "in_memory_mb", "cpus_per_actor", "cpus_per_task", "max_pixels", "max_image_mb", "alpha",
            "exif_transpose"} <= set(checked), sorted(checked)


def test_readme_options_table_lists_exactly_the_flags() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if re.match(r"\| (input/output|model|ZIP|throughput|decoding|storage) \|",
                                                                 line)]
    documented = set(re.findall(r"`(--[a-z0-9-]+)", "\n".join(rows)))
    flags = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")} - {"--help", "--version"}
    assert documented == flags, (sorted(flags - documented), sorted(documented - flags))


@pytest.mark.parametrize(("key", "value"), [("prior", "imagenet"), ("precision", "fp8"), ("alpha", "red"),
                                            ("partitioning", "spark"),
                                            ("large-images", "crop"), ("sampler", "euler"), ("schedule", "sqrt")])
def test_a_config_value_outside_the_flags_choices_names_the_file_and_key(tmp_path: Path, key: str, value: str,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f"{key}: {value}\n")
    assert main(["--config", str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: --config {path}: {key.replace('-', '_')} must be one of "), err
    assert repr(value) in err[0]
