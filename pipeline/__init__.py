"""zip-purify: backdoor-trigger removal for image data sets with Zero-shot Image Purification (ZIP)."""

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.model import UNetConfig, UNetModel, build_unet
from pipeline.presets import PRESETS, SHIPPED_PRIORS, preset_config, shipped_prior
from pipeline.purifier import Purifier
from pipeline.settings import ZipSettings
from pipeline.version import __version__ as __version__  # re-exported: pipeline.__version__

__all__ = [
    "PRESETS",
    "SHIPPED_PRIORS",
    "CheckpointError",
    "Purifier",
    "UNetConfig",
    "UNetModel",
    "ZipSettings",
    "build_unet",
    "load_checkpoint",
    "preset_config",
    "shipped_prior",
]
