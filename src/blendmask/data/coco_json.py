"""Reading and validating a COCO instances json (Lin et al. 2014, the format BlendMask trains
and evaluates on): the file itself, its segmentations (polygons, uncompressed and compressed
RLE) and the small type checks `data/coco.py`'s dataset and `evaluation/` share.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO


def load_coco_json(json_path: str | Path) -> dict[str, Any]:
    """Parse a COCO instances json and check its top-level structure.

    Returns the parsed dict with `annotations` defaulting to [] (image-info jsons have none).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not valid json, or not an object with `images` and `categories` lists.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"COCO json not found: {json_path}")
    try:
        with json_path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path} is not valid json: {e}") from e
    expected = "an object with 'images', 'annotations' and 'categories' lists"
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_path} is not a COCO instances json: expected {expected}, "
            f"got a {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{json_path} is not a COCO instances json: expected {expected}, "
                f"'{key}' is {'missing' if key not in data else type(data[key]).__name__}"
            )
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{json_path}: 'annotations' must be a list")
    return data


def coco_api_from_dict(dataset: dict[str, Any]) -> COCO:
    """Build a pycocotools COCO object from a parsed json without its prints.

    Fills the fields COCOeval needs and some jsons omit: `iscrowd` (0) and `area` (the mask's
    pixel count, or the box's area for annotations without a mask).
    """
    images = {img["id"]: img for img in dataset["images"] if isinstance(img, dict) and "id" in img}
    for ann in dataset["annotations"]:
        if not isinstance(ann, dict):
            continue
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = annotation_area(ann, images.get(ann.get("image_id")))
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def annotation_area(ann: dict[str, Any], image: dict[str, Any] | None) -> float:
    segmentation = ann.get("segmentation")
    if segmentation and image is not None:
        try:
            rle = segmentation_to_rle(segmentation, image["height"], image["width"])
            return float(mask_util.area(rle))
        except Exception:  # an invalid mask is reported by the dataset's validation
            pass
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    return float(bbox[2]) * float(bbox[3])


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE of the whole mask."""
    if isinstance(segmentation, list):
        # Several polygons are parts of one object: merge them into one mask.
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Polygons or RLE -> uint8[height, width] mask (1 inside)."""
    return mask_util.decode(segmentation_to_rle(segmentation, height, width))


def check_segmentation(segmentation: Any, height: int, width: int, where: str) -> None:
    """Raise ValueError unless `segmentation` is a usable polygon list or RLE of this image."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError(f"{where}: 'segmentation' is an empty list; expected polygons")
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
        return
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not isinstance(size, list) or len(size) != 2 or counts is None:
            raise ValueError(f"{where}: RLE 'segmentation' needs 'size' [h, w] and 'counts'")
        if list(size) != [height, width]:
            raise ValueError(
                f"{where}: RLE size {size} does not match the image's [height, width] "
                f"[{height}, {width}]"
            )
        if isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(
                    f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                    f"height * width = {height * width}"
                )
        elif not isinstance(counts, (str, bytes)):
            raise ValueError(f"{where}: RLE 'counts' must be a list or a string")
        return
    raise ValueError(
        f"{where}: expected 'segmentation' as a list of polygons or an RLE object, "
        f"got {type(segmentation).__name__}"
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
