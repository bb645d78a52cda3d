"""Tables and plot of `ablations.py`'s results: mean and spread over seeds per configuration,
laid out as the paper's Tables 1, 2, 3, 5 and 6, the attention-specificity table, and mask AP
against the attention size M for R = 28 / 56.

`write_report(results)` replaces the block between `<!-- ablations:begin -->` and
`<!-- ablations:end -->` in docs/ablations.md and writes docs/images/ablations_ap_vs_m.png.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from common import REPO

from blendmask.atomic import atomic_write

DOC = REPO / "docs" / "ablations.md"
PLOT = REPO / "docs" / "images" / "ablations_ap_vs_m.png"
BEGIN, END = "<!-- ablations:begin -->", "<!-- ablations:end -->"
COLUMNS = (
    ("segm_AP", "mask AP"),
    ("segm_AP50", "AP50"),
    ("segm_AP75", "AP75"),
    ("bbox_AP", "box AP"),
)

# (title, rows of (label, "dataset/name")), in the paper's order.
TABLES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Table 1 (shapes): merging the top and bottom modules",
        [
            ("weighted sum (YOLACT; M = 1, K = 4)", "shapes/M1_R28"),
            ("assembler (FCIS; K = 16 = 4 x 4, fixed one-hot, nearest)", "shapes/fcis"),
            ("blender (K = 4, M = 7)", "shapes/base"),
        ],
    ),
    (
        "Table 1 (nuclei): merging the top and bottom modules",
        [
            ("weighted sum (YOLACT; M = 1, K = 4)", "nuclei/M1_R28"),
            ("assembler (FCIS; K = 16 = 4 x 4, fixed one-hot, nearest)", "nuclei/fcis"),
            ("blender (K = 4, M = 7)", "nuclei/base"),
        ],
    ),
    (
        "Table 2 (shapes): bottom resolution R and attention size M (K = 4)",
        [
            (f"R = {r}, M = {m}", "shapes/base" if (m, r) == (7, 28) else f"shapes/M{m}_R{r}")
            for r in (28, 56)
            for m in (1, 2, 4, 7, 14)
        ],
    ),
    (
        "Table 3 (shapes): number of bases K (R = 28, M = 7)",
        [
            ("K = 1 (sigmoid on both sides)", "shapes/K1"),
            ("K = 2", "shapes/K2"),
            ("K = 4", "shapes/base"),
            ("K = 8", "shapes/K8"),
        ],
    ),
    (
        "Table 5 (shapes): top interpolation (attention M x M -> R x R)",
        [("nearest", "shapes/top_nearest"), ("bilinear", "shapes/base")],
    ),
    (
        "Table 6 (shapes): bottom pooling (bases -> R x R)",
        [("nearest (RoIPool-like)", "shapes/pool_nearest"), ("bilinear (RoIAlign)", "shapes/base")],
    ),
    (
        "Not in the paper (shapes): the assembler taken apart, one change per row",
        [
            ("blender (K = 4, M = 7, bilinear, learned)", "shapes/base"),
            ("blender with 16 bases (K = 16, M = 7, bilinear, learned)", "shapes/K16"),
            ("assembler with learned attention (K = 16, M = 4, nearest)", "shapes/fcis_learned"),
            ("assembler (K = 16, M = 4, nearest, fixed one-hot)", "shapes/fcis"),
        ],
    ),
]


def by_config(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The records of each `dataset/name`, in seed order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in results.get("runs", {}).values():
        groups.setdefault(f"{record['dataset']}/{record['name']}", []).append(record)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaNs dropped."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, sd = mean_sd(values)
    if math.isnan(mean):
        return "-"
    if sum(1 for v in values if v is not None and math.isfinite(v)) < 2:
        return f"{mean * scale:.{digits}f}"  # one seed: no spread to show
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def metrics_table(rows: list[tuple[str, str]], groups: dict[str, list[dict]]) -> list[str]:
    head = "| configuration | " + " | ".join(c for _, c in COLUMNS)
    head += " | mask / box | CPU ms / image | seeds |"
    lines = [head, "|---|" + "---:|" * (len(COLUMNS) + 3)]
    for label, key in rows:
        records = groups.get(key, [])
        if not records:
            lines.append(f"| {label} | " + " | ".join(["not run"] * (len(COLUMNS) + 2)) + " | 0 |")
            continue
        cells = [_cell([r["metrics"].get(m, math.nan) for r in records]) for m, _ in COLUMNS]
        # mask AP per box AP: the mask quality with the detector's progress divided out
        ratio = [r["metrics"]["segm_AP"] / max(r["metrics"]["bbox_AP"], 1e-6) for r in records]
        cells.append(_cell(ratio, scale=1.0, digits=2))
        ms = _cell([r.get("cpu_ms_per_image", math.nan) for r in records], scale=1.0, digits=0)
        lines.append(f"| {label} | {' | '.join(cells)} | {ms} | {len(records)} |")
    return lines


def specificity_table(groups: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| configuration | within one image | across images | ratio | spatial | detections |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, records in groups.items():
        spec = [r["specificity"] for r in records]
        cells = [_cell([s[f] for s in spec], scale=1.0, digits=3) for f in ("within", "across")]
        cells += [_cell([s[f] for s in spec], scale=1.0, digits=2) for f in ("ratio", "spatial")]
        count = round(statistics.fmean(s["detections"] for s in spec))
        lines.append(f"| {key} | {' | '.join(cells)} | {count} |")
    return lines


def demo_row(demo: dict[str, Any]) -> list[str]:
    """The demo model's specificity row and a line with its AP on the same val set."""
    s, m = demo["specificity"], demo["metrics"]
    ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
    row = (
        f"| demo model ({demo['model']}) | {s['within']:.3f} | {s['across']:.3f} | "
        f"{ratio} | {s['spatial']:.2f} | {s['detections']} |"
    )
    note = (
        f"The demo model (K = {demo['config']['num_bases']}, M = {demo['config']['attn_size']}, "
        f"R = {demo['config']['bottom_resolution']}) scores mask AP {100 * m['segm_AP']:.1f}, box AP "
        f"{100 * m['bbox_AP']:.1f} on the same val set, "
        f"{demo.get('cpu_ms_per_image', math.nan):.0f} CPU ms / image."
    )
    return [row, "", note]


