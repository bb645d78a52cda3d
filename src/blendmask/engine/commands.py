"""The work behind `blendmask train | eval | predict | demo` (DESIGN.md, "The blendmask command").

Each command is a function with keyword arguments mirroring its command-line flags, so scripts
and notebooks can call it directly; `engine/cli_args.py` only parses flags and calls these.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from blendmask.config import Config, from_dict, load_config
from blendmask.engine import train as train_lib
from blendmask.engine.optim import scale_lr
from blendmask.io import resolve_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
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


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# train


def resolve_train_config(
    *,
    out: str | Path,
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    train_json: str | None = None,
    train_images: str | None = None,
    val_json: str | None = None,
    val_images: str | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    max_iter: int | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
    backbone_weights: str | None = None,
    quiet: bool = False,
) -> Config:
    """The Config `train` runs: preset / YAML / `--set`, then the flags.

    Without --preset and --config, a run folder holding `last.pt` continues with the config
    stored in it. `batch_size` alone scales the learning rate by the linear scaling rule
    (Goyal et al. 2017), with a printed note; `max_iter` compresses the lr steps in proportion.
    `backbone_weights` names an ImageNet file for the body; for ResNet bodies the input
    normalisation (channel order, scale, mean/std, stride_in_1x1) is set to the file's.
    """
    say = (lambda *_: None) if quiet else print
    last = Path(out) / train_lib.LAST_CHECKPOINT
    if preset is None and config is None:
        if not last.is_file():
            raise ValueError("train: needs --preset or --config (or an --out folder with last.pt)")
        from blendmask.config import apply_overrides
        from blendmask.engine.checkpoint import read_training_state

        cfg = from_dict(read_training_state(last)["config"])
        apply_overrides(cfg, list(overrides))
        cfg.validate()
        say(f"using the config stored in {last}")
    else:
        cfg = load_config(preset, config, list(overrides))
    d, s = cfg.data, cfg.solver
    for name, value in (
        ("train_json", train_json),
        ("train_images", train_images),
        ("val_json", val_json),
        ("val_images", val_images),
    ):
        if value is not None:
            setattr(d, name, str(value))
    if bool(d.val_json) != bool(d.val_images):
        raise ValueError("train: --val-json and --val-images go together (give both or neither)")
    if batch_size is not None:
        if batch_size <= 0:
            raise ValueError(f"--batch-size: expected a positive integer, got {batch_size}")
        if lr is None and batch_size != s.ims_per_batch:
            new_lr = scale_lr(s.base_lr, s.ims_per_batch, batch_size)
            say(
                f"note: batch size {s.ims_per_batch} -> {batch_size}: learning rate scaled "
                f"linearly {s.base_lr:g} -> {new_lr:g} (linear scaling rule; pass --lr to set "
                f"it yourself). Iterations stay {s.max_iter}, so the run sees "
                f"{batch_size / s.ims_per_batch:.2g}x the images."
            )
            s.base_lr = new_lr
        s.ims_per_batch = batch_size
    if lr is not None:
        if lr <= 0:
            raise ValueError(f"--lr: expected a positive number, got {lr}")
        if batch_size is None:
            say(
                f"note: --lr {lr:g} with batch size {s.ims_per_batch} (the preset pairs "
                f"{s.base_lr:g} with it); when changing the batch size, scale the lr linearly"
            )
        s.base_lr = lr
    if max_iter is not None:
        if max_iter <= 0:
            raise ValueError(f"--max-iter: expected a positive integer, got {max_iter}")
        s.steps = [max(1, round(x * max_iter / s.max_iter)) for x in s.steps]
        s.warmup_iters = min(s.warmup_iters, max_iter)
        s.max_iter = max_iter
    if seed is not None:
        s.seed = seed
    if num_workers is not None:
        d.num_workers = num_workers
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: --backbone-weights file not found")
        cfg.model.backbone.weights = str(path)
        if cfg.model.backbone.name.startswith("resnet"):
            from blendmask.interop.torchvision_weights import (
                apply_weight_conventions,
                read_backbone_weights,
            )

            apply_weight_conventions(cfg.model, read_backbone_weights(path))
    return cfg.validate()


def train(
    *,
    out: str | Path,
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    train_json: str | None = None,
    train_images: str | None = None,
    val_json: str | None = None,
    val_images: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    lr: float | None = None,
    max_iter: int | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
    minutes: float | None = None,
    resume: bool = True,
    tensorboard: bool = False,
    backbone_weights: str | None = None,
) -> train_lib.TrainResult:
    """`blendmask train`: resolve the config, then `engine.train.train` (resumes from
    `out/last.pt`). Writes last.pt, model.pt, metrics.jsonl, curves.png under `out`."""
    from blendmask.engine.distributed import get_rank

    # Under torchrun only rank 0 prints the config notes.
    quiet = int(os.environ.get("RANK", "0")) != 0
    cfg = resolve_train_config(
        out=out,
        preset=preset,
        config=config,
        overrides=overrides,
        train_json=train_json,
        train_images=train_images,
        val_json=val_json,
        val_images=val_images,
        batch_size=batch_size,
        lr=lr,
        max_iter=max_iter,
        seed=seed,
        num_workers=num_workers,
        backbone_weights=backbone_weights,
        quiet=quiet,
    )
    result = train_lib.train(
        cfg,
        out_dir=out,
        device=device,
        resume=resume,
        time_budget_s=None if minutes is None else minutes * 60.0,
        tensorboard=tensorboard,
    )
    if get_rank() == 0:
        print(f"wrote {Path(out) / train_lib.MODEL_FILE} (iteration {result.iteration})")
        if result.metrics:
            print(json.dumps({k: result.metrics[k] for k in METRIC_KEYS if k in result.metrics}))
    return result


# --------------------------------------------------------------------------------------------
# eval


def evaluate(
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
    from blendmask.factory import load_model_file

    dev = resolve_device(device)
    cfg, model, _, postprocessor = load_model_file(weights, dev)
    out = Path(out)
    metrics = train_lib.evaluate_model(
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
    _write_json(out / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------------------------
# predict


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by `inputs`: files as given, folders expanded (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not paths:
        raise ValueError("predict: no input images given")
    return paths


def _overlay_names(paths: list[Path]) -> list[str]:
    """One PNG name per image: its stem, made unique with the index when stems repeat."""
    stems = [p.stem for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [f"{i:04d}_{s}.png" if s in repeated else f"{s}.png" for i, s in enumerate(stems)]


def predict(
    *,
    weights: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    device: str = "auto",
    score_threshold: float = 0.3,
    batch_size: int = 1,
    overlays: bool = True,
) -> dict[str, Any]:
    """`blendmask predict --weights W INPUT... --out DIR`.

    Writes DIR/results.json (COCO results: image_id = position in the input list, file_name,
    original category_id, bbox xywh, score, segmentation as compressed RLE) with the detections
    scoring >= `score_threshold`, and DIR/overlays/<name>.png drawing exactly those. Returns
    a summary (images, detections, paths).
    """
    from blendmask.evaluation.coco import detections_to_coco_results
    from blendmask.predictor import Predictor, to_image_tensor
    from blendmask.structures import Detections
    from blendmask.visualization import draw_detections, save_png

    paths = collect_images(inputs)
    predictor = Predictor.from_checkpoint(weights, device=device, batch_size=batch_size)
    cfg = predictor.cfg
    num_classes = cfg.model.fcos.num_classes
    category_ids = list(cfg.data.category_ids) or list(range(1, num_classes + 1))
    out = Path(out)
    names = _overlay_names(paths)
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [to_image_tensor(p) for p in chunk]
        detections = predictor.predict_tensors(images)
        for offset, (path, image, det) in enumerate(zip(chunk, images, detections)):
            index = start + offset
            keep = det.scores >= score_threshold
            det = Detections(
                boxes=det.boxes[keep],
                scores=det.scores[keep],
                labels=det.labels[keep],
                masks=det.masks[keep],
            )
            for r in detections_to_coco_results([det], [index], category_ids):
                results.append({**r, "file_name": str(path)})
            if overlays:
                overlay = draw_detections(image, det, class_names=list(cfg.data.category_names))
                save_png(overlay, out / "overlays" / names[index])
    _write_json(out / "results.json", results)
    return {
        "images": len(paths),
        "detections": len(results),
        "results": str(out / "results.json"),
        "overlays": str(out / "overlays") if overlays else None,
    }


# --------------------------------------------------------------------------------------------
# demo


def pick_cpu_threads(candidates: Sequence[int] | None = None) -> int:
    """The intra-op thread count that runs a small convolution workload fastest (~1 s).

    On an idle machine that is all cores; when other processes keep the cores busy, extra
    threads wait on each other and one thread can be several times faster."""
    current = torch.get_num_threads()
    if candidates is None:
        candidates = sorted({current, 1}, reverse=True)
    x = torch.randn(2, 64, 96, 96).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    best, best_time = current, math.inf
    with torch.no_grad():
        for n in candidates:
            torch.set_num_threads(n)
            conv(x)  # warm-up
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(3):
                    conv(x)
                times.append(time.perf_counter() - t0)
            if (
                min(times) < best_time * 0.9
            ):  # prefer the first (more threads) unless clearly slower
                best, best_time = n, min(times)
    torch.set_num_threads(current)
    return best


def _existing_shapes(data_dir: Path, num_train: int, num_val: int, seed: int) -> dict | None:
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
        if len(list(images_dir.glob("*.png"))) != count:
            return None
        paths[f"{split}_json"], paths[f"{split}_images"] = json_path, images_dir
    return paths


def demo(
    *,
    out: str | Path = "runs/demo",
    device: str = "cpu",
    minutes: float = 9.0,
    num_train: int = 1000,
    num_val: int = 100,
    seed: int = 0,
    preset: str = "shapes_R_18",
    overrides: Sequence[str] = (),
    num_overlays: int = 8,
) -> dict[str, Any]:
    """`blendmask demo --out DIR`: shapes data -> train `shapes_R_18` within a time budget ->
    evaluate -> draw. Writes DIR/{metrics.json, model.pt, overlays/*.png, explain.png,
    curves.png} (plus the run records: last.pt, metrics.jsonl) and the data under DIR/data.

    `minutes` bounds the whole command: training stops early (with its schedule shrunk to fit,
    see `engine.train.train`) so that data, training, evaluation and drawing end in time.
    """
    from blendmask.data.shapes import write_shapes_dataset

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    paths = _existing_shapes(data_dir, num_train, num_val, seed)
    if paths is None:
        print(f"demo: writing the shapes dataset ({num_train} train / {num_val} val) to {data_dir}")
        paths = write_shapes_dataset(data_dir, num_train, num_val, seed=seed)
    else:
        print(f"demo: reusing the shapes dataset in {data_dir}")
    cfg = load_config(preset, None, list(overrides))
    cfg.data.train_json = str(paths["train_json"])
    cfg.data.train_images = str(paths["train_images"])
    cfg.data.val_json = str(paths["val_json"])
    cfg.data.val_images = str(paths["val_images"])
    cfg.solver.seed = seed
    dev = resolve_device(device)
    threads_before = torch.get_num_threads()
    try:
        if dev.type == "cpu":
            threads = pick_cpu_threads()
            if threads != threads_before:
                print(f"demo: the CPU is busy; {threads} thread(s) run faster than more")
                torch.set_num_threads(threads)
        # Reserve time for the final evaluation (~1 forward per val image) and the drawings.
        reserve = 15.0 + 0.2 * num_val
        budget = minutes * 60.0 - (time.perf_counter() - start) - reserve
        if budget <= 30:
            raise ValueError(f"demo: --minutes {minutes} leaves no time to train (need > 1.5)")
        print(
            f"demo: training {preset} on {dev.type} for at most {budget / 60:.1f} min "
            f"({cfg.solver.max_iter} iterations planned)"
        )
        result = train_lib.train(cfg, out_dir=out, device=str(dev), time_budget_s=budget)
        _demo_drawings(result, paths, out, dev, num_overlays)
    finally:
        torch.set_num_threads(threads_before)
    metrics = dict(result.metrics)
    metrics.update(
        {
            "iterations": result.iteration,
            "train_seconds": round(result.seconds, 1),
            "preset": preset,
            "device": dev.type,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    _write_json(out / "metrics.json", metrics)
    summary = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("bbox_AP", "segm_AP") if k in metrics)
    print(
        f"demo: {summary} after {result.iteration} iterations; "
        f"{metrics['seconds'] / 60:.1f} min in all; wrote {out}/metrics.json, model.pt, "
        "overlays/, explain.png, curves.png"
    )
    if not math.isfinite(metrics.get("segm_AP", math.nan)):
        raise RuntimeError("demo: evaluation produced no segm_AP")
    return metrics


def _demo_drawings(
    result: train_lib.TrainResult,
    paths: dict[str, Path],
    out: Path,
    dev: torch.device,
    num_overlays: int,
) -> None:
    """Overlays of the first val images and the blender figure of the first one."""
    from blendmask.data.coco import CocoDataset
    from blendmask.explain import save_explanation
    from blendmask.predictor import Predictor
    from blendmask.visualization import draw_detections, save_png

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
