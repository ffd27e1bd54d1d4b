"""The evaluation and training tools as an ML engineer meets them the first time: what they say about a prior whose
architecture they cannot tell, and the bench scripts that reuse the evaluation's classifiers (where they look, what
their --help says)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model import UNetConfig, build_unet
from tests.jobutil import (
    cifar10_archive_stand_ins,
    evaluate_job_without_evaluation,
    load_evaluate_job,
    load_job_script,
    run_main,
    train_prior_on_noise,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bare_state_dict(path: Path) -> Path:
    """A 32 px UNet's weights with no flags, of an architecture no preset has (no scale-shift norm, num_heads)."""
    torch.manual_seed(0)
    config = UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="",
                        use_scale_shift_norm=False, learn_sigma=False)
    torch.save(build_unet(config).state_dict(), path)
    return path


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_evaluate_does_not_send_the_user_to_preset_or_flags_it_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 'matches none of the presets ...; pass --preset or --flags', two options jobs/evaluate.py refuses."""
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    job = load_evaluate_job("evaluate_first_use")
    bare = _bare_state_dict(tmp_path / "weights.pt")
    argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "none,zip", "--subset", "20", "--checkpoint",
            str(bare), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(job, argv) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "matches none of the presets" in lines[0], lines
    assert "pass --preset or --flags" not in lines[0]
    assert "takes no --preset or --flags" in lines[0] and "save_bundle(" in lines[0] and "flags=" in lines[0]
    with pytest.raises(SystemExit) as parsed:  # and the options it would have sent the user to are indeed refused
        job.parse_args([*argv, "--preset", "64x64_diffusion"])
    assert parsed.value.code == 2


def test_train_prior_init_from_does_not_send_the_user_to_preset_or_flags(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    job = train_prior_on_noise(monkeypatch, "train_prior_first_use")
    bare = _bare_state_dict(tmp_path / "weights.pt")
    assert job.cli(["--init-from", str(bare), "--minutes", "0", "--out", str(tmp_path / "run")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: --init-from {bare}: "), lines
    assert "pass --preset or --flags" not in lines[0] and "takes no --preset or --flags" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_advised_bundle_is_taken_by_both_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The advice works as written: the weights loaded with their flags and saved with save_bundle."""
    from pipeline.checkpoint import load_checkpoint, save_bundle

    bare = _bare_state_dict(tmp_path / "weights.pt")
    flags = {"image_size": 32, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
             "attention_resolutions": "", "use_scale_shift_norm": False, "learn_sigma": False}
    save_bundle(tmp_path / "prior.pt", load_checkpoint(str(bare), flags=flags).model)
    job = train_prior_on_noise(monkeypatch, "train_prior_first_use_bundle")
    assert job.cli(["--init-from", str(tmp_path / "prior.pt"), "--minutes", "0", "--batch", "4", "--out",
                    str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "prior.pt").is_file()
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    evaluate = evaluate_job_without_evaluation(monkeypatch, "evaluate_first_use_bundle")
    assert run_main(evaluate, ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "none,zip", "--subset", "20",
                               "--checkpoint", str(tmp_path / "prior.pt"), "--out", str(tmp_path / "out"),
                               "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(evaluate.started) == 1


BENCH_ON_EVALUATION_CACHE = ("patch_victim.py", "pooled_ceiling.py", "sampler_settings.py")
BENCH_WITH_DEFAULTS = (*BENCH_ON_EVALUATION_CACHE, "evaluation_time.py", "prior_sizes_bench.py")


@pytest.mark.parametrize("script", BENCH_ON_EVALUATION_CACHE)
def test_bench_scripts_read_the_classifiers_from_the_evaluations_cache_folder(script: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: ~/.cache/zip-purify whatever $ZIP_CACHE_DIR said, so with it set the classifier jobs/evaluate.py had
    cached there was not found: patch_victim and pooled_ceiling trained another (25-30 min), sampler_settings stopped."""
    from pipeline.evaluation import datasets

    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "zip-cache")  # what $ZIP_CACHE_DIR sets
    args = load_job_script(script, f"first_use_{Path(script).stem}", folder="bench").parse_args([])
    if script == "sampler_settings.py":
        assert Path(args.classifier) == tmp_path / "zip-cache" / "classifiers" / "cifar10-clean-e10.pt"
    else:
        assert args.cache_dir == tmp_path / "zip-cache"


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("script", BENCH_WITH_DEFAULTS)
def test_bench_scripts_state_every_default(script: str) -> None:
    module = load_job_script(script, f"first_use_help_{Path(script).stem}", folder="bench")
    parser = None

    def keep(self, argv=None, namespace=None):
        nonlocal parser
        parser = self
        raise _Parsed

    with pytest.MonkeyPatch.context() as patched, pytest.raises(_Parsed):
        patched.setattr(argparse.ArgumentParser, "parse_args", keep)
        getattr(module, "parse_args", module.main)([])
    unstated = [a.dest for a in parser._actions
                if a.dest != "help" and not a.required and "default" not in (a.help or "").lower()]
    assert not unstated, unstated


def _bench(script: str, name: str):
    return load_job_script(script, f"first_use_{name}", folder="bench")


def _two_class_splits(seed: int):
    """A tiny CIFAR-10 stand-in: 20 training and 20 test images of two classes (10 each)."""
    from pipeline.evaluation.datasets import LabelledImages

    rng = np.random.default_rng(seed)
    labels = np.arange(20, dtype=np.int64) % 2

    def images() -> np.ndarray:
        return rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)

    return LabelledImages(images(), labels, 2), LabelledImages(images(), labels.copy(), 2)


@pytest.mark.parametrize(("script", "argv", "said"), [
    ("patch_victim.py", ["--epochs", "0"], "--epochs must be 1 or more, got 0"),
    ("patch_victim.py", ["--depth", "21"], "--depth must be 6n + 2"),
    ("patch_victim.py", ["--threads", "0"], "--threads must be 1 or more"),
    ("pooled_ceiling.py", ["--crop-pad", "-1"], "--crop-pad must be 0 or more, got -1"),
    ("pooled_ceiling.py", ["--epochs", "0"], "--epochs must be 1 or more"),
    ("pooled_ceiling.py", ["--subset", "5"], "--subset 5 is too small for cifar10"),
])
def test_bench_bad_values_are_one_error_line_before_any_work(script: str, argv: list[str], said: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a traceback from deep in the training code (--epochs 0, --depth 21, --crop-pad -1), some only after the
    data had been decoded, and --subset 5 only after the pooled classifier's half hour of training."""
    with pytest.raises(SystemExit) as stopped:
        _bench(script, "bad_values").parse_args(argv)
    assert stopped.value.code == 2
    lines = _error_lines(capsys.readouterr().err.replace(": error: ", "\nerror: "))
    assert len(lines) == 1 and said in lines[0], lines


@pytest.mark.parametrize("script", ["patch_victim.py", "pooled_ceiling.py"])
def test_bench_cache_dir_that_is_a_file_is_refused(script: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as stopped:
        _bench(script, "cache_file").parse_args(["--cache-dir", str(tmp_path / "a-file")])
    assert stopped.value.code == 2
    assert f"--cache-dir {tmp_path / 'a-file'}: {tmp_path / 'a-file'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("script", BENCH_ON_EVALUATION_CACHE)
def test_bench_missing_data_is_one_line_naming_the_folder(script: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: MissingDataError's traceback."""
    from pipeline.evaluation import datasets

    monkeypatch.setattr(datasets, "SHARED_DIR", tmp_path / "no-shared")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    module = _bench(script, "missing_data")
    argv = ["--cache-dir", str(tmp_path / "cache")]
    if script == "sampler_settings.py":  # it checks the prior and the classifier first
        from pipeline.evaluation.classifier import ClassifierConfig, build_classifier, save_classifier

        save_classifier(build_classifier(ClassifierConfig(num_classes=10, depth=8)), tmp_path / "clean.pt")
        argv = ["--classifier", str(tmp_path / "clean.pt")]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    message = str(stopped.value.code)
    assert message.startswith(f"error: shared data folder {tmp_path / 'no-shared'} not found"), message
    assert "ZIP_SHARED_DIR" in message


def test_sampler_settings_refuses_a_bad_prior_before_purifying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the no-defense and naive rows were printed, then CheckpointError's traceback."""
    module = _bench("sampler_settings.py", "bad_prior")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    (tmp_path / "clean.pt").write_text("x")
    monkeypatch.setattr(module, "load_dataset", lambda *a: pytest.fail("the data was read before the prior was checked"))
    monkeypatch.setattr(sys, "argv", ["sampler_settings.py", "--checkpoint", str(tmp_path / "notes.pt"), "--classifier",
                                      str(tmp_path / "clean.pt")])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert str(stopped.value.code).startswith(f"error: --checkpoint {tmp_path / 'notes.pt'}: ")


def test_pooled_ceiling_checks_the_subset_before_training_and_retrains_on_other_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a --subset the test split could not fill failed in numpy after the training, and a cached pooled
    classifier trained from other data (a stand-in copy) was served as it was."""
    module = _bench("pooled_ceiling.py", "pooled_cache")
    trained = []
    train = module.train_classifier

    def counted(*args, **kwargs):
        trained.append(1)
        return train(*args, **{**kwargs, "depth": 8, "batch_size": 10})

    monkeypatch.setattr(module, "train_classifier", counted)
    data = {"splits": _two_class_splits(0)}
    monkeypatch.setattr(module, "load_splits", lambda dataset: data["splits"])
    run = ["pooled_ceiling.py", "--epochs", "1", "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    monkeypatch.setattr(sys, "argv", [*run, "--subset", "40"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert "--subset 40 is larger than cifar10's test split allows" in str(stopped.value.code) and not trained
    monkeypatch.setattr(sys, "argv", [*run, "--subset", "10"])
    assert module.main() == 0 and len(trained) == 1
    assert module.main() == 0 and len(trained) == 1  # the same data: served from the cache
    data["splits"] = _two_class_splits(1)
    capsys.readouterr()
    assert module.main() == 0 and len(trained) == 2  # other data: trained again, and said
    assert "was trained from other data or options; retraining it" in capsys.readouterr().err


def test_a_resume_with_nothing_to_train_keeps_the_optimiser_settings_the_weights_were_trained_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: rerunning a finished run with --ema 0.99 trained nothing, yet wrote 0.99 into last.pt and into the
    exported prior's meta (ema_decay), and the next resume said the run 'was trained so far with 0.99'."""
    from pipeline.checkpoint import load_checkpoint
    from tests.jobutil import TRAIN_TINY_ARGS

    job = train_prior_on_noise(monkeypatch, "train_prior_spent_budget")
    run = ["--out", str(tmp_path / "run"), "--minutes", "5", *TRAIN_TINY_ARGS]
    assert job.cli([*run, "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert job.cli([*run, "--max-steps", "2", "--ema", "0.99", "--lr", "1e-4"]) == 0
    out = capsys.readouterr()
    assert "nothing to train" in out.out and "note: resuming" not in out.err, out
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["optimiser"]["ema"] == 0.999 and state["optimiser"]["lr"] == 2e-4
    assert load_checkpoint(str(tmp_path / "run" / "prior.pt")).meta["ema_decay"] == 0.999
    assert job.cli([*run, "--max-steps", "3"]) == 0  # the defaults again: nothing changes, nothing to note
    assert "note: resuming" not in capsys.readouterr().err
    assert job.cli([*run, "--max-steps", "4", "--ema", "0.99"]) == 0  # a change that does train is noted and kept
    assert "with --ema 0.99; it was trained so far with 0.999" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimiser"]["ema"] == 0.99


def test_evaluation_time_refuses_stand_ins_of_no_images(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a ValueError traceback from the classifier's training."""
    with pytest.raises(SystemExit) as stopped:
        _bench("evaluation_time.py", "no_stand_ins").main(["--work", "unused", "--stand-in-images", "0"])
    assert stopped.value.code == 2
    assert "--stand-in-images must be 1 or more, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 1125899906842624 bytes")])
def test_evaluate_out_of_memory_is_one_line_naming_the_options(error: BaseException, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a page of torch frames (a --batch-size or --canvas-size too large for the device), naming neither."""
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    job = load_evaluate_job("evaluate_out_of_memory")

    def purify_too_much(config, **_):
        raise error

    monkeypatch.setattr(job, "evaluate_dataset", purify_too_much)
    argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "none,naive", "--subset", "20",
            "--device", "cpu", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(job, argv) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: out of memory on cpu ("), lines
    assert "--batch-size" in lines[0] and str(tmp_path / "cache") in lines[0]
    monkeypatch.setattr(job, "evaluate_dataset", lambda config, **_: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other error is not taken for one
        run_main(job, argv)


def test_a_resume_on_other_training_images_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a run resumed on another copy of --data (another $ZIP_SHARED_DIR, a stand-in subset used for a smoke
    test) trained on without a word, mixing the two into one prior."""
    from pipeline.evaluation.datasets import LabelledImages
    from tests.jobutil import TRAIN_TINY_ARGS

    job = train_prior_on_noise(monkeypatch, "train_prior_other_images")
    run = ["--out", str(tmp_path / "run"), "--minutes", "5", *TRAIN_TINY_ARGS]
    assert job.cli([*run, "--max-steps", "1"]) == 0
    assert job.cli([*run, "--max-steps", "2"]) == 0  # the same images: nothing to say
    assert "other training images" not in capsys.readouterr().err
    other = np.random.default_rng(1).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(job, "load_dataset", lambda name, split: LabelledImages(other, np.zeros(24, np.int64), 1))
    assert job.cli([*run, "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert "note: resuming" in err and "on other training images than it was trained on so far (16 images" in err, err
    assert "24 images" in err and "--fresh" in err
    assert job.cli([*run, "--max-steps", "4"]) == 0  # noted once: last.pt now records these
    assert "other training images" not in capsys.readouterr().err


def test_a_classifier_given_as_the_prior_is_said_to_be_no_diffusion_unet(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the evaluation's cached classifier (a .pt beside the priors in ~/.cache/zip-purify) given as --checkpoint
    'matches none of the presets; pass --preset or --flags': no flags make a ResNet a diffusion prior."""
    from pipeline.checkpoint import CheckpointError, load_checkpoint
    from pipeline.evaluation.classifier import ClassifierConfig, build_classifier, save_classifier

    classifier = tmp_path / "cifar10-clean-e10.pt"
    save_classifier(build_classifier(ClassifierConfig(num_classes=10, depth=8)), classifier)
    with pytest.raises(CheckpointError, match="holds no diffusion UNet: none of its .* weights is guided-diffusion's "
                                              r"input_blocks\.0\.0\.weight \(its first: mean, std, "):
        load_checkpoint(str(classifier))
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "zip", "--subset", "20", "--checkpoint",
            str(classifier), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(load_evaluate_job("evaluate_classifier_as_prior"), argv) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "holds no diffusion UNet" in lines[0] and "--preset" not in lines[0], lines


def test_a_guided_diffusion_state_dict_under_a_prefix_still_gets_the_architecture_advice(tmp_path: Path) -> None:
    """The UNet check looks past a key prefix: such a file is a UNet whose architecture is to be named."""
    from pipeline.checkpoint import UnmatchedArchitectureError, load_checkpoint

    bare = torch.load(_bare_state_dict(tmp_path / "weights.pt"), weights_only=True)
    torch.save({f"model.{k}": v for k, v in bare.items()}, tmp_path / "lightning.pt")
    with pytest.raises(UnmatchedArchitectureError):
        load_checkpoint(str(tmp_path / "lightning.pt"))


@pytest.mark.parametrize(("options", "shown"), [([], ""), (["--schedule", "cosine"], ""),  # the job takes the prior's
                                                (["--max-timestep", "299"], ""),  # the job takes its range
                                                (["--max-timestep", "999"], "")])
def test_the_purify_command_shown_at_the_end_is_one_the_job_takes(options: list[str], shown: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """'use it: python jobs/purify.py --checkpoint OUT/prior.pt ...', a command the job takes for every prior: it
    samples with the schedule the prior records, and one trained with --max-timestep from the largest step within its
    timesteps (before, it refused the bare command for such a prior, and the line added the --start it needed)."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.config import JobConfig
    from pipeline.settings import check_trained_timesteps
    from tests.jobutil import TRAIN_TINY_ARGS

    job = train_prior_on_noise(monkeypatch, "train_prior_use_it")
    assert job.cli(["--out", str(tmp_path / "run"), "--max-steps", "1", *TRAIN_TINY_ARGS, *options]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"use it: python jobs/purify.py --checkpoint {tmp_path / 'run' / 'prior.pt'}{shown} --input ... --output ..."
    words = shown.split()
    given = {words[i].lstrip("-"): words[i + 1] for i in range(0, len(words), 2)}
    meta = load_checkpoint(str(tmp_path / "run" / "prior.pt")).meta
    settings = JobConfig(**{k: float(v) if k == "start" else v for k, v in given.items()}).settings(meta)
    check_trained_timesteps(meta, settings)  # the job's own check, on the settings it resolves with the prior


@pytest.mark.parametrize(("argv", "said"), [(["--target", "10"], "--target must be a CIFAR-10 class, 0 to 9, got 10"),
                                            (["--seed", "-1"], "--seed must be 0 or more, got -1")])
def test_sampler_settings_refuses_a_target_or_seed_out_of_range(argv: list[str], said: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: --target 10 printed a 0.0 % column (no image is assigned a class CIFAR-10 lacks), --seed -1 a numpy
    traceback."""
    module = _bench("sampler_settings.py", "target_range")
    monkeypatch.setattr(module, "load_dataset", lambda *a: pytest.fail("the data was read before the options were checked"))
    monkeypatch.setattr(sys, "argv", ["sampler_settings.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert str(stopped.value.code) == said


@pytest.fixture
def refusing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder whose permission bits allow writing but whose file system refuses it (root on a root-squashed NFS
    export, a kernel file system, a security module's rule): access() says yes, a write says 'Operation not permitted'."""
    import tempfile

    folder = tmp_path / "refusing"
    folder.mkdir()
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(1, "Operation not permitted")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return folder


def test_evaluate_refuses_an_out_the_system_will_not_write_before_the_work(refusing_folder: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the checks passed (the permission bits allow it), the whole evaluation ran, and writing the report ended
    it in a PermissionError traceback."""
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    job = evaluate_job_without_evaluation(monkeypatch, "evaluate_refusing_out")
    for flag, other in (("--out", "--cache-dir"), ("--cache-dir", "--out")):
        argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "none", "--subset", "20",
                flag, str(refusing_folder / "x"), other, str(tmp_path / "fine")]
        assert run_main(job, argv) == 2
        lines = _error_lines(capsys.readouterr().err)
        assert lines == [f"error: {flag} {refusing_folder / 'x'}: {refusing_folder} is not writable (Operation not "
                         "permitted)"], lines
    assert job.started == []
    fine = tmp_path / "fine"
    fine.mkdir()
    assert run_main(job, [*argv[:-4], "--out", str(fine), "--cache-dir", str(fine)]) == 0
    assert len(job.started) == 1 and list(fine.iterdir()) == []  # the write check leaves nothing behind


def test_train_prior_refuses_an_out_or_export_the_system_will_not_write(refusing_folder: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: --out such a folder was a PermissionError traceback; --export one trained the whole budget and then
    ended with status 1, the prior unwritten."""
    from tests.jobutil import TRAIN_TINY_ARGS

    job = train_prior_on_noise(monkeypatch, "train_prior_refusing_out")
    for bad in (["--out", str(refusing_folder / "run")],
                ["--out", str(tmp_path / "run"), "--export", str(refusing_folder / "prior.pt")]):
        assert job.cli(["--max-steps", "1", *TRAIN_TINY_ARGS, *bad]) == 2
        err = capsys.readouterr().err
        assert f"error: {bad[-2]} {bad[-1]}: {refusing_folder} is not writable (Operation not permitted)" in err, err
        assert "Traceback" not in err and not (tmp_path / "run").exists()
    assert list(refusing_folder.iterdir()) == []


def test_evaluate_a_write_failing_during_the_run_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a full disk at the report (after the hours of work) was an OSError traceback."""
    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    job = load_evaluate_job("evaluate_disk_full")

    def fill_the_disk(config, **_):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "cifar10.json"))

    monkeypatch.setattr(job, "evaluate_dataset", fill_the_disk)
    argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "none", "--subset", "20",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(job, argv) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines[0].startswith(f"error: No space left on device: {tmp_path / 'out' / 'cifar10.json'}; "), lines
    assert "rerun the same command" in lines[0] and str(tmp_path / "cache") in lines[0] and len(lines) == 1


def test_evaluate_sigterm_stops_as_ctrl_c_does_saying_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before: SIGTERM (a scheduler's stop) ended the run without a word, where Ctrl-C said how to resume."""
    import os
    import signal
    import time

    cifar10_archive_stand_ins(tmp_path, monkeypatch)
    job = load_evaluate_job("evaluate_sigterm")

    def stopped_by_the_scheduler(config, **_):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises first
        pytest.fail("SIGTERM did not stop the run")

    monkeypatch.setattr(job, "evaluate_dataset", stopped_by_the_scheduler)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["--datasets", "cifar10", "--attacks", "badnet", "--defenses", "none", "--subset", "20",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(job, argv) == 143
    err = capsys.readouterr().err
    assert f"interrupted: stopped by SIGTERM; rerun the same command to resume from the caches in {tmp_path / 'cache'}" in err
    assert signal.getsignal(signal.SIGTERM) is before  # put back once the run is over
