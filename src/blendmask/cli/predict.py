"""predict on images, folders, lists of paths and videos

Streams OUT/predictions.jsonl (one record per image, RLE masks), OUT/overlays/, OUT/videos/ and
with --coco OUT/results.json (`prediction.predict.predict_images`; with --json GT, image ids are
GT's, so `eval --results` scores it); a rerun with the same --out resumes where the last one
stopped. Images that cannot be read are skipped and listed in
OUT/errors.jsonl (exit 0, the summary line counts them); --strict stops at the first one
instead (exit 2). The flags are the fields of `prediction.request.PredictRequest`; its
post-processing ones (--conf, --iou, --max-det, --classes, --set) are `eval`'s too
(`evaluation.request.PostprocessRequest`). Under torchrun the images are split across ranks.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Any

from blendmask.cli.arguments import add_request_arguments, request_from_args
from blendmask.export.segmenter_predictor import SegmenterPredictor
from blendmask.prediction.panoptic_predict import is_panoptic_model_file, predict_panoptic_images
from blendmask.prediction.predict import predict_images
from blendmask.prediction.request import PredictRequest

logger = logging.getLogger("blendmask.predict")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_request_arguments(parser, PredictRequest)


def run(args: argparse.Namespace) -> int:
    request = request_from_args(PredictRequest, args)
    if request.weights and is_panoptic_model_file(request.weights):
        return _run_panoptic(request)
    predictor = None
    if request.onnx:
        predictor = SegmenterPredictor(request.onnx, backend=request.backend)
        _warn_fixed_candidates(str(request.onnx), predictor.cfg, request.score_threshold)
    summary = predict_images(request, predictor=predictor)
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


def _run_panoptic(request: PredictRequest) -> int:
    """A panoptic model: OUT/panoptic/*.png, OUT/panoptic.json, OUT/overlays/*.png."""
    summary = predict_panoptic_images(request)
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
