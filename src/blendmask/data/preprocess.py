"""The one preprocessing path from user images to a network batch (predict, eval, explain,
export and the torchvision adapter all call `preprocess`).

Images are decoded to uint8 RGB and resized the reference's way (`resize_image`: PIL bilinear on
uint8, see docs/reference.md §1.2), then padded and turned into float [0, 1] by `pad_images`.
Float tensors given by a caller are taken as RGB in [0, 1] and resized in float; other pixel
values are refused (`image_checks.check_image`). `to_image_tensor` itself lives in
`blendmask.input_images`, below the data layer, so that `Detections.plot` reads images too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blendmask.data.batching import pad_images
from blendmask.data.transforms import resize_image
from blendmask.input_images import ImageInput, to_image_tensor  # re-exported, as before
from blendmask.structures import ImageBatch

__all__ = ["ImageInput", "preprocess", "to_image_tensor"]


def preprocess(
    images: Sequence[ImageInput],
    min_size: int,
    max_size: int,
    *,
    scale: float = 0.0,
    size_divisibility: int = 32,
    device: torch.device | str | None = None,
) -> tuple[ImageBatch, list[tuple[int, int]]]:
    """Images -> (padded float batch at the test size, original (H0, W0) of each image).

    Args:
        images: paths, PIL images, H x W x 3 arrays or Tensor[3, H0, W0] (see
            `to_image_tensor`).
        min_size, max_size: the shortest-edge resize (`data.min_size_test` / `max_size_test`).
        scale: > 0 resizes by this factor instead, capped at `max_size` (`data.test_scale`).
        size_divisibility: pad H and W up to a multiple of this.
        device: where the batch goes (None: stays on the CPU).

    Returns:
        (ImageBatch with tensor Tensor[N, 3, H, W] float RGB in [0, 1], [(H0, W0), ...]).
    """
    tensors = [to_image_tensor(image) for image in images]
    orig_sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    resized = [resize_image(t, min_size, max_size, scale) for t in tensors]
    batch = pad_images(resized, size_divisibility)
    return (batch if device is None else batch.to(device)), orig_sizes
