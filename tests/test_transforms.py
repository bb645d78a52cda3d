"""Transforms, batching and training samplers of the data pipeline."""

from __future__ import annotations

import itertools

import pytest
import torch

from blendmask.data.batching import collate, pad_images
from blendmask.data.coco import CocoDataset
from blendmask.data.samplers import GroupedBatchSampler, TrainingSampler
from blendmask.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    flip_horizontal,
    get_output_size,
    resize_image,
)


def naive_output_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape, restated."""
    scale = short / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    # ours, on purpose: >= 1 (detectron2 gives 0 for a 1 x 1333 image, which no resize makes)
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


def mask_box(mask: torch.Tensor) -> list[float]:
    """Tight xyxy box of a mask in pixel-edge units (x2 = last column + 1)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.fixture(scope="module")
def sample(shapes_dataset):
    return CocoDataset(shapes_dataset["train_json"], shapes_dataset["train_images"])[0]


def test_output_size_matches_detectron2_rule():
    for h, w, short, max_size in itertools.product(
        [1, 31, 128, 480, 600, 1000], [1, 33, 128, 640, 1333], [64, 800], [100, 1333]
    ):
        assert get_output_size(h, w, short, max_size) == naive_output_size(h, w, short, max_size)
    assert get_output_size(480, 640, 800, 1333) == (800, 1067)
    assert get_output_size(100, 1000, 800, 1333) == (133, 1333)  # capped by the long side
    assert get_output_size(100, 1000, 800, 0) == (800, 8000)  # max_size <= 0: no cap


def test_output_size_with_a_fixed_scale_ignores_min_size_and_keeps_the_cap():
    """data.test_scale > 0: both sides times the factor (nuclei: 3x for every image size)."""
    for h, w in itertools.product([1, 31, 256, 603, 1024], [1, 33, 256, 1272]):
        for scale, max_size in itertools.product([0.5, 1.0, 3.0], [0, 1536, 4096]):
            want_h, want_w = h * scale, w * scale
            if max_size > 0 and max(want_h, want_w) > max_size:
                cap = max_size / max(want_h, want_w)
                want_h, want_w = want_h * cap, want_w * cap
            want = (int(want_h + 0.5), int(want_w + 0.5))
            assert get_output_size(h, w, 800, max_size, scale) == want
    assert get_output_size(256, 320, 768, 4096, 3.0) == (768, 960)
    assert get_output_size(1024, 1024, 768, 4096, 3.0) == (3072, 3072)  # not shrunk to 768
    assert get_output_size(603, 1272, 768, 1536, 3.0) == (728, 1536)  # the cap still holds
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    assert resize_image(image, 800, 0, 2.5).shape == (3, 50, 75)


def test_resize_image_size_and_range():
    image = torch.rand(3, 60, 90)
    resized = resize_image(image, 40, 1000)
    assert resized.shape == (3, 40, 60)
    assert resized.min() >= image.min() and resized.max() <= image.max()


def test_resize_keeps_boxes_and_masks_consistent(sample):
    image, target = sample
    resized, out = ResizeShortestEdge(200, 1000)(image, target)
    assert resized.shape == (3, 200, 200)
    assert torch.allclose(out["boxes"], target["boxes"] * 200 / 128)
    assert out["masks"].dtype == torch.uint8 and out["masks"].shape[1:] == (200, 200)
    for box, mask in zip(out["boxes"], out["masks"]):
        # The mask's own box stays within ~1 px of the scaled box.
        assert torch.allclose(torch.tensor(mask_box(mask)), box, atol=1.6)
    assert out["labels"] is target["labels"] and out["image_id"] == target["image_id"]


def test_multi_scale_choice_is_seeded():
    resize = ResizeShortestEdge([32, 48, 64], 1000)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 40, 40, dtype=torch.uint8)}

    def draws(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return [resize(torch.rand(3, 40, 40), target)[0].shape[-1] for _ in range(30)]

    assert set(draws(0)) == {32, 48, 64}
    assert draws(0) == draws(0) != draws(1)


def test_flip_twice_is_identity_and_flip_is_consistent(sample):
    image, target = sample
    flipped, once = flip_horizontal(image, target)
    assert torch.equal(flipped[:, :, 0], image[:, :, -1])
    for box, mask in zip(once["boxes"], once["masks"]):
        assert mask_box(mask) == box.tolist()  # boxes and masks flip together
    back, twice = flip_horizontal(flipped, once)
    assert torch.equal(back, image)
    assert torch.equal(twice["boxes"], target["boxes"])
    assert torch.equal(twice["masks"], target["masks"])


def test_random_flip_probability(sample):
    image, target = sample
    assert torch.equal(RandomHorizontalFlip(0.0)(image, target)[0], image)
    assert torch.equal(RandomHorizontalFlip(1.0)(image, target)[0], image.flip(-1))
    torch.manual_seed(0)
    small = torch.arange(6.0).view(1, 2, 3)
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 2, 3, dtype=torch.uint8)}
    flip = RandomHorizontalFlip(0.5)
    flips = [not torch.equal(flip(small, empty)[0], small) for _ in range(200)]
    assert 70 < sum(flips) < 130


