"""`TrainingRun`: the state of one training process (modules, optimiser, schedule, position)
and how it is set up: process group, model built from the resolved config, SyncBN where asked,
resumption from `last.pt` or fresh per-rank seeds, DDP, and the batch stream.

The run folder is checked for writing before anything is built (a read-only or misplaced
--out fails at once, not at the first checkpoint an hour later), and temp files that a killed
run left there are removed."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blendmask.atomic import check_writable, remove_stale_temps
from blendmask.config import Config
from blendmask.data.coco import CocoDataset
from blendmask.evaluation.evaluate import evaluate_model
from blendmask.evaluation.evaluate_panoptic import evaluate_panoptic_metrics
from blendmask.factory import build
from blendmask.io import resolve_device
from blendmask.runtime import distributed as dist_utils
from blendmask.runtime.precision import training_precision
from blendmask.training import checkpoint as ckpt
from blendmask.training.loaders import build_train_loader, rank_seed
from blendmask.training.logging import TrainingLog
from blendmask.training.optim import WarmupMultiStepSchedule, build_optimizer
from blendmask.training.precision_trial import PrecisionTrial
from blendmask.training.resume import resume_training

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """The state of one training process: modules, optimiser, schedule and position."""

    cfg: Config
    info: dist_utils.DistInfo
    device: torch.device
    out_dir: Path
    model: nn.Module  # unwrapped: what is saved and evaluated
    ddp_model: nn.Module  # what the forward runs: DistributedDataParallel(model) or model
    criterion: nn.Module
    postprocessor: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupMultiStepSchedule
    scaler: torch.amp.GradScaler | None
    eval_period: int
    iteration: int = 0
    start_iteration: int = 0
    # Updates skipped in a row for a non-finite loss or gradient (see loop.train_step).
    nonfinite_streak: int = 0
    saved_iteration: int | None = None  # of the last.pt on disk, when known
    pending: dict[str, Any] | None = None  # a checkpoint waiting for a finite loss (rank 0)
    pending_iteration: int | None = None
    planned_shown: int = 0  # the schedule end the time budget last printed
    last_eval_iteration: int = 0  # of the last periodic evaluation
    # The autocast of the step where AMP is off: solver.precision, with auto resolved.
    precision: str = "fp32"
    precision_note: str = ""  # what auto measured, for the log
    trial: PrecisionTrial | None = None  # auto's fp32 / bf16 updates still to time

    @property
    def has_val(self) -> bool:
        return bool(self.cfg.data.val_json and self.cfg.data.val_images)

    def evaluation_due(self) -> bool:
        p, it = self.eval_period, self.iteration
        # the final evaluation comes soon enough after the last half period; a period the time
        # budget just re-planned may not evaluate again within half a period of the last one
        return (
            self.has_val
            and p > 0
            and it % p == 0
            and it <= self.schedule.max_iter - p // 2
            and it - self.last_eval_iteration >= p // 2
        )

    def snapshot_checkpoint(self) -> None:
        """Take the checkpoint of this iteration; `flush_checkpoint` writes it once a later
        update shows its weights give a finite loss. A checkpoint written at once could hold
        weights that a diverging update already blew up (finite, but every loss after them is
        NaN): the last.pt to go back to with a lower learning rate must not be that one."""
        self.pending_iteration = self.iteration
        self.pending = self._state() if self.info.is_main else None

    def flush_checkpoint(self) -> None:
        """Write the snapshot taken by `snapshot_checkpoint`, if any (after a finite loss)."""
        if self.pending_iteration is None:
            return
        if self.pending is not None:
            ckpt.write_training_state(self.out_dir / ckpt.LAST_CHECKPOINT, self.pending)
        self.saved_iteration = self.pending_iteration
        self.pending, self.pending_iteration = None, None

    def save_checkpoint(self) -> None:
        """Write `last.pt` of now, at once (the end of the run); non-finite weights raise
        FloatingPointError and write nothing."""
        self.pending, self.pending_iteration = None, None
        if self.info.is_main:
            ckpt.write_training_state(self.out_dir / ckpt.LAST_CHECKPOINT, self._state())
        self.saved_iteration = self.iteration

    def previous_checkpoint(self) -> str:
        """The last.pt this run wrote or resumed from, in words."""
        if self.saved_iteration is None:
            return "no checkpoint was written"
        return f"{self.out_dir / ckpt.LAST_CHECKPOINT} (iteration {self.saved_iteration})"

    def _state(self) -> dict[str, Any]:
        return ckpt.checkpoint_state(
            self.cfg,
            model=self.model,
            optimizer=self.optimizer,
            schedule=self.schedule,
            scaler=self.scaler,
            iteration=self.iteration,
            eval_period=self.eval_period,
        )

    def evaluate(self, log: TrainingLog, batch_size: int) -> dict[str, float]:
        self.last_eval_iteration = self.iteration
        return evaluate_during_training(
            self.cfg,
            self.model,
            self.postprocessor,
            iteration=self.iteration,
            device=self.device,
            batch_size=batch_size,
            log=log,
        )


def check_dataset_classes(cfg: Config, dataset: CocoDataset) -> None:
    """The config must have been resolved against this dataset (its number of classes)."""
    if dataset.num_classes != cfg.model.fcos.num_classes:
        raise ValueError(
            f"{cfg.data.train_json} has {dataset.num_classes} categories but "
            f"model.fcos.num_classes={cfg.model.fcos.num_classes}; resolve the config against "
            "the dataset first (training.train_config.resolve_dataset_classes)"
        )


def prepare_run(
    cfg: Config,
    dataset: CocoDataset,
    *,
    out_dir: Path,
    device: str,
    resume: bool,
    new_settings: bool = False,
) -> TrainingRun:
    """Start the process group, build the modules, optimiser and schedule, and resume from
    `out_dir/last.pt` when it exists and `resume` (with changed solver settings only when
    `new_settings`, see training/resume.py)."""
    cfg.validate()  # run_training may be handed a Config nobody checked (max_iter=-1, ...)
    check_dataset_classes(cfg, dataset)
    info, dev = dist_utils.init_distributed(resolve_device(device))
    if info.is_main:
        check_writable(out_dir)
        remove_stale_temps(out_dir)
    s = cfg.solver
    if s.ims_per_batch % info.world_size:
        raise ValueError(
            f"solver.ims_per_batch={s.ims_per_batch} is the total batch over all processes and "
            f"must be divisible by the number of processes ({info.world_size})"
        )
    if dev.type == "cuda":
        # Input sizes repeat (multi-scale sizes, padded to /32), so autotuning pays off.
        torch.backends.cudnn.benchmark = True
    model, criterion, postprocessor = _build_modules(cfg, info, dev)
    optimizer = build_optimizer(
        model,
        base_lr=s.base_lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
        weight_decay_norm=s.weight_decay_norm,
    )
    schedule = WarmupMultiStepSchedule(
        optimizer,
        max_iter=s.max_iter,
        steps=s.steps,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
        decay=s.lr_schedule,
    )
    use_amp = s.amp and dev.type == "cuda"
    run = TrainingRun(
        cfg=cfg,
        info=info,
        device=dev,
        out_dir=out_dir,
        model=model,
        ddp_model=model,
        criterion=criterion,
        postprocessor=postprocessor,
        optimizer=optimizer,
        schedule=schedule,
        scaler=torch.amp.GradScaler("cuda") if use_amp else None,
        eval_period=s.eval_period,
    )
    run.precision, run.precision_note = resolve_precision(cfg, dev, info)
    _resume_or_seed(run, resume, new_settings)
    if cfg.solver.precision == "auto" and run.precision == "bf16" and dev.type == "cpu":
        run.trial = PrecisionTrial(run.iteration)  # the probe's bf16, checked on real updates
    if info.distributed:
        run.ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=True
        )
    return run


def resolve_precision(cfg: Config, dev: torch.device, info: dist_utils.DistInfo) -> tuple[str, str]:
    """solver.precision with auto measured by rank 0 (runtime.precision.training_precision)
    and used on every rank; and a line saying what auto measured ("" when not auto)."""
    if cfg.solver.precision != "auto":
        return cfg.solver.precision, ""
    decided = training_precision(dev, channels=cfg.model.fpn.out_channels) if info.is_main else None
    chosen, times = dist_utils.broadcast_object(decided)  # type: ignore[misc]
    measured = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in sorted(times.items()))
    then = "; fp32 and bf16 updates are timed next" if chosen == "bf16" else ""
    return (
        chosen,
        f"solver.precision auto: training probe {measured or 'not CPU'} -> {chosen}{then}",
    )


def _build_modules(
    cfg: Config, info: dist_utils.DistInfo, dev: torch.device
) -> tuple[nn.Module, nn.Module, nn.Module]:
    # The same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(cfg.solver.seed)
    model, criterion, postprocessor = build(cfg)
    # channels_last: the convolutions (oneDNN on CPU, tensor cores on CUDA) run ~20% faster
    # in NHWC; the weights and outputs are the same tensors, only their memory layout differs.
    model.to(dev, memory_format=torch.channels_last)
    criterion.to(dev)
    postprocessor.to(dev)
    _sync_batchnorm(cfg, model, info.world_size, dev)
    return model, criterion, postprocessor


def _sync_batchnorm(cfg: Config, model: nn.Module, world_size: int, device: torch.device) -> None:
    """Convert to SyncBatchNorm the BatchNorm layers of each part (body, head, basis module)
    whose configured norm is "SyncBN", when several processes train on CUDA. Parts with
    another norm keep theirs; in one process, or on CPU, "SyncBN" parts stay BatchNorm.

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
        logger.info(f"note: SyncBN for {', '.join(wanted)} needs CUDA; using per-process BN on CPU")
        return
    for name in wanted:
        module = getattr(model, name, None)
        if module is not None:
            setattr(model, name, dist_utils.convert_sync_batchnorm(module))


