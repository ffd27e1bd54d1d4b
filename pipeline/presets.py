"""Named architectures (the published guided-diffusion checkpoints and this project's prior) and the
priors this project ships."""

from __future__ import annotations

from pathlib import Path

from pipeline.model import UNetConfig

ASSETS = Path(__file__).resolve().parent / "assets"
# Priors trained by jobs/train_prior.py and shipped in the package; each has a card (<name>_prior.md) beside it.
SHIPPED_PRIORS: dict[str, str] = {
    "cifar10": "natural 32 px photos (CIFAR-10); the job's default",
    "gtsrb": "traffic signs (GTSRB, trained without flips); pass it for road-sign data",
}

PRESETS: dict[str, dict] = {
    # The model the ZIP paper uses (OpenAI guided-diffusion, 552,814,086 parameters).
    "256x256_diffusion_uncond": dict(
        image_size=256, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
        num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True, class_cond=False,
    ),
    "256x256_diffusion": dict(
        image_size=256, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
        num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True, class_cond=True,
    ),
    "128x128_diffusion": dict(
        image_size=128, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
        num_heads=4, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True, class_cond=True,
    ),
    "64x64_diffusion": dict(
        image_size=64, num_channels=192, num_res_blocks=3, attention_resolutions="32,16,8",
        num_head_channels=64, resblock_updown=True, use_new_attention_order=True, use_scale_shift_norm=True,
        learn_sigma=True, class_cond=True,
    ),
    # This project's CPU-trainable CIFAR-10 prior (see jobs/train_prior.py).
    "cifar10_prior_small": dict(
        image_size=32, num_channels=32, num_res_blocks=2, channel_mult="1,2,2", attention_resolutions="16",
        num_head_channels=32, resblock_updown=False, use_scale_shift_norm=True, learn_sigma=False, class_cond=False,
    ),
}


def preset_config(name: str) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return UNetConfig.from_flags(PRESETS[name])


def shipped_prior_path(name: str) -> Path:
    """Where the shipped prior `name` lives in the package (whether or not this installation has it)."""
    if name not in SHIPPED_PRIORS:
        raise ValueError(f"unknown shipped prior {name!r}; shipped priors: {', '.join(SHIPPED_PRIORS)}")
    return ASSETS / f"{name}_prior.pt"


def shipped_prior(name: str) -> str:
    """Path of a prior shipped with the package, by name (see SHIPPED_PRIORS)."""
    path = shipped_prior_path(name)
    if not path.exists():
        raise FileNotFoundError(f"shipped prior {name!r} is missing from this installation ({path})")
    return str(path)
