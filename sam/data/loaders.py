"""`make_loader`: the loader for an augmentation name in `AUGMENTS`.

"none", "basic" and "cutout" run batched on the device (`DeviceLoader`); "autoaugment"
runs per image on CPU workers (`AutoAugmentLoader`). Both yield normalized (x, y) batches
on the device and reseed from (seed, epoch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sam.data.augment import AUGMENTS
from sam.data.autoaugment import AutoAugmentLoader
from sam.data.datasets import Stats
from sam.data.device_loader import DeviceLoader
from sam.errors import UserError


def make_loader(
    splits_x: Tensor,
    splits_y: Tensor,
    *,
    batch_size: int,
    device: torch.device | str,
    mean: Stats,
    std: Stats,
    augment: str,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    num_workers: int = 0,
    pad_mode: str = "reflect",
) -> DeviceLoader | AutoAugmentLoader:
    """A loader yielding normalized (x, y) batches on `device` for augment in `AUGMENTS`.

    "none"/"basic"/"cutout" run batched on the device (`DeviceLoader`, which ignores
    num_workers); "autoaugment" = AutoAugment + flip + crop per image on CPU workers, then
    normalize + Cutout on the device (`AutoAugmentLoader`). The crop pads by `pad_mode`.
    """
    if augment == "autoaugment":
        return AutoAugmentLoader(
            splits_x, splits_y, batch_size, device, mean, std,
            shuffle=shuffle, drop_last=drop_last, seed=seed, num_workers=num_workers,
            pad_mode=pad_mode,
        )
    if augment not in AUGMENTS:
        raise UserError(f"unknown augment {augment!r}: set it to one of {', '.join(AUGMENTS)}")
    return DeviceLoader(
        splits_x, splits_y, batch_size, device, mean, std,
        augment=augment, shuffle=shuffle, drop_last=drop_last, seed=seed, pad_mode=pad_mode,
    )
