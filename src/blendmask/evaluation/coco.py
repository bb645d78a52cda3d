"""COCO box and mask AP with pycocotools, the metric of BlendMask's tables (Sec. 4).

Predictions (`Detections`, original-image pixels) become COCO results: `bbox` as [x, y, w, h],
`segmentation` as compressed RLE with `counts` decoded to str (JSON-serialisable), contiguous
labels mapped back to COCO category ids. `COCOeval` then runs once per IoU type; for `segm` the
results' boxes are dropped first (as detectron2 does) so pycocotools takes each result's area
from its mask rather than its box.

Metric keys, fractions in [0, 1] (pycocotools' stats; -1 means "no ground truth in this range"):
    {bbox,segm}_AP, _AP50, _AP75, _APs, _APm, _APl
Zero detections give AP 0 (not a crash). pycocotools' prints are captured; a summary table
(with AP per category) is returned by `run_coco_eval` and kept as `COCOEvaluator.summary`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.data.coco import coco_api_from_dict, load_coco_json, segmentation_to_rle
from blendmask.structures import Detections

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def metric_keys(iou_types: Sequence[str] = IOU_TYPES) -> list[str]:
    """The keys `evaluate_coco` returns, e.g. ["bbox_AP", ..., "segm_APl"]."""
    return [f"{iou_type}_{name}" for iou_type in iou_types for name in STAT_NAMES]


def load_coco_gt(coco_gt: COCO | str | Path) -> COCO:
    """A COCO ground-truth object from a json path (validated, silent) or as given."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    return coco_api_from_dict(load_coco_json(coco_gt))


def detections_to_coco_results(
    detections: Sequence[Detections],
    image_ids: Sequence[int],
    contiguous_to_category_id: Sequence[int],
) -> list[dict[str, Any]]:
    """Convert per-image detections to COCO result dicts.

    Args:
        detections: one `Detections` per image (boxes xyxy and masks bool[D, H0, W0] in
            original-image pixels).
        image_ids: COCO image id of each entry of `detections`.
        contiguous_to_category_id: COCO category id of each contiguous label.

    Returns:
        [{"image_id", "category_id", "score", "bbox": [x, y, w, h],
          "segmentation": {"size": [H0, W0], "counts": str}}, ...]
    """
    if len(detections) != len(image_ids):
        raise ValueError(
            f"expected one image id per Detections, got {len(image_ids)} ids for "
            f"{len(detections)} images"
        )
    results: list[dict[str, Any]] = []
    for dets, image_id in zip(detections, image_ids):
        if len(dets) == 0:
            continue
        boxes = dets.boxes.detach().float().cpu()
        # xyxy -> xywh
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = dets.scores.detach().float().cpu().tolist()
        labels = dets.labels.detach().cpu().tolist()
        # (D, H0, W0) bool -> (H0, W0, D) Fortran-ordered uint8, the layout pycocotools encodes.
        masks = np.asfortranarray(
            dets.masks.detach().cpu().permute(1, 2, 0).numpy().astype(np.uint8)
        )
        rles = mask_util.encode(masks)
        for box, score, label, rle in zip(xywh, scores, labels, rles):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(contiguous_to_category_id[label]),
                    "score": float(score),
                    "bbox": [float(v) for v in box],
                    "segmentation": {
                        "size": [int(s) for s in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                    },
                }
            )
    return results


