"""Flags of `blendmask train | eval | predict | demo` and their dispatch to engine/commands.py.

`cli.py` builds the sub-parsers with `add_*_args` and calls `run_*` with the parsed namespace;
the work lives in `blendmask.engine.commands`.
"""

from __future__ import annotations

import argparse
import json

DEVICES = ("cpu", "cuda", "auto")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_config_args(parser: argparse.ArgumentParser) -> None:
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


def add_train_args(parser: argparse.ArgumentParser) -> None:
    _add_config_args(parser)
    parser.add_argument("--train-json", default=None, help="COCO instances json for training")
    parser.add_argument("--train-images", default=None, help="folder of the training images")
    parser.add_argument("--val-json", default=None, help="COCO json evaluated during training")
    parser.add_argument("--val-images", default=None, help="folder of the validation images")
    parser.add_argument("--out", required=True, help="run folder (resumes from OUT/last.pt)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="total images per iteration over all processes; alone, it scales the lr linearly",
    )
    parser.add_argument("--lr", type=_positive_float, default=None, help="base learning rate")
    parser.add_argument(
        "--max-iter", type=_positive_int, default=None, help="iterations (lr steps scale along)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for a reproducible run")
    parser.add_argument("--num-workers", type=int, default=None, help="data loader processes")
    parser.add_argument(
        "--minutes",
        type=_positive_float,
        default=None,
        help="time budget: shrink the schedule to fit and stop training after this long",
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
        "--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)"
    )


def run_train(args: argparse.Namespace) -> int:
    from blendmask.engine.commands import train
    from blendmask.engine.distributed import cleanup_distributed

    try:
        train(
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
            tensorboard=args.tensorboard,
            backbone_weights=args.backbone_weights,
        )
    finally:
        cleanup_distributed()
    return 0


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="model file (model.pt) to evaluate")
    parser.add_argument("--json", default=None, help="ground-truth COCO instances json")
    parser.add_argument("--images", default=None, help="folder of the json's images")
    parser.add_argument("--out", required=True, help="writes OUT/metrics.json, OUT/results.json")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--batch-size", type=_positive_int, default=1)
    parser.add_argument("--num-workers", type=int, default=2, help="image loading processes")


def run_eval(args: argparse.Namespace) -> int:
    from blendmask.engine.commands import METRIC_KEYS, evaluate

    missing = [f"--{k}" for k in ("weights", "json", "images") if not getattr(args, k, None)]
    if missing:
        raise ValueError(f"eval: needs {', '.join(missing)} (or --results R.json with --json)")
    metrics = evaluate(
        weights=args.weights,
        json_path=args.json,
        images=args.images,
        out=args.out,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    print(json.dumps({k: metrics[k] for k in (*METRIC_KEYS, "images", "seconds") if k in metrics}))
    return 0


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="model file (model.pt)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, help="writes OUT/results.json, OUT/overlays/")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="keep detections scoring at least this (results and overlays)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=1)
    parser.add_argument("--no-overlays", action="store_true", help="write results.json only")


def run_predict(args: argparse.Namespace) -> int:
    from blendmask.engine.commands import predict

    summary = predict(
        weights=args.weights,
        inputs=args.inputs,
        out=args.out,
        device=args.device,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        overlays=not args.no_overlays,
    )
    print(
        f"{summary['images']} image(s), {summary['detections']} detection(s): "
        f"wrote {summary['results']}"
        + (f" and {summary['overlays']}/" if summary["overlays"] else "")
    )
    return 0


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument(
        "--minutes",
        type=_positive_float,
        default=9.0,
        help="time budget for the whole demo (default 9); training stops early to fit",
    )
    parser.add_argument("--train", type=_positive_int, default=1000, help="training images")
    parser.add_argument("--val", type=_positive_int, default=100, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="shapes_R_18")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def run_demo(args: argparse.Namespace) -> int:
    from blendmask.engine.commands import demo

    demo(
        out=args.out,
        device=args.device,
        minutes=args.minutes,
        num_train=args.train,
        num_val=args.val,
        seed=args.seed,
        preset=args.preset,
        overrides=args.overrides,
    )
    return 0
