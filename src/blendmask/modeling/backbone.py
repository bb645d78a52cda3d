"""Backbone bodies: torchvision ResNet-18/34/50/101 (and a dispatcher for EfficientNet-Lite0).

BlendMask (Chen et al., CVPR 2020) Sec. 4 uses a ResNet + FPN backbone, as FCOS. The reference
(AdelaiDet on detectron2) builds its own ResNet; this one is torchvision's, with torchvision's
module names (`conv1`, `bn1`, `layer1..layer4`, blocks `conv1/bn1/conv2/bn2/conv3/bn3/downsample`)
so torchvision state dicts load directly and the reference's keys are a pure rename
(`stem.conv1` <-> `conv1`/`bn1`, `resN` <-> `layer{N-1}`, `convK.norm` <-> `bnK`,
`shortcut` <-> `downsample.0/.1`). Reference quirks reproduced on purpose:

- `stride_in_1x1` (MSRA / Caffe2 weights): the stride-2 of block 0 in res3-res5 sits on the first
  1x1 conv, not on the 3x3 as in torchvision ("ResNet v1.5").
- FrozenBN (torchvision.ops.FrozenBatchNorm2d, eps 1e-5, the same buffers and maths as
  detectron2's) and `freeze_at` (stem + res2 frozen by default).
- DCNv2 "dcni3" blocks (docs/reference.md §1.3): block i of res3-res5 is deformable when
  i % deform_interval == 0; `conv2_offset` is a plain 3x3 conv with bias and 27 outputs,
  zero-initialised; offset = channels 0-17, mask = sigmoid(channels 18-26).

Glossary: N images, H/W padded input size. Outputs are C3, C4, C5 at strides 8, 16, 32:
C3 (Tensor[N, out_channels[0], H/8, W/8]), C4 (Tensor[N, out_channels[1], H/16, W/16]),
C5 (Tensor[N, out_channels[2], H/32, W/32]).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import DeformConv2d, FrozenBatchNorm2d

RESNET_NORMS = ("FrozenBN", "BN", "SyncBN", "GN")

# depth -> (block class, blocks per stage)
_RESNET_SPECS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    34: (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    50: (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    101: (tv_resnet.Bottleneck, [3, 4, 23, 3]),
}


def resnet_norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The norm factory for ResNet bodies: FrozenBN | BN | SyncBN | GN.

    SyncBN is a plain BatchNorm2d here; the training engine converts the body's BatchNorms to
    `nn.SyncBatchNorm` only when the body's norm is "SyncBN" and several processes train on CUDA
    (training/training_run.py); in one process, or across CPU processes, it stays per-process BN
    (the reference's SyncBN crashes single-process users).
    """
    if norm == "FrozenBN":
        return lambda c: FrozenBatchNorm2d(c, eps=1e-5)
    if norm in ("BN", "SyncBN"):
        return nn.BatchNorm2d
    if norm == "GN":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"backbone norm: expected one of {RESNET_NORMS}, got {norm!r}")


