"""The facts of a COCO instances dataset a user needs before training (`blendmask analyze`).

`analyze_coco` reads the json once (validated by `data.coco_json.load_coco_json`, so a bad file
is one ValueError naming it) and returns `DatasetAnalysis`: a JSON-ready `summary` (images and
their sizes, instances per image, object sizes, classes, crowd regions, overlaps, empty
images, masks that disagree with their boxes) and the per-instance arrays the plots draw.

Definitions (the tests check them on a json with known counts):
- an instance is a non-crowd annotation; crowd regions are counted apart;
- object size is sqrt(mask area) in pixels of the original image (the box's area for an
  annotation without a mask), relative size is sqrt(area / image area);
- percentiles are nearest-rank (an actual value of the data, never an interpolation);
- a mask disagrees with its box when the IoU of the annotated box and the mask's tight box is
  under `BOX_MASK_MIN_IOU`, or when the mask is empty;
- overlapping: two instances of one image whose masks share a pixel; close pairs: two instances
  whose boxes overlap with IoU > `CLOSE_BOX_IOU`, which is where NMS can suppress a true object.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from blendmask.data.coco_json import load_coco_json
from blendmask.data.segmentation import segmentation_to_rle

BOX_MASK_MIN_IOU = 0.5
CLOSE_BOX_IOU = 0.5
# Histogram edges: object size in pixels (powers of two: one FPN level per octave) ...
SIZE_EDGES_PX = (0, 8, 16, 32, 64, 128, 256, 512, math.inf)
# ... and relative to the image.
SIZE_EDGES_REL = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, math.inf)
MAX_LISTED = 5  # file names / annotation ids quoted per problem


@dataclass
class DatasetAnalysis:
    """`summary`: the JSON-ready facts; the arrays: one row per instance (non-crowd)."""

    summary: dict[str, Any]
    instances_per_image: np.ndarray  # int[I]
    sizes_px: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float[N]
    sizes_rel: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float[N]
    centers_rel: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # float[N, 2]: x, y
    boxes_wh_rel: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # float[N, 2]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int[N]


def nearest_rank(values: np.ndarray | list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank: the smallest value with at least q% of the
    values at or below it; 0 for no values."""
    data = np.sort(np.asarray(values, dtype=np.float64))
    if data.size == 0:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * data.size))
    return float(data[rank - 1])


def spread(values: np.ndarray) -> dict[str, float]:
    """min, p1, p5, p50, p95, p99, max and mean of `values` (nearest-rank percentiles)."""
    out = {"min": nearest_rank(values, 0)}
    for q in (1, 5, 50, 95, 99):
        out[f"p{q}"] = nearest_rank(values, q)
    out["max"] = float(np.max(values)) if len(values) else 0.0
    out["mean"] = float(np.mean(values)) if len(values) else 0.0
    return {k: round(v, 4) for k, v in out.items()}


