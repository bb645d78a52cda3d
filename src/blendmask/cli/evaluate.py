"""COCO evaluation of a model or of a results json

With --weights, runs the model file on --json / --images (`engine.evaluate.evaluate_model_file`);
with --results, scores a COCO results json against --json without a model.
"""

from __future__ import annotations

import argparse
import json

from blendmask.cli.arguments import DEVICES, positive_int
from blendmask.engine.evaluate import METRIC_KEYS, evaluate_model_file
from blendmask.evaluation.results import evaluate_results_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="model file (model.pt) to evaluate")
    parser.add_argument("--json", default=None, help="ground-truth COCO instances json")
    parser.add_argument("--images", default=None, help="folder of the json's images")
    parser.add_argument("--out", required=True, help="writes OUT/metrics.json, OUT/results.json")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--num-workers", type=int, default=2, help="image loading processes")
    parser.add_argument("--results", default=None, help="score a COCO results json without a model")


def run(args: argparse.Namespace) -> int:
    if args.results:
        if not args.json:
            raise ValueError("eval --results needs --json (the ground-truth COCO json)")
        metrics = evaluate_results_file(args.json, args.results, args.out)
        print(json.dumps(metrics, indent=2))
        return 0
    missing = [f"--{k}" for k in ("weights", "json", "images") if not getattr(args, k)]
    if missing:
        raise ValueError(f"eval: needs {', '.join(missing)} (or --results R.json with --json)")
    metrics = evaluate_model_file(
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
