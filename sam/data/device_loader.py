"""On-device loading: batches of a uint8 image set held on the device, augmented there.

A whole CIFAR training set (150 MiB) sits on the GPU once and an epoch is gathers and
elementwise kernels, with no per-sample Python. `Normalize` is the last step of every
training and evaluation batch: (x / 255 - mean) / std, then Cutout when asked.

Randomness is seeded from (seed, epoch) only, so a resumed run replays the same batches.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from sam.data.augment import apply_cutout, check_pad_mode, cutout_params, random_crop_flip
from sam.data.datasets import Stats
from sam.errors import UserError


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch), with no collisions in practice."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Normalize:
    """uint8 batch on the device -> (x / 255 - mean) / std as float, plus Cutout when
    asked (the last step of every training and evaluation batch).

    `part=(start, size)` says that `x` holds rows start .. start + len(x) - 1 of a batch
    of `size`: Cutout is then drawn for the whole batch and its rows of `x` applied, so
    the result is exactly those rows of the whole batch's result (used by a sharded
    `AutoAugmentLoader`, which fetches only one rank's rows).
    """

    def __init__(self, device: torch.device, mean: Stats, std: Stats, cutout: bool) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.cutout = cutout

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
    ) -> Tensor:
        x = x.float().sub_(self.mean).div_(self.std)
        if not self.cutout:
            return x
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
    by `pad_mode`, then normalize) or "cutout" (basic, normalize, then a 16x16 zero
    square). With `drop_last` the last partial batch of each (reshuffled) epoch is left
    out, as in the official code. All randomness comes from one generator reseeded from
    (seed, epoch) when an epoch starts, so the same epoch always yields bit-identical
    batches on one device.
    Iterating to the end advances the epoch; `set_epoch` sets it explicitly (on resume).
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
    ) -> None:
        if augment not in ("none", "basic", "cutout"):
            raise UserError(
                f"unknown augment {augment!r}: use one of none, basic, cutout "
                "(or autoaugment via make_loader)"
            )
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)
        self.y = y.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed, self.pad_mode = augment, seed, check_pad_mode(pad_mode)
        self._len = _num_batches(len(self.x), batch_size, drop_last)
        self._finish = Normalize(self.device, mean, std, cutout=augment == "cutout")
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the data epoch `epoch` (reseeds the generator)."""
        self.epoch = epoch
        self.generator.manual_seed(_seed(self.seed, epoch))

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
        for i in range(self._len):
            idx = order[i * bs : (i + 1) * bs]
            x = self.x[idx]
            if self.augment != "none":
                x = random_crop_flip(x, g, pad_mode=self.pad_mode)
            yield self._finish(x, g), self.y[idx]
        self.epoch += 1