def logit_parts_table(parts: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| model | bias \\|b\\| | feature part mean \\|a - b\\| | "
        "instance part mean \\|a - mean a\\| | mean \\|a\\| | detections |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, p in parts.items():
        if p:
            lines.append(
                f"| {key} | {p['bias_norm']:.2f} | {p['feature_norm']:.2f} | "
                f"{p['instance_norm']:.2f} | {p['logit_norm']:.2f} | {p['detections']} |"
            )
    return lines


def report_markdown(results: dict[str, Any]) -> str:
    groups = by_config(results)
    lines: list[str] = []
    for title, rows in TABLES:
        lines += [f"#### {title}", "", *metrics_table(rows, groups), ""]
    lines += ["#### Attention specificity (val set, detections scoring >= 0.3)", ""]
    lines += specificity_table(groups)
    lines += demo_row(results["demo"]) if "demo" in results else []
    lines.append("")
    if results.get("logit_parts"):
        lines += ["#### Attention logits: the top layer's bias (shared) vs the rest", ""]
        lines += [*logit_parts_table(results["logit_parts"]), ""]
    runs = results.get("runs", {})
    seconds = sum(r["train_seconds"] for r in runs.values())
    lines.append(
        f"{len(runs)} runs; {seconds / 60:.0f} min of training in all "
        "(wall time, 1 thread each, on a shared machine)."
    )
    return "\n".join(lines)


def plot_ap_vs_m(results: dict[str, Any], path: Path = PLOT) -> Path | None:
    """Mask AP (mean, error bar = sd over seeds) against M, one line per R."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = by_config(results)
    fig = Figure(figsize=(5.0, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for r, marker in ((28, "o"), (56, "s")):
        points = []
        for m in (1, 2, 4, 7, 14):
            key = "shapes/base" if (m, r) == (7, 28) else f"shapes/M{m}_R{r}"
            mean, sd = mean_sd([x["metrics"]["segm_AP"] for x in groups.get(key, [])])
            if not math.isnan(mean):
                points.append((m, 100 * mean, 100 * sd))
        if points:
            ms, means, sds = zip(*points)
            ax.errorbar(ms, means, yerr=sds, marker=marker, capsize=3, label=f"R = {r}")
            drawn = True
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 7, 14], labels=["1", "2", "4", "7", "14"])
    ax.set_xlabel("attention size M (M = 1: YOLACT's weighted sum)")
    ax.set_ylabel("mask AP (shapes val, %)")
    ax.set_title("Mask AP against M (mean ± sd over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def update_doc(block: str, path: Path = DOC) -> None:
    """Replace the text between the markers of `path` (which must hold both) with `block`."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: expected the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{block}\n{END}{tail}"
    atomic_write(path, lambda f: f.write(new.encode()))


def write_report(results: dict[str, Any]) -> None:
    plot_ap_vs_m(results)
    if DOC.is_file():
        update_doc(report_markdown(results))
    else:
        print(report_markdown(results))
