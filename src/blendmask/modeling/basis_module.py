"""Bottom module (bases) and the auxiliary semantic head.

BlendMask Sec. 3.2 ("Bottom module") and Sec. 4.1 / Table 4. Two variants:

- `ProtoNet`: the reference's module (AdelaiDet `basis_module.py`, docs/reference.md §1.7), a
  YOLACT-style ProtoNet: one refine conv block per P3-P5 to `convs_dim`, P4/P5 resized to P3
  bilinearly (align_corners=False) and **summed** at P3, `num_convs` conv blocks, x2 bilinear
  upsample, one conv block, 1x1 to K bases. Output stride 4 (P3 is stride 8, then x2).
  Indices match the reference's keys: `refine.{i}.{0,1}`, `tower.{0..num_convs-1}` blocks,
  `tower.{num_convs}` the Upsample (no keys), `tower.{num_convs+1}` a block,
  `tower.{num_convs+2}` the 1x1.
- `DeepLabBasis`: the paper's DeepLabV3+-style decoder (Table 4): an ASPP-lite on the
  high-level feature (C5 or P5), fused with a reduced low-level feature (C3 or P3) at stride 8,
  then x2 upsample and 1x1 to K bases, also at stride 4.

Both carry the auxiliary semantic head (`seg_head`, Sec. 4.1 "auxiliary semantic segmentation
supervision"): conv3x3 -> norm -> ReLU -> conv3x3 -> norm -> ReLU -> conv1x1 to C + 1 classes
(0 = background) on the stride-8 input (P3 / the low-level feature); indices 0, 1, 3, 4, 6 as the
reference. Its loss (weight 0.3, targets computed from the instance masks) is in losses.py.

Norm "BN"/"SyncBN" is a plain BatchNorm2d here, so it works in one process; the training engine
converts it to SyncBatchNorm only for "SyncBN" with several CUDA processes (the reference's
SyncBN crashes single-GPU users). Conv blocks are conv (no bias when normed) -> norm -> ReLU with kaiming_uniform(a=1)
init; with norm "none" the norm slot is an nn.Identity (keys keep their indices).

Glossary: N images, K bases, C foreground classes, H/W padded input size (multiple of 32).
Outputs: bases (Tensor[N, K, H/4, W/4]), sem_logits (Tensor[N, C+1, H/8, W/8] | None).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fcos_head import group_norm

BASIS_NORMS = ("BN", "SyncBN", "GN", "none")


def _norm(norm: str, channels: int) -> nn.Module:
    if norm in ("BN", "SyncBN"):
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        return group_norm(channels)  # GroupNorm(32) for widths >= 64
    return nn.Identity()


def conv_block(
    in_channels: int, out_channels: int, norm: str, kernel_size: int = 3, dilation: int = 1
) -> nn.Sequential:
    """[conv (no bias when normed), norm, ReLU], kaiming_uniform(a=1) as AdelaiDet's
    conv_with_kaiming_uniform (conv -> norm -> ReLU, despite its comment)."""
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        bias=norm == "none",
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, _norm(norm, out_channels), nn.ReLU(inplace=True))


def semantic_head(in_channels: int, channels: int, num_classes: int, norm: str) -> nn.Sequential:
    """The auxiliary semantic head: 2 x [conv3x3, norm, ReLU] + conv1x1 to C + 1 classes.

    PyTorch default init, as the reference.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=norm == "none"),
        _norm(norm, channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"),
        _norm(norm, channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes + 1, 1),
    )


def _check(norm: str, num_bases: int, num_classes: int) -> None:
    if norm not in BASIS_NORMS:
        raise ValueError(f"basis module norm: expected one of {BASIS_NORMS}, got {norm!r}")
    if num_bases < 1:
        raise ValueError(f"basis module num_bases: expected >= 1, got {num_bases}")
    if num_classes < 1:
        raise ValueError(f"basis module num_classes: expected >= 1, got {num_classes}")


