"""Panoptic quality fixtures shared by tests/test_panoptic_quality.py and
benchmarks/pq_libraries.py: three categories and a random blocky image pair."""

from __future__ import annotations

import numpy as np

from blendmask.data.panoptic_format import PanopticCategory, Segment

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