class DeformBottleneck(nn.Module):
    """A torchvision Bottleneck whose 3x3 conv is a modulated deformable conv (DCNv2).

    Built from an existing Bottleneck (it takes over its convs, norms and downsample), so the
    parameter names stay torchvision's plus `conv2_offset` (the reference's name).
    `conv2.weight` keeps the shape [Cb, Cb, 3, 3] and has no bias, as the reference.
    """

    def __init__(self, block: tv_resnet.Bottleneck) -> None:
        super().__init__()
        width = block.conv2.in_channels
        stride = block.conv2.stride
        dilation = block.conv2.dilation
        self.conv1 = block.conv1
        self.bn1 = block.bn1
        # 27 = 3 x 9: (dy, dx) for each of the 9 taps (interleaved, the layout
        # torchvision.ops.deform_conv2d expects) + one modulation mask per tap.
        self.conv2_offset = nn.Conv2d(
            width, 27, kernel_size=3, stride=stride, padding=dilation, dilation=dilation
        )
        # Zero offsets and mask logits: the block starts as a plain conv scaled by sigmoid(0).
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)
        self.conv2 = DeformConv2d(
            width,
            width,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        # Keep the replaced conv's (torchvision kaiming) init.
        with torch.no_grad():
            self.conv2.weight.copy_(block.conv2.weight)
        self.bn2 = block.bn2
        self.conv3 = block.conv3
        self.bn3 = block.bn3
        self.relu = block.relu
        self.downsample = block.downsample
        self.stride = block.stride

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[N, Cin, Hi, Wi]) -> Tensor[N, Cout, Hi/stride, Wi/stride]."""
        out = self.relu(self.bn1(self.conv1(x)))
        offset_mask = self.conv2_offset(out)
        # As the reference: chunk the 27 channels into 3 x 9; offset = cat(chunk0, chunk1)
        # (= channels 0-17), mask = sigmoid(chunk2).
        offset = offset_mask[:, :18]
        mask = offset_mask[:, 18:].sigmoid()
        out = self.relu(self.bn2(self.conv2(out, offset, mask)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def conv_frozen_bn(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
    """`norm(conv(x))`, with a FrozenBatchNorm2d applied to the conv's weight and bias instead
    of the activation: conv(x, w * s) + (b - mean) * s + beta, s = gamma / sqrt(var + eps).

    The same affine map up to float rounding, and gradients reach `conv.weight` through the
    product; but no elementwise `x * scale + bias` pass over the activation (and its backward),
    and under bf16 autocast the conv's bf16 output is not promoted to fp32 by the fp32 buffers.
    The modules are untouched (state dict, `optimize_for_inference`, hooks on the pair); any
    other pair (BatchNorm in training, GN, a folded nn.Identity, DeformConv2d) runs as is."""
    if not isinstance(norm, FrozenBatchNorm2d) or type(conv) is not nn.Conv2d:
        return norm(conv(x))
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return nn.functional.conv2d(
        x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups
    )


def _run_block(block: nn.Module, x: Tensor) -> Tensor:
    """torchvision's Bottleneck / BasicBlock forward with `conv_frozen_bn`; other blocks
    (DeformBottleneck) run their own forward."""
    if type(block) not in (tv_resnet.Bottleneck, tv_resnet.BasicBlock):
        return block(x)
    out = block.relu(conv_frozen_bn(block.conv1, block.bn1, x))
    if isinstance(block, tv_resnet.Bottleneck):
        out = block.relu(conv_frozen_bn(block.conv2, block.bn2, out))
        out = conv_frozen_bn(block.conv3, block.bn3, out)
    else:
        out = conv_frozen_bn(block.conv2, block.bn2, out)
    identity = x
    if block.downsample is not None:
        down = block.downsample
        is_pair = isinstance(down, nn.Sequential) and len(down) == 2
        identity = conv_frozen_bn(down[0], down[1], x) if is_pair else down(x)
    return block.relu(out + identity)


def _run_stage(stage: nn.Sequential, x: Tensor) -> Tensor:
    for block in stage:
        x = _run_block(block, x)
    return x


def _move_stride_to_1x1(block: nn.Module) -> None:
    """MSRA style: put the block's stride on its first 1x1 conv instead of the 3x3."""
    stride = block.conv2.stride
    block.conv1.stride = stride
    block.conv2.stride = (1, 1)


