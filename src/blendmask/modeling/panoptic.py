"""Panoptic BlendMask: Panoptic FPN's semantic head, its loss, and the panoptic merge.

BlendMask Sec. 4.4: the instance network plus a semantic branch on P2-P5, whose outputs are
merged into one panoptic map. The reference builds detectron2's semantic FPN head
(`panoptic_module`) and detectron2's `combine_semantic_and_instance_outputs`; the facts used
here are in docs/reference.md §6 and §6.1:

- per level p_l (stride s_l), max(1, log2(s_l / 4)) blocks of [conv3x3 (no bias) + GroupNorm(32)
  + ReLU], each followed by a bilinear x2 upsample (align_corners=False) unless s_l == 4; the
  levels are summed, a 1x1 predictor gives S + 1 classes (0 = "thing", 1..S = stuff), then a x4
  bilinear upsample to the input size; c2_msra_fill init;
- loss: cross-entropy with ignore index 255 on the upsampled logits, times 0.5 (`loss_sem_seg`);
- merge: instances by decreasing score from 0.45, dropped when more than 0.4 of the mask is
  taken, then every stuff class of the semantic argmax with >= 4096 free pixels.

Module and parameter names follow the reference (`p2.0.weight`, `p4.2.norm.bias`,
`predictor.weight`), so `panoptic_module.*` of an AdelaiDet checkpoint loads without renaming.

Glossary: N images, S stuff classes, H/W padded input size, h/w an image's resized size,
H0/W0 original size, D detections.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import Detections, ImageBatch, PanopticSegmentation

PANOPTIC_NORMS = ("GN", "none")


def c2_msra_fill(module: nn.Conv2d) -> None:
    """detectron2's c2_msra_fill: kaiming_normal(fan_out, relu) weights, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvNormReLU(nn.Conv2d):
    """conv3x3 -> norm -> ReLU as one module, the norm hung under the conv (`.norm`), as
    detectron2's `Conv2d(norm=..., activation=relu)` so the state-dict keys match."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "GN") -> None:
        if norm not in PANOPTIC_NORMS:
            raise ValueError(f"semantic head norm: expected one of {PANOPTIC_NORMS}, got {norm!r}")
        super().__init__(in_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm = nn.GroupNorm(32, out_channels) if norm == "GN" else nn.Identity()
        c2_msra_fill(self)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(super().forward(x)))


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic head: [P2, P3, P4, P5] -> (N, S + 1, H, W) logits.

    Args:
        in_channels: channels of every input level (the FPN's, 256).
        num_classes: S + 1 (0 = the "thing" class, 1..S stuff).
        conv_dims: channels of the per-level blocks (128).
        norm: "GN" (GroupNorm(32), no conv bias; the reference) or "none" (conv bias).
        common_stride: the stride every level is brought to before the sum (4).
        in_strides: stride of each input level (4, 8, 16, 32: P2-P5); level names p2..p5.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        num_classes: int,
        conv_dims: int = 128,
        norm: str = "GN",
        common_stride: int = 4,
        in_strides: tuple[int, ...] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"semantic head num_classes: expected >= 2 (thing + stuff), got {num_classes}"
            )
        if norm == "GN" and conv_dims % 32:
            raise ValueError(
                f"semantic head conv_dims: GroupNorm(32) needs a multiple of 32, got {conv_dims}"
            )
        bad = [s for s in in_strides if s < common_stride or s & (s - 1)]
        if bad or common_stride & (common_stride - 1):
            raise ValueError(
                f"semantic head: strides {list(in_strides)} must be powers of two >= "
                f"common_stride {common_stride}"
            )
        self.level_names = [f"p{int(math.log2(s))}" for s in in_strides]
        for name, stride in zip(self.level_names, in_strides, strict=True):
            ops: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(common_stride)))):
                ops.append(ConvNormReLU(in_channels if k == 0 else conv_dims, conv_dims, norm=norm))
                if stride != common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*ops))
        self.predictor = nn.Conv2d(conv_dims, num_classes, kernel_size=1)
        c2_msra_fill(self.predictor)
        self.num_classes = num_classes
        self.common_stride = common_stride

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: one Tensor[N, in_channels, H/s, W/s] per level (P2 first) -> logits
        (Tensor[N, S + 1, H, W]), H/W = common_stride x the first level's size."""
        if len(features) != len(self.level_names):
            raise ValueError(
                f"semantic head: expected {len(self.level_names)} levels, got {len(features)}"
            )
        x = getattr(self, self.level_names[0])(features[0])
        for name, feature in zip(self.level_names[1:], features[1:], strict=True):
            x = x + getattr(self, name)(feature)
        x = self.predictor(x)
        return F.interpolate(
            x, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )


