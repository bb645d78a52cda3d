"""The training loop: one readable function, `train`, in the style of DETR's `train_one_epoch`.

It reproduces the reference trainer (AdelaiDet `tools/train_net.py` on detectron2, ADELAIDET.md
Sec. 3.5): SGD + WarmupMultiStepLR over iterations, batches from an infinite sampler with
aspect-ratio grouping, multi-scale ResizeShortestEdge + horizontal flip, periodic checkpoints
and COCO evaluation. Additions: AMP and cudnn.benchmark on CUDA, gradient clipping, a time
budget (the CPU demo), and exact resumption.

Exact resumption. A run resumed from `DIR/last.pt` continues bit-for-bit (on CPU) as if it had
not stopped, because nothing in the data path depends on hidden state:
- the batch of iteration i on rank r is a pure function of (seed, r, i): the sampler is
  re-created from the seed and skips the batches before the checkpoint (indices only, see
  data/samplers.py);
- each sample's random resize and flip draw from an RNG seeded by (seed, rank, i, position in
  the batch), not from a worker's global RNG, so any number of workers gives the same batches;
- model, optimiser, scheduler, AMP scaler and global RNG states come from the checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from blendmask.config import Config, from_dict
from blendmask.engine import checkpoint as ckpt
from blendmask.engine import distributed as dist_utils
from blendmask.engine.logging import LossAverager, MetricsFile, Progress, TensorBoard, plot_curves
from blendmask.engine.optim import build_lr_scheduler, build_optimizer
from blendmask.io import resolve_device

LAST_CHECKPOINT = "last.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


# --------------------------------------------------------------------------------------------
# Data: deterministic batches


def rank_seed(seed: int, rank: int, iteration: int) -> int:
    """A seed for the global RNGs of `rank` when (re)starting at `iteration` (31-bit)."""
    from blendmask.data.samplers import mix_seed

    return mix_seed(seed, rank, iteration) >> 1


def _worker_init(_: int) -> None:
    # Workers decode and resize; one thread each keeps them from fighting the main process.
    torch.set_num_threads(1)


def build_train_dataset(cfg: Config) -> Any:
    """The training CocoDataset with multi-scale resize and horizontal flip (ADELAIDET.md 3.5)."""
    from blendmask.data.coco import CocoDataset
    from blendmask.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestEdge

    d = cfg.data
    if not d.train_json or not d.train_images:
        raise ValueError("train: needs --train-json and --train-images (data.train_json/_images)")
    transforms = [ResizeShortestEdge(list(d.min_size_train), d.max_size_train)]
    if d.hflip_train:
        transforms.append(RandomHorizontalFlip(0.5))
    return CocoDataset(
        d.train_json, d.train_images, transforms=Compose(transforms), skip_empty=d.filter_empty
    )


def build_train_loader(
    cfg: Config,
    dataset: Any,
    *,
    rank: int,
    world_size: int,
    start_iter: int,
    images_per_rank: int,
    device: torch.device,
) -> DataLoader:
    """An infinite DataLoader of (ImageBatch, targets) for this rank, from iteration `start_iter`.

    Aspect-ratio grouping (landscape / portrait batches) as the reference when
    `data.aspect_ratio_grouping`; each rank reads its own shard of the shuffled stream.
    """
    from blendmask.data.batching import collate
    from blendmask.data.samplers import GroupedBatchSampler, TrainingSampler, mix_seed

    seed = cfg.solver.seed
    sampler = TrainingSampler(
        len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size
    )
    if cfg.data.aspect_ratio_grouping:
        group_ids = [dataset.get_aspect_ratio_group(i) for i in range(len(dataset))]
    else:
        group_ids = [0] * len(dataset)
    # Batches as (index, sample seed) pairs: the dataset seeds each sample's resize and flip
    # from its position in the stream (see the module docstring).
    batch_sampler = GroupedBatchSampler(
        sampler,
        group_ids,
        images_per_rank,
        start_iter=start_iter,
        augmentation_seed=mix_seed(seed, rank),
    )
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


def targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of each target to `device` (image_id / orig_size stay as they are)."""
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
        for t in targets
    ]


