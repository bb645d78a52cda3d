"""train a model (resumes from OUT/last.pt)

`torchrun --nproc_per_node N -m blendmask train ...` trains with DDP; the work is
`blendmask.training.train.train_command`.
"""

from __future__ import annotations

import argparse

from blendmask.cli.arguments import (
    DEVICE_HELP,
    DEVICES,
    non_negative_int,
    positive_float,
    positive_int,
)
from blendmask.runtime.distributed import cleanup_distributed
from blendmask.training.train import train_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help="a preset name (see `blendmask presets`)")
    parser.add_argument("--config", default=None, help="YAML file: `preset:` plus overrides")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set solver.max_iter=2000 (repeatable)",
    )
    parser.add_argument("--train-json", default=None, help="COCO instances json for training")
    parser.add_argument("--train-images", default=None, help="folder of the training images")
    parser.add_argument("--val-json", default=None, help="COCO json evaluated during training")
    parser.add_argument("--val-images", default=None, help="folder of the validation images")
    for split in ("train", "val"):  # COCO panoptic data (images: --train-images / --val-images)
        parser.add_argument(
            f"--{split}-panoptic-json", default=None, help=f"COCO panoptic json ({split})"
        )
        parser.add_argument(
            f"--{split}-panoptic-images", default=None, help=f"folder of its PNGs ({split})"
        )
    parser.add_argument("--out", required=True, help="run folder (resumes from OUT/last.pt)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="total images per iteration over all processes; alone, it scales the lr linearly",
    )
    parser.add_argument("--lr", type=positive_float, default=None, help="base learning rate")
    parser.add_argument(
        "--max-iter", type=positive_int, default=None, help="iterations (lr steps scale along)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for a reproducible run")
    parser.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=None,
        help="DataLoader processes (default: the config's data.num_workers, 2)",
    )
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=None,
        help="time budget in minutes (finite, > 0) for the whole run, final evaluation included: "
        "the schedule is re-planned from recent iteration times to end on time (shorter or "
        "longer, up to max_iter)",
    )
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="ImageNet weights for the body (torchvision .pth, MSRA/detectron2 .pkl, or a Lite0 "
        "file); the input normalisation follows the file",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="ignore OUT/last.pt and start from scratch"
    )
    parser.add_argument(
        "--resume-with-new-settings",
        action="store_true",
        help="continue OUT/last.pt with changed solver settings (--lr, --max-iter, --set "
        "solver.*), applied to the optimiser and schedule; without it a change is refused",
    )
    parser.add_argument(
        "--new-out-if-changed",
        action="store_true",
        help="when OUT holds a run this config does not continue (other settings), train into "
        "OUT-2 (or the next OUT-N that is free or holds this run) instead of refusing",
    )
    parser.add_argument(
        "--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)"
    )


def run(args: argparse.Namespace) -> int:
    for key in (
        "train_panoptic_json",
        "train_panoptic_images",
        "val_panoptic_json",
        "val_panoptic_images",
    ):
        if getattr(args, key):  # the panoptic flags are config fields: passed as --set
            args.overrides.append(f"data.{key}={getattr(args, key)}")
    try:
        train_command(
            out=args.out,
            preset=args.preset,
            config=args.config,
            overrides=args.overrides,
            train_json=args.train_json,
            train_images=args.train_images,
            val_json=args.val_json,
            val_images=args.val_images,
            device=args.device,
            batch_size=args.batch_size,
            lr=args.lr,
            max_iter=args.max_iter,
            seed=args.seed,
            num_workers=args.num_workers,
            minutes=args.minutes,
            resume=not args.no_resume,
            resume_with_new_settings=args.resume_with_new_settings,
            new_out_if_changed=args.new_out_if_changed,
            tensorboard=args.tensorboard,
            backbone_weights=args.backbone_weights,
        )
    finally:
        cleanup_distributed()
    return 0
