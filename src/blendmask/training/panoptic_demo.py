"""The end of `blendmask demo --panoptic`: PQ on the synthetic val split, panoptic overlays, a
ground truth / prediction sheet and the blender figure (`explain.png`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.evaluation.evaluate_panoptic import evaluate_panoptic
from blendmask.explain import save_explanation
from blendmask.prediction.panoptic_predict import draw_panoptic
from blendmask.predictor import Predictor
from blendmask.training.loop import TrainResult
from blendmask.visualization import save_png

SHEET_IMAGES = 4  # rows of DIR/panoptic_sheet.png


def finish_panoptic_demo(
    result: TrainResult, paths: dict[str, Path], out: Path, dev: torch.device, num_overlays: int
) -> dict[str, Any]:
    """PQ metrics of the trained model on the val split (when the training's evaluation has not
    given them); writes DIR/overlays/*.png (panoptic),
    DIR/panoptic_sheet.png (image | ground truth | prediction, a row per image) and
    DIR/explain.png."""
    cfg = result.cfg
    metrics: dict[str, Any] = {}
    if "PQ" not in result.metrics:  # the training's last evaluation scores PQ when it can
        metrics = evaluate_panoptic(
            cfg,
            result.model,
            result.postprocessor,
            json_path=paths["val_panoptic_json"],
            panoptic_dir=paths["val_panoptic_images"],
            images_dir=paths["val_images"],
            device=dev,
        )
        metrics["pq_seconds"] = metrics.pop("seconds")
    val = CocoPanopticDataset(
        paths["val_panoptic_json"], paths["val_panoptic_images"], paths["val_images"]
    )
    predictor = Predictor(cfg, result.model, result.postprocessor, dev)
    names = {"thing_names": cfg.data.category_names, "stuff_names": cfg.data.stuff_names}
    rows = []
    for i in range(min(max(num_overlays, SHEET_IMAGES), len(val))):
        image, _ = val[i]
        predicted = draw_panoptic(image, predictor.predict_panoptic([image])[0], **names)
        if i < num_overlays:
            save_png(predicted, out / "overlays" / f"{val.image_path(i).stem}.png")
        if i < SHEET_IMAGES:
            truth = draw_panoptic(image, ground_truth_segmentation(val, i), **names)
            rows.append(torch.cat([image, truth, predicted], dim=2))
    if rows:
        save_png(torch.cat(rows, dim=1), out / "panoptic_sheet.png")
        save_explanation(
            predictor, val.image_path(0), out / "explain.png", top=3, score_threshold=0.5
        )
    return metrics


def ground_truth_segmentation(dataset: CocoPanopticDataset, index: int) -> SimpleNamespace:
    """The `index`-th image's annotation in the shape `draw_panoptic` takes (segment_map and
    segments with 0-based thing labels / 1-based stuff classes; crowd segments left out)."""
    image_id = dataset.image_ids[index]
    ids = dataset.segment_ids(index)
    segments = []
    for seg in dataset.data.segments[image_id].values():
        if seg.iscrowd:
            continue
        isthing = dataset.data.categories[seg.category_id].isthing
        category = (
            dataset.category_id_to_contiguous[seg.category_id]
            if isthing
            else dataset.category_id_to_semantic[seg.category_id]
        )
        segments.append({"id": seg.id, "isthing": isthing, "category": category})
    return SimpleNamespace(segment_map=torch.from_numpy(ids), segments=segments)
