"""COCO evaluation of a model (`evaluate_model`, which training calls each eval period) and
`blendmask eval --weights` (`evaluate_model_file`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from blendmask.atomic import atomic_write, write_json
from blendmask.checkpoint_io import load_model_file
from blendmask.config import Config
from blendmask.data.batching import worker_init
from blendmask.data.coco import CocoDataset
from blendmask.factory import build_postprocessor
from blendmask.io import resolve_device
from blendmask.metrics.categories import match_categories
from blendmask.metrics.coco import COCOEvaluator
from blendmask.metrics.plots import write_eval_plots
from blendmask.predictor import MAX_IMAGE_PIXELS, Predictor, inference_config
from blendmask.runtime import distributed as dist_utils
from blendmask.runtime.output_lock import OutputLock
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
    precision: str = "fp32",
) -> dict[str, Any]:
    """COCO bbox + segm evaluation of `model` on a dataset, as `blendmask eval` does.

    Images are resized to `data.min_size_test` / `max_size_test` by the Predictor (the same
    code path as `predict`), detections are pasted at the original size and scored with
    pycocotools. Under torch.distributed (a collective call) every rank predicts its share of
    the images (`shard_indices`: contiguous blocks, each image once), rank 0 gathers the
    results, evaluates them and writes the COCO results json to `results_path` when given, and
    every rank returns its metrics. The results are sorted by image id before evaluation, so
    the metrics equal those of one process. Returns the metrics (fractions), `images` and
    `seconds`; leaves `model` in eval mode.

    The model's labels are matched to the json's categories by id or name
    (`match_categories`: ValueError when they cannot be). An image that cannot be read ends
    the evaluation with its own error (ValueError / FileNotFoundError naming the file), also
    from a loader worker; so does an image over `MAX_IMAGE_PIXELS`, before any is decoded.

    Knobs as `Predictor`'s, except that `score_threshold` defaults to None: every detection
    the model gives counts (AP needs the low scores). `classes` (names or 0-based labels)
    also restricts the AP to those categories. `max_detections` is also COCOeval's largest
    maxDets (default: COCO's 100, or what the model keeps when more). `per_category`: adds
    "per_category" ({name: {"bbox_AP", "segm_AP"}}). `precision`: as `Predictor`'s.
    """
    start = time.perf_counter()
    # The layout training uses: a fresh model and model.pt then give identical detections.
    model.to(memory_format=torch.channels_last)
    dataset = CocoDataset(json_path, images_dir, transforms=None, skip_empty=False)
    label_to_category_id = match_categories(
        cfg.data.category_ids,
        cfg.data.category_names,
        dict(zip(dataset.contiguous_to_category_id, dataset.category_names)),
        num_classes=cfg.model.fcos.num_classes,
        source=json_path,
    )
    info = dist_utils.DistInfo(rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size())
    # Every rank checks every image's json size (cheap), so all refuse together.
    _check_image_sizes(dataset, range(len(dataset)))
    indices = dist_utils.shard_indices(len(dataset), info)
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
        precision=precision,
    )
    # By default COCOeval counts what the model keeps (`--preset auto` may keep over 100).
    max_dets = max_detections or max(100, cfg.model.fcos.post_nms_topk_test)
    evaluator = _coco_evaluator(dataset, label_to_category_id, labels, max_dets)
    error = _predict_shard(
        predictor, _EvalImages(dataset, indices), evaluator, batch_size, num_workers, info
    )
    metrics = _evaluate_on_main(
        evaluator, error, info, per_category=per_category, results_path=results_path
    )
    metrics["images"] = len(dataset)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return metrics


def _coco_evaluator(
    dataset: CocoDataset,
    label_to_category_id: list[int],
    labels: list[int] | None,
    max_detections: int | None,
) -> COCOEvaluator:
    """The evaluator of `evaluate_model`: AP over `labels` (None: all), counting COCO's 100
    detections per image unless the caller asked the model for another number."""
    return COCOEvaluator(
        dataset.coco,
        label_to_category_id,
        max_detections=100 if max_detections is None else max_detections,
        category_ids=None if labels is None else [label_to_category_id[k] for k in labels],
    )


def _predict_shard(
    predictor: Predictor,
    images: _EvalImages,
    evaluator: COCOEvaluator,
    batch_size: int,
    num_workers: int,
    info: dist_utils.DistInfo,
) -> Exception | None:
    """`_predict_images` over this rank's images. Under torch.distributed a bad image's error
    is returned, not raised: the other ranks are about to wait for this one's results, and
    `_evaluate_on_main` then stops every rank with it."""
    try:
        _predict_images(predictor, images, evaluator, batch_size, num_workers)
    except (ValueError, OSError) as exc:
        if not info.distributed:
            raise
        return exc
    return None


def _evaluate_on_main(
    evaluator: COCOEvaluator,
    error: Exception | None,
    info: dist_utils.DistInfo,
    *,
    per_category: bool,
    results_path: str | Path | None,
) -> dict[str, Any]:
    """Gather every rank's results on rank 0, evaluate them there (and write `results_path`)
    and hand the metrics to every rank. A rank's `error` (or rank 0's own failure to
    evaluate) stops every rank: the failed rank raises its own, the others a ValueError
    naming that rank and the message."""
    message = None if error is None else str(error)
    parts = dist_utils.gather_objects((evaluator.results, evaluator.image_ids, message))
    outcome: tuple[str, Any] | None = None
    if parts is not None:  # rank 0
        failures = [(rank, text) for rank, (_, _, text) in enumerate(parts) if text is not None]
        if failures:
            outcome = ("error", "rank {}: {}".format(*failures[0]))
        else:
            try:
                outcome = ("metrics", _merge_and_evaluate(evaluator, parts, per_category))
                if results_path is not None:
                    text = json.dumps(evaluator.results).encode()
                    atomic_write(results_path, lambda f: f.write(text))
            except (ValueError, OSError) as exc:
                if not info.distributed:
                    raise
                outcome = ("error", f"rank 0: {exc}")
    kind, value = dist_utils.broadcast_object(outcome)
    if kind == "error":
        if error is not None:
            raise error
        raise ValueError(value)
    return value


def _merge_and_evaluate(
    evaluator: COCOEvaluator, parts: list, per_category: bool
) -> dict[str, Any]:
    """The metrics of all ranks' (results, image ids, _) `parts` (rank 0's evaluator)."""
    evaluator.reset()
    evaluator.merge([(results, image_ids) for results, image_ids, _ in parts])
    metrics: dict[str, Any] = dict(evaluator.evaluate())
    if per_category:
        metrics["per_category"] = evaluator.per_category
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


def _check_image_sizes(dataset: CocoDataset, indices: Iterable[int]) -> None:
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
    (`metrics.plots.write_eval_plots`).

    Launched by torchrun, each process takes its share of the images (NCCL on CUDA, one GPU
    per process; gloo on CPU) and rank 0 alone locks and writes DIR; every rank returns the
    metrics. The caller ends the process group (`distributed.cleanup_distributed`)."""
    info, dev = dist_utils.init_distributed(resolve_device(device))
    out = Path(out)
    with ExitStack() as stack:
        dist_utils.run_on_main(info, lambda: stack.enter_context(OutputLock(out)))
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
            results_path=out / "results.json" if info.is_main else None,
            per_category=True,
            **options,
        )
        if not info.is_main:
            return metrics
        write_json(out / "metrics.json", metrics)
        if plots:
            write_eval_plots(json_path, out / "results.json", images, out / "plots")
    return metrics
