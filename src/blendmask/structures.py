"""Plain data containers passed between the data pipeline, the network, the criterion and the
post-processor.

Glossary: N images, P points over all FPN levels (level-major, P3 first), C foreground classes,
K bases, M attention size, G gt instances, D detections, H/W padded input size, H0/W0 original
image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


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
    """Raw network outputs, identical in train and eval mode.

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


@dataclass
class Detections:
    """Detections for one image, in original-image pixels.

    boxes (Tensor[D, 4]): float xyxy.
    scores (Tensor[D]): float, sqrt(cls * ctrness).
    labels (Tensor[D]): int64 in [0, C).
    masks (Tensor[D, H0, W0]): bool.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(
            self.boxes.to(device),
            self.scores.to(device),
            self.labels.to(device),
            self.masks.to(device),
        )

    @staticmethod
    def empty(height: int, width: int, device: torch.device | str = "cpu") -> Detections:
        return Detections(
            boxes=torch.zeros((0, 4), device=device),
            scores=torch.zeros((0,), device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
            masks=torch.zeros((0, height, width), dtype=torch.bool, device=device),
        )


# A training target for one image (see data/transforms.py), coordinates in resized-input pixels:
#   {"boxes": float Tensor[G, 4] xyxy, "labels": int64 Tensor[G] in [0, C),
#    "masks": uint8 Tensor[G, h, w] at the image's resized (unpadded) size}
Target = dict[str, Tensor]
