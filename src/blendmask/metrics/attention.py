"""How instance-specific the blender's attentions are (docs/ablations.md).

The blender (BlendMask Eq. 2-4) gives every detection its own K x M x M attention, resized to
R x R and normalised over K. If the top layer learned nothing beyond the bases, every detection
would get (nearly) the same maps, and the blender would reduce to one fixed mixture of the
bases, like YOLACT's weighted sum with shared coefficients. This module measures that with the
distance between the normalised maps (`attention_weights` of `modeling/blender.py`) of two
detections:

    distance(a, b) = mean over the R x R pixels of the total-variation distance between the
                     K-way distributions a[:, y, x] and b[:, y, x]
                   = sum over K, y, x of |a - b| / (2 R R),

which is 0 for identical maps and 1 for maps that pick different bases at every pixel. With
K = 1 the blender uses a sigmoid, not a softmax; the weight p is then read as the two-way
distribution (p, 1 - p), so the distance is mean |p - q|.

`attention_specificity` reports, over a set of images:
- `within`: the mean distance between two detections of the same image (different objects);
- `across`: the mean distance between two detections of different images;
- `ratio` = within / across: near 1 when the maps follow the object, not the image, and near 0
  when the detections of one image share their maps;
- `spatial`: the mean distance between each pixel's distribution and the detection's mean
  distribution (0: a constant weight per base over the box, as YOLACT's coefficients).

Glossary: D detections, K bases, R bottom (RoI) resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass
class AttentionSpecificity:
    """Mean attention distances (see the module docs); NaN where no pair exists."""

    within: float
    across: float
    ratio: float
    spatial: float
    detections: int
    within_pairs: int
    across_pairs: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def as_distributions(weights: Tensor) -> Tensor:
    """The blender's weights as per-pixel distributions over the bases.

    Args:
        weights (Tensor[D, K, R, R]): `attention_weights` output, in [0, 1]; with K >= 2 they
            sum to 1 over K (softmax), with K = 1 they are a sigmoid.

    Returns:
        Tensor[D, K', R, R]: the same for K >= 2; (p, 1 - p) stacked for K = 1 (K' = 2).
    """
    if weights.dim() != 4:
        raise ValueError(f"expected attention weights of shape [D, K, R, R], got {weights.shape}")
    if weights.shape[1] == 1:
        return torch.cat([weights, 1.0 - weights], dim=1)
    return weights


def pairwise_distances(weights: Tensor) -> Tensor:
    """Distance (module docs) between every two detections' attention maps.

    Args:
        weights (Tensor[D, K, R, R]): normalised attention weights (`attention_weights`).

    Returns:
        Tensor[D, D]: symmetric, zero diagonal, values in [0, 1].
    """
    dist = as_distributions(weights.double())
    d, _, r, _ = dist.shape
    flat = dist.reshape(d, -1)
    # The L1 distance of the flattened maps is the sum over pixels of the per-pixel L1
    # distances; torch.cdist computes it without a (D, D, K*R*R) intermediate.
    return torch.cdist(flat[None], flat[None], p=1.0)[0] / (2.0 * r * r)


def spatial_variation(weights: Tensor) -> Tensor:
    """Per detection: mean distance between a pixel's distribution and the box's mean one.

    Args:
        weights (Tensor[D, K, R, R]): normalised attention weights.

    Returns:
        Tensor[D]: in [0, 1]; 0 when the weights are constant over the box.
    """
    dist = as_distributions(weights.double())
    mean = dist.mean(dim=(2, 3), keepdim=True)
    return (dist - mean).abs().sum(dim=1).mean(dim=(1, 2)) / 2.0


def attention_specificity(per_image: Sequence[Tensor]) -> AttentionSpecificity:
    """Within-image vs across-image attention distances of a set of detections.

    Args:
        per_image: one Tensor[Di, K, R, R] of normalised attention weights per image (the
            detections to compare, e.g. those above a score threshold); K and R the same for
            all. Images with no detection are skipped.

    Returns:
        `AttentionSpecificity`; `within` is NaN when no image has two detections, `across`
        when fewer than two images have one.
    """
    kept = [w for w in per_image if w.shape[0] > 0]
    if not kept:
        nan = float("nan")
        return AttentionSpecificity(nan, nan, nan, nan, 0, 0, 0)
    shapes = {tuple(w.shape[1:]) for w in kept}
    if len(shapes) != 1:
        raise ValueError(f"expected the same (K, R, R) for every image, got {sorted(shapes)}")
    weights = torch.cat(kept)
    image_index = torch.cat(
        [torch.full((w.shape[0],), i, dtype=torch.long) for i, w in enumerate(kept)]
    )
    distances = pairwise_distances(weights)
    same = image_index[:, None] == image_index[None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    within_mask, across_mask = same & upper, ~same & upper
    within = _masked_mean(distances, within_mask)
    across = _masked_mean(distances, across_mask)
    return AttentionSpecificity(
        within=within,
        across=across,
        ratio=within / across if across > 0 else float("nan"),
        spatial=float(spatial_variation(weights).mean()),
        detections=int(weights.shape[0]),
        within_pairs=int(within_mask.sum()),
        across_pairs=int(across_mask.sum()),
    )


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    count = int(mask.sum())
    return float(values[mask].sum() / count) if count else float("nan")
