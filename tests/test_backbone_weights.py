"""ImageNet ResNet weight files: torchvision, MSRA/Caffe2 and detectron2 naming -> our body.

The files are synthesised here from torchvision's randomly initialised ResNets, with the Caffe2
and detectron2 names written out by hand (independently of the module's regexes).
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from blendmask.config import Config, ModelConfig
from blendmask.factory import build
from blendmask.interop.torchvision_weights import (
    apply_weight_conventions,
    load_backbone_weights,
    read_backbone_weights,
    resolve_weight_conventions,
)
from blendmask.presets import get_preset


def _resnet_state(depth: int, seed: int = 0) -> dict[str, Tensor]:
    """torchvision ResNet state dict with random, distinct BN statistics (fc included)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            v.uniform_(0.5, 1.5)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            v.normal_()
        elif k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
    return state


def _body(depth: int, norm: type[nn.Module] = FrozenBatchNorm2d) -> nn.Module:
    """Stand-in for ResNetBody: torchvision's ResNet without fc (same module names)."""
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=norm)
    del model.fc
    return model


def _caffe2_name(key: str) -> str | None:
    """torchvision key -> MSRA blob name (None for what MSRA files do not hold)."""
    if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return None
    if key == "conv1.weight":
        return "conv1_w"
    if key.startswith("bn1."):
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[key.split(".")[1]]
    if key.startswith("fc."):
        return "fc1000_" + key.split(".")[1][0]
    layer, block, module, *rest = key.split(".")
    stage = int(layer[len("layer") :]) + 1
    if module == "downsample":
        branch, sub, field = "branch1", rest[0], rest[1]
        is_norm = sub == "1"
    else:
        branch = "branch2" + "abc"[int(module[-1]) - 1]
        field = rest[0]
        is_norm = module.startswith("bn")
    suffix = ("bn_s" if field == "weight" else "bn_b") if is_norm else "w"
    return f"res{stage}_{block}_{branch}_{suffix}"


def _detectron2_name(key: str) -> str | None:
    """torchvision key -> detectron2 name (D:tools/convert-torchvision-to-d2.py rules)."""
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    if "layer" not in key:
        key = "stem." + key
    for i in range(4):
        key = key.replace(f"layer{i + 1}", f"res{i + 2}")
    for i in range(1, 4):
        key = key.replace(f"bn{i}", f"conv{i}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


@pytest.fixture(scope="module")
def r50_state() -> dict[str, Tensor]:
    return _resnet_state(50)


@pytest.fixture(scope="module")
def r18_state() -> dict[str, Tensor]:
    return _resnet_state(18)


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory, r50_state) -> Path:
    path = tmp_path_factory.mktemp("w") / "resnet50-0676ba61.pth"
    torch.save(r50_state, path)
    return path


def _msra_blobs(state: dict[str, Tensor]) -> dict[str, np.ndarray]:
    blobs = {}
    for k, v in state.items():
        name = _caffe2_name(k)
        if name is not None:
            blobs[name] = v.numpy().copy()
            if name.endswith("_w") and not name.startswith("fc"):
                blobs[name + "_momentum"] = np.zeros_like(blobs[name])
    return blobs


# ---------------------------------------------------------------- torchvision


@pytest.mark.slow
def test_torchvision_file_round_trips_value_for_value(r50_file, r50_state):
    weights = read_backbone_weights(r50_file)
    assert weights.depth == 50
    assert weights.convention == "torchvision"
    assert weights.stride_in_1x1 is False
    assert weights.input_format == "RGB" and weights.input_scale == 1.0
    # detectron2's converter asks for mean [123.675, 116.28, 103.53] / std [58.395, 57.12, 57.375]
    # on 0-255 RGB: the same maths as ours on [0, 1]
    np.testing.assert_allclose(np.array(weights.pixel_mean) * 255, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(np.array(weights.pixel_std) * 255, [58.395, 57.12, 57.375])
    expected = {
        k: v for k, v in r50_state.items() if not k.startswith("fc.") and "num_batches" not in k
    }
    assert set(weights.state_dict) == set(expected)
    for k, v in expected.items():
        assert torch.equal(weights.state_dict[k], v), k

    for norm in (FrozenBatchNorm2d, nn.BatchNorm2d):
        body = _body(50, norm)
        load_backbone_weights(body, weights, depth=50)
        for k, v in expected.items():
            assert torch.equal(body.state_dict()[k], v), (norm.__name__, k)


def test_module_prefix_and_wrapped_state_dict(tmp_path, r18_state):
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in r18_state.items()}}, path)
    weights = read_backbone_weights(path)
    assert weights.depth == 18
    assert torch.equal(
        weights.state_dict["layer4.1.bn2.running_var"], r18_state["layer4.1.bn2.running_var"]
    )


