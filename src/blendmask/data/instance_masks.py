"""Box-local instance masks: each of an image's G masks kept only inside its own bounding region.

Why: a cached microscopy image of 1024 x 1024 with 300 nuclei holds 300 MB as dense uint8
masks (G x H x W) but ~1 MB box-local, and a training crop only needs the instances that
overlap it (`crop`). The dense form (`dense`) is what the reference's transforms and the
criterion read.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class InstanceMasks:
    """G binary masks of an `size` = (H, W) image, stored box-local.

    local: per instance a uint8 array (h_g, w_g), the mask inside its region.
    origins: per instance (y0, x0) of that region in the image.
    """

    def __init__(
        self, local: list[np.ndarray], origins: list[tuple[int, int]], size: tuple[int, int]
    ) -> None:
        if len(local) != len(origins):
            raise ValueError(f"InstanceMasks: {len(local)} masks but {len(origins)} origins")
        self.local = local
        self.origins = origins
        self.size = (int(size[0]), int(size[1]))

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> InstanceMasks:
        """masks (array[G, H, W] uint8) -> box-local masks (an empty mask keeps a 0 x 0 region)."""
        local: list[np.ndarray] = []
        origins: list[tuple[int, int]] = []
        for mask in masks:
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            if rows.size == 0:
                local.append(np.zeros((0, 0), dtype=np.uint8))
                origins.append((0, 0))
                continue
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            local.append(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8))
            origins.append((int(y0), int(x0)))
        return cls(local, origins, masks.shape[-2:])

    def __len__(self) -> int:
        return len(self.local)

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.local)

    def crop(self, top: int, left: int, height: int, width: int) -> Tensor:
        """The masks inside the window (top, left, height, width) of the image: Tensor[G, height,
        width] uint8, every instance in order (those outside the window are all zero)."""
        out = np.zeros((len(self.local), height, width), dtype=np.uint8)
        for g, (mask, (y0, x0)) in enumerate(zip(self.local, self.origins, strict=True)):
            h, w = mask.shape
            # the overlap of [y0, y0 + h) x [x0, x0 + w) with the window, in image pixels
            ya, yb = max(y0, top), min(y0 + h, top + height)
            xa, xb = max(x0, left), min(x0 + w, left + width)
            if ya < yb and xa < xb:
                out[g, ya - top : yb - top, xa - left : xb - left] = mask[
                    ya - y0 : yb - y0, xa - x0 : xb - x0
                ]
        return torch.from_numpy(out)

    def dense(self) -> Tensor:
        """Tensor[G, H, W] uint8, the full masks."""
        return self.crop(0, 0, *self.size)


def crop_masks(
    masks: Tensor | InstanceMasks, top: int, left: int, height: int, width: int
) -> Tensor:
    """The window (top, left, height, width) of dense (Tensor[G, H, W]) or box-local masks, inside
    the image."""
    if isinstance(masks, InstanceMasks):
        return masks.crop(top, left, height, width)
    return masks[:, top : top + height, left : left + width]