class ProtoNet(nn.Module):
    """The reference bottom module: bases at stride 4 from P3-P5 (see module docstring).

    Args:
        in_channels: channels of each input level (FPN out_channels).
        num_levels: how many of the given features to use, from the first (P3).
        convs_dim: width of the module (128).
        num_convs: conv blocks before the x2 upsample (3; 2 in the 550 / RT configs).
        num_bases: K.
        norm: BN | SyncBN | GN | none.
        sem_loss_on: build `seg_head` (auxiliary semantic logits on P3).
        num_classes: C, foreground classes; seg_head predicts C + 1.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_levels: int = 3,
        convs_dim: int = 128,
        num_convs: int = 3,
        num_bases: int = 4,
        norm: str = "BN",
        sem_loss_on: bool = True,
        num_classes: int = 80,
    ) -> None:
        super().__init__()
        _check(norm, num_bases, num_classes)
        if num_levels < 1:
            raise ValueError(f"ProtoNet num_levels: expected >= 1, got {num_levels}")
        self.num_levels = num_levels
        self.num_bases = num_bases
        self.refine = nn.ModuleList(
            [conv_block(in_channels, convs_dim, norm) for _ in range(num_levels)]
        )
        tower: list[nn.Module] = [conv_block(convs_dim, convs_dim, norm) for _ in range(num_convs)]
        tower.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        tower.append(conv_block(convs_dim, convs_dim, norm))
        tower.append(nn.Conv2d(convs_dim, num_bases, 1))
        self.tower = nn.Sequential(*tower)
        self.seg_head = (
            semantic_head(in_channels, convs_dim, num_classes, norm) if sem_loss_on else None
        )

    def forward(
        self, features: list[Tensor], with_sem: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """features (list[Tensor[N, in_channels, Hl, Wl]]): P3, P4, ... (at least num_levels).

        Returns bases (Tensor[N, K, 2*H3, 2*W3]) = stride 4, and sem_logits
        (Tensor[N, C+1, H3, W3]) = stride 8, or None without seg_head.
        """
        if len(features) < self.num_levels:
            raise ValueError(
                f"ProtoNet: expected at least {self.num_levels} features, got {len(features)}"
            )
        x = self.refine[0](features[0])
        for refine, feature in zip(self.refine[1:], features[1 : self.num_levels], strict=True):
            # Resize to P3 and sum (reference: bilinear, align_corners=False).
            y = F.interpolate(
                refine(feature), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
            x = x + y
        bases = self.tower(x)
        # The semantic head only feeds a training loss: inference may skip it (`with_sem`).
        sem_logits = self.seg_head(features[0]) if self.seg_head is not None and with_sem else None
        return bases, sem_logits


class DeepLabBasis(nn.Module):
    """DeepLabV3+-style bottom module (paper Table 4), bases at stride 4.

    high (C5 or P5, stride 32) -> ASPP-lite [1x1, 3x3 at each of `aspp_dilations`, image pooling]
    -> concat -> 1x1 projection; resized bilinearly to the low-level feature (C3 or P3,
    stride 8), concatenated with a 1x1 reduction of it to 48 channels (DeepLabV3+), two 3x3 conv
    blocks; then x2 bilinear upsample (stride 4), one conv block, 1x1 to K bases.

    The image-pooling branch has no norm (a BatchNorm on a 1x1 map fails with batch size 1).

    Args:
        low_channels / high_channels: channels of the low- and high-level inputs.
        convs_dim: width of the decoder.
        num_bases: K.
        norm: BN | SyncBN | GN | none.
        sem_loss_on: build `seg_head` on the low-level input (stride 8).
        num_classes: C, foreground classes; seg_head predicts C + 1.
        aspp_dilations: dilation rates of the 3x3 ASPP branches (at stride 32).
    """

    def __init__(
        self,
        *,
        low_channels: int,
        high_channels: int,
        convs_dim: int = 128,
        num_bases: int = 4,
        norm: str = "BN",
        sem_loss_on: bool = True,
        num_classes: int = 80,
        aspp_dilations: tuple[int, ...] = (3, 6, 9),
    ) -> None:
        super().__init__()
        _check(norm, num_bases, num_classes)
        self.num_bases = num_bases
        branches = [conv_block(high_channels, convs_dim, norm, kernel_size=1)]
        branches += [conv_block(high_channels, convs_dim, norm, dilation=d) for d in aspp_dilations]
        self.aspp = nn.ModuleList(branches)
        self.aspp_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, convs_dim, 1), nn.ReLU(inplace=True)
        )
        self.aspp_project = conv_block(convs_dim * (len(branches) + 1), convs_dim, norm, 1)
        low_dim = 48
        self.low_project = conv_block(low_channels, low_dim, norm, kernel_size=1)
        self.fuse = nn.Sequential(
            conv_block(convs_dim + low_dim, convs_dim, norm), conv_block(convs_dim, convs_dim, norm)
        )
        self.tower = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_block(convs_dim, convs_dim, norm),
            nn.Conv2d(convs_dim, num_bases, 1),
        )
        self.seg_head = (
            semantic_head(low_channels, convs_dim, num_classes, norm) if sem_loss_on else None
        )

    def forward(
        self, low: Tensor, high: Tensor, with_sem: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """low (Tensor[N, low_channels, H/8, W/8]), high (Tensor[N, high_channels, H/32, W/32]).

        Returns bases (Tensor[N, K, H/4, W/4]) and sem_logits (Tensor[N, C+1, H/8, W/8] | None).
        """
        branches = [branch(high) for branch in self.aspp]
        pooled = self.aspp_pool(high)
        # (N, D, 1, 1) -> (N, D, h, w): the image-level feature broadcast over the map.
        branches.append(pooled.expand(-1, -1, high.shape[-2], high.shape[-1]))
        x = self.aspp_project(torch.cat(branches, dim=1))
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, self.low_project(low)], dim=1))
        bases = self.tower(x)
        sem_logits = self.seg_head(low) if self.seg_head is not None and with_sem else None
        return bases, sem_logits
