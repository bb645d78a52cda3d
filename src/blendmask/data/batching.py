"""Batching: pad images of different sizes into one tensor (detectron2's ImageList).
Also `worker_init`, the hook of every DataLoader the commands build.

The reference pads with 0 at the bottom/right to a multiple of 32, the stride of the last
backbone feature used by the FPN (docs/reference.md §1.1), and keeps each image's size
inside the padding so the post-processor can crop and rescale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from blendmask.structures import ImageBatch, Target


def pad_images(images: list[Tensor], size_divisibility: int = 32) -> ImageBatch:
    """Stack images into one zero-padded batch.

    Args:
        images (list[Tensor[3, Hi, Wi]]): at least one image, all with the same channels; uint8
            (0-255) or float (0-1).
        size_divisibility: the padded H and W are rounded up to a multiple of this (<= 1: none).

    Returns:
        ImageBatch with tensor (Tensor[N, 3, H, W] float in [0, 1]; float64 stays float64)
        and image_sizes [(Hi, Wi), ...].
    """
    if not images:
        raise ValueError("pad_images: expected at least one image, got an empty list")
    channels = images[0].shape[0]
    for k, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(
                f"pad_images: expected images of shape [{channels}, H, W], "
                f"got {tuple(image.shape)} for image {k}"
            )
    max_h = max(int(image.shape[1]) for image in images)
    max_w = max(int(image.shape[2]) for image in images)
    if size_divisibility > 1:
        # Round up to the next multiple: -(-a // b) is ceil(a / b).
        max_h = -(-max_h // size_divisibility) * size_divisibility
        max_w = -(-max_w // size_divisibility) * size_divisibility
    dtype = images[0].dtype if images[0].is_floating_point() else torch.float32
    batch = images[0].new_zeros((len(images), channels, max_h, max_w), dtype=dtype)
    for padded, image in zip(batch, images):
        window = padded[:, : image.shape[1], : image.shape[2]]
        if image.dtype == torch.uint8:
            # The one place decoded images become float [0, 1] (training and inference).
            torch.div(image, 255.0, out=window)
        else:
            window.copy_(image)
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    return ImageBatch(batch, sizes)


def collate(
    batch: list[tuple[Tensor, Target]], size_divisibility: int = 32
) -> tuple[ImageBatch, list[Target]]:
    """DataLoader `collate_fn`: [(image, target), ...] -> (padded ImageBatch, [target, ...])."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return pad_images(images, size_divisibility), targets


def worker_init(_: int) -> None:
    """DataLoader `worker_init_fn`: one thread per worker."""
    # Workers decode and resize; one thread each keeps them from fighting the main process.
    torch.set_num_threads(1)
