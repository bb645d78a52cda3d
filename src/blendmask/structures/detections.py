"""`Detections`: one image's detections, and what users do with them (index, filter, paste,
draw, save, COCO / JSON export). Re-exported by `blendmask.structures`.

A plain value: tensors, class names and ids, nothing injected. Pasting is
`blendmask.structures.paste` (below every user of it); drawing is `blendmask.visualization`,
which `plot` imports when called (visualization imports this layer's `paste` and `classes`,
never this module at run time), so any `Detections`, built by hand or by a predictor, draws.

Shapes: D detections, R mask resolution, H0/W0 original image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blendmask.atomic import atomic_write

# Through the module, not its names, so that a test counting the pastes patches one place.
from blendmask.structures import paste
from blendmask.structures.classes import class_name, resolve_classes
from blendmask.structures.paste import MaskWindow


def detection_records(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    rles: Sequence[dict[str, Any]],
    *,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The JSON record of each detection, as `Detections.to_json` and `blendmask predict`
    write it (docs/detections.md, docs/detections.schema.json):

        {"box": [x0, y0, x1, y1] (original-image pixels), "score", "label" (0-based),
         "category_id" (the dataset's id; label + 1 when the model has none),
         "name" (`class_name`), "mask": COCO compressed RLE {"size": [H0, W0], "counts"}}

    Args:
        boxes (Tensor[D, 4]): xyxy; scores (Tensor[D]); labels (Tensor[D]): 0-based.
        rles: the compressed RLE of each detection's mask.
        category_ids / class_names: of each 0-based label (the model's config).
    """
    ids = list(category_ids or [])
    labels_list = [int(k) for k in labels.tolist()]
    if ids and any(not 0 <= k < len(ids) for k in labels_list):
        raise ValueError(f"a detection label has no category id ({len(ids)} given)")
    return [
        {
            "box": [float(v) for v in box],
            "score": float(score),
            "label": label,
            "category_id": int(ids[label]) if ids else label + 1,
            "name": class_name(label, class_names),
            "mask": rle,
        }
        for box, score, label, rle in zip(
            boxes.detach().float().cpu().tolist(), scores.tolist(), labels_list, rles
        )
    ]


