"""torchvision's AutoAugment loading: per-image AutoAugment + flip + crop in DataLoader workers.

(augment.policy=torchvision; the official SAM code's AutoAugment runs batched on the device
instead, in `DeviceLoader`.)

AutoAugment's random policy runs per sample on the CPU (`_AADataset`, each sample under
its own seed, so results do not depend on the number of workers); each batch then moves
to the device, where `Normalize` normalizes it and adds Cutout. Under DDP a rank fetches
and augments only its rows of every batch (`WorkerLoader`, sam/data/worker_loader.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

from sam.data.augment import check_pad_mode
from sam.data.splits import Stats
from sam.data.worker_loader import WorkerLoader

_TV_POLICIES = {"cifar": v2.AutoAugmentPolicy.CIFAR10, "svhn": v2.AutoAugmentPolicy.SVHN,
                "imagenet": v2.AutoAugmentPolicy.IMAGENET}


class _AADataset(torch.utils.data.Dataset):
    """Per-sample AutoAugment(CIFAR10) + flip + RandomCrop(32, 4) on uint8 CHW tensors
    (`aa_policy` "svhn": torchvision's SVHN policy; `flip=False`: no flip; `aa_crop_flip=
    False`: AutoAugment alone, as the official code's "aa-only").

    The order of the official SAM code (AutoAugment, then its basic crop and flip), and
    AutoAugment's geometric operations fill with grey 128, as the AutoAugment reference
    does; the crop pads by `pad_mode`. `WorkerLoader` fetches each sample under its own
    seed (`SeededItems`), so results do not depend on num_workers or on which worker
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

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.x[i]), self.y[i]


class AutoAugmentLoader(WorkerLoader):
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
        super().__init__(
            _AADataset(x_uint8.cpu(), y.cpu(), pad_mode, flip, aa_policy, aa_crop_flip),
            batch_size, device, mean, std, shuffle=shuffle, drop_last=drop_last, seed=seed,
            num_workers=num_workers, cutout=True, cutout_per_image=cutout_per_image)
