"""PQ / SQ / RQ (metrics/panoptic.py) against hand computations and a naive per-segment
re-implementation of panopticapi's rules written here.

The hand-built fixtures were also run through panopticapi (panopticapi-lite 0.2.0) and
torchmetrics 1.9.0 when the module was written: panopticapi gave the same numbers on all of
them; torchmetrics differs on `void_and_crowd` (it has no crowd), see the module docstring.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.panoptic import CATEGORIES, random_fixture

from blendmask.data.panoptic_format import Segment
from blendmask.metrics.panoptic import PanopticEvaluator, pq_stat_of_image, summarize_pq


def perfect():
    """Stuff on top, two things below; the prediction is the same map with other ids."""
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[:4] = 1
    gt[4:, :4] = 2
    gt[4:, 4:] = 3
    segs = {1: Segment(1, 3, False), 2: Segment(2, 1, False), 3: Segment(3, 2, False)}
    pred = np.choose(gt, [0, 7, 8, 9])
    return gt, segs, pred, {7: 3, 8: 1, 9: 2}


def half_iou():
    """Category a: IoU exactly 8/16 = 0.5 (no match); category b: IoU 9/16 (a match)."""
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[:4, :4] = 1  # a, 16 px
    gt[4:, :4] = 2  # b, 16 px
    pred = np.zeros_like(gt)
    pred[:4, :2] = 5  # a, 8 px inside gt 1
    pred[4:7, 1:4] = 6  # b, 9 px inside gt 2
    segs = {1: Segment(1, 1, False), 2: Segment(2, 2, False)}
    return gt, segs, pred, {5: 1, 6: 2}


def void_and_crowd():
    """Void left out of the union, predictions on void / crowd not false positives, exactly
    half on void still a false positive (8 x 12 pixels)."""
    gt = np.zeros((8, 12), dtype=np.int64)  # void by default
    gt[:4, :4] = 1  # a (16 px); cols 4-7 of rows 0-3 stay void
    gt[4:, :4] = 2  # crowd b
    gt[4:, 4:8] = 3  # stuff s
    gt[:, 10:] = 4  # stuff s again (another segment), never predicted; col 8-9 void
    segs = {
        1: Segment(1, 1, False),
        2: Segment(2, 2, True),
        3: Segment(3, 3, False),
        4: Segment(4, 3, False),
    }
    pred = np.zeros_like(gt)
    pred[:4, :6] = 11  # a: 16 on gt 1 + 8 on void -> IoU 16 / (24 + 16 - 16 - 8) = 1
    pred[:4, 6:8] = 12  # b: 8 px all on void -> ignored
    pred[4:, :3] = 13  # b: 12 px all on the crowd b -> ignored
    pred[4:, 4:8] = 14  # s: exact -> IoU 1
    pred[:, 9:11] = 15  # a: 8 on void, 8 on gt 4: half on void is not "more than half" -> FP
    return gt, segs, pred, {11: 1, 12: 2, 13: 2, 14: 3, 15: 1}


def metrics_of(fixture) -> dict[str, float]:
    metrics, _ = summarize_pq(pq_stat_of_image(*fixture), CATEGORIES)
    return metrics


def test_perfect_prediction_is_one():
    """Wrong if a perfect prediction (up to segment ids) does not score PQ = SQ = RQ = 1."""
    m = metrics_of(perfect())
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert m[key] == pytest.approx(1.0), key


def test_iou_exactly_half_is_not_a_match():
    """Wrong if IoU = 0.5 matches (COCO: IoU > 0.5) or 9/16 does not."""
    stat = pq_stat_of_image(*half_iou())
    a, b = stat.per_category[1], stat.per_category[2]
    assert (a.tp, a.fp, a.fn) == (0, 1, 1)
    assert (b.tp, b.fp, b.fn) == (1, 0, 0) and b.iou == pytest.approx(9 / 16)
    m = metrics_of(half_iou())
    # By hand: PQ_a = 0, PQ_b = (9/16) / 1; the mean over the two thing categories.
    assert m["PQ"] == pytest.approx(9 / 32)
    assert m["SQ"] == pytest.approx(9 / 32)  # SQ_a = 0 (no TP), SQ_b = 9/16
    assert m["RQ"] == pytest.approx(0.5)
    assert m["PQ_st"] == -1.0  # no stuff category occurs


def test_void_and_crowd_are_ignored():
    """Wrong if void pixels count in the union, if a prediction on void / on a crowd region
    of its category is a false positive, if the crowd is a false negative, or if exactly
    half on void is ignored."""
    stat = pq_stat_of_image(*void_and_crowd())
    a, b, s = (stat.per_category.get(c) for c in (1, 2, 3))
    assert (a.tp, a.fp, a.fn, a.iou) == (1, 1, 0, pytest.approx(1.0))
    assert b is None  # crowd gt: no FN; both b predictions ignored: no FP
    assert (s.tp, s.fp, s.fn, s.iou) == (1, 0, 1, pytest.approx(1.0))
    m = metrics_of(void_and_crowd())
    # By hand: PQ_a = 1 / (1 + 0.5) = 2/3, PQ_s = 1 / (1 + 0.5) = 2/3; SQ = 1; RQ = 2/3.
    assert m["PQ"] == pytest.approx(2 / 3)
    assert m["PQ_th"] == pytest.approx(2 / 3) and m["PQ_st"] == pytest.approx(2 / 3)
    assert m["SQ"] == pytest.approx(1.0) and m["RQ"] == pytest.approx(2 / 3)


def naive_counts(gt, segs, pred, pred_cats):
    """panopticapi's rules segment by segment with boolean masks (category -> [tp, fp, fn,
    iou sum])."""
    counts = {c: [0, 0, 0, 0.0] for c in CATEGORIES}
    void = gt == 0
    matched_pred = set()
    for g, seg in segs.items():
        if seg.iscrowd:
            continue
        gmask, hit = gt == g, False
        for p, cat in pred_cats.items():
            pmask = pred == p
            if cat != seg.category_id or not pmask.any():
                continue
            inter = (gmask & pmask).sum()
            union = pmask.sum() + gmask.sum() - inter - (pmask & void).sum()
            if inter / union > 0.5:
                counts[cat][0] += 1
                counts[cat][3] += inter / union
                matched_pred.add(p)
                hit = True
        if not hit:
            counts[seg.category_id][2] += 1
    for p, cat in pred_cats.items():
        pmask = pred == p
        if p in matched_pred or not pmask.any():
            continue
        crowd = np.isin(gt, [g for g, s in segs.items() if s.iscrowd and s.category_id == cat])
        if ((void | crowd) & pmask).sum() / pmask.sum() <= 0.5:
            counts[cat][1] += 1
    return counts


@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_a_naive_reimplementation(seed):
    """Wrong if the np.unique pair counting differs from per-segment masks anywhere (void in
    the union, crowd, thresholds) on random fixtures."""
    fixture = random_fixture(np.random.default_rng(seed))
    stat = pq_stat_of_image(*fixture)
    for category_id, (tp, fp, fn, iou) in naive_counts(*fixture).items():
        s = stat.per_category.get(category_id)
        got = (0, 0, 0, 0.0) if s is None else (s.tp, s.fp, s.fn, s.iou)
        assert got[:3] == (tp, fp, fn) and got[3] == pytest.approx(iou), category_id


def test_evaluator_sums_images_and_refuses_unknown_categories():
    """Wrong if the per-image counts are not summed before averaging (PQ is not a mean of
    per-image PQs) or a prediction with a category outside the ground truth passes."""
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.process(*perfect())
    evaluator.process(*half_iou())
    m = evaluator.evaluate()
    # a: tp 1 (iou 1) + fp 1 + fn 1 -> 1 / 2; b: tp 2 (1 + 9/16) -> 25/32; s: 1.
    assert m["PQ"] == pytest.approx((0.5 + 25 / 32 + 1.0) / 3)
    assert m["per_class"]["b"]["TP"] == 2 and m["images"] == 2
    gt, segs, pred, _ = perfect()
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.process(gt, segs, pred, {7: 3, 8: 1, 9: 42})