class Detections:
    """Detections for one image, in original-image pixels.

    boxes (Tensor[D, 4]): float xyxy.
    scores (Tensor[D]): float, sqrt(cls * ctrness).
    labels (Tensor[D]): int64 in [0, C), 0-based (COCO category ids only in COCO files:
        `to_coco`; 1-based labels only inside `blendmask.TorchvisionDetector`).
    masks (Tensor[D, H0, W0]): bool.
    class_names (tuple[str, ...] | None): name of each label, from the model's config: the
        class table, also as `names` {label: name}; each detection's name: `detection_names`.
    category_ids (tuple[int, ...] | None): COCO category id of each label (for `to_coco`).

    The masks are held in one of two forms:
    - dense: `Detections(boxes, scores, labels, masks)`, bool[D, H0, W0] as given;
    - box-local (what the post-processor returns): `mask_probs` (Tensor[D, R, R], the
      blender's probabilities inside each box), `image_size` (H0, W0) and `mask_threshold`.
      `.masks` then pastes all of them on first access (`structures.paste.paste_masks`) and
      keeps the result. That costs D x H0 x W0 bytes, so code that may see large images
      (predict, eval, overlays) reads the masks one detection at a time instead
      (`mask_windows`): memory bounded by the image, not by D x image.

    >>> dets = predictor("a.jpg")[0]
    >>> dets[dets.scores > 0.5], dets.filter(score=0.5, classes=["person", 2])
    >>> dets.plot("a.jpg"), dets.save("a_pred.png", "a.jpg"), dets.to_coco(image_id=7)
    """

    def __init__(
        self,
        boxes: Tensor,
        scores: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
        *,
        mask_probs: Tensor | None = None,
        image_size: tuple[int, int] | None = None,
        mask_threshold: float = 0.5,
        class_names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        if masks is None and (mask_probs is None or image_size is None):
            raise ValueError("Detections: give masks bool[D, H0, W0], or mask_probs and image_size")
        self.boxes = boxes
        self.scores = scores
        self.labels = labels
        self._masks = masks
        self.mask_probs = mask_probs
        self._image_size = (int(image_size[0]), int(image_size[1])) if image_size else None
        self.mask_threshold = mask_threshold
        self.class_names = None if class_names is None else tuple(class_names)
        self.category_ids = None if category_ids is None else tuple(int(i) for i in category_ids)

    @property
    def masks(self) -> Tensor:
        """bool Tensor[D, H0, W0], pasted from the box-local form on first access."""
        if self._masks is None:
            assert self.mask_probs is not None
            self._masks = paste.paste_masks(
                self.mask_probs, self.boxes, self.image_size, self.mask_threshold
            )
        return self._masks

    @masks.setter
    def masks(self, value: Tensor) -> None:
        self._masks = value
        self.mask_probs = None  # the dense masks given replace the box-local ones

    @property
    def has_dense_masks(self) -> bool:
        """Whether `masks` is held (given, or already pasted) rather than pasted on access."""
        return self._masks is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H0, W0) of the image the detections belong to."""
        if self._image_size is not None:
            return self._image_size
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    @property
    def names(self) -> dict[int, str]:
        """The class table {label: name} of the model (0-based labels), as ultralytics'
        `Results.names`; {} when the model stores no names. Not one name per detection:
        that is `detection_names` (what `names` used to be)."""
        return dict(enumerate(self.class_names or ()))

    @property
    def detection_names(self) -> list[str]:
        """The class name of each detection ("class <label>" where no name is known)."""
        return [class_name(k, self.class_names) for k in self.labels.tolist()]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        form = "dense" if self.has_dense_masks else "box-local"
        return f"Detections({len(self)} detections, image {self.image_size}, {form} masks)"

    def _with(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, fn: Callable[[Tensor], Tensor]
    ) -> Detections:
        """A Detections of the same form and class names, each mask tensor passed through
        `fn`."""
        return Detections(
            boxes,
            scores,
            labels,
            None if self._masks is None else fn(self._masks),
            mask_probs=None if self.mask_probs is None else fn(self.mask_probs),
            image_size=self.image_size,
            mask_threshold=self.mask_threshold,
            class_names=self.class_names,
            category_ids=self.category_ids,
        )

    def to(self, device: torch.device | str) -> Detections:
        return self._with(
            self.boxes.to(device),
            self.scores.to(device),
            self.labels.to(device),
            lambda t: t.to(device),
        )

    def select(self, index: Tensor | slice) -> Detections:
        """The detections picked by `index` (bool[D], int64 indices or a slice), in the same
        form (box-local masks stay box-local)."""
        return self._with(
            self.boxes[index], self.scores[index], self.labels[index], lambda t: t[index]
        )

    def __getitem__(self, index: Tensor | slice | int | Sequence[int] | np.ndarray) -> Detections:
        """`dets[dets.scores > 0.5]`, `dets[:10]`, `dets[[0, 2]]`; `dets[3]` is a Detections
        of one (negative indices count from the end)."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -len(self) <= index < len(self):
                raise IndexError(f"detection {index} out of range ({len(self)} detections)")
            index = torch.tensor([int(index) % len(self)])
        elif not isinstance(index, (Tensor, slice)):
            array = np.asarray(index)
            index = torch.from_numpy(array if array.size else array.astype(np.int64))
        return self.select(index)

    def filter(
        self, *, score: float | None = None, classes: Sequence[int | str] | None = None
    ) -> Detections:
        """The detections scoring >= `score` whose class is one of `classes` (class names or
        0-based labels, see `resolve_classes`); None keeps all.

        The one score and class filter after the post-processor: `Predictor`, `blendmask
        predict` (images, video, `--onnx`), serve and eval all keep detections through it."""
        keep = torch.ones(len(self), dtype=torch.bool, device=self.scores.device)
        if score is not None:
            if not math.isfinite(score):
                raise ValueError(f"Detections.filter: score must be a finite number, got {score}")
            keep &= self.scores >= score
        if classes is not None:
            labels = torch.tensor(resolve_classes(classes, self.class_names), dtype=torch.int64)
            keep &= torch.isin(self.labels, labels.to(self.labels.device))
        # All kept: views of the same tensors, not copies (the masks may be D x H0 x W0).
        return self.select(slice(None) if bool(keep.all()) else keep)

    def mask_probabilities(self) -> Tensor:
        """float Tensor[D, H0, W0]: the soft masks before the `mask_threshold` (the blender's
        probabilities pasted into the image); 0 / 1 for detections given dense masks only."""
        if self.mask_probs is None:
            return self.masks.float()
        return paste.paste_mask_probabilities(self.mask_probs, self.boxes, self.image_size)

    def mask_windows(self) -> Iterator[MaskWindow]:
        """Each detection's mask as a window of the image (`structures.paste.MaskWindow`), one
        at a time: box-local masks are pasted window by window, never as the (D, H0, W0)
        tensor; dense masks (given, or already pasted) are yielded whole, d in order."""
        if self.has_dense_masks:
            for d, mask in enumerate(self.masks.unbind(0)):
                yield d, 0, 0, mask
            return
        assert self.mask_probs is not None
        yield from paste.paste_mask_windows(
            self.mask_probs, self.boxes, self.image_size, self.mask_threshold
        )

    def numpy(self) -> dict[str, np.ndarray]:
        """{"boxes": float32[D, 4] xyxy, "scores": float32[D], "labels": int64[D] (0-based),
        "masks": bool[D, H0, W0]} on the CPU."""
        cpu = self.to("cpu")
        return {
            "boxes": cpu.boxes.float().numpy(),
            "scores": cpu.scores.float().numpy(),
            "labels": cpu.labels.long().numpy(),
            "masks": cpu.masks.bool().numpy(),
        }

    def to_coco(
        self, image_id: int, category_ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """COCO results: [{"image_id", "category_id", "score", "bbox": [x, y, w, h],
        "segmentation": compressed RLE {"size": [H0, W0], "counts": str}}, ...], as
        `blendmask predict` / `eval` write them.

        `category_ids`: the COCO id of each 0-based label; default the model's
        (`self.category_ids`), else label + 1."""
        ids = list(category_ids if category_ids is not None else self.category_ids or [])
        labels = self.labels.tolist()
        if ids and any(not 0 <= label < len(ids) for label in labels):
            raise ValueError(f"a detection label has no category id ({len(ids)} given)")
        boxes = self.boxes.detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        return [
            {
                "image_id": int(image_id),
                "category_id": int(ids[label]) if ids else label + 1,
                "score": float(score),
                "bbox": [float(v) for v in box],
                "segmentation": rle,
            }
            for box, score, label, rle in zip(xywh, self.scores.tolist(), labels, self._rles())
        ]

    def to_json(self) -> list[dict[str, Any]]:
        """JSON-ready detections, the records `blendmask predict` writes (`detection_records`,
        docs/detections.md): [{"box": [x0, y0, x1, y1], "score", "label" (0-based),
        "category_id", "name", "mask": compressed RLE {"size": [H0, W0], "counts": str}}, ...].
        """
        return detection_records(
            self.boxes,
            self.scores,
            self.labels,
            self._rles(),
            category_ids=self.category_ids,
            class_names=self.class_names,
        )

    def _rles(self) -> list[dict[str, Any]]:
        """Compressed RLE of each mask, pasted one detection at a time (memory H0 x W0)."""
        from pycocotools import mask as mask_util

        rles = []
        cpu = self.to("cpu")
        for d in range(len(cpu)):
            mask = cpu.masks[d] if cpu.has_dense_masks else cpu[d].masks[0]
            rle = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()})
        return rles

    def plot(self, image: Any, *, alpha: float = 0.5, pil: bool = False) -> Any:
        """The detections drawn over `image` (a path, PIL image, H0 x W0 x 3 array or
        Tensor[3, H0, W0]: the image they were predicted on): masks, boxes, "name score".

        Returns uint8 RGB np.ndarray[H0, W0, 3] (a PIL image with `pil=True`), drawn by
        `blendmask.visualization.draw_detections` with the detections' class names."""
        # Imported here: drawing imports `structures.paste`, whose package imports this module.
        from blendmask.input_images import load_input_image
        from blendmask.visualization import draw_detections

        names = list(self.class_names) if self.class_names else None
        overlay = draw_detections(load_input_image(image), self, class_names=names, alpha=alpha)
        array = overlay.permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(array) if pil else array

    def save(self, path: str | Path, image: Any, *, alpha: float = 0.5) -> Path:
        """Write `plot(image)` to `path` (format from its suffix: .png, .jpg, ...), whole or
        not at all (`blendmask.atomic.atomic_write`)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in Image.registered_extensions():
            raise ValueError(f"{path}: unknown image suffix {suffix!r} (use .png or .jpg)")
        picture = self.plot(image, alpha=alpha, pil=True)
        fmt = Image.registered_extensions()[suffix]
        return atomic_write(path, lambda f: picture.save(f, format=fmt))

    @staticmethod
    def empty(height: int, width: int, device: torch.device | str = "cpu") -> Detections:
        return Detections(
            boxes=torch.zeros((0, 4), device=device),
            scores=torch.zeros((0,), device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
            masks=torch.zeros((0, height, width), dtype=torch.bool, device=device),
        )