class ResNetBody(nn.Module):
    """torchvision ResNet without `avgpool`/`fc`, returning [C3, C4, C5].

    Args:
        depth: 18, 34, 50 or 101.
        norm: FrozenBN (torchvision FrozenBatchNorm2d, eps 1e-5) | BN | SyncBN (a BatchNorm2d;
            the engine converts it when distributed) | GN (GroupNorm(32)).
        freeze_at: 0 or -1 freezes nothing, 1 the stem, 2 stem + layer1 (res2; reference
            default), k > 2 also layer2..layer{k-1}. Frozen parameters get requires_grad False;
            with BN their modules also stay in eval mode.
        stride_in_1x1: move the stride of block 0 in layer2-4 from conv2 (3x3) to conv1 (1x1),
            as the MSRA weights and the reference; no-op for 18/34 (BasicBlock).
        deform_interval: 0 off; n > 0 makes block i of layer2-4 a DCNv2 block when i % n == 0
            (Bottleneck depths only).
    """

    def __init__(
        self,
        *,
        depth: int,
        norm: str = "FrozenBN",
        freeze_at: int = 2,
        stride_in_1x1: bool = True,
        deform_interval: int = 0,
    ) -> None:
        super().__init__()
        if depth not in _RESNET_SPECS:
            raise ValueError(
                f"backbone depth: expected one of {sorted(_RESNET_SPECS)}, got {depth}"
            )
        if not -1 <= freeze_at <= 5:
            raise ValueError(f"backbone freeze_at: expected -1..5, got {freeze_at}")
        if deform_interval < 0:
            raise ValueError(f"backbone deform_interval: expected >= 0, got {deform_interval}")
        block_cls, layers = _RESNET_SPECS[depth]
        is_bottleneck = block_cls is tv_resnet.Bottleneck
        if deform_interval > 0 and not is_bottleneck:
            raise ValueError(
                f"backbone deform_interval: DCN blocks need a Bottleneck ResNet (50/101), "
                f"got depth {depth}"
            )
        net = tv_resnet.ResNet(block_cls, layers, norm_layer=resnet_norm_layer(norm))
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        del net  # drops avgpool / fc

        for stage in (self.layer2, self.layer3, self.layer4):
            if stride_in_1x1 and is_bottleneck:
                _move_stride_to_1x1(stage[0])
            if deform_interval > 0:
                for i in range(0, len(stage), deform_interval):
                    stage[i] = DeformBottleneck(stage[i])

        expansion = block_cls.expansion
        self.out_channels: list[int] = [128 * expansion, 256 * expansion, 512 * expansion]
        self.c2_channels = 64 * expansion  # C2 (res2), read by the FPN's P2 (panoptic models)
        self.norm = norm
        self.freeze_at = freeze_at
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        stages: list[list[nn.Module]] = [
            [self.conv1, self.bn1],
            [self.layer1],
            [self.layer2],
            [self.layer3],
            [self.layer4],
        ]
        return [m for stage in stages[: max(self.freeze_at, 0)] for m in stage]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        if self.freeze_at > 0:
            self.train(self.training)

    def train(self, mode: bool = True) -> ResNetBody:
        """Like nn.Module.train, but frozen stages keep their BatchNorm statistics (eval mode)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor, *, with_c2: bool = False) -> list[Tensor]:
        """x (Tensor[N, 3, H, W]): normalised images -> [C3, C4, C5] at strides 8, 16, 32;
        [C2, C3, C4, C5] (C2 at stride 4) with `with_c2`."""
        x = self.maxpool(self.relu(conv_frozen_bn(self.conv1, self.bn1, x)))
        c2 = _run_stage(self.layer1, x)
        c3 = _run_stage(self.layer2, c2)
        c4 = _run_stage(self.layer3, c3)
        c5 = _run_stage(self.layer4, c4)
        return [c2, c3, c4, c5] if with_c2 else [c3, c4, c5]


BODY_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0")


def build_body(
    name: str,
    *,
    norm: str = "FrozenBN",
    freeze_at: int = 2,
    stride_in_1x1: bool = True,
    deform_interval: int = 0,
) -> nn.Module:
    """Build a body returning [C3, C4, C5], with an `out_channels: list[int]` attribute.

    name: resnet18 | resnet34 | resnet50 | resnet101 | efficientnet_lite0. For EfficientNet,
    `norm == "FrozenBN"` means frozen BatchNorm; stride_in_1x1 does not apply and
    deform_interval must be 0.
    """
    if name.startswith("resnet") and name[len("resnet") :].isdigit():
        return ResNetBody(
            depth=int(name[len("resnet") :]),
            norm=norm,
            freeze_at=freeze_at,
            stride_in_1x1=stride_in_1x1,
            deform_interval=deform_interval,
        )
    if name == "efficientnet_lite0":
        if deform_interval:
            raise ValueError(
                f"backbone deform_interval: DCN is only for ResNet bodies, got {deform_interval} "
                f"with {name}"
            )
        from .efficientnet import EfficientNetLite0Body  # lazy: optional helper module

        return EfficientNetLite0Body(freeze_at=freeze_at, frozen_bn=norm == "FrozenBN")
    raise ValueError(f"backbone name: expected one of {BODY_NAMES}, got {name!r}")
