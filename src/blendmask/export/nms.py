"""Class-aware NMS of the end-to-end export (FCOS Sec. 3, docs/reference.md §4 step 4) as one
function with two backends:

- in an ONNX export, the ONNX `NonMaxSuppression` op (per image, per class; boxes of other
  classes and invalid slots are given a score below its score threshold, so each class is
  suppressed on its own, on the boxes as they are);
- everywhere else (eager PyTorch, `torch.jit.trace` for TorchScript), a scripted loop over
  the images calling `torchvision.ops.batched_nms`, the post-processor's own call.

Both suppress a box whose IoU with a kept, higher-scoring box of the same class is `>` the
threshold. The result is a keep mask over fixed candidate slots, which keeps every tensor of
the graph batched (N images, Q candidate slots per image).

Shapes: N images, Q candidate slots per image, C classes, S selected (image, class, slot).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

# Invalid slots get this score; the ONNX op's score threshold sits between it and any real
# score (scores are sqrt(cls * ctr) >= 0).
INVALID_SCORE = -1.0
_ONNX_SCORE_THRESHOLD = -0.5

_SCRIPTED: Any = None


def _keep_mask_eager(
    boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, iou_threshold: float
) -> Tensor:
    """Tensor[N, Q] bool: the valid slots `batched_nms` keeps, image by image."""
    keep = torch.zeros_like(valid)
    for i in range(boxes.shape[0]):
        idx = valid[i].nonzero().squeeze(1)
        kept = batched_nms(boxes[i, idx], scores[i, idx], labels[i, idx], iou_threshold)
        keep[i, idx[kept]] = True
    return keep


def _scripted() -> Any:
    """`_keep_mask_eager` as TorchScript (made on first use: scripting costs ~0.1 s), so that a
    trace keeps the loop over a dynamic number of images and candidates."""
    global _SCRIPTED
    if _SCRIPTED is None:
        _SCRIPTED = torch.jit.script(_keep_mask_eager)
    return _SCRIPTED


class _OnnxNMS(torch.autograd.Function):
    """Traced as one ONNX `NonMaxSuppression`; run eagerly (during the trace) it returns the
    same selection from `batched_nms`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        boxes: Tensor,
        class_scores: Tensor,
        labels: Tensor,
        valid: Tensor,
        iou_threshold: float,
        max_per_class: int,
    ) -> Tensor:
        """Tensor[S, 3] int64 (image, class, slot) of the kept slots."""
        scores = class_scores.max(dim=1).values
        keep = _keep_mask_eager(boxes, scores, labels, valid, iou_threshold)
        image, slot = keep.nonzero(as_tuple=True)
        return torch.stack([image, labels[image, slot], slot], dim=1)

    @staticmethod
    def symbolic(
        g: Any,
        boxes: Any,
        class_scores: Any,
        labels: Any,
        valid: Any,
        iou_threshold: float,
        max_per_class: int,
    ) -> Any:
        # center_point_box 0: any two opposite corners (the op takes min/max of each pair), so
        # xyxy boxes need no reordering; IoU is symmetric in x and y.
        return g.op(
            "NonMaxSuppression",
            boxes,
            class_scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([_ONNX_SCORE_THRESHOLD], dtype=torch.float32)),
            center_point_box_i=0,
        )


def class_aware_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    *,
    iou_threshold: float,
    num_classes: int,
) -> Tensor:
    """Which candidate slots survive class-aware NMS.

    Args:
        boxes (Tensor[N, Q, 4]): float xyxy.
        scores (Tensor[N, Q]): float, >= 0 for valid slots.
        labels (Tensor[N, Q]): int64 class in [0, C).
        valid (Tensor[N, Q]): bool, the slots that are candidates at all.
        iou_threshold: suppress IoU `>` this.
        num_classes: C.

    Returns:
        Tensor[N, Q]: bool, kept slots (a subset of `valid`).
    """
    if not torch.onnx.is_in_onnx_export():
        if torch.jit.is_tracing():
            return _scripted()(boxes, scores, labels, valid, float(iou_threshold))
        return _keep_mask_eager(boxes, scores, labels, valid, float(iou_threshold))
    classes = torch.arange(num_classes, device=labels.device)
    # (N, C, Q): each slot scores only in its own class, invalid slots nowhere.
    own_class = (labels[:, None, :] == classes[None, :, None]) & valid[:, None, :]
    class_scores = torch.where(
        own_class, scores[:, None, :], torch.full_like(scores[:, None, :], INVALID_SCORE)
    )
    # The op's output cap per (image, class); at most Q slots can be selected anyway.
    selected = _OnnxNMS.apply(boxes, class_scores, labels, valid, float(iou_threshold), 2**31 - 1)
    keep = torch.zeros_like(valid)
    keep[selected[:, 0], selected[:, 2]] = True
    return keep