def test_compose_runs_in_order(sample):
    image, target = sample
    out, _ = Compose([ResizeShortestEdge(64, 1000), RandomHorizontalFlip(1.0)])(image, target)
    assert torch.equal(out, resize_image(image, 64, 1000).flip(-1))


def test_pad_images_to_multiple_of_32():
    images = [torch.rand(3, 40, 70), torch.rand(3, 65, 20)]
    batch = pad_images(images)
    assert batch.tensor.shape == (2, 3, 96, 96)
    assert batch.image_sizes == [(40, 70), (65, 20)]
    for image, padded in zip(images, batch.tensor):
        h, w = image.shape[1:]
        assert torch.equal(padded[:, :h, :w], image)
        # Everything outside the image is zero padding.
        for y in range(96):
            for x in range(96):
                if y >= h or x >= w:
                    assert padded[:, y, x].abs().sum() == 0
    assert pad_images([torch.rand(3, 64, 32)]).tensor.shape == (1, 3, 64, 32)
    with pytest.raises(ValueError, match="at least one image"):
        pad_images([])


def test_collate(sample):
    image, target = sample
    batch, targets = collate([(image, target), (image[:, :100], target)])
    assert batch.tensor.shape == (2, 3, 128, 128)
    assert batch.image_sizes == [(128, 128), (100, 128)]
    assert targets[0] is target and targets[1] is target


def test_training_sampler_epochs_and_ranks():
    size, world = 10, 3
    stream = list(itertools.islice(TrainingSampler(size, seed=5), 40))
    for epoch in range(4):
        assert sorted(stream[epoch * size : (epoch + 1) * size]) == list(range(size))
    assert stream[:size] != stream[size : 2 * size]  # a new permutation each epoch
    ranks = [
        list(itertools.islice(TrainingSampler(size, seed=5, rank=r, world_size=world), 13))
        for r in range(world)
    ]
    # Rank r takes elements r, r + world, ... of the one global stream.
    for r in range(world):
        assert ranks[r] == stream[r::world][:13]
    assert list(itertools.islice(TrainingSampler(size, seed=6), 10)) != stream[:10]
    assert list(itertools.islice(TrainingSampler(4, shuffle=False), 6)) == [0, 1, 2, 3, 0, 1]


def test_training_sampler_repeats_each_index_per_epoch_and_resumes():
    repeats = [1, 3, 1, 5]
    stream = list(itertools.islice(TrainingSampler(4, seed=2, repeats=repeats), 30))
    for epoch in range(3):  # an epoch of 10 draws holds index i repeats[i] times
        counts = [stream[epoch * 10 : (epoch + 1) * 10].count(i) for i in range(4)]
        assert counts == repeats
    # the same stream on every (re)start, and rank r still takes every world-th draw
    assert list(itertools.islice(TrainingSampler(4, seed=2, repeats=repeats), 30)) == stream
    rank1 = TrainingSampler(4, seed=2, rank=1, world_size=2, repeats=repeats)
    assert list(itertools.islice(rank1, 15)) == stream[1::2]
    assert list(itertools.islice(TrainingSampler(3, seed=2, repeats=[1, 1, 1]), 3)) == list(
        itertools.islice(TrainingSampler(3, seed=2), 3)
    )
    with pytest.raises(ValueError, match="repeats of at least 1"):
        TrainingSampler(3, repeats=[1, 0, 2])
    with pytest.raises(ValueError, match="expected 3 repeats"):
        TrainingSampler(3, repeats=[1, 2])


def test_grouped_batches_share_a_group_and_resume_exactly():
    group_ids = [0, 1, 1, 0, 0, 1, 0, 1, 1]

    def batches(start_iter: int, count: int, **kwargs) -> list:
        sampler = GroupedBatchSampler(
            TrainingSampler(len(group_ids), seed=3), group_ids, 2, start_iter=start_iter, **kwargs
        )
        return list(itertools.islice(sampler, count))

    uninterrupted = batches(0, 20)
    for batch in uninterrupted:
        assert len(batch) == 2 and len({group_ids[i] for i in batch}) == 1
    assert {group_ids[b[0]] for b in uninterrupted} == {0, 1}
    # Resuming at iteration 7 gives the batches of iterations 7, 8, ...
    assert batches(7, 13) == uninterrupted[7:]
    seeded = batches(0, 20, augmentation_seed=11)
    assert [[i for i, _ in b] for b in seeded] == uninterrupted
    assert batches(7, 13, augmentation_seed=11) == seeded[7:]
    all_seeds = [s for b in seeded for _, s in b]
    assert len(set(all_seeds)) == len(all_seeds)
