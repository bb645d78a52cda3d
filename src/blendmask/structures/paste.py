"""Pasting the blender's R x R mask probabilities into the image (docs/reference.md §1.9).

After the blender (blender.py, BlendMask Sec. 3.2) each detection has an R x R mask in its own
box; `paste_masks` resamples it at the image's pixel centres inside the (clipped) box and
binarises it, as detectron2's `paste_masks_in_image` does. How the result can differ from
detectron2's is listed in `paste_masks`.

How it is computed: bilinear sampling with zero padding is separable, so each mask is
resampled with two batched matmuls, only inside a window around its own box, for all
detections at once (a few chunks of similar-size boxes at most). Only the write of each
finished window into its slice of the (D, H, W) output is per detection: a slice copy,
cheaper than a scatter of every window pixel. On a CPU this is ~20x faster than `grid_sample`
over the image.

`paste_mask_windows` yields those binary windows one detection at a time without the
(D, H, W) output, and `Detections.mask_windows` does so for any `Detections`: predict, eval and
the overlays read masks this way, so their memory is bounded by the image, not D x the image.

The one implementation: the post-processor, `Detections` (`.masks`, `.mask_windows`), predict,
eval, the overlays and the ONNX graph (`export/end_to_end.py`, its weights) all paste with it.
It sits with the structures, below them all, and knows nothing of `Detections`.

Shapes: D detections, R mask resolution, H/W output image size, h/w a box's pixel window.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

# (detection index d, window left x, window top y, bool Tensor[h, w]): the detection's mask on
# the image pixels [y, y + h) x [x, x + w); pixels outside the window are background.
MaskWindow = tuple[int, int, int, Tensor]

# Window pixels per chunk of detections: bounds the chunk's (Dc, h, w) float32 windows at
# 4 B x 2**24 = 64 MiB, whatever the number of detections.
_PASTE_MAX_GRID_POINTS = 2**24
# Float32 rounding of the separable interpolation in `paste_masks` (measured <= 2e-7).
_PASTE_EPS = 1e-6


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> Tensor:
    """Paste R x R mask probabilities into the image and binarise (docs/reference.md §1.9).

    The maths of detectron2's `paste_masks_in_image`: the centre (x + 0.5, y + 0.5) of every
    image pixel is normalised into its box as 2 * (c - x0) / (x1 - x0) - 1 and the mask is
    sampled there bilinearly (`grid_sample(align_corners=False)`, zero outside). Where the
    result can differ from detectron2's:

    - Binarisation is `>= threshold - 1e-6`, not `>= threshold`: a probability less than 1e-6
      below the threshold is foreground here and background in detectron2. The sampling below
      sums in another order than `grid_sample` and can land ~2e-7 under an exact-threshold
      value; such plateaus are common (a box outside the bases pools zeros, sigmoid(0) = 0.5)
      and detectron2's `>=` keeps them in, so the tolerance keeps them in too.
    - Sampled values differ from `grid_sample`'s by float rounding (measured <= 2e-7).
    - Pixels further than one pixel outside the box (x < floor(x0) - 1 or x >= ceil(x1) + 1,
      likewise y) may stay background unsampled, as in detectron2's CPU path
      (`skip_empty=True`); its GPU path samples the whole image. There the bilinear weight of
      the mask's edge is below 0.5 - 1.5 R / box size, so with probabilities <= 1 and
      `threshold >= 0.5` nothing changes; a lower threshold can miss pixels there that
      detectron2's GPU path would set.

    Args:
        masks (Tensor[D, R, R]): probabilities in [0, 1].
        boxes (Tensor[D, 4]): xyxy in output pixels (already clipped by the caller, as the
            reference does).
        image_size: (H, W) of the output.
        threshold: binarisation threshold (`>=`).

    Returns:
        Tensor[D, H, W]: bool.
    """
    height, width = int(image_size[0]), int(image_size[1])
    out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=masks.device)
    for d, x, y, window in paste_mask_windows(masks, boxes, image_size, threshold):
        out[d, y : y + window.shape[0], x : x + window.shape[1]] = window
    return out


def paste_mask_windows(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> Iterator[MaskWindow]:
    """`paste_masks` one detection at a time: (d, x, y, bool window[h, w]) per detection, in
    no particular order, the same pixels `paste_masks(...)[d]` sets (all outside the window
    are background). Windows lie inside the image and are at most H x W; the float work is
    bounded by `_PASTE_MAX_GRID_POINTS`, so memory stays O(H x W) whatever D.

    Args: as `paste_masks`. A window may be a view of a buffer reused for the next ones:
    consume it (or copy it) before advancing the iterator.
    """
    if masks.dim() != 3:
        raise ValueError(f"expected masks of shape [D, R, R], got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected boxes of shape [{masks.shape[0]}, 4], got {tuple(boxes.shape)}")
    height, width = int(image_size[0]), int(image_size[1])
    if masks.shape[0] == 0 or height == 0 or width == 0:
        return
    masks = masks.float()
    boxes = boxes.float()
    # Window of each box with a one-pixel margin (detectron2's skip_empty), capped to the
    # image; grouping boxes of similar size keeps the padded windows of a chunk tight.
    lo = torch.floor(boxes[:, :2]) - 1
    hi = torch.ceil(boxes[:, 2:]) + 1
    extent = (hi - lo).clamp(min=1)
    extent = torch.minimum(extent, torch.tensor([width, height], device=extent.device))
    order = torch.argsort(extent[:, 0] * extent[:, 1])
    extent_cpu = extent[order].long().cpu()
    for start, stop in _chunks(extent_cpu):
        idx = order[start:stop]
        w_max, h_max = extent_cpu[start:stop].max(dim=0).values.tolist()
        # Window origins, shifted so that every window lies inside the image.
        x_start = lo[idx, 0].clamp(min=0, max=width - w_max)
        y_start = lo[idx, 1].clamp(min=0, max=height - h_max)
        windows = _binary_windows(
            masks[idx], boxes[idx], x_start, y_start, (h_max, w_max), threshold
        )
        # One host sync per chunk for the window origins.
        yield from zip(
            idx.tolist(), x_start.long().tolist(), y_start.long().tolist(), windows.unbind(0)
        )


def paste_mask_probabilities(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The soft masks `paste_masks` binarises: the same bilinear samples, not thresholded.

    Each detection's probabilities are sampled at the pixel centres of its box plus a
    one-pixel margin (inside the image), the pixels `paste_masks` always samples; the rest are
    0. With `threshold >= 0.5`, `>= threshold` of the result is `paste_masks(..., threshold)`
    up to float rounding (`paste_masks` also keeps values within 1e-6 below the threshold).
    Costs 4 x D x H x W bytes.

    Args:
        masks (Tensor[D, R, R]): probabilities in [0, 1].
        boxes (Tensor[D, 4]): xyxy in output pixels (clipped by the caller).
        image_size: (H, W) of the output.

    Returns:
        Tensor[D, H, W]: float32 in [0, 1].
    """
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(
            f"expected masks [D, R, R] and boxes [D, 4], got {tuple(masks.shape)} and "
            f"{tuple(boxes.shape)}"
        )
    height, width = int(image_size[0]), int(image_size[1])
    out = torch.zeros((masks.shape[0], height, width), device=masks.device)
    if masks.shape[0] == 0 or height == 0 or width == 0:
        return out
    masks, boxes = masks.float(), boxes.float()
    # One detection at a time: the output already holds D x H x W floats, so per-detection
    # windows add at most one more H x W.
    for d in range(masks.shape[0]):
        lo = (torch.floor(boxes[d, :2]) - 1).clamp(min=0)
        hi = torch.minimum(
            torch.ceil(boxes[d, 2:]) + 1, torch.tensor([width, height], device=boxes.device)
        )
        x0, y0 = (int(v) for v in lo.tolist())
        w, h = (max(1, int(v)) for v in (hi - lo).tolist())
        x0, y0 = min(x0, width - w), min(y0, height - h)
        xs = torch.arange(x0, x0 + w, device=masks.device, dtype=torch.float32)
        ys = torch.arange(y0, y0 + h, device=masks.device, dtype=torch.float32)
        bx0, by0, bx1, by1 = boxes[d].tolist()
        gx = (xs + 0.5 - bx0) / max(bx1 - bx0, 1e-6) * 2 - 1
        gy = (ys + 0.5 - by0) / max(by1 - by0, 1e-6) * 2 - 1
        wx = _bilinear_weights(gx[None], masks.shape[2])[0]  # (w, R)
        wy = _bilinear_weights(gy[None], masks.shape[1])[0]  # (h, R)
        out[d, y0 : y0 + h, x0 : x0 + w] = wy @ masks[d] @ wx.t()
    return out


