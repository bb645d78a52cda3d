"""`TrainRequest`: the flags of `blendmask train`, written once (see `config.flags`).

The command line builds its parser and its request from these fields; `train.train_command`
and `train_config.resolve_train_config` take the request (or its fields as keyword arguments).
A new train flag is a new field here plus the code that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blendmask.config.flags import (
    DEVICE_HELP,
    DEVICES,
    flag,
    freeze_sequences,
    non_negative_int,
    positive_float,
    positive_int,
)


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """`blendmask train`: the config (preset / YAML / --set, or OUT/last.pt's), the data, the
    flags that change the config, and how the run goes (resume, time budget, logging)."""

    preset: str | None = flag(None, help="a preset name (see `blendmask presets`)")
    config: str | Path | None = flag(None, help="YAML file: `preset:` plus overrides")
    overrides: Sequence[str] = flag(
        (),
        names=("--set",),
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set solver.max_iter=2000 (repeatable)",
    )
    train_json: str | None = flag(None, help="COCO instances json for training")
    train_images: str | None = flag(None, help="folder of the training images")
    val_json: str | None = flag(None, help="COCO json evaluated during training")
    val_images: str | None = flag(None, help="folder of the validation images")
    # COCO panoptic data (its images: --train-images / --val-images)
    train_panoptic_json: str | None = flag(None, help="COCO panoptic json (train)")
    train_panoptic_images: str | None = flag(None, help="folder of its PNGs (train)")
    val_panoptic_json: str | None = flag(None, help="COCO panoptic json (val)")
    val_panoptic_images: str | None = flag(None, help="folder of its PNGs (val)")
    out: str | Path = flag(required=True, help="run folder (resumes from OUT/last.pt)")
    device: str = flag("auto", choices=DEVICES, help=DEVICE_HELP)
    batch_size: int | None = flag(
        None,
        parse=positive_int,
        help="total images per iteration over all processes; alone, it scales the lr linearly",
    )
    lr: float | None = flag(None, parse=positive_float, help="base learning rate")
    max_iter: int | None = flag(None, parse=positive_int, help="iterations (lr steps scale along)")
    seed: int | None = flag(None, parse=int, help="seed for a reproducible run")
    num_workers: int | None = flag(
        None,
        parse=non_negative_int,
        help="DataLoader processes (default: the config's data.num_workers, 2)",
    )
    minutes: float | None = flag(
        None,
        parse=positive_float,
        help="time budget in minutes (finite, > 0) for the whole run, final evaluation "
        "included: the schedule is re-planned from recent iteration times to end on time "
        "(shorter or longer, up to max_iter)",
    )
    backbone_weights: str | None = flag(
        None,
        help="ImageNet weights for the body (torchvision .pth, MSRA/detectron2 .pkl, or a "
        "Lite0 file); the input normalisation follows the file",
    )
    resume: bool = flag(
        True,
        names=("--no-resume",),
        action="store_false",
        help="ignore OUT/last.pt and start from scratch",
    )
    resume_with_new_settings: bool = flag(
        False,
        action="store_true",
        help="continue OUT/last.pt with changed solver settings (--lr, --max-iter, --set "
        "solver.*), applied to the optimiser and schedule; without it a change is refused",
    )
    new_out_if_changed: bool = flag(
        False,
        action="store_true",
        help="when OUT holds a run this config does not continue (other settings), train into "
        "OUT-2 (or the next OUT-N that is free or holds this run) instead of refusing",
    )
    tensorboard: bool = flag(
        False, action="store_true", help="also log to OUT/tensorboard (needs tensorboard)"
    )

    def __post_init__(self) -> None:
        freeze_sequences(self, "overrides")
