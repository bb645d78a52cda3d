"""The accuracy gate of an int8 end-to-end file (issue 25): does it segment the user's images as
the fp32 file does?

Unlike `compare.py` (exact parity: score difference <= 1e-4), int8 moves every score a little,
so detections are paired as an evaluation pairs them: greedily in the fp32 file's order (by
decreasing score), each with the unpaired int8 detection of the same label and the highest box
IoU, if that IoU is at least `MIN_PAIR_BOX_IOU`. On these same detections the gate asks for a
mean mask IoU >= `GATE_MASK_IOU` (0.98, the bf16 gate's figure: `runtime/precision.py`), and
for `MIN_MATCHED` of the fp32 detections to have a pair: masks that agree are worth little if
int8 loses the objects. Score differences are reported (max and mean over the pairs).

Numpy only: both sides are `onnx_runtime.Segmentation`s (or anything `compare.as_arrays` reads).

Shapes: D / E detections of the fp32 / int8 side, H0/W0 original image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blendmask.export.compare import Arrays, as_arrays, box_iou, mask_iou

GATE_MASK_IOU = 0.98  # = runtime.precision.GATE_MASK_IOU (this module imports no torch)
MIN_MATCHED = 0.95
MIN_PAIR_BOX_IOU = 0.5  # COCO's loosest match: a pair is the same object, not the same pixels


@dataclass
class Int8Report:
    """The gate's figures over all images; `passed()` applies its thresholds."""

    images: int = 0
    expected: int = 0  # fp32 detections
    got: int = 0  # int8 detections
    matched: int = 0
    mask_ious: list[float] = field(default_factory=list)
    score_diffs: list[float] = field(default_factory=list)

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.expected if self.expected else 1.0

    @property
    def mean_mask_iou(self) -> float:
        return float(np.mean(self.mask_ious)) if self.mask_ious else 1.0

    def passed(self) -> bool:
        return self.matched_fraction >= MIN_MATCHED and self.mean_mask_iou >= GATE_MASK_IOU

    def summary(self) -> dict[str, Any]:
        """The figures as JSON values (stored in the int8 file's metadata)."""
        return {
            "images": self.images,
            "fp32_detections": self.expected,
            "int8_detections": self.got,
            "matched": self.matched,
            "mean_mask_iou": round(self.mean_mask_iou, 5),
            "min_mask_iou": round(min(self.mask_ious, default=1.0), 5),
            "max_score_diff": round(max(self.score_diffs, default=0.0), 5),
            "mean_score_diff": round(float(np.mean(self.score_diffs)), 5)
            if self.score_diffs
            else 0.0,
            "thresholds": {"mean_mask_iou": GATE_MASK_IOU, "matched_fraction": MIN_MATCHED},
            "passed": self.passed(),
        }

    def line(self) -> str:
        s = self.summary()
        return (
            f"{s['images']} image(s): {s['matched']}/{s['fp32_detections']} fp32 detections "
            f"matched ({s['int8_detections']} int8), mean mask IoU {s['mean_mask_iou']:.4f} "
            f"(>= {GATE_MASK_IOU}; min {s['min_mask_iou']:.4f}), score diff max "
            f"{s['max_score_diff']:.4f} mean {s['mean_score_diff']:.4f}: "
            + ("PASS" if self.passed() else "FAIL")
        )


def add_image(report: Int8Report, want: Arrays, got: Arrays) -> None:
    """Pair one image's fp32 (`want`) and int8 (`got`) detections and add them to `report`."""
    boxes_w, scores_w, labels_w, masks_w = want
    boxes_g, scores_g, labels_g, masks_g = got
    report.images += 1
    report.expected += len(scores_w)
    report.got += len(scores_g)
    ious = box_iou(boxes_w, boxes_g)
    free = np.ones(len(scores_g), dtype=bool)
    for i in np.argsort(-scores_w, kind="stable"):
        options = np.flatnonzero(free & (labels_g == labels_w[i]))
        if len(options) == 0:
            continue
        j = int(options[np.argmax(ious[i, options])])
        if ious[i, j] < MIN_PAIR_BOX_IOU:
            continue
        free[j] = False
        report.matched += 1
        report.mask_ious.append(mask_iou(masks_w[i], masks_g[j]))
        report.score_diffs.append(abs(float(scores_w[i]) - float(scores_g[j])))


def gate(
    fp32: Callable[[Any], Any], int8: Callable[[Any], Any], images: Iterable[Any]
) -> Int8Report:
    """Run both (e.g. two `OnnxSegmenter`s) on every image and pair their detections."""
    report = Int8Report()
    for image in images:
        add_image(report, as_arrays(fp32(image)), as_arrays(int8(image)))
    return report
