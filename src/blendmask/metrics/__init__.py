"""Metrics: COCO box / mask AP with pycocotools, RLE, PQ, tables and plots (no model here)."""

from blendmask.metrics.coco import (
    COCOEvaluator,
    detections_to_coco_results,
    evaluate_coco,
    metric_keys,
    run_coco_eval,
)
from blendmask.metrics.results import evaluate_results_file

__all__ = [
    "COCOEvaluator",
    "detections_to_coco_results",
    "evaluate_coco",
    "evaluate_results_file",
    "metric_keys",
    "run_coco_eval",
]
