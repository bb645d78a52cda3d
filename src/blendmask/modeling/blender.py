"""The blender: BlendMask Sec. 3.2, Eq. 1-4, as pure functions of a `BlenderSpec`.

No parameters (the reference's `Blender` is a plain object too, docs/reference.md §1.8). The paper's
steps, each one function:

1. `pool_bases`: crop every detection's box out of the bases with RoIAlign (Eq. 1), R x R.
2. `attention_weights`: resize the detection's K x M x M attention to R x R (Eq. 2) and
   normalise it with a softmax over K (Eq. 3).
3. `merge_bases`: weight the K pooled bases with those and sum over K (Eq. 4): one R x R mask
   logit map per detection.

Pasting the masks into the image is not the blender's: see paste.py.

The paper's Table 1 baselines are special cases of the same functions:
- YOLACT: M = 1 (one scalar coefficient per base, a weighted sum of the pooled bases);
- FCIS: K = M*M bases, `fixed_onehot=True` and nearest interpolation: cell (i, j) of the box
  reads base k = i*M + j (position-sensitive assembly).

Shapes: N images, K bases, M attention size, R bottom (RoI) resolution, D detections,
Hb/Wb bases size (input / 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from ..structures import BlenderSpec


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


def pool_bases(bases: Tensor, boxes: list[Tensor], spec: BlenderSpec) -> Tensor:
    """Crop the bases of every box to R x R (BlendMask Eq. 1; docs/reference.md §1.8).

    `spec.pooler_type` "ROIAlignV2" is `torchvision.ops.roi_align` with aligned=True (the box
    is shifted by -0.5 px after scaling by `spec.pooler_scale`), `spec.pooler_sampling_ratio`
    samples per bin side; "ROIPool" takes the nearest base pixel at each bin centre, no
    interpolation (see `_roi_nearest`).

    Args:
        bases (Tensor[N, K, Hb, Wb]): bases of the padded batch, stride 1 / spec.pooler_scale.
        boxes (list[Tensor[Di, 4]]): per image, xyxy in input pixels. Not clipped: the
            reference pools predicted boxes as they are.
        spec: the blender's settings (R = spec.resolution).

    Returns:
        Tensor[D, K, R, R]: the pooled bases, D = sum(Di), images in order.
    """
    if bases.dim() != 4:
        raise ValueError(f"expected bases of shape [N, K, Hb, Wb], got {tuple(bases.shape)}")
    if len(boxes) != bases.shape[0]:
        raise ValueError(f"expected {bases.shape[0]} box lists (one per image), got {len(boxes)}")
    resolution = spec.resolution
    rois = _boxes_to_rois(boxes, bases.dtype, bases.device)
    if rois.shape[0] == 0:
        # Keep the result attached to the graph so callers can still backpropagate through it.
        return bases.new_zeros((0, bases.shape[1], resolution, resolution)) + 0 * bases.sum()
    return pool_rois(bases, rois, spec)


def pool_rois(bases: Tensor, rois: Tensor, spec: BlenderSpec) -> Tensor:
    """`pool_bases` for boxes already laid out as RoIs, any count (also none): the form
    the end-to-end export traces (a batch of any size, no Python branch on the count).

    Args:
        bases (Tensor[N, K, Hb, Wb]): as `pool_bases`.
        rois (Tensor[D, 5]): (image index, x0, y0, x1, y1) in input pixels, bases' dtype.
        spec: the blender's settings.

    Returns:
        Tensor[D, K, R, R]: the pooled bases.
    """
    resolution = spec.resolution
    if spec.pooler_type == "ROIAlignV2":
        return roi_align(
            bases,
            rois,
            output_size=resolution,
            spatial_scale=spec.pooler_scale,
            sampling_ratio=spec.pooler_sampling_ratio,
            aligned=True,
        )
    return _roi_nearest(bases, rois, resolution, spec.pooler_scale)


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


def _resize_attentions(attentions: Tensor, spec: BlenderSpec, num_bases: int) -> Tensor:
    """Eq. 2: each detection's K x M x M attention resized to R x R, before normalising.

    With `spec.fixed_onehot` the values of `attentions` are ignored and the FCIS one-hot cells
    of `fcis_attention` are resized with nearest interpolation, whatever `spec.top_interp`
    says, so that each pixel keeps reading exactly one base.

    Args:
        attentions (Tensor[D, K*M*M]): attention logits of each detection.

    Returns:
        Tensor[D, K, R, R].
    """
    m, size = spec.attn_size, (spec.resolution, spec.resolution)
    if spec.fixed_onehot and num_bases != m * m:
        raise ValueError(
            f"fixed one-hot (FCIS) attention needs num_bases = attn_size**2 = {m * m}, "
            f"got {num_bases} bases"
        )
    if attentions.dim() != 2 or attentions.shape[1] != num_bases * m * m:
        raise ValueError(
            f"expected attentions of shape [D, {num_bases * m * m}] (K*M*M with K={num_bases}, "
            f"M={m}), got {tuple(attentions.shape)}"
        )
    d = attentions.shape[0]
    if spec.fixed_onehot:
        attentions = fcis_attention(m, d, attentions.device).to(attentions.dtype)
    # (D, K*M*M) -> (D, K, M, M) -> (D, K, R, R)
    resized = attentions.reshape(d, num_bases, m, m)
    if spec.top_interp == "bilinear" and not spec.fixed_onehot:
        return F.interpolate(resized, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(resized, size=size, mode="nearest")


def attention_weights(attentions: Tensor, spec: BlenderSpec, num_bases: int) -> Tensor:
    """The weights the blender gives each pooled base (BlendMask Eq. 2-3; docs/reference.md §1.8).

    The attention (K, M, M) is resized to R x R with `F.interpolate` (bilinear with
    align_corners=False, or nearest: `spec.top_interp`) and normalised with a softmax over K,
    so the K weights of a pixel sum to 1.

    K = 1: a softmax over one base is always 1, so the reference would ignore the attention;
    following the paper, the weight is sigmoid(attention) instead (and `merge_bases` uses
    sigmoid(base)). `spec.fixed_onehot`: the FCIS one-hot cells, resized with nearest
    interpolation, no softmax (see `_resize_attentions`).

    Args:
        attentions (Tensor[D, K*M*M]): attention logits of each detection (the top layer's
            `attentions` at its location).
        spec: the blender's settings (M = spec.attn_size, R = spec.resolution).
        num_bases: K.

    Returns:
        Tensor[D, K, R, R]: the weights, in [0, 1].
    """
    resized = _resize_attentions(attentions, spec, num_bases)
    if spec.fixed_onehot:
        return resized
    if num_bases == 1:
        return resized.sigmoid()
    return resized.softmax(dim=1)


def merge_bases(pooled_bases: Tensor, attentions: Tensor, spec: BlenderSpec) -> Tensor:
    """Blend each detection's pooled bases with its attention (BlendMask Eq. 4).

    mask logit = sum over K of `attention_weights` * pooled base (docs/reference.md §1.8).

    K = 1 (no softmax, see `attention_weights`): the probability sigmoid(attention) *
    sigmoid(base) is returned as its logit, so that the loss (BCE with logits) and
    post-processing (sigmoid) treat every K the same. It is computed from the resized attention
    logits in log space, not from the weight, so it stays finite where a sigmoid saturates.

    Args:
        pooled_bases (Tensor[D, K, R, R]): from `pool_bases` with the same `spec`.
        attentions (Tensor[D, K*M*M]): attention logits of each detection.
        spec: the blender's settings.

    Returns:
        Tensor[D, R, R]: mask logits.
    """
    r = spec.resolution
    if pooled_bases.dim() != 4 or pooled_bases.shape[-2:] != (r, r):
        raise ValueError(
            f"expected pooled_bases of shape [D, K, {r}, {r}] (R = spec.resolution), "
            f"got {tuple(pooled_bases.shape)}"
        )
    d, k = pooled_bases.shape[:2]
    if attentions.shape[0] != d:
        raise ValueError(
            f"expected attentions for {d} detections (one per pooled box), "
            f"got {tuple(attentions.shape)}"
        )
    if k == 1 and not spec.fixed_onehot:
        resized = _resize_attentions(attentions, spec, k)
        return _logit_of_sigmoid_product(resized[:, 0], pooled_bases[:, 0])
    weights = attention_weights(attentions, spec, k)
    if spec.fixed_onehot:
        # A pure selection: it keeps the bases' dtype, whatever the (ignored) attentions' is.
        weights = weights.to(pooled_bases.dtype)
    return (pooled_bases * weights).sum(dim=1)
