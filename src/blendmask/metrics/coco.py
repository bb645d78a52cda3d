"""COCO box and mask AP with pycocotools, the metric of BlendMask's tables (Sec. 4).

Predictions (`Detections`, original-image pixels) become COCO results: `bbox` as [x, y, w, h],
`segmentation` as compressed RLE with `counts` decoded to str (JSON-serialisable), contiguous
labels mapped back to COCO category ids. `COCOeval` then runs once per IoU type; for `segm` the
results' boxes are dropped first (as detectron2 does) so pycocotools takes each result's area
from its mask rather than its box.

Metric keys, fractions in [0, 1] (pycocotools' stats; -1 means "no ground truth in this range"):
    {bbox,segm}_AP, _AP50, _AP75, _APs, _APm, _APl
Zero detections give AP 0 (not a crash). pycocotools' prints are captured; a summary table
(with AP per category) is returned by `run_coco_eval` and kept as `COCOEvaluator.summary`, and
the AP per category as `COCOEvaluator.per_category` ({name: {"bbox_AP", "segm_AP"}}, the key
`per_category` of `eval`'s metrics.json; `metrics.tables.format_tables` prints both).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.data.coco_json import coco_api_from_dict, load_coco_json
from blendmask.metrics.rle import window_to_rle
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

    Masks are encoded one detection at a time (box-local masks from their windows, see
    `metrics.rle`), so memory stays O(H0 x W0) whatever the number of detections.

    Args:
        detections: one `Detections` per image (boxes xyxy and masks bool[D, H0, W0], dense
            or box-local, in original-image pixels).
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
        for label in set(labels):
            if not 0 <= label < len(contiguous_to_category_id):
                raise ValueError(
                    f"detection label {label} has no category id "
                    f"({len(contiguous_to_category_id)} categories given)"
                )
        rles = detection_rles(dets)
        for box, score, label, rle in zip(xywh, scores, labels, rles):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(contiguous_to_category_id[label]),
                    "score": float(score),
                    "bbox": [float(v) for v in box],
                    "segmentation": rle,
                }
            )
    return results


def detection_rles(dets: Detections) -> list[dict[str, Any]]:
    """Compressed RLE {"size": [H0, W0], "counts": str} of each detection's mask, in order.

    Dense masks go to pycocotools one at a time (an (H0, W0) uint8 copy each, never the
    (H0, W0, D) stack); box-local ones are encoded from their pasted windows.
    """
    if dets.has_dense_masks:
        rles = []
        for mask in dets.masks.detach().cpu().unbind(0):
            # (H0, W0) bool -> Fortran-ordered uint8, the layout pycocotools encodes.
            rle = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()})
        return rles
    by_index: dict[int, dict[str, Any]] = {}
    for d, x, y, window in dets.to("cpu").mask_windows():
        by_index[d] = window_to_rle(window, x, y, dets.image_size)
    return [by_index[d] for d in range(len(dets))]


class CocoReport(NamedTuple):
    """What one COCO evaluation found.

    metrics: {iou_type}_{AP, AP50, AP75, APs, APm, APl} (fractions, -1: undefined).
    summary: the text table of `run_coco_eval`.
    per_category: {category name: {"{iou_type}_AP": fraction or -1}} (-1: no ground truth).
    """

    metrics: dict[str, float]
    summary: str
    per_category: dict[str, dict[str, float]]


def run_coco_eval(
    coco_gt: COCO | str | Path,
    results: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
    max_detections: int = 100,
    category_ids: Sequence[int] | None = None,
) -> tuple[dict[str, float], str]:
    """Run COCOeval per IoU type and return (metrics, summary text) (`coco_report` also
    returns the AP per category).

    Args:
        coco_gt: ground truth (a COCO object or a json path).
        results: COCO result dicts (not modified).
        iou_types: any of "bbox", "segm".
        image_ids: evaluate only these images (default: every ground-truth image); pass the
            images that were actually predicted when evaluating a subset.
        max_detections: detections per image that count (COCO's 100; images with more
            ground-truth objects, like nuclei, need more to reach AP 1).
        category_ids: evaluate only these categories (default: all; `eval --classes`).
    """
    report = coco_report(
        coco_gt,
        results,
        iou_types,
        image_ids=image_ids,
        max_detections=max_detections,
        category_ids=category_ids,
    )
    return report.metrics, report.summary


def coco_report(
    coco_gt: COCO | str | Path,
    results: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
    max_detections: int = 100,
    category_ids: Sequence[int] | None = None,
) -> CocoReport:
    """`run_coco_eval` with the AP of each category kept (arguments as there)."""
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
    unknown_categories = set(category_ids or ()) - set(coco_gt.getCatIds())
    if unknown_categories:
        raise ValueError(f"category ids not in the ground truth: {sorted(unknown_categories)}")
    metrics: dict[str, float] = {}
    summaries: list[str] = []
    per_category: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = _load_results(coco_gt, _results_for(iou_type, results))
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
            if category_ids is not None:
                evaluator.params.catIds = sorted(set(int(i) for i in category_ids))
            evaluator.params.maxDets = [1, 10, max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
        stats = _ap_stats(evaluator)
        for name, value in zip(STAT_NAMES, stats):
            metrics[f"{iou_type}_{name}"] = value
        aps = _category_aps(evaluator, coco_gt)
        for name, ap in aps.items():
            per_category.setdefault(name, {})[f"{iou_type}_AP"] = ap
        summaries.append(_summary_table(iou_type, stats, aps, max_detections))
    return CocoReport(metrics, "\n\n".join(summaries), per_category)


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


def _category_aps(evaluator: COCOeval, coco_gt: COCO) -> dict[str, float]:
    """{name: AP} of each evaluated category (-1: no ground truth); a name that repeats is
    suffixed with its id."""
    aps: dict[str, float] = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        name = str(coco_gt.cats[category_id].get("name", category_id))
        aps[f"{name} (id {category_id})" if name in aps else name] = _mean_precision(
            evaluator, category=k
        )
    return aps


def _summary_table(
    iou_type: str, stats: list[float], aps: dict[str, float], max_detections: int
) -> str:
    """Percent AP table, then AP per category (-1: no ground truth)."""
    prefix = f"{iou_type} (maxDets {max_detections})  "
    header = prefix + "  ".join(f"{n:>6}" for n in STAT_NAMES)
    values = " " * len(prefix) + "  ".join(
        f"{100 * v:6.2f}" if v >= 0 else f"{-1:6d}" for v in stats
    )
    lines = [header, values, "  AP per category:"]
    lines += [
        f"    {name}: {100 * ap:.2f}" if ap >= 0 else f"    {name}: -1" for name, ap in aps.items()
    ]
    return "\n".join(lines)


def evaluate_coco(
    coco_gt: COCO | str | Path,
    results: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
    max_detections: int = 100,
    per_category: bool = False,
) -> dict[str, Any]:
    """COCO metrics of `results` against `coco_gt` (see the module docstring for the keys and
    `run_coco_eval` for the arguments); with `per_category`, also the key "per_category"
    ({name: {"bbox_AP", "segm_AP"}})."""
    report = coco_report(
        coco_gt, results, iou_types, image_ids=image_ids, max_detections=max_detections
    )
    if per_category:
        return {**report.metrics, "per_category": report.per_category}
    return report.metrics


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
# Incremental evaluator for the training engine
# ---------------------------------------------------------------------------------------------


class COCOEvaluator:
    """Collect detections image by image, then compute COCO metrics.

    Results are converted to RLE as they arrive (small in memory). One process's view: under
    torch.distributed, `evaluation/evaluate.py` gathers every rank's `results` and `image_ids` into
    the evaluator of rank 0 (`merge`) and evaluates there.

    Args:
        coco_gt: ground truth (a COCO object, e.g. `CocoDataset.coco`, or a json path).
        contiguous_to_category_id: COCO category id of each contiguous label.
        iou_types: any of "bbox", "segm".
        max_detections: detections per image that count (see `run_coco_eval`).
        category_ids: evaluate only these categories (see `run_coco_eval`).

    After `evaluate`: `summary` (text table) and `per_category` ({name: {"bbox_AP", ...}}).
    """

    def __init__(
        self,
        coco_gt: COCO | str | Path,
        contiguous_to_category_id: Sequence[int],
        iou_types: Sequence[str] = IOU_TYPES,
        *,
        max_detections: int = 100,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        self.coco_gt = load_coco_gt(coco_gt)
        self.category_ids = None if category_ids is None else list(category_ids)
        self.per_category: dict[str, dict[str, float]] = {}
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

    def merge(self, parts: Sequence[tuple[list[dict[str, Any]], list[int]]]) -> None:
        """Add other evaluators' (`results`, `image_ids`), e.g. those of the other ranks."""
        for results, image_ids in parts:
            self.results += results
            self.image_ids += [int(i) for i in image_ids]

    def evaluate(self) -> dict[str, float]:
        """Metrics over the processed images only (keys: see the module docstring)."""
        # By image id, each image's results in the order they came (a stable sort, in place so
        # a results json written after matches): COCOeval breaks score ties by result order, so
        # any split of the images into batches or processes, merged in any order, gives the
        # same metrics.
        self.results.sort(key=lambda r: r["image_id"])
        report = coco_report(
            self.coco_gt,
            self.results,
            self.iou_types,
            image_ids=self.image_ids,
            max_detections=self.max_detections,
            category_ids=self.category_ids,
        )
        self.summary, self.per_category = report.summary, report.per_category
        return report.metrics
