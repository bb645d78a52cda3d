"""predict on images or folders

Writes OUT/results.json (COCO results) and OUT/overlays/ (`engine.predict.predict_images`).
Images that cannot be read are skipped and listed in OUT/errors.jsonl (exit 0, the summary line
counts them); --strict stops at the first one instead (exit 2). Post-processing flags
(`add_postprocess_arguments`, shared with `eval`): --conf, --iou, --max-det, --classes, --set.
"""

from __future__ import annotations

import argparse

from blendmask.cli.arguments import DEVICES, positive_int, probability
from blendmask.engine.predict import predict_images
from blendmask.predictor import DEFAULT_SCORE_THRESHOLD, INFERENCE_KEYS


def class_list(text: str) -> list[int | str]:
    """argparse type of --classes: comma-separated class names or 0-based labels."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected class names or 0-based labels, got {text!r}")
    return [int(item) if item.isdigit() else item for item in items]


def add_postprocess_arguments(parser: argparse.ArgumentParser, conf: float | None) -> None:
    """--conf (= --score-threshold), --iou, --max-det, --classes, --set; `conf` is the
    default score threshold (None: keep every detection the model gives)."""
    keep = "keep every detection the model gives" if conf is None else conf
    parser.add_argument(
        "--conf",
        "--score-threshold",
        dest="score_threshold",
        type=probability,
        default=conf,
        help=f"keep detections scoring at least this (default: {keep})",
    )
    parser.add_argument(
        "--iou", type=probability, default=None, help="NMS IoU (default: the model's, 0.6)"
    )
    parser.add_argument(
        "--max-det",
        type=positive_int,
        default=None,
        help="detections per image after NMS (default: the model's, 100)",
    )
    parser.add_argument(
        "--classes",
        type=class_list,
        default=None,
        help="keep only these classes: names or 0-based labels, comma separated",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"change an inference setting of the model's config (repeatable): "
        f"{', '.join(INFERENCE_KEYS)}",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="model file (model.pt)")
    model.add_argument(
        "--onnx", help="end-to-end ONNX file (`blendmask export`), run by onnxruntime"
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, help="writes OUT/results.json, OUT/overlays/")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    add_postprocess_arguments(parser, DEFAULT_SCORE_THRESHOLD)
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
        nms_iou=args.iou,
        max_detections=args.max_det,
        classes=args.classes,
        overrides=args.overrides,
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
