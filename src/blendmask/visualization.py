"""Pictures of predictions: detection overlays (`predict`, `demo`, the detections panel of the
blender figure in `blendmask.explain`, BlendMask Fig. 1 / 3) and the ground truth / prediction
panels of `eval --plots` (`blendmask.metrics.plots`).

An overlay shows each instance in its own colour (`instance_color`: by rank in the image, not
by class, so two touching objects of one class stay apart): a translucent fill with an opaque
contour around what is seen of it (`paint_owner_map`), its box
(`torchvision.utils.draw_bounding_boxes`) and a "name score" label on a filled background, kept
inside the image (`draw_labels`). The font size,
line and contour widths grow with the image (`overlay_sizes`), so labels stay readable on a
256 px demo image and on a 4000 px photograph.

Memory is bounded by the image, never by the number of detections, and so is the time of the
painting: masks are read one detection at a time as windows of the image
(`Detections.mask_windows`) into one map of the top instance at each pixel (`owner_map`),
never into the (D, H0, W0) stack that `torchvision.utils.draw_segmentation_masks` takes; fill
and contours are then painted in one pass over the pixels (`paint_owner_map`), with that
function's arithmetic (same pixels, except that overlaps take the colour of the most confident
instance instead of black).

Drawing sits in the lowest layer with the structures, so that `Detections.plot` draws any
`Detections`: it reads a `Detections` through its methods and imports only the structures'
`paste` and `classes` modules at run time (`Detections.plot` imports this module).
"""

from __future__ import annotations

import colorsys
import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from blendmask.atomic import atomic_write
from blendmask.painting import draw_box_outlines, owner_map, paint_owner_map, paint_windows
from blendmask.painting import mask_contour as mask_contour  # re-exported for its users
from blendmask.structures.classes import class_name
from blendmask.structures.paste import MaskWindow

if TYPE_CHECKING:  # `structures.detections` imports this module when it draws
    from blendmask.structures import Detections

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

_GOLDEN = 0.618033988749895
# Hue of the first instance: blue, so the most confident object is not drawn in the red that
# `eval --plots` keeps for false positives.
_FIRST_HUE = 0.58


