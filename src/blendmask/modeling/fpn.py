"""Feature Pyramid Network on C3-C5 with the FCOS top block (P6/P7 from P5).

BlendMask Sec. 4 ("ResNet + FPN", as FCOS). Reference: detectron2's FPN with AdelaiDet's
`LastLevelP6P7(256, 256, "p5")` (docs/reference.md §1.4). Reproduced on purpose:

- P6 is a 3x3/2 conv on the **P5 output** (not on C5), P7 a 3x3/2 conv on ReLU(P6);
  `top_levels` 2 / 1 / 0 builds P6+P7 / P6 / nothing (R_50 / 550 / RT configs).
- Laterals 1x1 and outputs 3x3, both with bias (FPN.NORM ""), sum fusion, nearest x2 top-down.
- c2_xavier_fill init (kaiming_uniform a=1, bias 0).
- Panoptic models (docs/reference.md §6) also build `fpn_lateral2` / `fpn_output2` and compute
  P2 from C2 and the level-3 top-down sum (`forward_with_p2`); P2 feeds only the semantic head.

Parameter names mirror the reference (`fpn_lateral3`, `fpn_output3`, `top_block.p6`), so a
checkpoint maps by dropping/adding the `backbone.` prefix.

Glossary: N images, H/W padded input size (multiple of 32). Inputs [C3, C4, C5] at strides
8/16/32; outputs [P3, ..., P(5 + top_levels)], each Tensor[N, out_channels, H/s, W/s] with
s = 8, 16, 32, 64, 128.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2's c2_xavier_fill: kaiming_uniform(a=1) weights, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class FPN(nn.Module):
    """FPN: [C3, C4, C5] -> [P3, ..., P(5 + top_levels)].

    Args:
        in_channels_list: channels of C3, C4, C5 (the body's `out_channels`).
        out_channels: channels of every P level (256 in the reference).
        top_levels: 2 (P6 + P7), 1 (P6 only) or 0 (no top block).
        p2_in_channels: channels of C2 to also build P2 (panoptic models); 0: no P2.
    """

    def __init__(
        self,
        *,
        in_channels_list: list[int],
        out_channels: int = 256,
        top_levels: int = 2,
        p2_in_channels: int = 0,
    ) -> None:
        super().__init__()
        if len(in_channels_list) != 3:
            raise ValueError(
                f"FPN in_channels_list: expected 3 entries (C3, C4, C5), got {in_channels_list}"
            )
        if top_levels not in (0, 1, 2):
            raise ValueError(f"FPN top_levels: expected 0, 1 or 2, got {top_levels}")
        if p2_in_channels < 0:
            raise ValueError(f"FPN p2_in_channels: expected >= 0, got {p2_in_channels}")
        self.in_levels = [3 + i for i in range(len(in_channels_list))]
        if p2_in_channels:
            self.fpn_lateral2 = nn.Conv2d(p2_in_channels, out_channels, kernel_size=1)
            self.fpn_output2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            c2_xavier_fill(self.fpn_lateral2)
            c2_xavier_fill(self.fpn_output2)
        self.has_p2 = bool(p2_in_channels)
        for level, in_ch in zip(self.in_levels, in_channels_list, strict=True):
            lateral = nn.Conv2d(in_ch, out_channels, kernel_size=1)
            output = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        # ModuleDict with keys p6/p7: state-dict keys `top_block.p6.*` as the reference.
        self.top_block = nn.ModuleDict()
        for name in ("p6", "p7")[:top_levels]:
            conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
            c2_xavier_fill(conv)
            self.top_block[name] = conv
        self.out_channels = out_channels
        self.top_levels = top_levels
        self.num_levels = len(in_channels_list) + top_levels
        self.strides = [2**level for level in range(3, 3 + self.num_levels)]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """features [C3, C4, C5] -> [P3, ..., P(5 + top_levels)] (see module glossary)."""
        return self._pyramid(features)[0]

    def forward_with_p2(self, c2: Tensor, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """(C2 (Tensor[N, p2_in_channels, H/4, W/4]), [C3, C4, C5]) -> (P2 (Tensor[N,
        out_channels, H/4, W/4]), [P3, ...] as `forward`). P2 continues the same top-down path:
        lateral(C2) + nearest x2 of the level-3 sum, then its 3x3 output conv."""
        if not self.has_p2:
            raise ValueError("FPN: built without P2 (p2_in_channels=0)")
        results, prev = self._pyramid(features)
        lateral = self.fpn_lateral2(c2)
        prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
        return self.fpn_output2(prev), results

    def _pyramid(self, features: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """([P3, ...], the level-3 top-down sum before its output conv)."""
        if len(features) != len(self.in_levels):
            raise ValueError(f"FPN: expected {len(self.in_levels)} features, got {len(features)}")
        levels = self.in_levels
        prev = getattr(self, f"fpn_lateral{levels[-1]}")(features[-1])
        results = [getattr(self, f"fpn_output{levels[-1]}")(prev)]
        for level, feature in zip(levels[-2::-1], features[-2::-1], strict=True):
            lateral = getattr(self, f"fpn_lateral{level}")(feature)
            # size= (not scale_factor=2 as the reference) so odd sizes work; identical for
            # inputs padded to a multiple of 32.
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        if "p6" in self.top_block:
            # From the P5 output, not C5 (AdelaiDet's LastLevelP6P7(in_features="p5")).
            p6 = self.top_block["p6"](results[-1])
            results.append(p6)
            if "p7" in self.top_block:
                results.append(self.top_block["p7"](F.relu(p6)))
        return results, prev
