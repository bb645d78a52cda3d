"""COCO-format instance segmentation dataset: images, boxes, labels and masks for training.

Reads the COCO "instances" json (Lin et al. 2014, the format BlendMask trains and evaluates on,
BlendMask Sec. 4): masks as polygons, uncompressed RLE (`counts` a list) or compressed RLE
(`counts` a string); `iscrowd` regions are kept for evaluation only and excluded from the
training targets, as the reference (detectron2's mapper) does. COCO category ids are mapped to
contiguous 0-based labels here and mapped back in `metrics/coco.py`: the network only ever
sees `num_classes` foreground labels.

The whole json is validated at construction with cheap checks (no image decoding;
`data/coco_json.load_coco_json`, shared with the evaluation's ground truth), so a bad
annotation fails before training starts, with the json path and the annotation id:
- not a COCO json, duplicate ids, annotation -> missing image / unknown category: ValueError;
- polygon with < 3 points, NaN or far outside the image; RLE whose size is not the image's or
  whose counts (compressed ones are decoded) do not cover height * width pixels: ValueError;
- box with a negative width or height: ValueError (a corrupt box, not a degenerate one);
- box clipped to the image; a zero-size box (also after clipping) is dropped, counted in
  `num_dropped_annotations` and reported once with `warnings.warn`;
- image file missing: FileNotFoundError naming the file.
A corrupt or unreadable image is only found when it is read (`__getitem__`), and the error names
the file and its image id.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch import Tensor
from torch.utils.data import Dataset

from blendmask.data.coco_json import (
    check_categories,
    check_images,
    coco_api_from_dict,
    load_coco_json,
)
from blendmask.data.instance_masks import InstanceMasks
from blendmask.data.segmentation import segmentation_to_rle
from blendmask.io import load_annotated_image
from blendmask.structures import Target

# detectron2's filter_empty_instances threshold for boxes.
_MIN_BOX_SIDE = 1e-5


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instance:
    """One validated annotation of an image."""

    annotation_id: int
    box: tuple[float, float, float, float]  # xyxy, clipped to the image
    label: int  # contiguous, 0-based
    segmentation: list | dict
    iscrowd: bool


Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class CocoDataset(Dataset):
    """A COCO instances json and its image folder as (image, target) pairs.

    `dataset[i]` returns `(image, target)`:
        image (Tensor[3, H, W]): uint8 RGB as decoded (after `transforms`; `pad_images` turns
            it into float [0, 1]).
        target: "boxes" (Tensor[G, 4] float32, xyxy pixels), "labels" (Tensor[G] int64,
            contiguous 0-based), "masks" (Tensor[G, H, W] uint8), "image_id" (int),
            "orig_size" ((h, w) of the file). Crowd annotations are excluded; instances whose
            box or mask is empty after the transforms are dropped.
    `dataset[(i, seed)]` runs the transforms with the torch RNG seeded by `seed` (and restored
    afterwards): `GroupedBatchSampler(augmentation_seed=...)` uses this so that augmentations do
    not depend on which worker loads a sample, which makes resumed training exact.

    Args:
        json_path: COCO instances json.
        images_dir: folder the images' `file_name`s are relative to.
        transforms: callable (image, target) -> (image, target), e.g. `data.transforms.Compose`.
        skip_empty: drop images without a (non-crowd, non-degenerate) annotation, as the
            reference does for training (FILTER_EMPTY_ANNOTATIONS).
        cache: keep each decoded image and its masks (box-local, `InstanceMasks`) in memory
            after the first read, so later epochs skip the image and RLE decoding.
    """

    def __init__(
        self,
        json_path: str | Path,
        images_dir: str | Path,
        *,
        transforms: Transform | None = None,
        skip_empty: bool = False,
        cache: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.images_dir = Path(images_dir)
        self.transforms = transforms
        # index -> (image, target), decoded once (`cache`): small datasets train many epochs
        self._cache: dict[int, tuple[Tensor, Target]] | None = {} if cache else None
        data = load_coco_json(self.json_path)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(
                f"image folder not found: {self.images_dir} (images of {self.json_path})"
            )

        self._images = check_images(data["images"], self.json_path)
        self._check_file_names()
        categories = check_categories(data["categories"], self.json_path)
        # Sorted by category id, as detectron2 does, so labels do not depend on json order.
        self.contiguous_to_category_id: list[int] = sorted(categories)
        self.category_id_to_contiguous: dict[int, int] = {
            cat_id: label for label, cat_id in enumerate(self.contiguous_to_category_id)
        }
        self.category_names: list[str] = [categories[c] for c in self.contiguous_to_category_id]
        self.num_classes = len(self.contiguous_to_category_id)

        self._instances, dropped = self._build_instances(data["annotations"])
        self.num_dropped_annotations = len(dropped)
        if dropped:
            examples = ", ".join(str(a) for a in dropped[:5])
            warnings.warn(
                f"{self.json_path}: dropped {len(dropped)} annotation(s) with a zero-size box "
                f"(after clipping to the image), annotation ids {examples}"
                f"{', ...' if len(dropped) > 5 else ''}",
                stacklevel=2,
            )

        image_ids = sorted(self._images)
        if skip_empty:
            image_ids = [
                i for i in image_ids if any(not a.iscrowd for a in self._instances.get(i, []))
            ]
        self.image_ids: list[int] = image_ids
        self._check_files_exist()
        # Built from the parsed dict (not re-read), for evaluation against this json.
        self.coco = coco_api_from_dict(data)

    # -- validation -----------------------------------------------------------------------------

    def _check_file_names(self) -> None:
        # Only the dataset reads image files: an evaluation ground truth may omit file names.
        for k, img in enumerate(self._images.values()):
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                raise ValueError(
                    f"images[{k}] of {self.json_path} (id {img['id']}): expected a string "
                    f"'file_name', got {img.get('file_name')!r}"
                )

    def _build_instances(
        self, annotations: list[dict[str, Any]]
    ) -> tuple[dict[int, list[_Instance]], list[int]]:
        """Annotations `load_coco_json` validated -> instances per image id (boxes clipped to
        the image), and the ids of those dropped for a zero-size box."""
        instances: dict[int, list[_Instance]] = {}
        dropped: list[int] = []
        for k, ann in enumerate(annotations):
            if "segmentation" not in ann:
                raise ValueError(
                    f"annotation {ann['id']} (annotations[{k}]) of {self.json_path}: expected "
                    f"a 'segmentation' (polygons or RLE); BlendMask trains on masks"
                )
            image = self._images[ann["image_id"]]
            height, width = image["height"], image["width"]
            iscrowd = bool(ann.get("iscrowd", 0))
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if not iscrowd and (x2 - x1 <= _MIN_BOX_SIDE or y2 - y1 <= _MIN_BOX_SIDE):
                dropped.append(ann["id"])
                continue
            instances.setdefault(image["id"], []).append(
                _Instance(
                    annotation_id=ann["id"],
                    box=(x1, y1, x2, y2),
                    label=self.category_id_to_contiguous[ann["category_id"]],
                    segmentation=ann["segmentation"],
                    iscrowd=iscrowd,
                )
            )
        return instances, dropped

    def _check_files_exist(self) -> None:
        missing = [i for i in self.image_ids if not self.image_path_of_id(i).is_file()]
        if missing:
            shown = ", ".join(str(self.image_path_of_id(i)) for i in missing[:3])
            raise FileNotFoundError(
                f"{len(missing)} image file(s) of {self.json_path} not found: {shown}"
                f"{', ...' if len(missing) > 3 else ''} (image id {missing[0]}, ...)"
            )

    # -- access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path_of_id(self, image_id: int) -> Path:
        return self.images_dir / self._images[image_id]["file_name"]

    def image_path(self, index: int) -> Path:
        """Path of the `index`-th image (an index into `image_ids`)."""
        return self.image_path_of_id(self.image_ids[index])

    def image_size(self, index: int) -> tuple[int, int]:
        """(h, w) of the `index`-th image from the json, without reading the file."""
        img = self._images[self.image_ids[index]]
        return img["height"], img["width"]

    def get_aspect_ratio_group(self, index: int) -> int:
        """0 for landscape or square images (w >= h), 1 for portrait; read from the json."""
        height, width = self.image_size(index)
        return 0 if width >= height else 1

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, Target]:
        seed: int | None = None
        if isinstance(index, tuple):
            index, seed = index
        image, target = self._read(index)
        image, target = transform_sample(self.transforms, image, target, seed)
        if isinstance(target["masks"], InstanceMasks):
            target["masks"] = target["masks"].dense()
        return image, filter_empty_instances(target)

    def preload(self, progress: bool = False) -> None:
        """Decode every image and its masks now, into the cache (with `cache=True`): workers
        started afterwards share it instead of each decoding its own copy."""
        if self._cache is None:
            return
        from tqdm import tqdm

        for index in tqdm(range(len(self)), desc="caching images", disable=not progress):
            self._read(index)

    def _read(self, index: int) -> tuple[Tensor, Target]:
        """The decoded image (Tensor[3, H, W] uint8) and its target before the transforms; from
        the cache when on (masks then box-local `InstanceMasks`)."""
        if self._cache is not None and index in self._cache:
            image, target = self._cache[index]
            return image, dict(target)
        image_id = self.image_ids[index]
        info = self._images[image_id]
        height, width = info["height"], info["width"]
        path = self.image_path(index)
        image = load_annotated_image(
            path, (width, height), f"image id {image_id} of {self.json_path}"
        )

        instances = [a for a in self._instances.get(image_id, []) if not a.iscrowd]
        if instances:
            rles = [segmentation_to_rle(a.segmentation, height, width) for a in instances]
            # One decode call for all instances: (H, W, G) -> (G, H, W)
            masks = np.ascontiguousarray(mask_util.decode(rles).transpose(2, 0, 1))
        else:
            masks = np.zeros((0, height, width), dtype=np.uint8)
        target: Target = {
            "boxes": torch.tensor([a.box for a in instances], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a.label for a in instances], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": image_id,
            "orig_size": (height, width),
        }
        if self._cache is not None:
            target["masks"] = InstanceMasks.from_dense(masks)
            self._cache[index] = (image, target)
            target = dict(target)
        return image, target


def transform_sample(
    transforms: Transform | None, image: Tensor, target: Target, seed: int | None
) -> tuple[Tensor, Target]:
    """Run `transforms` on one sample; with `seed`, under a torch RNG seeded with it (and
    restored afterwards), so a sample's augmentation does not depend on the loading worker."""
    if transforms is None:
        return image, target
    if seed is None:
        return transforms(image, target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transforms(image, target)


def filter_empty_instances(target: Target) -> Target:
    """Drop instances whose box has a side <= 1e-5 or whose mask is empty (detectron2's rule)."""
    boxes, masks = target["boxes"], target["masks"]
    keep = ((boxes[:, 2] - boxes[:, 0]) > _MIN_BOX_SIDE) & (
        (boxes[:, 3] - boxes[:, 1]) > _MIN_BOX_SIDE
    )
    keep &= masks.flatten(1).any(dim=1).bool()
    if bool(keep.all()):
        return target
    return {
        **target,
        "boxes": boxes[keep],
        "labels": target["labels"][keep],
        "masks": masks[keep],
    }