def _resume_or_seed(run: TrainingRun, resume: bool, new_settings: bool) -> None:
    """Continue from `last.pt` when asked and present (every rank loads the same file; rank 0
    restores its RNG states), else start at 0. Ranks without saved RNG states derive them from
    (seed, rank, iteration)."""
    last_path = run.out_dir / ckpt.LAST_CHECKPOINT
    resumed = resume and last_path.is_file()
    if resumed:
        done = resume_training(
            last_path,
            run.cfg,
            model=run.model,
            optimizer=run.optimizer,
            schedule=run.schedule,
            scaler=run.scaler,
            restore_rng=run.info.is_main,
            new_settings=new_settings,
        )
        run.iteration, run.eval_period = done.iteration, done.eval_period
        run.start_iteration = run.saved_iteration = run.iteration
        if run.info.is_main:
            logger.info(f"resuming from {last_path} at iteration {run.iteration}")
            if done.changed:
                logger.info(f"with new settings: {'; '.join(done.changed)}")
    if not resumed or not run.info.is_main:
        seed = rank_seed(run.cfg.solver.seed, run.info.rank, run.iteration)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)


def start_batches(run: TrainingRun, dataset: CocoDataset) -> Iterator[tuple[Any, list]]:
    """This rank's batches from the run's iteration on; puts the modules in training mode."""
    loader = build_train_loader(
        run.cfg,
        dataset,
        rank=run.info.rank,
        world_size=run.info.world_size,
        start_iter=run.iteration,
        images_per_rank=run.cfg.solver.ims_per_batch // run.info.world_size,
        device=run.device,
    )
    run.model.train()
    run.criterion.train()
    # Creating the iterator draws the loader's base seed from the global RNG: after seeding.
    return iter(loader)


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
    if cfg.data.val_panoptic_json and cfg.model.panoptic.enabled:
        metrics.update(evaluate_panoptic_metrics(cfg, model, postprocessor, device=device))
    model.train()
    log.evaluation(iteration, metrics)
    dist_utils.barrier()
    return metrics
