"""Training checkpoints: `DIR/last.pt`, written atomically, from which training resumes exactly.

`last.pt` holds everything that decides the next iterations: model, optimiser (momentum
buffers), scheduler (iteration count), AMP scaler, the iteration, the RNG states of torch
(CPU and CUDA), numpy and Python, the resolved config, and the schedule in force (a time budget
may have shortened it). The data order needs no state: batches are a pure function of
(seed, rank, iteration) (see training/loaders.py), so resuming re-creates the sampler and skips
the batches already seen.

Everything is stored as tensors, numbers, strings, lists and dicts, so the file also loads with
`torch.load(weights_only=True)`. `DIR/model.pt` (config + weights only) is written by
`blendmask.checkpoint_io.save_model_file`. Resuming with a config that may differ from the
saved one is training/resume.py.

A checkpoint never holds non-finite weights (`write_training_state` refuses), and the training
loop writes one only after the next loss proved its weights finite (`training_state` takes a
copy, written one iteration later): after a diverged run, `last.pt` is still one to continue
from with a lower learning rate.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from blendmask.atomic import atomic_write
from blendmask.checkpoint_io import check_finite_weights
from blendmask.checkpoint_reader import (
    Field,
    Schema,
    non_negative,
    read_checkpoint,
    state_dict_problem,
    stored_config,
)
from blendmask.config import Config
from blendmask.config.checks import shown
from blendmask.modeling.state_dict import load_state_dict_checked
from blendmask.training.optim import WarmupMultiStepSchedule

CHECKPOINT_FORMAT_VERSION = 1
LAST_CHECKPOINT = "last.pt"


class Stateful(Protocol):
    """A scheduler (`WarmupMultiStepSchedule` or a torch LRScheduler), as far as a checkpoint
    is concerned."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through `atomic_write`: a reader (or a resumed run after a crash) sees either
    the previous file or the complete new one; a failed write (full disk, read-only folder)
    raises a one-line `WriteError` and leaves no temp file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def get_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, every CUDA device), numpy and Python, as tensors and lists."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    return getattr(model, "module", model)


def training_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Stateful,
    scaler: torch.amp.GradScaler | None,
    iteration: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of `last.pt` now, as CPU copies that later updates do not change (so it can
    be written after the next iteration, see `TrainingRun.snapshot_checkpoint`). `iteration`
    counts the updates done (the next one to run)."""
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "iteration": int(iteration),
        "config": config,
        "model": _cpu_copy(unwrap(model).state_dict()),
        "optimizer": _cpu_copy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": _cpu_copy(get_rng_state()),
        "extra": extra or {},
    }


def _cpu_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the CPU (one copy, also for CPU tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def write_training_state(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a `training_state` payload atomically to `path`.

    Raises FloatingPointError, writing nothing, when a weight is NaN or infinite: the previous
    checkpoint is worth more than a diverged one."""
    check_finite_weights(path, payload["model"])
    atomic_save(payload, path)


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Stateful,
    scaler: torch.amp.GradScaler | None,
    iteration: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """`write_training_state(path, training_state(...))`: `last.pt` of the objects now."""
    payload = training_state(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        iteration=iteration,
        config=config,
        extra=extra,
    )
    write_training_state(path, payload)


# Every top-level field of `last.pt` with its type, and the parts of each that restoring reads
# without checking them itself; `read_training_state` refuses anything else in one line.
_NUMBER = (int, float)
TRAINING_SCHEMA = Schema(
    kind="training checkpoint",
    newest=CHECKPOINT_FORMAT_VERSION,
    fields={
        "format_version": Field(int, required=False),
        "iteration": Field(int, check=non_negative),
        "config": Field(dict),
        "model": Field(dict, check=state_dict_problem),
        "optimizer": Field({"state": dict, "param_groups": [{"params": [int]}]}),
        "scheduler": Field({"last_epoch": int, "base_lrs": [_NUMBER]}),
        "scaler": Field(dict, required=False),
        "rng": Field(
            {
                "torch": torch.Tensor,
                "numpy": {
                    "name": str,
                    "keys": torch.Tensor,
                    "pos": int,
                    "has_gauss": int,
                    "cached_gaussian": _NUMBER,
                },
                "python": {"version": int, "internal": [int], "gauss": (*_NUMBER, type(None))},
                "cuda?": [torch.Tensor],
            }
        ),  # fmt: skip
        "extra": Field(
            {"schedule?": {"max_iter": int, "steps": [int], "eval_period?": int}}, False
        ),
    },
)


def read_training_state(path: str | Path) -> dict[str, Any]:
    """Load a `last.pt` (CPU tensors) checked against `TRAINING_SCHEMA`, its config validated;
    raises FileNotFoundError, or ValueError naming the file and the field."""
    payload = read_checkpoint(path, TRAINING_SCHEMA)
    stored_config(path, payload)
    return payload


def restore_training_state(
    payload: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Stateful,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
    source: str | Path = LAST_CHECKPOINT,
) -> int:
    """Load a `read_training_state` payload into the objects; returns the iteration to run next.
    ValueError naming `source` (the file) and the field whose content does not fit them."""
    load_state_dict_checked(unwrap(model), payload["model"], source=f"{source}: field 'model'")
    with _field_of(source, "optimizer"):
        optimizer.load_state_dict(payload["optimizer"])
    with _field_of(source, "scheduler"):
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler"):
        with _field_of(source, "scaler"):
            scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        with _field_of(source, "rng"):
            set_rng_state(payload["rng"])
    return int(payload["iteration"])


@contextmanager
def _field_of(source: str | Path, name: str) -> Iterator[None]:
    """torch's own checks of a state (group counts, tensor sizes, the RNG state's length) as a
    ValueError naming the file and the field: its message is torch's first line."""
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"{source}: field {name!r} does not fit this run ({shown(reason)})"
        ) from None


# --------------------------------------------------------------------------------------------
# The checkpoint of a run


def checkpoint_state(
    cfg: Config,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupMultiStepSchedule,
    scaler: torch.amp.GradScaler | None,
    iteration: int,
    eval_period: int,
) -> dict[str, Any]:
    """`training_state` plus the schedule in force (`schedule.plan()`) and the evaluation
    period, which a time budget may have changed."""
    return training_state(
        model=model,
        optimizer=optimizer,
        scheduler=schedule,
        scaler=scaler,
        iteration=iteration,
        config=cfg.to_dict(),
        extra={"schedule": {**schedule.plan(), "eval_period": eval_period}},
    )
