"""Optimiser and learning-rate schedule of the reference trainer (AdelaiDet / detectron2 SGD).

- SGD with momentum 0.9 and weight decay 1e-4 on every parameter except those of norm layers
  (BN, SyncBN, GN, LayerNorm), which use `weight_decay_norm` (0 in the reference). Biases keep
  the full decay and learning rate (BIAS_LR_FACTOR 1, WEIGHT_DECAY_BIAS = WEIGHT_DECAY).
- WarmupMultiStepLR: a linear warm-up from `warmup_factor` to 1 over `warmup_iters`, then a
  factor `gamma` at each entry of `steps`. Written as a `LambdaLR` over iterations so that its
  `state_dict` (the iteration count) resumes exactly.
- The linear scaling rule (Goyal et al. 2017): the learning rate scales with the batch size.
"""

from __future__ import annotations

import bisect
import functools

import torch
from torch import nn

# Parameters of these layers get `weight_decay_norm` (reference WEIGHT_DECAY_NORM = 0).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def param_groups(
    model: nn.Module, *, weight_decay: float, weight_decay_norm: float
) -> list[dict[str, object]]:
    """Split the trainable parameters of `model` into a norm-layer group and the rest.

    Each parameter appears once even when modules share it; frozen parameters
    (`requires_grad=False`, e.g. FrozenBN or frozen stages) are left out.
    """
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, NORM_LAYERS) else decay).append(param)
    groups: list[dict[str, object]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": weight_decay_norm})
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_norm: float = 0.0,
) -> torch.optim.SGD:
    """SGD as the reference's `build_optimizer` (no Nesterov)."""
    groups = param_groups(model, weight_decay=weight_decay, weight_decay_norm=weight_decay_norm)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)


def warmup_multistep_factor(
    iteration: int,
    *,
    steps: list[int],
    gamma: float = 0.1,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
) -> float:
    """The multiplier of the base learning rate at `iteration` (0-based).

    Linear warm-up: factor = warmup_factor * (1 - a) + a with a = iteration / warmup_iters, for
    iteration < warmup_iters; then gamma ** (number of steps <= iteration).
    """
    factor = gamma ** bisect.bisect_right(sorted(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    steps: list[int],
    gamma: float = 0.1,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
) -> torch.optim.lr_scheduler.LambdaLR:
    """WarmupMultiStepLR stepped once per iteration (`scheduler.step()` after each update)."""
    # The schedule itself is rebuilt from the config; the state dict only carries the
    # iteration count (`last_epoch`), so resuming continues the same curve.
    fn = functools.partial(
        warmup_multistep_factor,
        steps=list(steps),
        gamma=gamma,
        warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)


def scale_lr(base_lr: float, base_batch: int, batch: int) -> float:
    """The linear scaling rule: the learning rate for `batch` when `base_lr` fits `base_batch`."""
    if base_batch <= 0 or batch <= 0:
        raise ValueError(f"scale_lr: batch sizes must be positive, got {base_batch} and {batch}")
    return base_lr * batch / base_batch
