"""CocoDataset: mask formats, crowd handling, category mapping, image reading, real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from blendmask.data.coco import CocoDataset
from blendmask.data.coco_json import decode_segmentation
from blendmask.io import load_image


def naive_uncompressed_rle(counts: list[int], height: int, width: int) -> np.ndarray:
    """COCO RLE by hand: alternating runs of 0 and 1 over the column-major pixel order."""
    flat = []
    for k, run in enumerate(counts):
        flat += [k % 2] * run
    return np.array(flat, dtype=np.uint8).reshape(width, height).T


def pattern(height: int, width: int, blue: int) -> np.ndarray:
    """The pixels tests/data/tiny_coco/images/*.png were written with."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5, y * 7, np.full_like(x, blue)], -1).astype(np.uint8)


def test_category_mapping_is_sorted_by_id_and_round_trips(tiny_coco):
    ds = CocoDataset(*tiny_coco)
    # json order is 20, 3, 7; labels follow sorted ids so they don't depend on json order.
    assert ds.contiguous_to_category_id == [3, 7, 20]
    assert ds.category_names == ["alpha", "beta", "gamma"]
    assert ds.num_classes == 3
    for label, category_id in enumerate(ds.contiguous_to_category_id):
        assert ds.category_id_to_contiguous[category_id] == label


def test_targets_of_every_mask_format(tiny_coco):
    json_path, images_dir = tiny_coco
    data = json.loads(json_path.read_text())
    ds = CocoDataset(json_path, images_dir)
    assert ds.image_ids == [1, 2, 5, 7]
    image, target = ds[0]
    # The decoded uint8 values, untouched: resizing and the float conversion come later.
    assert image.shape == (3, 32, 48) and image.dtype == torch.uint8
    expected_pixels = torch.from_numpy(pattern(32, 48, 10)).permute(2, 0, 1)
    assert torch.equal(image, expected_pixels)
    assert target["image_id"] == 1 and target["orig_size"] == (32, 48)
    # Crowd annotation 14 is excluded; 11 polygon, 12 uncompressed RLE, 13 compressed RLE.
    assert target["labels"].tolist() == [0, 1, 2]
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[4, 2, 16, 12], [2, 20, 10, 28], [24, 6, 37, 19]]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (3, 32, 48)
    polygon = np.zeros((32, 48), np.uint8)
    polygon[2:12, 4:16] = 1  # the polygon is the rectangle x 4..16, y 2..12 (pixel edges)
    assert np.array_equal(masks[0].numpy(), polygon)
    counts = data["annotations"][1]["segmentation"]["counts"]
    assert np.array_equal(masks[1].numpy(), naive_uncompressed_rle(counts, 32, 48))
    y, x = np.mgrid[0:32, 0:48]
    disc = (((x - 30) ** 2 + (y - 12) ** 2) <= 36).astype(np.uint8)
    assert np.array_equal(masks[2].numpy(), disc)


def test_multi_polygon_and_box_clipping(tiny_coco):
    ds = CocoDataset(*tiny_coco)
    image, target = ds[1]
    assert image.shape == (3, 48, 32)
    assert target["labels"].tolist() == [1, 2]
    # Annotation 22's box [24, 40, 20, 20] leaves the 32x48 image: clipped to its border.
    assert target["boxes"].tolist() == [[1, 1, 10, 6], [24, 40, 32, 48]]
    two_parts = np.zeros((48, 32), np.uint8)
    two_parts[1:6, 1:6] = 1
    two_parts[1:6, 8:10] = 1
    assert np.array_equal(target["masks"][0].numpy(), two_parts)


def test_empty_and_crowd_only_images(tiny_coco):
    ds = CocoDataset(*tiny_coco)
    for index in (2, 3):  # image 5 has no annotation, image 7 only a crowd region
        image, target = ds[index]
        assert target["boxes"].shape == (0, 4)
        assert target["labels"].shape == (0,)
        assert target["masks"].shape == (0, *image.shape[1:])
    assert CocoDataset(*tiny_coco, skip_empty=True).image_ids == [1, 2]
    # Crowd regions stay in the COCO object for evaluation.
    assert ds.coco.anns[14]["iscrowd"] == 1


def test_aspect_ratio_groups_and_paths(tiny_coco):
    json_path, images_dir = tiny_coco
    ds = CocoDataset(json_path, images_dir)
    assert [ds.get_aspect_ratio_group(i) for i in range(len(ds))] == [0, 1, 0, 0]
    assert ds.image_path(1) == images_dir / "b.png"


def test_transforms_are_applied_and_seeded(tiny_coco):
    calls = []

    def transform(image, target):
        calls.append(torch.rand(()).item())
        return image.flip(-1), target

    ds = CocoDataset(*tiny_coco, transforms=transform)
    plain, _ = CocoDataset(*tiny_coco)[0]
    image, _ = ds[0]
    assert torch.equal(image, plain.flip(-1))
    # (index, seed) seeds the RNG for this sample only: same seed, same draw, whatever the
    # global RNG state.
    ds[(0, 123)]
    torch.rand(5)
    ds[(0, 123)]
    ds[(0, 124)]
    assert calls[1] == calls[2] != calls[3]


def test_polygon_mask_rle_round_trip_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(20):
        # A random star-shaped polygon (non-convex, sub-pixel vertices).
        n = int(rng.integers(3, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(3, 20, n)
        polygon = np.stack([30 + radii * np.cos(angles), 25 + radii * np.sin(angles)], 1)
        mask = decode_segmentation([polygon.ravel().tolist()], 50, 60)
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")  # as written to json
        again = decode_segmentation(json.loads(json.dumps(rle)), 50, 60)
        assert mask.dtype == np.uint8 and mask.shape == (50, 60)
        assert np.array_equal(mask, again)
        assert mask_util.area(rle) == mask.sum()


def test_shapes_dataset_loads_with_disjoint_masks(shapes_dataset):
    ds = CocoDataset(shapes_dataset["train_json"], shapes_dataset["train_images"])
    assert ds.num_classes == 4 and len(ds) == 6
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.shape == (3, 128, 128)
        assert image.dtype == torch.uint8 and image.max() > image.min()
        masks = target["masks"]
        assert len(masks) >= 1
        # Visible parts: no pixel belongs to two instances.
        assert masks.sum(0).max() <= 1
        for box, mask in zip(target["boxes"], masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert box.tolist() == [float(v) for v in tight]


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, format="JPEG", quality=100, exif=exif.tobytes())
    image = np.asarray(load_image(path))
    assert image.shape == (40, 20, 3)
    # Rotating clockwise puts the left (black) half on top.
    assert image[:18].mean() < 10 and image[22:].mean() > 245


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 200, (200, 200, 200)), ("LA", (90, 0), (90, 90, 90)), ("1", 1, (255, 255, 255))],
)
def test_gray_modes_become_rgb(tmp_path, mode, value, expected):
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (5, 4), value).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert np.asarray(image)[0, 0].tolist() == list(expected)


def test_palette_image_becomes_rgb(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (6, 3), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[1, 1].tolist() == [10, 200, 30]


def test_real_nuclei_image_loads(nuclei_dir):
    json_path = nuclei_dir / "annotations" / "instances_val.json"
    ds = CocoDataset(json_path, nuclei_dir / "images" / "val")
    assert ds.num_classes == 1 and ds.category_names == ["nucleus"]
    image, target = ds[0]
    height, width = target["orig_size"]
    assert image.shape == (3, height, width)
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[target["image_id"]]))
    assert len(target["masks"]) == len(anns) > 0
    # Uncompressed RLE decoded: pixel counts equal the json's areas.
    assert target["masks"].flatten(1).sum(1).tolist() == [a["area"] for a in anns]
