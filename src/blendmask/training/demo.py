"""`blendmask demo` as a function: shapes data -> train within a time budget -> evaluate -> draw."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from blendmask.atomic import write_json
from blendmask.data.coco import CocoDataset
from blendmask.data.shapes import write_shapes_dataset
from blendmask.explain import save_explanation
from blendmask.factory import build
from blendmask.io import load_image, resolve_device
from blendmask.predictor import Predictor
from blendmask.presets import load_config
from blendmask.training.budget import TimeBudget
from blendmask.training.loaders import build_train_dataset
from blendmask.training.loop import TrainResult, run_training
from blendmask.training.panoptic_demo import (
    AFTER_TRAINING_KEYS,
    CALIBRATION_IMAGES,
    SHEET_IMAGES,
    finish_panoptic_demo,
)
from blendmask.training.train_config import resolve_dataset_classes
from blendmask.visualization import draw_detections, save_png

logger = logging.getLogger(__name__)


def pick_cpu_threads(candidates: Sequence[int] | None = None) -> int:
    """The intra-op thread count that runs a small convolution workload fastest (~1 s).

    On an idle machine that is all cores; when other processes keep the cores busy, extra
    threads wait on each other and one thread can be several times faster (a shapes_panoptic
    update at load average ~7 on 2 cores: 3.8 s with 1 thread, 18 s with 2)."""
    current = torch.get_num_threads()
    busy = machine_is_busy()
    if candidates is None:
        candidates = sorted({current, 1}, reverse=not busy)
    x = torch.randn(2, 64, 96, 96).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    timings: dict[int, list[float]] = {}
    with torch.no_grad():
        for n in candidates:
            torch.set_num_threads(n)
            conv(x)  # warm-up
            timings[n] = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(3):
                    conv(x)
                timings[n].append(time.perf_counter() - t0)
    torch.set_num_threads(current)
    return choose_threads(timings)


def machine_is_busy() -> bool:
    """Whether the 1-minute load average exceeds the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        return os.getloadavg()[0] > (cores or 1)
    except OSError:  # no load average on this platform
        return False


def choose_threads(timings: dict[int, list[float]]) -> int:
    """The thread count of `timings` (repeated timings per count, in order of preference) with
    the lowest median, the first one unless another is clearly (10%) faster. The median: on a
    busy machine the fastest of 5 repetitions is a lucky moment when the other processes
    paused, which kept 2 threads that then ran each update several times slower than 1."""
    best, best_time = 0, math.inf
    for n, times in timings.items():
        if statistics.median(times) < best_time * 0.9:
            best, best_time = n, statistics.median(times)
    return best


# Measured seconds per val image x this: a trained model pastes more masks than the untrained
# one that is timed, and COCOeval / PQ add their own pass over the results.
EVAL_SAFETY = 1.5
EVAL_FIXED_SECONDS = 5.0  # loaders, COCOeval's accumulate, writing the results
EVAL_TIMED_IMAGES = 3


def measure_eval_seconds(
    cfg: Any, images: Sequence[Path], dev: torch.device, *, panoptic: bool
) -> tuple[float, float]:
    """Seconds per image of an instance and of a panoptic prediction (0 without `panoptic`) on
    this machine now, timed on `images` after a warm-up on the first, with the untrained network
    of `cfg`. A fixed reserve per image, right on a quiet machine, was 30x short on a busy one."""
    model, _, postprocessor = build(cfg, load_pretrained=False)
    predictor = Predictor(cfg, model, postprocessor, dev)
    loaded = [load_image(path) for path in images]
    seconds = []
    for predict in (predictor.predict_tensors, predictor.predict_panoptic)[: 1 + panoptic]:
        predict([loaded[0]])  # allocator and caches: not timed
        t0 = time.perf_counter()
        for image in loaded:
            predict([image])
        seconds.append((time.perf_counter() - t0) / len(loaded))
    return seconds[0], seconds[1] if panoptic else 0.0


