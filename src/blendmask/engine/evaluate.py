"""COCO evaluation of a model: during and after training, and `blendmask eval --weights`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from blendmask.atomic import atomic_write
from blendmask.config import Config
from blendmask.data.coco import CocoDataset
from blendmask.engine import distributed as dist_utils
from blendmask.engine.loaders import worker_init
from blendmask.engine.logging import TrainingLog, write_json
from blendmask.engine.output_lock import OutputLock
from blendmask.evaluation.categories import match_categories
from blendmask.evaluation.coco import COCOEvaluator
from blendmask.factory import build_postprocessor
from blendmask.io import resolve_device
from blendmask.predictor import MAX_IMAGE_PIXELS, Predictor, inference_config
from blendmask.structures import resolve_classes

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
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[int | str] | None = None,
    per_category: bool = False,
) -> dict[str, Any]:
    """COCO bbox + segm evaluation of `model` on a dataset, as `blendmask eval` does.

    Images are resized to `data.min_size_test` / `max_size_test` by the Predictor (the same
    code path as `predict`), detections are pasted at the original size and scored with
    pycocotools. Under torch.distributed every rank runs its share of the images and all ranks
    get the same metrics. Returns the metrics (fractions) plus `images` and `seconds`; writes
    the COCO results json to `results_path` when given (single process). Leaves `model` in
    eval mode.

    The model's labels are matched to the json's categories by id or name
    (`match_categories`: ValueError when they cannot be). An image that cannot be read ends
    the evaluation with its own error (ValueError / FileNotFoundError naming the file), also
    from a loader worker; so does an image over `MAX_IMAGE_PIXELS`, before any is decoded.

    Knobs as `Predictor`'s, except that `score_threshold` defaults to None: every detection
    the model gives counts (AP needs the low scores). `classes` (names or 0-based labels)
    also restricts the AP to those categories. `per_category`: add "per_category" ({name:
    {"bbox_AP", "segm_AP"}}) to the metrics.
    """
    start = time.perf_counter()
    # Evaluate in the layout training uses: a model fresh from training and the same weights
    # loaded from model.pt then run the same kernels and give identical detections.
    model.to(memory_format=torch.channels_last)
    dataset = CocoDataset(json_path, images_dir, transforms=None, skip_empty=False)
    label_to_category_id = match_categories(
        cfg.data.category_ids,
        cfg.data.category_names,
        dict(zip(dataset.contiguous_to_category_id, dataset.category_names)),
        num_classes=cfg.model.fcos.num_classes,
        source=json_path,
    )
    rank, world_size = dist_utils.get_rank(), dist_utils.get_world_size()
    indices = list(range(rank, len(dataset), world_size))
    _check_image_sizes(dataset, indices)
    labels = None if classes is None else resolve_classes(classes, cfg.data.category_names)
    predictor = Predictor(
        cfg,
        model,
        postprocessor,
        device,
        batch_size,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        max_detections=max_detections,
        classes=labels,
    )
    evaluator = COCOEvaluator(
        dataset.coco,
        label_to_category_id,
        category_ids=None if labels is None else [label_to_category_id[k] for k in labels],
    )
    _predict_images(predictor, _EvalImages(dataset, indices), evaluator, batch_size, num_workers)
    metrics: dict[str, Any] = dict(evaluator.evaluate())
    if per_category:
        metrics["per_category"] = evaluator.per_category
    metrics["images"] = len(dataset)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    if results_path is not None:
        text = json.dumps(evaluator.results).encode()
        atomic_write(results_path, lambda f: f.write(text))
    return metrics


def _predict_images(
    predictor: Predictor,
    images: _EvalImages,
    evaluator: COCOEvaluator,
    batch_size: int,
    num_workers: int,
) -> None:
    """Predict every image (read by `num_workers` loader processes) into `evaluator`."""
    loader = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=list,
        worker_init_fn=worker_init if num_workers > 0 else None,
    )
    for batch in loader:
        for _, _, error in batch:
            if error is not None:
                raise error  # the worker's own exception: one line naming the file
        tensors = [image for image, _, _ in batch]
        image_ids = [image_id for _, image_id, _ in batch]
        evaluator.process(image_ids, predictor.predict_tensors(tensors))


class _EvalImages(Dataset):
    """The images of `dataset` at `indices` as (uint8 Tensor[3, H0, W0], image id, None), or
    (None, image id, the exception) when one cannot be read.

    Returning the error instead of raising it keeps it intact across a DataLoader worker
    (which would re-raise it with the worker's whole traceback as its message).
    """

    def __init__(self, dataset: CocoDataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[Tensor | None, int, Exception | None]:
        index = self.indices[k]
        image_id = int(self.dataset.image_ids[index])
        try:
            image, _ = self.dataset[index]
        except (ValueError, OSError) as exc:  # corrupt, missing, not the json's size
            return None, image_id, exc
        return image, image_id, None


def _check_image_sizes(dataset: CocoDataset, indices: list[int]) -> None:
    """ValueError naming the first image whose json size is over `MAX_IMAGE_PIXELS` (the
    dataset checks each file against its json size when it reads it)."""
    for index in indices:
        info = dataset.coco.imgs[dataset.image_ids[index]]
        pixels = int(info["width"]) * int(info["height"])
        if pixels > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"{dataset.image_path(index)} is {info['width']} x {info['height']} px "
                f"(image id {info['id']} of {dataset.json_path}), larger than the maximum "
                f"image size of {MAX_IMAGE_PIXELS} pixels (MAX_IMAGE_PIXELS)"
            )


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
    overrides: Sequence[str] = (),
    plots: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """`blendmask eval --weights W --json J --images D --out DIR`: COCO bbox/segm metrics of a
    model file; writes DIR/metrics.json (with "per_category": {name: {"bbox_AP", "segm_AP"}})
    and DIR/results.json (COCO results, RLE masks). Refuses (ValueError) when another process
    is writing DIR (`OutputLock`).

    `overrides`: `key=value` changes of the model's inference settings (`--set`,
    `predictor.inference_config`); `options`: the knobs of `evaluate_model` (`score_threshold`,
    `nms_iou`, `max_detections`, `classes`). `plots`: also DIR/plots/{pr_curves,sheet}.png
    (`evaluation.plots.write_eval_plots`)."""
    from blendmask.checkpoint_io import load_model_file

    dev = resolve_device(device)
    out = Path(out)
    with OutputLock(out):
        cfg, model, _, postprocessor = load_model_file(weights, dev)
        if overrides:
            cfg = inference_config(cfg, overrides)
            postprocessor = build_postprocessor(cfg).to(dev)
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
            per_category=True,
            **options,
        )
        write_json(out / "metrics.json", metrics)
        if plots:
            from blendmask.evaluation.plots import write_eval_plots

            write_eval_plots(json_path, out / "results.json", images, out / "plots")
    return metrics
