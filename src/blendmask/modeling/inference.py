"""An inference-only copy of the network: frozen BatchNorm folded into the preceding conv and
channels-last memory layout (speed only; BlendMask Sec. 4.3 measures inference time).

Neither changes what the network computes: folding rewrites `bn(conv(x))` as one conv with
weight `w * s` and bias `(b_conv - mean) * s + beta`, `s = gamma / sqrt(var + eps)`, which is the
same affine map up to float rounding (relative error ~1e-6 in fp32). It removes two elementwise
passes (`x * scale + bias`) over every backbone activation. Channels-last lets oneDNN run the
convs without reordering every input and output.

The folded copy has different parameters and no BatchNorm buffers, so it is never trained or
saved: `optimize_for_inference` works on a deep copy and leaves the given model untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

# (conv, norm) attribute pairs that run back to back in the bodies' forward:
# torchvision ResNet stem and blocks, and EfficientNet-Lite's stem and MBConv blocks.
_CONV_NORM_PAIRS = (
    ("conv1", "bn1"),
    ("conv2", "bn2"),
    ("conv3", "bn3"),
    ("_conv_stem", "_bn0"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
)


def _is_foldable_norm(module: nn.Module) -> bool:
    """FrozenBatchNorm2d, or a BatchNorm2d in eval mode with running statistics."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return (
        isinstance(module, nn.BatchNorm2d)
        and not module.training
        and module.track_running_stats
        and module.running_mean is not None
    )


@torch.no_grad()
def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold `norm` (applied right after `conv`) into `conv`, in place; `norm` is then unused.

    conv.weight (Tensor[O, I/g, kh, kw]) is scaled per output channel and conv gets a bias
    (Tensor[O]).
    """
    weight_n = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias_n = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    # Computed in float64 so folding itself adds no rounding beyond the final cast.
    scale = weight_n.double() * torch.rsqrt(norm.running_var.double() + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = (bias - norm.running_mean.double()) * scale + bias_n.double()
    dtype = conv.weight.dtype
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=False)


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every known (conv, frozen / eval BatchNorm) pair below `module`, in place, replacing
    the norm by nn.Identity. Returns the number of folded pairs.

    Pairs are the attribute names of `_CONV_NORM_PAIRS` and consecutive (Conv2d, norm) entries
    of an nn.Sequential (ResNet's `downsample`). Convs that are not nn.Conv2d (DCN's
    DeformConv2d) are left alone.
    """
    folded = 0
    for parent in list(module.modules()):
        for conv_name, norm_name in _CONV_NORM_PAIRS:
            conv = getattr(parent, conv_name, None)
            norm = getattr(parent, norm_name, None)
            # plain Conv2d or a subclass (EfficientNet's SameConv2d); not DeformConv2d
            if not isinstance(conv, nn.Conv2d):
                continue
            if norm is None or not _is_foldable_norm(norm):
                continue
            fold_conv_norm(conv, norm)
            setattr(parent, norm_name, nn.Identity())
            folded += 1
        if isinstance(parent, nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Conv2d) and _is_foldable_norm(parent[i + 1]):
                    fold_conv_norm(parent[i], parent[i + 1])
                    parent[i + 1] = nn.Identity()
                    folded += 1
    return folded


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode deep copy of `model` for inference only (see the module docstring).

    The copy gives the same outputs as `model` within float rounding (~1e-6 relative in fp32).
    With `channels_last`, feed it `to_channels_last(images)` for the full gain (any layout
    gives the same numbers). Do not train, save or load state dicts into the copy: its
    BatchNorm layers are gone.
    """
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    # Only BatchNorm can fold (GroupNorm depends on the activation's statistics); the name
    # pairs match BatchNorm only in the body, Sequential pairs also in the bottom module.
    fold_frozen_batchnorm(fast)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    return fast


def to_channels_last(images: Tensor) -> Tensor:
    """images (Tensor[N, C, H, W]) in channels-last memory layout (same values)."""
    return images.contiguous(memory_format=torch.channels_last)
