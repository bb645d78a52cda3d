"""Reading and validating a COCO instances json (Lin et al. 2014, the format BlendMask trains
and evaluates on), for every reader: `data/coco.py`'s training / validation dataset and
`evaluation/`'s ground truth (`eval --results` too).

`load_coco_json` checks the whole file with cheap checks (no image decoding) before anything
uses it, so that a bad file fails with one ValueError naming the file, the annotation id and the
field, instead of a KeyError deep in pycocotools, a crash mid-training or an evaluation that
never ends (a garbage compressed RLE makes COCOeval's IoU spin):
- not json, not an object with 'images' and 'categories' lists: ValueError;
- images: integer id (unique), width and height (positive, width * height < 2**31);
- categories: integer id (unique), at least one;
- annotations: integer id (unique), image_id of an image, category_id of a category; a
  'segmentation' (polygons, uncompressed or compressed RLE of the image's size, checked by
  `data/segmentation.py`, which also decodes compressed counts) and / or a 'bbox' of 4 finite
  numbers with w, h >= 0; an 'area' >= 0 and an 'iscrowd' of 0 / 1 when given.
A missing 'bbox' is filled in from the mask, as COCO computes it, so that every reader (and
COCOeval) sees one.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from blendmask.data.segmentation import (
    check_segmentation,
    decode_segmentation,
    is_finite_number,
    is_int,
    is_number,
    segmentation_to_rle,
)

__all__ = [
    "annotation_area",
    "check_segmentation",
    "coco_api_from_dict",
    "decode_segmentation",
    "is_int",
    "is_number",
    "load_coco_json",
    "segmentation_to_rle",
]

# pycocotools keeps pixel counts and run lengths in 32-bit integers.
_MAX_PIXELS = 2**31 - 1


def load_coco_json(json_path: str | Path) -> dict[str, Any]:
    """Parse a COCO instances json and validate it (see the module docstring).

    Returns the parsed dict with `annotations` defaulting to [] (image-info jsons have none)
    and each annotation's `bbox` filled in from its mask when missing.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not valid json, or not a valid COCO instances json; the message names the
            file, the image / category / annotation and the field.
    """
    json_path = Path(json_path)
    data = _read_json_object(json_path)
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{json_path}: 'annotations' must be a list")
    images = check_images(data["images"], json_path)
    categories = check_categories(data["categories"], json_path)
    seen: set[int] = set()
    for k, ann in enumerate(data["annotations"]):
        check_annotation(ann, k, json_path, images, categories, seen)
    return data


def _read_json_object(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise FileNotFoundError(f"COCO json not found: {json_path}")
    try:
        with json_path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path} is not valid json: {e}") from e
    except RecursionError:
        raise ValueError(f"{json_path} is not valid json: nested too deeply") from None
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
    return data


def check_images(images: list[Any], json_path: Path) -> dict[int, dict[str, Any]]:
    """id -> image object, each with an integer id (unique) and a positive width and height."""
    checked: dict[int, dict[str, Any]] = {}
    for k, img in enumerate(images):
        where = f"images[{k}] of {json_path}"
        if not isinstance(img, dict):
            raise ValueError(f"{where}: expected an object, got {type(img).__name__}")
        for key in ("id", "width", "height"):
            if not is_int(img.get(key)):
                raise ValueError(f"{where}: expected an integer '{key}', got {img.get(key)!r}")
        if img["width"] <= 0 or img["height"] <= 0 or img["width"] * img["height"] > _MAX_PIXELS:
            raise ValueError(
                f"{where} (id {img['id']}): expected a positive width and height with "
                f"width * height < 2**31, got {img['width']}x{img['height']}"
            )
        if img["id"] in checked:
            raise ValueError(f"{where}: duplicate image id {img['id']}")
        checked[img["id"]] = img
    return checked


def check_categories(categories: list[Any], json_path: Path) -> dict[int, str]:
    """id -> name (the id as text when unnamed); ids integer and unique, at least one."""
    names: dict[int, str] = {}
    for k, cat in enumerate(categories):
        where = f"categories[{k}] of {json_path}"
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise ValueError(f"{where}: expected an object with an integer 'id'")
        if cat["id"] in names:
            raise ValueError(f"{where}: duplicate category id {cat['id']}")
        names[cat["id"]] = str(cat.get("name", cat["id"]))
    if not names:
        raise ValueError(f"{json_path}: 'categories' is empty")
    return names


def check_annotation(
    ann: Any,
    k: int,
    json_path: Path,
    images: dict[int, dict[str, Any]],
    categories: dict[int, str],
    seen_ids: set[int],
) -> None:
    """Validate annotations[k] (adding its id to `seen_ids`) and fill in a missing 'bbox'."""
    if not isinstance(ann, dict):
        raise ValueError(
            f"annotations[{k}] of {json_path}: expected an object, got {type(ann).__name__}"
        )
    ann_id = ann.get("id")
    where = f"annotation {ann_id!r} (annotations[{k}]) of {json_path}"
    if not is_int(ann_id):
        raise ValueError(f"{where}: expected an integer 'id'")
    if ann_id in seen_ids:
        raise ValueError(f"{where}: duplicate annotation id")
    seen_ids.add(ann_id)
    image = images.get(ann.get("image_id")) if is_int(ann.get("image_id")) else None
    if image is None:
        raise ValueError(
            f"{where}: image_id {ann.get('image_id')!r} is not in 'images' "
            f"(annotation refers to a missing image)"
        )
    if not is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        raise ValueError(
            f"{where}: unknown category_id {ann.get('category_id')!r}, expected one of "
            f"{sorted(categories)}"
        )
    height, width = image["height"], image["width"]
    if "segmentation" in ann:
        check_segmentation(ann["segmentation"], height, width, where)
    elif "bbox" not in ann:
        raise ValueError(f"{where}: needs a 'segmentation' or a 'bbox'")
    if "bbox" not in ann:
        # COCO's box of a mask; pycocotools gives numpy floats, json-ready as a list.
        rle = segmentation_to_rle(ann["segmentation"], height, width)
        ann["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
    _check_box_area_crowd(ann, where)


def _check_box_area_crowd(ann: dict[str, Any], where: str) -> None:
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_finite_number(v) for v in bbox):
        raise ValueError(f"{where}: expected 'bbox' [x, y, w, h] of 4 numbers, got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(
            f"{where}: 'bbox' has a negative width or height ({bbox!r}); "
            f"expected [x, y, w, h] with w, h >= 0"
        )
    area = ann.get("area", 0)
    if not is_finite_number(area) or area < 0:
        raise ValueError(f"{where}: expected 'area' as a finite number >= 0, got {area!r}")
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd", 0), float):
        raise ValueError(f"{where}: expected 'iscrowd' 0 or 1, got {ann.get('iscrowd')!r}")


def coco_api_from_dict(dataset: dict[str, Any]) -> COCO:
    """Build a pycocotools COCO object from a json `load_coco_json` validated, without prints.

    Fills the fields COCOeval needs and some jsons omit: `iscrowd` (0) and `area` (the mask's
    pixel count, or the box's area for annotations without a mask).
    """
    images = {img["id"]: img for img in dataset["images"]}
    for ann in dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = annotation_area(ann, images[ann["image_id"]])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def annotation_area(ann: dict[str, Any], image: dict[str, Any]) -> float:
    """Pixel count of a validated annotation's mask, or its box's area when it has none."""
    if "segmentation" in ann:
        rle = segmentation_to_rle(ann["segmentation"], image["height"], image["width"])
        return float(mask_util.area(rle))
    bbox = ann["bbox"]
    return float(bbox[2]) * float(bbox[3])