def _existing_shapes(
    data_dir: Path, num_train: int, num_val: int, seed: int, panoptic: bool = False
) -> dict | None:
    """The paths of a shapes dataset already written with these sizes and seed, else None
    (the generator is deterministic, so such a dataset is the one it would write again)."""
    paths = {}
    for split, count in (("train", num_train), ("val", num_val)):
        json_path = data_dir / "annotations" / f"instances_{split}.json"
        images_dir = data_dir / "images" / split
        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError):
            return None
        if len(data.get("images", [])) != count or data.get("info", {}).get("seed") != seed:
            return None
        if data.get("info", {}).get("panoptic", False) != panoptic:
            return None
        if panoptic:  # the panoptic json and PNGs beside the instances
            paths[f"{split}_panoptic_json"] = data_dir / "annotations" / f"panoptic_{split}.json"
            paths[f"{split}_panoptic_images"] = data_dir / "annotations" / f"panoptic_{split}"
            if len(list(paths[f"{split}_panoptic_images"].glob("*.png"))) != count:
                return None
        if len(list(images_dir.glob("*.png"))) != count:
            return None
        paths[f"{split}_json"], paths[f"{split}_images"] = json_path, images_dir
    return paths


def _shapes_data(
    data_dir: Path, num_train: int, num_val: int, seed: int, panoptic: bool = False
) -> dict[str, Path]:
    """The demo's shapes dataset under `data_dir`: the one there when it matches, else new."""
    paths = _existing_shapes(data_dir, num_train, num_val, seed, panoptic)
    if paths is None:
        logger.info(
            f"demo: writing the shapes dataset ({num_train} train / {num_val} val) to {data_dir}"
        )
        paths = write_shapes_dataset(data_dir, num_train, num_val, seed=seed, panoptic=panoptic)
    else:
        logger.info(f"demo: reusing the shapes dataset in {data_dir}")
    return paths


