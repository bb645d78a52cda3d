"""`blendmask eval`'s printout: the COCO summary table and the AP of each category, from the
metrics `metrics.coco` computes (fractions; printed in percent, -1 when undefined)."""

from __future__ import annotations

from typing import Any

from blendmask.metrics.coco import IOU_TYPES, STAT_NAMES


def _percent(value: float, width: int = 6) -> str:
    """A fraction as percent with two decimals; -1 (undefined) as -1."""
    return f"{100 * value:{width}.2f}" if value >= 0 else f"{-1:{width}d}"


def format_tables(metrics: dict[str, Any]) -> str:
    """`eval`'s printout of its metrics: the COCO summary (one row per IoU type: AP, AP50,
    AP75, APs, APm, APl in percent) and, when `metrics` has `per_category`, a table of each
    category's bbox and segm AP (-1: no ground truth)."""
    iou_types = [t for t in IOU_TYPES if f"{t}_AP" in metrics]
    lines = [f"{'':<6}" + "".join(f"{n:>8}" for n in STAT_NAMES)]
    for iou_type in iou_types:
        stats = [metrics.get(f"{iou_type}_{n}", -1.0) for n in STAT_NAMES]
        lines.append(f"{iou_type:<6}" + "".join(_percent(v, 8) for v in stats))
    per_category = metrics.get("per_category") or {}
    if per_category:
        width = max(len("category"), *(len(name) for name in per_category))
        lines += ["", f"{'category':<{width}}" + "".join(f"{t + ' AP':>10}" for t in iou_types)]
        for name, aps in per_category.items():
            cells = "".join(_percent(aps.get(f"{t}_AP", -1.0), 10) for t in iou_types)
            lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)
