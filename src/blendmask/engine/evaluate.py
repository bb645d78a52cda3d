"""COCO evaluation of a model: during and after training, and `blendmask eval --weights`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from blendmask.config import Config
from blendmask.data.coco import CocoDataset
from blendmask.engine import distributed as dist_utils
from blendmask.engine.loaders import worker_init
from blendmask.engine.logging import TrainingLog, write_json
from blendmask.evaluation.coco import COCOEvaluator
from blendmask.io import resolve_device
from blendmask.predictor import Predictor

# The metrics the commands print and the demo writes (fractions; -1 when undefined).
METRIC_KEYS = (
    "bbox_AP",
    "bbox_AP50",
    "bbox_AP75",
    "segm_AP",
    "segm_AP50",
    "segm_AP75",
    "segm_APs",
    "segm_APm",
    "segm_APl",
)


@torch.no_grad()
def evaluate_model(
    cfg: Config,
    model: nn.Module,
    postprocessor: nn.Module,
    *,
    json_path: str | Path,
    images_dir: str | Path,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    results_path: str | Path | None = None,
) -> dict[str, float]:
    """COCO bbox + segm evaluation of `model` on a dataset, as `blendmask eval` does.

    Images are resized to `data.min_size_test` / `max_size_test` by the Predictor (the same
    code path as `predict`), detections are pasted at the original size and scored with
    pycocotools. Under torch.distributed every rank runs its share of the images and all ranks
    get the same metrics. Returns the metrics (fractions) plus `images` and `seconds`; writes
    the COCO results json to `results_path` when given (single process). Leaves `model` in
    eval mode.
    """
    start = time.perf_counter()
    # Evaluate in the layout training uses: a model fresh from training and the same weights
    # loaded from model.pt then run the same kernels and give identical detections.
    model.to(memory_format=torch.channels_last)
    dataset = CocoDataset(json_path, images_dir, transforms=None, skip_empty=False)
    rank, world_size = dist_utils.get_rank(), dist_utils.get_world_size()
    shard = Subset(dataset, list(range(rank, len(dataset), world_size)))
    predictor = Predictor(cfg, model, postprocessor, device, batch_size)
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=list,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )
    evaluator = COCOEvaluator(dataset.coco, dataset.contiguous_to_category_id)
    for batch in loader:
        images = [image for image, _ in batch]
        image_ids = [int(target["image_id"]) for _, target in batch]
        evaluator.process(image_ids, predictor.predict_tensors(images))
    metrics = dict(evaluator.evaluate())
    metrics["images"] = len(dataset)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(json.dumps(evaluator.results))
    return metrics


def evaluate_during_training(
    cfg: Config,
    model: nn.Module,
    postprocessor: nn.Module,
    *,
    iteration: int,
    device: torch.device,
    batch_size: int,
    log: TrainingLog,
) -> dict[str, float]:
    """Evaluate on `data.val_json` at `iteration`, record the metrics, and hand the model back
    in training mode. A collective call: every rank evaluates its share of the val images with
    rank 0's BN statistics, and all get the same metrics."""
    dist_utils.broadcast_buffers(model)
    log.write(f"evaluating at iteration {iteration} on {cfg.data.val_json}")
    metrics = evaluate_model(
        cfg,
        model,
        postprocessor,
        json_path=cfg.data.val_json,
        images_dir=cfg.data.val_images,
        device=device,
        batch_size=batch_size,
        num_workers=min(cfg.data.num_workers, 2),
    )
    model.train()
    log.evaluation(iteration, metrics)
    dist_utils.barrier()
    return metrics


def evaluate_model_file(
    *,
    weights: str | Path,
    json_path: str | Path,
    images: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 1,
    num_workers: int = 2,
) -> dict[str, float]:
    """`blendmask eval --weights W --json J --images D --out DIR`: COCO bbox/segm metrics of a
    model file; writes DIR/metrics.json and DIR/results.json (COCO results, RLE masks)."""
    from blendmask.checkpoint_io import load_model_file

    dev = resolve_device(device)
    cfg, model, _, postprocessor = load_model_file(weights, dev)
    out = Path(out)
    metrics = evaluate_model(
        cfg,
        model,
        postprocessor,
        json_path=json_path,
        images_dir=images,
        device=dev,
        batch_size=batch_size,
        num_workers=num_workers,
        results_path=out / "results.json",
    )
    write_json(out / "metrics.json", metrics)
    return metrics
