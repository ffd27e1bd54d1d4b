"""Mutation audit of JobConfig and ZipSettings (pipeline/config.py, pipeline/settings.py) and the --config file's
precedence: each test pins a bound, a default, a check or the option an error names that the options table
(README.md) and docs/job.md promise and that no fast test held. No Ray, no subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.settings import ZipSettings


def _refused(**fields) -> str:
    """check()'s message for these options (it must refuse them)."""
    with pytest.raises(JobError) as err:
        JobConfig(**fields).check()
    return str(err.value)


# --- defaults --------------------------------------------------------------------------------------------------------


def test_the_throughput_defaults_are_the_documented_ones() -> None:
    """docs/job.md and benchmarks.md quote these: --tile-batch 256, --in-memory-mb 256, --cpus-per-task 0.25, one
    purifier actor per GPU unless --actors says otherwise, --cpus-per-actor sized where Ray starts."""
    c = JobConfig()
    assert (c.tile_batch, c.write_batch, c.files_per_unit, c.in_memory_mb) == (256, 512, 256, 256)
    assert (c.cpus_per_task, c.cpus_per_actor, c.gpus_per_actor, c.actors) == (0.25, None, None, 0)
    c.check()


# --- counts and resources --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tile_batch", "write_batch", "files_per_unit", "max_image_mb", "batch_size",
                                  "canvas_size", "torch_threads"])
def test_a_count_of_0_is_refused_naming_its_flag_and_1_is_taken(name: str) -> None:
    flag = "--" + name.replace("_", "-")
    assert f"{flag} must be a whole number of at least 1, got 0" in _refused(**{name: 0})
    assert f"{flag} must be a whole number of at least 1, got True" in _refused(**{name: True})
    JobConfig(**{name: 1}).check()


def test_in_memory_mb_takes_0_and_refuses_a_negative_one() -> None:
    JobConfig(in_memory_mb=0).check()  # 0: every tar and Parquet file streamed
    assert "--in-memory-mb must be a whole number of 0 or more, got -1" in _refused(in_memory_mb=-1)
    assert "--in-memory-mb must be a whole number of 0 or more, got 1.5" in _refused(in_memory_mb=1.5)


@pytest.mark.parametrize("name", ["cpus_per_actor", "cpus_per_task"])
def test_a_cpu_fraction_is_refused_below_rays_smallest_and_taken_from_it(name: str) -> None:
    """docs/job.md: --cpus-per-actor and --cpus-per-task are 0.0001 or more, refused before any work below that."""
    flag = "--" + name.replace("_", "-")
    assert f"{flag} must be 0.0001 or more (Ray's smallest fraction of a CPU), got 5e-05" in _refused(**{name: 0.00005})
    assert f"{flag} must be a number above 0, got -1" in _refused(**{name: -1})
    JobConfig(**{name: 0.0001}).check()
    JobConfig(**{name: 0.0005}).check()


def test_gpus_per_actor_is_0_or_a_fraction_from_rays_smallest_up_to_1() -> None:
    for taken in (0, 0.0001, 0.5, 1):
        JobConfig(gpus_per_actor=taken).check()
    assert "--gpus-per-actor must be a number of 0 or more, got -0.5" in _refused(gpus_per_actor=-0.5)
    assert "--gpus-per-actor must be 0 or at least 0.0001" in _refused(gpus_per_actor=0.00005)
    assert "--gpus-per-actor must be at most 1" in _refused(gpus_per_actor=1.5)


# --- switches --------------------------------------------------------------------------------------------------------


def test_progress_must_be_a_boolean() -> None:
    assert "--progress must be true or false, got 'no'" in _refused(progress="no")


@pytest.mark.parametrize("other", ["retry_rejects", "refresh_changed", "incremental"])
def test_overwrite_with_an_option_that_keeps_the_output_is_refused(other: str) -> None:
    message = _refused(overwrite=True, **{other: True})
    assert f"--{other.replace('_', '-')} and --overwrite contradict each other" in message
    JobConfig(**{other: True}).check()


