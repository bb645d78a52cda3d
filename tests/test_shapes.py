"""The synthetic shapes dataset: determinism, classes, sizes, same-class occlusion."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
from pycocotools import mask as mask_util

from blendmask.data.shapes import SHAPE_CLASSES, render_shapes_image, write_shapes_dataset


def files_of(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = write_shapes_dataset(tmp_path / "a", num_train=3, num_val=2, seed=7, image_size=96)
    write_shapes_dataset(tmp_path / "b", num_train=3, num_val=2, seed=7, image_size=96)
    write_shapes_dataset(tmp_path / "c", num_train=3, num_val=2, seed=8, image_size=96)
    a, b, c = (files_of(tmp_path / name) for name in "abc")
    assert len(a) == 3 + 2 + 2  # 5 PNGs, 2 jsons
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert first == {
        "train_json": tmp_path / "a" / "annotations" / "instances_train.json",
        "train_images": tmp_path / "a" / "images" / "train",
        "val_json": tmp_path / "a" / "annotations" / "instances_val.json",
        "val_images": tmp_path / "a" / "images" / "val",
    }
    # Train and val images differ although they share the seed.
    assert a["images/train/000000.png"] != a["images/val/000000.png"]


def test_json_annotations_describe_the_masks(shapes_dataset):
    data = json.loads(shapes_dataset["train_json"].read_text())
    assert [c["name"] for c in data["categories"]] == SHAPE_CLASSES
    assert len(SHAPE_CLASSES) >= 4
    assert {a["category_id"] for a in data["annotations"]} <= {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        mask = mask_util.decode(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum() > 0
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["iscrowd"] == 0
    names = sorted(p.name for p in shapes_dataset["train_images"].iterdir())
    assert names == sorted(img["file_name"] for img in data["images"])


def test_images_cover_classes_sizes_and_same_class_occlusion():
    areas, labels, colours, same_class_touching = [], [], [], 0
    for i in range(24):
        pixels, instances = render_shapes_image(np.random.default_rng([0, 0, i]), 256)
        assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
        assert 1 <= len(instances) <= 8
        stacked = np.stack([mask for _, mask in instances])
        assert stacked.sum(0).max() == 1  # visible parts never overlap
        for label, mask in instances:
            areas.append(int(mask.sum()))
            labels.append(label)
            colours.append(pixels[mask].mean(0))
        for (la, ma), (lb, mb) in combinations(instances, 2):
            # Touching masks of the same class: one occludes the other (masks are disjoint).
            grown = ma.copy()
            grown[1:] |= ma[:-1]
            grown[:-1] |= ma[1:]
            grown[:, 1:] |= ma[:, :-1]
            grown[:, :-1] |= ma[:, 1:]
            same_class_touching += int(la == lb and (grown & mb).any())
    areas = np.array(areas)
    assert set(labels) == set(range(len(SHAPE_CLASSES)))
    assert min(areas) >= 30
    # COCO's small / medium / large ranges are all populated.
    assert (areas < 32**2).sum() >= 10
    assert ((areas >= 32**2) & (areas < 96**2)).sum() >= 10
    assert (areas >= 96**2).sum() >= 1
    assert same_class_touching >= 5
    # Colour does not give the class: instances of one class come in very different colours.
    colours, labels = np.array(colours), np.array(labels)
    for label in range(len(SHAPE_CLASSES)):
        assert colours[labels == label].std(0).mean() > 40


def test_backgrounds_are_noisy():
    pixels, instances = render_shapes_image(np.random.default_rng(3), 128)
    background = ~np.any(np.stack([mask for _, mask in instances]), 0)
    # Neighbouring background pixels differ: not a flat colour a threshold could separate.
    steps = np.abs(np.diff(pixels.astype(int), axis=1))[background[:, 1:] & background[:, :-1]]
    assert steps.mean() > 2


def test_max_object_caps_the_object_extent():
    """`--max-object`: the small-object variant (objects 4x smaller relative to the image)
    caps every object's extent, and a cap below the smallest object is refused."""
    import pytest

    extents = []
    for i in range(12):
        _, instances = render_shapes_image(np.random.default_rng([0, 0, i]), 256, max_object=0.125)
        for _, mask in instances:
            ys, xs = np.nonzero(mask)
            extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    # A rotated rectangle's box is up to sqrt(2) times the extent of its long side.
    assert extents and max(extents) <= 2**0.5 * 0.125 * 256 + 2
    with pytest.raises(ValueError, match="max_object"):
        write_shapes_dataset("unused", 1, 0, image_size=64, max_object=0.1)