def histogram(values: np.ndarray, edges: tuple[float, ...]) -> dict[str, int]:
    """Counts per bin [edges[i], edges[i + 1]), labelled "lo-hi" ("lo+" for the last)."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges))
    labels = [
        f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}" for lo, hi in zip(edges, edges[1:])
    ]
    return {label: int(c) for label, c in zip(labels, counts)}


def _box_iou_xywh(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _image_facts(images: list[dict[str, Any]], images_dir: Path | None) -> dict[str, Any]:
    widths = np.array([img["width"] for img in images], dtype=np.float64)
    heights = np.array([img["height"] for img in images], dtype=np.float64)
    common = Counter(f"{img['width']}x{img['height']}" for img in images).most_common(MAX_LISTED)
    facts: dict[str, Any] = {
        "count": len(images),
        "width": spread(widths),
        "height": spread(heights),
        "most_common_sizes": dict(common),
    }
    if images_dir is not None:
        missing = [
            img["file_name"] for img in images if not (images_dir / img["file_name"]).is_file()
        ]
        facts["missing_files"] = len(missing)
        facts["missing_examples"] = missing[:MAX_LISTED]
    return facts


def _overlaps(rles: list[dict[str, Any]], boxes: list[list[float]]) -> tuple[int, int, int]:
    """(instances whose mask overlaps another's, overlapping pairs, close box pairs) in one
    image."""
    n = len(rles)
    if n < 2:
        return 0, 0, 0
    mask_iou = np.asarray(mask_util.iou(rles, rles, [0] * n)).reshape(n, n)
    box_iou = np.asarray(mask_util.iou(boxes, boxes, [0] * n)).reshape(n, n)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    touching = (mask_iou > 0) & upper
    overlapping = touching | touching.T
    return (
        int(overlapping.any(axis=1).sum()),
        int(touching.sum()),
        int(((box_iou > CLOSE_BOX_IOU) & upper).sum()),
    )


class _Instances:
    """Per-instance rows gathered image by image."""

    def __init__(self) -> None:
        self.sizes_px: list[float] = []
        self.sizes_rel: list[float] = []
        self.centers: list[tuple[float, float]] = []
        self.wh: list[tuple[float, float]] = []
        self.labels: list[int] = []
        self.disagree: list[int] = []
        self.empty_masks = 0
        self.overlapping = self.pairs = self.close_pairs = 0

    def add_image(self, image: dict[str, Any], anns: list[dict[str, Any]], label_of: dict) -> None:
        h, w = image["height"], image["width"]
        rles, boxes = [], []
        for ann in anns:
            box = [float(v) for v in ann["bbox"]]
            area = box[2] * box[3]
            if "segmentation" in ann:
                rle = segmentation_to_rle(ann["segmentation"], h, w)
                area = float(mask_util.area(rle))
                mask_box = [float(v) for v in mask_util.toBbox(rle)]
                if area == 0:
                    self.empty_masks += 1
                if area == 0 or _box_iou_xywh(box, mask_box) < BOX_MASK_MIN_IOU:
                    self.disagree.append(ann["id"])
                rles.append(rle)
                boxes.append(box)
            self.sizes_px.append(math.sqrt(area))
            self.sizes_rel.append(math.sqrt(area / (h * w)))
            self.centers.append(((box[0] + box[2] / 2) / w, (box[1] + box[3] / 2) / h))
            self.wh.append((box[2] / w, box[3] / h))
            self.labels.append(label_of[ann["category_id"]])
        counts = _overlaps(rles, boxes)
        self.overlapping += counts[0]
        self.pairs += counts[1]
        self.close_pairs += counts[2]


def cached_analysis(json_path: str | Path) -> DatasetAnalysis:
    """`analyze_coco(json_path)`, computed once per file version (path, size, mtime) in this
    process: `train` prints it and `--preset auto` reads it."""
    stat = Path(json_path).stat() if Path(json_path).is_file() else None
    key = (str(json_path), None if stat is None else (stat.st_size, stat.st_mtime_ns))
    return _cached(key)


@functools.lru_cache(maxsize=4)
def _cached(key: tuple[str, Any]) -> DatasetAnalysis:
    return analyze_coco(key[0])


def analyze_coco(json_path: str | Path, images_dir: str | Path | None = None) -> DatasetAnalysis:
    """The facts of `json_path` (and, with `images_dir`, which image files are missing).

    Raises FileNotFoundError / ValueError naming the file for a missing or invalid json."""
    json_path = Path(json_path)
    data = load_coco_json(json_path)
    images = data["images"]
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in images}
    crowd = Counter()
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            crowd[ann["image_id"]] += 1
        else:
            by_image[ann["image_id"]].append(ann)
    rows = _Instances()
    for img in images:
        rows.add_image(img, by_image[img["id"]], label_of)
    per_image = np.array([len(by_image[img["id"]]) for img in images], dtype=np.int64)
    summary = _summary(json_path, images_dir, images, categories, per_image, crowd, rows)
    return DatasetAnalysis(
        summary=summary,
        instances_per_image=per_image,
        sizes_px=np.asarray(rows.sizes_px, dtype=np.float64),
        sizes_rel=np.asarray(rows.sizes_rel, dtype=np.float64),
        centers_rel=np.asarray(rows.centers, dtype=np.float64).reshape(-1, 2),
        boxes_wh_rel=np.asarray(rows.wh, dtype=np.float64).reshape(-1, 2),
        labels=np.asarray(rows.labels, dtype=np.int64),
    )


def _summary(
    json_path: Path,
    images_dir: str | Path | None,
    images: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    per_image: np.ndarray,
    crowd: Counter,
    rows: _Instances,
) -> dict[str, Any]:
    labels = np.asarray(rows.labels, dtype=np.int64)
    sizes_px = np.asarray(rows.sizes_px, dtype=np.float64)
    sizes_rel = np.asarray(rows.sizes_rel, dtype=np.float64)
    return {
        "json": str(json_path),
        "images": _image_facts(images, None if images_dir is None else Path(images_dir)),
        "instances": {
            "count": int(per_image.sum()),
            "per_image_mean": round(float(per_image.mean()) if len(per_image) else 0.0, 4),
            "per_image_p50": nearest_rank(per_image, 50),
            "per_image_p99": nearest_rank(per_image, 99),
            "per_image_max": int(per_image.max()) if len(per_image) else 0,
            "empty_images": int((per_image == 0).sum()),
        },
        "classes": {c["name"]: int((labels == k).sum()) for k, c in enumerate(categories)},
        "crowd": {"regions": int(sum(crowd.values())), "images": len(crowd)},
        "size_px": spread(sizes_px),
        "size_px_histogram": histogram(sizes_px, SIZE_EDGES_PX),
        "size_relative": spread(sizes_rel),
        "size_relative_histogram": histogram(sizes_rel, SIZE_EDGES_REL),
        "overlap": {
            "instances_overlapping_another": rows.overlapping,
            "overlapping_pairs": rows.pairs,
            f"box_pairs_iou_over_{CLOSE_BOX_IOU:g}": rows.close_pairs,
        },
        "mask_box_disagreements": {
            "count": len(rows.disagree),
            "empty_masks": rows.empty_masks,
            "annotation_ids": rows.disagree[:MAX_LISTED],
        },
    }
