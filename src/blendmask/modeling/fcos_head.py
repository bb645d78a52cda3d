"""FCOS head: share / cls / bbox towers and the cls, box and centerness predictors.

BlendMask Sec. 3.1 builds on FCOS (Tian et al., ICCV 2019); the reference is AdelaiDet's
`FCOSHead` (docs/reference.md §1.5-1.6). Reproduced on purpose:

- Towers are `nn.Sequential` of [conv3x3 (bias), norm, ReLU] x n, so conv indices are 0, 3, 6, 9
  and norm indices 1, 4, 7, 10 as the reference's keys; the share tower runs first, then the cls
  and bbox towers. With norm "none" the norm slot is an `nn.Identity` (no keys) so the indices
  stay the same (the reference would drop the slot; no released weights use "none").
- Norm "GN" is one GroupNorm(32) shared by all levels (fewer groups below 64 channels, see
  `group_norm`); "BN"/"SyncBN" is one BatchNorm2d per level (`PerLevelBatchNorm`, the
  reference's ModuleListDial made explicit: the level index is passed), so keys read
  `share_tower.1.{level}.weight`.
- `bbox_pred` and `ctrness` both read the **bbox tower**; regression is ReLU(scale_l * conv)
  in units of the level stride (the post-processor multiplies by the stride).
- The top layer (BlendMask's attention, Sec. 3.2) is not here: the network applies it to the
  returned bbox-tower outputs. With empty cls/bbox towers (550 / RT configs) everything reads
  the share-tower output.
- Init: normal(std 0.01), bias 0; cls bias -log((1 - p) / p).

Glossary: N images, L levels, C foreground classes, ch tower channels, Hl/Wl level size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

HEAD_NORMS = ("GN", "BN", "SyncBN", "none")


class Scale(nn.Module):
    """A learnable scalar (FCOS `USE_SCALE`), key `scale` as the reference's `scales.{l}.scale`."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class PerLevelBatchNorm(nn.ModuleList):
    """One BatchNorm2d per FPN level; `forward(x, level)` picks the level's BN.

    The reference's ModuleListDial cycles through its modules on every call; here the caller
    passes the level index explicitly, which gives the same result without hidden state.
    """

    def __init__(self, num_features: int, num_levels: int) -> None:
        super().__init__([nn.BatchNorm2d(num_features) for _ in range(num_levels)])

    def forward(self, x: Tensor, level: int) -> Tensor:  # type: ignore[override]
        return self[level](x)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, channels) as the reference for widths >= 64; narrower (tiny) models get
    fewer groups so every group keeps >= 2 channels (one channel per group would normalise a
    1x1 P7 map to zero and makes F.group_norm raise for batch size 1)."""
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)


def _tower(
    num_convs: int, in_channels: int, channels: int, norm: str, num_levels: int
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1))
        if norm == "GN":
            layers.append(group_norm(channels))
        elif norm in ("BN", "SyncBN"):
            layers.append(PerLevelBatchNorm(channels, num_levels))
        else:
            layers.append(nn.Identity())
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _run_tower(tower: nn.Sequential, x: Tensor, level: int) -> Tensor:
    for layer in tower:
        x = layer(x, level) if isinstance(layer, PerLevelBatchNorm) else layer(x)
    return x


class FCOSHead(nn.Module):
    """FCOS towers and predictors, shared across FPN levels.

    Args:
        in_channels: channels of every FPN level.
        num_classes: C, foreground classes only.
        num_levels: L, number of FPN levels (needed by per-level BN and scales).
        num_cls_convs / num_box_convs / num_share_convs: tower depths (reference 4 / 4 / 0;
            550 and RT configs 0 / 0 / 3).
        tower_channels: tower width; None means in_channels (the reference).
        norm: GN | BN | SyncBN (one BatchNorm2d per level; the training engine converts them to
            SyncBatchNorm only for "SyncBN" with several CUDA processes) | none.
        use_scale: a learnable per-level scale before the regression ReLU (BlendMask: off).
        prior_prob: focal-loss prior for the cls bias.

    Attributes:
        out_channels: channels of the returned bbox-tower outputs (what the top layer reads).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        tower_channels: int | None = None,
        norm: str = "GN",
        use_scale: bool = False,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"FCOS head norm: expected one of {HEAD_NORMS}, got {norm!r}")
        if num_classes < 1:
            raise ValueError(f"FCOS head num_classes: expected >= 1, got {num_classes}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"FCOS head prior_prob: expected in (0, 1), got {prior_prob}")
        for name, n in (
            ("num_cls_convs", num_cls_convs),
            ("num_box_convs", num_box_convs),
            ("num_share_convs", num_share_convs),
        ):
            if n < 0:
                raise ValueError(f"FCOS head {name}: expected >= 0, got {n}")
        ch = in_channels if tower_channels is None else tower_channels
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.share_tower = _tower(num_share_convs, in_channels, ch, norm, num_levels)
        share_out = ch if num_share_convs > 0 else in_channels
        self.cls_tower = _tower(num_cls_convs, share_out, ch, norm, num_levels)
        self.bbox_tower = _tower(num_box_convs, share_out, ch, norm, num_levels)
        cls_out = ch if num_cls_convs > 0 else share_out
        box_out = ch if num_box_convs > 0 else share_out
        self.cls_logits = nn.Conv2d(cls_out, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(box_out, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(box_out, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None
        self.out_channels = box_out

        for module in (self.share_tower, self.cls_tower, self.bbox_tower):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.zeros_(layer.bias)
        for layer in (self.cls_logits, self.bbox_pred, self.ctrness):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(
        self, features: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Run the head on every level.

        features (list[Tensor[N, in_channels, Hl, Wl]]): P3, P4, ... (L entries).
        Returns per level:
            cls_logits (list[Tensor[N, C, Hl, Wl]]),
            bbox_reg (list[Tensor[N, 4, Hl, Wl]]): ltrb >= 0 in units of the level stride,
            ctrness (list[Tensor[N, 1, Hl, Wl]]): centerness logits,
            bbox_towers (list[Tensor[N, out_channels, Hl, Wl]]): what the top layer reads.
        """
        if len(features) != self.num_levels:
            raise ValueError(
                f"FCOS head: expected {self.num_levels} feature levels, got {len(features)}"
            )
        cls_logits, bbox_reg, ctrness, bbox_towers = [], [], [], []
        for level, feature in enumerate(features):
            x = _run_tower(self.share_tower, feature, level)
            cls_tower = _run_tower(self.cls_tower, x, level)
            bbox_tower = _run_tower(self.bbox_tower, x, level)
            cls_logits.append(self.cls_logits(cls_tower))
            ctrness.append(self.ctrness(bbox_tower))
            reg = self.bbox_pred(bbox_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(torch.relu(reg))
            bbox_towers.append(bbox_tower)
        return cls_logits, bbox_reg, ctrness, bbox_towers
