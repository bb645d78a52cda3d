"""`PanopticSegmentation`: one image's panoptic result. Re-exported by `blendmask.structures`.

Shapes: H0/W0 original image size, S stuff classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from blendmask.structures.detections import Detections


@dataclass
class PanopticSegmentation:
    """One image's panoptic segmentation at its original size.

    segment_map (int32 Tensor[H0, W0]): 0 = void (no segment), else the `id` of a segment.
    segments (list[dict]): per segment {"id": int, "isthing": bool, "category": int (the
        0-based thing label, as `Detections.labels`, or the 1-based stuff class, as
        `semantic`), "area": int (pixels in `segment_map`)}, plus "score" (float) for things.
    semantic (int64 Tensor[H0, W0]): the semantic head's argmax, 0 = thing, 1..S = stuff.
    detections (Detections): the instances the things were taken from.
    stuff_names (tuple[str, ...] | None): names of stuff classes 1..S (index s - 1).
    """

    segment_map: Tensor
    segments: list[dict[str, Any]]
    semantic: Tensor
    detections: Detections
    stuff_names: tuple[str, ...] | None = field(default=None)

    def category_name(self, segment: dict[str, Any]) -> str:
        """The class name of a segment (its number when no names are stored)."""
        category = int(segment["category"])
        if segment["isthing"]:
            names = self.detections.class_names
            return names[category] if names and category < len(names) else str(category)
        names = self.stuff_names
        return names[category - 1] if names and 0 < category <= len(names) else str(category)
