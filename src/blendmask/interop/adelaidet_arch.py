"""What an AdelaiDet checkpoint's keys say about its network, in config terms, and which
presets build the same network: the hint of a failed conversion ("presets that fit")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from blendmask.config import Config
from blendmask.interop.adelaidet_keys import ADELAIDET_PRESETS
from blendmask.presets import load_config


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
    panoptic: bool = False  # P2 + the semantic FPN head (`panoptic_module`)

    def describe(self) -> str:
        deform = (
            f"DCN on {len(self.deformable_blocks)} blocks" if self.deformable_blocks else "no DCN"
        )
        return (
            f"ResNet-{self.depth} {self.backbone_norm} {deform}, "
            f"{3 + self.top_levels} FPN levels, towers cls/box/share "
            f"{self.num_cls_convs}/{self.num_box_convs}/{self.num_share_convs} "
            f"({self.head_norm}), basis num_convs {self.basis_num_convs}"
            + (", panoptic semantic head on P2-P5" if self.panoptic else "")
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
        panoptic=any(k.startswith("panoptic_module.") for k in state),
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
        panoptic=m.panoptic.enabled,
    )


def matching_presets(arch: Architecture) -> list[str]:
    """The AdelaiDet presets whose network has this architecture."""
    return [name for name in ADELAIDET_PRESETS if config_architecture(load_config(name)) == arch]
