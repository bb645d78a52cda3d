"""Augmentation for small real datasets (data/augment.py), box-local masks
(data/instance_masks.py) and the image cache of CocoDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from blendmask.data.augment import (
    RandomRot90,
    RandomScaledCrop,
    boxes_from_masks,
    rot90_boxes,
    training_transforms,
    v2_augmentations,
)
from blendmask.data.coco import CocoDataset
from blendmask.data.instance_masks import InstanceMasks
from blendmask.data.transforms import ResizeShortestEdge, get_output_size


def random_masks(g: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """G blobs (random rectangles with holes), some touching the border, one empty."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((g, h, w), dtype=np.uint8)
    for k in range(g - 1):
        y0, x0 = rng.integers(-5, h - 2), rng.integers(-5, w - 2)
        y1, x1 = y0 + rng.integers(3, 25), x0 + rng.integers(3, 25)
        masks[k, max(y0, 0) : y1, max(x0, 0) : x1] = 1
        masks[k] &= rng.random((h, w)) > 0.2
    return masks


def naive_tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return [0.0] * 4
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def make_sample(h: int = 90, w: int = 120, g: int = 12) -> tuple[torch.Tensor, dict]:
    masks = torch.from_numpy(random_masks(g, h, w))
    masks = masks[masks.flatten(1).bool().any(1)]
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    target = {
        "boxes": boxes_from_masks(masks),
        "labels": torch.arange(len(masks)),
        "masks": masks,
        "sem_seg": torch.randint(0, 4, (h, w)),
    }
    return image, target


def test_instance_masks_crop_equals_slicing_the_dense_masks():
    """Box-local storage must give back exactly the dense masks, for any window, including
    windows that cut instances and windows reaching past the image."""
    dense = random_masks(15, 70, 90)
    local = InstanceMasks.from_dense(dense)
    assert torch.equal(local.dense(), torch.from_numpy(dense))
    assert local.nbytes() < dense.nbytes / 4  # the point of storing them box-local
    for top, left, h, w in [(0, 0, 70, 90), (10, 20, 30, 40), (50, 70, 40, 40), (69, 89, 1, 1)]:
        want = np.zeros((15, h, w), dtype=np.uint8)
        part = dense[:, top : top + h, left : left + w]
        want[:, : part.shape[1], : part.shape[2]] = part
        assert torch.equal(local.crop(top, left, h, w), torch.from_numpy(want))


def test_boxes_from_masks_are_tight_edge_unit_boxes():
    masks = torch.from_numpy(random_masks(10, 40, 50))
    want = torch.tensor([naive_tight_box(m) for m in masks])
    assert torch.equal(boxes_from_masks(masks), want)  # the empty last mask -> a zero box


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_boxes_follow_the_rotated_masks(k):
    """A box rotated with the image must be the tight box of the rotated mask; a wrong sign
    or a swapped canvas size would put it elsewhere."""
    masks = torch.from_numpy(random_masks(8, 30, 50))[:-1]
    boxes = tv_tensors.BoundingBoxes(boxes_from_masks(masks), format="XYXY", canvas_size=(30, 50))
    rotated = rot90_boxes(boxes, k)
    turned = torch.rot90(masks, k, dims=(-2, -1))
    assert rotated.canvas_size == tuple(turned.shape[-2:])
    assert torch.equal(rotated.as_subclass(torch.Tensor), boxes_from_masks(turned))


def test_v2_augmentations_keep_boxes_masks_and_sem_seg_together():
    """After flips, quarter turns and colour jitter every box is still the tight box of its
    mask, and sem_seg moved with the image (same rotation/flip as a marker channel)."""
    image, target = make_sample()
    marker = torch.zeros_like(target["sem_seg"])
    marker[5:9, 7:20] = 1  # an asymmetric patch: any flip or turn moves it
    image[0] = marker.to(torch.uint8) * 255
    target["sem_seg"] = marker
    aug = v2_augmentations(hflip=True, vflip=True, rot90=True, color_jitter=[0, 0, 0, 0])
    torch.manual_seed(3)
    seen_shapes = set()
    for _ in range(12):
        out_image, out = aug(image, target)
        seen_shapes.add(tuple(out_image.shape[-2:]))
        assert torch.equal(out["boxes"], boxes_from_masks(out["masks"]))
        assert torch.equal(out["labels"], target["labels"])
        assert torch.equal((out_image[0] > 127).long(), out["sem_seg"])
    assert seen_shapes == {(90, 120), (120, 90)}  # quarter turns happened


def test_random_rot90_draws_every_quarter_turn():
    torch.manual_seed(0)
    ks = [RandomRot90().make_params([])["k"] for _ in range(400)]
    assert set(ks) == {0, 1, 2, 3} and all(60 < ks.count(k) < 140 for k in range(4))


