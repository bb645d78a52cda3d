"""Stuff for the synthetic shapes dataset (`blendmask shapes --panoptic`): textured amorphous
regions under the shapes, and their COCO panoptic records (the format `data/panoptic_format.py`
reads).

Three stuff classes, each recognisable by its texture more than by an exact colour, laid out as
an outdoor scene with wavy borders: `sky` on top (a smooth vertical gradient of blues with soft
clouds), `wall` in the middle (bricks with mortar lines, brick-to-brick shade changes) and
`grass` at the bottom (green with vertical blade streaks). Any one of them may be missing from
an image, and each present region spans at least a fifth of the image's height, so that it
stays above the panoptic merge's minimum stuff area at the default 256 px.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from blendmask.atomic import atomic_write, refuse_link
from blendmask.data.panoptic_format import id_to_rgb

STUFF_CLASSES: list[str] = ["sky", "wall", "grass"]  # top to bottom
MIN_REGION_FRACTION = 0.2  # of the image height, per present region
MISSING_PROB = 0.2  # per class, that an image has none of it (at most one missing)


def render_stuff(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the stuff layer of one image.

    Returns:
        background (float32[S, S, 3], RGB 0-255) and stuff labels (int64[S, S], an index into
        `STUFF_CLASSES` for every pixel).
    """
    labels = _layout(rng, size)
    background = np.zeros((size, size, 3), dtype=np.float32)
    for k, texture in enumerate((_sky, _wall, _grass)):
        region = labels == k
        if region.any():
            background[region] = texture(rng, size)[region]
    return background, labels


