"""Training augmentation for small real datasets: a random scaled crop taken from the original
image, flips, 90-degree rotations and colour jitter (the nuclei preset asks for all of them; the
COCO presets keep the reference's resize + horizontal flip, for parity).

Transforms are callables `(image, target) -> (image, target)` as in `data/transforms.py`:
image (Tensor[3, H, W] uint8), target "boxes" (Tensor[G, 4] xyxy pixels), "labels" (Tensor[G]),
"masks" (Tensor[G, H, W] uint8, or box-local `InstanceMasks` before the crop), and optionally
"sem_seg" (Tensor[H, W] int64, 255 = ignore). Flips, rotations and colour jitter run as
torchvision `transforms.v2` on tv_tensors, so boxes and masks follow the image.

Written here, with the reason:
- `RandomScaledCrop`: torchvision's RandomResizedCrop draws the scale relative to the image's
  area and ScaleJitter resizes the whole image before cropping. Here the scale is the test-time
  resize's (`get_output_size`) times a jitter, so objects keep the size the network sees at
  test time, and the window is cut from the original image first: the cost depends on the
  crop, not on the image or on the instances outside the crop.
- `RandomRot90`: v2's RandomRotation resamples arbitrary angles; a quarter turn is exact with
  `torch.rot90`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from blendmask.data.instance_masks import crop_masks
from blendmask.data.transforms import (
    Compose,
    ResizeShortestEdge,
    TvTensorTransform,
    get_output_size,
    resize_masks,
    resize_sem_seg,
    resize_to,
)
from blendmask.structures import Target


def boxes_from_masks(masks: Tensor) -> Tensor:
    """masks (Tensor[G, H, W]) -> Tensor[G, 4] float32 xyxy in pixel-edge units (the tight box
    of each mask; an empty mask gives a zero box, which `filter_empty_instances` drops)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    present = masks.flatten(1).bool().any(dim=1)
    if bool(present.any()):
        # masks_to_boxes gives the last pixel's index; an edge-unit box ends one pixel later.
        boxes[present] = masks_to_boxes(masks[present].bool()).float()
        boxes[present, 2:] += 1
    return boxes


class RandomScaledCrop:
    """A square window of `crop_size` output pixels at a random position and a scale drawn
    uniformly from `scale_range` times the test-time scale (shortest side to `min_size_test`,
    or `test_scale` when > 0; longest at most `max_size_test`). An image smaller than the
    window is taken whole along that side (no padding). Boxes are the tight boxes of the
    cropped masks, so an instance cut by the window gets the box of its visible part.
    """

    def __init__(
        self,
        crop_size: int,
        *,
        scale_range: Sequence[float],
        min_size_test: int,
        max_size_test: int,
        test_scale: float = 0.0,
    ) -> None:
        lo, hi = (float(s) for s in scale_range)
        if crop_size < 1 or not 0 < lo <= hi:
            raise ValueError(
                f"RandomScaledCrop: expected crop_size >= 1 and 0 < scale_range[0] <= "
                f"scale_range[1], got {crop_size} and {list(scale_range)}"
            )
        self.crop_size = int(crop_size)
        self.scale_range = (lo, hi)
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test
        self.test_scale = test_scale

    def window(self, height: int, width: int) -> tuple[int, int, int, int, tuple[int, int]]:
        """(top, left, h, w) of the window in the image, and its output size (h, w)."""
        test_h, _ = get_output_size(
            height, width, self.min_size_test, self.max_size_test, self.test_scale
        )
        lo, hi = self.scale_range
        scale = test_h / height * (lo + (hi - lo) * float(torch.rand(())))
        side = max(1, math.floor(self.crop_size / scale))  # the window's side in image pixels
        win_h, win_w = min(height, side), min(width, side)
        top = int(torch.randint(height - win_h + 1, ()))
        left = int(torch.randint(width - win_w + 1, ()))
        size = self.crop_size
        out = (min(size, max(1, round(win_h * scale))), min(size, max(1, round(win_w * scale))))
        return top, left, win_h, win_w, out

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        top, left, win_h, win_w, out = self.window(image.shape[-2], image.shape[-1])
        image = resize_to(image[:, top : top + win_h, left : left + win_w].contiguous(), out)
        masks = crop_masks(target["masks"], top, left, win_h, win_w)
        # only the instances the window sees: the resize costs per instance
        inside = masks.flatten(1).bool().any(dim=1)
        masks = resize_masks(masks[inside], out)
        labels = target["labels"][inside]
        target = {**target, "masks": masks, "boxes": boxes_from_masks(masks), "labels": labels}
        if "sem_seg" in target:
            sem = target["sem_seg"][top : top + win_h, left : left + win_w]
            target["sem_seg"] = resize_sem_seg(sem, out)
        return image, target

    def __repr__(self) -> str:
        return (
            f"RandomScaledCrop({self.crop_size}, scale_range={list(self.scale_range)}, "
            f"test size {self.min_size_test}/{self.max_size_test}, test scale {self.test_scale})"
        )


