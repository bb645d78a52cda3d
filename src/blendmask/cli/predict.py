"""predict on images or folders

Writes OUT/results.json (COCO results) and OUT/overlays/ (`engine.predict.predict_images`).
Images that cannot be read are skipped and listed in OUT/errors.jsonl (exit 0, the summary line
counts them); --strict stops at the first one instead (exit 2).
"""

from __future__ import annotations

import argparse

from blendmask.cli.arguments import DEVICES, positive_int
from blendmask.engine.predict import predict_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="model file (model.pt)")
    model.add_argument(
        "--onnx", help="end-to-end ONNX file (`blendmask export`), run by onnxruntime"
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, help="writes OUT/results.json, OUT/overlays/")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="keep detections scoring at least this (results and overlays)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--no-overlays", action="store_true", help="write results.json only")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image that cannot be read (default: skip it, list it in "
        "OUT/errors.jsonl)",
    )


def run(args: argparse.Namespace) -> int:
    predictor = None
    if args.onnx:
        from blendmask.export.segmenter_predictor import SegmenterPredictor

        predictor = SegmenterPredictor(args.onnx)
    summary = predict_images(
        weights=args.weights,
        predictor=predictor,
        inputs=args.inputs,
        out=args.out,
        device=args.device,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        overlays=not args.no_overlays,
        strict=args.strict,
    )
    skipped = (
        f", {summary['skipped']} skipped (unreadable, see {summary['errors']})"
        if summary["skipped"]
        else ""
    )
    print(
        f"{summary['images']} image(s), {summary['detections']} detection(s){skipped}: "
        f"wrote {summary['results']}"
        + (f" and {summary['overlays']}/" if summary["overlays"] else "")
    )
    return 0
