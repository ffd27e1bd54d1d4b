"""Mutation-audit gaps in the purifier: with a learn_sigma model (the paper's 256x256_diffusion_uncond) the sampler
gets ε, the first three output channels, not the variance channels; and a canvas the UNet cannot halve down to its
last level is refused when the purifier is made, not deep inside the model."""

from __future__ import annotations

import pytest
import torch

from pipeline import Purifier, ZipSettings
from pipeline.model import UNetConfig, build_unet


def _perturbed(config: UNetConfig):
    torch.manual_seed(0)
    m = build_unet(config)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_a_learn_sigma_model_gives_the_sampler_its_eps_channels() -> None:
    model = _perturbed(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="",
                                  num_res_blocks=1, learn_sigma=True))
    p = Purifier(model, ZipSettings(steps=2, pool=2))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        full = model(x, t)
    assert full.shape == (2, 6, 16, 16) and not torch.allclose(full[:, :3], full[:, 3:])
    assert torch.equal(p.eps(x, t), full[:, :3])


def test_a_canvas_the_unet_cannot_halve_to_its_last_level_is_refused() -> None:
    model = build_unet(UNetConfig(image_size=32, num_channels=32, channel_mult="1,2,2", attention_resolutions="",
                                  num_res_blocks=1))
    assert model.config.min_input_multiple == 4
    for canvas in (34, 38, 6):  # multiples of the pool factor 2, not of 4
        with pytest.raises(ValueError, match=f"canvas size {canvas} must be a multiple of 4"):
            Purifier(model, ZipSettings(steps=1, pool=2), canvas_size=canvas)
    Purifier(model, ZipSettings(steps=1, pool=2), canvas_size=36)  # a multiple of 4 is accepted
