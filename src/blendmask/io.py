"""The bottom layer: small helpers every other layer may import (device resolution, image
decoding). Imports nothing from the rest of the package."""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
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


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content (hex), read in 1 MB blocks: what identifies a model
    file, whatever its path (~0.1 s for a 45 MB tiny model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as 8-bit RGB with its EXIF orientation applied.

    Gray, gray+alpha, palette, RGBA and CMYK images are converted to RGB (alpha is dropped, as
    `PIL.Image.convert("RGB")` does). 16-bit images (mode "I;16" / "I") are scaled to 8 bits by
    dividing by 257 (65535 -> 255), not clipped. Float images (mode "F", e.g. a float TIFF) are
    read by their value range: when every value lies in [0, 1] they are intensities in [0, 1]
    and are multiplied by 255; otherwise they are taken as 0-255 values and clipped to that
    range. A float image with NaN or infinite values is an error.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, corrupt, truncated or not an image, or its header
            claims more than `PIL.Image.MAX_IMAGE_PIXELS` pixels (PIL's decompression-bomb
            limit, ~89 M; raise it for larger images), or than `max_pixels` when given
            (the caller's own limit, e.g. `predictor.MAX_IMAGE_PIXELS`); the message names
            the file.
    """
    path = Path(path)
    check_regular_file(path)
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; the size is checked below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            _check_pixel_count(opened, max_pixels)
            # load() decodes the pixels now, so truncated or corrupt data fails here, inside
            # the try, rather than later in some conversion.
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return _to_rgb(image)
    # PIL raises OSError, SyntaxError, ValueError, zlib errors, ... and a header within the
    # pixel limit can still ask for more memory than the machine has (MemoryError).
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def check_regular_file(path: str | Path, what: str = "image") -> None:
    """FileNotFoundError when `path` does not exist, ValueError when it is not a regular file
    (a folder, a FIFO, a device): checked before any open, since opening a FIFO blocks until
    something writes to it, forever in a batch job."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device"
        raise ValueError(f"cannot read {what} {path}: not a regular file ({kind})")


def _check_pixel_count(image: Image.Image, max_pixels: int | None = None) -> None:
    """Refuse a header that claims more pixels than PIL's limit (or `max_pixels`) before
    decoding anything: a few hundred corrupt bytes can claim 10^8 pixels and take seconds and
    gigabytes to read."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit and image.width * image.height > limit:
        raise ValueError(
            f"{image.width}x{image.height} = {image.width * image.height} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (a corrupt header or a decompression bomb)"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """(any PIL mode) -> "RGB", scaling 16-bit and [0, 1] float data instead of clipping it
    (see `load_image`)."""
    if image.mode.startswith("I"):
        # float32 is exact for 16-bit values and halves the memory of float64.
        array = np.asarray(image).astype(np.float32)
        # "I;16*" is 16-bit by definition; "I" (32-bit int) holds 16-bit PNGs on some Pillow
        # versions, so scale it too unless it already fits in 8 bits.
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array /= 257.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.array(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("float image with NaN or infinite values")
        # Float images come as [0, 1] intensities (scientific / HDR exports) or as 0-255
        # values; clipping the former would give a black image. An all-dark 0-255 image (max
        # <= 1) is read as [0, 1] too: the ambiguity is resolved in favour of the common case.
        if array.size and array.max() <= 1.0:
            np.clip(array, 0.0, 1.0, out=array)  # first: -3e38 * 255 would overflow
            array *= 255.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P":
        # Going through RGBA avoids PIL's warning for palettes with transparency.
        image = image.convert("RGBA")
    return image.convert("RGB")


def image_to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB image -> Tensor[3, H, W] uint8 (the decoded values; `pad_images` makes them float)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_annotated_image(path: Path, size: tuple[int, int], source: str) -> Tensor:
    """The image a dataset record points to -> Tensor[3, H, W] uint8, checked against the
    record's (width, height) `size` after EXIF orientation.

    `source` names the record in errors (e.g. "image id 7 of train.json"), so a bad file in a
    dataset of thousands is found without a debugger. One function for every dataset format,
    so they fail with the same message.
    """
    try:
        pil_image = load_image(path)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e} ({source})") from e
    if pil_image.size != size:
        raise ValueError(
            f"image {path} is {pil_image.width}x{pil_image.height} (w x h, after EXIF "
            f"orientation) but {source} says {size[0]}x{size[1]}"
        )
    return image_to_tensor(pil_image)
