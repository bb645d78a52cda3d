"""A converted AdelaiDet checkpoint through `Predictor` gives the detections of the same network
fed the image the reference's way (PIL bilinear resize on uint8, pad with zeros to /32).

Fails if the Predictor's preprocessing drifts from the reference's (a float antialiased resize
instead of PIL's on uint8 changed 24 of 300 detections of such a model and left matched masks
at IoU 0.89), or if its fast path (folded norms, channels-last, sparse top layer) changes
detections.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.reference import reference_resize, synthetic_checkpoint
from torchvision.ops import box_iou

from blendmask.convert import convert_adelaidet_model
from blendmask.predictor import Predictor

# Slow: a converted R_50 on a photo (`pytest -m "not slow"` leaves it out).
pytestmark = pytest.mark.slow


def reference_batch(array: np.ndarray, min_size: int, max_size: int) -> tuple[torch.Tensor, tuple]:
    """The reference's test-time input: its resize, then zero padding to a multiple of 32;
    float RGB in [0, 1]."""
    resized = reference_resize(array, min_size, max_size)
    newh, neww = resized.shape[:2]
    padded = torch.zeros(1, 3, -(-newh // 32) * 32, -(-neww // 32) * 32)
    padded[0, :, :newh, :neww] = torch.from_numpy(resized).permute(2, 0, 1) / 255.0
    return padded, (newh, neww)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 1.0


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    path = synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "R_50_1x.pth")
    cfg, model, report = convert_adelaidet_model(path, "R_50_1x")
    assert report.complete
    return cfg, model


@pytest.mark.timeout(600)
def test_predictor_equals_network_on_reference_resized_photo(converted):
    skimage_data = pytest.importorskip("skimage.data")
    from blendmask.factory import build_postprocessor

    cfg, model = converted
    post = build_postprocessor(cfg).eval()
    array = skimage_data.coffee()  # a 400 x 600 photo: resized to 800 x 1200
    images, size = reference_batch(array, cfg.data.min_size_test, cfg.data.max_size_test)
    with torch.no_grad():
        want = post(model(images, [size]), [size], [array.shape[:2]])[0]
    got = Predictor(cfg, model, post, device="cpu", score_threshold=None)([array])[0]

    assert len(want) >= 20, "too few detections for the comparison to mean anything"
    assert len(got) == len(want)
    ious = box_iou(want.boxes, got.boxes)
    same_label = want.labels[:, None] == got.labels[None, :]
    matched = 0
    for i in range(len(want)):
        j = int(torch.argmax(ious[i] * same_label[i]))
        if ious[i, j] > 0.99 and same_label[i, j]:
            matched += 1
            assert mask_iou(want.masks[i], got.masks[j]) >= 0.99
    assert matched == len(want)
