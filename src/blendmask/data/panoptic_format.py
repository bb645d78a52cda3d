"""Reading and validating the COCO panoptic format (Kirillov et al. 2019, "Panoptic
Segmentation"; the format of COCO's `panoptic_{train,val}2017.json` and BlendMask's panoptic
results, BlendMask Sec. 4.4), for the training dataset (`data/panoptic.py`) and the PQ
evaluation (`metrics/panoptic.py`).

The format: a json with `images` (id, file_name, height, width), `categories` (id, name,
`isthing` 0 / 1) and `annotations`, one per image: `image_id`, `file_name` of a PNG and
`segments_info` (id, category_id, iscrowd, area, bbox). The PNG is RGB and holds the segment id
of every pixel as R + 256 G + 256^2 B; id 0 is void (unlabelled).

`load_panoptic_json` checks the whole json with cheap checks (no PNG decoding) before anything
uses it; `read_segment_ids` checks each PNG when it is read. Every error is one ValueError /
FileNotFoundError naming the file and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blendmask.data.coco_json import check_images, is_int, is_number

VOID_ID = 0  # the segment id of unlabelled pixels (panopticapi's VOID)


@dataclass(frozen=True)
class PanopticCategory:
    id: int
    name: str
    isthing: bool


@dataclass(frozen=True)
class Segment:
    """One entry of an annotation's `segments_info`."""

    id: int
    category_id: int
    iscrowd: bool


@dataclass(frozen=True)
class PanopticJson:
    """A validated panoptic json: images and annotations by image id, categories by id."""

    path: Path
    images: dict[int, dict[str, Any]]
    categories: dict[int, PanopticCategory]
    png_names: dict[int, str]  # image id -> PNG file name (relative to the PNG folder)
    segments: dict[int, dict[int, Segment]]  # image id -> segment id -> segment


def load_panoptic_json(json_path: str | Path, *, need_all_images: bool = True) -> PanopticJson:
    """Parse a COCO panoptic json and validate it (see the module docstring).

    `need_all_images`: every image must have an annotation (a ground truth); a results json
    (predictions) may cover fewer images.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, not json, or not a COCO panoptic json; the message names the
            file, the image / annotation / segment and the field.
    """
    path = Path(json_path)
    data = _read_object(path)
    images = check_images(data["images"], path)
    categories = _check_categories(data["categories"], path)
    png_names: dict[int, str] = {}
    segments: dict[int, dict[int, Segment]] = {}
    for k, ann in enumerate(data["annotations"]):
        image_id, png_name, segs = _check_annotation(ann, k, path, images, categories)
        if image_id in png_names:
            raise ValueError(f"annotations[{k}] of {path}: second annotation of image {image_id}")
        png_names[image_id], segments[image_id] = png_name, segs
    missing = sorted(set(images) - set(png_names))
    if need_all_images and missing:
        raise ValueError(
            f"{path}: {len(missing)} image(s) have no entry in 'annotations' (image ids "
            f"{', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''})"
        )
    return PanopticJson(path, images, categories, png_names, segments)


def _read_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"COCO panoptic json not found: {path}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid json: {e}") from e
    except RecursionError:
        raise ValueError(f"{path} is not valid json: nested too deeply") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from e
    expected = "an object with 'images', 'annotations' and 'categories' lists"
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a COCO panoptic json: expected {expected}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{path} is not a COCO panoptic json: expected {expected}, '{key}' is "
                f"{'missing' if key not in data else type(data[key]).__name__}"
            )
    return data


def _check_categories(categories: list[Any], path: Path) -> dict[int, PanopticCategory]:
    checked: dict[int, PanopticCategory] = {}
    for k, cat in enumerate(categories):
        where = f"categories[{k}] of {path}"
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise ValueError(f"{where}: expected an object with an integer 'id'")
        if cat["id"] in checked:
            raise ValueError(f"{where}: duplicate category id {cat['id']}")
        if cat.get("isthing") not in (0, 1) or isinstance(cat.get("isthing"), float):
            raise ValueError(
                f"{where} (id {cat['id']}): expected 'isthing' 0 or 1 (a panoptic category is "
                f"a thing or stuff), got {cat.get('isthing')!r}"
            )
        checked[cat["id"]] = PanopticCategory(
            cat["id"], str(cat.get("name", cat["id"])), bool(cat["isthing"])
        )
    if not checked:
        raise ValueError(f"{path}: 'categories' is empty")
    return checked