def run_demo(
    *,
    out: str | Path = "runs/demo",
    device: str = "cpu",
    minutes: float = 9.0,
    num_train: int = 1000,
    num_val: int = 100,
    seed: int = 0,
    preset: str = "shapes_lite0",
    overrides: Sequence[str] = (),
    num_overlays: int = 8,
    panoptic: bool = False,
) -> dict[str, Any]:
    """`blendmask demo --out DIR`: shapes data -> train `shapes_lite0` within a time budget ->
    evaluate -> draw. Writes DIR/{metrics.json, model.pt, overlays/*.png, explain.png,
    curves.png} (plus the run records: last.pt, metrics.jsonl) and the data under DIR/data.

    `minutes` bounds the whole command: training stops early (with its schedule shrunk to fit,
    see `training.loop.run_training`) so that data, training, evaluation and drawing end in time.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _shapes_data(out / "data", num_train, num_val, seed, panoptic)
    cfg = load_config(preset, None, list(overrides))
    for key, path in paths.items():  # the keys are data.* fields (panoptic ones too)
        if key not in AFTER_TRAINING_KEYS:  # PQ comes after the merge threshold is chosen
            setattr(cfg.data, key, str(path))
    cfg.solver.seed = seed
    dev = resolve_device(device)
    threads_before = torch.get_num_threads()
    try:
        if dev.type == "cpu":
            threads = pick_cpu_threads()
            if threads != threads_before:
                logger.info(f"demo: the CPU is busy; {threads} thread(s) run faster than more")
                torch.set_num_threads(threads)
        time_budget = _demo_budget(cfg, paths, dev, start, minutes, num_val, num_overlays, panoptic)
        drop_costly_evaluations(cfg, time_budget)
        halve_batch_when_short(cfg, time_budget, num_val, overrides)
        logger.info(
            f"demo: training {preset} on {dev.type}; {time_budget.seconds / 60:.1f} min left for "
            f"training, evaluation and drawings ({cfg.solver.max_iter} iterations planned)"
        )
        dataset = build_train_dataset(cfg)
        cfg = resolve_dataset_classes(cfg, dataset)
        result = run_training(
            cfg, out_dir=out, dataset=dataset, device=str(dev), time_budget=time_budget
        )
        extra = _demo_outputs(result, paths, out, dev, num_overlays, panoptic)
    finally:
        torch.set_num_threads(threads_before)
    metrics = {**result.metrics, **extra}
    metrics.update(
        {
            "iterations": result.iteration,
            "train_seconds": round(result.seconds, 1),
            "preset": preset,
            "device": dev.type,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    write_json(out / "metrics.json", metrics)
    keys = ("bbox_AP", "segm_AP", "PQ", "PQ_th", "PQ_st")
    summary = ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
    logger.info(
        f"demo: {summary} after {result.iteration} iterations; "
        f"{metrics['seconds'] / 60:.1f} min in all; wrote {out}/metrics.json, model.pt, "
        "overlays/, explain.png, curves.png"
    )
    if not math.isfinite(metrics.get("segm_AP", math.nan)):
        raise RuntimeError("demo: evaluation produced no segm_AP")
    return metrics


# Fewer updates than this in the budget and the demo trains half the batch at half the lr.
MIN_UPDATES = 200
# Seconds of a training image per second of an evaluated val image (EVAL_SAFETY included):
# 2.0 and 3.0 measured under a competing job at 1 and 2 threads; the lower one errs towards
# keeping the batch.
TRAIN_COST_PER_EVAL = 2.0
BATCH_KEYS = ("solver.ims_per_batch=", "solver.base_lr=")


def halve_batch_when_short(
    cfg: Any, budget: TimeBudget, num_val: int, overrides: Sequence[str]
) -> None:
    """When the budget holds fewer than MIN_UPDATES updates (estimated from the evaluation
    measured now): half the batch at half the learning rate (the linear scaling rule), unless
    `--set` chose either. The same images then make twice the updates, so the warm-up's 100
    updates are a third of the run instead of four fifths: under a competing 2-thread job the
    panoptic demo made 126 updates of 8 and reached mask AP 0.11, PQ_th 0.15; with 272 of 4,
    mask AP 0.41, PQ_th 0.62 (docs/results.md). A shorter warm-up instead diverged."""
    s, evaluation = cfg.solver, budget.evaluation_seconds()
    if (
        s.ims_per_batch < 2
        or evaluation is None
        or any(o.startswith(BATCH_KEYS) for o in overrides)
    ):
        return
    per_image = TRAIN_COST_PER_EVAL * max(evaluation - EVAL_FIXED_SECONDS, 0.0) / max(num_val, 1)
    training = budget.seconds - budget.reserve()
    updates = training / max(per_image * s.ims_per_batch, 1e-9)
    if updates >= MIN_UPDATES:
        return
    s.ims_per_batch //= 2
    s.base_lr /= 2
    logger.info(
        f"demo: about {updates:.0f} updates fit the time (< {MIN_UPDATES}): batch "
        f"{s.ims_per_batch} at lr {s.base_lr:g}, twice the updates for the same images"
    )


def _demo_budget(
    cfg: Any,
    paths: dict[str, Path],
    dev: torch.device,
    start: float,
    minutes: float,
    num_val: int,
    num_overlays: int,
    panoptic: bool,
) -> TimeBudget:
    """The time budget of the rest of the demo (`minutes` less what has passed): it reserves
    the final evaluation and what follows it (the drawings; with `panoptic` the merge
    threshold's training images and PQ), estimated from the forward measured now
    (`measure_eval_seconds`) and rescaled when training times an evaluation."""
    timed = sorted(paths["val_images"].glob("*.png"))[:EVAL_TIMED_IMAGES]
    instance, panoptic_s = measure_eval_seconds(cfg, timed, dev, panoptic=panoptic)
    instance, panoptic_s = EVAL_SAFETY * instance, EVAL_SAFETY * panoptic_s
    final_eval = EVAL_FIXED_SECONDS + instance * num_val
    # overlays (and the sheet's rows) plus the explanation, each one forward; with `panoptic`
    # also the merge threshold's training images and then PQ (finish_panoptic_demo)
    drawings = EVAL_FIXED_SECONDS + instance * (num_overlays + 1)
    if panoptic:
        drawings = (
            2 * EVAL_FIXED_SECONDS
            + panoptic_s * (max(num_overlays, SHEET_IMAGES) + 1 + num_val)
            + instance * CALIBRATION_IMAGES
        )
    left = minutes * 60.0 - (time.perf_counter() - start)
    if left <= 90:
        raise ValueError(f"demo: --minutes {minutes} leaves no time to train (need > 1.5)")
    if left - final_eval - drawings <= 30:
        # Better a short, late result than none: the machine is too busy for --minutes.
        logger.warning(
            f"demo: the evaluations measure {final_eval + drawings:.0f} s on this machine now, "
            f"too much for --minutes {minutes}: the demo will end late"
        )
        left = final_eval + drawings + 30.0
    logger.info(
        f"demo: {instance:.2f} s per val image measured; {final_eval:.0f} s kept for the final "
        f"evaluation, {drawings:.0f} s for what follows it"
    )
    budget = TimeBudget(left)
    # what follows is reserved as a multiple of the evaluation: timed evaluations rescale both
    budget.expect_evaluation(final_eval, after=drawings / final_eval)
    return budget


# Periodic evaluations only draw the AP curve: they may take this share of the training time.
PERIODIC_EVAL_SHARE = 0.1


def drop_costly_evaluations(cfg: Any, budget: TimeBudget) -> None:
    """No periodic evaluations when, at the evaluation time expected, they would take more than
    PERIODIC_EVAL_SHARE of the training time: on a busy machine one took 45 s of a 200 s
    training that it stopped after 9 updates (AP 0 at every one)."""
    s = cfg.solver
    evaluation = budget.evaluation_seconds()
    if s.eval_period <= 0 or evaluation is None:
        return
    periodic = (s.max_iter - 1) // s.eval_period
    training = budget.seconds - budget.reserve()
    if periodic * evaluation > PERIODIC_EVAL_SHARE * training:
        logger.info(
            f"demo: no evaluation during training ({periodic} x {evaluation:.0f} s would take "
            f"more than {PERIODIC_EVAL_SHARE:.0%} of its {training:.0f} s)"
        )
        s.eval_period = 0


def _demo_outputs(
    result: TrainResult,
    paths: dict[str, Path],
    out: Path,
    dev: torch.device,
    num_overlays: int,
    panoptic: bool,
) -> dict[str, Any]:
    """The drawings; with `panoptic`, PQ on the val split and panoptic drawings (returned:
    the metrics to add)."""
    if panoptic:
        return finish_panoptic_demo(result, paths, out, dev, num_overlays)
    _demo_drawings(result, paths, out, dev, num_overlays)
    return {}


def _demo_drawings(
    result: TrainResult,
    paths: dict[str, Path],
    out: Path,
    dev: torch.device,
    num_overlays: int,
) -> None:
    """Overlays of the first val images and the blender figure of the first one."""
    predictor = Predictor(result.cfg, result.model, result.postprocessor, dev)
    val = CocoDataset(paths["val_json"], paths["val_images"])
    names = list(result.cfg.data.category_names)
    for i in range(min(num_overlays, len(val))):
        image, _ = val[i]
        det = predictor.predict_tensors([image])[0]
        overlay = draw_detections(image, det, class_names=names, score_threshold=0.5)
        save_png(overlay, out / "overlays" / f"{val.image_path(i).stem}.png")
    if len(val):
        save_explanation(
            predictor, val.image_path(0), out / "explain.png", top=3, score_threshold=0.5
        )
