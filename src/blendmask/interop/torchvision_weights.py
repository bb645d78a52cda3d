"""ImageNet ResNet weights for the backbone body: torchvision, MSRA/Caffe2 and detectron2 files.

BlendMask trains from an ImageNet-pretrained ResNet (paper Sec. 4, "ResNet-50 ... pretrained on
ImageNet"; the reference uses detectron2's MSRA `R-50.pkl`). This module reads such a file into
torchvision's naming (the names of `modeling/backbone.py::ResNetBody`) and says how the weights
expect their input, following detectron2's converters (reference/ADELAIDET.md Sec. 5.3):

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

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from blendmask.config import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    MSRA_PIXEL_MEAN,
    MSRA_PIXEL_STD,
    ModelConfig,
)

# (bottleneck, blocks per stage res2..res5) -> depth
_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for weight pickles: builds numpy arrays and containers, nothing else."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1")
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight pickle")
        if module.startswith("numpy.core"):
            # numpy 2 moved numpy.core to numpy._core; old pickles still name the former
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _read_raw(path: Path) -> dict[str, Any]:
    """Load the file's top-level dict: pickle for .pkl, torch.load(weights_only) otherwise."""
    if path.suffix == ".pkl":
        try:
            with path.open("rb") as f:
                data = _ArrayUnpickler(f, encoding="latin1").load()
        except Exception as exc:  # any unreadable pickle is the same user error
            raise ValueError(f"{path}: not a readable weight pickle ({exc})") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable PyTorch weight file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    return data


def _to_tensor(path: Path, key: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    raise ValueError(f"{path}: entry '{key}' is a {type(value).__name__}, expected an array")


_MSRA_STAGE = re.compile(r"^res(\d)_(\d+)_branch(1|2[abc])_(w|b|bn_s|bn_b|bn_rm|bn_riv)$")
_MSRA_BN = {"bn_s": "weight", "bn_b": "bias", "bn_rm": "running_mean", "bn_riv": "running_var"}
_MSRA_STEM = {
    "conv1_w": "conv1.weight",
    "res_conv1_bn_s": "bn1.weight",
    "res_conv1_bn_b": "bn1.bias",
    "res_conv1_bn_rm": "bn1.running_mean",
    "res_conv1_bn_riv": "bn1.running_var",
}


def _msra_name(blob: str) -> str | None:
    """Caffe2 blob name -> torchvision name; None if it is not a body blob."""
    if blob in _MSRA_STEM:
        return _MSRA_STEM[blob]
    m = _MSRA_STAGE.match(blob)
    if m is None:
        return None
    stage, block, branch, kind = int(m[1]), int(m[2]), m[3], m[4]
    if not 2 <= stage <= 5 or kind == "b":  # the body's convolutions have no bias
        return None
    prefix = f"layer{stage - 1}.{block}"
    if branch == "1":
        conv, norm = f"{prefix}.downsample.0", f"{prefix}.downsample.1"
    else:
        k = "abc".index(branch[1]) + 1
        conv, norm = f"{prefix}.conv{k}", f"{prefix}.bn{k}"
    return f"{conv}.weight" if kind == "w" else f"{norm}.{_MSRA_BN[kind]}"


_D2_STEM = re.compile(r"^stem\.conv1\.(weight|norm\.(weight|bias|running_mean|running_var))$")
_D2_STAGE = re.compile(
    r"^res(\d)\.(\d+)\.(conv[123]|shortcut)\.(weight|norm\.(weight|bias|running_mean|running_var))$"
)


def _d2_name(key: str) -> str | None:
    """detectron2 name -> torchvision name; None if it is not a body key."""
    m = _D2_STEM.match(key)
    if m is not None:
        return "conv1.weight" if m[2] is None else f"bn1.{m[2]}"
    m = _D2_STAGE.match(key)
    if m is None or not 2 <= int(m[1]) <= 5:
        return None
    prefix = f"layer{int(m[1]) - 1}.{m[2]}"
    if m[3] == "shortcut":
        conv, norm = f"{prefix}.downsample.0", f"{prefix}.downsample.1"
    else:
        conv, norm = f"{prefix}.{m[3]}", f"{prefix}.bn{m[3][-1]}"
    return f"{conv}.weight" if m[5] is None else f"{norm}.{m[5]}"


_TV_KEY = re.compile(
    r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var)"
    r"|layer[1-4]\.\d+\.(conv[123]\.weight|bn[123]\.(weight|bias|running_mean|running_var)"
    r"|downsample\.0\.weight|downsample\.1\.(weight|bias|running_mean|running_var)))$"
)


def _tv_name(key: str) -> str | None:
    return key if _TV_KEY.match(key) else None


def _rename(
    path: Path,
    raw: dict[str, Any],
    rename: Callable[[str], str | None],
    ignore: re.Pattern[str],
    what: str,
) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        if ignore.search(key):
            continue
        name = rename(key)
        if name is None:
            unknown.append(key)
            continue
        state[name] = _to_tensor(path, key, value)
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} keys are not part of a {what} ResNet body, e.g. "
            f"{sorted(unknown)[:5]}"
        )
    return state


