"""What `blendmask predict` makes of one image's detections: its JSON record, its overlay and
its mask files. Shared by images (`prediction/predict.py`) and video frames (`prediction/video.py`).

Each image's masks are pasted once (`OutputSpec.paste`): one pass over
`Detections.mask_windows` (box-local masks pasted window by window) encodes each detection's
RLE from its window and marks the top detection at each pixel in one map (`owner_map`); the
record takes the RLEs, the instance mask files decode them, the id map and the overlay read the
map. Memory is bounded by the
image size, not by detections x image size, and no mask is pasted twice.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from torch import Tensor

from blendmask.atomic import atomic_write, make_folder
from blendmask.metrics.rle import window_to_rle
from blendmask.prediction.predict_stream import detection_entries
from blendmask.structures import Detections
from blendmask.structures.paste import MaskWindow
from blendmask.visualization import draw_detections, owner_map, score_ranks

# --save-masks: "instances" writes OUT/masks/<name>/<k>.png, one 8-bit 0/255 PNG per
# detection k of the record; "idmap" writes OUT/masks/<name>.png, a 16-bit PNG holding k + 1
# where detection k is (0: background; the more confident detection wins an overlap).
MASK_MODES = ("instances", "idmap")
# Rows of the id map looked up at once (bounds the int16 / int64 temporaries of `id_map`).
_ID_BAND_PIXELS = 2**22


@dataclass
class PastedMasks:
    """One image's masks, pasted once (`OutputSpec.paste`).

    rles: compressed COCO RLE {"size": [H0, W0], "counts": str} of each detection, in order.
    owner (Tensor[H0, W0] | None): `owner_map` of the detections by `score_ranks`: the rank
        (0: least confident) of the most confident detection covering each pixel, -1 where
        none does; None when neither the overlay nor the id map needs it.
    """

    rles: list[dict[str, Any]]
    owner: Tensor | None


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
        """The detections to write (`Detections.filter`). A `Predictor` has applied the
        threshold and the classes already; a ready predictor (`--onnx`) may not have."""
        return det.filter(score=self.score_threshold, classes=self.labels)

    def paste(self, det: Detections) -> PastedMasks:
        """`det`'s masks pasted once for its record, mask files and overlay (`paste_once`;
        the owner map only when an overlay or an id map is written)."""
        return paste_once(det, with_owner=self.overlays or self.save_masks == "idmap")

    def record(
        self, det: Detections, pasted: PastedMasks | None = None, **fields: Any
    ) -> dict[str, Any]:
        """{**fields, "height", "width", "detections": [...]} (see `prediction/predict_stream.py`);
        `pasted`: `det`'s masks from `paste` (None: pasted here)."""
        height, width = det.image_size
        rles = (pasted or paste_once(det, with_owner=False)).rles
        entries = detection_entries(det, self.category_ids, self.class_names, rles)
        return {**fields, "height": int(height), "width": int(width), "detections": entries}

    def draw(self, image: Tensor, det: Detections, pasted: PastedMasks | None = None) -> Tensor:
        """The overlay (uint8 Tensor[3, H0, W0]), painted into `image` itself: the decoded
        image is not needed after it. With `pasted` (from `paste`) the masks are not pasted
        again."""
        owner = None if pasted is None else pasted.owner
        return draw_detections(image, det, class_names=self.class_names, inplace=True, owner=owner)

    def write_masks(
        self, det: Detections, name: str, pasted: PastedMasks | None = None
    ) -> list[str] | str | None:
        """The mask files of `det` under OUT/masks named after `name` (a file stem); returns
        their paths relative to OUT (a list for "instances", one path for "idmap"). `name`
        is a plain name, unique among the run's outputs (`image_output_names`). `pasted`:
        `det`'s masks from `paste` (None: pasted here)."""
        if self.save_masks is None:
            return None
        pasted = pasted or paste_once(det, with_owner=self.save_masks == "idmap")
        if self.save_masks == "idmap":
            path = self.out / "masks" / f"{name}.png"
            _save_png(id_map(det, pasted.owner), path)
            return path.relative_to(self.out).as_posix()
        paths: list[str] = [""] * len(det)
        make_folder(self.out / "masks" / name)  # a link planted there would be written through
        for d, rle in enumerate(pasted.rles):
            # The RLE is the pasted mask: decoded, not pasted again.
            full = mask_util.decode(rle) * np.uint8(255)
            path = self.out / "masks" / name / f"{d}.png"
            _save_png(np.ascontiguousarray(full), path)
            paths[d] = path.relative_to(self.out).as_posix()
        return paths


def paste_once(det: Detections, *, with_owner: bool) -> PastedMasks:
    """One pass over `det`'s mask windows (on the CPU): each detection's RLE encoded from its
    window (`window_to_rle`, no full-image mask) and, `with_owner`, the `owner_map` by
    `score_ranks`."""
    det = det.to("cpu")
    size = det.image_size
    rles: list[dict[str, Any]] = [{} for _ in range(len(det))]

    def encoded(windows: Iterator[MaskWindow]) -> Iterator[MaskWindow]:
        for d, x, y, window in windows:
            rles[d] = window_to_rle(window, x, y, size)
            yield d, x, y, window

    windows = encoded(det.mask_windows())
    if not with_owner:
        collections.deque(windows, maxlen=0)  # run the pass for its RLEs
        return PastedMasks(rles, None)
    return PastedMasks(rles, owner_map(windows, size, len(det), score_ranks(det.scores)))


def id_map(det: Detections, owner: Tensor | None = None) -> np.ndarray:
    """uint16 [H0, W0]: k + 1 where detection k's mask is, 0 elsewhere; where masks overlap
    the higher score wins.

    `owner`: `det`'s owner map by `score_ranks` (`PastedMasks.owner`; None: made here). The
    map is looked up in bands of rows, so memory is the uint16 result plus the int16 owner
    map: no full-image temporaries."""
    if len(det) >= 2**16 - 1:
        raise ValueError(f"--save-masks idmap holds at most 65534 detections, got {len(det)}")
    if owner is None:
        cpu = det.to("cpu")
        owner = owner_map(cpu.mask_windows(), cpu.image_size, len(cpu), score_ranks(cpu.scores))
    height, width = det.image_size
    # Rank r + 1 -> detection index + 1 (rank -1, no mask -> 0).
    order = det.scores.detach().cpu().argsort(stable=True).numpy()
    lookup = np.concatenate([[0], order + 1]).astype(np.uint16)
    ranks = owner.numpy()
    ids = np.empty((height, width), dtype=np.uint16)
    rows = max(1, _ID_BAND_PIXELS // max(1, width))
    for r0 in range(0, height, rows):
        index = ranks[r0 : r0 + rows].astype(np.intp)
        index += 1
        np.take(lookup, index, out=ids[r0 : r0 + rows])
    return ids


def _save_png(array: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(array)  # uint8 -> "L", uint16 -> "I;16"
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
