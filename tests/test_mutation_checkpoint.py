"""Mutation-audit gap in checkpoint loading: the model comes back in eval mode, so a prior trained with dropout
predicts deterministically (dropout off) when sampled."""

from __future__ import annotations

import torch

from pipeline.checkpoint import load_checkpoint, save_bundle
from pipeline.model import UNetConfig, build_unet


def test_a_loaded_model_with_dropout_is_in_eval_mode_and_deterministic(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="",
                                  num_res_blocks=1, dropout=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_bundle(tmp_path / "prior.pt", model)
    loaded = load_checkpoint(str(tmp_path / "prior.pt"))
    assert loaded.config.dropout == 0.5
    assert not any(m.training for m in loaded.model.modules())
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    torch.manual_seed(1)
    first = loaded.model(x, t)
    torch.manual_seed(2)
    assert torch.equal(first, loaded.model(x, t))