def semantic_seg_loss(
    logits: Tensor, targets: list[Tensor], *, ignore_value: int = 255, loss_weight: float = 0.5
) -> Tensor:
    """`loss_sem_seg`: cross-entropy (mean over non-ignored pixels) times `loss_weight`.

    Args:
        logits (Tensor[N, S + 1, H, W]): the head's logits at the padded input size.
        targets: per image an integer Tensor[h, w] at its resized unpadded size, values in
            0..S or `ignore_value`; the padding is filled with `ignore_value`.
    """
    n, num_classes, height, width = logits.shape
    if len(targets) != n:
        raise ValueError(f"sem_seg: expected {n} targets (one per image), got {len(targets)}")
    padded = torch.full((n, height, width), ignore_value, dtype=torch.int64, device=logits.device)
    for i, target in enumerate(targets):
        if target.dim() != 2 or target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(
                f"sem_seg of target {i}: expected an integer Tensor[h, w], got "
                f"{target.dtype} of shape {tuple(target.shape)}"
            )
        h, w = target.shape
        if h > height or w > width:
            raise ValueError(
                f"sem_seg of target {i} is {(h, w)}, larger than the padded input {(height, width)}"
            )
        padded[i, :h, :w] = target.to(device=logits.device, dtype=torch.int64)
    valid = padded[padded != ignore_value]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        raise ValueError(
            f"sem_seg: labels must be in [0, {num_classes}) or {ignore_value}, got "
            f"{int(valid.min())}..{int(valid.max())}"
        )
    if valid.numel() == 0:
        # Nothing labelled: a zero that keeps the head in the graph (backward / DDP work).
        return logits.float().sum() * 0
    loss = F.cross_entropy(logits.float(), padded, ignore_index=ignore_value)
    return loss * loss_weight


