"""The UNet's CPU inference paths (pipeline.model._cpu_inference) give the same bits as the plain operations.

On a CPU without autograd the model writes SiLUs, scale-shifts and residual sums in place and computes attention a
few samples at a time without `scaled_dot_product_attention`'s masked-row check; these tests pin that the results are
bit-identical to the plain path (which training and GPUs still run), so that evaluations made before stay
reproducible bit for bit. No timing is asserted here; bench/purifier_bench.py measures the speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pipeline.model as model_module
from pipeline import Purifier, ZipSettings
from pipeline.checkpoint import load_checkpoint
from pipeline.model import UNetConfig, UNetModel

PRIOR = Path(__file__).resolve().parents[1] / "pipeline/assets/cifar10_prior.pt"


def plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the model take its plain path (the code before the CPU inference paths)."""
    monkeypatch.setattr(model_module, "_cpu_inference", lambda x: False)


def random_unet(**flags: object) -> UNetModel:
    """A small UNet with every weight random (the zero-initialised output convolutions too, so every path counts)."""
    torch.manual_seed(0)
    model = UNetModel(UNetConfig(**flags)).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def strided_qkv(b: int, heads: int, d: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v as AttentionBlock passes them: (b, heads, length, d) views of a (b, heads, 3d, length) tensor."""
    qkv = torch.randn(b, heads, 3 * d, length, generator=torch.Generator().manual_seed(b * heads + d), dtype=dtype)
    return tuple(t.transpose(-1, -2) for t in qkv.split(d, dim=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "heads", "d", "length"), [(5, 2, 32, 256), (5, 4, 16, 64), (3, 1, 8, 16), (1, 2, 32, 4)])
@pytest.mark.parametrize("chunk_bytes", [1, 200_000, None])
def test_cpu_attention_is_bit_identical_to_sdpa(monkeypatch, dtype, b, heads, d, length, chunk_bytes) -> None:
    if chunk_bytes is not None:  # 1: one sample at a time; 200 kB: chunks that do not divide b; None: the default
        monkeypatch.setattr(model_module, "CPU_ATTENTION_CHUNK_BYTES", chunk_bytes)
    q, k, v = strided_qkv(b, heads, d, length, dtype)
    with torch.inference_mode():
        expected = F.scaled_dot_product_attention(q, k, v)
        got = model_module._cpu_attention(q, k, v)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


FLAG_SETS = {
    "cifar10-prior-like": dict(image_size=32, num_channels=32, channel_mult="1,2,2", attention_resolutions="16",
                               num_head_channels=32),
    "updown-learn-sigma": dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                               attention_resolutions="16,8", num_head_channels=16, resblock_updown=True,
                               learn_sigma=True),
    "no-scale-shift-new-order": dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                                     attention_resolutions="16", num_heads=2, use_scale_shift_norm=False,
                                     use_new_attention_order=True),
}


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_unet_cpu_inference_path_is_bit_identical(monkeypatch, flags) -> None:
    model = random_unet(**flags)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 500, 10, 0])
    with torch.inference_mode():
        fast = model(x, t)
    with monkeypatch.context() as m:
        plain(m)
        with torch.inference_mode():
            expected = model(x, t)
    assert torch.equal(fast, expected)
    with torch.no_grad():  # no_grad takes the same path as inference_mode
        assert torch.equal(model(x, t), expected)


def test_training_still_runs_the_plain_path_with_gradients() -> None:
    model = random_unet(**FLAG_SETS["updown-learn-sigma"]).train().requires_grad_(True)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x, torch.tensor([3, 700])).square().mean().backward()  # in-place writes would break autograd here
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


@pytest.mark.skipif(not PRIOR.exists(), reason="the shipped CIFAR-10 prior is not in this checkout")
def test_shipped_prior_purifies_to_the_same_uint8_images(monkeypatch) -> None:
    model = load_checkpoint(str(PRIOR)).model
    purifier = Purifier(model, ZipSettings(steps=2), "cpu", batch_size=6)
    purifier.model_batch = 4  # two forward slices per step, the second one shorter
    canvases = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    seeds = list(range(40, 46))
    fast = [purifier.purify_canvases(canvases, seed=11), purifier.purify_canvases(canvases, seeds=seeds)]
    plain(monkeypatch)
    expected = [purifier.purify_canvases(canvases, seed=11), purifier.purify_canvases(canvases, seeds=seeds)]
    for got, want in zip(fast, expected, strict=True):
        assert np.array_equal(got, want)
