"""Pictures of a COCO evaluation (`blendmask eval --plots`): precision-recall curves and a
ground truth / prediction sheet.

- `OUT/plots/pr_curves.png`: for `bbox` and `segm`, precision against recall at IoU 0.50, at
  0.75 and averaged over 0.50:0.95, from pycocotools' accumulated `COCOeval.eval["precision"]`
  (T IoUs x R recalls x K categories x A areas x M maxDets; area "all", the last maxDets,
  mean over the categories with ground truth). The mean of a curve is the AP of the metrics.
- `OUT/plots/sheet.png`: for the first few images (by id), the ground truth on the left and
  the predictions above a score threshold on the right. Predictions are matched to ground
  truth of their category greedily by score at mask IoU >= 0.5 (pycocotools' `mask.iou`, as
  COCOeval matches at that threshold); a matched pair shares a colour, a missed ground-truth
  object is outlined in magenta on both sides, and a false positive gets a dashed red box and
  an "FP" label.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.atomic import atomic_write
from blendmask.io import load_image
from blendmask.metrics.coco import load_coco_gt
from blendmask.metrics.results import load_results_json
from blendmask.structures.paste import MaskWindow
from blendmask.visualization import (
    Color,
    draw_dashed_boxes,
    draw_instances,
    draw_labels,
    instance_color,
    overlay_sizes,
    paint_windows,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

PR_CURVES_FILE = "pr_curves.png"
SHEET_FILE = "sheet.png"
# `blendmask predict`'s default --score-threshold: the sheet shows what predict would keep.
SHEET_SCORE_THRESHOLD = 0.3
MISSED_COLOR: Color = (255, 0, 255)
FALSE_POSITIVE_COLOR: Color = (230, 20, 20)
CROWD_COLOR: Color = (150, 150, 150)


def write_eval_plots(
    gt: COCO | str | Path,
    results: Sequence[dict[str, Any]] | str | Path,
    images_dir: str | Path | None,
    out_dir: str | Path,
    *,
    num_images: int = 4,
    score_threshold: float = SHEET_SCORE_THRESHOLD,
) -> dict[str, Path]:
    """Write `out_dir/pr_curves.png` and, with `images_dir`, `out_dir/sheet.png`.

    Args:
        gt: the ground truth (COCO object or json path); results: COCO results (list or
            json path; a path is validated by `load_results_json`).
        images_dir: the folder of the ground truth's images (None: no sheet).
    Returns:
        {"pr_curves": path, "sheet": path} of the files written.
    """
    coco_gt = load_coco_gt(gt)
    if isinstance(results, (str, Path)):
        results = load_results_json(results, coco_gt)
    out_dir = Path(out_dir)
    written = {
        "pr_curves": save_figure(pr_curves_figure(coco_gt, results), out_dir / PR_CURVES_FILE)
    }
    if images_dir is not None:
        figure = sheet_figure(
            coco_gt,
            results,
            Path(images_dir),
            num_images=num_images,
            score_threshold=score_threshold,
        )
        written["sheet"] = save_figure(figure, out_dir / SHEET_FILE)
    logger.info("eval plots: %s", ", ".join(str(p) for p in written.values()))
    return written


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """The figure as a PNG at `path`, whole or not at all (`atomic_write`)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas, outside pyplot's global state; the constrained
    layout keeps titles, the suptitle and the panels apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Precision-recall curves
# ---------------------------------------------------------------------------------------------


