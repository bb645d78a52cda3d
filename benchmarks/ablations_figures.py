"""Attention-specificity figures of `ablations.py`: the demo model and the best configuration.

- `measure_demo`: the `blendmask demo` model (default `runs/ablations/demo_model.pt`, a copy of
  a `blendmask demo --out DIR` run's `DIR/model.pt`) on the ablations' shapes val set: COCO AP,
  time per image and attention specificity, stored as `"demo"` in the results json;
- `explain_figures`: the `blendmask explain` figure (which shows the attention distance matrix
  of the explained detections) of the demo model and of the best shapes configuration (highest
  mean mask AP; its seed-0 model) on the same val image, the one with the most objects;
- `specificity_figure`: within-image vs across-image attention distance of every configuration
  and of the demo model.

Writes docs/images/ablations_explain_demo.png, ablations_explain_best.png and
ablations_specificity.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from ablations import WORK, dataset_paths
from ablations_measure import TIMED_IMAGES, TOP_PER_IMAGE, measure_specificity, time_per_image
from ablations_report import by_config, mean_sd
from ablations_store import RESULTS, locked, read_results, write_results
from common import REPO

from blendmask.atomic import atomic_write

IMAGES = REPO / "docs" / "images"
DEMO_MODEL = WORK / "demo_model.pt"
FIELDS = ("within", "across", "spatial")  # attention distances drawn per configuration


def measure_demo(model: Path = DEMO_MODEL) -> dict[str, Any] | None:
    """The demo model's record (computed once, then read from the results json)."""
    from blendmask.data.coco import CocoDataset
    from blendmask.evaluation.evaluate import evaluate_model
    from blendmask.predictor import Predictor

    results = read_results()
    if "demo" in results:
        return results["demo"]
    if not model.is_file():
        return None
    data = dataset_paths("shapes")
    predictor = Predictor.from_checkpoint(model, device="cpu")
    metrics = evaluate_model(
        predictor.cfg,
        predictor.model,
        predictor.postprocessor,
        json_path=data["val_json"],
        images_dir=data["val_images"],
        device=torch.device("cpu"),
    )
    val = CocoDataset(data["val_json"], data["val_images"])
    images = [val[i][0] for i in range(len(val))]
    record = {
        "model": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model),
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("bbox_", "segm_"))},
        "cpu_ms_per_image": round(1000 * time_per_image(predictor, images[:TIMED_IMAGES]), 2),
        "specificity": measure_specificity(predictor, images, TOP_PER_IMAGE["shapes"]),
        "config": {
            "attn_size": predictor.cfg.model.blender.attn_size,
            "bottom_resolution": predictor.cfg.model.blender.bottom_resolution,
            "num_bases": predictor.cfg.model.basis_module.num_bases,
        },
    }
    with locked(RESULTS):
        results = read_results()
        results["demo"] = record
        write_results(results)
    return record


@torch.no_grad()
def attention_logit_parts(predictor: Any, images: list[torch.Tensor], top: int) -> dict[str, float]:
    """Why the maps can be the same for every instance: the top layer's output at a detection
    is W x + b, and its bias b is one K*M*M template shared by all detections. Over the best
    `top` detections (score >= 0.3) of every image, with a_d the attention logits:

    - bias_norm: |b|; feature_norm: mean |a_d - b| (the part that depends on the features);
    - instance_norm: mean |a_d - mean_d a_d| (the part that differs between detections);
    - logit_norm: mean |a_d|. Norms are Euclidean over the K*M*M logits.
    """
    from blendmask.data.preprocess import preprocess

    bias = predictor.model.top_layer.bias.detach().float().cpu()
    logits = []
    for image in images:
        batch, _ = preprocess([image], predictor.min_size, predictor.max_size, device="cpu")
        outputs = predictor.model(batch.tensor, batch.image_sizes)
        det = predictor.postprocessor.detect(outputs, batch.image_sizes)[0]
        keep = (det["scores"] >= 0.3).nonzero().flatten()[:top]
        logits.append(det["attentions"][keep].float().cpu())
    a = torch.cat(logits)
    if a.shape[0] == 0:
        return {}
    return {
        "bias_norm": float(bias.norm()),
        "feature_norm": float((a - bias).norm(dim=1).mean()),
        "instance_norm": float((a - a.mean(dim=0)).norm(dim=1).mean()),
        "logit_norm": float(a.norm(dim=1).mean()),
        "detections": int(a.shape[0]),
    }


