"""Training targets: FCOS assignment (FCOS Sec. 3.1-3.3 with centre sampling), mask targets
(BlendMask Sec. 3.3) and the auxiliary semantic targets (BlendMask Sec. 3.1, bottom module).

Facts in docs/reference.md §3.1 (assignment), §3.3 (mask targets), §3.4 (semantic targets).

Shapes: N images, L levels, P points over all levels (level-major, P3 first), G gt instances of
one image, C foreground classes, R mask target resolution, H/W padded input size, h/w an image's
resized (unpadded) size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import roi_align

# Upper bound of the last FPN level's size range (the reference's INF).
INF = 1e8


class FCOSTargets(NamedTuple):
    """Per-location targets of a batch.

    labels (Tensor[N, P]): int64 class in [0, C), C = background.
    reg_targets (Tensor[N, P, 4]): ltrb distances to the assigned gt box / the point's stride
        (computed for every location against its argmin gt; only positives are meaningful).
    ctr_targets (Tensor[N, P]): centerness target sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)),
        0 for negatives.
    gt_inds (Tensor[N, P]): int64 index into that image's gt list, -1 for background.
    """

    labels: Tensor
    reg_targets: Tensor
    ctr_targets: Tensor
    gt_inds: Tensor


def size_ranges(sizes_of_interest: Sequence[int], num_levels: int) -> list[tuple[float, float]]:
    """[-1, s0], [s0, s1], ..., [s_last, INF]: one (inclusive) range of max(l, t, r, b) per level."""
    if len(sizes_of_interest) + 1 != num_levels:
        raise ValueError(
            f"expected {num_levels - 1} sizes_of_interest for {num_levels} FPN levels, "
            f"got {list(sizes_of_interest)}"
        )
    bounds = [-1.0, *(float(s) for s in sizes_of_interest), INF]
    return list(zip(bounds[:-1], bounds[1:]))


def _check_points(points: Tensor, strides: Tensor, num_points_per_level: Sequence[int]) -> None:
    if points.dim() != 2 or points.shape[-1] != 2:
        raise ValueError(f"expected points of shape [P, 2], got {tuple(points.shape)}")
    num_points = points.shape[0]
    if sum(num_points_per_level) != num_points or strides.shape != (num_points,):
        raise ValueError(
            f"expected num_points_per_level summing to P = {num_points} and strides of shape "
            f"[{num_points}], got {list(num_points_per_level)} and {tuple(strides.shape)}"
        )


def _check_gt(boxes: Tensor, labels: Tensor, index: int, num_classes: int) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"expected gt boxes of shape [G, 4] in image {index}, got {tuple(boxes.shape)}"
        )
    if labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"expected gt labels of shape [{boxes.shape[0]}] in image {index}, got {tuple(labels.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"expected gt labels in [0, {num_classes}) in image {index}, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def assign_fcos_targets(
    points: Tensor,
    strides: Tensor,
    num_points_per_level: Sequence[int],
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    *,
    sizes_of_interest: list[int],
    num_classes: int,
    center_sample: bool = True,
    pos_radius: float = 1.5,
) -> FCOSTargets:
    """Assign every location to at most one gt box (docs/reference.md §3.1).

    A location is positive for a gt when
    - with centre sampling, it lies strictly inside the gt's box centre +- pos_radius * stride,
      clipped to the gt box (without, strictly inside the gt box), and
    - max(l, t, r, b) to the full box is inside its level's size range (both bounds inclusive).
    Among several such gts the smallest box area wins (ties: the first gt).

    Not reproduced: the reference marks every location negative when the centre-x of the
    image's first gt is exactly 0 (`center_x[..., 0].sum() == 0` meant "no gt"); that is a bug.

    Args:
        points (Tensor[P, 2]): (x, y) in input pixels.
        strides (Tensor[P]): stride of each point's level.
        num_points_per_level: P_l, summing to P.
        gt_boxes (list[Tensor[G_i, 4]]): xyxy in input pixels, per image.
        gt_labels (list[Tensor[G_i]]): int64 in [0, C), per image.
        sizes_of_interest: L - 1 level boundaries (e.g. [64, 128, 256, 512]).
        num_classes: C (foreground classes); also the background label.
        center_sample: use centre sampling.
        pos_radius: centre-sampling radius in strides.

    Returns:
        FCOSTargets for the N = len(gt_boxes) images.
    """
    _check_points(points, strides, num_points_per_level)
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"got {len(gt_boxes)} gt box lists but {len(gt_labels)} label lists")
    num_points = points.shape[0]
    device = points.device
    points = points.float()
    strides = strides.to(device=device, dtype=torch.float32)
    ranges = torch.tensor(size_ranges(sizes_of_interest, len(num_points_per_level)), device=device)
    # (P, 2) lower / upper size bound of each location's level
    level_of_point = torch.repeat_interleave(
        torch.arange(len(num_points_per_level), device=device),
        torch.as_tensor(list(num_points_per_level), device=device),
    )
    point_ranges = ranges[level_of_point]

    per_image = []
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        _check_gt(boxes, labels, i, num_classes)
        per_image.append(
            _assign_image(
                points,
                strides,
                point_ranges,
                boxes.to(device=device, dtype=torch.float32),
                labels.to(device=device, dtype=torch.int64),
                num_classes=num_classes,
                center_sample=center_sample,
                pos_radius=pos_radius,
            )
        )
    if not per_image:
        return FCOSTargets(
            labels=torch.zeros((0, num_points), dtype=torch.int64, device=device),
            reg_targets=torch.zeros((0, num_points, 4), device=device),
            ctr_targets=torch.zeros((0, num_points), device=device),
            gt_inds=torch.zeros((0, num_points), dtype=torch.int64, device=device),
        )
    # per image (labels, reg, ctr, inds) -> each field stacked over N
    return FCOSTargets(*(torch.stack(field) for field in zip(*per_image)))


def _assign_image(
    points: Tensor,
    strides: Tensor,
    point_ranges: Tensor,
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    center_sample: bool,
    pos_radius: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`FCOSTargets` fields (labels, reg_targets, ctr_targets, gt_inds) of one image, each
    without the N axis: Tensor[P], Tensor[P, 4], Tensor[P], Tensor[P]."""
    num_points, device = points.shape[0], points.device
    if boxes.shape[0] == 0:
        return (
            torch.full((num_points,), num_classes, dtype=torch.int64, device=device),
            points.new_zeros((num_points, 4)),
            points.new_zeros((num_points,)),
            torch.full((num_points,), -1, dtype=torch.int64, device=device),
        )
    positive, inds, reg = _match_locations(
        points, strides, point_ranges, boxes, center_sample, pos_radius
    )
    lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
    ctr = torch.sqrt(
        (lr.min(dim=1).values / lr.max(dim=1).values).clamp(min=0)
        * (tb.min(dim=1).values / tb.max(dim=1).values).clamp(min=0)
    )
    return (
        torch.where(positive, labels[inds], num_classes),
        reg,
        torch.where(positive, ctr, torch.zeros_like(ctr)),
        torch.where(positive, inds, -1),
    )