def accumulated_eval(
    coco_gt: COCO, results: Sequence[dict[str, Any]], iou_type: str
) -> COCOeval | None:
    """COCOeval of `results` for one IoU type after `accumulate()`, as `metrics.coco` runs
    it (segm without the results' boxes); None when the results cannot be scored that way
    (no results, or box-only results for segm)."""
    if iou_type == "segm":
        copies = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        if not copies or "segmentation" not in copies[0]:
            return None
    else:
        copies = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        if not copies or "bbox" not in copies[0]:
            return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copies), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def precision_curves(evaluator: COCOeval) -> dict[str, np.ndarray]:
    """Precision at each of COCO's 101 recall thresholds, per IoU: {"0.50", "0.75",
    "0.50:0.95"} -> float[R], the mean over categories (and IoUs) of the cells that have
    ground truth (pycocotools writes -1 in the others); NaN where none has."""
    params = evaluator.params
    # (T iou, R recall, K category) at area "all" and the largest maxDets
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
    selections = {
        "0.50": np.isclose(params.iouThrs, 0.5),
        "0.75": np.isclose(params.iouThrs, 0.75),
        "0.50:0.95": np.ones(len(params.iouThrs), dtype=bool),
    }
    curves = {}
    for name, rows in selections.items():
        cells = precision[rows]  # (t, R, K)
        valid = cells > -1
        total = np.where(valid, cells, 0.0).sum(axis=(0, 2))
        count = valid.sum(axis=(0, 2))
        curves[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return curves


def pr_curves_figure(coco_gt: COCO, results: Sequence[dict[str, Any]]) -> Figure:
    """bbox and segm precision-recall curves side by side (see the module docs)."""
    fig = _new_figure(10, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, iou_type in zip(axes, ("bbox", "segm")):
        evaluator = accumulated_eval(coco_gt, results, iou_type)
        ax.set_title(f"{iou_type} precision-recall (all areas)")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if evaluator is None:
            ax.text(0.5, 0.5, f"no {iou_type} results", ha="center", va="center")
            continue
        recall = evaluator.params.recThrs
        for (name, curve), style in zip(precision_curves(evaluator).items(), ("-", "--", ":")):
            ap = float(np.nanmean(curve)) if np.isfinite(curve).any() else float("nan")
            ax.plot(recall, curve, style, linewidth=2, label=f"IoU {name}: AP {ap:.3f}")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("precision")
    return fig


# ---------------------------------------------------------------------------------------------
# Ground truth / prediction sheet
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageMatch:
    """How one image's predictions meet its ground truth.

    gt_match[g]: the prediction matched to ground truth g (-1: missed; -2: a crowd region,
    never missed). fp[d]: prediction d matched nothing (a crowd region absorbs a prediction
    without a match, as in COCOeval).
    """

    gt_match: list[int]
    fp: list[bool]


def match_image(
    gt_anns: Sequence[dict[str, Any]],
    gt_rles: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]],
    iou_threshold: float = 0.5,
) -> ImageMatch:
    """Greedy matching by decreasing score (`predictions` come sorted so) at mask IoU >=
    `iou_threshold`, within a category, each ground-truth object matched once; the best
    remaining IoU wins."""
    crowd = [bool(a.get("iscrowd", 0)) for a in gt_anns]
    gt_match = [-2 if c else -1 for c in crowd]
    fp = [True] * len(predictions)
    if not predictions or not gt_anns:
        return ImageMatch(gt_match, fp)
    ious = np.asarray(
        mask_util.iou([p["segmentation"] for p in predictions], list(gt_rles), crowd)
    ).reshape(len(predictions), len(gt_anns))
    for d, prediction in enumerate(predictions):
        same = [a["category_id"] == prediction["category_id"] for a in gt_anns]
        free = [g for g in range(len(gt_anns)) if same[g] and gt_match[g] == -1]
        best = max(free, key=lambda g: ious[d, g], default=None)
        if best is not None and ious[d, best] >= iou_threshold:
            gt_match[best] = d
            fp[d] = False
        elif any(crowd[g] and same[g] and ious[d, g] >= iou_threshold for g in range(len(crowd))):
            fp[d] = False
    return ImageMatch(gt_match, fp)


def rle_windows(rles: Sequence[dict[str, Any]]) -> Iterator[MaskWindow]:
    """Each RLE mask as a window of the image around its pixels (`MaskWindow`), decoded one
    at a time: memory bounded by the image, whatever the number of masks."""
    for d, rle in enumerate(rles):
        mask = torch.from_numpy(mask_util.decode(rle)).bool()
        ys, xs = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        yield d, x0, y0, mask[y0:y1, x0:x1].clone()


