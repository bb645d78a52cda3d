"""A synthetic instance segmentation dataset: coloured shapes on noisy, textured backgrounds.

Made to exercise what BlendMask is about (Sec. 1 and 4.2: instance-aware masks where instances
of the same class touch or overlap, which position-insensitive prototype methods such as YOLACT
handle worst) on a CPU in minutes:
- `SHAPE_CLASSES`: circle, rectangle, triangle, star; every object's colour is random and
  independent of its class, and backgrounds are smooth random colour fields with stripes and
  pixel noise, so colour alone does not give the class or the instance;
- object extents from 12 px to half the image (`max_object`), log-uniform, so COCO's small /
  medium / large ranges are all populated at the default 256 px; a smaller `max_object` on
  larger images makes data of another character (small objects in big images);
- about 40% of objects are placed overlapping an earlier object of the same class; later
  objects occlude earlier ones and every mask is the *visible* part (masks never overlap);
  no object is left with less than half of its area visible;
- COCO instances json with compressed RLE masks plus PNG images.

The same (seed, split, image index) always gives the same image, and files are written with
fixed PNG parameters and sorted-key json, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util
from tqdm import tqdm

from blendmask.atomic import atomic_write, refuse_link
from blendmask.data.shapes_stuff import PanopticShapesWriter, render_stuff

SHAPE_CLASSES: list[str] = ["circle", "rectangle", "triangle", "star"]

MIN_EXTENT = 12  # px, the smallest object's bounding extent
SAME_CLASS_OVERLAP_PROB = 0.4
BIG_FIRST_PROB = 0.3  # images whose first object is 40-50% of the image
MIN_VISIBLE_FRACTION = 0.5  # of an object's own area, after occlusion by later objects
MIN_VISIBLE_PIXELS = 30
MIN_COLOUR_DISTANCE = 70.0  # RGB L2, object vs background and vs objects it touches
PNG_COMPRESS_LEVEL = 6


@dataclass
class _Shape:
    label: int
    cx: float
    cy: float
    extent: float  # diameter of the circle the shape fits in, px
    full: np.ndarray  # bool[H, W], the whole shape (inside the image)
    visible: np.ndarray  # bool[H, W], what later shapes leave visible
    colour: np.ndarray  # float[3]


def write_shapes_dataset(
    out_dir: str | Path,
    num_train: int,
    num_val: int,
    seed: int = 0,
    image_size: int = 256,
    *,
    panoptic: bool = False,
    max_object: float = 0.5,
) -> dict[str, Path]:
    """Write the dataset in the COCO layout the nuclei data uses too (annotations/, images/).

    Writes `out_dir/annotations/instances_{train,val}.json` and
    `out_dir/images/{train,val}/NNNNNN.png`. Image `i` of a split depends only on
    (seed, split, i), so a larger `num_train` adds images without changing the first ones.

    `panoptic`: the shapes stand on textured stuff regions (`data/shapes_stuff.py`: sky, wall,
    grass) instead of a plain colour field, and the COCO panoptic annotations are written beside
    the instances: `annotations/panoptic_{split}.json` and `annotations/panoptic_{split}/
    NNNNNN.png` (thing categories 1..4 as in the instances json, stuff 5..7).

    `max_object`: the largest object extent as a fraction of `image_size` (at least 12 px).

    Returns:
        {"train_json", "train_images", "val_json", "val_images"} (plus "train_panoptic_json",
        "train_panoptic_images", "val_panoptic_json", "val_panoptic_images" with `panoptic`):
        paths of what was written.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"expected num_train, num_val >= 0, got {num_train}, {num_val}")
    if image_size < 4 * MIN_EXTENT:
        raise ValueError(f"expected image_size >= {4 * MIN_EXTENT}, got {image_size}")
    if seed < 0:
        raise ValueError(f"expected seed >= 0, got {seed}")
    if not 0.0 < max_object <= 0.5 or max_object * image_size < MIN_EXTENT:
        raise ValueError(
            f"expected max_object in (0, 0.5] with max_object * image_size >= {MIN_EXTENT} px, "
            f"got {max_object} at {image_size} px"
        )
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rngs = (np.random.default_rng([seed, split_index, i]) for i in range(count))
        paths.update(
            _write_split(out_dir, split, rngs, count, seed, image_size, panoptic, max_object)
        )
    return paths


