"""Multi-process helpers: `torchrun` set-up, rank queries and metric reductions.

`torchrun --nproc_per_node N -m blendmask train ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `init_distributed` reads them and starts a process group (NCCL on
CUDA, gloo on CPU). Without them everything runs as a single process (rank 0 of 1), and every
helper here is then a no-op, so the training loop has one code path.

Inference (`eval`, `predict`) splits the images with `shard_indices` and collects each rank's
results with `gather_objects` / `all_gather_objects`.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from blendmask.runtime.rendezvous import attempt_store, process_group_timeout


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: `rank` of `world_size` processes, `local_rank` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun; return (info, this process's device).

    On CUDA each process takes the GPU `LOCAL_RANK`. Calling it again reuses the group.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # Also for one process under torchrun (which sets MASTER_ADDR): the gathers of evaluation
    # then go through the real backend (NCCL on one GPU), the path of N processes.
    if not dist.is_initialized() and (world_size > 1 or "MASTER_ADDR" in os.environ):
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Minutes, not torch's hours: a dead peer stops the group soon, and torchrun restarts
        # it (--max-restarts); the group's keys are this attempt's own (runtime/rendezvous.py).
        timeout = process_group_timeout()
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            store=attempt_store(rank, world_size, timeout),
        )
        _log_place(rank, world_size, local_rank)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), device


def _log_place(rank: int, world_size: int, local_rank: int) -> None:
    """One line per process, once: where it sits (which node, which attempt of torchrun)."""
    node = os.environ.get("GROUP_RANK", "0")
    nodes = os.environ.get("GROUP_WORLD_SIZE", "1")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    print(
        f"process group: rank {rank}/{world_size}, node {node}/{nodes} "
        f"({socket.gethostname()}), local rank {local_rank}, restart {attempt}",
        file=sys.stderr,
        flush=True,
    )


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _group_started() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each named scalar over all ranks (for logging; every rank gets the result)."""
    if get_world_size() == 1 or not values:
        return dict(values)
    # Every rank builds the same dicts (same keys, same order): pack the values in that order.
    keys = list(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    packed /= get_world_size()
    return {k: float(v) for k, v in zip(keys, packed.tolist())}


def broadcast_object(obj: object, src: int = 0) -> object:
    """`obj` of rank `src` on every rank (e.g. the resume decision or evaluation metrics)."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def run_on_main(info: DistInfo, action: Callable[[], object]) -> None:
    """Run `action` on rank 0; its ValueError / OSError is raised on every rank (so that no
    rank waits forever for one that stopped). In one process the error is raised as it is."""
    error: str | None = None
    if info.is_main:
        try:
            action()
        except (ValueError, OSError) as exc:
            if not info.distributed:
                raise
            error = str(exc)
    error = broadcast_object(error)
    if error is not None:
        raise ValueError(error)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BN running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last update each rank
    holds its own statistics; evaluation and the saved model use rank 0's.
    """
    if get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm layers of `module` -> SyncBatchNorm (statistics over all ranks' images).

    The training set-up calls it only on the parts (body, FCOS head, basis module) whose
    configured norm is "SyncBN", and only when more than one process trains on CUDA (torch's
    SyncBatchNorm needs CUDA). Otherwise those parts keep plain BatchNorm: in one process that
    equals SyncBN, across CPU processes each keeps its own statistics.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def shard_indices(num_items: int, info: DistInfo) -> list[int]:
    """The indices of `num_items` items this rank handles (inference: eval, predict).

    Contiguous, balanced blocks: ranks below `num_items % world_size` take one item more, so
    every item belongs to exactly one rank for any world size (a rank beyond the items gets an
    empty list) and each rank's share keeps the input order. Unlike torch's DistributedSampler
    it never pads by repeating items, which would count an image twice in the evaluation.
    """
    if num_items < 0:
        raise ValueError(f"shard_indices: num_items must be >= 0, got {num_items}")
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"shard_indices: rank {info.rank} outside world size {info.world_size}")
    base, extra = divmod(num_items, info.world_size)
    start = info.rank * base + min(info.rank, extra)
    stop = start + base + (1 if info.rank < extra else 0)
    return list(range(start, stop))


def all_gather_objects(obj: object) -> list:
    """`obj` of every rank, in rank order, on every rank (`[obj]` in a single process).

    Picklable objects of any size (e.g. one rank's COCO results). Works with gloo and NCCL;
    with NCCL the current CUDA device must be this rank's GPU, which `init_distributed` sets.
    """
    if not _group_started():
        return [obj]
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_objects(obj: object, dst: int = 0) -> list | None:
    """`obj` of every rank, in rank order, on rank `dst`; None on the other ranks.

    Like `all_gather_objects`, but only `dst` holds the whole list (one copy of every rank's
    results in memory, not one per rank). `[obj]` in a single process.
    """
    if not _group_started():
        return [obj]
    gathered: list | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, gathered, dst=dst)
    return gathered
