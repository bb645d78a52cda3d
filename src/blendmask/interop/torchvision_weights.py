"""ImageNet ResNet weights for the backbone body: torchvision, MSRA/Caffe2 and detectron2 files.

BlendMask trains from an ImageNet-pretrained ResNet (paper Sec. 4, "ResNet-50 ... pretrained on
ImageNet"; the reference uses detectron2's MSRA `R-50.pkl`). This module reads such a file into
torchvision's naming (the names of `modeling/backbone.py::ResNetBody`) and says how the weights
expect their input, following detectron2's converters (docs/reference.md §5.3):

| file | names | input | stride |
|---|---|---|---|
| torchvision `.pth` (`resnet50-0676ba61.pth`) | `conv1.weight`, `layer1.0.bn1.weight` | RGB [0, 1], ImageNet mean/std | in the 3x3 |
| MSRA / Caffe2 `.pkl` (`R-50.pkl`) | `conv1_w`, `res2_0_branch2a_bn_s` | BGR 0-255, mean [103.53, 116.28, 123.675], std 1 | in the 1x1 |
| detectron2 `.pkl` / `.pth` (`{"model": ...}`) | `stem.conv1.weight`, `res2.0.conv1.norm.weight` | by `__author__` | by `__author__` |

The pixel statistics follow `ModelConfig`'s convention: the network's [0, 1] RGB input is
flipped to `input_format`, multiplied by `input_scale`, then `(x - pixel_mean) / pixel_std`.
torchvision weights get scale 1 with mean [0.485, 0.456, 0.406] / std [0.229, 0.224, 0.225]
(the same maths as detectron2's 255-scaled [123.675, ...] / [58.395, ...]).

MSRA files hold BatchNorm folded into a scale `_bn_s` and bias `_bn_b`; they become `weight` and
`bias` with running_mean 0 and running_var 1, so FrozenBatchNorm2d (eps 1e-5) computes
w / sqrt(1 + 1e-5), exactly as detectron2.

Safety: `.pth` files are read with `torch.load(weights_only=True)`. `.pkl` files are pickles; they
are read with an unpickler that only builds numpy arrays, dicts and plain values, and only local
files the user names are read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from blendmask.config import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    MSRA_PIXEL_MEAN,
    MSRA_PIXEL_STD,
    Config,
    ModelConfig,
)
from blendmask.interop.pickles import read_weight_pickle
from blendmask.interop.resnet_names import (
    IGNORE_D2,
    IGNORE_MSRA,
    IGNORE_TV,
    d2_name,
    fill_folded_bn,
    infer_depth,
    is_folded,
    msra_name,
    rename_body_keys,
    tv_name,
)
from blendmask.modeling.state_dict import load_state_dict_checked


@dataclass
class BackboneWeights:
    """An ImageNet ResNet body in torchvision naming plus the input conventions it was trained with.

    Fields:
        state_dict: `conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`,
            `layer{1-4}.{b}.conv{1-3}.weight`, `...bn{1-3}.*`, `...downsample.{0,1}.*`; no fc and no
            num_batches_tracked.
        depth: 18, 34, 50, 101 or 152, inferred from the block counts and block kind.
        convention: "torchvision" or "msra".
        stride_in_1x1: True for MSRA (stride on the first 1x1 of a bottleneck), False torchvision.
        input_format: "RGB" or "BGR"; input_scale: 1.0 or 255.0; pixel_mean, pixel_std: 3 values,
            applied after the channel flip and the scaling (see the module docstring).
        source: the file it came from, for messages.
    """

    state_dict: dict[str, Tensor]
    depth: int
    convention: str
    stride_in_1x1: bool
    input_format: str
    input_scale: float
    pixel_mean: list[float]
    pixel_std: list[float]
    source: str = ""


def _read_raw(path: Path) -> dict[str, Any]:
    """Load the file's top-level dict: pickle for .pkl, torch.load(weights_only) otherwise."""
    if path.suffix == ".pkl":
        data = read_weight_pickle(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable PyTorch weight file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    return data


def _torchvision_weights(state: dict[str, Tensor], depth: int, path: Path) -> BackboneWeights:
    return BackboneWeights(
        state_dict=state,
        depth=depth,
        convention="torchvision",
        stride_in_1x1=False,
        input_format="RGB",
        input_scale=1.0,
        pixel_mean=list(IMAGENET_PIXEL_MEAN),
        pixel_std=list(IMAGENET_PIXEL_STD),
        source=str(path),
    )


def _msra_weights(state: dict[str, Tensor], depth: int, path: Path) -> BackboneWeights:
    return BackboneWeights(
        state_dict=state,
        depth=depth,
        convention="msra",
        stride_in_1x1=True,
        input_format="BGR",
        input_scale=255.0,
        pixel_mean=list(MSRA_PIXEL_MEAN),
        pixel_std=list(MSRA_PIXEL_STD),
        source=str(path),
    )


def read_backbone_weights(path: str | Path) -> BackboneWeights:
    """Read an ImageNet ResNet file into torchvision naming with its input conventions.

    Accepts a torchvision state dict (`.pth`, fc and num_batches_tracked dropped, a `module.`
    prefix stripped), an MSRA / Caffe2 pickle (`.pkl`, blobs possibly under "blobs"), and
    detectron2 files (`{"model": {...}}` in `stem.conv1` / `res2.0.conv1.norm` names, `.pkl` or
    `.pth`). A detectron2 file's conventions come from its `__author__` ("torchvision" ->
    torchvision, otherwise MSRA); without one, folded BN (all running means 0, variances 1) means
    MSRA and real statistics mean torchvision.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, not a ResNet body, or block counts of no known depth; the message
            names the file and what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weight file not found")
    raw = _read_raw(path)
    author = raw.get("__author__")
    for wrapper in ("blobs", "model", "state_dict"):
        if wrapper in raw and isinstance(raw[wrapper], dict):
            raw = raw[wrapper]
            break
    keys = [k for k in raw if isinstance(k, str)]
    if len(keys) != len(raw) or not keys:
        raise ValueError(f"{path}: expected a non-empty dict with string keys")
    if all(k.startswith("module.") for k in keys):
        raw = {k[len("module.") :]: v for k, v in raw.items()}
        keys = list(raw)

    if "conv1_w" in raw:
        state = rename_body_keys(path, raw, msra_name, IGNORE_MSRA, "MSRA/Caffe2")
        fill_folded_bn(state)
        return _msra_weights(state, infer_depth(path, state), path)
    if "stem.conv1.weight" in raw:
        state = rename_body_keys(path, raw, d2_name, IGNORE_D2, "detectron2")
        folded = fill_folded_bn(state) or is_folded(state)
        depth = infer_depth(path, state)
        torchvision_like = author == "torchvision" if author is not None else not folded
        if torchvision_like:
            return _torchvision_weights(state, depth, path)
        return _msra_weights(state, depth, path)
    if "conv1.weight" in raw and any(k.startswith("layer1.") for k in keys):
        # torchvision files always hold running statistics: none are invented here
        state = rename_body_keys(path, raw, tv_name, IGNORE_TV, "torchvision")
        return _torchvision_weights(state, infer_depth(path, state), path)
    raise ValueError(
        f"{path}: not a ResNet weight file: found none of 'conv1.weight' (torchvision), "
        f"'conv1_w' (MSRA/Caffe2), 'stem.conv1.weight' (detectron2); first keys: {keys[:5]}"
    )


def check_depth(weights: BackboneWeights, depth: int) -> None:
    """Raise ValueError if the file's ResNet depth differs from the one asked for."""
    if weights.depth != depth:
        raise ValueError(
            f"{weights.source or 'backbone weights'} holds a ResNet-{weights.depth}, "
            f"preset asks for ResNet-{depth}"
        )


def load_backbone_weights(body: nn.Module, weights: BackboneWeights, *, depth: int) -> None:
    """Load `weights` strictly into a ResNet body with torchvision module names.

    Args:
        body: `ResNetBody` (or any module with torchvision ResNet names, no fc); its BN layers may
            be FrozenBatchNorm2d or BatchNorm2d.
        weights: from `read_backbone_weights`.
        depth: the depth the model was built with.

    Raises:
        ValueError: wrong depth, or missing / unexpected / mis-shaped keys (counted, the first
            of each named, in one message).
    """
    check_depth(weights, depth)
    expected = body.state_dict()
    state = dict(weights.state_dict)
    for key in expected:
        # BatchNorm2d counts batches; the file has no count to give it
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    load_state_dict_checked(
        body,
        state,
        source=weights.source,
        what=f"ResNet-{weights.depth} weights do not fit the body",
    )


def apply_weight_conventions(cfg_model: ModelConfig, weights: BackboneWeights) -> None:
    """Set input_format, input_scale, pixel_mean, pixel_std and backbone.stride_in_1x1 of
    `cfg_model` (changed in place) to what `weights` were trained with; checks the ResNet depth
    when the config names one. `resolve_weight_conventions` does the same on a copy."""
    name = cfg_model.backbone.name
    if name.startswith("resnet"):
        check_depth(weights, int(name[len("resnet") :]))
    for field_name, value in _conventions(weights).items():
        target = cfg_model.backbone if field_name == "stride_in_1x1" else cfg_model
        setattr(target, field_name, value)


def _conventions(weights: BackboneWeights) -> dict[str, Any]:
    """The ModelConfig fields (backbone.stride_in_1x1 as stride_in_1x1) the weights decide."""
    return {
        "input_format": weights.input_format,
        "input_scale": weights.input_scale,
        "pixel_mean": list(weights.pixel_mean),
        "pixel_std": list(weights.pixel_std),
        "stride_in_1x1": weights.stride_in_1x1,
    }


def convention_mismatches(cfg_model: ModelConfig, weights: BackboneWeights) -> list[str]:
    """The fields of `cfg_model` that differ from what `weights` need, e.g.
    "model.input_format is BGR, the file needs RGB" (empty when consistent)."""
    out = []
    for field_name, wanted in _conventions(weights).items():
        if field_name == "stride_in_1x1":
            key, have = "model.backbone.stride_in_1x1", cfg_model.backbone.stride_in_1x1
        else:
            key, have = f"model.{field_name}", getattr(cfg_model, field_name)
        if have != wanted:
            out.append(f"{key} is {have}, the file needs {wanted}")
    return out


def check_weight_conventions(cfg_model: ModelConfig, weights: BackboneWeights) -> None:
    """Raise ValueError when `cfg_model` does not describe a network these weights fit: another
    ResNet depth, or input conventions (channel order, scale, mean / std, stride placement)
    other than the file's. The fix is to resolve the config before building."""
    name = cfg_model.backbone.name
    if name.startswith("resnet"):
        check_depth(weights, int(name[len("resnet") :]))
    problems = convention_mismatches(cfg_model, weights)
    if problems:
        raise ValueError(
            f"{weights.source}: model.backbone.weights is a {weights.convention} ResNet file and "
            f"the config does not follow its conventions ({'; '.join(problems)}); resolve the "
            "config first with blendmask.interop.torchvision_weights.resolve_weight_conventions"
            "(cfg) (`blendmask train --backbone-weights FILE` does it), so that the config you "
            "save describes the network you build"
        )


def resolve_weight_conventions(cfg: Config) -> Config:
    """A new Config whose input format, scale, pixel mean / std and backbone.stride_in_1x1 are
    those the ImageNet ResNet file in `cfg.model.backbone.weights` was trained with; an
    unchanged copy when no file is named or the body is not a ResNet. `cfg` is not changed.

    Raises:
        FileNotFoundError / ValueError: as `read_backbone_weights`, or the file's ResNet depth
            differs from the body's.
    """
    out = copy.deepcopy(cfg)
    m = out.model
    if m.backbone.weights and m.backbone.name.startswith("resnet"):
        apply_weight_conventions(m, read_backbone_weights(m.backbone.weights))
    return out
