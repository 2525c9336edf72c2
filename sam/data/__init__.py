"""CIFAR-10/100, SVHN, Fashion-MNIST and synthetic data, plus batched on-device augmentation.

Images stay uint8 (N, C, H, W) until a loader normalizes a batch on the device, so a
whole CIFAR training set (150 MiB) sits on the GPU once and an epoch is gathers and
elementwise kernels, with no per-sample Python; the official SAM code's AutoAugment too
(`official_autoaugment`, batched). The exception is torchvision's AutoAugment, which runs
per sample in DataLoader workers (`AutoAugmentLoader`).

Randomness is seeded from (seed, epoch) only, so a resumed run replays the same batches.

Modules: `splits` (`Splits`, the in-memory dataset type), `datasets` (loading), `augment`
(crop/flip/Cutout ops, checks of the augment settings), `device_loader` (`Normalize`,
`DeviceLoader`), `official_autoaugment` (the policy; its operations in `official_aa_ops`),
`autoaugment` (`AutoAugmentLoader`),
`loaders` (`make_loader`, `augment_options`, `dataset_options`), `torchvision_sets` (SVHN,
Fashion-MNIST), `fetch` (the download, `DataMissing`), `worker_loader` (`WorkerLoader`:
DataLoader workers, the base of `AutoAugmentLoader` and `ImageLoader`); large-image
datasets stay files:
`image_sets` (Flowers102, Stanford Cars, FGVC-Aircraft, Food-101, Oxford-IIIT Pets, an
ImageFolder, ImageNet) and `image_loader` (`ImageLoader`: DataLoader workers, normalized
on the device).
"""

from sam.data.augment import (
    AA_POLICIES,
    AUGMENTS,
    PAD_MODES,
    apply_crop_flip,
    apply_cutout,
    check_cutout_per_image,
    check_pad_mode,
    check_policy,
    crop_flip_params,
    cutout_params,
    random_crop_flip,
)
from sam.data.autoaugment import AutoAugmentLoader, _AADataset
from sam.data.datasets import (
    CIFAR_STATS,
    DATASETS,
    load_dataset,
    load_splits,
    make_synthetic,
)
from sam.data.device_loader import DeviceLoader, Normalize
from sam.data.fetch import DataMissing
from sam.data.image_loader import ImageLoader, check_image_config, image_loaders
from sam.data.image_sets import IMAGE_SETS, IMAGENET_STATS, ImageSets, load_image_sets
from sam.data.loaders import augment_options, dataset_options, make_loader
from sam.data.official_autoaugment import official_autoaugment
from sam.data.splits import Splits, Stats
from sam.data.worker_loader import WorkerLoader, shard_rows

__all__ = [
    "AA_POLICIES",
    "AUGMENTS",
    "CIFAR_STATS",
    "DATASETS",
    "IMAGENET_STATS",
    "IMAGE_SETS",
    "PAD_MODES",
    "AutoAugmentLoader",
    "DataMissing",
    "DeviceLoader",
    "ImageLoader",
    "ImageSets",
    "Normalize",
    "Splits",
    "Stats",
    "WorkerLoader",
    "_AADataset",
    "apply_crop_flip",
    "apply_cutout",
    "augment_options",
    "check_image_config",
    "check_cutout_per_image",
    "check_pad_mode",
    "check_policy",
    "crop_flip_params",
    "cutout_params",
    "dataset_options",
    "image_loaders",
    "load_dataset",
    "load_image_sets",
    "load_splits",
    "make_loader",
    "make_synthetic",
    "official_autoaugment",
    "random_crop_flip",
    "shard_rows",
]
