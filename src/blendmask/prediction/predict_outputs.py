"""What `blendmask predict` makes of one image's detections: its JSON record, its overlay and
its mask files. Shared by images (`prediction/predict.py`) and video frames (`prediction/video.py`).

Masks are read one detection at a time (`mask_windows`: box-local masks pasted window by
window), so memory is bounded by the image size, not by detections x image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blendmask.atomic import atomic_write, make_folder
from blendmask.modeling.paste import mask_windows
from blendmask.prediction.predict_stream import detection_entries
from blendmask.structures import Detections
from blendmask.visualization import draw_detections

# --save-masks: "instances" writes OUT/masks/<name>/<k>.png, one 8-bit 0/255 PNG per
# detection k of the record; "idmap" writes OUT/masks/<name>.png, a 16-bit PNG holding k + 1
# where detection k is (0: background; the more confident detection wins an overlap).
MASK_MODES = ("instances", "idmap")


@dataclass
class OutputSpec:
    """What predict writes per image: the detections kept (`score_threshold`, `labels`: the
    0-based labels kept or None for all), the model's category ids and names, whether to draw
    overlays, and which mask files (`save_masks`: None or one of `MASK_MODES`) under `out`."""

    out: Path
    category_ids: list[int]
    class_names: list[str]
    score_threshold: float | None = None
    labels: list[int] | None = None
    overlays: bool = True
    save_masks: str | None = None

    def keep(self, det: Detections) -> Detections:
        """The detections to write. A `Predictor` has applied the threshold and the classes
        already; a ready predictor (`--onnx`) may not have."""
        keep = torch.ones(len(det), dtype=torch.bool)
        if self.score_threshold:
            keep &= det.scores >= self.score_threshold
        if self.labels is not None:
            keep &= torch.isin(det.labels, torch.tensor(self.labels, dtype=det.labels.dtype))
        return det if bool(keep.all()) else det.select(keep)

    def record(self, det: Detections, **fields: Any) -> dict[str, Any]:
        """{**fields, "height", "width", "detections": [...]} (see `prediction/predict_stream.py`)."""
        height, width = det.image_size
        entries = detection_entries(det, self.category_ids, self.class_names)
        return {**fields, "height": int(height), "width": int(width), "detections": entries}

    def draw(self, image: Tensor, det: Detections) -> Tensor:
        """The overlay (uint8 Tensor[3, H0, W0]), painted into `image` itself: the decoded
        image is not needed after it."""
        return draw_detections(image, det, class_names=self.class_names, inplace=True)

    def write_masks(self, det: Detections, name: str) -> list[str] | str | None:
        """The mask files of `det` under OUT/masks named after `name` (a file stem); returns
        their paths relative to OUT (a list for "instances", one path for "idmap"). `name`
        comes from `data.sources.output_names`: a plain name, unique among the run's inputs."""
        if self.save_masks is None:
            return None
        if self.save_masks == "idmap":
            path = self.out / "masks" / f"{name}.png"
            _save_png(id_map(det), path)
            return path.relative_to(self.out).as_posix()
        height, width = det.image_size
        paths: list[str] = [""] * len(det)
        make_folder(self.out / "masks" / name)  # a link planted there would be written through
        for d, x, y, window in mask_windows(det):
            full = np.zeros((height, width), dtype=np.uint8)
            full[y : y + window.shape[0], x : x + window.shape[1]][window.numpy()] = 255
            path = self.out / "masks" / name / f"{d}.png"
            _save_png(full, path)
            paths[d] = path.relative_to(self.out).as_posix()
        return paths


def id_map(det: Detections) -> np.ndarray:
    """uint16 [H0, W0]: k + 1 where detection k's mask is, 0 elsewhere; where masks overlap
    the higher score wins (written last)."""
    if len(det) >= 2**16 - 1:
        raise ValueError(f"--save-masks idmap holds at most 65534 detections, got {len(det)}")
    height, width = det.image_size
    order = det.scores.argsort(stable=True).numpy()  # rank r: the r-th lowest score
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    # 1 + the highest rank covering each pixel; windows come in any order (grouped by size).
    owner = np.zeros((height, width), dtype=np.int32)
    for d, x, y, window in mask_windows(det):
        region = owner[y : y + window.shape[0], x : x + window.shape[1]]
        mask = window.numpy()
        region[mask] = np.maximum(region[mask], rank[d] + 1)
    ids = np.zeros((height, width), dtype=np.uint16)
    covered = owner > 0
    ids[covered] = order[owner[covered] - 1] + 1
    return ids


def _save_png(array: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(array)  # uint8 -> "L", uint16 -> "I;16"
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
