"""The one preprocessing path from user images to a network batch (predict, eval, explain,
export and the torchvision adapter all call `preprocess`).

Images are decoded to uint8 RGB and resized the reference's way (`resize_image`: PIL bilinear on
uint8, see docs/reference.md §1.2), then padded and turned into float [0, 1] by `pad_images`.
Float tensors given by a caller are taken as RGB in [0, 1] and resized in float; other pixel
values are refused (`image_checks.check_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blendmask.data.batching import pad_images
from blendmask.data.transforms import resize_image
from blendmask.image_checks import check_image
from blendmask.io import load_image
from blendmask.structures import ImageBatch

ImageInput = str | Path | Image.Image | np.ndarray | Tensor


def to_image_tensor(image: ImageInput, *, name: str = "image") -> Tensor:
    """Any supported image input -> RGB Tensor[3, H, W]: uint8 for decoded images and integer
    inputs, float in [0, 1] for float inputs.

    Paths and PIL images are decoded with `blendmask.io.load_image` (EXIF, modes); numpy arrays
    are H x W x 3 RGB, tensors [3, H, W] RGB. Pixel values: uint8 (and other integer dtypes)
    0-255, float [0, 1]; anything else, NaN / infinite values and empty images raise a
    ValueError naming `name` (`blendmask.image_checks.check_image`, the contract).
    """
    if isinstance(image, (str, Path)):
        image = load_image(Path(image))
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        kind = check_image(image, "HWC", name)
        if kind == "integer":
            image = image.astype(np.uint8)  # exact: the values are in 0-255
        elif not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))  # torch takes native order only
        elif not image.flags.writeable or not image.flags.c_contiguous:
            image = image.copy()  # torch cannot share a read-only or strided buffer
        image = torch.from_numpy(image).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        kind = check_image(image, "CHW", name)
    else:
        raise ValueError(
            f"{name}: expected a path, PIL image, H x W x 3 array or Tensor[3, H, W], "
            f"got {type(image).__name__}"
        )
    if kind == "float":
        return image.float()
    # integer dtypes hold 0-255 (checked): read as uint8, resized as decoded files are
    return image if image.dtype == torch.uint8 else image.to(torch.uint8)


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
