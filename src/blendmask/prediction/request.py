"""`PredictRequest`: the flags of `blendmask predict`, written once (see `config.flags`).

The command line builds its parser and its request from these fields; `predict_images` and
`predict_panoptic_images` take the request (or its fields as keyword arguments). A new predict
flag is a new field here plus the code that reads it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blendmask.config.flags import (
    DEVICE_HELP,
    DEVICES,
    flag,
    freeze_sequences,
    non_negative_int,
    positive_int,
)
from blendmask.evaluation.request import PostprocessRequest, score_threshold_flag
from blendmask.onnx_runtime import BACKENDS
from blendmask.prediction.predict_outputs import MASK_MODES
from blendmask.predictor import DEFAULT_SCORE_THRESHOLD

DEFAULT_WORKERS = 2  # DataLoader processes of an instance model's predict from the command line


@dataclass(frozen=True, kw_only=True)
class PredictRequest(PostprocessRequest):
    """`blendmask predict`: what to run, on what, where to write, and how.

    `workers` None (the command line's default) is `DEFAULT_WORKERS` for an instance model and
    0 for a panoptic one, which decodes its images in the main process; the Python API's
    default is 0. `onnx` is loaded by the command line (`predict_images` takes the ready
    `predictor`)."""

    score_threshold: float | None = score_threshold_flag(DEFAULT_SCORE_THRESHOLD)
    weights: str | Path | None = flag(
        None, group="model", required=True, help="model file (model.pt)"
    )
    onnx: str | Path | None = flag(
        None, group="model", help="end-to-end ONNX file (`blendmask export`), run by onnxruntime"
    )
    backend: str = flag(
        "onnxruntime",
        choices=BACKENDS,
        help="runtime of an --onnx file (default onnxruntime; openvino: f32, the openvino extra)",
    )
    inputs: Sequence[str | Path] = flag(
        positional=True,
        nargs="+",
        metavar="SOURCE",
        help="image files, folders (searched recursively), .txt / .lst files listing paths, "
        "video files",
    )
    out: str | Path = flag(
        required=True, help="writes OUT/predictions.jsonl, OUT/overlays/, OUT/videos/"
    )
    device: str = flag("auto", choices=DEVICES, help=DEVICE_HELP)
    batch_size: int = flag(1, parse=positive_int, help="images per forward pass (default 1)")
    workers: int | None = flag(
        0,
        cli_default=None,  # so that a panoptic model can tell a given --num-workers
        names=("--num-workers",),
        aliases=("--workers",),
        parse=non_negative_int,
        metavar="N",
        help=f"DataLoader processes decoding images (default {DEFAULT_WORKERS}; 0: in the "
        "main process, where a panoptic model always decodes)",
    )
    glob: str | None = flag(
        None,
        help="files of folders to take, a shell pattern such as '*.jpg' (default: every image "
        "and video suffix)",
    )
    resume: bool = flag(
        True,
        action=argparse.BooleanOptionalAction,
        help="skip images already in OUT/predictions.jsonl (default); --no-resume starts over",
    )
    coco: bool = flag(
        False, action="store_true", help="also write OUT/results.json (COCO results format)"
    )
    gt_json: str | Path | None = flag(
        None,
        names=("--json",),
        metavar="GT",
        help="ground-truth COCO json of the images: records and results.json take its image "
        "ids (matched by file_name), for `eval --results` (default: ids given once per file)",
    )
    save_masks: str | None = flag(
        None,
        choices=MASK_MODES,
        help="instances: OUT/masks/NAME/K.png per detection; idmap: OUT/masks/NAME.png, "
        "16-bit, detection K as K+1",
    )
    overlays: bool = flag(
        True,
        names=("--no-overlays",),
        action="store_false",
        help="write no overlays or annotated videos",
    )
    strict: bool = flag(
        False,
        action="store_true",
        help="stop at the first image that cannot be read (default: skip it, list it in "
        "OUT/errors.jsonl)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        freeze_sequences(self, "inputs")
