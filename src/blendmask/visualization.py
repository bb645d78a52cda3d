"""Pictures of predictions: detection overlays (`predict`, `demo`, and the detections panel of
the blender figure in `blendmask.explain`, BlendMask Fig. 1 / 3).

`draw_detections` paints masks, boxes, class names and scores over an image with
`torchvision.utils.draw_segmentation_masks` / `draw_bounding_boxes`; one fixed colour per class.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from blendmask.structures import Detections


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
) -> Tensor:
    """Masks (filled, `alpha`), boxes and "name score" labels of detections above the threshold.

    Args:
        image (Tensor[3, H0, W0]): float RGB in [0, 1] or uint8, the detections' image.
        detections: for this image, masks bool[D, H0, W0].
        class_names: name of each contiguous label (`cfg.data.category_names`).
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
    masks = dets.masks[order].bool()
    if masks.shape[-2:] != canvas.shape[-2:]:
        raise ValueError(
            f"draw_detections: masks are {tuple(masks.shape[-2:])} but the image is "
            f"{tuple(canvas.shape[-2:])}; detections must be at the image's size"
        )
    canvas = draw_segmentation_masks(canvas, masks, alpha=alpha, colors=colors)
    texts = [
        f"{class_name(label, class_names)} {float(score):.2f}"
        for label, score in zip(labels, dets.scores[order])
    ]
    return draw_bounding_boxes(canvas, dets.boxes[order], labels=texts, colors=colors, width=2)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 Tensor[3, H, W] (or float in [0, 1]) as a PNG; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = to_uint8_image(image).permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(array).save(path)
    return path
