"""On-device loading: batches of a uint8 image set held on the device, augmented there.

A whole CIFAR training set (150 MiB) sits on the GPU once and an epoch is gathers and
elementwise kernels, with no per-sample Python. `Normalize` is the last step of every
training and evaluation batch: (x / 255 - mean) / std, then Cutout when asked. With
augment="autoaugment" the official SAM code's AutoAugment runs first, batched on the
device, in the official order: AutoAugment, flip + padded crop, normalise, Cutout.

Randomness is seeded from (seed, epoch) only, so a resumed run replays the same batches.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from sam.data.augment import (
    apply_cutout,
    check_cutout_per_image,
    check_pad_mode,
    cutout_params,
    random_crop_flip,
)
from sam.data.official_autoaugment import official_autoaugment
from sam.data.splits import Stats
from sam.errors import UserError


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch), with no collisions in practice."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Normalize:
    """uint8 batch on the device -> (x / 255 - mean) / std as float, plus a 16x16 zero
    Cutout square when asked (the last step of every training and evaluation batch).

    cutout_per_image: True draws one centre per image (DeVries & Taylor's Cutout); False
    one centre for the whole batch, every image losing the same square (the official
    code's batch-level Cutout, augmentation.py:81-138).
    `part=(start, size)` says that `x` holds rows start .. start + len(x) - 1 of a batch
    of `size`: Cutout is then drawn for the whole batch and its rows of `x` applied, so
    the result is exactly those rows of the whole batch's result (used by a sharded
    `AutoAugmentLoader`, which fetches only one rank's rows).
    """

    def __init__(self, device: torch.device, mean: Stats, std: Stats, cutout: bool,
                 cutout_per_image: bool = True) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255  # per channel
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.cutout, self.per_image = cutout, check_cutout_per_image(cutout_per_image)

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
    ) -> Tensor:
        x = x.float().sub_(self.mean).div_(self.std)
        if not self.cutout:
            return x
        if not self.per_image:  # one centre, whatever rows of the batch `x` holds
            return apply_cutout(x, *cutout_params(1, *x.shape[-2:], generator))
        start, size = part or (0, len(x))
        cy, cx = cutout_params(size, *x.shape[-2:], generator)
        rows = slice(start, start + len(x))
        return apply_cutout(x, cy[rows], cx[rows])


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: use a positive batch size")
    batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    if batches == 0:
        raise UserError(
            f"batch_size={batch_size} exceeds the {n} images with drop_last: "
            "use a smaller batch size or more data"
        )
    return batches


class DeviceLoader:
    """Batches from a uint8 image set held on `device`, augmented and normalized there.

    augment: "none", "basic" (4-px padded random crop + horizontal flip on uint8, padding
    by `pad_mode`, then normalize), "cutout" (basic, normalize, then a 16x16 zero square:
    one per image, or with `cutout_per_image=False` one position for the whole batch) or
    "autoaugment" (the official SAM code's AutoAugment on uint8, then cutout). With
    `drop_last` the last partial batch of each (reshuffled) epoch is left out, as in the
    official code. The dataset decides three settings (`sam.data.dataset_options`): `flip`
    (False: the crop without the horizontal flip), `aa_policy` (the official AutoAugment
    policy: "cifar", "svhn" or "imagenet") and `aa_crop_flip` (False: "autoaugment" skips
    the flip + crop, the official code's "aa-only" for SVHN).

    Randomness: `generator` draws the order, crops, flips and Cutout; `aa_generator` (made
    for "autoaugment" only) draws AutoAugment, so the other draws are those of "cutout".
    Both live on `device` and are reseeded from (seed, epoch) when an epoch starts, so
    the same epoch always yields bit-identical batches on one device. Iterating to the
    end advances the epoch; `set_epoch` sets it explicitly (on resume). `position()` after
    k batches and `resume_at` of it make the next pass yield the same epoch's batches
    k+1, k+2, ... bit for bit (a run resumed inside an epoch continues exactly).

    Under DDP `sam.distributed.ShardedLoader` slices every global batch: each rank draws
    the whole batch from the same seeds (AutoAugment included) and keeps its rows, so a
    run matches a one-process run, and the batch-level Cutout has one position per global
    batch, shared by the ranks: the official code on one host with several devices (with
    several hosts the official draws one position per host batch).
    """

    def __init__(
        self,
        x_uint8: Tensor,
        y: Tensor,
        batch_size: int,
        device: torch.device | str,
        mean: Stats,
        std: Stats,
        augment: str = "none",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        pad_mode: str = "reflect",
        cutout_per_image: bool = True,
        flip: bool = True,
        aa_policy: str = "cifar",
        aa_crop_flip: bool = True,
    ) -> None:
        if augment not in ("none", "basic", "cutout", "autoaugment"):
            raise UserError(
                f"unknown augment {augment!r}: use one of none, basic, cutout, autoaugment"
            )
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)
        self.y = y.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed, self.pad_mode = augment, seed, check_pad_mode(pad_mode)
        self.flip, self.aa_policy = flip, aa_policy
        self.crop = augment != "none" and (augment != "autoaugment" or aa_crop_flip)
        self._len = _num_batches(len(self.x), batch_size, drop_last)
        self._finish = Normalize(self.device, mean, std,
                                 cutout=augment in ("cutout", "autoaugment"),
                                 cutout_per_image=cutout_per_image)
        self.generator = torch.Generator(device=self.device)
        self.aa_generator = (torch.Generator(device=self.device)
                             if augment == "autoaugment" else None)
        self.step, self._resume = 0, None
        self.set_epoch(0)

    def position(self) -> dict:
        """Where the current pass is: its epoch, the batches yielded so far (`step`) and
        the generators' states after them (read between batches; no device sync)."""
        return {"epoch": self.epoch, "step": self.step,
                "rng": [g.get_state() for g in self._generators()]}

    def _generators(self) -> list[torch.Generator]:
        return [g for g in (self.generator, self.aa_generator) if g is not None]

    def resume_at(self, position: dict) -> None:
        """Make the next pass continue epoch `position["epoch"]` after its first
        `position["step"]` batches, exactly as the pass `position` was taken from."""
        self.set_epoch(position["epoch"])
        self._resume = position

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the data epoch `epoch` (reseeds the generators)."""
        self.epoch = epoch
        self.generator.manual_seed(_seed(self.seed, epoch))
        if self.aa_generator is not None:
            self.aa_generator.manual_seed(_seed(self.seed, epoch, 2))

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.set_epoch(self.epoch)
        g, n, bs = self.generator, len(self.x), self.batch_size
        order = (
            torch.randperm(n, generator=g, device=self.device)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        self.step, resume, self._resume = 0, self._resume, None
        if resume is not None:  # the order is the epoch's; the draws go on from batch k
            self.step = resume["step"]
            for gen, state in zip(self._generators(), resume["rng"], strict=True):
                gen.set_state(state)
        for i in range(self.step, self._len):
            idx = order[i * bs : (i + 1) * bs]
            x = self.x[idx]
            if self.aa_generator is not None:  # AutoAugment first, on uint8 (official order)
                x = official_autoaugment(x, self.aa_generator, policy=self.aa_policy)
            if self.crop:
                x = random_crop_flip(x, g, pad_mode=self.pad_mode, flip=self.flip)
            self.step = i + 1
            yield self._finish(x, g), self.y[idx]
        self.epoch += 1
