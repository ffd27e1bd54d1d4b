"""How the job's options combine: a resumed, --incremental or --retry-rejects run against the output's record (an
option that changes purified pixels must match, one that does not must not be refused), recipes with flags, and
--config files with flags. Each test fails on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import ZipSettings
from pipeline.cli import config_from_args, main
from pipeline.operators import OPERATOR_NAMES_HELP
from pipeline.output import JOB_FILE
from pipeline.plan import plan_job
from tests.jobutil import image_bytes


@pytest.fixture
def folders(tmp_path) -> list[str]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes(8, 8, 1))
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]


def _output_written_with(argv: list[str]) -> None:
    """An output whose record is the one `argv`'s run writes, holding one row (so its settings hold)."""
    config = config_from_args(argv)
    record = plan_job(config, dry_run=True).job_record
    Path(config.output, "data").mkdir(parents=True)
    Path(config.output, JOB_FILE).write_text(json.dumps(record))
    pq.write_table(pa.table({"id": ["earlier.png"]}), Path(config.output, "data", "part-00000.parquet"))


def test_a_larger_max_pixels_retries_the_images_it_rejected(folders, model, capsys) -> None:
    # --max-pixels decides only which images are rejects ("image too large ... exceeds max_pixels"), never a purified
    # image's pixels; yet an output recorded it with the decoding options, so the command that reads those rejects
    # again with a larger limit (--retry-rejects --max-pixels ...) was refused as "written with other decoding".
    base = [*folders, "--checkpoint", model, "--steps", "1", "--no-progress"]
    _output_written_with([*base, "--max-pixels", "50"])
    assert main([*base, "--max-pixels", "100", "--retry-rejects", "--dry-run"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out
    assert main([*base, "--dry-run"]) == 0, capsys.readouterr().err  # the default limit, as a scheduled run gives it
    capsys.readouterr()
    # the decoding options that do change pixels are still compared
    assert main([*base, "--max-pixels", "50", "--alpha", "black", "--dry-run"]) == 2
    assert "other decoding: alpha 'white' (now 'black')" in capsys.readouterr().err


@pytest.mark.parametrize("file_key, flags, named", [
    ("input", ["--refresh-changed", "--input-moved"], "--input-moved"),
    ("checkpoint", ["--checkpoint-sha256", "abc"], "--checkpoint-sha256"),
])
def test_a_flags_error_is_not_put_on_a_config_key_whose_flag_it_only_begins_with(tmp_path, folders, model, capsys,
                                                                                 file_key, flags, named) -> None:
    # An error about --input-moved (or --checkpoint-sha256), both given on the command line, ended "(set in --config
    # job.yaml: input)": the file's key was matched as text inside the longer flag's name, sending the user to a
    # file that holds nothing wrong.
    value = folders[1] if file_key == "input" else model
    path = tmp_path / "job.yaml"
    path.write_text(f"{file_key}: {value}\n")
    assert main(["--config", str(path), "--output", folders[3], *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert named in err and "set in --config" not in err, err
    # a key the error is about is still named
    path.write_text("eta: 2.0\n")
    assert main(["--config", str(path), *folders, "--dry-run"]) == 2
    assert "(set in --config" in capsys.readouterr().err


def test_an_eta_beside_the_ddpm_sampler_is_refused_not_silently_ignored(folders, model, capsys) -> None:
    # The ddpm sampler (Algorithm 1, --recipe low-asr) takes no η: `--recipe low-asr --eta 0` ran, printed eta=0.0 in
    # its settings, recorded it, and purified exactly as eta 1 would.
    base = [*folders, "--checkpoint", model, "--no-progress", "--dry-run"]
    assert main([*base, "--recipe", "low-asr", "--eta", "0"]) == 2
    err = capsys.readouterr().err
    assert "--eta: eta (η) = 0 is the ddim sampler's setting" in err, err
    with pytest.raises(ValueError, match="takes no η"):
        ZipSettings(sampler="ddpm", eta=0.5)
    assert ZipSettings(sampler="ddpm").eta == 1.0 and ZipSettings.recipe("low-asr", eta=1.0).sampler == "ddpm"
    assert ZipSettings(sampler="ddim", eta=0.0).eta == 0.0


def test_an_output_recorded_with_ddpm_and_an_unused_eta_resumes_without_it(folders, model, capsys) -> None:
    # An output an earlier version wrote with `--sampler ddpm --eta 0` (an η ddpm never used): the command without
    # the now-refused --eta makes the same pixels and must resume it; another sampler is still refused.
    base = [*folders, "--checkpoint", model, "--steps", "2", "--no-progress"]
    _output_written_with([*base, "--sampler", "ddpm"])
    job_file = Path(folders[3], JOB_FILE)
    record = json.loads(job_file.read_text())
    record["settings"]["eta"] = 0.0
    job_file.write_text(json.dumps(record))
    assert main([*base, "--sampler", "ddpm", "--dry-run"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out
    assert main([*base, "--sampler", "ddim", "--eta", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "other settings:" in err and "sampler 'ddpm' (now 'ddim')" in err, err


@pytest.mark.parametrize("text, hint", [
    ("seed: 1e3\n", "write the whole number out, without an exponent"),
    ("eta: 1e-1\n", "write it with a dot before the exponent (1.0e-3)"),
])
def test_a_config_files_exponent_gets_a_hint_its_option_can_take(tmp_path, capsys, text, hint) -> None:
    # `seed: 1e3` (YAML 1.1 reads it as text) was told to write 1.0e3, which YAML reads as a float: refused again, as
    # "seed must be an integer"
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert hint in err, err


def test_a_recipe_value_replaced_by_a_flag_or_a_config_key_is_said(tmp_path, capsys) -> None:
    # Flags and --config keys win over a recipe (as --help says), but nothing said so: a config file's `steps: 20`
    # and `sampler: ddim` beside --recipe low-asr ran the paper's settings at a late start, with no word of it.
    path = tmp_path / "job.yaml"
    path.write_text("sampler: ddim\nsteps: 50\n")
    config = config_from_args(["--config", str(path), "--recipe", "low-asr", "--start", "0.5"])
    assert (config.sampler, config.steps, config.start) == ("ddim", 50, 0.5)
    err = capsys.readouterr().err
    assert f"recipe low-asr runs with sampler 'ddim' (--config {path}), not the recipe's 'ddpm'" in err, err
    assert "start 0.5 (--start), not the recipe's 0.3" in err and "steps" not in err, err  # steps: the recipe's own
    config_from_args(["--recipe", "low-asr", "--seed", "3"])  # nothing of the recipe's replaced: nothing said
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("given", [",", ""])
def test_no_operators_names_the_flag_and_the_names_it_takes(tmp_path, capsys, given) -> None:
    # `--operators ","` (or "") said only "error: at least one operator is needed", naming no option, and then no
    # name the option takes (an unknown name's error gave them)
    assert main(["--operators", given, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: --operators: at least one operator is needed; {OPERATOR_NAMES_HELP}\n"
    assert "the operators are pool, gray and gray+pool" in OPERATOR_NAMES_HELP


@pytest.mark.parametrize("given", ["", " , ", []])
def test_no_operators_in_the_python_api_are_told_the_names(given) -> None:
    with pytest.raises(ValueError, match=r"^at least one operator is needed; the operators are pool, gray and "
                                         r"gray\+pool .*comma-separated"):
        ZipSettings(operators=given)


@pytest.mark.parametrize("given", ["pool,blur", "Pool"])
def test_an_unknown_operator_is_told_the_names_as_the_flag_takes_them(tmp_path, capsys, given) -> None:
    # It said "choose from ['gray', 'gray+pool', 'pool', 'pool+gray']": a Python list, with an alias, and no word of
    # the comma that averages two operators (the help named only 'pool' and 'gray,pool')
    assert main(["--operators", given, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --operators: unknown operator {given.split(',')[-1]!r}; the operators are pool, gray "
                          "and gray+pool"), err
    assert "comma-separated" in err and "[" not in err, err
    for name in ("gray", "gray+pool", "pool,gray"):  # each name the message gives is taken
        assert main(["--operators", name, "--output", str(tmp_path / "out"), "--dry-run"]) == 0
        assert "operators=" in capsys.readouterr().out


@pytest.mark.parametrize("pool", ["0", "-2"])
def test_a_pool_factor_below_one_is_refused_with_any_operators(tmp_path, capsys, pool) -> None:
    # With --operators gray (no pooling operator built) the factor went unchecked: 0 stopped the dry run and the run
    # with a ZeroDivisionError traceback (exit status 1), -2 was taken and recorded.
    assert main(["--operators", "gray", "--pool", pool, "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: --pool: pool factor must be a positive integer, got {pool}\n"
    with pytest.raises(ValueError, match="pool factor"):
        ZipSettings(operators="gray", pool=int(pool))


def test_blend_k_off_restores_the_hard_switch_after_the_authors_code_recipe(tmp_path, capsys) -> None:
    # --blend-k took only numbers, so `--recipe authors-code` could not be run with the paper's hard switch from the
    # command line (only a --config file's blend_k: null could): `--blend-k off` stopped with "invalid float value".
    config = config_from_args(["--recipe", "authors-code", "--blend-k", "off"])
    assert config.blend_k is None and config.settings().blend_k is None and config.operators == "gray,pool"
    assert "recipe authors-code runs with blend_k off (--blend-k), not the recipe's 10.0" in capsys.readouterr().err
    path = tmp_path / "job.yaml"
    path.write_text("blend_k: 4\n")
    assert config_from_args(["--config", str(path), "--blend-k", "None"]).blend_k is None  # the flag wins over the file
    assert config_from_args(["--blend-k", "2.5"]).blend_k == 2.5
    with pytest.raises(SystemExit):
        config_from_args(["--blend-k", "soft"])
    assert "expected a number above 0, or off for no blend" in capsys.readouterr().err


@pytest.mark.parametrize("word", ["off", "Off", "OFF", "no", "false", "none", "'off'", "null"])
def test_a_config_files_blend_k_off_is_the_hard_switch_as_the_flags(tmp_path, capsys, word) -> None:
    # YAML reads a bare off as the boolean false: a file's blend_k: off stopped the run ("got False") although
    # --blend-k off takes the same word; only null worked there.
    path = tmp_path / "job.yaml"
    path.write_text(f"recipe: authors-code\nblend_k: {word}\n")
    config = config_from_args(["--config", str(path)])
    assert config.blend_k is None and config.settings().blend_k is None and config.operators == "gray,pool"
    assert "recipe authors-code runs with blend_k off (--config" in capsys.readouterr().err


@pytest.mark.parametrize(("word", "shown"), [("true", "True"), ("yes", "True"), ("soft", "'soft'"), ("[10]", "[10]"),
                                             ("'10'", "'10' (read as text: write the number without quotes)")])
def test_a_config_files_blend_k_of_another_type_is_refused_naming_the_file(tmp_path, capsys, word, shown) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f"blend_k: {word}\n")
    assert main(["--config", str(path), "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"error: --config {path}: blend_k must be a number above 0, or off (null) for no "
                                       f"blend (the hard switch), got {shown}\n")
    path.write_text("blend_k: 2.5\n")
    assert config_from_args(["--config", str(path)]).blend_k == 2.5


@pytest.mark.parametrize("value", ["-1", "0", "inf"])
def test_a_blend_k_out_of_range_names_no_blend_as_the_user_writes_it(tmp_path, capsys, value) -> None:
    # "or None for the hard switch": the API's word for no blend; on the command line and in a --config file the
    # user writes off (--blend-k off, blend_k: off), as the flag's help and the file's own errors say
    out = str(tmp_path / "out")
    assert main(["--blend-k", value, "--output", out, "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"error: --blend-k: blend_k must be a number above 0 (or off for the hard "
                                       f"switch), got {float(value)!r}\n")
    path = tmp_path / "job.yaml"
    path.write_text(f"blend_k: {value.replace('inf', '.inf')}\n")
    assert main(["--config", str(path), "--output", out, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --blend-k: blend_k must be a number above 0 (or off for the hard switch), got "), err
    assert err.endswith(f"(set in --config {path}: blend_k)\n"), err
    with pytest.raises(ValueError, match=r"\(or None for the hard switch\)"):  # the API's own word stays Python's
        ZipSettings(blend_k=float(value))


def test_resample_where_no_step_is_guided_is_refused(folders, model, capsys) -> None:
    # A late start that lam leaves unguided redoes no step: `--start 0.3 --lam 0.5 --resample 4` was taken, recorded
    # and ran exactly as --resample 1, with no word of it.
    base = [*folders, "--checkpoint", model, "--no-progress", "--dry-run"]
    assert main([*base, "--start", "0.3", "--lam", "0.5", "--resample", "4"]) == 2
    err = capsys.readouterr().err
    assert "--resample: resample = 4 redoes only the guided steps, and lam (λ) = 0.5 guides none" in err, err
    assert "use lam <= 0.3" in err, err
    with pytest.raises(ValueError, match="redoes only the guided steps"):
        ZipSettings(start=0.3, lam=0.5, resample=2)
    # one guided step is enough, and an unguided late start without resample stays allowed
    assert ZipSettings(start=0.3, lam=0.3, resample=2).resample == 2
    assert ZipSettings(start=0.3, lam=0.5).resample == 1


def test_an_output_recorded_with_an_unused_resample_resumes_without_it(folders, model, capsys) -> None:
    # An output an earlier version wrote with `--start 0.3 --lam 0.5 --resample 3` (no step guided, none redone): the
    # command without the now-refused --resample makes the same pixels and must resume it.
    base = [*folders, "--checkpoint", model, "--steps", "2", "--no-progress", "--start", "0.6", "--lam", "0.6"]
    _output_written_with(base)
    job_file = Path(folders[3], JOB_FILE)
    record = json.loads(job_file.read_text())
    record["settings"]["resample"] = 3
    job_file.write_text(json.dumps(record))
    assert main([*base, "--dry-run"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out
    # where a step is guided, the recorded resample is still compared
    record["settings"]["lam"] = 0.5
    job_file.write_text(json.dumps(record))
    assert main([*base[:-2], "--lam", "0.5", "--dry-run"]) == 2
    assert "resample 3 (now 1)" in capsys.readouterr().err


def test_two_operators_in_either_order_are_one_setting(folders, model, capsys) -> None:
    # `--operators gray,pool` and `pool,gray` purify to the same bits (the sampler sums their guidance from zero, and
    # one addition commutes), yet were recorded apart, so resuming with the other order was refused.
    from pipeline.operators import make_operators
    from pipeline.sampler import Guidance, guided_x0, range_estimate

    x, x0 = (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (1, 2))
    made = [Guidance.from_input(x, make_operators(names, 2), blend_k=3.0) for names in ("gray,pool", "pool,gray")]
    assert torch.equal(guided_x0(x0, made[0], 0.7), guided_x0(x0, made[1], 0.7))
    assert torch.equal(range_estimate(made[0]), range_estimate(made[1]))
    base = [*folders, "--checkpoint", model, "--steps", "1", "--no-progress"]
    _output_written_with([*base, "--operators", "pool,gray"])
    assert json.loads(Path(folders[3], JOB_FILE).read_text())["settings"]["operators"] == "gray,pool"
    assert main([*base, "--operators", "gray,pool", "--dry-run"]) == 0, capsys.readouterr().err
    assert "resumes an unfinished run" in capsys.readouterr().out
    # an older version's record kept the order given: still resumed, with either order
    job_file = Path(folders[3], JOB_FILE)
    record = json.loads(job_file.read_text())
    record["settings"]["operators"] = "pool,gray"
    job_file.write_text(json.dumps(record))
    for names in ("gray,pool", "pool,gray"):
        assert main([*base, "--operators", names, "--dry-run"]) == 0, capsys.readouterr().err
        assert "resumes an unfinished run" in capsys.readouterr().out
    assert main([*base, "--operators", "pool", "--dry-run"]) == 2  # other operators are still refused