def _layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """int64[S, S]: 0 above the first wavy border, 1 between, 2 below the second."""
    present = [True, True, True]
    if rng.random() < 3 * MISSING_PROB:
        present[int(rng.integers(3))] = False
    heights = rng.uniform(1.0, 2.0, size=3) * np.asarray(present)
    heights = heights / heights.sum()
    # Each present region gets at least MIN_REGION_FRACTION; the rest shared by the draws.
    spare = 1.0 - MIN_REGION_FRACTION * sum(present)
    heights = np.where(present, MIN_REGION_FRACTION + spare * heights, 0.0)
    borders = np.cumsum(heights)[:2] * size
    xs = np.arange(size, dtype=np.float32)
    ys = np.arange(size, dtype=np.float32)[:, None]
    waves = []
    for border in borders:
        # A wavy border of amplitude up to a twentieth of the image.
        amplitude = rng.uniform(0.0, 0.05) * size
        period = rng.uniform(0.5, 1.5) * size
        waves.append(border + amplitude * np.sin(2.0 * math.pi * xs / period + rng.uniform(0, 6.3)))
    # A missing region gets no sliver where a wave would cross its zero height.
    if not present[0]:
        waves[0] = np.full(size, -1.0, dtype=np.float32)
    if not present[2]:
        waves[1] = np.full(size, size + 1.0, dtype=np.float32)
    if not present[1]:
        waves[1] = waves[0]
    labels = np.zeros((size, size), dtype=np.int64)
    for k, wave in enumerate(waves):
        labels[ys >= wave[None, :]] = k + 1
    return labels


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """float32[S, S]: standard-normal values on a (rows, cols) grid, bilinearly upsampled."""
    coarse = rng.normal(0.0, 1.0, size=cells).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    top = np.asarray([rng.uniform(40, 110), rng.uniform(100, 160), rng.uniform(190, 250)])
    bottom = np.clip(top + rng.uniform(30, 70), 0, 255)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    field = top[None, None, :] * (1 - t) + bottom[None, None, :] * t
    clouds = np.clip(_smooth_noise(rng, size, (5, 5)), 0.0, None)[:, :, None]
    field = field + rng.uniform(20.0, 60.0) * clouds * (255.0 - field) / 255.0
    return np.broadcast_to(field, (size, size, 3)).astype(np.float32)


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.asarray([rng.uniform(30, 100), rng.uniform(110, 180), rng.uniform(20, 70)])
    # Blades: noise varying fast across columns and slowly down them.
    blades = _smooth_noise(rng, size, (max(2, size // 16), size))
    shade = _smooth_noise(rng, size, (3, 3))
    field = base[None, None, :] * (1.0 + 0.25 * blades[:, :, None] + 0.1 * shade[:, :, None])
    return field.astype(np.float32)


def _wall(rng: np.random.Generator, size: int) -> np.ndarray:
    if rng.random() < 0.5:
        brick = np.asarray([rng.uniform(140, 200), rng.uniform(60, 100), rng.uniform(40, 80)])
    else:
        brick = np.full(3, rng.uniform(100, 170))
    mortar = np.full(3, rng.uniform(190, 235))
    row_height = int(rng.integers(10, 17))
    brick_width = int(row_height * rng.uniform(2.0, 3.0))
    ys, xs = np.mgrid[0:size, 0:size]
    row = ys // row_height
    shifted = xs + (row % 2) * (brick_width // 2)  # running bond: odd rows offset by half
    column = shifted // brick_width
    jitter = rng.uniform(0.8, 1.2, size=(row.max() + 1, column.max() + 1))
    field = brick[None, None, :] * jitter[row, column][:, :, None]
    joint = ((ys % row_height) < 2) | ((shifted % brick_width) < 2)
    field[joint] = mortar
    return field.astype(np.float32)


def stuff_segments(
    stuff_labels: np.ndarray, thing_masks: list[np.ndarray]
) -> list[tuple[int, np.ndarray]]:
    """(stuff class index, bool[S, S] visible region) for each stuff class left visible by the
    things (`thing_masks`, disjoint), in `STUFF_CLASSES` order."""
    free = np.ones(stuff_labels.shape, dtype=bool)
    for mask in thing_masks:
        free &= ~mask
    out = []
    for k in range(len(STUFF_CLASSES)):
        region = (stuff_labels == k) & free
        if region.any():
            out.append((k, region))
    return out


def segment_info(segment_id: int, category_id: int, mask: np.ndarray) -> dict:
    """A `segments_info` entry of a mask (bool[H, W], non-empty): COCO's bbox [x, y, w, h]."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": segment_id,
        "category_id": category_id,
        "iscrowd": 0,
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
    }


class PanopticShapesWriter:
    """Collects the panoptic annotations of one split and writes them in COCO's layout:
    `annotations/panoptic_{split}.json` and `annotations/panoptic_{split}/NNNNNN.png`.

    Categories: the thing classes with ids 1..T (as the instances json), the stuff classes
    T+1..T+3. Segment ids are 1, 2, ... per image, stuff first.
    """

    def __init__(self, out_dir: Path, split: str, thing_classes: list[str]) -> None:
        self.json_path = out_dir / "annotations" / f"panoptic_{split}.json"
        self.png_dir = out_dir / "annotations" / f"panoptic_{split}"
        self.png_dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.num_things = len(thing_classes)
        self.categories = [
            {"id": k + 1, "name": name, "supercategory": "shape", "isthing": 1}
            for k, name in enumerate(thing_classes)
        ] + [
            {"id": self.num_things + k + 1, "name": name, "supercategory": "stuff", "isthing": 0}
            for k, name in enumerate(STUFF_CLASSES)
        ]
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(
        self,
        image: dict,
        stuff_labels: np.ndarray,
        instances: list[tuple[int, np.ndarray]],
    ) -> None:
        """One image: its COCO image entry, stuff labels int64[S, S] and (thing label,
        visible mask bool[S, S]) pairs."""
        ids = np.zeros(stuff_labels.shape, dtype=np.int64)
        segments = []
        stuff = stuff_segments(stuff_labels, [mask for _, mask in instances])
        pieces = [(self.num_things + k + 1, mask) for k, mask in stuff]
        pieces += [(label + 1, mask) for label, mask in instances]
        for category_id, mask in pieces:
            segment_id = len(segments) + 1
            ids[mask] = segment_id
            segments.append(segment_info(segment_id, category_id, mask))
        png_name = Path(image["file_name"]).with_suffix(".png").name
        refuse_link(self.png_dir / png_name)  # never write through a link planted there
        Image.fromarray(id_to_rgb(ids), mode="RGB").save(
            self.png_dir / png_name, format="PNG", compress_level=6
        )
        self.images.append(image)
        self.annotations.append(
            {"image_id": image["id"], "file_name": png_name, "segments_info": segments}
        )

    def finish(self, info: dict) -> dict[str, Path]:
        """Write the json; returns {"{split}_panoptic_json", "{split}_panoptic_images"}."""
        data = {
            "info": info,
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        text = (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()
        atomic_write(self.json_path, lambda f: f.write(text))
        return {
            f"{self.split}_panoptic_json": self.json_path,
            f"{self.split}_panoptic_images": self.png_dir,
        }
