"""Training and test transforms on (image, target) pairs: shortest-edge resize and horizontal flip
(`data/augment.py` adds crops, vertical flips, rotations and colour jitter).

These reproduce the reference's input pipeline (detectron2's `ResizeShortestEdge` then
`RandomFlip`, BlendMask Sec. 4 "Implementation details", docs/reference.md §1.2 and §3.5),
including its resize: a uint8 image is resized with PIL's bilinear filter and rounded back to
uint8, exactly as the reference does before normalising. Each transform is a callable
`(image, target) -> (image, target)` with

    image (Tensor[3, H, W]): uint8 RGB (as decoded) or float RGB in [0, 1]; the dtype is kept.
    target: "boxes" (Tensor[G, 4] float32, xyxy pixels of `image`), "labels" (Tensor[G]),
        "masks" (Tensor[G, H, W] uint8, or box-local `InstanceMasks`, made dense by the resize),
        optionally "sem_seg" (Tensor[H, W] int64, 255 = ignore; resized nearest); other keys
        ("image_id", "orig_size") pass through.

`data/batching.py` turns the images into float [0, 1] when it pads them. Randomness comes from
the global torch RNG (`torch.randint` / `torch.rand`), so `torch.manual_seed` makes a run
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from blendmask.data.instance_masks import InstanceMasks
from blendmask.structures import Target


def get_output_size(
    height: int, width: int, min_size: int, max_size: int, scale: float = 0.0
) -> tuple[int, int]:
    """Size after resizing the shorter side to `min_size` with the longer side capped at
    `max_size` (detectron2's rule; `max_size <= 0` means no cap). With `scale > 0` both sides
    are multiplied by `scale` instead (`data.test_scale`), under the same cap.

    Returns:
        (new_height, new_width), each rounded with int(x + 0.5) and at least 1 (the reference
        gives 0 for a side under half a pixel, which no resize can make).
    """
    if scale > 0:
        new_height, new_width = height * scale, width * scale
    else:
        factor = min_size / min(height, width)
        if height < width:
            new_height, new_width = float(min_size), factor * width
        else:
            new_height, new_width = factor * height, float(min_size)
    if max_size > 0 and max(new_height, new_width) > max_size:
        cap = max_size / max(new_height, new_width)
        new_height, new_width = new_height * cap, new_width * cap
    # At least 1: a 1 x 10000 image would otherwise get a 0-pixel side and stop the run.
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def resize_image(image: Tensor, min_size: int, max_size: int, scale: float = 0.0) -> Tensor:
    """Resize `image` (Tensor[3, H, W], uint8 or float) by the shortest-edge rule (or by
    `scale` when > 0, see `get_output_size`), keeping its dtype (see `resize_to`)."""
    new_size = get_output_size(image.shape[-2], image.shape[-1], min_size, max_size, scale)
    return resize_to(image, new_size)


def resize_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of Tensor[C, H, W] (or [G, 1, H, W] float) to `size` = (h, w).

    uint8 RGB images go through PIL's bilinear filter, which is what the reference applies to its
    uint8 images: torchvision's antialiased uint8 resize differs from it by one grey level on
    ~1% of the pixels, enough to change detections of converted checkpoints. Float tensors use
    torchvision's antialiased bilinear resize (same filter, no rounding); its weights are
    convex, so values stay in the input's range.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
        # (3, H, W) -> (H, W, 3) for PIL; PIL takes (width, height).
        pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
        resized = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))
        return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous()
    return TF.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """masks (Tensor[G, H, W] uint8) -> Tensor[G, h, w] uint8, bilinear then threshold 0.5.

    Bilinear-and-threshold approximates the reference, which rescales polygons and then
    rasterises them; nearest sampling would shift edges by up to one source pixel.
    """
    if tuple(masks.shape[-2:]) == size:
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    if size[0] >= masks.shape[-2] and size[1] >= masks.shape[-1]:
        # Upsampling: antialiasing changes nothing, and the plain kernel is ~5x faster.
        resized = F.interpolate(masks[None].float(), size=size, mode="bilinear")[0]
    else:
        resized = resize_to(masks[:, None].float(), size)[:, 0]
    return (resized >= 0.5).to(torch.uint8)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Target], tuple[Tensor, Target]]]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class ResizeShortestEdge:
    """Resize so the shorter side is `min_sizes` (one drawn at random per call when a list, the
    reference's "choice" sampling for multi-scale training) and the longer side <= `max_size`.

    Boxes are scaled by (new_w / w, new_h / h); masks are resized with `resize_masks`.
    """

    def __init__(self, min_sizes: Sequence[int] | int, max_size: int) -> None:
        self.min_sizes = [min_sizes] if isinstance(min_sizes, int) else list(min_sizes)
        if not self.min_sizes or any(s <= 0 for s in self.min_sizes):
            raise ValueError(f"min_sizes must be positive integers, got {min_sizes!r}")
        self.max_size = max_size

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if len(self.min_sizes) == 1:
            min_size = self.min_sizes[0]
        else:
            min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), ()).item())]
        height, width = image.shape[-2:]
        new_size = get_output_size(height, width, min_size, self.max_size)
        image = resize_to(image, new_size)
        scale = torch.tensor(
            [new_size[1] / width, new_size[0] / height] * 2, dtype=target["boxes"].dtype
        )
        masks = target["masks"]
        if isinstance(masks, InstanceMasks):
            masks = masks.dense()
        target = {
            **target,
            "boxes": target["boxes"] * scale,
            "masks": resize_masks(masks, new_size),
        }
        if "sem_seg" in target:
            target["sem_seg"] = resize_sem_seg(target["sem_seg"], new_size)
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(min_sizes={self.min_sizes}, max_size={self.max_size})"


def resize_sem_seg(sem_seg: Tensor, size: tuple[int, int]) -> Tensor:
    """sem_seg (Tensor[H, W] int64) -> Tensor[h, w], nearest (class ids must not blend)."""
    if tuple(sem_seg.shape[-2:]) == tuple(size):
        return sem_seg
    return TF.resize(tv_tensors.Mask(sem_seg[None]), list(size)).as_subclass(Tensor)[0]


class TvTensorTransform:
    """Runs a torchvision v2 transform on (image, target): the image as `tv_tensors.Image`,
    boxes as XYXY `BoundingBoxes`, masks and sem_seg as `Mask`; labels and other keys pass."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        size = tuple(image.shape[-2:])
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=size),
            "masks": tv_tensors.Mask(target["masks"]),
        }
        if "sem_seg" in target:
            sample["sem_seg"] = tv_tensors.Mask(target["sem_seg"])
        out = self.transform(sample)
        new = {**target, **{k: v.as_subclass(Tensor) for k, v in out.items() if k != "image"}}
        return out["image"].as_subclass(Tensor), new

    def __repr__(self) -> str:
        return f"TvTensorTransform({self.transform})"


def flip_horizontal(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror image, boxes, masks (and sem_seg) left-right: x -> W - x (boxes in pixel-edge
    units)."""
    return RandomHorizontalFlip(1.0)(image, target)


class RandomHorizontalFlip(TvTensorTransform):
    """Flip with probability `p` (the reference's RandomFlip, horizontal, p 0.5): torchvision's
    v2 RandomHorizontalFlip on tv_tensors."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(v2.RandomHorizontalFlip(p))
        self.p = p

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
