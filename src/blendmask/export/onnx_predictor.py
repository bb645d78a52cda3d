"""Run an exported BlendMask ONNX file: onnxruntime for the network, the package's own
preprocessing and post-processor around it (`OnnxPredictor`, the `Predictor` interface).

The FCOS points are not outputs of the graph: `fcos_points` recomputes them from the padded
size and the FPN strides with the network's own formula (`compute_points`).

Glossary: N images, P points over all FPN levels (level-major, P3 first), C foreground classes,
K bases, M attention size, H/W padded input size, H0/W0 original size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from blendmask.config import Config, from_dict
from blendmask.data.preprocess import ImageInput, preprocess
from blendmask.export.onnx import (
    CONFIG_METADATA_KEY,
    SIZE_DIVISIBILITY,
    open_session,
    require_module,
    run_session,
)
from blendmask.factory import build_postprocessor
from blendmask.modeling.blendmask import compute_points
from blendmask.predictor import MAX_IMAGE_PIXELS, in_batches
from blendmask.structures import BlendMaskOutputs, Detections


def fcos_level_sizes(height: int, width: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    """(Hl, Wl) of every FPN level for a padded input of height x width.

    Each stride-2 step (backbone stages, FPN top block: 3x3 convs with padding 1) maps n to
    ceil(n / 2), and nested ceilings of halvings equal ceil(n / s).
    """
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def fcos_points(
    height: int, width: int, strides: Sequence[int]
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """The network's FCOS points for a padded size, without running the network
    (docs/reference.md §1.6).

    Returns:
        points (Tensor[P, 2]): float (x, y) = (j*s + s//2, i*s + s//2), level-major, row-major
            inside a level; strides (Tensor[P]): float stride of each point;
            num_points_per_level (tuple[int, ...]).
    """
    level_sizes = fcos_level_sizes(height, width, strides)
    points, point_strides = compute_points(level_sizes, list(strides), torch.device("cpu"))
    return points, point_strides, tuple(h * w for h, w in level_sizes)


def outputs_from_onnx(
    arrays: Sequence[np.ndarray], height: int, width: int, strides: Sequence[int]
) -> BlendMaskOutputs:
    """onnxruntime outputs (in OUTPUT_NAMES order) of a height x width batch ->
    BlendMaskOutputs for the post-processor (sem_logits None, points recomputed)."""
    cls_logits, bbox_reg, ctrness, attentions, bases = (torch.from_numpy(a) for a in arrays)
    points, point_strides, counts = fcos_points(height, width, strides)
    if cls_logits.shape[1] != points.shape[0]:
        raise ValueError(
            f"ONNX outputs have {cls_logits.shape[1]} points for a {height}x{width} input but "
            f"FPN strides {list(strides)} give {points.shape[0]}: strides do not match the model"
        )
    return BlendMaskOutputs(
        cls_logits=cls_logits,
        bbox_reg=bbox_reg,
        ctrness=ctrness,
        attentions=attentions,
        bases=bases,
        sem_logits=None,
        points=points,
        strides=point_strides,
        num_points_per_level=counts,
    )


def read_onnx_config(path: str | Path) -> Config | None:
    """The config stored in an exported file's metadata, or None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    onnx = require_module("onnx")
    # The weights are not needed to read the metadata.
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == CONFIG_METADATA_KEY:
            return from_dict(yaml.safe_load(entry.value)).validate()
    return None


class OnnxPredictor:
    """Resize + onnxruntime network + PyTorch post-processor: the `Predictor` interface
    without the network code.

    >>> predictor = OnnxPredictor("model.onnx")      # config from the file's metadata
    >>> dets = predictor(["a.jpg"])                  # list[Detections] at original sizes

    Args:
        onnx_path: a file written by `export_onnx`.
        cfg: the model's config; default the one stored in the file.
        providers: onnxruntime execution providers (default CPU).
        batch_size: images per onnxruntime call.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        cfg: Config | None = None,
        *,
        providers: Sequence[str] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.path = Path(onnx_path)
        if cfg is None:
            cfg = read_onnx_config(self.path)
            if cfg is None:
                raise ValueError(
                    f"{self.path}: no blendmask config in the ONNX metadata; pass cfg="
                )
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        self.cfg = cfg
        # What `blendmask predict` refuses before decoding (`InferenceModel`), as `Predictor`.
        self.max_image_pixels = MAX_IMAGE_PIXELS
        self.session = open_session(self.path, providers)
        self.postprocessor = build_postprocessor(cfg).eval()
        self.strides = list(cfg.model.fcos.fpn_strides)
        self.min_size = cfg.data.min_size_test
        self.max_size = cfg.data.max_size_test
        self.scale = float(cfg.data.test_scale)
        self.batch_size = batch_size

    def __call__(self, images: Any) -> list[Detections]:
        """images: one or a list of paths, PIL images, H x W x 3 uint8 arrays or float RGB
        Tensor[3, H, W] in [0, 1] (as `Predictor`)."""
        return in_batches(self.predict_tensors, images, self.batch_size)

    def raw_outputs(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> BlendMaskOutputs:
        """The network's outputs from onnxruntime for a padded batch.

        images (Tensor[N, 3, H, W]): float RGB in [0, 1], padded to multiples of 32.
        """
        height, width = int(images.shape[-2]), int(images.shape[-1])
        arrays = run_session(self.session, images, image_sizes)
        return outputs_from_onnx(arrays, height, width, self.strides)

    @torch.inference_mode()
    def predict_tensors(self, images: Sequence[ImageInput]) -> list[Detections]:
        """One batch of images at original size -> detections at original size (the same
        `preprocess` and post-processor as `Predictor`; only the network runs in onnxruntime)."""
        batch, orig_sizes = preprocess(
            images,
            self.min_size,
            self.max_size,
            scale=self.scale,
            size_divisibility=SIZE_DIVISIBILITY,
        )
        outputs = self.raw_outputs(batch.tensor, batch.image_sizes)
        return self.postprocessor(outputs, batch.image_sizes, orig_sizes)
