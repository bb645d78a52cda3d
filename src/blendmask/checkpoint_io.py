"""The `model.pt` file: the resolved config, the network's weights and a format version.

    {"format_version": 1, "config": Config.to_dict(), "model": state dict of BlendMask}

Written by `train` and `convert`, read by `predict`, `eval`, `export` and `Predictor`. It holds
tensors, dicts, lists and plain values only, so it loads with `torch.load(weights_only=True)`.

`save_model_file` / `read_model_file` are the format. `load_model_file` also builds the modules
of the stored config, so this module imports `factory` (it sits just above it; `factory` never
imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from blendmask.atomic import atomic_write
from blendmask.checkpoint_reader import (
    Field,
    Schema,
    read_checkpoint,
    state_dict_problem,
    stored_config,
)
from blendmask.config import Config
from blendmask.factory import build, build_network
from blendmask.modeling.blendmask import BlendMask
from blendmask.modeling.losses import BlendMaskCriterion
from blendmask.modeling.postprocess import BlendMaskPostProcessor
from blendmask.modeling.state_dict import compare_state_dict, load_state_dict_checked
from blendmask.presets import PRESETS, get_preset

MODEL_FORMAT_VERSION = 1


def nonfinite_weights(state: dict[str, Any]) -> list[str]:
    """The keys of the floating-point tensors of `state` holding a NaN or an infinity."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]


def check_finite_weights(path: str | Path, state: dict[str, Any]) -> None:
    """Raise FloatingPointError naming `path` (which is then not written) and the first keys
    when `state` holds a NaN or an infinity."""
    bad = nonfinite_weights(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise FloatingPointError(
            f"{path}: not written: non-finite values in {', '.join(bad[:3])}{more}"
        )


def save_model_file(
    path: str | Path, cfg: Config, model: nn.Module, plan: dict[str, Any] | None = None
) -> None:
    """Write `{"format_version", "config", "model"}` (and `plan`, how `--preset auto` derived
    the config, when given) atomically; loads with weights_only=True.

    Raises FloatingPointError, writing nothing, when a weight is NaN or infinite (such a model
    only ever predicts garbage), and `atomic.WriteError` (an OSError) naming the path and the
    reason when the file cannot be written; the previous file then stays as it was."""
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    check_finite_weights(path, state)
    payload = {"format_version": MODEL_FORMAT_VERSION, "config": cfg.to_dict(), "model": state}
    if plan is not None:
        payload["plan"] = plan
    atomic_write(path, lambda f: torch.save(payload, f))


def _adelaidet_hint(payload: dict[Any, Any]) -> str:
    if any(isinstance(k, str) and ".fcos_head." in k for k in payload):
        return "; it looks like an AdelaiDet checkpoint: run `blendmask convert` first"
    return ""


# Every top-level field with its type; `read_model_file` refuses anything else in one line.
MODEL_SCHEMA = Schema(
    kind="blendmask model file",
    newest=MODEL_FORMAT_VERSION,
    fields={
        "format_version": Field(int, required=False),
        "config": Field(dict),
        "model": Field(dict, check=state_dict_problem),
        "plan": Field(dict, required=False),
    },
    hint=_adelaidet_hint,
)


def read_model_file(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """Config and state dict of a `model.pt`, checked against `MODEL_SCHEMA` (finite tensors,
    a valid config with one category name and id per class); ValueError naming the file and
    the field otherwise."""
    payload = read_checkpoint(path, MODEL_SCHEMA)
    # Format 0 (no version key) had the same layout: nothing to upgrade yet.
    return stored_config(path, payload), payload["model"]


def load_model_file(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Config, BlendMask, BlendMaskCriterion, BlendMaskPostProcessor]:
    """Build the modules of a `model.pt` and load its weights (strict), in eval mode."""
    cfg, state = read_model_file(path)
    model, criterion, post = build(cfg, load_pretrained=False)
    report = compare_state_dict(model.state_dict(), state, source=str(path))
    if not report.complete:
        # One paragraph: counts, the first keys of each list and a way out, not every key.
        preset = f" (preset {cfg.preset})" if cfg.preset else ""
        raise ValueError(
            f"{path}: the weights do not fit the network of the stored config{preset}: "
            + "; ".join(report.problem_lines(limit=3))
            + f"; {_fitting_presets_hint(state)}"
        )
    load_state_dict_checked(model, state, source=str(path))
    model.eval()
    return cfg, model.to(device), criterion.to(device), post.to(device)


def fitting_presets(state: dict[str, torch.Tensor]) -> list[str]:
    """The presets whose network, with the class count of `state`, has exactly its keys and
    shapes. Built on the meta device (no memory, ~0.1 s a preset): only asked on a mismatch."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    logits = shapes.get("head.cls_logits.weight")
    fits = []
    for name in PRESETS:
        cfg = get_preset(name)
        if logits:
            cfg.model.fcos.num_classes = logits[0]
        with torch.device("meta"):
            network = build_network(cfg, load_pretrained=False)
        if {k: tuple(v.shape) for k, v in network.state_dict().items()} == shapes:
            fits.append(name)
    return fits


def _fitting_presets_hint(state: dict[str, torch.Tensor]) -> str:
    fits = fitting_presets(state)
    if not fits:
        return "no preset's network has these weights' shapes either"
    logits = state.get("head.cls_logits.weight")
    classes = f" with model.fcos.num_classes={logits.shape[0]}" if logits is not None else ""
    return f"presets whose network fits these weights{classes}: {', '.join(fits)}"