def semantic_at_original_size(
    logits: Tensor, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> Tensor:
    """One image's logits (Tensor[S + 1, H, W], padded input size) -> Tensor[S + 1, H0, W0]:
    cropped to the resized image (h, w), then bilinearly resized (align_corners=False) to the
    original size, as detectron2's `sem_seg_postprocess`."""
    h, w = image_size
    cropped = logits[None, :, :h, :w].float()
    return F.interpolate(cropped, size=tuple(orig_size), mode="bilinear", align_corners=False)[0]


def merge_panoptic(
    *,
    masks: Tensor,
    scores: Tensor,
    labels: Tensor,
    semantic: Tensor,
    score_threshold: float = 0.45,
    overlap_threshold: float = 0.4,
    stuff_area_limit: int = 4096,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Merge instance masks and a semantic label map into one panoptic map (the reference's
    `combine_semantic_and_instance_outputs`, docs/reference.md §6).

    1. Instances in decreasing score order (ties keep their input order); stop at the first
       score < `score_threshold`. An empty mask is skipped; an instance whose already-taken
       pixels are more than `overlap_threshold` of its mask is skipped; otherwise its free
       pixels become a new segment.
    2. Every stuff class (label >= 1 of `semantic`, in increasing order; 0, the "thing" class,
       never) whose still-free pixels number at least `stuff_area_limit` becomes a segment.

    Args:
        masks (bool Tensor[D, H0, W0]): pasted instance masks.
        scores (Tensor[D]): instance scores.
        labels (int Tensor[D]): 0-based thing labels.
        semantic (int Tensor[H0, W0]): the semantic argmax, 0 = thing, 1..S = stuff.

    Returns:
        segment_map (int32 Tensor[H0, W0]): 0 = void, segment ids 1, 2, ... in creation order.
        segments: per segment {"id", "isthing", "category" (0-based thing label or 1-based stuff
            class), "area" (its pixels in the map)} plus "score" for things.
    """
    if masks.dim() != 3 or masks.shape[1:] != semantic.shape:
        raise ValueError(
            f"merge_panoptic: masks {tuple(masks.shape)} do not match semantic "
            f"{tuple(semantic.shape)} (expected [D, H0, W0] and [H0, W0])"
        )
    if scores.shape != (masks.shape[0],) or labels.shape != (masks.shape[0],):
        raise ValueError(
            f"merge_panoptic: expected {masks.shape[0]} scores and labels, got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    segment_map = torch.zeros(semantic.shape, dtype=torch.int32, device=semantic.device)
    segments: list[dict[str, Any]] = []
    order = torch.sort(scores, descending=True, stable=True).indices
    for i in order.tolist():
        score = float(scores[i])
        if score < score_threshold:
            break
        mask = masks[i].to(device=semantic.device, dtype=torch.bool)
        area = int(mask.sum())
        if area == 0:
            continue
        taken = int((mask & (segment_map > 0)).sum())
        if taken / area > overlap_threshold:
            continue
        free = mask & (segment_map == 0)
        segment_id = len(segments) + 1
        segment_map[free] = segment_id
        segments.append(
            {"id": segment_id, "isthing": True, "category": int(labels[i]), "score": score,
             "area": int(free.sum())}
        )  # fmt: skip
    for stuff in torch.unique(semantic).tolist():
        if stuff == 0:  # the "thing" class of the semantic head is never a stuff segment
            continue
        free = (semantic == stuff) & (segment_map == 0)
        area = int(free.sum())
        if area < stuff_area_limit:
            continue
        segment_id = len(segments) + 1
        segment_map[free] = segment_id
        segments.append({"id": segment_id, "isthing": False, "category": int(stuff), "area": area})
    return segment_map, segments


def f1_score_threshold(
    scores: Tensor, matched: Tensor, num_gt: int, *, default: float = 0.45, keep: float = 0.9
) -> float:
    """The merge's `score_threshold` for a model, from its detections on training images: the
    reference's `default` while the F1 there is at least `keep` of the best F1 over all
    thresholds; else the threshold of the best F1 (below `default`: an undertrained model whose
    right detections all score under it would merge no things at all).

    Args:
        scores (Tensor[D]): the detections' scores, all images together.
        matched (bool Tensor[D]): whether each one matched a ground-truth instance (a true
            positive; each instance matched at most once).
        num_gt: ground-truth instances on those images.
    """
    if scores.shape != matched.shape:
        raise ValueError(
            f"f1_score_threshold: {tuple(scores.shape)} scores, {tuple(matched.shape)} flags"
        )
    if num_gt <= 0 or not bool(matched.any()):
        return default  # nothing to learn from
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    sorted_scores, hits = scores.double()[order], matched[order].to(torch.float64)
    tp = torch.cumsum(hits, 0)  # keeping the k + 1 highest scores
    f1 = 2 * tp / (torch.arange(1, len(hits) + 1, dtype=torch.float64) + num_gt)
    best = int(torch.argmax(f1))  # the first (highest threshold) of equal F1s
    kept_by_default = int((sorted_scores >= default).sum())
    f1_default = float(f1[kept_by_default - 1]) if kept_by_default else 0.0
    if f1_default >= keep * float(f1[best]):
        return default
    return min(default, float(sorted_scores[best]))


def panoptic_segmentation(
    detections: Detections,
    logits: Tensor,
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.45,
    overlap_threshold: float = 0.4,
    stuff_area_limit: int = 4096,
    stuff_names: tuple[str, ...] | None = None,
) -> PanopticSegmentation:
    """One image's panoptic result from its detections (at original size, masks pasted on
    access) and its semantic logits (Tensor[S + 1, H, W], padded input size; `image_size` is
    the resized (h, w) inside the padding): `semantic_at_original_size`, argmax, then
    `merge_panoptic` with the given thresholds."""
    orig_size = detections.image_size
    semantic = semantic_at_original_size(logits, image_size, orig_size).argmax(dim=0)
    semantic = semantic.to(detections.boxes.device)
    segment_map, segments = merge_panoptic(
        masks=detections.masks,
        scores=detections.scores,
        labels=detections.labels,
        semantic=semantic,
        score_threshold=score_threshold,
        overlap_threshold=overlap_threshold,
        stuff_area_limit=stuff_area_limit,
    )
    return PanopticSegmentation(
        segment_map=segment_map,
        segments=segments,
        semantic=semantic,
        detections=detections,
        stuff_names=stuff_names,
    )


def infer_panoptic(
    model: nn.Module,
    postprocessor: Callable[..., list[Detections]],
    batch: ImageBatch,
    orig_sizes: list[tuple[int, int]],
    *,
    finish: Callable[[Detections], Detections] = lambda d: d,
    score_threshold: float = 0.45,
    overlap_threshold: float = 0.4,
    stuff_area_limit: int = 4096,
    stuff_names: tuple[str, ...] = (),
) -> list[PanopticSegmentation]:
    """The panoptic inference step of a batch: network (with the same switches as
    `inference_step.infer`: sparse top layer, no auxiliary semantics) -> post-processor -> per
    image `finish` (the Predictor's score filter and names) on the CPU detections ->
    `panoptic_segmentation`."""
    outputs = model(batch.tensor, batch.image_sizes, dense_attentions=False, with_sem=False)
    if outputs.panoptic_logits is None:
        raise ValueError("infer_panoptic: the network has no semantic head (panoptic_module)")
    dets = postprocessor(outputs, batch.image_sizes, orig_sizes)
    return [
        panoptic_segmentation(
            finish(det.to("cpu")),
            logits.cpu(),
            size,
            score_threshold=score_threshold,
            overlap_threshold=overlap_threshold,
            stuff_area_limit=stuff_area_limit,
            stuff_names=stuff_names or None,
        )
        for det, logits, size in zip(dets, outputs.panoptic_logits, batch.image_sizes, strict=True)
    ]
