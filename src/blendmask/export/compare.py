"""Does an exported pipeline give the PyTorch `Predictor`'s detections? Detection-level matching
with the export's acceptance figures: every detection matched one to one (same label, box IoU
>= 0.999, score difference <= 1e-4) and mean mask IoU >= 0.99.

Boxes with a side under one pixel are held to the coordinate tolerance box IoU >= 0.999 gives
a one-pixel box (1e-3 px per coordinate) instead of their own IoU (`boxes_match`): on the same
network outputs both paths give the same bits (their box arithmetic is one set of functions,
`postprocess.decode_boxes` / `rescale_boxes`), but onnxruntime's and PyTorch's convolutions sum
in different orders, so a regression near 0 differs by ~1e-6 in stride units and a coordinate
by one float32 step (6.1e-5 px at 512-1023 px, 1.2e-4 px at 1024-2047 px). For a box 0.017 px
wide that one step is IoU 0.9965: IoU >= 0.999 would ask for bit-equal convolutions.

Used by the tests, `blendmask export --check-images` and benchmarks/onnx_parity.py. Works on
numpy arrays (`as_arrays` takes `Detections` or `Segmentation`s alike).

Shapes: D / E detections of the two sides, H0/W0 original image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# (boxes float[D, 4], scores float[D], labels int[D], masks bool[D, H0, W0])
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

MIN_BOX_IOU = 0.999
MAX_SCORE_DIFF = 1e-4
MIN_MEAN_MASK_IOU = 0.99
# Boxes with a side below MIN_IOU_SIDE px are compared by coordinates: each within BOX_ATOL px,
# the shift IoU >= MIN_BOX_IOU allows one coordinate of a MIN_IOU_SIDE box (see the docstring).
MIN_IOU_SIDE = 1.0
BOX_ATOL = 1e-3  # = (1 - MIN_BOX_IOU) * MIN_IOU_SIDE


def as_arrays(detections: Any) -> Arrays:
    """`Detections` (torch) or `Segmentation` (numpy) -> numpy (boxes, scores, labels, masks)."""

    def numpy(x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)

    return (
        numpy(detections.boxes).astype(np.float64),
        numpy(detections.scores).astype(np.float64),
        numpy(detections.labels).astype(np.int64),
        numpy(detections.masks).astype(bool),
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float[D, 4] x float[E, 4] xyxy -> float[D, E] IoU (0 where a union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def min_side(box: np.ndarray) -> float:
    """The shorter side of an xyxy box (float[4]), in pixels."""
    return float(min(box[2] - box[0], box[3] - box[1]))


def boxes_match(a: np.ndarray, b: np.ndarray, iou: float) -> bool:
    """Are two xyxy boxes (float[4]) with IoU `iou` the same detection's box? IoU >= MIN_BOX_IOU
    when both have sides >= MIN_IOU_SIDE; otherwise every coordinate within BOX_ATOL px (a
    sub-pixel box is no more precise in pixels than a one-pixel box, see the module docstring).
    """
    if min(min_side(a), min_side(b)) >= MIN_IOU_SIDE:
        return iou >= MIN_BOX_IOU
    return float(np.abs(a - b).max()) <= BOX_ATOL


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool[H0, W0] masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass
class ParityReport:
    """Figures over all compared images; `passed()` applies the acceptance thresholds."""

    images: int = 0
    expected: int = 0  # detections of the reference (Predictor)
    got: int = 0  # detections of the export
    matched: int = 0
    min_box_iou: float = 1.0  # over pairs of boxes with sides >= MIN_IOU_SIDE
    max_score_diff: float = 0.0
    max_box_diff: float = 0.0  # largest |coordinate difference| of a pair, in pixels
    # Pairs with a side below MIN_IOU_SIDE (compared by coordinates): count, their largest
    # coordinate difference and, for information only, their lowest IoU.
    subpixel_pairs: int = 0
    max_subpixel_box_diff: float = 0.0
    min_subpixel_box_iou: float = 1.0
    mask_ious: list[float] = field(default_factory=list)
    # Label-matched pairs that miss a threshold: {"box", "iou", "score_diff", "min_side"}.
    misses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean_mask_iou(self) -> float:
        return float(np.mean(self.mask_ious)) if self.mask_ious else 1.0

    def passed(self) -> bool:
        return (
            self.matched == self.expected == self.got
            and self.min_box_iou >= MIN_BOX_IOU
            and self.max_subpixel_box_diff <= BOX_ATOL
            and self.max_score_diff <= MAX_SCORE_DIFF
            and self.mean_mask_iou >= MIN_MEAN_MASK_IOU
        )

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("mask_ious")
        out["mean_mask_iou"] = self.mean_mask_iou
        out["min_mask_iou"] = min(self.mask_ious) if self.mask_ious else 1.0
        out["passed"] = self.passed()
        return out

    def line(self) -> str:
        text = (
            f"{self.images} image(s): {self.matched}/{self.expected} detections matched "
            f"({self.got} exported), min box IoU {self.min_box_iou:.6f}, max box coordinate "
            f"diff {self.max_box_diff:.2e} px, max score diff {self.max_score_diff:.2e}, mean "
            f"mask IoU {self.mean_mask_iou:.4f}: " + ("PASS" if self.passed() else "FAIL")
        )
        if self.subpixel_pairs:
            text += (
                f"; {self.subpixel_pairs} sub-pixel box(es) within "
                f"{self.max_subpixel_box_diff:.2e} px (IoU >= {self.min_subpixel_box_iou:.4f})"
            )
        if self.misses:
            sides = ", ".join(f"{m['min_side']:.3g}" for m in self.misses[:5])
            text += f" ({len(self.misses)} pair(s) below a threshold; their shorter box sides: {sides} px)"
        return text

    def add_pair(self, want: np.ndarray, got: np.ndarray, iou: float, score_diff: float) -> None:
        """One label-matched pair of boxes (float[4]) with their IoU and score difference."""
        diff = float(np.abs(want - got).max())
        self.max_score_diff = max(self.max_score_diff, score_diff)
        self.max_box_diff = max(self.max_box_diff, diff)
        if min(min_side(want), min_side(got)) >= MIN_IOU_SIDE:
            self.min_box_iou = min(self.min_box_iou, iou)
        else:
            self.subpixel_pairs += 1
            self.max_subpixel_box_diff = max(self.max_subpixel_box_diff, diff)
            self.min_subpixel_box_iou = min(self.min_subpixel_box_iou, iou)
        if boxes_match(want, got, iou) and score_diff <= MAX_SCORE_DIFF:
            self.matched += 1
        else:
            self.misses.append(
                {
                    "box": [round(float(v), 4) for v in want],
                    "iou": iou,
                    "score_diff": score_diff,
                    "min_side": min_side(want),
                }
            )


def add_image(report: ParityReport, want: Arrays, got: Arrays) -> None:
    """Match one image's detections (greedy, by the reference's order: the unmatched export
    detection of the same label with the highest box IoU, then the closest coordinates) and
    add them to `report`. A pair counts as matched when its boxes match (`boxes_match`) and
    its score difference passes; the mask IoU of every label-matched pair enters the mean."""
    boxes_w, scores_w, labels_w, masks_w = want
    boxes_g, scores_g, labels_g, masks_g = got
    report.images += 1
    report.expected += len(scores_w)
    report.got += len(scores_g)
    ious = box_iou(boxes_w, boxes_g)
    free = np.ones(len(scores_g), dtype=bool)
    for i in range(len(scores_w)):
        options = np.flatnonzero(free & (labels_g == labels_w[i]))
        if len(options) == 0:
            report.min_box_iou = min(report.min_box_iou, 0.0)
            continue
        # Highest IoU, ties (sub-pixel boxes can have IoU 0) by the closest coordinates.
        closeness = np.abs(boxes_g[options] - boxes_w[i]).max(axis=1)
        j = int(options[np.lexsort((closeness, -ious[i, options]))[0]])
        free[j] = False
        diff = abs(float(scores_w[i]) - float(scores_g[j]))
        report.add_pair(boxes_w[i], boxes_g[j], float(ious[i, j]), diff)
        report.mask_ious.append(mask_iou(masks_w[i], masks_g[j]))


def compare(
    reference: Callable[[Any], Any], exported: Callable[[Any], Any], images: Iterable[Any]
) -> ParityReport:
    """Run both on every image (one at a time) and match their detections.

    reference: e.g. `lambda im: predictor([im])[0]`; exported: e.g. an `OnnxSegmenter`. Both
    return objects with boxes / scores / labels / masks at the original size.
    """
    report = ParityReport()
    for image in images:
        add_image(report, as_arrays(reference(image)), as_arrays(exported(image)))
    return report