def _match_locations(
    points: Tensor,
    strides: Tensor,
    point_ranges: Tensor,
    boxes: Tensor,
    center_sample: bool,
    pos_radius: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gt box of every location of one image (rules in `assign_fcos_targets`).

    Args:
        points (Tensor[P, 2]), strides (Tensor[P]): float, input pixels.
        point_ranges (Tensor[P, 2]): size range of each location's level.
        boxes (Tensor[G, 4]): float xyxy, G >= 1.

    Returns:
        positive (Tensor[P]): bool; inds (Tensor[P]): int64 chosen gt (argmin area, meaningful
        where positive); reg (Tensor[P, 4]): ltrb to that gt in units of the stride.
    """
    num_points = points.shape[0]
    xs, ys = points[:, 0], points[:, 1]
    # (P, G, 4) ltrb from every location to every full gt box, input pixels
    reg = torch.stack(
        [
            xs[:, None] - boxes[None, :, 0],
            ys[:, None] - boxes[None, :, 1],
            boxes[None, :, 2] - xs[:, None],
            boxes[None, :, 3] - ys[:, None],
        ],
        dim=2,
    )
    if center_sample:
        # Box centre +- radius * stride, clipped to the box (never the mask centroid).
        cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
        cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
        radius = strides[:, None] * pos_radius  # (P, 1)
        sub_x0 = torch.maximum(cx[None] - radius, boxes[None, :, 0])
        sub_y0 = torch.maximum(cy[None] - radius, boxes[None, :, 1])
        sub_x1 = torch.minimum(cx[None] + radius, boxes[None, :, 2])
        sub_y1 = torch.minimum(cy[None] + radius, boxes[None, :, 3])
        sub = torch.stack(
            [
                xs[:, None] - sub_x0,
                ys[:, None] - sub_y0,
                sub_x1 - xs[:, None],
                sub_y1 - ys[:, None],
            ],
            dim=2,
        )
        in_region = sub.min(dim=2).values > 0
    else:
        in_region = reg.min(dim=2).values > 0
    max_reg = reg.max(dim=2).values
    in_level = (max_reg >= point_ranges[:, :1]) & (max_reg <= point_ranges[:, 1:])

    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # (P, G) area of each admissible gt, inf elsewhere; argmin takes the first on ties.
    cand_area = torch.where(in_region & in_level, area[None].expand(num_points, -1), torch.inf)
    min_area, inds = cand_area.min(dim=1)
    reg = reg[torch.arange(num_points, device=points.device), inds] / strides[:, None]
    return torch.isfinite(min_area), inds, reg


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, resolution: int) -> Tensor:
    """Binary mask targets of each gt inside its own box, R x R (docs/reference.md §3.3).

    The reference rasterises polygons inside the box at R x R; we start from bitmaps, so, like
    torchvision's `project_masks_on_boxes`, the float mask is RoIAligned with the box
    (aligned=True so bin centres land on the rasterisation's pixel centres; adaptive sampling
    averages each bin) and binarised with `>= 0.5`.

    Args:
        gt_masks (Tensor[G, h, w]): uint8 / bool / float masks of one image.
        boxes (Tensor[G, 4]): xyxy in the masks' pixels.
        resolution: R.

    Returns:
        Tensor[G, R, R]: float 0/1.
    """
    if gt_masks.dim() != 3 or boxes.shape != (gt_masks.shape[0], 4):
        raise ValueError(
            f"expected masks [G, h, w] and boxes [G, 4] with the same G, "
            f"got {tuple(gt_masks.shape)} and {tuple(boxes.shape)}"
        )
    num = gt_masks.shape[0]
    if num == 0:
        return gt_masks.new_zeros((0, resolution, resolution), dtype=torch.float32)
    masks = gt_masks.to(torch.float32)[:, None]
    index = torch.arange(num, device=masks.device, dtype=torch.float32)[:, None]
    rois = torch.cat([index, boxes.to(device=masks.device, dtype=torch.float32)], dim=1)
    projected = roi_align(masks, rois, output_size=resolution, spatial_scale=1.0, aligned=True)
    return (projected[:, 0] >= 0.5).to(torch.float32)


def compute_semantic_targets(
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    padded_size: tuple[int, int],
    common_stride: int,
) -> Tensor:
    """Thing-class semantic map for the auxiliary basis loss, at 1 / common_stride
    (docs/reference.md §3.4).

    The reference reads maps pre-generated by `prepare_thing_sem_from_instance.py`: 0 is
    background, class c is c + 1, later annotations overwrite earlier ones; padding is
    background. It then downsamples with `F.interpolate(scale_factor=1/stride)` (nearest), i.e.
    takes the top-left pixel of every stride x stride cell. We paint the same labels in the
    same order on the fly from the training targets' instance masks, sampled at those pixels
    only. The map differs from the reference's in two ways:

    - Only the instances in the targets are painted. The dataset excludes crowd annotations
      and zero-size boxes and drops instances the transforms empty; the reference paints every
      annotation. Crowd regions are background here unless another instance covers them.
    - Resizing: the reference resizes the painted label map with the image (nearest
      neighbour, detectron2's `apply_segmentation`); our masks are resized one instance at a
      time (bilinear, then `>= 0.5`, `data.transforms.resize_masks`) and painted afterwards,
      so boundaries can move by about one resized pixel and overlaps are resolved after
      resizing instead of before.

    Args:
        gt_masks (list[Tensor[G_i, h_i, w_i]]): per image, at its resized unpadded size.
        gt_labels (list[Tensor[G_i]]): int64 in [0, C).
        padded_size: (H, W) of the padded batch.
        common_stride: the semantic logits' stride (8).

    Returns:
        Tensor[N, H // stride, W // stride]: int64 in [0, C].
    """
    height, width = padded_size
    out_h, out_w = height // common_stride, width // common_stride
    device = gt_labels[0].device if gt_labels else torch.device("cpu")
    out = torch.zeros((len(gt_masks), out_h, out_w), dtype=torch.int64, device=device)
    for i, (masks, labels) in enumerate(zip(gt_masks, gt_labels)):
        if masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected masks [G, h, w] with G = {labels.shape[0]} in image {i}, "
                f"got {tuple(masks.shape)}"
            )
        if masks.shape[1] > height or masks.shape[2] > width:
            raise ValueError(
                f"masks of image {i} are {tuple(masks.shape[1:])}, larger than the padded "
                f"size {tuple(padded_size)}"
            )
        if masks.shape[0] == 0:
            continue
        # Top-left pixel of every cell: what nearest downsampling by 1/stride reads.
        sub = masks[:, ::common_stride, ::common_stride][:, :out_h, :out_w].to(device) > 0
        num = sub.shape[0]
        # Later annotations overwrite earlier ones: take the highest covering index.
        order = torch.arange(1, num + 1, device=device)[:, None, None]
        last = (sub * order).amax(dim=0)  # 0 = no instance, else gt index + 1
        painted = torch.where(last > 0, labels.to(device)[(last - 1).clamp(min=0)] + 1, 0)
        out[i, : sub.shape[1], : sub.shape[2]] = painted
    return out
