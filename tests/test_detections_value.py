"""`Detections` is a plain value: built by hand, with no `Predictor`, it pastes its box-local
masks, draws itself and exports COCO results; and the score / class filter of every path is
`Detections.filter`.

Fails if `Detections` again needs something injected to paste or draw (a hand-built one would
raise), if its pasting drifts from the bilinear maths of detectron2's `paste_masks_in_image`
(checked against a per-pixel loop written here), or if a prediction path filters detections
by its own code instead of `Detections.filter`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.factory import build
from blendmask.modeling.postprocess import candidate_threshold
from blendmask.prediction.predict_outputs import OutputSpec
from blendmask.predictor import Predictor
from blendmask.presets import get_preset
from blendmask.structures import Detections

NAMES = ("cell", "debris")
HEIGHT, WIDTH = 64, 96


def naive_probabilities(mask: np.ndarray, box: list[float], size: tuple[int, int]) -> np.ndarray:
    """One mask R x R sampled at every pixel centre of the image, one pixel at a time: the
    centre normalised into the box, then `grid_sample(align_corners=False)` bilinear with zero
    padding, written out tap by tap."""
    res_y, res_x = mask.shape
    x0, y0, x1, y1 = box
    out = np.zeros(size)
    for py in range(size[0]):
        for px in range(size[1]):
            gx = 2 * (px + 0.5 - x0) / (x1 - x0) - 1
            gy = 2 * (py + 0.5 - y0) / (y1 - y0) - 1
            sx, sy = ((gx + 1) * res_x - 1) / 2, ((gy + 1) * res_y - 1) / 2
            value = 0.0
            for ty in (math.floor(sy), math.floor(sy) + 1):
                for tx in (math.floor(sx), math.floor(sx) + 1):
                    if 0 <= ty < res_y and 0 <= tx < res_x:
                        value += (1 - abs(sy - ty)) * (1 - abs(sx - tx)) * mask[ty, tx]
            out[py, px] = value
    return out


@pytest.fixture(scope="module")
def by_hand() -> tuple[Detections, np.ndarray]:
    """Three detections with random soft masks, and their naive soft masks [D, H0, W0]."""
    gen = torch.Generator().manual_seed(3)
    boxes = torch.tensor(
        [[4.3, 5.7, 30.2, 33.9], [20.5, 2.2, 51.0, 40.0], [60.0, 10.4, 88.8, 38.1]]
    )
    probs = torch.rand((3, 12, 12), generator=gen)
    dets = Detections(
        boxes=boxes,
        scores=torch.tensor([0.9, 0.6, 0.4]),
        labels=torch.tensor([0, 1, 0]),
        mask_probs=probs,
        image_size=(HEIGHT, WIDTH),
        class_names=NAMES,
        category_ids=(7, 9),
    )
    naive = np.stack(
        [
            naive_probabilities(p.double().numpy(), b.tolist(), (HEIGHT, WIDTH))
            for p, b in zip(probs, boxes)
        ]
    )
    return dets, naive


def test_hand_built_detections_paste_like_the_naive_loop(by_hand):
    dets, naive = by_hand
    assert not dets.has_dense_masks
    # Pixels within float rounding of the threshold may go either way (`paste_masks` keeps
    # those within 1e-6 below it); random probabilities make them rare.
    decided = np.abs(naive - 0.5) > 1e-5
    assert decided.mean() > 0.999
    masks = dets.masks.numpy()
    assert masks.shape == (3, HEIGHT, WIDTH) and masks.any(axis=(1, 2)).all()
    assert np.array_equal(masks[decided], (naive >= 0.5)[decided])
    # The soft masks: equal inside each box's window (box + one pixel), 0 outside it.
    soft = dets.mask_probabilities().numpy()
    for d, (x0, y0, x1, y1) in enumerate(dets.boxes.tolist()):
        ys = slice(max(0, math.floor(y0) - 1), min(HEIGHT, math.ceil(y1) + 1))
        xs = slice(max(0, math.floor(x0) - 1), min(WIDTH, math.ceil(x1) + 1))
        np.testing.assert_allclose(soft[d, ys, xs], naive[d, ys, xs], atol=1e-5)
    # Window by window, the same pixels as the whole masks.
    windowed = np.zeros_like(masks)
    for d, x, y, window in dets.mask_windows():
        windowed[d, y : y + window.shape[0], x : x + window.shape[1]] = window.numpy()
    assert np.array_equal(windowed, masks)


def test_hand_built_detections_draw_and_export(by_hand, tmp_path):
    dets, naive = by_hand
    image = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    picture = dets.plot(path)  # a path, read as any image input
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert np.array_equal(dets.plot(image), picture)
    union = (naive >= 0.5 + 1e-5).any(0)
    assert (picture[union] != image[union]).any(axis=1).all()  # every masked pixel painted
    below = int(max(b[3] for b in dets.boxes.tolist())) + 4  # under boxes, contours, labels
    assert np.array_equal(picture[below:], image[below:])
    saved = dets.save(tmp_path / "pred.png", image)
    assert np.array_equal(np.array(Image.open(saved)), picture)
    results = dets.to_coco(image_id=5)
    assert [r["category_id"] for r in results] == [7, 9, 7]
    for result, mask, box in zip(results, dets.masks.numpy(), dets.boxes.tolist()):
        rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_util.decode(rle).astype(bool), mask)
        assert result["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
    records = dets.filter(score=0.5, classes=["debris"]).to_json()
    assert [(r["name"], r["category_id"]) for r in records] == [("debris", 9)]


def test_every_prediction_path_filters_through_detections_filter(monkeypatch, tmp_path):
    """`Predictor` (and with it eval, serve's torch backend, predict) and predict's own filter
    for ready predictors (`OutputSpec.keep`: images, video, `--onnx`) call `Detections.filter`."""
    calls: list[tuple[float | None, object]] = []
    original = Detections.filter

    def counted(self, *, score=None, classes=None):
        calls.append((score, classes))
        return original(self, score=score, classes=classes)

    monkeypatch.setattr(Detections, "filter", counted)
    torch.manual_seed(0)
    cfg = get_preset("tiny").validate()
    model, _, post = build(cfg, load_pretrained=False)
    predictor = Predictor(cfg, model, post, "cpu", score_threshold=0.25)
    predictor([np.zeros((40, 48, 3), dtype=np.uint8)] * 2)
    assert calls == [(0.25, None), (0.25, None)]
    calls.clear()
    spec = OutputSpec(tmp_path, [1, 2], list(NAMES), score_threshold=0.3, labels=[1])
    det = Detections(
        torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2),
        torch.tensor([0.9, 0.8]),
        torch.tensor([0, 1]),
        torch.ones((2, 8, 8), dtype=torch.bool),
    )
    assert spec.keep(det).labels.tolist() == [1]
    assert calls == [(0.3, [1])]


def test_a_score_threshold_below_the_candidate_one_lowers_it():
    # score = sqrt(cls * ctr): a threshold s needs candidates down to s**2 (less rounding).
    assert candidate_threshold(0.1, 0.05) == pytest.approx(0.01 * (1 - 1e-4))
    assert candidate_threshold(0.3, 0.05) is None  # 0.09 >= 0.05: the model's own holds
    assert candidate_threshold(None, 0.05) is None and candidate_threshold(0.1, None) is None
