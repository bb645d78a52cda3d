"""BlendMask training losses: FCOS detection losses (FCOS Sec. 3, focal + GIoU + centerness),
the blended mask loss (BlendMask Sec. 3.3) and the auxiliary basis semantic loss (Sec. 3.1).

Facts in docs/reference.md §3.2 (detection losses), §3.3 (mask loss), §3.4 (semantic loss).

Shapes: N images, P points over all levels, C foreground classes, K bases, M attention size,
R bottom resolution, G gt instances (G_i of image i), Npos positive locations of the batch,
H/W padded input size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..structures import BlenderSpec, BlendMaskOutputs, Target
from .blender import merge_bases, pool_bases
from .panoptic import semantic_seg_loss
from .postprocess import attentions_at
from .targets import (
    FCOSTargets,
    assign_fcos_targets,
    compute_semantic_targets,
    project_masks_on_boxes,
)


class _Positives(NamedTuple):
    """The positive locations of a batch (Npos of them) and the GIoU / mask loss normaliser.

    img_idx, point_idx, gt_inds (Tensor[Npos]): int64 image, location in P, gt of that image.
    ctr_targets (Tensor[Npos]): centerness targets, the per-location loss weights.
    loss_denorm (Tensor[]): max(mean over ranks of sum(ctr_targets), 1e-6).
    """

    img_idx: Tensor
    point_idx: Tensor
    gt_inds: Tensor
    ctr_targets: Tensor
    loss_denorm: Tensor


def reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of `tensor` over all ranks; the tensor itself when not running distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    world_size = dist.get_world_size()
    if world_size < 2:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / world_size


def compute_ious_ltrb(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and GIoU of boxes given as ltrb distances from the same point (docs/reference.md §3.2).

    As the reference (`adet/utils/comm.py::compute_ious`) the IoU is smoothed,
    (I + 1) / (U + 1), and GIoU = IoU - (C - U) / C with C the enclosing box's area.

    Args:
        pred (Tensor[Npos, 4]): predicted ltrb (>= 0).
        target (Tensor[Npos, 4]): target ltrb (> 0).

    Returns:
        (Tensor[Npos], Tensor[Npos]): ious, gious.
    """
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (
        torch.minimum(pt, tt) + torch.minimum(pb, tb)
    )
    enclosing = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (
        torch.maximum(pt, tt) + torch.maximum(pb, tb)
    )
    union = pred_area + target_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    gious = ious - (enclosing - union) / enclosing
    return ious, gious


def _check_targets(targets: list[Target], num_images: int, padded_size: tuple[int, int]) -> None:
    if len(targets) != num_images:
        raise ValueError(f"expected {num_images} targets (one per image), got {len(targets)}")
    for i, t in enumerate(targets):
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise ValueError(f"target {i} has no {key!r} (needs boxes, labels, masks)")
        g = t["boxes"].shape[0]
        if t["boxes"].shape != (g, 4):
            raise ValueError(
                f"expected boxes of shape [G, 4] in target {i}, got {tuple(t['boxes'].shape)}"
            )
        if t["labels"].shape != (g,):
            raise ValueError(
                f"expected labels of shape [{g}] in target {i}, got {tuple(t['labels'].shape)}"
            )
        masks = t["masks"]
        if masks.dim() != 3 or masks.shape[0] != g:
            raise ValueError(
                f"expected masks of shape [{g}, h, w] in target {i}, got {tuple(masks.shape)}"
            )
        if masks.shape[1] > padded_size[0] or masks.shape[2] > padded_size[1]:
            raise ValueError(
                f"masks of target {i} are {tuple(masks.shape[1:])}, larger than the padded "
                f"input {padded_size}"
            )