def test_partitioning_given_through_the_api_is_checked() -> None:
    """The flag's choices are argparse's; JobConfig(partitioning=...) must be refused the same way."""
    assert "--partitioning must be one of none, hive, got 'Hive'" in _refused(partitioning="Hive")
    JobConfig(partitioning="hive").check()


# --- locations -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["https://host/out", "HTTPS://host/out", "Http://host/out"])
def test_a_web_address_output_is_refused_whatever_its_case(output: str) -> None:
    assert "--output must be storage the job can write" in _refused(output=output)


def test_an_fsspec_url_chain_is_refused_for_the_input_and_the_output() -> None:
    for name in ("input", "output"):
        assert f"--{name} must be the storage's own URI" in _refused(**{name: "simplecache::s3://bucket/x"})


@pytest.mark.parametrize("name", ["input", "output"])
def test_an_empty_input_or_output_is_refused(name: str) -> None:
    assert f"--{name} must be a path or URI, got ''" in _refused(**{name: ""})


# --- model -----------------------------------------------------------------------------------------------------------


def test_checkpoint_sha256_is_exactly_64_hex_digits_of_either_case() -> None:
    JobConfig(checkpoint_sha256="ab" * 32).check()
    JobConfig(checkpoint_sha256="AB" * 32).check()  # as some tools print it
    for bad in ("a" * 63, "a" * 65, "g" * 64):
        assert "--checkpoint-sha256 must be 64 hexadecimal digits" in _refused(checkpoint_sha256=bad)


def test_flags_and_the_text_options_refuse_a_value_of_another_type() -> None:
    assert "--flags must be a JSON object of create_model flags, got ['x']" in _refused(flags=["x"])
    assert "--image-column must be text, got 3" in _refused(image_column=3)
    JobConfig(flags={"num_channels": 64}, image_column="img").check()


# --- precision and device --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_the_cpu_is_refused_before_any_work(precision: str) -> None:
    assert f"--precision {precision} needs a CUDA device; use fp32 with --device cpu" in _refused(
        device="cpu", precision=precision)
    assert f"--precision {precision} needs CUDA, but --gpus-per-actor 0" in _refused(gpus_per_actor=0, precision=precision)
    JobConfig(device="cuda", precision=precision).check()


def test_a_precision_that_is_not_text_is_a_job_error_not_a_type_error() -> None:
    assert "--precision must be one of fp32, fp16, bf16, got ['fp16']" in _refused(precision=["fp16"])


# --- the sampler's errors name the job's flag ------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "start"), [
    ({"lam": 1.5}, "--lam: lam (λ) must be in [0, 1]"),
    ({"eta": 1.5}, "--eta: eta (η) must be in [0, 1]"),
    ({"start": 0}, "--start: start must be in (0, 1]"),
    ({"resample": 0}, "--resample: resample must be an integer in [1, 20]"),
    ({"steps": 0}, "--steps: steps must be an integer in [1, 1000]"),
    ({"pool": 0}, "--pool: pool factor must be a positive integer"),
    ({"seed": -1}, "--seed: seed must be an integer in [0, 4294967295]"),
    ({"schedule": "cos"}, "--schedule: unknown noise schedule 'cos'"),
    ({"large_images": "crop"}, "--large-images: large_images must be one of"),
])
def test_a_sampler_error_begins_with_the_jobs_flag(fields: dict, start: str) -> None:
    assert _refused(**fields).startswith(start)


def test_the_blend_k_error_says_off_as_the_user_writes_it() -> None:
    message = _refused(blend_k=0)
    assert message.startswith("--blend-k: blend_k must be a number above 0 (or off for the hard switch), got 0")
    assert "None" not in message


# --- how values are kept ---------------------------------------------------------------------------------------------


def test_numpy_scalars_and_paths_are_kept_as_plain_values() -> None:
    np = pytest.importorskip("numpy")
    c = JobConfig(tile_batch=np.int64(64), cpus_per_task=np.float32(0.5), overwrite=np.bool_(True),
                  input=Path("in"), output=Path("out"), checkpoint=Path("m.pt"), storage_options=None)
    assert (type(c.tile_batch), type(c.cpus_per_task), type(c.overwrite)) == (int, float, bool)
    assert (c.input, c.output, c.checkpoint, c.storage_options) == ("in", "out", "m.pt", {})
    c.check()


