"""Panoptic quality fixtures shared by tests/test_panoptic_quality.py and
benchmarks/pq_libraries.py: three categories and a random blocky image pair; and a ground
truth made from a model's own predictions (tests/test_torchrun_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from blendmask.data.panoptic_format import PanopticCategory, Segment, id_to_rgb, rgb_to_id

CATEGORIES = {
    1: PanopticCategory(1, "a", True),
    2: PanopticCategory(2, "b", True),
    3: PanopticCategory(3, "s", False),
}


def random_fixture(rng: np.random.Generator):
    """Random blocky ground truth (void, crowd, stuff, things) and a perturbed prediction."""
    size = 24
    gt = rng.integers(0, 7, size=(size // 4, size // 4)).repeat(4, 0).repeat(4, 1)
    segs = {g: Segment(g, int(rng.integers(1, 4)), bool(rng.random() < 0.15)) for g in range(1, 7)}
    pred = gt.copy()
    noise = rng.random(gt.shape) < 0.3
    pred[noise] = rng.integers(0, 9, size=int(noise.sum()))
    pred_cats = {p: int(rng.integers(1, 4)) for p in range(1, 9)}
    for g in range(1, 7):
        if rng.random() < 0.6:
            pred_cats[g] = segs[g].category_id  # mostly the right category
    return gt, segs, pred, pred_cats


def ground_truth_from_prediction(prediction: Path, images_json: Path, out: Path) -> Path:
    """A ground truth made from `blendmask predict`'s panoptic output (`prediction`/
    panoptic.json + panoptic/*.png) and the images and categories of the panoptic json
    `images_json`, written as `out`/panoptic.json + `out`/panoptic/; returns the json's path.

    Scored against the model that predicted it, PQ lands strictly between 0 and 1, with matched
    segments whose IoUs are not all 1 (so PQ's float sums depend on their order): every PNG is
    shifted right by one pixel (each segment's IoU drops below 1; a thin one's can drop to 0.5
    or less, no match), and the first segment of each kind (thing, stuff) of the first image is
    given another category of its kind (a false negative and a false positive)."""
    results = json.loads((prediction / "panoptic.json").read_text())
    source = json.loads(Path(images_json).read_text())
    images, categories = source["images"], source["categories"]
    kinds = {c["id"]: c["isthing"] for c in categories}
    (out / "panoptic").mkdir(parents=True, exist_ok=True)
    by_name = {a["file_name"]: a for a in results["annotations"]}
    annotations = []
    for image in images:
        png = Path(image["file_name"]).with_suffix(".png").name
        ann = by_name[png]
        ids = np.roll(rgb_to_id(np.asarray(Image.open(prediction / "panoptic" / png))), 1, 1)
        Image.fromarray(id_to_rgb(ids), mode="RGB").save(out / "panoptic" / png)
        segments = [dict(s) for s in ann["segments_info"]]
        if not annotations:
            for isthing in (1, 0):
                seg = next(s for s in segments if kinds[s["category_id"]] == isthing)
                others = [c for c in kinds if kinds[c] == isthing and c != seg["category_id"]]
                seg["category_id"] = others[0]
        annotations.append({"image_id": image["id"], "file_name": png, "segments_info": segments})
    path = out / "panoptic.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path
