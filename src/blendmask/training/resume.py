"""Continuing a run from its `last.pt`, and what may differ between the saved run and now.

A resumed run must be the run that was saved, or the user must have said otherwise:

- model and data settings (the network, the training set, its augmentations) never change
  mid-run: resuming with other ones is refused, naming each key that differs;
- solver settings (learning rate, schedule, batch, seed, ...) are refused too unless the user
  asks for them (`--resume-with-new-settings`): then the optimiser and the schedule take them
  explicitly (the saved optimiser state would otherwise silently keep the old learning rate);
- settings that do not change what is learned (loader workers, the validation set, logging and
  checkpoint periods) may differ freely.

Nothing here changes a run resumed with its own settings: it continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blendmask.config import Config, ConfigError, flatten_dict, from_dict
from blendmask.training.checkpoint import (
    LAST_CHECKPOINT,
    read_training_state,
    restore_training_state,
)
from blendmask.training.optim import WarmupMultiStepSchedule

# Keys whose value does not change the weights a run ends with.
FREE_KEYS = frozenset(
    {
        "preset",  # a name; the settings themselves are compared
        "data.num_workers",  # batches are a pure function of (seed, rank, iteration)
        "data.val_json",
        "data.val_images",
        "solver.checkpoint_period",
        "solver.eval_period",
        "solver.log_period",
    }
)
# Free too unless the run trains on crops, whose scale is relative to the test-time size
# (data/augment.py RandomScaledCrop).
TEST_SIZE_KEYS = frozenset({"data.min_size_test", "data.max_size_test"})
# File names: the same file spelt differently (relative / absolute) is no change.
PATH_KEYS = frozenset({"data.train_json", "data.train_images", "model.backbone.weights"})
NEW_SETTINGS_FLAG = "--resume-with-new-settings"
NEW_OUT_FLAG = "--new-out-if-changed"


@dataclass
class Resumed:
    """What `resume_training` did: the iteration to run next, the evaluation period in force
    and the solver settings taken from the new config (empty when it is the saved one)."""

    iteration: int
    eval_period: int
    changed: list[str] = field(default_factory=list)


def config_differences(saved: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, value in the checkpoint, value now) for each setting that differs and matters."""
    old = flatten_dict(from_dict(saved).to_dict())  # fills keys added since with their defaults
    new = flatten_dict(cfg.to_dict())
    crops = bool(old.get("data.crop_size")) or bool(new.get("data.crop_size"))
    free = FREE_KEYS if crops else FREE_KEYS | TEST_SIZE_KEYS
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in free or a == b or (key in PATH_KEYS and _same_path(a, b)):
            continue
        diffs.append((key, a, b))
    return diffs


def check_resume_config(
    path: str | Path, saved: dict[str, Any], cfg: Config, *, new_settings: bool = False
) -> list[str]:
    """Refuse a resume whose config differs from the saved one (ValueError listing the keys),
    except solver keys when `new_settings`; returns those, as `key: old (checkpoint) -> new
    (now)` lines."""
    try:
        diffs = config_differences(saved, cfg)
    except ConfigError as exc:
        raise ValueError(f"{path}: the stored config is not readable: {exc}") from None
    lines = [f"{k}: {a!r} (checkpoint) -> {b!r} (now)" for k, a, b in diffs]
    fixed = [line for (k, _, _), line in zip(diffs, lines) if not k.startswith("solver.")]
    if fixed:
        raise ValueError(
            f"{path}: this run folder holds a run of another model or data ({'; '.join(fixed)}); "
            f"use another --out ({NEW_OUT_FLAG} picks OUT-2), or --no-resume to start over in it"
        )
    if lines and not new_settings:
        raise ValueError(
            f"{path}: the run was saved with other solver settings ({'; '.join(lines)}); pass "
            f"{NEW_SETTINGS_FLAG} to continue it with the new ones, or use another --out "
            f"({NEW_OUT_FLAG} picks OUT-2; or --no-resume) to start over"
        )
    return lines


