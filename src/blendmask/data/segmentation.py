"""COCO segmentations (polygons, uncompressed RLE, compressed RLE): checking one against its
image, and turning it into a compressed RLE or a mask.

Why the checks are this thorough: pycocotools trusts its input. A compressed RLE whose `counts`
string is garbage decodes into nonsense runs (areas of 4,294,967,290 px on a 96 x 96 image) and
makes COCOeval's IoU spin forever; polygon coordinates of 1e8 px take pycocotools half a minute
to rasterise. So every segmentation the package reads (training and evaluation ground truth,
results files) goes through `check_segmentation` first, which is exact and cheap:
- a compressed RLE's `counts` string is parsed here (`compressed_rle_runs`, the inverse of
  pycocotools' rleToString) without decoding the mask: every run must be >= 0 and the runs must
  cover exactly height * width pixels, which also bounds the area by height * width;
- uncompressed RLE counts must be non-negative integers summing to height * width;
- polygon coordinates must be finite and lie within one image size of the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

# pycocotools stores run lengths as 32-bit unsigned ints and decodes each 5-bit group of a
# counts string into a C int: runs (and deltas) need at most 7 characters.
_MAX_GROUP_CHARS = 7
# Polygon points may lie outside the image (COCO polygons often stick out by a pixel), but not
# by more than this many image sizes: rasterising costs time proportional to the coordinates.
_POLYGON_MARGIN = 1.0


def compressed_rle_runs(counts: str | bytes) -> np.ndarray:
    """The run lengths (int64) that a compressed RLE `counts` string encodes.

    The format (pycocotools' rleToString): each run is a signed number written in 5-bit groups,
    least significant first, one character per group (value + 48, so '0'..'o'), bit 0x20 set
    while more groups follow, bit 0x10 of the last group the sign; from the fourth run on, a
    run is stored as its difference to the run two before. Vectorised with numpy so that the
    thousands of masks of a json validate in milliseconds.

    Raises:
        ValueError: a character outside '0'..'o', a number longer than 7 characters or cut off
            at the end of the string (the message says which; the caller adds where).
    """
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError:
        raise ValueError(
            "'counts' has non-ASCII characters; expected characters '0'..'o'"
        ) from None
    codes = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise ValueError("'counts' has characters outside '0'..'o' (not a compressed RLE)")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise ValueError("'counts' ends in the middle of a number (truncated)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_GROUP_CHARS:
        raise ValueError(
            f"'counts' has a number of {lengths.max()} characters; at most "
            f"{_MAX_GROUP_CHARS} fit a 32-bit run length"
        )
    position = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    # A set sign bit in the last group: the number is negative (two's complement of 5k bits).
    negative = (codes[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    runs = values.copy()
    # Delta coding: run i (i >= 3) = value i + run i - 2, i.e. running sums along the odd
    # positions (from 1) and along the even positions from 2 (run 0 stands alone).
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _check_runs(runs: np.ndarray, height: int, width: int, where: str, what: str) -> None:
    if runs.size and runs.min() < 0:
        raise ValueError(f"{where}: {what} has a negative run length; expected runs >= 0")
    total = int(runs.sum())
    if total != height * width:
        raise ValueError(
            f"{where}: {what} covers {total} pixels; expected exactly height * width = "
            f"{height} * {width} = {height * width} (corrupt counts)"
        )


def _check_rle(segmentation: dict, height: int, width: int, where: str) -> None:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not isinstance(size, list) or len(size) != 2 or not all(map(is_int, size)) or counts is None:
        raise ValueError(f"{where}: RLE 'segmentation' needs 'size' [h, w] (integers) and 'counts'")
    if list(size) != [height, width]:
        raise ValueError(
            f"{where}: RLE size {size} does not match the image's [height, width] "
            f"[{height}, {width}]"
        )
    if isinstance(counts, list):
        # Bounded before numpy sees them: a json integer may exceed int64.
        if not all(is_int(c) and 0 <= c <= height * width for c in counts):
            raise ValueError(
                f"{where}: uncompressed RLE 'counts' must be integers in [0, height * width]"
            )
        runs = np.asarray(counts, dtype=np.int64)
        _check_runs(runs, height, width, where, "uncompressed RLE 'counts'")
    elif isinstance(counts, (str, bytes)):
        try:
            runs = compressed_rle_runs(counts)
        except ValueError as e:
            raise ValueError(f"{where}: compressed RLE: {e}") from None
        _check_runs(runs, height, width, where, "compressed RLE 'counts'")
    else:
        raise ValueError(f"{where}: RLE 'counts' must be a list or a string")


def _check_polygons(segmentation: list, height: int, width: int, where: str) -> None:
    if not segmentation:
        raise ValueError(f"{where}: 'segmentation' is an empty list; expected polygons")
    low_x, high_x = -_POLYGON_MARGIN * width, (1 + _POLYGON_MARGIN) * width
    low_y, high_y = -_POLYGON_MARGIN * height, (1 + _POLYGON_MARGIN) * height
    for p, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
            raise ValueError(
                f"{where}: polygon {p} of 'segmentation' must be a list of numbers "
                f"[x0, y0, x1, y1, ...]"
            )
        if len(polygon) % 2 != 0 or len(polygon) < 6:
            raise ValueError(
                f"{where}: polygon {p} of 'segmentation' has {len(polygon)} numbers; expected "
                f"an even number >= 6 (a polygon needs at least 3 points)"
            )
        if not all(is_finite_number(v) for v in polygon):
            raise ValueError(f"{where}: polygon {p} of 'segmentation' has a NaN or infinite value")
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < low_x or max(xs) > high_x or min(ys) < low_y or max(ys) > high_y:
            raise ValueError(
                f"{where}: polygon {p} of 'segmentation' reaches outside x in [{low_x:g}, "
                f"{high_x:g}], y in [{low_y:g}, {high_y:g}] (the {width}x{height} image and a "
                f"margin of one image size): not pixel coordinates of this image"
            )


def check_segmentation(segmentation: Any, height: int, width: int, where: str) -> None:
    """Raise ValueError unless `segmentation` is a usable polygon list or RLE of this image.

    `where` starts the message (e.g. "annotation 12 (annotations[3]) of instances.json")."""
    if isinstance(segmentation, list):
        _check_polygons(segmentation, height, width, where)
    elif isinstance(segmentation, dict):
        _check_rle(segmentation, height, width, where)
    else:
        raise ValueError(
            f"{where}: expected 'segmentation' as a list of polygons or an RLE object, "
            f"got {type(segmentation).__name__}"
        )


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE of the whole mask.

    Expects a segmentation that passed `check_segmentation`."""
    if isinstance(segmentation, list):
        # Several polygons are parts of one object: merge them into one mask.
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Polygons or RLE -> uint8[height, width] mask (1 inside)."""
    return mask_util.decode(segmentation_to_rle(segmentation, height, width))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is a finite float; json integers can be too large for
    a float, and math.isfinite raises OverflowError on those."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
