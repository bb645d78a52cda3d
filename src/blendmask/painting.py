"""Painting instance masks into an image: the translucent fills and opaque contours of the
overlays (`blendmask.visualization`), and their box outlines.

Time and memory are bounded by the image, not by the number of instances: the instances' mask
windows (`structures.paste.MaskWindow`) go once into a map of the top instance at each pixel
(`owner_map`), then fill and contours are painted in one pass over the pixels, a band of rows
at a time (`paint_owner_map`), with `torchvision.utils.draw_segmentation_masks`' arithmetic.
Box outlines are drawn region by region (`draw_box_outlines`), never through a full-image
PIL copy (`draw_bounding_boxes` makes three: ~1 GB for a 10000 x 10000 image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from blendmask.structures.paste import MaskWindow

Color = tuple[int, int, int]

# Pixels blended at once by `paint_owner_map` (float32 copies of a band: ~50 MB).
_PAINT_BAND_PIXELS = 2**22


def paint_windows(
    canvas: Tensor,
    windows: Iterable[MaskWindow],
    colors: Sequence[Color],
    *,
    alpha: float = 0.5,
    contour_width: int = 0,
    out: Tensor | None = None,
) -> Tensor:
    """Translucent masks with `torchvision.utils.draw_segmentation_masks`' arithmetic, plus
    opaque contours `contour_width` px wide (0: none), from mask windows:
    `paint_owner_map(canvas, owner_map(windows, ...), ...)`.

    Where masks overlap, the one with the highest index (the one drawn last: the most
    confident detection) gives the pixel its colour; torchvision would paint it black, which
    reads as a black mask. Elsewhere the pixels are `draw_segmentation_masks`' own.

    Args:
        canvas (Tensor[3, H, W]): uint8.
        windows: (d, x, y, bool[h, w]) inside the image, d indexing `colors`.
        out (Tensor[3, H, W] | None): uint8 to write the result into; may be `canvas`
            itself (each band is read before it is written).
    Returns:
        Tensor[3, H, W] uint8.
    """
    owner = owner_map(windows, (int(canvas.shape[-2]), int(canvas.shape[-1])), len(colors))
    return paint_owner_map(canvas, owner, colors, alpha=alpha, contour_width=contour_width, out=out)


def owner_map(
    windows: Iterable[MaskWindow],
    image_size: tuple[int, int],
    count: int,
    ranks: Sequence[int] | None = None,
) -> Tensor:
    """Which of `count` masks is on top at each pixel: the highest index d (or `ranks[d]`) of
    the windows covering it, -1 where none does. One pass over the windows, in any order
    (`paste_mask_windows` groups them by size).

    Returns:
        Tensor[H, W]: int16 (int32 from 2**15 - 1 masks).
    """
    dtype = torch.int16 if count < 2**15 - 1 else torch.int32
    owner = torch.full(image_size, -1, dtype=dtype)
    array = owner.numpy()  # the same memory
    for d, x, y, window in windows:
        top = d if ranks is None else int(ranks[d])
        region = array[y : y + window.shape[0], x : x + window.shape[1]]
        # One pass over the window, in place, no temporaries: max(region, top) where the
        # mask is (a boolean-indexed gather and scatter is ~5x slower).
        np.maximum(region, top, where=window.numpy(), out=region)
    return owner


def paint_owner_map(
    canvas: Tensor,
    owner: Tensor,
    colors: Sequence[Color],
    *,
    alpha: float = 0.5,
    contour_width: int = 0,
    out: Tensor | None = None,
) -> Tensor:
    """Each pixel blended with the colour of its top mask (`owner_map`), torchvision's
    arithmetic; pixels within `contour_width` px of a change of top mask (another mask, or
    none, or the image's edge) in that colour, opaque: the outline of what is seen of each
    mask. One pass over the pixels, in bands of rows, whatever the number of masks.

    Args:
        canvas (Tensor[3, H, W]): uint8.
        owner (Tensor[H, W]): int, -1 or an index into `colors`.
        out (Tensor[3, H, W] | None): as in `paint_windows`.
    Returns:
        Tensor[3, H, W] uint8.
    """
    height, width = int(canvas.shape[-2]), int(canvas.shape[-1])
    # (3, 1 + masks): the colours as torchvision makes them (uint8), column 0 for "no mask"
    # (never shown), so that owner + 1 indexes it.
    palette = torch.tensor([(0, 0, 0), *colors], dtype=torch.uint8).t().contiguous()
    out = torch.empty_like(canvas) if out is None else out
    rows = max(1, _PAINT_BAND_PIXELS // max(1, width))
    for r0 in range(0, height, rows):
        image = canvas[:, r0 : r0 + rows]
        band = owner[r0 : r0 + rows].to(torch.int32) + 1
        covered = band > 0
        # (3, h, W): each pixel's top colour, one gather (no boolean indexing).
        colored = palette.index_select(1, band.flatten()).view(image.shape)
        img_to_draw = torch.where(covered, colored, image)
        # torchvision's arithmetic, image * (1 - alpha) + img_to_draw * alpha in float32
        # truncated to uint8, in place on the float copies (the same bits, half the passes).
        blended = image.to(torch.float32).mul_(1 - alpha)
        blended = blended.add_(img_to_draw.to(torch.float32).mul_(alpha)).to(torch.uint8)
        if contour_width > 0:
            on_edge = covered & _near_change(owner, r0, r0 + rows, contour_width)
            blended = torch.where(on_edge, colored, blended)
        out[:, r0 : r0 + rows] = blended
    return out


def _near_change(owner: Tensor, r0: int, r1: int, radius: int) -> Tensor:
    """bool[r1 - r0, W]: rows [r0, r1) of `owner`, True where some pixel within Chebyshev
    distance `radius` holds another value (beyond the image counts as -1)."""
    height, width = owner.shape
    r1 = min(r1, height)
    # (r1 - r0 + 2 radius, W + 2 radius): the band with `radius` pixels of halo on each side.
    ext = torch.full((r1 - r0 + 2 * radius, width + 2 * radius), -1, dtype=owner.dtype)
    top, bottom = max(0, r0 - radius), min(height, r1 + radius)
    ext[top - r0 + radius : bottom - r0 + radius, radius : radius + width] = owner[top:bottom]
    # The neighbourhood is a square: max and min of rows, then of columns (separable).
    high = _sliding(_sliding(ext, radius, 0, torch.maximum), radius, 1, torch.maximum)
    low = _sliding(_sliding(ext, radius, 0, torch.minimum), radius, 1, torch.minimum)
    centre = ext[radius:-radius, radius:-radius] if radius else ext
    return (high != centre) | (low != centre)


def _sliding(values: Tensor, radius: int, dim: int, op: Callable[..., Tensor]) -> Tensor:
    """`op` (max / min) over windows of 2 radius + 1 along `dim`, which loses 2 radius
    elements: out[i] = op(values[i : i + 2 radius + 1]). Doubling spans: ~log2(2 radius + 1)
    elementwise ops instead of 2 radius."""
    span, size = 1, 2 * radius + 1
    while span < size:
        step = min(span, size - span)
        length = values.shape[dim] - step
        values = op(values.narrow(dim, 0, length), values.narrow(dim, step, length))
        span += step
    return values


def mask_contour(mask: Tensor, width: int) -> Tensor:
    """The pixels of `mask` (bool[h, w]) within `width` px of a background pixel, pixels
    beyond the window counting as background: the mask minus its erosion.

    The erosion is a max-pool of the complement (separable: a row pass, then a column pass,
    2 x (2 width + 1) comparisons a pixel instead of (2 width + 1)^2).
    """
    outside = (~mask).to(torch.float32)[None, None]
    outside = F.pad(outside, (width, width, width, width), value=1.0)
    kernel = 2 * width + 1
    near = F.max_pool2d(F.max_pool2d(outside, (1, kernel), stride=1), (kernel, 1), stride=1)
    return mask & (near[0, 0] > 0)


def draw_box_outlines(
    canvas: Tensor, boxes: Tensor, colors: Sequence[Color], *, width: int
) -> Tensor:
    """`torchvision.utils.draw_bounding_boxes(canvas, boxes, colors=colors, width=width)`'s
    pixels, drawn into `canvas` itself (returned) without a full-image copy.

    A box at least 2 `width` px on each side is its four strips, `width` px wide inside the
    box's integer corners, as PIL draws them; a smaller one is drawn by
    `draw_bounding_boxes` on the crop it can reach (the box plus `width`).

    Args:
        canvas (Tensor[3, H, W]): uint8; boxes (Tensor[D, 4]): xyxy (truncated to integers,
            as torchvision does); one colour per box, later boxes over earlier ones.
    """
    height, image_width = int(canvas.shape[-2]), int(canvas.shape[-1])
    for (x0, y0, x1, y1), color in zip(boxes.to(torch.int64).tolist(), colors):
        if x1 - x0 + 1 >= 2 * width and y1 - y0 + 1 >= 2 * width:
            ink = torch.tensor(color, dtype=torch.uint8)[:, None, None]
            for ya, yb, xa, xb in (
                (y0, y0 + width, x0, x1 + 1),  # top
                (y1 - width + 1, y1 + 1, x0, x1 + 1),  # bottom
                (y0 + width, y1 - width + 1, x0, x0 + width),  # left
                (y0 + width, y1 - width + 1, x1 - width + 1, x1 + 1),  # right
            ):
                canvas[:, max(ya, 0) : max(yb, 0), max(xa, 0) : max(xb, 0)] = ink
            continue
        ya, yb = max(y0 - width, 0), min(y1 + width + 1, height)
        xa, xb = max(x0 - width, 0), min(x1 + width + 1, image_width)
        if ya >= yb or xa >= xb:
            continue  # wholly outside the image
        crop = canvas[:, ya:yb, xa:xb]
        local = torch.tensor([[x0 - xa, y0 - ya, x1 - xa, y1 - ya]])
        crop.copy_(draw_bounding_boxes(crop, local, colors=[color], width=width))
    return canvas