def _write_split(
    out_dir: Path,
    split: str,
    rngs: Iterator[np.random.Generator],
    count: int,
    seed: int,
    image_size: int,
    panoptic: bool,
    max_object: float = 0.5,
) -> dict[str, Path]:
    """Images, instances json (and panoptic json + PNGs) of one split, one rng per image."""
    images_dir = out_dir / "images" / split
    json_path = out_dir / "annotations" / f"instances_{split}.json"
    images_dir.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    writer = PanopticShapesWriter(out_dir, split, SHAPE_CLASSES) if panoptic else None
    images, annotations = [], []
    progress = tqdm(
        rngs,
        total=count,
        desc=f"shapes {split}",
        leave=False,
        disable=True if count < 200 else None,
    )
    for i, rng in enumerate(progress):
        if writer is None:
            pixels, instances = render_shapes_image(rng, image_size, max_object=max_object)
        else:
            background, stuff_labels = render_stuff(rng, image_size)
            pixels, instances = render_shapes_image(
                rng, image_size, background, max_object=max_object
            )
        image_id = i + 1
        file_name = f"{i:06d}.png"
        refuse_link(images_dir / file_name)  # never write through a link planted there
        Image.fromarray(pixels, mode="RGB").save(
            images_dir / file_name, format="PNG", compress_level=PNG_COMPRESS_LEVEL
        )
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for label, mask in instances:
            annotations.append(_instance_annotation(len(annotations) + 1, image_id, label, mask))
        if writer is not None:
            writer.add(images[-1], stuff_labels, instances)
    info: dict[str, object] = {
        "description": f"blendmask synthetic shapes ({split})",
        "seed": seed,
        "image_size": image_size,
    }
    if max_object != 0.5:
        info["max_object"] = max_object  # only then: the default dataset's bytes stay as they were
    if panoptic:
        info["panoptic"] = True  # only then: the plain dataset's bytes stay as they were
    dataset = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"}
            for k, name in enumerate(SHAPE_CLASSES)
        ],
    }
    text = (json.dumps(dataset, sort_keys=True, separators=(",", ":")) + "\n").encode()
    atomic_write(json_path, lambda f: f.write(text))
    paths = {f"{split}_json": json_path, f"{split}_images": images_dir}
    if writer is not None:
        paths.update(writer.finish(info))
    return paths


