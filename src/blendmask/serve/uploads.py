"""Uploaded images: the request body read under a size limit, the image taken out of a
multipart form or raw bytes, and decoded in memory with a decompression-bomb guard.

Nothing here touches the file system: the body is held in memory (at most `max_bytes`), the
multipart form is parsed by the standard library's `email` parser (not a framework's spooling
to temporary files) and the file name a client sends is never read.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator
from email import policy
from email.parser import BytesParser

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Form fields that may hold the image, in order of preference (any other file part is taken
# when none of these is present).
IMAGE_FIELDS = ("file", "image")


class HTTPError(Exception):
    """An error answered as `{"error": message}` with `status` (a 4xx or 5xx code)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


async def read_limited(
    chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int
) -> bytes:
    """The whole body, or HTTPError 413 as soon as it is known to exceed `max_bytes`: from the
    Content-Length header before reading anything, else while streaming (chunked uploads)."""
    too_large = f"upload larger than the limit of {max_bytes} bytes (--max-upload-mb)"
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise HTTPError(400, f"bad Content-Length header {content_length!r}") from None
        if declared > max_bytes:
            raise HTTPError(413, too_large)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, too_large)
        parts.append(chunk)
    return b"".join(parts)


def image_bytes(body: bytes, content_type: str | None) -> bytes:
    """The image in a request body: the file part of a multipart/form-data body, otherwise the
    body itself (raw bytes, any content type)."""
    if not body:
        raise HTTPError(400, "empty body: send an image as a multipart file or as raw bytes")
    if not (content_type or "").lower().startswith("multipart/form-data"):
        return body
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise HTTPError(400, "multipart/form-data body without parts (bad boundary?)")
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts.setdefault(name, payload)
    for name in (*IMAGE_FIELDS, *parts):
        if name in parts and parts[name]:
            return parts[name]
    raise HTTPError(
        400, f"multipart form has no image: send it in a field named {IMAGE_FIELDS[0]!r}"
    )


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> uint8 RGB array [H, W, 3].

    HTTPError 400 for bytes that are no image or a truncated / corrupt one; 413 for an image
    over `max_pixels` pixels, measured from its header before any pixel is decoded (a few KB of
    PNG can declare gigapixels: a decompression bomb)."""
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning / error thresholds are global; ours is `max_pixels`.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise HTTPError(413, _too_many_pixels(width, height, max_pixels))
                opened.verify()  # chunk CRCs and structure, before the pixels are decoded
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()  # decodes now: truncated data fails here, inside the try
                # EXIF orientation as `blendmask.io.load_image` applies it to files.
                upright = ImageOps.exif_transpose(opened)
                array = np.asarray(upright.convert("RGB"), dtype=np.uint8)
    except HTTPError:
        raise
    except Image.DecompressionBombError:
        raise HTTPError(413, _too_many_pixels(None, None, max_pixels)) from None
    except UnidentifiedImageError:
        raise HTTPError(400, "not an image: the upload is no format PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HTTPError(400, f"corrupt or truncated image: {reason}") from None
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise HTTPError(400, f"unusable image of shape {tuple(array.shape)}")
    return array


def _too_many_pixels(width: int | None, height: int | None, max_pixels: int) -> str:
    size = "" if width is None or height is None else f" is {width} x {height} px,"
    return f"image{size} over the limit of {max_pixels} pixels (--max-pixels)"