def run_coco_eval(
    coco_gt: COCO | str | Path,
    results: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
    max_detections: int = 100,
) -> tuple[dict[str, float], str]:
    """Run COCOeval per IoU type and return (metrics, summary text).

    Args:
        coco_gt: ground truth (a COCO object or a json path).
        results: COCO result dicts (not modified).
        iou_types: any of "bbox", "segm".
        image_ids: evaluate only these images (default: every ground-truth image); pass the
            images that were actually predicted when evaluating a subset.
        max_detections: detections per image that count (COCO's 100; images with more
            ground-truth objects, like nuclei, need more to reach AP 1).
    """
    coco_gt = load_coco_gt(coco_gt)
    iou_types = list(iou_types)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}, expected one of {IOU_TYPES}")
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(
            f"results refer to image ids not in the ground truth: {sorted(unknown)[:10]}"
        )
    metrics: dict[str, float] = {}
    summaries: list[str] = []
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = _load_results(coco_gt, _results_for(iou_type, results))
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
            evaluator.params.maxDets = [1, 10, max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
        stats = _ap_stats(evaluator)
        for name, value in zip(STAT_NAMES, stats):
            metrics[f"{iou_type}_{name}"] = value
        summaries.append(_summary_table(iou_type, stats, evaluator, coco_gt, max_detections))
    return metrics, "\n\n".join(summaries)


def _mean_precision(
    evaluator: COCOeval, iou: float | None = None, area: str = "all", category: int | None = None
) -> float:
    """Mean of the accumulated precision over IoU thresholds (or one), recall thresholds and
    categories (or one) at the last maxDets, ignoring -1 cells; -1 when all are -1.

    The same numbers as COCOeval.summarize()'s AP lines, which cannot be used directly because
    its first line hard-codes maxDets=100.
    """
    params = evaluator.params
    precision = evaluator.eval["precision"]  # (T iou, R recall, K category, A area, M maxDets)
    precision = precision[:, :, :, params.areaRngLbl.index(area), -1]
    if iou is not None:
        precision = precision[np.isclose(params.iouThrs, iou)]
    if category is not None:
        precision = precision[:, :, category]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def _ap_stats(evaluator: COCOeval) -> list[float]:
    """AP, AP50, AP75, APs, APm, APl (pycocotools' stats[0:6])."""
    return [
        _mean_precision(evaluator),
        _mean_precision(evaluator, iou=0.5),
        _mean_precision(evaluator, iou=0.75),
        _mean_precision(evaluator, area="small"),
        _mean_precision(evaluator, area="medium"),
        _mean_precision(evaluator, area="large"),
    ]


def _summary_table(
    iou_type: str, stats: list[float], evaluator: COCOeval, coco_gt: COCO, max_detections: int
) -> str:
    """Percent AP table, then AP per category (-1: no ground truth)."""
    prefix = f"{iou_type} (maxDets {max_detections})  "
    header = prefix + "  ".join(f"{n:>6}" for n in STAT_NAMES)
    values = " " * len(prefix) + "  ".join(
        f"{100 * v:6.2f}" if v >= 0 else f"{-1:6d}" for v in stats
    )
    lines = [header, values, "  AP per category:"]
    for k, category_id in enumerate(evaluator.params.catIds):
        ap = _mean_precision(evaluator, category=k)
        name = coco_gt.cats[category_id].get("name", category_id)
        lines.append(f"    {name}: {100 * ap:.2f}" if ap >= 0 else f"    {name}: -1")
    return "\n".join(lines)


def evaluate_coco(
    coco_gt: COCO | str | Path,
    results: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
    max_detections: int = 100,
) -> dict[str, float]:
    """COCO metrics of `results` against `coco_gt` (see the module docstring for the keys and
    `run_coco_eval` for the arguments)."""
    return run_coco_eval(
        coco_gt, results, iou_types, image_ids=image_ids, max_detections=max_detections
    )[0]


def _results_for(iou_type: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fresh copies of the fields one IoU type needs (loadRes writes into its input)."""
    if iou_type == "segm":
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    copies = []
    for r in results:
        copy = {k: v for k, v in r.items() if k != "segmentation"}
        if "bbox" not in copy:
            copy["bbox"] = [float(v) for v in mask_util.toBbox(r["segmentation"])]
        copies.append(copy)
    return copies


def _load_results(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    if results:
        return coco_gt.loadRes(results)
    # loadRes fails on an empty list; an empty result set must score 0, not crash.
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


# ---------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------


def load_results_json(results_json: str | Path, coco_gt: COCO) -> list[dict[str, Any]]:
    """Read and validate a COCO results json against `coco_gt`.

    Each result needs image_id (a ground-truth image), category_id (a ground-truth category),
    a finite score, and a bbox [x, y, w, h] (w, h >= 0) and/or a segmentation (RLE or
    polygons; converted to compressed RLE with str counts). Either every result has a
    segmentation or none has.

    Raises:
        FileNotFoundError / ValueError naming the file and the offending result.
    """
    path = Path(results_json)
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
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    checked: list[dict[str, Any]] = []
    with_masks = 0
    for k, result in enumerate(results):
        where = f"result {k} of {path}"
        if not isinstance(result, dict):
            raise ValueError(f"{where}: expected an object, got {type(result).__name__}")
        for key in ("image_id", "category_id", "score"):
            if key not in result:
                raise ValueError(f"{where}: missing '{key}'")
        if result["image_id"] not in image_ids:
            raise ValueError(
                f"{where}: image_id {result['image_id']!r} is not an image of the ground truth"
            )
        if result["category_id"] not in category_ids:
            raise ValueError(
                f"{where}: category_id {result['category_id']!r} is not a ground-truth category "
                f"(expected one of {sorted(category_ids)})"
            )
        score = result["score"]
        if (
            not isinstance(score, (int, float))
            or isinstance(score, bool)
            or not math.isfinite(score)
        ):
            raise ValueError(f"{where}: expected a finite number 'score', got {score!r}")
        item = {
            "image_id": result["image_id"],
            "category_id": result["category_id"],
            "score": float(score),
        }
        if "bbox" in result:
            bbox = result["bbox"]
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
                or bbox[2] < 0
                or bbox[3] < 0
            ):
                raise ValueError(
                    f"{where}: expected 'bbox' [x, y, w, h] with w, h >= 0, got {bbox!r}"
                )
            item["bbox"] = [float(v) for v in bbox]
        if "segmentation" in result:
            image = coco_gt.imgs[result["image_id"]]
            try:
                rle = segmentation_to_rle(result["segmentation"], image["height"], image["width"])
                size = list(rle["size"])
                mask_util.area(rle)  # decodes the counts: fails on garbage
            except Exception as e:
                raise ValueError(f"{where}: unreadable 'segmentation' ({e})") from e
            if size != [image["height"], image["width"]]:
                raise ValueError(
                    f"{where}: segmentation size {size} is not the image's "
                    f"[{image['height']}, {image['width']}]"
                )
            counts = rle["counts"]
            item["segmentation"] = {
                "size": size,
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            }
            with_masks += 1
        elif "bbox" not in item:
            raise ValueError(f"{where}: needs a 'bbox' or a 'segmentation'")
        checked.append(item)
    if 0 < with_masks < len(checked):
        raise ValueError(
            f"{path}: {with_masks} of {len(checked)} results have a 'segmentation'; "
            f"expected all or none"
        )
    return checked


def write_evaluation(
    out_dir: str | Path, metrics: dict[str, Any], results: Sequence[dict[str, Any]]
) -> None:
    """Write `out_dir/metrics.json` and `out_dir/results.json`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "results.json").open("w", encoding="utf-8") as f:
        json.dump(list(results), f)


def evaluate_results_file(
    gt_json: str | Path,
    results_json: str | Path,
    out_dir: str | Path,
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """Score a COCO results json against a ground-truth json, no model needed.

    Evaluates `segm` too when the results have masks. Writes `out_dir/metrics.json` (the
    metric keys plus "images", the number of ground-truth images, and "seconds", the time
    taken) and `out_dir/results.json` (the validated results), and returns the metrics.
    """
    start = time.perf_counter()
    coco_gt = load_coco_gt(gt_json)
    results = load_results_json(results_json, coco_gt)
    # Box-only results get box AP only; an empty file scores 0 for both.
    iou_types = ("bbox",) if results and "segmentation" not in results[0] else IOU_TYPES
    metrics: dict[str, Any] = evaluate_coco(
        coco_gt, results, iou_types, max_detections=max_detections
    )
    metrics["images"] = len(coco_gt.getImgIds())
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    write_evaluation(out_dir, metrics, results)
    return metrics


# ---------------------------------------------------------------------------------------------
# Incremental evaluator for the training engine
# ---------------------------------------------------------------------------------------------


class COCOEvaluator:
    """Collect detections image by image, then compute COCO metrics.

    Results are converted to RLE as they arrive (small in memory). Under torch.distributed,
    `evaluate` gathers every rank's results and all ranks return the same metrics.

    Args:
        coco_gt: ground truth (a COCO object, e.g. `CocoDataset.coco`, or a json path).
        contiguous_to_category_id: COCO category id of each contiguous label.
        iou_types: any of "bbox", "segm".
        max_detections: detections per image that count (see `run_coco_eval`).
    """

    def __init__(
        self,
        coco_gt: COCO | str | Path,
        contiguous_to_category_id: Sequence[int],
        iou_types: Sequence[str] = IOU_TYPES,
        *,
        max_detections: int = 100,
    ) -> None:
        self.coco_gt = load_coco_gt(coco_gt)
        self.max_detections = max_detections
        self.contiguous_to_category_id = list(contiguous_to_category_id)
        self.iou_types = tuple(iou_types)
        self.summary = ""
        self.reset()

    def reset(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def process(self, image_ids: Sequence[int], detections: Sequence[Detections]) -> None:
        """Add the detections of a batch (`image_ids[i]` is the image of `detections[i]`)."""
        self.results += detections_to_coco_results(
            detections, image_ids, self.contiguous_to_category_id
        )
        self.image_ids += [int(i) for i in image_ids]

    def evaluate(self) -> dict[str, float]:
        """Metrics over the processed images only (keys: see the module docstring)."""
        results, image_ids = self.results, self.image_ids
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (results, image_ids))
            results = [r for part, _ in gathered for r in part]
            image_ids = [i for _, part in gathered for i in part]
        metrics, self.summary = run_coco_eval(
            self.coco_gt,
            results,
            self.iou_types,
            image_ids=image_ids,
            max_detections=self.max_detections,
        )
        return metrics
