"""A drop-in for `torchvision.models.detection` training and inference loops.

torchvision's detectors take a list of images and, in train mode, a list of target dicts with
1-based labels (0 is background), and return a loss dict (train) or a list of output dicts
(eval). `TorchvisionDetector` does the same around BlendMask's three modules, so
`model = TorchvisionDetector.from_config(cfg)` swaps in without touching the loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from blendmask.config import Config
from blendmask.data.preprocess import preprocess
from blendmask.factory import build
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.losses import BlendMaskCriterion
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.predictor import infer


class TorchvisionDetector(nn.Module):
    """`model(images)` -> list of {"boxes", "labels", "scores", "masks"} (eval), and
    `model(images, targets)` -> dict of losses (train), torchvision style.

    Labels follow torchvision: 1..C for the C foreground classes (0 is background). Output masks
    are float Tensor[D, 1, H, W] in {0, 1}, like Mask R-CNN's. Images are float RGB Tensor[3, H, W]
    in [0, 1] of any size; they are resized to `min_size` / `max_size` like torchvision's
    GeneralizedRCNNTransform, and results come back at the input size.
    """

    def __init__(
        self,
        model: BlendMask,
        criterion: BlendMaskCriterion,
        postprocessor: BlendMaskPostProcessor,
        *,
        min_size: int = 800,
        max_size: int = 1333,
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.min_size = min_size
        self.max_size = max_size

    @classmethod
    def from_config(cls, cfg: Config) -> TorchvisionDetector:
        model, criterion, post = build(cfg)
        return cls(
            model, criterion, post, min_size=cfg.data.min_size_test, max_size=cfg.data.max_size_test
        )

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("In training mode, targets should be passed")
        batch, orig_sizes = preprocess(images, self.min_size, self.max_size)
        if targets is not None and self.training:
            outputs = self.model(batch.tensor, batch.image_sizes)
            ours = [
                _resize_target(t, o, s) for t, o, s in zip(targets, orig_sizes, batch.image_sizes)
            ]
            return self.criterion(outputs, ours)
        dets = infer(self.model, self.postprocessor, batch, orig_sizes)
        return [
            {
                "boxes": d.boxes,
                "labels": d.labels + 1,
                "scores": d.scores,
                "masks": d.masks[:, None].float(),
            }
            for d in dets
        ]


def _resize_target(
    target: dict[str, Tensor], orig: tuple[int, int], size: tuple[int, int]
) -> dict[str, Tensor]:
    """torchvision target at the original size -> our target at the resized size, 0-based."""
    if "masks" not in target:
        raise ValueError("BlendMask needs instance masks in each target ('masks': uint8[G, H, W])")
    sy, sx = size[0] / orig[0], size[1] / orig[1]
    boxes = target["boxes"].float() * torch.tensor([sx, sy, sx, sy], device=target["boxes"].device)
    masks = target["masks"]
    if masks.shape[0] > 0:
        masks = nn.functional.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    else:
        masks = masks.new_zeros((0, *size))
    return {"boxes": boxes, "labels": target["labels"].long() - 1, "masks": masks.to(torch.uint8)}
