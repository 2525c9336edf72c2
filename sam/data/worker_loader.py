"""Batches from a Dataset fetched by DataLoader workers, normalized on the device:
`WorkerLoader`, the base of `AutoAugmentLoader` (torchvision's AutoAugment per CIFAR image)
and `ImageLoader` (large-image files).

The order and one seed per sample are drawn from (seed, epoch) (`_EpochSampler`); each
item is fetched under its own seed (`SeededItems`: the transform's random draws), so
batches depend neither on the number of workers nor on which worker drew which sample,
and a resumed pass replays them. Under DDP a rank fetches only its rows of every global
batch (`shard_rows`, `set_shard`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from sam.data.device_loader import Normalize, _num_batches, _seed


class SeededItems(torch.utils.data.Dataset):
    """``base[i]`` for items (i, seed), its transform drawing from the CPU RNG seeded with
    ``seed`` (the caller's RNG state is left as it was)."""

    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        i, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.base[i]


class _EpochSampler(torch.utils.data.Sampler):
    """Yields (index, per-sample seed) in an order drawn from (seed, epoch)."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return zip(order.tolist(), seeds.tolist(), strict=True)


def shard_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of `tensor_split(world)[rank]` of n rows: the first n % world ranks
    get n // world + 1 rows, the others n // world (possibly none)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + int(rank < extra)


class _ShardBatchSampler(torch.utils.data.Sampler):
    """One rank's rows of each batch of `BatchSampler(sampler, batch_size, drop_last)`.

    Of a global batch of `size` (index, seed) pairs it yields rows `shard_rows(size, rank,
    world)`, skipping empty ones, so the DataLoader fetches and augments only those
    samples. The default rank 0 of world 1 yields the global batches themselves.
    """

    def __init__(self, sampler: _EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world = 0, 1
        self.skip = 0  # global batches of the epoch to leave out (a resumed pass)

    def spans(self) -> list[tuple[int, int, int]]:
        """(lo, hi, size) of every global batch of an epoch: this rank's rows [lo, hi)."""
        full, rest = divmod(len(self.sampler), self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])
        return [(*shard_rows(size, self.rank, self.world), size) for size in sizes]

    def __len__(self) -> int:
        return sum(hi > lo for lo, hi, _ in self.spans())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        items = iter(self.sampler)
        for k, (lo, hi, size) in enumerate(self.spans()):
            batch = list(itertools.islice(items, size))
            if hi > lo and k >= self.skip:
                yield batch[lo:hi]


class WorkerLoader:
    """DeviceLoader's interface over a Dataset of (uint8 (C, H, W), label) items, each
    fetched under its own seed (`SeededItems`): normalized (x, y) batches on ``device``.

    ``shuffle``: a new order each epoch, drawn from (seed, epoch); ``drop_last``: leave out
    the short last batch (training). ``num_workers`` > 0: that many persistent worker
    processes, pinned memory and non-blocking copies on CUDA. ``cutout``: a 16x16 zero
    square after normalization (`Normalize`; one per image, or one position per batch with
    ``cutout_per_image=False``, the official code's).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int,
                 device: torch.device | str, mean: tuple[float, ...],
                 std: tuple[float, ...], *, shuffle: bool, drop_last: bool, seed: int = 0,
                 num_workers: int = 0, cutout: bool = False,
                 cutout_per_image: bool = True) -> None:
        self.device = torch.device(device)
        self.seed = seed
        n = len(dataset)  # type: ignore[arg-type]
        self._len = _num_batches(n, batch_size, drop_last)
        self.sampler = _EpochSampler(n, shuffle, seed)
        self.batches = _ShardBatchSampler(self.sampler, batch_size, drop_last)
        self._non_blocking = self.device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            SeededItems(dataset), batch_sampler=self.batches, num_workers=num_workers,
            pin_memory=self._non_blocking, persistent_workers=num_workers > 0)
        self._finish = Normalize(self.device, mean, std, cutout=cutout,
                                 cutout_per_image=cutout_per_image)
        self.generator = torch.Generator(device=self.device)
        self.step, self._resume = 0, None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the data epoch `epoch` (reseeds all randomness)."""
        self.epoch = self.sampler.epoch = epoch
        self.generator.manual_seed(_seed(self.seed, epoch, 1))

    def position(self) -> dict:
        """Where the current pass is: its epoch, the global batches yielded so far
        (`step`) and the Cutout generator's state after them (as `DeviceLoader`'s)."""
        return {"epoch": self.epoch, "step": self.step, "rng": [self.generator.get_state()]}

    def resume_at(self, position: dict) -> None:
        """Make the next pass continue epoch `position["epoch"]` after its first
        `position["step"]` global batches: the same order, per-sample seeds and Cutout."""
        self.set_epoch(position["epoch"])
        self._resume = position

    def set_shard(self, rank: int, world: int) -> None:
        """From the next pass on, yield only rows `shard_rows(len(batch), rank, world)` of
        each global batch (skipping empty ones), fetching and augmenting only those.

        Samples are seeded per (index, seed), and Cutout is drawn for the global batch
        (`Normalize`'s `part`), so the rows equal those of the unsharded batches. Only
        batches with fewer rows than `world` can be skipped (the short last batch, or all
        of them when batch_size < world), so no batch is yielded after a skipped one and
        none misses a Cutout draw. len() still counts the global batches.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        self.batches.rank, self.batches.world = rank, world

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.set_epoch(self.epoch)
        resume, self._resume = self._resume, None
        self.step = self.batches.skip = resume["step"] if resume else 0
        if resume:
            self.generator.set_state(resume["rng"][0])
        spans = self.batches.spans()[self.step:]
        parts = [(lo, size) for lo, hi, size in spans if hi > lo]
        for part, (x, y) in zip(parts, self.loader, strict=True):
            x = x.to(self.device, non_blocking=self._non_blocking)
            y = y.to(self.device, non_blocking=self._non_blocking)
            self.step += 1
            yield self._finish(x, self.generator, part), y
        self.epoch += 1