def busiest_val_image() -> Path:
    """The shapes val image with the most objects (the first of them on a tie)."""
    data = dataset_paths("shapes")
    coco = json.loads(Path(data["val_json"]).read_text())
    counts: dict[int, int] = {}
    for ann in coco["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    best = max(coco["images"], key=lambda im: (counts.get(im["id"], 0), -im["id"]))
    return Path(data["val_images"]) / best["file_name"]


def best_config(results: dict[str, Any]) -> str | None:
    """The shapes configuration with the highest mean mask AP."""
    groups = {k: v for k, v in by_config(results).items() if k.startswith("shapes/")}
    if not groups:
        return None
    return max(groups, key=lambda k: mean_sd([r["metrics"]["segm_AP"] for r in groups[k]])[0])


def explain_figures(results: dict[str, Any]) -> list[Path]:
    from blendmask.explain import save_explanation

    image = busiest_val_image()
    written = []
    best = best_config(results)
    # the blender baseline too: the best configuration need not be a blender
    models = {"demo": DEMO_MODEL, "base": WORK / "shapes/base/seed0/model.pt"}
    if best is not None:
        models["best"] = WORK / best / "seed0" / "model.pt"
    for tag, model in models.items():
        if model.is_file():
            out = IMAGES / f"ablations_explain_{tag}.png"
            save_explanation(model, image, out, top=4, score_threshold=0.3, dpi=90)
            written.append(out)
    return written


def specificity_figure(results: dict[str, Any], path: Path | None = None) -> Path | None:
    """Horizontal bars: within-image and across-image distance per configuration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = path or IMAGES / "ablations_specificity.png"
    rows = []
    for key, records in by_config(results).items():
        spec = [r["specificity"] for r in records]
        rows.append((key, *(mean_sd([s[f] for s in spec]) for f in FIELDS)))
    if "demo" in results:
        spec = results["demo"]["specificity"]
        rows.append(("demo model (blendmask demo)", *((spec[f], 0.0) for f in FIELDS)))
    rows = [r for r in rows if not math.isnan(r[2][0])]
    if not rows:
        return None
    fig = Figure(figsize=(6.4, 0.4 * len(rows) + 1.3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = torch.arange(len(rows), dtype=torch.float64).numpy()
    labels = ("within one image", "across images", "spatial: pixel vs box mean")
    for index, label in enumerate(labels, start=1):
        means = [r[index][0] for r in rows]
        sds = [r[index][1] for r in rows]
        ax.barh(y + 0.27 * (index - 2), means, height=0.26, xerr=sds, label=label, capsize=2)
    ax.set_yticks(y, labels=[r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("attention distance (0: same maps, 1: different bases at every pixel)")
    ax.set_title("How instance-specific the attentions are (mean ± sd over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


def logit_parts_of_models(results: dict[str, Any], images_count: int = 20) -> None:
    """`attention_logit_parts` of the demo model and of the seed-0 models of the baseline and
    the best configuration (over the first val images), stored once in the results json."""
    from blendmask.data.coco import CocoDataset
    from blendmask.predictor import Predictor

    models = {"demo": DEMO_MODEL, "shapes/base": WORK / "shapes/base/seed0/model.pt"}
    best = best_config(results)
    if best is not None:
        models[best] = WORK / best / "seed0" / "model.pt"
    done = results.get("logit_parts", {})
    todo = {k: m for k, m in models.items() if k not in done and m.is_file()}
    if not todo:
        return
    data = dataset_paths("shapes")
    val = CocoDataset(data["val_json"], data["val_images"])
    images = [val[i][0] for i in range(min(images_count, len(val)))]
    for key, model in todo.items():
        predictor = Predictor.from_checkpoint(model, device="cpu")
        done[key] = attention_logit_parts(predictor, images, TOP_PER_IMAGE["shapes"])
    with locked(RESULTS):
        results = read_results()
        results["logit_parts"] = {**results.get("logit_parts", {}), **done}
        write_results(results)


def retime_records() -> None:
    """CPU time per image for the records timed before it was measured (they hold only the
    wall time, which a busy machine inflates), from each run's saved model."""
    from blendmask.data.coco import CocoDataset
    from blendmask.predictor import Predictor

    results = read_results()
    todo = [k for k, r in results.get("runs", {}).items() if "cpu_ms_per_image" not in r]
    if "demo" in results and "cpu_ms_per_image" not in results["demo"]:
        todo.append("demo")
    measured = {}
    for key in todo:
        record = results["demo"] if key == "demo" else results["runs"][key]
        dataset = record.get("dataset", "shapes")
        model = (
            DEMO_MODEL
            if key == "demo"
            else WORK / dataset / record["name"] / f"seed{record['seed']}" / "model.pt"
        )
        if not model.is_file():
            continue
        data = dataset_paths(dataset)
        val = CocoDataset(data["val_json"], data["val_images"])
        images = [val[i][0] for i in range(min(TIMED_IMAGES, len(val)))]
        predictor = Predictor.from_checkpoint(model, device="cpu")
        measured[key] = round(1000 * time_per_image(predictor, images), 2)
    with locked(RESULTS):
        results = read_results()
        for key, ms in measured.items():
            (results["demo"] if key == "demo" else results["runs"][key])["cpu_ms_per_image"] = ms
        write_results(results)


def write_figures() -> None:
    measure_demo()
    retime_records()
    logit_parts_of_models(read_results())
    results = read_results()
    specificity_figure(results)
    explain_figures(results)
