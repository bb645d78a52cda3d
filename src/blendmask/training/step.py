"""The forward of a training step, shared by the loop and `benchmarks/train_step.py` (so the
benchmark times what training runs): the precision context and network + criterion."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")


def training_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """`solver.precision` where CUDA AMP is off: fp32 runs as is; bf16 autocasts the forward
    (convs and matmuls; CPUs with AVX512-BF16 or AMX run them natively) while the weights, the
    losses (the criterion casts to float32) and the optimizer stay fp32."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"solver.precision: expected one of {PRECISIONS}, got {precision!r}")


def training_losses(
    model: nn.Module,
    criterion: nn.Module,
    images: Tensor,
    image_sizes: list[tuple[int, int]],
    targets: list[dict[str, Any]],
) -> dict[str, Tensor]:
    """Losses of a batch (images Tensor[N, 3, H, W], padded) for a training step.

    The input goes channels-last (oneDNN's native layout: no reorder around every conv), and
    the network skips the dense top layer: the criterion evaluates it only at the positive
    locations, the only ones the mask loss reads (same losses and gradients up to rounding;
    the dense top layer, a 3x3 conv to K*M*M channels over every level, was the largest conv
    of the step)."""
    batch = images.contiguous(memory_format=torch.channels_last)
    outputs = model(batch, image_sizes, dense_attentions=False)
    return criterion(outputs, targets)
