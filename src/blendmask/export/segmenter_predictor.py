"""`blendmask predict --onnx`: the numpy-only runtime (`blendmask.onnx_runtime.OnnxSegmenter`)
behind the interface `prediction/predict.py` takes (`structures.inference.InferenceModel`:
`cfg`, `max_image_pixels`, `predict_tensors`), so the results json and overlays are written by
the same code.

Not a forwarding wrapper: `OnnxSegmenter` imports no torch (it is the torch-free deployment
runtime), so it cannot return `Detections`; this adapter turns tensors into numpy arrays and
its `Segmentation`s into `Detections`, reads the config from the file's metadata and refuses a
file exported without pasted masks.

Shapes: D detections, H0/W0 original image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from blendmask.config import Config
from blendmask.export.onnx_predictor import read_onnx_config
from blendmask.export.openvino_segmenter import OpenVinoSegmenter
from blendmask.onnx_runtime import BACKENDS, OnnxSegmenter
from blendmask.predictor import MAX_IMAGE_PIXELS
from blendmask.structures import Detections


class SegmenterPredictor:
    """An end-to-end ONNX file as a `Predictor` for `prediction.predict.predict_images`.

    Args:
        path: an end-to-end file written by `blendmask export` (with its config, as the
            command writes it).
        threads: intra-op threads (default: the runtime's choice).
        backend: "onnxruntime" (default) or "openvino" (`OpenVinoSegmenter`, f32).
    """

    def __init__(
        self, path: str | Path, *, threads: int | None = None, backend: str = "onnxruntime"
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        runtime = OpenVinoSegmenter if backend == "openvino" else OnnxSegmenter
        self.segmenter: OnnxSegmenter | OpenVinoSegmenter = runtime(path, threads=threads)
        cfg: Config | None = read_onnx_config(path)
        if cfg is None:
            raise ValueError(f"{path}: no blendmask config in the ONNX metadata")
        self.cfg = cfg
        self.max_image_pixels = MAX_IMAGE_PIXELS

    def predict_tensors(self, images: Sequence[Tensor]) -> list[Detections]:
        """Decoded images (uint8 RGB Tensor[3, H0, W0], as `load_input_image` gives) -> one
        `Detections` per image with dense masks (the graph pastes them)."""
        arrays = []
        for image in images:
            if image.dtype != torch.uint8:
                raise ValueError(f"expected a decoded uint8 image, got {image.dtype}")
            # (3, H0, W0) -> (H0, W0, 3)
            arrays.append(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        results = []
        for seg, array in zip(self.segmenter.predict_batch(arrays), arrays):
            height, width = array.shape[:2]
            masks = seg.masks
            if masks is None:
                raise ValueError(
                    f"{self.segmenter.path}: exported without pasted masks (--no-paste); "
                    "predict needs them"
                )
            results.append(
                Detections(
                    boxes=torch.from_numpy(np.array(seg.boxes)),
                    scores=torch.from_numpy(np.array(seg.scores)),
                    labels=torch.from_numpy(np.array(seg.labels)),
                    masks=torch.from_numpy(np.array(masks)).reshape(-1, height, width),
                )
            )
        return results
