"""COCO RLE of one detection's mask from its window, without the full-image mask.

pycocotools encodes an (H0, W0) array; a detection's mask is background outside a window
(`structures.paste.MaskWindow`), so its runs can be computed from the window alone: the
column-major image is the window's columns with the rows above and below them as zeros, and
everything left and right of the window as zeros. `window_to_rle` gives the same compressed
RLE as `pycocotools.mask.encode` of the full mask (canonical runs, no empty run except a
leading one), at O(window) memory instead of O(H0 x W0) per detection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from torch import Tensor


def window_runs(window: np.ndarray, x: int, y: int, image_size: tuple[int, int]) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, first run background) of the (H0, W0)
    mask that is `window` (bool[h, w]) at [y, y + h) x [x, x + w) and background elsewhere.

    Memory: about three window-sized bool arrays plus the run boundaries.
    """
    height, width = int(image_size[0]), int(image_size[1])
    h, w = window.shape
    if h == 0 or w == 0 or not (0 <= x and x + w <= width and 0 <= y and y + h <= height):
        raise ValueError(f"window {h}x{w} at ({x}, {y}) does not fit in a {height}x{width} image")
    # One row per window column: its h pixels, then (unless the window spans the image's
    # height) one background element standing for the H0 - h pixels until the next window
    # column starts. Runs only change inside this array, so it holds every run boundary.
    # One more background element after the last column ends its last run.
    gap = 1 if h < height else 0
    flat = np.zeros(w * (h + gap) + 1, dtype=bool)
    flat[:-1].reshape(w, h + gap)[:, :h] = window.T
    # Element indices where a run starts: value changes, and element 0 when it is foreground
    # (everything before the window is background).
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        starts = np.concatenate([[0], starts])
    # Element (column c, row r) of `columns` is pixel (y + r, x + c) of the image, which is
    # position (x + c) * H0 + y + r of the column-major image (r = h: the first pixel below).
    col, row = np.divmod(starts, h + gap)
    positions = (x + col) * height + y + row
    # A run starting at the image's end (a window at the bottom-right corner) is empty.
    positions = positions[positions < height * width]
    bounds = np.concatenate([[0], positions, [height * width]])
    return np.diff(bounds).tolist()


def window_to_rle(
    window: Tensor | np.ndarray, x: int, y: int, image_size: tuple[int, int]
) -> dict[str, Any]:
    """Compressed COCO RLE {"size": [H0, W0], "counts": str} of a mask given by its window
    (see `window_runs`); equal to `pycocotools.mask.encode` of the full mask."""
    array = window.detach().cpu().numpy() if isinstance(window, Tensor) else np.asarray(window)
    height, width = int(image_size[0]), int(image_size[1])
    counts = window_runs(array.astype(bool, copy=False), x, y, (height, width))
    rle = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
