"""Panoptic segmentation in the commands (BlendMask Sec. 4.4): the stuff classes a training set
brings, the PQ evaluation of a model (`train` / `demo` / `eval --panoptic-json`), and the
conversion of a `PanopticSegmentation` into the COCO panoptic results format.

A model's segments carry 0-based thing labels and 1-based stuff classes
(`modeling/panoptic.merge_panoptic`); COCO category ids are mapped only here, at the results
boundary, from `cfg.data.category_ids` (things) and `cfg.data.stuff_ids` (stuff).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blendmask.atomic import write_json
from blendmask.checkpoint_io import load_model_file
from blendmask.config import Config
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.data.panoptic_format import PanopticCategory
from blendmask.evaluation.evaluate import evaluate_model
from blendmask.factory import build_postprocessor
from blendmask.io import resolve_device
from blendmask.metrics.panoptic import (
    METRIC_KEYS,
    PanopticEvaluator,
    PQStat,
    pq_stat_of_image,
)
from blendmask.predictor import Predictor, inference_config
from blendmask.runtime import distributed as dist_utils
from blendmask.runtime.output_lock import OutputLock

logger = logging.getLogger(__name__)


def is_panoptic(cfg: Config) -> bool:
    """Whether the model of `cfg` has the semantic branch (and so predicts panoptic maps)."""
    return bool(cfg.model.panoptic.enabled)


def resolve_stuff_classes(
    cfg: Config, dataset: CocoPanopticDataset, *, quiet: bool = False
) -> Config:
    """A copy of `cfg` with the stuff classes of `dataset`: `model.panoptic.num_stuff_classes`
    (with a note when it changes), `data.stuff_names` and `data.stuff_ids`."""
    out = copy.deepcopy(cfg)
    count = len(dataset.stuff_names)
    if count != out.model.panoptic.num_stuff_classes and not quiet:
        logger.info(
            f"note: {dataset.json_path} has {count} stuff categories; setting "
            f"model.panoptic.num_stuff_classes={count} "
            f"(was {out.model.panoptic.num_stuff_classes})"
        )
    out.model.panoptic.num_stuff_classes = count
    out.data.stuff_names = list(dataset.stuff_names)
    out.data.stuff_ids = [int(c) for c in dataset.stuff_category_ids]
    return out.validate()


def category_id_tables(cfg: Config) -> tuple[list[int], list[int]]:
    """(COCO id of each thing label 0..C-1, COCO id of each stuff class 1..S) of a model;
    without stored ids, things are 1..C and stuff C+1..C+S (the synthetic data's numbering)."""
    num_things = cfg.model.fcos.num_classes
    thing_ids = list(cfg.data.category_ids) or list(range(1, num_things + 1))
    num_stuff = cfg.model.panoptic.num_stuff_classes
    stuff_ids = list(cfg.data.stuff_ids) or list(range(num_things + 1, num_things + num_stuff + 1))
    return thing_ids, stuff_ids


def panoptic_to_coco(
    result: Any, thing_ids: Sequence[int], stuff_ids: Sequence[int]
) -> tuple[np.ndarray, dict[int, int], list[dict[str, Any]]]:
    """One `PanopticSegmentation` -> (segment ids int64[H0, W0] (0 unassigned), {segment id:
    COCO category id}, COCO `segments_info` entries (id, category_id, iscrowd, area, and the
    score of things))."""
    ids = result.segment_map.detach().cpu().numpy().astype(np.int64)
    categories: dict[int, int] = {}
    info = []
    for seg in result.segments:
        if seg["isthing"]:
            category_id = int(thing_ids[int(seg["category"])])
        else:
            category_id = int(stuff_ids[int(seg["category"]) - 1])
        categories[int(seg["id"])] = category_id
        entry = {
            "id": int(seg["id"]),
            "category_id": category_id,
            "iscrowd": 0,
            "area": int(seg["area"]),
        }
        if "score" in seg:
            entry["score"] = round(float(seg["score"]), 5)
        info.append(entry)
    return ids, categories, info


def _check_categories(
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
    categories: dict[int, PanopticCategory],
    json_path: Path,
) -> None:
    """ValueError when the model's categories are not the ground truth's (by COCO id and kind)."""
    for ids, isthing in ((thing_ids, True), (stuff_ids, False)):
        for category_id in ids:
            cat = categories.get(category_id)
            if cat is None or cat.isthing != isthing:
                kind = "thing" if isthing else "stuff"
                raise ValueError(
                    f"{json_path}: the model's {kind} category id {category_id} is not a "
                    f"{kind} category of this json (categories "
                    f"{sorted(categories)}); was the model trained on this dataset?"
                )


@torch.no_grad()
def evaluate_panoptic(
    cfg: Config,
    model: nn.Module,
    postprocessor: nn.Module,
    *,
    json_path: str | Path,
    panoptic_dir: str | Path,
    images_dir: str | Path,
    device: torch.device,
) -> dict[str, Any]:
    """PQ / SQ / RQ (all, _th, _st, per class) of a panoptic model on a COCO panoptic
    dataset, through `Predictor.predict_panoptic` (the path `predict` takes). Returns the
    metrics of `metrics.panoptic.PanopticEvaluator` plus "seconds"; leaves `model` in eval
    mode.

    A collective call under torch.distributed, like instance evaluation: each rank scores its
    share of the images (`shard_indices`), rank 0 adds the per-image counts in image order (the
    float sums, hence PQ, of one process exactly) and every rank gets the metrics."""
    start = time.perf_counter()
    dataset = CocoPanopticDataset(json_path, panoptic_dir, images_dir)
    thing_ids, stuff_ids = category_id_tables(cfg)
    _check_categories(thing_ids, stuff_ids, dataset.data.categories, dataset.json_path)
    predictor = Predictor(cfg, model, postprocessor, device)
    info = dist_utils.DistInfo(rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size())
    stats: list[PQStat] = []
    error = None
    try:
        for index in dist_utils.shard_indices(len(dataset.image_ids), info):
            image, _ = dataset[index]
            result = predictor.predict_panoptic([image])[0]
            pred_ids, pred_categories, _ = panoptic_to_coco(result, thing_ids, stuff_ids)
            unknown = sorted(set(pred_categories.values()) - set(dataset.data.categories))
            if unknown:
                raise ValueError(
                    f"predicted category id(s) {unknown} are not in the ground truth's categories"
                )
            gt_segments = dataset.data.segments[dataset.image_ids[index]]
            stats.append(
                pq_stat_of_image(dataset.segment_ids(index), gt_segments, pred_ids, pred_categories)
            )
    except (ValueError, OSError) as exc:
        if not info.distributed:
            raise
        error = f"rank {info.rank}: {exc}"  # the others are about to wait for this rank
    metrics = _merge_on_main(dataset.data.categories, stats, error)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return metrics


def _merge_on_main(
    categories: dict[int, PanopticCategory], stats: list[PQStat], error: str | None
) -> dict[str, Any]:
    """Every rank's per-image counts (contiguous shards in rank order: image order) summed
    on rank 0, evaluated, and handed to every rank; a rank's error stops all of them."""
    parts = dist_utils.gather_objects((stats, error))
    outcome = None
    if parts is not None:  # rank 0 (or the one process)
        errors = [text for _, text in parts if text is not None]
        if errors:
            outcome = ("error", errors[0])
        else:
            evaluator = PanopticEvaluator(categories)
            for part, _ in parts:
                for stat in part:
                    evaluator.stat.add(stat)
                    evaluator.images += 1
            outcome = ("metrics", evaluator.evaluate())
    kind, value = dist_utils.broadcast_object(outcome)
    if kind == "error":
        raise ValueError(value)
    return value


def evaluate_panoptic_file(
    *,
    weights: str | Path,
    json_path: str | Path,
    panoptic_dir: str | Path,
    images: str | Path,
    out: str | Path,
    device: str = "auto",
    overrides: Sequence[str] = (),
    instances_json: str | Path | None = None,
) -> dict[str, Any]:
    """`blendmask eval --weights W --panoptic-json J --panoptic-images P --images D --out O`:
    PQ of a panoptic model file; with `instances_json` (`--json`) also its COCO bbox / segm
    AP. Writes O/metrics.json (PQ, SQ, RQ, PQ_th, ..., "per_class") and returns it.

    Under torchrun each process scores its share of the images and rank 0 alone locks and
    writes O; every rank returns the metrics. The caller ends the process group."""
    info, dev = dist_utils.init_distributed(resolve_device(device))
    out = Path(out)
    with ExitStack() as stack:
        dist_utils.run_on_main(info, lambda: stack.enter_context(OutputLock(out)))
        cfg, model, _, postprocessor = load_model_file(weights, dev)
        if not is_panoptic(cfg):
            raise ValueError(
                f"{weights}: not a panoptic model (model.panoptic.enabled is false); "
                "evaluate it with --json / --images"
            )
        if overrides:
            cfg = inference_config(cfg, overrides)
            postprocessor = build_postprocessor(cfg).to(dev)
        metrics: dict[str, Any] = {}
        if instances_json is not None:
            metrics.update(
                evaluate_model(
                    cfg,
                    model,
                    postprocessor,
                    json_path=instances_json,
                    images_dir=images,
                    device=dev,
                    results_path=out / "results.json" if info.is_main else None,
                    per_category=True,
                )
            )
        pq = evaluate_panoptic(
            cfg,
            model,
            postprocessor,
            json_path=json_path,
            panoptic_dir=panoptic_dir,
            images_dir=images,
            device=dev,
        )
        metrics["seconds"] = round(metrics.get("seconds", 0.0) + pq.pop("seconds"), 2)
        metrics.update(pq)
        if info.is_main:
            write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_panoptic_metrics(
    cfg: Config, model: nn.Module, postprocessor: nn.Module, *, device: torch.device
) -> dict[str, float]:
    """PQ, SQ, RQ (all, _th, _st) on `data.val_panoptic_json` during training (a collective
    call: every rank scores its share and gets the metrics)."""
    metrics = evaluate_panoptic(
        cfg,
        model,
        postprocessor,
        json_path=cfg.data.val_panoptic_json,
        panoptic_dir=cfg.data.val_panoptic_images,
        images_dir=cfg.data.val_images,
        device=device,
    )
    return {key: metrics[key] for key in METRIC_KEYS}
