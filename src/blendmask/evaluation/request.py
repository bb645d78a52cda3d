"""The post-processing flags of `predict` and `eval` (--conf, --iou, --max-det, --classes,
--set), one frozen request whose fields both commands' requests take (`config.flags`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blendmask.config.flags import class_list, flag, freeze_sequences, positive_int, probability
from blendmask.predictor import INFERENCE_KEYS


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

    def __post_init__(self) -> None:
        freeze_sequences(self, "classes", "overrides")

    def knobs(self) -> dict[str, Any]:
        """`nms_iou`, `max_detections`, `classes` (a list, as a settings file holds it): the
        keyword arguments of `Predictor.from_checkpoint` besides the threshold and --set."""
        classes = None if self.classes is None else list(self.classes)
        return {"nms_iou": self.nms_iou, "max_detections": self.max_detections, "classes": classes}
