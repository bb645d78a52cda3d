"""predict on images, folders, lists of paths and videos

Streams OUT/predictions.jsonl (one record per image, RLE masks), OUT/overlays/, OUT/videos/ and
with --coco OUT/results.json (`prediction.predict.predict_images`; with --json GT, image ids are
GT's, so `eval --results` scores it); a rerun with the same --out resumes where the last one
stopped. Images that cannot be read are skipped and listed in
OUT/errors.jsonl (exit 0, the summary line counts them); --strict stops at the first one
instead (exit 2). Post-processing flags (`add_postprocess_arguments`, shared with `eval`):
--conf, --iou, --max-det, --classes, --set. Under torchrun the images are split across ranks.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Any

from blendmask.cli.arguments import (
    DEVICE_HELP,
    DEVICES,
    add_hidden_alias,
    non_negative_int,
    positive_int,
    probability,
)
from blendmask.export.segmenter_predictor import BACKENDS, SegmenterPredictor
from blendmask.prediction.panoptic_predict import is_panoptic_model_file, predict_panoptic_images
from blendmask.prediction.predict import predict_images
from blendmask.prediction.predict_outputs import MASK_MODES
from blendmask.predictor import DEFAULT_SCORE_THRESHOLD, INFERENCE_KEYS
from blendmask.runtime.precision import PRECISIONS

logger = logging.getLogger("blendmask.predict")
DEFAULT_WORKERS = 2  # DataLoader processes of an instance model's predict


def class_list(text: str) -> list[int | str]:
    """argparse type of --classes: comma-separated class names or 0-based labels."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected class names or 0-based labels, got {text!r}")
    return [int(item) if item.isdigit() else item for item in items]


