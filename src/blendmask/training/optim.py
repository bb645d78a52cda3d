"""Optimiser and learning-rate schedule of the reference trainer (AdelaiDet / detectron2 SGD).

- SGD with momentum 0.9 and weight decay 1e-4 on every parameter except those of norm layers
  (BN, SyncBN, GN, LayerNorm), which use `weight_decay_norm` (0 in the reference). Biases keep
  the full decay and learning rate (BIAS_LR_FACTOR 1, WEIGHT_DECAY_BIAS = WEIGHT_DECAY).
- WarmupMultiStepLR (`WarmupMultiStepSchedule`): a linear warm-up from `warmup_factor` to 1
  over `warmup_iters`, then a factor `gamma` at each entry of `steps`. A `LambdaLR` over
  iterations underneath, so that its `state_dict` (the iteration count) resumes exactly; the
  plan (`max_iter`, `steps`) changes only through `replan` / `restore_plan`.
- `decay="linear"` (not the reference's): after the same warm-up, the rate falls linearly to 0
  at `max_iter` instead of in steps (`solver.lr_schedule=linear`; measured in docs/training.md).
- The linear scaling rule (Goyal et al. 2017): the learning rate scales with the batch size.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

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
    return factor * _warmup(iteration, warmup_iters, warmup_factor)


def warmup_linear_factor(
    iteration: int, *, max_iter: int, warmup_iters: int = 1000, warmup_factor: float = 0.001
) -> float:
    """The multiplier at `iteration` of a linear decay from 1 to 0 at `max_iter`, times the
    same linear warm-up as `warmup_multistep_factor`."""
    factor = max(max_iter - iteration, 0) / max(max_iter, 1)
    return factor * _warmup(iteration, warmup_iters, warmup_factor)


def _warmup(iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    """The linear warm-up's multiplier: warmup_factor at 0, rising to 1 at `warmup_iters`."""
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return warmup_factor * (1.0 - alpha) + alpha


def compress_steps(
    steps: Sequence[int], *, iteration: int, max_iter: int, new_max_iter: int
) -> list[int]:
    """The lr steps of a schedule ending at `max_iter`, moved to end at `new_max_iter` instead.

    Steps still ahead of `iteration` keep their fraction of the remaining run (so the decay
    happens at the same point of training); steps already passed stay where they were.
    """
    if max_iter <= iteration:  # nothing left to rescale
        return list(steps)
    scale = (new_max_iter - iteration) / (max_iter - iteration)
    return [
        s if s <= iteration else iteration + max(1, int(round((s - iteration) * scale)))
        for s in steps
    ]


class WarmupMultiStepSchedule:
    """WarmupMultiStepLR stepped once per iteration, with a plan (`max_iter`, `steps`) that
    `replan` can change mid-run (the time budget does). With `decay="linear"` the steps are
    ignored and the rate falls linearly to 0 at the planned `max_iter`.

    `step()` after each update. `state_dict()` is the underlying `LambdaLR`'s: only the
    iteration count (`last_epoch`), since the factor is rebuilt from the plan; the plan itself is
    saved next to it (`plan()`, `restore_plan`), so resuming continues the same curve.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_iter: int,
        steps: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 1000,
        warmup_factor: float = 0.001,
        decay: str = "multistep",
    ) -> None:
        if decay not in ("multistep", "linear"):
            raise ValueError(f"lr schedule: expected multistep or linear, got {decay!r}")
        self.decay = decay
        self.max_iter = int(max_iter)
        self.steps = [int(s) for s in steps]
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        # A bound method reads the plan in force at each step; LambdaLR stores a callable's
        # __dict__ in its state dict, and a method's is empty: the state stays the count only.
        self._scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=self.factor)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._scheduler.optimizer

    @property
    def last_iteration(self) -> int:
        """The number of `step()` calls so far (the iteration whose rate is in force)."""
        return int(self._scheduler.last_epoch)

    def factor(self, iteration: int) -> float:
        """The multiplier of the base learning rate at `iteration` under the current plan."""
        if self.decay == "linear":
            return warmup_linear_factor(
                iteration,
                max_iter=self.max_iter,
                warmup_iters=self.warmup_iters,
                warmup_factor=self.warmup_factor,
            )
        return warmup_multistep_factor(
            iteration,
            steps=self.steps,
            gamma=self.gamma,
            warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor,
        )

    def step(self) -> None:
        self._scheduler.step()

    def replan(self, max_iter: int, *, iteration: int) -> None:
        """End at `max_iter` instead, from `iteration` on: the lr steps still ahead keep their
        fraction of the remaining run (`compress_steps`); works for a longer run too."""
        if max_iter == self.max_iter:
            return
        self.steps = compress_steps(
            self.steps, iteration=iteration, max_iter=self.max_iter, new_max_iter=max_iter
        )
        self.max_iter = int(max_iter)

    def describe(self) -> str:
        """The decay for a log line: "lr steps [a, b]" or "lr linear to 0"."""
        return "lr linear to 0" if self.decay == "linear" else f"lr steps {self.steps}"

    def plan(self) -> dict[str, Any]:
        """`{"max_iter", "steps"}`, for the checkpoint."""
        return {"max_iter": self.max_iter, "steps": list(self.steps)}

    def restore_plan(self, max_iter: int, steps: Sequence[int]) -> None:
        """Continue a saved plan exactly (see `plan`)."""
        self.max_iter = int(max_iter)
        self.steps = [int(s) for s in steps]

    def state_dict(self) -> dict[str, Any]:
        return self._scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scheduler.load_state_dict(state)


def scale_lr(base_lr: float, base_batch: int, batch: int) -> float:
    """The linear scaling rule: the learning rate for `batch` when `base_lr` fits `base_batch`."""
    if base_batch <= 0 or batch <= 0:
        raise ValueError(f"scale_lr: batch sizes must be positive, got {base_batch} and {batch}")
    return base_lr * batch / base_batch
