"""torchvision's AutoAugment loading: per-image AutoAugment + flip + crop in DataLoader workers.

(augment.policy=torchvision; the official SAM code's AutoAugment runs batched on the device
instead, in `DeviceLoader`.)

AutoAugment's random policy runs per sample on the CPU (`_AADataset`, each sample under
its own seed, so results do not depend on the number of workers); each batch then moves
to the device, where `Normalize` normalizes it and adds Cutout. Under DDP a rank fetches
and augments only its rows of every batch (`shard_rows`, `AutoAugmentLoader.set_shard`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor
from torchvision.transforms import v2

from sam.data.augment import check_pad_mode
from sam.data.datasets import Stats
from sam.data.device_loader import Normalize, _num_batches, _seed

_TV_POLICIES = {"cifar": v2.AutoAugmentPolicy.CIFAR10, "svhn": v2.AutoAugmentPolicy.SVHN,
                "imagenet": v2.AutoAugmentPolicy.IMAGENET}


class _AADataset(torch.utils.data.Dataset):
    """Per-sample AutoAugment(CIFAR10) + flip + RandomCrop(32, 4) on uint8 CHW tensors
    (`aa_policy` "svhn": torchvision's SVHN policy; `flip=False`: no flip; `aa_crop_flip=
    False`: AutoAugment alone, as the official code's "aa-only").

    The order of the official SAM code (AutoAugment, then its basic crop and flip), and
    AutoAugment's geometric operations fill with grey 128, as the AutoAugment reference
    does; the crop pads by `pad_mode`. Indexed by (index, seed): each sample's transform
    runs under its own seed, so results do not depend on num_workers or on which worker
    draws which sample.
    """

    def __init__(self, x: Tensor, y: Tensor, pad_mode: str = "reflect", flip: bool = True,
                 aa_policy: str = "cifar", aa_crop_flip: bool = True) -> None:
        self.x, self.y = x, y
        crop_flip = [v2.RandomHorizontalFlip(0.5 if flip else 0.0),
                     v2.RandomCrop(x.shape[-1], padding=4, padding_mode=
                                   "reflect" if check_pad_mode(pad_mode) == "reflect"
                                   else "constant")]
        self.transform = v2.Compose([  # torchvision's policy of the dataset (SVHN's for SVHN)
            v2.AutoAugment(_TV_POLICIES[aa_policy], fill=128),
            *(crop_flip if aa_crop_flip else []),
        ])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        i, seed = item
        with torch.random.fork_rng(devices=[]):  # leave the caller's CPU RNG untouched
            torch.default_generator.manual_seed(seed)
            return self.transform(self.x[i]), self.y[i]


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


class AutoAugmentLoader:
    """DeviceLoader's interface for AutoAugment, which must run per image on the CPU.

    A DataLoader applies AutoAugment(CIFAR10 policy) + RandomHorizontalFlip +
    RandomCrop(32, padding=4) (`_AADataset`) per sample (uint8, in `num_workers`
    processes); each batch is then moved to `device`, normalized and given Cutout there,
    as in the SAM paper's AutoAugment runs (the official code adds Cutout as a batch-level
    option): one square per image, or with `cutout_per_image=False` one position for the
    whole batch (the official code's).

    `set_shard(rank, world)` makes it fetch, augment and yield only one rank's rows of
    every batch, bit for bit the `tensor_split(world)[rank]` slices of its batches
    unsharded (`sam.distributed.ShardedLoader` calls it under DDP).
    """

    def __init__(
        self,
        x_uint8: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device | str,
        mean: Stats,
        std: Stats,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        pad_mode: str = "reflect",
        cutout_per_image: bool = True,
        flip: bool = True,
        aa_policy: str = "cifar",
        aa_crop_flip: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.seed = seed
        self._len = _num_batches(len(x_uint8), batch_size, drop_last)
        self.sampler = _EpochSampler(len(x_uint8), shuffle, seed)
        self.batches = _ShardBatchSampler(self.sampler, batch_size, drop_last)
        on_cuda = self.device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            _AADataset(x_uint8.cpu(), y.cpu(), pad_mode, flip, aa_policy, aa_crop_flip),
            batch_sampler=self.batches,
            num_workers=num_workers,
            pin_memory=on_cuda,
            persistent_workers=num_workers > 0,
        )
        self._non_blocking = on_cuda
        self._finish = Normalize(self.device, mean, std, cutout=True,
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
