"""zip-purify: backdoor-trigger removal for image data sets with Zero-shot Image Purification (ZIP).

The public names below are imported when first used (PEP 562), not with the package: the job's CPU stages import
`pipeline.stages` and the readers, which need no torch, and importing torch with the package cost each of their Ray
workers about 3 s and 290 MB of its own memory. `from pipeline import Purifier` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.version import __version__ as __version__  # re-exported: pipeline.__version__

# public name -> the module that defines it
_EXPORTS = {
    "PRESETS": "pipeline.presets",
    "SHIPPED_PRIORS": "pipeline.presets",
    "CheckpointError": "pipeline.checkpoint",
    "Purifier": "pipeline.purifier",
    "UNetConfig": "pipeline.model",
    "UNetModel": "pipeline.model",
    "ZipSettings": "pipeline.settings",
    "build_unet": "pipeline.model",
    "load_checkpoint": "pipeline.checkpoint",
    "preset_config": "pipeline.presets",
    "shipped_prior": "pipeline.presets",
}

__all__ = [  # the keys of _EXPORTS, spelled out for tools that read it without running it
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

if TYPE_CHECKING:
    from pipeline.checkpoint import CheckpointError, load_checkpoint
    from pipeline.model import UNetConfig, UNetModel, build_unet
    from pipeline.presets import PRESETS, SHIPPED_PRIORS, preset_config, shipped_prior
    from pipeline.purifier import Purifier
    from pipeline.settings import ZipSettings


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
