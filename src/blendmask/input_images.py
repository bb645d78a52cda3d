"""Images a user gives: `to_image_tensor` (any supported input -> RGB tensor), the size check
made before decoding and the one loader of predict / eval / `Predictor` / `Detections.plot`
(re-exported by `blendmask.predictor`).

Images larger than `MAX_IMAGE_PIXELS` are refused before they are decoded (`check_image_size`):
memory grows with the image (a few copies of H0 x W0 x 3 bytes while decoding, resizing and
drawing), and a corrupt or hostile header must not make the process allocate gigabytes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blendmask.image_checks import check_image
from blendmask.io import check_regular_file, load_image

# What every entry point (Predictor, predict, eval, explain, `Detections.plot`) takes as an image.
ImageInput = str | Path | Image.Image | np.ndarray | Tensor

# The largest image predict / eval / Predictor accept, in pixels (H0 x W0). Memory grows with
# the image (~0.3 GB per RGB copy at this size), not with its detections: `blendmask predict`
# of a 10000 x 10000 image peaks at ~2.4 GB RSS with overlays on a CPU (~1 GB of it torch).
MAX_IMAGE_PIXELS = 10000 * 10000


def check_image_size(image: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """ValueError naming the image when it has more than `max_pixels` pixels.

    Files are measured from their header (nothing decoded); a file whose header cannot be read
    passes, and decoding it then reports why (`blendmask.io.load_image`).
    """
    name = str(image) if isinstance(image, (str, Path)) else "image"
    width: int | None
    height: int | None
    if isinstance(image, (str, Path)):
        check_regular_file(image)  # before opening: a FIFO would block forever
        try:
            # PIL warns from 89 MP and refuses from 179 MP on its own; this check decides.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(image) as opened:
                    width, height = opened.size
        except Image.DecompressionBombError:
            width = height = None  # over PIL's own ceiling: certainly over ours
        except Exception:
            return
    elif isinstance(image, Image.Image):
        width, height = image.size
    elif len(getattr(image, "shape", ())) < 2:
        return  # not an image: `to_image_tensor` says why
    elif isinstance(image, Tensor):  # [3, H, W]
        height, width = int(image.shape[-2]), int(image.shape[-1])
    else:  # H x W x 3 array
        height, width = int(image.shape[0]), int(image.shape[1])
    if width is None or height is None or width * height > max_pixels:
        size = "" if width is None or height is None else f" is {width} x {height} px,"
        raise ValueError(
            f"{name}{size} larger than the maximum image size of {max_pixels} pixels "
            f"(MAX_IMAGE_PIXELS, {_side(max_pixels)}); downscale or tile it"
        )


def _side(pixels: int) -> str:
    side = int(pixels**0.5)
    return f"{side} x {side}" if side * side == pixels else f"{pixels} px"


def load_input_image(image: ImageInput, max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    """`to_image_tensor` after `check_image_size`: RGB Tensor[3, H0, W0] (uint8 for decoded
    files and integer arrays, float in [0, 1] for float ones), or ValueError /
    FileNotFoundError naming the file (the pixel contract: `blendmask.image_checks`)."""
    check_image_size(image, max_pixels)
    name = str(image) if isinstance(image, (str, Path)) else "image"
    if isinstance(image, (str, Path)):
        # Our limit replaces PIL's decompression-bomb limit (~89 MP) for the files we read.
        # One export of the decoded RGB pixels, the PIL image freed before the writable copy
        # torch needs: two H0 x W0 x 3 buffers at a time, not the three of `to_image_tensor`.
        array = np.asarray(load_image(image, max_pixels=max_pixels))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        del array
    tensor = to_image_tensor(image, name=name)
    check_image_size(tensor, max_pixels)  # arrays, and files whose header was unreadable
    return tensor


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