def add_postprocess_arguments(parser: argparse.ArgumentParser, conf: float | None) -> None:
    """--conf, --iou, --max-det, --classes, --set (--score-threshold and --max-detections:
    hidden aliases); `conf` is the default score threshold (None: keep every detection the
    model gives, i.e. its candidates above `model.fcos.inference_th_test`)."""
    keep = "every detection the model gives" if conf is None else conf
    parser.add_argument(
        "--conf",
        dest="score_threshold",
        type=probability,
        default=conf,
        metavar="CONF",
        help=f"keep detections scoring at least this (default: {keep}); below the model's "
        "candidate threshold it lowers that too: 0 keeps every candidate, up to --max-det",
    )
    add_hidden_alias(parser, "--score-threshold", "score_threshold", probability)
    parser.add_argument(
        "--iou", type=probability, default=None, help="NMS IoU (default: the model's, 0.6)"
    )
    parser.add_argument(
        "--max-det",
        dest="max_det",
        type=positive_int,
        default=None,
        help="detections per image after NMS (default: the model's, 100); in eval also "
        "the maxDets COCO counts (default 100)",
    )
    add_hidden_alias(parser, "--max-detections", "max_det", positive_int)
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


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision of predict and eval (`Predictor`'s `precision`)."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="network number format (default fp32); auto: bf16 where this machine's probe "
        "finds it faster and its masks pass the gate on the first images (IoU >= 0.98)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="model file (model.pt)")
    model.add_argument(
        "--onnx", help="end-to-end ONNX file (`blendmask export`), run by onnxruntime"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="SOURCE",
        help="image files, folders (searched recursively), .txt / .lst files listing paths, "
        "video files",
    )
    parser.add_argument(
        "--out", required=True, help="writes OUT/predictions.jsonl, OUT/overlays/, OUT/videos/"
    )
    parser.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    add_precision_argument(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="onnxruntime",
        help="runtime of an --onnx file (default onnxruntime; openvino: f32, the openvino extra)",
    )
    add_postprocess_arguments(parser, DEFAULT_SCORE_THRESHOLD)
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)"
    )
    parser.add_argument(
        "--num-workers",
        dest="workers",
        type=non_negative_int,
        metavar="N",
        default=None,
        help=f"DataLoader processes decoding images (default {DEFAULT_WORKERS}; 0: in the "
        "main process, where a panoptic model always decodes)",
    )
    add_hidden_alias(parser, "--workers", "workers", non_negative_int)
    parser.add_argument(
        "--glob",
        default=None,
        help="files of folders to take, a shell pattern such as '*.jpg' (default: every image "
        "and video suffix)",
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip images already in OUT/predictions.jsonl (default); --no-resume starts over",
    )
    parser.add_argument(
        "--coco", action="store_true", help="also write OUT/results.json (COCO results format)"
    )
    parser.add_argument(
        "--json",
        dest="gt_json",
        default=None,
        metavar="GT",
        help="ground-truth COCO json of the images: records and results.json take its image "
        "ids (matched by file_name), for `eval --results` (default: ids given once per file)",
    )
    parser.add_argument(
        "--save-masks",
        choices=MASK_MODES,
        default=None,
        help="instances: OUT/masks/NAME/K.png per detection; idmap: OUT/masks/NAME.png, "
        "16-bit, detection K as K+1",
    )
    parser.add_argument(
        "--no-overlays", action="store_true", help="write no overlays or annotated videos"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first image that cannot be read (default: skip it, list it in "
        "OUT/errors.jsonl)",
    )


def run(args: argparse.Namespace) -> int:
    if args.weights and is_panoptic_model_file(args.weights):
        return _run_panoptic(args)
    predictor = None
    if args.onnx:
        predictor = SegmenterPredictor(args.onnx, backend=args.backend)
        _warn_fixed_candidates(args.onnx, predictor.cfg, args.score_threshold)
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
        workers=DEFAULT_WORKERS if args.workers is None else args.workers,
        glob=args.glob,
        resume=args.resume,
        coco=args.coco,
        save_masks=args.save_masks,
        overlays=not args.no_overlays,
        strict=args.strict,
        gt_json=args.gt_json,
        precision=args.precision,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(summary_line(summary))
    return 0


def _warn_fixed_candidates(path: str, cfg: Any, score_threshold: float | None) -> None:
    """--conf below an ONNX file's candidate threshold cannot lower it (as it does for a
    model.pt): the threshold is a constant of the graph. Say so rather than keep fewer
    detections than --conf promises."""
    base = float(cfg.model.fcos.inference_th_test)
    if score_threshold is not None and score_threshold * score_threshold < base:
        logger.warning(
            "predict --onnx: --conf %g is below the candidate threshold fixed in %s "
            "(model.fcos.inference_th_test %g: scores under ~%.2f are not in the file); "
            "export with --set model.fcos.inference_th_test=T to keep lower ones",
            score_threshold,
            path,
            base,
            math.sqrt(base),
        )


def _run_panoptic(args: argparse.Namespace) -> int:
    """A panoptic model: OUT/panoptic/*.png, OUT/panoptic.json, OUT/overlays/*.png."""
    flags = (("--coco", args.coco), ("--save-masks", args.save_masks), ("--json", args.gt_json))
    unused = [f for f, v in flags if v]
    if unused:
        raise ValueError(f"predict: {', '.join(unused)} are for instance models, not panoptic")
    if args.workers:
        # The panoptic loop reads its images in the main process: no DataLoader to give them.
        raise ValueError(
            f"predict: --num-workers {args.workers}: a panoptic model decodes its images in "
            "the main process (leave the flag out or give 0)"
        )
    summary = predict_panoptic_images(
        weights=args.weights,
        inputs=args.inputs,
        out=args.out,
        device=args.device,
        score_threshold=args.score_threshold,
        nms_iou=args.iou,
        max_detections=args.max_det,
        classes=args.classes,
        batch_size=args.batch_size,
        overrides=args.overrides,
        glob=args.glob,
        overlays=not args.no_overlays,
        strict=args.strict,
        resume=args.resume,
    )
    done = f"{summary['resumed']} already done, " if summary["resumed"] else ""
    print(
        f"{summary['images']} image(s), {summary['predicted']} predicted, {done}"
        f"{summary['segments']} segment(s), {summary['skipped']} skipped: wrote "
        f"{summary['results']}" + (f" and {summary['overlays']}" if summary["overlays"] else "")
    )
    return 0


def summary_line(summary: dict) -> str:
    """ "12 image(s), 10 predicted, 2 already done, 31 detection(s), 1 skipped (...): wrote ..."."""
    parts = [f"{summary['images']} image(s)"]
    if summary["videos"]:
        parts.append(f"{summary['videos']} video(s) ({summary['frames']} frames this run)")
    parts.append(f"{summary['predicted']} predicted")
    if summary["resumed"]:
        parts.append(f"{summary['resumed']} already done")
    parts.append(f"{summary['detections']} detection(s)")
    skipped = summary["skipped"] + summary["videos_skipped"]
    if skipped:
        parts.append(f"{skipped} skipped (unreadable, see {summary['errors']})")
    wrote = [summary["predictions"], summary["results"], summary["overlays"]]
    return ", ".join(parts) + ": wrote " + " and ".join(str(w) for w in wrote if w)
