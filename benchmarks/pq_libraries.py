"""Our PQ (metrics/panoptic.py) next to panopticapi's and torchmetrics' on the hand-built
fixtures of tests/test_panoptic_quality.py; writes JSON to stdout.

Neither library is a dependency (panopticapi-lite pins numpy < 2); install them aside:
    pip install --target /tmp/pqlibs --no-deps panopticapi-lite torchmetrics lightning-utilities
    PYTHONPATH=/tmp/pqlibs:tests python benchmarks/pq_libraries.py
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blendmask.data.panoptic_format import id_to_rgb
from blendmask.metrics.panoptic import pq_stat_of_image, summarize_pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import helpers.panoptic as fixtures  # noqa: E402


def ours(fixture) -> dict[str, float]:
    m, _ = summarize_pq(pq_stat_of_image(*fixture), fixtures.CATEGORIES)
    return {k: m[k] for k in ("PQ", "PQ_th", "PQ_st")}


def panopticapi_pq(fixture) -> dict[str, float]:
    from panopticapi.evaluation import pq_compute_single_core

    gt, segs, pred, pred_cats = fixture
    cats = {
        c.id: {"id": c.id, "name": c.name, "isthing": int(c.isthing)}
        for c in fixtures.CATEGORIES.values()
    }
    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(id_to_rgb(gt)).save(Path(tmp) / "gt.png")
        Image.fromarray(id_to_rgb(pred)).save(Path(tmp) / "pred.png")
        gt_ann = {
            "image_id": 1,
            "file_name": "gt.png",
            "segments_info": [
                {
                    "id": s.id,
                    "category_id": s.category_id,
                    "iscrowd": int(s.iscrowd),
                    "area": int((gt == s.id).sum()),
                }
                for s in segs.values()
            ],
        }
        present = set(np.unique(pred).tolist())
        pred_ann = {
            "image_id": 1,
            "file_name": "pred.png",
            "segments_info": [
                {"id": p, "category_id": c} for p, c in pred_cats.items() if p in present
            ],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            stat = pq_compute_single_core(0, [(gt_ann, pred_ann)], tmp, tmp, cats)
    out = {}
    for key, isthing in (("PQ", None), ("PQ_th", True), ("PQ_st", False)):
        try:
            out[key] = stat.pq_average(cats, isthing=isthing)[0]["pq"]
        except ZeroDivisionError:
            out[key] = "ZeroDivisionError"
    return out


def torchmetrics_pq(fixture) -> float:
    from torchmetrics.detection import PanopticQuality

    gt, segs, pred, pred_cats = fixture
    things = {c.id for c in fixtures.CATEGORIES.values() if c.isthing}
    stuffs = {c.id for c in fixtures.CATEGORIES.values() if not c.isthing}

    # (category, instance) per pixel; void as an unknown category (allowed, mapped to void).
    def encode(ids, category_of):
        cat = np.vectorize(lambda i: category_of.get(i, 0))(ids)
        return torch.from_numpy(np.stack([cat, ids], axis=-1))[None]

    metric = PanopticQuality(things=things, stuffs=stuffs, allow_unknown_preds_category=True)
    gt_cats = {s.id: s.category_id for s in segs.values()}
    return float(metric(encode(pred, pred_cats), encode(gt, gt_cats)))


if __name__ == "__main__":
    rows = {}
    for name in ("perfect", "half_iou", "void_and_crowd"):
        fixture = getattr(fixtures, name)()
        row = {"ours": ours(fixture), "panopticapi": panopticapi_pq(fixture)}
        try:
            row["torchmetrics_PQ"] = torchmetrics_pq(fixture)
        except Exception as e:  # noqa: BLE001  (report, not fail: it is not our code)
            row["torchmetrics_PQ"] = f"{type(e).__name__}: {e}"
        rows[name] = row
    for seed in range(20):
        fixture = fixtures.random_fixture(np.random.default_rng(seed))
        rows[f"random_{seed}"] = {"ours": ours(fixture), "panopticapi": panopticapi_pq(fixture)}
    print(json.dumps(rows, indent=1))
