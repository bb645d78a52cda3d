"""`blendmask analyze`'s outputs: the terminal table, the few lines `train` prints at its start,
and `dataset.png` (the panels users know from YOLO's labels plots: classes, instances per
image, object sizes in pixels and relative to the image, box centres, box widths x heights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blendmask.atomic import write_json
from blendmask.metrics.dataset_stats import (
    SIZE_EDGES_PX,
    SIZE_EDGES_REL,
    DatasetAnalysis,
    analyze_coco,
)
from blendmask.metrics.plots import _new_figure, save_figure


def short_summary(summary: dict[str, Any]) -> list[str]:
    """Three lines: images, instances per image, object sizes and problems."""
    im, ins, px, rel = (
        summary["images"],
        summary["instances"],
        summary["size_px"],
        summary["size_relative"],
    )
    classes = summary["classes"]
    problems = summary["mask_box_disagreements"]["count"]
    return [
        f"data: {summary['json']}: {im['count']} images ({im['width']['min']:g}-"
        f"{im['width']['max']:g} x {im['height']['min']:g}-{im['height']['max']:g} px), "
        f"{ins['count']} instances of {len(classes)} class(es), {ins['empty_images']} empty "
        f"image(s), {summary['crowd']['regions']} crowd region(s)",
        f"data: instances per image mean {ins['per_image_mean']:.1f}, p99 "
        f"{ins['per_image_p99']:g}, max {ins['per_image_max']}",
        f"data: object size (sqrt area) p5 {px['p5']:.0f} / median {px['p50']:.0f} / p95 "
        f"{px['p95']:.0f} px ({100 * rel['p5']:.1f}% / {100 * rel['p50']:.1f}% / "
        f"{100 * rel['p95']:.1f}% of the image side); {problems} mask(s) disagree with "
        "their box",
    ]


def format_table(summary: dict[str, Any]) -> str:
    """The terminal table of `analyze`: one fact a row."""
    ins, ov = summary["instances"], summary["overlap"]
    rows: list[tuple[str, str]] = [("json", summary["json"])]
    im = summary["images"]
    rows.append(("images", str(im["count"])))
    rows.append(
        (
            "image sizes (most common)",
            ", ".join(f"{k} ({v})" for k, v in im["most_common_sizes"].items()),
        )
    )
    if "missing_files" in im:
        rows.append(("image files missing", f"{im['missing_files']} {im['missing_examples']}"))
    rows.append(("empty images", str(ins["empty_images"])))
    rows.append(("instances", str(ins["count"])))
    rows.append(
        (
            "instances per image",
            f"mean {ins['per_image_mean']:.2f}, median {ins['per_image_p50']:g}, "
            f"p99 {ins['per_image_p99']:g}, max {ins['per_image_max']}",
        )
    )
    for name, count in summary["classes"].items():
        rows.append((f"class '{name}'", str(count)))
    rows.append(
        ("crowd regions", f"{summary['crowd']['regions']} in {summary['crowd']['images']} image(s)")
    )
    for key, unit, scale in (("size_px", "px", 1.0), ("size_relative", "% of side", 100.0)):
        s = summary[key]
        rows.append(
            (
                f"object size ({unit})",
                " / ".join(f"{q} {scale * s[q]:.3g}" for q in ("min", "p5", "p50", "p95", "max")),
            )
        )
    for key in ("size_px_histogram", "size_relative_histogram"):
        rows.append(
            (key.replace("_", " "), ", ".join(f"{k}: {v}" for k, v in summary[key].items()))
        )
    rows.append(("instances overlapping another", str(ov["instances_overlapping_another"])))
    for k, v in ov.items():
        if k.startswith("box_pairs"):
            rows.append((k.replace("_", " "), str(v)))
    bad = summary["mask_box_disagreements"]
    rows.append(
        (
            "masks disagreeing with their box",
            f"{bad['count']} ({bad['empty_masks']} empty) {bad['annotation_ids']}",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def save_dataset_plot(analysis: DatasetAnalysis, names: list[str], path: Path) -> Path:
    """dataset.png: six panels of the instances' statistics."""
    fig = _new_figure(15, 9)
    axes = fig.subplots(2, 3)
    counts = [int((analysis.labels == k).sum()) for k in range(len(names))]
    axes[0, 0].bar(range(len(names)), counts, color="tab:blue")
    axes[0, 0].set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes[0, 0].set_title("instances per class")
    axes[0, 1].hist(analysis.instances_per_image, bins=30, color="tab:blue")
    axes[0, 1].set_title("instances per image")
    px_edges = [*SIZE_EDGES_PX[1:-1]]
    top = max(float(analysis.sizes_px.max(initial=1.0)), px_edges[-1] * 2)
    axes[0, 2].hist(analysis.sizes_px, bins=np.geomspace(1, top, 40), color="tab:blue")
    axes[0, 2].set_xscale("log")
    for edge in px_edges:
        axes[0, 2].axvline(edge, color="0.7", lw=0.5)
    axes[0, 2].set_title("object size sqrt(area), px")
    rel_top = SIZE_EDGES_REL[-2] * 2
    axes[1, 0].hist(analysis.sizes_rel, bins=np.geomspace(1e-3, rel_top, 40), color="tab:blue")
    axes[1, 0].set_xscale("log")
    axes[1, 0].set_title("object size relative to the image")
    for ax, xy, title, lim in (
        (axes[1, 1], analysis.centers_rel, "box centres (x, y relative)", 1.0),
        (axes[1, 2], analysis.boxes_wh_rel, "box width x height (relative)", 1.0),
    ):
        ax.hist2d(xy[:, 0], xy[:, 1], bins=50, range=[[0, lim], [0, lim]], cmap="Blues")
        ax.set_title(title)
    axes[1, 1].invert_yaxis()
    fig.suptitle(analysis.summary["json"])
    return save_figure(fig, path)


def analyze_to(
    json_path: str | Path, images_dir: str | Path | None, out: str | Path | None
) -> DatasetAnalysis:
    """`analyze_coco`, and with `out`, OUT/dataset.json and OUT/dataset.png."""
    analysis = analyze_coco(json_path, images_dir)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "dataset.json", analysis.summary)
        names = list(analysis.summary["classes"])
        save_dataset_plot(analysis, names, out / "dataset.png")
    return analysis
