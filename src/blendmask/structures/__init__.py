"""Plain data containers passed between the data pipeline, the network, the criterion and the
post-processor; `structures.paste` pastes box-local masks into the image for all of them.

Glossary: N images, P points over all FPN levels (level-major, P3 first), C foreground classes,
K bases, M attention size, R bottom (RoI) resolution, G gt instances, D detections, H/W padded
input size, H0/W0 original image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from blendmask.structures.classes import class_name, resolve_classes
from blendmask.structures.detections import Detections, detection_records
from blendmask.structures.panoptic import PanopticSegmentation

__all__ = [
    "POOLER_TYPES",
    "TOP_INTERPS",
    "BlenderSpec",
    "BlendMaskOutputs",
    "Detections",
    "ImageBatch",
    "PanopticSegmentation",
    "Target",
    "class_name",
    "detection_records",
    "resolve_classes",
]

# The blender's choices (BlendMask Table 2): bottom pooling and top-layer interpolation.
POOLER_TYPES = ("ROIAlignV2", "ROIPool")
TOP_INTERPS = ("bilinear", "nearest")


@dataclass(frozen=True)
class BlenderSpec:
    """The blender's settings (BlendMask Sec. 3.2, Eq. 1-4), shared by training and inference.

    One frozen value built from `cfg.model.blender`, handed to the criterion, the
    post-processor and `blendmask.explain`, so the three always blend the same way.

    resolution: R, side of the pooled bases and of the blended mask (56).
    attn_size: M, side of each detection's K attention maps (14).
    top_interp: how the attention is resized M -> R (Eq. 2): "bilinear" (align_corners=False)
        or "nearest".
    pooler_type: how the bases are cropped (Eq. 1): "ROIAlignV2" (`roi_align`, aligned=True)
        or "ROIPool" (nearest base pixel at each bin centre).
    pooler_sampling_ratio: RoIAlign samples per bin side (1; 0 = adaptive, as `roi_align`).
    pooler_scale: bases size / input size (0.25: the bases are at stride 4).
    fixed_onehot: FCIS assembly (Table 1): K = M*M fixed one-hot attentions, values ignored.
    """

    resolution: int = 56
    attn_size: int = 14
    top_interp: str = "bilinear"
    pooler_type: str = "ROIAlignV2"
    pooler_sampling_ratio: int = 1
    pooler_scale: float = 0.25
    fixed_onehot: bool = False

    def __post_init__(self) -> None:
        for name in ("resolution", "attn_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlenderSpec.{name}: expected an integer >= 1, got {value!r}")
        if self.top_interp not in TOP_INTERPS:
            raise ValueError(
                f"BlenderSpec.top_interp: expected one of {TOP_INTERPS}, got {self.top_interp!r}"
            )
        if self.pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"BlenderSpec.pooler_type: expected one of {POOLER_TYPES}, got {self.pooler_type!r}"
            )
        ratio = self.pooler_sampling_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 0:
            raise ValueError(
                f"BlenderSpec.pooler_sampling_ratio: expected an integer >= 0, got {ratio!r}"
            )
        scale = self.pooler_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"BlenderSpec.pooler_scale: expected a number, got {scale!r}")
        if not (math.isfinite(scale) and 0 < scale <= 1):
            raise ValueError(f"BlenderSpec.pooler_scale: expected a number in (0, 1], got {scale}")
        if not isinstance(self.fixed_onehot, bool):
            raise ValueError(
                f"BlenderSpec.fixed_onehot: expected a bool, got {self.fixed_onehot!r}"
            )

    @property
    def bases_stride(self) -> int:
        """Input pixels per base pixel (4 for `pooler_scale` 0.25)."""
        return round(1 / self.pooler_scale)


class ImageBatch(NamedTuple):
    """A padded batch of images.

    tensor (Tensor[N, 3, H, W]): float RGB in [0, 1], zero padded at the bottom/right to a
        multiple of 32.
    image_sizes (list[tuple[int, int]]): (h, w) of each image inside the padding (resized size).
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.tensor.to(device), self.image_sizes)


class BlendMaskOutputs(NamedTuple):
    """Raw network outputs, the same fields and shapes in train and eval mode (only layers
    that themselves depend on the mode, e.g. non-frozen BatchNorm, change the values).

    cls_logits (Tensor[N, P, C]): classification logits (C foreground classes).
    bbox_reg (Tensor[N, P, 4]): ltrb distances in units of each point's stride (after ReLU).
    ctrness (Tensor[N, P]): centerness logits.
    attentions (Tensor[N, P, K*M*M] | None): attention logits from the top layer; None when the
        network was asked for `dense_attentions=False` (inference: the post-processor then
        evaluates the top layer only at the detections, from `bbox_towers`).
    bases (Tensor[N, K, H/4, W/4]): bases from the bottom module.
    sem_logits (Tensor[N, C+1, H/8, W/8] | None): auxiliary semantic logits (None when off).
    points (Tensor[P, 2]): (x, y) of each point in input pixels.
    strides (Tensor[P]): stride of each point's level.
    num_points_per_level (tuple[int, ...]): for `split` along P.
    bbox_towers (tuple[Tensor[N, C_t, Hl, Wl], ...] | None): per level, the tower output the
        top layer reads; only with `dense_attentions=False`.
    top_layer_params (tuple[Tensor[K*M*M, C_t, 3, 3], Tensor[K*M*M]] | None): the top layer's
        weight and bias; only with `dense_attentions=False`.
    panoptic_logits (Tensor[N, S+1, H, W] | None): the semantic FPN head's logits (0 = thing,
        1..S stuff) at the padded input size; None unless the network is panoptic.
    """

    cls_logits: Tensor
    bbox_reg: Tensor
    ctrness: Tensor
    attentions: Tensor | None
    bases: Tensor
    sem_logits: Tensor | None
    points: Tensor
    strides: Tensor
    num_points_per_level: tuple[int, ...]
    bbox_towers: tuple[Tensor, ...] | None = None
    top_layer_params: tuple[Tensor, Tensor] | None = None
    panoptic_logits: Tensor | None = None


# A training target for one image (see data/transforms.py), coordinates in resized-input pixels:
#   {"boxes": float Tensor[G, 4] xyxy, "labels": int64 Tensor[G] in [0, C),
#    "masks": uint8 Tensor[G, h, w] at the image's resized (unpadded) size}
# and, for a panoptic model, "sem_seg": int64 Tensor[h, w] (0 = thing, 1..S stuff, 255 ignore)
Target = dict[str, Tensor]
