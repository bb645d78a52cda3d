"""`optimize_for_inference` (BatchNorm folded into the convs, channels-last) gives the outputs of
the unoptimised network within 1e-4, and leaves the given model untouched. If this fails, the
Predictor's answers differ from the trained model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from blendmask.factory import build
from blendmask.modeling.inference import (
    fold_frozen_batchnorm,
    optimize_for_inference,
    to_channels_last,
)
from blendmask.presets import get_preset

# Slow: full networks, optimised and not (`pytest -m "not slow"` leaves these out).
pytestmark = pytest.mark.slow


def _model(preset: str):
    cfg = get_preset(preset)
    cfg.model.fcos.inference_th_test = 0.0
    torch.manual_seed(0)
    model, _, post = build(cfg, load_pretrained=False)
    model.eval()
    # Non-trivial statistics: with the default (mean 0, var 1, gamma 1) folding is a no-op.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = m.running_var.numel()
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model, post


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _check(preset: str, size: tuple[int, int]) -> None:
    model, post = _model(preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    # the original keeps its BatchNorm layers, weights and layout (training / saving see it)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fast.body.modules())
    assert fast.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)

    images = torch.rand(2, 3, *size)
    sizes = [size, (size[0] - 16, size[1] - 32)]
    with torch.inference_mode():
        want = model(images, sizes, dense_attentions=False, with_sem=False)
        got = fast(to_channels_last(images), sizes, dense_attentions=False, with_sem=False)
        for name in ("cls_logits", "bbox_reg", "ctrness", "bases"):
            assert _relative(getattr(got, name), getattr(want, name)) < 1e-4, name
        for t_got, t_want in zip(got.bbox_towers, want.bbox_towers):
            assert _relative(t_got, t_want) < 1e-4
        dets_want = post(want, sizes)
        dets_got = post(got, sizes)
    for a, b in zip(dets_got, dets_want):
        assert len(a) == len(b) > 0
        # Random weights give near-equal scores, so rounding may swap neighbours in the
        # ranking: compare sorted scores, and match each box to its nearest counterpart.
        torch.testing.assert_close(a.scores.sort().values, b.scores.sort().values)
        # largest coordinate difference of every pair of the same class (one location can
        # give several classes; cdist's matmul path is too coarse for this)
        diff = (a.boxes[:, None] - b.boxes[None]).abs().amax(dim=2)
        diff[a.labels[:, None] != b.labels[None]] = float("inf")
        nearest = diff.min(dim=1)
        same = nearest.values < 1e-2
        assert same.float().mean() > 0.95
        masks_a, masks_b = a.masks[same], b.masks[nearest.indices[same]]
        assert (masks_a != masks_b).float().mean() < 1e-3


def test_tiny_preset_matches_unoptimised() -> None:
    _check("tiny", (96, 128))


def test_resnet50_stride_in_1x1_matches_unoptimised() -> None:
    """R_50_1x: MSRA blocks with the stride on the 1x1 conv, and downsample Sequentials."""
    _check("R_50_1x", (128, 160))


def test_fold_matches_naive_conv_then_batchnorm() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    norm = FrozenBatchNorm2d(6, eps=1e-5)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.normal_()
    block = nn.Sequential(conv, norm)
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        # naive: (conv(x) - mean) / sqrt(var + eps) * gamma + beta
        y = conv(x)
        shape = (1, -1, 1, 1)
        want = (y - norm.running_mean.view(shape)) / torch.sqrt(
            norm.running_var.view(shape) + 1e-5
        ) * norm.weight.view(shape) + norm.bias.view(shape)
        assert fold_frozen_batchnorm(block) == 1
        assert isinstance(block[1], nn.Identity)
        torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-5)


def test_predictor_runs_the_optimised_copy_and_follows_weight_changes() -> None:
    from blendmask.predictor import Predictor

    model, post = _model("tiny")
    fast = Predictor(get_preset("tiny"), model, post, "cpu", score_threshold=None)
    plain = Predictor(get_preset("tiny"), model, post, "cpu", optimize=False, score_threshold=None)
    image = torch.rand(3, 70, 90)
    a, b = fast([image])[0], plain([image])[0]
    assert fast.inference_model() is not model and plain.inference_model() is model
    assert any(isinstance(m, FrozenBatchNorm2d) for m in fast.model.modules())  # saveable
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.scores.sort().values, b.scores.sort().values)
    # Loading other weights into predictor.model must reach the optimised copy.
    with torch.no_grad():
        model.head.cls_logits.bias.add_(3.0)
    c, d = fast([image])[0], plain([image])[0]
    assert not torch.allclose(c.scores.max(), a.scores.max())
    torch.testing.assert_close(c.scores.sort().values, d.scores.sort().values)
