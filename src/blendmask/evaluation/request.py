"""`EvalRequest`: the flags of `blendmask eval`, written once (see `config.flags`), and
`PostprocessRequest`, its post-processing flags (--conf, --iou, --max-det, --classes, --set),
which `prediction.request.PredictRequest` takes too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blendmask.config.flags import (
    DEVICE_HELP,
    DEVICES,
    class_list,
    flag,
    freeze_sequences,
    non_negative_int,
    positive_int,
    probability,
)
from blendmask.predictor import INFERENCE_KEYS
from blendmask.runtime.precision import PRECISIONS


def score_threshold_flag(default: float | None) -> Any:
    """--conf with `default` (None: keep every detection the model gives, i.e. its candidates
    above `model.fcos.inference_th_test`); a command's request redeclares the field with its
    own default."""
    keep = "every detection the model gives" if default is None else default
    return flag(
        default,
        names=("--conf",),
        aliases=("--score-threshold",),
        parse=probability,
        metavar="CONF",
        help=f"keep detections scoring at least this (default: {keep}); below the model's "
        "candidate threshold it lowers that too: 0 keeps every candidate, up to --max-det",
    )


@dataclass(frozen=True, kw_only=True)
class PostprocessRequest:
    """The knobs of `Predictor.from_checkpoint` a command takes from its flags (eval's
    defaults: every detection counts, AP needs the low scores)."""

    score_threshold: float | None = score_threshold_flag(None)
    nms_iou: float | None = flag(
        None,
        names=("--iou",),
        parse=probability,
        metavar="IOU",
        help="NMS IoU (default: the model's, 0.6)",
    )
    max_detections: int | None = flag(
        None,
        names=("--max-det",),
        aliases=("--max-detections",),
        parse=positive_int,
        metavar="MAX_DET",
        help="detections per image after NMS (default: the model's, 100); in eval also "
        "the maxDets COCO counts (default 100)",
    )
    classes: Sequence[int | str] | None = flag(
        None,
        parse=class_list,
        help="keep only these classes: names or 0-based labels, comma separated",
    )
    overrides: Sequence[str] = flag(
        (),
        names=("--set",),
        action="append",
        metavar="KEY=VALUE",
        help=f"change an inference setting of the model's config (repeatable): "
        f"{', '.join(INFERENCE_KEYS)}",
    )

    precision: str = flag(
        "fp32",
        choices=PRECISIONS,
        help="network number format (default fp32); auto: bf16 where this machine's probe "
        "finds it faster and its masks pass the gate on the first images (IoU >= 0.98)",
    )

    def __post_init__(self) -> None:
        freeze_sequences(self, "classes", "overrides")

    def knobs(self) -> dict[str, Any]:
        """`nms_iou`, `max_detections`, `classes` (a list, as a settings file holds it) and a
        non-fp32 `precision`: the
        keyword arguments of `Predictor.from_checkpoint` besides the threshold and --set."""
        classes = None if self.classes is None else list(self.classes)
        knobs = {"nms_iou": self.nms_iou, "max_detections": self.max_detections, "classes": classes}
        # fp32 stays out of the settings so that folders predicted before --precision resume.
        return knobs | ({} if self.precision == "fp32" else {"precision": self.precision})


@dataclass(frozen=True, kw_only=True)
class EvalRequest(PostprocessRequest):
    """`blendmask eval`: a model file (`weights`) on `json` / `images`, a results json
    (`results`) against `json`, or a panoptic model on `panoptic_json` / `panoptic_images`."""

    weights: str | Path | None = flag(
        None, group="source", help="model file (model.pt) to evaluate"
    )
    # --results scores a results json instead of running a model: the two exclude each other.
    results: str | Path | None = flag(
        None, group="source", help="score a COCO results json without a model"
    )
    json: str | Path | None = flag(None, help="ground-truth COCO instances json")
    images: str | Path | None = flag(None, help="folder of the json's images")
    out: str | Path = flag(required=True, help="writes OUT/metrics.json, OUT/results.json")
    device: str = flag("auto", choices=DEVICES, help=DEVICE_HELP)
    batch_size: int = flag(1, parse=positive_int, help="images per forward pass (default 1)")
    num_workers: int = flag(
        2,
        parse=non_negative_int,
        help="DataLoader processes decoding images (default 2; 0: the main process)",
    )
    plots: bool = flag(
        False,
        action="store_true",
        help="also write OUT/plots/pr_curves.png (precision-recall per IoU) and "
        "OUT/plots/sheet.png (ground truth / predictions of a few images, misses and false "
        "positives marked)",
    )
    panoptic_json: str | Path | None = flag(
        None,
        help="COCO panoptic json: PQ / SQ / RQ of a panoptic model (with --panoptic-images, "
        "--images; --json adds the instance AP)",
    )
    panoptic_images: str | Path | None = flag(None, help="folder of the panoptic PNGs")
