"""COCO results files: reading and validating a results json against its ground truth, scoring
it without a model (`blendmask eval --results`), and writing metrics.json / results.json."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from blendmask.atomic import atomic_write
from blendmask.data.segmentation import (
    check_segmentation,
    is_finite_number,
    is_int,
    segmentation_to_rle,
)
from blendmask.evaluation.coco import IOU_TYPES, evaluate_coco, load_coco_gt
from blendmask.evaluation.image_ids import GroundTruthImages


def load_results_json(results_json: str | Path, coco_gt: COCO) -> list[dict[str, Any]]:
    """Read and validate a COCO results json against `coco_gt`.

    Each result needs image_id (a ground-truth image), category_id (a ground-truth category),
    a finite score, and a bbox [x, y, w, h] (w, h >= 0) and/or a segmentation (RLE or
    polygons; converted to compressed RLE with str counts). Either every result has a
    segmentation or none has. A result with a "file_name" (`blendmask predict --coco` writes
    the image's path) is the ground-truth image of that file_name (`GroundTruthImages`), whatever
    its image_id (predict without --json numbers its own images).

    Raises:
        FileNotFoundError / ValueError naming the file and the offending result.
    """
    path = Path(results_json)
    results = _read_result_list(path)
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    files = GroundTruthImages(coco_gt.dataset.get("images", []), "the ground truth")
    checked = [
        _check_result(result, f"result {k} of {path}", coco_gt, (image_ids, files), category_ids)
        for k, result in enumerate(results)
    ]
    with_masks = sum("segmentation" in item for item in checked)
    if 0 < with_masks < len(checked):
        raise ValueError(
            f"{path}: {with_masks} of {len(checked)} results have a 'segmentation'; "
            f"expected all or none"
        )
    return checked


def _read_result_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"results json not found: {path}")
    try:
        with path.open("rb") as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid json: {e}") from e
    if not isinstance(results, list):
        raise ValueError(
            f"{path} is not a COCO results json: expected a list of result objects, "
            f"got a {type(results).__name__}"
        )
    return results


def _check_result(
    result: Any,
    where: str,
    coco_gt: COCO,
    images: tuple[set[int], GroundTruthImages],
    category_ids: set[int],
) -> dict[str, Any]:
    """One result object -> its validated copy (float score and box, str RLE counts, the
    image_id of its file_name if it has one)."""
    if not isinstance(result, dict):
        raise ValueError(f"{where}: expected an object, got {type(result).__name__}")
    for key in ("image_id", "category_id", "score"):
        if key not in result and not (key == "image_id" and "file_name" in result):
            raise ValueError(f"{where}: missing '{key}'")
    image_id = _result_image_id(result, where, *images)
    if not is_int(result["category_id"]) or result["category_id"] not in category_ids:
        raise ValueError(
            f"{where}: category_id {result['category_id']!r} is not a ground-truth category "
            f"(expected one of {sorted(category_ids)})"
        )
    score = result["score"]
    if not is_finite_number(score):
        raise ValueError(f"{where}: expected a finite number 'score', got {score!r}")
    item = {"image_id": image_id, "category_id": result["category_id"]}
    item["score"] = float(score)
    if "bbox" in result:
        bbox = result["bbox"]
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(is_finite_number(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise ValueError(f"{where}: expected 'bbox' [x, y, w, h] with w, h >= 0, got {bbox!r}")
        item["bbox"] = [float(v) for v in bbox]
    if "segmentation" in result:
        image = coco_gt.imgs[image_id]
        item["segmentation"] = _check_result_segmentation(result["segmentation"], image, where)
    elif "bbox" not in item:
        raise ValueError(f"{where}: needs a 'bbox' or a 'segmentation'")
    return item


def _result_image_id(
    result: dict[str, Any], where: str, image_ids: set[int], files: GroundTruthImages
) -> int:
    """The ground-truth image of a result: that of its "file_name" when it has one (a path
    whose tail is an image's file_name), else its "image_id"."""
    name = result.get("file_name")
    if name is not None:
        if not isinstance(name, str):
            raise ValueError(f"{where}: expected a string 'file_name', got {name!r}")
        return files.image_id(name, where)
    # is_int first: a list or object id would make the set lookup raise TypeError.
    if not is_int(result["image_id"]) or result["image_id"] not in image_ids:
        raise ValueError(
            f"{where}: image_id {result['image_id']!r} is not an image of the ground truth"
        )
    return result["image_id"]


def _check_result_segmentation(segmentation: Any, image: dict, where: str) -> dict[str, Any]:
    """A result's mask -> compressed RLE with str counts.

    Checked as ground truth is (`check_segmentation`: compressed counts decoded, runs covering
    exactly height * width pixels, polygons finite and on the image), since pycocotools scores
    a garbage RLE with a nonsense area instead of failing."""
    height, width = image["height"], image["width"]
    if isinstance(segmentation, dict) and isinstance(segmentation.get("size"), list):
        size = segmentation["size"]
        if size != [height, width]:
            raise ValueError(
                f"{where}: segmentation size {size} is not the image's [{height}, {width}]"
            )
    check_segmentation(segmentation, height, width, where)
    rle = segmentation_to_rle(segmentation, height, width)
    counts = rle["counts"]
    return {
        "size": [height, width],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def write_evaluation(
    out_dir: str | Path, metrics: dict[str, Any], results: Sequence[dict[str, Any]]
) -> None:
    """Write `out_dir/metrics.json` and `out_dir/results.json`."""
    out_dir = Path(out_dir)
    # Atomic, and never through a link planted at either name.
    text = (json.dumps(metrics, indent=2) + "\n").encode()
    atomic_write(out_dir / "metrics.json", lambda f: f.write(text))
    atomic_write(out_dir / "results.json", lambda f: f.write(json.dumps(list(results)).encode()))


def evaluate_results_file(
    gt_json: str | Path,
    results_json: str | Path,
    out_dir: str | Path,
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """Score a COCO results json against a ground-truth json, no model needed.

    Evaluates `segm` too when the results have masks. Writes `out_dir/metrics.json` (the
    metric keys, "per_category" ({name: {"bbox_AP", "segm_AP"}}), "images", the number of
    ground-truth images, and "seconds", the time taken) and `out_dir/results.json` (the validated results), and returns the metrics.
    """
    start = time.perf_counter()
    coco_gt = load_coco_gt(gt_json)
    results = load_results_json(results_json, coco_gt)
    # Box-only results get box AP only; an empty file scores 0 for both.
    iou_types = ("bbox",) if results and "segmentation" not in results[0] else IOU_TYPES
    if results and "segm" in iou_types:
        boxes_only = [a["id"] for a in coco_gt.dataset["annotations"] if "segmentation" not in a]
        if boxes_only:
            raise ValueError(
                f"{gt_json}: annotation {boxes_only[0]} (and {len(boxes_only) - 1} more) has no "
                f"'segmentation': mask results need ground-truth masks"
            )
    metrics: dict[str, Any] = evaluate_coco(
        coco_gt, results, iou_types, max_detections=max_detections, per_category=True
    )
    metrics["images"] = len(coco_gt.getImgIds())
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    write_evaluation(out_dir, metrics, results)
    return metrics
