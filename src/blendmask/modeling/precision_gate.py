"""The accuracy gate of a faster number format (issue 25): bf16 inference is used only when its
masks agree with fp32's on the user's own images.

`paired_mask_ious` keeps the fp32 detections fixed (same boxes, same locations) and blends their
masks once from the fp32 and once from the bf16 network outputs (bases and attentions), pasted
at the input size: the effect of bf16 on the masks alone, not on which detections NMS keeps.
`gate` passes when the mean IoU is at least `runtime.precision.GATE_MASK_IOU` (0.98).
`choose_path` runs the probe's ranking (`runtime/precision.py`) and this gate on one batch:
`Predictor(precision="auto")` calls it on its first batch with detections.

Glossary: D detections, K bases, M attention size, R bottom resolution, H/W padded input size.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.runtime.precision import (
    GATE_MASK_IOU,
    InferencePath,
    probe_times,
    ranked_paths,
)
from blendmask.structures import BlendMaskOutputs, ImageBatch
from blendmask.structures.paste import paste_masks

logger = logging.getLogger("blendmask.precision")


def float32_outputs(outputs: BlendMaskOutputs) -> BlendMaskOutputs:
    """`outputs` with every floating tensor in float32: the post-processor (top layer at the
    kept locations, blender, pasting) runs in fp32 whatever the network ran in."""

    def cast(value: Any) -> Any:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.float()
        if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
            return tuple(cast(v) for v in value)
        return value

    return BlendMaskOutputs(*(cast(v) for v in outputs))


def _mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Per pair IoU of bool masks a, b (Tensor[D, H, W]); two empty masks agree (1)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.inference_mode()
def paired_mask_ious(
    model: nn.Module, post: BlendMaskPostProcessor, batch: ImageBatch, path: InferencePath
) -> Tensor:
    """IoU (Tensor[D], all images of `batch`) of each fp32 detection's mask blended from fp32
    vs `path`'s network outputs (see the module docstring)."""
    sizes = batch.image_sizes
    out32 = model(batch.tensor, sizes, dense_attentions=True, with_sem=False)
    with path.autocast(batch.tensor.device):
        out16 = float32_outputs(model(batch.tensor, sizes, dense_attentions=True, with_sem=False))
    ious = []
    for i, det in enumerate(post.detect(out32, sizes)):
        boxes = det["boxes"]
        if boxes.shape[0] == 0:
            continue
        h, w = sizes[i]
        p32 = post.blend(out32.bases[i : i + 1], [boxes], [det["attentions"]])[0]
        att16 = out16.attentions[i, det["point_inds"]]
        p16 = post.blend(out16.bases[i : i + 1], [boxes], [att16])[0]
        clipped = boxes.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        if not bool(keep.any()):
            continue
        m32 = paste_masks(p32[keep], clipped[keep], (h, w), threshold=post.mask_threshold)
        m16 = paste_masks(p16[keep], clipped[keep], (h, w), threshold=post.mask_threshold)
        ious.append(_mask_iou(m32, m16).cpu())
    return torch.cat(ious) if ious else torch.zeros((0,))


def gate(
    model: nn.Module, post: BlendMaskPostProcessor, batch: ImageBatch, path: InferencePath
) -> tuple[bool | None, dict[str, Any]]:
    """(passed, report): passed is None when `batch` has no detection to judge by."""
    ious = paired_mask_ious(model, post, batch, path)
    if ious.numel() == 0:
        return None, {"detections": 0}
    mean = float(ious.mean())
    report = {"detections": int(ious.numel()), "mean_mask_iou": round(mean, 5)}
    return mean >= GATE_MASK_IOU, report


def choose_path(
    model: nn.Module,
    post: BlendMaskPostProcessor,
    batch: ImageBatch,
    times: dict[str, float] | None = None,
) -> tuple[InferencePath | None, dict[str, Any]]:
    """The fastest path of the probe's ranking that passes the gate on `batch` (fp32 needs
    none), and a report (timings, gate figures). None when a faster path could not be judged
    (no detections in `batch`): the caller runs fp32 and asks again with its next batch."""
    device = batch.tensor.device
    times = probe_times(device) if times is None else times
    report: dict[str, Any] = {"probe_seconds": times, "gate": {}}
    verdicts: dict[str, bool | None] = {}  # per dtype: the layout does not change the numbers
    for path in ranked_paths(times):
        if path.dtype == "fp32":
            break
        if path.dtype not in verdicts:
            verdicts[path.dtype], report["gate"][path.dtype] = gate(model, post, batch, path)
        if verdicts[path.dtype]:
            report["path"] = path.name
            return path, report
    if None in verdicts.values():
        return None, report
    report["path"] = path.name
    return path, report