class BlendMaskCriterion(nn.Module):
    """All BlendMask training losses from the raw network outputs.

    Keys (as the reference, so curves compare with published logs): loss_fcos_cls,
    loss_fcos_loc, loss_fcos_ctr, loss_mask and, when `sem_loss_on` and the network returns
    semantic logits, loss_basis_sem; loss_sem_seg (panoptic semantic head, `panoptic.py`) when
    the outputs carry panoptic logits.

    Normalisers are reduced over ranks once here: num_pos_avg = max(mean positives, 1) for the
    focal and centerness losses; loss_denorm = max(mean sum of centerness targets, 1e-6) for
    the GIoU and mask losses. Works in eval mode too (validation loss).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        sizes_of_interest: list[int],
        center_sample: bool = True,
        pos_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        blender: BlenderSpec = BlenderSpec(),
        instance_loss_weight: float = 1.0,
        sem_loss_on: bool = True,
        sem_loss_weight: float = 0.3,
        common_stride: int = 8,
        panoptic_loss_weight: float = 0.5,
        panoptic_ignore_value: int = 255,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sizes_of_interest = list(sizes_of_interest)
        self.center_sample = center_sample
        self.pos_radius = pos_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.blender = blender
        self.instance_loss_weight = instance_loss_weight
        self.sem_loss_on = sem_loss_on
        self.sem_loss_weight = sem_loss_weight
        self.common_stride = common_stride
        self.panoptic_loss_weight = panoptic_loss_weight
        self.panoptic_ignore_value = panoptic_ignore_value

    def forward(self, outputs: BlendMaskOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            outputs: the network's BlendMaskOutputs.
            targets: per image {"boxes": float[G, 4] xyxy in resized input pixels,
                "labels": int64[G] in [0, C), "masks": uint8[G, h, w] at the resized unpadded
                size}, plus "sem_seg": int64[h, w] (0 thing, 1..S stuff, 255 ignore) for a
                panoptic network; other keys are ignored.

        Returns:
            dict of scalar losses.
        """
        num_images = outputs.cls_logits.shape[0]
        padded_size = (
            round(outputs.bases.shape[-2] / self.blender.pooler_scale),
            round(outputs.bases.shape[-1] / self.blender.pooler_scale),
        )
        _check_targets(targets, num_images, padded_size)
        device = outputs.cls_logits.device
        gt_boxes = [t["boxes"].to(device=device, dtype=torch.float32) for t in targets]
        gt_labels = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]

        fcos = assign_fcos_targets(
            outputs.points,
            outputs.strides,
            outputs.num_points_per_level,
            gt_boxes,
            gt_labels,
            sizes_of_interest=self.sizes_of_interest,
            num_classes=self.num_classes,
            center_sample=self.center_sample,
            pos_radius=self.pos_radius,
        )
        losses, pos = self._detection_losses(outputs, fcos)
        # Losses in float32 even under autocast.
        bases = outputs.bases.float()
        if pos.img_idx.numel() == 0:
            # No positive anywhere in this batch: a zero loss that keeps the attentions and the
            # bases in the graph (as the reference's `x.sum() * 0`), so backward and DDP work.
            losses["loss_mask"] = _attention_graph(outputs) * 0 + bases.sum() * 0
        else:
            losses["loss_mask"] = (
                self._mask_loss(bases, _positive_attentions(outputs, pos), targets, gt_boxes, pos)
                * self.instance_loss_weight
            )
            if self.blender.fixed_onehot:
                # The FCIS assembly ignores the attention; keep it in the graph for DDP.
                losses["loss_mask"] = losses["loss_mask"] + _attention_graph(outputs) * 0
        if self.sem_loss_on and outputs.sem_logits is not None:
            losses["loss_basis_sem"] = self._semantic_loss(outputs.sem_logits, targets, gt_labels)
        if outputs.panoptic_logits is not None:
            missing = [i for i, t in enumerate(targets) if "sem_seg" not in t]
            if missing:
                raise ValueError(
                    f"target {missing[0]} has no 'sem_seg': a panoptic model trains on panoptic "
                    "data (semantic map: 0 thing, 1..S stuff, 255 ignore)"
                )
            losses["loss_sem_seg"] = semantic_seg_loss(
                outputs.panoptic_logits,
                [t["sem_seg"] for t in targets],
                ignore_value=self.panoptic_ignore_value,
                loss_weight=self.panoptic_loss_weight,
            )
        return losses

    def _detection_losses(
        self, outputs: BlendMaskOutputs, fcos: FCOSTargets
    ) -> tuple[dict[str, Tensor], _Positives]:
        """FCOS losses (docs/reference.md §3.2): loss_fcos_cls, loss_fcos_loc, loss_fcos_ctr, and the
        positive locations with their normaliser for the mask loss."""
        # Losses in float32 even under autocast.
        cls_logits = outputs.cls_logits.float()
        bbox_reg = outputs.bbox_reg.float()
        ctrness = outputs.ctrness.float()

        pos = fcos.labels != self.num_classes  # (N, P)
        num_pos_avg = reduce_mean(pos.sum().float()).clamp(min=1.0)

        # Focal loss on one-hot targets (all zero for background), / num_pos_avg.
        # (N, P) -> (N, P, C+1) -> drop the background column
        class_targets = F.one_hot(fcos.labels, self.num_classes + 1)[..., : self.num_classes]
        loss_cls = (
            sigmoid_focal_loss(
                cls_logits,
                class_targets.to(cls_logits.dtype),
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="sum",
            )
            / num_pos_avg
        )

        img_idx, point_idx = pos.nonzero(as_tuple=True)
        ctr_targets = fcos.ctr_targets[img_idx, point_idx]
        loss_denorm = reduce_mean(ctr_targets.sum()).clamp(min=1e-6)
        positives = _Positives(
            img_idx, point_idx, fcos.gt_inds[img_idx, point_idx], ctr_targets, loss_denorm
        )

        losses: dict[str, Tensor] = {"loss_fcos_cls": loss_cls}
        if img_idx.numel() == 0:
            # No positive anywhere in this batch: zero losses that keep every output in the
            # graph (as the reference's `x.sum() * 0`), so backward and DDP still work.
            losses["loss_fcos_loc"] = bbox_reg.sum() * 0
            losses["loss_fcos_ctr"] = ctrness.sum() * 0
            return losses, positives
        _, gious = compute_ious_ltrb(
            bbox_reg[img_idx, point_idx], fcos.reg_targets[img_idx, point_idx]
        )
        losses["loss_fcos_loc"] = ((1 - gious) * ctr_targets).sum() / loss_denorm
        losses["loss_fcos_ctr"] = (
            F.binary_cross_entropy_with_logits(
                ctrness[img_idx, point_idx], ctr_targets, reduction="sum"
            )
            / num_pos_avg
        )
        return losses, positives

    def _semantic_loss(
        self, sem_logits: Tensor, targets: list[Target], gt_labels: list[Tensor]
    ) -> Tensor:
        """Auxiliary basis semantic loss (docs/reference.md §3.4), weighted.

        Args:
            sem_logits (Tensor[N, C+1, H/8, W/8]): the bottom module's semantic logits.
        """
        sem_logits = sem_logits.float()
        sem_targets = compute_semantic_targets(
            [t["masks"] for t in targets],
            gt_labels,
            (
                sem_logits.shape[-2] * self.common_stride,
                sem_logits.shape[-1] * self.common_stride,
            ),
            self.common_stride,
        )
        # Mean over every pixel of the padded batch; padding is background (label 0).
        return F.cross_entropy(sem_logits, sem_targets.to(sem_logits.device)) * self.sem_loss_weight

    def _mask_loss(
        self,
        bases: Tensor,
        attentions: Tensor,
        targets: list[Target],
        gt_boxes: list[Tensor],
        pos: _Positives,
    ) -> Tensor:
        """Blended mask loss of every positive location (docs/reference.md §3.3).

        The bases are pooled once per gt box (training pools gt boxes, not predictions) and
        gathered for each positive location, blended with that location's own attention and
        compared with the gt mask inside the gt box (BCE mean over R x R), weighted by the
        centerness target and normalised by loss_denorm.

        Args:
            bases (Tensor[N, K, Hb, Wb]).
            attentions (Tensor[Npos, K*M*M]): float32, at the positive locations.
            pos: the positive locations (at least one).
        """
        spec = self.blender
        pooled_bases = pool_bases(bases, gt_boxes, spec)  # (G, K, R, R), images in order
        # gt_inds index each image's own gt list: offset them into the concatenation.
        counts = torch.tensor([b.shape[0] for b in gt_boxes], device=bases.device)
        offsets = torch.cumsum(counts, 0) - counts
        global_inds = pos.gt_inds + offsets[pos.img_idx]

        logits = merge_bases(pooled_bases[global_inds], attentions, spec)  # (Npos, R, R)
        mask_targets = torch.cat(
            [
                project_masks_on_boxes(t["masks"].to(bases.device), b, spec.resolution)
                for t, b in zip(targets, gt_boxes)
            ]
        )[global_inds]
        per_location = F.binary_cross_entropy_with_logits(
            logits, mask_targets, reduction="none"
        ).mean(dim=(1, 2))
        return (per_location * pos.ctr_targets).sum() / pos.loss_denorm


