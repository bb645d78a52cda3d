"""The Config a training run uses, settled before anything is built.

`resolve_train_config` turns the `blendmask train` flags into a Config (preset / YAML / `--set`,
or the config stored in a run folder's `last.pt`, then the flags) with the input conventions of
the body's ImageNet weight file; `resolve_dataset_classes` then takes the number of classes and
the category names from the training set. Each returns a new Config and changes nothing it is
given; the loop and `build` then only read it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blendmask.config import (
    Config,
    apply_config_file_data,
    apply_overrides,
    from_dict,
    read_config_file,
)
from blendmask.config.flags import make_request
from blendmask.data.coco import CocoDataset
from blendmask.evaluation.evaluate_panoptic import resolve_stuff_classes
from blendmask.interop.torchvision_weights import resolve_weight_conventions
from blendmask.presets import load_config
from blendmask.training.auto_preset import auto_config, format_plan
from blendmask.training.checkpoint import LAST_CHECKPOINT, read_training_state
from blendmask.training.optim import scale_lr
from blendmask.training.request import TrainRequest

logger = logging.getLogger(__name__)

Say = Callable[[str], None]
# The request fields that are `data.*` config fields of the same name.
DATA_FLAGS = (
    "train_json",
    "train_images",
    "val_json",
    "val_images",
    "train_panoptic_json",
    "train_panoptic_images",
    "val_panoptic_json",
    "val_panoptic_images",
)


def _quiet(_: str) -> None:
    pass


def resolve_train_config(
    request: TrainRequest | None = None, *, quiet: bool = False, **kwargs: Any
) -> Config:
    """The Config `blendmask train` runs for `request` (or the `TrainRequest` of the keyword
    arguments): preset / YAML / `--set`, then the flags.

    Without --preset and --config, a run folder holding `last.pt` continues with the config
    stored in it. `batch_size` alone scales the learning rate by the linear scaling rule
    (Goyal et al. 2017), with a note logged; `max_iter` compresses the lr steps in proportion.
    `backbone_weights` names an ImageNet file for the body; for ResNet bodies the input
    normalisation (channel order, scale, mean/std, stride_in_1x1) is set to the file's (also
    for a file named by the config itself).
    """
    r = make_request(TrainRequest, request, kwargs)
    say: Say = _quiet if quiet else logger.info
    if r.preset == "auto":
        cfg = auto_train_config(r.config, r.overrides, r.train_json, say)[0]
    else:
        cfg = _base_config(r.out, r.preset, r.config, r.overrides, say)
    d = cfg.data
    for name in DATA_FLAGS:
        value = getattr(r, name)
        if value is not None:
            setattr(d, name, str(value))
    if bool(d.val_json) != bool(d.val_images):
        raise ValueError("train: --val-json and --val-images go together (give both or neither)")
    _apply_solver_flags(cfg, batch_size=r.batch_size, lr=r.lr, max_iter=r.max_iter, say=say)
    if r.seed is not None:
        cfg.solver.seed = r.seed
    if r.num_workers is not None:
        d.num_workers = r.num_workers
    if r.backbone_weights is not None:
        path = Path(r.backbone_weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: --backbone-weights file not found")
        cfg.model.backbone.weights = str(path)
    return resolve_weight_conventions(cfg).validate()


def _base_config(
    out: str | Path,
    preset: str | None,
    config: str | Path | None,
    overrides: Sequence[str],
    say: Say,
) -> Config:
    """A fresh Config from the preset / YAML, or from the run folder's `last.pt`."""
    if preset is not None or config is not None:
        return load_config(preset, config, list(overrides))
    last = Path(out) / LAST_CHECKPOINT
    if not last.is_file():
        raise ValueError("train: needs --preset or --config (or an --out folder with last.pt)")
    cfg = from_dict(read_training_state(last)["config"])
    apply_overrides(cfg, list(overrides))
    cfg.validate()
    say(f"using the config stored in {last}")
    return cfg


def auto_train_config(
    config: str | Path | None,
    overrides: Sequence[str],
    train_json: str | None,
    say: Say = _quiet,
) -> tuple[Config, dict]:
    """`--preset auto`: the Config derived from the training json (the --train-json flag, or
    data.train_json of the YAML / `--set`), then the YAML's fields and `--set` over it; and
    the plan, printed through `say`."""
    data: dict = {}
    if config is not None:
        data = read_config_file(config)[1]
    if train_json is None:
        probe = apply_config_file_data(Config(), data, config or "", list(overrides))
        train_json = probe.data.train_json or None
    if not train_json:
        raise ValueError("train: --preset auto derives its settings from --train-json: give it")
    cfg, plan = auto_config(train_json)
    for line in format_plan(plan):
        say(line)
    return apply_config_file_data(cfg, data, config or "", list(overrides)), plan


def _apply_solver_flags(
    cfg: Config, *, batch_size: int | None, lr: float | None, max_iter: int | None, say: Say
) -> None:
    """--batch-size, --lr and --max-iter on a Config this module owns."""
    s = cfg.solver
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


def resolve_dataset_classes(cfg: Config, dataset: CocoDataset, *, quiet: bool = False) -> Config:
    """A copy of `cfg` with `model.fcos.num_classes` from `dataset` (with a note logged when it
    changes) and, when the config names none, its category names and ids."""
    out = copy.deepcopy(cfg)
    if dataset.num_classes != out.model.fcos.num_classes:
        if not quiet:
            logger.info(
                f"note: {out.data.train_json} has {dataset.num_classes} categories; "
                f"setting model.fcos.num_classes={dataset.num_classes} "
                f"(was {out.model.fcos.num_classes})"
            )
        out.model.fcos.num_classes = dataset.num_classes
    if not out.data.category_names:
        out.data.category_names = list(dataset.category_names)
        out.data.category_ids = [
            int(dataset.contiguous_to_category_id[i]) for i in range(dataset.num_classes)
        ]
    if hasattr(dataset, "stuff_names"):  # a panoptic dataset: its stuff classes too
        out = resolve_stuff_classes(out, dataset, quiet=quiet)
    return out.validate()


def warn_if_random_body(cfg: Config) -> None:
    """Say loudly (a logged warning: stderr from the CLI) when a ResNet body is about to train
    from random weights."""
    b = cfg.model.backbone
    if not b.name.startswith("resnet") or b.weights:
        return
    logger.warning(
        f"WARNING: the {b.name} body starts from RANDOM weights (model.backbone.weights is "
        "empty), which trains far slower and lower than the presets' reference numbers. Pass "
        f"ImageNet weights with --backbone-weights FILE (torchvision {b.name}-*.pth, or an "
        "MSRA / detectron2 R-*.pkl)."
    )
