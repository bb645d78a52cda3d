"""The ResNet body applies FrozenBN to the conv weights (`conv_frozen_bn`) instead of the
activations. If these fail, the faster body computes a different function or different
gradients than the modules it is made of (torchvision's blocks, called one by one)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from blendmask.modeling.backbone import ResNetBody


def _randomise_frozen_bn(body: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in body.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.weight.shape[0]
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _module_by_module(body: ResNetBody, x: torch.Tensor) -> list[torch.Tensor]:
    """The body's forward through the modules' own forwards (what the fold replaces)."""
    x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
    c2 = body.layer1(x)
    c3 = body.layer2(c2)
    c4 = body.layer3(c3)
    return [c3, c4, body.layer4(c4)]


@pytest.mark.parametrize("depth, deform", [(18, 0), (50, 0), (50, 3)])
def test_folded_frozen_bn_gives_the_same_features_and_gradients(depth: int, deform: int) -> None:
    torch.manual_seed(0)
    body = ResNetBody(depth=depth, norm="FrozenBN", deform_interval=deform).train()
    _randomise_frozen_bn(body)
    x = torch.rand(2, 3, 64, 96)
    got = body(x)
    sum(f.square().mean() for f in got).backward()
    got_grads = {n: p.grad.clone() for n, p in body.named_parameters() if p.grad is not None}
    body.zero_grad(set_to_none=True)
    want = _module_by_module(body, x)
    sum(f.square().mean() for f in want).backward()
    assert got_grads.keys() == {n for n, p in body.named_parameters() if p.grad is not None}
    assert any(n.startswith("layer2.0.downsample.0") for n in got_grads)
    # Rounding differs (the scale multiplies the weight, not the activation) and grows over
    # 50 layers of random weights: compare relative to each tensor's norm. The gradients of
    # the DCN variant differ by up to 0.3 % (measured; each run alone is deterministic); a
    # wrong fold (a missing scale or shift) is off by tens of percent.
    for a, b in zip(got, want):
        assert (a - b).norm() <= 1e-5 * b.norm()
    for name, grad in got_grads.items():
        want_grad = dict(body.named_parameters())[name].grad
        assert (grad - want_grad).norm() <= 1e-2 * want_grad.norm(), name


def test_trained_batchnorm_is_not_folded() -> None:
    """BatchNorm in training mode normalises by the batch: it must stay a module call."""
    torch.manual_seed(0)
    body = ResNetBody(depth=18, norm="BN", freeze_at=0).train()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(body(x), _module_by_module(body, x))
    assert body.layer2[0].bn1.num_batches_tracked > 0
