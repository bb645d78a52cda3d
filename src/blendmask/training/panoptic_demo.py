"""The end of `blendmask demo --panoptic`: the merge's score threshold from the training images,
PQ on the synthetic val split, panoptic overlays, a ground truth / prediction sheet and the
blender figure (`explain.png`).

The threshold: the reference merges instances scoring >= 0.45. A model trained for a few
iterations (a busy machine's budget) scores its right detections below that, and its things
vanish from the panoptic map (PQ_th 0). `choose_merge_threshold` keeps 0.45 unless the F1 of
the detections on training images is clearly better lower (`f1_score_threshold`); the value is
stored in model.pt, and PQ is scored after it is chosen (not in the training's evaluations)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from blendmask.checkpoint_io import save_model_file
from blendmask.data.coco import CocoDataset
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.evaluation.evaluate_panoptic import evaluate_panoptic
from blendmask.explain import save_explanation
from blendmask.modeling.panoptic import f1_score_threshold
from blendmask.prediction.panoptic_predict import draw_panoptic
from blendmask.predictor import Predictor
from blendmask.training.loop import TrainResult
from blendmask.visualization import save_png

SHEET_IMAGES = 4  # rows of DIR/panoptic_sheet.png
CALIBRATION_IMAGES = 32  # training images the merge threshold is chosen on
MATCH_IOU = 0.5  # a detection is right when its mask overlaps a same-class instance this much
# data.* fields the demo sets only after training: PQ is scored once the threshold is chosen
AFTER_TRAINING_KEYS = ("val_panoptic_json", "val_panoptic_images")


def finish_panoptic_demo(
    result: TrainResult, paths: dict[str, Path], out: Path, dev: torch.device, num_overlays: int
) -> dict[str, Any]:
    """The merge threshold (`choose_merge_threshold`, written into DIR/model.pt) and then the
    PQ metrics of the trained model on the val split; writes DIR/overlays/*.png (panoptic),
    DIR/panoptic_sheet.png (image | ground truth | prediction, a row per image) and
    DIR/explain.png."""
    cfg = result.cfg
    for key in AFTER_TRAINING_KEYS:
        setattr(cfg.data, key, str(paths[key]))
    threshold = choose_merge_threshold(cfg, result, paths, dev)
    cfg.model.panoptic.instance_score_threshold = threshold
    save_model_file(out / "model.pt", cfg, result.model)  # with the threshold and PQ's data
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
    metrics["merge_score_threshold"] = round(threshold, 4)
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


def choose_merge_threshold(
    cfg: Any, result: TrainResult, paths: dict[str, Path], dev: torch.device
) -> float:
    """The panoptic merge's score threshold for the trained model: `f1_score_threshold` of its
    detections on the first CALIBRATION_IMAGES training images (never the val split)."""
    predictor = Predictor(cfg, result.model, result.postprocessor, dev, score_threshold=None)
    train = CocoDataset(paths["train_json"], paths["train_images"])
    scores, matched, num_gt = [], [], 0
    for i in range(min(CALIBRATION_IMAGES, len(train))):
        image, target = train[i]
        det = predictor.predict_tensors([image])[0]
        scores.append(det.scores)
        matched.append(match_detections(det.masks, det.labels, target["masks"], target["labels"]))
        num_gt += len(target["labels"])
    default = cfg.model.panoptic.instance_score_threshold
    if not scores:
        return default
    return f1_score_threshold(torch.cat(scores), torch.cat(matched), num_gt, default=default)


def match_detections(
    masks: torch.Tensor, labels: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor
) -> torch.Tensor:
    """bool Tensor[D]: detections (in the given order, highest score first) that match a
    ground-truth instance of their class with mask IoU >= MATCH_IOU, each instance once."""
    matched = torch.zeros(len(masks), dtype=torch.bool)
    if len(masks) == 0 or len(gt_masks) == 0:
        return matched
    pred = masks.flatten(1).float().cpu()  # (D, H0*W0)
    gt = gt_masks.flatten(1).float().cpu()  # (G, H0*W0)
    inter = pred @ gt.T
    iou = inter / (pred.sum(1, keepdim=True) + gt.sum(1)[None] - inter).clamp(min=1)
    iou[labels.cpu()[:, None] != gt_labels.cpu()[None, :]] = 0
    free = torch.ones(len(gt_masks), dtype=torch.bool)
    for d in range(len(masks)):
        candidates = torch.where(free, iou[d], torch.zeros_like(iou[d]))
        g = int(candidates.argmax())
        if candidates[g] >= MATCH_IOU:
            matched[d], free[g] = True, False
    return matched


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