def test_random_scaled_crop_matches_crop_then_resize_of_the_dense_sample():
    """The crop cut from box-local masks equals cropping the dense masks and resizing them;
    the output is at most crop_size, at the test scale times the jitter; instances the window
    misses are dropped with their labels; sem_seg is cropped and resized nearest."""
    image, target = make_sample(90, 120)
    crop = RandomScaledCrop(40, scale_range=(1.0, 1.0), min_size_test=180, max_size_test=1000)
    local = {**target, "masks": InstanceMasks.from_dense(target["masks"].numpy())}
    for seed in range(6):
        torch.manual_seed(seed)
        top, left, h, w, size = crop.window(90, 120)
        torch.manual_seed(seed)
        out_image, out = crop(image, local)
        assert max(size) <= 40 and tuple(out_image.shape[-2:]) == size
        assert (h, w) == (20, 20) and size == (40, 40)  # test scale 2 (90 -> 180), no jitter
        dense = target["masks"][:, top : top + h, left : left + w]
        inside = dense.flatten(1).bool().any(1)
        if inside.any():
            want = F.interpolate(dense[inside][None].float(), size=size, mode="bilinear")[0]
            assert torch.equal(out["masks"], (want >= 0.5).to(torch.uint8))
        else:
            assert out["masks"].shape == (0, *size)
        assert torch.equal(out["labels"], target["labels"][inside])
        assert torch.equal(out["boxes"], boxes_from_masks(out["masks"]))
        sem = target["sem_seg"][top : top + h, left : left + w]
        assert torch.equal(out["sem_seg"], sem.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_random_scaled_crop_scale_follows_the_test_time_resize():
    """Objects must appear at the size the network sees at test time (times the jitter)."""
    crop = RandomScaledCrop(64, scale_range=(0.5, 2.0), min_size_test=100, max_size_test=150)
    test_h, _ = get_output_size(200, 600, 100, 150)  # the long side caps: scale 0.25
    torch.manual_seed(0)
    for _ in range(50):
        _, _, h, w, size = crop.window(200, 600)
        scale = size[1] / w
        assert 0.5 * test_h / 200 - 0.02 <= scale <= 2.0 * test_h / 200 + 0.02
        assert max(size) <= 64


def test_random_scaled_crop_follows_a_fixed_test_scale():
    """With data.test_scale the crops are at that factor (x jitter) for every image size, as
    the Predictor resizes them; min_size_test is not used."""
    crop = RandomScaledCrop(
        96, scale_range=(0.8, 1.25), min_size_test=100, max_size_test=0, test_scale=3.0
    )
    torch.manual_seed(0)
    for height, width in ((256, 256), (1024, 1024), (603, 1272)):
        for _ in range(20):
            _, _, h, w, size = crop.window(height, width)
            assert 0.8 * 3.0 - 0.05 <= size[1] / w <= 1.25 * 3.0 + 0.05, (height, size, w)
            assert max(size) <= 96


def test_training_transforms_reference_path_unless_a_crop_is_asked_for():
    ref = training_transforms(
        min_size_train=[64], max_size_train=100, min_size_test=64, max_size_test=100
    )
    assert isinstance(ref.transforms[0], ResizeShortestEdge) and len(ref.transforms) == 2
    aug = training_transforms(
        min_size_train=[64],
        max_size_train=100,
        min_size_test=64,
        max_size_test=100,
        crop_size=48,
        vflip=True,
        rot90=True,
        color_jitter=[0.2, 0.2, 0.2, 0.0],
    )
    assert isinstance(aug.transforms[0], RandomScaledCrop)
    assert "ColorJitter" in repr(aug.transforms[1]) and "RandomRot90" in repr(aug.transforms[1])


def test_cached_dataset_gives_the_same_samples(shapes_dataset):
    """The cache must change the cost, never the samples (same seed, same augmentation)."""
    kwargs = dict(
        transforms=training_transforms(
            min_size_train=[96],
            max_size_train=200,
            min_size_test=96,
            max_size_test=200,
            crop_size=64,
            scale_jitter=[0.8, 1.25],
            vflip=True,
            rot90=True,
        )
    )
    plain = CocoDataset(shapes_dataset["train_json"], shapes_dataset["train_images"], **kwargs)
    cached = CocoDataset(
        shapes_dataset["train_json"], shapes_dataset["train_images"], cache=True, **kwargs
    )
    cached.preload()
    for index in range(min(4, len(plain))):
        for seed in (0, 1):
            (a_image, a), (b_image, b) = plain[(index, seed)], cached[(index, seed)]
            assert torch.equal(a_image, b_image)
            for key in ("boxes", "labels", "masks"):
                assert torch.equal(a[key], b[key]), key
