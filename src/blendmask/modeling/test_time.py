"""Two test-time refinements the reference does not have; both are off unless the config asks
(`--preset auto` turns them on, docs/training.md says why).

- **Mask rescoring** (`model.blender.mask_score_power` = p > 0): each detection's score is
  multiplied by its maskness ** p, the mean probability over the pixels of its R x R mask
  that are foreground (>= the mask threshold), as SOLOv2's "maskness" (Wang et al., 2020). A
  detection whose mask the blender is unsure of then ranks below a confident one, which mask
  AP rewards; the reference ranks by sqrt(cls * ctrness) alone, which knows nothing of the
  mask.
- **Flip test-time augmentation** (`data.test_flip`, and `data.test_vflip` for upside-down
  views): the network also runs on the batch mirrored left-right (and upside down, and
  both), and the runs are merged on the dense outputs, before selection and NMS
  (`merge_views`): class and centerness probabilities averaged, box distances averaged with
  the mirrored sides swapped, bases averaged, and the attention at a location the mean of the
  runs' (each mirrored M x M grid mirrored back). One set of detections comes out, as from
  one run, at the network's cost times the number of views.

Glossary: N images, P locations over all levels, K bases, M attention grid, C_t tower channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures import BlendMaskOutputs
from .blendmask import inside_images


def maskness(mask_probs: Tensor, threshold: float) -> Tensor:
    """mask_probs (Tensor[..., R, R]) -> Tensor[...]: mean probability over the pixels at or
    above `threshold` (0 for a mask with none)."""
    fg = (mask_probs >= threshold).to(mask_probs.dtype)
    return (mask_probs * fg).sum((-2, -1)) / fg.sum((-2, -1)).clamp(min=1.0)


def rescore_by_mask(scores: Tensor, mask_probs: Tensor, threshold: float, power: float) -> Tensor:
    """scores (Tensor[...]) * maskness(mask_probs (Tensor[..., R, R])) ** power."""
    return scores * maskness(mask_probs, threshold).pow(power)


def rescored(
    det: dict[str, Tensor], mask_probs: Tensor, threshold: float, power: float
) -> tuple[dict[str, Tensor], Tensor]:
    """One image's detections (`BlendMaskPostProcessor.detect`'s dict, Tensor[D] or [D, X]
    values) and mask_probs (Tensor[D, R, R]) with the scores rescored, sorted again by them;
    as they are with `power` 0 (the reference's scores)."""
    if power <= 0:
        return det, mask_probs
    scores = rescore_by_mask(det["scores"], mask_probs, threshold, power)
    order = scores.argsort(descending=True, stable=True)
    det = {k: v[order] for k, v in {**det, "scores": scores}.items()}
    return det, mask_probs[order]


def flip_views(hflip: bool, vflip: bool) -> list[tuple[int, ...]]:
    """The views to predict: the dims each mirrors (() the image itself, -1 left-right, -2
    upside down)."""
    views: list[tuple[int, ...]] = [()]
    views += [(-1,)] if hflip else []
    views += ([(-2,)] + ([(-2, -1)] if hflip else [])) if vflip else []
    return views


def flipped_input(
    model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]], dims: tuple[int, ...]
) -> Tensor:
    """The padded batch (Tensor[N, 3, H, W]) mirrored as a whole along `dims`, so that every
    level's grid mirrors onto itself (`torch.flip` maps the outputs back). Its padding, now on
    the left / top, holds the value the network's normalisation maps to 0: the network then
    sees what `normalize` gives a right / bottom-padded batch, and runs without `image_sizes`."""
    fill = model.pixel_mean / model.input_scale  # (3, 1, 1) in the weights' channel order
    if model.input_format == "BGR":
        fill = fill[[2, 1, 0]]
    inside = inside_images(image_sizes, tuple(images.shape[-2:]), images.device, mirrored=dims)
    return torch.where(inside, images.flip(dims), fill.to(images.dtype))


