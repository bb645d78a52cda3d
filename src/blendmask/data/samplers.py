"""Infinite, seeded, resumable training samplers (detectron2's TrainingSampler and
AspectRatioGroupedDataset; the reference trains by iterations, not epochs).

Resuming exactly: everything here is a pure function of (seed, position in the stream), so a
run resumed at iteration `i` makes

    GroupedBatchSampler(TrainingSampler(n, seed=s, rank=r, world_size=w), group_ids, b,
                        start_iter=i, augmentation_seed=a)

which skips the first `i` batches and then yields exactly the batches an uninterrupted run
would have drawn at iterations i, i+1, ... The skip regenerates the index stream (cheap: one
`randperm` per epoch, no image is read). The iteration to pass is the engine's own counter
saved in the checkpoint; a sampler cannot report it itself, because a DataLoader with workers
draws batches ahead of the training loop.

With `augmentation_seed` set, each yielded index comes with a per-sample seed,
`(index, seed)`, and `CocoDataset[(index, seed)]` seeds the torch RNG for that sample's
transforms. Augmentations then depend only on the position in the stream, not on which worker
process loads the sample or on how many batches came before a restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def mix_seed(*values: int) -> int:
    """A well-mixed 32-bit seed from a tuple of non-negative ints (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


class TrainingSampler(Sampler[int]):
    """An infinite stream of dataset indices.

    The global stream is the concatenation of one permutation of range(size) per epoch, epoch
    `e` drawn with seed `mix_seed(seed, e)`; rank `r` of `world_size` takes every
    `world_size`-th element starting at `r` (disjoint, equal-length shares, as detectron2).

    Args:
        size: number of samples in the dataset (> 0).
        shuffle: False gives 0, 1, ..., size-1 repeated.
        seed: the same seed on every rank.
        rank, world_size: this process's share of the stream.
        repeats: how many times each index appears in an epoch (default once each).
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeats: Sequence[int] | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler: expected a dataset size > 0, got {size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"TrainingSampler: expected 0 <= rank < world_size, got {rank}, {world_size}"
            )
        if seed < 0:
            raise ValueError(f"TrainingSampler: expected a seed >= 0, got {seed}")
        if repeats is not None and (len(repeats) != size or min(repeats) < 1):
            raise ValueError(
                f"TrainingSampler: expected {size} repeats of at least 1, got {list(repeats)[:8]}"
            )
        self.size = size
        self.repeats = list(repeats) if repeats is not None else [1] * size
        # each index as many times as it repeats: an epoch permutes this list
        self._epoch = [i for i, r in enumerate(self.repeats) for _ in range(r)]
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def epoch_order(self, epoch: int) -> list[int]:
        """The global order of epoch `epoch` (before splitting across ranks)."""
        if not self.shuffle:
            return list(self._epoch)
        generator = torch.Generator()
        generator.manual_seed(mix_seed(self.seed, epoch))
        return [self._epoch[j] for j in torch.randperm(len(self._epoch), generator=generator)]

    def _global_stream(self) -> Iterator[int]:
        for epoch in itertools.count():
            yield from self.epoch_order(epoch)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._global_stream(), self.rank, None, self.world_size)


class GroupedBatchSampler(Sampler[list]):
    """Batches of `batch_size` indices that share a group id (aspect-ratio grouping: group 0
    landscape, 1 portrait, from `CocoDataset.get_aspect_ratio_group`), so padding wastes little.

    Indices from `sampler` go into one bucket per group; a bucket is yielded when it is full.
    Infinite when `sampler` is. Pass all-zero `group_ids` for plain (ungrouped) batching.

    Args:
        sampler: an index stream, normally a `TrainingSampler`.
        group_ids (list[int]): group of each dataset index.
        batch_size: images per batch on this rank.
        start_iter: skip this many batches first (resume at iteration `start_iter`).
        augmentation_seed: when not None, yield [(index, sample_seed), ...] with
            sample_seed = mix_seed(augmentation_seed, batch number, position in batch).
    """

    def __init__(
        self,
        sampler: Sampler[int] | TrainingSampler,
        group_ids: list[int],
        batch_size: int,
        *,
        start_iter: int = 0,
        augmentation_seed: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"GroupedBatchSampler: expected batch_size > 0, got {batch_size}")
        if start_iter < 0:
            raise ValueError(f"GroupedBatchSampler: expected start_iter >= 0, got {start_iter}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.start_iter = start_iter
        self.augmentation_seed = augmentation_seed

    def __iter__(self) -> Iterator[list]:
        buckets: dict[int, list[int]] = {}
        batch_number = 0
        for index in self.sampler:
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) < self.batch_size:
                continue
            batch = bucket[:]
            bucket.clear()
            if batch_number >= self.start_iter:
                if self.augmentation_seed is None:
                    yield batch
                else:
                    yield [
                        (i, mix_seed(self.augmentation_seed, batch_number, k))
                        for k, i in enumerate(batch)
                    ]
            batch_number += 1
