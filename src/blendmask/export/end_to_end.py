"""The whole inference pipeline as one traceable module, for the end-to-end ONNX and TorchScript
exports: the network, then the post-processor's steps (docs/reference.md §4, §1.8, §1.9) on
fixed-size, batched tensors instead of per-image Python lists.

    inputs   images       float32 [N, 3, H, W]  RGB in [0, 1], zero padded at the bottom/right,
                                                H and W multiples of 32
             image_sizes  int64   [N, 2]        (h, w) of each image inside the padding
             orig_sizes   int64   [N, 2]        (H0, W0) to report boxes and paste masks at
                                                (= image_sizes when the caller did not resize)
    outputs  boxes        float32 [N, D, 4]     xyxy in original pixels, clipped
             scores       float32 [N, D]        sqrt(cls * ctr), decreasing
             labels       int64   [N, D]        0-based class
             mask_probs   float32 [N, D, R, R]  blended probabilities inside each box
             num_detections int64 [N]           valid rows of image n: the first num[n]
             masks        bool    [N, D, H0, W0] (optional) pasted, binarised masks

D is dynamic: the largest detection count of the batch (rows past an image's count are zero).
Inside: normalisation and network (`BlendMask.forward`, sparse top layer), candidate selection
(threshold, per-level top-k), box decoding, class-aware NMS (`nms.class_aware_nms`: ONNX
`NonMaxSuppression`), the top layer at the kept locations, the blender (`modeling/blender.py`:
RoIAlign, attention resize, softmax over K, blend), rescaling and clipping to the original
size, and pasting (`structures/paste.py`'s separable bilinear weights as two matmuls over the
whole image). Box decoding, the top layer at kept locations, rescaling and the empty-box test
are the post-processor's own functions (`postprocess.decode_boxes`, `attentions_at`,
`rescale_boxes`, `nonempty_boxes`): on the same network outputs both give the same bits.

Where it differs from `BlendMaskPostProcessor` (same detections otherwise, up to float
rounding): ties in score at the per-level top-k, NMS or top-D cut are broken by lowest slot
index (the post-processor's kthvalue cut keeps every detection tied with the D-th score);
NMS runs on the boxes as they are (`batched_nms`'s CPU path for fewer than 1000 boxes
offsets them by class, which rounds coordinates slightly differently). Mask rescoring
(`model.blender.mask_score_power`) is in the graph; flip test-time augmentation
(`data.test_flip`, `test_vflip`) is not: the graph predicts as with both false.

Shapes: N images, P points, C classes, L levels, Q = L x pre_nms_topk candidate slots, K bases,
M attention size, R mask resolution, C_t top-layer input channels, Hl/Wl level size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendmask.export.nms import INVALID_SCORE, class_aware_nms
from blendmask.modeling.blender import merge_bases, pool_rois
from blendmask.modeling.postprocess import (
    BlendMaskPostProcessor,
    attentions_at,
    decode_boxes,
    nonempty_boxes,
    rescale_boxes,
)
from blendmask.modeling.test_time import rescore_by_mask
from blendmask.structures import BlenderSpec
from blendmask.structures.paste import _PASTE_EPS, _bilinear_weights

INPUT_NAMES = ("images", "image_sizes", "orig_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "mask_probs", "num_detections")
MASKS_OUTPUT = "masks"


def select_candidates(
    cls_logits: Tensor,
    ctrness: Tensor,
    counts: tuple,
    *,
    score_thresh: float,
    topk: int,
    thresh_with_ctr: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Threshold and per-level top-k of (location, class) pairs (docs/reference.md §4, 1-2).

    Each level keeps its `topk` best candidates by cls * ctr in `topk` slots (a level with
    fewer fills the rest with invalid slots), ties by lowest (location, class) index, as
    `top_k_per_group`.

    Args:
        cls_logits (Tensor[N, P, C]), ctrness (Tensor[N, P]): the network's logits.
        counts: points per level (ints, or traced sizes).

    Returns:
        point (Tensor[N, Q]) int64 index in P, label (Tensor[N, Q]) int64, score
        (Tensor[N, Q]) sqrt(cls * ctr) or INVALID_SCORE, valid (Tensor[N, Q]) bool.
    """
    num_classes = cls_logits.shape[2]
    cls = cls_logits.float().sigmoid()
    cls_ctr = cls * ctrness.float().sigmoid()[..., None]
    candidate = (cls_ctr if thresh_with_ctr else cls) > score_thresh
    # cls * ctr >= 0, so the invalid score ranks below every candidate.
    ranked = torch.where(candidate, cls_ctr, torch.full_like(cls_ctr, INVALID_SCORE))
    points, labels, values = [], [], []
    start = 0
    for count in counts:
        flat = ranked[:, start : start + count].flatten(1)  # (N, Pl*C), location-major
        # `topk` padding slots: a level with fewer than `topk` pairs still fills `topk` slots.
        flat = F.pad(flat, (0, topk), value=INVALID_SCORE)
        value, index = flat.topk(topk, dim=1)
        # Padding slots wrap back into the level: a readable location, marked invalid.
        index = index % (count * num_classes)
        points.append(start + index // num_classes)
        labels.append(index % num_classes)
        values.append(value)
        start = start + count
    point, label, value = (torch.cat(x, dim=1) for x in (points, labels, values))
    valid = value > INVALID_SCORE / 2
    score = torch.where(valid, value.clamp(min=0).sqrt(), torch.full_like(value, INVALID_SCORE))
    return point, label, score, valid


def blend(bases: Tensor, boxes: Tensor, attentions: Tensor, spec: BlenderSpec) -> Tensor:
    """R x R mask probabilities (Eq. 1-4) with `pool_rois` and `merge_bases`.

    bases (Tensor[N, K, Hb, Wb]), boxes (Tensor[N, D, 4]) unclipped input pixels, attentions
    (Tensor[N, D, K*M*M]) -> Tensor[N, D, R, R].
    """
    n, d = boxes.shape[0], boxes.shape[1]
    bases = bases.float()
    image = torch.arange(n, device=boxes.device, dtype=bases.dtype)[:, None, None]
    # (N, D, 5) -> (N*D, 5) rois: image index, then the box
    rois = torch.cat([image.expand(-1, d, 1), boxes.to(bases.dtype)], dim=2).flatten(0, 1)
    pooled = pool_rois(bases, rois, spec)
    logits = merge_bases(pooled, attentions.flatten(0, 1).float(), spec)
    r = spec.resolution
    return logits.sigmoid().reshape(n, -1, r, r)


def first_valid(valid: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Move each image's valid rows to the front (keeping their order), cut every tensor to
    the largest valid count and zero the rows past each image's count.

    valid (Tensor[N, D]) bool; tensors (Tensor[N, D, ...]) -> (num Tensor[N] int64, then each
    tensor as Tensor[N, D', ...]) with D' = max(max(num), 1): at least one (zero) row, because
    onnxruntime's Reshape refuses a -1 next to a zero-size axis; `forward` cuts the outputs
    to max(num) at the end.
    """
    d = valid.shape[1]
    position = torch.arange(d, device=valid.device)[None].expand_as(valid).float()
    # Distinct keys: valid rows first, each group in its original order.
    order = torch.where(valid, -position, -position - d - 1).argsort(dim=1, descending=True)
    num = valid.sum(dim=1)
    keep = torch.arange(num.max().clamp(min=1), device=valid.device)
    order = order[:, keep]
    row_valid = keep[None, :] < num[:, None]  # (N, D')
    out = []
    for t in tensors:
        index = order.reshape(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        t = t.gather(1, index)
        mask = row_valid.reshape(*row_valid.shape, *([1] * (t.dim() - 2)))
        out.append(torch.where(mask, t, torch.zeros_like(t)))
    return (num, *out)


def paste_in_images(
    mask_probs: Tensor, boxes: Tensor, orig_sizes: Tensor, threshold: float
) -> Tensor:
    """`paste_masks` over whole images, batched: each pixel centre sampled bilinearly in its
    box (`paste._bilinear_weights`, the maths of `grid_sample(align_corners=False)`) as
    wy @ mask @ wx^T, binarised at `>= threshold - 1e-6` (see `paste_masks`).

    `paste_masks` only samples a window around each box; outside it the bilinear weight of the
    mask's edge is below 0.5, so with threshold >= 0.5 both give the same pixels.

    mask_probs (Tensor[N, D, R, R]), boxes (Tensor[N, D, 4]) clipped original pixels,
    orig_sizes (Tensor[N, 2]) -> Tensor[N, D, max H0, max W0] bool (False outside an image).
    """
    n, d, r = mask_probs.shape[0], mask_probs.shape[1], mask_probs.shape[-1]
    device = mask_probs.device
    height, width = orig_sizes[:, 0].max(), orig_sizes[:, 1].max()
    ys = torch.arange(height, device=device, dtype=torch.float32)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    x0, y0, x1, y1 = boxes.float().flatten(0, 1).unbind(1)
    # (N*D, W) and (N*D, H) normalised pixel-centre coordinates, as `paste._binary_windows`
    gx = (xs + 0.5 - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1
    gy = (ys + 0.5 - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1
    wx = _bilinear_weights(gx, r)  # (N*D, W, R)
    wy = _bilinear_weights(gy, r)  # (N*D, H, R)
    right = torch.bmm(mask_probs.float().flatten(0, 1), wx.transpose(1, 2))  # (N*D, R, W)
    masks = torch.bmm(wy, right) >= threshold - _PASTE_EPS  # (N*D, H, W)
    masks = masks.reshape(n, d, masks.shape[1], masks.shape[2])
    # Pixels past an image's own size (a batch of different sizes) are background.
    inside = (ys[None, :, None] < orig_sizes[:, 0, None, None].float()) & (
        xs[None, None, :] < orig_sizes[:, 1, None, None].float()
    )
    return masks & inside[:, None]


class EndToEndBlendMask(nn.Module):
    """Network + post-processing with tensors in and out (see the module docstring).

    Args:
        model: a `BlendMask` network in eval mode (an `optimize_for_inference` copy is fine).
        postprocessor: its `BlendMaskPostProcessor`; its thresholds, top-k sizes, blender
            settings and mask threshold are copied and fixed in the graph.
        paste: also output the pasted `masks` (D x H0 x W0 booleans per image).
    """

    def __init__(
        self, model: nn.Module, postprocessor: BlendMaskPostProcessor, *, paste: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(postprocessor.num_classes)
        self.score_thresh = float(postprocessor.score_thresh)
        self.pre_nms_topk = int(postprocessor.pre_nms_topk)
        self.nms_thresh = float(postprocessor.nms_thresh)
        self.post_nms_topk = int(postprocessor.post_nms_topk)
        self.thresh_with_ctr = bool(postprocessor.thresh_with_ctr)
        self.spec = postprocessor.blender
        self.mask_threshold = float(postprocessor.mask_threshold)
        self.mask_score_power = float(postprocessor.mask_score_power)
        self.paste = paste
        if self.pre_nms_topk < 1:
            raise ValueError(f"pre_nms_topk: expected >= 1 for export, got {self.pre_nms_topk}")

    @staticmethod
    def attentions(bbox_towers: tuple[Tensor, ...], top_layer: tuple, point: Tensor) -> Tensor:
        """`attentions_at` for every image's rows: point (Tensor[N, D]) -> Tensor[N, D,
        K*M*M]."""
        weight, bias = top_layer
        n, d = point.shape[0], point.shape[1]
        image = torch.arange(n, device=point.device)[:, None].expand(n, d)
        feats = attentions_at(bbox_towers, weight, bias, image.flatten(), point.flatten())
        return feats.reshape(n, d, weight.shape[0])

    def rescored(
        self, rows: Tensor, boxes: Tensor, score: Tensor, slot: Tensor, mask_probs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The post-processor's mask rescoring (`test_time.rescored`) on (N, D) rows, sorted
        again by the new scores; the invalid rows stay last."""
        score = rescore_by_mask(score, mask_probs, self.mask_threshold, self.mask_score_power)
        ranked = torch.where(rows, score, torch.full_like(score, INVALID_SCORE))
        order = ranked.argsort(dim=1, descending=True)
        return (
            boxes.gather(1, order[..., None].expand_as(boxes)),
            score.gather(1, order),
            slot.gather(1, order),
            mask_probs.gather(1, order[..., None, None].expand_as(mask_probs)),
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES + ((MASKS_OUTPUT,) if self.paste else ())

    def forward(self, images: Tensor, image_sizes: Tensor, orig_sizes: Tensor) -> tuple:
        """See the module docstring; returns the tensors of `self.output_names`, in order."""
        out = self.model(images, image_sizes, dense_attentions=False, with_sem=False)
        point, label, score, valid = select_candidates(
            out.cls_logits,
            out.ctrness,
            out.num_points_per_level,
            score_thresh=self.score_thresh,
            topk=self.pre_nms_topk,
            thresh_with_ctr=self.thresh_with_ctr,
        )
        boxes = decode_boxes(out.bbox_reg, out.points, out.strides, point)
        keep = class_aware_nms(
            boxes, score, label, valid, iou_threshold=self.nms_thresh, num_classes=self.num_classes
        )
        # Top D by score over the kept slots (D <= 0: all of them), decreasing.
        num_slots = point.shape[1]
        ranked = torch.where(keep, score, torch.full_like(score, INVALID_SCORE))
        top = self.post_nms_topk if self.post_nms_topk > 0 else num_slots
        ranked = F.pad(ranked, (0, top), value=INVALID_SCORE)  # at least `top` slots
        top_score, slot = ranked.topk(top, dim=1)
        slot = slot % num_slots  # padding slots wrap around; they are invalid
        num, slot, top_score = first_valid(top_score > INVALID_SCORE / 2, slot, top_score)
        rows = torch.arange(slot.shape[1], device=slot.device)[None] < num[:, None]
        boxes = boxes.gather(1, slot[..., None].expand(-1, -1, 4))
        attentions = self.attentions(out.bbox_towers, out.top_layer_params, point.gather(1, slot))
        mask_probs = blend(out.bases, boxes, attentions, self.spec)
        if self.mask_score_power > 0:
            boxes, top_score, slot, mask_probs = self.rescored(
                rows, boxes, top_score, slot, mask_probs
            )
        # Blended on the unclipped boxes, then rescaled, clipped and emptied ones dropped:
        # the post-processor's order and functions (docs/reference.md §1.9).
        boxes = rescale_boxes(boxes, image_sizes, orig_sizes)
        nonempty = rows & nonempty_boxes(boxes)
        num, boxes, top_score, label, mask_probs = first_valid(
            nonempty, boxes, top_score, label.gather(1, slot), mask_probs
        )
        outputs = [boxes, top_score, label, mask_probs]
        if self.paste:
            outputs.append(paste_in_images(mask_probs, boxes, orig_sizes, self.mask_threshold))
        # Cut the zero row `first_valid` keeps when no image has a detection.
        rows = torch.arange(num.max(), device=num.device)
        outputs = [t.index_select(1, rows) for t in outputs]
        return (*outputs[:4], num, *outputs[4:])
