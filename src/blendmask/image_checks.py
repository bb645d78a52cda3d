"""The one sanity check of an image a caller hands over as pixels (an array or a tensor):
shape, size, dtype, value range and finite values. `Predictor`, `preprocess`, `explain`, the
torchvision adapter and the ONNX runtime (which takes uint8 arrays only) all call `check_image`,
so one image is accepted or refused alike everywhere, with the same message.

The contract of pixel values (the network normalises them itself, from its config):
- uint8: 0-255;
- other integer dtypes: 0-255 too (the values an 8-bit image holds after `astype(int)`); they
  are read as uint8, and values outside 0-255 are refused (a 16-bit image: divide by 257);
- float dtypes: [0, 1] (up to one grey level, 1/255, outside it for rounding); a float image
  in 0-255, or one already normalised, is refused rather than read 255x too bright; NaN or
  infinite values are refused;
- anything else (bool, complex, object) is refused.
Images must be at least 1 x 1 pixels; any aspect ratio is predicted (the resize keeps every side
>= 1, `data/transforms.py::get_output_size`).

This module imports neither numpy nor torch: the torch-free ONNX runtime uses it too. The values
are read with the array's own `min()` / `max()` (numpy and torch both propagate NaN): two passes,
nothing copied.
"""

from __future__ import annotations

import math
from typing import Any, Literal

# How far outside [0, 1] a float image may go (rounding of a 0-255 image divided by 255).
RANGE_TOLERANCE = 1 / 255

ImageKind = Literal["uint8", "integer", "float"]


def check_image(image: Any, layout: Literal["HWC", "CHW"], name: str = "image") -> ImageKind:
    """ValueError naming `name` and the problem unless `image` is an RGB image of at least 1 x 1
    pixels whose values follow the module's contract.

    Args:
        image: a numpy array (`layout="HWC"`: H x W x 3) or a torch Tensor (`"CHW"`: [3, H, W]).
        name: how the message names the image (a file name, "images[2]").

    Returns:
        "uint8", "integer" (another integer dtype, values in 0-255: convert it to uint8) or
        "float" (values in [0, 1]).
    """
    shape = tuple(int(s) for s in image.shape)
    channels = shape[2] if layout == "HWC" and len(shape) == 3 else shape[0] if shape else 0
    if len(shape) != 3 or channels != 3:
        want = "an H x W x 3 RGB array" if layout == "HWC" else "an RGB tensor of shape [3, H, W]"
        raise ValueError(f"{name}: expected {want}, got shape {shape}")
    height, width = shape[:2] if layout == "HWC" else shape[1:]
    if height < 1 or width < 1:
        raise ValueError(f"{name} is empty ({height} x {width} px): expected at least 1 x 1")
    return check_pixel_values(image, name)


def check_pixel_values(image: Any, name: str = "image") -> ImageKind:
    """The dtype and value part of `check_image` (any shape with at least one value)."""
    # numpy's name ("float32" also for big-endian ">f4"), torch's str ("torch.float32")
    dtype = getattr(image.dtype, "name", None) or str(image.dtype).removeprefix("torch.")
    if dtype == "uint8":
        return "uint8"
    kind: ImageKind
    if dtype.startswith(("int", "uint")):
        kind, low, high, want = "integer", 0.0, 255.0, "0-255"
    elif dtype.startswith(("float", "bfloat")):
        kind, low, high, want = "float", -RANGE_TOLERANCE, 1 + RANGE_TOLERANCE, "[0, 1]"
    else:
        raise ValueError(
            f"{name}: expected uint8 pixels (0-255) or float pixels in [0, 1], got dtype {dtype}"
        )
    lo, hi = float(image.min()), float(image.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} has NaN or infinite values ({dtype} pixels)")
    if low <= lo and hi <= high:
        return kind
    found = f"{name}: {dtype} pixel values must lie in {want}, found [{lo:g}, {hi:g}]"
    if kind == "float":
        raise ValueError(
            f"{found}: divide a 0-255 image by 255 or pass it as uint8 (do not normalise it: "
            "the model does)"
        )
    raise ValueError(f"{found}: pass 8-bit values as uint8 (a 16-bit image: divide it by 257)")