# ---------------------------------------------------------------- MSRA / Caffe2


# protocol 2 is what the Python-2-era R-50.pkl uses (R-18 here to keep the slow encoding small)
@pytest.mark.slow
@pytest.mark.parametrize(("depth", "protocol"), [(50, pickle.HIGHEST_PROTOCOL), (18, 2)])
def test_msra_pickle_maps_to_the_same_places(tmp_path, request, depth, protocol):
    state = request.getfixturevalue(f"r{depth}_state")
    path = tmp_path / f"R-{depth}.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": _msra_blobs(state)}, f, protocol=protocol)
    weights = read_backbone_weights(path)
    assert weights.depth == depth
    assert weights.convention == "msra"
    assert weights.stride_in_1x1 is True
    assert weights.input_format == "BGR" and weights.input_scale == 255.0
    assert weights.pixel_mean == [103.53, 116.28, 123.675] and weights.pixel_std == [1.0, 1.0, 1.0]

    sd = weights.state_dict
    for k, v in state.items():
        if k.startswith("fc.") or "num_batches" in k:
            assert k not in sd
        elif k.endswith("running_mean"):
            assert torch.equal(sd[k], torch.zeros_like(v)), k  # folded BN
        elif k.endswith("running_var"):
            assert torch.equal(sd[k], torch.ones_like(v)), k
        else:
            assert torch.equal(sd[k], v), k
    assert not any("momentum" in k for k in sd)

    body = _body(depth)
    load_backbone_weights(body, weights, depth=depth)
    # FrozenBN on folded MSRA stats is w / sqrt(1 + eps) * x + b, as detectron2 computes it
    x = torch.randn(2, 64, 3, 3)
    w, b = state["bn1.weight"], state["bn1.bias"]
    expected = x * (w / (1 + 1e-5) ** 0.5).view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(body.bn1(x), expected)


def test_msra_pickle_with_unknown_blob_is_rejected(tmp_path, r18_state):
    blobs = _msra_blobs(r18_state)
    blobs["res2_0_branch2a_offset_w"] = np.zeros((3,), np.float32)
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(blobs))
    with pytest.raises(ValueError, match=r"odd\.pkl.*res2_0_branch2a_offset_w"):
        read_backbone_weights(path)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": Evil()}))
    with pytest.raises(ValueError, match=r"evil\.pkl.*refusing"):
        read_backbone_weights(path)


# ---------------------------------------------------------------- detectron2 format


def test_detectron2_files_follow_their_author(tmp_path, r18_state):
    d2 = {_detectron2_name(k): v.numpy() for k, v in r18_state.items() if _detectron2_name(k)}
    assert "res2.0.conv1.norm.weight" in d2 and "res3.0.shortcut.norm.running_var" in d2
    assert "stem.conv1.norm.bias" in d2

    path = tmp_path / "R-50-tv.pkl"
    path.write_bytes(
        pickle.dumps({"model": d2, "__author__": "torchvision", "matching_heuristics": True})
    )
    weights = read_backbone_weights(path)
    assert weights.convention == "torchvision" and weights.depth == 18
    for k, v in r18_state.items():
        if not k.startswith("fc.") and "num_batches" not in k:
            assert torch.equal(weights.state_dict[k], v), k

    # a detectron2 .pth without an author and with folded BN came from MSRA weights
    folded = {k: torch.from_numpy(v) for k, v in d2.items() if "running" not in k}
    path = tmp_path / "model_final.pth"
    torch.save({"model": folded, "iteration": 10}, path)
    weights = read_backbone_weights(path)
    assert weights.convention == "msra" and weights.stride_in_1x1 is True
    assert torch.equal(weights.state_dict["layer3.1.bn2.running_var"], torch.ones(256))


