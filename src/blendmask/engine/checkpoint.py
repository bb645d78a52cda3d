"""Training checkpoints: `DIR/last.pt`, written atomically, from which training resumes exactly.

`last.pt` holds everything that decides the next iterations: model, optimiser (momentum
buffers), scheduler (iteration count), AMP scaler, the iteration, the RNG states of torch
(CPU and CUDA), numpy and Python, the resolved config, and the schedule in force (a time budget
may have shortened it). The data order needs no state: batches are a pure function of
(seed, rank, iteration) (see engine/loaders.py), so resuming re-creates the sampler and skips
the batches already seen.

Everything is stored as tensors, numbers, strings, lists and dicts, so the file also loads with
`torch.load(weights_only=True)`. `DIR/model.pt` (config + weights only) is written by
`blendmask.checkpoint_io.save_model_file`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from blendmask.config import Config, from_dict
from blendmask.engine.optim import WarmupMultiStepSchedule

CHECKPOINT_FORMAT_VERSION = 1
LAST_CHECKPOINT = "last.pt"


class Stateful(Protocol):
    """A scheduler (`WarmupMultiStepSchedule` or a torch LRScheduler), as far as a checkpoint
    is concerned."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a reader (or a
    resumed run after a crash) sees either the previous file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    """Write `last.pt` atomically. `iteration` counts the updates done (the next one to run)."""
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "iteration": int(iteration),
        "config": config,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": get_rng_state(),
        "extra": extra or {},
    }
    atomic_save(payload, path)


def read_training_state(path: str | Path) -> dict[str, Any]:
    """Load a `last.pt` (CPU tensors); raises ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from None
    required = ("iteration", "config", "model", "optimizer", "scheduler", "rng")
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise ValueError(f"{path}: not a training checkpoint (expected keys {', '.join(required)})")
    if payload.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this blendmask"
        )
    return payload


def restore_training_state(
    payload: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Stateful,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
) -> int:
    """Load a `read_training_state` payload into the objects; returns the iteration to run next."""
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return int(payload["iteration"])


# --------------------------------------------------------------------------------------------
# Resuming a run and saving its progress


def check_resume_config(path: str | Path, saved: dict[str, Any], cfg: Config) -> None:
    """A checkpoint of another architecture cannot continue: say which field differs."""
    old = from_dict(saved).to_dict()["model"]
    new = cfg.to_dict()["model"]

    def diff(a: Any, b: Any, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                found = diff(a[k], b.get(k), f"{prefix}.{k}")
                if found:
                    return found
            return None
        return None if a == b else f"{prefix}: {a!r} in the checkpoint, {b!r} now"

    found = diff(old, new, "model")
    if found:
        raise ValueError(
            f"{path}: written for a different model ({found}); "
            "use another --out folder or delete the checkpoint to start over"
        )


def resume_training(
    path: str | Path,
    cfg: Config,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupMultiStepSchedule,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
) -> tuple[int, int]:
    """Continue the run saved in `path` (a `last.pt` of the same model as `cfg`).

    Loads the states into the objects and, when the run was saved with the schedule `cfg`
    asks for, the plan in force then (`schedule.restore_plan`): a schedule shrunk by a time
    budget continues as planned, unless the user asked for another one (e.g. a larger
    --max-iter to train longer). Returns (the iteration to run next, the evaluation period).
    """
    payload = read_training_state(path)
    check_resume_config(path, payload["config"], cfg)
    s = cfg.solver
    eval_period = s.eval_period
    plan = payload.get("extra", {}).get("schedule")
    saved_solver = payload["config"].get("solver", {})
    same_schedule = saved_solver.get("max_iter") == s.max_iter and list(
        saved_solver.get("steps", [])
    ) == list(s.steps)
    if plan and same_schedule:
        schedule.restore_plan(int(plan["max_iter"]), [int(x) for x in plan["steps"]])
        eval_period = int(plan.get("eval_period", eval_period))
    iteration = restore_training_state(
        payload,
        model=model,
        optimizer=optimizer,
        scheduler=schedule,
        scaler=scaler,
        restore_rng=restore_rng,
    )
    return iteration, eval_period


def save_checkpoint(
    path: str | Path,
    cfg: Config,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupMultiStepSchedule,
    scaler: torch.amp.GradScaler | None,
    iteration: int,
    eval_period: int,
) -> None:
    """`save_training_state` plus the schedule in force (`schedule.plan()`) and the
    evaluation period, which a time budget may have changed."""
    save_training_state(
        path,
        model=model,
        optimizer=optimizer,
        scheduler=schedule,
        scaler=scaler,
        iteration=iteration,
        config=cfg.to_dict(),
        extra={"schedule": {**schedule.plan(), "eval_period": eval_period}},
    )
