"""For tests that compare against the reference: its test-time resize written out independently
of the package, and synthetic checkpoints with the reference's keys and shapes."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from helpers.paths import KEYS_DIR


def reference_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output (h, w): shorter side to `min_size`, longer side
    capped at `max_size`, each rounded with int(x + 0.5)."""
    scale = min_size / min(h, w)
    newh, neww = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def reference_resize(array: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """What the reference does to a uint8 H x W x 3 image at test time: the size rule above,
    then PIL's bilinear resize on the uint8 image (values stay uint8)."""
    newh, neww = reference_size(*array.shape[:2], min_size, max_size)
    return np.array(Image.fromarray(array).resize((neww, newh), Image.BILINEAR))


def synthetic_state(
    entries: Iterable[tuple[str, Sequence[int], str]], seed: int = 0
) -> OrderedDict[str, Tensor]:
    """Random tensors of the listed (key, shape, dtype), distinct per key, with sane scales so
    that a 50-layer network stays finite: fan-in scaled conv weights, positive variances."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, shape, dtype in entries:
        if dtype == "int64":
            state[key] = torch.randint(1, 10_000, list(shape), generator=g)
            continue
        t = torch.empty(list(shape))
        if key.endswith("running_var"):
            t.uniform_(0.5, 1.5, generator=g)
        elif key.endswith(("running_mean", "bias")):
            t.normal_(0.0, 0.1, generator=g)
        elif len(shape) == 1:  # norm scale
            t.uniform_(0.5, 1.0, generator=g)
        else:
            gain = 0.5 if key.endswith("conv2_offset.weight") else 1.0
            t.normal_(0.0, gain / float(np.prod(shape[1:])) ** 0.5, generator=g)
        state[key] = t
    return state


def synthetic_checkpoint(path: Path, seed: int = 3) -> Path:
    """Seeded random tensors with the reference R_50 checkpoint's keys and shapes."""
    entries = json.loads((KEYS_DIR / "r50.json").read_text())
    torch.save({"model": synthetic_state(entries, seed=seed)}, path)
    return path
