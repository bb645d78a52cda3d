"""`blendmask train` as a function: resolve the config, build the dataset, run the loop."""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from blendmask.atomic import check_writable
from blendmask.config import Config
from blendmask.config.flags import make_request
from blendmask.evaluation.evaluate import METRIC_KEYS
from blendmask.metrics.dataset_report import short_summary
from blendmask.metrics.dataset_stats import cached_analysis
from blendmask.modeling.test_time import flip_views
from blendmask.runtime.distributed import get_rank
from blendmask.runtime.output_lock import OutputLock
from blendmask.training import loop
from blendmask.training.budget import TimeBudget
from blendmask.training.checkpoint import LAST_CHECKPOINT
from blendmask.training.loaders import build_train_dataset
from blendmask.training.request import TrainRequest
from blendmask.training.resume import NEW_OUT_FLAG, run_folder_for
from blendmask.training.train_config import (
    resolve_dataset_classes,
    resolve_train_config,
    warn_if_random_body,
)

logger = logging.getLogger(__name__)


def train_command(request: TrainRequest | None = None, **kwargs: Any) -> loop.TrainResult:
    """`blendmask train` for `request` (or the `TrainRequest` of the keyword arguments, which
    mirror its flags): resolve the config, then `loop.run_training` (resumes from
    `out/last.pt`), refusing an --out that another process is writing (`OutputLock`). Writes
    last.pt, model.pt, metrics.jsonl, curves.png under `out`; logs where model.pt went and the
    final metrics.

    Resuming with other settings than the saved run's is refused, naming the keys, unless only
    solver settings differ and `resume_with_new_settings` (see training/resume.py); with
    `new_out_if_changed` such a run goes into OUT-2 (or the next OUT-N that is free or holds
    this run, `resume.run_folder_for`) instead. `TrainResult.out_dir` is the folder used."""
    r = make_request(TrainRequest, request, kwargs)
    out, resume, new_settings = r.out, r.resume, r.resume_with_new_settings
    # Under torchrun only rank 0 prints the config notes.
    quiet = int(os.environ.get("RANK", "0")) != 0
    cfg = resolve_train_config(r, quiet=quiet)
    if not quiet:
        _check_out_and_show_data(out, cfg)
    # The budget counts from here: reading the dataset is part of the time asked for.
    budget = None
    if r.minutes is not None:
        has_val = bool(cfg.data.val_json and cfg.data.val_images)
        # Flip test-time augmentation runs the network once per view of each val image.
        runs = len(flip_views(cfg.data.test_flip, cfg.data.test_vflip))
        budget = TimeBudget(r.minutes * 60.0, reserve_final_eval=has_val, eval_runs=runs)
    dataset = build_train_dataset(cfg)
    cfg = resolve_dataset_classes(cfg, dataset, quiet=quiet)
    if r.new_out_if_changed and resume:
        out = _new_out_if_changed(out, cfg, new_settings=new_settings, quiet=quiet)
    fresh = not (resume and (Path(out) / LAST_CHECKPOINT).is_file())
    if fresh and not quiet:
        warn_if_random_body(cfg)
    # Two runs writing one folder would overwrite each other's last.pt: rank 0 holds a lock.
    with nullcontext() if quiet else OutputLock(out):
        result = loop.run_training(
            cfg,
            out_dir=out,
            dataset=dataset,
            device=r.device,
            resume=resume,
            new_settings=new_settings,
            time_budget=budget,
            tensorboard=r.tensorboard,
        )
    if get_rank() == 0:
        _report(Path(out), result)
    return result


def _check_out_and_show_data(out: str | Path, cfg: Config) -> None:
    """Check `out` before reading the dataset (a bad --out fails at once), then print the
    training json's facts in three lines (`blendmask analyze` gives them all)."""
    check_writable(out)
    if cfg.data.train_json and Path(cfg.data.train_json).is_file():
        for line in short_summary(cached_analysis(cfg.data.train_json).summary):
            logger.info(line)


def _new_out_if_changed(out: str | Path, cfg: Config, *, new_settings: bool, quiet: bool) -> Path:
    """`out`, or the OUT-N to train into when `out` holds a run `cfg` does not continue (with
    a note; see `resume.run_folder_for`)."""
    chosen = run_folder_for(out, cfg, new_settings=new_settings)
    if chosen != Path(out) and not quiet:
        logger.info(
            f"note: {Path(out) / LAST_CHECKPOINT} is a run this config does not continue; "
            f"training into {chosen} instead ({NEW_OUT_FLAG})"
        )
        check_writable(chosen)
    return chosen


def _report(out: Path, result: loop.TrainResult) -> None:
    """Where model.pt went and the final metrics (one JSON line), as the command's output."""
    logger.info(f"wrote {out / loop.MODEL_FILE} (iteration {result.iteration})")
    if result.metrics:
        logger.info(json.dumps({k: result.metrics[k] for k in METRIC_KEYS if k in result.metrics}))
