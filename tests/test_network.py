"""Tests of the network modules: backbone, FPN, FCOS head, bottom module, BlendMask network.

Tiny models (ResNet-18 body, narrow heads) and 64-128 px inputs; ResNet-50 is built only for
the structural comparison with the reference's state-dict keys.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from blendmask.modeling.backbone import DeformBottleneck, ResNetBody, build_body
from blendmask.modeling.basis_module import DeepLabBasis, ProtoNet
from blendmask.modeling.blendmask import BlendMask, compute_points, make_top_layer
from blendmask.modeling.fcos_head import FCOSHead, PerLevelBatchNorm, group_norm
from blendmask.modeling.fpn import FPN

# The reference key lists, shipped with the tests.
KEYS_DIR = Path(__file__).resolve().parent / "data" / "keys"
MSRA_MEAN = [103.53, 116.28, 123.675]


def tiny_model(
    *,
    top_levels: int = 2,
    num_cls_convs: int = 2,
    num_box_convs: int = 2,
    num_share_convs: int = 0,
    head_norm: str = "GN",
    basis: str = "ProtoNet",
    basis_in_features: list[str] | None = None,
    num_classes: int = 3,
    num_bases: int = 2,
    attn_size: int = 4,
) -> BlendMask:
    body = ResNetBody(depth=18, norm="FrozenBN", freeze_at=2)
    fpn = FPN(in_channels_list=body.out_channels, out_channels=32, top_levels=top_levels)
    head = FCOSHead(
        in_channels=32,
        num_classes=num_classes,
        num_levels=fpn.num_levels,
        num_cls_convs=num_cls_convs,
        num_box_convs=num_box_convs,
        num_share_convs=num_share_convs,
        tower_channels=16,
        norm=head_norm,
    )
    if basis == "ProtoNet":
        basis_module: nn.Module = ProtoNet(
            in_channels=32, convs_dim=16, num_convs=2, num_bases=num_bases, num_classes=num_classes
        )
        basis_in_features = basis_in_features or ["p3", "p4", "p5"]
    else:
        assert basis_in_features is not None
        channels = {"c3": 128, "c5": 512, "p3": 32, "p5": 32}
        basis_module = DeepLabBasis(
            low_channels=channels[basis_in_features[0]],
            high_channels=channels[basis_in_features[1]],
            convs_dim=16,
            num_bases=num_bases,
            num_classes=num_classes,
        )
    return BlendMask(
        body=body,
        fpn=fpn,
        head=head,
        top_layer=make_top_layer(
            in_channels=head.out_channels, num_bases=num_bases, attn_size=attn_size
        ),
        basis_module=basis_module,
        fpn_strides=fpn.strides,
        basis_in_features=basis_in_features,
        pixel_mean=MSRA_MEAN,
        pixel_std=[1.0, 1.0, 1.0],
    )


@pytest.mark.parametrize(
    "top_levels, cls_convs, box_convs, share_convs, head_norm",
    [
        (2, 2, 2, 0, "GN"),
        (1, 0, 0, 3, "GN"),
        (0, 0, 0, 3, "BN"),
        (2, 1, 2, 1, "none"),
    ],
)
def test_output_shapes(top_levels, cls_convs, box_convs, share_convs, head_norm):
    torch.manual_seed(0)
    model = tiny_model(
        top_levels=top_levels,
        num_cls_convs=cls_convs,
        num_box_convs=box_convs,
        num_share_convs=share_convs,
        head_norm=head_norm,
    )
    n, h, w = 2, 64, 96
    out = model(torch.rand(n, 3, h, w))
    strides = [8, 16, 32, 64, 128][: 3 + top_levels]
    sizes = [(-(-h // s), -(-w // s)) for s in strides]  # ceil: 3x3/2 convs with padding 1
    npl = tuple(a * b for a, b in sizes)
    p = sum(npl)
    assert out.num_points_per_level == npl
    assert out.cls_logits.shape == (n, p, 3)
    assert out.bbox_reg.shape == (n, p, 4)
    assert (out.bbox_reg >= 0).all()  # ReLU regression
    assert out.ctrness.shape == (n, p)
    assert out.attentions.shape == (n, p, 2 * 4 * 4)
    assert out.bases.shape == (n, 2, h // 4, w // 4)
    assert out.sem_logits.shape == (n, 3 + 1, h // 8, w // 8)
    assert out.points.shape == (p, 2) and out.strides.shape == (p,)
    expected_strides = torch.cat([torch.full((k,), float(s)) for k, s in zip(npl, strides)])
    assert torch.equal(out.strides, expected_strides)


def test_batch_of_one_with_1x1_top_level():
    # P7 of a 64 px image is 1x1; GroupNorm must keep >= 2 channels per group for that.
    model = tiny_model(top_levels=2)
    for mode in (True, False):
        out = model.train(mode)(torch.rand(1, 3, 64, 64))
        assert out.num_points_per_level[-1] == 1
    assert group_norm(256).num_groups == 32  # the reference's GroupNorm(32, 256)


def test_points_match_double_loop():
    sizes, strides = [(3, 5), (2, 3), (1, 1)], [8, 16, 32]
    points, point_strides = compute_points(sizes, strides, torch.device("cpu"))
    expected, expected_strides = [], []
    for (h, w), s in zip(sizes, strides):
        for i in range(h):
            for j in range(w):
                expected.append((j * s + s // 2, i * s + s // 2))
                expected_strides.append(s)
    assert torch.equal(points, torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(point_strides, torch.tensor(expected_strides, dtype=torch.float32))


def test_network_points_follow_input_size():
    model = tiny_model(top_levels=0)
    a = model(torch.rand(1, 3, 64, 64))
    b = model(torch.rand(1, 3, 64, 96))
    for out, sizes in ((a, [(8, 8), (4, 4), (2, 2)]), (b, [(8, 12), (4, 6), (2, 3)])):
        expected, _ = compute_points(sizes, [8, 16, 32], torch.device("cpu"))
        assert torch.equal(out.points, expected)


def test_stride_in_1x1_and_freeze_at():
    msra = ResNetBody(depth=50, norm="FrozenBN", freeze_at=2, stride_in_1x1=True)
    tv = ResNetBody(depth=50, norm="BN", freeze_at=2, stride_in_1x1=False)
    for layer in ("layer2", "layer3", "layer4"):
        block0 = getattr(msra, layer)[0]
        assert block0.conv1.stride == (2, 2) and block0.conv2.stride == (1, 1)
        assert block0.downsample[0].stride == (2, 2)
        block0 = getattr(tv, layer)[0]
        assert block0.conv1.stride == (1, 1) and block0.conv2.stride == (2, 2)
    assert msra.layer1[0].conv1.stride == (1, 1) and msra.layer1[0].conv2.stride == (1, 1)
    assert isinstance(msra.bn1, FrozenBatchNorm2d)
    # Both place the stride differently but give C3-C5 at strides 8/16/32.
    with torch.no_grad():
        feats = msra(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]
    assert msra.out_channels == [512, 1024, 2048]

    # freeze_at=2: stem + layer1 frozen, the rest trains; with BN the frozen BNs stay in eval.
    for body in (msra, tv):
        assert not body.conv1.weight.requires_grad
        assert all(not p.requires_grad for p in body.layer1.parameters())
        assert all(p.requires_grad for p in body.layer2.parameters())
    tv.train()
    assert not tv.bn1.training and not tv.layer1[0].bn1.training
    assert tv.layer2[0].bn1.training
    for freeze_at in (0, -1):
        body = ResNetBody(depth=18, norm="BN", freeze_at=freeze_at)
        assert all(p.requires_grad for p in body.parameters())
    stem_only = ResNetBody(depth=18, norm="BN", freeze_at=1)
    assert not stem_only.conv1.weight.requires_grad
    assert all(p.requires_grad for p in stem_only.layer1.parameters())


def test_fpn_top_down_and_p6_from_p5_relu_before_p7():
    torch.manual_seed(0)
    fpn = FPN(in_channels_list=[8, 16, 24], out_channels=8, top_levels=2)
    # Odd sizes: nearest resize to the lateral's size.
    c3, c4, c5 = torch.randn(2, 8, 9, 13), torch.randn(2, 16, 5, 7), torch.randn(2, 24, 3, 4)
    outs = fpn([c3, c4, c5])
    with torch.no_grad():
        m5 = fpn.fpn_lateral5(c5)
        m4 = fpn.fpn_lateral4(c4) + F.interpolate(m5, size=(5, 7), mode="nearest")
        m3 = fpn.fpn_lateral3(c3) + F.interpolate(m4, size=(9, 13), mode="nearest")
        p3, p4, p5 = fpn.fpn_output3(m3), fpn.fpn_output4(m4), fpn.fpn_output5(m5)
        p6 = fpn.top_block["p6"](p5)
        assert (p6 < 0).any()  # else the ReLU check below could not fail
        p7 = fpn.top_block["p7"](F.relu(p6))
    for got, want in zip(outs, [p3, p4, p5, p6, p7]):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(outs[4], fpn.top_block["p7"](p6))
    assert len(FPN(in_channels_list=[8, 16, 24], out_channels=8, top_levels=1)([c3, c4, c5])) == 4
    assert len(FPN(in_channels_list=[8, 16, 24], out_channels=8, top_levels=0)([c3, c4, c5])) == 3
    assert fpn.fpn_lateral3.bias is not None and fpn.top_block["p6"].stride == (2, 2)


def _manual_tower(tower: nn.Sequential, x: torch.Tensor, level: int) -> torch.Tensor:
    for layer in tower:
        x = layer[level](x) if isinstance(layer, PerLevelBatchNorm) else layer(x)
    return x


def test_shared_tower_with_bn_per_level_feeds_top_layer():
    torch.manual_seed(0)
    head = FCOSHead(
        in_channels=8,
        num_classes=3,
        num_levels=3,
        num_cls_convs=0,
        num_box_convs=0,
        num_share_convs=3,
        norm="BN",
        use_scale=True,
    )
    assert len(head.cls_tower) == 0 and len(head.bbox_tower) == 0
    assert [type(m).__name__ for m in head.share_tower][:3] == [
        "Conv2d",
        "PerLevelBatchNorm",
        "ReLU",
    ]
    # Distinct per-level BNs and scales, so using the wrong level would change the output.
    with torch.no_grad():
        for level in range(3):
            for idx in (1, 4, 7):
                head.share_tower[idx][level].bias.fill_(0.1 * level)
                head.share_tower[idx][level].running_mean.fill_(-0.05 * level)
            head.scales[level].scale.fill_(1.0 - level)
    head.eval()
    feats = [torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3), torch.randn(2, 8, 2, 2)]
    cls, reg, ctr, towers = head(feats)
    with torch.no_grad():
        for level, f in enumerate(feats):
            t = _manual_tower(head.share_tower, f, level)
            torch.testing.assert_close(towers[level], t)
            torch.testing.assert_close(cls[level], head.cls_logits(t))
            torch.testing.assert_close(ctr[level], head.ctrness(t))
            want = F.relu(head.bbox_pred(t) * (1.0 - level))
            torch.testing.assert_close(reg[level], want)
    assert head.out_channels == 8
    torch.testing.assert_close(head.cls_logits.bias, torch.full((3,), -4.59511985))


def test_top_layer_reads_bbox_tower_in_network():
    torch.manual_seed(0)
    model = tiny_model(num_cls_convs=1, num_box_convs=2, top_levels=0).eval()
    seen = []
    model.top_layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    images = torch.rand(1, 3, 64, 64)
    model(images)
    with torch.no_grad():
        p = model.fpn(model.body(model.normalize(images)))
        for level, feature in enumerate(p):
            torch.testing.assert_close(
                seen[level], _manual_tower(model.head.bbox_tower, feature, level)
            )


def test_normalisation_bgr_255_and_zeroed_padding():
    model = tiny_model(top_levels=0)
    images = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(MSRA_MEAN).view(1, 3, 1, 1)
    manual = images.flip(1) * 255.0 - mean  # RGB -> BGR, 0-255, std 1
    torch.testing.assert_close(model.normalize(images), manual)
    # Padding is zeroed after normalising when image_sizes is given (the reference's input).
    sizes = [(40, 64), (64, 33)]
    padded = images.clone()
    padded[0, :, 40:] = 0
    padded[1, :, :, 33:] = 0
    x = model.normalize(padded, sizes)
    assert (x[0, :, 40:] == 0).all() and (x[1, :, :, 33:] == 0).all()
    torch.testing.assert_close(x[0, :, :40], manual[0, :, :40])
    torch.testing.assert_close(x[1, :, :, :33], manual[1, :, :, :33])
    assert (model.normalize(padded)[0, :, 40:] != 0).all()  # without sizes: -mean in padding
    seen = []
    model.body.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    model(padded, sizes)
    torch.testing.assert_close(seen[0], x)
    # RGB / ImageNet convention.
    rgb = BlendMask(
        body=model.body,
        fpn=model.fpn,
        head=model.head,
        top_layer=model.top_layer,
        basis_module=model.basis_module,
        fpn_strides=[8, 16, 32],
        input_format="RGB",
        input_scale=1.0,
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
    )
    want = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb.normalize(images), want)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 60, 64))


def test_protonet_sums_at_p3_and_bases_at_stride_4():
    torch.manual_seed(0)
    net = ProtoNet(in_channels=8, convs_dim=8, num_convs=3, num_bases=4, num_classes=5).eval()
    assert [type(m).__name__ for m in net.tower] == [
        "Sequential", "Sequential", "Sequential", "Upsample", "Sequential", "Conv2d"
    ]  # fmt: skip
    p3, p4, p5 = torch.randn(2, 8, 12, 16), torch.randn(2, 8, 6, 8), torch.randn(2, 8, 3, 4)
    bases, sem = net([p3, p4, p5, torch.randn(2, 8, 2, 2)])  # extra levels are ignored
    assert bases.shape == (2, 4, 24, 32) and sem.shape == (2, 6, 12, 16)
    with torch.no_grad():
        x = net.refine[0](p3)
        for refine, p in zip(net.refine[1:], [p4, p5]):
            x = x + F.interpolate(refine(p), size=(12, 16), mode="bilinear", align_corners=False)
        for layer in net.tower:
            x = layer(x)
    torch.testing.assert_close(bases, x)
    torch.testing.assert_close(sem, net.seg_head(p3))
    assert ProtoNet(in_channels=8, sem_loss_on=False)([p3, p4, p5])[1] is None
    # Train mode with batch 1 works (plain BatchNorm2d, no SyncBN process group needed).
    assert net.train()([p3[:1], p4[:1], p5[:1]])[0].shape == (1, 4, 24, 32)


@pytest.mark.parametrize("features", [["c3", "c5"], ["p3", "p5"]])
def test_deeplab_basis_shapes(features):
    torch.manual_seed(0)
    net = DeepLabBasis(low_channels=8, high_channels=12, convs_dim=8, num_bases=3, num_classes=4)
    bases, sem = net(torch.randn(1, 8, 16, 24), torch.randn(1, 12, 4, 6))  # batch 1, train mode
    assert bases.shape == (1, 3, 32, 48) and sem.shape == (1, 5, 16, 24)
    model = tiny_model(basis="DeepLab", basis_in_features=features, top_levels=0)
    out = model(torch.rand(2, 3, 64, 96))
    assert out.bases.shape == (2, 2, 16, 24) and out.sem_logits.shape == (2, 4, 8, 12)


def test_dcn_block_with_zero_offsets_is_half_the_plain_conv():
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False), FrozenBatchNorm2d(64))
    plain = Bottleneck(32, 16, stride=2, downsample=downsample, norm_layer=FrozenBatchNorm2d)
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    deform = DeformBottleneck(copy.deepcopy(plain))
    assert torch.count_nonzero(deform.conv2_offset.weight) == 0
    assert deform.conv2_offset.out_channels == 27 and deform.conv2.bias is None
    x = torch.randn(2, 32, 9, 10)
    with torch.no_grad():
        plain.conv2.weight.mul_(0.5)  # sigmoid(0) = 0.5 modulation
        torch.testing.assert_close(deform(x), plain(x), atol=1e-5, rtol=1e-5)
        # Layout: channels 0-17 interleave (dy, dx) per tap, 18-26 are mask logits. dx = +1 on
        # every tap with mask ~1 reads the input one pixel to the right.
        plain.conv2.weight.mul_(2.0)
        deform.conv2_offset.bias[1:18:2] = 1.0
        deform.conv2_offset.bias[18:] = 30.0
        y = plain.relu(plain.bn1(plain.conv1(x)))
        want = plain.conv2(F.pad(y[..., 1:], (0, 1)))
        got_mid = deform.conv2(
            y, deform.conv2_offset(y)[:, :18], deform.conv2_offset(y)[:, 18:].sigmoid()
        )
        # Column 0 differs only because `want` zero-pads where the shifted read is inside y.
        torch.testing.assert_close(got_mid[..., 1:], want[..., 1:], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(got_mid, plain.conv2(y))

    body = ResNetBody(depth=50, deform_interval=3)
    deformable = {
        name: [i for i, b in enumerate(getattr(body, name)) if isinstance(b, DeformBottleneck)]
        for name in ("layer1", "layer2", "layer3", "layer4")
    }
    assert deformable == {"layer1": [], "layer2": [0, 3], "layer3": [0, 3], "layer4": [0]}
    # stride_in_1x1 applies to the deformable block 0 too.
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)
    with torch.no_grad():
        feats = body(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [8, 4, 2]


def test_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = tiny_model(num_share_convs=1, head_norm="BN").train()
    out = model(torch.rand(2, 3, 64, 64))
    total = sum(t.float().sum() for t in out[:6] if isinstance(t, torch.Tensor))
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert not model.body.conv1.weight.requires_grad  # freeze_at=2


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="backbone name"):
        build_body("vgg16", norm="FrozenBN", freeze_at=2, stride_in_1x1=True, deform_interval=0)
    with pytest.raises(ValueError, match="backbone depth"):
        build_body("resnet42", norm="FrozenBN", freeze_at=2, stride_in_1x1=True, deform_interval=0)
    with pytest.raises(ValueError, match="norm"):
        ResNetBody(depth=18, norm="LN")
    with pytest.raises(ValueError, match="deform_interval"):
        ResNetBody(depth=18, deform_interval=3)
    with pytest.raises(ValueError, match="norm"):
        FCOSHead(in_channels=8, num_classes=2, num_levels=3, norm="LN")
    with pytest.raises(ValueError, match="basis_in_features"):
        tiny_model(basis_in_features=["p3", "p9"])


def test_build_body_efficientnet_is_dispatched():
    body = build_body(
        "efficientnet_lite0", norm="FrozenBN", freeze_at=0, stride_in_1x1=True, deform_interval=0
    )
    with torch.no_grad():
        feats = body(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [8, 4, 2]
    assert [f.shape[1] for f in feats] == list(body.out_channels)


# ---------------------------------------------------------------------------------------------
# Structure of the reference models: our state dict must be a pure rename of theirs.


def _to_reference_key(key: str) -> str | None:
    """Our key -> AdelaiDet key (what the checkpoint importer will do with a rename table)."""
    if key in ("pixel_mean", "pixel_std"):
        return None
    if key.startswith("body."):
        key = key[len("body.") :]
        key = re.sub(r"^conv1\.", "stem.conv1.", key)
        key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
        key = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", key)
        key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
        key = key.replace(".downsample.0.", ".shortcut.").replace(
            ".downsample.1.", ".shortcut.norm."
        )
        return "backbone.bottom_up." + key
    if key.startswith("fpn."):
        return "backbone." + key[len("fpn.") :]
    if key.startswith("head."):
        return "proposal_generator.fcos_head." + key[len("head.") :]
    return key


def _reference_model(
    *,
    body_norm: str,
    freeze_at: int,
    top_levels: int,
    cls_convs: int,
    box_convs: int,
    share_convs: int,
    head_norm: str,
    basis_convs: int,
) -> BlendMask:
    body = build_body(
        "resnet50", norm=body_norm, freeze_at=freeze_at, stride_in_1x1=True, deform_interval=0
    )
    fpn = FPN(in_channels_list=body.out_channels, out_channels=256, top_levels=top_levels)
    head = FCOSHead(
        in_channels=256,
        num_classes=80,
        num_levels=fpn.num_levels,
        num_cls_convs=cls_convs,
        num_box_convs=box_convs,
        num_share_convs=share_convs,
        norm=head_norm,
    )
    return BlendMask(
        body=body,
        fpn=fpn,
        head=head,
        top_layer=make_top_layer(in_channels=head.out_channels, num_bases=4, attn_size=14),
        basis_module=ProtoNet(in_channels=256, num_convs=basis_convs, num_bases=4, norm="BN"),
        fpn_strides=fpn.strides,
        pixel_mean=MSRA_MEAN,
        pixel_std=[1.0, 1.0, 1.0],
    )


REFERENCE_CONFIGS = {
    "r50": dict(body_norm="FrozenBN", freeze_at=2, top_levels=2, cls_convs=4, box_convs=4,
                share_convs=0, head_norm="GN", basis_convs=3),
    "550_r50": dict(body_norm="FrozenBN", freeze_at=2, top_levels=1, cls_convs=0, box_convs=0,
                    share_convs=3, head_norm="GN", basis_convs=2),
    "rt_r50": dict(body_norm="SyncBN", freeze_at=-1, top_levels=0, cls_convs=0, box_convs=0,
                   share_convs=3, head_norm="GN", basis_convs=2),
    "rt_r50_bn_head": dict(body_norm="SyncBN", freeze_at=-1, top_levels=0, cls_convs=0,
                           box_convs=0, share_convs=3, head_norm="SyncBN", basis_convs=2),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_state_dict_is_a_pure_rename_of_the_reference(name):
    reference = json.loads((KEYS_DIR / f"{name}.json").read_text())
    model = _reference_model(**REFERENCE_CONFIGS[name])
    ours = {
        k: (list(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in model.state_dict().items()
        if k not in ("pixel_mean", "pixel_std")
    }
    theirs = {k: (shape, dtype) for k, shape, dtype in reference}
    assert len(ours) == len(theirs)
    # Multisets of shapes (and dtypes) agree ...
    assert sorted(map(str, ours.values())) == sorted(map(str, theirs.values()))
    # ... and a plain rename table maps every key 1:1 onto a reference key of the same shape.
    renamed = {_to_reference_key(k): v for k, v in ours.items()}
    assert len(renamed) == len(ours)
    assert renamed == theirs
