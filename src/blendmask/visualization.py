"""Pictures of predictions: detection overlays (`predict`, `demo`, and the detections panel of
the blender figure in `blendmask.explain`, BlendMask Fig. 1 / 3).

`draw_detections` paints masks, boxes, class names and scores over an image as
`torchvision.utils.draw_segmentation_masks` (one mask at a time, `paint_masks`) /
`draw_bounding_boxes` do; one fixed colour per class.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from blendmask.atomic import atomic_write
from blendmask.modeling.paste import mask_windows
from blendmask.structures import Detections

# Pixels blended at once by `paint_masks` (float32 copies of a band: ~50 MB).
_PAINT_BAND_PIXELS = 2**22


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated RGB colour per class (golden-ratio hues)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def to_uint8_image(image: Tensor) -> Tensor:
    """image (Tensor[3, H, W]) float RGB in [0, 1] or uint8 -> uint8 Tensor[3, H, W] on CPU."""
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def class_name(label: int, class_names: list[str] | None) -> str:
    if class_names and 0 <= label < len(class_names):
        return class_names[label]
    return f"class {label}"


def draw_detections(
    image: Tensor,
    detections: Detections,
    *,
    class_names: list[str] | None = None,
    score_threshold: float = 0.0,
    alpha: float = 0.5,
    inplace: bool = False,
) -> Tensor:
    """Masks (filled, `alpha`), boxes and "name score" labels of detections above the threshold.

    The masks are painted as `torchvision.utils.draw_segmentation_masks` paints them (same
    pixels), one detection at a time (`paint_masks`): memory O(H0 x W0), not D x H0 x W0.

    Args:
        image (Tensor[3, H0, W0]): float RGB in [0, 1] or uint8, the detections' image.
        detections: for this image, masks bool[D, H0, W0] (dense or box-local).
        class_names: name of each contiguous label (`cfg.data.category_names`).
        inplace: paint the masks into `image` itself when it is a uint8 CPU tensor (saves one
            copy of a large image; `image` is then changed).
    Returns:
        Tensor[3, H0, W0] uint8: the overlay.
    """
    canvas = to_uint8_image(image)
    dets = detections.to("cpu")
    keep = dets.scores >= score_threshold
    if not bool(keep.any()):
        return canvas
    # Low scores first, so the most confident instance is painted last (on top).
    order = torch.nonzero(keep).flatten()
    order = order[dets.scores[order].argsort(stable=True)]
    labels = [int(x) for x in dets.labels[order]]
    colors = [class_color(label) for label in labels]
    if tuple(dets.image_size) != tuple(canvas.shape[-2:]):
        raise ValueError(
            f"draw_detections: masks are {tuple(dets.image_size)} but the image is "
            f"{tuple(canvas.shape[-2:])}; detections must be at the image's size"
        )
    target = canvas if inplace and canvas.data_ptr() == image.data_ptr() else None
    canvas = paint_masks(canvas, dets.select(order), colors, alpha=alpha, out=target)
    texts = [
        f"{class_name(label, class_names)} {float(score):.2f}"
        for label, score in zip(labels, dets.scores[order])
    ]
    return draw_bounding_boxes(canvas, dets.boxes[order], labels=texts, colors=colors, width=2)


def paint_masks(
    canvas: Tensor,
    detections: Detections,
    colors: list[tuple[int, int, int]],
    *,
    alpha: float = 0.5,
    out: Tensor | None = None,
) -> Tensor:
    """`draw_segmentation_masks(canvas, detections.masks, alpha, colors)`, pixel for pixel,
    without the (D, H0, W0) masks.

    torchvision blends each pixel once: with the colour of the one mask covering it, with
    black where two or more masks overlap, with itself elsewhere. So one pass over the masks
    (windows, `mask_windows`) records per pixel which mask covers it (an int16/int32 map),
    and the blend then runs in bands of rows with torchvision's arithmetic.

    Args:
        canvas (Tensor[3, H0, W0]): uint8.
        detections: D detections of this image; colors: one RGB per detection.
        out (Tensor[3, H0, W0] | None): uint8 to write the result into; may be `canvas`
            itself (each band is read before it is written).
    Returns:
        Tensor[3, H0, W0] uint8.
    """
    height, width = int(canvas.shape[-2]), int(canvas.shape[-1])
    # -1: no mask, -2: two or more masks, d >= 0: only mask d.
    dtype = torch.int16 if len(detections) < 2**15 - 1 else torch.int32
    owner = torch.full((height, width), -1, dtype=dtype)
    for d, x, y, window in mask_windows(detections):
        region = owner[y : y + window.shape[0], x : x + window.shape[1]]
        taken = window & (region != -1)
        region[window & (region == -1)] = d
        region[taken] = -2
    # The colours as torchvision makes them (uint8), and black for overlaps (index -2 -> D).
    palette = torch.tensor([*colors, (0, 0, 0)], dtype=torch.uint8).reshape(-1, 3)
    out = torch.empty_like(canvas) if out is None else out
    rows = max(1, _PAINT_BAND_PIXELS // max(1, width))
    for r0 in range(0, height, rows):
        image = canvas[:, r0 : r0 + rows]
        band = owner[r0 : r0 + rows].long()
        covered = band != -1
        index = torch.where(band == -2, len(colors), band)[covered]
        img_to_draw = image.clone()
        img_to_draw[:, covered] = palette[index].t()
        # torchvision's arithmetic: float blend of the image and the painted copy, truncated.
        blended = image * (1 - alpha) + img_to_draw * alpha
        out[:, r0 : r0 + rows] = blended.to(torch.uint8)
    return out


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 Tensor[3, H, W] (or float in [0, 1]) as a PNG; creates the folder. The
    file appears whole or not at all (`atomic_write`: temp file, then rename)."""
    array = to_uint8_image(image).permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(array)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))
