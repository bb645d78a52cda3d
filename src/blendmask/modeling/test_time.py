"""Two test-time refinements the reference does not have; both are off unless the config asks
(`--preset auto` turns them on, docs/training.md says why).

- **Mask rescoring** (`model.blender.mask_score_power` = p > 0): each detection's score is
  multiplied by its maskness ** p, the mean probability over the pixels of its R x R mask
  that are foreground (>= the mask threshold), as SOLOv2's "maskness" (Wang et al., 2020). A
  detection whose mask the blender is unsure of then ranks below a confident one, which mask
  AP rewards; the reference ranks by sqrt(cls * ctrness) alone, which knows nothing of the
  mask.
- **Flip test-time augmentation** (`data.test_flip`): the network also runs on the batch
  mirrored left-right, and the two runs are merged on the dense outputs, before selection and
  NMS (`merge_flipped`): class and centerness probabilities averaged, box distances averaged
  with left and right swapped, bases averaged, and the attention at a location the mean of
  both runs' (the mirrored run's M x M grid mirrored back). One set of detections comes out,
  as from one run, at twice the network's cost.

Glossary: N images, P locations over all levels, K bases, M attention grid, C_t tower channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures import BlendMaskOutputs


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
    values) and mask_probs (Tensor[D, R, R]) with the scores rescored, sorted again by them."""
    scores = rescore_by_mask(det["scores"], mask_probs, threshold, power)
    order = scores.argsort(descending=True, stable=True)
    det = {k: v[order] for k, v in {**det, "scores": scores}.items()}
    return det, mask_probs[order]


def flipped_input(model: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """The padded batch (Tensor[N, 3, H, W]) mirrored left-right as a whole, so that every
    level's grid mirrors onto itself (`torch.flip` maps the outputs back). Its padding, now on
    the left, holds the value the network's normalisation maps to 0: the network then sees
    what `normalize` gives a right-padded batch, and is called without `image_sizes`."""
    fill = model.pixel_mean / model.input_scale  # (3, 1, 1) in the weights' channel order
    if model.input_format == "BGR":
        fill = fill[[2, 1, 0]]
    widths = torch.as_tensor([w for _, w in image_sizes], device=images.device)
    heights = torch.as_tensor([h for h, _ in image_sizes], device=images.device)
    cols = torch.arange(images.shape[-1], device=images.device)
    rows = torch.arange(images.shape[-2], device=images.device)
    # (N, 1, H, W): True on the image, which now ends at the right edge.
    inside = (rows[None, :, None] < heights[:, None, None]) & (
        cols[None, None, :] >= images.shape[-1] - widths[:, None, None]
    )
    return torch.where(inside[:, None], images.flip(-1), fill.to(images.dtype))


def _flip_levels(values: Tensor, level_shapes: list[tuple[int, int]]) -> Tensor:
    """values (Tensor[N, P, X]) level-major, row-major within a level -> each level's grid
    mirrored left-right."""
    out = []
    for part, (h, w) in zip(values.split([h * w for h, w in level_shapes], dim=1), level_shapes):
        n, _, x = part.shape
        out.append(part.reshape(n, h, w, x).flip(2).reshape(n, h * w, x))
    return torch.cat(out, dim=1)


def _mean_probability(a: Tensor, b: Tensor) -> Tensor:
    """The logit of the mean of two sigmoids (what the post-processor reads back)."""
    return torch.logit((a.sigmoid() + b.sigmoid()) / 2)


def grid_mirror(num_channels: int, attn_size: int) -> Tensor:
    """int64[K*M*M]: the channel order that mirrors each M x M attention grid left-right."""
    m = attn_size
    return torch.arange(num_channels).view(-1, m, m).flip(-1).flatten()


def merge_flipped(
    outputs: BlendMaskOutputs, flipped: BlendMaskOutputs, attn_size: int
) -> BlendMaskOutputs:
    """One set of dense outputs from a run and its mirrored run (`flipped_input`).

    Both runs need the per-level towers (`dense_attentions=False`, inference's outputs): the
    merged attention is one 3x3 conv over the two runs' towers side by side
    (Tensor[N, 2 C_t, Hl, Wl]): the mirrored run's top layer at a mirrored location equals a
    conv with the kernel mirrored and the grid channels permuted on its towers mirrored back.
    """
    shapes = [tuple(t.shape[-2:]) for t in outputs.bbox_towers] if outputs.bbox_towers else None
    if shapes is None:
        raise ValueError("merge_flipped needs the towers' level shapes (dense_attentions=False)")
    cls = _flip_levels(flipped.cls_logits, shapes)
    ctr = _flip_levels(flipped.ctrness[..., None], shapes)[..., 0]
    reg = _flip_levels(flipped.bbox_reg, shapes)[..., [2, 1, 0, 3]]  # l, r swap
    perm = grid_mirror(outputs.top_layer_params[0].shape[0], attn_size).to(cls.device)
    weight, bias = outputs.top_layer_params
    mirrored_weight = weight[perm].flip(-1)
    top_layer = (
        torch.cat([weight, mirrored_weight], dim=1) / 2,
        None if bias is None else (bias + bias[perm]) / 2,
    )
    towers = tuple(
        torch.cat([a, b.flip(-1)], dim=1) for a, b in zip(outputs.bbox_towers, flipped.bbox_towers)
    )
    return outputs._replace(
        cls_logits=_mean_probability(outputs.cls_logits, cls),
        ctrness=_mean_probability(outputs.ctrness, ctr),
        bbox_reg=(outputs.bbox_reg + reg) / 2,
        bases=(outputs.bases + flipped.bases.flip(-1)) / 2,
        sem_logits=None,
        bbox_towers=towers,
        top_layer_params=top_layer,
        panoptic_logits=None
        if outputs.panoptic_logits is None
        else (outputs.panoptic_logits + flipped.panoptic_logits.flip(-1)) / 2,
    )