def _fill_folded_bn(state: dict[str, Tensor]) -> bool:
    """Add running_mean 0 / running_var 1 to BN layers that have only weight and bias.

    Returns True if every BN layer of the file was folded (no running statistics at all)."""
    prefixes = {k[: -len(".weight")] for k in state if k.endswith(".weight")}
    bn_prefixes = [p for p in prefixes if state[f"{p}.weight"].dim() == 1]
    folded = True
    for p in bn_prefixes:
        w = state[f"{p}.weight"]
        if f"{p}.running_mean" in state or f"{p}.running_var" in state:
            folded = False
            continue
        state[f"{p}.running_mean"] = torch.zeros_like(w)
        state[f"{p}.running_var"] = torch.ones_like(w)
    return folded and bool(bn_prefixes)


def _is_folded(state: dict[str, Tensor]) -> bool:
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    return all(torch.all(m == 0) for m in means) and all(torch.all(v == 1) for v in variances)


def _infer_depth(path: Path, state: dict[str, Tensor]) -> int:
    counts = []
    for stage in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
        if blocks != set(range(len(blocks))):
            raise ValueError(f"{path}: layer{stage} has blocks {sorted(blocks)}, expected 0..n-1")
        counts.append(len(blocks))
    bottleneck = any(".conv3." in k for k in state)
    depth = _DEPTHS.get((bottleneck, tuple(counts)))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(
            f"{path}: {kind} blocks per stage {counts} match no ResNet "
            f"(18: basic 2-2-2-2, 34: basic 3-4-6-3, 50/101/152: bottleneck 3-4-6-3 / 3-4-23-3 / "
            f"3-8-36-3)"
        )
    if "conv1.weight" not in state or tuple(state["conv1.weight"].shape) != (64, 3, 7, 7):
        found = tuple(state["conv1.weight"].shape) if "conv1.weight" in state else "none"
        raise ValueError(f"{path}: stem conv1.weight should be (64, 3, 7, 7), found {found}")
    # ResNeXt and wide ResNets share these names but have other widths; they would not load
    conv2 = state.get("layer1.0.conv2.weight")
    if conv2 is not None and tuple(conv2.shape) != (64, 64, 3, 3):
        raise ValueError(
            f"{path}: layer1.0.conv2.weight has shape {tuple(conv2.shape)}, expected "
            "(64, 64, 3, 3) for a plain ResNet (ResNeXt and wide ResNets are not supported)"
        )
    return depth


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


_IGNORE_TV = re.compile(r"(^fc\.|num_batches_tracked$)")
_IGNORE_MSRA = re.compile(r"(^fc1000_|_momentum$|^pred_|^__)")
_IGNORE_D2 = re.compile(r"(^fc\.|^linear\.|num_batches_tracked$)")


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
        state = _rename(path, raw, _msra_name, _IGNORE_MSRA, "MSRA/Caffe2")
        _fill_folded_bn(state)
        return _msra_weights(state, _infer_depth(path, state), path)
    if "stem.conv1.weight" in raw:
        state = _rename(path, raw, _d2_name, _IGNORE_D2, "detectron2")
        folded = _fill_folded_bn(state) or _is_folded(state)
        depth = _infer_depth(path, state)
        torchvision_like = author == "torchvision" if author is not None else not folded
        if torchvision_like:
            return _torchvision_weights(state, depth, path)
        return _msra_weights(state, depth, path)
    if "conv1.weight" in raw and any(k.startswith("layer1.") for k in keys):
        # torchvision files always hold running statistics: none are invented here
        state = _rename(path, raw, _tv_name, _IGNORE_TV, "torchvision")
        return _torchvision_weights(state, _infer_depth(path, state), path)
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
        ValueError: wrong depth, or missing / unexpected / mis-shaped keys (all listed at once).
    """
    check_depth(weights, depth)
    expected = body.state_dict()
    state = dict(weights.state_dict)
    for key in expected:
        # BatchNorm2d counts batches; the file has no count to give it
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys {unexpected[:5]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches {mismatched[:5]}")
        raise ValueError(
            f"{weights.source}: ResNet-{weights.depth} weights do not fit the body: "
            + "; ".join(parts)
        )
    body.load_state_dict(state, strict=True)


def apply_weight_conventions(cfg_model: ModelConfig, weights: BackboneWeights) -> None:
    """Set input_format, input_scale, pixel_mean, pixel_std and backbone.stride_in_1x1 of
    `cfg_model` to what `weights` were trained with; checks the ResNet depth when the config
    names one."""
    name = cfg_model.backbone.name
    if name.startswith("resnet"):
        check_depth(weights, int(name[len("resnet") :]))
    cfg_model.input_format = weights.input_format
    cfg_model.input_scale = weights.input_scale
    cfg_model.pixel_mean = list(weights.pixel_mean)
    cfg_model.pixel_std = list(weights.pixel_std)
    cfg_model.backbone.stride_in_1x1 = weights.stride_in_1x1