def _check_annotation(
    ann: Any,
    k: int,
    path: Path,
    images: dict[int, dict[str, Any]],
    categories: dict[int, PanopticCategory],
) -> tuple[int, str, dict[int, Segment]]:
    """(image id, PNG name, segments by id) of annotations[k]."""
    where = f"annotations[{k}] of {path}"
    if not isinstance(ann, dict):
        raise ValueError(f"{where}: expected an object, got {type(ann).__name__}")
    image_id = ann.get("image_id")
    if not is_int(image_id) or image_id not in images:
        raise ValueError(f"{where}: image_id {image_id!r} is not in 'images'")
    where = f"{where} (image id {image_id})"
    if not isinstance(ann.get("file_name"), str) or not ann["file_name"]:
        raise ValueError(f"{where}: expected a PNG 'file_name', got {ann.get('file_name')!r}")
    if not isinstance(ann.get("segments_info"), list):
        raise ValueError(f"{where}: expected a 'segments_info' list")
    segments: dict[int, Segment] = {}
    for j, seg in enumerate(ann["segments_info"]):
        here = f"segments_info[{j}] of {where}"
        if not isinstance(seg, dict) or not is_int(seg.get("id")) or seg["id"] <= VOID_ID:
            raise ValueError(f"{here}: expected an object with an integer 'id' > 0")
        if not 0 < seg["id"] < 256**3:
            raise ValueError(f"{here}: id {seg['id']} does not fit in an RGB PNG (< 256^3)")
        if seg["id"] in segments:
            raise ValueError(f"{here}: duplicate segment id {seg['id']}")
        if not is_int(seg.get("category_id")) or seg["category_id"] not in categories:
            raise ValueError(
                f"{here} (segment {seg['id']}): unknown category_id "
                f"{seg.get('category_id')!r}, expected one of {sorted(categories)}"
            )
        crowd = seg.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise ValueError(f"{here}: expected 'iscrowd' 0 or 1, got {crowd!r}")
        if "area" in seg and (not is_number(seg["area"]) or seg["area"] < 0):
            raise ValueError(f"{here}: expected 'area' >= 0, got {seg['area']!r}")
        segments[seg["id"]] = Segment(seg["id"], seg["category_id"], bool(crowd))
    return image_id, ann["file_name"], segments


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] -> int64[H, W]: segment id = R + 256 G + 256^2 B (panopticapi's rgb2id)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """int[H, W] segment ids -> uint8[H, W, 3], the inverse of `rgb_to_id`."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_segment_ids(
    png_path: Path,
    size: tuple[int, int],
    segments: dict[int, Segment],
    where: str,
) -> np.ndarray:
    """The segment id of every pixel of a panoptic PNG: int64[H, W].

    Checks that the PNG exists, is readable and RGB, is `size` = (h, w), and that every
    non-void id in it is one of `segments` (`where`: the json entry, for the messages).
    """
    if not png_path.is_file():
        raise FileNotFoundError(f"panoptic PNG not found: {png_path} ({where})")
    try:
        with Image.open(png_path) as image:
            image.load()
            mode, pixels = image.mode, np.asarray(image)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read panoptic PNG {png_path}: {e} ({where})") from e
    if mode not in ("RGB", "RGBA"):
        raise ValueError(
            f"panoptic PNG {png_path} is {mode}, expected RGB (id = R + 256 G + 256^2 B) ({where})"
        )
    if pixels.shape[:2] != tuple(size):
        raise ValueError(
            f"panoptic PNG {png_path} is {pixels.shape[1]}x{pixels.shape[0]} (w x h) but "
            f"{where} says {size[1]}x{size[0]}"
        )
    ids = rgb_to_id(pixels[..., :3])
    unknown = sorted(set(np.unique(ids).tolist()) - set(segments) - {VOID_ID})
    if unknown:
        raise ValueError(
            f"panoptic PNG {png_path} holds segment id(s) {', '.join(map(str, unknown[:5]))} "
            f"that are not in the 'segments_info' of {where}"
        )
    return ids
