"""Mutation-audit gaps in what bench/device_session.sh's evaluation calls depend on: that --device reaches the
classifiers' training (weights and batches), a cached classifier and the ZIP purifier, and that one cache folder shared
by the session's calls (baselines first, then the new prior at k = 4 and k = 2, then the shipped prior) reuses the
classifiers and the baselines but keeps each prior's and each pool's and step count's purified sets apart, each call
writing its own JSON / Markdown / PNG. With a mutation that dropped the device between the runner and
`get_classifier` or `make_defense`, or the pool or steps between the runner and the defenses, these ran silently:
the GPU unused, or a k = 2 report holding k = 4 images.

No CUDA here: a torch function mode stands in for the GPU, recording every tensor moved to "cuda" and moving it to
the CPU instead, and `Purifier.from_checkpoint` records the device it is asked for and builds on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import metrics, runner, victims
from pipeline.evaluation.classifier import predict
from pipeline.evaluation.datasets import stratified_subset
from pipeline.evaluation.defenses import make_defense
from pipeline.evaluation.report import stored_score
from pipeline.purifier import Purifier
from tests.jobutil import tiny_model_file
from tests.test_evaluation_e2e import _tiny_prior, fake_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CudaOnCpu(TorchFunctionMode):
    """Every `Tensor.to` aimed at a CUDA device is recorded (the tensor) and goes to the CPU instead."""

    def __init__(self) -> None:
        super().__init__()
        self.moved: list[torch.Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            def to_cpu(value: Any) -> Any:
                if isinstance(value, str | torch.device) and torch.device(value).type == "cuda":
                    self.moved.append(args[0])
                    return torch.device("cpu")
                return value

            args = tuple(to_cpu(a) for a in args)
            kwargs = {k: to_cpu(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    @property
    def weights(self) -> int:
        return sum(isinstance(t, torch.nn.Parameter) for t in self.moved)

    @property
    def batches(self) -> int:
        """Training batches of images (N x 3 x 32 x 32 floats) moved to the GPU."""
        return sum(t.ndim == 4 and t.shape[1:] == (3, 32, 32) and t.is_floating_point() for t in self.moved)

    @property
    def targets(self) -> int:
        """Training batches of labels moved to the GPU."""
        return sum(t.ndim == 1 and t.dtype == torch.int64 for t in self.moved)


def _recorded_purifiers(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each `Purifier.from_checkpoint` call's checkpoint, device and settings; the purifier is built on the CPU."""
    calls: list[dict[str, Any]] = []
    original = Purifier.from_checkpoint.__func__  # type: ignore[attr-defined]

    def recorded(cls: type[Purifier], checkpoint: Any, *args: Any, **kwargs: Any) -> Purifier:
        calls.append({"checkpoint": str(checkpoint), "device": str(kwargs.get("device")), "settings": kwargs["settings"]})
        return original(cls, checkpoint, *args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(Purifier, "from_checkpoint", classmethod(recorded))
    return calls


def _config(tmp_path: Path, out: str, **overrides: Any) -> runner.EvalConfig:
    settings: dict[str, Any] = dict(
        dataset="synthetic", attacks=["badnet", "none"], steps=2, pool=4, subset=4, epochs=1, threads=1,
        cache_dir=tmp_path / "cache", out_dir=tmp_path / out, examples=1, bootstrap=0,
        train_options={"depth": 8, "batch_size": 16},
    )
    return runner.EvalConfig(**{**settings, **overrides})


def test_device_cuda_reaches_the_classifiers_training_a_cached_classifier_and_the_purifier(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prior = tiny_model_file(tmp_path)
    purifiers = _recorded_purifiers(monkeypatch)
    config = _config(tmp_path, "first", attacks=["badnet"], defenses=["none", "naive", "zip"], checkpoint=prior,
                     device="cuda")
    with CudaOnCpu() as gpu:
        report = runner.evaluate_dataset(config, loader=fake_loader)
    assert report["classifiers"]["badnet"]["trained_now"]
    # the new classifier's weights, and every training batch of images and labels (48 images in batches of 16)
    assert gpu.weights > 0 and gpu.batches >= 3 and gpu.targets >= 3
    assert [call["device"] for call in purifiers] == ["cuda"]
    assert report["config"]["device"] == "cuda"
    # the ZIP set is cached as a GPU's (its noise is drawn there), the baselines' as anyone's
    (zip_dir,) = (tmp_path / "cache" / "purified").rglob("zip-*")
    assert json.loads((zip_dir / "settings.json").read_text())["noise_device"] == "cuda"

    monkeypatch.setattr(victims, "train_classifier", lambda *a, **k: pytest.fail("a cached classifier was retrained"))
    with CudaOnCpu() as gpu:
        again = runner.evaluate_dataset(_config(tmp_path, "second", attacks=["badnet"], defenses=["none", "naive", "zip"],
                                                checkpoint=prior, device="cuda"), loader=fake_loader)
    assert not again["classifiers"]["badnet"]["trained_now"]
    assert gpu.weights > 0 and gpu.batches == 0  # the cached classifier scores on the GPU too
    assert again["results"] == report["results"]


def test_cpu_runs_move_nothing_to_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in's counterpart: with the default device nothing asks for CUDA (so the test above counts the
    device's moves, not moves every run makes)."""
    purifiers = _recorded_purifiers(monkeypatch)
    with CudaOnCpu() as gpu:
        runner.evaluate_dataset(_config(tmp_path, "out", attacks=["badnet"], defenses=["none", "zip"],
                                        checkpoint=tiny_model_file(tmp_path)), loader=fake_loader)
    assert gpu.moved == [] and [call["device"] for call in purifiers] == ["cpu"]


def _zip_psnr(prior: str, pool: int, steps: int, images: np.ndarray, name: str = "zip") -> float | None:
    sha = load_checkpoint(prior, verify_only=True).sha256
    defense = make_defense(name, pool=pool, steps=steps, checkpoint=prior, checkpoint_sha256=sha)
    return stored_score(metrics.psnr(defense(images), images))


def test_the_device_sessions_calls_share_classifiers_and_baselines_but_keep_each_priors_and_pools_zip_sets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/device_session.sh in small: baselines (which train the classifiers), the new prior at k = 4 and k = 2,
    the shipped prior at k = 4 (zip defenses only), all on one cache folder; then the new prior with other steps."""
    new = tiny_model_file(tmp_path)
    shipped = str(_tiny_prior(tmp_path / "shipped.pt"))
    sha = {new: load_checkpoint(new, verify_only=True).sha256, shipped: load_checkpoint(shipped, verify_only=True).sha256}
    assert sha[new] != sha[shipped]
    purifiers = _recorded_purifiers(monkeypatch)
    examples_pools: list[int] = []  # the pool the examples grid's rows are labelled with (drawn into the PNG)
    write_examples = runner.write_examples

    def recorded_examples(path: Path, *args: Any) -> Any:
        examples_pools.append(args[-1])
        return write_examples(path, *args)

    monkeypatch.setattr(runner, "write_examples", recorded_examples)
    calls = {
        "baselines": dict(defenses=["none", "shrinkpad", "naive"]),
        "eval-k4": dict(checkpoint=new, pool=4),
        "eval-k2": dict(checkpoint=new, pool=2),
        "eval-k4-shipped": dict(checkpoint=shipped, pool=4, defenses=["zip", "zip-authors"]),
        "eval-k4-steps3": dict(checkpoint=new, pool=4, steps=3, defenses=["zip"]),
    }
    reports = {}
    for out, options in calls.items():
        reports[out] = runner.evaluate_dataset(_config(tmp_path, out, **options), loader=fake_loader)
        if out == "baselines":
            assert all(info["trained_now"] for info in reports[out]["classifiers"].values())
            monkeypatch.setattr(victims, "train_classifier", lambda *a, **k: pytest.fail("a cached classifier was retrained"))
        else:
            assert not any(info["trained_now"] for info in reports[out]["classifiers"].values())
        # what the session packs: each call's own report, table and examples
        for name in ("synthetic.json", "synthetic.md", "synthetic-examples.png"):
            assert (tmp_path / out / name).is_file(), (out, name)
        saved = json.loads((tmp_path / out / "synthetic.json").read_text())
        assert saved["results"] == reports[out]["results"]
        assert saved["config"]["pool"] == options.get("pool", 4) and saved["config"]["steps"] == options.get("steps", 2)
        if "checkpoint" in options:  # the table's columns name the pool the images were purified with
            assert f"ZIP (k={options['pool']}) CA" in (tmp_path / out / "synthetic.md").read_text()

    assert examples_pools == [options.get("pool", 4) for options in calls.values()]

    # Each ZIP call purified with its own prior, pool and steps, and said so in its report.
    purified_with = [(c["checkpoint"], c["settings"].pool, c["settings"].steps) for c in purifiers]
    assert purified_with == [(new, 4, 2), (new, 4, 2), (new, 2, 2), (new, 2, 2), (shipped, 4, 2), (shipped, 4, 2),
                             (new, 4, 3)]
    for out, options in calls.items():
        for d, settings in reports[out]["config"]["defense_settings"].items():
            if d in ("zip", "zip-authors"):
                assert settings["checkpoint_sha256"] == sha[options["checkpoint"]]
                assert (settings["zip"]["pool"], settings["zip"]["steps"]) == (options["pool"], options.get("steps", 2))
            if d == "naive":
                assert settings == {"pool": options.get("pool", 4)}

    # The cache: one ZIP set per prior, pool and steps; the baselines' sets shared where their settings are.
    purified = tmp_path / "cache" / "purified" / "synthetic-n4-seed0"
    for d in ("zip", "zip-authors"):
        kept = {(s["checkpoint_sha256"], s["zip"]["pool"], s["zip"]["steps"])
                for s in (json.loads((p / "settings.json").read_text()) for p in purified.glob(f"{d}-*"))}
        expected = {(sha[new], 4, 2), (sha[new], 2, 2), (sha[shipped], 4, 2)} | ({(sha[new], 4, 3)} if d == "zip" else set())
        assert kept == expected, d
    assert len(list(purified.glob("shrinkpad-*"))) == 1 and len(list(purified.glob("naive-*"))) == 2

    # The reported fidelity is that of the images of the call's own settings.
    test = fake_loader("synthetic", "test")
    images = test.images[stratified_subset(test.labels, 4, 0)]
    assert reports["eval-k4"]["fidelity"]["zip"]["psnr"] == _zip_psnr(new, 4, 2, images)
    assert reports["eval-k2"]["fidelity"]["zip"]["psnr"] == _zip_psnr(new, 2, 2, images)
    assert reports["eval-k4-shipped"]["fidelity"]["zip"]["psnr"] == _zip_psnr(shipped, 4, 2, images)
    assert reports["eval-k4-steps3"]["fidelity"]["zip"]["psnr"] == _zip_psnr(new, 4, 3, images)
    assert len({reports[out]["fidelity"]["zip"]["psnr"] for out in calls if out != "baselines"}) == 4


def test_predictions_are_made_on_the_device_the_classifiers_weights_are_on() -> None:
    """Scoring follows the classifier: weights on another device than the CPU (here torch's "meta", which holds no
    values; on a GPU run, CUDA) get their input batches there, and the labels come back as numpy."""

    class OnMeta(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1, device="meta"))
            self.seen: list[str] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.device.type)
            return torch.zeros(len(x), 3).index_fill_(1, torch.tensor([2]), 1.0)

    model = OnMeta()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(predict(model, images, batch_size=2), [2, 2, 2, 2, 2])
    assert model.seen == ["meta"] * 3
