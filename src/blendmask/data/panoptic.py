"""COCO panoptic data for training a panoptic BlendMask (BlendMask Sec. 4.4; Panoptic FPN,
Kirillov et al. 2019), read straight from `panoptic_*.json` + one PNG per image.

The reference first runs a preparation script that writes a semantic PNG per image; here both
training views are built on the fly from the panoptic PNG (`data/panoptic_format.py` reads and
checks it), so nothing is generated beforehand:
- the instance branch gets the thing segments (boxes and masks from the PNG; crowd segments
  dropped, as `data/coco.py` drops crowd annotations), labelled with the same contiguous
  mapping as the instance dataset: thing categories sorted by id -> 0..C-1;
- the semantic branch gets `sem_seg`: every thing pixel -> 0 (one "thing" class), stuff
  categories sorted by id -> 1..S, void and crowd pixels -> 255 (ignored by the loss).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from blendmask.data.coco import filter_empty_instances, transform_sample
from blendmask.data.panoptic_format import (
    PanopticJson,
    Segment,
    load_panoptic_json,
    read_segment_ids,
)
from blendmask.io import load_annotated_image
from blendmask.structures import Target

IGNORE_LABEL = 255  # sem_seg value of void and crowd pixels
THING_LABEL = 0  # sem_seg value of every thing pixel

Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class CocoPanopticDataset(Dataset):
    """A COCO panoptic json, its PNG folder and its image folder as (image, target) pairs.

    `dataset[i]` returns `(image, target)` as `CocoDataset` does (image uint8 Tensor[3, H, W];
    target "boxes" float32[G, 4] xyxy, "labels" int64[G] contiguous thing labels, "masks"
    uint8[G, H, W], "image_id", "orig_size") plus "sem_seg" (int64 Tensor[H, W]: 0 thing,
    1..S stuff, 255 void / crowd). `dataset[(i, seed)]` seeds the transforms, as CocoDataset.

    Args:
        json_path: COCO panoptic json (categories with `isthing`).
        panoptic_dir: folder of the annotations' PNG `file_name`s.
        images_dir: folder of the images' `file_name`s.
        transforms: callable (image, target) -> (image, target); it must carry "sem_seg".
        skip_empty: drop images without a non-crowd thing segment (from the json).
        cache: keep each decoded image and its targets (before the transforms) in memory.
    """

    def __init__(
        self,
        json_path: str | Path,
        panoptic_dir: str | Path,
        images_dir: str | Path,
        *,
        transforms: Transform | None = None,
        skip_empty: bool = False,
        cache: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.panoptic_dir = Path(panoptic_dir)
        self.images_dir = Path(images_dir)
        self.transforms = transforms
        self._cache: dict[int, tuple[Tensor, Target]] | None = {} if cache else None
        self.data: PanopticJson = load_panoptic_json(self.json_path)
        for folder, what in ((self.panoptic_dir, "PNG"), (self.images_dir, "image")):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"panoptic {what} folder not found: {folder} (of {self.json_path})"
                )
        cats = self.data.categories
        things = sorted(c for c in cats if cats[c].isthing)
        stuff = sorted(c for c in cats if not cats[c].isthing)
        if not things:
            raise ValueError(f"{self.json_path}: no thing category ('isthing': 1)")
        self.contiguous_to_category_id: list[int] = things
        self.category_id_to_contiguous = {c: k for k, c in enumerate(things)}
        self.category_names: list[str] = [cats[c].name for c in things]
        self.num_classes = len(things)
        self.stuff_category_ids: list[int] = stuff
        self.stuff_names: list[str] = [cats[c].name for c in stuff]
        # Semantic label of each category: things 0, stuff 1..S in category-id order.
        self.category_id_to_semantic = {c: THING_LABEL for c in things}
        self.category_id_to_semantic.update({c: k + 1 for k, c in enumerate(stuff)})

        image_ids = sorted(self.data.images)
        if skip_empty:
            image_ids = [i for i in image_ids if any(self._is_instance(s) for s in self._segs(i))]
        self.image_ids: list[int] = image_ids
        self._check_files_exist()

    # -- files ----------------------------------------------------------------------------------

    def _segs(self, image_id: int) -> list[Segment]:
        return list(self.data.segments[image_id].values())

    def _is_instance(self, seg: Segment) -> bool:
        return self.data.categories[seg.category_id].isthing and not seg.iscrowd

    def _check_files_exist(self) -> None:
        for image_id in self.image_ids:
            for path, what in (
                (self.image_path_of_id(image_id), "image"),
                (self.png_path_of_id(image_id), "panoptic PNG"),
            ):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{what} not found: {path} (image id {image_id} of {self.json_path})"
                    )

    def image_path_of_id(self, image_id: int) -> Path:
        name = self.data.images[image_id].get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"image id {image_id} of {self.json_path}: expected a string 'file_name', "
                f"got {name!r}"
            )
        return self.images_dir / name

    def png_path_of_id(self, image_id: int) -> Path:
        return self.panoptic_dir / self.data.png_names[image_id]

    def image_path(self, index: int) -> Path:
        """Path of the `index`-th image (an index into `image_ids`)."""
        return self.image_path_of_id(self.image_ids[index])

    def image_size(self, index: int) -> tuple[int, int]:
        """(h, w) of the `index`-th image from the json, without reading the file."""
        img = self.data.images[self.image_ids[index]]
        return img["height"], img["width"]

    def get_aspect_ratio_group(self, index: int) -> int:
        """0 for landscape or square images (w >= h), 1 for portrait; read from the json."""
        height, width = self.image_size(index)
        return 0 if width >= height else 1

    def __len__(self) -> int:
        return len(self.image_ids)

    # -- samples --------------------------------------------------------------------------------

    def segment_ids(self, index: int) -> np.ndarray:
        """int64[H, W]: the checked segment id of every pixel of the `index`-th image."""
        image_id = self.image_ids[index]
        return read_segment_ids(
            self.png_path_of_id(image_id),
            self.image_size(index),
            self.data.segments[image_id],
            f"image id {image_id} of {self.json_path}",
        )

    def targets_from_ids(self, ids: np.ndarray, image_id: int) -> Target:
        """The instance targets and `sem_seg` of one image from its segment ids int64[H, W]."""
        height, width = ids.shape
        # Work on the ids present (np.unique's inverse), not a table over all 2^24 ids.
        present, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.reshape(height, width)
        semantic_of_present = np.full(len(present), IGNORE_LABEL, dtype=np.int64)
        segments = self.data.segments[image_id]
        boxes, labels, masks = [], [], []
        for k, segment_id in enumerate(present.tolist()):
            seg = segments.get(segment_id)
            if seg is None or seg.iscrowd:
                continue  # void, or crowd: ignored by both branches
            semantic_of_present[k] = self.category_id_to_semantic[seg.category_id]
            if not self.data.categories[seg.category_id].isthing:
                continue
            mask = inverse == k
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(self.category_id_to_contiguous[seg.category_id])
            masks.append(mask)
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(stacked.astype(np.uint8)),
            "sem_seg": torch.from_numpy(semantic_of_present[inverse]),
            "image_id": image_id,
            "orig_size": (height, width),
        }

    def preload(self, progress: bool = False) -> None:
        """Decode every image and its targets now, into the cache (with `cache=True`)."""
        if self._cache is None:
            return
        from tqdm import tqdm

        for index in tqdm(range(len(self)), desc="caching images", disable=not progress):
            self._cache[index] = self._read(index)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, Target]:
        seed: int | None = None
        if isinstance(index, tuple):
            index, seed = index
        if self._cache is not None and index in self._cache:
            image, target = self._cache[index]
            target = dict(target)
        else:
            image, target = self._read(index)
        image, target = transform_sample(self.transforms, image, target, seed)
        return image, filter_empty_instances(target)

    def _read(self, index: int) -> tuple[Tensor, Target]:
        """The decoded image (uint8 Tensor[3, H, W]) and its targets before the transforms."""
        image_id = self.image_ids[index]
        height, width = self.image_size(index)
        path = self.image_path(index)
        image = load_annotated_image(
            path, (width, height), f"image id {image_id} of {self.json_path}"
        )
        return image, self.targets_from_ids(self.segment_ids(index), image_id)
