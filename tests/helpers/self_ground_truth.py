"""A random tiny model and a COCO ground truth made of its own masks, for tests that compare two
ways of scoring the same predictions: the AP is well above 0 (the model finds its own objects),
so scoring the wrong images, or boxes instead of masks, changes the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.checkpoint_io import save_model_file
from blendmask.factory import build
from blendmask.predictor import Predictor
from blendmask.presets import get_preset

NAMES = ["circle", "rectangle", "triangle", "star"]
SIZE = 64  # images and the model's test size: no resize, so uint8 and float inputs agree


def write_model(path: Path) -> Path:
    """A random tiny model.pt (4 classes, category ids 1-4) that detects on any image."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.model.fcos.inference_th_test = 0.0
    cfg.data.category_names = list(NAMES)
    cfg.data.category_ids = [1, 2, 3, 4]
    cfg.data.min_size_test = cfg.data.max_size_test = SIZE
    cfg = cfg.validate()
    model, _, _ = build(cfg, load_pretrained=False)
    save_model_file(path, cfg, model)
    return path


def write_ground_truth(
    model_file: Path, folder: Path, image_ids: list[int], json_path: Path | None = None
) -> Path:
    """folder/im<k>.png (noise) and a COCO json (default folder/gt.json) with image ids
    `image_ids`, whose objects are the model's 3 best masks per image, in uncompressed RLE
    (which torchvision's references read, and compressed RLE they do not)."""
    folder.mkdir(parents=True)
    predictor = Predictor.from_checkpoint(model_file, device="cpu", score_threshold=None)
    images, annotations = [], []
    for k, image_id in enumerate(image_ids):
        pixels = np.random.default_rng(k).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{k}.png")
        images.append({"id": image_id, "file_name": f"im{k}.png", "height": SIZE, "width": SIZE})
        det = predictor.predict_tensors([pixels])[0]
        masks = det.masks.numpy()
        for d in [d for d in range(len(det)) if masks[d].any()][:3]:
            rle = mask_util.encode(np.asfortranarray(masks[d].astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(det.labels[d]) + 1,
                    "segmentation": {"size": [SIZE, SIZE], "counts": uncompressed_counts(masks[d])},
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "area": float(mask_util.area(rle)),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(NAMES)]
    path = json_path or folder / "gt.json"
    gt = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(gt))
    return path


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a bool [H, W] mask: run lengths in column-major order,
    starting with background."""
    flat = mask.T.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return runs if flat[0] == 0 else [0, *runs]
