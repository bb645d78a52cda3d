"""The training loop, `run_training`, in the style of DETR's `train_one_epoch`.

It reproduces the reference trainer (AdelaiDet `tools/train_net.py` on detectron2, docs/reference.md
§3.5): SGD + WarmupMultiStepLR over iterations, batches from an infinite sampler with
aspect-ratio grouping, multi-scale ResizeShortestEdge + horizontal flip, periodic checkpoints
and COCO evaluation. Additions: AMP and cudnn.benchmark on CUDA, gradient clipping, a time
budget (the CPU demo), and exact resumption.

Exact resumption. A run resumed from `DIR/last.pt` continues bit-for-bit (on CPU) as if it had
not stopped, because nothing in the data path depends on hidden state: the batch of iteration
i on rank r is a pure function of (seed, r, i) (training/loaders.py), and model, optimiser,
scheduler, AMP scaler and global RNG states come from the checkpoint (training/checkpoint.py).

Nothing lost, no silent wrong answer. An update whose loss (or, without AMP, gradient) is not
finite is skipped with a one-line message, and `MAX_NONFINITE_STEPS` in a row stop the run
with an error. A periodic checkpoint is snapshotted at its iteration and written once the next
loss shows its weights are finite, so the `last.pt` of a diverged run is one to continue from
with a lower learning rate (`--resume-with-new-settings`, training/resume.py). Files are written
atomically (`blendmask.atomic`): a full disk or a read-only folder leaves the previous file.

The Config is resolved before it gets here (training/train_config.py) and is never changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from blendmask.checkpoint_io import save_model_file
from blendmask.config import Config
from blendmask.data.coco import CocoDataset
from blendmask.runtime import distributed as dist_utils
from blendmask.training import precision_trial
from blendmask.training.auto_preset import auto_plan
from blendmask.training.budget import TimeBudget
from blendmask.training.loaders import build_train_dataset, targets_to
from blendmask.training.logging import CURVES_FILE, METRICS_FILE, TrainingLog, plot_curves
from blendmask.training.resume import NEW_SETTINGS_FLAG
from blendmask.training.step import training_autocast, training_losses
from blendmask.training.training_run import TrainingRun, prepare_run, start_batches

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
# A run whose loss stays NaN / inf this many updates in a row has diverged: stop it.
MAX_NONFINITE_STEPS = 5


@dataclass
class TrainResult:
    """What `run_training` hands back: the trained network (unwrapped, on its device) and
    records."""

    cfg: Config
    model: nn.Module
    postprocessor: nn.Module
    iteration: int
    start_iteration: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None


def run_training(
    cfg: Config,
    *,
    out_dir: str | Path,
    dataset: CocoDataset | None = None,
    device: str = "auto",
    resume: bool = True,
    new_settings: bool = False,
    time_budget: TimeBudget | None = None,
    tensorboard: bool = False,
    eval_batch_size: int = 1,
    verbose: bool = True,
) -> TrainResult:
    """Train `cfg` and write `out_dir/{last.pt, model.pt, metrics.jsonl, curves.png}`.

    Args:
        cfg: a resolved Config (see training/train_config.py), not changed here. `solver` is the
            schedule, with `ims_per_batch` the total over all processes; a val set is
            evaluated every `solver.eval_period` iterations and at the end.
        out_dir: the run folder; when it holds `last.pt` and `resume`, training continues from
            it. A `last.pt` of another config is refused, naming the keys that differ, unless
            only solver settings differ and `new_settings` (training/resume.py).
        dataset: the training set of `cfg` when already built (`loaders.build_train_dataset`).
        device: cpu | cuda | auto. Under torchrun each process takes GPU LOCAL_RANK.
        time_budget: stop training when it runs out, with the schedule shrunk to fit (so the lr
            decay still happens); then evaluate.
        tensorboard: also write scalars to `out_dir/tensorboard` (needs `tensorboard`).

    Raises:
        FloatingPointError: the loss was not finite for `MAX_NONFINITE_STEPS` updates in a row
            (each one skipped); `last.pt` is the last checkpoint with finite weights.
    """
    start_time = time.perf_counter()
    dataset = build_train_dataset(cfg) if dataset is None else dataset
    run = prepare_run(
        cfg, dataset, out_dir=Path(out_dir), device=device, resume=resume, new_settings=new_settings
    )
    log = open_log(run, start_time, tensorboard=tensorboard, verbose=verbose)
    if run.precision_note:
        log.write(run.precision_note)
    batches = start_batches(run, dataset)
    log.restart_window()
    if time_budget is not None:
        time_budget.begin(run.iteration)
    try:
        stopped = train_iterations(run, batches, log, time_budget, eval_batch_size)
    finally:
        stop_workers(batches)
        del batches
    metrics = finish_run(run, log, eval_batch_size, stopped=stopped)
    return TrainResult(
        cfg=cfg,
        model=run.model,
        postprocessor=run.postprocessor,
        iteration=run.iteration,
        start_iteration=run.start_iteration,
        seconds=time.perf_counter() - start_time,
        metrics=metrics,
        out_dir=run.out_dir,
    )


def train_iterations(
    run: TrainingRun,
    batches: Iterator[tuple[Any, list]],
    log: TrainingLog,
    time_budget: TimeBudget | None,
    eval_batch_size: int,
) -> bool:
    """Train until the schedule's end (False) or the time budget's (True)."""
    s = run.cfg.solver
    while run.iteration < run.schedule.max_iter or _time_for_more(run, time_budget, log):
        waited = time.perf_counter()
        images, targets = next(batches)
        waited = time.perf_counter() - waited
        started = precision_trial.before_update(run)
        step = train_step(run, images, targets)
        run.iteration += 1
        precision_trial.after_update(run, started, log)
        if step.nonfinite:
            note_nonfinite(run, step, log)
        else:
            run.nonfinite_streak = 0
            run.flush_checkpoint()  # its weights just gave a finite loss
            log.step(step.losses, data_seconds=waited)
        if time_budget is not None:
            time_budget.iteration_done(run.iteration)
            if time_budget.plan_due(run.iteration):
                plan_time_budget(run, time_budget, log)
        if run.iteration % s.log_period == 0 or run.iteration == run.schedule.max_iter:
            log.log(run.iteration, step.lr)
        if _out_of_time(time_budget) and run.iteration < run.schedule.max_iter:
            return True
        if s.checkpoint_period > 0 and run.iteration % s.checkpoint_period == 0:
            run.snapshot_checkpoint()
        if run.evaluation_due():
            t0 = time.perf_counter()
            run.evaluate(log, eval_batch_size)
            if time_budget is not None:
                time_budget.evaluation_done(time.perf_counter() - t0)
            log.restart_window()
    return False


@dataclass
class Step:
    """One iteration's outcome: the loss terms (floats; empty when skipped), the learning
    rate in force, and what was not finite when the update was skipped."""

    losses: dict[str, float]
    lr: float
    nonfinite: list[str] = field(default_factory=list)


def train_step(run: TrainingRun, images: Any, targets: list[dict[str, Any]]) -> Step:
    """One update on a batch (an ImageBatch of N x 3 x H x W and its N targets).

    A non-finite loss (on any process) or, without AMP, a non-finite gradient skips the update:
    the gradients are dropped and only the schedule advances, so one bad batch does not turn the
    weights into NaN. (With AMP the GradScaler already skips steps with inf gradients.)"""
    dev, s = run.device, run.cfg.solver
    images = images.to(dev)
    targets = targets_to(targets, dev)
    with _autocast(run):
        losses = training_losses(
            run.ddp_model, run.criterion, images.tensor, images.image_sizes, targets
        )
    loss = sum(losses.values())
    lr = run.optimizer.param_groups[0]["lr"]  # the rate of this update (logged)
    run.optimizer.zero_grad(set_to_none=True)
    bad = _nonfinite_losses(run, losses, loss)
    if bad:
        run.schedule.step()
        return Step({}, lr, bad)
    params = [p for p in run.model.parameters() if p.requires_grad]
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        if s.clip_grad_norm > 0:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        if s.clip_grad_norm > 0:
            norm = nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
        else:
            norm = total_grad_norm(params)
        # After DDP's all-reduce the gradients, hence this decision, are the same on all ranks.
        if not bool(torch.isfinite(norm)):
            run.optimizer.zero_grad(set_to_none=True)
            run.schedule.step()
            return Step({}, lr, ["gradient norm"])
        run.optimizer.step()
    run.schedule.step()
    terms = {k: float(v.detach()) for k, v in losses.items()}
    return Step({"loss": float(loss.detach()), **terms}, lr)


def total_grad_norm(params: list[Tensor]) -> Tensor:
    """The 2-norm of all the gradients of `params` together, as `clip_grad_norm_` measures it;
    the gradients are left as they are."""
    get_total_norm = getattr(nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm([p.grad for p in params if p.grad is not None])
    # torch 2.5 (the declared floor) has no get_total_norm, but clip_grad_norm_ returns the
    # same norm; with an infinite max_norm its coefficient is clamped to exactly 1, so a finite
    # norm changes no gradient (a non-finite one makes the caller drop them anyway).
    return nn.utils.clip_grad_norm_(params, float("inf"))


def _nonfinite_losses(run: TrainingRun, losses: dict[str, Tensor], loss: Tensor) -> list[str]:
    """The loss terms that are NaN or infinite on this process; ["another process"] when only
    another process has one. All processes agree on skipping, or DDP's backward would hang."""
    finite = bool(torch.isfinite(loss))
    if run.info.distributed:
        flag = torch.tensor([0.0 if finite else 1.0], device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if finite and flag.item() > 0:
            return ["another process"]
    if finite:
        return []
    bad = [f"{k}={float(v.detach()):g}" for k, v in losses.items() if not torch.isfinite(v)]
    return bad or [f"loss={float(loss.detach()):g}"]


def note_nonfinite(run: TrainingRun, step: Step, log: TrainingLog) -> None:
    """Count a skipped update and say so in one line; stop after `MAX_NONFINITE_STEPS` in a
    row with an error pointing at the last good checkpoint and a lower learning rate."""
    run.nonfinite_streak += 1
    n, what = run.nonfinite_streak, ", ".join(step.nonfinite)
    log.write(f"iteration {run.iteration}: non-finite {what}; update skipped ({n} in a row)")
    if n < MAX_NONFINITE_STEPS:
        return
    lower = f"--lr {run.cfg.solver.base_lr / 2:.3g}"
    if run.saved_iteration is None:
        hint = f"no checkpoint was written: start over with a lower learning rate ({lower})"
    else:
        hint = (
            f"{run.previous_checkpoint()} holds the last finite weights: continue from it with "
            f"a lower learning rate ({lower} {NEW_SETTINGS_FLAG})"
        )
    raise FloatingPointError(
        f"training stopped: the loss was not finite for {n} iterations in a row "
        f"({run.iteration - n + 1}-{run.iteration}; last: {what}); {hint}, or set "
        "solver.clip_grad_norm"
    )


def stop_workers(batches: Iterator[Any]) -> None:
    """Stop the loader's worker processes now. After an error the traceback still refers to the
    iterator, so dropping our name would leave them to the garbage collector, which stops them
    only later (then waiting out torch's 5 s status interval)."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator
    if shutdown is not None:
        shutdown()


def _autocast(run: TrainingRun) -> AbstractContextManager:
    if run.scaler is not None:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return training_autocast(run.device, run.precision)


def _time_for_more(run: TrainingRun, budget: TimeBudget | None, log: TrainingLog) -> bool:
    """At the planned end with time to spare (the last plan was made while the machine was
    slower): plan again, and go on when more iterations fit. The same on every rank (the plan
    is rank 0's)."""
    if budget is None or run.iteration >= run.cfg.solver.max_iter or not budget.can_plan():
        return False
    if dist_utils.broadcast_object(budget.expired()):
        return False
    plan_time_budget(run, budget, log)
    return run.iteration < run.schedule.max_iter


def _out_of_time(budget: TimeBudget | None) -> bool:
    """Whether rank 0's budget has run out (a collective call: all ranks stop together)."""
    return budget is not None and bool(dist_utils.broadcast_object(budget.expired()))


def plan_time_budget(run: TrainingRun, budget: TimeBudget, log: TrainingLog) -> None:
    """Fit the schedule to the time left, longer or shorter, up to the configured `max_iter`
    (every rank takes rank 0's plan). The plan is printed the first time and whenever its end
    moves by more than 5% (small moves happen at every re-plan)."""
    first = not budget.planned
    eval_period = run.eval_period if run.has_val else 0
    planned, per_iter = budget.plan(
        run.iteration, max_iter=run.cfg.solver.max_iter, eval_period=eval_period
    )
    new_max, old_max = int(dist_utils.broadcast_object(planned)), run.schedule.max_iter
    run.schedule.replan(new_max, iteration=run.iteration)
    s = run.cfg.solver
    if run.eval_period > 0 and s.eval_period > 0:
        # Every plan keeps the configured number of evaluations (they draw the AP curve): a
        # period fixed by the first plan alone, made from slow iterations on a busy machine,
        # evaluated every 18 iterations of a 1,100-iteration nuclei run (30 s each).
        run.eval_period = max(1, round(s.eval_period * new_max / s.max_iter))
    if first or abs(new_max - run.planned_shown) > 0.05 * run.planned_shown:
        run.planned_shown = new_max
        log.write(
            f"time budget {budget.seconds:.0f}s at {per_iter:.2f}s/iteration (recent mean): "
            f"training to iteration {new_max} ({run.schedule.describe()}, evaluation every "
            f"{run.eval_period}), was {old_max}"
        )
    log.progress.set_total(run.schedule.max_iter)


# --------------------------------------------------------------------------------------------
# Before and after the loop


def open_log(
    run: TrainingRun, start_time: float, *, tensorboard: bool, verbose: bool
) -> TrainingLog:
    """The run's records, from its (possibly resumed) iteration to its planned end."""
    return TrainingLog(
        run.out_dir,
        main=run.info.is_main,
        start=run.iteration,
        total=run.schedule.max_iter,
        start_time=start_time,
        ims_per_batch=run.cfg.solver.ims_per_batch,
        device=run.device,
        tensorboard=tensorboard,
        verbose=verbose,
    )


def finish_run(
    run: TrainingRun, log: TrainingLog, eval_batch_size: int, *, stopped: bool
) -> dict[str, float]:
    """Save `last.pt` and `model.pt` (with `--preset auto`'s plan), evaluate a last time
    (returns those metrics, empty without a val set) and draw curves.png."""
    main = run.info.is_main
    log.progress.close()
    if stopped and main:
        logger.info(f"stopped at iteration {run.iteration} (time budget)")
    dist_utils.broadcast_buffers(run.model)  # every rank ends with the weights rank 0 saves
    run.save_checkpoint()
    if main:
        save_model_file(run.out_dir / MODEL_FILE, run.cfg, run.model, plan=auto_plan(run.cfg))
    metrics = run.evaluate(log, eval_batch_size) if run.has_val else {}
    if main:
        plot_curves(run.out_dir / METRICS_FILE, run.out_dir / CURVES_FILE)
    log.close()
    dist_utils.barrier()
    return metrics
