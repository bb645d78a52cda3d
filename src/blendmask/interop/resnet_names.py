"""ImageNet ResNet bodies under three namings -> torchvision's, and what the layout says.

The name maps follow detectron2's converters (docs/reference.md §5.3): Caffe2 blobs
(`res2_0_branch2a_bn_s`), detectron2 keys (`res2.0.conv1.norm.weight`) and torchvision keys
(`layer1.0.bn1.weight`) all become torchvision names, which are those of
`modeling/backbone.py::ResNetBody`. `infer_depth` reads the ResNet depth off the block counts.
Used by `torchvision_weights.read_backbone_weights`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

# (bottleneck, blocks per stage res2..res5) -> depth
_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}


def to_tensor(path: Path, key: str, value: Any) -> Tensor:
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


def msra_name(blob: str) -> str | None:
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


def d2_name(key: str) -> str | None:
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


def tv_name(key: str) -> str | None:
    return key if _TV_KEY.match(key) else None


def rename_body_keys(
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
        state[name] = to_tensor(path, key, value)
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} keys are not part of a {what} ResNet body, e.g. "
            f"{sorted(unknown)[:5]}"
        )
    return state


def fill_folded_bn(state: dict[str, Tensor]) -> bool:
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


def is_folded(state: dict[str, Tensor]) -> bool:
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    return all(torch.all(m == 0) for m in means) and all(torch.all(v == 1) for v in variances)


def infer_depth(path: Path, state: dict[str, Tensor]) -> int:
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


# Keys of each format that are not part of the body (classifier, counters, solver state).
IGNORE_TV = re.compile(r"(^fc\.|num_batches_tracked$)")
IGNORE_MSRA = re.compile(r"(^fc1000_|_momentum$|^pred_|^__)")
IGNORE_D2 = re.compile(r"(^fc\.|^linear\.|num_batches_tracked$)")
