"""What a purified set's cache key covers. A ZIP set's pixels depend on the device its noise is drawn on (a CUDA
generator, Philox, draws other numbers than a CPU one, mt19937, from the same seed), which the key left out: with
--device auto, a machine with a GPU took a CPU run's cached sets for its own (and the other way round) while its
report said cuda."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.evaluation.defenses import ZIP_DEFENSES, make_defense
from pipeline.purifier import Purifier
from pipeline.settings import ZipSettings
from tests.jobutil import tiny_model_file

SHA = "0" * 64


def _key(name: str, device: str) -> str:
    return make_defense(name, checkpoint="prior.pt", checkpoint_sha256=SHA, device=device).key


@pytest.mark.parametrize("name", ZIP_DEFENSES)
def test_zip_sets_purified_on_a_gpu_and_on_a_cpu_are_cached_apart(name: str) -> None:
    assert _key(name, "cuda") != _key(name, "cpu")
    assert _key(name, "cuda:1") == _key(name, "cuda")  # one noise stream for every GPU of a machine


def test_cpu_keys_are_those_of_earlier_versions_so_their_caches_stay_in_use() -> None:
    """The key of the default ZIP settings on a CPU, as computed before the device was part of the key."""
    assert _key("zip", "cpu") == "zip-4a315837d8c0"
    assert "noise_device" not in make_defense("zip", checkpoint="p", checkpoint_sha256=SHA).settings


@pytest.mark.parametrize("name", ["shrinkpad", "naive"])
def test_the_baselines_are_shared_between_devices(name: str) -> None:
    """They draw no noise on the device (ShrinkPad's offsets come from numpy)."""
    assert _key(name, "cuda") == _key(name, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_same_seed_purifies_other_images_on_a_gpu(tmp_path: Path) -> None:
    """Why the device is part of the key: the same images, settings and seed give other pixels on a GPU."""
    images = list(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    settings = ZipSettings(steps=2)
    prior = tiny_model_file(tmp_path)
    on_cpu = Purifier.from_checkpoint(prior, settings=settings, device="cpu")(images)
    on_gpu = Purifier.from_checkpoint(prior, settings=settings, device="cuda")(images)
    assert not all(np.array_equal(a, b) for a, b in zip(on_cpu, on_gpu, strict=True))
