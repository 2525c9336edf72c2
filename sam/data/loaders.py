"""`make_loader`: the loader for an augmentation name in `AUGMENTS`; `augment_options`: its
settings from the augment and dataset settings.

"none", "basic", "cutout" and "autoaugment" with the official policy run batched on the
device (`DeviceLoader`); "autoaugment" with torchvision's policy runs per image on CPU
workers (`AutoAugmentLoader`). Both yield normalized (x, y) batches on the device and
reseed from (seed, epoch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sam.data.augment import AUGMENTS, check_policy
from sam.data.autoaugment import AutoAugmentLoader
from sam.data.device_loader import DeviceLoader
from sam.data.splits import Stats
from sam.errors import UserError
from sam.settings import AugmentSettings, DatasetSettings


def augment_options(a: AugmentSettings) -> dict[str, Any]:
    """`make_loader`'s keyword arguments that the augment group decides: pad_mode,
    num_workers, cutout_per_image and policy."""
    return {"pad_mode": a.pad_mode, "num_workers": a.num_workers,
            "cutout_per_image": a.cutout_per_image, "policy": a.policy}


def dataset_options(d: DatasetSettings) -> dict[str, Any]:
    """`make_loader`'s keyword arguments that the dataset group decides: flip, aa_policy
    and aa_crop_flip (configs/dataset/svhn.yaml)."""
    return {"flip": d.flip, "aa_policy": d.aa_policy, "aa_crop_flip": d.aa_crop_flip}


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
    cutout_per_image: bool = True,
    policy: str = "torchvision",
    flip: bool = True,
    aa_policy: str = "cifar",
    aa_crop_flip: bool = True,
) -> DeviceLoader | AutoAugmentLoader:
    """A loader yielding normalized (x, y) batches on `device` for augment in `AUGMENTS`.

    "none"/"basic"/"cutout" run batched on the device (`DeviceLoader`, which ignores
    num_workers). "autoaugment" = AutoAugment + flip + crop, then normalize + Cutout:
    with policy "official" the official SAM code's AutoAugment batched on the device
    (`DeviceLoader`), with "torchvision" torchvision's per image on CPU workers
    (`AutoAugmentLoader`). The crop pads by `pad_mode`; Cutout takes one square per image
    (`cutout_per_image`) or one position per batch (the official code's). `flip`,
    `aa_policy`, `aa_crop_flip`: the dataset's settings (`dataset_options`).
    """
    check_policy(policy)
    if augment == "autoaugment" and splits_x.shape[1] != 3:
        raise UserError(f"augment=autoaugment needs RGB images, not {splits_x.shape[1]} "
                        "channel(s): use augment=basic or cutout (the paper's Fashion-MNIST "
                        "rows)")
    options = dict(flip=flip, aa_policy=aa_policy, aa_crop_flip=aa_crop_flip)
    if augment == "autoaugment" and policy == "torchvision":
        return AutoAugmentLoader(
            splits_x, splits_y, batch_size, device, mean, std,
            shuffle=shuffle, drop_last=drop_last, seed=seed, num_workers=num_workers,
            pad_mode=pad_mode, cutout_per_image=cutout_per_image, **options,
        )
    if augment not in AUGMENTS:
        raise UserError(f"unknown augment {augment!r}: set it to one of {', '.join(AUGMENTS)}")
    return DeviceLoader(
        splits_x, splits_y, batch_size, device, mean, std,
        augment=augment, shuffle=shuffle, drop_last=drop_last, seed=seed, pad_mode=pad_mode,
        cutout_per_image=cutout_per_image, **options,
    )
