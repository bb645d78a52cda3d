"""shapes data -> train on CPU -> evaluate -> draw

The whole demo within --minutes (`training.demo.run_demo`).
"""

from __future__ import annotations

import argparse

from blendmask.cli.arguments import DEVICE_HELP, DEVICES, positive_float, positive_int
from blendmask.training.demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help=DEVICE_HELP)
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=9.0,
        help="time budget for the whole demo (default 9); training stops early to fit",
    )
    parser.add_argument("--train", type=positive_int, default=1000, help="training images")
    parser.add_argument("--val", type=positive_int, default=100, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    parser.add_argument(
        "--preset", default=None, help="default shapes_lite0 (shapes_panoptic with --panoptic)"
    )
    parser.add_argument(
        "--panoptic",
        action="store_true",
        help="panoptic: shapes on textured stuff (sky, wall, grass), train shapes_panoptic, PQ",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the preset (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    run_demo(
        out=args.out,
        device=args.device,
        minutes=args.minutes,
        num_train=args.train,
        num_val=args.val,
        seed=args.seed,
        preset=args.preset or ("shapes_panoptic" if args.panoptic else "shapes_lite0"),
        overrides=args.overrides,
        panoptic=args.panoptic,
    )
    return 0