class RandomRot90(v2.Transform):
    """Rotate by k quarter turns, k uniform in {0, 1, 2, 3} (counter-clockwise, as torch.rot90)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if k == 0:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return rot90_boxes(inpt, k)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return tv_tensors.wrap(
                torch.rot90(inpt.as_subclass(Tensor), k, dims=(-2, -1)), like=inpt
            )
        return inpt

    # torchvision 0.20 (the oldest pyproject.toml allows) calls the two by their names before
    # 0.21 made them public; without these its base class raises NotImplementedError.
    _get_params = make_params
    _transform = transform


def rot90_boxes(boxes: tv_tensors.BoundingBoxes, k: int) -> tv_tensors.BoundingBoxes:
    """XYXY boxes of an (H, W) canvas after k counter-clockwise quarter turns of the image."""
    if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
        raise ValueError(f"rot90_boxes: expected XYXY boxes, got {boxes.format}")
    xyxy = boxes.as_subclass(Tensor)
    height, width = boxes.canvas_size
    for _ in range(k % 4):
        # a quarter turn sends the point (x, y) of a W-wide image to (y, W - x)
        x1, y1, x2, y2 = xyxy.unbind(-1)
        xyxy = torch.stack([y1, width - x2, y2, width - x1], dim=-1)
        height, width = width, height
    return tv_tensors.wrap(xyxy, like=boxes, canvas_size=(height, width))


def v2_augmentations(
    *, hflip: bool, vflip: bool = False, rot90: bool = False, color_jitter: Sequence[float] = ()
) -> TvTensorTransform | None:
    """The flips, rotations and colour jitter asked for, as one v2 pipeline (None: nothing)."""
    steps: list[v2.Transform] = []
    if hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if vflip:
        steps.append(v2.RandomVerticalFlip(0.5))
    if rot90:
        steps.append(RandomRot90())
    if any(float(c) > 0 for c in color_jitter):
        brightness, contrast, saturation, hue = (float(c) for c in color_jitter)
        steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
    return TvTensorTransform(v2.Compose(steps)) if steps else None


def training_transforms(
    *,
    min_size_train: Sequence[int],
    max_size_train: int,
    min_size_test: int,
    max_size_test: int,
    test_scale: float = 0.0,
    crop_size: int = 0,
    scale_jitter: Sequence[float] = (1.0, 1.0),
    hflip: bool = True,
    vflip: bool = False,
    rot90: bool = False,
    color_jitter: Sequence[float] = (),
) -> Compose:
    """The training pipeline: the reference's multi-scale resize (`crop_size` 0) or a
    `RandomScaledCrop`, then the v2 flips / rotations / colour jitter asked for."""
    first: Any
    if crop_size > 0:
        first = RandomScaledCrop(
            crop_size,
            scale_range=scale_jitter,
            min_size_test=min_size_test,
            max_size_test=max_size_test,
            test_scale=test_scale,
        )
    else:
        first = ResizeShortestEdge(list(min_size_train), max_size_train)
    rest = v2_augmentations(hflip=hflip, vflip=vflip, rot90=rot90, color_jitter=color_jitter)
    return Compose([first] if rest is None else [first, rest])
