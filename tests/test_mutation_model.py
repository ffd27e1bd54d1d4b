"""The UNet where a mutation audit found it under-tested: the training/GPU forward path against guided-diffusion's
reference outputs (the reference test runs the CPU inference path), num_heads_upsample, the timestep embedding's
formula, the input sides the UNet takes."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.model import AttentionBlock, UNetConfig, build_unet, timestep_embedding
from tests.conftest import REFERENCE, requires_shared


@requires_shared
@pytest.mark.parametrize("name", ["tiny_uncond_256arch", "tiny_cond_newattn", "tiny_plain_numheads"])
def test_the_training_path_reproduces_the_reference_output(name: str, tiny_checkpoints: dict) -> None:
    """With autograd on, the UNet runs its plain operations and the fused attention kernel (what training and GPUs
    run); they too must give guided-diffusion's output."""
    loaded = load_checkpoint(str(REFERENCE / f"{name}.pt"), flags=tiny_checkpoints[name]["flags"], allow_class_cond=True)
    io = torch.load(REFERENCE / f"{name}_io.pt", weights_only=True)
    x = io["x"].clone().requires_grad_(True)
    with torch.enable_grad():
        out = loaded.model(x, io["t"], io.get("y"))
    assert out.requires_grad
    assert (out.detach() - io["out"]).abs().max().item() <= 2e-5


def test_num_heads_upsample_sets_the_heads_of_the_decoder_attention_only() -> None:
    config = UNetConfig(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="16",
                        num_heads=4, num_heads_upsample=2)
    model = build_unet(config, device="meta")
    down = [m.num_heads for m in model.input_blocks.modules() if isinstance(m, AttentionBlock)]
    up = [m.num_heads for m in model.output_blocks.modules() if isinstance(m, AttentionBlock)]
    assert down and up and set(down) == {4} and set(up) == {2}
    assert [m.num_heads for m in model.middle_block.modules() if isinstance(m, AttentionBlock)] == [4]


def test_timestep_embedding_is_cosines_then_sines_of_geometric_frequencies() -> None:
    t = torch.tensor([0.0, 3.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10000.0) * i / 4) for i in range(4)]
    expected = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    odd = timestep_embedding(t, 9)  # an odd width gets one zero column at the end
    assert odd.shape == (3, 9) and torch.equal(odd[:, :8], emb) and not odd[:, 8].any()


def test_inputs_whose_sides_are_multiples_of_min_input_multiple_run() -> None:
    config = UNetConfig(image_size=32, num_channels=32, channel_mult="1,2,2", num_res_blocks=1, attention_resolutions="16")
    assert config.min_input_multiple == 4  # two halvings: 32, 16, 8 px
    model = build_unet(config).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 12, 20), torch.tensor([5])).shape == (1, 3, 12, 20)