def _positive_attentions(outputs: BlendMaskOutputs, pos: _Positives) -> Tensor:
    """Attention logits (Tensor[Npos, K*M*M], float32) at the positive locations.

    The loss reads the attentions only there, so a network run with `dense_attentions=False`
    (what training does) evaluates the top layer at those Npos locations (`attentions_at`)
    instead of densely over every level: the same values up to float rounding, without the
    largest conv of the head and its backward."""
    if outputs.attentions is not None:
        return outputs.attentions[pos.img_idx, pos.point_idx].float()
    weight, bias = _top_layer(outputs)
    return attentions_at(outputs.bbox_towers, weight, bias, pos.img_idx, pos.point_idx).float()


def _attention_graph(outputs: BlendMaskOutputs) -> Tensor:
    """A scalar touching everything the attentions come from (times 0 it keeps the top layer
    in the graph when no location reads it, as the reference's `x.sum() * 0`)."""
    if outputs.attentions is not None:
        return outputs.attentions.float().sum()
    weight, bias = _top_layer(outputs)
    total = weight.float().sum() + sum(t.float().sum() for t in outputs.bbox_towers)
    return total + bias.float().sum() if bias is not None else total


def _top_layer(outputs: BlendMaskOutputs) -> tuple[Tensor, Tensor | None]:
    if outputs.bbox_towers is None or outputs.top_layer_params is None:
        raise ValueError(
            "the criterion needs attentions: run the network with dense_attentions=True, or "
            "False with the outputs carrying bbox_towers and top_layer_params"
        )
    return outputs.top_layer_params
