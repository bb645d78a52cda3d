"""Panoptic quality: PQ, SQ and RQ (Kirillov et al. 2019, "Panoptic Segmentation", Sec. 4), with
COCO's definition as panopticapi's `pq_compute` implements it (BlendMask Sec. 4.4 reports PQ).

Per image, a ground-truth segment and a predicted segment of the same category match when
IoU > 0.5 (strictly: IoU exactly 0.5 is no match; matches are then unique). Per category,
PQ = sum of matched IoUs / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2);
PQ / SQ / RQ average them over the categories that occur (TP + FP + FN > 0), `_th` over thing
and `_st` over stuff categories. Void and crowd, as panopticapi:
- the IoU's union leaves out the predicted segment's void pixels (ground-truth id 0);
- crowd ground-truth segments match nothing and are no false negatives;
- an unmatched prediction is no false positive when more than half of it lies on void or on a
  crowd region of its own category.

Why not a library (checked on hand-built cases, see docs and the closing note): panopticapi-lite
on PyPI is panopticapi itself but pins numpy < 2 (this package runs on numpy 2), reads the
predictions only from PNG files, prints per image and divides by zero when a kind of category
(things or stuff) never occurs; torchmetrics' PanopticQuality has no crowd regions, drops
unmatched ground truth that is mostly void in the prediction (panopticapi counts it as a false
negative) and also removes target void from the union, so its PQ is not COCO's. Two deliberate
differences from panopticapi, neither of which changes COCO's numbers: areas come from the
PNGs (COCO's json areas are those counts) and several crowd segments of one category in an
image count together (COCO has at most one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blendmask.data.panoptic_format import VOID_ID, PanopticCategory, Segment

_OFFSET = 256**3  # > every segment id: gt * OFFSET + pred is a unique pair key (panopticapi)
METRIC_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


@dataclass
class ClassStat:
    """Counts of one category over the images seen: true / false positives, false negatives,
    and the sum of the matched pairs' IoUs."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0


@dataclass
class PQStat:
    """Per-category counts (category id -> ClassStat), summed over images with `add`."""

    per_category: dict[int, ClassStat] = field(default_factory=dict)

    def __getitem__(self, category_id: int) -> ClassStat:
        return self.per_category.setdefault(category_id, ClassStat())

    def add(self, other: PQStat) -> None:
        for category_id, s in other.per_category.items():
            mine = self[category_id]
            mine.tp, mine.fp, mine.fn, mine.iou = (
                mine.tp + s.tp,
                mine.fp + s.fp,
                mine.fn + s.fn,
                mine.iou + s.iou,
            )


