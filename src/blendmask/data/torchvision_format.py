"""torchvision's detection data format, checked and converted: the images and targets a
`torchvision.models.detection` model takes (references/detection style), for the torchvision
adapter (`blendmask.adapter.TorchvisionDetector`).

    images: list of float RGB Tensor[3, H, W] in [0, 1] (or one Tensor[N, 3, H, W])
    targets: one dict per image: "boxes" float Tensor[N, 4] xyxy in the image's pixels,
        "labels" int64 Tensor[N] in 1..num_classes-1 (0 is the background), "masks"
        uint8 / bool Tensor[N, H, W] at the image's size; other keys are ignored.

`num_classes` counts the background, as in torchvision. The checks are torchvision's (same
messages where it has one, with the index of the target) plus the ones it leaves to a crash
deep inside the model (label range, mask shapes, non-finite boxes, values outside [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from blendmask.data.transforms import resize_masks
from blendmask.image_checks import check_image
from blendmask.structures import Target


class TargetError(ValueError, AssertionError):
    """A bad `images` / `targets` argument. A ValueError, and an AssertionError because
    torchvision raises those (`torch._assert`) for the same checks, so code written for
    torchvision's detectors catches it too."""


def check_images(images: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """The images as a list, or the error torchvision gives (TypeError for a non-float image,
    with torchvision's message) or a ValueError saying what is wrong.

    Float values outside [0, 1] (by more than one grey level, `image_checks.RANGE_TOLERANCE`),
    NaN and empty images are refused: a float image in 0-255 or one already normalised would
    otherwise be normalised again, silently wrong.
    """
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(
                "images is expected to be a list of 3d tensors of shape [C, H, W] (or one "
                f"Tensor[N, C, H, W]), got {images.shape}"
            )
        images = list(images.unbind(0))
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(
            f"images: expected a non-empty list of Tensor[3, H, W], got {images!r:.80}"
        )
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise TypeError(f"images[{i}]: expected a Tensor[3, H, W], got {type(image).__name__}")
        if image.dim() != 3:
            raise ValueError(
                f"images is expected to be a list of 3d tensors of shape [C, H, W], got {image.shape}"
            )
        if not image.is_floating_point():
            raise TypeError(
                "Expected input images to be of floating type (in range [0, 1]), "
                f"but found type {image.dtype} instead"
            )
        check_image(image, "CHW", f"images[{i}]")  # the package's one check of images
    return list(images)


def check_targets(
    targets: Sequence[dict[str, Tensor]], images: Sequence[Tensor], num_classes: int
) -> None:
    """torchvision's target checks (types and shapes, positive box sizes), plus label ranges
    and mask shapes; raises TargetError / TypeError naming the target's index and the labels in
    the dataset's 1-based terms. `num_classes` counts the background."""
    if not isinstance(targets, (list, tuple)):
        raise TargetError(f"targets: expected a list of dicts, got {type(targets).__name__}")
    if len(targets) != len(images):
        raise TargetError(
            f"got {len(images)} images and {len(targets)} targets: one target per image"
        )
    for index, (target, image) in enumerate(zip(targets, images)):
        _check_target(index, target, (int(image.shape[-2]), int(image.shape[-1])), num_classes)


def _check_target(
    index: int, target: dict[str, Tensor], size: tuple[int, int], num_classes: int
) -> None:
    where = f"for target at index {index}"
    if not isinstance(target, dict):
        raise TargetError(f"Expected each target to be a dict, got {type(target).__name__} {where}")
    for key in ("boxes", "labels", "masks"):
        if key not in target:
            raise TargetError(
                f"Every element of targets should have a {key} key (missing {where}); BlendMask "
                "trains on instance masks: 'masks' uint8 Tensor[N, H, W] at the image's size"
            )
        if not isinstance(target[key], Tensor):
            raise TargetError(
                f"Expected target {key} to be of type Tensor, got {type(target[key])} {where}."
            )
    boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise TargetError(
            f"Expected target boxes to be a tensor of shape [N, 4], got {boxes.shape} {where}."
        )
    if not boxes.is_floating_point():
        raise TypeError(f"target boxes must be of float type, instead got {boxes.dtype} {where}")
    if labels.dtype != torch.int64:
        raise TypeError(f"target labels must be of int64 type, instead got {labels.dtype} {where}")
    n = boxes.shape[0]
    if labels.shape != (n,):
        raise TargetError(
            f"Expected target labels to be a tensor of shape [{n}] (one per box), got "
            f"{labels.shape} {where}."
        )
    if masks.shape != (n, *size):
        raise TargetError(
            f"Expected target masks to be a tensor of shape [{n}, {size[0]}, {size[1]}] (one "
            f"mask per box, at the image's size), got {masks.shape} {where}."
        )
    if n == 0:
        return  # an image without objects: a negative example, as torchvision allows
    _check_box_values(boxes, where)
    _check_labels(labels, num_classes, where)


def _check_box_values(boxes: Tensor, where: str) -> None:
    finite = torch.isfinite(boxes).all(dim=1)
    if not bool(finite.all()):
        bad = boxes[int(torch.where(~finite)[0][0])].tolist()
        raise TargetError(f"Found non-finite box {bad} {where}.")
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
    if bool(degenerate.any()):
        bad = boxes[int(torch.where(degenerate)[0][0])].tolist()
        raise TargetError(
            "All bounding boxes should have positive height and width. "
            f"Found invalid box {bad} {where}."
        )


def _check_labels(labels: Tensor, num_classes: int, where: str) -> None:
    """Labels 1..num_classes-1; 0 is the background, never an object's label."""
    outside = (labels < 1) | (labels >= num_classes)
    if not bool(outside.any()):
        return
    bad = int(labels[outside][0])
    if bad == 0:
        raise TargetError(
            f"Found label 0 (the background) {where}: object labels are 1..{num_classes - 1} "
            "(1-based, as in torchvision); add 1 to 0-based class indices"
        )
    raise TargetError(
        f"Found label {bad} {where}, but the model has num_classes={num_classes} (the "
        f"background + {num_classes - 1} classes), so labels go from 1 to {num_classes - 1}; "
        f"build it with num_classes={int(labels.max()) + 1} or more"
    )


def to_blendmask_target(
    target: dict[str, Tensor], orig: tuple[int, int], size: tuple[int, int]
) -> Target:
    """A checked torchvision target at the original (H0, W0) `orig` -> ours (structures.Target)
    at the resized (h, w) `size`: boxes scaled, 0-based labels, uint8 masks[N, h, w] resized as
    the training pipeline resizes them (`resize_masks`)."""
    sy, sx = size[0] / orig[0], size[1] / orig[1]
    boxes = target["boxes"].float() * torch.tensor([sx, sy, sx, sy], device=target["boxes"].device)
    masks = target["masks"]
    masks = (masks >= 0.5) if masks.is_floating_point() else masks.bool()
    return {
        "boxes": boxes,
        "labels": target["labels"] - 1,
        "masks": resize_masks(masks.to(torch.uint8), size),
    }