# ---------------------------------------------------------------- depths and errors


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 34, 101])
def test_depth_is_inferred_and_basic_blocks_load(tmp_path, depth):
    state = _resnet_state(depth)
    path = tmp_path / f"r{depth}.pth"
    torch.save(state, path)
    weights = read_backbone_weights(path)
    assert weights.depth == depth
    if depth == 18:
        # basic blocks through the MSRA names as well (branch2a / branch2b only)
        pkl = tmp_path / "R-18.pkl"
        pkl.write_bytes(pickle.dumps(_msra_blobs(state)))
        msra = read_backbone_weights(pkl)
        assert msra.depth == 18
        assert torch.equal(msra.state_dict["layer2.0.conv2.weight"], state["layer2.0.conv2.weight"])
        assert torch.equal(
            msra.state_dict["layer2.0.downsample.1.bias"], state["layer2.0.downsample.1.bias"]
        )
        body = _body(18)
        load_backbone_weights(body, msra, depth=18)
        assert torch.equal(body.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])


def test_wrong_depth_names_file_and_both_depths(tmp_path, r50_file):
    weights = read_backbone_weights(r50_file)
    with pytest.raises(ValueError) as info:
        load_backbone_weights(_body(18), weights, depth=18)
    message = str(info.value)
    assert "resnet50-0676ba61.pth" in message
    assert "holds a ResNet-50, preset asks for ResNet-18" in message


def test_body_mismatch_lists_all_problems(r50_file):
    weights = read_backbone_weights(r50_file)
    state = dict(weights.state_dict)
    state.pop("layer2.1.conv2.weight")
    state["layer1.0.bn1.weight"] = torch.ones(3)
    weights.state_dict = state
    with pytest.raises(ValueError) as info:
        load_backbone_weights(_body(50), weights, depth=50)
    message = str(info.value)
    assert "resnet50-0676ba61.pth" in message
    assert "layer2.1.conv2.weight" in message and "layer1.0.bn1.weight" in message


def test_garbage_and_foreign_files_are_rejected_with_the_file_name(tmp_path, r18_state):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        read_backbone_weights(garbage)
    garbage_pkl = tmp_path / "garbage.pkl"
    garbage_pkl.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="garbage.pkl"):
        read_backbone_weights(garbage_pkl)

    foreign = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, foreign)
    with pytest.raises(ValueError, match=r"vgg\.pth: not a ResNet"):
        read_backbone_weights(foreign)

    resnext = dict(r18_state)
    resnext["layer1.0.conv2.weight"] = torch.zeros(128, 4, 3, 3)  # grouped, wider
    path = tmp_path / "resnext.pth"
    torch.save(resnext, path)
    with pytest.raises(ValueError, match=r"resnext\.pth.*ResNeXt"):
        read_backbone_weights(path)

    truncated = {k: v for k, v in r18_state.items() if not k.startswith("layer4.1.")}
    path = tmp_path / "truncated.pth"
    torch.save(truncated, path)
    with pytest.raises(ValueError, match=r"truncated\.pth: basic blocks per stage \[2, 2, 2, 1\]"):
        read_backbone_weights(path)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_backbone_weights(tmp_path / "missing.pth")