def class_color(label: int) -> Color:
    """A fixed, well-separated RGB colour per class (golden-ratio hues)."""
    hue = (label * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def instance_color(index: int) -> Color:
    """The colour of the `index`-th instance of an image (0: the most confident one).

    Golden-ratio steps of hue: any two instances close in rank get far-apart hues, whatever
    their class; a value of 0.95 keeps the colours bright on dark and light images.
    """
    hue = (_FIRST_HUE + index * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay_sizes(height: int, width: int) -> tuple[int, int, int]:
    """(font size, box line width, contour width) in pixels for an image of this size.

    The font is about 1/40 of the short side, never under 12 px (the smallest size that
    reads on a screen) unless the image is so small (< 96 px) that 12 px text would cover
    much of it; lines and contours about 1/250 (at least 1 and 2 px).
    """
    short = min(int(height), int(width))
    font = max(12, round(short / 40)) if short >= 96 else max(6, short // 8)
    return font, max(1, round(short / 250)), max(2, round(short / 250))


def to_uint8_image(image: Tensor) -> Tensor:
    """image (Tensor[3, H, W]) float RGB in [0, 1] or uint8 -> uint8 Tensor[3, H, W] on CPU."""
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(
    image: Tensor,
    detections: Detections,
    *,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    alpha: float = 0.5,
    inplace: bool = False,
    owner: Tensor | None = None,
) -> Tensor:
    """Masks, boxes and "name score" labels of the detections above the threshold.

    Each instance has its own colour (`instance_color` by decreasing score); masks are filled
    with `alpha` and outlined opaquely; the most confident instance is drawn last (on top).
    Memory O(H0 x W0), not D x H0 x W0 (masks are read one detection at a time).

    Args:
        image (Tensor[3, H0, W0]): float RGB in [0, 1] or uint8, the detections' image.
        detections: for this image, masks bool[D, H0, W0] (dense or box-local).
        class_names: name of each contiguous label (`cfg.data.category_names`).
        inplace: paint the masks into `image` itself when it is a uint8 CPU tensor (saves one
            copy of a large image; `image` is then changed).
        owner (Tensor[H0, W0] | None): the detections' `owner_map` with ranks by increasing
            score (`score_ranks`), for a caller that has pasted the masks already (predict:
            once per image for its records, mask files and overlay); None pastes them here.
            Used only when the threshold keeps every detection.
    Returns:
        Tensor[3, H0, W0] uint8: the overlay.
    """
    canvas = to_uint8_image(image)
    dets = detections.to("cpu")
    kept = dets.filter(score=score_threshold)
    if not len(kept):
        return canvas
    if tuple(dets.image_size) != tuple(canvas.shape[-2:]):
        raise ValueError(
            f"draw_detections: masks are {tuple(dets.image_size)} but the image is "
            f"{tuple(canvas.shape[-2:])}; detections must be at the image's size"
        )
    # Drawn from the lowest score up, so the most confident instance ends on top; its rank
    # (0 = most confident) picks its colour.
    order = kept.scores.argsort(stable=True)
    colors = [instance_color(len(order) - 1 - k) for k in range(len(order))]
    texts = [
        f"{class_name(int(label), class_names)} {float(score):.2f}"
        for label, score in zip(kept.labels[order], kept.scores[order])
    ]
    target = canvas if inplace and canvas.data_ptr() == image.data_ptr() else None
    selected = kept.select(order)
    # With every detection kept, `order` is `score_ranks`' order: rank k is colour k.
    masks = owner if owner is not None and len(kept) == len(dets) else selected.mask_windows()
    return draw_instances(canvas, masks, selected.boxes, colors, texts, alpha=alpha, out=target)


def score_ranks(scores: Tensor) -> Tensor:
    """int64[D]: the rank of each detection by increasing score (0: the least confident;
    ties in index order), the order in which `draw_detections` draws them."""
    order = scores.detach().cpu().argsort(stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


def draw_instances(
    canvas: Tensor,
    windows: Iterable[MaskWindow] | Tensor,
    boxes: Tensor,
    colors: Sequence[Color],
    texts: Sequence[str] | None,
    *,
    alpha: float = 0.5,
    out: Tensor | None = None,
) -> Tensor:
    """Instances given as mask windows: fill + contour, box, label (sizes: `overlay_sizes`).

    Args:
        canvas (Tensor[3, H, W]): uint8.
        windows: (d, x, y, bool[h, w]) for some of the D instances (`MaskWindow`), or their
            `owner_map` (Tensor[H, W]).
        boxes (Tensor[D, 4]): xyxy; colors: one per instance; texts: one label per instance
            (None: no labels). Later instances are drawn over earlier ones.
        out: where the masks may be painted (see `paint_windows`).
    Returns:
        Tensor[3, H, W] uint8.
    """
    font_size, line_width, contour_width = overlay_sizes(*canvas.shape[-2:])
    if not isinstance(windows, Tensor):
        windows = owner_map(windows, (int(canvas.shape[-2]), int(canvas.shape[-1])), len(colors))
    canvas = paint_owner_map(
        canvas, windows, colors, alpha=alpha, contour_width=contour_width, out=out
    )
    if len(boxes):
        canvas = draw_box_outlines(canvas, boxes.float(), colors, width=line_width)
    if texts:
        canvas = draw_labels(canvas, boxes, texts, colors, font_size=font_size)
    return canvas


def paint_masks(
    canvas: Tensor,
    detections: Detections,
    colors: Sequence[Color],
    *,
    alpha: float = 0.5,
    out: Tensor | None = None,
) -> Tensor:
    """`draw_segmentation_masks(canvas, detections.masks, alpha, colors)` without the
    (D, H0, W0) masks, overlaps in the last mask's colour (`paint_windows` over
    `detections.mask_windows()`)."""
    return paint_windows(canvas, detections.mask_windows(), colors, alpha=alpha, out=out)


@functools.lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at `size` px (the TrueType font matplotlib ships, so no download), or
    Pillow's built-in font when it cannot be found."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
        return ImageFont.truetype(path, size)
    except (ImportError, OSError, ValueError) as exc:
        logger.debug("no TrueType font for labels (%s); using Pillow's default font", exc)
        return ImageFont.load_default(size=size)


def label_size(text: str, font_size: int) -> tuple[int, int]:
    """(width, height) in px of a label's background: the text plus a padding of ~1/6 em."""
    font = label_font(font_size)
    pad = max(1, font_size // 6)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font_size, 0)
    return int(np.ceil(font.getlength(text))) + 2 * pad, ascent + descent + 2 * pad


def label_position(
    box: Sequence[float], size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[int, int]:
    """Top-left corner of a label of `size` (w, h) for `box` (xyxy) in an image (H, W).

    Above the box's top-left corner when there is room, else just inside its top edge; then
    moved left / up as little as needed to end inside the image (a box at the right or bottom
    edge keeps its label in view). A label wider than the image starts at x = 0.
    """
    width, height = size
    image_h, image_w = image_size
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x = min(max(x0, 0), max(image_w - width, 0))
    y = y0 - height if y0 - height >= 0 else y0
    y = min(max(y, 0), max(image_h - height, 0))
    return x, y


def text_color(background: Color) -> Color:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def draw_labels(
    canvas: Tensor,
    boxes: Tensor,
    texts: Sequence[str],
    colors: Sequence[Color],
    *,
    font_size: int,
) -> Tensor:
    """Each text on a filled background of its colour at `label_position` of its box, drawn
    into `canvas` itself (returned).

    Each label is drawn on a picture of its own size and copied into its place, so a large
    image is never converted to a PIL image and back (three full-image copies).

    Args:
        canvas (Tensor[3, H, W]): uint8; boxes (Tensor[D, 4]): xyxy; one text and colour per
            box. Later labels are drawn over earlier ones.
    Returns:
        `canvas`, uint8.
    """
    height, width = int(canvas.shape[-2]), int(canvas.shape[-1])
    font = label_font(font_size)
    pad = max(1, font_size // 6)
    for box, text, color in zip(boxes.tolist(), texts, colors):
        size = label_size(text, font_size)
        x, y = label_position(box, size, (height, width))
        tile = Image.new("RGB", size, tuple(color))
        ImageDraw.Draw(tile).text((pad, pad), text, fill=text_color(color), font=font)
        # A label wider or taller than the image is cut at its right / bottom edge.
        w, h = min(size[0], width - x), min(size[1], height - y)
        canvas[:, y : y + h, x : x + w] = torch.from_numpy(np.asarray(tile)[:h, :w].copy()).permute(
            2, 0, 1
        )
    return canvas


def draw_dashed_boxes(canvas: Tensor, boxes: Tensor, color: Color, *, width: int) -> Tensor:
    """Dashed rectangles (xyxy `boxes`, dashes 3 line widths long) over a uint8
    Tensor[3, H, W], e.g. to set false positives apart from solid-boxed detections."""
    if not len(boxes):
        return canvas
    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    dash = max(4, 3 * width)
    for x0, y0, x1, y1 in boxes.tolist():
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        for (ax, ay), (bx, by) in zip(corners, corners[1:]):
            length = max(abs(bx - ax), abs(by - ay), 1e-6)
            for start in np.arange(0.0, length, 2 * dash):
                t0, t1 = start / length, min(start + dash, length) / length
                segment = (ax + (bx - ax) * t0, ay + (by - ay) * t0)
                segment += (ax + (bx - ax) * t1, ay + (by - ay) * t1)
                draw.line(segment, fill=tuple(color), width=width)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 Tensor[3, H, W] (or float in [0, 1]) as a PNG; creates the folder. The
    file appears whole or not at all (`atomic_write`: temp file, then rename)."""
    array = to_uint8_image(image).permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(array)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))
