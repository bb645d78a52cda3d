"""Reading an AdelaiDet checkpoint file into a state dict under AdelaiDet's names.

Accepts a bare state dict or a detectron2 dict with a "model" key (`.pth` legacy or zip format
via `torch.load(weights_only=True)`, or detectron2's `.pkl` of numpy arrays via an unpickler that
builds arrays only), strips a DDP `module.` prefix and renames the pre-April-2020 `centerness`
predictor to `ctrness` (AdelaiDet `tools/rename_blendmask.py`).

Safety: `.pth` files load with `weights_only=True` (numpy arrays allowed, nothing else). Only a
file that still needs full unpickling is refused, with a message saying how to opt in
(`trust_pickle=True`, `--trust-pickle`), because unpickling can run code stored in the file.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from blendmask.interop.pickles import numpy_safe_globals, read_weight_pickle

logger = logging.getLogger(__name__)


def _refusal_reason(exc: Exception) -> str:
    """The useful line of torch's long weights_only error ("Unsupported global: ...")."""
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL [^\s]+", text)
    if m is not None:
        return m.group(0)
    return text.strip().splitlines()[-1][:200] if text.strip() else type(exc).__name__


def _load_pth(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # maybe numpy arrays inside (detectron2 files saved from numpy): retry below
    except Exception as exc:  # noqa: BLE001 - any other failure: not a torch file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from None
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(exc)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from None
    if not trust_pickle:
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused this file ({reason}); it holds "
            "Python objects besides tensors and arrays, and loading it runs code stored in the "
            "file. Only if you trust its source, pass --trust-pickle (trust_pickle=True)"
        )
    logger.warning(
        f"warning: {path}: loading with full unpickling (--trust-pickle): this executes "
        f"pickle code stored in the file ({reason})"
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc!r})") from None


def _foreign_file_hint(keys: list[str]) -> str:
    if "conv1_w" in keys or "blobs" in keys:
        return (
            "; it looks like an MSRA/Caffe2 ImageNet backbone (R-50.pkl): use it as "
            "model.backbone.weights for training, not with convert"
        )
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return (
            "; it looks like a torchvision ImageNet ResNet: use it as model.backbone.weights "
            "for training, not with convert"
        )
    if "format_version" in keys and "config" in keys:
        return "; it is already a blendmask model file"
    return ""


def read_checkpoint_with_notes(
    path: str | Path, *, trust_pickle: bool = False
) -> tuple[dict[str, Tensor], list[str]]:
    """(state dict with AdelaiDet names, notes on what was done to read it); see
    `read_adelaidet_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AdelaiDet checkpoint not found")
    data = read_weight_pickle(path) if path.suffix == ".pkl" else _load_pth(path, trust_pickle)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a state dict or a dict with a 'model' key, got {type(data).__name__}"
        )
    notes: list[str] = []
    top_keys = [str(k) for k in data]
    if isinstance(data.get("model"), dict):
        others = sorted(str(k) for k in data if k != "model")
        notes.append(
            "read the 'model' entry of a detectron2 checkpoint"
            + (f" (ignored: {', '.join(others)})" if others else "")
        )
        data = data["model"]
    keys = [str(k) for k in data]
    if not keys:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    hint = _foreign_file_hint(top_keys) or _foreign_file_hint(keys)
    state: dict[str, Tensor] = {}
    stripped = renamed = 0
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: expected string keys, got {key!r}")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value, copy=True))
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{path}: entry '{key}' is a {type(value).__name__}, expected a tensor" + hint
            )
        name = key
        if name.startswith("module."):  # saved from a DistributedDataParallel model
            name = name[len("module.") :]
            stripped += 1
        if "centerness" in name:  # AdelaiDet tools/rename_blendmask.py, before 2020-04-03
            name = name.replace("centerness", "ctrness")
            renamed += 1
        if name in state:
            raise ValueError(f"{path}: two entries map to '{name}' (one is '{key}')")
        state[name] = value
    if stripped:
        notes.append(f"stripped the 'module.' prefix of {stripped} keys")
    if renamed:
        notes.append(f"renamed 'centerness' to 'ctrness' in {renamed} keys (pre-April-2020 file)")
    if not any(k.startswith(("backbone.", "proposal_generator.")) for k in state):
        raise ValueError(
            f"{path}: no AdelaiDet keys (backbone.*, proposal_generator.*) found; first keys: "
            f"{keys[:5]}" + hint
        )
    return state, notes


def read_adelaidet_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of an AdelaiDet checkpoint, still under AdelaiDet names.

    Accepts a bare state dict or detectron2's `{"model": ..., "optimizer": ..., ...}`, as
    `.pth` (legacy or zip format) or detectron2 `.pkl` (numpy arrays). Strips a `module.`
    prefix and renames `centerness` to `ctrness`; numpy arrays become tensors.

    Args:
        path: the checkpoint file.
        trust_pickle: allow full unpickling for a file `weights_only=True` cannot read (runs
            code stored in the file; a warning naming the file is printed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, refused by weights_only without `trust_pickle`, or not an
            AdelaiDet model; the message names the file.
    """
    return read_checkpoint_with_notes(path, trust_pickle=trust_pickle)[0]