def _flip_levels(values: Tensor, level_shapes: list[tuple[int, int]], dims: tuple) -> Tensor:
    """values (Tensor[N, P, X]) level-major, row-major within a level -> each level's grid
    mirrored along `dims` (-1 left-right, -2 upside down)."""
    if not dims:
        return values
    grid_dims = tuple(d - 1 for d in dims)  # (N, H, W, X): W is -2, H is -3
    out = []
    for part, (h, w) in zip(values.split([h * w for h, w in level_shapes], dim=1), level_shapes):
        n, _, x = part.shape
        out.append(part.reshape(n, h, w, x).flip(grid_dims).reshape(n, h * w, x))
    return torch.cat(out, dim=1)


def _mean_probability(logits: list[Tensor]) -> Tensor:
    """The logit of the mean of the sigmoids (what the post-processor reads back)."""
    return torch.logit(torch.stack([t.sigmoid() for t in logits]).mean(0))


def grid_mirror(num_channels: int, attn_size: int, dims: tuple[int, ...] = (-1,)) -> Tensor:
    """int64[K*M*M]: the channel order that mirrors each M x M attention grid along `dims`."""
    m = attn_size
    return torch.arange(num_channels).view(-1, m, m).flip(dims).flatten()


# ltrb distances of a mirrored view, read back: the mirrored sides swap.
_SIDES = {(): [0, 1, 2, 3], (-1,): [2, 1, 0, 3], (-2,): [0, 3, 2, 1], (-2, -1): [2, 3, 0, 1]}


def merge_views(runs: list[tuple[tuple[int, ...], BlendMaskOutputs]], attn_size: int):
    """One set of dense outputs (BlendMaskOutputs) from the runs on each view
    ((dims, outputs) from `flipped_input`; the first is the image itself).

    Every run needs the per-level towers (`dense_attentions=False`, inference's outputs): the
    merged attention is one 3x3 conv over the runs' towers side by side (Tensor[N, V C_t, Hl,
    Wl]): a mirrored run's top layer at a mirrored location equals a conv with the kernel
    mirrored and the grid channels permuted on its towers mirrored back.
    """
    first = runs[0][1]
    if first.bbox_towers is None or first.top_layer_params is None:
        raise ValueError("merge_views needs the towers and top layer (dense_attentions=False)")
    shapes = [tuple(t.shape[-2:]) for t in first.bbox_towers]
    weight, bias = first.top_layer_params
    cls, ctr, reg, bases, weights, biases, panoptic = [], [], [], [], [], [], []
    towers: list[list[Tensor]] = [[] for _ in shapes]
    for dims, out in runs:
        cls.append(_flip_levels(out.cls_logits, shapes, dims))
        ctr.append(_flip_levels(out.ctrness[..., None], shapes, dims)[..., 0])
        reg.append(_flip_levels(out.bbox_reg, shapes, dims)[..., _SIDES[dims]])
        bases.append(out.bases.flip(dims))
        perm = grid_mirror(weight.shape[0], attn_size, dims).to(weight.device)
        weights.append(weight[perm].flip(dims))
        biases.append(None if bias is None else bias[perm])
        for level, tower in enumerate(out.bbox_towers):
            towers[level].append(tower.flip(dims))
        if out.panoptic_logits is not None:
            panoptic.append(out.panoptic_logits.flip(dims))
    views = len(runs)
    return first._replace(
        cls_logits=_mean_probability(cls),
        ctrness=_mean_probability(ctr),
        bbox_reg=torch.stack(reg).mean(0),
        bases=torch.stack(bases).mean(0),
        sem_logits=None,
        bbox_towers=tuple(torch.cat(t, dim=1) for t in towers),
        top_layer_params=(
            torch.cat(weights, dim=1) / views,
            None if bias is None else torch.stack(biases).mean(0),
        ),
        panoptic_logits=torch.stack(panoptic).mean(0) if panoptic else None,
    )