def test_from_recipe_fields_win_over_the_recipes_values() -> None:
    c = JobConfig.from_recipe("low-asr", steps=40)
    assert (c.sampler, c.steps, c.start) == ("ddpm", 40, 0.3)
    assert JobConfig.from_recipe("authors-code", blend_k=None).blend_k is None


def test_public_hides_a_presigned_checkpoint_urls_signature() -> None:
    c = JobConfig(checkpoint="https://host/m.pt?X-Amz-Signature=s3cr3t&X-Amz-Expires=60")
    assert "s3cr3t" not in c.public()["checkpoint"]
    assert c.checkpoint.endswith("s3cr3t&X-Amz-Expires=60")  # the config itself keeps it to read the file


def test_settings_carry_every_sampler_option_of_the_config() -> None:
    values = {"steps": 10, "pool": 2, "lam": 0.1, "eta": 0.5, "sampler": "ddim", "operators": "gray,pool",
              "blend_k": 3.0, "clip_denoised": False, "resample": 2, "start": 0.5, "schedule": "cosine",
              "large_images": "stretch", "seed": 7}
    assert JobConfig(**values).settings().to_dict() == values


# --- a --config file, the flags and a recipe -------------------------------------------------------------------------


def _file(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return ["--config", str(path)]


def test_flags_win_over_the_file_and_the_files_keys_over_its_recipe(tmp_path) -> None:
    from pipeline.cli import config_from_args

    args = _file(tmp_path, "recipe: fast\nsteps: 10\ntile-batch: 8\nwrite_batch: 16\n")
    c = config_from_args(args)
    assert (c.start, c.steps, c.tile_batch, c.write_batch) == (0.3, 10, 8, 16)
    c = config_from_args([*args, "--steps", "5", "--tile-batch", "4", "--recipe", "low-asr"])
    assert (c.sampler, c.start, c.steps, c.tile_batch, c.write_batch) == ("ddpm", 0.3, 5, 4, 16)


def test_blend_k_off_in_a_file_or_a_flag_is_the_hard_switch_after_a_recipe(tmp_path) -> None:
    from pipeline.cli import config_from_args

    assert config_from_args(["--recipe", "authors-code"]).blend_k == 10.0
    assert config_from_args(["--recipe", "authors-code", "--blend-k", "off"]).blend_k is None
    for word in ("off", "no", "false", "null", "'none'"):
        assert config_from_args(_file(tmp_path, f"recipe: authors-code\nblend_k: {word}\n")).blend_k is None, word


def test_a_file_is_refused_for_an_empty_body_or_a_value_outside_the_flags_choices(tmp_path) -> None:
    from pipeline.cli import ConfigError, config_from_args

    with pytest.raises(ConfigError, match="is empty; it must hold a mapping of option: value"):
        config_from_args(_file(tmp_path, "# nothing\n"))
    with pytest.raises(ConfigError, match=r"job.yaml: sampler must be one of ddim, ddpm, got 'DDIM'"):
        config_from_args(_file(tmp_path, "sampler: DDIM\n"))



@pytest.mark.parametrize(("text", "said"), [
    ("lamda: 0.1\n", "unknown option 'lamda'; did you mean lam?"),
    ("pol: 2\n", "unknown option 'pol'; did you mean pool?"),
    ("overwrite: 'yes'\n", "--overwrite must be true or false, got 'yes' (set in --config"),
    ("overwrite: 'yes'\n", "job.yaml: overwrite; text: write true or false without quotes)"),
    ("anon: 'no'\n", "job.yaml: anon must be true or false, got 'no' (text: write true or false without quotes)"),
])
def test_a_mistyped_file_key_or_a_quoted_boolean_is_said_with_the_fix(tmp_path, text: str, said: str) -> None:
    from pipeline.cli import ConfigError, config_from_args

    with pytest.raises(ConfigError) as err:
        config_from_args(_file(tmp_path, text))
    assert said in str(err.value)

# --- ZipSettings -----------------------------------------------------------------------------------------------------


def test_the_sampler_bounds_take_their_ends() -> None:
    ZipSettings(steps=1000)
    ZipSettings(seed=2**32 - 1)
    ZipSettings(resample=20)
    ZipSettings(lam=0.95)  # 20 steps: the first is t = 950 = 0.95 T, still guided
    for bad in ({"steps": 1001}, {"seed": 2**32}, {"resample": 21}, {"lam": 0.951}):
        with pytest.raises(ValueError):
            ZipSettings(**bad)


def test_lam_above_1_is_refused_with_a_late_start_too() -> None:
    with pytest.raises(ValueError, match=r"lam \(λ\) must be in \[0, 1\], got 1.5"):
        ZipSettings(lam=1.5, start=0.3)


@pytest.mark.parametrize("bad", [{"blend_k": float("inf")}, {"blend_k": True}, {"eta": True}, {"lam": False},
                                 {"start": True}, {"sampler": "ddpm", "eta": 0.5}])
def test_a_value_the_sampler_cannot_use_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        ZipSettings(**bad)


def test_a_late_start_may_run_unguided_but_not_resample_nothing() -> None:
    ZipSettings(start=0.3, lam=0.5)
    with pytest.raises(ValueError, match="resample = 2 redoes only the guided steps"):
        ZipSettings(start=0.3, lam=0.5, resample=2)


def test_numpy_values_become_plain_numbers() -> None:
    np = pytest.importorskip("numpy")
    s = ZipSettings(steps=np.int64(10), seed=np.uint32(3), eta=np.float32(0.5), blend_k=np.int64(2))
    assert [type(getattr(s, n)) for n in ("steps", "seed", "eta", "blend_k")] == [int, int, float, int]


def test_operators_have_one_spelling_per_setting() -> None:
    assert ZipSettings(operators="pool, gray").operators == "gray,pool"
    assert ZipSettings(operators="pool+gray").operators == "gray+pool"
    assert ZipSettings(operators="pool,pool,gray").operators == "pool,pool,gray"  # a third on: order kept


def test_the_recipes_and_the_defaults_are_the_documented_ones() -> None:
    """README's recipe table and docs/job.md's sampler defaults."""
    from pipeline.settings import check_trained_timesteps, recipe_values

    # start and schedule unset: the prior's own, from pure noise with linear for one that records neither
    assert ZipSettings().to_dict() == {
        "steps": 20, "pool": 4, "lam": 0.0, "eta": 1.0, "sampler": "ddim", "operators": "pool", "blend_k": None,
        "clip_denoised": True, "resample": 1, "start": None, "schedule": None, "large_images": "fit", "seed": 0}
    assert ZipSettings().for_prior({}).to_dict() == {**ZipSettings().to_dict(), "start": 1.0, "schedule": "linear"}
    assert recipe_values("fast") == {"start": 0.3}
    assert recipe_values("low-asr") == {"sampler": "ddpm", "steps": 50, "start": 0.3}
    assert recipe_values("authors-code") == {"operators": "gray,pool", "blend_k": 10.0, "eta": 1.0}
    recipe_values("fast")["start"] = 0.9  # a copy: the caller's changes stay the caller's
    assert ZipSettings.recipe("fast").start == 0.3
    assert ZipSettings.recipe("fast", start=0.5).start == 0.5
    assert ZipSettings.authors_code(pool=2).pool == 2
    check_trained_timesteps({"max_timestep": 950}, ZipSettings(start=1.0))  # the first step is t = 950
    with pytest.raises(ValueError, match="trained only on timesteps 0..949"):
        check_trained_timesteps({"max_timestep": 949}, ZipSettings(start=1.0))


def test_a_device_names_its_cuda_number_in_full() -> None:
    from pipeline.settings import device_problem

    assert device_problem("cuda:1", on_this_machine=False) is None
    assert device_problem("cuda:", on_this_machine=False) == "--device must be cpu, cuda or cuda:N, got 'cuda:'"



def test_a_bad_clip_denoised_is_said_once_naming_its_flag() -> None:
    """JobConfig and ZipSettings both checked it: `--clip-denoised must be true or false, got 1; --clip-denoised:
    clip_denoised must be true or false, got 1`, the one problem said twice."""
    message = _refused(clip_denoised=1)
    assert message.count("true or false") == 1 and message.startswith("--clip-denoised"), message