def xywh_to_xyxy(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    t = torch.tensor([list(b) for b in boxes], dtype=torch.float32).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def _result_boxes(predictions: Sequence[dict[str, Any]]) -> torch.Tensor:
    boxes = [
        p["bbox"] if "bbox" in p else mask_util.toBbox(p["segmentation"]).tolist()
        for p in predictions
    ]
    return xywh_to_xyxy(boxes)


def sheet_figure(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    images_dir: Path,
    *,
    num_images: int = 4,
    score_threshold: float = SHEET_SCORE_THRESHOLD,
) -> Figure:
    """The first `num_images` images (by id): ground truth left, predictions right."""
    image_ids = sorted(coco_gt.getImgIds())[:num_images]
    kept: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            kept.setdefault(int(r["image_id"]), []).append(r)
    first = coco_gt.imgs[image_ids[0]] if image_ids else {"height": 1, "width": 1}
    panel_h = 4.5 * first["height"] / max(first["width"], 1)
    fig = _new_figure(9.4, panel_h * max(len(image_ids), 1) + 1.0)
    axes = fig.subplots(max(len(image_ids), 1), 2, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for (left, right), image_id in zip(axes, image_ids):
        predictions = sorted(kept.get(image_id, []), key=lambda r: -r["score"])
        gt_panel, pred_panel, titles = image_panels(coco_gt, image_id, predictions, images_dir)
        left.imshow(gt_panel.permute(1, 2, 0).numpy())
        right.imshow(pred_panel.permute(1, 2, 0).numpy())
        left.set_title(titles[0], fontsize=8)
        right.set_title(titles[1], fontsize=8)
    fig.suptitle(
        "left: ground truth, in the colour of its matched prediction (mask IoU >= 0.5); "
        f"right: predictions with score >= {score_threshold:.2f}\n"
        "magenta outline: missed object;  dashed red box, FP: false positive",
        fontsize=9,
    )
    return fig


def image_panels(
    coco_gt: COCO, image_id: int, predictions: Sequence[dict[str, Any]], images_dir: Path
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """(ground-truth panel, prediction panel, their titles) of one image; `predictions` by
    decreasing score."""
    info = coco_gt.imgs[image_id]
    path = images_dir / info["file_name"]
    image = torch.from_numpy(np.asarray(load_image(path)).copy()).permute(2, 0, 1)
    if tuple(image.shape[-2:]) != (int(info["height"]), int(info["width"])):
        raise ValueError(
            f"{path} is {image.shape[-1]} x {image.shape[-2]} px but the json says "
            f"{info['width']} x {info['height']} (image id {image_id})"
        )
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
    gt_rles = [coco_gt.annToRLE(a) for a in anns]
    match = match_image(anns, gt_rles, predictions)
    colors = [instance_color(rank) for rank in range(len(predictions))]
    names = {c["id"]: c.get("name", str(c["id"])) for c in coco_gt.dataset["categories"]}
    gt_panel = _ground_truth_panel(image, anns, gt_rles, match, colors, names)
    missed = [gt_rles[g] for g, m in enumerate(match.gt_match) if m == -1]
    pred_panel = _prediction_panel(image, predictions, match, colors, names, missed)
    num_fp, num_missed = sum(match.fp), len(missed)
    titles = (
        f"{Path(info['file_name']).name}: {sum(m != -2 for m in match.gt_match)} objects, "
        f"{num_missed} missed",
        f"{len(predictions)} predictions, {num_fp} false positive{'s' * (num_fp != 1)}",
    )
    return gt_panel, pred_panel, titles


def _ground_truth_panel(
    image: torch.Tensor,
    anns: Sequence[dict[str, Any]],
    rles: Sequence[dict[str, Any]],
    match: ImageMatch,
    pred_colors: Sequence[Color],
    names: dict[int, str],
) -> torch.Tensor:
    """Crowd regions, matched objects, then missed ones (drawn last: on top)."""
    order = sorted(
        range(len(anns)), key=lambda g: (match.gt_match[g] != -2, match.gt_match[g] == -1)
    )
    colors, texts = [], []
    for g in order:
        name, m = names.get(anns[g]["category_id"], "?"), match.gt_match[g]
        if m >= 0:
            colors.append(pred_colors[m])
            texts.append(name)
        elif m == -1:
            colors.append(MISSED_COLOR)
            texts.append(f"missed {name}")
        else:
            colors.append(CROWD_COLOR)
            texts.append(f"crowd {name}")
    boxes = xywh_to_xyxy([anns[g]["bbox"] for g in order])
    return draw_instances(image, rle_windows([rles[g] for g in order]), boxes, colors, texts)


def _prediction_panel(
    image: torch.Tensor,
    predictions: Sequence[dict[str, Any]],
    match: ImageMatch,
    colors: Sequence[Color],
    names: dict[int, str],
    missed_rles: Sequence[dict[str, Any]],
) -> torch.Tensor:
    """Predictions (lowest score first, so the best is on top), the missed objects' outlines,
    dashed boxes around the false positives, then the labels over everything."""
    order = list(range(len(predictions)))[::-1]
    boxes = _result_boxes([predictions[d] for d in order])
    canvas = draw_instances(
        image,
        rle_windows([predictions[d]["segmentation"] for d in order]),
        boxes,
        [colors[d] for d in order],
        None,
    )
    font_size, line_width, contour_width = overlay_sizes(*image.shape[-2:])
    canvas = paint_windows(
        canvas,
        rle_windows(missed_rles),
        [MISSED_COLOR] * len(missed_rles),
        alpha=0.0,  # outline only: the object was not predicted
        contour_width=contour_width,
    )
    fp = [match.fp[d] for d in order]
    fp_boxes = boxes[torch.tensor(fp, dtype=torch.bool)]
    canvas = draw_dashed_boxes(canvas, fp_boxes, FALSE_POSITIVE_COLOR, width=line_width + 1)
    texts, label_colors = [], []
    for d, is_fp in zip(order, fp):
        text = f"{names.get(predictions[d]['category_id'], '?')} {predictions[d]['score']:.2f}"
        texts.append(f"FP {text}" if is_fp else text)
        label_colors.append(FALSE_POSITIVE_COLOR if is_fp else colors[d])
    if texts:
        canvas = draw_labels(canvas, boxes, texts, label_colors, font_size=font_size)
    return canvas