def pq_stat_of_image(
    gt_ids: np.ndarray,
    gt_segments: Mapping[int, Segment],
    pred_ids: np.ndarray,
    pred_categories: Mapping[int, int],
) -> PQStat:
    """The PQ counts of one image.

    Args:
        gt_ids (int[H, W]): ground-truth segment id of each pixel (0 void).
        gt_segments: ground-truth segment id -> Segment (category_id, iscrowd).
        pred_ids (int[H, W]): predicted segment id of each pixel (0 unassigned).
        pred_categories: predicted segment id -> category id; every non-zero id of `pred_ids`
            must be a key (a key absent from `pred_ids` is a segment with no pixel: skipped).
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"prediction is {pred_ids.shape}, ground truth {gt_ids.shape}")
    pairs, counts = np.unique(
        gt_ids.astype(np.int64) * _OFFSET + pred_ids.astype(np.int64), return_counts=True
    )
    overlap = {(int(p // _OFFSET), int(p % _OFFSET)): int(c) for p, c in zip(pairs, counts)}
    gt_area: dict[int, int] = {}
    pred_area: dict[int, int] = {}
    for (g, p), c in overlap.items():
        gt_area[g] = gt_area.get(g, 0) + c
        pred_area[p] = pred_area.get(p, 0) + c
    stat = PQStat()
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in overlap.items():
        gt, pred_category = gt_segments.get(g), pred_categories.get(p)
        if gt is None or pred_category is None or gt.iscrowd or gt.category_id != pred_category:
            continue
        union = pred_area[p] + gt_area[g] - inter - overlap.get((VOID_ID, p), 0)
        iou = inter / union
        if iou > 0.5:
            stat[gt.category_id].tp += 1
            stat[gt.category_id].iou += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd_of_category: dict[int, list[int]] = {}
    for g, gt in gt_segments.items():
        if gt.iscrowd:
            crowd_of_category.setdefault(gt.category_id, []).append(g)
        elif g not in gt_matched:
            stat[gt.category_id].fn += 1
    for p, category in pred_categories.items():
        if p in pred_matched or pred_area.get(p, 0) == 0 or p == VOID_ID:
            continue
        ignored = overlap.get((VOID_ID, p), 0)
        ignored += sum(overlap.get((g, p), 0) for g in crowd_of_category.get(category, []))
        if ignored / pred_area[p] > 0.5:
            continue
        stat[category].fp += 1
    return stat


def summarize_pq(
    stat: PQStat, categories: Mapping[int, PanopticCategory]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(metrics, per class): PQ, SQ, RQ over all / thing / stuff categories, as fractions
    (-1 when no category of that kind occurs), and {name: {"PQ", "SQ", "RQ", "TP", "FP",
    "FN"}} for every category that occurs."""
    metrics: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    for suffix, kind in (("", None), ("_th", True), ("_st", False)):
        values = []
        for category_id, cat in sorted(categories.items()):
            s = stat.per_category.get(category_id, ClassStat())
            if (kind is not None and cat.isthing != kind) or s.tp + s.fp + s.fn == 0:
                continue
            denominator = s.tp + 0.5 * s.fp + 0.5 * s.fn
            pq, rq = s.iou / denominator, s.tp / denominator
            sq = s.iou / s.tp if s.tp else 0.0
            values.append((pq, sq, rq))
            if kind is None:
                per_class[cat.name] = {
                    "PQ": pq,
                    "SQ": sq,
                    "RQ": rq,
                    "TP": s.tp,
                    "FP": s.fp,
                    "FN": s.fn,
                }
        for k, key in enumerate(("PQ", "SQ", "RQ")):
            metrics[key + suffix] = float(np.mean([v[k] for v in values])) if values else -1.0
    return metrics, per_class


class PanopticEvaluator:
    """Accumulates PQ counts image by image against a ground truth.

    Args:
        categories: the ground truth's categories by id (`PanopticJson.categories`).
    """

    def __init__(self, categories: Mapping[int, PanopticCategory]) -> None:
        self.categories = dict(categories)
        self.stat = PQStat()
        self.images = 0

    def process(
        self,
        gt_ids: np.ndarray,
        gt_segments: Mapping[int, Segment],
        pred_ids: np.ndarray,
        pred_categories: Mapping[int, int],
    ) -> None:
        """Add one image (arguments as `pq_stat_of_image`); an unknown predicted category is
        a ValueError."""
        unknown = sorted(set(pred_categories.values()) - set(self.categories))
        if unknown:
            raise ValueError(
                f"predicted category id(s) {unknown} are not in the ground truth's categories"
            )
        self.stat.add(pq_stat_of_image(gt_ids, gt_segments, pred_ids, pred_categories))
        self.images += 1

    def evaluate(self) -> dict[str, Any]:
        """PQ, SQ, RQ (all, _th, _st) as fractions plus "per_class" and "images"."""
        metrics, per_class = summarize_pq(self.stat, self.categories)
        return {**metrics, "per_class": per_class, "images": self.images}


def format_pq_table(metrics: Mapping[str, Any], names: Iterable[str] = ()) -> str:
    """The PQ / SQ / RQ table panopticapi prints (x100), for the commands' output."""
    lines = [f"{'':8s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s}"]
    for label, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        row = [metrics.get(k + suffix, -1.0) for k in ("PQ", "SQ", "RQ")]
        lines.append(f"{label:8s} " + " ".join(f"{100 * v:6.1f}" for v in row))
    per_class = metrics.get("per_class", {})
    for name in names or per_class:
        if name in per_class:
            v = per_class[name]
            lines.append(
                f"{name[:8]:8s} {100 * v['PQ']:6.1f} {100 * v['SQ']:6.1f} {100 * v['RQ']:6.1f}"
            )
    return "\n".join(lines)
