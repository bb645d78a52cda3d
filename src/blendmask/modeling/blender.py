"""The blender: BlendMask Sec. 3.2 (Eq. 1-4), plus mask pasting into the image.

Pure functions without parameters (the reference's `Blender` is a plain object too, ADELAIDET.md
§1.8). The paper's three steps:

1. `pool_bases`: crop every detection's box out of the bases with RoIAlign (Eq. 1), R x R.
2. `merge_bases`: resize the detection's K x M x M attention to R x R (Eq. 2), softmax over K
   (Eq. 3), multiply with the cropped bases and sum over K (Eq. 4): one R x R mask logit map.
3. `paste_masks`: put the R x R probabilities back into the image at each box (detectron2's
   `paste_masks_in_image`, ADELAIDET.md §1.9).

The paper's Table 1 baselines are special cases of `merge_bases`:
- YOLACT: M = 1 (one scalar coefficient per base, a weighted sum of the cropped bases);
- FCIS: K = M*M bases, `fixed_onehot=True` and nearest interpolation: cell (i, j) of the box
  reads base k = i*M + j (position-sensitive assembly).

Shapes: N images, K bases, M attention size, R bottom (RoI) resolution, D detections,
Hb/Wb bases size (input / 4), H/W output image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

POOLER_TYPES = ("ROIAlignV2", "ROIPool")
TOP_INTERPS = ("bilinear", "nearest")

# Pasting builds a (D, h, w, 2) sampling grid; above this many grid points it works in chunks
# of detections so memory stays bounded (~2 x 4 B x 2**24 = 128 MiB for the grid).
_PASTE_MAX_GRID_POINTS = 2**24
# Float32 rounding of the separable interpolation in `paste_masks` (measured <= 2e-7).
_PASTE_EPS = 1e-6


def _boxes_to_rois(boxes: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """list of (Di, 4) xyxy -> (D, 5) rois (batch index, x0, y0, x1, y1)."""
    rois = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"expected boxes of shape [D, 4] for image {i}, got {tuple(b.shape)}")
        index = torch.full((b.shape[0], 1), float(i), dtype=dtype, device=device)
        rois.append(torch.cat([index, b.to(device=device, dtype=dtype)], dim=1))
    if not rois:
        return torch.zeros((0, 5), dtype=dtype, device=device)
    return torch.cat(rois, dim=0)


def _roi_nearest(bases: Tensor, rois: Tensor, resolution: int, scale: float) -> Tensor:
    """RoIPool-like pooling: the value of the nearest base pixel at each bin centre.

    Uses the same coordinates as RoIAlignV2 with one sample per bin (box scaled, shifted by
    -0.5 px, bin centres), but takes the nearest pixel instead of interpolating bilinearly.
    Like `roi_align`, samples further than one pixel outside the map read 0 and the others are
    clamped to the border. This is the "nearest" bottom pooling of the paper's Table 2
    (detectron2's max-pooling `ROIPool` is not used by any BlendMask config).
    """
    n_rois = rois.shape[0]
    _, k, hb, wb = bases.shape
    batch = rois[:, 0].long()
    x0, y0, x1, y1 = (rois[:, 1:] * scale).unbind(1)
    steps = torch.arange(resolution, dtype=rois.dtype, device=rois.device) + 0.5
    # (D, R) sample positions in pixel-index space (pixel i covers [i - 0.5, i + 0.5])
    xs = x0[:, None] - 0.5 + steps[None] * ((x1 - x0) / resolution)[:, None]
    ys = y0[:, None] - 0.5 + steps[None] * ((y1 - y0) / resolution)[:, None]
    valid_x = (xs >= -1.0) & (xs <= wb)
    valid_y = (ys >= -1.0) & (ys <= hb)
    xi = torch.floor(xs + 0.5).clamp(0, wb - 1).long()
    yi = torch.floor(ys + 0.5).clamp(0, hb - 1).long()
    # (N, K, Hb, Wb) -> (N, Hb, Wb, K); advanced indexing gives (D, R, R, K)
    feats = bases.permute(0, 2, 3, 1)
    pooled = feats[batch[:, None, None], yi[:, :, None], xi[:, None, :]]
    valid = (valid_y[:, :, None] & valid_x[:, None, :]).to(bases.dtype)
    pooled = pooled * valid[..., None]
    # (D, R, R, K) -> (D, K, R, R)
    return pooled.permute(0, 3, 1, 2).reshape(n_rois, k, resolution, resolution)


def pool_bases(
    bases: Tensor,
    boxes: list[Tensor],
    *,
    resolution: int = 56,
    scale: float = 0.25,
    sampling_ratio: int = 1,
    pooler_type: str = "ROIAlignV2",
) -> Tensor:
    """Crop the bases of every box to R x R (BlendMask Eq. 1; ADELAIDET.md §1.8).

    Args:
        bases (Tensor[N, K, Hb, Wb]): bases of the padded batch, stride 1/scale.
        boxes (list[Tensor[Di, 4]]): per image, xyxy in input pixels. Not clipped: the
            reference pools predicted boxes as they are.
        resolution: R.
        scale: bases size / input size (0.25).
        sampling_ratio: RoIAlign samples per bin side (the reference uses 1).
        pooler_type: "ROIAlignV2" (`torchvision.ops.roi_align`, aligned=True: the box is
            shifted by -0.5 px after scaling) or "ROIPool" (nearest pixel at each bin centre,
            no interpolation; see `_roi_nearest`).

    Returns:
        Tensor[D, K, R, R]: D = sum(Di), images in order.
    """
    if bases.dim() != 4:
        raise ValueError(f"expected bases of shape [N, K, Hb, Wb], got {tuple(bases.shape)}")
    if len(boxes) != bases.shape[0]:
        raise ValueError(f"expected {bases.shape[0]} box lists (one per image), got {len(boxes)}")
    if pooler_type not in POOLER_TYPES:
        raise ValueError(f"expected pooler_type in {POOLER_TYPES}, got {pooler_type!r}")
    rois = _boxes_to_rois(boxes, bases.dtype, bases.device)
    if rois.shape[0] == 0:
        # Keep the result attached to the graph so callers can still backpropagate through it.
        return bases.new_zeros((0, bases.shape[1], resolution, resolution)) + 0 * bases.sum()
    if pooler_type == "ROIAlignV2":
        return roi_align(
            bases,
            rois,
            output_size=resolution,
            spatial_scale=scale,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )
    return _roi_nearest(bases, rois, resolution, scale)


def fcis_attention(attn_size: int, num_detections: int, device: torch.device | str) -> Tensor:
    """Fixed one-hot position-sensitive attention of FCIS (paper Table 1).

    With K = M*M bases, base k = i*M + j is selected in attention cell (i, j).

    Returns:
        Tensor[D, M*M*M*M]: the (K, M, M) one-hot maps of each detection, flattened like the
        network's `attentions`.
    """
    num_bases = attn_size * attn_size
    # (K, K) identity, row k one-hot at cell k = i*M + j -> (K*M*M,)
    onehot = torch.eye(num_bases, device=device).reshape(-1)
    return onehot[None].expand(num_detections, -1)


def _logit_of_sigmoid_product(a: Tensor, b: Tensor) -> Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed in log space so it stays finite."""
    log_p = F.logsigmoid(a) + F.logsigmoid(b)
    # p = 1 exactly only when both inputs saturate; cap it so log(1 - p) stays finite.
    log_p = log_p.clamp(max=-1e-12)
    return log_p - torch.log(-torch.expm1(log_p))


def merge_bases(
    rois: Tensor,
    attentions: Tensor,
    *,
    attn_size: int,
    top_interp: str = "bilinear",
    fixed_onehot: bool = False,
) -> Tensor:
    """Blend the cropped bases with each detection's attention (BlendMask Eq. 2-4).

    The attention (K, M, M) is resized to R x R with `F.interpolate` (align_corners=False for
    bilinear), normalised with a softmax over K and used to weight the K cropped bases, which
    are summed over K (ADELAIDET.md §1.8).

    K = 1: a softmax over one base is always 1, so the reference would ignore the attention.
    Following the paper, K = 1 uses sigmoid on both instead; the probability
    sigmoid(attn) * sigmoid(base) is returned as its logit so that the loss (BCE with logits)
    and post-processing (sigmoid) treat every K the same.

    `fixed_onehot=True` is the FCIS assembly: the values of `attentions` are ignored, K must be M*M,
    the one-hot attention of `fcis_attention` is resized with nearest interpolation (whatever
    `top_interp` says) and no softmax is applied, so each pixel reads exactly one base.

    Args:
        rois (Tensor[D, K, R, R]): cropped bases from `pool_bases`.
        attentions (Tensor[D, K*M*M]): attention logits of each detection (`attentions`).
        attn_size: M.
        top_interp: "bilinear" or "nearest".
        fixed_onehot: FCIS position-sensitive assembly.

    Returns:
        Tensor[D, R, R]: mask logits.
    """
    if rois.dim() != 4:
        raise ValueError(f"expected rois of shape [D, K, R, R], got {tuple(rois.shape)}")
    if top_interp not in TOP_INTERPS:
        raise ValueError(f"expected top_interp in {TOP_INTERPS}, got {top_interp!r}")
    d, k, r_h, r_w = rois.shape
    if fixed_onehot:
        if k != attn_size * attn_size:
            raise ValueError(
                f"fixed one-hot (FCIS) attention needs num_bases = attn_size**2 = "
                f"{attn_size * attn_size}, got {k} bases"
            )
        weights = fcis_attention(attn_size, d, rois.device).to(rois.dtype)
        # (D, K*M*M) -> (D, K, M, M) -> (D, K, R, R)
        weights = weights.reshape(d, k, attn_size, attn_size)
        weights = F.interpolate(weights, size=(r_h, r_w), mode="nearest")
        return (rois * weights).sum(dim=1)

    expected = k * attn_size * attn_size
    if attentions.dim() != 2 or attentions.shape != (d, expected):
        raise ValueError(
            f"expected attentions of shape [{d}, {expected}] (K*M*M with K={k}, M={attn_size}), "
            f"got {tuple(attentions.shape)}"
        )
    # (D, K*M*M) -> (D, K, M, M) -> (D, K, R, R)
    coeffs = attentions.reshape(d, k, attn_size, attn_size)
    if top_interp == "bilinear":
        coeffs = F.interpolate(coeffs, size=(r_h, r_w), mode="bilinear", align_corners=False)
    else:
        coeffs = F.interpolate(coeffs, size=(r_h, r_w), mode="nearest")
    if k == 1:
        return _logit_of_sigmoid_product(coeffs[:, 0], rois[:, 0])
    return (rois * coeffs.softmax(dim=1)).sum(dim=1)


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> Tensor:
    """Paste R x R mask probabilities into the image and binarise (ADELAIDET.md §1.9).

    Same maths as detectron2's `paste_masks_in_image`: the centre (x + 0.5, y + 0.5) of every
    image pixel is normalised into its box as 2 * (c - x0) / (x1 - x0) - 1 and the mask is
    sampled there bilinearly (`grid_sample(align_corners=False)`, zero outside), then
    `>= threshold`.

    Bilinear sampling with zero padding is separable, so each mask is resampled with two
    batched matmuls, and only inside a window around its own box (outside it no pixel centre
    can reach a mask sample): the sampling runs for all detections at once (a few chunks of
    similar-size boxes at most). Only the write of each finished window into its slice of the
    (D, H, W) output is per detection: a slice copy, cheaper than a scatter of every window
    pixel. On a CPU this is ~20x faster than `grid_sample` over the image.

    Args:
        masks (Tensor[D, R, R]): probabilities.
        boxes (Tensor[D, 4]): xyxy in output pixels (already clipped by the caller, as the
            reference does).
        image_size: (H, W) of the output.
        threshold: binarisation threshold (`>=`).

    Returns:
        Tensor[D, H, W]: bool.
    """
    if masks.dim() != 3:
        raise ValueError(f"expected masks of shape [D, R, R], got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected boxes of shape [{masks.shape[0]}, 4], got {tuple(boxes.shape)}")
    height, width = int(image_size[0]), int(image_size[1])
    num = masks.shape[0]
    out = torch.zeros((num, height, width), dtype=torch.bool, device=masks.device)
    if num == 0 or height == 0 or width == 0:
        return out
    masks = masks.float()
    boxes = boxes.float()
    # Window of each box with a one-pixel margin (as detectron2's skip_empty), capped to the
    # image; grouping boxes of similar size keeps the padded windows of a chunk tight.
    lo = torch.floor(boxes[:, :2]) - 1
    hi = torch.ceil(boxes[:, 2:]) + 1
    extent = (hi - lo).clamp(min=1)
    extent = torch.minimum(extent, torch.tensor([width, height], device=extent.device))
    order = torch.argsort(extent[:, 0] * extent[:, 1])
    extent_cpu = extent[order].long().cpu()
    start = 0
    while start < num:
        # Grow the chunk while its padded windows stay within the memory budget.
        stop = start + 1
        while stop < num:
            w_max, h_max = extent_cpu[start : stop + 1].max(dim=0).values.tolist()
            if (stop + 1 - start) * w_max * h_max > _PASTE_MAX_GRID_POINTS:
                break
            stop += 1
        idx = order[start:stop]
        w_max, h_max = extent_cpu[start:stop].max(dim=0).values.tolist()
        # Window origins, shifted so that every window lies inside the image.
        x_start = lo[idx, 0].clamp(min=0, max=width - w_max)
        y_start = lo[idx, 1].clamp(min=0, max=height - h_max)
        xs = x_start[:, None] + torch.arange(w_max, device=masks.device, dtype=torch.float32)
        ys = y_start[:, None] + torch.arange(h_max, device=masks.device, dtype=torch.float32)
        x0, y0, x1, y1 = boxes[idx].unbind(1)
        # (Dc, w) and (Dc, h) normalised pixel-centre coordinates; empty boxes are the
        # caller's to drop, the clamp only keeps them from producing NaN.
        gx = (xs + 0.5 - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1
        gy = (ys + 0.5 - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1
        wx = _bilinear_weights(gx, masks.shape[2])  # (Dc, w, R)
        wy = _bilinear_weights(gy, masks.shape[1])  # (Dc, h, R)
        # grid_sample(m, grid)[y, x] = sum_ij wy[y, i] * m[i, j] * wx[x, j]
        sampled = torch.bmm(wy, torch.bmm(masks[idx], wx.transpose(1, 2)))  # (Dc, h, w)
        # The separable sums round differently from grid_sample's (~1e-7): a probability of
        # exactly `threshold` (common: a box outside the bases pools zeros, sigmoid(0) = 0.5)
        # must stay inside, as `>=` keeps it in the reference.
        # Each window is a rectangle of the output: comparing straight into its slice is
        # several times cheaper than a 3-index scatter of every window pixel (one host sync
        # per chunk for the window origins).
        for d, x, y, window in zip(
            idx.tolist(), x_start.long().tolist(), y_start.long().tolist(), sampled.unbind(0)
        ):
            torch.ge(window, threshold - _PASTE_EPS, out=out[d, y : y + h_max, x : x + w_max])
        start = stop
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
