"""Import official AdelaiDet BlendMask checkpoints (no detectron2, no CUDA extensions needed).

BlendMask (Chen et al., CVPR 2020) was published with weights trained by AdelaiDet on detectron2
(`configs/BlendMask/README.md`: R_50_1x, R_50_3x, R_101_3x, R_101_dcni3_5x, 550_R_50_3x,
RT_R_50_4x_syncbn_shtw and its bn-head variant). This module reads such a file and maps every
tensor onto our modules by an explicit rename table; facts in reference/ADELAIDET.md Sec. 5.

    blendmask convert --adelaidet R_50_1x.pth --preset R_50_1x --out r50.pt

What it does, in order:

1. Reads a bare state dict or a detectron2 dict with a "model" key (`.pth` legacy or zip
   format via `torch.load(weights_only=True)`, or detectron2's `.pkl` of numpy arrays via an
   unpickler that builds arrays only), strips a DDP `module.` prefix and renames the pre-April-2020
   `centerness` predictor to `ctrness` (AdelaiDet `tools/rename_blendmask.py`).
2. Renames every key with `ADELAIDET_RENAMES` (the same table serves every preset family; the
   comments say which rules a family uses).
3. Builds the preset's network with the checkpoint's class count and the MSRA input conventions
   the weights were trained with (BGR, 0-255, mean [103.53, 116.28, 123.675], std 1, stride in
   the 1x1 conv), and compares key sets and shapes. Strict by default: every missing, unexpected
   and mis-shaped key is listed in one ValueError. `allow_partial` loads what fits and skips the
   rest, like detectron2's loader (how fine-tuning with another class count works).

Lenient on purpose, as PyTorch / detectron2 loading: a BatchNorm's `num_batches_tracked`
missing from the file is set to 0, and one the model has no place for (FrozenBN) is dropped;
both only count batches and never change outputs.

Safety: `.pth` files load with `weights_only=True` (numpy arrays allowed, nothing else). Only
a file that still needs full unpickling is refused, with a message saying how to opt in
(`trust_pickle=True`, `--trust-pickle`), because unpickling can run code stored in the file.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from blendmask.config import MSRA_PIXEL_MEAN, MSRA_PIXEL_STD, Config, load_config
from blendmask.interop.torchvision_weights import _ArrayUnpickler

# Presets with a published AdelaiDet checkpoint (configs/BlendMask/README.md).
ADELAIDET_PRESETS = (
    "R_50_1x",
    "R_50_3x",
    "R_101_3x",
    "R_101_dcni3_5x",
    "550_R_50_3x",
    "RT_R_50_4x",
    "RT_R_50_4x_bn_head",
)

# ---------------------------------------------------------------------------------------------
# The rename table: AdelaiDet (detectron2) key -> our key. Rules are applied in order, each to
# the result of the ones before (`re.sub`); a key no rule touches keeps its name.
#
# Families (ADELAIDET.md Sec. 5.2) and the rules they use:
# - R_50_1x / R_50_3x / R_101_3x: body, FPN with top_block.p6 + p7, cls_tower / bbox_tower
#   (GroupNorm at indices 1, 4, 7, 10), basis module, top layer.
# - R_101_dcni3_5x: as R_101, plus `conv2_offset.{weight,bias}` on the deformable blocks, which
#   keeps its name (DeformBottleneck.conv2_offset); `conv2.weight` of those blocks is the
#   deformable conv's weight (same shape, no bias).
# - 550_R_50_3x: FPN with p6 only; share_tower.{0,3,6} convs + {1,4,7} GroupNorm, empty
#   cls/bbox towers; basis tower 0, 1 / 2 = Upsample / 3 / 4.
# - RT_R_50_4x: no top block; SyncBN backbone (its norms carry num_batches_tracked: the same
#   rules); share tower as 550.
# - RT_R_50_4x_bn_head: share-tower norms are one BN per level, `share_tower.{1,4,7}.{level}.*`;
#   our PerLevelBatchNorm is a ModuleList, so the head rule maps them unchanged.
# - Panoptic checkpoints: the instance branch maps as R_50; `backbone.fpn_lateral2/output2` and
#   `panoptic_module.*` have no place here (P2 does not feed the instance branch).
ADELAIDET_RENAMES: list[tuple[str, str]] = [
    # Checkpoints made before AdelaiDet 281ee24 (2020-04-03) call the predictor `centerness`.
    (r"^proposal_generator\.fcos_head\.centerness\.", "proposal_generator.fcos_head.ctrness."),
    # ResNet stem (detectron2 BasicStem -> torchvision conv1 / bn1). Every family.
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "body.bn1."),
    (r"^backbone\.bottom_up\.stem\.conv1\.", "body.conv1."),
    # ResNet stages: res2..res5 -> layer1..layer4.
    (r"^backbone\.bottom_up\.res2\.", "body.layer1."),
    (r"^backbone\.bottom_up\.res3\.", "body.layer2."),
    (r"^backbone\.bottom_up\.res4\.", "body.layer3."),
    (r"^backbone\.bottom_up\.res5\.", "body.layer4."),
    # Inside a bottleneck: projection shortcut and the norms hung under each conv.
    (r"^(body\.layer\d\.\d+)\.shortcut\.norm\.", r"\1.downsample.1."),
    (r"^(body\.layer\d\.\d+)\.shortcut\.", r"\1.downsample.0."),
    (r"^(body\.layer\d\.\d+)\.conv([123])\.norm\.", r"\1.bn\2."),
    # FPN laterals / outputs and the P6 / P7 top block keep their names under `fpn.`.
    (r"^backbone\.(fpn_lateral|fpn_output|top_block)", r"fpn.\1"),
    # FCOS head: towers, predictors (and `scales.{l}.scale` of USE_SCALE models).
    (r"^proposal_generator\.fcos_head\.", "head."),
    # basis_module.* (refine, tower, seg_head) and top_layer.* are named as the reference.
]

# The inverse, for messages ("missing: backbone.bottom_up.res2.0.conv1.weight").
BLENDMASK_TO_ADELAIDET: list[tuple[str, str]] = [
    (r"^body\.bn1\.", "backbone.bottom_up.stem.conv1.norm."),
    (r"^body\.conv1\.", "backbone.bottom_up.stem.conv1."),
    (r"^body\.layer1\.", "backbone.bottom_up.res2."),
    (r"^body\.layer2\.", "backbone.bottom_up.res3."),
    (r"^body\.layer3\.", "backbone.bottom_up.res4."),
    (r"^body\.layer4\.", "backbone.bottom_up.res5."),
    (r"^(backbone\.bottom_up\.res\d\.\d+)\.downsample\.1\.", r"\1.shortcut.norm."),
    (r"^(backbone\.bottom_up\.res\d\.\d+)\.downsample\.0\.", r"\1.shortcut."),
    (r"^(backbone\.bottom_up\.res\d\.\d+)\.bn([123])\.", r"\1.conv\2.norm."),
    (r"^fpn\.", "backbone."),
    (r"^head\.", "proposal_generator.fcos_head."),
]

_COMPILED = [(re.compile(p), r) for p, r in ADELAIDET_RENAMES]
_COMPILED_INVERSE = [(re.compile(p), r) for p, r in BLENDMASK_TO_ADELAIDET]

# Our buffers that the reference computes with a lambda (not in its state dict).
OWN_BUFFERS = ("pixel_mean", "pixel_std")

# COCO 2017 (contiguous label -> name, category id): the published models' 80 classes.
COCO_CATEGORIES: list[tuple[str, int]] = [
    ("person", 1), ("bicycle", 2), ("car", 3), ("motorcycle", 4), ("airplane", 5), ("bus", 6),
    ("train", 7), ("truck", 8), ("boat", 9), ("traffic light", 10), ("fire hydrant", 11),
    ("stop sign", 13), ("parking meter", 14), ("bench", 15), ("bird", 16), ("cat", 17),
    ("dog", 18), ("horse", 19), ("sheep", 20), ("cow", 21), ("elephant", 22), ("bear", 23),
    ("zebra", 24), ("giraffe", 25), ("backpack", 27), ("umbrella", 28), ("handbag", 31),
    ("tie", 32), ("suitcase", 33), ("frisbee", 34), ("skis", 35), ("snowboard", 36),
    ("sports ball", 37), ("kite", 38), ("baseball bat", 39), ("baseball glove", 40),
    ("skateboard", 41), ("surfboard", 42), ("tennis racket", 43), ("bottle", 44),
    ("wine glass", 46), ("cup", 47), ("fork", 48), ("knife", 49), ("spoon", 50), ("bowl", 51),
    ("banana", 52), ("apple", 53), ("sandwich", 54), ("orange", 55), ("broccoli", 56),
    ("carrot", 57), ("hot dog", 58), ("pizza", 59), ("donut", 60), ("cake", 61), ("chair", 62),
    ("couch", 63), ("potted plant", 64), ("bed", 65), ("dining table", 67), ("toilet", 70),
    ("tv", 72), ("laptop", 73), ("mouse", 74), ("remote", 75), ("keyboard", 76),
    ("cell phone", 77), ("microwave", 78), ("oven", 79), ("toaster", 80), ("sink", 81),
    ("refrigerator", 82), ("book", 84), ("clock", 85), ("vase", 86), ("scissors", 87),
    ("teddy bear", 88), ("hair drier", 89), ("toothbrush", 90),
]  # fmt: skip


def adelaidet_to_blendmask_key(key: str) -> str:
    """AdelaiDet state-dict key -> our key (`backbone.bottom_up.res3.0.conv1.norm.weight` ->
    `body.layer2.0.bn1.weight`); keys no rule covers are returned unchanged."""
    for pattern, replacement in _COMPILED:
        key = pattern.sub(replacement, key)
    return key


def blendmask_to_adelaidet_key(key: str) -> str:
    """Our key -> the AdelaiDet key it is loaded from (inverse of `adelaidet_to_blendmask_key`)."""
    for pattern, replacement in _COMPILED_INVERSE:
        key = pattern.sub(replacement, key)
    return key


# ---------------------------------------------------------------------------------------------
# Reading files


def _numpy_safe_globals() -> list[Any]:
    """What `torch.load(weights_only=True)` needs to rebuild numpy arrays (no other code)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # Files written with numpy 1.x name the module numpy.core.
    allowed += [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _refusal_reason(exc: Exception) -> str:
    """The useful line of torch's long weights_only error ("Unsupported global: ...")."""
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL [^\s]+", text)
    if m is not None:
        return m.group(0)
    return text.strip().splitlines()[-1][:200] if text.strip() else type(exc).__name__


def _load_pth(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # maybe numpy arrays inside (detectron2 files saved from numpy): retry below
    except Exception as exc:  # noqa: BLE001 - any other failure: not a torch file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from None
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(exc)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from None
    if not trust_pickle:
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused this file ({reason}); it holds "
            "Python objects besides tensors and arrays, and loading it runs code stored in the "
            "file. Only if you trust its source, pass --trust-pickle (trust_pickle=True)"
        )
    print(
        f"warning: {path}: loading with full unpickling (--trust-pickle): this executes "
        f"pickle code stored in the file ({reason})",
        file=sys.stderr,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from None


def _load_pkl(path: Path) -> Any:
    """detectron2 `.pkl`: {"model": {name: ndarray}, "__author__": ...}, arrays only."""
    try:
        with path.open("rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same user error
        raise ValueError(f"{path}: not a readable weight pickle ({exc})") from None


def _foreign_file_hint(keys: list[str]) -> str:
    if "conv1_w" in keys or "blobs" in keys:
        return (
            "; it looks like an MSRA/Caffe2 ImageNet backbone (R-50.pkl): use it as "
            "model.backbone.weights for training, not with convert"
        )
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return (
            "; it looks like a torchvision ImageNet ResNet: use it as model.backbone.weights "
            "for training, not with convert"
        )
    if "format_version" in keys and "config" in keys:
        return "; it is already a blendmask model file"
    return ""


def _read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> tuple[dict, list[str]]:
    """(state dict with AdelaiDet names, notes on what was done to read it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AdelaiDet checkpoint not found")
    data = _load_pkl(path) if path.suffix == ".pkl" else _load_pth(path, trust_pickle)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a state dict or a dict with a 'model' key, got {type(data).__name__}"
        )
    notes: list[str] = []
    top_keys = [str(k) for k in data]
    if isinstance(data.get("model"), dict):
        others = sorted(str(k) for k in data if k != "model")
        notes.append(
            "read the 'model' entry of a detectron2 checkpoint"
            + (f" (ignored: {', '.join(others)})" if others else "")
        )
        data = data["model"]
    keys = [str(k) for k in data]
    if not keys:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    hint = _foreign_file_hint(top_keys) or _foreign_file_hint(keys)
    state: dict[str, Tensor] = {}
    stripped = renamed = 0
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: expected string keys, got {key!r}")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value, copy=True))
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{path}: entry '{key}' is a {type(value).__name__}, expected a tensor" + hint
            )
        name = key
        if name.startswith("module."):  # saved from a DistributedDataParallel model
            name = name[len("module.") :]
            stripped += 1
        if "centerness" in name:  # AdelaiDet tools/rename_blendmask.py, before 2020-04-03
            name = name.replace("centerness", "ctrness")
            renamed += 1
        if name in state:
            raise ValueError(f"{path}: two entries map to '{name}' (one is '{key}')")
        state[name] = value
    if stripped:
        notes.append(f"stripped the 'module.' prefix of {stripped} keys")
    if renamed:
        notes.append(f"renamed 'centerness' to 'ctrness' in {renamed} keys (pre-April-2020 file)")
    if not any(k.startswith(("backbone.", "proposal_generator.")) for k in state):
        raise ValueError(
            f"{path}: no AdelaiDet keys (backbone.*, proposal_generator.*) found; first keys: "
            f"{keys[:5]}" + hint
        )
    return state, notes


def read_adelaidet_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of an AdelaiDet checkpoint, still under AdelaiDet names.

    Accepts a bare state dict or detectron2's `{"model": ..., "optimizer": ..., ...}`, as
    `.pth` (legacy or zip format) or detectron2 `.pkl` (numpy arrays). Strips a `module.`
    prefix and renames `centerness` to `ctrness`; numpy arrays become tensors.

    Args:
        path: the checkpoint file.
        trust_pickle: allow full unpickling for a file `weights_only=True` cannot read (runs
            code stored in the file; a warning naming the file is printed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, refused by weights_only without `trust_pickle`, or not an
            AdelaiDet model; the message names the file.
    """
    return _read_checkpoint(path, trust_pickle=trust_pickle)[0]


# ---------------------------------------------------------------------------------------------
# Architecture of a checkpoint / a config, to say which preset fits


@dataclass(frozen=True)
class Architecture:
    """What the key set says about the model, in config terms (see `describe`)."""

    depth: int | None
    backbone_norm: str  # "FrozenBN" (no num_batches_tracked), "BN" (BN / SyncBN) or "GN"
    deformable_blocks: tuple[str, ...]  # e.g. ("res3.0", "res3.3", ...)
    top_levels: int
    num_cls_convs: int
    num_box_convs: int
    num_share_convs: int
    head_norm: str  # "GN", "BN" (one per level) or "none"
    basis_num_convs: int | None

    def describe(self) -> str:
        deform = (
            f"DCN on {len(self.deformable_blocks)} blocks" if self.deformable_blocks else "no DCN"
        )
        return (
            f"ResNet-{self.depth} {self.backbone_norm} {deform}, "
            f"{3 + self.top_levels} FPN levels, towers cls/box/share "
            f"{self.num_cls_convs}/{self.num_box_convs}/{self.num_share_convs} "
            f"({self.head_norm}), basis num_convs {self.basis_num_convs}"
        )


_RES_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _tower_convs(state: dict[str, Tensor], tower: str) -> int:
    prefix = f"proposal_generator.fcos_head.{tower}."
    return sum(
        1
        for k, v in state.items()
        if k.startswith(prefix) and k.endswith("weight") and v.dim() == 4
    )


def checkpoint_architecture(state: dict[str, Tensor]) -> Architecture:
    """Read the architecture off an AdelaiDet state dict (AdelaiDet names)."""
    block_key = re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.")
    blocks: dict[int, set[int]] = {2: set(), 3: set(), 4: set(), 5: set()}
    deformable: set[tuple[int, int]] = set()
    for k in state:
        m = block_key.match(k)
        if m is not None and int(m.group(1)) in blocks:
            blocks[int(m.group(1))].add(int(m.group(2)))
            if ".conv2_offset." in k:
                deformable.add((int(m.group(1)), int(m.group(2))))
    counts = tuple(len(blocks[s]) for s in (2, 3, 4, 5))
    depth = next((d for d, c in _RES_BLOCKS.items() if c == counts), None)
    bottom_up_nbt = any(
        k.startswith("backbone.bottom_up.") and k.endswith("num_batches_tracked") for k in state
    )
    top_levels = (
        2
        if "backbone.top_block.p7.weight" in state
        else int("backbone.top_block.p6.weight" in state)
    )
    per_level_bn = any(
        re.match(r"^proposal_generator\.fcos_head\.\w+_tower\.\d+\.\d+\.weight$", k) for k in state
    )
    group_norm = any(
        re.match(r"^proposal_generator\.fcos_head\.\w+_tower\.\d+\.weight$", k) and v.dim() == 1
        for k, v in state.items()
    )
    basis_last = [
        int(m.group(1))
        for k in state
        if (m := re.match(r"^basis_module\.tower\.(\d+)\.weight$", k)) is not None
    ]
    return Architecture(
        depth=depth,
        backbone_norm="BN" if bottom_up_nbt else "FrozenBN",
        deformable_blocks=tuple(f"res{s}.{b}" for s, b in sorted(deformable)),
        top_levels=top_levels,
        num_cls_convs=_tower_convs(state, "cls_tower"),
        num_box_convs=_tower_convs(state, "bbox_tower"),
        num_share_convs=_tower_convs(state, "share_tower"),
        head_norm="BN" if per_level_bn else ("GN" if group_norm else "none"),
        basis_num_convs=max(basis_last) - 2 if basis_last else None,
    )


def config_architecture(cfg: Config) -> Architecture:
    """The same description for the network a Config builds."""
    m = cfg.model
    name = m.backbone.name
    depth = int(name[len("resnet") :]) if name.startswith("resnet") else None
    deformable: list[str] = []
    if m.backbone.deform_interval > 0 and depth in _RES_BLOCKS:
        for stage, n in zip((3, 4, 5), _RES_BLOCKS[depth][1:]):
            deformable += [f"res{stage}.{i}" for i in range(0, n, m.backbone.deform_interval)]
    body_norm = {"FrozenBN": "FrozenBN", "BN": "BN", "SyncBN": "BN"}.get(m.backbone.norm, "GN")
    head_norm = {"GN": "GN", "BN": "BN", "SyncBN": "BN"}.get(m.fcos.norm, "none")
    total_convs = m.fcos.num_cls_convs + m.fcos.num_box_convs + m.fcos.num_share_convs
    return Architecture(
        depth=depth,
        backbone_norm=body_norm,
        deformable_blocks=tuple(deformable),
        top_levels=m.fpn.top_levels,
        num_cls_convs=m.fcos.num_cls_convs,
        num_box_convs=m.fcos.num_box_convs,
        num_share_convs=m.fcos.num_share_convs,
        head_norm=head_norm if total_convs else "none",
        basis_num_convs=m.basis_module.num_convs if m.basis_module.name == "ProtoNet" else None,
    )


def matching_presets(arch: Architecture) -> list[str]:
    """The AdelaiDet presets whose network has this architecture."""
    return [name for name in ADELAIDET_PRESETS if config_architecture(load_config(name)) == arch]


# ---------------------------------------------------------------------------------------------
# Conversion


def _both_names(theirs: str, ours: str) -> str:
    return theirs if theirs == ours else f"{theirs}  (our {ours})"


@dataclass
class ConversionReport:
    """What a conversion did. Keys: `loaded`/`missing` are ours, `unexpected` AdelaiDet's.

    Fields:
        source: the checkpoint file.
        preset: the preset the model was built from.
        num_classes: C of the built model (foreground classes).
        loaded: our keys filled from the checkpoint.
        missing: our keys the checkpoint lacks (left at their init with allow_partial).
        unexpected: checkpoint keys (AdelaiDet names) with no place in the model.
        mismatched: (AdelaiDet key, our key, checkpoint shape, model shape) of skipped tensors.
        notes: what else was done (prefix stripped, BN counters filled, ...).
        architecture: read off the checkpoint's keys.
    """

    source: str
    preset: str
    num_classes: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    notes: list[str] = field(default_factory=list)
    architecture: Architecture | None = None

    @property
    def complete(self) -> bool:
        """True when every model tensor came from the checkpoint and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """Every missing, unexpected and mis-shaped key, one per line (empty when complete)."""
        lines: list[str] = []
        if self.missing:
            lines.append(f"  missing from the checkpoint ({len(self.missing)}):")
            lines += [f"    {_both_names(blendmask_to_adelaidet_key(k), k)}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected in the checkpoint ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}):")
            lines += [
                f"    {_both_names(theirs, ours)}: checkpoint {list(a)}, model {list(b)}"
                for theirs, ours, a, b in self.mismatched
            ]
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [
            f"{self.source}: {len(self.loaded)} tensors loaded into preset {self.preset} "
            f"({self.num_classes} classes)"
        ]
        skipped = len(self.missing) + len(self.unexpected) + len(self.mismatched)
        if skipped:
            lines.append(f"partial load, skipped {skipped} key{'s' if skipped > 1 else ''}:")
            lines.append(self.problems())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _arch_hint(arch: Architecture, cfg: Config, preset: str) -> str:
    want = config_architecture(cfg)
    if arch == want:
        return ""
    fits = matching_presets(arch)
    hint = f"  the checkpoint is a {arch.describe()};\n  preset {preset} builds a {want.describe()}"
    if fits:
        hint += f"\n  presets that fit the checkpoint: {', '.join(fits)}"
    return hint + "\n"


def _set_msra_conventions(cfg: Config) -> None:
    """The input conventions of every AdelaiDet model (detectron2 defaults, ADELAIDET.md 1.2)."""
    m = cfg.model
    m.input_format = "BGR"
    m.input_scale = 255.0
    m.pixel_mean = list(MSRA_PIXEL_MEAN)
    m.pixel_std = list(MSRA_PIXEL_STD)
    m.backbone.stride_in_1x1 = True
    m.backbone.weights = ""  # the checkpoint holds the whole network


def convert_adelaidet_model(
    path: str | Path,
    preset: str,
    *,
    allow_partial: bool = False,
    num_classes: int | None = None,
    overrides: list[str] | None = None,
    trust_pickle: bool = False,
) -> tuple[Config, torch.nn.Module, ConversionReport]:
    """As `convert_adelaidet`, returning the loaded network (eval mode) instead of its state."""
    from blendmask.factory import build_network

    path = Path(path)
    state, notes = _read_checkpoint(path, trust_pickle=trust_pickle)
    cfg = load_config(preset, None, list(overrides or []))
    if not cfg.model.backbone.name.startswith("resnet"):
        raise ValueError(
            f"preset {preset}: AdelaiDet checkpoints need a ResNet body, the preset builds "
            f"{cfg.model.backbone.name} (AdelaiDet presets: {', '.join(ADELAIDET_PRESETS)})"
        )

    cls_key = "proposal_generator.fcos_head.cls_logits.weight"
    file_classes = int(state[cls_key].shape[0]) if cls_key in state else None
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if num_classes is None:
        num_classes = file_classes or cfg.model.fcos.num_classes
    elif file_classes is not None and num_classes != file_classes and not allow_partial:
        raise ValueError(
            f"{path}: {cls_key} has {file_classes} classes but {num_classes} were asked for; "
            "pass --allow-partial to skip the classifier and the semantic head (fine-tuning)"
        )
    cfg.model.fcos.num_classes = num_classes
    _set_msra_conventions(cfg)
    if num_classes == len(COCO_CATEGORIES) and not cfg.data.category_names:
        # The published models are COCO's: results then carry COCO category ids.
        cfg.data.category_names = [name for name, _ in COCO_CATEGORIES]
        cfg.data.category_ids = [cid for _, cid in COCO_CATEGORIES]
    cfg.validate()

    model = build_network(cfg, load_pretrained=False)
    expected = {k: v for k, v in model.state_dict().items() if k not in OWN_BUFFERS}
    report = ConversionReport(
        source=str(path),
        preset=preset,
        num_classes=num_classes,
        architecture=checkpoint_architecture(state),
    )

    renamed: dict[str, tuple[str, Tensor]] = {}  # our key -> (AdelaiDet key, tensor)
    dropped_counters = []
    for theirs, tensor in state.items():
        ours = adelaidet_to_blendmask_key(theirs)
        if ours not in expected:
            if (
                theirs.endswith(".num_batches_tracked")
                and ours.replace("num_batches_tracked", "running_mean") in expected
            ):
                dropped_counters.append(theirs)  # FrozenBN has no batch counter
                continue
            report.unexpected.append(theirs)
            continue
        renamed[ours] = (theirs, tensor)

    filled_counters = []
    new_state: dict[str, Tensor] = {}
    for ours, target in expected.items():
        if ours not in renamed:
            if ours.endswith(".num_batches_tracked"):
                filled_counters.append(ours)
                new_state[ours] = torch.zeros_like(target)
            else:
                report.missing.append(ours)
            continue
        theirs, tensor = renamed[ours]
        if tensor.shape != target.shape:
            report.mismatched.append((theirs, ours, tuple(tensor.shape), tuple(target.shape)))
            continue
        new_state[ours] = tensor.to(dtype=target.dtype)
        report.loaded.append(ours)

    if dropped_counters:
        notes.append(
            f"dropped num_batches_tracked of {len(dropped_counters)} norms that are FrozenBN here"
        )
    if filled_counters:
        notes.append(f"set num_batches_tracked to 0 for {len(filled_counters)} BatchNorms")
    cast = Counter(
        str(t.dtype).replace("torch.", "")
        for _, t in renamed.values()
        if t.is_floating_point() and t.dtype != torch.float32
    )
    if cast:
        notes.append("cast to float32: " + ", ".join(f"{n} {d}" for d, n in cast.items()))
    if report.architecture.depth is not None:
        notes.append(f"checkpoint: {report.architecture.describe()}")
    report.notes = notes

    if not report.complete and not allow_partial:
        counts = []
        problems = len(report.missing) + len(report.unexpected) + len(report.mismatched)
        if report.missing:
            counts.append(f"{len(report.missing)} missing")
        if report.unexpected:
            counts.append(f"{len(report.unexpected)} unexpected")
        if report.mismatched:
            counts.append(f"{len(report.mismatched)} shape-mismatched")
        panoptic = any(k.startswith("panoptic_module.") for k in report.unexpected)
        extra = (
            "  a panoptic checkpoint: its instance branch is complete; --allow-partial drops the "
            "semantic branch and P2, which do not feed the instance outputs\n"
            if panoptic
            else ""
        )
        raise ValueError(
            f"{path}: does not fit preset {preset}: {', '.join(counts)} "
            f"key{'s' if problems > 1 else ''} "
            "(pass --allow-partial to load what fits)\n"
            + _arch_hint(report.architecture, cfg, preset)
            + extra
            + report.problems()
        )

    # Strict: every key is in new_state. Partial: the rest keeps the fresh initialisation.
    full = model.state_dict()
    full.update(new_state)
    model.load_state_dict(full, strict=True)
    model.eval()
    return cfg, model, report


def convert_adelaidet(
    path: str | Path,
    preset: str,
    *,
    allow_partial: bool = False,
    num_classes: int | None = None,
    overrides: list[str] | None = None,
    trust_pickle: bool = False,
) -> tuple[Config, dict[str, Tensor], ConversionReport]:
    """Convert an AdelaiDet BlendMask checkpoint into our config + state dict.

    Args:
        path: the AdelaiDet `.pth` / `.pkl` (see `read_adelaidet_checkpoint`).
        preset: the preset of the same architecture (`ADELAIDET_PRESETS`); its data settings
            (test size) are kept.
        allow_partial: load what fits, skip missing / unexpected / mis-shaped keys (listed in
            the report) instead of raising.
        num_classes: C, foreground classes. Default: read from `cls_logits`; a different value
            needs `allow_partial` (the classifier and the semantic head are then skipped).
        overrides: `a.b=value` config overrides applied to the preset before building.
        trust_pickle: see `read_adelaidet_checkpoint`.

    Returns:
        (config with the MSRA input conventions and the class count, our state dict including
        the pixel_mean / pixel_std buffers, report).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, inconsistent num_classes, or (strict) any missing,
            unexpected or mis-shaped key: one message naming the file and every key.
    """
    cfg, model, report = convert_adelaidet_model(
        path,
        preset,
        allow_partial=allow_partial,
        num_classes=num_classes,
        overrides=overrides,
        trust_pickle=trust_pickle,
    )
    return cfg, {k: v.detach() for k, v in model.state_dict().items()}, report


# ---------------------------------------------------------------------------------------------
# Command line (registered by cli.py as `blendmask convert`)


def add_convert_args(parser: argparse.ArgumentParser) -> None:
    """import an official AdelaiDet BlendMask checkpoint into a blendmask model file"""
    parser.add_argument(
        "--adelaidet", required=True, metavar="CKPT", help="AdelaiDet .pth (or detectron2 .pkl)"
    )
    parser.add_argument(
        "--preset",
        required=True,
        help=f"preset of the same architecture: {', '.join(ADELAIDET_PRESETS)}",
    )
    parser.add_argument("--out", required=True, metavar="W", help="model file to write")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="load what fits and skip the rest (e.g. fine-tuning with another class count)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="foreground classes (default: from the file)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the preset (repeatable)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling for files weights_only loading refuses (runs file code)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "auto"),
        help="where to run the check on a blank image after loading",
    )


def run_convert(args: argparse.Namespace) -> int:
    """Convert, run the network once on a blank image, write the model file, print a summary."""
    from blendmask.factory import save_model_file
    from blendmask.io import resolve_device

    device = resolve_device(args.device)
    cfg, model, report = convert_adelaidet_model(
        args.adelaidet,
        args.preset,
        allow_partial=args.allow_partial,
        num_classes=args.num_classes,
        overrides=list(args.overrides),
        trust_pickle=args.trust_pickle,
    )
    with torch.no_grad():
        out = model.to(device)(torch.zeros(1, 3, 64, 64, device=device))
    if not all(bool(torch.isfinite(t).all()) for t in out[:5]):
        raise ValueError(f"{args.adelaidet}: the converted network gives non-finite outputs")
    save_model_file(args.out, cfg, model.cpu())
    params = sum(t.numel() for t in model.parameters())
    print(report.summary())
    print(
        f"wrote {args.out}: {params / 1e6:.2f} M parameters, input {cfg.model.input_format} "
        f"x{cfg.model.input_scale:g}, mean {cfg.model.pixel_mean}, std {cfg.model.pixel_std}, "
        f"test size {cfg.data.min_size_test}/{cfg.data.max_size_test}"
    )
    print(f"next: blendmask predict --weights {args.out} IMAGE... --out DIR")
    return 0


__all__ = [
    "ADELAIDET_PRESETS",
    "ADELAIDET_RENAMES",
    "Architecture",
    "COCO_CATEGORIES",
    "ConversionReport",
    "adelaidet_to_blendmask_key",
    "add_convert_args",
    "blendmask_to_adelaidet_key",
    "checkpoint_architecture",
    "config_architecture",
    "convert_adelaidet",
    "convert_adelaidet_model",
    "matching_presets",
    "read_adelaidet_checkpoint",
    "run_convert",
]
