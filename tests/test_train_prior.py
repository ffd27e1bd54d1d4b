"""jobs/train_prior.py: which data it learns, what it exports, and that it resumes where it stopped."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation.datasets import LabelledImages

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--channels", "32", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "", "--head-channels", "32",
        "--batch", "4", "--threads", "1", "--log-every", "1"]


@pytest.fixture()
def train_prior(monkeypatch: pytest.MonkeyPatch) -> tuple[object, list[str]]:
    spec = importlib.util.spec_from_file_location("train_prior_job", ROOT / "jobs" / "train_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    requested: list[str] = []

    def fake_load(name: str, split: str) -> LabelledImages:
        requested.append(f"{name}/{split}")
        rng = np.random.default_rng(0)
        return LabelledImages(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.zeros(16, np.int64), 1)

    monkeypatch.setattr(module, "load_dataset", fake_load)  # no ../shared needed
    return module, requested


def test_gtsrb_prior_trains_on_gtsrb_and_exports_a_loadable_bundle(train_prior, tmp_path: Path) -> None:
    module, requested = train_prior
    assert module.main(["--data", "gtsrb", "--max-steps", "2", "--out", str(tmp_path), *TINY]) == 0
    assert requested == ["gtsrb/train"]
    loaded = load_checkpoint(str(tmp_path / "prior.pt"))
    assert loaded.meta["trained_on"].startswith("GTSRB") and "no flips" in loaded.meta["trained_on"]
    assert loaded.meta["steps"] == 2
    assert loaded.meta["versions"]["zip_purify"] == pipeline.__version__  # what it was trained with
    out = loaded.model(torch.zeros(1, 3, 32, 32), torch.tensor([500]))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_training_resumes_and_refuses_another_data_set(train_prior, tmp_path: Path) -> None:
    module, _ = train_prior
    assert module.main(["--max-steps", "2", "--out", str(tmp_path), *TINY]) == 0
    assert module.main(["--max-steps", "3", "--out", str(tmp_path), *TINY]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the second run continued from step 2, it did not start over
    assert "CIFAR-10" in load_checkpoint(str(tmp_path / "prior.pt")).meta["trained_on"]
    with pytest.raises(SystemExit, match="trained on cifar10, not gtsrb"):
        module.main(["--data", "gtsrb", "--max-steps", "4", "--out", str(tmp_path), *TINY])


def test_bf16_autocast_trains_a_finite_prior_and_says_so(train_prior, tmp_path: Path) -> None:
    module, _ = train_prior
    assert module.main(["--precision", "bf16", "--max-steps", "2", "--out", str(tmp_path), *TINY]) == 0
    loaded = load_checkpoint(str(tmp_path / "prior.pt"))
    assert loaded.meta["precision"] == "bf16" and loaded.meta["device"] == "cpu"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses)) and 0.1 < losses[0] < 10  # ε-MSE starts near 1


def test_cuda_without_a_gpu_is_a_clear_error(train_prior, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    module, _ = train_prior
    with pytest.raises(SystemExit) as stopped:
        module.main(["--device", "cuda", "--max-steps", "1", "--out", str(tmp_path), *TINY])
    assert stopped.value.code == 2 and "no CUDA device" in capsys.readouterr().err


BAD_OPTIONS = [
    ["--log-every", "0"], ["--batch", "0"], ["--batch", "-2"], ["--device", "foo"], ["--device", "cuda:x"],
    ["--device", "mps"], ["--channel-mult", "x,y"], ["--channel-mult", "0,1"], ["--channel-mult", "1,2,2,2,2,2,2"],
    ["--minutes", "-1"], ["--minutes", "nan"], ["--max-steps", "-1"], ["--channels", "0"], ["--channels", "48"],
    ["--res-blocks", "0"], ["--attention", "abc"], ["--attention", "8"], ["--head-channels", "0"],
    ["--head-channels", "48"], ["--dropout", "1"], ["--dropout", "-0.1"], ["--lr", "0"], ["--lr", "nan"],
    ["--warmup-steps", "-1"], ["--ema", "1.5"], ["--ema", "-0.1"], ["--threads", "-1"], ["--save-every-min", "-1"],
    ["--seed", "-1"], ["--max-timestep", "-1"], ["--max-timestep", "1000"],
]


@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=" ".join)
def test_a_bad_option_is_a_usage_error_before_anything_is_written(
        train_prior, tmp_path: Path, capsys: pytest.CaptureFixture, bad: list[str]) -> None:
    module, requested = train_prior
    with pytest.raises(SystemExit) as stopped:
        module.main(["--max-steps", "1", "--out", str(tmp_path / "run"), *TINY, *bad])  # the last value given wins
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "error: " + bad[0] in err, err
    assert not (tmp_path / "run").exists() and requested == []  # nothing read, trained or written


def test_a_run_with_nothing_to_train_or_start_from_exports_nothing(train_prior, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    module, _ = train_prior
    with pytest.raises(SystemExit, match="--minutes 0 with nothing to start from.*untrained prior"):
        module.main(["--minutes", "0", "--out", str(tmp_path / "run"), *TINY])
    assert not (tmp_path / "run").exists()
    (tmp_path / "file").write_text("")
    for bad in (["--out", str(tmp_path / "file")], ["--out", str(tmp_path / "run"), "--export", str(tmp_path)]):
        with pytest.raises(SystemExit) as stopped:
            module.main(["--max-steps", "1", *bad, *TINY])
        assert stopped.value.code == 2 and "error: " + bad[-2] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("export", ["run", ".", "run/sub/.."])
def test_an_export_that_is_the_run_folder_or_holds_it_is_refused_before_training(
        train_prior, tmp_path: Path, capsys: pytest.CaptureFixture, export: str) -> None:
    # BUG (fixed here): --export naming the --out folder (or a folder above it), not there yet, passed the "is a
    # folder" check; the run trained, then failed to write the prior (IsADirectoryError) with exit status 1 and the
    # advice to rerun the same command, which can never write it.
    module, _ = train_prior
    (tmp_path / "top").mkdir()
    out = tmp_path / "top" / "new" / "run"
    with pytest.raises(SystemExit) as stopped:
        module.main(["--max-steps", "1", "--out", str(out), "--export", str(out.parent / export), *TINY])
    assert stopped.value.code == 2
    assert f"--export {out.parent / export} is a folder" in capsys.readouterr().err
    assert list((tmp_path / "top").iterdir()) == []


def test_init_from_starts_at_the_given_prior_with_its_architecture(train_prior, tmp_path: Path) -> None:
    module, _ = train_prior
    assert module.main(["--max-steps", "2", "--out", str(tmp_path / "a"), *TINY]) == 0
    source = load_checkpoint(str(tmp_path / "a" / "prior.pt"))
    # --channels 64 is overridden by the source's 32-channel architecture; 0 minutes: the export is the source itself
    assert module.main(["--init-from", str(tmp_path / "a" / "prior.pt"), "--minutes", "0", "--out",
                        str(tmp_path / "b"), *TINY, "--channels", "64"]) == 0
    started = load_checkpoint(str(tmp_path / "b" / "prior.pt"))
    assert started.config.num_channels == 32 and started.meta["initialised_from"].startswith(str(tmp_path / "a"))
    for name, value in source.model.state_dict().items():
        torch.testing.assert_close(started.model.state_dict()[name], value, rtol=0, atol=0)


def test_init_from_keeps_the_noise_settings_its_prior_was_trained_with(train_prior, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    # BUG (fixed here): --init-from a prior of --schedule cosine --max-timestep 300 trained it further on the linear
    # schedule over all timesteps, and with --minutes 0 exported its very weights recorded as linear over 0..999: the
    # purifier then sampled them at noise levels they never learned, without a word.
    module, _ = train_prior
    source = tmp_path / "a" / "prior.pt"
    assert module.main(["--max-steps", "1", "--out", str(tmp_path / "a"), "--schedule", "cosine", "--max-timestep",
                        "300", *TINY]) == 0
    for out, budget in (("b", ["--minutes", "0"]), ("c", ["--max-steps", "1"])):
        assert module.main(["--init-from", str(source), *budget, "--out", str(tmp_path / out), *TINY]) == 0
        meta = load_checkpoint(str(tmp_path / out / "prior.pt")).meta
        assert (meta["schedule"], meta.get("max_timestep")) == ("cosine", 300), out
    assert "the cosine noise schedule and timesteps 0..300 that --init-from" in capsys.readouterr().out
    # the same command resumes (its last.pt holds the settings it resolved to)
    assert module.main(["--init-from", str(source), "--max-steps", "2", "--out", str(tmp_path / "c"), *TINY]) == 0
    # given flags win: the prior is retrained for them
    assert module.main(["--init-from", str(source), "--max-steps", "1", "--out", str(tmp_path / "d"), "--schedule",
                        "linear", "--max-timestep", "999", *TINY]) == 0
    meta = load_checkpoint(str(tmp_path / "d" / "prior.pt")).meta
    assert (meta["schedule"], meta["max_timestep"]) == ("linear", 999)


def test_init_from_refuses_a_model_it_cannot_train(train_prior, tmp_path: Path) -> None:
    from pipeline.checkpoint import save_bundle
    from pipeline.model import UNetConfig, build_unet

    module, _ = train_prior
    sigma = UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="",
                       learn_sigma=True)
    save_bundle(tmp_path / "sigma.pt", build_unet(sigma))
    with pytest.raises(SystemExit, match="without learned sigma"):
        module.main(["--init-from", str(tmp_path / "sigma.pt"), "--max-steps", "1", "--out", str(tmp_path), *TINY])
    with pytest.raises(SystemExit, match="--init-from"):
        module.main(["--init-from", str(tmp_path / "missing.pt"), "--max-steps", "1", "--out", str(tmp_path), *TINY])


def test_max_timestep_trains_only_low_noise_levels_and_the_purifier_holds_the_prior_to_them(
        train_prior, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.purifier import Purifier

    module, _ = train_prior
    drawn: list[torch.Tensor] = []
    randint = torch.randint

    def recording_randint(*args, **kwargs):
        out = randint(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(torch, "randint", recording_randint)
    assert module.main(["--max-timestep", "300", "--max-steps", "3", "--out", str(tmp_path), *TINY]) == 0
    monkeypatch.setattr(torch, "randint", randint)
    timesteps = torch.cat(drawn)
    assert len(timesteps) == 3 * 4 and int(timesteps.max()) <= 300
    prior = str(tmp_path / "prior.pt")
    assert load_checkpoint(prior).meta["max_timestep"] == 300
    assert Purifier.from_checkpoint(prior, device="cpu", start=0.3).settings.start == 0.3  # t ≤ 300: allowed
    assert Purifier.from_checkpoint(prior, device="cpu").settings.start == 0.3  # left out: the largest allowed
    with pytest.raises(ValueError, match=r"trained only on timesteps 0\.\.300.*start at t = 950.*start ≤ 0\.3"):
        Purifier.from_checkpoint(prior, device="cpu", start=1.0)
    # the job refuses it while planning, before it reads an image
    from pipeline.config import JobConfig
    from pipeline.errors import JobError
    from pipeline.plan import plan_job

    (tmp_path / "in").mkdir()
    with pytest.raises(JobError, match=r"trained only on timesteps 0\.\.300"):
        plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=prior, start=1.0),
                 dry_run=True)
    assert plan_job(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), checkpoint=prior, start=0.3),
                    dry_run=True).units == []
    with pytest.raises(SystemExit, match=r"--max-timestep 300, not without --max-timestep \(every timestep\)"):
        module.main(["--max-steps", "4", "--out", str(tmp_path), *TINY])
    with pytest.raises(SystemExit) as stopped:  # a usage error (more in BAD_OPTIONS)
        module.main(["--max-timestep", "1000", "--max-steps", "1", "--out", str(tmp_path / "b"), *TINY])
    assert stopped.value.code == 2


def test_resuming_refuses_another_noise_schedule_or_learning_problem(train_prior, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    module, _ = train_prior
    assert module.main(["--max-steps", "2", "--out", str(tmp_path), *TINY]) == 0
    with pytest.raises(SystemExit, match="trained with --schedule linear, not cosine; use --fresh"):
        module.main(["--max-steps", "3", "--schedule", "cosine", "--out", str(tmp_path), *TINY])
    with pytest.raises(SystemExit, match=r"other model flags \(dropout 0.0, not 0.1\)"):
        module.main(["--max-steps", "3", "--dropout", "0.1", "--out", str(tmp_path), *TINY])
    assert load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 2  # the refusals changed nothing
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["schedule"], state["objective"], state["timesteps"]) == ("linear", "epsilon", 1000)
    torch.save({**state, "timesteps": 4000}, tmp_path / "last.pt")  # a state from another T (or objective)
    with pytest.raises(SystemExit, match="trained with timesteps 4000, not 1000"):
        module.main(["--max-steps", "3", "--out", str(tmp_path), *TINY])
    # a state from before the schedule was recorded resumes under the one given, and says it assumes so
    torch.save({k: v for k, v in state.items() if k != "schedule"}, tmp_path / "last.pt")
    # optimiser settings may change on resume
    assert module.main(["--max-steps", "3", "--lr", "1e-4", "--batch", "2", "--out", str(tmp_path), *TINY]) == 0
    assert "assuming it is --schedule linear" in capsys.readouterr().err
    assert load_checkpoint(str(tmp_path / "prior.pt")).meta["steps"] == 3


def test_a_damaged_resume_state_is_named_and_left_alone(train_prior, tmp_path: Path) -> None:
    module, _ = train_prior
    assert module.main(["--max-steps", "1", "--out", str(tmp_path), *TINY]) == 0
    last = tmp_path / "last.pt"
    damaged = last.read_bytes()[: last.stat().st_size // 2]  # as a full disk or a killed copy leaves it
    last.write_bytes(damaged)
    with pytest.raises(SystemExit, match=rf"error: {re.escape(str(last))} is damaged.*pass --fresh") as stopped:
        module.main(["--max-steps", "2", "--out", str(tmp_path), *TINY])
    assert stopped.value.code != 0 and last.read_bytes() == damaged
    torch.save({"model": {}}, last)  # readable, but not a training state
    with pytest.raises(SystemExit, match="not a training state.*lacks elapsed_s, ema"):
        module.main(["--max-steps", "2", "--out", str(tmp_path), *TINY])
    assert module.main(["--fresh", "--max-steps", "1", "--out", str(tmp_path), *TINY]) == 0


def test_a_fresh_start_starts_a_fresh_log_and_keeps_the_old_one(train_prior, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    module, _ = train_prior

    def steps(name: str) -> list[int]:
        return [json.loads(line)["step"] for line in (tmp_path / name).read_text().splitlines()]

    assert module.main(["--max-steps", "2", "--out", str(tmp_path), *TINY]) == 0
    assert module.main(["--fresh", "--max-steps", "1", "--out", str(tmp_path), *TINY]) == 0
    assert steps("train_log.jsonl") == [1] and steps("train_log.jsonl.old") == [1, 2]
    (tmp_path / "last.pt").unlink()  # deleting the state starts over too
    assert module.main(["--max-steps", "1", "--out", str(tmp_path), *TINY]) == 0
    assert steps("train_log.jsonl") == [1] and steps("train_log.jsonl.old") == [1]
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert "as train_log.jsonl.old" in " ".join(capsys.readouterr().out.split())  # --help says where the old log goes


def test_resume_takes_max_timestep_999_and_no_max_timestep_as_the_same(train_prior, tmp_path: Path) -> None:
    # BUG (fixed here): a run started with --max-timestep 999 could not be resumed without it (or the reverse), though
    # both train on every timestep 0..999; another T is still refused.
    module, _ = train_prior
    for first, then in ((["--max-timestep", "999"], []), ([], ["--max-timestep", "999"])):
        out = str(tmp_path / ("given-first" if first else "given-then"))
        assert module.main(["--max-steps", "1", "--out", out, *first, *TINY]) == 0
        assert module.main(["--max-steps", "2", "--out", out, *then, *TINY]) == 0
        steps = [json.loads(line)["step"] for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
        assert steps == [1, 2]  # resumed, not refused or started over
        with pytest.raises(SystemExit, match="--max-timestep"):
            module.main(["--max-steps", "3", "--out", out, "--max-timestep", "998", *TINY])


def test_the_divergence_message_says_what_a_rerun_continues(train_prior, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    # BUG (fixed here): a run that diverged before its first save said "Rerun ... to continue from the last save",
    # though it had none; after --fresh, rerunning without it would resume the earlier run's last.pt instead.
    module, _ = train_prior
    out = ["--out", str(tmp_path), *TINY]
    assert module.main(["--max-steps", "2", *out]) == 0  # an earlier run's last.pt at step 2
    real_randn_like = torch.randn_like
    with monkeypatch.context() as nan:
        nan.setattr(torch, "randn_like", lambda x: real_randn_like(x) * float("nan"))
        capsys.readouterr()
        assert module.main(["--fresh", "--max-steps", "5", *out]) == 1  # diverges at step 1, before any save
        err = capsys.readouterr().err
        assert "nothing was saved" in err and "continue" not in err and "--fresh and a lower --lr to start over" in err
        assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2  # the earlier run's state, untouched
        assert module.main(["--max-steps", "5", *out]) == 1  # resumes step 2, diverges at step 3: that save is kept
        err = capsys.readouterr().err
        assert "keep step 2" in err and "to continue from that save" in err and "without --fresh" not in err


def test_starting_over_twice_keeps_every_earlier_log(train_prior, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # BUG (fixed here): a --fresh run killed before its first save, then rerun with --fresh, moved its own few lines
    # onto train_log.jsonl.old, replacing the original run's log there.
    module, _ = train_prior

    def steps(name: str) -> list[int]:
        return [json.loads(line)["step"] for line in (tmp_path / name).read_text().splitlines()]

    out = ["--out", str(tmp_path), *TINY]
    assert module.main(["--max-steps", "3", *out]) == 0  # the original run: steps 1..3

    class HardKill(BaseException):
        """Ends the run mid-training the way SIGKILL would: no save, no farewell."""

    calls = [0]

    def killed_in_step_two(self: torch.optim.Adam, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise HardKill

    with monkeypatch.context() as kill:
        kill.setattr(torch.optim.Adam, "step", killed_in_step_two)
        with pytest.raises(HardKill):
            module.main(["--fresh", "--max-steps", "5", "--save-every-min", "60", *out])  # logs step 1, saves nothing
    assert steps("train_log.jsonl") == [1] and steps("train_log.jsonl.old") == [1, 2, 3]
    assert module.main(["--fresh", "--max-steps", "2", *out]) == 0
    assert steps("train_log.jsonl") == [1, 2] and steps("train_log.jsonl.old") == [1]
    assert steps("train_log.jsonl.old.1") == [1, 2, 3]  # the original run's log is still there
    assert module.main(["--fresh", "--max-steps", "1", *out]) == 0
    assert steps("train_log.jsonl.old") == [1, 2] and steps("train_log.jsonl.old.2") == [1]
    assert steps("train_log.jsonl.old.1") == [1, 2, 3]