def run_folder_for(out: str | Path, cfg: Config, *, new_settings: bool = False) -> Path:
    """Where a run of `cfg` asked to go into `out` goes when the user prefers a new folder to a
    refusal (`--new-out-if-changed`): `out` itself unless it holds a `last.pt` that `cfg` may
    not continue (another config, or an unreadable file), else the first of OUT-2, OUT-3, ...
    that holds no `last.pt` or one `cfg` continues (so running the same command again resumes
    OUT-2 rather than starting OUT-3). Nothing is created here; the choice depends only on the
    files, so every process of a distributed run makes the same one."""
    out = Path(out)
    base = out if out.name else out.resolve()
    folder, number = out, 1
    while True:
        last = folder / LAST_CHECKPOINT
        if not last.is_file():
            return folder
        try:
            check_resume_config(
                last, read_training_state(last)["config"], cfg, new_settings=new_settings
            )
            return folder
        except ValueError:
            number += 1
            folder = base.parent / f"{base.name}-{number}"


def resume_training(
    path: str | Path,
    cfg: Config,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupMultiStepSchedule,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
    new_settings: bool = False,
) -> Resumed:
    """Continue the run saved in `path` with `cfg`, built into the objects given.

    With its own config, every state comes back as saved, including the plan in force (a
    schedule a time budget shrank continues as planned). With changed solver settings and
    `new_settings`, the optimiser's hyper-parameters (lr, momentum, weight decay) and the
    schedule (base lr, max_iter, steps, warm-up, gamma) are those of `cfg`, while the weights,
    momentum buffers and the iteration are the saved ones.
    """
    payload = read_training_state(path)
    changed = check_resume_config(path, payload["config"], cfg, new_settings=new_settings)
    s, saved_iteration = cfg.solver, int(payload["iteration"])
    if changed and s.max_iter < saved_iteration:
        raise ValueError(
            f"{path}: solver.max_iter={s.max_iter} but the run is already at iteration "
            f"{saved_iteration}; give a larger --max-iter"
        )
    eval_period = s.eval_period
    plan = payload.get("extra", {}).get("schedule")
    saved_solver = payload["config"].get("solver", {})
    same_schedule = saved_solver.get("max_iter") == s.max_iter and list(
        saved_solver.get("steps", [])
    ) == list(s.steps)
    if plan and same_schedule:
        schedule.restore_plan(int(plan["max_iter"]), [int(x) for x in plan["steps"]])
        eval_period = int(plan.get("eval_period", eval_period))
    # The hyper-parameters `cfg` gave the optimiser, before the saved ones overwrite them.
    wanted = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    if changed:
        payload = _with_base_lrs(payload, [g["initial_lr"] for g in wanted])
    iteration = restore_training_state(
        payload,
        model=model,
        optimizer=optimizer,
        scheduler=schedule,
        scaler=scaler,
        restore_rng=restore_rng,
        source=path,
    )
    if changed:
        _apply_hyperparameters(optimizer, wanted, schedule, iteration)
    return Resumed(iteration=iteration, eval_period=eval_period, changed=changed)


def _with_base_lrs(payload: dict[str, Any], base_lrs: list[float]) -> dict[str, Any]:
    """The payload with the scheduler's saved base learning rates replaced."""
    scheduler = {**payload["scheduler"], "base_lrs": list(base_lrs)}
    return {**payload, "scheduler": scheduler}


def _apply_hyperparameters(
    optimizer: torch.optim.Optimizer,
    wanted: list[dict[str, Any]],
    schedule: WarmupMultiStepSchedule,
    iteration: int,
) -> None:
    """Put `wanted` (per group) over the loaded hyper-parameters and set the rate of the next
    update as the schedule would have: initial lr x factor(iteration)."""
    if len(wanted) != len(optimizer.param_groups):
        raise ValueError(
            f"resume: the optimiser has {len(optimizer.param_groups)} parameter groups, the "
            f"new settings {len(wanted)}"
        )
    factor = schedule.factor(iteration)
    for group, settings in zip(optimizer.param_groups, wanted):
        group.update({k: v for k, v in settings.items() if k != "lr"})
        group["lr"] = group["initial_lr"] * factor


def _same_path(a: Any, b: Any) -> bool:
    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
