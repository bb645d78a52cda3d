"""COCO evaluation of a model or of a results json

With --weights, runs the model file on --json / --images (`evaluation.evaluate.evaluate_model_file`);
with --results, scores a COCO results json against --json without a model. Under
`torchrun --nproc_per_node N -m blendmask eval --weights ...` each process predicts its share of
the images and rank 0 evaluates them all (the metrics of one process) and prints. Prints the COCO
summary table and the AP of each category (`metrics.tables.format_tables`); OUT/metrics.json
holds the same numbers ("per_category": {name: {"bbox_AP", "segm_AP"}}). The flags are the
fields of `evaluation.request.EvalRequest`.
"""

from __future__ import annotations

import argparse

from blendmask.cli.arguments import add_request_arguments, request_from_args
from blendmask.evaluation.evaluate import evaluate_model_file
from blendmask.evaluation.evaluate_panoptic import evaluate_panoptic_file
from blendmask.evaluation.request import EvalRequest
from blendmask.metrics.panoptic import format_pq_table
from blendmask.metrics.results import evaluate_results_file
from blendmask.metrics.tables import format_tables
from blendmask.runtime.distributed import cleanup_distributed, get_rank


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # AP needs the low scores: by default every detection the model gives counts.
    add_request_arguments(parser, EvalRequest)


def run(namespace: argparse.Namespace) -> int:
    args = request_from_args(EvalRequest, namespace)
    if args.panoptic_json or args.panoptic_images:
        return _evaluate_panoptic(args)
    if args.results:
        if not args.json:
            raise ValueError("eval --results needs --json (the ground-truth COCO json)")
        knobs = [
            flag
            for flag, value in (
                ("--conf", args.score_threshold),
                ("--iou", args.nms_iou),
                ("--max-det", args.max_detections),
                ("--classes", args.classes),
                ("--set", args.overrides),
                ("--plots", args.plots),  # the sheet draws the model's masks
                ("--precision", args.precision != "fp32"),
            )
            if value
        ]
        if knobs:
            raise ValueError(f"eval --results: {', '.join(knobs)} need a model (--weights)")
        metrics = evaluate_results_file(args.json, args.results, args.out)
    else:
        missing = [f"--{k}" for k in ("weights", "json", "images") if not getattr(args, k)]
        if missing:
            raise ValueError(f"eval: needs {', '.join(missing)} (or --results R.json with --json)")
        metrics, main = _evaluate_model(args)
        if not main:
            return 0  # rank 0 prints and writes
    print(format_tables(metrics))
    print(
        f"{metrics.get('images', 0)} image(s) in {metrics.get('seconds', 0)} s: wrote {args.out}/metrics.json"
    )
    return 0


def _evaluate_model(args: EvalRequest) -> tuple[dict, bool]:
    """(metrics, whether this is rank 0) of `evaluate_model_file` with the flags; under
    torchrun each process takes its share of the images."""
    try:
        metrics = evaluate_model_file(
            weights=args.weights,
            json_path=args.json,
            images=args.images,
            out=args.out,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            overrides=args.overrides,
            score_threshold=args.score_threshold,
            nms_iou=args.nms_iou,
            max_detections=args.max_detections,
            classes=args.classes,
            plots=args.plots,
            precision=args.precision,
        )
        return metrics, get_rank() == 0
    finally:
        cleanup_distributed()


def _evaluate_panoptic(args: EvalRequest) -> int:
    """PQ of a panoptic model (`evaluation.evaluate_panoptic.evaluate_panoptic_file`), printed as a table."""
    missing = [
        f"--{k.replace('_', '-')}"
        for k in ("weights", "panoptic_json", "panoptic_images", "images")
        if not getattr(args, k)
    ]
    if missing:
        raise ValueError(f"eval (panoptic): needs {', '.join(missing)}")
    try:  # under torchrun: sharded, and only rank 0 prints
        metrics = evaluate_panoptic_file(
            weights=args.weights,
            json_path=args.panoptic_json,
            panoptic_dir=args.panoptic_images,
            images=args.images,
            out=args.out,
            device=args.device,
            overrides=args.overrides,
            instances_json=args.json,
        )
        if get_rank() != 0:
            return 0
    finally:
        cleanup_distributed()
    if args.json:
        print(format_tables(metrics))
    print(format_pq_table(metrics))
    print(f"{metrics['images']} image(s) in {metrics['seconds']} s: wrote {args.out}/metrics.json")
    return 0
