"""The training data: the dataset with its augmentations, and a deterministic infinite loader.

The batch of iteration i on rank r is a pure function of (seed, r, i), which is what exact
resumption needs (see `training/loop.py`): the sampler is re-created from the seed and skips the
batches before the checkpoint (indices only, see data/samplers.py), and each sample's random
resize and flip draw from an RNG seeded by (seed, rank, i, position in the batch), not from a
worker's global RNG, so any number of workers gives the same batches.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from blendmask.config import Config
from blendmask.data.augment import training_transforms
from blendmask.data.batching import collate, worker_init
from blendmask.data.coco import CocoDataset
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.data.samplers import GroupedBatchSampler, TrainingSampler, mix_seed
from blendmask.data.transforms import get_output_size


def rank_seed(seed: int, rank: int, iteration: int) -> int:
    """A seed for the global RNGs of `rank` when (re)starting at `iteration` (31-bit)."""
    return mix_seed(seed, rank, iteration) >> 1


def build_train_dataset(cfg: Config, *, progress: bool = False) -> CocoDataset:
    """The training CocoDataset with its augmentation: the reference's multi-scale resize +
    flip (docs/reference.md §3.5), or the crops, flips, rotations and colour jitter a preset
    asks for (data/augment.py). With `data.cache_images` the images are decoded now, once."""
    d = cfg.data
    if not (d.train_json or d.train_panoptic_json) or not d.train_images:
        raise ValueError("train: needs --train-json and --train-images (data.train_json/_images)")
    transforms = training_transforms(
        min_size_train=d.min_size_train,
        max_size_train=d.max_size_train,
        min_size_test=d.min_size_test,
        max_size_test=d.max_size_test,
        test_scale=d.test_scale,
        crop_size=d.crop_size,
        scale_jitter=d.scale_jitter,
        hflip=d.hflip_train,
        vflip=d.vflip_train,
        rot90=d.rot90_train,
        color_jitter=d.color_jitter,
    )
    if d.train_panoptic_json:  # COCO panoptic: instances and sem_seg from the PNGs
        dataset = CocoPanopticDataset(
            d.train_panoptic_json,
            d.train_panoptic_images,
            d.train_images,
            transforms=transforms,
            skip_empty=d.filter_empty,
            cache=d.cache_images,
        )
    else:
        dataset = CocoDataset(
            d.train_json,
            d.train_images,
            transforms=transforms,
            skip_empty=d.filter_empty,
            cache=d.cache_images,
        )
    dataset.preload(progress=progress)
    return dataset


def build_train_loader(
    cfg: Config,
    dataset: CocoDataset,
    *,
    rank: int,
    world_size: int,
    start_iter: int,
    images_per_rank: int,
    device: torch.device,
) -> DataLoader:
    """An infinite DataLoader of (ImageBatch, targets) for this rank, from iteration `start_iter`.

    Aspect-ratio grouping (landscape / portrait batches) as the reference when
    `data.aspect_ratio_grouping`; each rank reads its own shard of the shuffled stream.
    """
    seed = cfg.solver.seed
    repeats = crop_repeats(cfg, dataset) if cfg.data.crop_by_area else None
    sampler = TrainingSampler(
        len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size, repeats=repeats
    )
    if cfg.data.aspect_ratio_grouping:
        group_ids = [dataset.get_aspect_ratio_group(i) for i in range(len(dataset))]
    else:
        group_ids = [0] * len(dataset)
    # Batches as (index, sample seed) pairs: the dataset seeds each sample's resize and flip
    # from its position in the stream (see the module docstring).
    batch_sampler = GroupedBatchSampler(
        sampler,
        group_ids,
        images_per_rank,
        start_iter=start_iter,
        augmentation_seed=mix_seed(seed, rank),
    )
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


def crop_repeats(cfg: Config, dataset: CocoDataset) -> list[int] | None:
    """With crops (`data.crop_size` > 0): each image's draws per epoch, the crops it takes to
    cover it at the test-time scale (at least 1, divided by their greatest common divisor);
    None without crops.

    Drawn once each, an image 64 crops large shows each of its objects 16x less often than
    one of 4 crops (nuclei: 3072 px images beside 768 px ones); in proportion to the area, every
    object is equally likely to be in a crop, as mask AP counts each object alike."""
    d = cfg.data
    if d.crop_size <= 0:
        return None
    repeats = []
    for i in range(len(dataset)):
        h, w = get_output_size(
            *dataset.image_size(i), d.min_size_test, d.max_size_test, d.test_scale
        )
        repeats.append(max(1, round(h * w / d.crop_size**2)))
    common = math.gcd(*repeats)  # images of one size: drawn once each, the plain stream
    return [r // common for r in repeats]


def targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of each target to `device` (image_id / orig_size stay as they are)."""
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
        for t in targets
    ]