# --------------------------------------------------------------------------------------------
# Evaluation


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
    from torch.utils.data import Subset

    from blendmask.data.coco import CocoDataset
    from blendmask.evaluation.coco import COCOEvaluator
    from blendmask.predictor import Predictor

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
        worker_init_fn=_worker_init if num_workers > 0 else None,
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
        import json

        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(json.dumps(evaluator.results))
    return metrics


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What `train` hands back: the trained network (unwrapped, on its device) and records."""

    cfg: Config
    model: nn.Module
    postprocessor: nn.Module
    iteration: int
    start_iteration: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None


def _sync_batchnorm(cfg: Config, model: nn.Module, world_size: int, device: torch.device) -> None:
    """Convert the parts whose norm is "SyncBN" when several processes train on CUDA.

    torch's SyncBatchNorm needs CUDA; across CPU processes (gloo) each keeps its own BN
    statistics, which equals BN with the per-process batch."""
    if world_size == 1:
        return
    parts = {
        "body": cfg.model.backbone.norm,
        "head": cfg.model.fcos.norm,
        "basis_module": cfg.model.basis_module.norm,
    }
    wanted = [name for name, norm in parts.items() if norm == "SyncBN"]
    if not wanted:
        return
    if device.type != "cuda":
        print(f"note: SyncBN for {', '.join(wanted)} needs CUDA; using per-process BN on CPU")
        return
    for name in wanted:
        module = getattr(model, name, None)
        if module is not None:
            setattr(model, name, dist_utils.convert_sync_batchnorm(module))


def _check_resume_config(path: Path, saved: dict[str, Any], cfg: Config) -> None:
    """A checkpoint of another architecture cannot continue: say which field differs."""
    old = from_dict(saved).to_dict()["model"]
    new = cfg.to_dict()["model"]

    def diff(a: Any, b: Any, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                found = diff(a[k], b.get(k), f"{prefix}.{k}")
                if found:
                    return found
            return None
        return None if a == b else f"{prefix}: {a!r} in the checkpoint, {b!r} now"

    found = diff(old, new, "model")
    if found:
        raise ValueError(
            f"{path}: written for a different model ({found}); "
            "use another --out folder or delete the checkpoint to start over"
        )


def plan_for_budget(
    *,
    iteration: int,
    max_iter: int,
    steps: list[int],
    seconds_left: float,
    seconds_per_iter: float,
) -> tuple[int, list[int]]:
    """Shrink the rest of the schedule to what fits in `seconds_left`.

    The remaining iterations and the lr steps still ahead are compressed by the same factor, so
    the decay happens at the same fraction of training; steps already passed stay. Returns
    (max_iter, steps), unchanged when everything fits.
    """
    affordable = iteration + int(max(seconds_left, 0.0) / max(seconds_per_iter, 1e-6))
    if affordable >= max_iter:
        return max_iter, list(steps)
    new_max = max(affordable, iteration + 1)
    scale = (new_max - iteration) / (max_iter - iteration)
    new_steps = [
        s if s <= iteration else iteration + max(1, int(round((s - iteration) * scale)))
        for s in steps
    ]
    return new_max, new_steps


def train(
    cfg: Config,
    *,
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = True,
    time_budget_s: float | None = None,
    tensorboard: bool = False,
    eval_batch_size: int = 1,
    verbose: bool = True,
) -> TrainResult:
    """Train `cfg` and write `out_dir/{last.pt, model.pt, metrics.jsonl, curves.png}`.

    Args:
        cfg: a resolved, validated Config; `data.train_json/train_images` (and optionally
            `val_json/val_images`) name the data, `solver` the schedule. `solver.ims_per_batch`
            is the total over all processes.
        out_dir: the run folder; when it holds `last.pt` and `resume`, training continues from it.
        device: cpu | cuda | auto. Under torchrun each process takes GPU LOCAL_RANK.
        time_budget_s: stop training after this many seconds (the schedule is shrunk to fit
            after a short timing window, so the lr decay still happens), then evaluate.
        tensorboard: also write scalars to `out_dir/tensorboard` (needs `tensorboard`).
    Returns:
        TrainResult with the trained (unwrapped) model, the final iteration and the last
        evaluation's metrics (empty without a val set).
    """
    from blendmask.factory import build, save_model_file

    start_time = time.perf_counter()
    out_dir = Path(out_dir)
    info, dev = dist_utils.init_distributed(resolve_device(device))
    main = info.is_main
    s = cfg.solver
    if s.ims_per_batch % info.world_size:
        raise ValueError(
            f"solver.ims_per_batch={s.ims_per_batch} is the total batch over all processes and "
            f"must be divisible by the number of processes ({info.world_size})"
        )
    images_per_rank = s.ims_per_batch // info.world_size
    if dev.type == "cuda":
        # Input sizes repeat (multi-scale sizes, padded to /32), so autotuning pays off.
        torch.backends.cudnn.benchmark = True

    dataset = build_train_dataset(cfg)
    if dataset.num_classes != cfg.model.fcos.num_classes:
        if main:
            print(
                f"note: {cfg.data.train_json} has {dataset.num_classes} categories; "
                f"setting model.fcos.num_classes={dataset.num_classes} "
                f"(was {cfg.model.fcos.num_classes})"
            )
        cfg.model.fcos.num_classes = dataset.num_classes
    if not cfg.data.category_names:
        cfg.data.category_names = list(dataset.category_names)
        cfg.data.category_ids = [
            int(dataset.contiguous_to_category_id[i]) for i in range(dataset.num_classes)
        ]
    cfg.validate()

    # The same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(s.seed)
    model, criterion, postprocessor = build(cfg)
    # channels_last: the convolutions (oneDNN on CPU, tensor cores on CUDA) run ~20% faster
    # in NHWC; the weights and outputs are the same tensors, only their memory layout differs.
    model.to(dev, memory_format=torch.channels_last)
    criterion.to(dev)
    postprocessor.to(dev)
    _sync_batchnorm(cfg, model, info.world_size, dev)
    optimizer = build_optimizer(
        model,
        base_lr=s.base_lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
        weight_decay_norm=s.weight_decay_norm,
    )
    # The schedule in force; a time budget may shrink it (and a resumed run restores it).
    max_iter, steps, eval_period = s.max_iter, list(s.steps), s.eval_period
    scheduler = build_lr_scheduler(
        optimizer,
        steps=steps,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )
    use_amp = s.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    # Resume: rank 0 decides; every rank loads the same file.
    last_path = out_dir / LAST_CHECKPOINT
    start_iter = 0
    payload = None
    if resume and last_path.is_file():
        payload = ckpt.read_training_state(last_path)
        _check_resume_config(last_path, payload["config"], cfg)
        schedule = payload.get("extra", {}).get("schedule")
        saved_solver = payload["config"].get("solver", {})
        same_schedule = saved_solver.get("max_iter") == s.max_iter and list(
            saved_solver.get("steps", [])
        ) == list(s.steps)
        # A schedule shrunk by a time budget continues as planned, unless the user asked for
        # another one (e.g. a larger --max-iter to train longer).
        if schedule and same_schedule:
            max_iter, steps = int(schedule["max_iter"]), [int(x) for x in schedule["steps"]]
            eval_period = int(schedule.get("eval_period", eval_period))
            scheduler.lr_lambdas[0].keywords["steps"] = list(steps)
        start_iter = ckpt.restore_training_state(
            payload,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            restore_rng=main,
        )
        if main:
            print(f"resuming from {last_path} at iteration {start_iter}")
    if payload is None or not main:
        # Ranks other than 0 have no saved RNG state: derive one from (seed, rank, iteration).
        seed = rank_seed(s.seed, info.rank, start_iter)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            broadcast_buffers=True,
        )

    has_val = bool(cfg.data.val_json and cfg.data.val_images)
    metrics_file = MetricsFile(out_dir / METRICS_FILE if main else None)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Lines past the checkpoint belong to steps that will run again.
        metrics_file.truncate_after(start_iter)
    board = TensorBoard(out_dir / "tensorboard" if tensorboard and main else None)
    progress = Progress(total=max_iter, start=start_iter, enabled=main and verbose)
    loader = build_train_loader(
        cfg,
        dataset,
        rank=info.rank,
        world_size=info.world_size,
        start_iter=start_iter,
        images_per_rank=images_per_rank,
        device=dev,
    )

    def save_checkpoint(iteration: int) -> None:
        if main:
            ckpt.save_training_state(
                last_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                iteration=iteration,
                config=cfg.to_dict(),
                extra={
                    "schedule": {
                        "max_iter": max_iter,
                        "steps": list(steps),
                        "eval_period": eval_period,
                    }
                },
            )

    def run_evaluation(iteration: int) -> dict[str, float]:
        # Every rank evaluates its share of the val images with rank 0's BN statistics; all
        # get the same metrics.
        dist_utils.broadcast_buffers(model)
        progress.write(f"evaluating at iteration {iteration} on {cfg.data.val_json}")
        metrics = evaluate_model(
            cfg,
            model,
            postprocessor,
            json_path=cfg.data.val_json,
            images_dir=cfg.data.val_images,
            device=dev,
            batch_size=eval_batch_size,
            num_workers=min(cfg.data.num_workers, 2),
        )
        model.train()
        if main:
            metrics_file.write({"type": "eval", "iteration": iteration, **metrics})
            board.scalars("val", metrics, iteration)
            summary = ", ".join(
                f"{k}={metrics[k]:.4f}" for k in ("bbox_AP", "segm_AP", "segm_AP50") if k in metrics
            )
            progress.write(f"iteration {iteration}: {summary}")
        dist_utils.barrier()
        return metrics

    # ---------------------------------------------------------------- the loop
    model.train()
    criterion.train()
    averager = LossAverager()
    last_metrics: dict[str, float] = {}
    iteration = start_iter
    window_start, window_iters = time.perf_counter(), 0
    eval_seconds = 0.0
    # Time budget: time iterations [timing_from, timing_from + 10) (the first ones are slow),
    # then plan; plan again after each evaluation, whose cost is then known.
    timing_from = start_iter + 3
    timing_start: float | None = None
    replan = time_budget_s is not None
    planned = False
    last_eval_seconds = 0.0
    amp_ctx = torch.autocast(device_type="cuda", dtype=torch.float16) if use_amp else nullcontext()
    data_iter = iter(loader)
    stop_reason = "max_iter"
    while iteration < max_iter:
        images, targets = next(data_iter)
        images = images.to(dev)
        batch = images.tensor.contiguous(memory_format=torch.channels_last)
        targets = targets_to(targets, dev)
        with amp_ctx:
            outputs = ddp_model(batch, images.image_sizes)
            losses = criterion(outputs, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"the loss became {float(loss)} at iteration {iteration} ({detail}); "
                "try a lower --lr or solver.clip_grad_norm"
            )
        lr = optimizer.param_groups[0]["lr"]  # the rate of this update (logged below)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if s.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if s.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
            optimizer.step()
        scheduler.step()
        iteration += 1
        window_iters += 1
        averager.update(
            {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}}
        )

        if replan and iteration == timing_from:
            timing_start = time.perf_counter()
        if replan and timing_start is not None and iteration >= timing_from + 10:
            per_iter = (time.perf_counter() - timing_start - eval_seconds) / (
                iteration - timing_from
            )
            if has_val and eval_period > 0:
                per_iter += last_eval_seconds / eval_period
            left = time_budget_s - (time.perf_counter() - start_time)
            # 3% margin for timing noise and the checkpoints.
            plan = plan_for_budget(
                iteration=iteration,
                max_iter=max_iter,
                steps=steps,
                seconds_left=left * 0.97,
                seconds_per_iter=per_iter,
            )
            # Every rank takes rank 0's plan so that all stop at the same iteration.
            new_max, new_steps = dist_utils.broadcast_object(plan)
            if new_max < max_iter and main:
                progress.write(
                    f"time budget {time_budget_s:.0f}s at {per_iter:.3f}s/iteration: "
                    f"training to iteration {new_max} (lr steps {new_steps}), not {max_iter}"
                )
            if new_max < max_iter and eval_period > 0 and not planned:
                # the first plan keeps the number of evaluations: they draw the AP curve
                eval_period = max(1, round(eval_period * new_max / max_iter))
            planned = True
            max_iter, steps = new_max, new_steps
            scheduler.lr_lambdas[0].keywords["steps"] = list(steps)
            progress.set_total(max_iter)
            replan = False

        if iteration % s.log_period == 0 or iteration == max_iter:
            elapsed = time.perf_counter() - window_start
            stats = dist_utils.reduce_mean(averager.pop(), dev)
            record = {
                "type": "train",
                "iteration": iteration,
                "lr": lr,
                "images_per_s": round(window_iters * s.ims_per_batch / max(elapsed, 1e-9), 3),
                "seconds": round(time.perf_counter() - start_time, 2),
                **{k: round(v, 6) for k, v in stats.items()},
            }
            metrics_file.write(record)
            board.scalars("train", {k: v for k, v in record.items() if k != "type"}, iteration)
            progress.update(
                iteration,
                {
                    "loss": stats.get("loss", math.nan),
                    **{k: v for k, v in stats.items() if k.startswith("loss_")},
                    "lr": record["lr"],
                    "img/s": record["images_per_s"],
                },
            )
            window_start, window_iters = time.perf_counter(), 0

        out_of_time = False
        if time_budget_s is not None:
            out_of_time = bool(
                dist_utils.broadcast_object(time.perf_counter() - start_time > time_budget_s)
            )
        if out_of_time and iteration < max_iter:
            stop_reason = "time budget"
            break
        if s.checkpoint_period > 0 and iteration % s.checkpoint_period == 0:
            save_checkpoint(iteration)
        if (
            has_val
            and eval_period > 0
            and iteration % eval_period == 0
            # the final evaluation comes soon enough
            and iteration <= max_iter - eval_period // 2
        ):
            t0 = time.perf_counter()
            last_metrics = run_evaluation(iteration)
            last_eval_seconds = time.perf_counter() - t0
            eval_seconds += last_eval_seconds
            window_start = time.perf_counter()
            replan = time_budget_s is not None and timing_start is not None

    # ---------------------------------------------------------------- the end
    progress.close()
    if stop_reason != "max_iter" and main:
        print(f"stopped at iteration {iteration} ({stop_reason})")
    dist_utils.broadcast_buffers(model)  # every rank ends with the weights rank 0 saves
    save_checkpoint(iteration)
    if main:
        save_model_file(out_dir / MODEL_FILE, cfg, model)
    if has_val:
        last_metrics = run_evaluation(iteration)
    if main:
        plot_curves(out_dir / METRICS_FILE, out_dir / CURVES_FILE)
    board.close()
    del data_iter, loader
    dist_utils.barrier()
    return TrainResult(
        cfg=cfg,
        model=model,
        postprocessor=postprocessor,
        iteration=iteration,
        start_iteration=start_iter,
        seconds=time.perf_counter() - start_time,
        metrics=last_metrics,
        out_dir=out_dir,
    )