def _bilinear_weights(coords: Tensor, size: int) -> Tensor:
    """Interpolation matrix of `F.grid_sample(mode="bilinear", align_corners=False,
    padding_mode="zeros")` along one axis.

    Args:
        coords (Tensor[D, n]): normalised sample coordinates in [-1, 1] (outside reads 0).
        size: length of the sampled axis (R).

    Returns:
        Tensor[D, n, size]: the weights of each sample's two neighbouring taps.
    """
    # align_corners=False: -1 and 1 are the outer edges of the first and last pixel.
    src = ((coords + 1) * size - 1) / 2
    taps = torch.arange(size, device=coords.device, dtype=coords.dtype)
    # The bilinear "hat" max(0, 1 - |k - src|); taps outside [0, size) do not exist, which is
    # the zero padding.
    return (1 - (taps - src[..., None]).abs()).clamp(min=0)


def _chunks(extents: Tensor) -> list[tuple[int, int]]:
    """[start, stop) runs of detections whose padded windows fit `_PASTE_MAX_GRID_POINTS`.

    Args:
        extents (Tensor[D, 2]): int64 (w, h) window size of each detection, on the CPU, in
            the order the chunks take them (by increasing area).
    """
    runs = []
    start, num = 0, extents.shape[0]
    while start < num:
        # Grow the chunk while its padded windows stay within the memory budget.
        stop = start + 1
        while stop < num:
            w_max, h_max = extents[start : stop + 1].max(dim=0).values.tolist()
            if (stop + 1 - start) * w_max * h_max > _PASTE_MAX_GRID_POINTS:
                break
            stop += 1
        runs.append((start, stop))
        start = stop
    return runs