def _instance_annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray) -> dict:
    """The COCO instances annotation (compressed RLE) of one visible mask bool[S, S]."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")},
        "area": int(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "iscrowd": 0,
    }


def render_shapes_image(
    rng: np.random.Generator,
    image_size: int,
    background: np.ndarray | None = None,
    *,
    max_object: float = 0.5,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image: shapes over `background` (float32[S, S, 3], RGB 0-255; by default a
    random colour field, `_background`).

    Returns:
        pixels (uint8[S, S, 3]) and a list of (label in [0, len(SHAPE_CLASSES)), visible mask
        bool[S, S]) in painting order; the masks are disjoint and non-empty.
    """
    if background is None:
        background = _background(rng, image_size)
    canvas = background.copy()
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    shapes: list[_Shape] = []
    for _ in range(int(rng.integers(2, 9))):
        shape = _place_shape(rng, shapes, image_size, max_object * image_size)
        if shape is None:
            continue
        shape.colour = _pick_colour(rng, background, shape, shapes)
        # A soft linear shading across the object: clean-ish, but not a flat colour.
        angle = rng.uniform(0.0, 2.0 * math.pi)
        amplitude = rng.uniform(0.0, 25.0)
        ramp = ((xs - shape.cx) * math.cos(angle) + (ys - shape.cy) * math.sin(angle)) / (
            shape.extent / 2.0
        )
        shading = shape.colour[None, :] + amplitude * ramp[shape.full][:, None]
        canvas[shape.full] = shading
        for earlier in shapes:
            earlier.visible &= ~shape.full
        shapes.append(shape)
    noise_sigma = rng.uniform(3.0, 12.0)
    canvas += rng.normal(0.0, noise_sigma, size=canvas.shape).astype(np.float32)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, [(shape.label, shape.visible) for shape in shapes]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32[S, S, 3]: a smooth random colour field, with stripes half of the time."""
    base = rng.uniform(30.0, 225.0, size=3)
    coarse = base + rng.normal(0.0, 35.0, size=(4, 4, 3))
    field = np.stack(
        [
            np.asarray(
                Image.fromarray(coarse[:, :, c].astype(np.float32), mode="F").resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for c in range(3)
        ],
        axis=-1,
    )
    if rng.random() < 0.5:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(6.0, 24.0)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        direction = rng.uniform(-1.0, 1.0, size=3) * rng.uniform(10.0, 30.0)
        wave = np.sin(
            2.0 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period + phase
        )
        field = field + wave[:, :, None] * direction[None, None, :]
    return field.astype(np.float32)


def _place_shape(
    rng: np.random.Generator, shapes: list[_Shape], size: int, max_extent: float
) -> _Shape | None:
    """Propose shapes until one leaves every earlier shape at least half visible (<= 12 tries);
    extents in [MIN_EXTENT, max_extent] px."""
    for _ in range(12):
        if shapes and rng.random() < SAME_CLASS_OVERLAP_PROB:
            # Overlap an earlier object of the same class: the case BlendMask is built for.
            anchor = shapes[int(rng.integers(len(shapes)))]
            label = anchor.label
            extent = float(np.clip(anchor.extent * rng.uniform(0.7, 1.3), MIN_EXTENT, max_extent))
            distance = rng.uniform(0.45, 0.85) * (anchor.extent + extent) / 2.0
            direction = rng.uniform(0.0, 2.0 * math.pi)
            cx = anchor.cx + distance * math.cos(direction)
            cy = anchor.cy + distance * math.sin(direction)
        else:
            label = int(rng.integers(len(SHAPE_CLASSES)))
            if not shapes and rng.random() < BIG_FIRST_PROB:
                # A big object at the back: later big ones would hide too much of the others,
                # so without this COCO's "large" range would be nearly empty.
                extent = rng.uniform(0.8, 1.0) * max_extent
            else:
                # Log-uniform, sqrt-biased toward large extents (medium objects are common).
                extent = math.exp(
                    math.log(MIN_EXTENT)
                    + math.sqrt(rng.random()) * math.log(max_extent / MIN_EXTENT)
                )
            cx, cy = rng.uniform(0.0, size, size=2)
        # Keep the centre 0.3 extents inside: at most a fifth of an object is cut by the border.
        margin = 0.3 * extent
        cx = float(np.clip(cx, margin, size - margin))
        cy = float(np.clip(cy, margin, size - margin))
        full = _rasterise(rng, label, cx, cy, extent, size)
        if full.sum() < MIN_VISIBLE_PIXELS:
            continue
        if all(
            (s.visible & ~full).sum()
            >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * s.full.sum())
            for s in shapes
        ):
            return _Shape(label, cx, cy, extent, full, full.copy(), np.zeros(3))
    return None


def _rasterise(
    rng: np.random.Generator, label: int, cx: float, cy: float, extent: float, size: int
) -> np.ndarray:
    """bool[S, S] mask of one shape of class `label`, randomly rotated and proportioned."""
    radius = extent / 2.0
    angle = rng.uniform(0.0, 2.0 * math.pi)
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    name = SHAPE_CLASSES[label]
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        if name == "rectangle":
            # Long side `extent`, short side 45-100% of it, rotated by `angle`.
            half_w, half_h = radius, radius * rng.uniform(0.45, 1.0)
            corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        elif name == "triangle":
            # Jittered vertices on the circumcircle: no slivers, not always equilateral.
            jitter = rng.uniform(-0.25, 0.25, size=3)
            scale = rng.uniform(0.85, 1.0, size=3)
            corners = [
                (
                    radius * scale[k] * math.cos(2.0 * math.pi * k / 3.0 + jitter[k]),
                    radius * scale[k] * math.sin(2.0 * math.pi * k / 3.0 + jitter[k]),
                )
                for k in range(3)
            ]
        else:  # star: five points, inner radius 40-55% of the outer one
            inner = rng.uniform(0.4, 0.55)
            corners = [
                (
                    radius * (1.0 if k % 2 == 0 else inner) * math.cos(math.pi * k / 5.0),
                    radius * (1.0 if k % 2 == 0 else inner) * math.sin(math.pi * k / 5.0),
                )
                for k in range(10)
            ]
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        draw.polygon(
            [(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in corners], fill=1
        )
    return np.asarray(image, dtype=bool)


def _pick_colour(
    rng: np.random.Generator, background: np.ndarray, shape: _Shape, shapes: list[_Shape]
) -> np.ndarray:
    """A random colour that stands out from the background under the shape and from the shapes
    it touches (so two overlapping circles are two visible instances); best of 20 draws."""
    references = [background[shape.full].mean(axis=0)]
    references += [s.colour for s in shapes if (s.visible & shape.full).any()]
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0.0, 255.0, size=3)
        distance = min(float(np.linalg.norm(colour - r)) for r in references)
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= MIN_COLOUR_DISTANCE:
            break
    assert best is not None
    return best.astype(np.float32)
