"""BlendMask (Chen et al., CVPR 2020) in pure PyTorch.

>>> import blendmask
>>> cfg = blendmask.get_preset("R_50_1x")
>>> model, criterion, postprocessor = blendmask.build(cfg)
"""

from __future__ import annotations

from importlib import import_module as _import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names for type checkers; at run time `__getattr__` loads them
    from blendmask.adapter import TorchvisionDetector
    from blendmask.config import Config, ConfigError
    from blendmask.factory import build
    from blendmask.predictor import Predictor
    from blendmask.presets import PRESETS, get_preset, load_config
    from blendmask.structures import Detections

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


# Where each public name lives. All load on first use: `import blendmask` imports nothing else,
# so `blendmask.onnx_runtime` runs with numpy, Pillow and onnxruntime alone (no torch, no yaml).
_LAZY = {
    "Config": "blendmask.config",
    "ConfigError": "blendmask.config",
    "PRESETS": "blendmask.presets",
    "get_preset": "blendmask.presets",
    "load_config": "blendmask.presets",
    "build": "blendmask.factory",
    "Predictor": "blendmask.predictor",
    "TorchvisionDetector": "blendmask.adapter",
    "Detections": "blendmask.structures",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blendmask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
