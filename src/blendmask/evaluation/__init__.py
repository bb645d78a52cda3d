"""Evaluation: COCO box / mask AP with pycocotools."""

from blendmask.evaluation.coco import (
    COCOEvaluator,
    detections_to_coco_results,
    evaluate_coco,
    metric_keys,
    run_coco_eval,
)
from blendmask.evaluation.results import evaluate_results_file

__all__ = [
    "COCOEvaluator",
    "detections_to_coco_results",
    "evaluate_coco",
    "evaluate_results_file",
    "metric_keys",
    "run_coco_eval",
]
