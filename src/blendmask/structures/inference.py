"""`InferenceModel`: what the commands need of a model that turns images into detections.

`blendmask predict` (images and videos, `prediction/`) takes any object with these three
members: the PyTorch `Predictor` (`predictor.py`), the ONNX runtime predictor that runs the
network in onnxruntime (`export/onnx_predictor.py::OnnxPredictor`) and the end-to-end ONNX file
behind `predict --onnx` (`export/segmenter_predictor.py::SegmenterPredictor`). A test checks
each of them against this Protocol (tests/test_inference_protocol.py). `serve` and `explain`
need more than this (the network, a post-processor to copy with other knobs) and take the
classes themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from blendmask.config import Config
from blendmask.structures.detections import Detections


@runtime_checkable
class InferenceModel(Protocol):
    """A model ready to predict: its resolved `cfg` (classes, category ids and names, test
    sizes), the largest image it accepts, and one batch of images -> one `Detections` each."""

    cfg: Config
    # Images over this many pixels are refused (ValueError) before they are decoded.
    max_image_pixels: int

    def predict_tensors(self, images: Sequence[Tensor]) -> list[Detections]:
        """Decoded images (uint8 RGB Tensor[3, H0, W0], at original size) -> one `Detections`
        per image, at original size, on the CPU."""
        ...
