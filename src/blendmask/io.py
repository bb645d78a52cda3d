"""The bottom layer: small helpers every other layer may import (device resolution, image
decoding). Imports nothing from the rest of the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`cpu | cuda | cuda:N | auto` (auto: CUDA when available) -> a torch.device; a
    torch.device passes through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (use cpu or auto)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device: expected cpu, cuda or auto, got {device!r}")
    return torch.device(device)


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB with its EXIF orientation applied.

    Gray, gray+alpha, palette, RGBA and CMYK images are converted to RGB (alpha is dropped, as
    `PIL.Image.convert("RGB")` does). 16-bit images (mode "I;16" / "I") are scaled to 8 bits by
    dividing by 257 (65535 -> 255), not clipped; float images ("F") are clipped to [0, 255].

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, corrupt, truncated or not an image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as opened:
            # load() decodes the pixels now, so truncated or corrupt data fails here, inside
            # the try, rather than later in some conversion.
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return _to_rgb(image)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors, ...
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _to_rgb(image: Image.Image) -> Image.Image:
    """(any PIL mode) -> "RGB", scaling 16-bit data instead of clipping it."""
    if image.mode.startswith("I"):
        array = np.asarray(image).astype(np.float64)
        # "I;16*" is 16-bit by definition; "I" (32-bit int) holds 16-bit PNGs on some Pillow
        # versions, so scale it too unless it already fits in 8 bits.
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P":
        # Going through RGBA avoids PIL's warning for palettes with transparency.
        image = image.convert("RGBA")
    return image.convert("RGB")


def image_to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB image -> Tensor[3, H, W] uint8 (the decoded values; `pad_images` makes them float)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