def _binary_windows(
    masks: Tensor,
    boxes: Tensor,
    x_start: Tensor,
    y_start: Tensor,
    size: tuple[int, int],
    threshold: float,
) -> Tensor:
    """Bilinear samples of each mask at the pixel centres of its window (`grid_sample`
    maths), binarised.

    Args:
        masks (Tensor[Dc, R, R]): float probabilities.
        boxes (Tensor[Dc, 4]): float xyxy in output pixels.
        x_start, y_start (Tensor[Dc]): float top-left pixel of each window.
        size: (h, w) of every window.
        threshold: `>=` this (less `_PASTE_EPS`) is foreground.

    Returns:
        Tensor[Dc, h, w]: bool.
    """
    h, w = size
    xs = x_start[:, None] + torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = y_start[:, None] + torch.arange(h, device=masks.device, dtype=torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    # (Dc, w) and (Dc, h) normalised pixel-centre coordinates; empty boxes are the caller's to
    # drop, the clamp only keeps them from producing NaN.
    gx = (xs + 0.5 - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1
    gy = (ys + 0.5 - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1
    wx = _bilinear_weights(gx, masks.shape[2])  # (Dc, w, R)
    wy = _bilinear_weights(gy, masks.shape[1])  # (Dc, h, R)
    # grid_sample(m, grid)[y, x] = sum_ij wy[y, i] * m[i, j] * wx[x, j]
    right = torch.bmm(masks, wx.transpose(1, 2))  # (Dc, R, w)
    out = torch.empty((masks.shape[0], h, w), dtype=torch.bool, device=masks.device)
    # Rows in tiles, so that the float samples stay within `_PASTE_MAX_GRID_POINTS` even for
    # one box as large as a huge image (a chunk of several boxes fits in one tile).
    rows = max(1, _PASTE_MAX_GRID_POINTS // max(1, masks.shape[0] * w))
    for r0 in range(0, h, rows):
        # `- _PASTE_EPS`: exact-threshold plateaus stay foreground despite the rounding of
        # the separable sums (see `paste_masks`).
        torch.ge(
            torch.bmm(wy[:, r0 : r0 + rows], right),
            threshold - _PASTE_EPS,
            out=out[:, r0 : r0 + rows],
        )
    return out
