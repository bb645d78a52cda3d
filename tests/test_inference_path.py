"""The inference fast path (`dense_attentions=False`, `with_sem=False`) gives the same detections
as the dense outputs the criterion uses. If this fails, the Predictor's answers differ from
what training optimises."""

from __future__ import annotations

import torch

from blendmask.factory import build
from blendmask.modeling.postprocess import attentions_at
from blendmask.presets import get_preset


def _model(preset: str = "tiny"):
    cfg = get_preset(preset)
    cfg.model.fcos.inference_th_test = 0.0
    torch.manual_seed(0)
    model, _, post = build(cfg)
    return model.eval(), post


def test_attentions_at_equals_dense_top_layer() -> None:
    model, _ = _model()
    images = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        dense = model(images)
        sparse = model(images, dense_attentions=False, with_sem=False)
    assert sparse.attentions is None and sparse.sem_logits is None
    g = torch.Generator().manual_seed(1)
    p = dense.attentions.shape[1]
    # every level, the borders included (they exercise the zero padding)
    point_inds = torch.cat([torch.randint(0, p, (50,), generator=g), torch.tensor([0, p - 1])])
    image_inds = torch.randint(0, 2, (len(point_inds),), generator=g)
    weight, bias = sparse.top_layer_params
    got = attentions_at(sparse.bbox_towers, weight, bias, image_inds, point_inds)
    torch.testing.assert_close(got, dense.attentions[image_inds, point_inds], atol=1e-5, rtol=1e-4)


def test_sparse_and_dense_outputs_give_the_same_detections() -> None:
    model, post = _model()
    images = torch.rand(2, 3, 96, 128)
    sizes = [(96, 128), (80, 100)]
    with torch.no_grad():
        a = post(model(images, sizes), sizes)
        b = post(model(images, sizes, dense_attentions=False, with_sem=False), sizes)
    for da, db in zip(a, b):
        assert len(da) > 0
        torch.testing.assert_close(da.boxes, db.boxes)
        torch.testing.assert_close(da.scores, db.scores)
        assert torch.equal(da.labels, db.labels)
        assert (da.masks != db.masks).float().mean() < 1e-3


def test_attentions_at_no_locations() -> None:
    model, _ = _model()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), dense_attentions=False)
    empty = torch.zeros(0, dtype=torch.int64)
    got = attentions_at(out.bbox_towers, *out.top_layer_params, empty, empty)
    assert got.shape == (0, out.top_layer_params[0].shape[0])