def test_apply_weight_conventions(tmp_path, r18_state):
    tv_path = tmp_path / "resnet18.pth"
    torch.save(r18_state, tv_path)
    cfg = ModelConfig()
    cfg.backbone.name = "resnet18"
    assert cfg.input_format == "BGR"  # the default is MSRA's
    apply_weight_conventions(cfg, read_backbone_weights(tv_path))
    assert (cfg.input_format, cfg.input_scale) == ("RGB", 1.0)
    assert cfg.pixel_mean == [0.485, 0.456, 0.406] and cfg.pixel_std == [0.229, 0.224, 0.225]
    assert cfg.backbone.stride_in_1x1 is False

    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"blobs": _msra_blobs(r18_state)}))
    apply_weight_conventions(cfg, read_backbone_weights(path))
    assert (cfg.input_format, cfg.input_scale) == ("BGR", 255.0)
    assert cfg.pixel_mean == [103.53, 116.28, 123.675] and cfg.backbone.stride_in_1x1 is True

    cfg.backbone.name = "resnet101"
    with pytest.raises(ValueError, match="holds a ResNet-18, preset asks for ResNet-101"):
        apply_weight_conventions(cfg, read_backbone_weights(tv_path))


# ---------------------------------------------------------------- configs and build()


def _tiny_with_weights(path: Path) -> Config:
    cfg = get_preset("tiny")
    cfg.model.backbone.weights = str(path)
    return cfg


def test_resolve_weight_conventions_returns_a_new_config(tmp_path, r18_state):
    pkl = tmp_path / "R-18.pkl"
    pkl.write_bytes(pickle.dumps({"blobs": _msra_blobs(r18_state)}))
    cfg = _tiny_with_weights(pkl)  # tiny: RGB, scale 1, ImageNet mean/std, stride in the 3x3
    before = copy.deepcopy(cfg)
    resolved = resolve_weight_conventions(cfg)
    assert cfg == before  # the argument is not changed
    m = resolved.model
    assert (m.input_format, m.input_scale, m.backbone.stride_in_1x1) == ("BGR", 255.0, True)
    assert m.pixel_mean == [103.53, 116.28, 123.675] and m.pixel_std == [1.0, 1.0, 1.0]
    # Everything else is the input's.
    m.input_format, m.input_scale, m.backbone.stride_in_1x1 = "RGB", 1.0, False
    m.pixel_mean, m.pixel_std = before.model.pixel_mean, before.model.pixel_std
    assert resolved == before

    # No file, or a body that is not a ResNet: an equal copy, not the same object.
    for other in (get_preset("tiny"), get_preset("shapes_lite0")):
        copied = resolve_weight_conventions(other)
        assert copied == other and copied is not other and copied.model is not other.model


def test_build_refuses_conventions_other_than_the_files_and_never_changes_cfg(tmp_path, r18_state):
    pkl = tmp_path / "R-18.pkl"
    pkl.write_bytes(pickle.dumps({"blobs": _msra_blobs(r18_state)}))
    cfg = _tiny_with_weights(pkl)
    before = copy.deepcopy(cfg)
    with pytest.raises(ValueError) as info:
        build(cfg)
    message = str(info.value)
    assert "R-18.pkl" in message and "resolve_weight_conventions" in message
    assert "model.input_format is RGB, the file needs BGR" in message
    assert cfg == before

    resolved = resolve_weight_conventions(cfg)
    resolved_before = copy.deepcopy(resolved)
    model, _, _ = build(resolved)
    assert resolved == resolved_before
    # The MSRA stem scale landed in the body, and the normalisation is the file's.
    assert torch.equal(model.body.bn1.weight, r18_state["bn1.weight"])
    assert model.pixel_mean.flatten().tolist() == pytest.approx([103.53, 116.28, 123.675])


def test_build_with_a_consistent_torchvision_file_loads_it(tmp_path, r18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(r18_state, path)
    cfg = _tiny_with_weights(path)  # tiny already has torchvision's conventions
    before = copy.deepcopy(cfg)
    model, _, _ = build(cfg)
    assert cfg == before
    assert torch.equal(model.body.layer3[1].bn2.running_var, r18_state["layer3.1.bn2.running_var"])
    cfg.model.backbone.name = "resnet34"
    with pytest.raises(ValueError, match="holds a ResNet-18, preset asks for ResNet-34"):
        build(cfg)
