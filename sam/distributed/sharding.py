"""Each rank's share of the work: its slice of every batch, the DDP wrapper, its own noise.

Every rank holds the whole uint8 training set and draws the same seeded permutation;
``ShardedLoader`` hands it its contiguous slice of every global batch, so the global batch
stays ``batch_size`` and the data order is the one of a single-process run (AutoAugment's
CPU loader then fetches and augments only the rank's rows)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from sam.distributed.group import is_distributed, rank


def seed_rank(seed: int) -> None:
    """Ranks > 0 reseed torch's generators so that dropout/shake noise differs between
    ranks as it does between the examples of one process (rank 0 keeps its stream)."""
    r = rank()
    if is_distributed() and r > 0:
        torch.manual_seed(((seed + 1) * 1_000_003 + r) % 2**63)


def wrap(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` (after SyncBatchNorm conversion when
    asked) inside a process group; ``model`` itself otherwise. DDP's constructor
    broadcasts rank 0's parameters and buffers, so all ranks start identical."""
    if not is_distributed():
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class ShardedLoader:
    """This rank's contiguous slice of every batch of ``loader``.

    With W ranks, rank r gets rows [r B/W, (r+1) B/W) of a batch of B (training batches
    are full and B % W == 0; an uneven last evaluation batch is split by
    ``tensor_split`` and an empty slice is skipped). Rank r's slice is then shard r of
    ``sam_step(..., m=B/W)`` in a single process on the same global batch.

    A loader with ``set_shard(rank, world)`` (``AutoAugmentLoader``) is told to fetch and
    augment only those rows and yields the same slices itself; any other loader yields
    global batches that are sliced here.
    """

    def __init__(self, loader: Any, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world
        self.loader_shards = hasattr(loader, "set_shard")
        if self.loader_shards:
            loader.set_shard(rank, world)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.loader_shards:
            yield from self.loader
            return
        for x, y in self.loader:
            xs, ys = x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]
            if len(ys):
                yield xs, ys


def shard(loader: Any, rank: int, world: int) -> Any:
    """``ShardedLoader`` for ``rank`` of ``world`` ranks; ``loader`` itself when world is 1."""
    return ShardedLoader(loader, rank, world) if world > 1 else loader
