"""The overlay's pixels, drawn in one pass over the image (`blendmask.painting`), against
brute-force references written here:

- the owner map is the most confident mask at each pixel; contours are the pixels within the
  contour width of another owner (loops over every pixel's neighbourhood);
- box outlines are `torchvision.utils.draw_bounding_boxes`' pixels, small and clipped boxes
  included;
- labels drawn tile by tile are the labels drawn on the whole image with PIL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.utils import draw_bounding_boxes

from blendmask.painting import draw_box_outlines, owner_map, paint_owner_map
from blendmask.visualization import (
    draw_labels,
    label_font,
    label_position,
    label_size,
    overlay_sizes,
    text_color,
)


def random_windows(generator: torch.Generator, height: int, width: int, count: int) -> list:
    windows = []
    for d in range(count):
        h = int(torch.randint(1, height + 1, (1,), generator=generator))
        w = int(torch.randint(1, width + 1, (1,), generator=generator))
        y = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        x = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        windows.append((d, x, y, torch.rand(h, w, generator=generator) > 0.4))
    return windows


@pytest.mark.parametrize("contour", [1, 3])
def test_owner_map_and_contours_match_brute_force(contour):
    """Fails if a pixel takes another mask's colour than the top one covering it, or if the
    contour is not exactly the pixels within `contour` px (Chebyshev) of another owner or of
    the image's edge."""
    generator = torch.Generator().manual_seed(contour)
    height, width, count = 23, 31, 6
    windows = random_windows(generator, height, width, count)
    ranks = torch.randperm(count, generator=generator)
    owner = owner_map(reversed(windows), (height, width), count, ranks.tolist())
    expected = torch.full((height, width), -1)
    for d, x, y, window in windows:
        region = expected[y : y + window.shape[0], x : x + window.shape[1]]
        region[window] = torch.maximum(region[window], ranks[d])
    assert torch.equal(owner.long(), expected)
    colors = [(40 * k, 255 - 30 * k, 17 * k) for k in range(count)]
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    out = paint_owner_map(image, owner, colors, alpha=0.4, contour_width=contour)
    padded = torch.nn.functional.pad(expected, (contour,) * 4, value=-1)
    for i in range(height):
        for j in range(width):
            top = int(expected[i, j])
            if top < 0:
                assert torch.equal(out[:, i, j], image[:, i, j]), (i, j)
                continue
            near = padded[i : i + 2 * contour + 1, j : j + 2 * contour + 1]
            color = torch.tensor(colors[top], dtype=torch.uint8)
            if bool((near != top).any()):
                assert torch.equal(out[:, i, j], color), (i, j)
            else:  # torchvision's blend
                blend = (image[:, i, j] * 0.6 + color * 0.4).to(torch.uint8)
                assert torch.equal(out[:, i, j], blend), (i, j)


def test_box_outlines_are_torchvisions_pixels():
    """Fails if drawing box by box (no full-image PIL copy) changes a pixel of
    `draw_bounding_boxes`: large, tiny (thinner than two line widths) and edge boxes."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=generator)
        corner = torch.rand(4, 2, generator=generator) * torch.tensor([50.0, 40.0])
        scale = 0.6 if trial % 2 else 0.1
        size = torch.rand(4, 2, generator=generator) * torch.tensor([50.0, 40.0]) * scale
        boxes = torch.cat([corner, (corner + size).clamp(max=torch.tensor([50.0, 40.0]))], 1)
        colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 99, 199)]
        width = trial % 5 + 1
        expected = draw_bounding_boxes(image, boxes, colors=colors, width=width)
        drawn = draw_box_outlines(image.clone(), boxes, colors, width=width)
        assert torch.equal(drawn, expected), (trial, boxes.tolist(), width)


def labels_on_the_whole_image(canvas, boxes, texts, colors, font_size):
    """The labels drawn on a PIL copy of the whole image (what `draw_labels` did before)."""
    height, width = canvas.shape[-2:]
    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    pad = max(1, font_size // 6)
    for box, text, color in zip(boxes.tolist(), texts, colors):
        size = label_size(text, font_size)
        x, y = label_position(box, size, (height, width))
        draw.rectangle((x, y, x + size[0] - 1, y + size[1] - 1), fill=color)
        draw.text((x + pad, y + pad), text, fill=text_color(color), font=label_font(font_size))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("size", [(60, 80), (300, 420)])
def test_labels_drawn_tile_by_tile_equal_the_whole_image_drawing(size):
    """Fails if a label moves, is cut where it should not be, or its text renders otherwise
    (labels at the corners and wider than the image included)."""
    generator = torch.Generator().manual_seed(size[0])
    height, width = size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    corner = torch.rand(6, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corner, corner + 5], 1)
    boxes[0] = torch.tensor([width - 3.0, height - 3.0, width, height])  # bottom-right corner
    texts = [f"a long class name {k / 7:.2f}" for k in range(5)] + ["Ågjy"]
    colors = [(250, 250, 40), (10, 20, 30), (200, 0, 100), (0, 90, 250), (128, 128, 128)]
    colors.append((255, 255, 255))
    font_size = overlay_sizes(height, width)[0]
    expected = labels_on_the_whole_image(image, boxes, texts, colors, font_size)
    assert torch.equal(
        draw_labels(image.clone(), boxes, texts, colors, font_size=font_size), expected
    )
