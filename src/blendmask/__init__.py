"""BlendMask (Chen et al., CVPR 2020) in pure PyTorch.

>>> import blendmask
>>> cfg = blendmask.get_preset("R_50_1x")
>>> model, criterion, postprocessor = blendmask.build(cfg)
"""

from __future__ import annotations

from importlib import metadata as _metadata

from blendmask.config import Config, ConfigError
from blendmask.presets import PRESETS, get_preset, load_config

try:
    # One version source: pyproject.toml, read back from the installed package's metadata.
    __version__ = _metadata.version("blendmask")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "Detections",
    "Predictor",
    "TorchvisionDetector",
    "build",
    "get_preset",
    "load_config",
]


def __getattr__(name: str):
    # Heavy modules (torch models) load on first use so `import blendmask` stays cheap.
    if name == "build":
        from blendmask.factory import build

        return build
    if name == "Predictor":
        from blendmask.predictor import Predictor

        return Predictor
    if name == "TorchvisionDetector":
        from blendmask.adapter import TorchvisionDetector

        return TorchvisionDetector
    if name == "Detections":
        from blendmask.structures import Detections

        return Detections
    raise AttributeError(f"module 'blendmask' has no attribute {name!r}")
